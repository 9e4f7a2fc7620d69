// The captioning worker: Pyodide runs the project's Python runtime (lfmvl_site.runtime), which drives
// onnxruntime-web through lfmvl_site.runtime.browser. JavaScript here only loads things, moves frames in
// and messages out; preprocessing, prompt, tokenizer and the generation loop are Python.
//
// Message types, their fields, error codes and backend reasons are in contract.js (generated from
// lfmvl_site/runtime/contract.py): C.messages.in / C.messages.out, C.errors, C.deviceReasons.

import "./contract.js";
import { loadPyodide } from "./pyodide/pyodide.mjs";
import * as ort from "./ort/ort.webgpu.min.mjs";

const C = globalThis.LFMVL_CONTRACT;
const IN = C.messages.in;
const OUT = C.messages.out;
const ERR = C.errors;
const WHY = C.deviceReasons;
const DEV = C.devices;

let pyodide = null;     // loaded once; a retry after a failed model download reuses it
let runtime = null;     // lfmvl_site.runtime.browser.PageRuntime (a PyProxy)
let loaded = false;     // the model is ready
let busy = false;       // a frame is being captioned, or the backend is being switched
let prompt = C.settings.prompt.default;
let options = { [C.settings.max_new_tokens.key]: C.settings.max_new_tokens.default };
let lastFrame = null;   // {id, width, height, data}
let lastInit = null;    // the init message, for a retry
let current = null;     // the settings.choices entry loaded (or loading)
const failures = new Map(); // site path -> {code, file, status, detail}: downloads that failed, latest last
let canvas = null;
let ctx = null;
const sizes = new Map(); // site path -> size from manifest.json (exact decoded sizes for progress)
const base = new URL("./", import.meta.url).href;

const post = (msg, transfer) => self.postMessage(msg, transfer || []);
const pathOf = (url) => { const u = new URL(url, base); return u.href.startsWith(base) ? u.href.slice(base.length).split("?")[0] : u.href; };

// Every fetch of this worker (Pyodide's wasm, stdlib and packages, onnxruntime-web's wasm, the model)
// goes through here, so the page gets bytes for all of it.
const realFetch = self.fetch.bind(self);
self.fetch = async (input, init) => {
  const url = typeof input === "string" || input instanceof URL ? String(input) : input.url;
  const file = pathOf(url);
  let resp;
  try {
    resp = await realFetch(input, init);
  } catch (e) {
    noteFailure(file, 0, e);
    throw e;
  }
  if (!resp.ok) {
    noteFailure(file, resp.status, `HTTP ${resp.status}`);
    return resp;
  }
  if (!resp.body) return resp;
  const total = sizes.get(file) || Number(resp.headers.get("Content-Length")) || 0;
  const started = performance.now();
  let got = 0;
  let lastPost = 0;
  const report = (done) => post({ type: OUT.progress, file, loaded: got, total: done ? got : total, ms: performance.now() - started, done });
  const counter = new TransformStream({
    transform(chunk, ctrl) {
      got += chunk.byteLength;
      const now = performance.now();
      if (now - lastPost > 100) { lastPost = now; report(false); }
      ctrl.enqueue(chunk);
    },
    flush() { report(true); },
  });
  report(false);
  return new Response(resp.body.pipeThrough(counter), { status: resp.status, statusText: resp.statusText, headers: resp.headers });
};

function noteFailure(file, status, e) {
  failures.delete(file);
  failures.set(file, { code: ERR.download_failed, file, status, detail: String(e && e.message ? e.message : e) });
}
const failure = () => [...failures.values()].pop() || null;
// A download this worker saw fail says more than what the Python side made of it (a missing-file error).
const loadError = (err) => ((!err || err.code === ERR.model_file || err.code === ERR.internal) && failure()) || err;

// The Python side's helpers: a file's bytes (progress comes from the fetch above), a text file (null on 404).
async function fetchBytes(url, label) {
  const resp = await fetch(url);
  if (!resp.ok) throw new Error(`download of ${label} failed (HTTP ${resp.status})`);
  try {
    return new Uint8Array(await resp.arrayBuffer());
  } catch (e) {
    // The connection dropped mid-body (or the service worker refused the bytes): name the file.
    noteFailure(pathOf(url), 0, e);
    throw new Error(`download of ${label} failed (${e.message || e})`);
  }
}

