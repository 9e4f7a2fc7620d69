#!/usr/bin/env bash
# The one test command: install what tests need, check src/ with ruff and mypy, then run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-test.sh
.venv/bin/ruff check src benchmarks
.venv/bin/mypy src
exec .venv/bin/python -m pytest "$@"
