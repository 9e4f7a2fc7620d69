#!/bin/bash
# The GPU benchmark, on the device machine (the `device` tool), from the repo root, with .gpubench/ carried
# (made here by benchmarks/gpu/carry.sh). Writes $OUT/{nvidia.txt,bandwidth.json,prepare.json,proxies.json,
# webgpu.json,log}. Every step is bounded so the whole command ends inside one 10-minute call.
set -u
T0=$(date +%s)
left() { echo $(( ${BUDGET_S:-560} - ($(date +%s) - T0) )); }
C=$PWD/.gpubench
W=/tmp/gb
mkdir -p "$W" "$OUT"
exec > >(tee -a "$OUT/log") 2>&1

if [ -z "${LOCAL_TEST:-}" ]; then  # LOCAL_TEST=1: a dry run on the build machine (SwiftShader, tiny model)
  for f in "$C"/gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
else  # Chromium's SwiftShader Vulkan ICD and loader (gpu-probe/README.md); e.g. LOCAL_TEST=1 SIZE=tiny PYTHON=.venv/bin/python
  export LD_LIBRARY_PATH=/usr/lib/chromium VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json
fi
PY=${PYTHON:-python3}
export XDG_RUNTIME_DIR=$(mktemp -d) && chmod 700 "$XDG_RUNTIME_DIR"
xz -dc "$C/node.xz" > "$W/node" && chmod +x "$W/node"
cp -r "$C/node_modules" "$C/ort" "$C/pyodide" "$W/"
xz -d "$W/node_modules/webgpu/dist/linux-x64/dawn.node.xz" "$W"/ort/*.xz "$W"/pyodide/*.xz
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
echo "setup done at $(( $(date +%s) - T0 )) s"

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv > "$OUT/nvidia.txt"
timeout 60 ${PYTHON_TORCH:-python3} benchmarks/gpu/bandwidth.py > "$OUT/bandwidth.json"; cat "$OUT/bandwidth.json"
WHEEL=$($PY -c "from pathlib import Path; from lfmvl_site.site.wheel import runtime_wheel; print(runtime_wheel(Path('$W/py')))")
if [ -z "${SKIP_PROXIES:-}" ]; then  # SKIP_PROXIES=1: the model variants only
  timeout 120 $PY benchmarks/gpu/proxy.py "$W/proxy" ${PROXIES:-} > "$W/proxies.json"; cat "$W/proxies.json"
  echo "proxies built at $(( $(date +%s) - T0 )) s"
fi

config() {  # config NAME MANIFESTS_JSON PROXIES_JSON OUTFILE
  $PY - "$@" <<EOF
import json, sys
name, manifests, proxies, out = sys.argv[1:5]
json.dump({"repo": "$PWD", "webgpu": "$W/node_modules/webgpu", "ort": "$W/ort", "pyodide": "$W/pyodide",
           "packages": ["numpy", "jinja2"], "wheel": "$WHEEL", "model": "$W/model", "manifests": json.loads(manifests),
           "tokens": ${TOKENS:-32}, "reps": ${REPS:-5}, "out": out, "proxyDir": "$W/proxy",
           "streams": json.loads('${STREAMS:-null}'),
           "proxies": json.loads(proxies)}, open(name, "w"))
EOF
}
# 1. proxies: per-run / per-node overhead, GPU-resident I/O, graph capture (static shapes)
if [ -z "${SKIP_PROXIES:-}" ]; then
  config "$W/c1.json" '[]' "$(cat "$W/proxies.json")" "$OUT/proxies.json"
  timeout 150 "$W/node" benchmarks/gpu/node_bench.mjs "$W/c1.json" 2>&1 | grep -v "W:onnxruntime"
  echo "proxies timed at $(( $(date +%s) - T0 )) s"
fi

# 2. the synthetic full-size model through the project's runtime, one decoder variant at a time
# VARIANT="site default (all three + fuse + float activations)" times one decoder variant only (a shorter call); "A|B" times A and B.
if [ -n "${VARIANT:-}" ]; then IFS='|' read -ra VARIANTS <<< "$VARIANT"; else
  VARIANTS=("site default (all three + fuse + float activations)" "all three + fuse, int8 activations" "all three, unfused" "none (published shape)" "last_logits" "argmax" "q4_lm_head"); fi
timeout $(( $(left) - 60 )) $PY benchmarks/gpu/prepare_model.py "$W/model" --size "${SIZE:-full}" \
  --variants "${VARIANTS[@]}" > "$OUT/prepare.json"
cat "$OUT/prepare.json"
echo "model built at $(( $(date +%s) - T0 )) s"
MANIFESTS=$($PY -c "import json; print(json.dumps(json.load(open('$OUT/prepare.json'))['manifests']))")
config "$W/c2.json" "$MANIFESTS" '[]' "$OUT/webgpu.json"
timeout $(( $(left) - 5 )) "$W/node" benchmarks/gpu/node_bench.mjs "$W/c2.json" 2>&1 | grep -v "W:onnxruntime" | cut -c1-3000
echo "done at $(( $(date +%s) - T0 )) s"
