#!/usr/bin/env bash
# End-to-end smoke on one Python: a fresh venv from the lock through packaging/setup.sh, as a user makes it,
# then .ci/smoke.py (transcribe wav/mp3/m4a/mp4; the daemon on a watched folder with two good files and a
# corrupt one; status --json; doctor; SIGTERM → exit 0), then the decoding tests on that Python's PyAV.
#   bash .ci/smoke.sh python3.13            (a name on PATH or a path to the interpreter)
# SMOKE_VENV=DIR keeps the venv there (and reuses it next time); otherwise it is made in a temporary folder
# and removed. uv (from $UV, .venv/bin/uv or PATH) installs when it is there: from its cache a second venv
# takes seconds; without it pip does, slower.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  echo "smoke: $*" >&2
  exit 1
}
python="${1:-}"
[ -n "$python" ] || die "usage: bash .ci/smoke.sh PYTHON   (e.g. python3.13, or a path to an interpreter)"
command -v "$python" >/dev/null || die "no Python '$python' here"
command -v espeak-ng >/dev/null || die "espeak-ng is missing (the smoke's speech): bash packaging/setup.sh --test installs it"

uv="${UV:-}"
if [ -z "$uv" ]; then
  if [ -x .venv/bin/uv ]; then
    uv="$(pwd)/.venv/bin/uv"
  elif command -v uv >/dev/null; then
    uv="$(command -v uv)"
  fi
fi

venv="${SMOKE_VENV:-}"
if [ -z "$venv" ]; then
  venv=$(mktemp -d "${TMPDIR:-/tmp}/svdaemon-smoke-venv.XXXXXX")
  trap 'rm -rf "$venv"' EXIT
fi

started=$SECONDS
SVDAEMON_PYTHON="$python" SVDAEMON_VENV="$venv" SVDAEMON_INSTALLER="${uv:-pip}" bash packaging/setup.sh --test ||
  die "packaging/setup.sh failed for $python"
echo "smoke: venv for $python ready in $((SECONDS - started)) s"
started=$SECONDS
"$venv/bin/python" .ci/smoke.py --svdaemon "$venv/bin/svdaemon" || die "FAILED on $python"
# Each Python gets its own PyAV (17 on 3.10, 18 on 3.11, 19 on 3.12 and 3.13): its decoding tests, on it.
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_audio.py tests/test_decoder.py ||
  die "the decoding tests FAILED on $python (PyAV $("$venv/bin/python" -c 'import av; print(av.__version__)'))"
echo "smoke: passed on $python ($("$venv/bin/python" -V)) in $((SECONDS - started)) s"
