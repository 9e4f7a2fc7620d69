// The decoder's final token choice alone on onnxruntime-web's WebGPU EP (Dawn in Node): logits [1, 1, V] fp32 on
// the GPU -> next_token, for the graphs of benchmarks/gpu/argmax_graphs.py (the former ONNX ArgMax tail, the
// build's reduction with and without the tokenizer mask, TopK and a two-stage ArgMax for comparison).
//
// 1. Checks each graph's next_token on the GPU against a JS argmax over its allowed ids (random, tie-heavy and
//    "forbidden ids largest" logits).
// 2. Wall per run (run() + reading next_token back, as the decoder's greedy loop does): warm-up, then RUNS rounds,
//    each round one run of every graph, the order rotated every round; median / min / max per graph.
// 3. Back-to-back runs with no read-back (the GPU pipeline alone), ms per run.
// 4. Per-kernel GPU times from a profiled session (enableProfiling; Dawn's timestamp quantization off), and which
//    EP ran each node.
//
//   node argmax_bench.mjs --webgpu DIR --ort DIR --graphs DIR --out FILE --stdout FILE [--runs 60] [--profile-runs 10]
//   (run it as `node argmax_bench.mjs ... --stdout S > S`)
// The profile events arrive on fd 1 (the wasm build writes them there at endProfiling(), past process.stdout), so
// node's stdout must go to the file named by --stdout, which is read back after each endProfiling(). Progress
// lines go to stderr.
import { readFileSync, statSync, writeFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import path from "node:path";
import { installDawn } from "./dawn.mjs";

const arg = (name, dflt) => { const i = process.argv.indexOf(`--${name}`); return i > 0 ? process.argv[i + 1] : dflt; };
const cfg = { webgpu: arg("webgpu"), ort: arg("ort"), graphs: arg("graphs"), out: arg("out"),
  stdout: arg("stdout"), runs: +arg("runs", 60), profileRuns: +arg("profile-runs", 10), backToBack: +arg("back-to-back", 50) };
for (const k of ["webgpu", "ort", "graphs", "out", "stdout"]) if (!cfg[k]) { console.error(`argmax_bench: --${k} is required`); process.exit(2); }
const log = (o) => process.stderr.write(JSON.stringify(o) + "\n");
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
const r3 = (x) => +x.toFixed(3);

// Dawn as navigator.gpu (dawn.mjs's shims), with timestamp quantization off (profile-2026-12.md).
const gpu = await installDawn(cfg.webgpu, ["disable-dawn-features=timestamp_quantization"]);
const adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
const results = { started: new Date().toISOString(), runs: cfg.runs, adapter: { description: adapter.info?.description,
  vendor: adapter.info?.vendor, architecture: adapter.info?.architecture }, graphs: {} };
const save = () => writeFileSync(cfg.out, JSON.stringify(results, null, 1));
log({ adapter: results.adapter });

const ort = await import(pathToFileURL(path.join(cfg.ort, "ort.webgpu.min.mjs")).href);
ort.env.wasm.wasmPaths = pathToFileURL(cfg.ort + "/").href;
ort.env.wasm.numThreads = 1;
ort.env.logLevel = "error";

const listing = JSON.parse(readFileSync(path.join(cfg.graphs, "graphs.json"), "utf8"));
const V = listing.vocab;
const open = (g, extra = {}) => ort.InferenceSession.create(readFileSync(path.join(cfg.graphs, g.file)), {
  executionProviders: ["webgpu"], graphOptimizationLevel: "all", preferredOutputLocation: "gpu-buffer", ...extra });

// Inputs: GPU buffers written once (the decoder's logits are on the GPU already).
function logitsCases(allowed) {
  let seed = 12345;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 4294967296);
  const cases = [];
  const a = new Float32Array(V); for (let i = 0; i < V; i++) a[i] = rnd() * 8 - 4; cases.push(a);
  const b = new Float32Array(V); for (let i = 0; i < V; i++) b[i] = Math.floor(rnd() * 5) - 2; cases.push(b);  // ties
  const c = Float32Array.from(a); for (let i = allowed; i < V; i++) c[i] = 1e9; c[allowed - 1] = 100; cases.push(c);
  const d = new Float32Array(V).fill(-5); d[V - 1] = 50; d[allowed - 1] = 7; d[3] = 7; cases.push(d);
  return cases;
}
const argmaxJs = (x, n) => { let best = 0; for (let i = 1; i < n; i++) if (x[i] > x[best]) best = i; return best; };

