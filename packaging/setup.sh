#!/usr/bin/env bash
# Set up svdaemon in ./.venv on a fresh Debian/Ubuntu machine: system packages, then the Python ones.
#   bash packaging/setup.sh          the daemon, its CLI and the tray icon (GTK / AppIndicator backends)
#   bash packaging/setup.sh --test   plus what the tests use (espeak-ng speech, Xvfb and a tray host, D-Bus,
#                                    desktop-file-validate, systemd-analyze, pytest, ruff, parsers)
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
[ "${1:-}" = "--test" ] && with_tests=1

debs=()
python3 -c 'import ensurepip, venv' 2>/dev/null || debs+=(python3-venv)
# A few dependencies (crcmod, via FunASR's hub clients) compile a C extension when no wheel fits.
command -v cc >/dev/null || debs+=(gcc)
python3 -c 'import os, sysconfig; assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")' \
  2>/dev/null || debs+=(python3-dev)
# The tray's PyGObject is built by pip against GTK's introspection data; the icon shows through GTK or,
# on GNOME and KDE, through AppIndicator.
# xdg-utils: xdg-open, for the menu's Open items.
for deb in libgirepository1.0-dev libcairo2-dev pkg-config gir1.2-gtk-3.0 gir1.2-ayatanaappindicator3-0.1 \
  xdg-utils; do
  dpkg -s "$deb" >/dev/null 2>&1 || debs+=("$deb")
done
if [ $with_tests = 1 ]; then
  command -v espeak-ng >/dev/null || debs+=(espeak-ng)
  command -v Xvfb >/dev/null || debs+=(xvfb)
  command -v trayer >/dev/null || debs+=(trayer)
  command -v dbus-run-session >/dev/null || debs+=(dbus)
  command -v dbus-launch >/dev/null || debs+=(dbus-x11)
  command -v dunst >/dev/null || debs+=(dunst)  # a real notification server for the tray's notices
  command -v desktop-file-validate >/dev/null || debs+=(desktop-file-utils)
  command -v systemd-analyze >/dev/null || debs+=(systemd)
fi
if [ ${#debs[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "setup: installing Debian packages: ${debs[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${debs[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
extra="[desktop]"
[ $with_tests = 1 ] && extra="[desktop,test]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extra}"
echo "setup: svdaemon installed in $(pwd)/.venv"
