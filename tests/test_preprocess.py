"""Image preprocessing vs transformers' Lfm2VlImageProcessor (torchvision backend) and Lfm2VlProcessor.

Both sides read the same processor_config.json (the tiny model's, which carries the real model's values).
Pixel values must be equal or differ by at most one uint8 step (2/255 after normalisation to [-1, 1]).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from lfmvl_site.errors import ContractError, InputError
from lfmvl_site.runtime.preprocess import ImageLayout, ProcessorConfig, preprocess, resize_uint8, target_ratios

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("torchvision")

ONE_STEP = 2 / 255 + 1e-6

# (height, width, why). Thresholds for the real values: factor 32, smart_resize budget 65536..262144 px on
# round()-ed sizes, "too large" when the round()-ed size exceeds 524288 px, tile 512.
SIZES = [
    (1, 1, "tiny"),
    (2, 3, "tiny"),
    (3, 2, "tiny portrait"),
    (1, 7, "one row"),
    (17, 4097, "thin strip"),
    (4000, 3000, "huge portrait"),
    (3000, 4000, "huge landscape"),
    (10000, 3, "extreme portrait"),
    (3, 10000, "extreme landscape, channel-ambiguous height"),
    (333, 777, "odd"),
    (479, 641, "odd"),
    (1081, 1921, "odd, tiled"),
    (480, 640, "VGA webcam"),
    (720, 1280, "720p: 22.5 rounds to 22"),
    (1080, 1920, "1080p"),
    (48, 80, "round 1.5 -> 2 and 2.5 -> 2, upscaled"),
    (112, 48, "round 3.5 -> 4"),
    (512, 512, "exactly the smart_resize max"),
    (512, 528, "16.5 rounds down: still the max"),
    (512, 544, "just over the smart_resize max"),
    (256, 256, "exactly the smart_resize min"),
    (256, 240, "just under the smart_resize min"),
    (512, 1024, "exactly the too-large threshold: single"),
    (512, 1040, "32.5 rounds down: still single"),
    (512, 1056, "just over the too-large threshold: tiled"),
    (720, 720, "22.5 -> 22: single"),
    (724, 724, "22.6 -> 23: tiled"),
    (600, 1200, "ratio 2 tie, small: (2,1)"),
    (724, 1448, "ratio 2 tie just under half the 4x2 area: (2,1)"),
    (725, 1450, "ratio 2 tie just over half the 4x2 area: (4,2)"),
    (1200, 600, "ratio 1/2 tie, small: (1,2)"),
    (1600, 800, "ratio 1/2 tie, large: (2,4)"),
    (800, 800, "square tie: (2,2)"),
    (1600, 1600, "square tie: (3,3)"),
    (720, 900, "ratio 1.25 midway between 1 and 1.5: (2,2)"),
    (800, 1000, "ratio 1.25 tie past half the 3x2 area: (3,2)"),
    (1200, 1500, "ratio 1.25 tie past half the 3x3 area: (3,3)"),
    (100, 2000, "wide, few tokens"),
    (2000, 100, "tall, few tokens"),
]


@pytest.fixture(scope="module")
def processor_json(tiny_model_dir: Path) -> dict:
    return json.loads((tiny_model_dir / "processor_config.json").read_text())


@pytest.fixture(scope="module")
def cfg(processor_json: dict) -> ProcessorConfig:
    return ProcessorConfig.from_dict(processor_json)


@pytest.fixture(scope="module")
def hf_processor(tiny_model_dir: Path):
    """transformers' full processor (image processor + tokenizer) loaded from the same directory."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(tiny_model_dir))


def _hf_run(hf_processor, image: np.ndarray, **kwargs) -> tuple[dict, str]:
    """HF pixel tensors and the placeholder string it would put in the prompt for this image."""
    out, replacements = hf_processor._process_images(
        [[image]], use_image_special_tokens=True, input_data_format="channels_last", return_row_col_info=True, **kwargs
    )
    return out, replacements[0]


def _placeholder(layout: ImageLayout) -> str:
    """The expansion the prompt code builds from a layout (row loop outside, column loop inside)."""
    parts = ["<|image_start|>"]
    for r in range(1, layout.rows + 1):
        for c in range(1, layout.cols + 1):
            parts.append(f"<|img_row_{r}_col_{c}|>" + "<image>" * layout.tile_tokens)
    if layout.rows and layout.image_tokens:
        parts.append("<|img_thumbnail|>")
    parts.append("<image>" * layout.image_tokens)
    parts.append("<|image_end|>")
    return "".join(parts)


