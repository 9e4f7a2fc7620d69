"""The one contract between the Python runtime and the page (lfmvl_site.runtime.contract), without a browser.

References: the JavaScript sources in web/ read as text (every shared name they use must resolve in the
contract, none may be spelled out by hand, every message must be sent by one side and handled by the other),
Node.js evaluating the contract.js the build renders (the JS checks agree with the Python ones on the same
inputs), the files ``lfmvl-site build --synthetic`` writes, and the runtime's own exception classes.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from support import pyodide_mirror

from lfmvl_site.cli import main
from lfmvl_site.errors import (
    Cancelled,
    ContractError,
    InputError,
    LfmvlError,
    ModelFileError,
)
from lfmvl_site.runtime import contract
from lfmvl_site.runtime.browser import PageRuntime, choose_variant

REPO = Path(__file__).resolve().parents[1]
WEB = REPO / "web"
JS = {p.name: p.read_text(encoding="utf-8") for p in sorted(WEB.glob("*.js"))}
DATA = contract.as_data()
JS_MEMBERS = {"readFiles", "checkSetting", "isGraphFile"}  # what contract.js adds in JavaScript beside the data
NODE = shutil.which("node")


def _strip_comments(src: str) -> str:
    src = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), src, flags=re.DOTALL)
    return re.sub(r"(?m)(^|[^:'\"`\\])//.*$", r"\1", src)


CODE = {name: _strip_comments(src) for name, src in JS.items()}


# ---------------------------------------------------------------- every name the JS uses resolves


def _aliases(src: str) -> dict[str, list[str]]:
    """``{alias: path in the contract}`` from ``const C = globalThis.LFMVL_CONTRACT``, ``const X = C.a.b``
    and ``const {a: X, b} = C.sw``."""
    found: dict[str, list[str]] = {}
    for m in re.finditer(r"const (\w+) = (?:globalThis|self)\.LFMVL_CONTRACT;", src):
        found[m.group(1)] = []
    changed = True
    while changed:
        changed = False
        for m in re.finditer(r"const (\w+) = (\w+)((?:\.\w+)+);", src):
            name, base, rest = m.groups()
            if base in found and name not in found:
                found[name] = found[base] + rest.strip(".").split(".")
                changed = True
        for m in re.finditer(r"const \{([^}]*)\} = (\w+)((?:\.\w+)*);", src, re.DOTALL):
            body, base, rest = m.groups()
            if base not in found:
                continue
            for part in body.split(","):
                key, _, alias = (x.strip() for x in part.partition(":"))
                alias = alias or key
                if key and alias not in found:
                    found[alias] = found[base] + [p for p in rest.split(".") if p] + [key]
                    changed = True
    return found


def _resolve(path: list[str]) -> str | None:
    """None when ``path`` names something in the contract, else the segment that does not exist."""
    node: Any = DATA
    for i, seg in enumerate(path):
        if not isinstance(node, dict):
            return None  # a method or property of a value (.length, .join, ...)
        if i == 0 and seg in JS_MEMBERS:
            return None
        if seg not in node:
            return ".".join(path[: i + 1])
        node = node[seg]
    return None


def test_every_contract_name_the_js_uses_exists() -> None:
    unknown = []
    used = 0
    for name, src in CODE.items():
        aliases = _aliases(src)
        if "LFMVL_CONTRACT" in src:
            assert aliases, f"{name} reads LFMVL_CONTRACT without `const C = globalThis.LFMVL_CONTRACT`"
        for alias, base in aliases.items():
            assert _resolve(base) is None, f"{name}: {alias} = {'.'.join(base)} is not in the contract"
            for m in re.finditer(rf"(?<![\w.]){re.escape(alias)}((?:\.\w+)+)", src):
                used += 1
                bad = _resolve(base + m.group(1).strip(".").split("."))
                if bad:
                    line = src[: m.start()].count("\n") + 1
                    unknown.append(f"web/{name}:{line}: {alias}{m.group(1)} ({bad} is not in contract.py)")
    assert not unknown, "\n".join(unknown)
    assert used > 50  # the page, the worker and both service-worker files do read it


def test_resolver_catches_a_misspelt_name() -> None:
    """The check above can fail: a name the contract lacks is reported."""
    src = "const C = globalThis.LFMVL_CONTRACT;\nconst OUT = C.messages.out;\nswitch (m.type) { case OUT.redy: }"
    aliases = _aliases(src)
    assert aliases == {"C": [], "OUT": ["messages", "out"]}
    assert _resolve(aliases["OUT"] + ["redy"]) == "messages.out.redy"
    assert _resolve(aliases["OUT"] + ["ready"]) is None


# ---------------------------------------------------------------- no name spelt out by hand


def _contract_names() -> dict[str, str]:
    """Every value the two sides must agree on, with what it is."""
    names: dict[str, str] = {}
    for m in contract.MESSAGES:
        names[m.type] = "message type"
    for e in contract.ERRORS:
        names[e.code] = "error code"
    for f in contract.FALLBACKS:
        names[f] = "variant fallback"
    for r in contract.DEVICE_REASONS:
        names[r] = "device reason"
    for d in contract.SETTING["device"].choices:
        names[d] = "device"
    for k in contract.SETTING_KINDS:
        names[k] = "setting kind"
    for s in contract.SETTINGS:
        names[s.key] = "setting key"
    for k in contract.SW.kinds:
        names[k] = "service-worker message kind"
    for v in [*contract.SW.commands.values(), contract.SW.cache_files, contract.SW.cache_meta, contract.SW.cache_prefix,
              contract.SW.sha_header, contract.SW.reload_key, contract.SW.message_type]:
        names[v] = "service-worker constant"
    return names


NAMES = _contract_names()
# Names so distinctive that no string in web/*.js may spell them at all (the rest are also ordinary words
# and element ids, e.g. "status", "prompt", "device": those may not appear where a name is compared or sent).
DISTINCT = {n for n, what in NAMES.items()
            if what in ("error code", "service-worker message kind", "service-worker constant", "device reason")
            and ("_" in n or "-" in n)}
# Fields whose values are contract names: a literal compared with one of them, or given to one, restates a name.
FIELD_NAMES = r"(type|kind|code|why|fallback|device)"
STRING = re.compile(r"""(['"])((?:\\.|(?!\1)[^\\\n])*)\1""")


def _restated(src: str) -> list[str]:
    found = []
    for m in STRING.finditer(src):
        text = m.group(2)
        before = src[max(0, m.start() - 40): m.start()]
        compared = (re.search(rf"\.{FIELD_NAMES}\s*(===|!==|==|!=)\s*$", before)
                    or re.match(rf"\s*(===|!==|==|!=)\s*[\w.]*\.{FIELD_NAMES}\b", src[m.end(): m.end() + 40])
                    or re.search(r"\bcase\s+$", before)
                    or re.search(rf"\b{FIELD_NAMES}\s*:\s*$", before))
        if text in DISTINCT or (compared and text in NAMES):
            line = src[: m.start()].count("\n") + 1
            found.append(f"line {line}: {m.group(0)} ({NAMES[text]})")
    return found


def test_no_js_spells_out_a_contract_name() -> None:
    problems = [f"web/{name} {p}" for name, src in CODE.items() for p in _restated(src)]
    assert not problems, "use the name from contract.js (LFMVL_CONTRACT) instead:\n" + "\n".join(problems)


def test_restated_names_are_caught() -> None:
    """What the check above looks for, shown on code that restates names (so it can fail)."""
    bad = ('switch (m.type) { case "ready": break; }\nif (m.why === "no-webgpu") x();\n'
           'post({ type: "caption" });\ncaches.open("lfmvl-files-v1");\nconst e = {code: "download_failed"};\n'
           'if (c.fallback !== "none") y();\nif ("wasm" === info.device) z();\n')
    assert len(_restated(bad)) == 7, _restated(bad)
    fine = ('$("status").textContent = "x"; new Worker(u, { type: "module" }); if (e.name === "NotFoundError") y();'
            'if (precache !== "none") z();')
    assert _restated(fine) == []


def test_no_regex_over_error_text_in_the_page() -> None:
    """Failures reach the page as codes: app.js classifies none by matching message text."""
    assert not re.search(r"/[^/\n]*(quota|failed|memory|download|NetworkError)[^/\n]*/i?\.(test|exec)", CODE["app.js"])
    assert "explain" in CODE["app.js"] and all(f"ERR.{e.code}" in CODE["app.js"] for e in contract.ERRORS
                                             if e.code not in ("internal",))


# ---------------------------------------------------------------- both sides of every message


def test_every_message_is_sent_by_one_side_and_handled_by_the_other() -> None:
    page, worker = CODE["app.js"], CODE["worker.js"]
    for m in contract.MESSAGES:
        alias, sender, receiver = ("IN", page, worker) if m.direction == "in" else ("OUT", worker, page)
        assert re.search(rf"type: {alias}\.{m.type}\b", sender), f"nobody sends {m.direction} message {m.type!r}"
        assert re.search(rf"case {alias}\.{m.type}:", receiver), f"nobody handles {m.direction} message {m.type!r}"
    # and nothing beyond the contract: every message type a side switches on or posts is listed
    for src, alias in ((page, "OUT"), (worker, "IN"), (page, "IN"), (worker, "OUT")):
        for used in re.findall(rf"\b{alias}\.(\w+)", src):
            assert used in DATA["messages"][alias.lower()], f"{alias}.{used}"


def _object_at(src: str, start: int) -> str:
    """The text of the object literal opening at ``src[start] == "{"`` (strings and templates skipped)."""
    depth, i, quote = 0, start, ""
    tmpl: list[int] = []  # brace depth at each open `${`
    while i < len(src):
        ch = src[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if quote == "`" and src.startswith("${", i):
                tmpl.append(depth)
                depth += 1
                quote = ""
                i += 2
                continue
            if ch == quote:
                quote = ""
        elif ch in "'\"`":
            quote = ch
        elif ch in "{([":
            depth += 1
        elif ch in "})]":
            depth -= 1
            if tmpl and depth == tmpl[-1] and ch == "}":
                tmpl.pop()
                quote = "`"
            elif depth == 0:
                return src[start: i + 1]
        i += 1
    raise AssertionError(f"unbalanced object literal at {start}")


def _top_keys(obj: str) -> set[str]:
    body = obj[1:-1]
    parts, depth, cur, quote = [], 0, "", ""
    for ch in body:
        if quote:
            cur += ch
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"`":
            quote = ch
        elif ch in "{([":
            depth += 1
        elif ch in "})]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    keys = set()
    for p in (x.strip() for x in parts):
        if not p or p.startswith("..."):
            continue
        m = re.match(r"(\w+)\s*(:|$)", p)
        assert m, f"cannot read the key of {p!r}"
        keys.add(m.group(1))
    return keys


def test_fields_of_every_message_posted_are_the_contracts() -> None:
    checked = 0
    for name, src in CODE.items():
        for m in re.finditer(r"\{ type: (IN|OUT)\.(\w+)", src):
            direction = m.group(1).lower()
            keys = _top_keys(_object_at(src, m.start())) - {"type"}
            allowed = set(contract.message_fields(direction, m.group(2)))
            assert keys <= allowed, f"web/{name}: {direction} message {m.group(2)} sends {sorted(keys - allowed)}"
            checked += 1
    assert checked >= 20


def test_python_answers_carry_only_contract_fields(built: Path, tmp_path: Path) -> None:
    """PageRuntime.load on a real built site: the plan lists the manifest's graph files with their sizes, and
    a load that cannot finish (no onnxruntime-web under CPython) answers {error: {code, detail}}."""
    site = built
    plans: list[Any] = []

    async def fetch_text(url: str) -> str | None:
        path = site / url.split("/site/", 1)[1]
        return path.read_text(encoding="utf-8") if path.is_file() else None

    async def fetch_bytes(url: str, label: str) -> bytes:
        return (site / url.split("/site/", 1)[1]).read_bytes()

    answer = json.loads(asyncio.run(PageRuntime().load(None, "http://x/site/model/", "wasm", [], fetch_bytes,
                                                       fetch_text, False, plans.append)))
    assert set(answer) == {"error"} and set(answer["error"]) == {"code", "detail"}
    assert answer["error"]["code"] in contract.ERROR_CODES
    assert "Traceback" not in answer["error"]["detail"] and "\n" not in answer["error"]["detail"]
    plan = json.loads(plans[0])
    model = json.loads((site / "model" / "manifest.json").read_text())
    sizes = {f["path"]: f["size"] for f in model["files"]}
    assert plan and all(set(p) == {"file", "size"} for p in plan)
    assert {p["file"] for p in plan} >= {f"model/{v['file']}" for v in (vs[0] for vs in model["graphs"].values())}
    assert all((site / p["file"]).stat().st_size == p["size"] == sizes[p["file"][len("model/"):]] for p in plan)

    # a model manifest that is not one: the code says so, the page words it
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "manifest.json").write_text('{"files": [{"path": "a"}]}')

    async def fetch_broken(url: str) -> str | None:
        p = broken / url.rsplit("/", 1)[1]
        return p.read_text() if p.is_file() else None

    got = json.loads(asyncio.run(PageRuntime().load(None, "http://x/model/", "wasm", [], fetch_bytes, fetch_broken)))
    assert got["error"]["code"] == "contract" and "model/manifest.json" in got["error"]["detail"]
    (broken / "manifest.json").unlink()
    got = json.loads(asyncio.run(PageRuntime().load(None, "http://x/model/", "wasm", [], fetch_bytes, fetch_broken)))
    assert got["error"]["code"] == "model_file" and "404" in got["error"]["detail"]


def test_variant_choices_name_their_fallback() -> None:
    variants = [{"precision": "fp16", "file": "onnx/a_fp16.onnx", "needs": ["shader-f16"]},
                {"precision": "fp32", "file": "onnx/a.onnx"}]
    for device, features, fallback, missing in (("webgpu", ["shader-f16"], "none", ()),
                                                ("webgpu", [], "variant", ("shader-f16",)),
                                                ("wasm", [], "none", ())):
        c = choose_variant("embed_tokens", variants, device, features)
        assert c.fallback == fallback and c.fallback in contract.FALLBACKS and c.missing == missing
        assert set(c.as_dict()) <= {"role", "precision", "file", "external_data", "device", "reason", "fallback",
                                    "missing"}
    only_f16 = variants[:1]
    c = choose_variant("embed_tokens", only_f16, "webgpu", [])
    assert (c.device, c.fallback, c.missing) == ("wasm", "wasm", ("shader-f16",))


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(("exc", "code"), [
    (Cancelled("prompt changed"), "cancelled"),
    (MemoryError(), "out_of_memory"),
    (ModelFileError("model/onnx/decoder.onnx is missing; rebuild."), "model_file"),
    (FileNotFoundError("tokenizer.json"), "model_file"),
    (ContractError("decoder: input x is float16, expected float32"), "contract"),
    (InputError("Max tokens: 0 is out of range."), "bad_input"),
    (LfmvlError("something the user can act on"), "internal"),
    (ValueError("deep inside numpy\nline two"), "internal"),
    (KeyError("x"), "internal"),
])
def test_error_payload_gives_a_code_for_each_error_class(exc: BaseException, code: str) -> None:
    payload = contract.error_payload(exc)
    assert payload["code"] == code and code in contract.ERROR_CODES
    assert set(payload) == {"code", "detail"} and "\n" not in payload["detail"]
    if isinstance(exc, LfmvlError):
        assert payload["detail"] == str(exc)
    else:
        assert payload["detail"].startswith(type(exc).__name__)


class _JsError:
    def __init__(self, name: str) -> None:
        self.name = name


class JsException(Exception):  # what pyodide.ffi.JsException carries: the JavaScript error object
    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.js_error = _JsError(name)


@pytest.mark.parametrize(("name", "code"), [("QuotaExceededError", "storage_full"), ("RangeError", "out_of_memory"),
                                            ("TypeError", "internal")])
def test_javascript_errors_are_coded_by_their_name(name: str, code: str) -> None:
    assert contract.error_payload(JsException(name, "Failed to fetch"))["code"] == code


def test_every_error_code_has_words_on_the_page() -> None:
    for e in contract.ERRORS:
        if e.code in ("internal", "cancelled"):  # the default words, and no words (a cancel is counted)
            continue
        assert re.search(rf"case ERR\.{e.code}:", CODE["app.js"]), e.code
    assert "ERR.cancelled" in CODE["app.js"]


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("max_new_tokens", 1, 1), ("max_new_tokens", 512, 512), ("max_new_tokens", "12", 12), ("max_new_tokens", " 7 ", 7),
    ("max_new_tokens", 32.0, 32), ("prompt", "", ""), ("prompt", "x" * 2000, "x" * 2000), ("device", "wasm", "wasm"),
    ("frame_size", 0, 0), ("frame_size", "768", 768), ("interval_ms", "1000", 1000),
])
def test_check_setting_accepts_valid_values(key: str, value: Any, expected: Any) -> None:
    got = contract.check_setting(key, value)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(("key", "value", "said"), [
    ("max_new_tokens", 0, "Max tokens: 0 is out of range. A whole number from 1 to 512."),
    ("max_new_tokens", 9999, "Max tokens: 9999 is out of range. A whole number from 1 to 512."),
    ("max_new_tokens", "-3", "Max tokens: -3 is out of range."),
    ("max_new_tokens", "abc", 'Max tokens: "abc" is not a whole number.'),
    ("max_new_tokens", "1.5", 'Max tokens: "1.5" is not a whole number.'),
    ("max_new_tokens", 1.5, 'Max tokens: "1.5" is not a whole number.'),
    ("max_new_tokens", "1e2", "is not a whole number"),
    ("max_new_tokens", "", 'Max tokens: "" is not a whole number.'),
    ("max_new_tokens", float("nan"), "is not a whole number"),
    ("max_new_tokens", float("inf"), "is not a whole number"),
    ("max_new_tokens", True, "is not a whole number"),
    ("max_new_tokens", None, "is not a whole number"),
    ("prompt", "x" * 2001, "Prompt: 2001 characters is too long. At most 2000 characters"),
    ("prompt", 5, "Prompt: 5 (int) is not text."),
    ("device", "cuda", 'Backend: "cuda" is not one of: auto, WebGPU, wasm (CPU).'),
    ("interval_ms", False, "is not one of"),
    ("frame_size", 500, "is not one of: 256 px"),
    ("colour", 1, 'Unknown setting "colour"'),
])
def test_check_setting_refuses_bad_values_naming_the_range(key: str, value: Any, said: str) -> None:
    with pytest.raises(InputError) as info:
        contract.check_setting(key, value)
    assert said in str(info.value) and "\n" not in str(info.value)


