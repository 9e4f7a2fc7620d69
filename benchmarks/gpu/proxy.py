"""Device side: static-shape decode-step stacks for the per-run / per-node overhead experiments.

``step_full.onnx``: the real decoder's 16 layers of weight matrices (2048 wide, 8192 MLP, 65536-row q4 lm_head) as
symmetric q4 MatMulNBits (block 32) with RMSNorm and residual Adds, input x [1,1,2048] -> logits [1,1,65536]:
a decode step without attention/conv state, so every shape is static and graph capture applies.
``adds_256.onnx``: 256 chained Adds on [1,1,2048] (pure per-node overhead). Random weights; prints a JSON line.
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

H, FF, V, KV = 2048, 8192, 65536, 512
ATTN = {2, 5, 8, 10, 12, 14}
rng = np.random.default_rng(1)


class G:
    def __init__(self):
        self.nodes, self.inits, self.n, self.bytes = [], [], 0, 0

    def name(self, p):
        self.n += 1
        return f"{p}{self.n}"

    def q4(self, x, k, n):
        w = self.name("w")
        self.inits += [numpy_helper.from_array(rng.integers(0, 256, (n, k // 32, 16), dtype=np.uint8), w + "_b"),
                       numpy_helper.from_array((rng.random((n, k // 32), dtype=np.float32) * 2e-3 + 1e-3), w + "_s")]
        self.bytes += n * k // 2 + n * k // 32 * 4
        y = self.name("y")
        self.nodes.append(helper.make_node("MatMulNBits", [x, w + "_b", w + "_s"], [y], domain="com.microsoft",
                                           K=k, N=n, bits=4, block_size=32, accuracy_level=4))
        return y

    def op(self, kind, ins, **kw):
        y = self.name("t")
        self.nodes.append(helper.make_node(kind, ins, [y], **kw))
        return y

    def rms(self, x):
        w = self.name("g")
        self.inits.append(numpy_helper.from_array(np.ones(H, np.float32), w))
        return self.op("SimplifiedLayerNormalization", [x, w], axis=-1, epsilon=1e-5)

    def save(self, out, path, n_out):
        g = helper.make_graph(self.nodes, "step", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, H])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 1, n_out])], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
        m.ir_version = 10
        onnx.save(m, str(path))


def step_full(path):
    g = G()
    h = "x"
    for i in range(16):
        n = g.rms(h)
        if i in ATTN:
            q, _k, _v = g.q4(n, H, H), g.q4(n, H, KV), g.q4(n, H, KV)
            o = g.q4(g.op("Add", [q, q]), H, H)
        else:
            b, c, xx = (g.name("s") for _ in range(3))
            g.nodes.append(helper.make_node("Split", [g.q4(n, H, 3 * H)], [b, c, xx], axis=-1, num_outputs=3))
            o = g.q4(g.op("Mul", [c, g.op("Mul", [b, xx])]), H, H)
        h = g.op("Add", [h, o])
        n2 = g.rms(h)
        w1, w3 = g.q4(n2, H, FF), g.q4(n2, H, FF)
        h = g.op("Add", [h, g.q4(g.op("Mul", [g.op("Mul", [w1, g.op("Sigmoid", [w1])]), w3]), FF, H)])
    logits = g.q4(g.rms(h), H, V)
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
    g.save("logits", path, V)
    return {"file": path.name, "nodes": len(g.nodes), "weight_bytes": g.bytes, "out": "logits", "n_out": V}


def adds(path, count=256):
    g = G()
    h = "x"
    for _ in range(count):
        h = g.op("Add", [h, h])
    g.nodes.append(helper.make_node("Identity", [h], ["y"]))
    g.save("y", path, H)
    return {"file": path.name, "nodes": len(g.nodes), "weight_bytes": 0, "out": "y", "n_out": H}


out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
only = sys.argv[2:]  # e.g. "adds_256" for a dry run
made = [] if only and "step_full" not in only else [step_full(out / "step_full.onnx")]
print(json.dumps(made + [adds(out / "adds_256.onnx")]))
