"""The synthetic model builder: published layout and I/O contract, operator types, determinism, atomic writes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from lfmvl_site import synth
from lfmvl_site.errors import InputError

FLOAT, INT64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
GRAPHS = ("embed_tokens", "embed_images", "decoder")
MODEL_FILES = (
    "config.json", "generation_config.json", "processor_config.json",
    "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
    *(f"onnx/{g}{ext}" for g in GRAPHS for ext in (".onnx", ".onnx_data")),
)


def _load(model_dir: Path, graph: str) -> onnx.ModelProto:
    return onnx.load(str(model_dir / "onnx" / f"{graph}.onnx"), load_external_data=False)


def _io(values: Any) -> list[tuple[str, int, list[int | str]]]:
    return [
        (v.name, v.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
        for v in values
    ]


def _tiny() -> dict[str, Any]:
    return synth.model_config("tiny")


# --- the published contract (design doc sections 1.2, 1.3 and 1.5), written out for the tiny dims --------------


def _expected_decoder_io(cfg: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    t = cfg["text_config"]
    h, kv, hd = t["hidden_size"], t["num_key_value_heads"], t["hidden_size"] // t["num_attention_heads"]
    inputs = [
        ("inputs_embeds", FLOAT, ["batch_size", "sequence_length", h]),
        ("attention_mask", INT64, ["batch_size", "total_sequence_length"]),
    ]
    outputs = [("logits", FLOAT, ["batch_size", "sequence_length", t["vocab_size"]])]
    for i, kind in enumerate(t["layer_types"]):
        if kind == "conv":
            inputs.append((f"past_conv.{i}", FLOAT, ["batch_size", h, 3]))
            outputs.append((f"present_conv.{i}", FLOAT, ["batch_size", h, 3]))
        else:
            for part in ("key", "value"):
                inputs.append((f"past_key_values.{i}.{part}", FLOAT, ["batch_size", kv, "past_sequence_length", hd]))
                outputs.append((f"present.{i}.{part}", FLOAT, ["batch_size", kv, "total_sequence_length", hd]))
    return inputs, outputs


def test_layout_and_io_contract(tiny_model_dir: Path) -> None:
    for rel in MODEL_FILES:
        assert (tiny_model_dir / rel).is_file(), rel
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    h = cfg["text_config"]["hidden_size"]
    assert set(cfg["text_config"]["layer_types"]) == {"conv", "full_attention"}

    m = _load(tiny_model_dir, "embed_tokens")
    assert _io(m.graph.input) == [("input_ids", INT64, ["batch_size", "sequence_length"])]
    assert _io(m.graph.output) == [("inputs_embeds", FLOAT, ["batch_size", "sequence_length", h])]

    m = _load(tiny_model_dir, "embed_images")
    assert _io(m.graph.input) == [
        ("pixel_values", FLOAT, ["batch_size", "num_patches", 768]),
        ("pixel_attention_mask", INT64, ["batch_size", "num_patches"]),
        ("spatial_shapes", INT64, ["batch_size", 2]),
    ]
    assert _io(m.graph.output) == [("image_features", FLOAT, ["num_image_tokens", h])]

    m = _load(tiny_model_dir, "decoder")
    inputs, outputs = _expected_decoder_io(cfg)
    assert _io(m.graph.input) == inputs
    assert _io(m.graph.output) == outputs
    assert "position_ids" not in [i.name for i in m.graph.input]

    for graph in GRAPHS:
        m = _load(tiny_model_dir, graph)
        assert m.ir_version == 10
        assert {o.domain: o.version for o in m.opset_import} == {"": 21, "com.microsoft": 1}


def test_external_data_layout(tiny_model_dir: Path) -> None:
    """As save_as_external_data(all_tensors_to_one_file, size_threshold=1024): big tensors in <stem>.onnx_data."""
    for graph in GRAPHS:
        model = _load(tiny_model_dir, graph)
        data_size = (tiny_model_dir / "onnx" / f"{graph}.onnx_data").stat().st_size
        n_external = 0
        for t in model.graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                info = {e.key: e.value for e in t.external_data}
                assert info["location"] == f"{graph}.onnx_data"
                assert int(info["length"]) >= 1024 and int(info["offset"]) + int(info["length"]) <= data_size
                n_external += 1
            else:
                assert len(t.raw_data) < 1024, t.name
        assert n_external > 0
        # and onnx itself can read the tensors back
        full = onnx.load(str(tiny_model_dir / "onnx" / f"{graph}.onnx"))
        assert all(onnx.numpy_helper.to_array(t).dtype in (np.float32, np.int64) for t in full.graph.initializer)


def _nodes(model_dir: Path, graph: str) -> list[onnx.NodeProto]:
    return list(_load(model_dir, graph).graph.node)


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def test_decoder_operators(tiny_model_dir: Path) -> None:
    t = _tiny()["text_config"]
    nodes = _nodes(tiny_model_dir, "decoder")
    ops = Counter((n.domain or "", n.op_type) for n in nodes)
    n_attn = t["layer_types"].count("full_attention")
    n_conv = t["layer_types"].count("conv")
    assert ops[("com.microsoft", "GroupQueryAttention")] == n_attn
    # per layer: operator_norm + ffn_norm, plus q/k head norms on attention layers; ai.onnx domain, not com.microsoft
    assert ops[("", "SimplifiedLayerNormalization")] == 2 * len(t["layer_types"]) + 2 * n_attn
    assert ops[("com.microsoft", "SimplifiedLayerNormalization")] == 0
    assert ops[("com.microsoft", "SkipSimplifiedLayerNormalization")] == 1
    assert ops[("", "Conv")] == n_conv
    for n in nodes:
        if n.op_type == "GroupQueryAttention":
            a = _attrs(n)
            assert (a["do_rotary"], a["rotary_interleaved"]) == (1, 0)
            assert (a["num_heads"], a["kv_num_heads"]) == (t["num_attention_heads"], t["num_key_value_heads"])
            assert len(n.input) == 9 and n.input[3].startswith("past_key_values.")
        if n.op_type == "Conv":
            a = _attrs(n)
            assert a["group"] == t["hidden_size"] and a["kernel_shape"] == [3]
    lm_head = [n for n in nodes if n.output[0] == "logits"]
    assert lm_head[0].op_type == "MatMul"
    assert {"ReduceSum", "Sigmoid", "Split", "Concat", "Slice", "Transpose"} <= {op for _, op in ops}


def test_vision_operators(tiny_model_dir: Path) -> None:
    v = _tiny()["vision_config"]
    nodes = _nodes(tiny_model_dir, "embed_images")
    ops = Counter((n.domain or "", n.op_type) for n in nodes)
    assert ops[("com.microsoft", "MultiHeadAttention")] == v["num_hidden_layers"]
    # two per encoder layer + post_layernorm: the projector has none
    assert ops[("", "LayerNormalization")] == 2 * v["num_hidden_layers"] + 1
    assert {"Resize", "ScatterND", "Compress", "ConstantOfShape", "Range", "Mod", "ReduceMax", "Where", "Expand",
            "Less", "And"} <= {op for _, op in ops}
    gelus = sorted(_attrs(n).get("approximate", b"none").decode() for n in nodes if n.op_type == "Gelu")
    assert gelus == ["none"] + ["tanh"] * v["num_hidden_layers"]
    for n in nodes:
        if n.op_type == "MultiHeadAttention":
            assert len(n.input) == 8 and n.input[5]  # attention_bias, as the exporter writes it
        if n.op_type == "Resize":
            a = _attrs(n)
            assert (a["mode"], a["coordinate_transformation_mode"]) == (b"linear", b"half_pixel")


def _consumers(model: onnx.ModelProto, tensor: str) -> list[tuple[str, dict[str, Any], int]]:
    return sorted((n.op_type, _attrs(n), len(n.output)) for n in model.graph.node if tensor in n.input)


def test_vision_graph_reads_spatial_shapes_as_liquid_ais_exporter_does(tiny_model_dir: Path) -> None:
    """Against the graph Liquid AI's exporter wrote (shared/fixtures/liquidonnx-tiny): spatial_shapes feeds the same
    operators with the same attributes (a ReduceMax over tiles and a two-way Split into height and width columns, int64
    shape arithmetic that runs on the CPU under WebGPU), and the graph uses the exporter's operator set."""
    from support import shared_fixture

    real = onnx.load(str(shared_fixture("liquidonnx-tiny", "export", "onnx", "embed_images.onnx")), load_external_data=False)
    ours = _load(tiny_model_dir, "embed_images")
    assert _consumers(ours, "spatial_shapes") == _consumers(real, "spatial_shapes")
    assert ("Split", {"axis": 1, "num_outputs": 2}, 2) in _consumers(ours, "spatial_shapes")
    ops = lambda m: {(n.domain or "", n.op_type) for n in m.graph.node}
    assert ops(ours) == ops(real)
    mha = lambda m: [len(n.input) for n in m.graph.node if n.op_type == "MultiHeadAttention"]
    assert set(mha(ours)) == set(mha(real))


