// Dawn (npm `webgpu`) as navigator.gpu in Node, with the shims dawn.node 0.6.2 needs to run onnxruntime-web:
// - it rejects writeBuffer data that views a SharedArrayBuffer (the threaded wasm heap): such views are copied
//   into a plain buffer first;
// - it takes only {buffer} as a bind-group resource, while the spec (and ORT's graph-capture path) may pass a
//   GPUBuffer itself.
import { pathToFileURL } from "node:url";
import path from "node:path";

// `flags`: Dawn toggles for create(), e.g. "disable-dawn-features=timestamp_quantization" for kernel profiles.
export async function installDawn(webgpuDir, flags = []) {
  const { create, globals } = await import(pathToFileURL(path.join(webgpuDir, "index.js")).href);
  Object.assign(globalThis, globals);
  {
    const proto = globalThis.GPUQueue.prototype, write = proto.writeBuffer;
    proto.writeBuffer = function (buffer, offset, data, dataOffset = 0, size) {
      if (ArrayBuffer.isView(data) && data.buffer instanceof SharedArrayBuffer) {
        const el = data.BYTES_PER_ELEMENT || 1;
        const count = size === undefined ? data.length - dataOffset : size;
        const copy = new Uint8Array(count * el);  // (slicing a SharedArrayBuffer would give another one)
        copy.set(new Uint8Array(data.buffer, data.byteOffset + dataOffset * el, count * el));
        return write.call(this, buffer, offset, copy, 0, copy.length);
      }
      return write.call(this, buffer, offset, data, dataOffset, size);
    };
  }
  { // dawn.node 0.6.2 takes only {buffer} as a bind-group resource; the spec (and ORT's graph-capture path) may
    // pass a GPUBuffer itself.
    const proto = globalThis.GPUDevice.prototype, make = proto.createBindGroup;
    proto.createBindGroup = function (desc) {
      const entries = (desc.entries || []).map((e) => (e.resource instanceof globalThis.GPUBuffer ? { ...e, resource: { buffer: e.resource } } : e));
      return make.call(this, { ...desc, entries });
    };
  }
  const gpu = create(flags);
  Object.defineProperty(globalThis, "navigator", { value: { gpu, userAgent: "node", hardwareConcurrency: 16 }, configurable: true, writable: true });
  return gpu;
}