const sessions = {};
let device;
const bufs = new Map();
async function feedsFor(data) {
  device = device || ort.env.webgpu.device;
  if (!bufs.has(data)) {
    const buf = device.createBuffer({ size: data.byteLength, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
    device.queue.writeBuffer(buf, 0, data);
    bufs.set(data, buf);
  }
  return { x: ort.Tensor.fromGpuBuffer(bufs.get(data), { dataType: "float32", dims: [1, 1, V] }) };
}
async function once(s, feeds, readBack = true) {
  const out = await s.run(feeds);
  if (!readBack) return out.next_token;
  const id = Number((await out.next_token.getData())[0]);
  out.next_token.dispose();
  return id;
}

// 1. open + check
for (const g of listing.graphs) {
  const r = (results.graphs[g.name] = { ops: g.ops, allowed: g.allowed });
  try {
    const t = performance.now();
    sessions[g.name] = await open(g);
    r.load_ms = r3(performance.now() - t);
    r.check = [];
    for (const x of logitsCases(listing.entries)) {
      const got = await once(sessions[g.name], await feedsFor(x));
      r.check.push({ got, want: argmaxJs(x, g.allowed) });
    }
    r.correct = r.check.every((c) => c.got === c.want);
  } catch (e) { r.error = String(e && e.message || e).slice(0, 800); delete sessions[g.name]; }
  log({ graph: g.name, load_ms: r.load_ms, correct: r.correct, error: r.error });
  save();
}
const names = Object.keys(sessions);
const feeds = await feedsFor(logitsCases(listing.entries)[0]);

// 2. alternating timed runs (warm-up first)
for (const n of names) for (let i = 0; i < 10; i++) await once(sessions[n], feeds);
const walls = Object.fromEntries(names.map((n) => [n, []]));
const slow = new Set();  // a graph whose median after 10 rounds exceeds 50 ms stops there (bounded call time)
for (let round = 0; round < cfg.runs; round++) {
  for (let k = 0; k < names.length; k++) {
    const n = names[(round + k) % names.length];
    if (slow.has(n)) continue;
    if (round === 10 && median(walls[n]) > 50) { slow.add(n); continue; }
    const t = performance.now();
    await once(sessions[n], feeds);
    walls[n].push(performance.now() - t);
  }
}
for (const n of names) {
  const w = walls[n];
  Object.assign(results.graphs[n], { wall_median_ms: r3(median(w)), wall_min_ms: r3(Math.min(...w)), wall_max_ms: r3(Math.max(...w)), wall_n: w.length });
  log({ graph: n, wall_median_ms: results.graphs[n].wall_median_ms, min: results.graphs[n].wall_min_ms });
}
save();

// 3. back-to-back, no read-back: ms per run of the GPU pipeline
for (const n of names) {
  const t = performance.now();
  const outs = [];
  for (let i = 0; i < cfg.backToBack; i++) outs.push(await once(sessions[n], feeds, false));
  await device.queue.onSubmittedWorkDone();
  results.graphs[n].back_to_back_ms = r3((performance.now() - t) / cfg.backToBack);
  for (const o of outs) o.dispose();
}
save();

// 4. per-kernel GPU times (profiled session; its own walls are not comparable)
for (const g of listing.graphs) {
  if (!sessions[g.name]) continue;
  const r = results.graphs[g.name];
  try {
    const s = await open(g, { enableProfiling: true });
    for (let i = 0; i < 3 + cfg.profileRuns; i++) await once(s, feeds);
    const from = statSync(cfg.stdout).size;
    await s.endProfiling();
    const text = readFileSync(cfg.stdout).subarray(from).toString();
    await s.release();
    const events = [];
    for (const line of text.split("\n")) {
      const t = line.trim().replace(/^\[/, "").replace(/[,\]]$/, "");
      if (t.startsWith("{")) { try { events.push(JSON.parse(t)); } catch { /* not an event */ } }
    }
    const runs = events.filter((e) => e.cat === "Session" && e.name === "model_run").length;
    const kernels = events.filter((e) => e.cat === "Api");
    const nodes = events.filter((e) => e.cat === "Node" && e.name.endsWith("_kernel_time"));
    const perKernel = {};
    for (const k of kernels) (perKernel[k.name] = perKernel[k.name] || []).push(k.dur);
    // Per run: the kernels' summed durations / runs (a kernel may dispatch many times a run, e.g. TopK's sort steps).
    const sum = (xs) => xs.reduce((a, b) => a + b, 0);
    r.profile = {
      runs, events: events.length,
      kernels: Object.fromEntries(Object.entries(perKernel).map(([k, v]) => [k, { per_run: r3(v.length / runs),
        median_us: r3(median(v)), us_per_run: r3(sum(v) / runs) }])),
      gpu_us_per_run: r3(sum(Object.values(perKernel).map(sum)) / runs),
      providers: Object.fromEntries(nodes.map((e) => [e.name.replace(/_kernel_time$/, ""), `${e.args?.op_name}@${e.args?.provider}`])),
    };
    log({ graph: g.name, gpu_us_per_run: r.profile.gpu_us_per_run, kernels: Object.keys(perKernel).length, providers: r.profile.providers });
  } catch (e) { r.profile = { error: String(e && e.message || e).slice(0, 800) }; log({ graph: g.name, profile_error: r.profile.error }); }
  save();
}

const old = results.graphs.argmax_old;
for (const n of names) {
  const r = results.graphs[n];
  if (old && old.wall_median_ms && n !== "argmax_old") r.old_over_this_wall = r3(old.wall_median_ms / r.wall_median_ms);
  if (old && old.profile?.gpu_us_per_run && r.profile?.gpu_us_per_run && n !== "argmax_old")
    r.old_over_this_gpu = r3(old.profile.gpu_us_per_run / r.profile.gpu_us_per_run);
}
results.finished = new Date().toISOString();
save();
const table = names.map((n) => { const r = results.graphs[n]; return { graph: n, correct: r.correct, wall_median_ms: r.wall_median_ms,
  back_to_back_ms: r.back_to_back_ms, gpu_us: r.profile?.gpu_us_per_run, old_over_this_wall: r.old_over_this_wall, old_over_this_gpu: r.old_over_this_gpu }; });
log({ summary: table });
process.exit(0);
