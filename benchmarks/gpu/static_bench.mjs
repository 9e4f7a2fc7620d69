// Device side: decode ms/token of the site-default q4 decoder through onnxruntime-web's WebGPU EP (Dawn in Node),
// three ways in one run: (a) the exported dynamic decoder as the site drives it (outputs left on the GPU and fed
// on, caches growing), (b) the static-shape decode step (benchmarks/gpu/static_decode.py) with GPU-resident inputs and
// outputs, one KV buffer per cache bound as both past and present, (c) the same with enableGraphCapture.
// Each mode runs a greedy loop (read back next_token, look its embedding row up, feed it) and back-to-back steps
// (no read-back: the GPU pipeline alone), from an empty cache, and records the token ids so the modes can be
// checked against each other.
//
//   node static_bench.mjs CONFIG.json   (CONFIG: {webgpu, ort, model, prepare, tokens, reps, out})
import { readFileSync, writeFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import path from "node:path";
import { installDawn } from "./dawn.mjs";

const cfg = JSON.parse(readFileSync(process.argv[2], "utf8"));
const prep = JSON.parse(readFileSync(cfg.prepare, "utf8"));
const results = { started: new Date().toISOString(), tokens: cfg.tokens, reps: cfg.reps, max_len: prep.max_len, modes: {} };
const save = () => writeFileSync(cfg.out, JSON.stringify(results, null, 1));
const log = (o) => console.log(JSON.stringify(o));
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };

const gpu = await installDawn(cfg.webgpu);
const adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
results.adapter = { description: adapter.info?.description, vendor: adapter.info?.vendor, shader_f16: adapter.features.has("shader-f16") };
log({ adapter: results.adapter });

const ort = await import(pathToFileURL(path.join(cfg.ort, "ort.webgpu.min.mjs")).href);
ort.env.wasm.wasmPaths = pathToFileURL(cfg.ort + "/").href;
ort.env.wasm.numThreads = 1;

const table = readFileSync(path.join(cfg.model, "embed.f32"));
const H = prep.embed.hidden;
const row = (tok) => new Float32Array(table.buffer.slice(table.byteOffset + tok * H * 4, table.byteOffset + (tok + 1) * H * 4));
const START = 1, T = cfg.tokens, MAX = prep.max_len;
if (T + 4 > MAX) throw new Error(`tokens ${T} do not fit max_len ${MAX}`);

async function session(name, extra) {
  const t = performance.now();
  const s = await ort.InferenceSession.create(readFileSync(path.join(cfg.model, `${name}.onnx`)), {
    executionProviders: ["webgpu"], graphOptimizationLevel: "all", preferredOutputLocation: "gpu-buffer",
    externalData: [{ path: `${name}.onnx_data`, data: readFileSync(path.join(cfg.model, `${name}.onnx_data`)) }], ...extra });
  return [s, +(performance.now() - t).toFixed(0)];
}

// ---- (a) the dynamic decoder, driven as the site's runtime drives it on WebGPU
async function dynamicMode() {
  const [s, load_ms] = await session("decoder", {});
  const meta = Object.fromEntries(prep.io.inputs.map(([n, dims]) => [n, dims]));
  const run = async (n_tokens, readBack) => {
    let past = {};
    for (const n of s.inputNames) {
      if (n.startsWith("past_key_values")) past[n] = new ort.Tensor("float32", new Float32Array(0), [1, meta[n][1], 0, meta[n][3]]);
      else if (n.startsWith("past_conv")) past[n] = new ort.Tensor("float32", new Float32Array(meta[n].reduce((a, b) => a * b)), meta[n]);
    }
    const toks = [];
    let tok = START;
    const t0 = performance.now();
    for (let k = 0; k < n_tokens; k++) {
      const feeds = { inputs_embeds: new ort.Tensor("float32", row(tok), [1, 1, H]),
        attention_mask: new ort.Tensor("int64", new BigInt64Array(k + 1).fill(1n), [1, k + 1]), ...past };
      const out = await s.run(feeds);
      if (readBack) { tok = Number((await out.next_token.getData())[0]); toks.push(tok); }
      for (const v of Object.values(past)) if (v.location === "gpu-buffer") v.dispose();
      past = {};
      for (const n of s.inputNames) if (n.startsWith("past")) past[n] = out[n.replace("past_key_values", "present").replace("past_conv", "present_conv")];
      out.logits.dispose();
      if (!readBack) out.next_token.dispose();
    }
    if (!readBack) await ort.env.webgpu.device.queue.onSubmittedWorkDone();
    const ms = (performance.now() - t0) / n_tokens;
    for (const v of Object.values(past)) if (v.location === "gpu-buffer") v.dispose();
    return { ms, toks };
  };
  return { s, load_ms, run };
}

