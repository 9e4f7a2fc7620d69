"""Deterministic random weights keyed by the transformers ``Lfm2VlForConditionalGeneration`` parameter names.

Each tensor comes from its own generator seeded by ``(seed, crc32(name))``, so any tensor can be made on demand
in any order (the graph builders stream them to disk one at a time) and the same seed always gives the same bytes.
Shapes and layouts are transformers' own (Linear weights ``[out, in]``), so the dict loads into the HF model with
``load_state_dict``; the graph builders transpose where ONNX wants ``[in, out]``.

Scales keep activations O(1): Linear weights ~ N(0, 1/fan_in), norms ~ 1 + N(0, 0.1²), biases small. The residual
branches are given enough weight relative to the token embedding that greedy decoding wanders over many tokens
instead of echoing its input (tied embeddings favour repeating the current token otherwise).

Captions must depend on the image, or token equality in the tests says little about the vision path. With plain
scales the decoder's attention is nearly uniform, so a generated token sees the *mean* of the image tokens, which
is about the same for any two frames; the text then decides the first dozen tokens. Two changes make the image
decide from the first tokens on: the per-head Q/K RMSNorm weights are centred on ``QK_NORM_GAIN`` (sharper
attention that picks out particular image tokens), and the projector's output layer has gain ``IMAGE_GAIN`` (image
rows dominate the residual stream at their positions instead of being washed out by the branches).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from .configs import TOKENIZER_VOCAB_SIZE, mlp_dim

LM = "model.language_model"
VT = "model.vision_tower"
PROJ = "model.multi_modal_projector"

LOW_SPECIALS = 501  # ids 0..500 are special tokens in the real (and the synthetic) tokenizer
HIGH_SPECIALS = 8  # <|cot_start|> ... </think>, the last ids of the synthetic tokenizer
EOS_ID = 7
SPECIAL_ROW_SCALE = 0.25
QK_NORM_GAIN = 3.0
IMAGE_GAIN = 4.0


class SynthWeights(Mapping[str, np.ndarray]):
    """A lazy, read-only mapping ``HF parameter name -> float32 array``; tensors are generated on access."""

    def __init__(self, config: dict[str, Any], seed: int) -> None:
        self.config = config
        self.seed = int(seed)
        self._specs = _specs(config)

    def __getitem__(self, name: str) -> np.ndarray:
        shape, center, scale = self._specs[name]
        scale = float(scale)  # a Python float keeps float32 arithmetic float32
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
        arr = scale * rng.standard_normal(shape, dtype=np.float32)
        if center:  # norm weights: center + noise
            arr = float(center) + arr
        arr = arr.astype(np.float32, copy=False)
        if name == f"{LM}.embed_tokens.weight":
            self._shape_embedding(arr)
        return arr

    def _shape_embedding(self, table: np.ndarray) -> None:
        """Make the tied table favour ordinary tokens, so greedy captions read as text rather than markup."""
        # Rows past the tokenizer's vocabulary (size "full" pads the config vocab to the real 65536) are zero:
        # the tokenizer never produces those ids, and their logit 0 keeps greedy decoding from choosing them.
        live = min(TOKENIZER_VOCAB_SIZE, table.shape[0])
        table[live:] = 0.0
        # Special tokens (ids < 501, and the high specials at the top of the small vocabulary) get small rows and
        # so small logits; eos (7) keeps a full row so generation can stop on its own.
        table[:LOW_SPECIALS] *= SPECIAL_ROW_SCALE
        table[live - HIGH_SPECIALS:live] *= SPECIAL_ROW_SCALE
        table[EOS_ID] /= SPECIAL_ROW_SCALE

    def shape(self, name: str) -> tuple[int, ...]:
        return self._specs[name][0]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)


def make_weights(config: dict[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    """All weights materialised as a dict (tests load it into transformers; fine for tiny/mid sizes)."""
    lazy = SynthWeights(config, seed)
    return {name: lazy[name] for name in lazy}


def _specs(config: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], float, float]]:
    """name -> (shape, center, scale): the tensor is center + scale * N(0, 1)."""
    t, v = config["text_config"], config["vision_config"]
    h, heads, kv = t["hidden_size"], t["num_attention_heads"], t["num_key_value_heads"]
    hd = h // heads
    ff = mlp_dim(t)
    specs: dict[str, tuple[tuple[int, ...], float, float]] = {}

    def linear(name: str, out_f: int, in_f: int, gain: float = 1.0, bias: bool = False) -> None:
        specs[f"{name}.weight"] = ((out_f, in_f), 0.0, gain / np.sqrt(in_f))
        if bias:
            specs[f"{name}.bias"] = ((out_f,), 0.0, 0.02)

    def norm(name: str, dim: int, bias: bool = False, center: float = 1.0) -> None:
        specs[f"{name}.weight"] = ((dim,), center, 0.1)
        if bias:
            specs[f"{name}.bias"] = ((dim,), 0.0, 0.05)

    # Text backbone (Lfm2Model). The embedding is small next to the residual branches (see module docstring).
    specs[f"{LM}.embed_tokens.weight"] = ((t["vocab_size"], h), 0.0, 0.25)
    for i, kind in enumerate(t["layer_types"]):
        p = f"{LM}.layers.{i}"
        if kind == "conv":
            specs[f"{p}.conv.conv.weight"] = ((h, 1, t["conv_L_cache"]), 0.0, 0.6)
            linear(f"{p}.conv.in_proj", 3 * h, h, gain=1.5)
            linear(f"{p}.conv.out_proj", h, h, gain=1.5)
        else:
            linear(f"{p}.self_attn.q_proj", heads * hd, h)
            linear(f"{p}.self_attn.k_proj", kv * hd, h)
            linear(f"{p}.self_attn.v_proj", kv * hd, h, gain=1.5)
            linear(f"{p}.self_attn.out_proj", h, heads * hd, gain=1.5)
            norm(f"{p}.self_attn.q_layernorm", hd, center=QK_NORM_GAIN)
            norm(f"{p}.self_attn.k_layernorm", hd, center=QK_NORM_GAIN)
        norm(f"{p}.operator_norm", h)
        norm(f"{p}.ffn_norm", h)
        linear(f"{p}.feed_forward.w1", ff, h)
        linear(f"{p}.feed_forward.w3", ff, h)
        linear(f"{p}.feed_forward.w2", h, ff, gain=1.5)
    norm(f"{LM}.embedding_norm", h)

    # Vision tower (Siglip2VisionModel without head).
    vh, vff = v["hidden_size"], v["intermediate_size"]
    patch_dim = v["num_channels"] * v["patch_size"] ** 2
    linear(f"{VT}.embeddings.patch_embedding", vh, patch_dim, bias=True)
    specs[f"{VT}.embeddings.position_embedding.weight"] = ((v["num_patches"], vh), 0.0, 0.5)
    for i in range(v["num_hidden_layers"]):
        p = f"{VT}.encoder.layers.{i}"
        norm(f"{p}.layer_norm1", vh, bias=True)
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            linear(f"{p}.self_attn.{proj}", vh, vh, bias=True)
        norm(f"{p}.layer_norm2", vh, bias=True)
        linear(f"{p}.mlp.fc1", vff, vh, bias=True)
        linear(f"{p}.mlp.fc2", vh, vff, bias=True)
    norm(f"{VT}.post_layernorm", vh, bias=True)

    # Projector (no LayerNorm, like the real model).
    unshuffled = vh * config["downsample_factor"] ** 2
    linear(f"{PROJ}.linear_1", config["projector_hidden_size"], unshuffled, bias=True)
    linear(f"{PROJ}.linear_2", h, config["projector_hidden_size"], gain=IMAGE_GAIN, bias=True)
    return specs
