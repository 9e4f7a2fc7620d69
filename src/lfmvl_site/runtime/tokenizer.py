"""tokenizer.json → token ids and back: byte-level BPE with ids identical to HF ``tokenizers``.

Pure Python (stdlib + numpy), so it runs unchanged in Pyodide, whose bundle has no
``regex`` module. The pre-tokenizer pattern uses ``\\p{L}``, ``\\p{N}`` and Unicode
``\\s``; Python's ``re`` has none of these, so equivalent character classes are built
once from :mod:`unicodedata` (see :func:`unicode_classes`).

Unicode versions: HF ``tokenizers`` (0.23) matches the pattern with Oniguruma, whose
tables are Unicode 16.0; CPython 3.11 ships Unicode 14.0 and Pyodide's 3.12 ships 15.0.
Measured over every code point, the only disagreements are the letters and numbers
assigned in Unicode 15.0-16.0, so those ranges are added from a small table below
(:data:`_NEWER_LETTERS`, :data:`_NEWER_NUMBERS`); with it both hosts split like HF.

The stages around the BPE model (normalizer, pre-tokenizer, decoder, post-processor, each possibly a
``Sequence``) are read by :mod:`lfmvl_site.runtime.tokenizer_parts`.

Deliberate deviation from HF: :meth:`Tokenizer.encode` never produces a SPECIAL
token from text. A user typing ``<image>`` or ``<|im_end|>`` gets the ids of that
plain text; only the prompt builder inserts special ids, structurally. Non-special
added tokens (``python``, ``Mathias`` in LFM2) are split out of text as HF does.
"""

from __future__ import annotations

import codecs
import json
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from lfmvl_site.errors import ContractError
from lfmvl_site.runtime.tokenizer_parts import (
    Decoder,
    Normalizer,
    PostProcessor,
    PreTokenizer,
    _is_ws,
    parse_decoder,
    parse_normalizer,
    parse_post_processor,
    parse_pre_tokenizer,
    type_of,
)

__all__ = ["StreamDecoder", "Tokenizer", "byte_map", "check_vocabulary", "translate_pattern", "unicode_classes"]

# Unicode White_Space (what Oniguruma's \s matches); Python's \s also matches U+001C..U+001F.
_WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_WORD_CACHE_MAX = 20_000

# Letters (L*) and numbers (N*) assigned in Unicode 15.0-16.0, i.e. unknown to Python 3.11's
# unicodedata (14.0), which Oniguruma in HF tokenizers already classifies. Inclusive ranges.
_NEWER_LETTERS = (
    (0x1C89, 0x1C8A), (0xA7CB, 0xA7CD), (0xA7DA, 0xA7DC), (0x105C0, 0x105F3), (0x10D4A, 0x10D65),
    (0x10D6F, 0x10D85), (0x10EC2, 0x10EC4), (0x1123F, 0x11240), (0x11380, 0x11389), (0x1138B, 0x1138B),
    (0x1138E, 0x1138E), (0x11390, 0x113B5), (0x113B7, 0x113B7), (0x113D1, 0x113D1), (0x113D3, 0x113D3),
    (0x11BC0, 0x11BE0), (0x11F02, 0x11F02), (0x11F04, 0x11F10), (0x11F12, 0x11F33), (0x1342F, 0x1342F),
    (0x13441, 0x13446), (0x13460, 0x143FA), (0x16100, 0x1611D), (0x16D40, 0x16D6C), (0x18CFF, 0x18CFF),
    (0x1B132, 0x1B132), (0x1B155, 0x1B155), (0x1DF25, 0x1DF2A), (0x1E030, 0x1E06D), (0x1E4D0, 0x1E4EB),
    (0x1E5D0, 0x1E5ED), (0x1E5F0, 0x1E5F0), (0x2B739, 0x2B739), (0x2EBF0, 0x2EE5D), (0x31350, 0x323AF),
)
_NEWER_NUMBERS = (
    (0x10D40, 0x10D49), (0x116D0, 0x116E3), (0x11BF0, 0x11BF9), (0x11F50, 0x11F59), (0x16130, 0x16139),
    (0x16D70, 0x16D79), (0x1CCF0, 0x1CCF9), (0x1D2C0, 0x1D2D3), (0x1E4F0, 0x1E4F9), (0x1E5F1, 0x1E5FA),
)


