#!/usr/bin/env bash
# Refresh the lock: every dependency of svdaemon (with the desktop and test extras) at one exact version,
# as a user's machine resolves them from the public index today.
#   bash packaging/lock.sh          rewrites packaging/lock.txt with the newest versions pyproject admits
# setup.sh installs with the lock as pip constraints, CI tests exactly those versions, and `svdaemon doctor`
# warns about versions outside them. Run the tests after a refresh (bash .ci/run): the lock is only worth
# what CI tested.
#
# One file serves every supported Python (packaging/pythons.txt) and platform: where the newest release
# differs (PyAV 17 on Python 3.10, 18 on 3.11, 19 on 3.12 and later; numpy likewise), the lines carry
# markers, and on Linux x86_64 torch brings its CUDA libraries (nvidia-*), as it does for users.
# It uses uv (in .venv after `setup.sh --test`, or on PATH, or $UV) because uv ignores pip's configuration:
# a machine's pip.conf (local wheel folders, extra indexes, constraint files) must not leak into the lock.
set -euo pipefail
cd "$(dirname "$0")/.."

read -r -a pythons <packaging/pythons.txt
uv="${UV:-}"
if [ -z "$uv" ]; then
  if [ -x .venv/bin/uv ]; then
    uv=.venv/bin/uv
  elif command -v uv >/dev/null; then
    uv=uv
  else
    echo "lock.sh: uv not found: run 'bash packaging/setup.sh --test' (it puts uv in .venv) or set UV=/path/to/uv" >&2
    exit 2
  fi
fi

# Only the default index: no index, find-links, constraint or config of this machine's own.
for variable in UV_INDEX UV_INDEX_URL UV_DEFAULT_INDEX UV_EXTRA_INDEX_URL UV_FIND_LINKS UV_CONSTRAINT \
  UV_OVERRIDE UV_BUILD_CONSTRAINT UV_CONFIG_FILE UV_EXCLUDE_NEWER UV_PRERELEASE UV_RESOLUTION; do
  unset "$variable"
done

echo "lock.sh: resolving for Python ${pythons[*]} with $("$uv" --version)"
"$uv" pip compile pyproject.toml --no-config --universal --upgrade --quiet \
  --python-version "${pythons[0]}" --extra desktop --extra test \
  --custom-compile-command "bash packaging/lock.sh" --output-file packaging/lock.txt
echo "lock.sh: wrote packaging/lock.txt; run the tests (bash .ci/run) before committing it"
