"""Chat templates: every jinja feature transformers' environment offers renders as transformers renders it, and the
template is picked from the model's files in the order transformers' processor picks it."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from lfmvl_site.errors import ContractError, InputError
from lfmvl_site.runtime.prompt import (
    chat_template_text,
    load_chat_template,
    render_chat_template,
)

transformers = pytest.importorskip("transformers")
from transformers.utils.chat_template_utils import render_jinja_template

TOKENS = {"bos_token": "<|startoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|pad|>"}

# Shaped like Liquid AI's LFM2.5-VL template (generation block around the assistant's turn), plus one template per
# feature of the environment.
TEMPLATES = {
    "generation-block": (
        "{{- bos_token -}}"
        "{%- for message in messages -%}"
        "{{- '<|im_start|>' + message.role + '\\n' -}}"
        "{%- if message.role == 'assistant' -%}{% generation %}{{- message.content + '<|im_end|>' -}}{% endgeneration %}{{- '\\n' -}}"
        "{%- elif message.content is string -%}{{- message.content + '<|im_end|>\\n' -}}"
        "{%- else -%}{%- for part in message.content -%}"
        "{%- if part.type == 'image' -%}{{- '<image>' -}}{%- else -%}{{- part.text -}}{%- endif -%}"
        "{%- endfor -%}{{- '<|im_end|>\\n' -}}{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
    ),
    "raise-exception": (
        "{%- if messages[0].role == 'assistant' -%}{{ raise_exception('Conversation must start with a user or system turn') }}{%- endif -%}"
        "{%- for m in messages -%}{{ m.role }}: {{ m.content if m.content is string else m.content | length }}\n{%- endfor -%}"
    ),
    "strftime-now": "Today is {{ strftime_now('%Y-%m-%d') }}.{% for m in messages %} {{ m.role }}{% endfor %}",
    "tojson-arguments": (
        "{{ messages | tojson }}|{{ messages[-1] | tojson(indent=2) }}|{{ {'b': 1, 'a': 'é<>&'} | tojson(sort_keys=true) }}|"
        "{{ {'x': 'é'} | tojson(ensure_ascii=true) }}|{{ [1, 2] | tojson(separators=(',', ':')) }}|{{ tools | tojson }}"
    ),
    "loop-controls": (
        "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
        "{% if loop.index > 3 %}{% break %}{% endif %}[{{ loop.index0 }}:{{ m.role }}{{ '/last' if loop.last }}]{% endfor %}"
    ),
    "namespace-dict": (
        "{%- set ns = namespace(count=0, system='') -%}"
        "{%- for m in messages -%}{%- if m.role == 'system' -%}{%- set ns.system = m.content -%}{%- endif -%}"
        "{%- set ns.count = ns.count + 1 -%}{%- endfor -%}"
        "{%- set d = dict(a=1, b=ns.count) -%}{{ d | tojson }} system={{ ns.system }} {{ dict.fromkeys(['x', 'y'], 0) | tojson }}"
    ),
    "whitespace-control": (
        "{% for m in messages %}\n  {% if m.role %}\n    <{{ m.role }}>\n  {% endif %}\n{% endfor %}\n"
        "{%- if add_generation_prompt %}  <assistant>{% endif %}"
    ),
}

USER_ONE = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe <this> & \"that\" é."}]}]
USER_TWO = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare."}]}]
SYSTEM = [{"role": "system", "content": "You are terse."}]
CONVERSATIONS = {
    "one-image": USER_ONE,
    "two-images": USER_TWO,
    "system+one-image": SYSTEM + USER_ONE,
    "system+two-images": SYSTEM + USER_TWO,
    "multi-turn": SYSTEM + USER_ONE + [{"role": "assistant", "content": "A cat."}] + USER_TWO + [{"role": "assistant", "content": "Two."}],
}
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]


def _reference(template: str, messages: list, add_generation_prompt: bool, **kwargs) -> str:
    rendered, _ = render_jinja_template([messages], chat_template=template, add_generation_prompt=add_generation_prompt, **TOKENS, **kwargs)
    return rendered[0]


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("add_generation_prompt", [True, False], ids=["gen", "nogen"])
def test_renders_like_transformers(name: str, conversation: str, add_generation_prompt: bool) -> None:
    template, messages = TEMPLATES[name], CONVERSATIONS[conversation]
    ours = render_chat_template(template, messages, add_generation_prompt=add_generation_prompt, tools=TOOLS, special_tokens=TOKENS)
    assert ours == _reference(template, messages, add_generation_prompt, tools=TOOLS)


def test_raise_exception_is_a_clear_input_error() -> None:
    messages = [{"role": "assistant", "content": "x"}]
    with pytest.raises(Exception, match="must start with a user"):
        _reference(TEMPLATES["raise-exception"], messages, True)
    with pytest.raises(InputError, match="must start with a user"):
        render_chat_template(TEMPLATES["raise-exception"], messages)


def test_namespace_refuses_underscore_names_like_transformers() -> None:
    template = "{% set ns = namespace(_secret=1) %}{{ ns._secret }}"
    with pytest.raises(Exception, match="underscore"):
        _reference(template, USER_ONE, True)
    with pytest.raises(InputError, match="underscore"):
        render_chat_template(template, USER_ONE)


def test_a_template_transformers_cannot_compile_is_a_contract_error() -> None:
    bad = "{% generation %}unclosed"
    with pytest.raises(Exception):  # noqa: B017 - transformers raises jinja's TemplateSyntaxError
        _reference(bad, USER_ONE, True)
    with pytest.raises(ContractError, match="does not parse"):
        render_chat_template(bad, USER_ONE)


# -- which template: as transformers' processor loads it -----------------------------------------------------------
def _model_dir(tiny_model_dir: Path, tmp_path: Path) -> Path:
    d = tmp_path / "m"
    d.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "config.json"):
        shutil.copy(tiny_model_dir / name, d / name)
    return d


def _edit(path: Path, **changes) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(changes)
    path.write_text(json.dumps(data), encoding="utf-8")


def _ours(d: Path) -> str:
    async def optional(rel: str) -> str | None:
        p = d / rel
        return p.read_text(encoding="utf-8") if p.exists() else None

    cfg = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
    proc = json.loads((d / "processor_config.json").read_text(encoding="utf-8"))
    return asyncio.run(load_chat_template(optional, proc, cfg))


def _processor_template(d: Path) -> str:
    processor = transformers.AutoProcessor.from_pretrained(str(d))
    return processor._resolve_chat_template(None)


@pytest.mark.parametrize(
    "layout",
    ["jinja-only", "jinja+tokenizer-config", "legacy-json+jinja", "processor-config+jinja", "processor-config-named"],
)
def test_picks_the_template_transformers_processor_renders(layout: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    d = _model_dir(tiny_model_dir, tmp_path)
    a, b, c = "A{{ messages | length }}", "B{{ messages | length }}", "C{{ messages | length }}"
    (d / "chat_template.jinja").write_text(a, encoding="utf-8")
    if layout == "jinja+tokenizer-config":
        _edit(d / "tokenizer_config.json", chat_template=b)
    elif layout == "legacy-json+jinja":
        (d / "chat_template.json").write_text(json.dumps({"chat_template": c}), encoding="utf-8")
    elif layout == "processor-config+jinja":
        _edit(d / "processor_config.json", chat_template=c)
    elif layout == "processor-config-named":
        _edit(d / "processor_config.json", chat_template={"default": c, "tool_use": b})
    assert _ours(d) == _processor_template(d)


@pytest.mark.parametrize("form", ["string", "named-list"])
def test_without_processor_templates_the_tokenizer_config_one_is_used_as_the_tokenizer_would(form: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    d = _model_dir(tiny_model_dir, tmp_path)
    value = "T{{ messages | length }}" if form == "string" else [
        {"name": "default", "template": "T{{ messages | length }}"}, {"name": "tool_use", "template": "U"}]
    _edit(d / "tokenizer_config.json", chat_template=value)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(d))
    assert _ours(d) == tokenizer.get_chat_template() == "T{{ messages | length }}"


def test_named_templates_without_default_are_refused_clearly() -> None:
    with pytest.raises(ContractError, match="none named 'default'"):
        chat_template_text(None, {"chat_template": [{"name": "tool_use", "template": "x"}]})
    with pytest.raises(ContractError, match="no chat template"):
        chat_template_text(None, {})