def byte_map() -> dict[int, str]:
    """The GPT-2 byte → printable character map used by byte-level BPE."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _class_body(ranges: list[tuple[int, int]]) -> str:
    """Inclusive code point ranges (any order, may touch) → a regex class body of escaped ranges."""
    merged: list[list[int]] = []
    for a, b in sorted(ranges):
        if merged and a <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    esc = "\\U{:08x}".format
    return "".join(esc(a) if a == b else f"{esc(a)}-{esc(b)}" for a, b in merged)


def _cp(index: int) -> int:
    """Code point at ``index`` of the surrogate-free string built in :func:`unicode_classes`."""
    return index if index < 0xD800 else index + 0x800


@lru_cache(maxsize=1)
def unicode_classes() -> dict[str, str]:
    """Class bodies for ``\\p{L}`` (categories L*), ``\\p{N}`` (N*) and ``\\s`` (White_Space).

    Built once per process from the host's :mod:`unicodedata` plus the Unicode 15-16 table.
    To stay fast in Pyodide, runs are found with ``re`` over one string of every code point:
    ``[^\\W\\d_]`` is the L* letters plus the non-decimal numbers (No, Nl and some numeric Lo),
    told apart per run with ``str.isalpha`` (exactly L*); ``\\d`` is exactly Nd.
    """
    # Letters and numbers exist only in planes 0-3 (4-13 are unassigned, 14 holds tags and
    # variation selectors, 15-16 private use), so scanning below U+40000 is complete and 4x faster.
    cps = np.concatenate([np.arange(0, 0xD800, dtype="<u4"), np.arange(0xE000, 0x40000, dtype="<u4")])
    text = cps.tobytes().decode("utf-32-le")
    letters: list[tuple[int, int]] = list(_NEWER_LETTERS)
    numbers: list[tuple[int, int]] = list(_NEWER_NUMBERS)
    for m in re.finditer(r"[^\W\d_]+", text):
        start, run = m.start(), m.group()
        if run.isalpha():
            letters.append((_cp(start), _cp(m.end() - 1)))
            continue
        for k, ch in enumerate(run):
            if ch.isalpha():
                letters.append((_cp(start + k), _cp(start + k)))
            elif unicodedata.category(ch)[0] == "N":
                numbers.append((_cp(start + k), _cp(start + k)))
    numbers.extend((_cp(m.start()), _cp(m.end() - 1)) for m in re.finditer(r"\d+", text))
    return {"L": _class_body(letters), "N": _class_body(numbers), "s": _WHITE_SPACE}


def translate_pattern(pattern: str) -> str:
    """Rewrite a Rust/Oniguruma pattern for Python ``re``: ``\\p{L}``, ``\\p{N}``, ``\\s``, ``\\S``."""
    cls = unicode_classes()
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            if nxt in "pP" and pattern.startswith("{", i + 2):
                end = pattern.find("}", i)
                name = pattern[i + 3 : end]
                if name not in ("L", "N"):
                    raise ContractError(f"tokenizer.json pre_tokenizer regex uses \\{nxt}{{{name}}}, which is not supported; "
                                        f"only \\p{{L}} and \\p{{N}}")
                if nxt == "P" and in_class:
                    raise ContractError("tokenizer.json pre_tokenizer regex uses \\P{..} inside a class; not supported")
                body = cls[name]
                out.append(body if in_class else (f"[{body}]" if nxt == "p" else f"[^{body}]"))
                i = end + 1
                continue
            if nxt in "sS":
                if nxt == "S" and in_class:
                    raise ContractError("tokenizer.json pre_tokenizer regex uses \\S inside a class; not supported")
                body = cls["s"]
                out.append(body if in_class else (f"[{body}]" if nxt == "s" else f"[^{body}]"))
                i += 2
                continue
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if ch == "[":
            if in_class:
                raise ContractError("tokenizer.json pre_tokenizer regex has a nested character class; not supported")
            in_class = True
            out.append(ch)
            i += 1
            if pattern.startswith("^", i):
                out.append("^")
                i += 1
            if pattern.startswith("]", i):
                out.append("\\]")
                i += 1
            continue
        if ch == "]" and in_class:
            in_class = False
        out.append(ch)
        i += 1
    return "".join(out)


@dataclass(frozen=True)
class _AddedToken:
    content: str
    id: int
    special: bool
    normalized: bool
    lstrip: bool
    rstrip: bool
    single_word: bool


@dataclass(frozen=True)
class _Spec:
    """What the runtime reads out of tokenizer.json after validation."""

    vocab: dict[str, int]
    merges: list[tuple[str, str]]
    ignore_merges: bool
    added: list[_AddedToken]
    normalizer: Normalizer
    pre_tokenizer: PreTokenizer
    decoder: Decoder
    post_processor: PostProcessor


def _need(cond: bool, field: str, what: str) -> None:
    if not cond:
        raise ContractError(f"tokenizer.json: {field} {what}; this runtime supports byte-level BPE tokenizers like LFM2's")


def _parse_added(raw: object) -> list[_AddedToken]:
    _need(isinstance(raw, list), "added_tokens", f"is {type_of(raw)!r}, expected a list")
    out: list[_AddedToken] = []
    tok: Any
    for k, tok in enumerate(raw):  # type: ignore[arg-type]
        field = f"added_tokens[{k}]"
        _need(isinstance(tok, dict) and isinstance(tok.get("content"), str) and tok["content"] != "", field, "lacks a content "
                                                                                                             "string")
        _need(isinstance(tok.get("id"), int) and tok["id"] >= 0, f"{field}.id", f"is {tok.get('id')!r}, expected an id >= 0")
        special = bool(tok.get("special", False))
        out.append(_AddedToken(tok["content"], int(tok["id"]), special, bool(tok.get("normalized", not special)),
                               bool(tok.get("lstrip")), bool(tok.get("rstrip")), bool(tok.get("single_word"))))
    return out


def _parse(data: dict) -> _Spec:
    """Validate tokenizer.json against what this runtime implements and extract the parts it uses."""
    model = data.get("model")
    _need(isinstance(model, dict) and model.get("type", "BPE") == "BPE", "model.type", f"is {type_of(model)!r}, expected 'BPE'")
    assert isinstance(model, dict)
    _need(model.get("dropout") in (None, 0, 0.0), "model.dropout",
          f"is {model.get('dropout')!r}, expected null (dropout is for training)")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        _need(not model.get(key), f"model.{key}", f"is {model.get(key)!r}, expected null")
    vocab = model.get("vocab")
    _need(isinstance(vocab, dict) and bool(vocab), "model.vocab", "is missing or empty")
    assert isinstance(vocab, dict)
    raw = model.get("merges") or []
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in raw]
    for m in merges:
        _need(len(m) == 2 and (m[0] + m[1]) in vocab, "model.merges", f"has {m!r} whose parts or result is not in model.vocab")
    table = byte_map()
    missing = [c for c in table.values() if c not in vocab]
    # With all 256 byte symbols in the vocabulary no symbol is ever unknown, so unk_token, byte_fallback and
    # fuse_unk never apply: they are accepted as found.
    _need(not missing, "model.vocab", f"lacks {len(missing)} of the 256 byte-level symbols")
    return _Spec(
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]
        ignore_merges=bool(model.get("ignore_merges", False)),
        added=_parse_added(data.get("added_tokens") or []),
        normalizer=parse_normalizer(data.get("normalizer")),
        pre_tokenizer=parse_pre_tokenizer(data.get("pre_tokenizer"), table),
        decoder=parse_decoder(data.get("decoder"), table),
        post_processor=parse_post_processor(data.get("post_processor")),
    )


class _AddedMatcher:
    """HF's added-vocabulary split over one kind of text (raw or normalized): leftmost-longest, lstrip/rstrip, single_word."""

    def __init__(self, tokens: Sequence[_AddedToken], key: Callable[[str], str]) -> None:
        self._by_text = {key(t.content): t for t in tokens}
        self._by_text.pop("", None)
        alts = "|".join(re.escape(t) for t in sorted(self._by_text, key=len, reverse=True))
        self._re = re.compile(alts) if alts else None

    def split(self, text: str) -> list[tuple[str, _AddedToken | None]]:
        if self._re is None or not text:
            return [(text, None)] if text else []
        out: list[tuple[str, _AddedToken | None]] = []
        pos = 0
        for m in self._re.finditer(text):
            tok = self._by_text[m.group()]
            start, stop = m.start(), m.end()
            if start < pos:
                continue
            if tok.single_word and ((start > 0 and _is_word(text[start - 1])) or (stop < len(text) and _is_word(text[stop]))):
                continue
            if tok.lstrip:
                while start > pos and _is_ws(text[start - 1]):
                    start -= 1
            if tok.rstrip:
                while stop < len(text) and _is_ws(text[stop]):
                    stop += 1
            if start > pos:
                out.append((text[pos:start], None))
            out.append((text[start:stop], tok))
            pos = stop
        if pos < len(text):
            out.append((text[pos:], None))
        return out


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def check_vocabulary(entries: int, rows: int) -> None:
    """The tokenizer's ids (``entries``: one more than its highest id) must fit the model's embedding / lm_head rows.

    Fewer entries than rows is normal (LFM2: 64,400 entries, 65,536 rows): the extra rows decode to nothing and
    generation masks them. More entries than rows means the tokenizer belongs to another model.
    """
    if entries > rows:
        raise ContractError(
            f"tokenizer.json has ids up to {entries - 1} but config.json's vocab_size is {rows}: the tokenizer belongs to "
            "another model; use the tokenizer.json and config.json of the same model"
        )


