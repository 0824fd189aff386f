#!/usr/bin/env bash
# Make ./.venv with Python 3.12 or newer (forge's libraries need it: Icechunk 2, zarr 3.4, VirtualiZarr
# 2.8): $PYTHON if set, else python3.12 (the line the suite runs on), a newer python3.x or python3 on
# PATH, else one that pyenv holds. A .venv of such a Python is kept; one of an older Python is made anew.
set -euo pipefail
ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; }
if [ -x .venv/bin/python ] && ok .venv/bin/python; then exit 0; fi
candidates=("${PYTHON:-}" python3.12 python3.13 python3.14 python3)
pyenv_root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
candidates+=($(ls -d "$pyenv_root"/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -V))
for candidate in "${candidates[@]}"; do
  if [ -n "$candidate" ] && ok "$candidate"; then
    rm -rf .venv
    exec "$candidate" -m venv .venv
  fi
done
echo "forge needs Python 3.12 or newer, and found none (python3 is $(python3 --version 2>&1)):" \
  "install one, or give its path as PYTHON=/path/to/python3.12" >&2
exit 1
