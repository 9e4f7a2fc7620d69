"""Save an ONNX model with its weights split at tensor boundaries into ``<stem>.onnx_data``, ``<stem>.onnx_data_1``, ...

Each shard holds whole tensors and is at most ``max_shard_bytes`` long, unless one tensor alone is larger (it
then gets a shard of its own: ORT maps every tensor to one range of one file, so tensors are never cut).
Output is deterministic: tensors are laid out in graph order and the proto is serialized deterministically.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import onnx

SIZE_THRESHOLD = 1024  # smaller tensors stay inline in the .onnx, as in the published export
ALIGN = 64  # tensor offsets inside a shard are 64-byte aligned (cheap; lets hosts view data without copying)


def data_file_name(stem: str, index: int) -> str:
    """Name of shard ``index`` of graph ``stem`` (the published naming)."""
    return f"{stem}.onnx_data" if index == 0 else f"{stem}.onnx_data_{index}"


def iter_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of a graph in a fixed order: initializers, then node attributes, subgraphs included."""
    import onnx

    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from iter_tensors(g)


def tensor_bytes(t: onnx.TensorProto) -> bytes:
    """The little-endian raw bytes of an in-memory tensor."""
    import onnx
    from onnx import numpy_helper

    if t.data_location == onnx.TensorProto.EXTERNAL:
        raise ValueError(f"tensor {t.name!r} still refers to external data; load the model with its data first")
    if t.HasField("raw_data"):
        return t.raw_data
    return numpy_helper.to_array(t).tobytes()


def save_sharded(model: onnx.ModelProto, onnx_path: Path, *, max_shard_bytes: int,
                 size_threshold: int = SIZE_THRESHOLD) -> list[Path]:
    """Write ``model`` to ``onnx_path`` with external data shards beside it; return the written paths (.onnx first).

    ``model`` must hold all tensor data in memory; it is modified in place (tensors become external references).
    """
    import onnx

    onnx_path = Path(onnx_path)
    stem = onnx_path.stem
    plan: list[tuple[onnx.TensorProto, bytes, int, int]] = []  # tensor, data, shard index, offset
    shard, offset = 0, 0
    for t in iter_tensors(model.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL and _nbytes(t) < size_threshold:
            continue
        data = tensor_bytes(t)
        start = -(-offset // ALIGN) * ALIGN
        if offset > 0 and start + len(data) > max_shard_bytes:
            shard, start = shard + 1, 0
        plan.append((t, data, shard, start))
        offset = start + len(data)

    written = [onnx_path]
    handles: dict[int, object] = {}
    try:
        for t, data, idx, start in plan:
            f = handles.get(idx)
            if f is None:
                path = onnx_path.with_name(data_file_name(stem, idx))
                f = handles[idx] = open(path, "wb")  # noqa: SIM115 - closed below
                written.append(path)
            pad = start - f.tell()  # type: ignore[attr-defined]
            if pad:
                f.write(b"\0" * pad)  # type: ignore[attr-defined]
            f.write(data)  # type: ignore[attr-defined]
            _make_external(t, data_file_name(stem, idx), start, len(data))
    finally:
        for f in handles.values():
            f.close()  # type: ignore[attr-defined]
    onnx_path.write_bytes(model.SerializeToString(deterministic=True))
    return written


def _nbytes(t: onnx.TensorProto) -> int:
    if t.HasField("raw_data"):
        return len(t.raw_data)
    import numpy as np
    from onnx import helper

    n = int(np.prod(t.dims)) if len(t.dims) else 1
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, TypeError):
        itemsize = 1
    return n * itemsize


def _make_external(t: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    import onnx

    for field in ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data"):
        t.ClearField(field)
    t.ClearField("raw_data")
    del t.external_data[:]
    t.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
