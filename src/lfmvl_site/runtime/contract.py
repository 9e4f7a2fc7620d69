"""The one written contract between the Python side and the page (web/*.js).

Everything the two sides must agree on by name lives here, once: the page's
settings (keys, defaults, validation ranges), the worker's message types and
their fields, error codes, how a graph variant was chosen, the service
worker's constants, and the manifest schema with its validator.

The build renders :func:`render_js` into ``dist/contract.js``, a classic script
that sets ``globalThis.LFMVL_CONTRACT`` (so the ES-module page and worker can
``import "./contract.js"`` and the classic service worker can ``importScripts``
it). The JavaScript reads names from there and restates none;
``tests/test_contract.py`` checks that, without a browser.

Pure Python (no numpy): it runs in Pyodide too, inside the runtime wheel.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import Cancelled, ContractError, InputError, LfmvlError, ModelFileError
from .layout import ROLES

VERSION = 1
CONTRACT_JS = "contract.js"  # the file the build renders into dist/

# ---------------------------------------------------------------- settings

DEFAULT_PROMPT = "Describe this image."
PROMPTS = (
    DEFAULT_PROMPT,
    "Describe this image in one short sentence.",
    "What is the person doing?",
    "List the objects you can see.",
    "Read any text in the image.",
)
# The page's default is shorter than the CLI's: live captions are read as they change.
PAGE_MAX_NEW_TOKENS = 32


SETTING_KINDS = ("text", "int", "choice")


@dataclass(frozen=True)
class Setting:
    """One user setting of the page: its key, default and what a valid value is."""

    key: str
    label: str
    kind: str  # one of SETTING_KINDS
    default: Any
    min: int | None = None
    max: int | None = None
    choices: tuple[Any, ...] = ()
    labels: tuple[str, ...] = ()  # words for each choice, in the same order
    hint: str = ""


SETTINGS: tuple[Setting, ...] = (
    Setting("prompt", "Prompt", "text", DEFAULT_PROMPT, min=0, max=2000,
            hint="At most 2000 characters; empty means the default prompt."),
    Setting("interval_ms", "Every", "choice", 0, choices=(0, 1000, 2000, 5000),
            labels=("as fast as possible", "1 s", "2 s", "5 s")),
    Setting("frame_size", "Frame size", "choice", 512, choices=(256, 384, 512, 768, 0),
            labels=("256 px", "384 px", "512 px", "768 px", "camera size")),
    Setting("max_new_tokens", "Max tokens", "int", PAGE_MAX_NEW_TOKENS, min=1, max=512,
            hint="A whole number from 1 to 512."),
    Setting("device", "Backend", "choice", "auto", choices=("auto", "webgpu", "wasm"),
            labels=("auto", "WebGPU", "wasm (CPU)")),
)
SETTING = {s.key: s for s in SETTINGS}


_WHOLE = re.compile(r"[+-]?[0-9]+")  # a whole number as the page's field or the address writes it


def check_setting(key: str, value: Any) -> Any:
    """``value`` as the setting's type, or :class:`InputError` naming the setting and its valid range.

    ``C.checkSetting`` in contract.js applies the same rules, with the same words, to what a field or the
    address holds, so the page shows a problem at its field before it sends anything (tests/test_contract.py
    runs both on the same inputs); this is the runtime's own check of what arrives.
    """
    s = SETTING.get(key)
    if s is None:
        raise InputError(f'Unknown setting "{key}"; the settings are {", ".join(SETTING)}.')
    hint = f" {s.hint}" if s.hint else ""
    if s.kind == "text":
        if not isinstance(value, str):
            raise InputError(f"{s.label}: {value!r} ({type(value).__name__}) is not text.{hint}")
        if s.max is not None and len(value) > s.max:
            raise InputError(f"{s.label}: {len(value)} characters is too long.{hint}")
        return value
    if s.kind == "int":
        if isinstance(value, str):
            shown = value.strip(" \t")
            if not _WHOLE.fullmatch(shown):
                raise InputError(f'{s.label}: "{shown}" is not a whole number.{hint}')
            number = int(shown)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
                and value == int(value):
            number = int(value)
            shown = str(number)
        else:
            raise InputError(f'{s.label}: "{value}" is not a whole number.{hint}')
        if (s.min is not None and number < s.min) or (s.max is not None and number > s.max):
            raise InputError(f"{s.label}: {shown} is out of range.{hint}")
        return number
    if not isinstance(value, bool):
        for choice in s.choices:
            if value == choice or (isinstance(value, str) and value == str(choice)):
                return choice
    words = ", ".join(s.labels or tuple(str(c) for c in s.choices))
    raise InputError(f'{s.label}: "{value}" is not one of: {words}.')


# ---------------------------------------------------------------- worker messages

@dataclass(frozen=True)
class Message:
    type: str
    direction: str  # "in" (page → worker) or "out" (worker → page)
    fields: tuple[str, ...]
    doc: str = ""


MESSAGES: tuple[Message, ...] = (
    Message("init", "in", ("settings", "device", "verbose", "choice"),
            "load Pyodide, the runtime and the model (choice: the visitor's remembered model choice id, if any)"),
    Message("frame", "in", ("id", "bitmap", "source", "media_time"),
            "caption one ImageBitmap (transferred); at most one in flight, extras dropped"),
    Message("prompt", "in", ("prompt",), "a changed prompt cancels the running caption"),
    Message("options", "in", ("options",), "sampling options, e.g. {max_new_tokens}"),
    Message("device", "in", ("device",), "switch backend: sessions are re-created, the page stays"),
    Message("retry", "in", (), "retry a failed load"),
    Message("choose", "in", ("choice",), "load another model choice (settings.choices id): prompt and page stay"),
    Message("lastFrame", "in", (), "ask for the pixels of the last captioned frame"),
    Message("status", "out", ("text", "phase"), "a loading phase"),
    Message("backend", "out", ("device", "why", "adapter", "features"), "the backend chosen, and why"),
    Message("choice", "out", ("id", "why", "device_class"),
            "the model choice being loaded, why, and which of its downloads this device takes (runtime/choices.py)"),
    Message("plan", "out", ("files",), "files this load will fetch: [{file, size}] (more may follow)"),
    Message("progress", "out", ("file", "loaded", "total", "ms", "done"), "bytes of one file as they arrive"),
    Message("ready", "out", ("device", "why", "choices", "describe", "backend", "threads", "timings", "features",
                             "adapter", "choice"), "the model is loaded (choice: its settings.choices id)"),
    Message("token", "out", ("id", "token", "piece", "count", "ms"), "one generated token of frame `id`"),
    Message("caption", "out", ("id", "prompt", "text", "token_ids", "prompt_tokens", "timings", "width", "height",
                               "stop_reason", "kept", "kept_live", "cancelled", "error", "source", "media_time",
                               "decoder_runs", "speculative", "draft_tokens_proposed", "draft_tokens_accepted",
                               "features_reused", "choice"),
            "a finished caption (or {cancelled: true}, or {error}); choice: the model choice that made it"),
    Message("dropped", "out", ("id",), "a frame arrived while one was in flight and was not captioned"),
    Message("error", "out", ("error", "where"), "a failure: error = {code, message, ...fields}"),
    Message("lastFrame", "out", ("frame",), "{id, width, height, data}"),
)


def message_types(direction: str) -> dict[str, str]:
    """``{type: type}`` of the messages going ``direction`` ("in": page → worker, "out": worker → page)."""
    return {m.type: m.type for m in MESSAGES if m.direction == direction}


def message_fields(direction: str, type_: str) -> tuple[str, ...]:
    """The fields (besides ``type``) a message may carry."""
    for m in MESSAGES:
        if m.direction == direction and m.type == type_:
            return m.fields
    raise KeyError(f"no {direction!r} message {type_!r}")


# ---------------------------------------------------------------- errors

@dataclass(frozen=True)
class ErrorCode:
    code: str
    fields: tuple[str, ...]
    doc: str


ERRORS: tuple[ErrorCode, ...] = (
    ErrorCode("download_failed", ("file", "status", "detail"), "a file could not be downloaded"),
    ErrorCode("storage_full", ("detail",), "the browser refused to store more bytes"),
    ErrorCode("out_of_memory", ("detail",), "an allocation failed"),
    ErrorCode("model_file", ("detail",), "a model file is missing or unusable"),
    ErrorCode("contract", ("detail",), "the model's graphs do not match what the runtime drives"),
    ErrorCode("bad_input", ("detail",), "a setting or input was refused"),
    ErrorCode("cancelled", (), "the caption was cancelled (prompt changed)"),
    ErrorCode("internal", ("detail",), "anything else"),
)
ERROR_CODES = {e.code: e.code for e in ERRORS}


# JavaScript error names (a DOMException's or Error's ``name``) the runtime may meet through Pyodide.
_JS_ERROR_CODES = {"QuotaExceededError": "storage_full", "RangeError": "out_of_memory"}


def error_code(exc: BaseException) -> str:
    """The :data:`ERRORS` code for an exception raised in the runtime, by its class (never its text)."""
    if isinstance(exc, Cancelled):
        return "cancelled"
    if isinstance(exc, MemoryError):
        return "out_of_memory"
    if isinstance(exc, (ModelFileError, FileNotFoundError)):
        return "model_file"
    if isinstance(exc, ContractError):
        return "contract"
    if isinstance(exc, InputError):
        return "bad_input"
    js_error = getattr(exc, "js_error", None)  # pyodide.ffi.JsException: the JavaScript error it wraps
    name = getattr(js_error, "name", None) if js_error is not None else None
    return _JS_ERROR_CODES.get(str(name), "internal") if name is not None else "internal"


def error_payload(exc: BaseException) -> dict[str, Any]:
    """``{code, detail}`` for an exception raised in the runtime (the page maps the code to words).

    ``detail`` is the exception's own one line (an :class:`LfmvlError` already names the problem and
    the fix); the page shows it after its words, never parses it.
    """
    detail = str(exc) if isinstance(exc, LfmvlError) else f"{type(exc).__name__}: {exc}"
    return {"code": error_code(exc), "detail": detail.strip().splitlines()[0][:500] if detail.strip() else ""}


# ---------------------------------------------------------------- variant choice

# Why a graph variant was chosen (Choice.fallback): the page words them; no display strings compared.
FALLBACKS = {
    "none": "the role's first (preferred) variant runs on the chosen backend",
    "variant": "the adapter lacks a feature the preferred variant needs; a later variant runs on WebGPU",
    "wasm": "no variant fits the WebGPU adapter; the preferred variant runs on wasm",
}
# Why a backend was chosen (the `backend` message's `why`).
DEVICE_REASONS = {
    "chosen": "the user chose it",
    "webgpu": "auto: a hardware WebGPU adapter",
    "no-webgpu": "auto: the browser has no WebGPU",
    "no-adapter": "auto: WebGPU has no adapter",
    "software-adapter": "auto: the only WebGPU adapter is a software one (fallback adapter, e.g. SwiftShader); wasm is faster",
}

# ---------------------------------------------------------------- service worker


@dataclass(frozen=True)
class ServiceWorker:
    cache_files: str = "lfmvl-files-v1"
    cache_meta: str = "lfmvl-meta-v1"
    cache_prefix: str = "lfmvl-"
    sha_header: str = "X-Lfmvl-Sha256"
    reload_key: str = "lfmvl-coi-reload"
    message_type: str = "lfmvl-sw"
    manifest_timeout_ms: int = 4000
    # worker → page kinds, and page → worker commands
    kinds: tuple[str, ...] = ("integrity-error", "stored", "storage-full", "manifest-updated")
    commands: Mapping[str, str] = field(default_factory=lambda: {"forget": "lfmvl-forget", "refresh": "lfmvl-refresh"})


SW = ServiceWorker()

# ---------------------------------------------------------------- manifests

SITE_MANIFEST_FORMAT = 1
# Where a site keeps its model: model/ for one, models/<slug>/ each for several. Graph files (what a device may
# never need) are those under a model folder's onnx/.
MODEL_DIR = "model"
MODELS_DIR = "models"
GRAPH_FILE = r"^(?:model|models/[^/]+)/onnx/"

MODEL_MANIFEST_FORMAT = 1
FILE_FIELDS = {"path": "string", "size": "number", "sha256": "string"}
# Model-manifest variant fields the page and the native backend read.
VARIANT_FIELDS = {"precision": "string", "file": "string", "needs": "list", "external_data": "list"}
GRAPH_ROLES = ROLES  # runtime/layout.py


def _fail(what: str, problem: str) -> ContractError:
    return ContractError(f"{what}: {problem}; rebuild the site with `lfmvl-site build`.")


def check_files(data: Mapping[str, Any], what: str = "manifest.json") -> list[dict[str, Any]]:
    """The ``files`` list of a site or model manifest, each entry checked against :data:`FILE_FIELDS`."""
    if not isinstance(data, Mapping):
        raise _fail(what, "is not a JSON object")
    files = data.get("files")
    if not isinstance(files, list):
        raise _fail(what, 'has no "files" list')
    for i, f in enumerate(files):
        if not isinstance(f, Mapping):
            raise _fail(what, f"files[{i}] is not an object")
        for key, kind in FILE_FIELDS.items():
            v = f.get(key)
            ok = isinstance(v, str) if kind == "string" else isinstance(v, int) and not isinstance(v, bool)
            if not ok:
                raise _fail(what, f"files[{i}].{key} is missing or not a {kind}")
        if len(f["sha256"]) != 64 or f["path"].startswith("/") or ".." in f["path"].split("/"):
            raise _fail(what, f"files[{i}] ({f['path']!r}) has a bad path or sha256")
    return [dict(f) for f in files]


def check_site_manifest(data: Mapping[str, Any]) -> dict[str, Any]:
    """``dist/manifest.json``: format, files, and the model manifest it points to."""
    check_files(data)
    if data.get("format") != SITE_MANIFEST_FORMAT:
        raise _fail("manifest.json", f"format {data.get('format')!r} is not {SITE_MANIFEST_FORMAT}")
    if "deploy_files" in data:
        check_files({"files": data["deploy_files"]}, "manifest.json deploy_files")
    return dict(data)


def check_model_manifest(data: Mapping[str, Any]) -> dict[str, Any]:
    """``dist/model/manifest.json``: files plus one list of variants per graph role."""
    what = "model/manifest.json"
    check_files(data, what)
    graphs = data.get("graphs")
    if not isinstance(graphs, Mapping):
        raise _fail(what, 'has no "graphs" object')
    for role in GRAPH_ROLES:
        variants = graphs.get(role)
        if not isinstance(variants, list) or not variants:
            raise _fail(what, f"lists no variant for {role}")
        for i, v in enumerate(variants):
            if not isinstance(v, Mapping) or not isinstance(v.get("file"), str):
                raise _fail(what, f"graphs.{role}[{i}] has no file")
            for key in ("needs", "external_data"):
                if not isinstance(v.get(key, []), list):
                    raise _fail(what, f"graphs.{role}[{i}].{key} is not a list")
    return dict(data)


def write_manifest(path: Any, data: Mapping[str, Any]) -> None:
    """The one writer of ``manifest.json``: validate, then write (site or model manifest)."""
    from pathlib import Path

    p = Path(path)
    if "graphs" in data:
        check_model_manifest(data)
    else:
        check_site_manifest(data)
    p.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- rendering for the page


def _enum(values: Any) -> dict[str, str]:
    """``{identifier: value}`` so the JavaScript writes ``C.sw.kinds.integrity_error``, never the string."""
    return {str(v).replace("-", "_"): str(v) for v in values}


def as_data() -> dict[str, Any]:
    """The whole contract as JSON-able data (what ``contract.js`` holds)."""
    return {
        "version": VERSION,
        "contractFile": CONTRACT_JS,
        "settings": {s.key: {**asdict(s), "choices": list(s.choices)} for s in SETTINGS},
        "settingKinds": _enum(SETTING_KINDS),
        "prompts": list(PROMPTS),
        "messages": {"in": _enum(message_types("in")), "out": _enum(message_types("out"))},
        "messageFields": {f"{m.direction}:{m.type}": list(m.fields) for m in MESSAGES},
        "errors": _enum(ERROR_CODES),
        "fallbacks": _enum(FALLBACKS),
        "deviceReasons": _enum(DEVICE_REASONS),
        "devices": _enum(SETTING["device"].choices),
        "sw": {**asdict(SW), "kinds": _enum(SW.kinds), "commands": dict(SW.commands)},
        "graphFile": GRAPH_FILE,
        "manifest": {"siteFormat": SITE_MANIFEST_FORMAT, "modelFormat": MODEL_MANIFEST_FORMAT,
                     "fileFields": FILE_FIELDS, "variantFields": VARIANT_FIELDS, "roles": list(GRAPH_ROLES)},
    }


# What the JavaScript side runs of the contract, written here beside its Python twin so the two cannot drift
# apart: the manifest reader (the service worker, sw-register and the page) keeps the entries check_files
# accepts (FILE_FIELDS, from the data), and checkSetting applies check_setting's rules with its words.
_JS_HELPERS = r"""
  C.readFiles = function (data) {
    if (!data || typeof data !== 'object' || !Array.isArray(data.files)) {
      throw new Error('manifest.json has no "files" list; rebuild the site with `lfmvl-site build`.');
    }
    return data.files.filter((f) => f && Object.entries(C.manifest.fileFields)
      .every(([k, kind]) => typeof f[k] === kind));
  };
  C.isGraphFile = (path) => new RegExp(C.graphFile).test(path);
  C.checkSetting = function (key, raw) {
    const s = C.settings[key];
    if (!s) return { problem: `Unknown setting "${key}"; the settings are ${Object.keys(C.settings).join(', ')}.` };
    const text = raw === null || raw === undefined ? '' : String(raw);
    const hint = s.hint ? ` ${s.hint}` : '';
    if (s.kind === C.settingKinds.text) {
      const n = [...text].length;
      if (s.max !== null && n > s.max) return { problem: `${s.label}: ${n} characters is too long.${hint}` };
      return { value: text };
    }
    if (s.kind === C.settingKinds.int) {
      const shown = text.replace(/^[ 	]+|[ 	]+$/g, '');
      if (!/^[+-]?[0-9]+$/.test(shown)) return { problem: `${s.label}: "${shown}" is not a whole number.${hint}` };
      const n = Number(shown);
      if ((s.min !== null && n < s.min) || (s.max !== null && n > s.max)) {
        return { problem: `${s.label}: ${shown} is out of range.${hint}` };
      }
      return { value: n };
    }
    const i = s.choices.findIndex((c) => String(c) === text);
    if (i >= 0) return { value: s.choices[i] };
    const words = (s.labels.length ? s.labels : s.choices.map(String)).join(', ');
    return { problem: `${s.label}: "${text}" is not one of: ${words}.` };
  };
"""


def _deep_freeze_js() -> str:
    return ("  const freeze = (o) => { Object.values(o).forEach((v) => { if (v && typeof v === 'object') freeze(v); });"
            " return Object.freeze(o); };\n")


def render_js() -> str:
    """``contract.js``: a classic script (also importable as a module) setting ``globalThis.LFMVL_CONTRACT``."""
    data = json.dumps(as_data(), indent=1, sort_keys=True, ensure_ascii=True)
    return (
        "// Generated by lfmvl-site build from lfmvl_site/runtime/contract.py: do not edit; edit the Python.\n"
        "(function () {\n"
        f"  const C = {data};\n"
        f"{_JS_HELPERS}"
        f"{_deep_freeze_js()}"
        "  globalThis.LFMVL_CONTRACT = freeze(C);\n"
        "})();\n"
    )


__all__ = [
    "CONTRACT_JS", "DEFAULT_PROMPT", "ERRORS", "ERROR_CODES", "FALLBACKS", "MESSAGES", "PROMPTS", "SETTING",
    "SETTINGS", "SW", "as_data", "check_files", "check_model_manifest", "check_setting", "check_site_manifest",
    "error_code", "error_payload", "message_fields", "message_types", "render_js", "write_manifest",
]
