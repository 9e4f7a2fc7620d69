"""The published file layouts of the LFM2.5-VL ONNX repos: which ``onnx/*.onnx`` file serves each graph role.

Both layouts carry the same three graphs with the same I/O names; only the file stems differ:

| layout | repo | embed_tokens | embed_images | decoder |
| --- | --- | --- | --- | --- |
| ``1.6b`` | LiquidAI/LFM2.5-VL-1.6B-ONNX | ``embed_tokens`` | ``embed_images`` | ``decoder`` |
| ``450m`` | LiquidAI/LFM2.5-VL-450M-ONNX | ``embed_tokens`` | ``vision_encoder`` | ``decoder_model_merged`` |

A precision adds a suffix to the stem (fp32 none, ``_fp16``, ``_q4``, ``_q8``); each graph keeps its weights in
``<file>.onnx_data`` (+ ``_1``, ``_2``... past 2 GiB) beside it. The layout is recognised from the files present.
Pure Python: the native backend and the build both read it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from ..errors import ModelFileError

ROLES = ("embed_tokens", "embed_images", "decoder")
DEFAULT_LAYOUT = "1.6b"
LAYOUTS: dict[str, dict[str, str]] = {
    "1.6b": {"embed_tokens": "embed_tokens", "embed_images": "embed_images", "decoder": "decoder"},
    "450m": {"embed_tokens": "embed_tokens", "embed_images": "vision_encoder", "decoder": "decoder_model_merged"},
}
#: File-name suffix of each precision.
SUFFIXES = {"fp32": "", "fp16": "_fp16", "q4": "_q4", "q8": "_q8"}

# Roles whose stem tells the layouts apart (embed_tokens is the same in both).
_TELLING = ("embed_images", "decoder")


def graph_file(role: str, precision: str = "fp32", layout: str = DEFAULT_LAYOUT) -> str:
    """``onnx/<stem><suffix>.onnx`` of ``role`` at ``precision`` in ``layout``."""
    suffix = SUFFIXES.get(precision, f"_{precision}")
    return f"onnx/{LAYOUTS[layout][role]}{suffix}.onnx"


def _variant_pattern(stem: str) -> re.Pattern[str]:
    # "<stem>.onnx" or "<stem>_<tag>.onnx" with a one-word tag, so "decoder" does not match "decoder_model_merged".
    return re.compile(rf"{re.escape(stem)}(?:_[a-z0-9]+)?\.onnx")


def detect_layout(onnx_names: Iterable[str], where: str) -> str:
    """The layout whose own graph files (vision encoder / decoder stems) are among ``onnx_names`` (names in onnx/).

    A graph missing from the recognised layout is left for the caller to report by name. Raises ModelFileError
    listing what was found when no layout's files, or both layouts' files, are there.
    """
    names = sorted(set(onnx_names))
    fits = [
        layout for layout, stems in LAYOUTS.items()
        if any(_variant_pattern(stems[role]).fullmatch(n) for role in _TELLING for n in names)
    ]
    if len(fits) == 1:
        return fits[0]
    found = ", ".join(names) if names else "nothing"
    if not fits:
        raise ModelFileError(f"{where} has neither published file layout: found {found} in onnx/. Expected "
                             f"{expected_files()}; point it at a LFM2.5-VL ONNX model.")
    raise ModelFileError(f"{where} holds graphs of both published layouts (found {found} in onnx/); keep one model "
                         "per directory.")


def probe_layout(exists: Callable[[str], bool], where: str) -> str:
    """The layout of a source that can only answer "is this relpath there?" (a hub repo): the first layout one of
    whose own graph files exists, in any precision."""
    for layout, stems in LAYOUTS.items():
        if any(exists(f"onnx/{stems[role]}{suffix}.onnx") for role in _TELLING for suffix in SUFFIXES.values()):
            return layout
    raise ModelFileError(f"{where} has neither published file layout: none of {expected_files()} is there; "
                         "is it a LFM2.5-VL ONNX repo?")


def expected_files() -> str:
    """Both layouts in words, for error messages."""
    return " or ".join(
        "onnx/" + "*.onnx + onnx/".join(stems[r] for r in ROLES) + f"*.onnx ({layout})" for layout, stems in LAYOUTS.items()
    )
