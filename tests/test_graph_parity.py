"""The tiny synthetic ONNX graphs against transformers' Lfm2VlForConditionalGeneration holding the same weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ort = pytest.importorskip("onnxruntime")


TOL = 1e-4


@pytest.fixture(scope="module")
def hf_model(hf_tiny_model: Any) -> Any:
    assert hf_tiny_model.lm_head.weight.data_ptr() == hf_tiny_model.model.language_model.embed_tokens.weight.data_ptr()
    return hf_tiny_model


@pytest.fixture(scope="module")
def sessions(tiny_model_dir: Path) -> dict[str, Any]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return {
        name: ort.InferenceSession(str(tiny_model_dir / "onnx" / f"{name}.onnx"), opts, providers=["CPUExecutionProvider"])
        for name in ("embed_tokens", "embed_images", "decoder")
    }


def test_embed_tokens_equals_hf_input_embeddings(hf_model: Any, sessions: dict[str, Any]) -> None:
    ids = np.arange(hf_model.config.text_config.vocab_size, dtype=np.int64).reshape(4, -1)
    got = sessions["embed_tokens"].run(["inputs_embeds"], {"input_ids": ids})[0]
    with torch.no_grad():
        ref = hf_model.get_input_embeddings()(torch.from_numpy(ids)).numpy()
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)


def _image_features_onnx(session: Any, pv: np.ndarray, mask: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    """One embed_images call per run of equal spatial_shapes (the published graph's batch rule), rows concatenated."""
    parts, start = [], 0
    while start < len(shapes):
        end = start
        while end < len(shapes) and (shapes[end] == shapes[start]).all():
            end += 1
        feeds = {
            "pixel_values": pv[start:end].astype(np.float32),
            "pixel_attention_mask": mask[start:end].astype(np.int64),
            "spatial_shapes": shapes[start:end].astype(np.int64),
        }
        parts.append(session.run(["image_features"], feeds)[0])
        start = end
    return np.concatenate(parts)


@pytest.mark.parametrize(
    ("height", "width", "tiles"),
    [
        (256, 256, 1),  # single image, 16x16 patches (position grid used as is)
        (384, 512, 1),  # single non-square image, 24x32 patches
        (1024, 1024, 5),  # 2x2 tiles + square thumbnail: one call
        (1000, 1100, 5),  # 2x2 tiles + 30x32-patch thumbnail: two calls
    ],
)
def test_image_features_match_hf(
    hf_model: Any, sessions: dict[str, Any], tiny_model_dir: Path, height: int, width: int, tiles: int
) -> None:
    from PIL import Image

    processor = transformers.AutoProcessor.from_pretrained(tiny_model_dir)
    rng = np.random.default_rng(height * 7 + width)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    inputs = processor.image_processor(images=[image], return_tensors="pt")
    pv, mask, shapes = inputs["pixel_values"], inputs["pixel_attention_mask"], inputs["spatial_shapes"]
    assert pv.shape == (tiles, 1024, 768)

    with torch.no_grad():
        ref = torch.cat(
            hf_model.get_image_features(pixel_values=pv, spatial_shapes=shapes, pixel_attention_mask=mask).pooler_output
        ).numpy()
    got = _image_features_onnx(sessions["embed_images"], pv.numpy(), mask.numpy(), shapes.numpy())
    assert got.shape == ref.shape == (int((shapes.numpy() // 2).prod(-1).sum()), hf_model.config.text_config.hidden_size)
    assert np.abs(got - ref).max() < TOL


def _empty_caches(session: Any) -> dict[str, np.ndarray]:
    feeds = {}
    for info in session.get_inputs():
        if info.name.startswith("past_conv."):
            feeds[info.name] = np.zeros((1, info.shape[1], info.shape[2]), np.float32)
        elif info.name.startswith("past_key_values."):
            feeds[info.name] = np.zeros((1, info.shape[1], 0, info.shape[3]), np.float32)
    return feeds


def test_decoder_logits_match_hf_prefill_chunk_and_decode(hf_model: Any, sessions: dict[str, Any]) -> None:
    dec, emb = sessions["decoder"], sessions["embed_tokens"]
    out_names = [o.name for o in dec.get_outputs()]
    rng = np.random.default_rng(5)
    vocab = hf_model.config.text_config.vocab_size
    feeds = _empty_caches(dec)
    cache, total, diffs, greedy = None, 0, [], []

    def step(ids: np.ndarray) -> np.ndarray:
        nonlocal cache, total
        embeds = emb.run(["inputs_embeds"], {"input_ids": ids})[0]
        total += ids.shape[1]
        feeds.update(inputs_embeds=embeds, attention_mask=np.ones((1, total), np.int64))
        outs = dec.run(out_names, feeds)
        for name, value in zip(out_names[1:], outs[1:]):  # present -> past
            feeds[name.replace("present_conv.", "past_conv.").replace("present.", "past_key_values.")] = value
        with torch.no_grad():
            ref = hf_model(
                inputs_embeds=torch.from_numpy(embeds),
                attention_mask=torch.ones((1, total), dtype=torch.long),
                cache=cache,
                use_cache=True,
            )
        cache = ref.cache
        assert outs[0].shape == (1, ids.shape[1], vocab)
        diffs.append(float(np.abs(outs[0] - ref.logits.numpy()).max()))
        return outs[0]

    step(rng.integers(0, vocab, (1, 11)))  # prefill
    logits = step(rng.integers(0, vocab, (1, 4)))  # a second chunk on top of the cache
    for _ in range(8):  # cached greedy decode
        token = int(logits[0, -1].argmax())
        greedy.append(token)
        logits = step(np.array([[token]], np.int64))
    assert max(diffs) < TOL, diffs
    # The weights are scaled so greedy decoding wanders instead of repeating one token.
    assert len(set(greedy)) >= 4, greedy


def test_full_prompt_with_image_matches_hf(hf_model: Any, sessions: dict[str, Any], tiny_model_dir: Path) -> None:
    """Image rows merged at <image> positions, then a prefill: the last-position logits match HF's own merge."""
    from PIL import Image

    processor = transformers.AutoProcessor.from_pretrained(tiny_model_dir)
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (300, 280, 3), dtype=np.uint8))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[image], text=prompt, return_tensors="pt")
    ids = inputs["input_ids"].numpy()

    embeds = sessions["embed_tokens"].run(["inputs_embeds"], {"input_ids": ids})[0]
    rows = _image_features_onnx(
        sessions["embed_images"],
        inputs["pixel_values"].numpy(),
        inputs["pixel_attention_mask"].numpy(),
        inputs["spatial_shapes"].numpy(),
    )
    where = ids[0] == hf_model.config.image_token_id
    assert where.sum() == len(rows)
    embeds[0, where] = rows
    feeds = _empty_caches(sessions["decoder"])
    feeds.update(inputs_embeds=embeds, attention_mask=np.ones(ids.shape, np.int64))
    got = sessions["decoder"].run(["logits"], feeds)[0]
    with torch.no_grad():
        ref = hf_model(**inputs).logits.numpy()
    # Relative to the logits' range: the image rows are large (synth IMAGE_GAIN) and float32 rounding scales with them.
    assert np.abs(got - ref).max() < 2e-5 * np.abs(ref).max()