def _assert_same(ours, ref: dict, max_diff: list[float]) -> None:
    pv = ref["pixel_values"].numpy()
    assert ours.pixel_values.dtype == np.float32
    assert ours.pixel_attention_mask.dtype == np.int64
    assert ours.spatial_shapes.dtype == np.int64
    assert ours.pixel_values.shape == pv.shape
    if pv.shape[1] > max(ref["pixel_attention_mask"].shape[1], 1024):
        # Extreme aspect ratio: transformers leaves the patches unpadded and returns a 1024-long all-ones mask
        # that does not match them; ours masks exactly the real patches (all of them here).
        np.testing.assert_array_equal(ours.pixel_attention_mask, np.ones(pv.shape[:2], dtype=np.int64))
    else:
        np.testing.assert_array_equal(ours.pixel_attention_mask, ref["pixel_attention_mask"].numpy())
    np.testing.assert_array_equal(ours.spatial_shapes, ref["spatial_shapes"].numpy())
    diff = float(np.abs(ours.pixel_values - pv).max())
    max_diff.append(diff)
    assert diff <= ONE_STEP, f"pixel values differ by {diff} (> one uint8 step)"


@pytest.fixture(scope="module")
def max_diff_seen():
    seen: list[float] = []
    yield seen
    if seen:
        print(f"\nmax |pixel diff| over {len(seen)} comparisons: {max(seen):.3g}")


@pytest.mark.parametrize(("height", "width", "why"), SIZES, ids=[f"{h}x{w}" for h, w, _ in SIZES])
def test_matches_transformers(height, width, why, cfg, hf_processor, max_diff_seen):
    rng = np.random.default_rng(height * 100003 + width)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    ref, ref_placeholder = _hf_run(hf_processor, image)
    ours = preprocess([image], cfg)
    _assert_same(ours, ref, max_diff_seen)

    (layout,) = ours.layouts
    # Token counts: rows the vision graph returns = sum over tiles of ceil(h/2)*ceil(w/2) patches.
    shapes = ref["spatial_shapes"].numpy()
    df = cfg.downsample_factor
    ref_tokens = sum(math.ceil(h / df) * math.ceil(w / df) for h, w in shapes)
    assert layout.total_tokens == ref_tokens
    assert ref_placeholder.count("<image>") == ref_tokens
    # Grid and labels: the expansion built from the layout is transformers' string, character for character.
    assert _placeholder(layout) == ref_placeholder
    split = layout.rows > 0
    assert split == (len(shapes) > 1)
    if split:
        assert (layout.rows, layout.cols) == (int(ref["image_rows"][0]), int(ref["image_cols"][0]))
        assert len(shapes) == layout.rows * layout.cols + (1 if layout.image_tokens else 0)


def test_grid_labels_for_wide_grid(cfg, hf_processor):
    """A 3-wide, 1-high grid: rows is the grid height, cols the width, labels row_1_col_1..3."""
    image = np.full((600, 1900, 3), 90, dtype=np.uint8)
    (layout,) = preprocess([image], cfg).layouts
    assert (layout.rows, layout.cols) == (1, 3)
    _, ref_placeholder = _hf_run(hf_processor, image)
    labels = re.findall(r"<\|img_row_\d+_col_\d+\|>", ref_placeholder)
    assert labels == ["<|img_row_1_col_1|>", "<|img_row_1_col_2|>", "<|img_row_1_col_3|>"]


def test_several_images_stack_in_order(cfg, hf_processor):
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(300, 500, 3), (900, 1700, 3), (64, 64, 3)]]
    ours = preprocess(images, cfg)
    refs = [_hf_run(hf_processor, im)[0] for im in images]
    assert [layout.total_tokens for layout in ours.layouts] == [
        sum(math.ceil(h / 2) * math.ceil(w / 2) for h, w in r["spatial_shapes"].numpy()) for r in refs
    ]
    pv = np.concatenate([r["pixel_values"].numpy() for r in refs])
    assert ours.pixel_values.shape == pv.shape
    assert float(np.abs(ours.pixel_values - pv).max()) <= ONE_STEP
    np.testing.assert_array_equal(ours.spatial_shapes, np.concatenate([r["spatial_shapes"].numpy() for r in refs]))


