"""The generation loop's pieces: sampling against transformers' logits processors, streaming, cancellation."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lfmvl_site.errors import Cancelled, InputError
from lfmvl_site.runtime.generate import CancelToken, Captioner
from lfmvl_site.runtime.native import NativeBackend
from lfmvl_site.runtime.sampling import Sampler, SamplingSettings, apply_repetition_penalty

torch = pytest.importorskip("torch")
generation = pytest.importorskip("transformers.generation.logits_process")


def _hf_probs(logits: np.ndarray, seen: np.ndarray, s: SamplingSettings) -> np.ndarray:
    """The distribution transformers' generate samples from, built from its own processors."""
    procs = generation.LogitsProcessorList()
    if s.repetition_penalty != 1.0:
        procs.append(generation.RepetitionPenaltyLogitsProcessor(s.repetition_penalty))
    procs.append(generation.TemperatureLogitsWarper(s.temperature))
    if s.top_k:
        procs.append(generation.TopKLogitsWarper(s.top_k))
    if s.min_p:
        procs.append(generation.MinPLogitsWarper(s.min_p))
    scores = procs(torch.from_numpy(seen[None].astype(np.int64)), torch.from_numpy(logits[None].copy()))
    return torch.softmax(scores.double(), -1)[0].numpy()


@pytest.mark.parametrize(
    "settings",
    [
        SamplingSettings(temperature=0.7),
        SamplingSettings(temperature=1.3, top_k=5),
        SamplingSettings(temperature=0.1, min_p=0.15, repetition_penalty=1.05),
        SamplingSettings(temperature=1.0, top_k=50, min_p=0.05, repetition_penalty=1.3),
    ],
    ids=["temp", "topk", "card-recommended", "all"],
)
def test_sampling_distribution_matches_transformers(settings: SamplingSettings) -> None:
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal(64) * 3).astype(np.float32)
    seen = rng.integers(0, 64, 10)
    ref = _hf_probs(logits, seen, settings)
    # Empirical frequencies of our sampler must match the reference distribution.
    sampler = Sampler(settings)
    draws = np.array([sampler.pick(logits, seen) for _ in range(4000)])
    freq = np.bincount(draws, minlength=64) / draws.size
    assert set(np.flatnonzero(freq)) <= set(np.flatnonzero(ref > 0)), "sampled a token transformers masks out"
    assert np.abs(freq - ref).max() < 0.04


def test_repetition_penalty_matches_transformers_scores() -> None:
    logits = np.array([2.0, -1.0, 0.5, -3.0, 4.0], np.float32)
    seen = np.array([0, 1, 1, 3])
    ours = apply_repetition_penalty(logits, seen, 1.5)
    ref = generation.RepetitionPenaltyLogitsProcessor(1.5)(torch.from_numpy(seen[None]), torch.from_numpy(logits[None]))[0].numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-6)


def test_seeded_sampling_is_reproducible_and_greedy_is_argmax() -> None:
    logits = np.random.default_rng(0).standard_normal(100).astype(np.float32)
    a = [Sampler(SamplingSettings(temperature=1.0, seed=7)).pick(logits, np.array([])) for _ in range(3)]
    b = [Sampler(SamplingSettings(temperature=1.0, seed=7)).pick(logits, np.array([])) for _ in range(3)]
    assert a == b
    assert Sampler(SamplingSettings()).pick(logits, np.array([])) == int(np.argmax(logits))


def test_bad_settings_are_input_errors() -> None:
    for bad in ({"max_new_tokens": 0}, {"temperature": -1.0}, {"min_p": 2.0}, {"repetition_penalty": 0.0}):
        with pytest.raises(InputError):
            SamplingSettings(**bad)


@pytest.fixture(scope="module")
def captioner(tiny_model_dir: Path) -> Captioner:
    return asyncio.run(Captioner.load(NativeBackend(tiny_model_dir)))


def _frame() -> np.ndarray:
    return np.random.default_rng(5).integers(0, 256, (240, 320, 3), dtype=np.uint8)


def test_streamed_pieces_concatenate_to_the_caption(captioner: Captioner) -> None:
    pieces: list[tuple[int, str]] = []
    result = asyncio.run(
        captioner.caption(_frame(), "Describe.", settings=SamplingSettings(max_new_tokens=12),
                          on_token=lambda i, p: pieces.append((i, p)))
    )
    assert "".join(p for _, p in pieces) == result.text
    assert [i for i, _ in pieces if i >= 0] == result.token_ids
    assert len(result.timings.token_ms) >= len(result.token_ids)


def test_cancel_stops_between_steps(captioner: Captioner) -> None:
    cancel = CancelToken()
    seen: list[int] = []

    def on_token(i: int, piece: str) -> None:
        seen.append(i)
        if len(seen) == 2:
            cancel.cancel()

    with pytest.raises(Cancelled):
        asyncio.run(captioner.caption(_frame(), "Describe.", settings=SamplingSettings(max_new_tokens=30),
                                      on_token=on_token, cancel=cancel))
    assert len(seen) == 2


def test_image_row_count_mismatch_is_a_clear_error(captioner: Captioner) -> None:
    from lfmvl_site.errors import ContractError

    ids = [1, 396, 396, 7]
    embeds = np.zeros((1, 4, captioner.text_config.hidden_size), np.float32)
    with pytest.raises(ContractError, match="2 image tokens .* 3 rows"):
        captioner.merge(embeds, ids, np.ones((3, captioner.text_config.hidden_size), np.float32))


def test_sampled_caption_is_reproducible_with_a_seed(captioner: Captioner) -> None:
    s = SamplingSettings(max_new_tokens=8, temperature=0.8, top_k=20, seed=11)
    a: Any = asyncio.run(captioner.caption(_frame(), "Describe.", settings=s))
    b: Any = asyncio.run(captioner.caption(_frame(), "Describe.", settings=s))
    assert a.token_ids == b.token_ids
