"""Bytes a generation step reads: weights per generated token and logits per prefill, from graphs or from shapes.

``python benchmarks/measure.py [DIST_MODEL_DIR]`` prints the figures for the real LFM2.5-VL-1.6B (from the
design doc's shapes) and, given a built ``dist/model``, for its graphs.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import onnx

# LFM2.5-VL-1.6B text backbone (design doc §4.1, §4.3).
REAL = {"hidden": 2048, "vocab": 65536, "ff": 8192, "kv_dim": 512, "conv_layers": 10, "attn_layers": 6, "layers": 16,
        "conv_kernel_bytes": 245_760, "norm_bytes": 270_336}
Q4_BYTES_PER_WEIGHT = 0.5 + 4 / 32  # 4-bit code + one fp32 scale per block of 32, no zero points
PROMPTS = {"640x480 webcam frame (256 image + ~30 text tokens)": 286, "2x2 tiles + thumbnail (~1,300 tokens)": 1300}


def _nbytes(t: onnx.TensorProto) -> int:
    import numpy as np
    from onnx import helper

    if t.HasField("raw_data"):
        return len(t.raw_data)
    if t.external_data:
        return int({e.key: e.value for e in t.external_data}["length"])
    n = int(np.prod(t.dims)) if len(t.dims) else 1
    return n * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize


def decode_weight_bytes(model: onnx.ModelProto) -> int:
    """Weight bytes one decode step (one new token) reads from a graph.

    Every initializer counts in full, except lookup tables: a Gather's data and GroupQueryAttention's
    cos/sin caches (inputs 7 and 8) are read one row per token.
    """
    sizes = {t.name: (_nbytes(t), list(t.dims)) for t in model.graph.initializer}
    row_only: set[str] = set()
    for n in model.graph.node:
        if n.op_type == "Gather" and n.input[0] in sizes:
            row_only.add(n.input[0])
        if n.op_type == "GroupQueryAttention":
            row_only |= {i for i in n.input[7:9] if i in sizes}
    total = 0
    for name, (size, dims) in sizes.items():
        total += size // dims[0] if name in row_only and dims and dims[0] else size
    return total


def real_model_figures() -> dict[str, Any]:
    """Per-token weight bytes and logits bytes of the real 1.6B decoder, computed from its shapes."""
    r = REAL
    h, v, ff, kv = r["hidden"], r["vocab"], r["ff"], r["kv_dim"]
    linear = (r["layers"] * 3 * h * ff + r["conv_layers"] * (h * 3 * h + h * h)
              + r["attn_layers"] * (2 * h * h + 2 * h * kv))
    head = v * h
    small = r["conv_kernel_bytes"] + r["norm_bytes"]
    per_token = {
        "published q4 (fp32 lm_head)": int(linear * Q4_BYTES_PER_WEIGHT + head * 4 + small),
        "q4 + q4 lm_head": int(linear * Q4_BYTES_PER_WEIGHT + head * Q4_BYTES_PER_WEIGHT + small),
        "fp16 decoder": int(linear * 2 + head * 2 + small),
    }
    logits = {
        name: {"all positions (published)": s * v * 4, "last position (last_logits)": v * 4, "next_token (argmax)": 8}
        for name, s in PROMPTS.items()
    }
    return {"linear_weights": linear, "lm_head_weights": head, "decoder_weight_bytes_per_token": per_token,
            "embed_tokens_bytes_per_token": {"fp32": h * 4, "fp16": h * 2},
            "logits_bytes_per_prefill": logits, "logits_bytes_per_decode_step": {"logits row": v * 4, "next_token": 8}}


def built_model_figures(root: Path) -> dict[str, Any]:
    """Per-token weight bytes of every graph variant in a built ``dist/model``."""
    import onnx

    manifest = json.loads((root / "manifest.json").read_text())
    out: dict[str, Any] = {}
    for variants in manifest["graphs"].values():
        for v in variants:
            model = onnx.load(str(root / v["file"]), load_external_data=False)
            out[v["file"]] = decode_weight_bytes(model)
    return out


# The published tokenizer.json (../shared/fixtures/lfm2.5-vl-1.6b: byte-identical to the hub's), plus the small
# configs and chat template every choice downloads too.
TOKENIZER_BYTES = 4_733_040
CONFIG_BYTES = 20_000
_FLOAT_BYTES = {"fp32": 4, "fp16": 2}


def _graph_bytes(shapes: list[tuple[str, tuple[int, ...]]], precision: str) -> int:
    """Weight bytes of a graph: q4 packs every 2-D Linear weight (4-bit codes + an fp32 scale per block of 32,
    as model/quantize.py writes them; the rest stays fp32), fp16/fp32 store everything at that width."""
    total = 0.0
    for name, shape in shapes:
        n = math.prod(shape)
        tables = ("embed_tokens.weight", "position_embedding.weight")  # lookups: no MatMul to quantize
        linear = len(shape) == 2 and name.endswith(".weight") and not name.endswith(tables)
        if precision == "q4":
            total += n * Q4_BYTES_PER_WEIGHT if linear else n * 4
        else:
            total += n * _FLOAT_BYTES[precision]
    return int(total)


def graph_sizes(size: str) -> dict[str, dict[str, int]]:
    """Bytes of each graph (role → precision → bytes) of a model of the dimensions ``size`` (synth sizes: "full" =
    the real 1.6B, "450m" the real 450M), computed from the parameter shapes (synth/weights.py: the transformers
    checkpoint's names and shapes) and the decoder's constant rotary caches. Graph structure (node definitions)
    is left out: tens of KB per graph."""
    from lfmvl_site.synth.configs import model_config
    from lfmvl_site.synth.weights import LM, _specs

    config = model_config(size)
    t = config["text_config"]
    specs = [(name, shape) for name, (shape, _, _) in _specs(config).items()]
    embed = [(n, s) for n, s in specs if n == f"{LM}.embed_tokens.weight"]
    vision = [(n, s) for n, s in specs if not n.startswith(LM)]
    head_dim = t["hidden_size"] // t["num_attention_heads"]
    rope = ("rope", (2, int(t["max_position_embeddings"]), head_dim // 2))  # cos and sin caches, float
    decoder = [(n, s) for n, s in specs if n.startswith(LM) and n not in dict(embed)]
    decoder.append(("lm_head.weight", embed[0][1]))  # the tied head: a copy of the table, q4 with --q4-lm-head
    return {
        "embed_tokens": {p: _graph_bytes(embed, p) for p in ("fp32", "fp16")},
        "embed_images": {p: _graph_bytes(vision, p) for p in ("fp32", "fp16", "q4")},
        "decoder": {p: _graph_bytes(decoder, p) + math.prod(rope[1]) * (2 if p == "fp16" else 4)
                    for p in ("fp32", "fp16", "q4")},
    }


def download_sizes(size: str) -> dict[str, dict[str, int]]:
    """Bytes each VISION/DECODER preset downloads per device class (runtime/choices.py's), from :func:`graph_sizes`
    plus the tokenizer and configs."""
    graphs = graph_sizes(size)
    fallback = {"fp16": "q4", "q4": "q4", "fp32": "fp32"}  # without shader-f16 (model/build.py _FALLBACKS)
    shared = TOKENIZER_BYTES + CONFIG_BYTES
    out: dict[str, dict[str, int]] = {}
    for preset in ("q4/q4", "fp16/q4", "fp16/fp16"):
        v, d = preset.split("/")
        full = graphs["embed_tokens"]["fp16"] + graphs["embed_images"][v] + graphs["decoder"][d]
        no_f16 = (graphs["embed_tokens"]["fp32"] + graphs["embed_images"][fallback[v]]
                  + graphs["decoder"][fallback[d]])
        out[preset] = {"webgpu-f16": shared + full, "webgpu": shared + no_f16, "wasm": shared + full}
    return out


def main(argv: list[str]) -> None:
    print(json.dumps(real_model_figures(), indent=1))
    print(json.dumps({size: download_sizes(size) for size in ("450m", "full")}, indent=1))
    for arg in argv:
        print(json.dumps(built_model_figures(Path(arg)), indent=1))


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