def test_rgba_composites_like_transformers(cfg, hf_processor, max_diff_seen):
    """RGBA: transformers (do_convert_rgb) composites onto white; opaque RGBA equals the RGB frame."""
    rng = np.random.default_rng(11)
    rgba = rng.integers(0, 256, (333, 517, 4), dtype=np.uint8)
    rgba[:50, :, 3] = 0
    rgba[50:100, :, 3] = 255
    ref, _ = _hf_run(hf_processor, rgba)
    _assert_same(preprocess([rgba], cfg), ref, max_diff_seen)

    opaque = rgba.copy()
    opaque[..., 3] = 255
    ours = preprocess([opaque], cfg)
    rgb_ref, _ = _hf_run(hf_processor, np.ascontiguousarray(opaque[..., :3]))
    _assert_same(ours, rgb_ref, max_diff_seen)


def test_grayscale_is_repeated(cfg, hf_processor, max_diff_seen):
    rng = np.random.default_rng(12)
    gray = rng.integers(0, 256, (211, 389), dtype=np.uint8)
    ref, _ = _hf_run(hf_processor, np.repeat(gray[:, :, None], 3, axis=2))
    _assert_same(preprocess([gray], cfg), ref, max_diff_seen)
    _assert_same(preprocess([gray[:, :, None]], cfg), ref, max_diff_seen)


def test_non_contiguous_input(cfg, hf_processor, max_diff_seen):
    rng = np.random.default_rng(13)
    base = rng.integers(0, 256, (800, 1300, 3), dtype=np.uint8)
    view = base[::2, ::-1]
    ref, _ = _hf_run(hf_processor, np.ascontiguousarray(view))
    _assert_same(preprocess([view], cfg), ref, max_diff_seen)


@pytest.mark.parametrize(("height", "width"), [(333, 777), (1081, 1921), (2, 3)])
def test_bicubic_config(height, width, processor_json, tiny_model_dir, max_diff_seen):
    from transformers import AutoImageProcessor

    d = json.loads(json.dumps(processor_json))
    d["image_processor"]["resample"] = 3
    cfg3 = ProcessorConfig.from_dict(d)
    assert cfg3.resample == 3
    hf = AutoImageProcessor.from_pretrained(str(tiny_model_dir), resample=3)
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    ref = hf([image], input_data_format="channels_last", return_tensors="pt")
    _assert_same(preprocess([image], cfg3), ref, max_diff_seen)


def test_config_matches_transformers(cfg, processor_json, hf_processor):
    ip = hf_processor.image_processor
    for name in (
        "min_tiles", "max_tiles", "tile_size", "encoder_patch_size", "downsample_factor", "min_image_tokens",
        "max_image_tokens", "use_thumbnail", "max_pixels_tolerance", "do_image_splitting", "max_num_patches",
    ):  # fmt: skip
        assert getattr(cfg, name) == getattr(ip, name), name
    assert cfg.resample == int(ip.resample)
    assert list(cfg.image_mean) == list(ip.image_mean) and list(cfg.image_std) == list(ip.image_std)
    assert target_ratios(cfg.min_tiles, cfg.max_tiles) == ip._target_ratios(cfg.min_tiles, cfg.max_tiles)
    # Flat (image processor only) and nested forms parse to the same config.
    assert ProcessorConfig.from_dict(processor_json["image_processor"]) == cfg


@pytest.mark.parametrize("resample", [0, 1, 4, 5, "lanczos", None, True])
def test_unsupported_resample_is_refused(resample, processor_json):
    d = json.loads(json.dumps(processor_json))
    d["image_processor"]["resample"] = resample
    with pytest.raises(ContractError, match="resample"):
        ProcessorConfig.from_dict(d)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"min_tiles": 0}, "min_tiles"),
        ({"tile_size": 500}, "tile_size"),
        ({"min_tiles": 5, "max_tiles": 3}, "min_tiles"),
        ({"image_mean": [0.5, 0.5]}, "image_mean"),
        ({"do_pad": False}, "do_pad"),
        ({"max_pixels_tolerance": "2"}, "max_pixels_tolerance"),
    ],
)
def test_bad_config_is_refused(patch, message, processor_json):
    d = json.loads(json.dumps(processor_json))
    d["image_processor"].update(patch)
    with pytest.raises(ContractError, match=message):
        ProcessorConfig.from_dict(d)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((10, 10, 3), dtype=np.float32), "uint8"),
        (np.zeros((10, 10, 3), dtype=np.int16), "uint8"),
        (np.zeros((1, 10, 10, 3), dtype=np.uint8), "shape"),
        (np.zeros((0, 10, 3), dtype=np.uint8), "1x1"),
        (np.zeros((10, 0), dtype=np.uint8), "1x1"),
        (np.zeros((10, 10, 2), dtype=np.uint8), "shape"),
        (np.zeros((10, 10, 5), dtype=np.uint8), "shape"),
        (np.zeros((10,), dtype=np.uint8), "shape"),
        ([[1, 2], [3, 4]], "numpy array"),
    ],
    ids=["float32", "int16", "4-D", "0xN", "Nx0 gray", "2 channels", "5 channels", "1-D", "list"],
)
def test_bad_input_raises_input_error(image, message, cfg):
    with pytest.raises(InputError, match=message):
        preprocess([image], cfg)


