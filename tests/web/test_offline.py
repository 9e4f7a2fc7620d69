"""web/sw.js and web/sw-register.js in Debian's Chromium (Playwright): offline after the first visit (also
after a browser restart, with the server stopped), sha256-checked caching (a tampered file is refused with a
message naming it and is not cached), updates that refetch only what changed, resume by file, Range from
the cache, and the COOP/COEP shim making a header-less server cross-origin isolated after one reload.

The site here is a minimal page importing sw-register.js plus files of the kinds the build ships; the
references are the file bytes on disk, hashlib, and the servers' own request logs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lfmvl_site.runtime.contract import CONTRACT_JS, SW, render_js

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
HEADER_SERVER = REPO / "src/lfmvl_site/static_server.py"  # what deploy emits as deploy/hf-space/server.py

PAGE = """<!doctype html><meta charset=utf-8><title>sw test</title><body>
<script type=module>
import {registerServiceWorker} from './sw-register.js';
window.__events = [];
const sw = await registerServiceWorker({precache: 'none', timeoutMs: 15000});
for (const k of Object.values(globalThis.LFMVL_CONTRACT.sw.kinds))
  sw.events.addEventListener(k, (e) => window.__events.push(e.detail));
window.__sw = sw;
window.__state = {coi: self.crossOriginIsolated, reloaded: sw.reloaded, msg: sw.isolationMessage,
                  controlled: await sw.controlled, persisted: sw.persisted};
