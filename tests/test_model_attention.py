"""The vision graph's MultiHeadAttention spelled with standard ops (model/attention.py) computes what the fused
op computes in native onnxruntime, on Liquid AI's exporter graphs and on the synthetic model's."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from support import shared_fixture

from lfmvl_site.model.attention import decompose_attention
from lfmvl_site.runtime.preprocess import ProcessorConfig, preprocess

ort = pytest.importorskip("onnxruntime")
EXPORT = shared_fixture("liquidonnx-tiny", "export")


def _frames() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    smooth = np.kron(rng.integers(0, 256, (12, 16, 3)), np.ones((40, 40, 1))).astype(np.uint8)  # 480x640
    return [smooth, rng.integers(0, 256, (1100, 1000, 3), dtype=np.uint8)]


def _run(model: onnx.ModelProto, folder: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    # Saved beside the original so its external data resolves.
    path = folder / f".attention-test-{id(model)}.onnx"
    onnx.save(model, str(path))
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    finally:
        path.unlink()


def _check(graph: Path, processor_config: Path, tmp_path: Path, atol: float) -> None:
    original = onnx.load(str(graph))
    rewritten = copy.deepcopy(original)
    fused = sum(n.op_type == "MultiHeadAttention" for n in original.graph.node)
    assert fused > 0
    assert decompose_attention(rewritten) == fused
    assert not any(n.op_type == "MultiHeadAttention" for n in rewritten.graph.node)
    onnx.checker.check_model(rewritten)
    cfg = ProcessorConfig.from_dict(json.loads(processor_config.read_text()))
    for frame in _frames():
        inputs = preprocess([frame], cfg)
        feeds = {"pixel_values": inputs.pixel_values, "pixel_attention_mask": inputs.pixel_attention_mask,
                 "spatial_shapes": inputs.spatial_shapes}
        want = _run(original, tmp_path, feeds)
        got = _run(rewritten, tmp_path, feeds)
        assert got.shape == want.shape and np.isfinite(got).all()
        np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), atol=atol, rtol=0)


def _copy_graph(src: Path, stem: str, dest: Path) -> Path:
    dest.mkdir(exist_ok=True)
    for f in src.glob(f"{stem}.onnx*"):
        (dest / f.name).write_bytes(f.read_bytes())
    return dest / f"{stem}.onnx"


def test_exporter_vision_graph(tmp_path: Path) -> None:
    _check(_copy_graph(EXPORT / "onnx", "embed_images", tmp_path), EXPORT / "processor_config.json", tmp_path, 1e-5)


def test_exporter_fp16_vision_graph_is_as_accurate_as_the_fused_op(tmp_path: Path) -> None:
    """In fp16 both spellings round; measured against the fp32 graph, the rewrite must round no worse."""
    fp32 = onnx.load(str(_copy_graph(EXPORT / "onnx", "embed_images", tmp_path)))
    fused = onnx.load(str(_copy_graph(EXPORT / "onnx", "embed_images_fp16", tmp_path)))
    plain = copy.deepcopy(fused)
    assert decompose_attention(plain) > 0
    cfg = ProcessorConfig.from_dict(json.loads((EXPORT / "processor_config.json").read_text()))
    for frame in _frames():
        inputs = preprocess([frame], cfg)
        feeds = {"pixel_values": inputs.pixel_values, "pixel_attention_mask": inputs.pixel_attention_mask,
                 "spatial_shapes": inputs.spatial_shapes}
        want = _run(fp32, tmp_path, feeds)
        err_fused = np.abs(_run(fused, tmp_path, feeds).astype(np.float32) - want)
        err_plain = np.abs(_run(plain, tmp_path, feeds).astype(np.float32) - want)
        assert err_plain.mean() <= 1.25 * err_fused.mean(), (err_plain.mean(), err_fused.mean())
        assert err_plain.max() <= 2.0 * err_fused.max(), (err_plain.max(), err_fused.max())


def test_synthetic_vision_graph(tiny_model_dir: Path, tmp_path: Path) -> None:
    graph = _copy_graph(tiny_model_dir / "onnx", "embed_images", tmp_path)
    _check(graph, tiny_model_dir / "processor_config.json", tmp_path, 1e-5)


def test_other_attention_forms_are_left_alone() -> None:
    from onnx import TensorProto, helper

    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4, 8]) for n in "qkv"]
    causal = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["o"], domain="com.microsoft", num_heads=2,
                              scale=0.5, unidirectional=1)
    no_scale = helper.make_node("MultiHeadAttention", ["o", "k", "v"], ["o2"], domain="com.microsoft", num_heads=2)
    graph = helper.make_graph([causal, no_scale], "g", ins, [helper.make_tensor_value_info("o2", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    assert decompose_attention(model) == 0
    assert [n.op_type for n in model.graph.node] == ["MultiHeadAttention", "MultiHeadAttention"]


def test_build_plain_attention_option(tmp_path: Path) -> None:
    """``--plain-attention`` rewrites the built vision graph (off by default: real GPUs run the fused op right)."""
    from lfmvl_site.model.build import build_model
    from lfmvl_site.model.options import ModelBuildOptions

    assert ModelBuildOptions().plain_attention is False
    opts = ModelBuildOptions(model_dir=EXPORT, vision="fp32", decoder="fp32", embed_tokens="fp32",
                             plain_attention=True, progress=False)
    build_model(opts, tmp_path / "model", progress=False)
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["optimizations"]["plain_attention"] is True
    graph = onnx.load(str(tmp_path / "model" / "onnx" / "embed_images.onnx"), load_external_data=False)
    assert not any(n.op_type == "MultiHeadAttention" for n in graph.graph.node)
    assert sum(n.op_type == "Softmax" for n in graph.graph.node) == sum(
        n.op_type == "MultiHeadAttention" for n in onnx.load(str(EXPORT / "onnx" / "embed_images.onnx"),
                                                              load_external_data=False).graph.node)
