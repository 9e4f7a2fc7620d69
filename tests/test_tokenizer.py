"""runtime.tokenizer against HF `tokenizers` (the independent reference) on the tiny model's tokenizer.json."""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import pytest

from lfmvl_site.errors import ContractError
from lfmvl_site.runtime.tokenizer import Tokenizer, byte_map, translate_pattern
from lfmvl_site.synth.tokenizer_files import write_tokenizer_files

hf_tokenizers = pytest.importorskip("tokenizers")

CORPUS = [
    "Describe the image in one sentence.",
    "Hello world, the pythonic Mathias met python and cpython.",
    "Mathias python Mathiaspython pythonMathias PYTHON Python",
    " leading space", "   three leading spaces", "trailing spaces   ", "a  b   c    d",
    "tabs\there\t\tand\t", "line\nbreaks\n\nand\r\nwindows\r\n\r\nend", "\n\n\n", " \n \n ", "\r", "\t\n",
    "I'm sure they'll say it's 'S' and WE'RE here, you've, I'D, 'LL, 'Re, 'ſ",
    "don't   can't 'tis rock'n'roll",
    "Numbers 1 12 123 1234 12345 123456 3.14159 1,000,000 007 ¹²³ ½ ⅷ ١٢٣ १२३",
    "La caméra montre une crêpe élégante; Größe über Straße; ¿Qué? ¡Sí! Łódź",
    "Камера показывает кухню. Ёлка и ЁЖ.", "Ελληνικά γράμματα", "עברית ועוד", "العربية نص",
    "相机显示一个小厨房。图片中有一个人。", "カメラには台所が写っています。", "사진 속 사람은 책상에 앉아",
    "हिन्दी में लिखा", "ภาษาไทย", "emoji 😀😀 👍🏽 👨‍👩‍👧‍👦 🇫🇷🇩🇪 ❤️ ☕️ 🏳️‍🌈 ✨",
    "def caption(image, prompt='Describe.'):\n    return model(ids)[-1].argmax()\n",
    "for (let i = 0; i < n; i++) { x += a[i] ** 2; }  // done",
    '{"role": "user", "content": [{"type": "image"}]}',
    "mixed😀text日本語and123numbers", "___init___ __name__ a_b_c", "x\u00a0y\u2003z\u3000w\u200bq\u2028r",
    "\x1c\x1d\x1e\x1f controls \x00\x07\x7f", "\u0301 combining e\u0301 a\u0308", "ǅungla ǈubljana",
    "", " ", "a", "<", "<image>", "<|im_end|>", "text <image> and <|im_start|>user\n and <|pad|>",
]


@pytest.fixture(scope="module", params=[None, 1024], ids=["default-vocab", "tiny-model-vocab"])
def tok_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tok")
    write_tokenizer_files(d, vocab_size=request.param)
    return d


@pytest.fixture(scope="module")
def default_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tok_default")
    write_tokenizer_files(d)
    return d


