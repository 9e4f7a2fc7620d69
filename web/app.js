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
  switchingModel: false,   // another model choice is loading: no frames are sent
  choice: null,            // the settings.choices id loaded (or loading)
  deviceClass: null,       // which download of each choice this device takes (webgpu-f16 | webgpu | wasm)
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
  lastDropped: 0,
  sent: new Map(),         // frame id -> {source, name, media_time}: what each caption was made from
  live: { firstMs: null }, // the running caption's figures
  announced: 0,            // completed captions put in the live region
  everStarted: false,
  starting: false,
  looping: false,
  sourceName: "",          // camera label or file name
  fileUrl: null,
  resolved: null,          // {device, why, adapter}: what the page asked the worker for, and its own reason
  load: null,              // {loaded, total, files, done}: the overall loading progress
  offline: null,           // the last cacheInfo
};

// A small debugging/testing surface: the browser tests read it.
const pending = [];
window.lfmvl = {
  state,
  settings,
  contract: C,
  lastFrame: () => new Promise((resolve) => { pending.push(resolve); worker.postMessage({ type: IN.lastFrame }); }),
  start: () => start(),
  showCache: () => showCache(),
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
// Settings are remembered in this browser (localStorage) across reloads; the address overrides them.
const STORE = "lfmvl-page-settings";
function stored() {
  try { return JSON.parse(localStorage.getItem(STORE) || "{}") || {}; } catch { return {}; }
}
function remember(key, value) {
  try { localStorage.setItem(STORE, JSON.stringify({ ...stored(), [key]: value })); } catch { /* private mode: not kept */ }
}
for (const [key, raw] of Object.entries(stored())) {
  if (FIELD[key] && !check(key, String(raw)).problem) $(FIELD[key]).value = String(raw);
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
  // Its own key: the offline cache's failure outlives a successful load (which clears the load's "storage").
  sw.events.addEventListener(KIND.storage_full, (e) => say("offline-storage",
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

// What this device needs offline: every file but the model graphs, plus the graph files of the variants this
// device runs (the worker's plan names them). Variants for other GPUs are not counted.
const needed = new Set();
const neededByThisDevice = (path) => !C.isGraphFile(path) || needed.has(path);
async function showCache() {
  if (!sw) return;
  const [info, est] = await Promise.all([sw.cacheInfo(state.info ? neededByThisDevice : "all"), sw.estimate()]);
  state.offline = info;
  $("cache").textContent = `${info.cachedFiles}/${info.totalFiles} files ${state.info ? "this device needs are " : ""}` +
    `cached for offline use (${(info.cachedBytes / 1e6).toFixed(1)} of ${(info.totalBytes / 1e6).toFixed(1)} MB)` +
    (est && est.free != null ? `, ${(est.free / 1e9).toFixed(1)} GB free` : "") +
    (sw.persisted ? ", persistent" : "");
  await showChoiceCache();
}
// Per model choice (sites with several): what of its download for this device is cached, and a way to delete it.
async function showChoiceCache() {
  const list = $("choiceCache");
  if (CHOICES.length < 2 || !state.deviceClass) { list.replaceChildren(); return; }
  const rows = await Promise.all(CHOICES.map(async (c) => {
    const files = c.downloads[state.deviceClass].files;
    const info = await sw.cacheInfo(files);
    const li = document.createElement("li");
    li.dataset.choice = c.id;
    const text = document.createElement("span");
    text.textContent = `${c.label}: ${mb(info.cachedBytes)} of ${mb(info.totalBytes)} MB cached` +
      (c.id === state.choice ? " (in use)" : "");
    li.append(text);
    if (info.cachedBytes > 0) {
      const del = document.createElement("button");
      del.type = "button";
      del.textContent = "Delete";
      del.setAttribute("aria-label", `Delete ${c.label} from the offline cache`);
      del.onclick = async () => {
        // Files the model in use needs stay (presets of one model share their configs and some graphs).
        const inUse = new Set(state.choice ? choiceById(state.choice).downloads[state.deviceClass].files : []);
        const got = await sw.deleteFiles(files.filter((p) => !inUse.has(p)));
        say("cache", `Deleted ${c.label} from the offline cache (${mb(got.bytes)} MB): choosing it again ` +
          "downloads it again.", "info");
        await showCache();
      };
      li.append(del);
    }
    return li;
  }));
  list.replaceChildren(...rows);
}
$("clearCache").onclick = async () => {
  if (!sw) return;
  await sw.clearCache();
  await showCache();
  say("cache", "Offline cache cleared: the next visit downloads the model again.", "info");
};

// "auto" and a software WebGPU adapter (SwiftShader, WARP: no GPU in use) is 20-70x slower than wasm: the page
// asks for the adapter itself and sends wasm instead, saying why. Only JavaScript can ask for the adapter.
async function softwareAdapter() {
  if (!navigator.gpu) return null;
  let adapter = null;
  try { adapter = await navigator.gpu.requestAdapter(); } catch { return null; }
  if (!adapter) return null;
  const info = adapter.info || {};
  const named = [info.vendor, info.architecture, info.description].filter(Boolean).join(" ");
  const fallback = info.isFallbackAdapter ?? adapter.isFallbackAdapter;
  if (fallback || /swiftshader|warp|llvmpipe/i.test(named)) return named || "a fallback adapter";
  return null;
}
/** The backend to ask the worker for: {device, why} (why: the page's own reason, or null). */
async function resolveDevice(wanted) {
  if (wanted !== DEV.auto) return { device: wanted, why: null, adapter: null };
  const soft = await softwareAdapter();
  return soft ? { device: DEV.wasm, why: WHY.software_adapter, adapter: soft } : { device: wanted, why: null, adapter: null };
}

// ---------------------------------------------------------------- model choice (sites with several models)

// The build's model × preset list (runtime/choices.py); Python picks the default for this device.
const CHOICES = settings.choices || [];
const CHOICE_STORE = "lfmvl-model-choice";
const choiceById = (id) => CHOICES.find((c) => c.id === id);
function rememberedChoice() {
  const wanted = params.get("model");
  if (wanted && choiceById(wanted)) return wanted;
  try { return localStorage.getItem(CHOICE_STORE) || ""; } catch { return ""; }
}
function showChoices() {
  const sel = $("model");
  $("modelPick").hidden = CHOICES.length < 2;
  sel.replaceChildren(...CHOICES.map((c) => {
    const o = document.createElement("option");
    o.value = c.id;
    const size = state.deviceClass ? ` · ${mb(c.downloads[state.deviceClass].bytes)} MB` : "";
    o.textContent = c.label + size;
    return o;
  }));
  if (state.choice) sel.value = state.choice;
  sel.disabled = !state.ready;
}
function showChoice(m) {
  const first = state.choice === null;
  if (m.id !== state.choice) needed.clear();  // another choice: its plan names its files
  state.choice = m.id;
  state.deviceClass = m.device_class;
  showChoices();
  const c = choiceById(m.id);
  if (c && CHOICES.length > 1) {
    $("modelNote").textContent = `${c.label}: ${mb(c.downloads[m.device_class].bytes)} MB for this device ` +
      `(${m.why}).`;
    if (!first && state.switchingModel) $("status").textContent = `Loading ${c.label}…`;
  }
}
$("model").onchange = () => {
  const id = $("model").value;
  if (!choiceById(id) || id === state.choice) return;
  try { localStorage.setItem(CHOICE_STORE, id); } catch { /* private mode: not kept */ }
  params.set("model", id);
  history.replaceState(null, "", `${location.pathname}?${params}`);
  state.ready = false;
  state.switchingModel = true;
  $("model").disabled = true;
  $("load").hidden = false;
  worker.postMessage({ type: IN.choose, choice: id });
};

const deviceKey = S.device.key;
const wantedDevice = check(deviceKey, $(FIELD[deviceKey]).value).value ?? S.device.default;
state.resolved = await resolveDevice(wantedDevice);
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

worker.postMessage({ type: IN.init, settings, device: state.resolved.device, verbose: params.has("verbose"),
                    choice: rememberedChoice() });

const LOAD_ERRORS = ["download", "storage", "memory", "model", "error"];
$("retry").onclick = () => {
  $("retry").hidden = true;
  for (const key of LOAD_ERRORS) unsay(key);
  $("status").textContent = "Trying again…";
  worker.postMessage({ type: IN.retry });
};

// ---------------------------------------------------------------- loading progress

const progress = new Map();  // file -> {row, loaded, total, done}
const mb = (n) => (n / 1e6).toFixed(n < 1e7 ? 2 : 1);
const load = { firstByte: null };
function showProgress(p) {
  let entry = progress.get(p.file);
  if (!entry) {
    const row = document.createElement("tr");
    row.innerHTML = "<td></td><td></td><td></td>";
    $("progress").tBodies[0].append(row);
    entry = { row, loaded: 0, total: 0, done: false };
    progress.set(p.file, entry);
  }
  entry.loaded = p.loaded;
  entry.total = Math.max(p.total || 0, p.loaded);
  entry.done = entry.done || Boolean(p.done);
  if (p.loaded > 0 && load.firstByte === null) load.firstByte = performance.now();
  const [name, bytes, eta] = entry.row.cells;
  name.textContent = p.file;
  bytes.textContent = p.total ? `${mb(p.loaded)} / ${mb(p.total)} MB` : `${mb(p.loaded)} MB`;
  if (entry.done) eta.textContent = "done";
  else if (p.total && p.loaded > 0 && p.ms > 0) eta.textContent = `${Math.ceil((p.total - p.loaded) / (p.loaded / p.ms) / 1000)} s`;
  else eta.textContent = "…";
  showOverall();
}
/** One bar over everything the page fetches (Pyodide, onnxruntime-web, packages, model): bytes and ETA. */
function showOverall() {
  let loaded = 0;
  let total = 0;
  let done = 0;
  for (const e of progress.values()) {
    loaded += e.done ? e.total : e.loaded;
    total += e.total;
    if (e.done) done += 1;
  }
  state.load = { loaded, total, files: progress.size, done };
  $("overall").max = Math.max(total, 1);
  $("overall").value = Math.min(loaded, total);
  let eta = "";
  if (load.firstByte !== null && loaded > 0 && loaded < total) {
    const rate = loaded / Math.max(performance.now() - load.firstByte, 1);  // bytes per ms
    eta = ` · about ${Math.max(1, Math.ceil((total - loaded) / rate / 1000))} s left`;
  }
  $("overallText").textContent = `${mb(loaded)} of ${mb(total)} MB (${done}/${progress.size} files)${eta}`;
  $("fileDetails").querySelector("summary").textContent = `Files (${done}/${progress.size})`;
}
function showPlan(files) {  // the files this load will fetch, listed before their bytes arrive
  for (const f of files || []) {
    needed.add(f.file);
    if (!progress.has(f.file)) showProgress({ file: f.file, loaded: 0, total: f.size, ms: 0 });
  }
}

function showBackend(m) {
  if (m.why === WHY.no_webgpu) {
    say("webgpu", "This browser has no WebGPU, so the model runs on the CPU (wasm) instead: it works, " +
      "but captions come more slowly. A current Chrome or Edge with WebGPU enabled is faster.");
  } else if (m.why === WHY.no_adapter) {
    say("webgpu", "WebGPU is available but no graphics adapter was found (GPU blocked or unsupported), " +
      "so the model runs on the CPU (wasm) instead, more slowly.");
  } else if (state.resolved.why === WHY.software_adapter && m.device === DEV.wasm) {
    say("webgpu", `Backend "${wordsOf(deviceKey, DEV.auto)}" chose ${wordsOf(deviceKey, DEV.wasm)}: the only WebGPU ` +
      `adapter here is a software one (${state.resolved.adapter}, no GPU in use), which is many times slower ` +
      `than wasm. Choose ${wordsOf(deviceKey, DEV.webgpu)} under Backend to use it anyway.`, "info");
  } else {
    unsay("webgpu");
  }
  if (m.device === DEV.webgpu && m.adapter && m.adapter.fallback) {
    say("software-gpu", "The only WebGPU adapter is a software one (no GPU in use): captions come slowly; " +
      `the ${wordsOf(deviceKey, DEV.wasm)} backend may be faster.`, "info");
  } else {
    unsay("software-gpu");
  }
  $("deviceNote").textContent = state.resolved.why === WHY.software_adapter
    ? `auto → ${wordsOf(deviceKey, DEV.wasm)}: the WebGPU adapter is software (${state.resolved.adapter}).` : "";
}

let autostarted = false;
function showReady(m) {
  const first = state.info === null;
  state.ready = true;
  state.switching = false;
  const switchedModel = state.switchingModel;
  state.switchingModel = false;
  state.info = m;
  showChoices();
  if (first) state.pageReadyMs = performance.now() - state.started;
  const precisions = m.choices.map((c) => `${c.role} ${c.precision}${c.device !== m.device ? ` (${wordsOf(deviceKey, c.device)})` : ""}`).join(", ");
  const auto = state.resolved.why === WHY.software_adapter ? ` (${wordsOf(deviceKey, DEV.auto)}: software GPU skipped)` : "";
  $("backend").textContent = `${wordsOf(deviceKey, m.device)}${auto} · ${precisions}`;
  $("status").textContent = first ? `Ready in ${(state.pageReadyMs / 1000).toFixed(1)} s. ${m.describe}`
    : switchedModel ? `Switched to ${choiceById(m.choice)?.label ?? m.choice}. ${m.describe}`
      : `Switched to ${wordsOf(deviceKey, m.device)}. ${m.describe}`;
  $("retry").hidden = true;
  for (const key of LOAD_ERRORS) unsay(key);  // whatever failed on the way was retried and got through
  $("load").hidden = true;                    // the loading view gives way to the captioning view
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
  $("playPause").disabled = false;
  showRunning();
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
    case OUT.choice:
      showChoice(m);
      break;
    case OUT.ready:
      showReady(m);
      break;
    case OUT.token:
      if (m.id === state.frameId) showToken(m);
      break;
    case OUT.caption:
      state.inFlight = false;
      $("streaming").textContent = "";
      if (m.cancelled || (m.error && m.error.code === ERR.cancelled)) { state.cancelled += 1; break; }
      if (m.error) { showError(m.error); break; }
      for (const key of ["input", "memory", "error"]) unsay(key);  // the last caption failed; this one did not
      recordCaption(m);
      break;
    case OUT.dropped:
      state.inFlight = false;
      countDropped();
      break;
    case OUT.lastFrame:
      while (pending.length) pending.shift()(m.frame);
      break;
    case OUT.error:
      state.inFlight = false;
      showError(m.error);
      if (state.switchingModel) {
        state.switchingModel = false;
        $("status").textContent = `Loading ${choiceById(state.choice)?.label ?? "the model"} failed.`;
        $("retry").hidden = false;
        $("load").hidden = false;
        $("fileDetails").open = true;
      } else if (state.switching) {
        state.switching = false;
        $("status").textContent = `Switching the backend failed; still on ${wordsOf(deviceKey, state.info.device)}.`;
      } else if (!state.ready) {
        $("status").textContent = "Loading failed.";
        $("retry").hidden = false;
        $("load").hidden = false;
        $("fileDetails").open = true;
      }
      break;
  }
}

// ---------------------------------------------------------------- captions & figures

const fmt = (v, unit) => (v === null || v === undefined || !Number.isFinite(Number(v)) ? "–"
  : `${Number(v).toFixed(unit === "ms" ? 0 : 1)} ${unit}`);

/** A token of the running caption: shown apart from the last complete caption; figures as tokens arrive. */
function showToken(m) {
  state.current += m.piece;
  $("streaming").textContent = state.current;
  const live = state.live;
  if (m.count === 1 || live.firstMs === null) {
    live.firstMs = m.ms;
    $("f-ttft").textContent = fmt(m.ms, "ms");
  } else {
    $("f-tps").textContent = fmt((m.count - 1) / ((m.ms - live.firstMs) / 1000), "tok/s");
  }
  $("f-latency").textContent = fmt(m.ms, "ms");
}

function countDropped(n = 1) {
  state.dropped += n;
  $("f-dropped").textContent = String(state.dropped);
}

function mediaTimeText(s) {
  const m = Math.floor(s / 60);
  return `${m}:${(s - m * 60).toFixed(1).padStart(4, "0")}`;
}

function recordCaption(m) {
  const t = m.timings || {};
  const at = (performance.now() - state.started) / 1000;
  if (state.firstCaptionMs === null) state.firstCaptionMs = performance.now() - state.started;
  const sent = state.sent.get(m.id) || {};
  state.sent.delete(m.id);
  const mediaTime = m.media_time ?? sent.media_time ?? null;
  const entry = { id: m.id, time_s: at, wall_clock: new Date().toISOString(), source: sent.source ?? m.source,
                  source_name: sent.name ?? "", media_time: mediaTime, prompt: m.prompt, text: m.text,
                  token_ids: m.token_ids, width: m.width, height: m.height, stop_reason: m.stop_reason, timings: t,
                  decoder_runs: m.decoder_runs, speculative: m.speculative, features_reused: m.features_reused,
                  draft_tokens_proposed: m.draft_tokens_proposed, draft_tokens_accepted: m.draft_tokens_accepted,
                  kept: m.kept, kept_live: m.kept_live, model: m.choice };
  state.captions.push(entry);
  // The complete caption replaces the previous one only now; screen readers hear complete captions only.
  $("caption").textContent = m.text;
  $("announce").textContent = m.text;
  state.announced += 1;
  $("f-ttft").textContent = fmt(t.first_token_ms, "ms");
  $("f-tps").textContent = fmt(t.tokens_per_s, "tok/s");
  $("f-latency").textContent = fmt(t.total_ms, "ms");
  $("f-pre").textContent = fmt(t.preprocess_ms, "ms");
  // Speculative decoding: draft tokens accepted / proposed ("off" where this build's decoder cannot verify drafts).
  if (m.speculative === false) $("f-draft").textContent = "off";
  else if (m.draft_tokens_proposed !== undefined) {
    const runs = m.decoder_runs === 1 ? "1 run" : `${m.decoder_runs} runs`;
    $("f-draft").textContent = `${m.draft_tokens_accepted}/${m.draft_tokens_proposed} · ${runs}`;
  }
  const li = document.createElement("li");
  const meta = document.createElement("span");
  meta.className = "meta";
  const when = new Date(entry.wall_clock).toLocaleTimeString();
  meta.textContent = `${when} · ${entry.source_name || entry.source}` + (mediaTime !== null ? ` @ ${mediaTimeText(mediaTime)}` : "");
  li.append(meta, document.createTextNode(m.text));
  $("history").prepend(li);
  showHistoryState();
}

function showHistoryState() {
  const empty = state.captions.length === 0;
  for (const id of ["exportJson", "exportSrt", "clearHistory"]) $(id).disabled = empty;
  $("historyHint").textContent = empty ? "No captions yet: exports become available after the first one." : "";
}

function download(name, text, type) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], { type }));
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}
function srtTime(s) {
  const ms = Math.round(Math.max(0, s) * 1000);
  const p = (n, w = 2) => String(n).padStart(w, "0");
  return `${p(Math.floor(ms / 3600000))}:${p(Math.floor(ms / 60000) % 60)}:${p(Math.floor(ms / 1000) % 60)},${p(ms % 1000, 3)}`;
}
/** SRT cues: a video file's captions at their media time, others at the time since the page opened. */
function srt(captions) {
  const time = (e) => (e.media_time !== null && e.media_time !== undefined ? e.media_time : e.time_s);
  const sameClock = (a, b) => (a.media_time === null || a.media_time === undefined) === (b.media_time === null || b.media_time === undefined)
    && a.source_name === b.source_name;
  // One subtitle line per caption: line breaks inside a caption would end the SRT block early.
  return captions.map((e, i) => {
    const next = captions[i + 1];
    const end = next && sameClock(e, next) && time(next) > time(e) ? time(next) : time(e) + 3;
    return `${i + 1}\n${srtTime(time(e))} --> ${srtTime(end)}\n${e.text.replace(/[\r\n]+/g, " ")}\n`;
  }).join("\n");
}
$("exportJson").onclick = () => download("captions.json", JSON.stringify(state.captions, null, 2), "application/json");
$("exportSrt").onclick = () => download("captions.srt", srt(state.captions), "text/plain");
$("clearHistory").onclick = () => { state.captions = []; $("history").textContent = ""; showHistoryState(); };
showHistoryState();

