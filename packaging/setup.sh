#!/usr/bin/env bash
# Set up svdaemon in a virtual environment: the system packages (Debian/Ubuntu), then the Python ones at the
# exact versions CI tested (packaging/lock.txt, refreshed with `bash packaging/lock.sh`).
#   bash packaging/setup.sh          the daemon, its CLI and the tray icon (GTK / AppIndicator backends)
#   bash packaging/setup.sh --test   plus what the tests use (espeak-ng speech, Xvfb and a tray host, D-Bus,
#                                    desktop-file-validate, systemd-analyze, pytest, ruff, parsers, uv)
# Settings, from the environment:
#   SVDAEMON_PYTHON      the interpreter (default python3); one of packaging/pythons.txt (3.10 to 3.13)
#   SVDAEMON_VENV        where the virtual environment goes (default .venv in the checkout)
#   SVDAEMON_INSTALLER   pip (default) or uv (a name on PATH or a path): uv installs the same lock, and a
#                        second venv from its cache takes seconds instead of minutes
# Safe to run again: it installs only what is missing and brings the venv back to the lock.
# Without apt-get (another distribution, macOS) it installs no system packages and says what then lacks.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "setup: $*"; }
die() {
  echo "setup: $*" >&2
  exit 2
}

with_tests=0
case "${1:-}" in
  "") ;;
  --test) with_tests=1 ;;
  *) die "unknown argument '$1': use no argument (daemon and tray) or --test (plus the test tools)" ;;
esac

lock=packaging/lock.txt
read -r -a pythons <packaging/pythons.txt
supported="${pythons[*]}"
supported="${supported// /, }"

# ---- the interpreter -------------------------------------------------------------------------------------
python="${SVDAEMON_PYTHON:-python3}"
command -v "$python" >/dev/null ||
  die "no Python '$python' here. svdaemon supports Python $supported: install one and name it, e.g. SVDAEMON_PYTHON=python3.12 bash packaging/setup.sh"
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[[ " ${pythons[*]} " == *" $version "* ]] ||
  die "$python is Python $version; svdaemon supports Python $supported (packaging/pythons.txt): set SVDAEMON_PYTHON to one of them, e.g. SVDAEMON_PYTHON=python3.12"
executable=$("$python" -c 'import os, sys; print(os.path.realpath(sys.executable))')
venv="${SVDAEMON_VENV:-.venv}"
if [ -x "$venv/bin/python" ]; then
  had=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  [ "$had" = "$version" ] ||
    die "$venv holds Python $had, not $version: remove it (rm -r $venv) or set SVDAEMON_VENV to another folder"
fi

# ---- what the system lacks ------------------------------------------------------------------------------
# A Debian package can supply what a Python from Debian lacks; a Python of its own (pyenv, a build) cannot.
debian_python=0
[[ "$executable" == /usr/bin/python3* ]] && debian_python=1
debs=()
if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
  [ $debian_python = 1 ] || die "$python ($executable) has no venv/ensurepip module; reinstall it with them"
  debs+=("python$version-venv")
fi
# A few dependencies (crcmod, via FunASR's hub clients; PyGObject) compile a C extension when no wheel fits.
command -v cc >/dev/null || debs+=(gcc)
headers_ok=1
"$python" -c 'import os, sysconfig; assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")' \
  2>/dev/null || headers_ok=0
[ $headers_ok = 1 ] || [ $debian_python = 0 ] || debs+=("python$version-dev")
desktop_debs=()
if [ "$(uname -s)" = Linux ]; then
  # The tray's PyGObject is built by pip against GTK's introspection data; the icon shows through GTK or,
  # on GNOME and KDE, through AppIndicator. xdg-utils: xdg-open, for the menu's Open items.
  desktop_debs=(libgirepository1.0-dev libcairo2-dev pkg-config gir1.2-gtk-3.0 gir1.2-ayatanaappindicator3-0.1
    xdg-utils)
fi
test_tools=()
if [ $with_tests = 1 ]; then
  # command, Debian package
  test_tools=(espeak-ng:espeak-ng Xvfb:xvfb trayer:trayer dbus-run-session:dbus dbus-launch:dbus-x11
    dunst:dunst desktop-file-validate:desktop-file-utils systemd-analyze:systemd)
fi

has_apt=0
command -v apt-get >/dev/null && command -v dpkg >/dev/null && has_apt=1
missing_tools=()
for tool in ${test_tools[@]+"${test_tools[@]}"}; do
  command -v "${tool%%:*}" >/dev/null || missing_tools+=("$tool")
