"""The built page in a real headless Chromium (Debian's), driven by Playwright.

The in-page caption (Python runtime in Pyodide → onnxruntime-web) is checked
against native onnxruntime on the exact pixels the page captioned: the page
hands back the RGBA frame it fed to Python, the test writes it to a PNG and runs
``lfmvl-site caption`` (wasm: same variants) or the native runtime with the
variants the page chose (WebGPU).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .conftest import ARTIFACTS, WEBGPU_ARGS, launch
from .placement import assert_compute_on_gpu

pytestmark = pytest.mark.browser

PROMPT = "Describe this image."
TOKENS = 8


def _open(browser: Any, url: str, console: list[str] | None = None) -> Any:
    page = browser.new_page()
    if console is not None:
        page.on("console", lambda m: console.append(m.text))
    page.goto(url)
    return page


def _wait_caption(page: Any, timeout_s: float) -> dict[str, Any]:
    page.wait_for_function("() => window.lfmvl && window.lfmvl.state.captions.length > 0", timeout=timeout_s * 1000)
    return page.evaluate("() => window.lfmvl.state.captions[0]")


def _page_frame(page: Any, tmp_path: Path) -> tuple[np.ndarray, Path]:
    """The RGBA pixels the page captioned, and a lossless PNG of them."""
    from PIL import Image

    frame = page.evaluate(
        "async () => { const f = await window.lfmvl.lastFrame();"
        " return {w: f.width, h: f.height, data: Array.from(f.data)}; }"
    )
    rgba = np.asarray(frame["data"], dtype=np.uint8).reshape(frame["h"], frame["w"], 4)
    path = tmp_path / "frame.png"
    Image.fromarray(rgba, "RGBA").save(path)
    return rgba, path


def _native_cli(png: Path, model_dir: Path, *extra: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "lfmvl_site.cli", "caption", str(png), "--model-dir", str(model_dir),
         "--prompt", PROMPT, "--max-new-tokens", str(TOKENS), "--json", *extra],
        capture_output=True, text=True, check=True, timeout=300,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _native_runtime(rgba: np.ndarray, model_dir: Path, precision: dict[str, str]) -> Any:
    from lfmvl_site.runtime.generate import Captioner
    from lfmvl_site.runtime.native import NativeBackend
    from lfmvl_site.runtime.sampling import SamplingSettings

    async def run() -> Any:
        captioner = await Captioner.load(NativeBackend(model_dir, precision=precision))
        return await captioner.caption(rgba, PROMPT, settings=SamplingSettings(max_new_tokens=TOKENS))

    # Playwright's sync API owns this thread's event loop: run the native captioner on another thread.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


def test_wasm_caption_matches_native(playwright_instance: Any, site_url: str, built_site: Path,
                                     camera_y4m: Path, tmp_path: Path) -> None:
    browser = launch(playwright_instance, fake_camera=camera_y4m)
    try:
        t0 = time.monotonic()
        page = _open(browser, f"{site_url}?device=wasm&autostart=1&tokens={TOKENS}")
        caption = _wait_caption(page, 120)
        state = page.evaluate("() => ({ready: window.lfmvl.state.pageReadyMs, first: window.lfmvl.state.firstCaptionMs,"
                              " info: window.lfmvl.state.info, isolated: self.crossOriginIsolated})")
        rgba, png = _page_frame(page, tmp_path)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "page-wasm.png"), full_page=True)
        print(f"\nwasm: page ready {state['ready']:.0f} ms, first caption {state['first']:.0f} ms "
              f"(wall {time.monotonic() - t0:.1f} s), timings {caption['timings']}")
    finally:
        browser.close()

    assert state["isolated"] is True
    assert state["info"]["device"] == "wasm"
    assert all(c["device"] == "wasm" for c in state["info"]["choices"])
    assert caption["kept_live"] == 0
    assert rgba.shape == (240, 320, 4) and rgba[..., 3].min() == 255
    assert caption["width"] == 320 and caption["prompt"] == PROMPT
    native = _native_cli(png, built_site / "model")
    assert len(caption["token_ids"]) > 0
    assert caption["token_ids"] == native["token_ids"]
    assert caption["text"] == native["text"]


def _webgpu_run(playwright: Any, url: str, site: Path, camera: Path, tmp_path: Path, shot: str) -> dict[str, Any]:
    console: list[str] = []
    browser = launch(playwright, *WEBGPU_ARGS, fake_camera=camera)
    try:
        page = _open(browser, f"{url}?device=webgpu&autostart=1&verbose=1&tokens={TOKENS}", console)
        caption = _wait_caption(page, 240)
        info = page.evaluate("() => window.lfmvl.state.info")
        messages = page.inner_text("#messages")
        rgba, _ = _page_frame(page, tmp_path)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
    finally:
        browser.close()
    # SwiftShader has no shader-f16: the page must pick fp16-free variants on its own, and say so.
    assert info["device"] == "webgpu"
    assert "shader-f16" not in info["features"]
    choices = {c["role"]: c for c in info["choices"]}
    assert all(c["device"] == "webgpu" and c["precision"] != "fp16" for c in choices.values()), choices
    assert choices["embed_tokens"]["precision"] == "fp32"  # fp16 preferred in the manifest, fp32 fallback taken
    assert "shader-f16" in messages
    # The decoder caches stayed on the GPU between steps, and every one was freed after the caption.
    assert set(caption["kept"]) == {"gpu-buffer"} and caption["kept"]["gpu-buffer"] > 0
    assert caption["kept_live"] == 0
    assert_compute_on_gpu(console, site / "model" / "onnx")
    return {"caption": caption, "choices": choices, "rgba": rgba}


def test_webgpu_caption_matches_native_and_stays_on_gpu(playwright_instance: Any, site_url: str, built_site: Path,
                                                         camera_y4m: Path, tmp_path: Path) -> None:
    run = _webgpu_run(playwright_instance, site_url, built_site, camera_y4m, tmp_path, "page-webgpu.png")
    precision = {r: c["precision"] for r, c in run["choices"].items()}
    native = _native_runtime(run["rgba"], built_site / "model", precision)
    assert len(native.token_ids) > 0
    assert run["caption"]["token_ids"] == native.token_ids


def test_webgpu_default_preset_picks_q4_and_stays_on_gpu(playwright_instance: Any, default_site_url: str,
                                                         default_site: Path, camera_y4m: Path, tmp_path: Path) -> None:
    """The shipped preset (fp16 vision + q4 decoder): without shader-f16 the page takes q4 vision on WebGPU."""
    run = _webgpu_run(playwright_instance, default_site_url, default_site, camera_y4m, tmp_path, "page-webgpu-default.png")
    assert run["choices"]["embed_images"]["precision"] == "q4"
    assert run["choices"]["decoder"]["precision"] == "q4"
    assert len(run["caption"]["token_ids"]) == TOKENS or run["caption"]["stop_reason"] == "eos"


def test_no_webgpu_falls_back_to_wasm_and_says_so(playwright_instance: Any, site_url: str) -> None:
    browser = launch(playwright_instance, "--disable-features=WebGPU", "--disable-gpu")
    try:
        page = _open(browser, site_url)
        page.wait_for_function("() => window.lfmvl && window.lfmvl.state.ready", timeout=120_000)
        info = page.evaluate("() => window.lfmvl.state.info")
        messages = page.inner_text("#messages")
        badge = page.inner_text("#backend")
    finally:
        browser.close()
    assert info["device"] == "wasm"
    assert info["why"] in ("no-webgpu", "no-adapter")
    assert "runs on the CPU (wasm)" in messages
    assert badge.startswith("wasm")


def test_camera_denied_shows_message(playwright_instance: Any, site_url: str, camera_y4m: Path) -> None:
    browser = launch(playwright_instance, fake_camera=camera_y4m, grant_camera=False)
    try:
        context = browser.new_context()  # no camera permission granted: getUserMedia is refused
        page = context.new_page()
        page.goto(f"{site_url}?device=wasm")
        page.wait_for_function("() => window.lfmvl && window.lfmvl.state.ready", timeout=120_000)
        page.click("#toggle")
        page.wait_for_function("() => document.querySelector('#messages [data-key=camera]')", timeout=30_000)
        text = page.inner_text("#messages")
        running = page.evaluate("() => window.lfmvl.state.running")
    finally:
        browser.close()
    assert "Camera access was denied" in text
    assert running is False


def test_image_file_caption_equals_cli_on_that_file(playwright_instance: Any, site_url: str, built_site: Path,
                                                    tmp_path: Path) -> None:
    """An image file as input: the page captions the file's exact pixels, like `lfmvl-site caption FILE`."""
    from PIL import Image

    from .conftest import camera_frame

    png = tmp_path / "still.png"
    pixels = camera_frame(150, 200)[::-1].copy()
    Image.fromarray(pixels, "RGB").save(png)
    browser = launch(playwright_instance)
    try:
        page = _open(browser, f"{site_url}?device=wasm&tokens={TOKENS}")
        page.wait_for_function("() => window.lfmvl && window.lfmvl.state.ready", timeout=120_000)
        page.set_input_files("#file", str(png))
        caption = _wait_caption(page, 120)
        rgba, _ = _page_frame(page, tmp_path)
        exported = {}
        for button, name in (("#exportJson", "captions.json"), ("#exportSrt", "captions.srt")):
            with page.expect_download() as dl:
                page.click(button)
            assert dl.value.suggested_filename == name
            exported[name] = Path(dl.value.path()).read_text(encoding="utf-8")
    finally:
        browser.close()
    assert np.array_equal(rgba[..., :3], pixels) and rgba[..., 3].min() == 255
    history = json.loads(exported["captions.json"])
    assert [h["token_ids"] for h in history] == [caption["token_ids"]]
    srt = exported["captions.srt"].split("\n")
    assert srt[0] == "1" and re.fullmatch(r"\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}", srt[1])
    assert srt[2] == re.sub(r"[\r\n]+", " ", caption["text"])
    native = _native_cli(png, built_site / "model")
    assert caption["token_ids"] == native["token_ids"]