async function fetchText(url) {
  const got = early.get(url);
  if (got !== undefined) {
    early.delete(url);
    const text = await got;
    if (text !== undefined) return text;
  }
  const resp = await fetch(url);
  if (resp.status === 404) { failures.delete(pathOf(url)); return null; }  // optional files may be absent
  if (!resp.ok) throw new Error(`HTTP ${resp.status} for ${url}`);
  return await resp.text();
}

async function chooseDevice(wanted) {
  const none = { features: [], adapter: null };
  if (wanted === DEV.wasm) return { device: DEV.wasm, why: WHY.chosen, ...none };
  if (!("gpu" in navigator)) return { device: DEV.wasm, why: WHY.no_webgpu, ...none };
  let adapter = null;
  try { adapter = await navigator.gpu.requestAdapter(); } catch { adapter = null; }
  if (!adapter) return { device: DEV.wasm, why: WHY.no_adapter, ...none };
  const info = adapter.info || {};
  const fallback = Boolean(info.isFallbackAdapter ?? adapter.isFallbackAdapter);
  const described = { vendor: info.vendor || "", architecture: info.architecture || "", description: info.description || "", fallback };
  // A software adapter (SwiftShader, WARP) still runs WebGPU; `adapter.fallback` lets the page say it is slow.
  return { device: DEV.webgpu, why: wanted === DEV.webgpu ? WHY.chosen : WHY.webgpu, features: [...adapter.features], adapter: described };
}

function fail(err, where) {
  post({ type: OUT.error, where, error: err });
}

function jsError(e) {
  const name = e && e.name;
  const detail = String(e && e.message ? e.message : e);
  if (name === "QuotaExceededError") return { code: ERR.storage_full, detail };
  if (name === "RangeError") return { code: ERR.out_of_memory, detail };
  return { code: ERR.internal, detail };
}

async function readSizes() {
  const resp = await realFetch(new URL("manifest.json", base));
  if (!resp.ok) return [];
  const files = C.readFiles(await resp.json());
  for (const f of files) sizes.set(f.path, f.size);
  return files;
}

// A one-node ONNX model (Identity, float32 [1]): creating a session from it makes onnxruntime-web fetch,
// compile and instantiate its wasm (and start its threads) while Pyodide loads, instead of after.
const WARM_MODEL = "CAg6OgoQCgF4EgF5IghJZGVudGl0eRIEd2FybVoPCgF4EgoKCAgBEgQKAggBYg8KAXkSCgoICAESBAoCCAFCBAoAEA0=";
let ortWarm = null;
function warmOrt() {
  if (!ortWarm) {
    const bytes = Uint8Array.from(atob(WARM_MODEL), (c) => c.charCodeAt(0));
    ortWarm = ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] })
      .then((sess) => sess.release())
      .catch((e) => console.warn("onnxruntime-web warm-up:", e));  // the real sessions will say what is wrong
  }
  return ortWarm;
}

// The model's text files, fetched while Pyodide starts; the Python side's fetchText takes them from here.
const MODEL_TEXTS = ["manifest.json", "config.json", "generation_config.json", "processor_config.json",
                     "tokenizer_config.json", "tokenizer.json", "chat_template.jinja"];
const early = new Map(); // url -> Promise<text|null>
function prefetchTexts(modelUrl) {
  for (const f of MODEL_TEXTS) {
    const url = new URL(f, modelUrl).href;
    if (!early.has(url)) early.set(url, fetchText(url).catch(() => undefined));  // undefined: fetch again
  }
}