def _frames() -> dict[str, np.ndarray]:
    rng = np.random.default_rng
    ramp = np.linspace(0, 255, 320).astype(np.uint8)
    return {
        "noise-a": rng(5).integers(0, 256, (240, 320, 3), dtype=np.uint8),
        "noise-b": rng(6).integers(0, 256, (240, 320, 3), dtype=np.uint8),
        "noise-vga": rng(7).integers(0, 256, (480, 640, 3), dtype=np.uint8),
        "noise-tiled": rng(8).integers(0, 256, (1100, 1000, 3), dtype=np.uint8),
        "gray": np.full((240, 320, 3), 127, np.uint8),
        "red": np.tile(np.array([255, 0, 0], np.uint8), (240, 320, 1)),
        "ramp": np.stack([np.tile(ramp, (240, 1))] * 3, -1),
    }


def test_captions_depend_on_the_image(tiny_model_dir: Path) -> None:
    """Greedy captions on native onnxruntime: any two different frames part within the first 3 tokens (so token
    equality with transformers exercises the vision path), and the same frame gives the same ids."""
    import asyncio

    from lfmvl_site.runtime.generate import Captioner
    from lfmvl_site.runtime.native import NativeBackend
    from lfmvl_site.runtime.sampling import SamplingSettings

    captioner = asyncio.run(Captioner.load(NativeBackend(tiny_model_dir)))
    settings = SamplingSettings(max_new_tokens=6)

    def ids(frame: np.ndarray) -> list[int]:
        return asyncio.run(captioner.caption(frame, "Describe this image.", settings=settings)).token_ids

    got = {name: ids(frame) for name, frame in _frames().items()}
    assert all(len(v) == 6 for v in got.values()), got  # no early eos: the comparison below is over real tokens
    names = list(got)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert got[a][:3] != got[b][:3], (a, b, got[a], got[b])
    for name, frame in _frames().items():  # fresh arrays, same pixels
        assert ids(frame.copy()) == got[name], name