CASES = [("max_new_tokens", v) for v in ("0", "1", "32", "512", "513", "9999", " 12\t", "+7", "-0", "007", "1.5",
                                          "1e2", "0x10", "", "abc", "12abc", "99999999999999999999", "１２")]
CASES += [("prompt", v) for v in ("", "Describe.", "x" * 2000, "x" * 2001, "\U0001F600" * 2000, "\U0001F600" * 2001)]
CASES += [(k, v) for k in ("interval_ms", "frame_size", "device")
          for v in (*(str(c) for c in contract.SETTING[k].choices), "500", "WebGPU", "", "true")]
CASES += [("nope", "1")]


@pytest.mark.skipif(NODE is None, reason="node is not installed: the JavaScript twin of check_setting is not run")
def test_rendered_contract_js_agrees_with_python(tmp_path: Path) -> None:
    """contract.js evaluated by Node: its data is as_data(), frozen; C.checkSetting accepts and refuses what
    check_setting does, with the same value and the same words; C.readFiles keeps what check_files accepts."""
    script = tmp_path / "check.js"
    (tmp_path / "contract.js").write_text(contract.render_js(), encoding="utf-8")
    entries = [{"path": "a.js", "size": 3, "sha256": "0" * 64}, {"path": "b.js", "size": "3", "sha256": "0" * 64},
               {"path": "c.js", "sha256": "0" * 64}, {"path": 4, "size": 3, "sha256": "0" * 64}, None]
    script.write_text(f"""
require('./contract.js');
const C = globalThis.LFMVL_CONTRACT;
const cases = JSON.parse(process.argv[2]);
const out = {{
  data: JSON.parse(JSON.stringify(C)),
  frozen: Object.isFrozen(C) && Object.isFrozen(C.settings.max_new_tokens) && Object.isFrozen(C.sw.kinds),
  checks: cases.map(([k, v]) => C.checkSetting(k, v)),
  files: C.readFiles({{files: {json.dumps(entries)}}}),
}};
try {{ C.readFiles({{}}); out.noFiles = null; }} catch (e) {{ out.noFiles = e.message; }}
process.stdout.write(JSON.stringify(out));
""", encoding="utf-8")
    run = subprocess.run([NODE, str(script), json.dumps(CASES)], capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["data"] == json.loads(json.dumps(DATA)) and out["frozen"] is True
    for (key, value), js in zip(CASES, out["checks"]):
        try:
            py: dict[str, Any] = {"value": contract.check_setting(key, value)}
        except InputError as exc:
            py = {"problem": str(exc)}
        if key == "nope":
            assert "problem" in js and "problem" in py
            continue
        assert js == py, (key, value)
    good = []
    for e in entries:
        try:
            contract.check_files({"files": [e]})
            good.append(e)
        except ContractError:
            pass
    assert out["files"] == good == entries[:1]
    assert out["noFiles"] and "files" in out["noFiles"]


# ---------------------------------------------------------------- what the build writes


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("contract") / "dist"
    args = ["build", "--synthetic", "--out", str(out)]
    mirror = pyodide_mirror()
    if mirror is not None:
        args += ["--pyodide-dir", str(mirror)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out


def test_build_renders_contract_js_and_lists_it(built: Path) -> None:
    assert (built / contract.CONTRACT_JS).read_text(encoding="utf-8") == contract.render_js()
    manifest = json.loads((built / "manifest.json").read_text())
    assert contract.CONTRACT_JS in {f["path"] for f in manifest["files"]}  # cached for offline use
    for name in ("app.js", "worker.js", "sw-register.js"):
        assert 'import "./contract.js";' in JS[name] or "import './contract.js';" in JS[name], name
    assert "importScripts('./contract.js');" in JS["sw.js"]


def test_manifests_the_build_writes_validate(built: Path) -> None:
    site = json.loads((built / "manifest.json").read_text())
    assert contract.check_site_manifest(site)["format"] == contract.SITE_MANIFEST_FORMAT
    model = json.loads((built / "model" / "manifest.json").read_text())
    contract.check_model_manifest(model)
    for f in site["files"] + site["deploy_files"]:
        assert (built / f["path"]).stat().st_size == f["size"]
    for role in contract.GRAPH_ROLES:
        for v in model["graphs"][role]:
            assert (built / "model" / v["file"]).is_file()


@pytest.mark.parametrize(("change", "said"), [
    (lambda m: m.pop("files"), 'no "files" list'),
    (lambda m: m["files"][0].pop("sha256"), "sha256 is missing"),
    (lambda m: m["files"][0].update(size="12"), "size is missing or not a number"),
    (lambda m: m["files"][0].update(path="../etc/passwd"), "bad path"),
    (lambda m: m.update(format=99), "format 99"),
])
def test_site_manifest_validator_refuses_what_the_page_cannot_read(built: Path, tmp_path: Path, change: Any,
                                                                  said: str) -> None:
    manifest = json.loads((built / "manifest.json").read_text())
    change(manifest)
    with pytest.raises(ContractError, match=re.escape(said)):
        contract.write_manifest(tmp_path / "manifest.json", manifest)
    assert not (tmp_path / "manifest.json").exists()  # nothing written


def test_model_manifest_validator_names_the_missing_role(built: Path) -> None:
    model = json.loads((built / "model" / "manifest.json").read_text())
    del model["graphs"]["decoder"]
    with pytest.raises(ContractError, match="lists no variant for decoder"):
        contract.check_model_manifest(model)


def test_page_template_carries_build_facts_only(built: Path) -> None:
    html = (built / "index.html").read_text()
    m = re.search(r'<script type="application/json" id="settings">(.*?)</script>', html, re.DOTALL)
    assert m
    facts = json.loads(m.group(1))
    assert not set(facts) & set(contract.SETTING), "setting defaults live in contract.js only"
    # selects are filled from the contract, not written in the template
    assert "<option value=\"512\"" not in html and 'min="1"' not in html
