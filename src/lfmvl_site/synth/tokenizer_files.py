"""Tokenizer files of the tiny model: tokenizer.json, tokenizer_config.json, chat_template.jinja.

The tokenizer mirrors the structure of the real LFM2 tokenizer (see
shared/design/lfm2-vl-model.md §8.1): byte-level BPE over the GPT-2 byte map,
``ignore_merges``, the Llama-3 split regex, every special token at its real id
below 501, the high special tokens at the top of the (small) vocabulary, and the
two NON-special added tokens ``Mathias`` and ``python``. Its merges are learnt by
a small deterministic BPE trainer on an embedded multilingual corpus, so the
files are identical for every build and need no ``tokenizers`` package.

Choices where the real file is not known (noted for whoever loads the real one):
* ids 14 and 15 are ``<|reserved_4|>`` / ``<|reserved_5|>`` as ordinary vocab
  entries, not added tokens (the real GGUF marks them NORMAL, ids 0-13 CONTROL);
* ``post_processor`` is a TemplateProcessing that prepends ``<|startoftext|>``
  (the real GGUF has add_bos_token true and tokenizer_config.json has no
  add_bos_token key, so the BOS rule most likely lives in tokenizer.json). The
  processor and our runtime never use it: BOS comes from the chat template.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from ..errors import InputError

__all__ = [
    "SPLIT_REGEX",
    "DEFAULT_VOCAB_SIZE",
    "bytes_to_unicode",
    "special_tokens",
    "write_tokenizer_files",
]

#: The Llama-3 pre-tokenizer pattern the real LFM2 tokenizer uses (Rust regex syntax).
SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

DEFAULT_VOCAB_SIZE = 1280
_FIRST_BYTE_ID = 501
_HIGH_SPECIALS = (
    "<|cot_start|>", "<|cot_end|>", "<|review_start|>", "<|review_end|>",
    "<|file_start|>", "<|file_end|>", "<think>", "</think>",
)
_NON_SPECIAL_ADDED = ("Mathias", "python")  # the §8.1 trap: split out of raw text, not special
_LOW_SPECIALS = (
    "<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|fim_pre|>", "<|fim_mid|>", "<|fim_suf|>",
    "<|im_start|>", "<|im_end|>", "<|tool_list_start|>", "<|tool_list_end|>",
    "<|tool_call_start|>", "<|tool_call_end|>", "<|tool_response_start|>", "<|tool_response_end|>",
)
_PLAIN_RESERVED = {14: "<|reserved_4|>", 15: "<|reserved_5|>"}


def bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 byte map: printable Latin-1 bytes map to themselves, the rest to U+0100 onwards."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table: dict[int, str] = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(table.items()))


def _low_token(i: int) -> str:
    """The content of token ``i`` for ids 0..500 (VL renames of the reserved slots included)."""
    if i < len(_LOW_SPECIALS):
        return _LOW_SPECIALS[i]
    if i in _PLAIN_RESERVED:
        return _PLAIN_RESERVED[i]
    if i == 396:
        return "<image>"
    if 397 <= i <= 496:
        r, c = divmod(i - 397, 10)
        return f"<|img_row_{r + 1}_col_{c + 1}|>"
    return {497: "<|img_thumbnail|>", 498: "<|image_start|>", 499: "<|image_end|>"}.get(i, f"<|reserved_{i - 10}|>")


def special_tokens(vocab_size: int) -> dict[str, int]:
    """Every special token of a tokenizer of ``vocab_size`` entries, content → id."""
    out = {_low_token(i): i for i in range(_FIRST_BYTE_ID) if i not in _PLAIN_RESERVED}
    top = vocab_size - len(_HIGH_SPECIALS)
    out.update({tok: top + k for k, tok in enumerate(_HIGH_SPECIALS)})
    return out


# A small multilingual corpus: enough repetition for a few hundred useful merges.
_CORPUS = """
The camera shows a small kitchen with a wooden table, two chairs and a window.
A person is sitting at the desk, typing on a laptop; there's a cup of coffee next to it.
I'm sure they'll describe the picture: what's in the image, where it is, and who we've seen.
In the picture, the light comes from the left and the shadows fall to the right of the scene.
A dog is running across the green grass of the park while children are playing with a ball.
The weather is cloudy today, with a temperature of 18 degrees and a light wind from the west.
Describe the image in one sentence. Describe what the person is holding. What color is the car?
There are 3 apples, 12 oranges and 1024 grapes on the table; the total price is 45.99 dollars.
Call 555-0199 before 2025-06-30 at 09:45, or write to the office at 221 Baker Street.

