/* Offline cache and cross-origin isolation for the page: registers sw.js and exposes what the UI needs.
 *
 * API (ES module)
 *   const sw = await registerServiceWorker({
 *     url: './sw.js', scope: './',   // where sw.js sits (site root) and what it controls
 *     reloadForIsolation: true,      // reload once when the shim can make the page crossOriginIsolated
 *     persist: true,                 // ask for persistent storage (navigator.storage.persist)
 *     precache: 'shell',             // 'shell': every manifest file but the graphs (C.isGraphFile: page, Pyodide,
 *                                    //   onnxruntime-web, runtime wheel, model configs) in the background;
 *                                    // 'all' | 'none' | (path) => boolean
 *     timeoutMs: 10000,              // how long to wait for the worker to take control on a first visit
 *   });
 * Await it BEFORE loading anything large: on a host without COOP/COEP it reloads the page once (the promise
 * then never settles). Model files the page fetches after `await sw.controlled` are verified and cached as
 * they load; call sw.precache(paths) to fetch a list ahead of time (e.g. the chosen variant's files).
 *
 * Returned object
 *   supported            boolean: service workers usable here (secure context, not disabled)
 *   registration         ServiceWorkerRegistration | null
 *   crossOriginIsolated  boolean (self.crossOriginIsolated)
 *   isolationMessage     null when isolated, else plain words: why not, and what it means
 *   reloaded             boolean: this load is the one-time reload done for isolation
 *   controlled           Promise<boolean>: a worker controls this page (so fetches are cached)
 *   persisted            boolean | null: persistent storage granted (null: API missing)
 *   errors               [{path, message}] integrity failures reported by the worker so far
 *   events               EventTarget: 'integrity-error' | 'stored' | 'storage-full' | 'manifest-updated'
 *                        (event.detail = the worker's message: {kind, path, message, ...})
 *   cacheInfo(sel?)      -> {totalFiles, totalBytes, cachedFiles, cachedBytes, missing: [{path, size}]} over `sel`
 *                        (as precache's: paths, a (path) => boolean filter, or 'all', the default)
 *   estimate()           -> {usage, quota, free} bytes (navigator.storage.estimate; nulls if unavailable)
 *   checkSpace(paths?)   -> {needed, free, ok}: bytes still to download for `paths` (default all) vs free
 *   precache(sel?, {onProgress, concurrency=2, signal}) -> {fetched, skipped, failed: [{path, message}]}
 *                        sel: array of manifest paths, a (path) => boolean filter, or 'all' (default).
 *                        onProgress({path, loaded, size, doneBytes, totalBytes}); files already verified
 *                        in the cache are skipped, so an interrupted download resumes by file.
 *   clearCache()         -> deletes this site's caches (the next visit downloads again)
 *   deleteFiles(paths)   -> {deleted, bytes}: drops these manifest paths from the offline cache (e.g. one model)
 */

import './contract.js';

// Names shared with sw.js and the Python side: contract.js, generated from lfmvl_site/runtime/contract.py.
const C = globalThis.LFMVL_CONTRACT;
const {cache_files: CACHE_FILES, cache_prefix: CACHE_PREFIX, sha_header: SHA_HEADER, reload_key: RELOAD_KEY,
  message_type: MESSAGE_TYPE} = C.sw;
const KIND = C.sw.kinds;

const MEANING = 'Without cross-origin isolation, SharedArrayBuffer is unavailable: onnxruntime-web and ' +
  'Pyodide run on a single thread (slower on the wasm backend; WebGPU is unaffected). Captioning still works.';

function isolationReason(supported, reloaded) {
  if (!self.isSecureContext) {
    return 'This page is not in a secure context (open it over https:// or from localhost), so the ' +
      'cross-origin isolation headers cannot be added by the service worker. ' + MEANING;
  }
  if (!supported) {
    return 'Service workers are unavailable here (private window or disabled by the browser), and the ' +
      'host sends no COOP/COEP headers. ' + MEANING;
  }
  if (reloaded) {
    return 'The host sends no COOP/COEP headers and the service-worker shim did not take effect (a hard ' +
      'reload bypasses service workers: reload normally). ' + MEANING;
  }
  return 'The host sends no COOP/COEP headers and the service worker is not active yet. ' + MEANING;
}

