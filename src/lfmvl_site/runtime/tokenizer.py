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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from lfmvl_site.errors import ContractError

__all__ = ["Tokenizer", "StreamDecoder", "unicode_classes", "translate_pattern", "byte_map"]

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
                    raise ContractError(f"tokenizer.json pre_tokenizer regex uses \\{nxt}{{{name}}}, which is not supported; only \\p{{L}} and \\p{{N}}")
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
class _Spec:
    """What the runtime reads out of tokenizer.json after validation."""

    split: str
    vocab: dict[str, int]
    merges: list[tuple[str, str]]
    ignore_merges: bool
    added: list[dict]


def _need(cond: bool, field: str, what: str) -> None:
    if not cond:
        raise ContractError(f"tokenizer.json: {field} {what}; this runtime supports byte-level BPE tokenizers like LFM2's")


def _parse_pre_tokenizer(pre: object) -> str:
    """Return the split regex of a Sequence[Split(Isolated), ByteLevel(use_regex false)] pre-tokenizer."""
    _need(isinstance(pre, dict) and pre.get("type") == "Sequence", "pre_tokenizer.type", f"is {_type(pre)!r}, expected 'Sequence'")
    parts = pre.get("pretokenizers") or []
    _need(len(parts) == 2, "pre_tokenizer.pretokenizers", f"has {len(parts)} entries, expected [Split, ByteLevel]")
    split, level = parts
    _need(split.get("type") == "Split", "pre_tokenizer.pretokenizers[0].type", f"is {split.get('type')!r}, expected 'Split'")
    _need(isinstance(split.get("pattern"), dict) and "Regex" in split["pattern"], "pre_tokenizer.pretokenizers[0].pattern", "is not {'Regex': ...}")
    _need(split.get("behavior") == "Isolated", "pre_tokenizer.pretokenizers[0].behavior", f"is {split.get('behavior')!r}, expected 'Isolated'")
    _need(not split.get("invert", False), "pre_tokenizer.pretokenizers[0].invert", "is true, expected false")
    _need(level.get("type") == "ByteLevel", "pre_tokenizer.pretokenizers[1].type", f"is {level.get('type')!r}, expected 'ByteLevel'")
    _need(not level.get("add_prefix_space", False), "pre_tokenizer.pretokenizers[1].add_prefix_space", "is true, expected false")
    _need(not level.get("use_regex", True), "pre_tokenizer.pretokenizers[1].use_regex", "is true, expected false")
    return split["pattern"]["Regex"]


def _type(obj: object) -> object:
    return obj.get("type") if isinstance(obj, dict) else obj


def _parse(data: dict) -> _Spec:
    """Validate tokenizer.json against what this runtime implements and extract the parts it uses."""
    model = data.get("model")
    _need(isinstance(model, dict) and model.get("type") == "BPE", "model.type", f"is {_type(model)!r}, expected 'BPE'")
    _need(not model.get("byte_fallback", False), "model.byte_fallback", "is true, expected false")
    _need(model.get("dropout") in (None, 0, 0.0), "model.dropout", "is set, expected null")
    _need(not model.get("continuing_subword_prefix"), "model.continuing_subword_prefix", "is set, expected null")
    _need(not model.get("end_of_word_suffix"), "model.end_of_word_suffix", "is set, expected null")
    _need(data.get("normalizer") is None, "normalizer", f"is {_type(data.get('normalizer'))!r}, expected null")
    dec = data.get("decoder")
    _need(isinstance(dec, dict) and dec.get("type") == "ByteLevel", "decoder.type", f"is {_type(dec)!r}, expected 'ByteLevel'")
    post = data.get("post_processor")
    _need(post is None or post.get("type") in ("ByteLevel", "TemplateProcessing"), "post_processor.type", f"is {_type(post)!r}, expected null, 'ByteLevel' or 'TemplateProcessing'")
    split = _parse_pre_tokenizer(data.get("pre_tokenizer"))
    vocab = model.get("vocab")
    _need(isinstance(vocab, dict) and vocab, "model.vocab", "is missing or empty")
    raw = model.get("merges") or []
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in raw]
    for m in merges:
        _need(len(m) == 2 and (m[0] + m[1]) in vocab, "model.merges", f"has {m!r} whose parts or result is not in model.vocab")
    missing = [c for c in byte_map().values() if c not in vocab]
    _need(not missing, "model.vocab", f"lacks {len(missing)} of the 256 byte-level symbols")
    added = list(data.get("added_tokens") or [])
    for tok in added:
        flags = [k for k in ("single_word", "lstrip", "rstrip") if tok.get(k)]
        _need(tok.get("special") or not flags, f"added_tokens[{tok.get('content')!r}]", f"sets {flags}, which are not supported on non-special tokens")
    return _Spec(split, vocab, merges, bool(model.get("ignore_merges", False)), added)


