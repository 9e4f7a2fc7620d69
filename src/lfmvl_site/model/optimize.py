"""Browser optimizations of the decoder graph, each optional (design: issue 4 §3).

* :func:`last_logits`: the lm_head runs on the last position only; ``logits`` becomes ``[B, 1, V]``.
* :func:`q4_lm_head`: the tied lm_head (``MatMul(h, Transpose(embed_tokens.weight))``) becomes a symmetric
  q4 MatMulNBits with its own weight copy; the decoder no longer carries the fp32 table. embed_tokens is untouched.
* :func:`add_argmax`: an extra output ``next_token`` int64 ``[B]`` = argmax of the last position's logits
  (first index on ties, like numpy), so greedy decoding reads back one id instead of a logits row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import ContractError
from .quantize import find_lm_head, quantize_q4

if TYPE_CHECKING:  # pragma: no cover
    import onnx

_INT64_MAX = np.iinfo(np.int64).max


def _lm_head_or_fail(model: "onnx.ModelProto", what: str) -> "onnx.NodeProto":
    node = find_lm_head(model)
    if node is None:
        raise ContractError(
            f"decoder: cannot apply {what}: the output 'logits' is not produced by a MatMul lm_head. "
            f"Build without --{what.replace('_', '-')} (add --no-{what.replace('_', '-')})."
        )
    return node


def _const(model: "onnx.ModelProto", name: str, value: np.ndarray) -> str:
    from onnx import numpy_helper

    model.graph.initializer.append(numpy_helper.from_array(value, name))
    return name


def _set_output_dims(model: "onnx.ModelProto", name: str, dims: list[int | str]) -> None:
    for vi in model.graph.output:
        if vi.name == name:
            shape = vi.type.tensor_type.shape
            del shape.dim[:]
            for d in dims:
                dim = shape.dim.add()
                if isinstance(d, int):
                    dim.dim_value = d
                else:
                    dim.dim_param = d
            return
    raise ContractError(f"decoder has no output {name!r}.")


def _output_dims(model: "onnx.ModelProto", name: str) -> list[int | str]:
    for vi in model.graph.output:
        if vi.name == name:
            return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]
    raise ContractError(f"decoder has no output {name!r}.")


def last_logits(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """Slice the lm_head's input to the last position (in place). Exact: the kept row is computed the same way."""
    from onnx import helper

    head = _lm_head_or_fail(model, "last_logits")
    hidden = head.input[0]
    sliced = f"{hidden}/last_position"
    slice_node = helper.make_node(
        "Slice",
        [hidden, _const(model, "/lfmvl/last_logits/starts", np.array([-1], np.int64)),
         _const(model, "/lfmvl/last_logits/ends", np.array([_INT64_MAX], np.int64)),
         _const(model, "/lfmvl/last_logits/axes", np.array([1], np.int64))],
        [sliced], name="/lfmvl/last_logits/Slice",
    )
    head.input[0] = sliced
    nodes = list(model.graph.node)
    idx = next(i for i, n in enumerate(nodes) if n is head or n == head)
    model.graph.node.insert(idx, slice_node)
    dims = _output_dims(model, "logits")
    _set_output_dims(model, "logits", [dims[0], 1, dims[2]])
    return model


def q4_lm_head(model: "onnx.ModelProto", *, progress: bool = False) -> "onnx.ModelProto":
    """Quantize the (tied) lm_head MatMul to symmetric q4, block 32. Returns the new model.

    A lm_head fed by ``Transpose(table)`` gets a transposed copy of the table as its own weight first (the
    quantizer only takes constant weights); the table and Transpose are dropped when nothing else uses them.
    """
    from onnx import numpy_helper

    head = _lm_head_or_fail(model, "q4_lm_head")
    if head.op_type == "MatMulNBits":
        return model  # already quantized
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    weight = head.input[1]
    if weight not in inits:
        tr = producers.get(weight)
        perm = [a.ints for a in tr.attribute if a.name == "perm"] if tr is not None else []
        if tr is None or tr.op_type != "Transpose" or tr.input[0] not in inits or (perm and list(perm[0]) != [1, 0]):
            raise ContractError("decoder: the lm_head weight is neither a constant nor Transpose(constant); "
                                "build with --no-q4-lm-head.")
        table = numpy_helper.to_array(inits[tr.input[0]])
        new_name = "lm_head.weight"
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(table.T), new_name))
        head.input[1] = new_name
        _drop_unused(model)
    if not head.name:
        head.name = "/lm_head/MatMul"
    return quantize_q4(model, only=[head.name], progress=progress, desc="q4 lm_head")


def add_argmax(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """Add output ``next_token`` int64 [B]: ArgMax over the vocabulary of the last position (in place)."""
    from onnx import TensorProto, helper

    dims = _output_dims(model, "logits")
    last = "/lfmvl/argmax/last_row"
    model.graph.node.extend([
        helper.make_node("Gather", ["logits", _const(model, "/lfmvl/argmax/index", np.array(-1, np.int64))], [last],
                         axis=1, name="/lfmvl/argmax/Gather"),  # [B, V]
        helper.make_node("ArgMax", [last], ["next_token"], axis=-1, keepdims=0, select_last_index=0,
                         name="/lfmvl/argmax/ArgMax"),  # [B]
    ])
    model.graph.output.append(helper.make_tensor_value_info("next_token", TensorProto.INT64, [dims[0]]))
    return model


def _drop_unused(model: "onnx.ModelProto") -> None:
    """Remove nodes whose outputs nobody reads and initializers nobody uses (repeat until stable)."""
    graph_outputs = {o.name for o in model.graph.output}
    while True:
        used = {i for n in model.graph.node for i in n.input} | graph_outputs
        dead = [n for n in model.graph.node if not any(o in used for o in n.output)]
        for n in dead:
            model.graph.node.remove(n)
        if not dead:
            break
    used = {i for n in model.graph.node for i in n.input} | _subgraph_inputs(model)
    keep = [t for t in model.graph.initializer if t.name in used or t.name in graph_outputs]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)


def _subgraph_inputs(model: "onnx.ModelProto") -> set[str]:
    import onnx

    names: set[str] = set()
    for n in model.graph.node:
        for a in n.attribute:
            graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for g in graphs:
                names |= {i for sn in g.node for i in sn.input}
    return names