async function readManifest(scope) {
  const resp = await fetch(new URL('manifest.json', scope), {cache: 'no-cache'});
  if (!resp.ok) throw new Error(`manifest.json: HTTP ${resp.status}`);
  return C.readFiles(await resp.json());
}

async function cachedSha(url) {
  if (!self.caches) return null;
  const cache = await caches.open(CACHE_FILES);
  const hit = await cache.match(url);
  return hit ? hit.headers.get(SHA_HEADER) : null;
}

function selectFiles(files, sel) {
  if (!sel || sel === 'all') return files;
  if (typeof sel === 'function') return files.filter((f) => sel(f.path));
  const want = new Set(sel);
  return files.filter((f) => want.has(f.path));
}

export async function registerServiceWorker(opts = {}) {
  const {
    url = './sw.js', scope = './', reloadForIsolation = true, persist = true, precache = 'shell',
    timeoutMs = 10000,
  } = opts;
  const scopeUrl = new URL(scope, location.href);
  const supported = 'serviceWorker' in navigator && self.isSecureContext;
  const events = new EventTarget();
  const errors = [];
  let reloaded = false;
  try {
    reloaded = sessionStorage.getItem(RELOAD_KEY) !== null;
  } catch (e) { /* storage blocked */ }

  let registration = null;
  let controlled = Promise.resolve(false);
  if (supported) {
    navigator.serviceWorker.addEventListener('message', (ev) => {
      const msg = ev.data;
      if (!msg || msg.type !== MESSAGE_TYPE) return;
      if (msg.kind === KIND.integrity_error) errors.push({path: msg.path, message: msg.message});
      events.dispatchEvent(new CustomEvent(msg.kind, {detail: msg}));
    });
    registration = await navigator.serviceWorker.register(url, {scope: scopeUrl.href});
    controlled = navigator.serviceWorker.controller ? Promise.resolve(true) : new Promise((resolve) => {
      let timer = setTimeout(() => resolve(false), timeoutMs);
      navigator.serviceWorker.addEventListener('controllerchange', () => {
        clearTimeout(timer);
        resolve(true);
      }, {once: true});
      // Don't sit out the whole timeout when the worker can never control the page: it failed to install
      // (redundant), or it is active yet the browser keeps it from this page (e.g. service workers blocked).
      const settle = (w) => {
        if (!w) return;
        const check = () => {
          if (w.state === 'redundant') { clearTimeout(timer); resolve(false); }
          if (w.state === 'activated' && !navigator.serviceWorker.controller) {
            clearTimeout(timer);
            timer = setTimeout(() => resolve(!!navigator.serviceWorker.controller), 1000);
          }
        };
        w.addEventListener('statechange', check);
        check();
      };
      if (!registration) { clearTimeout(timer); resolve(false); return; }  // registration refused (blocked)
      settle(registration.installing || registration.waiting || registration.active);
    });
  }

  if (self.crossOriginIsolated) {
    try { sessionStorage.removeItem(RELOAD_KEY); } catch (e) { /* ignore */ }
  } else if (supported && reloadForIsolation && !reloaded) {
    if (await controlled) {
      try { sessionStorage.setItem(RELOAD_KEY, String(Date.now())); } catch (e) { /* ignore */ }
      location.reload();
      return new Promise(() => {}); // the page is going away
    }
  }

  let persisted = null;
  if (persist && navigator.storage && navigator.storage.persist) {
    try {
      persisted = (await navigator.storage.persisted()) || (await navigator.storage.persist());
    } catch (e) { persisted = false; }
  }

  const api = {
    supported,
    registration,
    crossOriginIsolated: Boolean(self.crossOriginIsolated),
    isolationMessage: self.crossOriginIsolated ? null : isolationReason(supported, reloaded),
    reloaded,
    controlled,
    persisted,
    errors,
    events,

    async cacheInfo(sel) {
      const files = selectFiles(await readManifest(scopeUrl), sel);
      const out = {totalFiles: files.length, totalBytes: 0, cachedFiles: 0, cachedBytes: 0, missing: []};
      for (const f of files) {
        out.totalBytes += f.size || 0;
        if ((await cachedSha(new URL(f.path, scopeUrl).href)) === f.sha256) {
          out.cachedFiles += 1;
          out.cachedBytes += f.size || 0;
        } else {
          out.missing.push({path: f.path, size: f.size || 0});
        }
      }
      return out;
    },

    async estimate() {
      if (!navigator.storage || !navigator.storage.estimate) return {usage: null, quota: null, free: null};
      const {usage = 0, quota = 0} = await navigator.storage.estimate();
      return {usage, quota, free: Math.max(quota - usage, 0)};
    },

    async checkSpace(sel) {
      const files = selectFiles(await readManifest(scopeUrl), sel);
      let needed = 0;
      for (const f of files) {
        if ((await cachedSha(new URL(f.path, scopeUrl).href)) !== f.sha256) needed += f.size || 0;
      }
      const {free} = await api.estimate();
      return {needed, free, ok: free === null ? true : needed <= free};
    },

    async precache(sel = 'all', {onProgress = null, concurrency = 2, signal = undefined} = {}) {
      if (!(await controlled)) {
        throw new Error('No service worker controls this page (a hard reload bypasses it): reload normally ' +
          'to enable offline caching.');
      }
      const files = selectFiles(await readManifest(scopeUrl), sel);
      const todo = [];
      const result = {fetched: [], skipped: [], failed: []};
      for (const f of files) {
        if ((await cachedSha(new URL(f.path, scopeUrl).href)) === f.sha256) result.skipped.push(f.path);
        else todo.push(f);
      }
      const totalBytes = todo.reduce((s, f) => s + (f.size || 0), 0);
      let doneBytes = 0;
      const one = async (f) => {
        try {
          const resp = await fetch(new URL(f.path, scopeUrl), {signal});
          if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
          const reader = resp.body.getReader();
          let loaded = 0;
          for (;;) {
            const {done, value} = await reader.read();
            if (done) break;
            loaded += value.byteLength;
            doneBytes += value.byteLength;
            if (onProgress) onProgress({path: f.path, loaded, size: f.size, doneBytes, totalBytes});
          }
          result.fetched.push(f.path);
        } catch (e) {
          // The worker's integrity message may arrive just after the failed read: give it a moment.
          for (let i = 0; i < 20 && !errors.some((x) => x.path === f.path); i++) {
            await new Promise((r) => setTimeout(r, 25));
          }
          const reported = errors.find((x) => x.path === f.path);
          result.failed.push({path: f.path, message: reported ? reported.message : `${f.path}: ${e.message || e}`});
        }
      };
      const queue = todo.slice();
      await Promise.all(Array.from({length: Math.max(1, concurrency)}, async () => {
        while (queue.length && !(signal && signal.aborted)) await one(queue.shift());
      }));
      return result;
    },

    async deleteFiles(paths) {
      const out = {deleted: 0, bytes: 0};
      if (!self.caches) return out;
      const sizes = new Map(selectFiles(await readManifest(scopeUrl), 'all').map((f) => [f.path, f.size || 0]));
      const cache = await caches.open(CACHE_FILES);
      for (const p of paths) {
        if (await cache.delete(new URL(p, scopeUrl).href)) {
          out.deleted += 1;
          out.bytes += sizes.get(p) || 0;
        }
      }
      return out;
    },

    async clearCache() {
      if (!self.caches) return;
      for (const name of await caches.keys()) {
        if (name.startsWith(CACHE_PREFIX)) await caches.delete(name);
      }
      if (navigator.serviceWorker && navigator.serviceWorker.controller) {
        navigator.serviceWorker.controller.postMessage({type: C.sw.commands.forget});
      }
    },
  };

  if (supported && precache !== 'none') {
    const sel = precache === 'shell' ? (p) => !C.isGraphFile(p) : precache;
    // Background: the page does not wait for it; failures surface through `errors`/events.
    controlled.then((ok) => (ok ? api.precache(sel) : null)).catch(() => {});
  }
  return api;
}
