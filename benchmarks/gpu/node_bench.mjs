// Device side: onnxruntime-web's WebGPU EP in Node through Dawn (npm `webgpu`), driven by the project's own
// Python runtime in Pyodide (benchmarks/page/loops.mjs → lfmvl_site.runtime.browser.PageRuntime), as the page's
// worker drives it. Then the static-shape overhead experiments (GPU-resident I/O, graph capture) on proxies.
//
//   node node_bench.mjs CONFIG.json     (CONFIG: see benchmarks/gpu/run.sh)   → prints JSON lines, writes out file
import { readFileSync, writeFileSync, existsSync } from "node:fs";
import { pathToFileURL } from "node:url";
import path from "node:path";
import { installDawn } from "./dawn.mjs";

const cfg = JSON.parse(readFileSync(process.argv[2], "utf8"));
const results = { started: new Date().toISOString(), variants: {}, proxies: {} };
const save = () => writeFileSync(cfg.out, JSON.stringify(results, null, 1));
const log = (o) => console.log(JSON.stringify(o));

const gpu = await installDawn(cfg.webgpu);
const adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
const features = adapter ? [...adapter.features] : [];
results.adapter = adapter && { vendor: adapter.info?.vendor, architecture: adapter.info?.architecture,
  description: adapter.info?.description, shader_f16: adapter.features.has("shader-f16"),
  maxBufferSize: adapter.limits.maxBufferSize, maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize };
log({ adapter: results.adapter });

const ort = await import(pathToFileURL(path.join(cfg.ort, "ort.webgpu.min.mjs")).href);
ort.env.wasm.wasmPaths = pathToFileURL(cfg.ort + "/").href;
ort.env.wasm.numThreads = 1;  // as the page when not cross-origin isolated; Node has no COOP/COEP notion
const { median } = await import(pathToFileURL(path.join(cfg.repo, "benchmarks/page/loops.mjs")).href);

