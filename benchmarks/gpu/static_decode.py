"""A static-shape decode step of the decoder, for onnxruntime graph capture (issue 7, "attack the overhead").

:func:`static_decode_step` rewrites a decoder (published layout, any of the build's optimizations applied) so that
every input and output has a fixed shape for one generated token:

* ``inputs_embeds [1, 1, H]``; ``attention_mask [1, MAX]`` int64: ones for the ``n`` positions in use (cached ones
  plus the new token), zeros after. GroupQueryAttention's ``seqlens_k = ReduceSum(mask) - 1`` then still names the
  new token's position, so RoPE and the causal mask stay right.
* ``past_key_values.i.key/value`` and ``present.i.key/value`` ``[1, kv, MAX, hd]``: one fixed-size buffer per
  cache. Every GroupQueryAttention gets ``total_sequence_length = MAX`` (a constant), so its present length is
  ``max(MAX, past length) = MAX``; the new key/value is written at row ``seqlens_k`` and rows past it are masked.
  Bind the same buffer as past and present and onnxruntime's GQA (CPU and WebGPU) writes in place
  ("past_present_share_buffer", detected by equal data pointers); bound to separate buffers, it copies.
* ``past_conv.i`` / ``present_conv.i`` ``[1, H, L]`` (already fixed), ``logits [1, 1, V]`` (or ``[1, S, V]`` →
  ``[1, 1, V]``), ``next_token [1]`` and ``next_tokens [1, 1]`` if present.

The step needs no shape arithmetic at run time, which is what onnxruntime's graph capture requires.
Prefill stays on the original (dynamic) decoder; its caches are copied into the first rows of the buffers.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from lfmvl_site.errors import ContractError

if TYPE_CHECKING:  # pragma: no cover
    import onnx

_KV = re.compile(r"(past_key_values|present)\.(\d+)\.(key|value)$")
TOTAL_NAME = "/lfmvl/static_decode/total_sequence_length"


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]


def _set_dims(vi: onnx.ValueInfoProto, dims: list[int]) -> None:
    shape = vi.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        shape.dim.add().dim_value = int(d)


def _fixed(vi: onnx.ValueInfoProto, axis: int) -> int:
    d = _dims(vi)
    n = d[axis] if len(d) > axis else None
    if not isinstance(n, int) or n <= 0:
        raise ContractError(f"decoder: {vi.name} has no fixed size on axis {axis} (dims {d}); a static decode step "
                            f"needs the published layout (hidden size, kv heads and head size as numbers).")
    return n


def static_decode_step(model: onnx.ModelProto, max_len: int) -> onnx.ModelProto:
    """Turn ``model`` (a decoder) into a one-token decode step with fixed shapes and caches of ``max_len`` rows.

    Edits ``model`` in place and returns it. Raises ContractError when the graph is not a decoder this can
    rewrite (no GroupQueryAttention, or caches without fixed head counts).
    """
    from onnx import numpy_helper

    if max_len < 2:
        raise ContractError(f"static decode step: max_len must be at least 2, got {max_len}.")
    g = model.graph
    ins = {vi.name: vi for vi in g.input}
    outs = {vi.name: vi for vi in g.output}
    for need in ("inputs_embeds", "attention_mask"):
        if need not in ins:
            raise ContractError(f"static decode step: the graph has no input {need!r}; pass the decoder graph.")
    gqa = [n for n in g.node if n.op_type == "GroupQueryAttention" and n.domain == "com.microsoft"]
    if not gqa:
        raise ContractError("static decode step: the decoder has no com.microsoft GroupQueryAttention node; only the "
                            "published GQA export can use a fixed-size shared KV buffer.")
    inits = {t.name for t in g.initializer}
    for n in gqa:
        # Inputs 3/4 must be the graph's past caches and outputs 1/2 its present caches: that is what makes the
        # buffers shareable. A graph that routes them through other nodes is not one this rewrite understands.
        if len(n.input) < 7 or n.input[3] not in ins or n.input[4] not in ins or len(n.output) < 3 \
                or n.output[1] not in outs or n.output[2] not in outs:
            raise ContractError(f"static decode step: GroupQueryAttention {n.name!r} does not read its past cache from "
                                "a graph input and write its present cache to a graph output.")

    hidden = _fixed(ins["inputs_embeds"], 2)
    _set_dims(ins["inputs_embeds"], [1, 1, hidden])
    _set_dims(ins["attention_mask"], [1, max_len])
    for name, vi in list(ins.items()) + list(outs.items()):
        if _KV.match(name):
            _set_dims(vi, [1, _fixed(vi, 1), max_len, _fixed(vi, 3)])
        elif name.startswith(("past_conv.", "present_conv.")):
            _set_dims(vi, [1, _fixed(vi, 1), _fixed(vi, 2)])
    if "logits" in outs:
        _set_dims(outs["logits"], [1, 1, _fixed(outs["logits"], 2)])
    if "next_token" in outs:
        _set_dims(outs["next_token"], [1])
    if "next_tokens" in outs:  # a decode step keeps its one position
        _set_dims(outs["next_tokens"], [1, 1])

    if TOTAL_NAME not in inits:
        g.initializer.append(numpy_helper.from_array(np.array(max_len, np.int32), TOTAL_NAME))
    for n in gqa:
        n.input[6] = TOTAL_NAME
    _drop_dead_nodes(model)
    # Intermediate shapes recorded for the dynamic graph would now be wrong; let onnxruntime infer them.
    del g.value_info[:]
    model.doc_string = (model.doc_string + "\n" if model.doc_string else "") + \
        f"lfmvl static decode step: one token, caches of {max_len} rows shared between past and present."
    return model


def _drop_dead_nodes(model: onnx.ModelProto) -> None:
    """Remove nodes whose outputs nobody reads (the old total-length Shape/Gather/Cast chain)."""
    g = model.graph
    outputs = {o.name for o in g.output}
    while True:
        used = {i for n in g.node for i in n.input} | outputs
        dead = [n for n in g.node if not any(o in used for o in n.output)]
        for n in dead:
            g.node.remove(n)
        if not dead:
            return


def pad_cache(cache: np.ndarray, max_len: int) -> np.ndarray:
    """A ``[B, kv, n, hd]`` cache from the dynamic decoder placed in the first ``n`` rows of a ``max_len`` buffer."""
    b, kv, n, hd = cache.shape
    if n > max_len:
        raise ContractError(f"static decode step: {n} cached positions do not fit a buffer of {max_len}; "
                            "build the step with a larger max_len.")
    out = np.zeros((b, kv, max_len, hd), cache.dtype)
    out[:, :, :n] = cache
    return out