document.body.dataset.ready = '1';
</script>
"""


def write_site(root: Path, files: dict[str, bytes], *, lie: dict[str, str] | None = None) -> None:
    """The page, the worker sources, `files`, and manifest.json (sha256 of each; `lie` overrides some)."""
    root.mkdir(parents=True, exist_ok=True)
    all_files = {"index.html": PAGE.encode(), "sw.js": (REPO / "web/sw.js").read_bytes(),
                 "sw-register.js": (REPO / "web/sw-register.js").read_bytes(),
                 CONTRACT_JS: render_js().encode(), **files}
    for rel, data in all_files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    entries = [{"path": rel, "size": len(data), "sha256": (lie or {}).get(rel, hashlib.sha256(data).hexdigest())}
               for rel, data in all_files.items()]
    (root / "manifest.json").write_text(json.dumps({"format": 1, "files": entries}))


def model_files(seed: int = 0) -> dict[str, bytes]:
    rnd = __import__("random").Random(seed)
    return {
        "app.mjs": b"export const version = 1;\n",
        "pyodide/pyodide.asm.wasm": b"\0asm\x01\0\0\0" + rnd.randbytes(40_000),
        "model/config.json": b'{"model_type": "lfm2_vl"}',
        "model/onnx/decoder.onnx": rnd.randbytes(5_000),
        "model/onnx/decoder.onnx_data": rnd.randbytes(600_000),
        "model/onnx/decoder.onnx_data_1": rnd.randbytes(300_001),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A static server in its own process group, with its request log; always stopped."""

    def __init__(self, root: Path, log: Path, *, headers: bool) -> None:
        self.port = free_port()
        self.log = log
        cmd = ([sys.executable, str(HEADER_SERVER), "--host", "127.0.0.1", "--port", str(self.port), "--dir", str(root)]
               if headers else
               [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(root), str(self.port)])
        self._out = open(log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"server did not start: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}/"

    def requested(self) -> list[str]:
        """Paths of the GET requests logged so far."""
        return re.findall(r'"GET (\S+) HTTP', self.log.read_text(errors="replace"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._out.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator:
    servers: list[Server] = []

    def start(root: Path, *, headers: bool = True) -> Server:
        s = Server(root, tmp_path / f"server{len(servers)}.log", headers=headers)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def pw(playwright_instance):  # the session's Playwright (tests/web/conftest.py); one per process is allowed
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (scripts/setup-test.sh installs Debian's chromium)")
    return playwright_instance


@contextlib.contextmanager
def browser(pw, profile: Path, *extra: str) -> Iterator:
    """A persistent profile (Cache Storage and the worker registration survive closing it: a restart)."""
    ctx = pw.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True,
                                                args=ARGS + list(extra))
    ctx.set_default_timeout(30_000)
    try:
        yield ctx
    finally:
        ctx.close()


def open_page(ctx, url: str):
    page = ctx.pages[0] if ctx.pages else ctx.new_page()
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", state="attached")
    return page


FETCH_SHA = """async (path) => {
  const r = await fetch(path);
  const b = await r.arrayBuffer();
  const h = Array.from(new Uint8Array(await crypto.subtle.digest('SHA-256', b)),
                       (x) => x.toString(16).padStart(2, '0')).join('');
  return {status: r.status, sha: h, size: b.byteLength};
}"""
CACHED = f"""async (path) => {{
  const c = await caches.open('{SW.cache_files}');
  const hit = await c.match(new URL(path, location.href).href);
  return hit ? hit.headers.get('{SW.sha_header}') : null;
}}"""
SHELL = ("index.html", "sw.js", "sw-register.js", CONTRACT_JS)  # what write_site adds to `files`


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_offline_after_restart_with_server_stopped(pw, serve, tmp_path: Path) -> None:
    files = model_files()
    site = tmp_path / "site"
    write_site(site, files)
    server = serve(site)
    with browser(pw, tmp_path / "profile") as ctx:
        page = open_page(ctx, server.url)
        state = page.evaluate("window.__state")
        assert state["coi"] is True and state["controlled"] is True and state["reloaded"] is False
        result = page.evaluate("async () => await window.__sw.precache('all')")
        assert result["failed"] == [] and sorted(result["fetched"]) == sorted([*SHELL, *files])
        info = page.evaluate("async () => await window.__sw.cacheInfo()")
        assert info["missing"] == [] and info["cachedBytes"] == sum(len(d) for d in [*files.values()]) + sum(
            (site / p).stat().st_size for p in SHELL)
        space = page.evaluate("async () => await window.__sw.checkSpace()")
        assert space["needed"] == 0 and space["ok"] is True and space["free"] > 0
    server.stop()  # the network is gone: no server, and the browser offline too

    with browser(pw, tmp_path / "profile") as ctx:
        ctx.set_offline(True)
        page = open_page(ctx, server.url)
        state = page.evaluate("window.__state")
        assert state["coi"] is True, state  # cached responses carry COOP/COEP
        for rel, data in files.items():
            got = page.evaluate(FETCH_SHA, rel)
            assert got == {"status": 200, "sha": sha(data), "size": len(data)}, rel
        # Range from the cache: 206 with the right slice and Content-Range; unsatisfiable: 416
        shard = files["model/onnx/decoder.onnx_data_1"]
        rng = page.evaluate("""async () => {
          const r = await fetch('model/onnx/decoder.onnx_data_1', {headers: {Range: 'bytes=1000-1999'}});
          const b = new Uint8Array(await r.arrayBuffer());
          const bad = await fetch('model/onnx/decoder.onnx_data_1', {headers: {Range: 'bytes=999999999-'}});
          return {status: r.status, cr: r.headers.get('Content-Range'), bytes: Array.from(b), bad: bad.status};
        }""")
        assert rng["status"] == 206 and rng["cr"] == f"bytes 1000-1999/{len(shard)}" and rng["bad"] == 416
        assert bytes(rng["bytes"]) == shard[1000:2000]


def test_tampered_file_is_refused_and_not_cached(pw, serve, tmp_path: Path) -> None:
    files = model_files(1)
    site = tmp_path / "site"
    write_site(site, files, lie={"model/onnx/decoder.onnx_data": "0" * 64})  # the bytes on the host differ
    server = serve(site)
    with browser(pw, tmp_path / "profile") as ctx:
        page = open_page(ctx, server.url)
        result = page.evaluate("async () => await window.__sw.precache('all')")
        assert [f["path"] for f in result["failed"]] == ["model/onnx/decoder.onnx_data"]
        message = result["failed"][0]["message"]
        assert "model/onnx/decoder.onnx_data" in message and "integrity" in message and "not cached" in message
        assert page.evaluate(CACHED, "model/onnx/decoder.onnx_data") is None
        assert page.evaluate(CACHED, "model/onnx/decoder.onnx_data_1") == sha(files["model/onnx/decoder.onnx_data_1"])
        # a direct fetch of the tampered file fails (no silently wrong bytes) and the event names the file
        direct = page.evaluate("""async () => {
          try { const r = await fetch('model/onnx/decoder.onnx_data'); await r.arrayBuffer(); return 'read'; }
          catch (e) { return 'failed'; }
        }""")
        assert direct == "failed"
        integrity = "window.__events.filter(e => e.kind === LFMVL_CONTRACT.sw.kinds.integrity_error)"
        page.wait_for_function(f"{integrity}.length > 0")
        events = page.evaluate(integrity)
        assert all(e["path"] == "model/onnx/decoder.onnx_data" for e in events)


def test_new_build_refetches_only_changes_and_resumes_by_file(pw, serve, tmp_path: Path) -> None:
    files = model_files(2)
    site = tmp_path / "site"
    write_site(site, files)
    server = serve(site)
    with browser(pw, tmp_path / "profile") as ctx:
        page = open_page(ctx, server.url)
        # an "interrupted" first download: only part of the files made it
        part = page.evaluate("async () => await window.__sw.precache(['app.mjs', 'model/onnx/decoder.onnx_data'])")
        assert sorted(part["fetched"]) == ["app.mjs", "model/onnx/decoder.onnx_data"]
        before = len(server.requested())
        rest = page.evaluate("async () => await window.__sw.precache('all')")
        assert "model/onnx/decoder.onnx_data" in rest["skipped"] and "app.mjs" in rest["skipped"]
        again = server.requested()[before:]
        assert "/model/onnx/decoder.onnx_data" not in again and "/app.mjs" not in again
        assert "/model/onnx/decoder.onnx_data_1" in again

        # a new build: one file changed, one removed, one added
        new = dict(files)
        new["model/onnx/decoder.onnx_data_1"] = os.urandom(300_001)
        del new["model/config.json"]
        new["model/onnx/decoder_q4.onnx"] = os.urandom(2_000)
        shutil.rmtree(site)
        write_site(site, new)
        before = len(server.requested())
        page = open_page(ctx, server.url)  # the navigation refreshes manifest.json
        result = page.evaluate("async () => await window.__sw.precache('all')")
        assert result["failed"] == []
        assert sorted(result["fetched"]) == ["model/onnx/decoder.onnx_data_1", "model/onnx/decoder_q4.onnx"]
        fetched = [p for p in server.requested()[before:] if p not in ("/", "/manifest.json", "/sw.js")]
        assert sorted(fetched) == ["/model/onnx/decoder.onnx_data_1", "/model/onnx/decoder_q4.onnx"]
        assert page.evaluate(CACHED, "model/config.json") is None  # stale entry deleted
        assert page.evaluate(CACHED, "model/onnx/decoder.onnx_data_1") == sha(new["model/onnx/decoder.onnx_data_1"])
        got = page.evaluate(FETCH_SHA, "model/onnx/decoder.onnx_data_1")
        assert got["sha"] == sha(new["model/onnx/decoder.onnx_data_1"])
        # clear cache: everything goes
        page.evaluate("async () => await window.__sw.clearCache()")
        info = page.evaluate("async () => await window.__sw.cacheInfo()")
        assert info["cachedFiles"] == 0


def test_header_shim_isolates_a_headerless_server(pw, serve, tmp_path: Path) -> None:
    site = tmp_path / "site"
    write_site(site, model_files(3))
    server = serve(site, headers=False)  # python -m http.server: no COOP/COEP
    import urllib.request

    with urllib.request.urlopen(server.url) as resp:
        assert resp.headers.get("Cross-Origin-Embedder-Policy") is None
    with browser(pw, tmp_path / "profile") as ctx:
        page = ctx.new_page()
        navigations = []
        page.on("framenavigated", lambda f: navigations.append(f.url) if f == page.main_frame else None)
        page.goto(server.url)
        page.wait_for_function("window.__state && window.__state.coi === true", timeout=30_000)
        state = page.evaluate("window.__state")
        assert state["reloaded"] is True and state["msg"] is None
        assert page.evaluate("typeof SharedArrayBuffer") == "function"
        assert len(navigations) == 2  # the first load, and exactly one reload


# ---------------------------------------------------------------- the real page (lfmvl-site build --synthetic)

REGISTER = ("<script type=module>import {registerServiceWorker} from './sw-register.js';"
            "window.__sw = await registerServiceWorker({precache: 'none'});</script>")


def wire_service_worker(dist: Path) -> bool:
    """Until the page imports sw-register.js itself: add sw.js, sw-register.js and a registering script, and
    re-list every file in manifest.json (as the build does). Returns whether wiring was needed."""
    if "sw-register.js" in (dist / "index.html").read_text() + (dist / "app.js").read_text():
        return False
    shutil.copyfile(REPO / "web/sw.js", dist / "sw.js")
    shutil.copyfile(REPO / "web/sw-register.js", dist / "sw-register.js")
    html = (dist / "index.html").read_text()
    (dist / "index.html").write_text(html.replace("</head>", REGISTER + "</head>", 1))
    manifest = json.loads((dist / "manifest.json").read_text())
    manifest["files"] = [{"path": p.relative_to(dist).as_posix(), "size": p.stat().st_size,
                          "sha256": sha(p.read_bytes())}
                         for p in sorted(dist.rglob("*")) if p.is_file() and p != dist / "manifest.json"]
    (dist / "manifest.json").write_text(json.dumps(manifest))
    return True


@pytest.mark.slow
def test_real_page_captions_offline_after_restart(pw, serve, built_site: Path, camera_y4m: Path,
                                                  tmp_path: Path) -> None:
    """First visit online captions the fake camera; every manifest file is then in the cache; browser
    closed, server stopped, browser offline: the page loads again and captions the same frame with the
    same token ids."""
    dist = tmp_path / "dist"
    shutil.copytree(built_site, dist)
    wire_service_worker(dist)
    server = serve(dist)
    cam = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
           f"--use-file-for-fake-video-capture={camera_y4m}"]
    query = "?device=wasm&autostart=1&tokens=6"
    wait = "() => window.lfmvl && window.lfmvl.state.captions.length > 0"
    with browser(pw, tmp_path / "profile", *cam) as ctx:
        page = ctx.pages[0] if ctx.pages else ctx.new_page()
        page.goto(server.url + query)
        page.wait_for_function("() => navigator.serviceWorker.controller !== null", timeout=30_000)
        page.wait_for_function(wait, timeout=180_000)
        online = page.evaluate("() => window.lfmvl.state.captions[0].token_ids")
        # Whatever the first visit loaded before the worker took control is fetched once more through it.
        missing = page.evaluate("""async () => {
          const m = await (await fetch('manifest.json')).json();
          const {cache_files, sha_header} = globalThis.LFMVL_CONTRACT.sw;
          const c = await caches.open(cache_files);
          const out = [];
          for (const f of m.files) {
            if ((await c.match(new URL(f.path, location.href).href)) === undefined) {
              await (await fetch(f.path)).arrayBuffer();
            }
            const hit = await c.match(new URL(f.path, location.href).href);
            if (!hit || hit.headers.get(sha_header) !== f.sha256) out.push(f.path);
          }
          return out;
        }""")
        assert missing == []
    server.stop()

    with browser(pw, tmp_path / "profile", *cam) as ctx:
        ctx.set_offline(True)
        page = ctx.pages[0] if ctx.pages else ctx.new_page()
        page.goto(server.url + query)
        page.wait_for_function(wait, timeout=180_000)
        offline = page.evaluate("() => window.lfmvl.state.captions[0].token_ids")
        assert page.evaluate("self.crossOriginIsolated") is True
    assert len(online) > 0 and offline == online