def caption(image, prompt="Describe the image.", max_new_tokens=64):
    ids = tokenizer.encode(prompt)
    for step in range(max_new_tokens):
        logits = model(ids, image)
        next_id = int(logits[-1].argmax())
        if next_id == eos_token_id:
            break
        ids.append(next_id)
    return tokenizer.decode(ids)

class Frame:
    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height

    def area(self) -> int:
        return self.width * self.height

for (let i = 0; i < frames.length; i++) { const frame = frames[i]; if (frame.ready) { draw(frame); } }
const result = await session.run({ input_ids: ids, attention_mask: mask });
{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}

La caméra montre une cuisine avec une table en bois et deux chaises près de la fenêtre.
Il était une fois un château où vivait une reine très élégante qui aimait les crêpes.
Der Hund läuft über die grüne Wiese, während die Kinder im Park mit einem Ball spielen.
Größere Häuser stehen am Fluss; die Brücke über den Fluss ist schön und sehr alt.
El niño está jugando en el jardín con su perro; la niña lee un libro en español.
¿Qué hay en la imagen? Una mesa, dos sillas y una ventana con vistas a la montaña.
A câmera mostra uma pessoa sentada à mesa, com um café e um caderno de anotações.
Łódź, Kraków i Gdańsk to piękne miasta; żółw i źrebię śpią pod drzewem.

Камера показывает небольшую кухню с деревянным столом и двумя стульями у окна.
Собака бежит по зелёной траве парка, а дети играют с мячом возле дома.
Опишите изображение одним предложением. Что держит человек в руке?

相机显示一个小厨房，里面有一张木桌和两把椅子。图片中有一个人坐在桌子旁边。
请用一句话描述这张图片。图片里的人在做什么？天气很好，我们去公园吧。
カメラには小さな台所と木のテーブルが写っています。写真を一文で説明してください。
사진 속 사람은 책상에 앉아 노트북을 사용하고 있습니다. 이미지를 설명해 주세요.
الكاميرا تعرض مطبخا صغيرا مع طاولة خشبية وكرسيين بجانب النافذة.
यह तस्वीर एक छोटी रसोई दिखाती है जिसमें लकड़ी की मेज़ है।

Emoji everywhere 😀😀 👍👍 🎉 ❤️ 👨‍👩‍👧‍👦 🇫🇷 🐶🐱 ☕ — great day! ✨✨
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 2024 3.14159 2.71828 1,000,000 42 007.
Tabs\tand\tspaces    line one
line two\r\nline three

  indented text and trailing spaces\x20\x20\x20