class Tokenizer:
    """Byte-level BPE tokenizer built from a tokenizer.json text (see module docstring)."""

    def __init__(self, spec: _Spec) -> None:
        self._split = re.compile(translate_pattern(spec.split))
        self._vocab: dict[str, int] = dict(spec.vocab)
        self._ranks = {pair: r for r, pair in reversed(list(enumerate(spec.merges)))}
        self._ignore_merges = spec.ignore_merges
        self._bytes = byte_map()
        self._byte_table = [self._bytes[b] for b in range(256)]
        self._unbyte = {c: b for b, c in self._bytes.items()}
        self._id_to_token: dict[int, str] = {i: t for t, i in self._vocab.items()}
        self._special: dict[str, int] = {}
        plain: dict[str, int] = {}
        for tok in spec.added:
            self._id_to_token[tok["id"]] = tok["content"]
            (self._special if tok.get("special") else plain)[tok["content"]] = tok["id"]
        self._plain_added = plain
        # Leftmost-longest matching of non-special added tokens, like HF's added vocabulary.
        self._plain_split = (
            re.compile("|".join(re.escape(t) for t in sorted(plain, key=len, reverse=True))) if plain else None
        )
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
    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Token ids of ``text``. No BOS/EOS is added.

        Special tokens spelled in ``text`` stay plain text unless ``allow_special`` is
        true (then they are split out like HF does; only for trusted template text).
        """
        ids: list[int] = []
        for piece, tok_id in self._split_added(text, allow_special):
            if tok_id is not None:
                ids.append(tok_id)
            else:
                for word in self._split.findall(piece):
                    ids.extend(self._word_ids(word))
        return ids

    def _split_added(self, text: str, allow_special: bool) -> Iterable[tuple[str, int | None]]:
        """Yield (text, None) for ordinary runs and (content, id) for added tokens found in ``text``."""
        if allow_special and self._special:
            pattern = self.special_pattern()
            pos = 0
            for m in pattern.finditer(text):
                yield from self._split_plain(text[pos : m.start()])
                yield m.group(), self._special[m.group()]
                pos = m.end()
            yield from self._split_plain(text[pos:])
        else:
            yield from self._split_plain(text)

    def _split_plain(self, text: str) -> Iterable[tuple[str, int | None]]:
        if not text:
            return
        if self._plain_split is None:
            yield text, None
            return
        pos = 0
        for m in self._plain_split.finditer(text):
            if m.start() > pos:
                yield text[pos : m.start()], None
            yield m.group(), self._plain_added[m.group()]
            pos = m.end()
        if pos < len(text):
            yield text[pos:], None

    def _word_ids(self, word: str) -> tuple[int, ...]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        table = self._byte_table
        symbols = [table[b] for b in word.encode("utf-8")]
        joined = "".join(symbols)
        if self._ignore_merges and joined in self._vocab:
            out = (self._vocab[joined],)
        else:
            out = tuple(self._vocab[s] for s in self._bpe(symbols))
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
        """The raw bytes a token stands for (the ByteLevel decoder's view of it)."""
        out = self._id_bytes.get(i)
        if out is None:
            tok = self._id_to_token.get(int(i))
            if tok is None:
                raise ContractError(f"token id {i} is outside the vocabulary (size {self.vocab_size}); the model and tokenizer do not match")
            unbyte = self._unbyte
            out = b"".join(bytes([unbyte[c]]) if c in unbyte else c.encode("utf-8") for c in tok)
            self._id_bytes[i] = out
        return out

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of ``ids``; invalid UTF-8 becomes U+FFFD, special tokens are dropped when ``skip_special``."""
        special = self.special_ids if skip_special else frozenset()
        data = b"".join(self.token_bytes(i) for i in ids if int(i) not in special)
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

    def push(self, token_id: int) -> str:
        """Add one id; return the text that is now complete (possibly empty)."""
        if int(token_id) in self._skip:
            return ""
        return self._utf8.decode(self._tok.token_bytes(token_id))

    def flush(self) -> str:
        """End of stream: return what is left (an incomplete character becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)
