/* lfmvl-site service worker: offline cache with sha256 checks, and the COOP/COEP header shim.
 *
 * What it does
 * - Files listed in manifest.json ({"files": [{"path", "size", "sha256"}, ...]}, paths relative to this
 *   script's scope) are served cache-first from Cache Storage. A file not yet cached is fetched (revalidating
 *   the HTTP cache), streamed to the page as it arrives, and stored only once its sha256 (crypto.subtle) and
 *   size match the manifest. On a mismatch nothing is stored, the page's read fails at the end of the body,
 *   and every window gets {type: "lfmvl-sw", kind: "integrity-error", path, message}.
 * - manifest.json is network-first (fallback: the stored copy). Each navigation refreshes it; a changed
 *   manifest becomes the active one and cached files whose path left the manifest or whose sha256 changed are
 *   deleted, so a new build refetches what changed and nothing else. An interrupted download resumes by file:
 *   files already verified stay cached.
 * - Range requests are answered from the cache (206 with Content-Range, 416 when unsatisfiable) when the file
 *   is cached, and passed to the network otherwise.
 * - Every same-origin response it returns carries COOP same-origin, COEP require-corp and CORP same-origin, so
 *   on hosts that cannot set headers (GitHub Pages) the page becomes crossOriginIsolated after one reload
 *   (sw-register.js does that reload). Cross-origin requests are not touched.
 * Cache names, header, message kinds and the manifest reader come from contract.js (generated from
 * lfmvl_site/runtime/contract.py), shared with sw-register.js and the page.
 */
'use strict';

importScripts('./contract.js');
const C = self.LFMVL_CONTRACT;
const {cache_files: CACHE_FILES, cache_meta: CACHE_META, cache_prefix: CACHE_PREFIX, sha_header: SHA_HEADER,
  message_type: MESSAGE_TYPE, manifest_timeout_ms: MANIFEST_TIMEOUT_MS} = C.sw;
const KIND = C.sw.kinds;
const COMMAND = C.sw.commands;
const SCOPE = new URL(self.registration.scope);
const MANIFEST_URL = new URL('manifest.json', SCOPE).href;
const COI = {
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Embedder-Policy': 'require-corp',
  'Cross-Origin-Resource-Policy': 'same-origin',
};
const NULL_BODY = new Set([101, 103, 204, 205, 304]);

let active = null;        // {text, byUrl: Map(url -> {path, size, sha256})}
let refreshing = null;    // the manifest refresh in flight
const inflight = new Map(); // url -> Promise<boolean> (stored?)

function keyOf(url) {
  const u = new URL(url);
  return u.origin + u.pathname;
}

function parseManifest(text) {
  const files = C.readFiles(JSON.parse(text));
  const byUrl = new Map();
  for (const f of files) {
    const url = keyOf(new URL(f.path, SCOPE).href);
    byUrl.set(url, {path: f.path, url, size: f.size, sha256: f.sha256.toLowerCase()});
    if (f.path === 'index.html') byUrl.set(SCOPE.href, byUrl.get(url));
  }
  return {text, byUrl};
}

async function broadcast(msg) {
  const all = await self.clients.matchAll({includeUncontrolled: true, type: 'window'});
  for (const c of all) c.postMessage({type: MESSAGE_TYPE, ...msg});
}

async function loadActive() {
  if (active) return active;
  const stored = await (await caches.open(CACHE_META)).match(MANIFEST_URL);
  if (stored) {
    try { active = parseManifest(await stored.text()); } catch (e) { active = null; }
  }
  return active;
}

/** Make `text` the active manifest; drop cached files it no longer lists or lists with another sha256. */
async function adopt(text) {
  await loadActive();
  if (active && active.text === text) return active;
  const next = parseManifest(text);
  await (await caches.open(CACHE_META)).put(MANIFEST_URL, new Response(text, {
    headers: {'Content-Type': 'application/json'},
  }));
  const files = await caches.open(CACHE_FILES);
  let dropped = 0;
  for (const req of await files.keys()) {
    const hit = await files.match(req);
    const entry = next.byUrl.get(keyOf(req.url));
    if (!entry || !hit || hit.headers.get(SHA_HEADER) !== entry.sha256) {
      await files.delete(req);
      dropped += 1;
    }
  }
  const first = active === null;
  active = next;
  if (!first) broadcast({kind: KIND.manifest_updated, dropped});
  return active;
}

/** Fetch manifest.json from the network (bounded in time); adopt it. Returns its text or null (offline). */
function refreshManifest() {
  if (refreshing) return refreshing;
  refreshing = (async () => {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), MANIFEST_TIMEOUT_MS);
    try {
      const resp = await fetch(MANIFEST_URL, {cache: 'no-cache', signal: ctrl.signal});
      if (!resp.ok) return null;
      const text = await resp.text();
      await adopt(text);
      return text;
    } catch (e) {
      return null;
    } finally {
      clearTimeout(timer);
      refreshing = null;
    }
  })();
  return refreshing;
}

function withCoi(resp) {
  if (!resp || resp.type === 'opaque' || resp.type === 'opaqueredirect' || resp.status === 0) return resp;
  const headers = new Headers(resp.headers);
  for (const [k, v] of Object.entries(COI)) headers.set(k, v);
  return new Response(NULL_BODY.has(resp.status) ? null : resp.body,
    {status: resp.status, statusText: resp.statusText, headers});
}

function hex(buf) {
  return Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, '0')).join('');
}