"""


def _train_split() -> re.Pattern[str]:
    """An approximation of :data:`SPLIT_REGEX` in Python ``re`` (training only needs plausible words)."""
    letter = r"[^\W\d_]"
    return re.compile(
        rf"(?i:'s|'t|'re|'ve|'m|'ll|'d)|(?:[^\r\n\w]|_)?{letter}+|\d{{1,3}}"
        r"| ?(?:[^\s\w]|_)+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    )


def _words(byte_map: dict[int, str]) -> Counter[tuple[str, ...]]:
    """Byte-level pre-tokens of the corpus with their counts (added tokens split out first, as HF does)."""
    counts: Counter[tuple[str, ...]] = Counter()
    split = _train_split()
    pieces = re.split("|".join(map(re.escape, _NON_SPECIAL_ADDED)), _CORPUS)
    for piece in pieces:
        for word in split.findall(piece):
            counts[tuple(byte_map[b] for b in word.encode("utf-8"))] += 1
    return counts


def _learn_merges(n_tokens: int, byte_map: dict[int, str]) -> tuple[list[tuple[str, str]], list[str]]:
    """Learn merges until ``n_tokens`` new token strings exist. Deterministic: ties break on the pair itself."""
    counted = _words(byte_map)
    words = [list(w) for w in counted]
    freqs = list(counted.values())
    pairs: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for i, w in enumerate(words):
        for p in zip(w, w[1:], strict=False):
            pairs[p] += freqs[i]
            where.setdefault(p, set()).add(i)
    known = set(byte_map.values())
    merges: list[tuple[str, str]] = []
    new_tokens: list[str] = []
    while len(new_tokens) < n_tokens:
        best = None
        for p, c in pairs.items():
            if c > 0 and (best is None or c > pairs[best] or (c == pairs[best] and p < best)):
                best = p
        if best is None:
            raise InputError(f"the tiny tokenizer's corpus supports at most {len(new_tokens)} merged tokens; use a smaller "
                             "vocab_size")
        merged = best[0] + best[1]
        merges.append(best)
        if merged not in known:
            known.add(merged)
            new_tokens.append(merged)
        for i in sorted(where.pop(best, ())):
            w, f = words[i], freqs[i]
            for p in zip(w, w[1:], strict=False):
                pairs[p] -= f
            j, out = 0, []
            while j < len(w):
                if j + 1 < len(w) and (w[j], w[j + 1]) == best:
                    out.append(merged)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            words[i] = out
            for p in zip(out, out[1:], strict=False):
                pairs[p] += f
                where.setdefault(p, set()).add(i)
        del pairs[best]
    return merges, new_tokens


def _tokenizer_json(vocab_size: int) -> dict:
    byte_map = bytes_to_unicode()
    n_fixed = _FIRST_BYTE_ID + 256 + len(_NON_SPECIAL_ADDED) + len(_HIGH_SPECIALS)
    if vocab_size < n_fixed + 1:
        raise InputError(f"vocab_size {vocab_size} is too small: the tokenizer needs at least {n_fixed + 1} entries; pick a "
                         "larger one")
    merges, merged = _learn_merges(vocab_size - n_fixed, byte_map)
    vocab: dict[str, int] = {_low_token(i): i for i in range(_FIRST_BYTE_ID)}
    for tok in [*byte_map.values(), *merged, *_NON_SPECIAL_ADDED, *_HIGH_SPECIALS]:
        vocab[tok] = len(vocab)
    assert len(vocab) == vocab_size
    specials = special_tokens(vocab_size)
    added = [
        {"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": tok in _NON_SPECIAL_ADDED, "special": tok not in _NON_SPECIAL_ADDED}
        for tok, i in sorted({**specials, **{t: vocab[t] for t in _NON_SPECIAL_ADDED}}.items(), key=lambda kv: kv[1])
    ]
    bos = "<|startoftext|>"
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": SPLIT_REGEX}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {bos: {"id": bos, "ids": [vocab[bos]], "tokens": [bos]}},
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": vocab,
            "merges": [list(m) for m in merges],
        },
    }


def _tokenizer_config() -> dict:
    """tokenizer_config.json in the shape of LFM2.5-VL's (the template ships as chat_template.jinja)."""
    image = {"image_token": "<image>", "image_start_token": "<|image_start|>", "image_end_token": "<|image_end|>"}
    return {
        "backend": "tokenizers",
        "tokenizer_class": "TokenizersBackend",
        "processor_class": "Lfm2VlProcessor",
        "bos_token": "<|startoftext|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|pad|>",
        **image,
        "image_thumbnail": "<|img_thumbnail|>",
        "model_specific_special_tokens": image,
        "extra_special_tokens": [],
        "clean_up_tokenization_spaces": True,
        "legacy": False,
        "model_max_length": 1000000000000000019884624838656,
        "return_token_type_ids": False,
        "spaces_between_special_tokens": False,
        "use_default_system_prompt": False,
        "use_fast": True,
    }


