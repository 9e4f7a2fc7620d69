"""Options of the model half of ``lfmvl-site build``: one frozen dataclass and its click flags."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import InputError

DEFAULT_REPO_ID = "LiquidAI/LFM2.5-VL-1.6B-ONNX"

VISION_PRECISIONS = ("fp32", "fp16", "q4")
DECODER_PRECISIONS = ("q4", "fp16", "fp32")
EMBED_TOKENS_PRECISIONS = ("fp32", "fp16")
SYNTHETIC_SIZES = ("tiny", "mid", "full", "450m")
# A preset names the precision of the vision encoder and of the decoder, as VISION/DECODER: the seed page's three
# (Q4/Q4 ≈ 1.8 GB for the 1.6B, FP16/Q4, FP16/FP16). A site may carry several; the first is the build's default.
PRESET_PRECISIONS = {"vision": VISION_PRECISIONS, "decoder": DECODER_PRECISIONS}

# Shards are cut at tensor boundaries and capped at this many MiB (2**20 bytes).
# 256 MiB because:
# * the page fetches every shard as one response, stores it in Cache Storage and hands
#   ORT-web one ArrayBuffer per file; ORT-web then copies it into the wasm heap (4 GiB
#   wasm32 address space shared with everything else). Several ~256 MiB buffers are
#   allocated and freed one after another, where one 1.2 GB buffer often fails with
#   "Array buffer allocation failed" / RangeError on Safari, mobile and 32-bit-limited
#   hosts, and a 1.2 GB Cache Storage put is the first thing evicted or rejected by quota;
# * a dropped connection costs one shard, not the whole graph;
# * it is the smallest cap that still holds every tensor of the default preset in one
#   shard: the largest is embed_tokens_fp16's 65536x2048 fp16 table = exactly 256 MiB.
#   (A single larger tensor, e.g. the fp32 lm_head without --q4-lm-head, gets a shard
#   of its own; tensors are never split because ORT maps each one to one file range.)
DEFAULT_MAX_SHARD_MB = 256

Precision = Literal["fp32", "fp16", "q4"]


@dataclass(frozen=True)
class ModelBuildOptions:
    """Where the model comes from, which precision each graph gets, and how it is optimized."""

    repo_id: str = DEFAULT_REPO_ID
    revision: str | None = None
    model_dir: Path | None = None
    synthetic: bool = False
    seed: int = 0
    synthetic_size: str = "tiny"
    vision: str = "fp16"
    decoder: str = "q4"
    embed_tokens: str = "fp16"
    max_shard_mb: int = DEFAULT_MAX_SHARD_MB
    # Browser optimizations (model/optimize.py); defaults justified by tests/test_model_optimize.py.
    last_logits: bool = True
    q4_lm_head: bool = True
    argmax: bool = True
    # Fewer decoder nodes per step (model/fuse.py): exact up to float rounding (docs/ARCHITECTURE.md, Fusion).
    fuse: bool = True
    # q4 decoder matmuls on float activations (model/optimize.py float_activations): drafts verify exactly on WebGPU.
    float_activations: bool = True
    # The vision graph's MultiHeadAttention as standard ops (model/attention.py): off, since real GPUs are right.
    plain_attention: bool = False
    # VISION/DECODER presets shipped (e.g. ("fp16/q4", "q4/q4")); empty: the one preset --vision/--decoder name.
    presets: tuple[str, ...] = ()
    progress: bool = True

    def __post_init__(self) -> None:
        _check_choice("--vision", self.vision, VISION_PRECISIONS)
        _check_choice("--decoder", self.decoder, DECODER_PRECISIONS)
        _check_choice("--embed-tokens", self.embed_tokens, EMBED_TOKENS_PRECISIONS)
        _check_choice("--synthetic-size", self.synthetic_size, SYNTHETIC_SIZES)
        if self.model_dir is not None and self.synthetic:
            raise InputError("--model-dir and --synthetic are exclusive: pick one model source.")
        if not self.repo_id or self.repo_id.count("/") != 1:
            raise InputError(f"--model {self.repo_id!r} is not a Hugging Face repo id: use OWNER/NAME.")
        if self.max_shard_mb < 1:
            raise InputError(f"--max-shard-mb must be at least 1, got {self.max_shard_mb}.")
        if self.model_dir is not None:
            object.__setattr__(self, "model_dir", Path(self.model_dir))
        presets = tuple(dict.fromkeys(str(p).strip().lower() for p in self.presets))
        for name in presets:
            parse_preset(name)
        object.__setattr__(self, "presets", presets)

    @property
    def preset_names(self) -> list[str]:
        """The presets shipped, default first, as VISION/DECODER names."""
        return list(self.presets) or [f"{self.vision}/{self.decoder}"]

    def preset_of(self, name: str) -> dict[str, str]:
        """Precision per graph role of one preset, in manifest order."""
        vision, decoder = parse_preset(name)
        return {"embed_tokens": self.embed_tokens, "embed_images": vision, "decoder": decoder}

    @property
    def preset(self) -> dict[str, str]:
        """Precision per graph role of the default (first) preset, in manifest order."""
        return self.preset_of(self.preset_names[0])

    @property
    def max_shard_bytes(self) -> int:
        return self.max_shard_mb * 2**20

    @property
    def source_kind(self) -> str:
        """``"synthetic"``, ``"local"`` or ``"hub"``."""
        if self.synthetic:
            return "synthetic"
        return "local" if self.model_dir is not None else "hub"


def parse_preset(name: str) -> tuple[str, str]:
    """``"fp16/q4"`` → ``("fp16", "q4")`` (vision, decoder), or :class:`InputError` naming the valid ones."""
    parts = name.split("/")
    if len(parts) != 2 or parts[0] not in VISION_PRECISIONS or parts[1] not in DECODER_PRECISIONS:
        raise InputError(f"--preset {name!r} is not VISION/DECODER: vision one of {', '.join(VISION_PRECISIONS)}, "
                         f"decoder one of {', '.join(DECODER_PRECISIONS)} (e.g. fp16/q4).")
    return parts[0], parts[1]


def _check_choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"{flag} {value!r} is not supported: choose one of {', '.join(choices)}.")


_OPTION_NAMES = (
    "revision", "seed", "vision", "decoder", "embed_tokens", "max_shard_mb", "last_logits", "q4_lm_head", "argmax",
    "fuse", "float_activations", "plain_attention", "presets",
)


def site_models(repo_ids: tuple[str, ...] = (), model_dirs: tuple[Path, ...] = (), synthetic_sizes: tuple[str, ...] = (),
                **shared: Any) -> tuple[ModelBuildOptions, ...]:
    """One :class:`ModelBuildOptions` per model of the site (hub ids, then local directories, then synthetic
    sizes), all with the same precision and optimization options; the hub's default model when none is named."""
    shared = {k: v for k, v in shared.items() if v is not None}
    models = [ModelBuildOptions(repo_id=r, **shared) for r in dict.fromkeys(repo_ids)]
    models += [ModelBuildOptions(model_dir=Path(d), **shared) for d in dict.fromkeys(model_dirs)]
    models += [ModelBuildOptions(synthetic=True, synthetic_size=s, **shared) for s in dict.fromkeys(synthetic_sizes)]
    return tuple(models) or (ModelBuildOptions(**shared),)


