"""The model written by Liquid AI's own ONNX exporter (../shared/fixtures/liquidonnx-tiny): files nobody here wrote.

``caption`` on its graphs must equal transformers ``generate`` on the checkpoint they were exported from, and
``build --model-dir`` must turn it into a site (the browser half is in tests/web/test_real_files.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from support import pyodide_mirror, shared_fixture

from lfmvl_site.cli import main

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
PIL = pytest.importorskip("PIL.Image")

EXPORT = shared_fixture("liquidonnx-tiny", "export")
CHECKPOINT = shared_fixture("liquidonnx-tiny", "transformers")
PROMPT = "Describe this image."


@pytest.fixture(scope="module")
def hf_model() -> Any:
    model = transformers.Lfm2VlForConditionalGeneration.from_pretrained(str(CHECKPOINT), dtype=torch.float32,
                                                                          attn_implementation="eager")
    return model.eval()


@pytest.fixture(scope="module")
def hf_processor() -> Any:
    pytest.importorskip("torchvision")
    return transformers.AutoProcessor.from_pretrained(str(CHECKPOINT))


def _hf_greedy(model: Any, processor: Any, pixels: np.ndarray, n: int) -> list[int]:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[PIL.fromarray(pixels)], text=text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False)
    ids = out[0, inputs["input_ids"].shape[1]:].tolist()
    eos = model.generation_config.eos_token_id
    return ids[:-1] if ids and ids[-1] == eos else ids


def _caption(image: Path, model_dir: Path, n: int) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["caption", str(image), "--model-dir", str(model_dir), "--prompt", PROMPT,
                                       "--max-new-tokens", str(n), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("size", [(480, 640), (1100, 1000)], ids=["webcam-single", "tiled-2x2+thumbnail"])
def test_caption_on_the_exporters_graphs_equals_transformers_generate(size: tuple[int, int], tmp_path: Path,
                                                                       hf_model: Any, hf_processor: Any) -> None:
    rng = np.random.default_rng(size[0] * 7 + size[1])
    pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    image = tmp_path / "frame.png"
    PIL.fromarray(pixels).save(image)
    ref = _hf_greedy(hf_model, hf_processor, pixels, 24)
    assert len(ref) >= 5, "the reference stopped too early to compare"
    ours = _caption(image, EXPORT, 24)
    assert ours["token_ids"] == ref


def test_build_from_the_exporters_directory(tmp_path: Path) -> None:
    """``build --model-dir`` reads the exporter's layout (value_info naming missing tensors, 0600 data files, inline
    fp32 embed_tokens) and writes a site whose model captions like the source."""
    out = tmp_path / "dist"
    args = ["build", "--model-dir", str(EXPORT), "--out", str(out), "--vision", "fp32", "--decoder", "fp32",
            "--embed-tokens", "fp32", "--no-q4-lm-head"]
    mirror = pyodide_mirror()
    if mirror is not None:
        args += ["--pyodide-dir", str(mirror)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest
    image = tmp_path / "frame.png"
    PIL.fromarray(np.random.default_rng(5).integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(image)
    assert _caption(image, out / "model", 12)["token_ids"] == _caption(image, EXPORT, 12)["token_ids"]
