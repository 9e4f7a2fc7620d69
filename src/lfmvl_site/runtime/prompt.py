"""The model's chat template (jinja2, rendered as transformers does) and image placeholder expansion.

Safety rule: special token ids come only from the TEMPLATE's own text (``<|im_start|>``,
``<|im_end|>``, the bos token, one ``<image>`` per image part). The user's text is put
into the template as a sentinel, so after rendering we know exactly which characters
are the user's; any special-token spelling inside them stays plain text. Plain text
around a sentinel is then encoded in one run together with the user's text, which
gives ids identical to transformers' processor whenever the user's text contains no
special-token spelling.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from lfmvl_site.errors import ContractError, InputError
from lfmvl_site.runtime.modelconfig import parse_json
from lfmvl_site.runtime.tokenizer import Tokenizer

try:  # the dataclass lives with preprocessing; see docs/ARCHITECTURE.md
    from lfmvl_site.runtime.preprocess import ImageLayout
except ImportError:  # pragma: no cover - only while preprocess.py is being written
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class ImageLayout:  # type: ignore[no-redef]
        rows: int
        cols: int
        tile_tokens: int
        image_tokens: int


__all__ = [
    "ImageLayout",
    "build_prompt_ids",
    "chat_template_text",
    "expand_image",
    "load_chat_template",
    "render_chat_template",
    "template_tokens",
]

_DEFAULT_TOKENS = {"bos_token": "<|startoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|pad|>"}


def _environment() -> Any:
    """The jinja2 environment transformers (5.x ``chat_template_utils``) compiles chat templates in.

    Same sandbox, flags, filters and globals: ``{% generation %}`` blocks (transformers' assistant-mask
    extension; rendered as their body), ``loopcontrols``, ``raise_exception``, ``strftime_now``, a ``tojson``
    that does not escape HTML and takes json.dumps' arguments, and ``dict``/``namespace`` that refuse
    underscore names. Written here because transformers is not available in Pyodide.
    """
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    import jinja2.utils
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(jinja2.ext.Extension):
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return str(caller())

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False) -> str:
        # Plain json.dumps, unlike jinja2's own tojson which escapes HTML characters.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    class TemplateDict:
        def __call__(self, *args: Any, **kwargs: Any) -> dict:
            return dict(*args, **kwargs)

        def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
            return dict.fromkeys(*args, **kwargs)

    def _check_name(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError("chat templates cannot store underscore-prefixed attributes on a namespace "
                                                  f"({name!r})")

    class TemplateNamespace(jinja2.utils.Namespace):
        def __init__(*args: Any, **kwargs: Any) -> None:
            self, rest = args[0], args[1:]
            attrs = dict(*rest, **kwargs)
            for name in attrs:
                _check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            _check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env


@lru_cache(maxsize=4)
def _compile(template_text: str) -> Any:
    """A compiled chat template (see :func:`_environment`)."""
    import jinja2

    try:
        return _environment().from_string(template_text)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise ContractError(f"the chat template does not parse (line {exc.lineno}: {exc.message}); "
                            "re-download the model files") from exc


def template_tokens(tokenizer_config: Mapping[str, Any] | None) -> dict[str, str]:
    """The ``*_token`` strings of tokenizer_config.json that templates read (``bos_token`` ...)."""
    out = dict(_DEFAULT_TOKENS)
    for key, value in (tokenizer_config or {}).items():
        if key.endswith("_token") and isinstance(value, str):
            out[key] = value
        elif key.endswith("_token") and isinstance(value, Mapping) and isinstance(value.get("content"), str):
            out[key] = value["content"]  # older AddedToken-dict form
    return out


def _default_template(value: Any, where: str) -> str | None:
    """A template from ``where``: a string, or the ``default`` of named templates (a dict, or tokenizer_config's
    list of ``{"name", "template"}``), as transformers resolves them when no name is asked for."""
    if value is None:
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, list):
        try:
            value = {t["name"]: t["template"] for t in value}
        except (TypeError, KeyError) as exc:
            raise ContractError(f"{where}: chat_template is a list but not of {{'name', 'template'}} entries; re-download the "
                                "model files") from exc
    if isinstance(value, Mapping):
        if "default" in value and isinstance(value["default"], str):
            return str(value["default"])
        raise ContractError(f"{where}: chat_template has named templates {sorted(value)} but none named 'default'; this "
                            "runtime needs a default")
    raise ContractError(f"{where}: chat_template is {type(value).__name__}, expected a string; re-download the model files")


def chat_template_text(
    chat_template_jinja: str | None,
    tokenizer_config: Mapping[str, Any] | None,
    *,
    processor_config: Mapping[str, Any] | None = None,
    chat_template_json: str | None = None,
) -> str:
    """The template transformers' processor would render with (its ``_resolve_chat_template``).

    Order, as ``ProcessorMixin.from_pretrained`` loads it: processor_config.json's ``chat_template``, then the legacy
    chat_template.json, then chat_template.jinja. A processor without any of them has no template in transformers;
    here the tokenizer's (tokenizer_config.json's ``chat_template``: a string or a named list) is used instead, which
    is what ``tokenizer.apply_chat_template`` renders.
    """
    found = _default_template((processor_config or {}).get("chat_template"), "processor_config.json")
    if found is None and chat_template_json:
        legacy = parse_json(chat_template_json, "chat_template.json")
        found = _default_template(legacy.get("chat_template") if isinstance(legacy, dict) else None, "chat_template.json")
    if found is None and chat_template_jinja:
        found = chat_template_jinja
    if found is None:
        found = _default_template((tokenizer_config or {}).get("chat_template"), "tokenizer_config.json")
    if found is None:
        raise ContractError("the model has no chat template (no chat_template.jinja, chat_template.json, or 'chat_template' in "
                            "processor_config.json or tokenizer_config.json); re-download the model files")
    return found


async def load_chat_template(
    read_optional: Callable[[str], Awaitable[str | None]],
    processor_config: Mapping[str, Any] | None,
    tokenizer_config: Mapping[str, Any] | None,
) -> str:
    """Read the template files a model directory may hold (through the backend's reader) and pick as above."""
    return chat_template_text(
        await read_optional("chat_template.jinja"),
        tokenizer_config,
        processor_config=processor_config,
        chat_template_json=await read_optional("chat_template.json"),
    )


def render_chat_template(
    template_text: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    tools: Sequence[Mapping[str, Any]] | None = None,
    special_tokens: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> str:
    """Render ``messages`` like transformers' ``apply_chat_template(..., tokenize=False)``."""
    import jinja2

    variables = {**_DEFAULT_TOKENS, **(special_tokens or {}), **kwargs}
    try:
        return _compile(template_text).render(
            messages=[dict(m) for m in messages],
            tools=list(tools) if tools is not None else None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except jinja2.exceptions.TemplateError as exc:
        raise InputError(f"the chat template refused the messages: {exc}") from exc


def expand_image(tokenizer: Tokenizer, layout: ImageLayout, *, image_special_tokens: bool = True) -> list[int]:
    """The placeholder ids of one image, as transformers' ``Lfm2VlProcessor._build_image_tokens`` builds them."""
    image = tokenizer.special_token_id("<image>")
    ids: list[int] = [tokenizer.special_token_id("<|image_start|>")] if image_special_tokens else []
    if layout.rows > 1 or layout.cols > 1:
        for r in range(1, layout.rows + 1):
            for c in range(1, layout.cols + 1):
                if image_special_tokens:
                    ids.append(tokenizer.special_token_id(f"<|img_row_{r}_col_{c}|>"))
                ids.extend([image] * layout.tile_tokens)
        if layout.image_tokens > 0:
            if image_special_tokens:
                ids.append(tokenizer.special_token_id("<|img_thumbnail|>"))
            ids.extend([image] * layout.image_tokens)
    else:
        ids.extend([image] * layout.image_tokens)
    if image_special_tokens:
        ids.append(tokenizer.special_token_id("<|image_end|>"))
    return ids


def _sentinel(k: int, avoid: str) -> str:
    # Private-use characters: never produced by a template, checked against the user's text anyway.
    for salt in range(1000):
        s = f"\U000f0000{k}\U000f0001{salt}\U000f0002"
        if s not in avoid:
            return s
    raise InputError("the prompt contains private-use characters that collide with internal markers; remove them")


def _segments(rendered: str, fills: Mapping[str, str]) -> list[tuple[str, bool]]:
    """Split ``rendered`` into (text, is_user) parts by replacing each sentinel with its user text."""
    parts: list[tuple[str, bool]] = []
    pattern = re.compile("|".join(re.escape(s) for s in fills))
    pos = 0
    seen: list[str] = []
    for m in pattern.finditer(rendered):
        parts.append((rendered[pos : m.start()], False))
        parts.append((fills[m.group()], True))
        seen.append(m.group())
        pos = m.end()
    parts.append((rendered[pos:], False))
    if sorted(seen) != sorted(fills):
        raise ContractError("the chat template did not place each message's text exactly once; this runtime cannot use it")
    return parts


def _ids_from_segments(tokenizer: Tokenizer, parts: list[tuple[str, bool]]) -> list[int]:
    """Encode segments: specials are recognised only in template text; plain runs are encoded whole."""
    specials = tokenizer.special_tokens
    finder = tokenizer.special_pattern()
    ids: list[int] = []
    run: list[str] = []
    for text, is_user in parts:
        if is_user:
            run.append(text)
            continue
        pos = 0
        for m in finder.finditer(text):
            run.append(text[pos : m.start()])
            ids.extend(tokenizer.encode("".join(run)))
            run = []
            ids.append(specials[m.group()])
            pos = m.end()
        run.append(text[pos:])
    ids.extend(tokenizer.encode("".join(run)))
    return ids


def build_prompt_ids(
    tokenizer: Tokenizer,
    template_text: str,
    user_text: str,
    layouts: Sequence[ImageLayout],
    *,
    system: str | None = None,
    special_tokens: Mapping[str, str] | None = None,
    image_special_tokens: bool = True,
) -> list[int]:
    """Ids of a one-turn prompt: ``len(layouts)`` images then ``user_text``, plus the generation prompt.

    ``special_tokens`` are the template variables from :func:`template_tokens`; image placeholders
    are expanded per ``layouts`` (see :func:`expand_image`).
    """
    avoid = user_text + (system or "")
    fills = {_sentinel(0, avoid): user_text}
    content: list[dict[str, Any]] = [{"type": "image"} for _ in layouts]
    content.append({"type": "text", "text": next(iter(fills))})
    messages: list[dict[str, Any]] = []
    if system:  # an empty system prompt renders no system turn, as in transformers
        sys_key = _sentinel(1, avoid)
        fills[sys_key] = system
        messages.append({"role": "system", "content": sys_key})
    messages.append({"role": "user", "content": content})
    rendered = render_chat_template(template_text, messages, add_generation_prompt=True, special_tokens=special_tokens)
    ids = _ids_from_segments(tokenizer, _segments(rendered, fills))
    image = tokenizer.special_token_id("<image>")
    n_images = ids.count(image)
    if n_images != len(layouts):
        raise ContractError(f"the chat template emitted {n_images} <image> tokens for {len(layouts)} images; this runtime "
                            "cannot use it")
    out: list[int] = []
    images = iter(layouts)
    for i in ids:
        out.extend(expand_image(tokenizer, next(images), image_special_tokens=image_special_tokens) if i == image else [i])
    return out
