// The page: camera/file input, controls, messages and figures. All model work happens in worker.js.
//
// Every name this page shares with the worker and the Python side comes from contract.js, generated at
// build time from lfmvl_site/runtime/contract.py: message types (C.messages), setting keys, defaults,
// ranges and words (C.settings), error codes (C.errors), why a backend or graph variant was chosen
// (C.deviceReasons, C.fallbacks) and the service worker's event kinds (C.sw.kinds). None is restated here;
// tests/test_contract.py checks that. The words shown to the user are this page's own.

import "./contract.js";
import { registerServiceWorker } from "./sw-register.js";

const C = globalThis.LFMVL_CONTRACT;
const IN = C.messages.in;
const OUT = C.messages.out;
const ERR = C.errors;
const WHY = C.deviceReasons;
const FALLBACK = C.fallbacks;
const DEV = C.devices;
const KIND = C.sw.kinds;
const S = C.settings;
const KINDS = C.settingKinds;

const settings = JSON.parse(document.getElementById("settings").textContent);  // build facts: paths, versions
const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);

const state = {
  ready: false,
  switching: false,        // the backend is being switched: no frames are sent
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
  contract: C,
  lastFrame: () => new Promise((resolve) => { pending.push(resolve); worker.postMessage({ type: IN.lastFrame }); }),
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

/** Plain words for an error from the worker ({code, detail, ...the code's fields}): [message key, text]. */
function explain(err) {
  const e = err || {};
  const detail = e.detail ? String(e.detail) : "";
  switch (e.code) {
    case ERR.download_failed: {
      const how = e.status ? `HTTP ${e.status}` : detail || "the connection dropped";
      return ["download", `A download failed: ${e.file} (${how}). Check the network connection and reload the ` +
        "page; files already downloaded are not fetched again."];
    }
    case ERR.storage_full:
      return ["storage", "The browser's storage is full, so the model could not be stored. Free some space " +
        `(or clear this site's data in the browser settings) and reload.${detail ? ` (${detail})` : ""}`];
    case ERR.out_of_memory:
      return ["memory", `The browser ran out of memory (${detail || "an allocation failed"}). Close other tabs, ` +
        "choose a smaller frame size, or reload."];
    case ERR.model_file:
      return ["model", `The model's files could not be used: ${detail}`];
    case ERR.contract:
      return ["model", `The model does not fit this page's runtime: ${detail}`];
    case ERR.bad_input:
      return ["input", `The input was refused: ${detail}`];
    default:
      return ["error", `Something went wrong: ${detail || "unknown error"}`];
  }
}
function showError(err) {
  const [key, text] = explain(err);
  say(key, text, "error");
}

// ---------------------------------------------------------------- settings

// The control of each setting; its kind, default, range, choices and words come from C.settings.
const FIELD = {
  [S.prompt.key]: "prompt", [S.interval_ms.key]: "interval", [S.frame_size.key]: "size",
  [S.max_new_tokens.key]: "maxTokens", [S.device.key]: "device",
};
// URL overrides, handy for links and tests: ?device=wasm&tokens=8&prompt=...&size=256&interval=1000&autostart
const URL_PARAM = {
  [S.prompt.key]: "prompt", [S.interval_ms.key]: "interval", [S.frame_size.key]: "size",
  [S.max_new_tokens.key]: "tokens", [S.device.key]: "device",
};
const wordsOf = (key, value) => {
  const s = S[key];
  const i = s.choices.findIndex((c) => String(c) === String(value));
  return i >= 0 && s.labels[i] ? s.labels[i] : String(value);
};

// Setting `key` from what a field (or the address) holds: {value}, or {problem} naming the valid range. The
// rules and words are the runtime's own (contract.check_setting), rendered into contract.js.
const check = (key, raw) => C.checkSetting(key, raw);

/** Show (or clear) the problem of setting `key` at its field. */
function mark(key, problem) {
  const field = $(FIELD[key]);
  const id = `${FIELD[key]}-problem`;
  let note = $(id);
  if (!note) {
    note = document.createElement("small");
    note.id = id;
    note.className = "problem";
    note.setAttribute("role", "alert");
    field.insertAdjacentElement("afterend", note);
  }
  note.hidden = !problem;
  note.textContent = problem || "";
  field.setAttribute("aria-invalid", problem ? "true" : "false");
  field.setCustomValidity(problem || "");
}

/** The setting's value from its field, its problem shown there; the default while the field is wrong. */
function current(key) {
  const got = check(key, $(FIELD[key]).value);
  mark(key, got.problem);
  return got;
}

for (const [key, id] of Object.entries(FIELD)) {
  const s = S[key];
  const field = $(id);
  if (field.tagName === "SELECT") {
    s.choices.forEach((c, i) => {
      const o = document.createElement("option");
      o.value = String(c);
      o.textContent = s.labels[i] || String(c);
      field.append(o);
    });
  }
  if (s.kind === KINDS.int) {
    field.min = String(s.min);
    field.max = String(s.max);
    field.step = "1";
  }
  if (s.hint) field.title = s.hint;
  field.value = String(s.default);
}
// Values from the address go into their field and are checked like typed ones: a wrong one is shown there.
const fromUrl = {};
for (const [key, name] of Object.entries(URL_PARAM)) {
  if (!params.has(name)) continue;
  const raw = params.get(name);
  const got = check(key, raw);
  if (got.problem) fromUrl[key] = `${got.problem} (from the address: ${name}=${raw})`;
  if (!got.problem || S[key].kind !== KINDS.choice) $(FIELD[key]).value = raw;
}
for (const key of Object.keys(FIELD)) {
  if (!fromUrl[key]) current(key);
  else mark(key, fromUrl[key]);
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
  sw.events.addEventListener(KIND.integrity_error, (e) => say(`integrity-${e.detail.path}`,
    `A downloaded file failed its integrity check and was not stored: ${e.detail.path} (${e.detail.message}). ` +
    "Reload to fetch it again; if it keeps failing, the site's files are damaged on the server.", "error"));
  sw.events.addEventListener(KIND.storage_full, (e) => say("storage",
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

const deviceKey = S.device.key;
const wantedDevice = check(deviceKey, $(FIELD[deviceKey]).value).value ?? S.device.default;
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

worker.postMessage({ type: IN.init, settings, device: wantedDevice, verbose: params.has("verbose") });

$("retry").onclick = () => {
  $("retry").hidden = true;
  for (const key of ["download", "storage", "memory", "model", "error"]) unsay(key);
  $("status").textContent = "Trying again…";
  worker.postMessage({ type: IN.retry });
};

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
function showPlan(files) {  // the files this load will fetch, listed before their bytes arrive
  for (const f of files || []) if (!progress.has(f.file)) showProgress({ file: f.file, loaded: 0, total: f.size, ms: 0 });
}

function showBackend(m) {
  if (m.why === WHY.no_webgpu) {
    say("webgpu", "This browser has no WebGPU, so the model runs on the CPU (wasm) instead: it works, " +
      "but captions come more slowly. A current Chrome or Edge with WebGPU enabled is faster.");
  } else if (m.why === WHY.no_adapter) {
    say("webgpu", "WebGPU is available but no graphics adapter was found (GPU blocked or unsupported), " +
      "so the model runs on the CPU (wasm) instead, more slowly.");
  } else {
    unsay("webgpu");
  }
  if (m.device === DEV.webgpu && m.adapter && m.adapter.fallback) {
    say("software-gpu", "The only WebGPU adapter is a software one (no GPU in use): captions come slowly; " +
      `the ${wordsOf(deviceKey, DEV.wasm)} backend may be faster.`, "info");
  } else {
    unsay("software-gpu");
  }
}

let autostarted = false;
function showReady(m) {
  const first = state.info === null;
  state.ready = true;
  state.switching = false;
  state.info = m;
  if (first) state.pageReadyMs = performance.now() - state.started;
  const precisions = m.choices.map((c) => `${c.role} ${c.precision}${c.device !== m.device ? ` (${wordsOf(deviceKey, c.device)})` : ""}`).join(", ");
  $("backend").textContent = `${wordsOf(deviceKey, m.device)} · ${precisions}`;
  $("status").textContent = first ? `Ready in ${(state.pageReadyMs / 1000).toFixed(1)} s. ${m.describe}`
    : `Switched to ${wordsOf(deviceKey, m.device)}. ${m.describe}`;
  $("retry").hidden = true;
  // Variants other than the preferred one: say which and why (the features the adapter lacks).
  const fell = m.choices.filter((c) => c.fallback !== FALLBACK.none);
  if (fell.length) {
    const lacks = [...new Set(fell.flatMap((c) => c.missing || []))];
    say("precision", `This GPU lacks ${lacks.join(", ") || "a feature the preferred graphs need"}, so the page chose: ` +
      fell.map((c) => `${c.role} → ${c.precision} on ${wordsOf(deviceKey, c.device)}` +
        (c.fallback === FALLBACK.wasm ? " (no variant fits this GPU)" : "")).join("; ") + ".", "info");
  } else {
    unsay("precision");
  }
  $("toggle").disabled = false;
  showCache();
  if (params.has("autostart") && !autostarted) {
    autostarted = true;
    start();
  }
}

function handle(m) {
  switch (m.type) {
    case OUT.status:
      $("status").textContent = m.text;
      break;
    case OUT.plan:
      showPlan(m.files);
      break;
    case OUT.progress:
      showProgress(m);
      break;
    case OUT.backend:
      showBackend(m);
      break;
    case OUT.ready:
      showReady(m);
      break;
    case OUT.token:
      if (m.id === state.frameId) {
        state.current += m.piece;
        $("caption").textContent = state.current;
      }
      break;
    case OUT.caption:
      state.inFlight = false;
      if (m.cancelled || (m.error && m.error.code === ERR.cancelled)) { state.cancelled += 1; break; }
      if (m.error) { showError(m.error); break; }
      recordCaption(m);
      break;
    case OUT.dropped:
      state.inFlight = false;
      state.dropped += 1;
      $("f-dropped").textContent = String(state.dropped);
      break;
    case OUT.lastFrame:
      while (pending.length) pending.shift()(m.frame);
      break;
    case OUT.error:
      state.inFlight = false;
      showError(m.error);
      if (state.switching) {
        state.switching = false;
        $("status").textContent = `Switching the backend failed; still on ${wordsOf(deviceKey, state.info.device)}.`;
      } else if (!state.ready) {
        $("status").textContent = "Loading failed.";
        $("retry").hidden = false;
      }
      break;
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

const promptKey = S.prompt.key;
const tokensKey = S.max_new_tokens.key;
for (const text of C.prompts) {
  const b = document.createElement("button");
  b.textContent = text;
  b.className = "suggestion";
  b.onclick = () => { $(FIELD[promptKey]).value = text; sendPrompt(); };
  $("suggestions").append(b);
}
let promptTimer = null;
function sendPrompt() {
  clearTimeout(promptTimer);
  const got = check(promptKey, $(FIELD[promptKey]).value.trim() || S.prompt.default);
  mark(promptKey, got.problem);
  if (got.problem) return;  // the worker keeps the last good prompt
  state.current = "";
  worker.postMessage({ type: IN.prompt, prompt: got.value });
}
$(FIELD[promptKey]).oninput = () => { clearTimeout(promptTimer); promptTimer = setTimeout(sendPrompt, 400); };
function sendOptions() {
  const got = current(tokensKey);
  if (got.problem) return;  // shown at the field; the worker keeps the last good value
  worker.postMessage({ type: IN.options, options: { [tokensKey]: got.value } });
}
$(FIELD[tokensKey]).onchange = sendOptions;
$(FIELD[tokensKey]).oninput = () => current(tokensKey);
if (!fromUrl[tokensKey]) sendOptions();
if (!fromUrl[promptKey]) sendPrompt();
for (const key of [S.interval_ms.key, S.frame_size.key]) $(FIELD[key]).onchange = () => current(key);
// A new backend: the worker re-creates its sessions and the page stays (reloading keeps the choice).
$(FIELD[deviceKey]).onchange = () => {
  const got = current(deviceKey);
  if (got.problem) return;
  params.set(URL_PARAM[deviceKey], got.value);
  history.replaceState(null, "", `${location.pathname}?${params}`);
  if (!state.ready || state.switching) {
    location.reload();
    return;
  }
  state.switching = true;
  worker.postMessage({ type: IN.device, device: got.value });
};
const settingValue = (key) => check(key, $(FIELD[key]).value).value ?? S[key].default;

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
  const max = settingValue(S.frame_size.key);
  const scale = max > 0 ? Math.min(1, max / Math.max(w, h)) : 1;
  const opts = scale < 1 ? { resizeWidth: Math.round(w * scale), resizeHeight: Math.round(h * scale), resizeQuality: "high" } : {};
  return await createImageBitmap(src, opts);
}

async function loop() {
  while (state.running) {
    const interval = settingValue(S.interval_ms.key);
    const due = performance.now() - state.lastSent >= interval;
    if (!state.inFlight && !state.switching && due) {
      const bitmap = await grab().catch(() => null);
      if (bitmap) {
        state.inFlight = true;
        state.lastSent = performance.now();
        state.frameId += 1;
        state.current = "";
        const mediaTime = state.source === "image" ? null : $("video").currentTime;
        worker.postMessage({ type: IN.frame, id: state.frameId, bitmap, source: state.source, media_time: mediaTime },
                           [bitmap]);
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
