"""The real built page in Debian's Chromium: inputs other than a camera, and the plain-words messages.

- no camera at all (nothing connected, permission granted): the page says so and suggests a file; a video
  file (WebM/VP8 muxed here from a WebP keyframe, no encoder needed) is then captioned, and its tokens equal
  native onnxruntime on the exact pixels the page took from the video;
- a host without COOP/COEP and no service worker: the page says it is not cross-origin isolated and what
  that means, and still captions on one thread (same tokens as native);
- storage full (the origin's real quota shrunk through the DevTools protocol): the free-space check and the
  service worker's failed Cache Storage write are both reported, and the page still works online;
- an interrupted shard download (the server cuts the body once): the page says a download failed; on reload
  the files verified the first time are not requested again, and the page becomes ready;
- settings out of range (from the address and typed): the field shows the problem and the valid range, nothing
  is clamped, and a caption uses the value once it is valid;
- switching the backend (wasm -> WebGPU on SwiftShader) without a reload: the caption after the switch equals
  native onnxruntime with the variants the page then chose.

References: native onnxruntime (the project's CLI/NativeBackend), the source pictures, and the test
servers' own request logs.
"""

from __future__ import annotations

import io
import socket
import struct
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lfmvl_site.static_server import ISOLATION_HEADERS, Handler

from .conftest import EXACT_PRESET, WEBGPU_ARGS, build_site_cli, camera_frame, launch
from .test_page import TOKENS, _native_cli, _native_runtime, _page_frame

pytestmark = pytest.mark.browser

READY = "() => window.lfmvl && window.lfmvl.state.ready"
CAPTIONED = "() => window.lfmvl && window.lfmvl.state.captions.length > 0"
LOAD_S = 180  # page load on a busy 2-core machine


# ---------------------------------------------------------------- test servers