// ---------------------------------------------------------------- controls

const promptKey = S.prompt.key;
const tokensKey = S.max_new_tokens.key;
for (const text of C.prompts) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.className = "suggestion";
  b.onclick = () => { $(FIELD[promptKey]).value = text; sendPrompt(); };
  $("suggestions").append(b);
}
/** Remember a valid setting for the next visit (and keep the address, when it names it, in step). */
function keep(key, value) {
  remember(key, value);
  if (params.has(URL_PARAM[key])) {
    params.set(URL_PARAM[key], String(value));
    history.replaceState(null, "", `${location.pathname}?${params}`);
  }
}
let promptTimer = null;
function sendPrompt() {
  clearTimeout(promptTimer);
  const typed = $(FIELD[promptKey]).value;
  const got = check(promptKey, typed.trim() || S.prompt.default);
  mark(promptKey, got.problem);
  if (got.problem) return;  // the worker keeps the last good prompt
  state.current = "";
  remember(promptKey, typed.trim());
  worker.postMessage({ type: IN.prompt, prompt: got.value });
}
$(FIELD[promptKey]).oninput = () => { clearTimeout(promptTimer); promptTimer = setTimeout(sendPrompt, 400); };
function sendOptions() {
  const got = current(tokensKey);
  if (got.problem) return;  // shown at the field; the worker keeps the last good value
  worker.postMessage({ type: IN.options, options: { [tokensKey]: got.value } });
}
$(FIELD[tokensKey]).onchange = () => {
  sendOptions();
  const got = current(tokensKey);
  if (!got.problem) keep(tokensKey, got.value);
};
$(FIELD[tokensKey]).oninput = () => current(tokensKey);
if (!fromUrl[tokensKey]) sendOptions();
if (!fromUrl[promptKey]) sendPrompt();
for (const key of [S.interval_ms.key, S.frame_size.key]) {
  $(FIELD[key]).onchange = () => {
    const got = current(key);
    if (!got.problem) keep(key, got.value);
  };
}
// A new backend: the worker re-creates its sessions and the page stays, keeping prompt and history.
$(FIELD[deviceKey]).onchange = async () => {
  const got = current(deviceKey);
  if (got.problem) return;
  remember(deviceKey, got.value);
  params.set(URL_PARAM[deviceKey], got.value);
  history.replaceState(null, "", `${location.pathname}?${params}`);
  if (!state.ready || state.switching) {
    location.reload();
    return;
  }
  state.switching = true;
  state.resolved = await resolveDevice(got.value);
  worker.postMessage({ type: IN.device, device: state.resolved.device });
};
const settingValue = (key) => check(key, $(FIELD[key]).value).value ?? S[key].default;

