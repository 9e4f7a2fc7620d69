#!/bin/bash
# Static-shape decode step + graph capture on the device (issue 7, "attack the overhead"), one call, with .gpubench/
# carried (benchmarks/gpu/carry.sh). Writes $OUT/{nvidia.txt,bandwidth.json,prepare_static.json,static.json,log}.
#   device tool: run(command="bash benchmarks/gpu/static_run.sh", carry=[".gpubench"], kind="nvidia-h200")
#   here (SwiftShader, tiny model): OUT=/tmp/o LOCAL_TEST=1 SIZE=tiny MAX_LEN=64 bash benchmarks/gpu/static_run.sh
set -u
T0=$(date +%s)
C=$PWD/.gpubench
W=/tmp/gbs
mkdir -p "$W" "$OUT"
exec > >(tee -a "$OUT/log") 2>&1
if [ -z "${LOCAL_TEST:-}" ]; then
  for f in "$C"/gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
else  # Chromium's SwiftShader Vulkan ICD and loader (gpu-probe/README.md)
  export LD_LIBRARY_PATH=/usr/lib/chromium VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json
fi
export XDG_RUNTIME_DIR=$(mktemp -d) && chmod 700 "$XDG_RUNTIME_DIR"
xz -dc "$C/node.xz" > "$W/node" && chmod +x "$W/node"
rm -rf "$W/node_modules" "$W/ort" && cp -r "$C/node_modules" "$C/ort" "$W/"
xz -d "$W/node_modules/webgpu/dist/linux-x64/dawn.node.xz" "$W"/ort/*.xz
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
echo "setup done at $(( $(date +%s) - T0 )) s"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv > "$OUT/nvidia.txt" 2>/dev/null
[ -z "${LOCAL_TEST:-}" ] && { timeout 60 $PY benchmarks/gpu/bandwidth.py > "$OUT/bandwidth.json"; cat "$OUT/bandwidth.json"; }
timeout 300 $PY benchmarks/gpu/prepare_static.py "$W/model" --size "${SIZE:-full}" --max-len "${MAX_LEN:-1024}" \
  > "$OUT/prepare_static.json" || { echo "prepare failed"; exit 1; }
$PY -c "import json; d=json.load(open('$OUT/prepare_static.json')); d.pop('io'); print(json.dumps(d))"
echo "model built at $(( $(date +%s) - T0 )) s"
cat > "$W/c.json" <<J
{"webgpu": "$W/node_modules/webgpu", "ort": "$W/ort", "model": "$W/model", "prepare": "$OUT/prepare_static.json",
 "tokens": ${TOKENS:-32}, "reps": ${REPS:-3}, "out": "$OUT/static.json"}
J
timeout ${BENCH_S:-300} "$W/node" benchmarks/gpu/static_bench.mjs "$W/c.json" 2>&1 | grep -v "W:onnxruntime" | cut -c1-2000
echo "done at $(( $(date +%s) - T0 )) s"
