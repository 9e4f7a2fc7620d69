"""Graphs for benchmarks/gpu/argmax_bench.mjs: logits [1, 1, V] fp32 in, ``next_token`` int64 [1] out.

* ``argmax_old``: the build's former tail (Gather of the last position, then ONNX ArgMax).
* ``reduce``, ``reduce_masked``: ``model.optimize.add_argmax`` as the build adds it now, without and with the
  tokenizer's entry count (64,400 of 65,536 for LFM2).
* ``topk``: TopK k=1 on the last row (for comparison only).
* ``two_stage``: ArgMax over [B, 256, 256] rows, then over the row maxima (for comparison only).

Every graph is checked against numpy's argmax (over the allowed ids) in native onnxruntime before it is written;
OUT_DIR/graphs.json lists them for the bench.
Usage: PYTHONPATH=src python benchmarks/gpu/argmax_graphs.py OUT_DIR [--vocab 65536 --entries 64400]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lfmvl_site.model import optimize


def _base(vocab: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["logits"])], "argmax_bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, vocab])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, vocab])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def _only_next_token(model: onnx.ModelProto) -> onnx.ModelProto:
    keep = [o for o in model.graph.output if o.name == "next_token"]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    return model


def _add(model: onnx.ModelProto, nodes: list[onnx.NodeProto], consts: dict[str, np.ndarray]) -> onnx.ModelProto:
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    model.graph.node.extend(nodes)
    model.graph.output.append(helper.make_tensor_value_info("next_token", TensorProto.INT64, [1]))
    return _only_next_token(model)


def argmax_old(vocab: int) -> onnx.ModelProto:
    return _add(_base(vocab), [
        helper.make_node("Gather", ["logits", "idx"], ["row"], axis=1),
        helper.make_node("ArgMax", ["row"], ["next_token"], axis=-1, keepdims=0, select_last_index=0),
    ], {"idx": np.array(-1, np.int64)})


def topk(vocab: int) -> onnx.ModelProto:
    return _add(_base(vocab), [
        helper.make_node("Gather", ["logits", "idx"], ["row"], axis=1),
        helper.make_node("TopK", ["row", "k"], ["values", "indices"], axis=-1, largest=1, sorted=1),
        helper.make_node("Squeeze", ["indices", "ax1"], ["next_token"]),
    ], {"idx": np.array(-1, np.int64), "k": np.array([1], np.int64), "ax1": np.array([1], np.int64)})


def two_stage(vocab: int, cols: int = 256) -> onnx.ModelProto:
    rows = vocab // cols
    return _add(_base(vocab), [
        helper.make_node("Reshape", ["logits", "shape"], ["grid"]),  # [1, R, C]
        helper.make_node("ArgMax", ["grid"], ["col"], axis=-1, keepdims=0),  # [1, R] first max in each row
        helper.make_node("ReduceMax", ["grid", "ax2"], ["rowmax"], keepdims=0),  # [1, R]
        helper.make_node("ArgMax", ["rowmax"], ["r"], axis=-1, keepdims=1),  # [1, 1] first row holding the max
        helper.make_node("GatherElements", ["col", "r"], ["c"], axis=1),  # [1, 1]
        helper.make_node("Mul", ["r", "cols"], ["base"]),
        helper.make_node("Add", ["base", "c"], ["id2"]),
        helper.make_node("Squeeze", ["id2", "ax1"], ["next_token"]),
    ], {"shape": np.array([1, rows, cols], np.int64), "ax2": np.array([2], np.int64),
        "cols": np.array(cols, np.int64), "ax1": np.array([1], np.int64)})


def reduce(vocab: int, entries: int | None) -> onnx.ModelProto:
    return _only_next_token(optimize.add_argmax(_base(vocab), entries))


def _check(model: onnx.ModelProto, vocab: int, allowed: int) -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for case in range(6):
        x = (rng.integers(-3, 4, (1, 1, vocab)) if case % 2 else rng.standard_normal((1, 1, vocab))).astype(np.float32)
        if case >= 2:
            x[..., allowed:] = 1e9  # ids without a tokenizer entry are the largest
        if case >= 4:
            x[..., allowed - 1] = 1e8
        got = int(sess.run(["next_token"], {"x": x})[0][0])
        if got != int(np.argmax(x[0, -1, :allowed])):
            raise SystemExit(f"graph {model.graph.name}: next_token {got} != numpy argmax over {allowed} ids")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--vocab", type=int, default=65536)
    ap.add_argument("--entries", type=int, default=64400)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    graphs = {
        "argmax_old": (argmax_old(a.vocab), a.vocab),
        "reduce": (reduce(a.vocab, None), a.vocab),
        "reduce_masked": (reduce(a.vocab, a.entries), a.entries),
        "topk": (topk(a.vocab), a.vocab),
        "two_stage": (two_stage(a.vocab), a.vocab),
    }
    listing = []
    for name, (model, allowed) in graphs.items():
        model.graph.name = name
        _check(model, a.vocab, allowed)
        onnx.save(model, str(a.out / f"{name}.onnx"))
        listing.append({"name": name, "file": f"{name}.onnx", "vocab": a.vocab, "allowed": allowed,
                        "ops": [n.op_type for n in model.graph.node]})
    text = json.dumps({"vocab": a.vocab, "entries": a.entries, "graphs": listing}, indent=1) + "\n"
    (a.out / "graphs.json").write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
