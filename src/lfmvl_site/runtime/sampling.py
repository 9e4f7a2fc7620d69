"""Next-token choice from a logits row: greedy, or sampled like transformers.

Order follows transformers' ``generate``: repetition penalty on the raw logits,
then temperature, top-k and min-p, then a draw from the softmax. Everything is
numpy on one row, so it costs nothing next to a decoder step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingSettings:
    """How to pick tokens. ``temperature == 0`` means greedy."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        from ..errors import InputError

        if self.max_new_tokens < 1:
            raise InputError("max_new_tokens must be at least 1.")
        if self.temperature < 0 or self.top_k < 0 or not 0 <= self.min_p <= 1 or self.repetition_penalty <= 0:
            raise InputError(
                "Sampling settings out of range: need temperature >= 0, top_k >= 0, 0 <= min_p <= 1 "
                "and repetition_penalty > 0."
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def needs_logits(self) -> bool:
        """False when an in-graph argmax gives the same token as these settings."""
        return not self.greedy or self.repetition_penalty != 1.0


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """transformers' RepetitionPenaltyLogitsProcessor: divide positive, multiply negative scores."""
    if penalty == 1.0 or seen.size == 0:
        return logits
    out = logits.copy()
    ids = np.unique(seen)
    picked = out[ids]
    out[ids] = np.where(picked < 0, picked * penalty, picked / penalty)
    return out


class Sampler:
    """Stateful picker: owns the seeded RNG for one generation.

    ``entries`` is the tokenizer's entry count (one more than its highest id): logits columns at or above it
    (lm_head rows without a token, e.g. 64,400 entries for 65,536 rows in LFM2) are never picked, whatever the
    settings. ``None`` allows every column.
    """

    def __init__(self, settings: SamplingSettings, entries: int | None = None) -> None:
        if entries is not None and entries < 1:
            from ..errors import InputError

            raise InputError(f"the tokenizer has {entries} entries; it needs at least one to pick a token.")
        self.settings = settings
        self.entries = entries
        self._rng = np.random.default_rng(settings.seed)

    def pick(self, logits: np.ndarray, seen: np.ndarray) -> int:
        """The next id from one logits row (``seen``: the ids so far, for the repetition penalty)."""
        s = self.settings
        row: np.ndarray = np.asarray(logits, dtype=np.float32).reshape(-1)
        if self.entries is not None and self.entries < row.size:
            row = row[: self.entries]  # ids without a tokenizer entry are out of the draw
            seen = np.asarray(seen)
            seen = seen[seen < self.entries]
        row = apply_repetition_penalty(row, seen, s.repetition_penalty)
        if s.greedy:
            return int(np.argmax(row))
        row = row.astype(np.float64) / s.temperature
        if 0 < s.top_k < row.size:
            kth = np.partition(row, -s.top_k)[-s.top_k]
            row = np.where(row < kth, -np.inf, row)
        probs = np.exp(row - row.max())
        probs /= probs.sum()
        if s.min_p > 0:
            probs = np.where(probs < s.min_p * probs.max(), 0.0, probs)
            probs /= probs.sum()
        return int(self._rng.choice(probs.size, p=probs))
