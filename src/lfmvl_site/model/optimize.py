"""Browser optimizations of the decoder graph, each optional (design: issue 4 §3).

* :func:`last_logits`: the lm_head runs on the last ``VERIFY_ROWS`` positions only (fewer when the run has fewer);
  ``logits`` becomes ``[B, min(S, VERIFY_ROWS), V]``. A decode step (S = 1) keeps its one row; a run verifying a
  draft of k <= VERIFY_ROWS - 1 tokens keeps the k + 1 rows it needs (runtime/speculative.py); a prefill skips
  the head on all but the last rows (a 640x480 frame's 286 rows: 33 kept, 253 skipped).
* :func:`q4_lm_head`: the tied lm_head (``MatMul(h, Transpose(embed_tokens.weight))``) becomes a symmetric
  q4 MatMulNBits with its own weight copy; the decoder no longer carries the fp32 table. embed_tokens is untouched.
* :func:`float_activations`: every decoder MatMulNBits gets ``accuracy_level`` 0 (float activations). At level 4, as
  published, onnxruntime's WebGPU EP quantizes activations to int8 for a DP4A kernel, in two kernels per matmul,
  and its multi-row and one-row kernels then disagree by up to 3 logits (H200, full-size model): a draft verified
  in one multi-row run gets other tokens than one-row greedy steps. At level 0 they agree within 3e-4 (BENCHMARKS.md).
* :func:`add_argmax`: extra outputs ``next_tokens`` int64 ``[B, R]`` (the argmax of each of the last R <=
  VERIFY_ROWS positions' logits) and ``next_token`` int64 ``[B]`` (the last of them), over the ids the tokenizer
  has (first index on ties, like numpy): greedy decoding reads back one id, draft verification R ids, instead of
  logits rows. It is built from reductions the WebGPU EP runs in parallel (ReduceMax, then the first index holding
  the maximum as a ReduceMin over positions): onnxruntime's WebGPU ArgMax loops over the row in one thread
  (4.1-4.5 ms of GPU per token for 65,536 logits on an H200, issue 16).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import ContractError
from ..runtime.speculative import VERIFY_ROWS
from .quantize import find_lm_head, quantize_q4

if TYPE_CHECKING:  # pragma: no cover
    import onnx

_INT64_MAX = np.iinfo(np.int64).max
# The symbolic length of the kept positions: min(sequence_length, VERIFY_ROWS).
KEPT_POSITIONS = "kept_positions"


def _lm_head_or_fail(model: onnx.ModelProto, what: str) -> onnx.NodeProto:
    node = find_lm_head(model)
    if node is None:
        raise ContractError(
            f"decoder: cannot apply {what}: the output 'logits' is not produced by a MatMul lm_head. "
            f"Build without --{what.replace('_', '-')} (add --no-{what.replace('_', '-')})."
        )
    return node


def _const(model: onnx.ModelProto, name: str, value: np.ndarray) -> str:
    from onnx import numpy_helper

    model.graph.initializer.append(numpy_helper.from_array(value, name))
    return name


def _set_output_dims(model: onnx.ModelProto, name: str, dims: list[int | str]) -> None:
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


def _output_dims(model: onnx.ModelProto, name: str) -> list[int | str]:
    for vi in model.graph.output:
        if vi.name == name:
            return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]
    raise ContractError(f"decoder has no output {name!r}.")


def last_logits(model: onnx.ModelProto) -> onnx.ModelProto:
    """Slice the lm_head's input to the last ``VERIFY_ROWS`` positions (in place). Exact: kept rows are computed the
    same way."""
    from onnx import helper

    head = _lm_head_or_fail(model, "last_logits")
    hidden = head.input[0]
    sliced = f"{hidden}/last_positions"
    slice_node = helper.make_node(
        "Slice",
        [hidden, _const(model, "/lfmvl/last_logits/starts", np.array([-VERIFY_ROWS], np.int64)),
         _const(model, "/lfmvl/last_logits/ends", np.array([_INT64_MAX], np.int64)),
         _const(model, "/lfmvl/last_logits/axes", np.array([1], np.int64))],
        [sliced], name="/lfmvl/last_logits/Slice",
    )
    head.input[0] = sliced
    nodes = list(model.graph.node)
    idx = next(i for i, n in enumerate(nodes) if n is head or n == head)
    model.graph.node.insert(idx, slice_node)
    dims = _output_dims(model, "logits")
    _set_output_dims(model, "logits", [dims[0], KEPT_POSITIONS, dims[2]])
    return model


def float_activations(model: onnx.ModelProto) -> int:
    """Set ``accuracy_level`` 0 on every MatMulNBits (in place); returns how many were at another level."""
    changed = 0
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        for a in node.attribute:  # an absent attribute means 0 already
            if a.name == "accuracy_level" and a.i != 0:
                a.i = 0
                changed += 1
    return changed


def q4_lm_head(model: onnx.ModelProto, *, progress: bool = False) -> onnx.ModelProto:
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


def add_argmax(model: onnx.ModelProto, entries: int | None = None) -> onnx.ModelProto:
    """Add outputs ``next_tokens`` int64 [B, R] and ``next_token`` int64 [B] (in place): the argmax over ids
    ``< entries`` of each of the last R = min(S, VERIFY_ROWS) positions' logits, and of the last one.

    ``entries`` is the tokenizer's entry count (one more than its highest id); ids at or above it have no token and
    are never chosen. ``None``, or as many entries as logits columns, considers every column. Exactly numpy's argmax
    of ``logits[:, -R:, :entries]`` per row, first index on ties::

        x = Slice(logits)[:, -R:, :entries]           # only when positions or columns must go
        m = ReduceMax(x, axes=[2], keepdims=1)        # [B, R, 1]
        i = Where(Less(x, m), entries, iota)          # position where x == max, else past the end
        next_tokens = Cast(ReduceMin(i, axes=[2], keepdims=0), int64)   # [B, R]
        next_token = Gather(next_tokens, -1, axis=1)                     # [B]

    The positions are float32 (exact below 2**24); a row with NaN gives an id in range, not numpy's first NaN. The
    build adds it after the precision conversion, so the positions stay float32 in an fp16 graph. Logits whose
    width is not a fixed number (or is 2**24 or more) get a plain ArgMax instead.
    """
    from onnx import TensorProto, helper

    dims = _output_dims(model, "logits")
    if len(dims) != 3:
        raise ContractError(f"decoder output 'logits' has {len(dims)} dimensions, expected 3 [batch, sequence, vocab].")
    cols = dims[2] if isinstance(dims[2], int) and dims[2] > 0 else None
    if entries is not None:
        if entries < 1 or (cols is not None and entries > cols):
            raise ContractError(
                f"the tokenizer has {entries} entries but the decoder's logits have {cols} columns: use the "
                "tokenizer.json of the same model."
            )
        if cols is not None and entries == cols:
            entries = None
    width = entries if entries is not None else cols
    p = "/lfmvl/argmax"
    nodes = []
    x = "logits"
    few_rows = dims[1] == KEPT_POSITIONS or (isinstance(dims[1], int) and 0 < dims[1] <= VERIFY_ROWS)
    if entries is not None or not few_rows:  # keep the last rows, and the ids the tokenizer has
        starts, ends, axes = [-VERIFY_ROWS], [_INT64_MAX], [1]
        if entries is not None:
            starts, ends, axes = [-VERIFY_ROWS, 0], [_INT64_MAX, entries], [1, 2]
        x = f"{p}/allowed"
        nodes.append(helper.make_node(
            "Slice", ["logits", _const(model, f"{p}/starts", np.array(starts, np.int64)),
                      _const(model, f"{p}/ends", np.array(ends, np.int64)),
                      _const(model, f"{p}/axes", np.array(axes, np.int64))],
            [x], name=f"{p}/Slice"))  # [B, R, W]
    if width is None or width >= 1 << 24:
        nodes.append(helper.make_node("ArgMax", [x], ["next_tokens"], axis=-1, keepdims=0,
                                      select_last_index=0, name=f"{p}/ArgMax"))
    else:
        nodes += [
            _reduce(model, "ReduceMax", x, f"{p}/max", keepdims=1),  # [B, R, 1]
            helper.make_node("Less", [x, f"{p}/max"], [f"{p}/below_max"], name=f"{p}/Less"),
            helper.make_node(
                "Where", [f"{p}/below_max", _const(model, f"{p}/past_end", np.array(width, np.float32)),
                          _const(model, f"{p}/positions", np.arange(width, dtype=np.float32))],
                [f"{p}/max_positions"], name=f"{p}/Where"),  # [B, R, W]
            _reduce(model, "ReduceMin", f"{p}/max_positions", f"{p}/first", keepdims=0),  # [B, R]
            helper.make_node("Cast", [f"{p}/first"], ["next_tokens"], to=TensorProto.INT64, name=f"{p}/Cast"),
        ]
    nodes.append(helper.make_node("Gather", ["next_tokens", _const(model, f"{p}/last", np.array(-1, np.int64))],
                                  ["next_token"], axis=1, name=f"{p}/Gather"))  # [B]
    model.graph.node.extend(nodes)
    model.graph.output.append(helper.make_tensor_value_info("next_tokens", TensorProto.INT64, [dims[0], KEPT_POSITIONS]))
    model.graph.output.append(helper.make_tensor_value_info("next_token", TensorProto.INT64, [dims[0]]))
    return model


def _reduce(model: onnx.ModelProto, op: str, x: str, out: str, *, keepdims: int) -> onnx.NodeProto:
    """``op`` over the last axis of a [B, R, W] tensor; axes as an input from opset 18, an attribute before."""
    from onnx import helper

    name = f"/lfmvl/argmax/{op}"
    if _opset(model) >= 18:
        axes = _const(model, f"{name}/axes", np.array([2], np.int64))
        return helper.make_node(op, [x, axes], [out], keepdims=keepdims, name=name)
    return helper.make_node(op, [x], [out], axes=[2], keepdims=keepdims, name=name)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _drop_unused(model: onnx.ModelProto) -> None:
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


def _subgraph_inputs(model: onnx.ModelProto) -> set[str]:
    import onnx

    names: set[str] = set()
    for n in model.graph.node:
        for a in n.attribute:
            graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for g in graphs:
                names |= {i for sn in g.node for i in sn.input}
    return names
