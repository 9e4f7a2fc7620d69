"""The two published file layouts (LFM2.5-VL-1.6B-ONNX and -450M-ONNX), checked against the captured 450M files.

References: ../shared/fixtures/lfm2.5-vl-450m/onnx_io_contract.json (the I/O of the three published 450M graphs)
and its config.json (the published transformers config), transformers' own model built from that config, and
transformers ``generate`` for the captions.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from support import pyodide_mirror, shared_fixture

from lfmvl_site import synth
from lfmvl_site.cli import main
from lfmvl_site.errors import ContractError, ModelFileError
from lfmvl_site.model import contract
from lfmvl_site.model.resolve import LocalSource
from lfmvl_site.runtime.backend import TensorInfo
from lfmvl_site.synth.text_graphs import build_decoder

# Contract file name (in onnx/) -> graph role.
FILES_450M = {"embed_tokens.onnx": "embed_tokens", "vision_encoder.onnx": "embed_images",
              "decoder_model_merged.onnx": "decoder"}
DTYPES = {"FLOAT": "float32", "INT64": "int64", "FLOAT16": "float16", "INT32": "int32"}


@pytest.fixture(scope="module")
def captured() -> dict[str, Any]:
    return json.loads(shared_fixture("lfm2.5-vl-450m", "onnx_io_contract.json").read_text())


@pytest.fixture(scope="module")
def published_config() -> dict[str, Any]:
    return json.loads(shared_fixture("lfm2.5-vl-450m", "config.json").read_text())


@pytest.fixture(scope="session")
def tiny_450m_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model (seed 0, the weights of ``tiny_model_dir``) in the 450M file layout."""
    return synth.write_model(tmp_path_factory.mktemp("synth450") / "tiny450", seed=0, size="tiny", layout="450m")


def _io(entries: list[dict[str, Any]]) -> list[TensorInfo]:
    return [TensorInfo(e["name"], DTYPES[e["dtype"]], tuple(e["shape"])) for e in entries]


def _graph_io(model: onnx.ModelProto) -> tuple[list[tuple[str, str, list[Any]]], list[tuple[str, str, list[Any]]]]:
    ins, outs = contract.graph_io(model)
    return [(t.name, t.dtype, list(t.shape)) for t in ins], [(t.name, t.dtype, list(t.shape)) for t in outs]