def test_same_seed_is_byte_identical_other_seed_differs(tmp_path: Path) -> None:
    a = synth.write_model(tmp_path / "a", seed=3)
    b = synth.write_model(tmp_path / "b", seed=3)
    c = synth.write_model(tmp_path / "c", seed=4)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(Path(f) for f in MODEL_FILES)
    assert sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) == files
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    for graph in GRAPHS:
        rel = Path("onnx") / f"{graph}.onnx_data"
        assert (a / rel).read_bytes() != (c / rel).read_bytes(), rel


def test_tiny_builds_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    synth.write_model(tmp_path / "m", seed=0)
    assert time.perf_counter() - start < 2.0


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("injected failure")

    monkeypatch.setattr(synth, "build_decoder", boom)
    with pytest.raises(RuntimeError, match="injected"):
        synth.write_model(tmp_path / "m", seed=0)
    assert list(tmp_path.iterdir()) == []


def test_refuses_non_empty_target_and_unknown_size(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("user data")
    with pytest.raises(InputError, match="not an empty directory"):
        synth.write_model(tmp_path / "m")
    assert (tmp_path / "m" / "keep.txt").read_text() == "user data"
    with pytest.raises(InputError, match="tiny"):
        synth.write_model(tmp_path / "x", size="huge")
    (tmp_path / "empty").mkdir()
    assert (synth.write_model(tmp_path / "empty") / "config.json").is_file()


def test_configs_load_in_transformers(tiny_model_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    config = transformers.Lfm2VlConfig.from_pretrained(tiny_model_dir)
    assert config.model_type == "lfm2_vl" and config.image_token_id == 396
    assert config.projector_use_layernorm is False and config.downsample_factor == 2 and config.tie_word_embeddings
    assert config.text_config.model_type == "lfm2" and config.vision_config.model_type == "siglip2_vision_model"
    tok = tokenizers.Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    assert config.text_config.vocab_size == tok.get_vocab_size(with_added_tokens=True)
    assert tok.token_to_id("<image>") == 396

    gen = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert gen == {"bos_token_id": 1, "eos_token_id": 7, "pad_token_id": 0}

    processor = transformers.AutoProcessor.from_pretrained(tiny_model_dir)
    assert type(processor).__name__ == "Lfm2VlProcessor"
    ip = processor.image_processor
    expected = {
        "do_image_splitting": True, "min_tiles": 2, "max_tiles": 10, "tile_size": 512, "encoder_patch_size": 16,
        "downsample_factor": 2, "min_image_tokens": 64, "max_image_tokens": 256, "max_num_patches": 1024,
        "use_thumbnail": True, "max_pixels_tolerance": 2.0, "do_rescale": True, "do_normalize": True,
        "do_pad": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    }
    assert {k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(ip, k)) for k in expected)} == expected
    assert int(ip.resample) == 2 and abs(ip.rescale_factor - 1 / 255) < 1e-12