async function listCameras() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return;
  const devices = await navigator.mediaDevices.enumerateDevices();
  const sel = $("camera");
  const keepValue = sel.value;
  sel.length = 1;
  devices.filter((d) => d.kind === "videoinput").forEach((d, i) => {
    const o = document.createElement("option");
    o.value = d.deviceId;
    o.textContent = d.label || `camera ${i + 1}`;
    sel.append(o);
  });
  sel.value = keepValue;
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
  v.controls = false;
  v.removeAttribute("src");
  v.srcObject = state.stream;
  v.hidden = false;
  $("still").hidden = true;
  $("media").dataset.controls = "off";
  const track = state.stream.getVideoTracks()[0];
  state.sourceName = track && track.label ? track.label : "camera";
  showSource();
  await v.play();
  listCameras();
  return true;
}
/** Stop the camera's tracks: the camera light goes off. */
function stopCamera() {
  if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
  state.stream = null;
  if (state.source === "camera") $("video").srcObject = null;
}

function showSource() {
  const camera = state.source === "camera";
  $("useCamera").hidden = camera;
  $("playPause").hidden = state.source === "video";  // a video file has its own controls
  $("sourceLine").textContent = camera
    ? (state.stream ? `Camera: ${state.sourceName}` : state.everStarted ? "Camera off (paused): Resume turns it on again." : "")
    : `${state.source === "video" ? "Video" : "Image"} file: ${state.sourceName}`;
  $("placeholder").hidden = !camera || Boolean(state.stream) || state.everStarted;
}

