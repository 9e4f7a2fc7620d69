"""The captioning loop: frame → prompt ids → embeddings → vision rows → decoder steps.

One async implementation for both hosts; all host work goes through a
:class:`~lfmvl_site.runtime.backend.Backend`. The decoder's caches are requested
with ``keep`` so a WebGPU host can leave them on the GPU between steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import Cancelled, ContractError, InputError
from .backend import Backend, Session, TensorInfo
from .contract import DEFAULT_PROMPT
from .modelconfig import TextModelConfig, parse_json
from .preprocess import ImageInputs, ProcessorConfig, preprocess
from .prompt import build_prompt_ids, load_chat_template, template_tokens
from .sampling import Sampler, SamplingSettings
from .speculative import PENDING_MAX, VERIFY_ROWS, CaptionStream, DraftStats, propose, same_inputs
from .tokenizer import Tokenizer, check_vocabulary

# Decoder inputs that are not caches.
_NON_CACHE_INPUTS = {"input_ids", "inputs_embeds", "attention_mask", "position_ids"}


def _now() -> float:
    return time.perf_counter() * 1000.0


class CancelToken:
    """Set ``cancelled`` (or call :meth:`cancel`) to stop a caption between steps."""

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def check(self) -> None:
        if self.cancelled:
            raise Cancelled("Caption cancelled.")


@dataclass
class Timings:
    """Milliseconds spent in each stage of one caption."""

    preprocess_ms: float = 0.0
    prompt_ms: float = 0.0
    vision_ms: float = 0.0
    prefill_ms: float = 0.0
    token_ms: list[float] = field(default_factory=list)  # per token; a run that gives n tokens counts 1/n each
    run_ms: list[float] = field(default_factory=list)  # per decoder run (the first is the prefill)
    features_reused: bool = False  # the vision graph was skipped: the frame equals the previous one

    @property
    def first_token_ms(self) -> float:
        """Time to first token, from the frame: preprocess + prompt + vision + prefill."""
        return self.preprocess_ms + self.prompt_ms + self.vision_ms + self.prefill_ms

    def as_dict(self) -> dict[str, Any]:
        # Tokens per second of decoder time, prefill included: a drafted caption may come out of one run, where a
        # rate over the tokens after the first would divide by next to nothing.
        decoder_ms = sum(self.run_ms)
        return {
            "preprocess_ms": round(self.preprocess_ms, 3),
            "prompt_ms": round(self.prompt_ms, 3),
            "vision_ms": round(self.vision_ms, 3),
            "prefill_ms": round(self.prefill_ms, 3),
            "first_token_ms": round(self.first_token_ms, 3),
            "token_ms": [round(t, 3) for t in self.token_ms],
            "run_ms": [round(t, 3) for t in self.run_ms],
            "decoder_runs": len(self.run_ms),
            "features_reused": self.features_reused,
            "tokens_per_s": round(1000.0 * len(self.token_ms) / decoder_ms, 2) if self.token_ms and decoder_ms > 0 else None,
        }


@dataclass
class CaptionResult:
    text: str
    token_ids: list[int]
    prompt_ids: list[int]
    stop_reason: str  # "eos" or "length"
    timings: Timings
    drafts: DraftStats = field(default_factory=DraftStats)
    speculative: bool = False  # drafts were verified (greedy, a stream, a decoder with every position's logits)

    @property
    def decoder_runs(self) -> int:
        return len(self.timings.run_ms)

    def as_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "token_ids": self.token_ids,
            "prompt_tokens": len(self.prompt_ids),
            "stop_reason": self.stop_reason,
            "decoder_runs": self.decoder_runs,
            "speculative": self.speculative,
            "draft_tokens_proposed": self.drafts.proposed,
            "draft_tokens_accepted": self.drafts.accepted,
            "features_reused": self.timings.features_reused,
            "timings": self.timings.as_dict(),
        }


TokenCallback = Callable[[int, str], Any]


def _cache_name_map(decoder: Session) -> dict[str, str]:
    """Map each decoder cache input (past_*) to the output that carries it forward (present*)."""
    outputs = set(decoder.output_names)
    mapping: dict[str, str] = {}
    for name in decoder.input_names:
        if name in _NON_CACHE_INPUTS:
            continue
        if name.startswith("past_key_values."):
            present = "present." + name[len("past_key_values."):]
        elif name.startswith("past_"):
            present = "present_" + name[len("past_"):]
        else:
            raise ContractError(f"decoder: unexpected input {name!r}; expected inputs_embeds, attention_mask and past_* caches.")
        if present not in outputs:
            raise ContractError(f"decoder: cache input {name!r} has no matching output {present!r}.")
        mapping[name] = present
    return mapping


def _empty_cache(info: TensorInfo) -> np.ndarray:
    """Initial cache: symbolic dims → 1, dims whose name mentions 'sequence' → 0 (empty past)."""
    shape = []
    for dim in info.shape:
        if isinstance(dim, int) and dim >= 0:
            shape.append(dim)
        elif isinstance(dim, str) and "sequence" in dim:
            shape.append(0)
        else:
            shape.append(1)
    return np.zeros(shape, dtype=np.dtype(info.dtype))


def _require(session: Session, graph: str, inputs: Sequence[str]) -> None:
    missing = [n for n in inputs if n not in session.input_names]
    if missing:
        raise ContractError(
            f"{graph}: missing input(s) {missing}; the graph has {session.input_names}. "
            "Is this the tiled-vision LFM2-VL ONNX export (LiquidAI/LFM2.5-VL-1.6B-ONNX layout)?"
        )
    if not session.output_names:
        raise ContractError(f"{graph}: the graph has no outputs.")


class Captioner:
    """A loaded model, ready to caption frames. Create with :meth:`load`."""

    def __init__(
        self,
        backend: Backend,
        sessions: dict[str, Session],
        text_config: TextModelConfig,
        processor_config: ProcessorConfig,
        tokenizer: Tokenizer,
        chat_template: str,
        special_tokens: dict[str, str] | None = None,
        image_special_tokens: bool = True,
    ) -> None:
        self.backend = backend
        self.embed_tokens = sessions["embed_tokens"]
        self.embed_images = sessions["embed_images"]
        self.decoder = sessions["decoder"]
        self.text_config = text_config
        self.processor_config = processor_config
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.special_tokens = special_tokens
        self.image_special_tokens = image_special_tokens
        self._check_contract()
        self._cache_map = _cache_name_map(self.decoder)
        self._cache_info = {t.name: t for t in self.decoder.inputs if t.name in self._cache_map}
        self._has_position_ids = "position_ids" in self.decoder.input_names
        self._has_argmax = "next_token" in self.decoder.output_names
        # Verifying a draft needs the logits (or ids, ``next_tokens``) of its positions: a site decoder keeps the last
        # VERIFY_ROWS positions; one built before that (logits [B, 1, V]) keeps one and cannot verify.
        self._has_rows = "next_tokens" in self.decoder.output_names
        # Plain greedy decoding with the in-graph argmax runs its decode steps through Backend.run_greedy (several
        # steps per backend call); False: one Backend.run_chain call per step (tests compare the two).
        self.greedy_steps = True
        logits_info = next(t for t in self.decoder.outputs if t.name == "logits")
        self.full_logits = not (len(logits_info.shape) == 3 and logits_info.shape[1] == 1)

    @classmethod
    async def load(cls, backend: Backend) -> Captioner:
        """Read the configs and open the three graphs through ``backend``."""

        async def optional(relpath: str) -> str | None:
            try:
                return await backend.read_text(relpath)
            except FileNotFoundError:
                return None

        text_config = TextModelConfig.from_texts(
            await backend.read_text("config.json"), await optional("generation_config.json")
        )
        processor = parse_json(await backend.read_text("processor_config.json"), "processor_config.json")
        tokenizer_config_text = await optional("tokenizer_config.json")
        tokenizer_config = parse_json(tokenizer_config_text, "tokenizer_config.json") if tokenizer_config_text else {}
        tokenizer = Tokenizer.from_json(await backend.read_text("tokenizer.json"))
        check_vocabulary(tokenizer.vocab_size, text_config.vocab_size)
        template = await load_chat_template(optional, processor, tokenizer_config)
        sessions = {role: await backend.open_session(role) for role in ("embed_tokens", "embed_images", "decoder")}
        captioner = cls(
            backend,
            sessions,
            text_config,
            ProcessorConfig.from_dict(processor),
            tokenizer,
            template,
            template_tokens(tokenizer_config),
            bool(processor.get("use_image_special_tokens", True)),
        )
        # Compile the chat template and the tokenizer's split pattern now rather than on the first
        # frame: in Pyodide that first use costs up to seconds.
        build_prompt_ids(tokenizer, template, "warm-up", [], special_tokens=captioner.special_tokens)
        return captioner

    def _check_contract(self) -> None:
        _require(self.embed_tokens, "embed_tokens", ["input_ids"])
        _require(self.embed_images, "embed_images", ["pixel_values", "pixel_attention_mask", "spatial_shapes"])
        _require(self.decoder, "decoder", ["inputs_embeds", "attention_mask"])
        if "logits" not in self.decoder.output_names:
            raise ContractError(f"decoder: no 'logits' output; it has {self.decoder.output_names}.")

    # -- stages -------------------------------------------------------------------------

    def prompt_ids(self, prompt: str, image_inputs: ImageInputs) -> list[int]:
        check_prompt_text(prompt)
        return build_prompt_ids(
            self.tokenizer,
            self.chat_template,
            prompt,
            image_inputs.layouts,
            special_tokens=self.special_tokens,
            image_special_tokens=self.image_special_tokens,
        )

    def check_context(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """Refuse a prompt that, with the tokens asked for, does not fit the model's context."""
        limit = self.text_config.context
        if limit is not None and prompt_tokens + max_new_tokens > limit:
            raise InputError(
                f"The prompt is {prompt_tokens} tokens (image included) and {max_new_tokens} more were asked for, "
                f"but the model's context is {limit} tokens; shorten the prompt or lower max new tokens."
            )

    async def embed(self, ids: Sequence[int]) -> np.ndarray:
        feeds = {"input_ids": np.asarray([ids], dtype=np.int64)}
        name = self.embed_tokens.output_names[0]
        out = await self.embed_tokens.run(feeds, read=[name])
        return np.asarray(out[name], dtype=np.float32)

    async def image_features(self, inputs: ImageInputs) -> np.ndarray:
        """Vision rows for all tiles, in tile order.

        The graph resizes position embeddings once to the batch's largest tile, so
        tiles of different shapes must not share a run (design doc §1.3): run once
        per distinct spatial shape. Padding beyond a group's patch count is dropped:
        masked patches do not change the valid ones, and they cost attention time.
        """
        shapes = [tuple(int(v) for v in s) for s in inputs.spatial_shapes]
        out_name = self.embed_images.output_names[0]  # read by position: its name changed across exports
        rows: list[np.ndarray | None] = [None] * len(shapes)
        for shape in dict.fromkeys(shapes):
            idx = [i for i, s in enumerate(shapes) if s == shape]
            n = shape[0] * shape[1]
            feeds = {
                "pixel_values": np.ascontiguousarray(inputs.pixel_values[idx, :n]),
                "pixel_attention_mask": np.ascontiguousarray(inputs.pixel_attention_mask[idx, :n]),
                "spatial_shapes": np.ascontiguousarray(inputs.spatial_shapes[idx]),
            }
            feats = np.asarray((await self.embed_images.run(feeds, read=[out_name]))[out_name], dtype=np.float32)
            per_tile = (shape[0] // 2) * (shape[1] // 2)
            if feats.ndim == 3:  # older exports: [tiles, tokens, hidden]
                feats = feats.reshape(-1, feats.shape[-1])
            if feats.shape[0] != per_tile * len(idx):
                raise ContractError(
                    f"embed_images returned {feats.shape[0]} rows for {len(idx)} tile(s) of {shape[0]}x{shape[1]} "
                    f"patches; expected {per_tile * len(idx)}."
                )
            for j, i in enumerate(idx):
                rows[i] = feats[j * per_tile : (j + 1) * per_tile]
        filled = [r for r in rows if r is not None]  # every tile's rows were set above
        return np.concatenate(filled, axis=0) if filled else np.zeros((0, self.text_config.hidden_size), np.float32)

    def merge(self, embeds: np.ndarray, ids: Sequence[int], features: np.ndarray) -> np.ndarray:
        """Overwrite the rows at ``<image>`` positions with vision rows, in order."""
        positions = np.flatnonzero(np.asarray(ids) == self.text_config.image_token_id)
        if positions.size != features.shape[0]:
            raise ContractError(
                f"The prompt has {positions.size} image tokens but the vision graph returned "
                f"{features.shape[0]} rows; processor_config.json and the vision graph disagree."
            )
        if features.shape[-1] != embeds.shape[-1]:
            raise ContractError(
                f"Vision rows have width {features.shape[-1]} but token embeddings {embeds.shape[-1]}."
            )
        merged = embeds.copy()
        merged[0, positions] = features
        return merged

    # -- the loop -----------------------------------------------------------------------

    async def caption(
        self,
        image: np.ndarray,
        prompt: str = DEFAULT_PROMPT,
        *,
        settings: SamplingSettings | None = None,
        on_token: TokenCallback | None = None,
        cancel: CancelToken | None = None,
        stream: CaptionStream | None = None,
    ) -> CaptionResult:
        """Caption one RGB/RGBA uint8 frame, streaming tokens to ``on_token``.

        With ``stream`` (the same object for each frame of a stream), a frame whose preprocessed
        tensors equal the previous frame's reuses its image features, and greedy decoding drafts
        from the previous caption of the same prompt (token-identical to plain greedy decoding).
        """
        settings = settings or SamplingSettings()
        cancel = cancel or CancelToken()
        t = Timings()

        start = _now()
        inputs = preprocess([image], self.processor_config)
        t.preprocess_ms = _now() - start

        start = _now()
        ids = self.prompt_ids(prompt, inputs)
        t.prompt_ms = _now() - start
        self.check_context(len(ids), settings.max_new_tokens)
        cancel.check()

        start = _now()
        embeds = await self.embed(ids)
        if stream is not None and stream.last_features is not None and same_inputs(stream.last_inputs, inputs):
            features = stream.last_features
            t.features_reused = True
        else:
            features = await self.image_features(inputs)
            if stream is not None:
                stream.last_inputs, stream.last_features = inputs, features
        embeds = self.merge(embeds, ids, features)
        t.vision_ms = _now() - start
        cancel.check()

        if stream is not None and stream.speculative and self.full_logits and self._greedy_plain(settings):
            return await self._decode_speculative(ids, embeds, settings, t, on_token, cancel, stream, prompt)
        result = await self._decode(ids, embeds, settings, t, on_token, cancel)
        if stream is not None:
            stream.previous.pop(prompt, None)  # a sampled caption is no draft for greedy decoding
        return result

    @staticmethod
    def _greedy_plain(settings: SamplingSettings) -> bool:
        """Greedy with nothing that makes a token depend on more than the logits row (drafts verify)."""
        return settings.greedy and settings.repetition_penalty == 1.0

    async def _decode(
        self,
        prompt_ids: list[int],
        embeds: np.ndarray,
        settings: SamplingSettings,
        t: Timings,
        on_token: TokenCallback | None,
        cancel: CancelToken,
    ) -> CaptionResult:
        sampler = Sampler(settings, self.tokenizer.vocab_size)  # ids without a token are never picked
        use_argmax = self._has_argmax and not settings.needs_logits
        read = ["next_token"] if use_argmax else ["logits"]
        keep = list(self._cache_map.values())
        caches: dict[str, Any] = {name: _empty_cache(info) for name, info in self._cache_info.items()}
        seen = list(prompt_ids)
        generated: list[int] = []
        stream = self.tokenizer.stream_decoder()
        eos_ids = self.text_config.eos_token_ids
        max_new = settings.max_new_tokens
        stop_reason = "length"
        length = len(prompt_ids)
        # A decode step is embed_tokens → decoder as one backend call: the token's embedding stays where the
        # backend keeps values (on the GPU for WebGPU) and, in the browser, Python awaits one promise per token.
        link = {self.embed_tokens.output_names[0]: "inputs_embeds"}
        mark = [0.0]  # when the current step began (the previous token was handled)
        halted: list[BaseException] = []  # why accept() stopped other than eos/length: a cancel, a failing callback

        def accept(token: int) -> bool:
            """One token out of a decoder run: timings, stop criteria, detokenization, the callback. True: stop.

            Runs synchronously between decoder runs (inside the backend's step loop in the browser), so it never
            raises: a cancel or a failure is kept in ``halted`` and raised once the backend returned."""
            nonlocal stop_reason
            try:
                now = _now()
                t.token_ms.append(now - mark[0])
                t.run_ms.append(t.token_ms[-1])
                mark[0] = now
                if token in eos_ids:
                    stop_reason = "eos"
                    return True
                generated.append(token)
                seen.append(token)
                piece = stream.push(token)
                if on_token is not None:
                    on_token(token, piece)
                if cancel.cancelled:
                    cancel.check()
                return len(generated) >= max_new
            except BaseException as exc:  # noqa: BLE001  (re-raised after the step loop, see halted)
                halted.append(exc)
                return True

        try:
            mark[0] = _now()
            feeds: dict[str, Any] = {"attention_mask": np.ones((1, length), dtype=np.int64), **caches}
            if self._has_position_ids:
                feeds["position_ids"] = np.arange(0, length, dtype=np.int64)[None, :]
            out = await self.decoder.run({"inputs_embeds": embeds, **feeds}, read=read, keep=keep)
            while True:
                caches = {past: out[present] for past, present in self._cache_map.items()}
                if use_argmax:
                    token = int(np.asarray(out["next_token"]).reshape(-1)[-1])
                else:
                    logits = np.asarray(out["logits"])
                    token = sampler.pick(logits.reshape(-1, logits.shape[-1])[-1], np.asarray(seen))
                done = accept(token)
                if len(t.token_ms) == 1:
                    t.prefill_ms = t.token_ms[0]
                if done:
                    break
                length += 1
                if use_argmax and self.greedy_steps:
                    # Plain greedy: the rest of the caption as one backend call that feeds each next_token back
                    # itself and calls accept() per token (in the browser: one awaited promise per caption).
                    caches = await self.backend.run_greedy(
                        self.embed_tokens, self.decoder, token, caches, length=length, link=link,
                        present=self._cache_map, position_ids=self._has_position_ids, on_token=accept,
                        max_steps=max_new - len(generated))
                    break
                feeds = {"attention_mask": np.ones((1, length), dtype=np.int64), **caches}
                if self._has_position_ids:
                    feeds["position_ids"] = np.asarray([[length - 1]], dtype=np.int64)
                out = await self.backend.run_chain(
                    self.embed_tokens, {"input_ids": np.asarray([[token]], dtype=np.int64)}, self.decoder, feeds,
                    link=link, read=read, keep=keep, free=caches.values())
            if halted:
                raise halted[0]
        finally:
            self.decoder.release(v for v in caches.values() if not isinstance(v, np.ndarray))
        tail = stream.flush()
        if on_token is not None and tail:
            on_token(-1, tail)  # bytes of a character the last token left incomplete
        final = self.tokenizer.decode(generated)
        return CaptionResult(final, generated, list(prompt_ids), stop_reason, t)

    async def _decode_speculative(
        self,
        prompt_ids: list[int],
        embeds: np.ndarray,
        settings: SamplingSettings,
        t: Timings,
        on_token: TokenCallback | None,
        cancel: CancelToken,
        state: CaptionStream,
        prompt: str,
    ) -> CaptionResult:
        """Greedy decoding that verifies drafts from the previous caption: same tokens, fewer decoder runs.

        Each run feeds the *pending* rows (the prompt, or tokens already chosen but not yet in the
        caches) followed by up to K draft tokens, and reads every position's logits. The argmax at
        the row before draft token i says whether greedy decoding would have produced it; the
        longest agreeing prefix is accepted plus the model's own next token. When the whole draft is
        accepted the run's caches are kept. Otherwise they are dropped (LFM2's conv state cannot be
        cut back like a KV cache) and the caches from before the run stay: the accepted tokens become
        pending rows of the next run, which re-feeds them together with its own draft, so a rollback
        costs rows, never an extra run. A run without a draft always commits.
        """
        max_new = settings.max_new_tokens
        previous = state.previous.get(prompt, [])
        eos_ids = set(self.text_config.eos_token_ids)
        entries = self.tokenizer.vocab_size
        keep = list(self._cache_map.values())
        caches: dict[str, Any] = {name: _empty_cache(info) for name, info in self._cache_info.items()}
        stats = DraftStats()
        stream = self.tokenizer.stream_decoder()
        generated: list[int] = []
        stop_reason = "length"
        committed = 0  # positions in ``caches``
        pending: np.ndarray | None = embeds  # [1, m, H] rows to feed before the draft
        tail: list[int] = []  # then these tokens (embedded with the draft, in one embed_tokens run)
        link = {self.embed_tokens.output_names[0]: "inputs_embeds"}
        pending_is_prompt = True
        done = False

        def release_kept(values: Any) -> None:
            self.decoder.release(v for v in values if not isinstance(v, np.ndarray))

        try:
            while not done:
                start = _now()
                m = (0 if pending is None else pending.shape[1]) + len(tail)
                room = max_new - len(generated) - 1  # the run's own token always comes on top
                if pending_is_prompt:
                    # Only an unchanged frame drafts in the prefill (a rejection there re-feeds the prompt),
                    # and a prefill that rolled back commits next.
                    k = min(len(previous), room) if t.features_reused and stats.decoder_runs == 0 else 0
                else:
                    k = 0 if m > PENDING_MAX else min(state.k, room)
                k = min(k, VERIFY_ROWS - 1)  # the decoder computes the last VERIFY_ROWS positions' logits
                draft = propose(generated, previous, k) if k > 0 else []
                k = len(draft)
                run_ids = [*tail, *draft]
                total = committed + m + k
                feeds: dict[str, Any] = {"attention_mask": np.ones((1, total), dtype=np.int64), **caches}
                if self._has_position_ids:
                    feeds["position_ids"] = np.arange(committed, total, dtype=np.int64)[None, :]
                read = ["next_tokens" if self._has_rows else "logits"]
                feed: np.ndarray | None = None
                if pending is None:  # token rows only: embed_tokens → decoder as one backend call
                    out = await self.backend.run_chain(self.embed_tokens, {"input_ids": np.asarray([run_ids], np.int64)},
                                                       self.decoder, feeds, link=link, read=read, keep=keep)
                else:
                    parts = [pending, await self.embed(run_ids)] if run_ids else [pending]
                    feed = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
                    out = await self.decoder.run({"inputs_embeds": feed, **feeds}, read=read, keep=keep)
                stats.decoder_runs += 1
                if self._has_rows:  # the in-graph argmax of the kept positions: (k + 1) ids read back, not rows
                    ids = np.asarray(out["next_tokens"]).reshape(-1)
                else:
                    logits = np.asarray(out["logits"])
                    rows = logits.reshape(-1, logits.shape[-1])
                    if rows.shape[0] == 1 and k > 0:  # only the last position: no verifying here
                        release_kept(out[p] for p in self._cache_map.values())
                        self.full_logits = False
                        previous = []
                        t.run_ms.append(_now() - start)
                        continue
                    ids = np.argmax(rows[-(k + 1) :, :entries], axis=-1)  # ids with a token
                if ids.shape[0] < k + 1 or ids.shape[0] > m + k:
                    raise ContractError(f"decoder: {ids.shape[0]} positions' logits for {m + k} input positions.")
                picks = [int(v) for v in ids[-(k + 1) :]]  # rows m - 1 .. m + k - 1
                n = 0
                while n < k and draft[n] == picks[n]:
                    n += 1
                stats.proposed += k
                stats.accepted += n
                if k:
                    if n == k:
                        stats.full_runs += 1
                    else:
                        stats.partial_runs += 1
                    if not pending_is_prompt:
                        state.adapt(k, n)
                new = picks[: n + 1]
                emitted = 0
                for token in new:
                    if token in eos_ids:
                        stop_reason, done = "eos", True
                        break
                    generated.append(token)
                    emitted += 1
                    piece = stream.push(token)
                    if on_token is not None:
                        on_token(token, piece)
                    if len(generated) >= max_new:
                        stop_reason, done = "length", True
                        break
                present = {past: out[p] for past, p in self._cache_map.items()}
                if done or n < k:
                    release_kept(present.values())
                    if not done:  # roll back: keep the old caches, re-feed what was accepted
                        if feed is None:  # as token ids: the rows are their embeddings
                            tail = [*run_ids[: m + n], new[-1]]
                        else:
                            pending, tail = feed[:, : m + n], [new[-1]]
                else:
                    release_kept(caches.values())
                    caches = present
                    committed = total
                    pending, tail = None, [new[-1]]
                    pending_is_prompt = False
                elapsed = _now() - start
                t.run_ms.append(elapsed)
                if stats.decoder_runs == 1:
                    t.prefill_ms = elapsed
                t.token_ms.extend([elapsed / max(emitted, 1)] * max(emitted, 1))
                cancel.check()
        finally:
            release_kept(caches.values())
        rest = stream.flush()
        if on_token is not None and rest:
            on_token(-1, rest)
        eos = self.text_config.eos_token_ids[0] if stop_reason == "eos" and self.text_config.eos_token_ids else None
        state.remember(prompt, generated, eos)
        for name in ("decoder_runs", "proposed", "accepted", "full_runs", "partial_runs"):
            setattr(state.totals, name, getattr(state.totals, name) + getattr(stats, name))
        final = self.tokenizer.decode(generated)
        return CaptionResult(final, generated, list(prompt_ids), stop_reason, t, stats, speculative=True)


def check_prompt_text(prompt: str) -> None:
    """Refuse text that is not Unicode (lone surrogates: undecodable bytes from a shell, or a broken JS string)."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(
            f"The prompt is not valid text: character {exc.start} is an undecodable byte or half of a surrogate "
            f"pair ({prompt[exc.start]!r}); pass the prompt as UTF-8."
        ) from None