def test_prompt_change_cancels_the_running_caption(playwright_instance: Any, site_url: str, camera_y4m: Path) -> None:
    browser = launch(playwright_instance, fake_camera=camera_y4m)
    try:
        page = _open(browser, f"{site_url}?device=wasm&autostart=1&tokens=300")
        # Wait until the first (long) caption is streaming, then change the prompt; later captions are short.
        page.wait_for_function("() => window.lfmvl && window.lfmvl.state.current.length > 0", timeout=120_000)
        page.evaluate(
            """(n) => { const t = document.getElementById('maxTokens'); t.value = String(n);
                        t.dispatchEvent(new Event('change'));
                        [...document.querySelectorAll('.suggestion')]
                          .find((b) => b.textContent === 'What is the person doing?').click(); }""",
            TOKENS,
        )
        page.wait_for_function("() => window.lfmvl.state.cancelled >= 1 || window.lfmvl.state.captions.length >= 1",
                               timeout=120_000)
        page.wait_for_function("() => window.lfmvl.state.captions.length >= 1", timeout=120_000)
        state = page.evaluate("() => ({cancelled: window.lfmvl.state.cancelled, captions: window.lfmvl.state.captions})")
    finally:
        browser.close()
    # The caption under the old prompt was dropped; the first one recorded answers the new prompt.
    assert state["cancelled"] >= 1, state
    assert state["captions"][0]["prompt"] == "What is the person doing?"
    assert len(state["captions"][0]["token_ids"]) <= TOKENS


def test_failed_download_says_what_happened(playwright_instance: Any, built_site: Path, tmp_path: Path) -> None:
    import shutil

    from lfmvl_site.serve import serving

    broken = tmp_path / "dist"
    shutil.copytree(built_site, broken)
    (broken / "model" / "onnx" / "decoder.onnx_data").unlink()
    with serving(broken) as url:
        browser = launch(playwright_instance)
        try:
            page = _open(browser, f"{url}?device=wasm")
            page.wait_for_function("() => document.querySelector('#messages [data-key=download]')", timeout=120_000)
            text = page.inner_text("#messages")
            status = page.inner_text("#status")
        finally:
            browser.close()
    assert "A download failed" in text and "decoder.onnx_data" in text and "404" in text
    assert status == "Loading failed."
