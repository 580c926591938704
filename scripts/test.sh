#!/usr/bin/env bash
# One command: install, lint, and run the test suite (CPU, tiny sizes, a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks
exec .venv/bin/python -m pytest -q "$@"