class SiteServer:
    """A threaded server for a built site, using the project's handler, with a request log.

    ``isolation=False`` drops COOP/COEP/CORP (a host without header control); paths in ``cut_once`` get
    their first response cut off halfway through the body (an interrupted download).
    """

    def __init__(self, root: Path, *, isolation: bool = True, cut_once: set[str] | None = None) -> None:
        self.requests: list[str] = []
        self.cut: list[str] = []
        requests, cut, pending = self.requests, self.cut, set(cut_once or ())
        lock = threading.Lock()

        class TestHandler(Handler):
            def send_header(self, keyword: str, value: str) -> None:
                if not isolation and keyword in ISOLATION_HEADERS and keyword.startswith("Cross-Origin"):
                    return
                super().send_header(keyword, value)

            def log_message(self, fmt: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = urllib.parse.urlsplit(self.path).path
                with lock:
                    if self.command == "GET":
                        requests.append(path)
                    cut_now = self.command == "GET" and path in pending
                    pending.discard(path)
                if not cut_now:
                    return super().do_GET()
                data = (Path(self.root) / path.lstrip("/")).read_bytes()
                self.send_response(200)
                self._headers(path, "application/octet-stream", len(data))
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                cut.append(path)
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

        handler = type("TestHandler", (TestHandler,), {"root": str(Path(root).resolve()), "immutable": False})
        from http.server import ThreadingHTTPServer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.url = self.origin + "/"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def site_server() -> Iterator[Any]:
    servers: list[SiteServer] = []

    def start(root: Path, **kw: Any) -> SiteServer:
        servers.append(SiteServer(root, **kw))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


# ---------------------------------------------------------------- a video file without an encoder


def _ebml(eid: int, payload: bytes) -> bytes:
    """One EBML element: its id, an 8-byte size, the payload."""
    return eid.to_bytes((eid.bit_length() + 7) // 8, "big") + ((1 << 56) | len(payload)).to_bytes(8, "big") + payload


def _uint(eid: int, value: int) -> bytes:
    return _ebml(eid, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def write_webm(path: Path, rgb: np.ndarray, frames: int = 10, fps: int = 10) -> Path:
    """A WebM (VP8) video of ``frames`` copies of ``rgb``.

    Lossy WebP is a VP8 key frame: libwebp (through Pillow) encodes the picture, and the frame is muxed
    into a minimal Matroska/WebM container (EBML header, Info, one video track, one cluster).
    """
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, "WEBP", quality=95)
    riff = buf.getvalue()
    assert riff[12:16] == b"VP8 ", "Pillow wrote an extended WebP; expected a plain lossy VP8 frame"
    vp8 = riff[20: 20 + struct.unpack("<I", riff[16:20])[0]]
    height, width = rgb.shape[:2]
    header = _ebml(0x1A45DFA3, _uint(0x4286, 1) + _uint(0x42F7, 1) + _uint(0x42F2, 4) + _uint(0x42F3, 8)
                   + _ebml(0x4282, b"webm") + _uint(0x4287, 2) + _uint(0x4285, 2))
    info = _ebml(0x1549A966, _uint(0x2AD7B1, 1_000_000) + _ebml(0x4489, struct.pack(">d", frames * 1000 / fps))
                 + _ebml(0x4D80, b"lfmvl-test") + _ebml(0x5741, b"lfmvl-test"))
    video = _ebml(0xE0, _uint(0xB0, width) + _uint(0xBA, height))
    track = _ebml(0xAE, _uint(0xD7, 1) + _uint(0x73C5, 1) + _uint(0x83, 1) + _ebml(0x86, b"V_VP8")
                  + _uint(0x23E383, 1_000_000_000 // fps) + video)
    # SimpleBlock: track 1 (vint 0x81), timecode relative to the cluster (ms), flags 0x80 = key frame.
    blocks = b"".join(_ebml(0xA3, b"\x81" + struct.pack(">h", i * 1000 // fps) + b"\x80" + vp8) for i in range(frames))
    segment = _ebml(0x18538067, info + _ebml(0x1654AE6B, track) + _ebml(0x1F43B675, _uint(0xE7, 0) + blocks))
    path.write_bytes(header + segment)
    return path


# ---------------------------------------------------------------- tests


def test_no_camera_says_so_then_a_video_file_is_captioned(playwright_instance: Any, site_url: str, built_site: Path,
                                                          tmp_path: Path) -> None:
    """No camera connected (no fake device), camera permission granted: Start explains there is none and
    points to the file input; the user picks a video file and it is captioned from its frames."""
    picture = camera_frame(240, 320)[:, ::-1].copy()  # differs from the fake-camera picture
    webm = write_webm(tmp_path / "clip.webm", picture)
    browser = launch(playwright_instance)  # no --use-fake-device-for-media-stream: no camera at all
    try:
        context = browser.new_context(permissions=["camera"])
        page = context.new_page()
        page.goto(f"{site_url}?device=wasm&tokens={TOKENS}")
        page.wait_for_function(READY, timeout=LOAD_S * 1000)
        page.click("#toggle")
        page.wait_for_function("() => document.querySelector('#messages [data-key=camera]')", timeout=30_000)
        camera_msg = page.inner_text("#messages [data-key=camera]")
        running = page.evaluate("() => window.lfmvl.state.running")

        page.set_input_files("#file", str(webm))
        page.wait_for_function(CAPTIONED, timeout=120_000)
        page.click("#toggle")  # pause, so the last captioned frame stays the one we compare
        page.wait_for_function("() => !window.lfmvl.state.running && !window.lfmvl.state.inFlight", timeout=120_000)
        rgba, png = _page_frame(page, tmp_path)
        state = page.evaluate("""async () => {
          const f = await window.lfmvl.lastFrame();
          const v = document.getElementById('video');
          return {source: window.lfmvl.state.source, id: f.id, captions: window.lfmvl.state.captions,
                  video: {w: v.videoWidth, h: v.videoHeight, src: v.currentSrc, hidden: v.hidden}};
        }""")
    finally:
        browser.close()

    assert running is False
    assert "No usable camera was found" in camera_msg and "video file" in camera_msg, camera_msg
    assert state["source"] == "video" and state["video"]["src"].startswith("blob:") and not state["video"]["hidden"]
    assert (state["video"]["w"], state["video"]["h"]) == (320, 240)
    # The frame the page captioned is the video's picture (VP8 is lossy: close, not equal) ...
    assert rgba.shape == (240, 320, 4)
    diff = np.abs(rgba[..., :3].astype(np.int16) - picture).mean()
    print(f"\nvideo frame vs source picture: mean abs diff {diff:.2f}")
    assert diff < 6, f"captioned frame differs from the video's picture by {diff:.1f} on average"
    # ... and its caption equals native onnxruntime on those exact pixels.
    caption = next(c for c in state["captions"] if c["id"] == state["id"])
    native = _native_cli(png, built_site / "model")
    assert len(caption["token_ids"]) > 0 and caption["token_ids"] == native["token_ids"]


def test_not_isolated_says_what_it_means_and_still_captions(playwright_instance: Any, built_site: Path,
                                                            site_server: Any, camera_y4m: Path,
                                                            tmp_path: Path) -> None:
    """A host that sends no COOP/COEP, and a browser whose service worker cannot step in: the page says it is
    not cross-origin isolated and what that costs, runs ORT on one thread, and still captions correctly."""
    import urllib.request

    server = site_server(built_site, isolation=False)
    with urllib.request.urlopen(server.url) as resp:
        assert resp.headers.get("Cross-Origin-Embedder-Policy") is None
        assert resp.headers.get("Cross-Origin-Opener-Policy") is None
    browser = launch(playwright_instance, fake_camera=camera_y4m)
    try:
        context = browser.new_context(service_workers="block")
        page = context.new_page()
        page.goto(f"{server.url}?device=wasm&autostart=1&tokens={TOKENS}")
        page.wait_for_function(CAPTIONED, timeout=LOAD_S * 1000)
        state = page.evaluate("""() => ({isolated: self.crossOriginIsolated, sab: typeof SharedArrayBuffer,
          info: window.lfmvl.state.info, caption: window.lfmvl.state.captions[0],
          controller: navigator.serviceWorker ? navigator.serviceWorker.controller : null})""")
        message = page.inner_text("#messages [data-key=isolation]")
        badge = page.inner_text("#isolation")
        rgba, _ = _page_frame(page, tmp_path)
    finally:
        browser.close()

    print(f"\nnot isolated: {message}")
    assert state["isolated"] is False and state["sab"] == "undefined" and state["controller"] is None
    assert badge == "not isolated"
    assert "COOP/COEP" in message and "single thread" in message and "still works" in message, message
    assert state["info"]["threads"] == 1 and state["info"]["device"] == "wasm"
    precision = {c["role"]: c["precision"] for c in state["info"]["choices"]}
    native = _native_runtime(rgba, built_site / "model", precision)
    assert len(native.token_ids) > 0 and state["caption"]["token_ids"] == native.token_ids


def test_storage_full_is_reported_and_the_page_still_works(playwright_instance: Any, built_site: Path,
                                                          site_server: Any, camera_y4m: Path) -> None:
    """The origin's quota is really shrunk (DevTools protocol Storage.overrideQuotaForOrigin) below the site's
    size, so the service worker's Cache Storage writes fail with QuotaExceededError: the page says storage is
    full, and captioning still works online. Chromium's navigator.storage.estimate() does not see that
    override, so an init script makes it report the same quota: the free-space check then warns."""
    server = site_server(built_site)
    quota = 2_000_000
    browser = launch(playwright_instance, fake_camera=camera_y4m)
    try:
        context = browser.new_context()
        context.add_init_script(f"""(() => {{
          const real = StorageManager.prototype.estimate;
          StorageManager.prototype.estimate = async function () {{
            const e = await real.call(this);
            return {{...e, quota: {quota}}};
          }};
        }})();""")
        page = context.new_page()
        cdp = context.new_cdp_session(page)
        cdp.send("Storage.overrideQuotaForOrigin", {"origin": server.origin, "quotaSize": quota})
        page.goto(f"{server.url}?device=wasm&autostart=1&tokens=4")
        page.wait_for_function("() => document.querySelector('#messages [data-key=space]')", timeout=LOAD_S * 1000)
        page.wait_for_function("() => document.querySelector('#messages [data-key=offline-storage]')", timeout=LOAD_S * 1000)
        page.wait_for_function(CAPTIONED, timeout=LOAD_S * 1000)
        space = page.inner_text("#messages [data-key=space]")
        storage = page.inner_text("#messages [data-key=offline-storage]")
    finally:
        browser.close()

    assert "needs" in space and "GB more storage" in space and "Free disk space" in space, space
    assert "storage is full" in storage and "QuotaExceededError" in storage and "Free some space" in storage, storage


def test_interrupted_download_resumes_by_shard(playwright_instance: Any, site_server: Any,
                                               tmp_path_factory: pytest.TempPathFactory) -> None:
    """A site whose decoder weights are split into 1 MiB shards; on the first visit the server cuts the last
    shard's body halfway. The page says a download failed. On reload (the network healthy again) only that
    shard is requested from the server: every model file verified the first time comes from the cache."""
    site = build_site_cli(tmp_path_factory.mktemp("site-shards") / "dist", *EXACT_PRESET, "--max-shard-mb", "1")
    shards = sorted(p.name for p in (site / "model" / "onnx").glob("decoder.onnx_data*"))
    assert len(shards) >= 2, shards
    cut = f"/model/onnx/{shards[-1]}"
    server = site_server(site, cut_once={cut})
    browser = launch(playwright_instance)
    try:
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"{server.url}?device=wasm")
        page.wait_for_function("() => document.querySelector('#messages [data-key=download]')", timeout=LOAD_S * 1000)
        message = page.inner_text("#messages [data-key=download]")
        status = page.inner_text("#status")
        first = list(server.requests)

        page.reload()
        page.wait_for_function(READY, timeout=LOAD_S * 1000)
        second = server.requests[len(first):]
        shown = page.inner_text("#messages")
    finally:
        browser.close()

    assert server.cut == [cut]
    assert "A download failed" in message and shards[-1] in message, message
    assert "Traceback" not in message  # plain words, not the Python stack the error travelled through
    assert status == "Loading failed."
    # The first visit asked for the decoder graph and each of its shards once (in parallel: in any order).
    model = [p for p in first if p.startswith("/model/onnx/")]
    decoder = ["/model/onnx/decoder.onnx", *(f"/model/onnx/{s}" for s in shards)]
    assert sorted(p for p in model if p in decoder) == sorted(decoder), model
    # Resumed by shard: of the model files, only the interrupted one reaches the server again.
    assert [p for p in second if p.startswith("/model/onnx/")] == [cut], second
    assert "A download failed" not in shown


def _problem(page: Any, field: str) -> dict[str, Any]:
    return page.evaluate("""(id) => { const f = document.getElementById(id);
      const p = document.getElementById(id + '-problem');
      return {value: f.value, invalid: f.getAttribute('aria-invalid'), valid: f.checkValidity(),
              shown: !!p && !p.hidden, text: p ? p.textContent : ''}; }""", field)


def test_settings_out_of_range_are_shown_at_their_field(playwright_instance: Any, site_url: str,
                                                        tmp_path: Path) -> None:
    """?tokens=9999 and a typed 0: the Max tokens field keeps what was given and says what is wrong and what the
    range is (nothing clamped); a prompt past its limit likewise. Once the field holds 3, a caption has at
    most 3 tokens."""
    from PIL import Image

    png = tmp_path / "still.png"
    Image.fromarray(camera_frame(120, 160), "RGB").save(png)
    browser = launch(playwright_instance)
    try:
        page = browser.new_page()
        page.goto(f"{site_url}?device=wasm&tokens=9999&size=999")
        page.wait_for_function(READY, timeout=LOAD_S * 1000)
        from_url = _problem(page, "maxTokens")
        size = _problem(page, "size")
        page.fill("#maxTokens", "0")
        page.dispatch_event("#maxTokens", "change")
        zero = _problem(page, "maxTokens")
        page.fill("#prompt", "x" * 2001)
        page.wait_for_timeout(600)  # the prompt is sent 400 ms after the last keystroke
        long_prompt = _problem(page, "prompt")
        page.fill("#prompt", "What is the person doing?")
        page.fill("#maxTokens", "3")
        page.dispatch_event("#maxTokens", "change")
        page.wait_for_timeout(600)
        fixed = _problem(page, "maxTokens"), _problem(page, "prompt")
        page.set_input_files("#file", str(png))
        page.wait_for_function(CAPTIONED, timeout=120_000)
        caption = page.evaluate("() => window.lfmvl.state.captions[0]")
    finally:
        browser.close()

    assert from_url["value"] == "9999" and from_url["shown"] and from_url["invalid"] == "true" and not from_url["valid"]
    assert "9999 is out of range" in from_url["text"] and "1 to 512" in from_url["text"], from_url
    assert size["shown"] and '"999" is not one of' in size["text"] and size["value"] == "512", size
    assert zero["value"] == "0" and zero["shown"] and "0 is out of range" in zero["text"], zero
    assert long_prompt["shown"] and "2001 characters is too long" in long_prompt["text"], long_prompt
    assert all(not f["shown"] and f["invalid"] == "false" and f["valid"] for f in fixed), fixed
    assert caption["prompt"] == "What is the person doing?"
    assert 0 < len(caption["token_ids"]) <= 3 and (len(caption["token_ids"]) == 3 or caption["stop_reason"] == "eos")


def test_backend_switch_without_reload_captions_like_native(playwright_instance: Any, site_url: str,
                                                            built_site: Path, camera_y4m: Path,
                                                            tmp_path: Path) -> None:
    """Loaded on wasm, switched to WebGPU (SwiftShader) from the Backend control: the page is not reloaded, the
    worker re-creates its sessions, and the next caption equals native onnxruntime with the new variants."""
    browser = launch(playwright_instance, *WEBGPU_ARGS, fake_camera=camera_y4m)
    try:
        page = browser.new_page()
        page.goto(f"{site_url}?device=wasm&tokens={TOKENS}")
        page.wait_for_function(READY, timeout=LOAD_S * 1000)
        page.evaluate("() => { window.__sameDocument = true; }")
        before = page.evaluate("() => window.lfmvl.state.info")
        page.select_option("#device", "webgpu")
        page.wait_for_function("() => window.lfmvl.state.info.device === 'webgpu' && window.lfmvl.state.ready",
                               timeout=LOAD_S * 1000)
        after = page.evaluate("() => window.lfmvl.state.info")
        page.click("#toggle")
        page.wait_for_function(CAPTIONED, timeout=LOAD_S * 1000)
        page.click("#toggle")
        page.wait_for_function("() => !window.lfmvl.state.running && !window.lfmvl.state.inFlight", timeout=120_000)
        state = page.evaluate("""async () => ({same: window.__sameDocument === true, search: location.search,
          captions: window.lfmvl.state.captions, status: document.getElementById('status').textContent,
          badge: document.getElementById('backend').textContent})""")
        rgba, _ = _page_frame(page, tmp_path)
        last = page.evaluate("async () => (await window.lfmvl.lastFrame()).id")
    finally:
        browser.close()

    assert before["device"] == "wasm" and after["device"] == "webgpu"
    assert state["same"] is True and "device=webgpu" in state["search"]  # no reload; a reload keeps the choice
    assert state["status"].startswith("Switched to WebGPU") and state["badge"].startswith("WebGPU"), state
    assert all(c["device"] == "webgpu" for c in after["choices"])
    # The still camera's frames all have the last frame's pixels. The first caption after the switch is decoded
    # without drafts (a new stream); later ones verify drafts in multi-row runs, which on SwiftShader gave other tokens
    # than one-row steps (from token 4; drafts are checked against plain greedy on wasm in test_page_drafts.py, and on
    # an H200 in BENCHMARKS.md).
    assert last >= state["captions"][0]["id"]
    caption = state["captions"][0]
    assert caption["features_reused"] is False and caption["draft_tokens_proposed"] == 0
    precision = {c["role"]: c["precision"] for c in after["choices"]}
    native = _native_runtime(rgba, built_site / "model", precision)
    assert len(native.token_ids) > 0 and caption["token_ids"] == native.token_ids