# An LFM2.5-VL-style chat template: optional system turn (tools add today's date and the tool list),
# list content rendered as <image> / text, past assistant turns stripped of their thinking,
# tool calls as <|tool_call_start|>[f(a="x")]<|tool_call_end|>, and the generation prompt.
CHAT_TEMPLATE = """\
{{- bos_token -}}
{%- set keep_past_thinking = keep_past_thinking | default(false) -%}
{%- macro render_content(content) -%}
  {%- if content is string -%}
    {{- content -}}
  {%- else -%}
    {%- for part in content -%}
      {%- if part.type == "image" -%}
        {{- "<image>" -}}
      {%- elif part.type == "text" -%}
        {{- part.text -}}
      {%- else -%}
        {{- part | tojson -}}
      {%- endif -%}
    {%- endfor -%}
  {%- endif -%}
{%- endmacro -%}
{%- macro render_value(value) -%}
  {%- if value is string -%}
    {{- '"' + value + '"' -}}
  {%- elif value is mapping -%}
    {{- value | tojson -}}
  {%- else -%}
    {{- value | string -}}
  {%- endif -%}
{%- endmacro -%}
{%- macro render_calls(calls) -%}
  {{- "<|tool_call_start|>[" -}}
  {%- for call in calls -%}
    {{- call.function.name + "(" -}}
    {%- for name, value in call.function.arguments.items() -%}
      {{- name + "=" + render_value(value) -}}
      {%- if not loop.last -%}{{- ", " -}}{%- endif -%}
    {%- endfor -%}
    {{- ")" -}}
    {%- if not loop.last -%}{{- ", " -}}{%- endif -%}
  {%- endfor -%}
  {{- "]<|tool_call_end|>" -}}
{%- endmacro -%}
{%- set state = namespace(system="", last_assistant=-1) -%}
{%- if messages and messages[0].role == "system" -%}
  {%- if messages[0].content is defined -%}
    {%- set state.system = render_content(messages[0].content) -%}
  {%- endif -%}
  {%- set messages = messages[1:] -%}
{%- endif -%}
{%- if tools -%}
  {%- if state.system -%}{%- set state.system = state.system + "\\n\\n" -%}{%- endif -%}
  {%- set state.system = state.system + "Today's date: " + strftime_now("%Y-%m-%d") -%}
  {%- set state.system = state.system + "\\n\\nList of tools: " + (tools | tojson) -%}
{%- endif -%}
{%- if state.system -%}
  {{- "<|im_start|>system\\n" + state.system + "<|im_end|>\\n" -}}
{%- endif -%}
{%- for message in messages -%}
  {%- if message.role == "assistant" -%}{%- set state.last_assistant = loop.index0 -%}{%- endif -%}
{%- endfor -%}
{%- for message in messages -%}
  {{- "<|im_start|>" + message.role + "\\n" -}}
  {%- if message.role == "assistant" -%}
    {%- set current = loop.index0 == state.last_assistant -%}
    {%- if message.thinking is defined and (keep_past_thinking or current) -%}
      {{- "<think>" + message.thinking + "</think>" -}}
    {%- endif -%}
    {%- if message.tool_calls is defined -%}
      {{- render_calls(message.tool_calls) -}}
    {%- endif -%}
    {%- if message.content is defined -%}
      {%- set text = render_content(message.content) -%}
      {%- if not keep_past_thinking and not current and "</think>" in text -%}
        {%- set text = text.split("</think>")[-1] | trim -%}
      {%- endif -%}
      {{- text -}}
      {%- if not (continue_final_message and loop.last) -%}{{- "<|im_end|>\\n" -}}{%- endif -%}
    {%- endif -%}
  {%- elif message.content is defined -%}
    {{- render_content(message.content) + "<|im_end|>\\n" -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- "<|im_start|>assistant\\n" -}}
{%- endif -%}
"""


def write_tokenizer_files(out_dir: Path, *, vocab_size: int | None = None) -> int:
    """Write tokenizer.json, tokenizer_config.json and chat_template.jinja into ``out_dir``.

    ``vocab_size`` is the total number of ids (special tokens included); the number of
    learnt merges fills the gap. Returns that total, the config's ``vocab_size``.
    """
    size = DEFAULT_VOCAB_SIZE if vocab_size is None else int(vocab_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer_json(size)
    (out_dir / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (out_dir / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(), indent=2) + "\n", encoding="utf-8")
    (out_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    return size
