// The page: camera/file input, controls, messages and figures. All model work happens in worker.js.

import { registerServiceWorker } from "./sw-register.js";

const settings = JSON.parse(document.getElementById("settings").textContent);
const params = new URLSearchParams(location.search);
// URL overrides, handy for links and tests: ?device=wasm&tokens=8&prompt=...&size=256&autostart
if (params.has("tokens")) settings.max_new_tokens = Number(params.get("tokens")) || settings.max_new_tokens;
if (params.has("prompt")) settings.default_prompt = params.get("prompt");
if (params.has("size")) settings.frame_size = Number(params.get("size"));
const $ = (id) => document.getElementById(id);

const state = {
  ready: false,
  running: false,
  inFlight: false,
  lastSent: 0,
  frameId: 0,
  dropped: 0,
  cancelled: 0,
  source: "camera",        // "camera" | "image" | "video"
  stream: null,
  started: performance.now(),
  captions: [],
  logs: [],
  info: null,
  current: "",
  pageReadyMs: null,
  firstCaptionMs: null,
};

// A small debugging/testing surface: the browser tests read it.
const pending = [];
window.lfmvl = {
  state,
  settings,
  lastFrame: () => new Promise((resolve) => { pending.push(resolve); worker.postMessage({ type: "lastFrame" }); }),
  start: () => start(),
};

// ---------------------------------------------------------------- messages

function say(key, text, kind = "warn") {
  let el = document.querySelector(`#messages [data-key="${key}"]`);
  if (!el) {
    el = document.createElement("p");
    el.dataset.key = key;
    $("messages").append(el);
  }
  el.className = `msg ${kind}`;
  el.textContent = text;
}
function unsay(key) {
  const el = document.querySelector(`#messages [data-key="${key}"]`);
  if (el) el.remove();
}

function explainError(text, name) {
  if (name === "QuotaExceededError" || /quota|storage.*full/i.test(text)) {
    return ["storage", "The browser's storage is full, so the model could not be stored. Free some space " +
      "(or clear this site's data in the browser settings) and reload."];
  }
  if (/download of .* failed|Failed to fetch|NetworkError/i.test(text)) {
    // The worker's error crosses Python on its way here: show the failure, not the traceback around it.
    const what = (/download of \S+ failed \([^)]*\)/.exec(text) || [text])[0];
    return ["download", `A download failed: ${what}. Check the network connection and reload the page; ` +
      "files already downloaded are not fetched again."];
  }
  if (/out of memory|Array buffer allocation failed|RangeError/i.test(text)) {
    return ["memory", `The browser ran out of memory (${text}). Close other tabs, choose a smaller frame size, or reload.`];
  }
  return ["error", `Something went wrong: ${text}`];
}

// ---------------------------------------------------------------- worker

// Offline cache + header shim (sw-register.js). On a host without COOP/COEP this reloads the page once
// and the promise never settles; on a first visit wait for the worker to take control so the model files
// the worker downloads are verified and cached as they arrive.
const sw = await registerServiceWorker({ precache: "shell" }).catch((e) => {
  say("offline", `Offline use is unavailable (${e.message || e}); the page still works online.`, "info");
  return null;
});
if (sw?.supported) await sw.controlled;
if (sw) {
  sw.events.addEventListener("integrity-error", (e) => say(`integrity-${e.detail.path}`,
    `A downloaded file failed its integrity check and was not stored: ${e.detail.path} (${e.detail.message}). ` +
    "Reload to fetch it again; if it keeps failing, the site's files are damaged on the server.", "error"));
  sw.events.addEventListener("storage-full", (e) => say("storage",
    "The browser's storage is full, so the model could not be stored for offline use. Free some space " +
    `(or clear this site's data) and reload. ${e.detail.message || ""}`, "error"));
  showCache();
  sw.checkSpace().then((s) => {
    if (s && s.ok === false) {
      say("space", `This site needs ${(s.needed / 1e9).toFixed(2)} GB more storage but the browser offers only ` +
        `${(s.free / 1e9).toFixed(2)} GB: the model may fail to download. Free disk space or close other sites' tabs.`);
    }
  });
}