$("file").onchange = async () => {
  const f = $("file").files[0];
  if (!f) return;
  stopCamera();
  if (state.fileUrl) URL.revokeObjectURL(state.fileUrl);
  state.fileUrl = URL.createObjectURL(f);
  state.sourceName = f.name;
  $("caption").textContent = "";
  if (f.type.startsWith("video/")) {
    state.source = "video";
    const v = $("video");
    v.srcObject = null;
    v.src = state.fileUrl;
    v.loop = true;
    v.controls = true;
    v.hidden = false;
    $("still").hidden = true;
    $("media").dataset.controls = "on";
    showSource();
    await v.play().catch(() => {});
  } else {
    state.source = "image";
    $("still").src = state.fileUrl;
    await $("still").decode();
    $("still").hidden = false;
    $("video").hidden = true;
    $("media").dataset.controls = "off";
    showSource();
  }
  if (state.ready && !state.running) start();
};

// Back to the camera after a file: the file is let go and the camera starts (if captioning is on).
$("useCamera").onclick = async () => {
  const v = $("video");
  v.pause();
  v.removeAttribute("src");
  v.load();
  v.controls = false;
  $("still").hidden = true;
  $("still").removeAttribute("src");
  $("file").value = "";
  if (state.fileUrl) URL.revokeObjectURL(state.fileUrl);
  state.fileUrl = null;
  state.source = "camera";
  state.sourceName = "";
  $("media").dataset.controls = "off";
  $("caption").textContent = "";
  showSource();
  if (state.running) {
    if (!(await startCamera())) pause();
  } else {
    start();
  }
  $("toggle").focus();
};

