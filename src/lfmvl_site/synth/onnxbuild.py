"""A small ONNX graph builder that streams large initializers straight into one external-data file.

Writing each weight to ``<stem>.onnx_data`` as soon as it is made keeps peak memory at about one tensor, so the
"full" (1.6B) synthetic model builds without holding gigabytes. The layout matches what
``onnx.save_model(..., save_as_external_data=True, all_tensors_to_one_file=True, size_threshold=1024)`` produces:
tensors of at least 1024 bytes live in the data file, smaller ones stay inline.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper

SIZE_THRESHOLD = 1024  # bytes; smaller tensors stay inside the .onnx file
ALIGN = 64  # start every external tensor on a 64-byte boundary (harmless, mmap-friendly)
SPLIT_BYTES = 2 * 1024**3  # one external-data file stays within 2 GiB (browsers and ORT-web need that)
OPSETS = (("", 21), ("com.microsoft", 1))
IR_VERSION = 10

_NP_TO_ONNX = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.int64): TensorProto.INT64,
    np.dtype(np.int32): TensorProto.INT32,
}

Dim = int | str
"""A graph I/O dimension: a fixed size or a symbolic name such as ``"batch_size"``."""


class GraphBuilder:
    """Collects nodes, I/O and initializers of one graph; big initializers go to ``data_file`` on the spot."""

    def __init__(self, name: str, data_path: Path) -> None:
        self.name = name
        self.data_path = data_path
        self._data: BinaryIO = open(data_path, "wb")  # noqa: SIM115 - closed in save()
        self._part = 0  # data files past 2 GiB continue in <stem>.onnx_data_1, _2, ... as in the published export
        self._part_name = data_path.name
        self._offset = 0
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.initializers: list[TensorProto] = []
        self._counter = 0

    # -- I/O ---------------------------------------------------------------------------------------------------
    def input(self, name: str, dtype: int, shape: Sequence[Dim]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, dtype, list(shape)))
        return name

    def output(self, name: str, dtype: int, shape: Sequence[Dim]) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, dtype, list(shape)))

    # -- initializers ------------------------------------------------------------------------------------------
    def const(self, name: str, value: np.ndarray | Sequence[int] | int | float, dtype: Any = None) -> str:
        """Add an initializer (written to the data file when >= 1024 bytes) and return its name."""
        arr = np.asarray(value, dtype=dtype)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        if not arr.flags.c_contiguous:  # (np.ascontiguousarray would turn a 0-d scalar into shape [1])
            arr = np.ascontiguousarray(arr)
        tensor = TensorProto(name=name, data_type=_NP_TO_ONNX[arr.dtype], dims=list(arr.shape))
        raw = arr.tobytes()
        if len(raw) >= SIZE_THRESHOLD:
            if self._offset and self._offset + len(raw) > SPLIT_BYTES:
                self._next_part()
            pad = (-self._offset) % ALIGN
            if pad:
                self._data.write(b"\0" * pad)
                self._offset += pad
            self._data.write(raw)
            tensor.data_location = TensorProto.EXTERNAL
            for key, val in (("location", self._part_name), ("offset", str(self._offset)), ("length", str(len(raw)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, val
            self._offset += len(raw)
        else:
            tensor.raw_data = raw
        self.initializers.append(tensor)
        return name

    def _next_part(self) -> None:
        self._data.close()
        self._part += 1
        self._part_name = f"{self.data_path.name}_{self._part}"
        self._data = open(self.data_path.with_name(self._part_name), "wb")  # noqa: SIM115 - closed in save()
        self._offset = 0

    def ints(self, *values: int) -> str:
        """A small anonymous int64 vector constant (shapes, axes, indices)."""
        return self.const(self._fresh("c"), np.array(values, dtype=np.int64))

    def scalar(self, value: float | int, dtype: Any = np.float32) -> str:
        return self.const(self._fresh("c"), np.array(value, dtype=dtype))

    # -- nodes -------------------------------------------------------------------------------------------------
    def op(self, op_type: str, inputs: Sequence[str], *, outputs: int | Sequence[str] = 1, domain: str = "",
           name: str | None = None, **attrs: Any) -> Any:
        """Append a node; returns its output name (or a list when several outputs are asked for)."""
        node_name = name or self._fresh(op_type)
        if isinstance(outputs, int):
            outs = [f"{node_name}/out{i}" if outputs > 1 else f"{node_name}/out" for i in range(outputs)]
        else:
            outs = list(outputs)
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=node_name, domain=domain or None, **attrs))
        return outs[0] if len(outs) == 1 else outs

    def _fresh(self, prefix: str) -> str:
        self._counter += 1
        return f"/{self.name}/{prefix}_{self._counter}"

    # -- output ------------------------------------------------------------------------------------------------
    def save(self, onnx_path: Path) -> None:
        """Close the data file and write the model proto (IR 10, ai.onnx 21 + com.microsoft 1)."""
        self._data.close()
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid(domain, version) for domain, version in OPSETS],
            ir_version=IR_VERSION,
            producer_name="lfmvl-site synth",
        )
        onnx_path.write_bytes(model.SerializeToString())