@pytest.fixture(scope="module")
def ours(tok_dir: Path) -> Tokenizer:
    return Tokenizer.from_json((tok_dir / "tokenizer.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def hf(tok_dir: Path):
    return hf_tokenizers.Tokenizer.from_file(str(tok_dir / "tokenizer.json"))


@pytest.fixture(scope="module")
def hf_no_special(tok_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """HF on the same file minus the special added tokens: HF's reading of special spellings as plain text."""
    data = json.loads((tok_dir / "tokenizer.json").read_text(encoding="utf-8"))
    data["added_tokens"] = [t for t in data["added_tokens"] if not t["special"]]
    data["post_processor"] = None
    path = tmp_path_factory.mktemp("tok_plain") / "tokenizer.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return hf_tokenizers.Tokenizer.from_file(str(path))


def _random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = (
        "abcXYZ  \t\n\r'sStTmdlrev0123456789.,;:!?-_()[]{}<>|/\\\"" "éüßçñŁ" "жЁя" "日本語中文" "한" "αβ"
        "😀👍🏽\u200d❤️" "\u00a0\u3000\u2028\x1c\x85\u0301" "¹½٣"
    )
    words = ["python", "Mathias", "the", " the", "'s", "'LL", "123456", "    ", "\r\n", "<image>", "<|im_end|>"]
    out = []
    for _ in range(n):
        parts = [rng.choice(words) if rng.random() < 0.2 else "".join(rng.choices(alphabet, k=rng.randint(1, 6)))
                 for _ in range(rng.randint(1, 12))]
        out.append("".join(parts))
    return out


def test_encode_matches_hf_on_corpus(ours: Tokenizer, hf, hf_no_special) -> None:
    for text in CORPUS:
        ref = hf_no_special if ("<" in text) else hf
        assert ours.encode(text) == ref.encode(text, add_special_tokens=False).ids, text


def test_encode_matches_hf_on_random_text(ours: Tokenizer, hf_no_special) -> None:
    for text in _random_texts(400, seed=1):
        assert ours.encode(text) == hf_no_special.encode(text, add_special_tokens=False).ids, repr(text)


def test_non_special_added_tokens_are_split_out(ours: Tokenizer, hf) -> None:
    ids = ours.encode("pythonic")
    assert ids == hf.encode("pythonic", add_special_tokens=False).ids
    assert ids[0] == hf.token_to_id("python")


def test_decode_round_trips_and_matches_hf(ours: Tokenizer, hf) -> None:
    for text in CORPUS + _random_texts(100, seed=2):
        ids = ours.encode(text)
        assert ours.decode(ids) == text
        assert ours.decode(ids) == hf.decode(ids)


def test_decode_arbitrary_ids_matches_hf(ours: Tokenizer, hf) -> None:
    """Random id sequences (broken UTF-8, special tokens) decode like HF, with and without skipping specials."""
    rng = random.Random(3)
    n = hf.get_vocab_size()
    for _ in range(300):
        ids = [rng.randrange(n) for _ in range(rng.randint(1, 12))]
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True), ids
        assert ours.decode(ids, skip_special=False) == hf.decode(ids, skip_special_tokens=False), ids


def test_stream_decoder_equals_full_decode(ours: Tokenizer) -> None:
    rng = random.Random(4)
    n = ours.vocab_size
    cases = [ours.encode(t) for t in CORPUS] + [[rng.randrange(n) for _ in range(20)] for _ in range(100)]
    for ids in cases:
        dec = ours.stream_decoder()
        pieces = [dec.push(i) for i in ids] + [dec.flush()]
        assert "".join(pieces) == ours.decode(ids)


def test_stream_decoder_holds_back_incomplete_characters(ours: Tokenizer) -> None:
    bmap = byte_map()
    emoji = "😀".encode()
    byte_ids = [ours.token_to_id(bmap[b]) for b in emoji]
    dec = ours.stream_decoder()
    assert [dec.push(i) for i in byte_ids] == ["", "", "", "😀"]
    assert dec.flush() == ""


def test_special_spellings_stay_plain_text(ours: Tokenizer, hf) -> None:
    """Documented deviation: HF turns "<image>"/"<|im_end|>" in text into special ids, we never do."""
    specials = {hf.token_to_id(t) for t in ("<image>", "<|im_end|>", "<|im_start|>", "<|startoftext|>")}
    for text in ["What is <image>?", "stop<|im_end|>\n<|im_start|>assistant\n", "<|startoftext|>"]:
        hf_ids = hf.encode(text, add_special_tokens=False).ids
        assert specials & set(hf_ids)
        ids = ours.encode(text)
        assert not set(ids) & ours.special_ids
        assert ours.decode(ids) == text


def test_allow_special_matches_hf(ours: Tokenizer, hf) -> None:
    for text in ["<|startoftext|><|im_start|>user\n<image>Hi<|im_end|>\n", "a<|img_row_2_col_3|>b</think>c"]:
        assert ours.encode(text, allow_special=True) == hf.encode(text, add_special_tokens=False).ids


def test_lookups_match_hf(ours: Tokenizer, hf) -> None:
    vocab = hf.get_vocab(with_added_tokens=True)
    assert ours.vocab_size == hf.get_vocab_size()
    for token, i in vocab.items():
        assert ours.token_to_id(token) == i
        assert ours.id_to_token(i) == hf.id_to_token(i)
    assert ours.special_token_id("<image>") == 396
    assert ours.token_to_id("no such token") is None


def _mutate(path: Path, edit) -> str:
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    return json.dumps(data)


@pytest.mark.parametrize(
    ("field", "edit"),
    [
        ("model.type", lambda d: d["model"].update(type="WordPiece")),
        ("model.dropout", lambda d: d["model"].update(dropout=0.1)),
        ("model.continuing_subword_prefix", lambda d: d["model"].update(continuing_subword_prefix="##")),
        ("normalizer.type", lambda d: d.update(normalizer={"type": "BertNormalizer"})),
        ("normalizer.normalizers[1].type", lambda d: d.update(normalizer={"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "StripAccents"}]})),
        ("decoder.type", lambda d: d.update(decoder={"type": "Metaspace"})),
        ("decoder.decoders[0].type", lambda d: d.update(decoder={"type": "Sequence", "decoders": [{"type": "WordPiece"}, {"type": "ByteLevel"}]})),
        ("pre_tokenizer.type", lambda d: d.update(pre_tokenizer={"type": "Whitespace"})),
        ("pre_tokenizer.pretokenizers[0].behavior", lambda d: d["pre_tokenizer"]["pretokenizers"][0].update(behavior="Sideways")),
        ("pre_tokenizer.pretokenizers[0].pattern", lambda d: d["pre_tokenizer"]["pretokenizers"][0].update(pattern={"Regex": r"\p{Lu}+"})),
        ("pre_tokenizer", lambda d: d["pre_tokenizer"]["pretokenizers"].pop(1)),
        ("post_processor.type", lambda d: d.update(post_processor={"type": "BertProcessing", "sep": ["</s>", 2], "cls": ["<s>", 0]})),
        ("added_tokens[0].id", lambda d: d["added_tokens"][0].update(id=-1)),
        ("model.merges", lambda d: d["model"]["merges"].append(["zz", "qq"])),
        ("model.vocab", lambda d: d["model"]["vocab"].pop("Ġ")),
    ],
)
def test_unsupported_tokenizer_json_names_the_field(tok_dir: Path, field: str, edit) -> None:
    text = _mutate(tok_dir / "tokenizer.json", edit)
    with pytest.raises(ContractError, match=f"tokenizer.json: {re.escape(field)}"):
        Tokenizer.from_json(text)


def test_not_json_is_a_contract_error() -> None:
    with pytest.raises(ContractError, match="not valid JSON"):
        Tokenizer.from_json("{nope")


def _big_tokenizer_json(small: Path, n_merges: int, seed: int) -> str:
    """A tokenizer.json with the real one's size (~65k vocab): merges that spell whole corpus words, then random ones."""
    data = json.loads(small.read_text(encoding="utf-8"))
    bmap = byte_map()
    vocab: dict[str, int] = {}
    for t, i in sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1]):
        if i < 501 + 256:
            vocab[t] = i
    merges: list[list[str]] = []

    def add(a: str, b: str) -> None:
        if len(merges) < n_merges and (a + b) not in vocab:
            vocab[a + b] = len(vocab)
            merges.append([a, b])

    for text in CORPUS + _random_texts(3000, seed=seed):
        for word in text.split():
            syms = [bmap[b] for b in (" " + word).encode("utf-8")]
            acc = syms[0]
            for s in syms[1:]:
                add(acc, s)
                acc += s
    rng = random.Random(seed)
    keys = list(vocab)[501:]
    while len(merges) < n_merges:
        a, b = rng.choice(keys), rng.choice(keys)
        if len(a + b) <= 16:
            add(a, b)
            keys.append(a + b)
    top = len(vocab)
    added = []
    for t in data["added_tokens"]:
        if t["id"] >= 501:  # Mathias, python, the high specials: move above the new merges
            t = {**t, "id": top}
            vocab[t["content"]] = top
            top += 1
        added.append(t)
    data["added_tokens"] = added
    data["model"]["vocab"] = vocab
    data["model"]["merges"] = merges
    return json.dumps(data, ensure_ascii=False)


@pytest.mark.slow
def test_real_sized_tokenizer_loads_and_encodes_fast(default_dir: Path, tmp_path: Path) -> None:
    """A 65k-entry tokenizer.json: same ids as HF, loaded and encoding a prompt well within budget."""
    text = _big_tokenizer_json(default_dir / "tokenizer.json", n_merges=65_536 - 767, seed=5)
    plain = json.loads(text)
    plain["added_tokens"] = [t for t in plain["added_tokens"] if not t["special"]]
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(plain, ensure_ascii=False), encoding="utf-8")
    hf = hf_tokenizers.Tokenizer.from_file(str(path))  # special spellings read as plain text, like ours
    t0 = time.perf_counter()
    ours = Tokenizer.from_json(text)
    load_s = time.perf_counter() - t0
    assert ours.vocab_size == hf.get_vocab_size() == 65_536
    sample = "\n".join(CORPUS + _random_texts(300, seed=6))
    t0 = time.perf_counter()
    ids = ours.encode(sample)
    encode_s = time.perf_counter() - t0
    assert ids == hf.encode(sample, add_special_tokens=False).ids
    print(f"65k tokenizer: load {load_s * 1e3:.0f} ms, encode {len(sample)} chars cold {encode_s * 1e3:.0f} ms")
    assert load_s < 5.0
    assert encode_s < 5.0


@pytest.mark.slow
def test_unicode_classes_match_hf_on_every_assigned_plane(default_dir: Path) -> None:
    """Each code point of planes 0-3 and 14 (and a sample of the others) is split like HF's Oniguruma does (letter / number / space / other).

    Covers the Unicode version gap (Python 3.11: 14.0, HF tokenizers: 16.0) closed by the runtime's table.
    """
    from tokenizers import Regex, pre_tokenizers

    from lfmvl_site.synth.tokenizer_files import SPLIT_REGEX

    pattern = re.compile(translate_pattern(SPLIT_REGEX))
    split = pre_tokenizers.Split(Regex(SPLIT_REGEX), behavior="isolated")
    planes = [*range(0x40000), *range(0xE0000, 0xE1000), *range(0x40000, 0x110000, 61)]  # 0-3, 14, a sample of the rest
    cps = [cp for cp in planes if not 0xD800 <= cp < 0xE000]
    bad = []
    for start in range(0, len(cps), 2048):
        chunk = cps[start : start + 2048]
        # Each probe tells letters, numbers, spaces and others apart by how it splits.
        text = "".join(f"x{chr(cp)}x!{chr(cp)}1{chr(cp)}\n" for cp in chunk)
        if pattern.findall(text) != [p for p, _ in split.pre_tokenize_str(text)]:
            bad.append(f"U+{chunk[0]:04X}..U+{chunk[-1]:04X}")
    assert not bad, bad[:20]


@pytest.mark.parametrize("size", [768, 1024, 2000])
def test_written_files_are_deterministic_and_sized(tmp_path: Path, size: int) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert write_tokenizer_files(a, vocab_size=size) == size
    write_tokenizer_files(b, vocab_size=size)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    hf = hf_tokenizers.Tokenizer.from_file(str(a / "tokenizer.json"))
    assert hf.get_vocab_size() == size
    assert [hf.token_to_id(t) for t in ("<|pad|>", "<|startoftext|>", "<|im_end|>", "<image>", "<|image_end|>")] == [0, 1, 7, 396, 499]
    assert hf.token_to_id("</think>") == size - 1


def test_too_small_vocab_size_is_refused(tmp_path: Path) -> None:
    from lfmvl_site.errors import InputError

    with pytest.raises(InputError, match="too small"):
        write_tokenizer_files(tmp_path, vocab_size=700)


def _split(pattern: dict, behavior: str, invert: bool = False) -> dict:
    return {"type": "Split", "pattern": pattern, "behavior": behavior, "invert": invert}


_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
_BYTE_LEVEL_DECODER = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}


def _pre(*members: dict) -> dict:
    return {"type": "Sequence", "pretokenizers": list(members)}


def _variant_pre(d: dict, *members: dict) -> None:
    d["pre_tokenizer"] = _pre(*members)


# Shapes HF tokenizers accepts for byte-level BPE, each of which the runtime must read exactly as HF does.
_SUPPORTED_VARIANTS = {
    "nfc": lambda d: d.update(normalizer={"type": "NFC"}),
    "nfkd+lowercase": lambda d: d.update(normalizer={"type": "Sequence", "normalizers": [{"type": "NFKD"}, {"type": "Lowercase"}]}),
    "replace+strip+prepend": lambda d: d.update(normalizer={"type": "Sequence", "normalizers": [
        {"type": "Replace", "pattern": {"String": "  "}, "content": " "}, {"type": "Strip", "strip_left": True, "strip_right": False},
        {"type": "Prepend", "prepend": "~"}]}),
    "byte-level-gpt2-regex": lambda d: d.update(pre_tokenizer={**_BYTE_LEVEL, "use_regex": True}),
    "byte-level-prefix-space": lambda d: d.update(pre_tokenizer={**_BYTE_LEVEL, "use_regex": True, "add_prefix_space": True}),
    "digits+split": lambda d: _variant_pre(d, {"type": "Digits", "individual_digits": True}, d["pre_tokenizer"]["pretokenizers"][0], _BYTE_LEVEL),
    "split-removed": lambda d: _variant_pre(d, _split({"Regex": r"\s+"}, "Removed"), _BYTE_LEVEL),
    "split-merged-previous": lambda d: _variant_pre(d, _split({"String": " "}, "MergedWithPrevious"), _BYTE_LEVEL),
    "split-merged-next": lambda d: _variant_pre(d, _split({"Regex": r"[.,!?;]"}, "MergedWithNext"), _BYTE_LEVEL),
    "split-contiguous-inverted": lambda d: _variant_pre(d, _split({"Regex": r"\p{L}+"}, "Contiguous", invert=True), _BYTE_LEVEL),
    "nested-sequence": lambda d: d.update(pre_tokenizer=_pre(_pre(d["pre_tokenizer"]["pretokenizers"][0]), _pre(_BYTE_LEVEL))),
    "ignore-merges": lambda d: d["model"].update(ignore_merges=True),
    "byte-fallback+fuse-unk": lambda d: d["model"].update(byte_fallback=True, fuse_unk=True),
    "decoder-sequence": lambda d: d.update(decoder={"type": "Sequence", "decoders": [_BYTE_LEVEL_DECODER]}),
    "decoder-fuse+strip": lambda d: d.update(decoder={"type": "Sequence", "decoders": [
        {"type": "Strip", "content": "Ġ", "start": 1, "stop": 0}, {"type": "Fuse"}, _BYTE_LEVEL_DECODER]}),
    "decoder-replace": lambda d: d.update(decoder={"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "Ċ"}, "content": "Ġ"}, _BYTE_LEVEL_DECODER]}),
    "added-flags": lambda d: d["added_tokens"].extend([
        {"id": 1024, "content": "zebra", "single_word": True, "lstrip": False, "rstrip": False, "normalized": False, "special": False},
        {"id": 1025, "content": "<LS>", "single_word": False, "lstrip": True, "rstrip": True, "normalized": False, "special": False},
        {"id": 1026, "content": "Norm", "single_word": False, "lstrip": False, "rstrip": False, "normalized": True, "special": False}]),
    "post-template-suffix": lambda d: d.update(post_processor={"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<|startoftext|>", "type_id": 0}},
                                                  {"Sequence": {"id": "A", "type_id": 0}},
                                                  {"SpecialToken": {"id": "<|im_end|>", "type_id": 0}}],
         "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
         "special_tokens": {"<|startoftext|>": {"id": "<|startoftext|>", "ids": [1], "tokens": ["<|startoftext|>"]},
                            "<|im_end|>": {"id": "<|im_end|>", "ids": [7], "tokens": ["<|im_end|>"]}}}]}),
}

