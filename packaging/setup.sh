#!/usr/bin/env bash
# Set up svdaemon in ./.venv on a fresh Debian/Ubuntu machine: system packages, then the Python ones.
#   bash packaging/setup.sh          the daemon and its CLI
#   bash packaging/setup.sh --test   plus what the tests use (espeak-ng speech, pytest, ruff, parsers)
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
[ $with_tests = 1 ] && ! command -v espeak-ng >/dev/null && debs+=(espeak-ng)
if [ ${#debs[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "setup: installing Debian packages: ${debs[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${debs[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
extra=""
[ $with_tests = 1 ] && extra="[test]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extra}"
echo "setup: svdaemon installed in $(pwd)/.venv"
