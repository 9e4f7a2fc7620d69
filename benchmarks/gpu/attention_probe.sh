#!/bin/bash
# On the device machine (the `device` tool), from the repo root, with .gpuprobe/ carried (node.xz, webgpu/ with
# dawn.node.xz, ort/ with the wasm xz'd, gl/*.deb): is onnxruntime-web's WebGPU attention right on a real GPU?
# Writes $OUT/attention_probe.json and $OUT/log.
set -u
C=$PWD/.gpuprobe
W=/tmp/probe
mkdir -p "$W" "$OUT"
exec > >(tee -a "$OUT/log") 2>&1
for f in "$C"/gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export XDG_RUNTIME_DIR=$(mktemp -d) && chmod 700 "$XDG_RUNTIME_DIR"
xz -dc "$C/node.xz" > "$W/node" && chmod +x "$W/node"
cp -r "$C/webgpu" "$C/ort" "$W/"
xz -d "$W/webgpu/dist/linux-x64/dawn.node.xz" "$W"/ort/*.xz
nvidia-smi --query-gpu=name,driver_version --format=csv
PYTHONPATH=$PWD/src timeout 120 python3 benchmarks/gpu/attention_cases.py "$W/cases" || exit 1
timeout 300 "$W/node" benchmarks/gpu/attention_probe.mjs "$W/webgpu" "$W/ort" "$W/cases" 2>&1 | grep -v "W:onnxruntime"