def test_450m_size_has_the_published_dimensions(published_config: dict[str, Any]) -> None:
    """``--size 450m`` = the published config: same numbers, and the same parameter shapes transformers makes from it."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    ours = synth.model_config("450m")
    t, pt = ours["text_config"], published_config["text_config"]
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "layer_types", "block_multiple_of", "conv_L_cache", "max_position_embeddings",
                "norm_eps", "rope_parameters"):
        assert t[key] == pt[key], key
    v, pv = ours["vision_config"], published_config["vision_config"]
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size",
                "num_patches", "hidden_act", "layer_norm_eps"):
        assert v[key] == pv[key], key
    for key in ("projector_hidden_size", "downsample_factor", "image_token_id", "projector_use_layernorm",
                "projector_bias"):
        assert ours[key] == published_config[key], key

    config = transformers.Lfm2VlConfig(**published_config)
    with torch.device("meta"):
        model = transformers.Lfm2VlForConditionalGeneration(config)
    hf = {k: tuple(p.shape) for k, p in model.state_dict().items() if k != "lm_head.weight"}
    lazy = synth.SynthWeights(ours, seed=0)
    assert {k: lazy.shape(k) for k in lazy} == hf


def test_450m_layout_graphs_match_the_captured_contract(tiny_450m_dir: Path, captured: dict[str, Any],
                                                        published_config: dict[str, Any], tmp_path: Path) -> None:
    """File names, I/O names and order, dtypes and symbolic dims as captured from the published 450M graphs; the
    numeric dims are the captured ones translated from the published config to the tiny model's."""
    assert sorted(p.name for p in (tiny_450m_dir / "onnx").glob("*.onnx")) == sorted(FILES_450M)
    assert {k for k in captured if not k.startswith("_")} == set(FILES_450M)

    def quantities(cfg: dict[str, Any]) -> dict[str, int]:
        t = cfg["text_config"]
        return {"hidden": t["hidden_size"], "vocab": t["vocab_size"], "kv_heads": t["num_key_value_heads"],
                "head_dim": t["hidden_size"] // t["num_attention_heads"], "conv_L": t["conv_L_cache"],
                "patch_dim": cfg["vision_config"]["num_channels"] * cfg["vision_config"]["patch_size"] ** 2,
                "hw": 2}  # the (rows, cols) columns of spatial_shapes

    real_q = quantities(published_config)
    by_value = {value: name for name, value in real_q.items()}
    assert len(by_value) == len(real_q), "published quantities must be distinct to translate dims unambiguously"
    tiny_q = quantities(json.loads((tiny_450m_dir / "config.json").read_text()))

    def translate(entries: list[dict[str, Any]]) -> list[tuple[str, str, list[Any]]]:
        out = []
        for e in entries:
            shape = [d if isinstance(d, str) else tiny_q[by_value[d]] for d in e["shape"]]  # KeyError = unknown dim
            out.append((e["name"], DTYPES[e["dtype"]], shape))
        return out

    # The tiny model has 6 layers, the 450M 16: its decoder is also built with the published layer pattern (same
    # builder, tiny widths) to compare the whole cache list.
    cfg16 = json.loads((tiny_450m_dir / "config.json").read_text())
    cfg16["text_config"]["layer_types"] = published_config["text_config"]["layer_types"]
    cfg16["text_config"]["num_hidden_layers"] = len(cfg16["text_config"]["layer_types"])
    (tmp_path / "onnx").mkdir()
    build_decoder(synth.SynthWeights(cfg16, seed=0), cfg16, tmp_path / "onnx", "decoder_model_merged")

    for file, role in FILES_450M.items():
        folder = tmp_path if file.startswith("decoder") else tiny_450m_dir
        model = onnx.load(str(folder / "onnx" / file), load_external_data=False)
        ins, outs = _graph_io(model)
        assert ins == translate(captured[file]["inputs"]), file
        assert outs == translate(captured[file]["outputs"]), file
        assert (folder / "onnx" / f"{Path(file).stem}.onnx_data").is_file()
        contract.check_model(role, model, file=file)


def test_contract_check_accepts_the_captured_450m_io(captured: dict[str, Any], published_config: dict[str, Any]) -> None:
    t = published_config["text_config"]
    kw = {"hidden_size": t["hidden_size"], "layer_types": t["layer_types"]}
    for file, role in FILES_450M.items():
        contract.check_io(role, _io(captured[file]["inputs"]), _io(captured[file]["outputs"]), file=file, **kw)
    # ...and it is a real check: the captured decoder without one layer's key cache, or checked against another
    # hidden size, is refused with the difference named.
    dec = captured["decoder_model_merged.onnx"]
    inputs = [t for t in _io(dec["inputs"]) if t.name != "past_key_values.5.key"]
    with pytest.raises(ContractError, match="layer 5"):
        contract.check_io("decoder", inputs, _io(dec["outputs"]), file="decoder_model_merged.onnx", **kw)
    with pytest.raises(ContractError, match="last dim 1024, expected 2048"):
        contract.check_io("embed_tokens", _io(captured["embed_tokens.onnx"]["inputs"]),
                          _io(captured["embed_tokens.onnx"]["outputs"]), file="embed_tokens.onnx", hidden_size=2048)