@pytest.mark.parametrize("size", ["tiny", "mid", "full"])
def test_weights_have_hf_names_and_shapes(size: str) -> None:
    """Every preset's weight names/shapes equal transformers' own parameters (model built on the meta device)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = synth.model_config(size)
    config = transformers.Lfm2VlConfig(**cfg)
    with torch.device("meta"):
        model = transformers.Lfm2VlForConditionalGeneration(config)
    hf = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "lm_head.weight"}
    lazy = synth.SynthWeights(cfg, seed=0)
    assert {k: lazy.shape(k) for k in lazy} == hf


def test_full_size_matches_the_real_model_arithmetic() -> None:
    """Parameter counts of "full" reproduce the byte arithmetic of the published files (design doc section 4.3)."""
    cfg = synth.model_config("full")
    lazy = synth.SynthWeights(cfg, seed=0)
    count = {k: int(np.prod(lazy.shape(k))) for k in lazy}
    vision = sum(n for k, n in count.items() if k.startswith(("model.vision_tower.", "model.multi_modal_projector.")))
    assert vision == 426_285_296  # embed_images_fp16.onnx_data = 852,570,592 B / 2
    linear = sum(n for k, n in count.items()
                 if k.startswith("model.language_model.layers.") and k.endswith("proj.weight")
                 or ".feed_forward." in k)
    assert linear == 1_035_993_088  # the q4 MatMulNBits weights of decoder_q4
    assert count["model.language_model.embed_tokens.weight"] == 65536 * 2048
    t = cfg["text_config"]
    assert t["layer_types"].count("conv") == 10 and synth.configs.mlp_dim(t) == 8192


def test_cli_writes_a_model(tmp_path: Path) -> None:
    out = tmp_path / "cli-model"
    proc = subprocess.run(
        [sys.executable, "-m", "lfmvl_site.cli", "synth-model", str(out), "--seed", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    assert (out / "onnx" / "decoder.onnx_data").is_file()
    again = subprocess.run(
        [sys.executable, "-m", "lfmvl_site.cli", "synth-model", str(out)], capture_output=True, text=True, timeout=120
    )
    assert again.returncode != 0 and "Traceback" not in again.stderr
    assert again.stderr.startswith("Error:") and "not an empty directory" in again.stderr


def test_external_data_split_past_the_limit(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the split size the data continues in <stem>.onnx_data_1, ...; onnxruntime reads it to the same logits."""
    ort = pytest.importorskip("onnxruntime")
    from lfmvl_site.synth import onnxbuild

    monkeypatch.setattr(onnxbuild, "SPLIT_BYTES", 256 * 1024)
    split = synth.write_model(tmp_path / "split", seed=0)
    parts = sorted(p.name for p in (split / "onnx").glob("decoder.onnx_data*"))
    assert parts[:3] == ["decoder.onnx_data", "decoder.onnx_data_1", "decoder.onnx_data_2"]
    assert all((split / "onnx" / p).stat().st_size <= 256 * 1024 for p in parts)

    def run(model_dir: Path) -> np.ndarray:
        sess = ort.InferenceSession(str(model_dir / "onnx" / "decoder.onnx"), providers=["CPUExecutionProvider"])
        feeds = {}
        for i in sess.get_inputs():
            if i.name == "inputs_embeds":
                feeds[i.name] = np.random.default_rng(0).standard_normal((1, 5, i.shape[2]), dtype=np.float32)
            elif i.name == "attention_mask":
                feeds[i.name] = np.ones((1, 5), np.int64)
            elif i.name.startswith("past_conv."):
                feeds[i.name] = np.zeros((1, i.shape[1], i.shape[2]), np.float32)
            else:
                feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
        return sess.run(["logits"], feeds)[0]

    np.testing.assert_array_equal(run(split), run(tiny_model_dir))