_VARIANT_TEXTS = [
    *CORPUS, "zebra zebras azebra zebra_ x zebra.", "a <LS>  b\t<LS>\nc<LS>", "Norm norm NORM Normal", "Ǆ ﬁ Å Å ℌ ①",
    "x  y   z", "  lead", "1234 5 67", "can't stop, won't stop!", "Ġ Ċ ĠĠ",
]


@pytest.mark.parametrize("variant", sorted(_SUPPORTED_VARIANTS))
def test_supported_tokenizer_shapes_match_hf(variant: str, tmp_path: Path) -> None:
    write_tokenizer_files(tmp_path, vocab_size=1024)
    text = _mutate(tmp_path / "tokenizer.json", _SUPPORTED_VARIANTS[variant])
    ours = Tokenizer.from_json(text)
    hf = hf_tokenizers.Tokenizer.from_str(text)
    hf_plain = hf_tokenizers.Tokenizer.from_str(text)
    hf_plain.encode_special_tokens = True
    for t in _VARIANT_TEXTS + _random_texts(150, seed=9):
        assert ours.encode(t, allow_special=True) == hf.encode(t, add_special_tokens=False).ids, repr(t)
        assert ours.encode(t) == hf_plain.encode(t, add_special_tokens=False).ids, repr(t)
        assert ours.encode(t, allow_special=True, add_special_tokens=True) == hf.encode(t).ids, repr(t)
    rng = random.Random(4)
    for _ in range(150):
        ids = [rng.randrange(1100) for _ in range(rng.randint(1, 9))]
        assert ours.decode(ids) == hf.decode(ids), ids
        assert ours.decode(ids, skip_special=False) == hf.decode(ids, skip_special_tokens=False), ids
        stream = ours.stream_decoder()
        assert "".join([*map(stream.push, ids), stream.flush()]) == hf.decode(ids), ids