async function rangeResponse(hit, header) {
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (!m[1] && !m[2])) return hit; // multiple ranges or other units: a full 200 is a valid answer
  const blob = await hit.blob();
  const size = blob.size;
  let start;
  let end;
  if (m[1]) {
    start = Number(m[1]);
    end = m[2] ? Math.min(Number(m[2]), size - 1) : size - 1;
  } else {
    start = Math.max(size - Number(m[2]), 0);
    end = Number(m[2]) === 0 ? -1 : size - 1;
  }
  if (start >= size || start > end) {
    return new Response(null, {status: 416, headers: {'Content-Range': `bytes */${size}`}});
  }
  return new Response(blob.slice(start, end + 1), {
    status: 206,
    headers: {
      'Content-Type': hit.headers.get('Content-Type') || 'application/octet-stream',
      'Content-Length': String(end - start + 1),
      'Content-Range': `bytes ${start}-${end}/${size}`,
      'Accept-Ranges': 'bytes',
    },
  });
}

/** Fetch one manifest file, stream it to the page, store it once verified. */
async function fetchVerifyStore(event, key, entry) {
  const resp = await fetch(key, {cache: 'no-cache', credentials: 'same-origin'});
  if (!resp.ok || !resp.body) return resp;
  const headers = new Headers(resp.headers);
  headers.delete('Content-Encoding'); // the body is already decoded
  headers.set('Content-Length', String(entry.size));
  const reader = resp.body.getReader();
  let settle;
  const stored = new Promise((r) => { settle = r; });
  inflight.set(key, stored);
  event.waitUntil(stored);
  const finish = (ok) => { inflight.delete(key); settle(ok); };
  let cancelled = false;

  const body = new ReadableStream({
    start(ctrl) {
      (async () => {
        const chunks = [];
        let got = 0;
        try {
          for (;;) {
            const {done, value} = await reader.read();
            if (done) break;
            chunks.push(value);
            got += value.byteLength;
            if (!cancelled) ctrl.enqueue(value);
          }
        } catch (e) {
          if (!cancelled) ctrl.error(e);
          return finish(false);
        }
        const blob = new Blob(chunks);
        const actual = hex(await crypto.subtle.digest('SHA-256', await blob.arrayBuffer()));
        if (actual !== entry.sha256 || (typeof entry.size === 'number' && got !== entry.size)) {
          const message = `${entry.path} failed its integrity check (sha256 ${actual}, ${got} bytes; ` +
            `the manifest says ${entry.sha256}, ${entry.size} bytes). It was not cached. ` +
            'The download was corrupted or the site was changed without rebuilding manifest.json.';
          broadcast({kind: KIND.integrity_error, path: entry.path, expected: entry.sha256, actual, message});
          if (!cancelled) ctrl.error(new TypeError(message));
          return finish(false);
        }
        try {
          const stored = new Headers({
            'Content-Type': headers.get('Content-Type') || 'application/octet-stream',
            'Content-Length': String(got),
            [SHA_HEADER]: entry.sha256,
          });
          await (await caches.open(CACHE_FILES)).put(key, new Response(blob, {status: 200, headers: stored}));
          broadcast({kind: KIND.stored, path: entry.path, size: got});
          if (!cancelled) ctrl.close();
          finish(true);
        } catch (e) {
          // Quota exceeded: the bytes are good, the page still gets them; only offline use suffers.
          broadcast({kind: KIND.storage_full, path: entry.path, message: `${entry.path} could not be cached: ${e}`});
          if (!cancelled) ctrl.close();
          finish(false);
        }
      })();
    },
    cancel() {
      // The page stopped reading: keep downloading so the verified file still lands in the cache.
      cancelled = true;
    },
  });
  return new Response(body, {status: 200, statusText: 'OK', headers});
}

async function handle(event) {
  const req = event.request;
  const key = keyOf(req.url);
  if (key === MANIFEST_URL) {
    const text = await refreshManifest();
    if (text !== null) return withCoi(new Response(text, {headers: {'Content-Type': 'application/json'}}));
    const stored = await (await caches.open(CACHE_META)).match(MANIFEST_URL);
    return withCoi(stored || new Response('offline and no stored manifest.json', {status: 503}));
  }
  if (req.mode === 'navigate') await refreshManifest();
  if (!(await loadActive())) await refreshManifest(); // first request after install, or after clearCache()
  const entry = active && active.byUrl.get(key);
  if (!entry || req.method !== 'GET') return withCoi(await fetch(req));
  const range = req.headers.get('Range');
  const files = await caches.open(CACHE_FILES);
  const url = entry.url; // "/" and "/index.html" share one cache entry
  let hit = await files.match(url);
  if (!hit && inflight.has(url) && !range) {
    await inflight.get(url); // another request is downloading this file: wait, then serve the stored copy
    hit = await files.match(url);
  }
  if (hit && hit.headers.get(SHA_HEADER) === entry.sha256) {
    return withCoi(range ? await rangeResponse(hit, range) : hit);
  }
  if (range) return withCoi(await fetch(req));
  return withCoi(await fetchVerifyStore(event, url, entry));
}

self.addEventListener('install', (event) => {
  self.skipWaiting();
  event.waitUntil(refreshManifest());
});

self.addEventListener('activate', (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (name.startsWith(CACHE_PREFIX) && name !== CACHE_FILES && name !== CACHE_META) await caches.delete(name);
    }
    await self.clients.claim();
  })());
});

self.addEventListener('fetch', (event) => {
  const req = event.request;
  if (new URL(req.url).origin !== self.location.origin) return;
  if (req.method !== 'GET' && req.method !== 'HEAD') return;
  event.respondWith(handle(event));
});

self.addEventListener('message', (event) => {
  const data = event.data || {};
  if (data.type === COMMAND.forget) {
    active = null; // the page cleared the caches
  } else if (data.type === COMMAND.refresh) {
    event.waitUntil(refreshManifest());
  }
});
