#!/usr/bin/env bash
# Install sketch2image and everything it needs into ./.venv (safe to re-run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "sketch2image needs Python >= 3.10 ($PY is older)" >&2; exit 1; }
# cairosvg (OpenMoji rendering) needs the system cairo library.
if ! ldconfig -p 2>/dev/null | grep -q 'libcairo.so.2'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq libcairo2 >/dev/null
  else
    echo "please install the cairo library first (Debian/Ubuntu: sudo apt-get install libcairo2)" >&2; exit 1
  fi
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# Quiet pip, but keep its errors. torch is capped in pyproject.toml at what these machines carry locally.
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
