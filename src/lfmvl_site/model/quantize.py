"""Produce a precision variant from an fp32 graph: q4 (symmetric MatMulNBits, block 32) or fp16 (float32 I/O kept).

Both use onnxruntime's own tools, the ones the published variants were made with (design doc §5):
``MatMulNBitsQuantizer`` (symmetric, so no zero points: asymmetric q4 and q8 do not run on WebGPU) and
``convert_float_to_float16(keep_io_types=True)``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import onnx

BLOCK_SIZE = 32
ACCURACY_LEVEL = 4  # int8 activations inside the CPU kernel; WebGPU ignores it


def find_lm_head(model: onnx.ModelProto) -> onnx.NodeProto | None:
    """The decoder's lm_head: the MatMul (or MatMulNBits) node whose output is the graph output ``logits``.

    Found by following ``logits`` back through Cast nodes only; any other export shape returns None.
    """
    producers = {o: n for n in model.graph.node for o in n.output}
    node = producers.get("logits")
    while node is not None and node.op_type == "Cast":  # fp16 graphs cast the fp16 logits back to float32
        node = producers.get(node.input[0])
    if node is not None and node.op_type in ("MatMul", "MatMulNBits"):
        return node
    return None


def quantize_q4(
    model: onnx.ModelProto,
    *,
    exclude: Iterable[str] = (),
    only: Iterable[str] | None = None,
    progress: bool = True,
    desc: str = "q4",
) -> onnx.ModelProto:
    """Weight-only q4 of every MatMul with a constant 2-D weight (except ``exclude`` node names; or just ``only``).

    Returns the quantized model (the input is modified as well). Deterministic.
    """
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul"]
    excluded = set(exclude)
    if only is not None:
        keep = set(only)
        excluded |= {n for n in matmuls if n not in keep}
    unnamed = [n for n in model.graph.node if n.op_type == "MatMul" and not n.name]
    if unnamed:  # the quantizer keys exclusions by node name
        for i, n in enumerate(unnamed):
            n.name = f"/lfmvl/MatMul_{i}"
        matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul"]

    quantizer = MatMulNBitsQuantizer(
        model, bits=4, block_size=BLOCK_SIZE, is_symmetric=True, accuracy_level=ACCURACY_LEVEL,
        nodes_to_exclude=sorted(excluded),
    )
    bar = _bar(total=sum(1 for n in matmuls if n not in excluded), desc=desc, enabled=progress)
    inner = quantizer.node_quantizer.quantize

    def quantize_node(node, graph_stack):  # type: ignore[no-untyped-def]
        out = inner(node, graph_stack)
        bar.update(1)
        return out

    quantizer.node_quantizer.quantize = quantize_node  # progress per quantized MatMul
    # The quantizer logs one INFO line per node; keep the terminal for the progress bar.
    qlog = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = qlog.level
    qlog.setLevel(max(level, logging.WARNING))
    try:
        quantizer.process()
    finally:
        qlog.setLevel(level)
        bar.close()
    return quantizer.model.model


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and math, float32 graph inputs/outputs (Cast at the edges), as the published fp16 graphs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(
        model, keep_io_types=True, force_fp16_initializers=True, disable_shape_infer=True,
    )


def _bar(total: int, desc: str, enabled: bool):  # type: ignore[no-untyped-def]
    from tqdm.auto import tqdm

    from .. import log

    return tqdm(total=total, desc=desc, unit="MatMul", file=sys.stderr, disable=not (enabled and log.bars_enabled()),
                leave=False)