async function init(msg) {
  lastInit = msg;
  failures.clear();
  const t0 = performance.now();
  const s = msg.settings;
  const choices = s.choices || [];
  // Python picks the choice once it runs; the remembered one (or a site's only model) is fetched ahead.
  const ahead = choices.find((c) => c.id === msg.choice) ||
    (new Set(choices.map((c) => c.model)).size <= 1 ? choices[0] : null);

  ort.env.wasm.wasmPaths = new URL("ort/", base).href;
  // Threads need SharedArrayBuffer, i.e. a cross-origin isolated page.
  ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  if (msg.verbose) ort.env.logLevel = "verbose";

  // Everything that does not depend on Python starts now, in parallel: Pyodide (wasm compile, stdlib),
  // onnxruntime-web's wasm, the model's text files, the WebGPU adapter.
  if (!pyodide) {
    post({ type: OUT.status, phase: "python", text: "Starting Python (Pyodide)…" });
    pyodide = loadPyodide({
      indexURL: new URL("pyodide/", base).href,
      lockFileURL: new URL("pyodide/pyodide-lock.json", base).href,
      stdout: (t) => console.log(t),
      stderr: (t) => console.warn(t),
    });
  }
  const warming = warmOrt();
  if (ahead) prefetchTexts(new URL(ahead.model_url, base).href);
  const sizing = readSizes().catch(() => []);
  const choosing = chooseDevice(msg.device || DEV.auto);

  const files = await sizing;
  // What this load fetches: Pyodide, onnxruntime-web's wasm, packages, the wheel, the model's configs (the
  // page's own files are here already; the graphs come with the Python side's plan, once it has chosen).
  const fetched = (p) => p.includes("/") && !C.isGraphFile(p) && !/\.m?js$/.test(p);
  post({ type: OUT.plan, files: files.filter((f) => fetched(f.path)).map((f) => ({ file: f.path, size: f.size })) });

  post({ type: OUT.status, phase: "backend", text: "Choosing a backend…" });
  const dev = await choosing;
  post({ type: OUT.backend, ...dev });

  try {
    pyodide = await pyodide;
  } catch (e) {
    pyodide = null;  // a retry starts it again
    throw e;
  }
  const tPy = performance.now();
  if (!runtime) {
    post({ type: OUT.status, phase: "packages", text: "Loading numpy, jinja2 and the runtime…" });
    // numpy, jinja2 and the wheel in one call: their downloads overlap.
    await pyodide.loadPackage([...s.pyodide_packages, new URL(s.runtime_wheel, base).href],
                              { messageCallback: () => {}, errorCallback: (t) => console.warn(t) });
    runtime = pyodide.pyimport("lfmvl_site.runtime.browser").PageRuntime();
  }
  const tPkgs = performance.now();

  const pick = JSON.parse(runtime.choose(JSON.stringify(choices), dev.device, dev.features, msg.choice || ""));
  if (pick.error) { fail(loadError(pick.error), "load"); return; }
  await warming;
  const info = await loadChoice(choices.find((c) => c.id === pick.id), pick, dev, !!msg.verbose);
  if (info.error) {
    fail(loadError(info.error), "load");
    return;
  }
  const tModel = performance.now();
  loaded = true;
  failures.clear();  // whatever failed on the way was not fatal
  post({
    type: OUT.ready,
    ...info,
    ...dev,
    choice: current.id,
    threads: ort.env.wasm.numThreads,
    timings: { pyodide_ms: tPy - t0, packages_ms: tPkgs - tPy, model_ms: tModel - tPkgs, total_ms: tModel - t0 },
  });
}

let lastDev = null;  // the backend in use: a choice switch keeps it
let lastWhy = "";    // why the loaded choice was chosen
// Which of a choice's downloads a backend takes (runtime/choices.py's device_class): the page shows its sizes.
const deviceClassOf = (choice, dev) =>
  JSON.parse(runtime.choose(JSON.stringify([choice]), dev.device, dev.features, choice.id)).device_class;
async function loadChoice(choice, pick, dev, verbose) {
  current = choice;
  lastDev = dev;
  lastWhy = pick.why;
  post({ type: OUT.choice, id: choice.id, why: pick.why, device_class: pick.device_class });
  post({ type: OUT.status, phase: "model", text: `Loading ${choice.label}…` });
  const onPlan = (json) => post({ type: OUT.plan, files: JSON.parse(json) });
  return JSON.parse(await runtime.load(ort, new URL(choice.model_url, base).href, dev.device, dev.features,
                                       fetchBytes, fetchText, verbose, onPlan, choice.preset || ""));
}