// ---- 1. the project's runtime on the synthetic full-size model, one decoder variant at a time
if (cfg.model && cfg.manifests?.length) {
  const { makeBench } = await import(pathToFileURL(path.join(cfg.repo, "benchmarks/page/loops.mjs")).href);
  const { loadPyodide } = await import(pathToFileURL(path.join(cfg.pyodide, "pyodide.mjs")).href);
  let manifestText = null;
  const local = (url) => url.replace(/^file:\/\//, "");
  const bench = makeBench({
    loadPyodide, ort, indexURL: cfg.pyodide + "/", lockFileURL: path.join(cfg.pyodide, "pyodide-lock.json"),
    readBytes: async (url) => new Uint8Array(readFileSync(local(url))),
    readText: async (url) => {
      if (url.endsWith("/manifest.json")) return manifestText;
      if (!existsSync(local(url))) throw new Error(`404 ${url}`);
      return readFileSync(local(url), "utf8");
    },
    pySource: async () => readFileSync(path.join(cfg.repo, "benchmarks/page/bench_py.py"), "utf8"),
  });
  results.init = await bench.init({ packages: cfg.packages, wheel: cfg.wheel, threads: 1 });
  if (cfg.streams) {  // benchmarks/gpu/stream_py.py beside the bench page's Python (it imports lfmvl_bench)
    bench.pyodide.FS.writeFile("/home/pyodide/lfmvl_stream.py", readFileSync(path.join(cfg.repo, "benchmarks/gpu/stream_py.py"), "utf8"));
  }
  log({ init: results.init });
  const [w, h] = [640, 480];
  for (const m of cfg.manifests) {
    manifestText = readFileSync(path.join(cfg.model, m.file), "utf8");
    const r = { manifest: m.file };
    try {
      r.load = await bench.load({ modelUrl: cfg.model + "/", device: "webgpu", features });
      const args = { w, h, tokens: cfg.tokens, prompt: "Describe this image." };
      await bench.pyLoop({ ...args, tokens: 3 });
      await bench.jsLoop({ ...args, tokens: 3 });
      const runs = { python: [], js: [], js_direct: [] };
      const loops = { python: () => bench.pyLoop(args), js: () => bench.jsLoop(args),
        js_direct: () => bench.jsLoop({ ...args, direct: true }) };
      const order = Object.keys(loops);
      for (let k = 0; k < cfg.reps; k++) {  // the order rotates each repetition (no loop always runs first)
        for (let j = 0; j < order.length; j++) {
          const name = order[(j + k) % order.length];
          runs[name].push(await loops[name]());
        }
      }
      const p = runs.python;
      r.ttft = { first_token_ms: median(p.map((x) => x.first_token_ms)), preprocess_ms: median(p.map((x) => x.preprocess_ms)),
        vision_ms: median(p.map((x) => x.vision_ms)), prefill_ms: median(p.map((x) => x.prefill_ms)) };
      for (const [k, rs] of Object.entries(runs)) {
        const per = rs.map((x) => x.decode_wall_per_token_ms);
        r[k] = { decode_wall_per_token_ms: median(per), min_ms: Math.min(...per), max_ms: Math.max(...per), reps: per.length,
          step_ms_median: median(rs.flatMap((x) => x.step_ms)), prefill_ms: median(rs.map((x) => x.prefill_ms)) };
      }
      r.same_tokens = Object.values(runs).every((rs) => rs.every((x) => JSON.stringify(x.token_ids) === JSON.stringify(p[0].token_ids)));
      if (cfg.streams) r.streams = await streams(bench, cfg.streams, w, h);
    } catch (e) {
      r.error = String(e && e.stack || e).slice(0, 1500);
    }
    try { await bench.unload(); } catch (e) { r.unload_error = String(e).slice(0, 300); }
    results.variants[m.name] = r;
    log({ variant: m.name, ...r });
    save();
  }
}

// Caption latency per frame over three clips, each frame alone ("plain") vs one drafted stream, modes alternating.
async function streams(bench, { frames, tokens, reps = 1 }, w, h) {
  const mod = bench.pyodide.pyimport("lfmvl_stream");
  const out = {};
  for (const kind of ["same", "moving", "cuts"]) {
    const got = { plain: [], drafted: [] };
    for (let k = 0; k < reps; k++) {
      for (const mode of k % 2 ? ["drafted", "plain"] : ["plain", "drafted"]) {
        got[mode].push(JSON.parse(await mod.run(kind, frames, w, h, tokens, mode)));
      }
    }
    const sum = (rows) => {
      const later = rows.flatMap((r) => r.slice(1));  // the first frame of a clip has nothing to draft from
      const proposed = later.reduce((a, x) => a + x.proposed, 0);
      return { caption_ms_median: median(later.map((x) => x.wall_ms)), caption_ms_min: Math.min(...later.map((x) => x.wall_ms)),
        caption_ms_max: Math.max(...later.map((x) => x.wall_ms)), first_frame_ms: median(rows.map((r) => r[0].wall_ms)),
        decoder_runs_per_caption: later.reduce((a, x) => a + x.decoder_runs, 0) / later.length,
        acceptance: proposed ? later.reduce((a, x) => a + x.accepted, 0) / proposed : null,
        features_reused: later.filter((x) => x.features_reused).length + "/" + later.length };
    };
    const same = got.plain.every((rows, k) => rows.every((x, i) => JSON.stringify(x.token_ids) === JSON.stringify(got.drafted[k][i].token_ids)));
    out[kind] = { plain: sum(got.plain), drafted: sum(got.drafted), same_tokens: same, frames, tokens };
    log({ stream: kind, ...out[kind] });
  }
  out.diagnose = JSON.parse(await mod.diagnose(w, h, tokens));
  log({ diagnose: out.diagnose });
  return out;
}

// ---- 2. static-shape proxies: per-run and per-node overhead, and what GPU-resident I/O and graph capture remove
async function timeProxy(file, outName, nOut, mode) {
  const opts = { executionProviders: ["webgpu"], graphOptimizationLevel: "all" };
  if (mode !== "cpu-io") opts.preferredOutputLocation = "gpu-buffer";
  if (mode === "capture") opts.enableGraphCapture = true;
  const s = await ort.InferenceSession.create(readFileSync(file), opts);
  const x = new Float32Array(2048);
  for (let i = 0; i < x.length; i++) x[i] = Math.sin(i) * 0.1;
  let feeds, fetches, device, outBuf;
  if (mode === "cpu-io") {
    feeds = { x: new ort.Tensor("float32", x, [1, 1, 2048]) };
  } else {
    device = ort.env.webgpu.device;
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
    const inBuf = device.createBuffer({ size: x.byteLength, usage });
    device.queue.writeBuffer(inBuf, 0, x);
    outBuf = device.createBuffer({ size: nOut * 4, usage });
    feeds = { x: ort.Tensor.fromGpuBuffer(inBuf, { dataType: "float32", dims: [1, 1, 2048] }) };
    fetches = { [outName]: ort.Tensor.fromGpuBuffer(outBuf, { dataType: "float32", dims: [1, 1, nOut] }) };
  }
  const once = async () => (fetches ? s.run(feeds, fetches) : s.run(feeds));
  for (let i = 0; i < 5; i++) await once();
  const reps = 30;
  // cpu-io: each run downloads its output (what a caller reading logits pays per step);
  // gpu modes: back-to-back runs, one download at the end to wait for the GPU, time / runs.
  const single = [];
  let t0 = performance.now();
  for (let i = 0; i < reps; i++) {
    const a = performance.now();
    const o = await once();
    if (mode === "cpu-io") { o[outName].data; single.push(performance.now() - a); }
  }
  if (mode !== "cpu-io") await device.queue.onSubmittedWorkDone();
  const perRun = (performance.now() - t0) / reps;
  await s.release();
  return { mode, per_run_ms: +perRun.toFixed(3), median_ms: single.length ? +median(single).toFixed(3) : null };
}

for (const p of cfg.proxies || []) {
  const r = {};
  for (const mode of ["cpu-io", "gpu-io", "capture"]) {
    try { r[mode] = await timeProxy(path.join(cfg.proxyDir, p.file), p.out, p.n_out, mode); }
    catch (e) { r[mode] = { mode, error: String(e && e.message || e).slice(0, 600) }; }
    log({ proxy: p.file, ...r[mode] });
    results.proxies[p.file] = { ...p, ...r };
    save();
  }
  results.proxies[p.file] = { ...p, ...r };
  save();
}
results.finished = new Date().toISOString();
save();
process.exit(0);
