"""Plain greedy decoding in the page (issue 13): the decode steps after the prefill run as one JavaScript loop
(``BrowserBackend.run_greedy``, the runner's ``greedy``) calling back into Python per token, and give native
onnxruntime's per-step greedy tokens.

The page's runtime (``PageRuntime`` in Chromium's Pyodide, wasm, through the bench page) captions the bench frame
with no stream (so not the draft loop); the reference is native onnxruntime's per-step loop (``greedy_steps`` off:
one ``run_chain`` per token) on the same pixels and graphs, with the model's own eos and with an eos forced at the
fifth token. A cancel from the token callback stops the JS loop, and every kept cache is released.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .conftest import launch

pytestmark = pytest.mark.browser

PROMPT = "Describe this image."
W, H, TOKENS = 320, 240, 16

# Runs in the page's Pyodide, after bench_py.load (which drops eos and the stream): restores the model's eos, counts
# run_greedy calls, and captions the bench frame three ways. Returns JSON.
_IN_PAGE = """
import dataclasses
import json
import lfmvl_bench
from lfmvl_site.runtime import browser
from lfmvl_site.runtime.modelconfig import TextModelConfig

RT = lfmvl_bench.RT
cap, b = RT.captioner, RT.backend
cap.text_config = TextModelConfig.from_texts(await b.read_text("config.json"), await b.read_text("generation_config.json"))
RT.stream = None
calls = []
orig = browser.BrowserBackend.run_greedy

async def counting(self, *a, **k):
    calls.append(k["max_steps"])
    return await orig(self, *a, **k)

browser.BrowserBackend.run_greedy = counting
out = {}

async def caption(name, on_token=None, **settings):
    calls.clear()
    res = json.loads(await RT.caption(lfmvl_bench.frame_js(W, H), W, H, PROMPT,
                                      json.dumps({"max_new_tokens": TOKENS, **settings}), on_token))
    out[name] = {"result": res, "calls": list(calls), "live": b.stats["live"], "js_live": int(b.runner.live()),
                 "bound": len(b._greedy)}

try:
    await caption("plain")
    ids = out["plain"]["result"]["token_ids"]
    if len(ids) > 4:
        eos = ids[4]
        cap.text_config = dataclasses.replace(cap.text_config, eos_token_ids=(eos,))
        await caption("eos")
        out["eos"]["id"] = eos
        cap.text_config = TextModelConfig.from_texts(await b.read_text("config.json"),
                                                     await b.read_text("generation_config.json"))
    RT.token_batch_ms = 0.0  # every token reaches the callback at once
    seen = []

    def on_token(token_id, text, n):
        seen.append(int(n))
        if sum(seen) >= 3:
            RT.cancel()

    await caption("cancelled", on_token)
    out["cancelled"]["seen"] = sum(seen)
finally:
    browser.BrowserBackend.run_greedy = orig
json.dumps(out)
"""


def _native(model_dir: Path, precision: dict[str, str], eos: int | None) -> Any:
    from lfmvl_site.runtime.generate import Captioner
    from lfmvl_site.runtime.native import NativeBackend
    from lfmvl_site.runtime.sampling import SamplingSettings

    frame = np.random.default_rng(0).integers(0, 256, size=(H, W, 4), dtype=np.uint8)  # bench_py.make_frame

    async def run() -> Any:
        cap = await Captioner.load(NativeBackend(model_dir, precision=precision))
        cap.greedy_steps = False  # the per-step loop: one decoder run per token
        if eos is not None:
            cap.text_config = dataclasses.replace(cap.text_config, eos_token_ids=(eos,))
        return await cap.caption(frame, PROMPT, settings=SamplingSettings(max_new_tokens=TOKENS))

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # Playwright's sync API owns this thread's loop
        return pool.submit(asyncio.run, run()).result()


def test_page_greedy_steps_in_one_js_call_equal_native_per_step_greedy(playwright_instance: Any, built_site: Path,
                                                                       tmp_path: Path) -> None:
    from lfmvl_site.benchmarks import load_cpu_bench
    from lfmvl_site.serve import serving

    bench = load_cpu_bench()
    dist = tmp_path / "dist"
    shutil.copytree(built_site, dist)
    bench._install_bench_page(dist)
    browser = launch(playwright_instance)
    with serving(dist) as base:
        try:
            page = bench._bench_page(browser, base, dist, threads=1)
            info = page.evaluate("(a) => window.bench.load(a)",
                                 {"modelUrl": base + "model/", "device": "wasm", "features": []})
            code = f"W, H, PROMPT, TOKENS = {W}, {H}, {PROMPT!r}, {TOKENS}\n" + _IN_PAGE
            got = json.loads(page.evaluate("async (code) => await window.bench.pyodide.runPythonAsync(code)", code))
        finally:
            browser.close()
    precision = {c["role"]: c["precision"] for c in info["choices"]}
    plain = got["plain"]
    native = _native(built_site / "model", precision, None)
    assert native.decoder_runs == len(native.token_ids) + (native.stop_reason == "eos")  # per step, no drafts
    res = plain["result"]
    assert res["speculative"] is False and res["token_ids"] == list(native.token_ids) and res["text"] == native.text
    assert res["stop_reason"] == native.stop_reason
    if res["token_ids"]:  # the prefill's token was no eos
        assert plain["calls"] == [TOKENS - 1] and plain["bound"] == 1  # every step after the prefill: one JS call
    assert plain["live"] == plain["js_live"] == 0 and res["kept_live"] == 0

    if "eos" in got:
        forced = got["eos"]
        ref = _native(built_site / "model", precision, forced["id"])
        assert forced["result"]["stop_reason"] == ref.stop_reason == "eos"
        assert forced["result"]["token_ids"] == list(ref.token_ids) == res["token_ids"][: res["token_ids"].index(forced["id"])]
        assert forced["live"] == forced["js_live"] == 0

    cancelled = got["cancelled"]
    assert cancelled["result"] == {"cancelled": True} and cancelled["seen"] == 3
    assert cancelled["live"] == cancelled["js_live"] == 0