async function showCache() {
  if (!sw) return;
  const [info, est] = await Promise.all([sw.cacheInfo(), sw.estimate()]);
  $("cache").textContent = `${info.cachedFiles}/${info.totalFiles} files cached for offline use ` +
    `(${(info.cachedBytes / 1e6).toFixed(1)} of ${(info.totalBytes / 1e6).toFixed(1)} MB)` +
    (est && est.free != null ? `, ${(est.free / 1e9).toFixed(1)} GB free` : "") +
    (sw.persisted ? ", persistent" : "");
}
$("clearCache").onclick = async () => {
  if (!sw) return;
  await sw.clearCache();
  await showCache();
  say("cache", "Offline cache cleared: the next visit downloads the model again.", "info");
};

const wantedDevice = params.get("device") || "auto";
$("device").value = wantedDevice;
const worker = new Worker(new URL("worker.js", import.meta.url), { type: "module" });
worker.onerror = (e) => say("worker", `The captioning worker failed to start (${e.message || "unknown error"}). ` +
  "Use a current Chrome, Edge or Firefox, and reload.", "error");
worker.onmessage = (ev) => handle(ev.data);

if (!self.crossOriginIsolated) {
  say("isolation", sw?.isolationMessage || "This page is not cross-origin isolated (the server did not send the " +
    "COOP/COEP headers), so the model runs on one CPU thread and more slowly. Serve it with `lfmvl-site serve` " +
    "or a server configured with those headers.");
}
$("isolation").textContent = self.crossOriginIsolated ? "cross-origin isolated" : "not isolated";

worker.postMessage({ type: "init", settings, device: wantedDevice, verbose: params.has("verbose") });

const progress = new Map();
function showProgress(p) {
  let row = progress.get(p.file);
  if (!row) {
    row = document.createElement("tr");
    row.innerHTML = "<td></td><td></td><td></td>";
    $("progress").tBodies[0].append(row);
    progress.set(p.file, row);
  }
  const mb = (n) => (n / 1e6).toFixed(n < 1e7 ? 2 : 0);
  const [name, bytes, eta] = row.cells;
  name.textContent = p.file;
  bytes.textContent = p.total ? `${mb(p.loaded)} / ${mb(p.total)} MB` : `${mb(p.loaded)} MB`;
  if (p.done) eta.textContent = "done";
  else if (p.total && p.loaded > 0) {
    const rate = p.loaded / p.ms;  // bytes per ms
    eta.textContent = `${Math.ceil((p.total - p.loaded) / rate / 1000)} s`;
  } else eta.textContent = "…";
}

function handle(m) {
  switch (m.type) {
    case "status":
      $("status").textContent = m.text;
      break;
    case "progress":
      showProgress(m);
      break;
    case "device":
      if (m.why === "no-webgpu") {
        say("webgpu", "This browser has no WebGPU, so the model runs on the CPU (wasm) instead: it works, " +
          "but captions come more slowly. A current Chrome or Edge with WebGPU enabled is faster.");
      } else if (m.why === "no-adapter") {
        say("webgpu", "WebGPU is available but no graphics adapter was found (GPU blocked or unsupported), " +
          "so the model runs on the CPU (wasm) instead, more slowly.");
      }
      break;
    case "ready": {
      state.ready = true;
      state.info = m;
      state.pageReadyMs = performance.now() - state.started;
      const precisions = m.choices.map((c) => `${c.role} ${c.precision}${c.device !== m.device ? ` (${c.device})` : ""}`).join(", ");
      $("backend").textContent = `${m.device === "webgpu" ? "WebGPU" : "wasm (CPU)"} · ${precisions}`;
      $("status").textContent = `Ready in ${(state.pageReadyMs / 1000).toFixed(1)} s. ${m.describe}`;
      const fallback = m.choices.filter((c) => c.reason !== "preferred variant" && m.device === "webgpu");
      if (fallback.length) {
        say("precision", "This GPU has no 16-bit float support (shader-f16), so the page chose: " +
          fallback.map((c) => `${c.role} → ${c.precision} on ${c.device}`).join("; ") + ".", "info");
      }
      $("toggle").disabled = false;
      showCache();
      if (params.has("autostart")) start();
      break;
    }
    case "token":
      if (m.id === state.frameId) {
        state.current += m.piece;
        $("caption").textContent = state.current;
      }
      break;
    case "caption":
      state.inFlight = false;
      if (m.cancelled) { state.cancelled += 1; break; }
      if (m.error) { const [k, t] = explainError(m.error); say(k, t, "error"); break; }
      recordCaption(m);
      break;
    case "dropped":
      state.inFlight = false;
      state.dropped += 1;
      $("f-dropped").textContent = String(state.dropped);
      break;
    case "lastFrame":
      while (pending.length) pending.shift()(m.frame);
      break;
    case "log":
      state.logs.push(m.text);
      break;
    case "error": {
      state.inFlight = false;
      const [k, t] = explainError(m.text, m.name);
      say(k, t, "error");
      if (!state.ready) $("status").textContent = "Loading failed.";
      break;
    }
  }
}

