"""A site offering two models (both published layouts) in three presets, in a real headless Chromium (wasm).

The default choice follows the device (here: the smallest download, on the CPU); the visitor switches model
without a reload and keeps the prompt and history; only the chosen choice's graph files are downloaded (the
server's request log); the offline card shows each choice's cache use and deletes one; the remembered choice
loads again after a restart with the server stopped. Every caption's token ids equal native onnxruntime's on
the same pixels with that model's files (``lfmvl-site caption --model-dir dist/models/<slug>``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from lfmvl_site.synth import write_model

from .conftest import ARTIFACTS, build_cli
from .test_offline import browser, pw, serve  # noqa: F401  (pw, serve: fixtures used below)
from .test_page import TOKENS, _native_cli, _page_frame

pytestmark = pytest.mark.browser

CAMERA = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")


@pytest.fixture(scope="module")
def models_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_model(root / "lfm-a", seed=1, size="tiny", layout="1.6b")
    write_model(root / "lfm-b", seed=2, size="tiny", layout="450m")
    # fp32 compute keeps wasm and native onnxruntime equal to the token; q4/q4 is the compact preset.
    return build_cli(root / "dist", "--model-dir", str(root / "lfm-a"), "--model-dir", str(root / "lfm-b"),
                     "--preset", "fp32/fp32", "--preset", "q4/q4", "--no-q4-lm-head")


def _wait_ready(page: Any, choice: str | None = None) -> dict[str, Any]:
    cond = "s.ready && s.info && s.choice" + (f" && s.info.choice === {json.dumps(choice)}" if choice else "")
    page.wait_for_function(f"() => {{ const s = window.lfmvl && window.lfmvl.state; return !!({cond}); }}",
                           timeout=180_000)
    return page.evaluate("() => ({choice: window.lfmvl.state.choice, info: window.lfmvl.state.info,"
                         " note: document.getElementById('modelNote').textContent,"
                         " options: [...document.querySelectorAll('#model option')].map((o) => [o.value, o.textContent]),"
                         " pickHidden: document.getElementById('modelPick').hidden})")


def _caption_of(page: Any, choice: str) -> dict[str, Any]:
    page.wait_for_function(f"() => window.lfmvl.state.captions.some((c) => c.model === {json.dumps(choice)})",
                           timeout=180_000)
    return page.evaluate(f"() => window.lfmvl.state.captions.find((c) => c.model === {json.dumps(choice)})")


def _cache_rows(page: Any, expected: int) -> dict[str, tuple[float, float, bool]]:
    """choice id → (cached MB, total MB, has a Delete button) from the offline card."""
    page.wait_for_function(f"() => document.querySelectorAll('#choiceCache li').length === {expected}")
    rows = page.evaluate("() => [...document.querySelectorAll('#choiceCache li')].map((li) =>"
                         " [li.dataset.choice, li.textContent, !!li.querySelector('button')])")
    out = {}
    for cid, text, has_button in rows:
        m = re.search(r": ([\d.]+) of ([\d.]+) MB cached", text)
        assert m, text
        out[cid] = (float(m.group(1)), float(m.group(2)), has_button)
    return out


def _onnx_requests(server: Any) -> set[str]:
    return {p.lstrip("/").split("?")[0] for p in server.requested() if "/onnx/" in p}


def test_two_models_default_switch_cache_and_offline(pw: Any, serve: Any, models_site: Path,  # noqa: F811
                                                     camera_y4m: Path, tmp_path: Path) -> None:
    site = json.loads((models_site / "manifest.json").read_text())
    choices = {c["id"]: c for c in site["choices"]}
    assert list(choices) == ["lfm-a:fp32/fp32", "lfm-a:q4/q4", "lfm-b:fp32/fp32", "lfm-b:q4/q4"]
    # On wasm the default is the smallest download (the first of equals: both tiny models have one size).
    smallest = min(c["downloads"]["wasm"]["bytes"] for c in choices.values())
    expected = next(cid for cid, c in choices.items() if c["downloads"]["wasm"]["bytes"] == smallest)
    assert expected == "lfm-a:q4/q4"
    other = "lfm-b:fp32/fp32"

    server = serve(models_site)
    cam = (*CAMERA, f"--use-file-for-fake-video-capture={camera_y4m}")
    url = f"{server.url}?device=wasm&tokens={TOKENS}"
    with browser(pw, tmp_path / "profile", *cam) as ctx:
        page = ctx.pages[0] if ctx.pages else ctx.new_page()
        page.goto(url)
        page.wait_for_function("() => navigator.serviceWorker.controller !== null", timeout=30_000)
        first = _wait_ready(page)
        assert first["choice"] == expected and first["info"]["device"] == "wasm"
        assert "smallest download" in first["note"] and "MB for this device" in first["note"]
        assert first["pickHidden"] is False
        assert [v for v, _ in first["options"]] == list(choices)
        for value, text in first["options"]:
            assert text.startswith(choices[value]["label"]) and text.endswith(" MB")
        # Only the default choice's graphs came down.
        assert _onnx_requests(server) <= set(choices[expected]["downloads"]["wasm"]["files"])
        assert _onnx_requests(server)

        # Switch model in place: prompt and history stay; the new model captions; its ids equal native.
        page.fill("#prompt", "Describe this image.")
        page.click("#toggle")
        a_caption = _caption_of(page, expected)
        page.select_option("#model", other)
        switched = _wait_ready(page, other)
        assert switched["choice"] == other and page.evaluate("() => window.lfmvl.state.captions.length") >= 1
        b_caption = _caption_of(page, other)
        _, png = _page_frame(page, tmp_path)
        native = _native_cli(png, models_site / "models" / "lfm-b")
        assert b_caption["token_ids"] == native["token_ids"] and len(native["token_ids"]) > 0
        # The still camera gives every caption the same pixels: the first model's q4/q4 caption is checked too.
        native_a = _native_cli(png, models_site / "models" / "lfm-a", "--preset", "q4/q4")
        assert a_caption["token_ids"] == native_a["token_ids"]
        assert a_caption["token_ids"] != b_caption["token_ids"]  # another model: other weights, other tokens
        assert page.input_value("#prompt") == "Describe this image."
        fetched = _onnx_requests(server)
        assert fetched <= set(choices[expected]["downloads"]["wasm"]["files"]) | set(
            choices[other]["downloads"]["wasm"]["files"])

        # The offline card: each choice's cache use; deleting one frees its files.
        page.click("#toggle")  # stop captioning
        page.wait_for_function("() => document.querySelectorAll('#choiceCache li').length === 4")
        page.evaluate("() => window.lfmvl.showCache()")
        rows = _cache_rows(page, 4)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "page-models.png"), full_page=True)
        assert rows[other][0] == rows[other][1] > 0 and rows[expected][0] == rows[expected][1]
        assert rows["lfm-a:fp32/fp32"][0] < rows["lfm-a:fp32/fp32"][1]  # its fp32 graphs were never fetched
        page.click(f"#choiceCache li[data-choice='{expected}'] button")
        row = f"document.querySelector(\"#choiceCache li[data-choice='{expected}']\")"
        page.wait_for_function(f"() => /: 0\\.00 of/.test({row}.textContent)")
        rows = _cache_rows(page, 4)
        assert rows[expected][0] == 0 and rows[expected][2] is False
        assert rows[other][0] == rows[other][1]  # the model in use keeps its files

    # Restart with the server stopped: the remembered choice loads from the cache and captions the same ids.
    server.stop()
    with browser(pw, tmp_path / "profile", *cam) as ctx:
        ctx.set_offline(True)
        page = ctx.pages[0] if ctx.pages else ctx.new_page()
        page.goto(f"{server.url}?device=wasm&tokens={TOKENS}&autostart=1")
        again = _wait_ready(page, other)
        assert "last visit" in again["note"]
        offline = _caption_of(page, other)
    assert offline["token_ids"] == b_caption["token_ids"]