done
if [ $has_apt = 1 ]; then
  for deb in ${desktop_debs[@]+"${desktop_debs[@]}"}; do
    dpkg -s "$deb" >/dev/null 2>&1 || debs+=("$deb")
  done
  for tool in ${missing_tools[@]+"${missing_tools[@]}"}; do
    debs+=("${tool#*:}")
  done
fi

# ---- the Python packages ---------------------------------------------------------------------------------
# PyGObject (the desktop extra) builds against GObject introspection and cairo: apt brings them, and
# elsewhere they must be there already, or the tray does without it.
extras=()
desktop_note=""
if [ ${#desktop_debs[@]} -gt 0 ]; then
  if [ $has_apt = 1 ] || { command -v cc >/dev/null && pkg-config --exists gobject-introspection-1.0 cairo 2>/dev/null; }; then
    extras+=(desktop)
  else
    desktop_note="no GObject introspection and cairo development files (or no C compiler): PyGObject is left out, so the tray can show only pystray's plain X11 icon, without a menu (svdaemon doctor says which backend you get)"
  fi
fi
[ $with_tests = 1 ] && extras+=(test)
spec="."
[ ${#extras[@]} = 0 ] || spec=".[$(IFS=,; echo "${extras[*]}")]"

# ---- the plan, before anything is downloaded --------------------------------------------------------------
pin() { sed -n "s/^$1==\([^ ;]*\).*/\1/p" "$lock" | head -1; }
torch=$(pin torch)
count=$(grep -c '^[A-Za-z0-9]' "$lock")
have_torch=""
if [ -x "$venv/bin/python" ]; then
  have_torch=$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)
fi
say "Python $version ($executable) → $venv"
[ ${#debs[@]} = 0 ] || [ $has_apt = 0 ] || say "Debian packages to install: ${debs[*]}"
if [ $has_apt = 0 ]; then
  say "no apt-get here: no system packages are installed. What then lacks, unless you install it yourself:"
  [ ${#debs[@]} = 0 ] || say "  to build the packages that have no wheel: ${debs[*]} (their Debian names)"
  [ ${#desktop_debs[@]} = 0 ] ||
    say "  the tray: GTK 3 with GObject introspection and cairo (headers and pkg-config, to build PyGObject), the Ayatana AppIndicator typelib (GNOME, KDE) and xdg-open (the menu's Open items)"
  [ ${#missing_tools[@]} = 0 ] ||
    say "  the tests: ${missing_tools[*]%%:*}: without espeak-ng the tests that speak fail; without Xvfb, trayer, dbus or dunst the desktop tray tests skip; without desktop-file-validate or systemd-analyze the service file checks skip"
fi
[ -z "$desktop_note" ] || say "NOTE: $desktop_note"
say "installs svdaemon${spec#.} at the tested versions of $lock (torch $torch, torchaudio $(pin torchaudio), funasr $(pin funasr), silero-vad $(pin silero-vad), PyAV and the rest: $count pinned in all)"
if [ "$have_torch" = "$torch" ]; then
  say "torch $torch is already in $venv: only what is missing or differs is downloaded"
elif [ "$(uname -s)-$(uname -m)" = Linux-x86_64 ]; then
  say "downloads about 4 GB, about 7.5 GB in $venv: on Linux x86_64 torch $torch is its CUDA build (torch 0.9 GB, NVIDIA's CUDA libraries 2.7 GB, triton 0.2 GB). Minutes on a fast line."
else
  say "downloads under 1 GB, 1 to 2 GB in $venv (torch $torch without CUDA libraries here)"
fi

# ---- system packages -------------------------------------------------------------------------------------
if [ $has_apt = 1 ] && [ ${#debs[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${debs[@]}"
fi

# ---- the venv --------------------------------------------------------------------------------------------
installer="${SVDAEMON_INSTALLER:-pip}"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
case "$installer" in
  pip)
    quiet=(-q)
    [ -t 1 ] && quiet=()  # progress bars for a person; a log gets the errors only
    "$venv/bin/python" -m pip install ${quiet[@]+"${quiet[@]}"} --disable-pip-version-check -c "$lock" -e "$spec"
    ;;
  uv | */uv)
    command -v "$installer" >/dev/null || die "SVDAEMON_INSTALLER=$installer: no such program"
    "$installer" pip install --quiet --python "$venv/bin/python" -c "$lock" -e "$spec"
    ;;
  *) die "SVDAEMON_INSTALLER must be pip or uv (or a path to uv), not '$installer'" ;;
esac
versions=$("$venv/bin/python" -c 'import importlib.metadata as m
print(", ".join(f"{n} {m.version(n)}" for n in ("torch", "torchaudio", "funasr", "av", "silero-vad")))')
say "$versions"
say "svdaemon installed in $(cd "$venv" && pwd) (Python $version); check this machine with: $venv/bin/svdaemon doctor"
