"""Rewrite the vision graph's ``com.microsoft.MultiHeadAttention`` into MatMul / Softmax / MatMul.

Why: onnxruntime-web 1.30's WebGPU MultiHeadAttention (3-D q/k/v, the form Liquid AI's exporter and our
synthetic model use in the vision encoder) returns wrong values on SwiftShader, the software adapter Chromium
offers without a GPU (max error 0.4-1.0 against native onnxruntime for every head count, head size and length
tried), while this spelling is exact there. On a real GPU the fused kernel is right and faster (H200, Dawn:
both exact; 5.5 vs 8.0 ms at 16 heads x 256 tokens, equal at 729; benchmarks/gpu/attention_probe.sh), so the
rewrite is a build option (``--plain-attention``), off by default. The decoder's GroupQueryAttention, which
SwiftShader also gets wrong for prefills of 32+ tokens (exact on the H200), is not touched.

Only the self-contained form is rewritten: 3-D q/k/v, no packed bias, no key padding mask, no past/present,
no ``unidirectional``; any other MultiHeadAttention is left as it is.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)
MS_DOMAIN = "com.microsoft"
_FLOATS = {1, 10, 16}  # TensorProto FLOAT, FLOAT16, BFLOAT16


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor the graph names, from its declarations and onnx's type inference."""
    import onnx

    g = model.graph
    types = {t.name: t.data_type for t in g.initializer}
    try:  # inference on a weightless copy: fast, and safe for graphs over 2 GB
        light = onnx.ModelProto()
        light.CopyFrom(model)
        for t in light.graph.initializer:
            t.ClearField("raw_data")
            t.ClearField("float_data")
            t.ClearField("int32_data")
            t.ClearField("int64_data")
        light = onnx.shape_inference.infer_shapes(light, strict_mode=False)
        g = light.graph
    except Exception as exc:  # noqa: BLE001 - best effort; the declared types below still count
        log.debug("type inference failed (%s); using declared types", exc)
    for v in (*g.input, *g.output, *g.value_info):
        if v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type
    return types


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _rewritable(node: onnx.NodeProto) -> bool:
    if node.op_type != "MultiHeadAttention" or node.domain != MS_DOMAIN:
        return False
    ins = list(node.input) + [""] * (8 - len(node.input))
    attrs = _attrs(node)
    return (all(ins[:3]) and not ins[3] and not ins[4] and not any(ins[6:]) and len([o for o in node.output if o]) == 1
            and not attrs.get("unidirectional", 0) and "scale" in attrs)


def decompose_attention(model: onnx.ModelProto) -> int:
    """Replace each self-contained MultiHeadAttention by standard ops (in place); returns how many."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    types = _value_types(model)
    out_nodes: list[onnx.NodeProto] = []
    count = 0
    for node in graph.node:
        dtype = types.get(node.input[0]) if _rewritable(node) else None
        if dtype not in _FLOATS:
            out_nodes.append(node)  # not the self-contained form, or its float type is unknown
            continue
        attrs = _attrs(node)
        heads = int(attrs["num_heads"])  # type: ignore[call-overload]
        scale = float(attrs["scale"])  # type: ignore[arg-type]
        q, k, v = node.input[:3]
        bias = node.input[5] if len(node.input) > 5 else ""
        p = f"{node.name or node.output[0]}/lfmvl"
        count += 1
        for name, value in ((f"{p}/split_shape", np.array([0, 0, heads, -1], np.int64)),
                            (f"{p}/merge_shape", np.array([0, 0, -1], np.int64)),
                            (f"{p}/scale_f32", np.array(scale, np.float32))):
            graph.initializer.append(numpy_helper.from_array(value, name))
        mk = helper.make_node
        nodes = [
            mk("Reshape", [q, f"{p}/split_shape"], [f"{p}/q4"], name=f"{p}/q/Reshape"),
            mk("Transpose", [f"{p}/q4"], [f"{p}/qt"], perm=[0, 2, 1, 3], name=f"{p}/q/Transpose"),  # B N S D
            mk("Reshape", [k, f"{p}/split_shape"], [f"{p}/k4"], name=f"{p}/k/Reshape"),
            mk("Transpose", [f"{p}/k4"], [f"{p}/kt"], perm=[0, 2, 3, 1], name=f"{p}/k/Transpose"),  # B N D T
            mk("Reshape", [v, f"{p}/split_shape"], [f"{p}/v4"], name=f"{p}/v/Reshape"),
            mk("Transpose", [f"{p}/v4"], [f"{p}/vt"], perm=[0, 2, 1, 3], name=f"{p}/v/Transpose"),  # B N T D
            mk("MatMul", [f"{p}/qt", f"{p}/kt"], [f"{p}/qk"], name=f"{p}/QK"),
        ]
        # Scale, bias and softmax in float32 whatever the graph's type, as the fused kernels compute them.
        # (Cast with a known type: the WebGPU EP has no CastLike kernel.)
        wide = dtype != TensorProto.FLOAT
        scores = f"{p}/qk"
        if wide:
            nodes.append(mk("Cast", [scores], [f"{p}/qk_f32"], to=TensorProto.FLOAT, name=f"{p}/QK/Cast"))
            scores = f"{p}/qk_f32"
        nodes.append(mk("Mul", [scores, f"{p}/scale_f32"], [f"{p}/scores"], name=f"{p}/Scale"))
        scores = f"{p}/scores"
        if bias:
            b = bias
            if types.get(bias, dtype) != TensorProto.FLOAT:
                nodes.append(mk("Cast", [bias], [f"{p}/bias_f32"], to=TensorProto.FLOAT, name=f"{p}/Bias/Cast"))
                b = f"{p}/bias_f32"
            nodes.append(mk("Add", [scores, b], [f"{p}/biased"], name=f"{p}/Bias"))
            scores = f"{p}/biased"
        nodes.append(mk("Softmax", [scores], [f"{p}/probs"], axis=-1, name=f"{p}/Softmax"))
        probs = f"{p}/probs"
        if wide:
            nodes.append(mk("Cast", [probs], [f"{p}/probs_narrow"], to=dtype, name=f"{p}/Softmax/Cast"))
            probs = f"{p}/probs_narrow"
        nodes += [
            mk("MatMul", [probs, f"{p}/vt"], [f"{p}/ctx"], name=f"{p}/PV"),
            mk("Transpose", [f"{p}/ctx"], [f"{p}/ctx_t"], perm=[0, 2, 1, 3], name=f"{p}/out/Transpose"),
            mk("Reshape", [f"{p}/ctx_t", f"{p}/merge_shape"], [node.output[0]], name=f"{p}/out/Reshape"),
        ]
        out_nodes += nodes
    if count:
        del graph.node[:]
        graph.node.extend(out_nodes)
    return count