// ---------------------------------------------------------------- captions & figures

function recordCaption(m) {
  const t = m.timings || {};
  const at = (performance.now() - state.started) / 1000;
  if (state.firstCaptionMs === null) state.firstCaptionMs = performance.now() - state.started;
  const entry = { id: m.id, time_s: at, prompt: m.prompt, text: m.text, token_ids: m.token_ids,
                  width: m.width, height: m.height, stop_reason: m.stop_reason, timings: t,
                  kept: m.kept, kept_live: m.kept_live };
  state.captions.push(entry);
  $("caption").textContent = m.text;
  const fmt = (v, unit) => (v === null || v === undefined ? "–" : `${Number(v).toFixed(unit === "ms" ? 0 : 1)} ${unit}`);
  $("f-ttft").textContent = fmt(t.first_token_ms, "ms");
  $("f-tps").textContent = fmt(t.tokens_per_s, "tok/s");
  $("f-latency").textContent = fmt(t.total_ms, "ms");
  $("f-pre").textContent = fmt(t.preprocess_ms, "ms");
  const li = document.createElement("li");
  li.textContent = `[${at.toFixed(1)} s] ${m.text}`;
  $("history").prepend(li);
}

function download(name, text, type) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], { type }));
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}
function srtTime(s) {
  const ms = Math.round(s * 1000);
  const p = (n, w = 2) => String(n).padStart(w, "0");
  return `${p(Math.floor(ms / 3600000))}:${p(Math.floor(ms / 60000) % 60)}:${p(Math.floor(ms / 1000) % 60)},${p(ms % 1000, 3)}`;
}
$("exportJson").onclick = () => download("captions.json", JSON.stringify(state.captions, null, 2), "application/json");
$("exportSrt").onclick = () => {
  const c = state.captions;
  // One subtitle line per caption: line breaks inside a caption would end the SRT block early.
  const srt = c.map((e, i) => `${i + 1}\n${srtTime(e.time_s)} --> ${srtTime(i + 1 < c.length ? c[i + 1].time_s : e.time_s + 3)}\n${e.text.replace(/[\r\n]+/g, " ")}\n`).join("\n");
  download("captions.srt", srt, "text/plain");
};
$("clearHistory").onclick = () => { state.captions = []; $("history").textContent = ""; };

// ---------------------------------------------------------------- controls

$("prompt").value = settings.default_prompt;
$("maxTokens").value = String(settings.max_new_tokens);
$("interval").value = String(settings.interval_ms);
$("size").value = String(settings.frame_size);
for (const s of settings.prompts) {
  const b = document.createElement("button");
  b.textContent = s;
  b.className = "suggestion";
  b.onclick = () => { $("prompt").value = s; sendPrompt(); };
  $("suggestions").append(b);
}
let promptTimer = null;
function sendPrompt() {
  clearTimeout(promptTimer);
  state.current = "";
  worker.postMessage({ type: "prompt", prompt: $("prompt").value.trim() || settings.default_prompt });
}
$("prompt").oninput = () => { clearTimeout(promptTimer); promptTimer = setTimeout(sendPrompt, 400); };
function sendOptions() {
  const n = Math.max(1, Math.min(512, Number($("maxTokens").value) || settings.max_new_tokens));
  worker.postMessage({ type: "options", options: { max_new_tokens: n } });
}
$("maxTokens").onchange = sendOptions;
sendOptions();
sendPrompt();
$("device").onchange = () => { params.set("device", $("device").value); location.search = params.toString(); };

