"""Synthetic LFM2.5-VL models with the published LFM2.5-VL ONNX layouts and contract.

``write_model(dir, seed=..., size=..., layout=...)`` writes config/processor/generation JSON, the tokenizer files and
the three fp32 graphs, each with ``<stem>.onnx_data``: ``onnx/embed_tokens``, ``onnx/embed_images``, ``onnx/decoder``
in the 1.6B layout, ``onnx/embed_tokens``, ``onnx/vision_encoder``, ``onnx/decoder_model_merged`` in the 450M one
(runtime/layout.py). Built with numpy + onnx only and byte-identical for a given seed. ``make_weights(config, seed)``
returns the same weights keyed by transformers parameter names, so tests can load them into
``Lfm2VlForConditionalGeneration``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import BuildError, InputError
from ..runtime.layout import LAYOUTS
from .configs import DEFAULT_LAYOUT_OF_SIZE, GENERATION_CONFIG, PRESETS, PROCESSOR_CONFIG, TOKENIZER_VOCAB_SIZE, model_config
from .text_graphs import build_decoder, build_embed_tokens
from .vision_graph import build_embed_images
from .weights import SynthWeights, make_weights

__all__ = ["write_model", "make_weights", "model_config", "SynthWeights", "PRESETS", "TOKENIZER_VOCAB_SIZE", "LAYOUTS"]

log = logging.getLogger(__name__)


def write_model(out_dir: Path, *, seed: int = 0, size: str = "tiny", layout: str | None = None,
                vocab_size: int | None = None) -> Path:
    """Write a synthetic model directory at ``out_dir`` and return its path.

    ``layout`` is ``"1.6b"`` or ``"450m"`` (default: the layout of the model whose dimensions ``size`` has; the
    tiny/mid sizes use the 1.6B one). The directory is built next to ``out_dir`` and renamed into place, so a failed
    build leaves nothing behind. ``out_dir`` must not exist or be empty. ``vocab_size`` overrides the size's
    embedding / lm_head rows (e.g. the real 65,536 at tiny dimensions, for a site carrying the real tokenizer).
    """
    out_dir = Path(out_dir)
    config = model_config(size)  # validates `size`
    if vocab_size is not None:
        if vocab_size < TOKENIZER_VOCAB_SIZE:
            raise InputError(f"vocab_size {vocab_size} is below the synthetic tokenizer's {TOKENIZER_VOCAB_SIZE} entries.")
        config["text_config"]["vocab_size"] = vocab_size
    layout = DEFAULT_LAYOUT_OF_SIZE[size] if layout is None else layout
    if layout not in LAYOUTS:
        raise InputError(f"Unknown file layout {layout!r}; use one of: {', '.join(LAYOUTS)}.")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"{out_dir} already exists and is not an empty directory; pick a new path or delete it first.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; give the final directory normal permissions
    try:
        _write_into(tmp, config, seed=seed, stems=LAYOUTS[layout])
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        tmp.rename(out_dir)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise BuildError(f"Could not write the synthetic model to {out_dir}: {exc}. Check the path and free space.") from exc
        raise
    return out_dir


def _write_into(root: Path, config: dict[str, Any], *, seed: int, stems: dict[str, str]) -> None:
    _write_json(root / "config.json", config)
    _write_json(root / "generation_config.json", GENERATION_CONFIG)
    _write_json(root / "processor_config.json", PROCESSOR_CONFIG)
    _write_tokenizer(root)

    weights = SynthWeights(config, seed)  # lazy: each tensor is made when a graph builder asks for it
    onnx_dir = root / "onnx"
    onnx_dir.mkdir()
    for role, build in (("embed_tokens", build_embed_tokens), ("embed_images", build_embed_images),
                        ("decoder", build_decoder)):
        log.info("building onnx/%s.onnx", stems[role])
        build(weights, config, onnx_dir, stems[role])


def _write_tokenizer(root: Path) -> None:
    from .tokenizer_files import write_tokenizer_files

    written = write_tokenizer_files(root, vocab_size=TOKENIZER_VOCAB_SIZE)
    if written != TOKENIZER_VOCAB_SIZE:  # the embedding table and lm_head are sized from this number
        raise BuildError(f"The synthetic tokenizer has {written} ids, expected {TOKENIZER_VOCAB_SIZE}; fix "
                         "synth/tokenizer_files.py.")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