// A video file's own controls drive captioning too: its pause pauses, its play resumes.
$("video").addEventListener("pause", () => { if (state.source === "video" && state.running) pause(); });
$("video").addEventListener("play", () => { if (state.source === "video" && !state.running && state.ready) start(); });

function showRunning() {
  const label = state.running ? "Pause" : (state.captions.length || state.everStarted ? "Resume" : "Start");
  $("toggle").textContent = label;
  $("toggle").setAttribute("aria-pressed", state.running ? "true" : "false");
  $("playPause").setAttribute("aria-label", state.running ? "Pause captioning" : `${label} captioning`);
  $("playPauseIcon").setAttribute("d", state.running ? "M6 5h4v14H6zM14 5h4v14h-4z" : "M8 5v14l11-7z");
  $("media").dataset.state = state.running ? "running" : state.everStarted ? "paused" : "idle";
}

async function start() {
  if (!state.ready || state.starting) return;
  state.starting = true;
  try {
    if (state.source === "camera" && !state.stream && !(await startCamera())) return;
    if (state.source === "video" && $("video").paused) await $("video").play().catch(() => {});
    state.running = true;
    state.everStarted = true;
    showRunning();
    loop();
  } finally {
    state.starting = false;
  }
}
/** Pause: no more frames; the camera's track is stopped (Resume asks for it again); a video file pauses. */
function pause() {
  state.running = false;
  if (state.source === "camera") stopCamera();
  if (state.source === "video" && !$("video").paused) $("video").pause();
  showRunning();
  showSource();
}
const toggle = () => (state.running ? pause() : start());
$("toggle").onclick = toggle;
$("playPause").onclick = toggle;
// Space pauses and resumes, unless focus is in a field or on a control that uses space itself.
document.addEventListener("keydown", (e) => {
  if (e.key !== " " || e.repeat || e.ctrlKey || e.altKey || e.metaKey) return;
  if (e.target.closest && e.target.closest("input, textarea, select, button, summary, a, video[controls]")) return;
  if (!state.ready) return;
  e.preventDefault();
  toggle();
});

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
  if (state.looping) return;
  state.looping = true;
  try {
    while (state.running) {
      const interval = settingValue(S.interval_ms.key);
      const now = performance.now();
      const due = now - state.lastSent >= interval;
      if (due && interval > 0 && (state.inFlight || state.switching || state.switchingModel) && now - state.lastDropped >= interval) {
        // A frame was due but a caption is still running: that frame is dropped (one per interval missed).
        countDropped();
        state.lastDropped = now;
      }
      if (!state.inFlight && !state.switching && !state.switchingModel && due) {
        const mediaTime = state.source === "video" ? $("video").currentTime : null;  // the time of the frame grabbed
        const bitmap = await grab().catch(() => null);
        if (bitmap && state.running) {
          state.inFlight = true;
          state.lastSent = performance.now();
          state.lastDropped = state.lastSent;
          state.frameId += 1;
          state.current = "";
          state.live = { firstMs: null };
          state.sent.set(state.frameId, { source: state.source, name: state.sourceName, media_time: mediaTime });
          worker.postMessage({ type: IN.frame, id: state.frameId, bitmap, source: state.source, media_time: mediaTime },
                             [bitmap]);
          if (state.source === "image" && interval === 0) {
            // A still image gives the same caption every time: caption it once, then pause.
            pause();
          }
        } else if (bitmap) {
          bitmap.close();
        }
      }
      await new Promise((r) => setTimeout(r, 30));
    }
  } finally {
    state.looping = false;
  }
}

showRunning();
showSource();
listCameras().catch(() => {});