async function switchChoice(id) {
  const choice = ((lastInit && lastInit.settings.choices) || []).find((c) => c.id === id);
  if (!loaded || !choice || (current && current.id === id)) return;
  if (runtime) runtime.cancel();
  while (busy) await new Promise((r) => setTimeout(r, 10));  // the running caption stops at its next step
  busy = true;
  loaded = false;
  lastInit.choice = id;  // a retry after a failure retries this choice
  try {
    const pick = { why: "you chose it", device_class: deviceClassOf(choice, lastDev) };
    const info = await loadChoice(choice, pick, lastDev, !!lastInit.verbose);
    if (info.error) { fail(loadError(info.error), "choose"); return; }
    loaded = true;
    post({ type: OUT.ready, ...info, ...lastDev, choice: id, threads: ort.env.wasm.numThreads, timings: {} });
  } finally {
    busy = false;
  }
}

async function switchDevice(wanted) {
  if (!loaded) return;
  busy = true;
  try {
    post({ type: OUT.status, phase: "backend", text: "Switching the backend…" });
    const dev = await chooseDevice(wanted);
    post({ type: OUT.backend, ...dev });
    const info = JSON.parse(await runtime.switch(ort, dev.device, dev.features));
    if (info.error) { fail(loadError(info.error), "device"); return; }
    lastDev = dev;  // another backend may take other downloads of the same choice: the page's sizes follow
    if (current) post({ type: OUT.choice, id: current.id, why: lastWhy, device_class: deviceClassOf(current, dev) });
    post({ type: OUT.ready, ...info, ...dev, choice: current && current.id, threads: ort.env.wasm.numThreads,
           timings: {} });
  } finally {
    busy = false;
  }
}

function pixelsOf(bitmap) {
  const { width, height } = bitmap;
  if (!canvas || canvas.width !== width || canvas.height !== height) {
    canvas = new OffscreenCanvas(width, height);
    ctx = canvas.getContext("2d", { willReadFrequently: true });
  }
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  return { width, height, data: ctx.getImageData(0, 0, width, height).data };
}

async function captionFrame(msg) {
  const echo = { id: msg.id, source: msg.source, media_time: msg.media_time, choice: current && current.id };
  if (busy || !runtime || !loaded) {            // drop, never queue
    msg.bitmap.close();
    post({ type: OUT.dropped, id: msg.id });
    return;
  }
  busy = true;
  try {
    const t0 = performance.now();
    const frame = pixelsOf(msg.bitmap);
    lastFrame = { id: msg.id, ...frame };
    const tRead = performance.now() - t0;
    let count = 0;
    // The runtime batches tokens (one call per ~16 ms): piece is the batch's text, token its last id, n its size.
    const onToken = (id, piece, n) => { count += n ?? 1; post({ type: OUT.token, id: msg.id, token: id, piece, count, ms: performance.now() - t0 }); };
    const used = prompt;
    const result = JSON.parse(await runtime.caption(frame.data, frame.width, frame.height, used, JSON.stringify(options), onToken));
    if (result.error) {
      post({ type: OUT.caption, ...echo, prompt: used, error: result.error });
      return;
    }
    result.timings = { ...(result.timings || {}), frame_read_ms: tRead, total_ms: performance.now() - t0 };
    post({ type: OUT.caption, ...echo, prompt: used, width: frame.width, height: frame.height, ...result });
  } catch (e) {
    post({ type: OUT.caption, ...echo, error: jsError(e) });
  } finally {
    busy = false;
  }
}

self.onmessage = async (ev) => {
  const msg = ev.data;
  try {
    switch (msg.type) {
      case IN.init:
        await init(msg);
        break;
      case IN.retry:
        if (!loaded && lastInit) await init(lastInit);
        break;
      case IN.frame:
        await captionFrame(msg);
        break;
      case IN.prompt:
        if (msg.prompt !== prompt) {
          prompt = msg.prompt;
          if (runtime) runtime.cancel();
        }
        break;
      case IN.options:
        options = { ...options, ...msg.options };
        break;
      case IN.device:
        await switchDevice(msg.device);
        break;
      case IN.choose:
        await switchChoice(msg.choice);
        break;
      case IN.lastFrame:
        post({ type: OUT.lastFrame, frame: lastFrame ? { id: lastFrame.id, width: lastFrame.width, height: lastFrame.height, data: lastFrame.data.slice() } : null });
        break;
    }
  } catch (e) {
    fail(failures.size ? failure() : jsError(e), msg.type);
  }
};
