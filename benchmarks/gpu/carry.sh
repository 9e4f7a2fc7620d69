#!/bin/bash
# Fill .gpubench/ (ignored through .git/info/exclude) with what benchmarks/gpu/run.sh needs on the device machine:
# the Node binary, dawn.node (npm webgpu@0.6.2), onnxruntime-web 1.30.0's WebGPU build, Pyodide 0.27.7 + numpy/jinja2
# from a built site, and the Vulkan/GL loader debs. ~41 MB, xz-compressed. Usage: bash benchmarks/gpu/carry.sh DIST
set -euo pipefail
DIST=${1:?a built site (lfmvl-site build --synthetic --out DIST) for its pyodide/ folder}
C=$PWD/.gpubench
grep -qx "/.gpubench/" .git/info/exclude 2>/dev/null || echo "/.gpubench/" >> .git/info/exclude
rm -rf "$C" && mkdir -p "$C/gl" "$C/ort" "$C/node_modules/webgpu/dist/linux-x64" /tmp/amd64/partial
T=$(mktemp -d)
(cd "$T" && npm pack -q webgpu@0.6.2 onnxruntime-web@1.30.0 >/dev/null && mkdir w o && tar xzf webgpu-0.6.2.tgz -C w \
  && tar xzf onnxruntime-web-1.30.0.tgz -C o)
cp "$T/w/package/index.js" "$T/w/package/package.json" "$C/node_modules/webgpu/"
xz -T2 -c "$T/w/package/dist/linux-x64/dawn.node" > "$C/node_modules/webgpu/dist/linux-x64/dawn.node.xz"
for f in ort.webgpu.min.mjs ort-wasm-simd-threaded.asyncify.mjs ort-wasm-simd-threaded.asyncify.wasm; do
  cp "$T/o/package/dist/$f" "$C/ort/"
done
xz -T2 "$C/ort/ort-wasm-simd-threaded.asyncify.wasm"
xz -T2 -c "$(command -v node)" > "$C/node.xz"
cp -r "$DIST/pyodide" "$C/pyodide" && xz -T2 "$C/pyodide/pyodide.asm.wasm"
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
apt-get $o update >/dev/null
(cd "$C/gl" && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
rm -rf "$T"
du -sh "$C"