class Tokenizer:
    """Byte-level BPE tokenizer built from a tokenizer.json text (see module docstring)."""

    def __init__(self, spec: _Spec) -> None:
        self._normalize = spec.normalizer
        self._pre_tokenize = spec.pre_tokenizer
        self._decoder = spec.decoder
        self._post = spec.post_processor
        self._vocab: dict[str, int] = dict(spec.vocab)
        self._ranks = {pair: r for r, pair in reversed(list(enumerate(spec.merges)))}
        self._ignore_merges = spec.ignore_merges
        self._id_to_token: dict[int, str] = {i: t for t, i in self._vocab.items()}
        self._special: dict[str, int] = {}
        plain: dict[str, int] = {}
        for tok in spec.added:
            # HF keeps a normalized added token's normalized spelling as its token string (so it decodes that way).
            self._id_to_token[tok.id] = self._normalize(tok.content) if tok.normalized and self._normalize else tok.content
            (self._special if tok.special else plain)[tok.content] = tok.id
        self._plain_added = plain
        # Which added tokens match where, as in HF: normalized=false ones on the raw text, the others after
        # normalization. Specials join the matchers only for trusted text (see :meth:`encode`).
        norm = self._normalize
        self._raw = {s: _AddedMatcher([t for t in spec.added if not t.normalized and (s or not t.special)], str)
                     for s in (False, True)}
        self._normalized = {s: _AddedMatcher([t for t in spec.added if t.normalized and (s or not t.special)], norm)
                            for s in (False, True)}
        self._special_re: re.Pattern[str] | None = None
        self._cache: dict[str, tuple[int, ...]] = {}
        self._id_bytes: dict[int, bytes] = {}

    @classmethod
    def from_json(cls, text: str) -> Tokenizer:
        """Parse and validate a tokenizer.json text; raises ContractError for unsupported shapes."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ContractError(f"tokenizer.json is not valid JSON ({exc}); re-download the model files") from exc
        _need(isinstance(data, dict), "top level", "is not an object")
        return cls(_parse(data))

    # -- lookups -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """One more than the highest id."""
        return max(self._id_to_token) + 1

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids of all special added tokens."""
        return frozenset(self._special.values())

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special added tokens, content → id (a copy)."""
        return dict(self._special)

    def special_pattern(self) -> re.Pattern[str]:
        """A compiled regex matching any special token's spelling, longest first (built once)."""
        if self._special_re is None:
            alts = "|".join(re.escape(t) for t in sorted(self._special, key=len, reverse=True))
            self._special_re = re.compile(alts or "(?!)")
        return self._special_re

    def token_to_id(self, token: str) -> int | None:
        """The id of a token string (added tokens included), or None."""
        if token in self._special:
            return self._special[token]
        if token in self._plain_added:
            return self._plain_added[token]
        return self._vocab.get(token)

    def special_token_id(self, token: str) -> int:
        """The id of a special token; ContractError if the tokenizer lacks it."""
        if token not in self._special:
            raise ContractError(f"tokenizer.json has no special token {token!r}; the model files do not match LFM2-VL")
        return self._special[token]

    def id_to_token(self, i: int) -> str | None:
        """The token string of an id, or None when out of range."""
        return self._id_to_token.get(int(i))

    # -- encoding ------------------------------------------------------------------------
    def encode(self, text: str, *, allow_special: bool = False, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``.

        Special tokens spelled in ``text`` stay plain text unless ``allow_special`` is
        true (then they are split out like HF does; only for trusted template text).
        ``add_special_tokens`` wraps the ids as the post-processor says (HF's default; off here, as in
        transformers' chat templating, where the template writes the BOS itself).
        """
        ids: list[int] = []
        for raw, tok in self._raw[allow_special].split(text):
            if tok is not None:
                ids.append(tok.id)
                continue
            for piece, ntok in self._normalized[allow_special].split(self._normalize(raw) if self._normalize else raw):
                if ntok is not None:
                    ids.append(ntok.id)
                else:
                    for word in self._pre_tokenize(piece):
                        ids.extend(self._word_ids(word))
        return self._post.apply(ids) if add_special_tokens else ids

    def _word_ids(self, word: str) -> tuple[int, ...]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        if self._ignore_merges and word in self._vocab:
            out: tuple[int, ...] = (self._vocab[word],)
        else:
            out = tuple(self._vocab[s] for s in self._bpe(list(word)))
        if len(self._cache) >= _WORD_CACHE_MAX:
            self._cache.clear()
        self._cache[word] = out
        return out

    def _bpe(self, symbols: list[str]) -> list[str]:
        """Merge the lowest-ranked adjacent pair (leftmost on ties) until none applies, as HF's BPE does."""
        ranks = self._ranks
        while len(symbols) > 1:
            best_rank, best_pos = None, -1
            for i in range(len(symbols) - 1):
                r = ranks.get((symbols[i], symbols[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best_rank, best_pos = r, i
            if best_rank is None:
                break
            symbols[best_pos : best_pos + 2] = [symbols[best_pos] + symbols[best_pos + 1]]
        return symbols

    # -- decoding ------------------------------------------------------------------------
    def token_bytes(self, i: int) -> bytes:
        """The raw bytes a token stands for (HF's ByteLevel decoder's view of it); b"" for an id without an entry."""
        out = self._id_bytes.get(i)
        if out is None:
            tok = self._id_to_token.get(int(i))
            out = b"" if tok is None else self._decoder.token_bytes(tok)
            self._id_bytes[i] = out
        return out

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of ``ids`` as HF decodes them: invalid UTF-8 becomes U+FFFD, ids without an entry give "",
        special tokens are dropped when ``skip_special``."""
        special = self.special_ids if skip_special else frozenset()
        keep = [int(i) for i in ids if int(i) not in special]
        if self._decoder.per_token:
            data = b"".join(self.token_bytes(i) for i in keep)
        else:
            data = self._decoder.tokens_bytes([t for t in map(self._id_to_token.get, keep) if t is not None])
        return data.decode("utf-8", errors="replace")

    def stream_decoder(self, skip_special: bool = True) -> StreamDecoder:
        """An incremental decoder for streaming generated ids."""
        return StreamDecoder(self, skip_special=skip_special)


class StreamDecoder:
    """Turns ids into text one at a time, holding back bytes of an incomplete UTF-8 character.

    The concatenation of every :meth:`push` and the final :meth:`flush` equals
    :meth:`Tokenizer.decode` of all ids.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special: bool = True) -> None:
        self._tok = tokenizer
        self._skip = tokenizer.special_ids if skip_special else frozenset()
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # Decoders whose output for a token depends on its neighbours (Fuse, Strip...) re-decode the ids so far.
        self._ids: list[int] | None = None if tokenizer._decoder.per_token else []
        self._sent = ""

    def push(self, token_id: int) -> str:
        """Add one id; return the text that is now complete (possibly empty). O(1) per id for ByteLevel decoders."""
        if int(token_id) in self._skip:
            return ""
        if self._ids is None:
            return self._utf8.decode(self._tok.token_bytes(token_id))
        self._ids.append(int(token_id))
        text = self._tok.decode(self._ids, skip_special=False)
        if text.endswith("\ufffd"):
            return ""
        new, self._sent = text[len(self._sent):], text
        return new

    def flush(self) -> str:
        """End of stream: return what is left (an incomplete character becomes U+FFFD)."""
        if self._ids is None:
            return self._utf8.decode(b"", final=True)
        text = self._tok.decode(self._ids, skip_special=False)
        new, self._sent = text[len(self._sent):], text
        return new
