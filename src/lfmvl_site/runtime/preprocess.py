"""RGB(A) uint8 frames -> the vision graph's inputs, reproducing transformers' ``Lfm2VlImageProcessor``.

Reference: transformers 5.24 ``models/lfm2_vl/image_processing_lfm2_vl.py`` (the torchvision backend, i.e. the
"fast" processor) and ``processing_lfm2_vl.py``. Steps, per image:

1. RGB conversion. RGBA is composited onto white, exactly like transformers' ``convert_to_rgb`` with
   ``do_convert_rgb=True`` (numpy and PIL inputs alike; ``PIL.Image.convert("RGB")`` would instead drop alpha,
   which is the same thing for opaque pixels -- webcam frames are always opaque). Without ``do_convert_rgb``
   transformers fails on 4-channel input; we always convert. Grayscale (HxW or HxWx1) is repeated to 3 channels.
2. Tiling decision (``_is_image_too_large``) and ``smart_resize`` with Python's ``round`` (half to even).
3. Large images: grid chosen by aspect ratio (ties resolved as transformers does), resize to the grid, cut
   tiles row-major, thumbnail (``smart_resize`` size of the original) appended after the tiles.
   Others: one resize to the ``smart_resize`` size.
4. Resizing = torchvision ``F.resize(uint8, antialias=True)`` on CPU, i.e. PyTorch's separable uint8 kernel
   (Pillow's algorithm): float64 filter weights (support widened by the scale when shrinking), normalised,
   turned into int16 fixed point at the largest precision that fits, integer accumulation with rounding,
   clamped to 0..255; width pass first, then height, uint8 in between; an unchanged side is skipped.
   Bilinear (``resample`` 2, triangle filter) and bicubic (3, Keys a = -0.5) are supported; others are refused.
5. ``(x - mean*255) / (std*255)`` in float32 (transformers' fused rescale+normalize), 16x16 patches flattened
   HWC (768 floats), zero-padded to ``max_num_patches``; mask 1 for real patches; spatial_shapes in patches.
   Deviation: when an extreme aspect ratio (10000x3) yields more patches than ``max_num_patches``, transformers
   returns unpadded patches with a mismatched 1024-long mask; we pad to the longest item with a matching mask.
6. ``ImageLayout`` per image for the prompt's placeholder expansion (see its docstring for rows/cols).

Resizes are gathers over a few taps per output pixel with cached tap tables (a webcam repeats one size), so the
cost is linear in the image size; no per-pixel Python loops. Dense weight-matrix matmuls were rejected: they cost
in x out per line and float32 cannot hold the fixed-point sums exactly. Output is bit-identical in CPython and
Pyodide (same integer arithmetic), and equal to transformers on AVX2/AVX512/Arm CPUs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from ..errors import ContractError, InputError

__all__ = ["ImageInputs", "ImageLayout", "ProcessorConfig", "preprocess", "resize_uint8"]

# PIL resample codes that transformers maps to torchvision modes we reproduce.
_RESAMPLE_CODES = {"bilinear": 2, "bicubic": 3}


def _as_int(d: Mapping[str, Any], key: str, default: int, minimum: int = 1) -> int:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < minimum:
        raise ContractError(
            f"processor_config.json: {key}={value!r} must be an integer >= {minimum}; fix the file or re-download it."
        )
    return int(value)


def _as_float(d: Mapping[str, Any], key: str, default: float) -> float:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ContractError(f"processor_config.json: {key}={value!r} must be a positive number; fix the file.")
    return float(value)


def _as_bool(d: Mapping[str, Any], key: str, default: bool) -> bool:
    value = d.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ContractError(f"processor_config.json: {key}={value!r} must be true or false; fix the file.")
    return value


def _as_triple(d: Mapping[str, Any], key: str, default: tuple[float, float, float]) -> tuple[float, float, float]:
    value = d.get(key, default)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value] * 3
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 3
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    ):
        raise ContractError(f"processor_config.json: {key}={value!r} must be a list of 3 numbers; fix the file.")
    return (float(value[0]), float(value[1]), float(value[2]))


def _as_resample(value: Any) -> int:
    if isinstance(value, str) and value.strip().lower() in _RESAMPLE_CODES:
        return _RESAMPLE_CODES[value.strip().lower()]
    if isinstance(value, int) and not isinstance(value, bool) and value in _RESAMPLE_CODES.values():
        return value
    raise ContractError(
        f"processor_config.json: resample={value!r} is not supported; only 2 (bilinear) and 3 (bicubic) are "
        "reproduced. Use a model whose processor resamples bilinearly (LFM2.5-VL does)."
    )


@dataclass(frozen=True)
class ProcessorConfig:
    """Every image-processing parameter of ``processor_config.json`` (defaults = transformers' class defaults)."""

    do_image_splitting: bool = True
    min_tiles: int = 2
    max_tiles: int = 10
    use_thumbnail: bool = True
    min_image_tokens: int = 64
    max_image_tokens: int = 256
    encoder_patch_size: int = 16
    downsample_factor: int = 2
    tile_size: int = 512
    max_pixels_tolerance: float = 2.0
    resample: int = 2
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProcessorConfig:
        """Build from ``json.loads(processor_config.json)``: flat, or nested under ``"image_processor"``.

        Keys transformers ignores here (``size``, ``do_resize``, ``max_num_patches``, ...) are ignored too:
        transformers recomputes ``max_num_patches`` from the token and tile budgets (see :attr:`max_num_patches`).
        """
        if not isinstance(d, Mapping):
            raise ContractError("processor_config.json must hold a JSON object; re-download the model files.")
        inner = d.get("image_processor", d)
        if not isinstance(inner, Mapping):
            raise ContractError("processor_config.json: 'image_processor' must be a JSON object; fix the file.")
        if inner.get("do_pad", True) is False:
            raise ContractError(
                "processor_config.json: do_pad=false is not supported; the vision graph needs padded patches "
                "and pixel_attention_mask. Set do_pad to true."
            )
        default = cls()
        cfg = cls(
            do_image_splitting=_as_bool(inner, "do_image_splitting", default.do_image_splitting),
            min_tiles=_as_int(inner, "min_tiles", default.min_tiles),
            max_tiles=_as_int(inner, "max_tiles", default.max_tiles),
            use_thumbnail=_as_bool(inner, "use_thumbnail", default.use_thumbnail),
            min_image_tokens=_as_int(inner, "min_image_tokens", default.min_image_tokens),
            max_image_tokens=_as_int(inner, "max_image_tokens", default.max_image_tokens),
            encoder_patch_size=_as_int(inner, "encoder_patch_size", default.encoder_patch_size),
            downsample_factor=_as_int(inner, "downsample_factor", default.downsample_factor),
            tile_size=_as_int(inner, "tile_size", default.tile_size),
            max_pixels_tolerance=_as_float(inner, "max_pixels_tolerance", default.max_pixels_tolerance),
            resample=_as_resample(inner.get("resample", default.resample)),
            do_rescale=_as_bool(inner, "do_rescale", default.do_rescale),
            rescale_factor=_as_float(inner, "rescale_factor", default.rescale_factor),
            do_normalize=_as_bool(inner, "do_normalize", default.do_normalize),
            image_mean=_as_triple(inner, "image_mean", default.image_mean),
            image_std=_as_triple(inner, "image_std", default.image_std),
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Refuse parameter combinations transformers would reject or mis-handle."""
        if self.do_image_splitting and self.min_tiles > self.max_tiles:
            raise ContractError(
                f"processor_config.json: min_tiles={self.min_tiles} > max_tiles={self.max_tiles}; fix the file."
            )
        if self.tile_size % self.encoder_patch_size:
            # transformers cannot cut such a tile into patches either (its reshape fails).
            raise ContractError(
                f"processor_config.json: tile_size={self.tile_size} is not a multiple of encoder_patch_size="
                f"{self.encoder_patch_size}, so a tile cannot be cut into patches; fix the file."
            )
        if self.do_image_splitting and self.min_tiles < 1:
            raise ContractError(f"processor_config.json: min_tiles={self.min_tiles}; a grid needs at least 1 tile, fix the file.")
        if self.do_normalize and min(self.image_std) <= 0:
            raise ContractError("processor_config.json: image_std values must be positive; fix the file.")

    @property
    def max_num_patches(self) -> int:
        """Padded patch count per tile, computed as transformers' ``_preprocess`` does (1024 for LFM2.5-VL)."""
        thumb = self.max_image_tokens * self.downsample_factor**2
        tile = (self.tile_size // self.encoder_patch_size) ** 2 if self.do_image_splitting else 0
        return max(thumb, tile)

    @property
    def tile_tokens(self) -> int:
        """``<image>`` tokens per full tile (256 for 512-px tiles)."""
        side = -(-(self.tile_size // self.encoder_patch_size) // self.downsample_factor)
        return side * side


@dataclass(frozen=True)
class ImageLayout:
    """What prompt expansion needs for one image, reproducing transformers' placeholder string exactly.

    ``rows`` = tile grid HEIGHT (number of tile rows), ``cols`` = tile grid WIDTH (tiles per row); both 0 when the
    image was not split. Tiles are stacked row-major (the first ``cols`` tiles are the top row), and transformers
    5.24 labels them in that same order: ``for r in 1..rows: for c in 1..cols: <|img_row_r_col_c|>`` followed by
    ``tile_tokens`` ``<image>``; then, if ``image_tokens`` > 0, ``<|img_thumbnail|>`` + ``image_tokens``
    ``<image>``. (Older transformers swapped the two in the labels; 5.24 does not, and its ``image_rows`` output
    is the grid height.) When not split: ``image_tokens`` ``<image>`` with no labels.
    """

    rows: int
    cols: int
    tile_tokens: int
    image_tokens: int

    @property
    def split(self) -> bool:
        return self.rows > 0

    @property
    def total_tokens(self) -> int:
        """All ``<image>`` tokens of this image (= rows the vision graph returns for it)."""
        return self.rows * self.cols * self.tile_tokens + self.image_tokens


@dataclass
class ImageInputs:
    """The vision graph's feeds for a batch of images (tiles of all images stacked in order) and their layouts."""

    pixel_values: np.ndarray  # float32 [T, N, 3 * patch * patch]
    pixel_attention_mask: np.ndarray  # int64 [T, N]; N = max_num_patches, more only for extreme aspect ratios
    spatial_shapes: np.ndarray  # int64 [T, 2] (patch rows, patch cols)
    layouts: list[ImageLayout]

    @property
    def num_tokens(self) -> int:
        return sum(layout.total_tokens for layout in self.layouts)


# ---------------------------------------------------------------------------------------------------------------
# Geometry (pure Python, exact transformers arithmetic)


def _round_by_factor(number: float, factor: int) -> int:
    return round(number / factor) * factor  # Python round: half to even, as transformers


def smart_resize(height: int, width: int, cfg: ProcessorConfig) -> tuple[int, int]:
    """(new_height, new_width) of a single image or thumbnail: multiples of patch*downsample within the budget."""
    f = cfg.encoder_patch_size * cfg.downsample_factor
    min_px = cfg.min_image_tokens * f * f
    max_px = cfg.max_image_tokens * f * f
    h_bar = max(f, _round_by_factor(height, f))
    w_bar = max(f, _round_by_factor(width, f))
    if h_bar * w_bar > max_px:
        beta = math.sqrt((height * width) / max_px)
        h_bar = max(f, math.floor(height / beta / f) * f)
        w_bar = max(f, math.floor(width / beta / f) * f)
    elif h_bar * w_bar < min_px:
        beta = math.sqrt(min_px / (height * width))
        h_bar = math.ceil(height * beta / f) * f
        w_bar = math.ceil(width * beta / f) * f
    return h_bar, w_bar


def is_too_large(height: int, width: int, cfg: ProcessorConfig) -> bool:
    """transformers' ``_is_image_too_large`` (note: clamps to the patch size, not patch*downsample)."""
    f = cfg.encoder_patch_size * cfg.downsample_factor
    h_bar = max(cfg.encoder_patch_size, _round_by_factor(height, f))
    w_bar = max(cfg.encoder_patch_size, _round_by_factor(width, f))
    return h_bar * w_bar > cfg.max_image_tokens * f * f * cfg.max_pixels_tolerance


@lru_cache(maxsize=16)
def target_ratios(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """Candidate (grid_width, grid_height), built exactly as transformers does.

    The order inside one area comes from ``set`` iteration and decides some exact ties, so the same expression
    is used (tuple hashing of small ints is deterministic in CPython and Pyodide).
    """
    ratios = [
        (w, h)
        for n in range(min_tiles, max_tiles + 1)
        for w in range(1, n + 1)
        for h in range(1, n + 1)
        if min_tiles <= w * h <= max_tiles
    ]
    return sorted(set(ratios), key=lambda x: x[0] * x[1])


def grid_for(height: int, width: int, cfg: ProcessorConfig) -> tuple[int, int]:
    """(grid_width, grid_height): closest aspect ratio; on an exact tie a later candidate wins if the image is
    larger than half its target area."""
    aspect = width / height
    area = width * height
    best_diff = float("inf")
    best = (1, 1)
    for ratio in target_ratios(cfg.min_tiles, cfg.max_tiles):
        diff = abs(aspect - ratio[0] / ratio[1])
        if diff < best_diff:
            best_diff = diff
            best = ratio
        elif diff == best_diff and area > 0.5 * (cfg.tile_size * cfg.tile_size * ratio[0] * ratio[1]):
            best = ratio
    return best


@dataclass(frozen=True)
class _Plan:
    grid: tuple[int, int] | None  # (grid_width, grid_height) when split
    thumb: tuple[int, int] | None  # (h, w) of the single image / thumbnail; None when split without thumbnail
    layout: ImageLayout


def _tokens_for(h: int, w: int, cfg: ProcessorConfig) -> int:
    p, df = cfg.encoder_patch_size, cfg.downsample_factor
    return -(-(h // p) // df) * -(-(w // p) // df)


@lru_cache(maxsize=64)
def plan_image(height: int, width: int, cfg: ProcessorConfig) -> _Plan:
    """Everything about one image that depends only on its size (cached: a webcam repeats one size)."""
    new_h, new_w = smart_resize(height, width, cfg)
    # As transformers: min_tiles == max_tiles == 1 means no splitting at all.
    splitting = cfg.do_image_splitting and not cfg.min_tiles == cfg.max_tiles == 1
    if splitting and is_too_large(height, width, cfg):
        gw, gh = grid_for(height, width, cfg)
        if gw * gh == 1:
            # transformers resizes the image to one tile, adds no thumbnail and counts placeholders from the
            # smart-resize size: the model only runs when the two token counts agree.
            tokens = _tokens_for(new_h, new_w, cfg)
            if tokens != cfg.tile_tokens:
                raise InputError(
                    f"this {width}x{height} image gets a 1x1 tile grid ({cfg.tile_tokens} features) but "
                    f"{tokens} placeholders in transformers' processor, so the model cannot run on it; "
                    "set min_tiles >= 2 in processor_config.json or resize the image"
                )
            return _Plan((1, 1), None, ImageLayout(rows=0, cols=0, tile_tokens=cfg.tile_tokens, image_tokens=tokens))
        thumb = (new_h, new_w) if cfg.use_thumbnail else None
        tokens = _tokens_for(new_h, new_w, cfg) if thumb else 0
        return _Plan((gw, gh), thumb, ImageLayout(rows=gh, cols=gw, tile_tokens=cfg.tile_tokens, image_tokens=tokens))
    layout = ImageLayout(rows=0, cols=0, tile_tokens=cfg.tile_tokens, image_tokens=_tokens_for(new_h, new_w, cfg))
    return _Plan(None, (new_h, new_w), layout)


# ---------------------------------------------------------------------------------------------------------------
# Resizing: PyTorch's uint8 antialiased separable kernel


def _triangle(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _keys_cubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


_FILTERS = {2: (_triangle, 2), 3: (_keys_cubic, 4)}


@lru_cache(maxsize=64)
def _taps(in_size: int, out_size: int, resample: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Source indices [K, out], int32 fixed-point weights [K, out] and their precision for one axis.

    Same float64 arithmetic, in the same order, as PyTorch's ``_compute_indices_min_size_weights_aa`` and
    ``_compute_index_ranges_int16_weights`` (the precision is global over the axis, as there).
    """
    filt, interp_size = _FILTERS[resample]
    scale = in_size / out_size
    support = (interp_size * 0.5) * scale if scale >= 1.0 else interp_size * 0.5
    max_k = int(math.ceil(support)) * 2 + 1
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    center = scale * (np.arange(out_size, dtype=np.float64) + 0.5)
    xmin = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)
    xsize = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin
    xsize = np.clip(xsize, 0, max_k)
    k_used = int(xsize.max()) if out_size else 0
    weights = np.zeros((max(k_used, 1), out_size), dtype=np.float64)
    total = np.zeros(out_size, dtype=np.float64)
    for j in range(k_used):  # sequential sum, like the C++ loop
        valid = j < xsize
        w = filt(((j + xmin).astype(np.float64) - center + 0.5) * invscale)
        w = np.where(valid, w, 0.0)
        weights[j] = w
        total += w
    nonzero = total != 0.0
    weights[:, nonzero] /= total[nonzero]
    weights[:, ~nonzero] = 0.0
    wt_max = float(weights.max()) if weights.size else 0.0
    precision = 0
    while precision < 22 and int(0.5 + wt_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    scaled = weights * float(1 << precision)
    fixed = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int32)
    idx = np.minimum(xmin[None, :] + np.arange(fixed.shape[0])[:, None], in_size - 1)
    idx = np.where(fixed != 0, idx, np.minimum(xmin, in_size - 1)[None, :])
    return idx.astype(np.intp), fixed, precision


@lru_cache(maxsize=64)
def _byte_taps(in_size: int, out_size: int, resample: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Width-pass taps at byte level for a [H, W*C] view: indices [K, out*C] and weights [K, out*C]."""
    idx, fixed, _ = _taps(in_size, out_size, resample)
    chan = np.arange(channels, dtype=np.intp)
    byte_idx = (idx[:, :, None] * channels + chan).reshape(idx.shape[0], -1)
    return byte_idx, np.repeat(fixed, channels, axis=1)


def _resample_axis(img: np.ndarray, axis: int, out_size: int, resample: int) -> np.ndarray:
    """Resize axis 0 (rows) or 1 (columns) of a C-contiguous uint8 [H, W, C] array (fixed point, round, clamp).

    Each tap is one gather plus one multiply-add over the output, so the cost is ~K passes over it (K = taps per
    output pixel: 2-3 when enlarging, about 2*scale+1 when shrinking). Everything runs on 2-D views with a long
    last axis so each ufunc call has long inner loops. Gathers: ``np.take`` of whole rows for the height pass;
    fancy indexing with byte indices for the width pass (the fastest column gather in Pyodide's numpy, where
    ``np.take`` along axis 1 is ~10x slower).
    """
    idx, fixed, precision = _taps(img.shape[axis], out_size, resample)
    h, w, c = img.shape
    if axis == 0:
        shape, flat = (out_size, w, c), (out_size, w * c)
        weights = fixed[:, :, None]
        src = img.reshape(h, w * c)
    else:
        shape, flat = (h, out_size, c), (h, out_size * c)
        idx, weights = _byte_taps(w, out_size, resample, c)
        src = img.reshape(h, w * c)
    acc = np.empty(flat, dtype=np.int32)
    tmp = np.empty(flat, dtype=np.int32)
    for k in range(fixed.shape[0]):
        if axis == 0:
            used = np.flatnonzero(fixed[k])
            if k > 0 and 2 * used.size < out_size:  # a tap few output rows reach (edge of the support)
                acc[used] += src[idx[k, used]] * weights[k, used]
                continue
            rows = np.take(src, idx[k], axis=0)
        else:
            rows = src[:, idx[k]]
        if k == 0:
            np.multiply(rows, weights[k], out=acc)
        else:
            np.multiply(rows, weights[k], out=tmp)
            acc += tmp
    acc += 1 << (precision - 1)  # rounding constant (PyTorch starts the sum with it; integer sums commute)
    acc >>= precision  # arithmetic shift = floor, as _mm_srai_epi32
    np.clip(acc, 0, 255, out=acc)
    return acc.astype(np.uint8).reshape(shape)


def resize_uint8(img: np.ndarray, out_h: int, out_w: int, resample: int = 2) -> np.ndarray:
    """Antialiased resize of a uint8 HxWxC array, equal to torchvision ``F.resize(..., antialias=True)`` on CPU."""
    out = np.ascontiguousarray(img)
    if out_w != out.shape[1]:  # width pass first, over every input row, as PyTorch does
        out = _resample_axis(out, 1, out_w, resample)
    if out_h != out.shape[0]:
        out = _resample_axis(out, 0, out_h, resample)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Input conversion and normalisation


@lru_cache(maxsize=1)
def _alpha_lut() -> np.ndarray:
    """[alpha, value] -> composited uint8, in torchvision's float32 arithmetic (to_dtype, blend, to_dtype)."""
    v = np.arange(256, dtype=np.float32) * np.float32(1.0 / 255)
    a = v[:, None]
    blended = v[None, :] * a + (np.float32(1.0) - a)
    return (blended * np.float32(255 + 1.0 - 1e-3)).astype(np.uint8)


def to_rgb(image: Any) -> np.ndarray:
    """Validate one frame and return it as C-contiguous uint8 HxWx3 (alpha composited onto white)."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"an image must be a numpy array, got {type(image).__name__}; decode it to uint8 RGB first.")
    if image.dtype != np.uint8:
        raise InputError(
            f"an image must be uint8 (0..255), got dtype {image.dtype}; convert it, e.g. "
            "np.clip(x * 255, 0, 255).round().astype(np.uint8) for floats in [0, 1]."
        )
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise InputError(
            f"an image must be HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA), got shape {tuple(image.shape)}."
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"an image must be at least 1x1 pixels, got {image.shape[0]}x{image.shape[1]}.")
    channels = image.shape[2]
    if channels == 1:
        return np.ascontiguousarray(np.repeat(image, 3, axis=2))
    if channels == 4:
        alpha = image[:, :, 3]
        if alpha.min() == 255:  # opaque (every webcam frame): drop alpha, one plane at a time (fast strided copy)
            rgb = np.empty(image.shape[:2] + (3,), dtype=np.uint8)
            for c in range(3):
                rgb[:, :, c] = image[:, :, c]
            return rgb
        return _alpha_lut()[alpha[:, :, None], image[:, :, :3]]
    return np.ascontiguousarray(image)


@lru_cache(maxsize=8)
def _normalizer(cfg: ProcessorConfig) -> tuple[Any, Any, Any]:
    """(subtract, divide, multiply) float32 operands, scalars or per-channel, reproducing transformers' float32
    arithmetic: fused rescale+normalize is ``(x - mean/rescale) / (std/rescale)`` with mean/rescale computed in
    float32; rescale alone is ``x * rescale``. None = skip the step."""

    def operand(values: tuple[float, float, float], factor: np.float32) -> Any:
        arr = np.asarray(values, dtype=np.float32) * factor
        return arr[0] if arr[0] == arr[1] == arr[2] else arr  # the patch vector is (py, px, c): c fastest

    if cfg.do_normalize:
        factor = np.float32(1.0 / cfg.rescale_factor) if cfg.do_rescale else np.float32(1.0)
        return operand(cfg.image_mean, factor), operand(cfg.image_std, factor), None
    if cfg.do_rescale:
        return None, None, np.float32(cfg.rescale_factor)
    return None, None, None


def _normalize_into(out: np.ndarray, patches: np.ndarray, cfg: ProcessorConfig) -> None:
    """Write normalised float32 values of uint8 ``patches`` [..., p*p*3] into ``out`` (same shape)."""
    sub, div, mul = _normalizer(cfg)
    reps = patches.shape[-1] // 3
    if sub is not None:
        np.subtract(patches, sub if np.ndim(sub) == 0 else np.tile(sub, reps), out=out)
        np.divide(out, div if np.ndim(div) == 0 else np.tile(div, reps), out=out)
    elif mul is not None:
        np.multiply(patches, mul, out=out)
    else:
        out[...] = patches


def _patchify(img: np.ndarray, tiles_h: int, tiles_w: int, p: int) -> np.ndarray:
    """uint8 [tiles_h*th, tiles_w*tw, 3] -> [tiles, patches, p*p*3]: tiles row-major, patches row-major, HWC."""
    h, w, c = img.shape
    nph, npw = h // tiles_h // p, w // tiles_w // p
    x = img.reshape(tiles_h, nph, p, tiles_w, npw, p, c).transpose(0, 3, 1, 4, 2, 5, 6)
    return x.reshape(tiles_h * tiles_w, nph * npw, p * p * c)


# ---------------------------------------------------------------------------------------------------------------


def preprocess(images: Sequence[np.ndarray], cfg: ProcessorConfig) -> ImageInputs:
    """Turn frames (uint8 HxWx3 RGB / HxWx4 RGBA / HxW gray, any size) into the vision graph's inputs.

    Tiles of all images are stacked in order, each zero-padded to ``cfg.max_num_patches`` patches (1024), or to
    the longest item when an extreme aspect ratio (e.g. 10000x3: one 29536x32 image, 3692 patches) exceeds it.
    Raises :class:`InputError` for anything that is not such an array.
    """
    if isinstance(images, np.ndarray):
        images = [images]
    if len(images) == 0:
        raise InputError("no image given; pass a list with at least one uint8 RGB array.")
    p = cfg.encoder_patch_size
    groups: list[tuple[np.ndarray, int, int]] = []  # (uint8 patches [t, n, 3p²], patch rows, patch cols)
    layouts: list[ImageLayout] = []
    for image in images:
        rgb = to_rgb(image)
        plan = plan_image(rgb.shape[0], rgb.shape[1], cfg)
        if plan.grid is not None:
            gw, gh = plan.grid
            big = resize_uint8(rgb, cfg.tile_size * gh, cfg.tile_size * gw, cfg.resample)
            side = cfg.tile_size // p
            groups.append((_patchify(big, gh, gw, p), side, side))
        if plan.thumb is not None:
            th, tw = plan.thumb
            small = resize_uint8(rgb, th, tw, cfg.resample)
            groups.append((_patchify(small, 1, 1, p), th // p, tw // p))
        layouts.append(plan.layout)

    total = sum(g[0].shape[0] for g in groups)
    # Extreme aspect ratios (e.g. 10000x3) give a single image with more patches than max_num_patches;
    # transformers then leaves pixel_values unpadded (3692 patches) but returns a 1024-long all-ones mask.
    # We pad every tile to the longest instead, so the mask always matches pixel_values.
    max_np = max([cfg.max_num_patches] + [g[0].shape[1] for g in groups])
    dim = p * p * 3
    pixel_values = np.zeros((total, max_np, dim), dtype=np.float32)
    mask = np.zeros((total, max_np), dtype=np.int64)
    shapes = np.zeros((total, 2), dtype=np.int64)
    t = 0
    for patches, nph, npw in groups:
        n_tiles, n_patches = patches.shape[:2]
        _normalize_into(pixel_values[t : t + n_tiles, :n_patches], patches, cfg)
        mask[t : t + n_tiles, :n_patches] = 1
        shapes[t : t + n_tiles] = (nph, npw)
        t += n_tiles
    return ImageInputs(pixel_values=pixel_values, pixel_attention_mask=mask, spatial_shapes=shapes, layouts=layouts)
