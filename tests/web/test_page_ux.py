"""The page as a visitor meets it, in Debian's headless Chromium (Playwright) with a fake camera.

- the loading, ready, captioning, paused and error states at 1280x800 and 390x844 (screenshots saved under
  tests/artifacts/ux/), none wider than the window from 360 to 1920 px; on a phone the video and Start are in
  the first screen; the loading view gives way to the captioning view when ready;
- the complete caption stays until the next one is complete, the streaming one is shown apart, and the live
  region announces complete captions only (every mutation of every aria-live element is recorded);
- pausing stops the camera's track; an image file, then back to the camera; space pauses;
- a backend switch keeps prompt and history; settings survive a reload;
- a video file's SRT cues start at the media time of the frame each caption was made from (the video's
  pictures change every second, and the captioned pixels say which second they came from);
- axe-core (installed by scripts/setup-test.sh from npm) finds no serious or critical violation.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lfmvl_site.serve import serving

from .conftest import ARTIFACTS, REPO, WEBGPU_ARGS, camera_frame, launch
from .test_page_messages import _ebml, _uint

pytestmark = pytest.mark.browser

SHOTS = ARTIFACTS / "ux"
AXE = REPO / ".cache" / "npm" / "node_modules" / "axe-core" / "axe.min.js"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
WIDTHS = (360, 390, 768, 1280, 1920)
READY = "() => window.lfmvl && window.lfmvl.state.ready"
LOAD_MS = 180_000

# Every change inside an aria-live element, and every text the caption and streaming lines took.
RECORD = """
window.__live = []; window.__lines = [];
new MutationObserver((ms) => {
  for (const m of ms) {
    const el = m.target.nodeType === 1 ? m.target : m.target.parentElement;
    if (!el || !el.closest) continue;
    const live = el.closest('[aria-live]');
    if (live) window.__live.push({id: live.id, text: live.textContent});
    const line = el.closest('#caption, #streaming');
    if (line) window.__lines.push({id: line.id, text: line.textContent});
  }
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


def _shot(page: Any, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def _overflow(page: Any) -> dict[str, int]:
    return page.evaluate("() => ({scroll: document.documentElement.scrollWidth, inner: innerWidth})")


def _both_sizes(page: Any, state: str, widths: dict[str, dict[str, int]]) -> None:
    """Screenshots of ``state`` at the desktop and phone sizes, and the page width at every width."""
    for size in (DESKTOP, PHONE):
        page.set_viewport_size(size)
        page.wait_for_timeout(150)
        _shot(page, f"{state}-{size['width']}x{size['height']}")
    for w in WIDTHS:
        page.set_viewport_size({"width": w, "height": 800})
        page.wait_for_timeout(100)
        widths[f"{state}@{w}"] = _overflow(page)
    page.set_viewport_size(DESKTOP)


def _axe(page: Any) -> list[dict[str, Any]]:
    if not AXE.is_file():
        pytest.fail(f"axe-core is missing ({AXE}): run `bash scripts/setup-test.sh`, which installs it from npm")
    page.add_script_tag(content=AXE.read_text(encoding="utf-8"))
    result = page.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
                           ".map((v) => ({id: v.id, impact: v.impact, help: v.help,"
                           " nodes: v.nodes.map((n) => n.target.join(' '))}))")
    return [v for v in result if v["impact"] in ("serious", "critical")]


def _in_first_screen(page: Any, selector: str) -> dict[str, float]:
    return page.evaluate(f"() => {{ const r = document.querySelector('{selector}').getBoundingClientRect();"
                         " return {top: r.top, bottom: r.bottom, height: innerHeight, width: r.width}; }")


def test_views_at_desktop_and_phone_no_overflow_live_region_and_axe(playwright_instance: Any, site_url: str,
                                                                   camera_y4m: Path) -> None:
    browser = launch(playwright_instance, fake_camera=camera_y4m)
    widths: dict[str, dict[str, int]] = {}
    try:
        page = browser.new_page(viewport=DESKTOP)
        page.add_init_script(RECORD)
        page.goto(f"{site_url}?device=wasm&tokens=6")
        page.wait_for_function("() => document.getElementById('overall').max > 1", timeout=60_000)
        loading = page.evaluate("""() => ({ready: window.lfmvl.state.ready, shown: !document.getElementById('load').hidden,
          text: document.getElementById('overallText').textContent})""")
        _both_sizes(page, "loading", widths)
        page.wait_for_function(READY, timeout=LOAD_MS)
        ready = page.evaluate("""() => ({load: document.getElementById('load').hidden, load_state: window.lfmvl.state.load,
          toggle: document.getElementById('toggle').textContent, disabled: document.getElementById('toggle').disabled})""")
        _both_sizes(page, "ready", widths)
        page.set_viewport_size(PHONE)
        phone_start = _in_first_screen(page, "#toggle")
        phone_video = _in_first_screen(page, "#media")
        page.set_viewport_size(DESKTOP)
        ready_axe = _axe(page)

        page.click("#toggle")
        page.wait_for_function("() => window.lfmvl.state.captions.length >= 3", timeout=LOAD_MS)
        # a moment when a caption is streaming (taken in one go, so it cannot complete in between)
        during = page.wait_for_function("""() => {
          const streaming = document.getElementById('streaming').textContent;
          if (!window.lfmvl.state.inFlight || !streaming) return null;
          return {caption: document.getElementById('caption').textContent, streaming,
                  last: window.lfmvl.state.captions.at(-1).text, tps: document.getElementById('f-tps').textContent,
                  toggle: document.getElementById('toggle').textContent};
        }""", timeout=60_000, polling="raf").json_value()
        _both_sizes(page, "captioning", widths)
        captioning_axe = _axe(page)
        page.evaluate("() => { window.__track = window.lfmvl.state.stream.getVideoTracks()[0]; }")
        before_pause = page.evaluate("() => window.__track.readyState")
        page.click("#playPause")  # the control on the video itself
        page.wait_for_function("() => !window.lfmvl.state.running && !window.lfmvl.state.inFlight", timeout=60_000)
        paused = page.evaluate("""() => ({track: window.__track.readyState, stream: window.lfmvl.state.stream,
          src: document.getElementById('video').srcObject, toggle: document.getElementById('toggle').textContent,
          label: document.getElementById('playPause').getAttribute('aria-label'),
          captions: window.lfmvl.state.captions.map((c) => c.text), live: window.__live, lines: window.__lines,
          history: document.querySelectorAll('#history li').length,
          exportDisabled: document.getElementById('exportSrt').disabled,
          offline: document.getElementById('cache').textContent, info: window.lfmvl.state.offline})""")
        _both_sizes(page, "paused", widths)
    finally:
        browser.close()

    # loading: one overall bar with bytes, then the captioning view alone
    assert loading["shown"] and not loading["ready"] and re.search(r"[\d.]+ of [\d.]+ MB", loading["text"]), loading
    assert ready["load"] is True and ready["toggle"] == "Start" and not ready["disabled"], ready
    assert ready["load_state"]["loaded"] == ready["load_state"]["total"] > 10e6, ready["load_state"]
    # responsive: never wider than the window; on a phone the video and Start are in the first screen
    too_wide = {k: v for k, v in widths.items() if v["scroll"] > v["inner"]}
    assert not too_wide, too_wide
    assert phone_start["bottom"] <= phone_start["height"] and phone_video["top"] >= 0, phone_start
    assert phone_video["width"] >= 330, phone_video  # the video is large on the phone too
    # captioning: the complete caption stays while the next one streams apart; figures as tokens arrive
    assert during["caption"] == during["last"] and during["streaming"], during
    assert during["tps"] != "–" and during["toggle"] == "Pause"
    # screen readers hear complete captions only: the live region changed once per caption, with its text
    announced = [e["text"] for e in paused["live"] if e["id"] == "announce"]
    assert announced == paused["captions"], (announced, paused["captions"])
    assert {e["id"] for e in paused["live"]} <= {"announce", "messages"}, {e["id"] for e in paused["live"]}
    print(f"\n{len(paused['captions'])} captions: {len(paused['live'])} live-region changes, "
          f"{sum(e['id'] == 'streaming' for e in paused['lines'])} streaming updates; widths {widths}")
    # the caption line only ever held complete captions (or nothing, when a file was chosen)
    assert [e["text"] for e in paused["lines"] if e["id"] == "caption"] == paused["captions"]
    assert sum(1 for e in paused["lines"] if e["id"] == "streaming" and e["text"]) > len(paused["captions"])
    # pause stops the camera's track and says Resume
    assert before_pause == "live" and paused["track"] == "ended" and paused["stream"] is None and paused["src"] is None
    assert paused["toggle"] == "Resume" and paused["label"] == "Resume captioning", paused
    assert paused["history"] == len(paused["captions"]) and paused["exportDisabled"] is False
    # the offline card counts what this device uses: every file is there after one visit
    info = paused["info"]
    assert info["cachedFiles"] == info["totalFiles"] > 0 and "this device needs" in paused["offline"], paused["offline"]
    assert not ready_axe, ready_axe
    assert not captioning_axe, captioning_axe


def test_error_state_shows_retry_at_both_sizes(playwright_instance: Any, built_site: Path, tmp_path: Path) -> None:
    broken = tmp_path / "dist"
    shutil.copytree(built_site, broken)
    (broken / "model" / "onnx" / "decoder.onnx_data").unlink()
    widths: dict[str, dict[str, int]] = {}
    with serving(broken) as url:
        browser = launch(playwright_instance)
        try:
            page = browser.new_page(viewport=DESKTOP)
            page.goto(f"{url}?device=wasm")
            page.wait_for_function("() => document.querySelector('#messages [data-key=download]')", timeout=LOAD_MS)
            state = page.evaluate("""() => ({retry: !document.getElementById('retry').hidden,
              load: !document.getElementById('load').hidden, status: document.getElementById('status').textContent,
              start: document.getElementById('toggle').disabled, favicon: document.querySelector('link[rel=icon]').href})""")
            _both_sizes(page, "error", widths)
            axe = _axe(page)
        finally:
            browser.close()
    assert state["retry"] and state["load"] and state["status"] == "Loading failed." and state["start"], state
    assert state["favicon"].startswith("data:image/svg+xml")  # no favicon request, so no 404
    assert not {k: v for k, v in widths.items() if v["scroll"] > v["inner"]}, widths
    assert not axe, axe


def test_file_camera_round_trip_pause_space_backend_history_and_settings_reload(
        playwright_instance: Any, site_url: str, camera_y4m: Path, tmp_path: Path) -> None:
    from PIL import Image

    png = tmp_path / "still-life.png"
    Image.fromarray(camera_frame(150, 200)[::-1].copy(), "RGB").save(png)
    browser = launch(playwright_instance, *WEBGPU_ARGS, fake_camera=camera_y4m)
    try:
        page = browser.new_page(viewport=PHONE)
        page.goto(f"{site_url}?device=wasm&tokens=4")
        page.wait_for_function(READY, timeout=LOAD_MS)
        page.click("#toggle")
        page.wait_for_function("() => window.lfmvl.state.captions.some((c) => c.source === 'camera')", timeout=LOAD_MS)
        page.evaluate("() => { window.__first = window.lfmvl.state.stream.getVideoTracks()[0]; }")

        page.set_input_files("#file", str(png))
        page.wait_for_function("() => window.lfmvl.state.captions.some((c) => c.source === 'image')", timeout=LOAD_MS)
        on_file = page.evaluate("""() => ({track: window.__first.readyState, back: !document.getElementById('useCamera').hidden,
          still: !document.getElementById('still').hidden, video: !document.getElementById('video').hidden,
          name: window.lfmvl.state.captions.find((c) => c.source === 'image').source_name,
          line: document.getElementById('sourceLine').textContent,
          history: document.querySelector('#history li').textContent})""")
        _shot(page, "file-390x844")

        n = page.evaluate("() => window.lfmvl.state.captions.length")
        page.click("#useCamera")
        page.wait_for_function(f"() => window.lfmvl.state.captions.length > {n}"
                               " && window.lfmvl.state.captions.at(-1).source === 'camera'", timeout=LOAD_MS)
        back = page.evaluate("""() => ({live: window.lfmvl.state.stream.getVideoTracks()[0].readyState,
          back: !document.getElementById('useCamera').hidden, still: !document.getElementById('still').hidden,
          video: !document.getElementById('video').hidden, source: window.lfmvl.state.source,
          src: document.getElementById('video').srcObject !== null, file: document.getElementById('file').value})""")
        _shot(page, "back-to-camera-390x844")

        page.evaluate("() => { document.activeElement.blur(); window.__second = window.lfmvl.state.stream.getVideoTracks()[0]; }")
        page.keyboard.press("Space")
        page.wait_for_function("() => !window.lfmvl.state.running && !window.lfmvl.state.inFlight", timeout=60_000)
        spaced = page.evaluate("() => ({track: window.__second.readyState, toggle: document.getElementById('toggle').textContent})")

        # a backend switch without reload keeps prompt and history
        page.fill("#prompt", "What is the person doing?")
        page.dispatch_event("#prompt", "input")
        page.wait_for_timeout(600)
        kept = page.evaluate("() => ({n: window.lfmvl.state.captions.length, li: document.querySelectorAll('#history li').length})")
        page.evaluate("() => { window.__sameDocument = true; }")
        page.select_option("#device", "webgpu")
        page.wait_for_function("() => window.lfmvl.state.info.device === 'webgpu' && window.lfmvl.state.ready",
                               timeout=LOAD_MS)
        switched = page.evaluate("""() => ({same: window.__sameDocument === true, n: window.lfmvl.state.captions.length,
          li: document.querySelectorAll('#history li').length, prompt: document.getElementById('prompt').value})""")

        # settings survive a reload (the address no longer names them)
        page.select_option("#interval", "2000")
        page.select_option("#size", "256")
        page.fill("#maxTokens", "5")
        page.dispatch_event("#maxTokens", "change")
        page.goto(site_url)
        page.wait_for_function("() => window.lfmvl && document.getElementById('size').options.length > 0")
        reloaded = page.evaluate("""() => Object.fromEntries(['prompt', 'interval', 'size', 'maxTokens', 'device']
          .map((id) => [id, document.getElementById(id).value]))""")
    finally:
        browser.close()

    assert on_file["track"] == "ended", on_file  # choosing a file lets the camera go
    assert on_file["back"] and on_file["still"] and not on_file["video"], on_file
    assert on_file["name"] == "still-life.png" and "still-life.png" in on_file["line"] and "still-life.png" in on_file["history"]
    assert back == {"live": "live", "back": False, "still": False, "video": True, "source": "camera", "src": True,
                    "file": ""}, back
    assert spaced == {"track": "ended", "toggle": "Resume"}, spaced
    assert switched["same"] and switched["n"] == kept["n"] == switched["li"] == kept["li"] > 0, (kept, switched)
    assert switched["prompt"] == "What is the person doing?"
    assert reloaded == {"prompt": "What is the person doing?", "interval": "2000", "size": "256", "maxTokens": "5",
                        "device": "webgpu"}, reloaded


# ---------------------------------------------------------------- a video whose picture changes every second

SECONDS = 6
FPS = 5
LEVELS = [30, 70, 110, 150, 190, 230]  # the grey level of second k


def _write_seconds_webm(path: Path) -> Path:
    """A WebM (VP8 key frames from libwebp) of SECONDS seconds; second k is a flat grey of LEVELS[k]."""
    from PIL import Image

    frames = []
    for k in range(SECONDS):
        buf = io.BytesIO()
        Image.fromarray(np.full((96, 128, 3), LEVELS[k], np.uint8), "RGB").save(buf, "WEBP", quality=95)
        riff = buf.getvalue()
        assert riff[12:16] == b"VP8 "
        frames.append(riff[20: 20 + struct.unpack("<I", riff[16:20])[0]])
    header = _ebml(0x1A45DFA3, _uint(0x4286, 1) + _uint(0x42F7, 1) + _uint(0x42F2, 4) + _uint(0x42F3, 8)
                   + _ebml(0x4282, b"webm") + _uint(0x4287, 2) + _uint(0x4285, 2))
    info = _ebml(0x1549A966, _uint(0x2AD7B1, 1_000_000) + _ebml(0x4489, struct.pack(">d", SECONDS * 1000.0))
                 + _ebml(0x4D80, b"lfmvl-test") + _ebml(0x5741, b"lfmvl-test"))
    track = _ebml(0xAE, _uint(0xD7, 1) + _uint(0x73C5, 1) + _uint(0x83, 1) + _ebml(0x86, b"V_VP8")
                  + _uint(0x23E383, 1_000_000_000 // FPS) + _ebml(0xE0, _uint(0xB0, 128) + _uint(0xBA, 96)))
    clusters = b""
    for k in range(SECONDS):  # one cluster per second (timecodes in a cluster are 16-bit ms offsets)
        blocks = b"".join(_ebml(0xA3, b"\x81" + struct.pack(">h", i * 1000 // FPS) + b"\x80" + frames[k])
                          for i in range(FPS))
        clusters += _ebml(0x1F43B675, _uint(0xE7, k * 1000) + blocks)
    path.write_bytes(header + _ebml(0x18538067, info + _ebml(0x1654AE6B, track) + clusters))
    return path


def _srt_seconds(stamp: str) -> float:
    h, m, rest = stamp.split(":")
    s, ms = rest.split(",")
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def test_srt_from_a_video_file_starts_at_media_time(playwright_instance: Any, site_url: str, tmp_path: Path) -> None:
    webm = _write_seconds_webm(tmp_path / "seconds.webm")
    browser = launch(playwright_instance)
    try:
        page = browser.new_page(viewport=DESKTOP, accept_downloads=True)
        page.goto(f"{site_url}?device=wasm&tokens=2&interval=1000")
        page.wait_for_function(READY, timeout=LOAD_MS)
        page.set_input_files("#file", str(webm))
        page.wait_for_function("() => window.lfmvl.state.captions.length >= 4", timeout=LOAD_MS)
        page.click("#toggle")
        page.wait_for_function("() => !window.lfmvl.state.running && !window.lfmvl.state.inFlight", timeout=60_000)
        frame = page.evaluate("""async () => { const f = await window.lfmvl.lastFrame();
          let sum = 0; for (let i = 0; i < f.data.length; i += 4) sum += f.data[i + 1];
          return {id: f.id, mean: sum / (f.data.length / 4)}; }""")
        captions = page.evaluate("() => window.lfmvl.state.captions")
        paused_video = page.evaluate("() => document.getElementById('video').paused")
        _shot(page, "video-file-1280x800")
        with page.expect_download() as dl:
            page.click("#exportSrt")
        srt = Path(dl.value.path()).read_text(encoding="utf-8")
        with page.expect_download() as dl:
            page.click("#exportJson")
        exported = json.loads(Path(dl.value.path()).read_text(encoding="utf-8"))
    finally:
        browser.close()

    assert paused_video is True  # pausing captioning pauses the video file too
    assert all(c["source"] == "video" and c["source_name"] == "seconds.webm" for c in captions)
    assert [e["media_time"] for e in exported] == [c["media_time"] for c in captions]
    # the last captioned frame came from the second its media time names
    last = next(c for c in captions if c["id"] == frame["id"])
    second = min(range(SECONDS), key=lambda k: abs(LEVELS[k] - frame["mean"]))
    t = last["media_time"]
    assert abs(LEVELS[second] - frame["mean"]) < 12, frame
    assert second in {int(t), int(max(t - 0.25, 0)), int(min(t + 0.25, SECONDS - 0.01))}, (t, second, frame)
    # each SRT cue starts at its caption's media time, not at the time since the page opened
    cues = [block.split("\n") for block in srt.strip().split("\n\n")]
    assert len(cues) == len(captions)
    for cue, c in zip(cues, captions, strict=True):
        start, end = (_srt_seconds(x) for x in cue[1].split(" --> "))
        assert abs(start - c["media_time"]) < 0.0015, (cue, c["media_time"])
        assert end > start
    assert any(abs(c["media_time"] - c["time_s"]) > 5 for c in captions)  # the two clocks differ here