// ---- ORT-web 1.30 graph-capture workaround. ort.webgpu registers a caller's GPUBuffer for each run (a handle
// plus a use count kept on the buffer under a module-private Symbol) and releases the handle when the run's
// tensors are freed. With enableGraphCapture it binds inputs/outputs once (first run) and never rebinds, so from
// the second run on the bound handles are dead: createBindGroup gets `buffer: undefined` (dawn.node: "no overload
// matched ... 'resource'"). Pinning keeps each buffer's use count >= 1, so its first handle stays valid for good.
let regSymbol = null;
async function learnRegistrationSymbol() {
  const s = await ort.InferenceSession.create(readFileSync(path.join(cfg.model, "probe.onnx")),
    { executionProviders: ["webgpu"], preferredOutputLocation: "gpu-buffer" });
  const out = await s.run({ x: new ort.Tensor("float32", new Float32Array(4), [4]) });
  regSymbol = Object.getOwnPropertySymbols(out.y.gpuBuffer).find((y) => y.description === "gpuBufferMetadata") || null;
  out.y.dispose();
  await s.release();
  if (!regSymbol) throw new Error("ort-web no longer marks registered buffers with Symbol(gpuBufferMetadata): re-check the capture workaround");
}
function pin(buffer) {
  let meta;
  Object.defineProperty(buffer, regSymbol, { configurable: true, get: () => meta, set: (v) => {
    let count = v[1];
    meta = v;
    Object.defineProperty(v, 1, { get: () => count, set: (c) => { count = Math.max(1, c); } });
  } });
}

// ---- (b)/(c) the static step: every input/output a pre-created GPU buffer; caches shared past/present
async function staticMode(capture) {
  const [s, load_ms] = await session("step", capture ? { enableGraphCapture: true } : {});
  const device = ort.env.webgpu.device;
  if (capture && cfg.pin !== false && !regSymbol) await learnRegistrationSymbol();
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
  const elem = { 1: ["float32", 4], 7: ["int64", 8] };
  const bufs = {}, feeds = {}, fetches = {};
  const tensor = (buf, type, dims) => ort.Tensor.fromGpuBuffer(buf, { dataType: elem[type][0], dims });
  for (const [n, dims, type] of prep.io.inputs) {
    const bytes = dims.reduce((a, b) => a * b, 1) * elem[type][1];
    bufs[n] = device.createBuffer({ size: Math.max(16, bytes), usage });
    feeds[n] = tensor(bufs[n], type, dims);
  }
  for (const [n, dims, type] of prep.io.outputs) {
    const past = n.replace(/^present\.(\d+)\./, "past_key_values.$1.").replace(/^present_conv\./, "past_conv.");
    if (bufs[past]) { fetches[n] = tensor(bufs[past], type, dims); continue; }  // the shared cache buffer
    bufs[n] = device.createBuffer({ size: Math.max(16, dims.reduce((a, b) => a * b, 1) * elem[type][1]), usage });
    fetches[n] = tensor(bufs[n], type, dims);
  }
  if (capture && cfg.pin !== false) Object.values(bufs).forEach(pin);
  const staging = device.createBuffer({ size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const readToken = async () => {
    const enc = device.createCommandEncoder();
    enc.copyBufferToBuffer(bufs.next_token, 0, staging, 0, 8);
    device.queue.submit([enc.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    const v = Number(new BigInt64Array(staging.getMappedRange(0, 8).slice(0))[0]);
    staging.unmap();
    return v;
  };
  const one = new BigInt64Array([1n]);
  const run = async (n_tokens, readBack) => {
    const enc = device.createCommandEncoder();  // a fresh, empty cache and mask
    for (const n of Object.keys(feeds)) if (n !== "inputs_embeds") enc.clearBuffer(bufs[n]);
    device.queue.submit([enc.finish()]);
    const toks = [];
    let tok = START;
    const t0 = performance.now();
    for (let k = 0; k < n_tokens; k++) {
      device.queue.writeBuffer(bufs.inputs_embeds, 0, row(tok));
      device.queue.writeBuffer(bufs.attention_mask, k * 8, one);
      await s.run(feeds, fetches);
      if (readBack) { tok = await readToken(); toks.push(tok); }
    }
    if (!readBack) await device.queue.onSubmittedWorkDone();
    return { ms: (performance.now() - t0) / n_tokens, toks };
  };
  return { s, load_ms, run, release: () => Object.values(bufs).forEach((b) => b.destroy()) };
}

const modes = [["a_dynamic", () => dynamicMode()], ["b_static", () => staticMode(false)], ["c_static_capture", () => staticMode(true)]];
for (const [name, make] of modes) {
  const r = {};
  let m;
  try {
    m = await make();
    r.load_ms = m.load_ms;
    await m.run(3, true);  // warm-up (and, for (c), the capturing run)
    const loop = [], b2b = [];
    for (let k = 0; k < cfg.reps; k++) {
      const x = await m.run(T, true);
      loop.push(x.ms);
      r.token_ids = x.toks;
      b2b.push((await m.run(T, false)).ms);
    }
    r.loop_ms_per_token = +median(loop).toFixed(3);
    r.loop_runs = loop.map((x) => +x.toFixed(3));
    r.back_to_back_ms_per_token = +median(b2b).toFixed(3);
    r.back_to_back_runs = b2b.map((x) => +x.toFixed(3));
  } catch (e) {
    r.error = String(e && e.stack || e).slice(0, 1500);
  }
  try { if (m) { await m.s.release(); m.release?.(); } } catch (e) { r.release_error = String(e).slice(0, 300); }
  results.modes[name] = r;
  log({ mode: name, ...r, token_ids: r.token_ids?.slice(0, 8) });
  save();
}
const ref = results.modes.a_dynamic?.token_ids;
results.same_tokens_as_dynamic = Object.fromEntries(Object.entries(results.modes).map(([k, v]) =>
  [k, ref && v.token_ids ? v.token_ids.filter((t, i) => t === ref[i]).length + "/" + ref.length : null]));
results.finished = new Date().toISOString();
save();
log({ same_tokens_as_dynamic: results.same_tokens_as_dynamic });
process.exit(0);
