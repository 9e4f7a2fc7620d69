"""Where onnxruntime-web put each node, checked against the graphs the page ran.

The WebGPU EP has no int64 kernels, so shape and index arithmetic (the exporter's Split of spatial_shapes, the
Gather/Concat/Reshape plumbing of any graph) runs on the CPU by design. What must not fall back is compute: any
node that reads a floating-point tensor. The op type alone cannot tell the two apart (a Split of int64 shapes is
plumbing, a Split of activations is compute), so each node the EP rejected is looked up in the graph by name and
its input types read from the graph itself.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import onnx

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
# Compress has no WebGPU kernel; it selects rows of a float tensor by a bool mask and computes nothing.
FLOAT_OK_ON_CPU = {"Compress"}
_REJECTED = re.compile(r"kernel not found in registries for Op type: (\w+)(?: node name: (\S*))?")


def _float_readers(onnx_dir: Path) -> dict[str, tuple[str, bool]]:
    """node name -> (op type, whether it reads a floating-point tensor), over every graph in ``onnx_dir``."""
    out: dict[str, tuple[str, bool]] = {}
    for path in sorted(onnx_dir.glob("*.onnx")):
        model = onnx.load(str(path), load_external_data=False)
        with contextlib.suppress(Exception):  # best effort: without it, the declared types are used
            model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        g = model.graph
        types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
        types.update({t.name: t.data_type for t in g.initializer})
        for node in g.node:
            if node.op_type == "Constant":
                continue
            reads_float = any(types.get(i) in FLOAT_TYPES for i in node.input if i)
            out.setdefault(node.name, (node.op_type, reads_float))
    return out


def assert_compute_on_gpu(console: list[str], onnx_dir: Path) -> set[str]:
    """Every session put its nodes on WebGPU except integer plumbing; returns the op types that fell back."""
    placement = [line for line in console if "VerifyEachNodeIsAssignedToAnEp" in line]
    assert sum("placed on [WebGpuExecutionProvider]" in line for line in placement) >= 3, placement
    assert not any("All nodes placed on [CPUExecutionProvider]" in line for line in placement)
    nodes = _float_readers(onnx_dir)
    fallen: set[str] = set()
    compute: list[str] = []
    for line in console:
        m = _REJECTED.search(line)
        if not m:
            continue
        op, name = m.group(1), m.group(2)
        fallen.add(op)
        if name is None:
            raise AssertionError(f"the placement log names no node, cannot check it: {line!r}")
        known = nodes.get(name)
        assert known is not None, f"{op} node {name!r} fell back to the CPU but is in none of {onnx_dir}'s graphs"
        if known[1] and op not in FLOAT_OK_ON_CPU:
            compute.append(f"{op} {name}")
    assert not compute, f"compute ops on the CPU (they read floating-point tensors): {compute}"
    return fallen
