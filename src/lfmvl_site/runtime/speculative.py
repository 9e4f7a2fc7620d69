"""State carried from frame to frame of one caption stream: reused image features and caption drafts.

A webcam's (or a clip's) consecutive frames usually get the same or a nearly identical caption, so the
previous caption of the same stream and prompt is a good draft (prompt-lookup decoding): the decoder
verifies up to K drafted tokens in one run and greedy decoding keeps the longest prefix it would have
produced itself, plus its own next token. The output is the plain greedy output; only the number of
decoder runs changes. The loop that verifies lives in :mod:`lfmvl_site.runtime.generate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .preprocess import ImageInputs

K_MIN = 1
K_MAX = 32
K_START = 8
# Positions whose logits a site decoder computes (model/optimize.py: last_logits, add_argmax): the last
# VERIFY_ROWS of each run, enough to verify a draft of K_MAX tokens (row m - 1 checks draft token 0).
VERIFY_ROWS = K_MAX + 1
# Tokens that may wait, accepted but not yet in the caches, before a run without a draft commits them.
PENDING_MAX = 16


def same_inputs(a: ImageInputs | None, b: ImageInputs) -> bool:
    """True when two preprocessed frames feed the vision graph exactly the same tensors."""
    if a is None:
        return False
    return (
        a.pixel_values.shape == b.pixel_values.shape
        and np.array_equal(a.spatial_shapes, b.spatial_shapes)
        and np.array_equal(a.pixel_attention_mask, b.pixel_attention_mask)
        and np.array_equal(a.pixel_values, b.pixel_values)
    )


def propose(generated: Sequence[int], previous: Sequence[int], k: int, ngram: int = 3) -> list[int]:
    """Up to ``k`` draft tokens: what followed the generated text's tail in the previous caption.

    With nothing generated yet the draft is the previous caption's start. Otherwise the longest
    suffix of ``generated`` (``ngram`` tokens down to one) found in ``previous`` is located, the
    occurrence nearest to the current position preferred, and the tokens after it are proposed.
    """
    if k <= 0 or not previous:
        return []
    if not generated:
        return list(previous[:k])
    prev = list(previous)  # captions are tens of tokens: plain Python beats numpy's setup cost here
    here = len(generated) - 1
    for n in range(min(ngram, len(generated)), 0, -1):
        tail = list(generated[-n:])
        best = -1
        for end in range(n - 1, len(prev) - 1):  # index of the match's last token; something must follow it
            if prev[end] == tail[-1] and prev[end - n + 1 : end + 1] == tail and (
                best < 0 or abs(end - here) < abs(best - here)
            ):
                best = end
        if best >= 0:
            return prev[best + 1 : best + 1 + k]
    return []


@dataclass
class DraftStats:
    """What speculation did over one caption."""

    decoder_runs: int = 0
    proposed: int = 0
    accepted: int = 0
    full_runs: int = 0  # runs whose whole draft was accepted
    partial_runs: int = 0  # runs that rolled back (part or all of the draft rejected)


@dataclass
class CaptionStream:
    """One stream of frames (a webcam, a clip, a list of images) captioned in order.

    Pass the same object to each :meth:`Captioner.caption` call of the stream. ``speculative``
    turns drafting off (features are still reused); drafting is also off whenever sampling is on.
    """

    speculative: bool = True
    k: int = K_START
    last_inputs: ImageInputs | None = None
    last_features: np.ndarray | None = None
    previous: dict[str, list[int]] = field(default_factory=dict)  # prompt -> last caption ids (+ EOS)
    totals: DraftStats = field(default_factory=DraftStats)

    def adapt(self, k: int, accepted: int) -> None:
        """Grow K while whole drafts are accepted; shrink it to what was accepted (+1) otherwise."""
        if k <= 0:
            return
        self.k = min(K_MAX, 2 * self.k) if accepted == k else max(K_MIN, accepted + 1)

    def remember(self, prompt: str, token_ids: Sequence[int], eos: int | None) -> None:
        self.previous[prompt] = [*token_ids, *([eos] if eos is not None else [])]

    def reset(self) -> None:
        """Forget the previous frame and caption (e.g. the camera changed)."""
        self.last_inputs = None
        self.last_features = None
        self.previous.clear()
        self.k = K_START