async function listCameras() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return;
  const devices = await navigator.mediaDevices.enumerateDevices();
  const sel = $("camera");
  const keep = sel.value;
  sel.length = 1;
  devices.filter((d) => d.kind === "videoinput").forEach((d, i) => {
    const o = document.createElement("option");
    o.value = d.deviceId;
    o.textContent = d.label || `camera ${i + 1}`;
    sel.append(o);
  });
  sel.value = keep;
}
$("camera").onchange = () => { if (state.running && state.source === "camera") { stopCamera(); startCamera(); } };

async function startCamera() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    say("camera", "This browser gives no camera access here (the page needs https or localhost). Pick an image or video file instead.", "error");
    return false;
  }
  const id = $("camera").value;
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({ video: id ? { deviceId: { exact: id } } : true, audio: false });
  } catch (e) {
    if (e.name === "NotAllowedError" || e.name === "SecurityError") {
      say("camera", "Camera access was denied. Allow the camera for this site in the browser's settings and press Start again, or pick an image or video file instead.", "error");
    } else if (e.name === "NotFoundError" || e.name === "OverconstrainedError" || e.name === "NotReadableError") {
      say("camera", "No usable camera was found (none connected, or another app is using it). Connect one and press Start, or pick an image or video file instead.", "error");
    } else {
      say("camera", `The camera could not be started (${e.name}: ${e.message}). Pick an image or video file instead.`, "error");
    }
    return false;
  }
  unsay("camera");
  const v = $("video");
  v.srcObject = state.stream;
  v.hidden = false;
  $("still").hidden = true;
  await v.play();
  listCameras();
  return true;
}
function stopCamera() {
  if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
  state.stream = null;
}

$("file").onchange = async () => {
  const f = $("file").files[0];
  if (!f) return;
  stopCamera();
  const url = URL.createObjectURL(f);
  if (f.type.startsWith("video/")) {
    state.source = "video";
    const v = $("video");
    v.srcObject = null;
    v.src = url;
    v.loop = true;
    v.hidden = false;
    $("still").hidden = true;
    await v.play().catch(() => {});
  } else {
    state.source = "image";
    $("still").src = url;
    await $("still").decode();
    $("still").hidden = false;
    $("video").hidden = true;
  }
  if (!state.running && state.ready) start();
};

async function start() {
  if (!state.ready) return;
  if (state.source === "camera" && !state.stream && !(await startCamera())) return;
  state.running = true;
  $("toggle").textContent = "Pause";
  loop();
}
function pause() {
  state.running = false;
  $("toggle").textContent = "Start";
}
$("toggle").onclick = () => (state.running ? pause() : start());

function frameSource() {
  if (state.source === "image") return $("still");
  return $("video");
}

async function grab() {
  const src = frameSource();
  const w = src.videoWidth || src.naturalWidth;
  const h = src.videoHeight || src.naturalHeight;
  if (!w || !h) return null;
  const max = Number($("size").value);
  const scale = max > 0 ? Math.min(1, max / Math.max(w, h)) : 1;
  const opts = scale < 1 ? { resizeWidth: Math.round(w * scale), resizeHeight: Math.round(h * scale), resizeQuality: "high" } : {};
  return await createImageBitmap(src, opts);
}

async function loop() {
  while (state.running) {
    const interval = Number($("interval").value);
    const due = performance.now() - state.lastSent >= interval;
    if (!state.inFlight && due) {
      const bitmap = await grab().catch(() => null);
      if (bitmap) {
        state.inFlight = true;
        state.lastSent = performance.now();
        state.frameId += 1;
        state.current = "";
        worker.postMessage({ type: "frame", id: state.frameId, bitmap }, [bitmap]);
        if (state.source === "image" && interval === 0) {
          // A still image gives the same caption every time: caption it once, then pause.
          pause();
        }
      }
    }
    await new Promise((r) => setTimeout(r, 30));
  }
}

listCameras().catch(() => {});
