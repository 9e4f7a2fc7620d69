"""runtime.tokenizer on the published LFM2.5-VL-1.6B tokenizer.json, against HF ``tokenizers`` on a large multilingual corpus.

The corpus is text found on this machine (Debian's locale sources, CPython's CJK codec test files and its own
sources and tests) plus generated strings over many scripts; nothing here was written to suit the tokenizer.
"""

from __future__ import annotations

import random
import re
import sys
import sysconfig
from pathlib import Path

import pytest
from support import real_tokenizer_json

from lfmvl_site.runtime.tokenizer import Tokenizer

hf_tokenizers = pytest.importorskip("tokenizers")

_ESCAPE = re.compile(r"<U([0-9A-Fa-f]{4,8})>")


def _locale_lines() -> list[str]:
    """Month/day names, messages and formats of every locale in /usr/share/i18n/locales, with <Uxxxx> decoded."""
    out: list[str] = []
    root = Path("/usr/share/i18n/locales")
    for path in sorted(root.glob("*"))[:2000] if root.is_dir() else []:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if "<U" in line:
                decoded = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)) if int(m.group(1), 16) < 0x110000 else "", line)
                out.append(decoded.replace('";"', " ").replace('"', ""))
    return out


def _stdlib_lines() -> list[str]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    out: list[str] = []
    for sub in ("test/cjkencodings", "test"):
        for path in sorted((lib / sub).glob("*utf-8.txt" if "cjk" in sub else "test_[su]*.py"))[:60]:
            out.extend(path.read_text(encoding="utf-8", errors="replace").splitlines())
    for name in ("textwrap.py", "json/decoder.py", "unicodedata" and "string.py"):
        p = lib / name
        if p.exists():
            out.extend(p.read_text(encoding="utf-8").splitlines())
    return out


def _generated(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    blocks = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x530, 0x58F), (0x590, 0x6FF),
              (0x900, 0x97F), (0xE00, 0xE7F), (0x1100, 0x11FF), (0x3040, 0x30FF), (0x4E00, 0x4FFF), (0xAC00, 0xAD00),
              (0x1F300, 0x1F64F), (0x2000, 0x206F), (0x10000, 0x1007F), (0x1D400, 0x1D4FF)]
    words = ["python", "Mathias", " the", "'s", "'LL", "123456", "   ", "\r\n", "\n\n", "\t", "<image>", "<|im_end|>", "<think>"]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 10)):
            if rng.random() < 0.25:
                parts.append(rng.choice(words))
            else:
                lo, hi = rng.choice(blocks)
                parts.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 7))))
        out.append("".join(parts))
    return out


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    unique = sorted({line for line in _locale_lines() + _stdlib_lines() if line.strip()})
    texts = random.Random(3).sample(unique, min(len(unique), 30_000)) + _generated(3000, seed=11)
    # Multi-line chunks too, so newlines, indentation and long runs are exercised.
    texts += ["\n".join(texts[i : i + 7]) for i in range(0, len(texts), 97)]
    assert len(texts) >= 20_000, f"corpus too small ({len(texts)} texts); the machine lacks the expected text files"
    assert sum(1 for t in texts if any(ord(c) > 0x2FF for c in t)) >= 5_000, "corpus is not multilingual enough"
    return texts


@pytest.fixture(scope="module")
def real_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return real_tokenizer_json(tmp_path_factory.mktemp("real_tok"))


@pytest.fixture(scope="module")
def ours(real_path: Path) -> Tokenizer:
    return Tokenizer.from_json(real_path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def hf(real_path: Path):
    return hf_tokenizers.Tokenizer.from_file(str(real_path))


@pytest.fixture(scope="module")
def hf_plain(real_path: Path):
    """HF reading special spellings as text (its ``encode_special_tokens``): what the runtime does for user text."""
    tok = hf_tokenizers.Tokenizer.from_file(str(real_path))
    tok.encode_special_tokens = True
    return tok


def test_real_file_structure_is_what_the_readme_says(hf, ours: Tokenizer) -> None:
    assert ours.vocab_size == hf.get_vocab_size() == 64_400
    assert ours.special_token_id("<|image_split|>") == 500
    assert ours.token_to_id("<think>") is None
    assert ours.token_to_id("Mathias") == hf.token_to_id("Mathias") and "Mathias" not in ours.special_tokens


def test_encode_matches_hf_on_a_large_multilingual_corpus(corpus: list[str], ours: Tokenizer, hf, hf_plain) -> None:
    bad = []
    for text in corpus:
        if ours.encode(text) != hf_plain.encode(text, add_special_tokens=False).ids or ours.encode(text, allow_special=True) != hf.encode(text, add_special_tokens=False).ids:
            bad.append(text)
    assert not bad, f"{len(bad)} of {len(corpus)} texts differ, e.g. {bad[:3]!r}"


def test_add_special_tokens_follows_the_template_processing(corpus: list[str], ours: Tokenizer, hf) -> None:
    for text in corpus[:2000]:
        assert ours.encode(text, allow_special=True, add_special_tokens=True) == hf.encode(text).ids


def test_decode_matches_hf_and_round_trips(corpus: list[str], ours: Tokenizer, hf, hf_plain) -> None:
    for text in corpus[::3]:
        ids = hf_plain.encode(text, add_special_tokens=False).ids
        assert ours.decode(ids) == hf.decode(ids) == text
        assert ours.decode(ids, skip_special=False) == hf.decode(ids, skip_special_tokens=False)


def test_ids_without_an_entry_decode_to_nothing_as_in_hf(ours: Tokenizer, hf) -> None:
    rng = random.Random(5)
    for _ in range(300):
        ids = [rng.randrange(65_536) for _ in range(rng.randint(1, 10))]
        assert ours.decode(ids) == hf.decode(ids)
        assert ours.decode(ids, skip_special=False) == hf.decode(ids, skip_special_tokens=False)
    assert ours.decode([64_400, 65_535]) == "" == hf.decode([64_400, 65_535])


def test_streaming_decode_matches_hf_decode_stream(corpus: list[str], ours: Tokenizer, hf) -> None:
    from tokenizers.decoders import DecodeStream

    rng = random.Random(7)
    samples = rng.sample(corpus, 1500)
    for text in samples:
        ids = hf.encode(text, add_special_tokens=False).ids
        stream, ref = ours.stream_decoder(), DecodeStream(skip_special_tokens=True)
        pieces, ref_pieces = [], []
        for i in ids:
            pieces.append(stream.push(i))
            ref_pieces.append(ref.step(hf, i) or "")
        pieces.append(stream.flush())
        assert "".join(pieces) == hf.decode(ids) == "".join(ref_pieces)
        # At every step HF's text so far is a prefix of ours: both hold back an incomplete UTF-8 character, and ours
        # never lags (HF also holds a complete token that precedes an incomplete one).
        ours_so_far = ref_so_far = ""
        for mine, theirs in zip(pieces, ref_pieces):
            ours_so_far, ref_so_far = ours_so_far + mine, ref_so_far + theirs
            assert ours_so_far.startswith(ref_so_far), text
            assert "\ufffd" not in mine or "\ufffd" in theirs


def test_the_corpus_is_found_on_this_machine() -> None:
    assert sys.version_info >= (3, 11)
    assert len(_locale_lines()) > 1000 or len(_stdlib_lines()) > 20_000
