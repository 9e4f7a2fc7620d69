#!/usr/bin/env bash
# The one test command: install what tests need, then run them all.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-test.sh
exec .venv/bin/python -m pytest "$@"
