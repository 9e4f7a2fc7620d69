"""The page captions the camera as one stream: an unchanged frame reuses its image features and its greedy caption is
drafted from the previous one and verified in one decoder run, with the tokens of plain greedy decoding.

The reference is native onnxruntime's plain greedy loop (one decoder run per token, no stream) on the exact pixels
the page captioned, with the graphs the page chose (wasm: the site's exact-preset variants)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .conftest import launch
from .test_page import TOKENS, _native_runtime, _page_frame

pytestmark = pytest.mark.browser


def test_still_camera_captions_are_drafted_and_equal_plain_greedy(playwright_instance: Any, site_url: str,
                                                                  built_site: Path, camera_y4m: Path,
                                                                  tmp_path: Path) -> None:
    browser = launch(playwright_instance, fake_camera=camera_y4m)
    try:
        page = browser.new_page()
        page.goto(f"{site_url}?device=wasm&autostart=1&tokens={TOKENS}")
        page.wait_for_function("() => window.lfmvl && window.lfmvl.state.captions.length >= 4", timeout=240_000)
        page.click("#toggle")  # pause: the captions so far are what the test reads
        captions = page.evaluate("() => window.lfmvl.state.captions.slice(0, 4)")
        info = page.evaluate("() => window.lfmvl.state.info")
        rgba, _ = _page_frame(page, tmp_path)
        figure = page.inner_text("#f-draft")
    finally:
        browser.close()
    precision = {c["role"]: c["precision"] for c in info["choices"]}
    plain = _native_runtime(rgba, built_site / "model", precision)
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

    from lfmvl_site.benchmarks import load_cpu_bench
    from lfmvl_site.serve import serving

    bench = load_cpu_bench()  # its bench page, installed into a copy of the site as `lfmvl-site bench` does
    dist = tmp_path / "dist"
    shutil.copytree(built_site, dist)
    bench._install_bench_page(dist)
    stream_py = (bench.repo_root() / "benchmarks" / "gpu" / "stream_py.py").read_text()
    browser = launch(playwright_instance)
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with serving(dist) as base:
        try:
            page = bench._bench_page(browser, base, dist, threads=1)
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
