"""Per-token byte figures (benchmarks/measure.py: benchmark code, not in the package): the shape arithmetic reproduces
the published file sizes; graph counts match the heads."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import onnx

from lfmvl_site.model import optimize, quantize

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import measure  # noqa: E402  (benchmarks/measure.py)


def test_real_model_figures_reproduce_published_sizes() -> None:
    fig = measure.real_model_figures()
    # decoder_q4.onnx_data is 1,217,650,688 B (design doc §1.1): per-token weights + the fp32 cos/sin caches
    # [128000, 32] x 2, which GroupQueryAttention reads one row of per token.
    assert fig["decoder_weight_bytes_per_token"]["published q4 (fp32 lm_head)"] + 2 * 128000 * 32 * 4 == 1_217_650_688
    assert fig["embed_tokens_bytes_per_token"]["fp16"] * 65536 == 268_435_456  # embed_tokens_fp16.onnx_data
    saved = (fig["decoder_weight_bytes_per_token"]["published q4 (fp32 lm_head)"]
             - fig["decoder_weight_bytes_per_token"]["q4 + q4 lm_head"])
    assert saved == 65536 * 2048 * 4 - 65536 * 2048 * 5 // 8
    webcam = fig["logits_bytes_per_prefill"]["640x480 webcam frame (256 image + ~30 text tokens)"]
    assert webcam["all positions (published)"] == 286 * 65536 * 4 and webcam["last position (last_logits)"] == 65536 * 4


def test_tiny_decoder_bytes_per_token(tiny_model_dir: Path) -> None:
    dec = onnx.load(str(tiny_model_dir / "onnx" / "decoder.onnx"))
    table = next(t for t in dec.graph.initializer if t.name == "model.embed_tokens.weight")
    vocab, hidden = table.dims
    body = quantize.quantize_q4(copy.deepcopy(dec), exclude=[quantize.find_lm_head(dec).name], progress=False)
    both = optimize.q4_lm_head(copy.deepcopy(body))
    before, after = measure.decode_weight_bytes(body), measure.decode_weight_bytes(both)
    assert before - after == vocab * hidden * 4 - (vocab * hidden // 2 + vocab * hidden // 32 * 4)
    print(f"tiny decoder weight bytes per token: fp32 {measure.decode_weight_bytes(dec)}, q4 {before}, "
          f"q4 + q4 lm_head {after}")
