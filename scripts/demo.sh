#!/usr/bin/env bash
# The main job on the built-in tiny model: install, build the site, serve it.
# Usage: bash scripts/demo.sh [extra `lfmvl-site build` options]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
# An offline mirror of the official Pyodide files, where one sits beside the checkout (it does on the
# project's machines, which cannot reach the Pyodide CDN). Elsewhere the build fetches from the CDN.
if [ -z "${LFMVL_PYODIDE_DIR:-}" ] && [ -d ../shared/pyodide/0.27.7 ]; then
  export LFMVL_PYODIDE_DIR="$(cd ../shared/pyodide/0.27.7 && pwd)"
fi
.venv/bin/lfmvl-site synth-model build/tiny-model
.venv/bin/lfmvl-site caption examples/sample.png --model-dir build/tiny-model --max-new-tokens 16
.venv/bin/lfmvl-site build --synthetic --out dist "$@"
exec .venv/bin/lfmvl-site serve dist --port "${PORT:-8000}"
