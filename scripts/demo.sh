#!/usr/bin/env bash
# The main job on the built-in tiny model: install, build the site, serve it. Safe to run again.
# Usage: bash scripts/demo.sh [extra `lfmvl-site build` options]   (PORT=8000, PYTHON=python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PORT=${PORT:-8000}
step() { printf '\n==> [%s/5] %s\n' "$1" "$2" >&2; }

step 1 "Installing lfmvl-site into .venv (about a minute the first time, seconds afterwards)"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
echo "    done: .venv/bin/lfmvl-site" >&2

# An offline mirror of the official Pyodide files, where one sits beside the checkout (it does on the
# project's machines, which cannot reach the Pyodide CDN). Elsewhere the build fetches from the CDN.
if [ -z "${LFMVL_PYODIDE_DIR:-}" ] && [ -d ../shared/pyodide/0.27.7 ]; then
  export LFMVL_PYODIDE_DIR="$(cd ../shared/pyodide/0.27.7 && pwd)"
fi

step 2 "Writing the tiny synthetic model to build/tiny-model (random weights, the real file layout)"
# Written afresh each run (seconds), beside the old one, then swapped in: a re-run never trips over it.
rm -rf build/tiny-model.new
.venv/bin/lfmvl-site synth-model build/tiny-model.new >/dev/null
rm -rf build/tiny-model
mv build/tiny-model.new build/tiny-model
echo "    done: build/tiny-model" >&2

step 3 "Captioning examples/sample.png natively (onnxruntime), as \`lfmvl-site caption\` does"
.venv/bin/lfmvl-site caption examples/sample.png --model-dir build/tiny-model --max-new-tokens 16 --json \
  | .venv/bin/python -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    # random weights: the text is gibberish by design; control characters are shown escaped
    print("    caption:", json.dumps(r["text"], ensure_ascii=False))
    ms = r.get("timings", {}).get("first_token_ms", 0)
    print("    %d tokens, first token after %.0f ms (gibberish is expected: random weights)" % (len(r["token_ids"]), ms))
'

step 4 "Building the site into dist/ (page, worker, Pyodide, onnxruntime-web, the tiny model)"
.venv/bin/lfmvl-site build --synthetic --out dist "$@"

step 5 "Serving dist/ on http://127.0.0.1:$PORT (open it in Chrome or Edge; Ctrl+C stops)"
echo "    next time, without the steps above: .venv/bin/lfmvl-site serve dist" >&2
exec .venv/bin/lfmvl-site serve dist --port "$PORT"
