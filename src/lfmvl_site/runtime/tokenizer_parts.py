"""The pipeline stages of a tokenizer.json around its BPE model, read the way HF ``tokenizers`` reads them.

HF ``tokenizers`` composes a normalizer, a pre-tokenizer, a decoder and a post-processor, each of which may be a
``Sequence`` of others. This module parses the members that a byte-level BPE tokenizer of the LFM2 family can
use and applies them with the same semantics; anything else is a :class:`ContractError` naming the field and the
value, so an unsupported file fails at load instead of tokenizing differently.

Supported members: normalizers ``NFC``/``NFD``/``NFKC``/``NFKD``/``Lowercase``/``Strip``/``Prepend``/``Replace``;
pre-tokenizers ``Split`` (every behaviour, ``invert``), ``ByteLevel``, ``Digits``; decoders ``ByteLevel``,
``Fuse``, ``Strip``, ``Replace``; post-processors ``ByteLevel`` (offsets only) and ``TemplateProcessing``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lfmvl_site.errors import ContractError

__all__ = [
    "Decoder",
    "Normalizer",
    "PostProcessor",
    "PreTokenizer",
    "parse_decoder",
    "parse_normalizer",
    "parse_post_processor",
    "parse_pre_tokenizer",
    "type_of",
]

# GPT-2's split pattern, which ByteLevel(use_regex=true) applies (HF: ByteLevel's built-in regex).
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_BEHAVIORS = ("Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous")


def _is_ws(ch: str) -> bool:
    """Unicode White_Space (Rust's ``char::is_whitespace``)."""
    return ch.isspace() and ch not in "\x1c\x1d\x1e\x1f"


def type_of(obj: object) -> object:
    """The ``type`` of a tokenizer.json component, or the value itself when it is not an object."""
    return obj.get("type") if isinstance(obj, dict) else obj


def _fail(field: str, what: str) -> ContractError:
    return ContractError(f"tokenizer.json: {field} {what}; this runtime supports byte-level BPE tokenizers like LFM2's")


def _need(cond: bool, field: str, what: str) -> None:
    if not cond:
        raise _fail(field, what)


def _flatten(obj: Any, field: str, key: str) -> list[tuple[str, dict]]:
    """Members of a (possibly nested) Sequence component as (field path, member) pairs, in order."""
    if obj is None:
        return []
    _need(isinstance(obj, dict), field, f"is {obj!r}, expected an object")
    if obj.get("type") != "Sequence":
        return [(field, obj)]
    members = obj.get(key)
    _need(isinstance(members, list), f"{field}.{key}", "is missing")
    out: list[tuple[str, dict]] = []
    for i, member in enumerate(members):
        out.extend(_flatten(member, f"{field}.{key}[{i}]", key))
    return out


def _pattern(field: str, spec: Any) -> re.Pattern[str]:
    """A ``{"String": s}`` or ``{"Regex": r}`` pattern as a compiled Python regex."""
    from lfmvl_site.runtime.tokenizer import (
        translate_pattern,  # the \\p{..} translation lives with the BPE
    )

    _need(isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in ("String", "Regex"), field,
          f"is {spec!r}, expected {{'String': ...}} or {{'Regex': ...}}")
    kind, value = next(iter(spec.items()))
    _need(isinstance(value, str), field, f"is {spec!r}, expected a string pattern")
    if kind == "String":
        return re.compile(re.escape(value))
    try:
        return re.compile(translate_pattern(value))
    except ContractError as exc:
        raise _fail(field, f"is {value!r}: {str(exc).removeprefix('tokenizer.json ')}") from exc
    except re.error as exc:
        raise _fail(field, f"is a regex Python cannot compile ({exc})") from exc


# -- normalizers -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Normalizer:
    """Text → normalized text, the composition of the file's normalizer members."""

    steps: tuple[Callable[[str], str], ...] = ()

    def __call__(self, text: str) -> str:
        for step in self.steps:
            text = step(text)
        return text

    def __bool__(self) -> bool:
        return bool(self.steps)


def _normalizer_step(field: str, spec: dict) -> Callable[[str], str]:
    kind = spec.get("type")
    if kind in ("NFC", "NFD", "NFKC", "NFKD"):
        form = str(kind)
        return lambda s: unicodedata.normalize(form, s)  # type: ignore[arg-type]
    if kind == "Lowercase":
        return str.lower
    if kind == "Strip":
        left, right = bool(spec.get("strip_left", True)), bool(spec.get("strip_right", True))

        def strip(s: str) -> str:  # HF strips char::is_whitespace, which is str.isspace minus U+001C..U+001F
            lo, hi = 0, len(s)
            while left and lo < hi and _is_ws(s[lo]):
                lo += 1
            while right and hi > lo and _is_ws(s[hi - 1]):
                hi -= 1
            return s[lo:hi]

        return strip
    if kind == "Prepend":
        pre = spec.get("prepend")
        _need(isinstance(pre, str), f"{field}.prepend", f"is {pre!r}, expected a string")
        prefix = str(pre)
        return lambda s: (prefix + s) if s else s
    if kind == "Replace":
        pat = _pattern(f"{field}.pattern", spec.get("pattern"))
        content = spec.get("content")
        _need(isinstance(content, str), f"{field}.content", f"is {content!r}, expected a string")
        repl = str(content)
        return lambda s: pat.sub(lambda _m: repl, s)
    raise _fail(f"{field}.type", f"is {kind!r}, which this runtime does not implement "
                "(supported: NFC, NFD, NFKC, NFKD, Lowercase, Strip, Prepend, Replace, Sequence)")


def parse_normalizer(spec: Any) -> Normalizer:
    """The ``normalizer`` of tokenizer.json (null, one member, or a Sequence)."""
    return Normalizer(tuple(_normalizer_step(f, m) for f, m in _flatten(spec, "normalizer", "normalizers")))


# -- pre-tokenizers ----------------------------------------------------------------------------------------
def _split_pieces(text: str, pattern: re.Pattern[str], behavior: str, invert: bool) -> list[str]:
    """HF's ``Split`` with a SplitDelimiterBehavior: the text cut at the pattern's matches."""
    spans: list[tuple[str, bool]] = []
    pos = 0
    for m in pattern.finditer(text):
        if m.start() == m.end():
            continue
        if m.start() > pos:
            spans.append((text[pos : m.start()], invert))
        spans.append((m.group(), not invert))
        pos = m.end()
    if pos < len(text):
        spans.append((text[pos:], invert))
    out: list[str] = []
    if behavior == "Removed":
        out = [s for s, is_delim in spans if not is_delim]
    elif behavior == "Isolated":
        out = [s for s, _ in spans]
    elif behavior == "Contiguous":
        prev_delim = False
        for s, is_delim in spans:
            if is_delim and prev_delim and out:
                out[-1] += s
            else:
                out.append(s)
            prev_delim = is_delim
    elif behavior == "MergedWithPrevious":
        prev_delim = True
        for s, is_delim in spans:
            if is_delim and not prev_delim and out:
                out[-1] += s
            else:
                out.append(s)
            prev_delim = is_delim
    else:  # MergedWithNext
        carry = ""
        for s, is_delim in spans:
            if is_delim:
                carry += s
            else:
                out.append(carry + s)
                carry = ""
        if carry:
            out.append(carry)
    return [s for s in out if s]


@dataclass(frozen=True)
class PreTokenizer:
    """Text → words (byte-mapped when a ByteLevel member maps them), the composition of the file's members."""

    steps: tuple[Callable[[list[str]], list[str]], ...]
    byte_level: bool

    def __call__(self, text: str) -> list[str]:
        pieces = [text] if text else []
        for step in self.steps:
            pieces = step(pieces)
        return pieces


def _pre_step(field: str, spec: dict, byte_map: Mapping[int, str]) -> tuple[Callable[[list[str]], list[str]], bool]:
    """One pre-tokenizer member as a pieces → pieces function, and whether it byte-maps."""
    kind = spec.get("type")
    if kind == "Split":
        pat = _pattern(f"{field}.pattern", spec.get("pattern"))
        behavior = spec.get("behavior")
        _need(behavior in _BEHAVIORS, f"{field}.behavior", f"is {behavior!r}, expected one of {list(_BEHAVIORS)}")
        invert = bool(spec.get("invert", False))
        return (lambda ps: [q for p in ps for q in _split_pieces(p, pat, str(behavior), invert)]), False
    if kind == "Digits":
        one = bool(spec.get("individual_digits", False))
        digits = _pattern(f"{field}", {"Regex": r"\p{N}" if one else r"\p{N}+"})
        return (lambda ps: [q for p in ps for q in _split_pieces(p, digits, "Isolated", False)]), False
    if kind == "ByteLevel":
        prefix = bool(spec.get("add_prefix_space", False))
        gpt2 = _pattern(f"{field}", {"Regex": GPT2_PATTERN}) if spec.get("use_regex", True) else None
        table = [byte_map[b] for b in range(256)]

        def byte_level(pieces: list[str]) -> list[str]:
            out: list[str] = []
            for p in pieces:
                if prefix and not p.startswith(" "):
                    p = " " + p
                words = _split_pieces(p, gpt2, "Isolated", False) if gpt2 is not None else [p]
                out.extend("".join(table[b] for b in w.encode("utf-8")) for w in words)
            return out

        return byte_level, True
    raise _fail(f"{field}.type", f"is {kind!r}, which this runtime does not implement "
                "(supported: Split, ByteLevel, Digits, Sequence)")


def parse_pre_tokenizer(spec: Any, byte_map: Mapping[int, str]) -> PreTokenizer:
    """The ``pre_tokenizer`` of tokenizer.json; exactly one ByteLevel member must map bytes, after every split."""
    members = _flatten(spec, "pre_tokenizer", "pretokenizers")
    steps, mapped = [], 0
    for field, member in members:
        step, is_byte_level = _pre_step(field, member, byte_map)
        _need(not (mapped and not is_byte_level), field, f"({member.get('type')!r}) comes after ByteLevel; "
              "splits must come before the byte mapping")
        mapped += is_byte_level
        steps.append(step)
    _need(mapped == 1, "pre_tokenizer", f"has {mapped} ByteLevel members, expected exactly one (byte-level BPE)")
    return PreTokenizer(tuple(steps), byte_level=True)


# -- decoders ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decoder:
    """Token strings → bytes, the composition of the file's decoder members (ByteLevel turns text into bytes)."""

    before: tuple[Callable[[list[str]], list[str]], ...]
    unbyte: Mapping[str, int]

    def token_bytes(self, token: str) -> bytes:
        """One token's bytes as HF's ByteLevel decoder gives them: mapped chars, or the raw UTF-8 if any is unmapped."""
        unbyte = self.unbyte
        try:
            return bytes(unbyte[c] for c in token)
        except KeyError:
            return token.encode("utf-8")

    def tokens_bytes(self, tokens: list[str]) -> bytes:
        for step in self.before:
            tokens = step(tokens)
        return b"".join(self.token_bytes(t) for t in tokens)

    @property
    def per_token(self) -> bool:
        """True when each token's bytes do not depend on its neighbours (so decoding can be incremental)."""
        return not self.before


def parse_decoder(spec: Any, byte_map: Mapping[int, str]) -> Decoder:
    """The ``decoder`` of tokenizer.json: string-level members (Fuse, Strip, Replace) then exactly one ByteLevel last."""
    members = _flatten(spec, "decoder", "decoders")
    _need(bool(members), "decoder", "is null, expected ByteLevel")
    before: list[Callable[[list[str]], list[str]]] = []
    for i, (field, member) in enumerate(members):
        kind = member.get("type")
        if kind == "ByteLevel":
            _need(i == len(members) - 1, field, "is ByteLevel but not the last decoder; not supported")
            continue
        if kind == "Fuse":
            def fuse(ts: list[str]) -> list[str]:
                return ["".join(ts)] if ts else ts

            before.append(fuse)
        elif kind == "Strip":
            content, start, stop = member.get("content"), int(member.get("start", 0)), int(member.get("stop", 0))
            _need(isinstance(content, str) and len(content) == 1, f"{field}.content", f"is {content!r}, expected one character")

            def strip(ts: list[str], c: str = str(content), a: int = start, b: int = stop) -> list[str]:
                out = []
                for t in ts:
                    lo = next((k for k in range(min(a, len(t))) if t[k] != c), min(a, len(t)))
                    hi = len(t) - next((k for k in range(min(b, len(t) - lo)) if t[len(t) - 1 - k] != c), min(b, len(t) - lo))
                    out.append(t[lo:hi])
                return out

            before.append(strip)
        elif kind == "Replace":
            pat = _pattern(f"{field}.pattern", member.get("pattern"))
            content = member.get("content")
            _need(isinstance(content, str), f"{field}.content", f"is {content!r}, expected a string")
            def replace(ts: list[str], p: re.Pattern[str] = pat, c: str = str(content)) -> list[str]:
                return [p.sub(lambda _m: c, t) for t in ts]

            before.append(replace)
        else:
            raise _fail(f"{field}.type", f"is {kind!r}, which this runtime does not implement "
                        "(supported: ByteLevel, Fuse, Strip, Replace, Sequence)")
    _need(members[-1][1].get("type") == "ByteLevel", "decoder", "has no ByteLevel member, expected one (byte-level BPE)")
    return Decoder(tuple(before), {c: b for b, c in byte_map.items()})


# -- post-processors ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PostProcessor:
    """What ``add_special_tokens=True`` wraps around a single sequence (TemplateProcessing's ``single``)."""

    prefix: tuple[int, ...] = ()
    suffix: tuple[int, ...] = ()

    def apply(self, ids: Sequence[int]) -> list[int]:
        return [*self.prefix, *ids, *self.suffix]


def parse_post_processor(spec: Any) -> PostProcessor:
    """The ``post_processor``: ByteLevel members only touch offsets; one TemplateProcessing gives the wrapping ids."""
    result = PostProcessor()
    templates = 0
    for field, member in _flatten(spec, "post_processor", "processors"):
        kind = member.get("type")
        if kind == "ByteLevel":
            continue
        _need(kind == "TemplateProcessing", f"{field}.type", f"is {kind!r}, expected ByteLevel or TemplateProcessing")
        templates += 1
        _need(templates == 1, field, "is a second TemplateProcessing; not supported")
        specials = member.get("special_tokens") or {}
        before: list[int] = []
        after: list[int] = []
        seen_a = False
        for k, piece in enumerate(member.get("single") or []):
            if "Sequence" in piece:
                _need(piece["Sequence"].get("id") == "A" and not seen_a, f"{field}.single[{k}]", f"is {piece!r}, expected one "
                                                                                                 "Sequence A")
                seen_a = True
            elif "SpecialToken" in piece:
                name = piece["SpecialToken"].get("id")
                _need(name in specials, f"{field}.single[{k}]", f"names {name!r}, which special_tokens lacks")
                (after if seen_a else before).extend(int(i) for i in specials[name]["ids"])
            else:
                raise _fail(f"{field}.single[{k}]", f"is {piece!r}, expected Sequence or SpecialToken")
        result = PostProcessor(tuple(before), tuple(after))
    return result
