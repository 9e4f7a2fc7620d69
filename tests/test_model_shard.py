"""Sharded external data: identical outputs to the unsharded graph in onnxruntime, shards within the cap, whole
tensors only, deterministic bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from lfmvl_site.model.shard import data_file_name, save_sharded


def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _feeds(sess: ort.InferenceSession) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {}
    for inp in sess.get_inputs():
        if inp.name == "input_ids":
            feeds[inp.name] = rng.integers(0, 1000, (1, 9)).astype(np.int64)
        elif inp.name == "pixel_values":
            feeds[inp.name] = rng.uniform(-1, 1, (1, 64, 768)).astype(np.float32)
        elif inp.name == "pixel_attention_mask":
            feeds[inp.name] = np.ones((1, 64), np.int64)
        elif inp.name == "spatial_shapes":
            feeds[inp.name] = np.array([[8, 8]], np.int64)
        elif inp.name == "inputs_embeds":
            feeds[inp.name] = rng.standard_normal((1, 9, inp.shape[2])).astype(np.float32)
        elif inp.name == "attention_mask":
            feeds[inp.name] = np.ones((1, 9), np.int64)
        else:
            shape = [0 if isinstance(d, str) and "sequence" in d else (1 if isinstance(d, str) else d) for d in inp.shape]
            feeds[inp.name] = np.zeros(shape, np.float32)
    return feeds


@pytest.mark.parametrize("role", ["embed_tokens", "embed_images", "decoder"])
def test_sharded_outputs_identical(tiny_model_dir: Path, tmp_path: Path, role: str) -> None:
    src = tiny_model_dir / "onnx" / f"{role}.onnx"
    cap = 64 * 1024
    written = save_sharded(onnx.load(str(src)), tmp_path / f"{role}.onnx", max_shard_bytes=cap)
    assert written[0] == tmp_path / f"{role}.onnx"
    assert [p.name for p in written[1:]] == [data_file_name(role, i) for i in range(len(written) - 1)]
    model = onnx.load(str(written[0]), load_external_data=False)
    n_external = sum(1 for t in model.graph.initializer if t.external_data)
    assert len(written) - 1 >= min(2, n_external), "the cap should force several shards"
    sizes = {p.name: p.stat().st_size for p in written[1:]}
    for t in model.graph.initializer:
        ext = {e.key: e.value for e in t.external_data}
        if not ext:
            continue
        length = int(ext["length"])
        assert int(ext["offset"]) + length <= sizes[ext["location"]]
        assert int(ext["offset"]) % 64 == 0
        if length <= cap:  # only a tensor larger than the cap may make its shard larger
            assert sizes[ext["location"]] <= cap
    ref_sess, got_sess = _session(src), _session(written[0])
    feeds = _feeds(ref_sess)
    for ref, got in zip(ref_sess.run(None, feeds), got_sess.run(None, feeds)):
        assert np.array_equal(ref, got)


def test_big_tensor_gets_own_shard_and_small_stay_inline(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    big = np.arange(4096, dtype=np.float32).reshape(64, 64)  # 16 KiB > cap
    small = np.ones((4, 4), np.float32)  # 64 B < 1 KiB threshold: stays in the .onnx
    mid = np.full((64, 8), 2.0, np.float32)  # 2 KiB
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "big"], ["y"]), helper.make_node("MatMul", ["y", "mid"], ["z"]),
         helper.make_node("Add", ["small", "small"], ["s"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 8]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [4, 4])],
        [numpy_helper.from_array(mid, "mid"), numpy_helper.from_array(big, "big"), numpy_helper.from_array(small, "small")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    written = save_sharded(model, tmp_path / "g.onnx", max_shard_bytes=4096)
    assert [p.name for p in written] == ["g.onnx", "g.onnx_data", "g.onnx_data_1"]
    assert [p.stat().st_size for p in written[1:]] == [mid.nbytes, big.nbytes]
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    z, s = _session(written[0]).run(None, {"x": x})
    np.testing.assert_allclose(z, (x @ big) @ mid, rtol=1e-5)  # numpy vs MLAS summation order
    np.testing.assert_array_equal(s, small + small)


def test_deterministic_bytes(tiny_model_dir: Path, tmp_path: Path) -> None:
    src = tiny_model_dir / "onnx" / "decoder.onnx"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = save_sharded(onnx.load(str(src)), tmp_path / "a" / "decoder.onnx", max_shard_bytes=300_000)
    b = save_sharded(onnx.load(str(src)), tmp_path / "b" / "decoder.onnx", max_shard_bytes=300_000)
    assert [p.name for p in a] == [p.name for p in b]
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes()