def test_layout_is_recognised_from_the_files(tiny_model_dir: Path, tiny_450m_dir: Path, tmp_path: Path) -> None:
    src = LocalSource(tiny_450m_dir, {})
    assert src.layout == "450m"
    assert src.graph_relpath("embed_images", "fp16") == "onnx/vision_encoder_fp16.onnx"
    assert src.graph_relpath("decoder", "q4") == "onnx/decoder_model_merged_q4.onnx"
    assert src.graph_relpath("embed_tokens", "fp32") == "onnx/embed_tokens.onnx"
    src16 = LocalSource(tiny_model_dir, {})
    assert src16.layout == "1.6b" and src16.graph_relpath("decoder", "q4") == "onnx/decoder_q4.onnx"

    neither = tmp_path / "neither"
    (neither / "onnx").mkdir(parents=True)
    (neither / "onnx" / "model.onnx").write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"neither published file layout: found model\.onnx.*vision_encoder"):
        _ = LocalSource(neither, {}).layout
    both = tmp_path / "both"
    shutil.copytree(tiny_450m_dir, both)
    shutil.copy(tiny_model_dir / "onnx" / "decoder.onnx", both / "onnx" / "decoder.onnx")
    with pytest.raises(ModelFileError, match="both published layouts"):
        _ = LocalSource(both, {}).layout


def _hf_greedy(model: Any, processor: Any, pixels: np.ndarray, n: int) -> list[int]:
    import torch
    from PIL import Image

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[Image.fromarray(pixels)], text=text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False, eos_token_id=7, pad_token_id=0)
    ids = out[0, inputs["input_ids"].shape[1]:].tolist()
    return ids[:-1] if ids and ids[-1] == 7 else ids


def test_caption_and_build_on_the_450m_layout_match_transformers(
    tiny_450m_dir: Path, hf_tiny_model: Any, hf_tiny_processor: Any, tmp_path: Path
) -> None:
    """`caption --model-dir` on the 450M layout, and on the site `build --model-dir` makes from it, give the ids
    transformers generates from the same weights."""
    from PIL import Image

    pixels = np.random.default_rng(9).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "frame.png")
    ref = _hf_greedy(hf_tiny_model, hf_tiny_processor, pixels, 12)
    assert len(ref) >= 5

    def caption(model_dir: Path) -> list[int]:
        result = CliRunner().invoke(main, ["caption", str(tmp_path / "frame.png"), "--model-dir", str(model_dir),
                                           "--json", "--max-new-tokens", "12"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout.strip().splitlines()[-1])["token_ids"]

    assert caption(tiny_450m_dir) == ref

    args = ["build", "--model-dir", str(tiny_450m_dir), "--out", str(tmp_path / "dist"),
            "--vision", "fp32", "--decoder", "fp32", "--embed-tokens", "fp32"]
    if (mirror := pyodide_mirror()) is not None:
        args += ["--pyodide-dir", str(mirror)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "dist" / "model" / "manifest.json").read_text())
    made_from = {role: [v["made_from"] for v in variants] for role, variants in manifest["graphs"].items()}
    assert made_from == {"embed_tokens": ["onnx/embed_tokens.onnx"], "embed_images": ["onnx/vision_encoder.onnx"],
                         "decoder": ["onnx/decoder_model_merged.onnx"]}
    assert caption(tmp_path / "dist" / "model") == ref


def test_synth_model_cli_writes_either_layout(tmp_path: Path) -> None:
    for layout, stems in (("450m", ("embed_tokens", "vision_encoder", "decoder_model_merged")),
                          ("1.6b", ("embed_tokens", "embed_images", "decoder"))):
        out = tmp_path / layout
        result = CliRunner().invoke(main, ["synth-model", str(out), "--layout", layout])
        assert result.exit_code == 0, result.output
        assert sorted(p.name for p in (out / "onnx").iterdir()) == sorted(
            f"{s}{ext}" for s in stems for ext in (".onnx", ".onnx_data"))
    result = CliRunner().invoke(main, ["synth-model", str(tmp_path / "x"), "--layout", "7b"])
    assert result.exit_code != 0 and "7b" in result.output
