#!/bin/bash
# The final-token-choice bench (benchmarks/gpu/argmax_bench.mjs) in one device call, with .cache/argbench/ carried:
#   node.xz, node_modules/webgpu (npm webgpu@0.6.2, dawn.node.xz), ort/ (onnxruntime-web 1.30.0 ort.webgpu.min.mjs +
#   asyncify mjs/wasm.xz), gl/*.deb (Vulkan/GL loaders), graphs/ (PYTHONPATH=src python benchmarks/gpu/argmax_graphs.py
#   .cache/argbench/graphs). Writes $OUT/{nvidia.txt,argmax.json,log,profile.json.gz}. Without nvidia-smi it runs on
#   Chromium's SwiftShader (a dry run on the build machine).
#   device tool: run(command="bash benchmarks/gpu/argmax_run.sh", carry=[".cache/argbench"])
set -u
C=$PWD/.cache/argbench
W=/tmp/argbench
mkdir -p "$W" "$OUT"
if command -v nvidia-smi >/dev/null; then
  for f in "$C"/gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv > "$OUT/nvidia.txt"
else
  export LD_LIBRARY_PATH=/usr/lib/chromium VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json
fi
export XDG_RUNTIME_DIR=$(mktemp -d) && chmod 700 "$XDG_RUNTIME_DIR"
xz -dc "$C/node.xz" > "$W/node" && chmod +x "$W/node"
rm -rf "$W/node_modules" "$W/ort" && cp -r "$C/node_modules" "$C/ort" "$W/"
xz -d "$W/node_modules/webgpu/dist/linux-x64/dawn.node.xz" "$W"/ort/*.xz
timeout "${BENCH_S:-400}" "$W/node" benchmarks/gpu/argmax_bench.mjs --webgpu "$W/node_modules/webgpu" --ort "$W/ort" \
  --graphs "$C/graphs" --out "$OUT/argmax.json" --stdout "$W/stdout" --runs "${RUNS:-100}" > "$W/stdout" 2> "$W/stderr"
echo "rc=$?"
grep -v "W:onnxruntime" "$W/stderr" > "$OUT/log"; gzip -c "$W/stdout" > "$OUT/profile.json.gz"
tail -c 4000 "$OUT/log"