def model_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Click decorator: add the model flags to a command and pass ``model_options``, a tuple of
    :class:`ModelBuildOptions` (one per ``--model`` / ``--model-dir`` / ``--synthetic-size``; usually one).

    Usage::

        @main.command()
        @model_options
        def build(model_options: tuple[ModelBuildOptions, ...], ...): ...
    """
    import click

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {name: kwargs.pop(name) for name in _OPTION_NAMES}
        repo_ids, model_dirs = kwargs.pop("repo_id"), kwargs.pop("model_dir")
        synthetic, sizes = kwargs.pop("synthetic"), kwargs.pop("synthetic_size")
        try:
            opts = site_models(repo_ids, model_dirs, (sizes or ("tiny",)) if synthetic else (), **values)
            if sizes and not synthetic:
                raise InputError("--synthetic-size needs --synthetic.")
        except InputError as exc:
            raise click.UsageError(str(exc)) from exc
        return fn(*args, model_options=opts, **kwargs)

    # click applies decorators bottom-up; list them top-down for readable --help.
    decorators = [
        click.option("--model", "repo_id", multiple=True, metavar="REPO_ID",
                     help=f"Hugging Face repo of an ONNX model (default {DEFAULT_REPO_ID}; uses the huggingface_hub "
                          "cache, HF_TOKEN, HF_HUB_OFFLINE). Repeat it (or mix it with --model-dir) for a site that "
                          "offers several models, e.g. the 450M and the 1.6B."),
        click.option("--revision", default=None, help="Branch, tag or commit of --model (default: main)."),
        click.option("--model-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), multiple=True,
                     help="Use a local copy of a model (either published layout) instead of the hub; repeatable."),
        click.option("--synthetic", is_flag=True, help="Use the synthetic tiny model (tests, offline demos)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Weights seed of --synthetic."),
        click.option("--synthetic-size", type=click.Choice(SYNTHETIC_SIZES), multiple=True,
                     help="Size of --synthetic (default tiny; 450m has the 450M's dimensions and file layout); "
                          "repeatable."),
        click.option("--vision", type=click.Choice(VISION_PRECISIONS), default="fp16", show_default=True,
                     help="Precision of the vision encoder (embed_images)."),
        click.option("--decoder", type=click.Choice(DECODER_PRECISIONS), default="q4", show_default=True,
                     help="Precision of the decoder (q4 = symmetric MatMulNBits, block 32, fp32 activations)."),
        click.option("--preset", "presets", multiple=True, metavar="VISION/DECODER",
                     help="A precision preset the page offers, e.g. fp16/q4, q4/q4 or fp16/fp16; repeatable (the "
                          "first is the default). Without it: --vision/--decoder."),
        click.option("--embed-tokens", type=click.Choice(EMBED_TOKENS_PRECISIONS), default="fp16",
                     show_default=True, help="Precision of the token embedding table."),
        click.option("--max-shard-mb", type=click.IntRange(1), default=DEFAULT_MAX_SHARD_MB, show_default=True,
                     help="Split external weights into files of at most this many MiB (at tensor boundaries)."),
        click.option("--last-logits/--no-last-logits", default=True, show_default=True,
                     help="Decoder returns logits for the last position only (exact)."),
        click.option("--q4-lm-head/--no-q4-lm-head", default=True, show_default=True,
                     help="Quantize the decoder's tied lm_head to q4 (embed_tokens stays as chosen)."),
        click.option("--argmax/--no-argmax", default=True, show_default=True,
                     help="Add an in-graph greedy `next_token` output to the decoder."),
        click.option("--fuse/--no-fuse", default=True, show_default=True,
                     help="Fuse decoder nodes (residual Add + RMSNorm, constant conv slices, shared-input "
                          "projections) for fewer GPU dispatches per token (exact up to float rounding)."),
        click.option("--float-activations/--int8-activations", default=True, show_default=True,
                     help="q4 decoder matmuls on float activations (MatMulNBits accuracy_level 0); the published "
                          "level 4 quantizes them to int8 on WebGPU, where multi-row and one-row kernels then "
                          "disagree and speculative drafts stop matching plain greedy decoding."),
        click.option("--plain-attention/--fused-attention", default=False, show_default=True,
                     help="Spell the vision encoder's MultiHeadAttention with MatMul/Softmax: right on software "
                          "WebGPU adapters (SwiftShader), where onnxruntime-web's fused kernel is wrong; slower on GPUs."),
    ]
    for deco in reversed(decorators):
        wrapper = deco(wrapper)
    return wrapper
