"""The page captions the camera as one stream: an unchanged frame reuses its image features and its greedy caption is
drafted from the previous one and verified in one decoder run, with the tokens of plain greedy decoding.

The reference is native onnxruntime's plain greedy loop (one decoder run per token, no stream) on the exact pixels
the page captioned, with the graphs the page chose (wasm: the site's exact-preset variants)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .conftest import launch

pytestmark = pytest.mark.browser

TOKENS = 12
PROMPT = "Describe this image."


def _plain_native(rgba: np.ndarray, model_dir: Path, precision: dict[str, str]) -> Any:
    from lfmvl_site.runtime.generate import Captioner
    from lfmvl_site.runtime.native import NativeBackend
    from lfmvl_site.runtime.sampling import SamplingSettings

    async def run() -> Any:
        captioner = await Captioner.load(NativeBackend(model_dir, precision=precision))
        return await captioner.caption(rgba, PROMPT, settings=SamplingSettings(max_new_tokens=TOKENS))

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # Playwright's sync API owns this thread's loop
        return pool.submit(asyncio.run, run()).result()


def test_still_camera_captions_are_drafted_and_equal_plain_greedy(playwright_instance: Any, site_url: str,
                                                                  built_site: Path, camera_y4m: Path) -> None:
    browser = launch(playwright_instance, fake_camera=camera_y4m)
    try:
        page = browser.new_page()
        page.goto(f"{site_url}?device=wasm&autostart=1&tokens={TOKENS}")
        page.wait_for_function("() => window.lfmvl && window.lfmvl.state.captions.length >= 4", timeout=240_000)
        page.click("#toggle")  # pause: the captions so far are what the test reads
        captions = page.evaluate("() => window.lfmvl.state.captions.slice(0, 4)")
        info = page.evaluate("() => window.lfmvl.state.info")
        frame = page.evaluate("async () => { const f = await window.lfmvl.lastFrame();"
                              " return {w: f.width, h: f.height, data: Array.from(f.data)}; }")
        figure = page.inner_text("#f-draft")
    finally:
        browser.close()
    rgba = np.asarray(frame["data"], dtype=np.uint8).reshape(frame["h"], frame["w"], 4)
    precision = {c["role"]: c["precision"] for c in info["choices"]}
    plain = _plain_native(rgba, built_site / "model", precision)
    assert plain.decoder_runs == len(plain.token_ids) + (plain.stop_reason == "eos")  # the reference: no drafts
    first, *rest = captions
    assert first["speculative"] is True and first["features_reused"] is False
    assert first["token_ids"] == list(plain.token_ids) and first["text"] == plain.text
    for c in rest:  # the fake camera plays a still frame: same pixels, so the previous caption is the whole draft
        assert c["token_ids"] == list(plain.token_ids)
        assert c["features_reused"] is True
        assert c["decoder_runs"] == 1, c
        assert c["draft_tokens_accepted"] == c["draft_tokens_proposed"] > 0
    assert "1 run" in figure


def test_drafted_streams_equal_plain_greedy_in_pyodide(playwright_instance: Any, built_site: Path,
                                                       tmp_path: Path) -> None:
    """Clips of a repeated frame, a slowly moving one and one with cuts, captioned in Chromium (wasm) through the
    page's PageRuntime, each frame alone and as one drafted stream (benchmarks/gpu/stream_py.py): frame by frame the
    same tokens, with fewer decoder runs. Drafts are rolled back on the cuts; accepted whole on repeats."""
    import shutil

    from lfmvl_site.serve import serving
    from lfmvl_site.site import assets

    repo = Path(__file__).resolve().parents[2]
    dist = tmp_path / "dist"
    shutil.copytree(built_site, dist)
    (dist / "bench").mkdir()
    for f in ("index.html", "loops.mjs", "bench_py.py"):
        shutil.copyfile(repo / "benchmarks" / "page" / f, dist / "bench" / f)
    stream_py = (repo / "benchmarks" / "gpu" / "stream_py.py").read_text()
    manifest = json.loads((dist / "manifest.json").read_text())
    browser = launch(playwright_instance)
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with serving(dist) as base:
        try:
            page = browser.new_page()
            page.goto(base + "bench/index.html")
            page.wait_for_function("() => window.bench && window.bench.root", timeout=60_000)
            page.evaluate("(a) => window.bench.init(a)", {
                "packages": list(assets.PYODIDE_PACKAGES), "wheel": base + manifest["runtime_wheel"], "threads": 1})
            page.evaluate("(a) => window.bench.load(a)", {"modelUrl": base + "model/", "device": "wasm", "features": []})
            page.evaluate("(src) => window.bench.pyodide.FS.writeFile('/home/pyodide/lfmvl_stream.py', src)", stream_py)
            for kind in ("same", "moving", "cuts"):
                for mode in ("plain", "drafted"):
                    results[kind, mode] = json.loads(page.evaluate(
                        "async ([k, m]) => await window.bench.pyodide.pyimport('lfmvl_stream').run(k, 40, 160, 120, 10, m)",
                        [kind, mode]))
        finally:
            browser.close()
    accepted = proposed = 0
    for kind in ("same", "moving", "cuts"):
        plain, drafted = results[kind, "plain"], results[kind, "drafted"]
        assert [r["token_ids"] for r in drafted] == [r["token_ids"] for r in plain], kind
        assert all(r["decoder_runs"] == 10 for r in plain)
        assert sum(r["decoder_runs"] for r in drafted) < sum(r["decoder_runs"] for r in plain), kind
        accepted += sum(r["accepted"] for r in drafted)
        proposed += sum(r["proposed"] for r in drafted)
    assert all(r["decoder_runs"] == 1 for r in results["same", "drafted"][1:])  # the repeat: one verifying run
    assert 0 < accepted < proposed  # some drafts were rejected (rolled back) and some accepted
