"""Write the cases of benchmarks/gpu/attention_probe.mjs: single-node attention graphs (com.microsoft
MultiHeadAttention and GroupQueryAttention as Liquid AI's exporter uses them, and the standard-op spelling
model/attention.py writes), their float32 inputs and native onnxruntime's outputs, as raw little-endian files.

Usage: python benchmarks/gpu/attention_cases.py OUT_DIR
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from lfmvl_site.model.attention import decompose_attention

OPSETS = [h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)]


def mha(heads: int, d: int, s: int) -> onnx.ModelProto:
    e = heads * d
    ins = [h.make_tensor_value_info(n, T.FLOAT, [1, s, e]) for n in "qkv"]
    ins.append(h.make_tensor_value_info("b", T.FLOAT, [1, 1, s, s]))
    node = h.make_node("MultiHeadAttention", ["q", "k", "v", "", "", "b"], ["o"], domain="com.microsoft",
                       num_heads=heads, scale=float(d) ** -0.5)
    graph = h.make_graph([node], "g", ins, [h.make_tensor_value_info("o", T.FLOAT, [1, s, e])])
    return h.make_model(graph, opset_imports=OPSETS, ir_version=9)


def gqa(heads: int, kv: int, d: int, s: int, past: int) -> onnx.ModelProto:
    ins = [h.make_tensor_value_info("q", T.FLOAT, [1, s, heads * d]), h.make_tensor_value_info("k", T.FLOAT, [1, s, kv * d]),
           h.make_tensor_value_info("v", T.FLOAT, [1, s, kv * d]),
           h.make_tensor_value_info("pk", T.FLOAT, [1, kv, past, d]), h.make_tensor_value_info("pv", T.FLOAT, [1, kv, past, d])]
    pos = np.arange(4096)[:, None] * (1 / 10000 ** (np.arange(0, d, 2) / d))[None]
    inits = [nh.from_array(np.array([s + past - 1], np.int32), "sl"), nh.from_array(np.array(s + past, np.int32), "tl"),
             nh.from_array(np.cos(pos).astype(np.float32), "cos"), nh.from_array(np.sin(pos).astype(np.float32), "sin")]
    node = h.make_node("GroupQueryAttention", ["q", "k", "v", "pk", "pv", "sl", "tl", "cos", "sin"], ["o", "ok", "ov"],
                       domain="com.microsoft", num_heads=heads, kv_num_heads=kv, scale=float(d) ** -0.5, do_rotary=1)
    graph = h.make_graph([node], "g", ins, [h.make_tensor_value_info("o", T.FLOAT, [1, s, heads * d])], initializer=inits)
    return h.make_model(graph, opset_imports=OPSETS, ir_version=9)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    cases = []
    models: list[tuple[str, onnx.ModelProto]] = []
    for heads, d, s in [(2, 16, 64), (16, 64, 256), (16, 72, 729)]:  # tiny; SigLIP2 base / so400m-like tiles
        models.append((f"mha_h{heads}_d{d}_s{s}", mha(heads, d, s)))
        plain = copy.deepcopy(models[-1][1])
        assert decompose_attention(plain) == 1
        models.append((f"plain_h{heads}_d{d}_s{s}", plain))
    for heads, kv, d, s, past in [(4, 2, 16, 16, 0), (4, 2, 16, 32, 0), (32, 8, 64, 1, 100), (32, 8, 64, 16, 0),
                                  (32, 8, 64, 17, 0), (32, 8, 64, 24, 0), (32, 8, 64, 31, 0), (32, 8, 64, 32, 0),
                                  (32, 8, 64, 100, 0), (32, 8, 64, 300, 0), (32, 8, 64, 40, 50)]:
        models.append((f"gqa_h{heads}_kv{kv}_d{d}_s{s}_p{past}", gqa(heads, kv, d, s, past)))
    for name, model in models:
        onnx.save(model, str(out / f"{name}.onnx"))
        feeds = {}
        for i in model.graph.input:
            dims = [x.dim_value for x in i.type.tensor_type.shape.dim]
            value = rng.standard_normal(dims).astype(np.float32)
            if i.name == "b":
                value = np.where(rng.random(dims) < 0.1, np.float32(-3.4e38), np.float32(0))
            feeds[i.name] = value
        ref = ort.InferenceSession(str(out / f"{name}.onnx"), providers=["CPUExecutionProvider"]).run(["o"], feeds)[0]
        for k, v in feeds.items():
            v.tofile(out / f"{name}.{k}.bin")
        ref.astype(np.float32).tofile(out / f"{name}.ref.bin")
        cases.append({"name": name, "inputs": {k: list(v.shape) for k, v in feeds.items()}})
    (out / "cases.json").write_text(json.dumps(cases, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
