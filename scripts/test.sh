#!/usr/bin/env bash
# One command: install, lint, and run the test suite (CPU, tiny sizes, a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The web-app tests drive Debian's Chromium (Playwright never downloads a browser here).
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null && [ -z "${S2I_CHROMIUM:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then
    sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null
  else
    echo "the web-app tests need Chromium: install it (Debian: apt-get install chromium) or set S2I_CHROMIUM" >&2
  fi
fi
.venv/bin/ruff check src tests benchmarks
# Any thread count: the tests that compare runs of 1 and 2 processes pin their own threads.
exec .venv/bin/python -m pytest -q "$@"
