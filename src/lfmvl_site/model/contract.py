"""The graphs' I/O contract: what the runtime feeds and reads (design doc §1), checked before anything is written.

The same contract holds for both published layouts (LFM2.5-VL-1.6B-ONNX and -450M-ONNX name their files
differently, runtime/layout.py, but expose the same I/O names); the dimensions come from config.json.

:func:`check_io` works on :class:`~lfmvl_site.runtime.backend.TensorInfo` lists, so a host that reads I/O from
its backend can reuse it; :func:`graph_io` reads them from an ONNX proto (onnx imported lazily).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ContractError
from ..runtime.backend import Dim, TensorInfo
from ..runtime.layout import ROLES

if TYPE_CHECKING:  # pragma: no cover
    import onnx


_CONV_IN = re.compile(r"past_conv\.(\d+)$")
_KV_IN = re.compile(r"past_key_values\.(\d+)\.(key|value)$")
_CONV_OUT = re.compile(r"present_conv\.(\d+)$")
_KV_OUT = re.compile(r"present\.(\d+)\.(key|value)$")

# onnx TensorProto.DataType -> numpy dtype name (the ones a graph of this model may expose).
_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 11: "float64",
                16: "bfloat16"}


def graph_io(model: onnx.ModelProto) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """Inputs (minus initializers) and outputs of an ONNX model as TensorInfo lists."""
    inits = {t.name for t in model.graph.initializer}

    def info(vi: Any) -> TensorInfo:
        tt = vi.type.tensor_type
        dims: list[Dim] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or None)
        return TensorInfo(vi.name, _ONNX_DTYPES.get(tt.elem_type, f"onnx-type-{tt.elem_type}"), tuple(dims))

    inputs = [info(v) for v in model.graph.input if v.name not in inits]
    outputs = [info(v) for v in model.graph.output]
    return inputs, outputs


def io_to_json(infos: Sequence[TensorInfo]) -> list[dict[str, Any]]:
    """The manifest form of an I/O list: ``[{"name", "dtype", "shape"}]``."""
    return [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in infos]


def check_io(
    role: str,
    inputs: Sequence[TensorInfo],
    outputs: Sequence[TensorInfo],
    *,
    file: str | Path,
    hidden_size: int | None = None,
    layer_types: Sequence[str] | None = None,
) -> None:
    """Raise :class:`ContractError` naming ``file`` and the difference when a graph's I/O is not what the runtime drives.

    ``hidden_size``/``layer_types`` (from config.json's text_config) are checked when given.
    """
    if role not in ROLES:
        raise ContractError(f"{file}: unknown graph role {role!r}; expected one of {', '.join(ROLES)}.")
    problems: list[str] = []
    {"embed_tokens": _embed_tokens, "embed_images": _embed_images, "decoder": _decoder}[role](
        list(inputs), list(outputs), problems, hidden_size, layer_types
    )
    if problems:
        raise ContractError(
            f"{file} ({role}) does not match the graph contract the runtime drives: " + "; ".join(problems)
            + ". Use a published LFM2.5-VL ONNX export (1.6B or 450M; design doc §1) or fix the export."
        )


def check_model(role: str, model: onnx.ModelProto, *, file: str | Path, hidden_size: int | None = None,
                layer_types: Sequence[str] | None = None) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """:func:`check_io` on an ONNX proto; returns its (inputs, outputs)."""
    inputs, outputs = graph_io(model)
    check_io(role, inputs, outputs, file=file, hidden_size=hidden_size, layer_types=layer_types)
    return inputs, outputs


def _expect(problems: list[str], what: str, t: TensorInfo | None, dtype: str, rank: int,
            last: int | None = None, *, name: str | None = None) -> None:
    if t is None:
        problems.append(f"missing {what}" + (f" {name!r}" if name else ""))
        return
    if t.dtype != dtype:
        problems.append(f"{what} {t.name!r} is {t.dtype}, expected {dtype}")
    if len(t.shape) != rank:
        problems.append(f"{what} {t.name!r} has rank {len(t.shape)} {list(t.shape)}, expected rank {rank}")
    elif last is not None and isinstance(t.shape[-1], int) and t.shape[-1] != last:
        problems.append(f"{what} {t.name!r} has last dim {t.shape[-1]}, expected {last}")


def _by_name(infos: list[TensorInfo]) -> dict[str, TensorInfo]:
    return {t.name: t for t in infos}


def _unexpected(problems: list[str], kind: str, names: Sequence[str], allowed: set[str]) -> None:
    extra = [n for n in names if n not in allowed]
    if extra:
        problems.append(f"unexpected {kind} {', '.join(map(repr, extra))} (the runtime would not feed them)")


def _embed_tokens(inputs: list[TensorInfo], outputs: list[TensorInfo], problems: list[str],
                  hidden: int | None, _lt: Any) -> None:
    ins = _by_name(inputs)
    _expect(problems, "input", ins.get("input_ids"), "int64", 2, name="input_ids")
    _unexpected(problems, "input", [t.name for t in inputs], {"input_ids"})
    outs = _by_name(outputs)
    _expect(problems, "output", outs.get("inputs_embeds"), "float32", 3, hidden, name="inputs_embeds")


def _embed_images(inputs: list[TensorInfo], outputs: list[TensorInfo], problems: list[str],
                  hidden: int | None, _lt: Any) -> None:
    ins = _by_name(inputs)
    _expect(problems, "input", ins.get("pixel_values"), "float32", 3, 768, name="pixel_values")
    _expect(problems, "input", ins.get("pixel_attention_mask"), "int64", 2, name="pixel_attention_mask")
    _expect(problems, "input", ins.get("spatial_shapes"), "int64", 2, 2, name="spatial_shapes")
    _unexpected(problems, "input", [t.name for t in inputs], {"pixel_values", "pixel_attention_mask", "spatial_shapes"})
    # The runtime reads the image features by position (the name drifted across exporter versions).
    _expect(problems, "output #0 (image features)", outputs[0] if outputs else None, "float32", 2, hidden)


def _decoder(inputs: list[TensorInfo], outputs: list[TensorInfo], problems: list[str],
             hidden: int | None, layer_types: Sequence[str] | None) -> None:
    ins, outs = _by_name(inputs), _by_name(outputs)
    _expect(problems, "input", ins.get("inputs_embeds"), "float32", 3, hidden, name="inputs_embeds")
    _expect(problems, "input", ins.get("attention_mask"), "int64", 2, name="attention_mask")
    if "position_ids" in ins:  # older exports only; optional
        _expect(problems, "input", ins["position_ids"], "int64", 2)
    _expect(problems, "output", outs.get("logits"), "float32", 3, name="logits")
    if "next_token" in outs:  # in-graph greedy argmax (model/optimize.py)
        _expect(problems, "output", outs["next_token"], "int64", 1)
    if "next_tokens" in outs:  # ... and per kept position, for draft verification
        _expect(problems, "output", outs["next_tokens"], "int64", 2)

    conv_layers: set[int] = set()
    kv_layers: dict[int, set[str]] = {}
    allowed = {"inputs_embeds", "attention_mask", "position_ids"}
    for t in inputs:
        if m := _CONV_IN.match(t.name):
            conv_layers.add(int(m.group(1)))
            _expect(problems, "input", t, "float32", 3, None)
            present = f"present_conv.{m.group(1)}"
            _expect(problems, "output", outs.get(present), "float32", 3, name=present)
            allowed.add(t.name)
        elif m := _KV_IN.match(t.name):
            kv_layers.setdefault(int(m.group(1)), set()).add(m.group(2))
            _expect(problems, "input", t, "float32", 4)
            present = f"present.{m.group(1)}.{m.group(2)}"
            _expect(problems, "output", outs.get(present), "float32", 4, name=present)
            allowed.add(t.name)
    _unexpected(problems, "input", [t.name for t in inputs], allowed)
    for layer, parts in sorted(kv_layers.items()):
        if parts != {"key", "value"}:
            problems.append(f"layer {layer} has past_key_values {sorted(parts)} only, expected key and value")
    # Every present_* output needs its past_* input, or the cache could not be carried.
    for t in outputs:
        if (m := _CONV_OUT.match(t.name)) and int(m.group(1)) not in conv_layers:
            problems.append(f"output {t.name!r} has no input past_conv.{m.group(1)}")
        elif (m := _KV_OUT.match(t.name)) and int(m.group(1)) not in kv_layers:
            problems.append(f"output {t.name!r} has no input past_key_values.{m.group(1)}.{m.group(2)}")
    if conv_layers & set(kv_layers):
        problems.append(f"layers {sorted(conv_layers & set(kv_layers))} have both conv and KV caches")
    if layer_types is not None:
        want_conv = {i for i, k in enumerate(layer_types) if k == "conv"}
        want_kv = {i for i, k in enumerate(layer_types) if k != "conv"}
        if conv_layers != want_conv or set(kv_layers) != want_kv:
            problems.append(
                f"cache layers conv={sorted(conv_layers)} attention={sorted(kv_layers)} differ from config.json "
                f"layer_types conv={sorted(want_conv)} attention={sorted(want_kv)}"
            )
