"""Size presets and the JSON configs of a synthetic model (config.json, generation_config.json, processor_config.json).

config.json is a genuine transformers ``Lfm2VlConfig`` dict, so ``Lfm2VlConfig.from_pretrained(dir)`` and
``Lfm2VlForConditionalGeneration(config)`` work on it; the graph builders read their dimensions from the same dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import InputError

# The LFM2-1.2B / LFM2.5-VL-1.6B layer pattern: attention at 2, 5, 8, 10, 12, 14; short-conv elsewhere.
REAL_LAYER_TYPES = [
    "full_attention" if i in (2, 5, 8, 10, 12, 14) else "conv" for i in range(16)
]

# Vocabulary of the small byte-level BPE tokenizer written beside every synthetic model
# (tokenizer_files.write_tokenizer_files builds exactly this many ids, specials included).
TOKENIZER_VOCAB_SIZE = 1024
REAL_VOCAB_SIZE = 65536


@dataclass(frozen=True)
class SizePreset:
    """Dimensions of one synthetic size."""

    vocab_size: int
    hidden: int
    block_ff_dim: int  # config `intermediate_size`; the MLP uses 2/3 of it rounded up to `block_multiple_of`
    block_multiple_of: int
    heads: int
    kv_heads: int
    layer_types: tuple[str, ...]
    max_positions: int
    v_hidden: int
    v_ff: int
    v_layers: int
    v_heads: int
    projector_hidden: int


PRESETS: dict[str, SizePreset] = {
    # Test fixture: builds in well under a second; both layer kinds, GQA with 2 query heads per kv head.
    "tiny": SizePreset(
        vocab_size=TOKENIZER_VOCAB_SIZE, hidden=64, block_ff_dim=192, block_multiple_of=64, heads=4, kv_heads=2,
        layer_types=("conv", "conv", "full_attention", "conv", "full_attention", "conv"), max_positions=8192,
        v_hidden=32, v_ff=64, v_layers=2, v_heads=2, projector_hidden=64,
    ),
    # Benchmarks: the real 16-layer pattern at ~1/3 width and the real 65,536-id vocabulary (so lm_head
    # costs show), a few hundred MB of fp32 weights.
    "mid": SizePreset(
        vocab_size=REAL_VOCAB_SIZE, hidden=768, block_ff_dim=2304, block_multiple_of=256, heads=12, kv_heads=4,
        layer_types=tuple(REAL_LAYER_TYPES), max_positions=128000,
        v_hidden=384, v_ff=1536, v_layers=6, v_heads=6, projector_hidden=768,
    ),
    # The real LFM2.5-VL-1.6B dimensions (design doc section 4), random weights.
    "full": SizePreset(
        vocab_size=REAL_VOCAB_SIZE, hidden=2048, block_ff_dim=12288, block_multiple_of=256, heads=32, kv_heads=8,
        layer_types=tuple(REAL_LAYER_TYPES), max_positions=128000,
        v_hidden=1152, v_ff=4304, v_layers=27, v_heads=16, projector_hidden=2048,
    ),
    # The real LFM2.5-VL-450M dimensions (its config.json: LFM2-350M text model, SigLIP2 NaFlex base vision tower),
    # random weights. Same 16-layer pattern as the 1.6B.
    "450m": SizePreset(
        vocab_size=REAL_VOCAB_SIZE, hidden=1024, block_ff_dim=6656, block_multiple_of=256, heads=16, kv_heads=8,
        layer_types=tuple(REAL_LAYER_TYPES), max_positions=128000,
        v_hidden=768, v_ff=3072, v_layers=12, v_heads=12, projector_hidden=2048,
    ),
}

#: The file layout each size is written in unless asked otherwise (runtime/layout.py has the layouts).
DEFAULT_LAYOUT_OF_SIZE = {"tiny": "1.6b", "mid": "1.6b", "full": "1.6b", "450m": "450m"}


def preset(size: str) -> SizePreset:
    try:
        return PRESETS[size]
    except KeyError:
        raise InputError(f"Unknown synthetic model size {size!r}; use one of: {', '.join(PRESETS)}.") from None


def model_config(size: str = "tiny") -> dict[str, Any]:
    """The config.json dict (an ``Lfm2VlConfig``) of a synthetic model of this size."""
    p = preset(size)
    text = {
        "model_type": "lfm2",
        "vocab_size": p.vocab_size,
        "hidden_size": p.hidden,
        "intermediate_size": p.block_ff_dim,
        "num_hidden_layers": len(p.layer_types),
        "num_attention_heads": p.heads,
        "num_key_value_heads": p.kv_heads,
        "max_position_embeddings": p.max_positions,
        "norm_eps": 1e-5,
        "conv_bias": False,
        "conv_L_cache": 3,
        "block_multiple_of": p.block_multiple_of,
        "block_ffn_dim_multiplier": 1.0,
        "block_auto_adjust_ff_dim": True,
        "layer_types": list(p.layer_types),
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        "bos_token_id": 1,
        "eos_token_id": 7,
        "pad_token_id": 0,
        "tie_word_embeddings": True,
        "use_cache": True,
        "initializer_range": 0.02,
    }
    vision = {
        "model_type": "siglip2_vision_model",
        "hidden_size": p.v_hidden,
        "intermediate_size": p.v_ff,
        "num_hidden_layers": p.v_layers,
        "num_attention_heads": p.v_heads,
        "num_channels": 3,
        "patch_size": 16,
        "num_patches": 256,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "attention_dropout": 0.0,
        "vision_use_head": False,
    }
    return {
        "model_type": "lfm2_vl",
        "architectures": ["Lfm2VlForConditionalGeneration"],
        "text_config": text,
        "vision_config": vision,
        "image_token_id": 396,
        "projector_hidden_act": "gelu",
        "projector_hidden_size": p.projector_hidden,
        "projector_bias": True,
        "projector_use_layernorm": False,
        "downsample_factor": 2,
        "tie_word_embeddings": True,
        "dtype": "float32",
    }


def mlp_dim(text: dict[str, Any]) -> int:
    """The SwiGLU width Lfm2MLP derives from the config (2/3 of block_ff_dim, rounded up to block_multiple_of)."""
    dim = int(text["intermediate_size"])
    if text.get("block_auto_adjust_ff_dim", True):
        dim = int(2 * dim / 3)
        mult = text.get("block_ffn_dim_multiplier")
        if mult is not None:
            dim = int(mult * dim)
            m = int(text["block_multiple_of"])
            dim = m * ((dim + m - 1) // m)
    return dim


GENERATION_CONFIG: dict[str, Any] = {"bos_token_id": 1, "eos_token_id": 7, "pad_token_id": 0}

# The real model's processing values (design doc sections 3.1 and 8.3), in the layout transformers writes for a
# processor: processor-level keys at the top, the image processor's under "image_processor".
PROCESSOR_CONFIG: dict[str, Any] = {
    "processor_class": "Lfm2VlProcessor",
    "use_image_special_tokens": True,
    "image_processor": {
        "image_processor_type": "Lfm2VlImageProcessorFast",
        "do_image_splitting": True,
        "min_tiles": 2,
        "max_tiles": 10,
        "tile_size": 512,
        "encoder_patch_size": 16,
        "downsample_factor": 2,
        "min_image_tokens": 64,
        "max_image_tokens": 256,
        "max_num_patches": 1024,
        "use_thumbnail": True,
        "max_pixels_tolerance": 2.0,
        "do_resize": True,
        "size": {"height": 512, "width": 512},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_pad": True,
        "do_convert_rgb": True,
        "return_row_col_info": False,
    },
}
