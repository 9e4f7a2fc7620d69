// Is onnxruntime-web's WebGPU attention right? Runs each case of attention_cases.py on WebGPU (Dawn in Node:
// a real GPU on the device machine) and prints the max abs difference from native onnxruntime, plus the median
// run time. Usage: node attention_probe.mjs WEBGPU_PKG_DIR ORT_DIR CASES_DIR
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { installDawn } from "./dawn.mjs";

const [webgpuDir, ortDir, casesDir] = process.argv.slice(2);
await installDawn(webgpuDir);
const ort = await import(pathToFileURL(path.join(ortDir, "ort.webgpu.min.mjs")).href);
ort.env.wasm.numThreads = 1;
ort.env.wasm.wasmPaths = pathToFileURL(ortDir + "/").href;
const f32 = (file) => { const b = fs.readFileSync(file); return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4); };
const rows = [];
for (const c of JSON.parse(fs.readFileSync(path.join(casesDir, "cases.json"), "utf8"))) {
  for (const ep of ["webgpu", "wasm"]) {
    try {
      const s = await ort.InferenceSession.create(fs.readFileSync(path.join(casesDir, c.name + ".onnx")), { executionProviders: [ep] });
      const feeds = {};
      for (const [k, dims] of Object.entries(c.inputs)) feeds[k] = new ort.Tensor("float32", f32(path.join(casesDir, `${c.name}.${k}.bin`)), dims);
      const ref = f32(path.join(casesDir, c.name + ".ref.bin"));
      let out = await s.run(feeds, ["o"]);
      const ms = [];
      for (let i = 0; i < 7; i++) { const t = performance.now(); out = await s.run(feeds, ["o"]); ms.push(performance.now() - t); }
      const o = out.o.data;
      let md = 0;
      for (let i = 0; i < ref.length; i++) md = Math.max(md, Math.abs(o[i] - ref[i]));
      ms.sort((a, b) => a - b);
      rows.push({ case: c.name, ep, max_abs_diff: md, median_ms: ms[3] });
      await s.release();
    } catch (e) { rows.push({ case: c.name, ep, error: String(e).slice(0, 300) }); }
    console.log(JSON.stringify(rows[rows.length - 1]));
  }
}
fs.writeFileSync(path.join(process.env.OUT || ".", "attention_probe.json"), JSON.stringify(rows, null, 1));