def test_no_images_raises_input_error(cfg):
    with pytest.raises(InputError):
        preprocess([], cfg)


@pytest.mark.parametrize(
    "overrides",
    [
        {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]},
        {"do_normalize": False},
        {"do_rescale": False},
    ],
    ids=["imagenet-mean-std", "rescale-only", "normalize-only"],
)
def test_normalization_variants(overrides, processor_json, tiny_model_dir, max_diff_seen):
    from transformers import AutoImageProcessor

    d = json.loads(json.dumps(processor_json))
    d["image_processor"].update(overrides)
    ours_cfg = ProcessorConfig.from_dict(d)
    hf = AutoImageProcessor.from_pretrained(str(tiny_model_dir), **overrides)
    rng = np.random.default_rng(9)
    image = rng.integers(0, 256, (300, 700, 3), dtype=np.uint8)
    ref = hf([image], input_data_format="channels_last", return_tensors="pt")
    ours = preprocess([image], ours_cfg)
    assert ours.pixel_values.shape == tuple(ref["pixel_values"].shape)
    # One uint8 step in these units: the smallest step any channel's transform maps 1 to.
    scale = 1.0 if not ours_cfg.do_rescale else ours_cfg.rescale_factor
    step = scale / (min(ours_cfg.image_std) if ours_cfg.do_normalize else 1.0)
    diff = float(np.abs(ours.pixel_values - ref["pixel_values"].numpy()).max())
    max_diff_seen.append(diff)
    assert diff <= step * (1 + 1e-5)


@pytest.mark.parametrize(
    ("h", "w", "oh", "ow", "resample"),
    [
        (480, 640, 416, 576, 2),
        (1080, 1920, 1024, 2048, 2),
        (1080, 1920, 384, 672, 3),
        (1, 1, 32, 32, 2),
        (7, 10000, 32, 1024, 2),
        (700, 300, 700, 77, 2),  # width only
        (300, 700, 33, 700, 3),  # height only
    ],
)
def test_resize_matches_torchvision(h, w, oh, ow, resample):
    """The resize alone vs torchvision on uint8. PyTorch's fixed-point kernel (AVX2/AVX512/Arm CPUs) is matched
    exactly; elsewhere torchvision resizes in float and one uint8 step is allowed."""
    from torchvision.transforms.v2 import functional as tvF

    mode = {2: tvF.InterpolationMode.BILINEAR, 3: tvF.InterpolationMode.BICUBIC}[resample]
    img = np.random.default_rng(h + w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    ref = tvF.resize(torch.from_numpy(img).permute(2, 0, 1), [oh, ow], interpolation=mode, antialias=True)
    ref = ref.permute(1, 2, 0).numpy().astype(np.int16)
    ours = resize_uint8(img, oh, ow, resample).astype(np.int16)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize(
    "overrides",
    [
        {"use_thumbnail": False},
        {"do_image_splitting": False},
        {"max_tiles": 4},
        {"max_pixels_tolerance": 1.5},
        {"tile_size": 256},
        {"min_image_tokens": 16, "max_image_tokens": 64},
        {"min_tiles": 1},
        {"min_tiles": 1, "max_tiles": 1},
        {"tile_size": 14, "encoder_patch_size": 2},
        {"tile_size": 14, "encoder_patch_size": 2, "min_image_tokens": 4, "max_image_tokens": 16},
        {"tile_size": 30, "encoder_patch_size": 2, "min_tiles": 1, "max_tiles": 6},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_config_variants(overrides, processor_json, hf_processor, max_diff_seen):
    """Other processor settings: same tensors and the same placeholder string as transformers."""
    d = json.loads(json.dumps(processor_json))
    d["image_processor"].update(overrides)
    ours_cfg = ProcessorConfig.from_dict(d)
    rng = np.random.default_rng(21)
    for height, width in [(1081, 1921), (480, 640), (724, 1448), (3000, 400)]:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        ref, ref_placeholder = _hf_run(hf_processor, image, **overrides)
        ours = preprocess([image], ours_cfg)
        _assert_same(ours, ref, max_diff_seen)
        assert _placeholder(ours.layouts[0]) == ref_placeholder, (height, width)
