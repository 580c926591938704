#!/usr/bin/env bash
# One command: install, then run the offline OpenMoji demo (pass --fast for a 2-minute smoke run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MALLOC_MMAP_MAX_=${MALLOC_MMAP_MAX_:-0} MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-100000000000}
exec .venv/bin/s2i demo "$@"
