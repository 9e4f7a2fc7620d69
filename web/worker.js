// The captioning worker: Pyodide runs the project's Python runtime (lfmvl_site.runtime), which drives
// onnxruntime-web through lfmvl_site.runtime.browser. JavaScript here only loads things, moves frames in
// and messages out; preprocessing, prompt, tokenizer and the generation loop are Python.
//
// Messages in:  {type:"init", settings, device:"auto"|"webgpu"|"wasm", verbose}
//               {type:"frame", id, bitmap (ImageBitmap, transferred)}  -- at most one in flight; extras dropped
//               {type:"prompt", prompt} / {type:"options", options}     -- a prompt change cancels the caption
//               {type:"lastFrame"}                                       -- the pixels of the last captioned frame
// Messages out: status, device, progress, ready, token, caption, dropped, error, lastFrame

import { loadPyodide } from "./pyodide/pyodide.mjs";
import * as ort from "./ort/ort.webgpu.min.mjs";

let runtime = null;     // lfmvl_site.runtime.browser.PageRuntime (a PyProxy)
let busy = false;       // a frame is being captioned
let prompt = "Describe this image.";
let options = { max_new_tokens: 32 };
let lastFrame = null;   // {id, width, height, data}
let canvas = null;
let ctx = null;

const post = (msg, transfer) => self.postMessage(msg, transfer || []);

// Streams a file and reports bytes as they arrive; returns a Uint8Array.
async function fetchBytes(url, label) {
  let resp;
  try {
    resp = await fetch(url);
  } catch (e) {
    throw new Error(`download of ${label} failed (${e.message})`);
  }
  if (!resp.ok) throw new Error(`download of ${label} failed (HTTP ${resp.status})`);
  const total = Number(resp.headers.get("Content-Length")) || 0;
  const started = performance.now();
  if (!resp.body) {
    const buf = new Uint8Array(await resp.arrayBuffer());
    post({ type: "progress", file: label, loaded: buf.length, total: buf.length, ms: performance.now() - started, done: true });
    return buf;
  }
  const reader = resp.body.getReader();
  const chunks = [];
  let loaded = 0;
  let lastPost = 0;
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (e) {
      // The connection dropped mid-body (or the service worker refused the bytes): name the file.
      throw new Error(`download of ${label} failed (${e.message || e})`);
    }
    const { done, value } = chunk;
    if (done) break;
    chunks.push(value);
    loaded += value.length;
    const now = performance.now();
    if (now - lastPost > 100) {
      lastPost = now;
      post({ type: "progress", file: label, loaded, total, ms: now - started, done: false });
    }
  }
  const out = new Uint8Array(loaded);
  let at = 0;
  for (const c of chunks) { out.set(c, at); at += c.length; }
  post({ type: "progress", file: label, loaded, total: total || loaded, ms: performance.now() - started, done: true });
  return out;
}

async function fetchText(url) {
  const resp = await fetch(url);
  if (!resp.ok) throw new Error(`HTTP ${resp.status} for ${url}`);
  return await resp.text();
}

async function chooseDevice(wanted) {
  if (wanted === "wasm") return { device: "wasm", features: [], why: "wasm chosen" };
  if (!("gpu" in navigator)) return { device: "wasm", features: [], why: "no-webgpu" };
  let adapter = null;
  try { adapter = await navigator.gpu.requestAdapter(); } catch { adapter = null; }
  if (!adapter) return { device: "wasm", features: [], why: "no-adapter" };
  const info = adapter.info || {};
  return {
    device: "webgpu",
    features: [...adapter.features],
    why: "webgpu",
    adapter: { vendor: info.vendor || "", architecture: info.architecture || "", description: info.description || "" },
  };
}

async function init(msg) {
  const t0 = performance.now();
  const s = msg.settings;
  const base = new URL("./", import.meta.url).href;

  post({ type: "status", text: "Choosing a backend…" });
  const dev = await chooseDevice(msg.device || "auto");
  post({ type: "device", ...dev });

  ort.env.wasm.wasmPaths = new URL("ort/", base).href;
  // Threads need SharedArrayBuffer, i.e. a cross-origin isolated page.
  ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  if (msg.verbose) ort.env.logLevel = "verbose";

  post({ type: "status", text: "Starting Python (Pyodide)…" });
  const pyodide = await loadPyodide({
    indexURL: new URL("pyodide/", base).href,
    lockFileURL: new URL("pyodide/pyodide-lock.json", base).href,
    stdout: (t) => console.log(t),
    stderr: (t) => console.warn(t),
  });
  const tPy = performance.now();
  post({ type: "status", text: "Loading numpy, jinja2 and the runtime…" });
  await pyodide.loadPackage(s.pyodide_packages, { messageCallback: () => {}, errorCallback: (t) => console.warn(t) });
  await pyodide.loadPackage(new URL(s.runtime_wheel, base).href, { messageCallback: () => {} });
  const browser = pyodide.pyimport("lfmvl_site.runtime.browser");
  runtime = browser.PageRuntime();
  const tPkgs = performance.now();

  post({ type: "status", text: "Loading the model…" });
  const info = JSON.parse(await runtime.load(ort, new URL(s.model_url, base).href, dev.device, dev.features,
                                             fetchBytes, fetchText, !!msg.verbose));
  const tModel = performance.now();
  post({
    type: "ready",
    ...info,
    device: dev.device,
    why: dev.why,
    adapter: dev.adapter || null,
    features: dev.features,
    threads: ort.env.wasm.numThreads,
    timings: { pyodide_ms: tPy - t0, packages_ms: tPkgs - tPy, model_ms: tModel - tPkgs, total_ms: tModel - t0 },
  });
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
  if (busy || !runtime) {            // drop, never queue
    msg.bitmap.close();
    post({ type: "dropped", id: msg.id });
    return;
  }
  busy = true;
  try {
    const t0 = performance.now();
    const frame = pixelsOf(msg.bitmap);
    lastFrame = { id: msg.id, ...frame };
    const tRead = performance.now() - t0;
    const onToken = (id, piece) => post({ type: "token", id: msg.id, token: id, piece });
    const json = await runtime.caption(frame.data, frame.width, frame.height, prompt, JSON.stringify(options), onToken);
    const result = JSON.parse(json);
    result.timings = { ...(result.timings || {}), frame_read_ms: tRead, total_ms: performance.now() - t0 };
    post({ type: "caption", id: msg.id, prompt, width: frame.width, height: frame.height, ...result });
  } catch (e) {
    post({ type: "error", where: "caption", text: String(e && e.message ? e.message : e) });
  } finally {
    busy = false;
  }
}

self.onmessage = async (ev) => {
  const msg = ev.data;
  try {
    switch (msg.type) {
      case "init":
        await init(msg);
        break;
      case "frame":
        await captionFrame(msg);
        break;
      case "prompt":
        if (msg.prompt !== prompt) {
          prompt = msg.prompt;
          if (runtime) runtime.cancel();
        }
        break;
      case "options":
        options = { ...options, ...msg.options };
        break;
      case "lastFrame":
        post({ type: "lastFrame", frame: lastFrame ? { id: lastFrame.id, width: lastFrame.width, height: lastFrame.height, data: lastFrame.data.slice() } : null });
        break;
    }
  } catch (e) {
    post({ type: "error", where: msg.type, name: e && e.name, text: String(e && e.message ? e.message : e) });
  }
};
