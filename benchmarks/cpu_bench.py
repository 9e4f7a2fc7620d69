"""``lfmvl-site bench``: side-by-side CPU benchmarks in one run (ratios, not absolute times).

Benchmark code, not part of the installed package: ``lfmvl-site bench`` imports this file from the source checkout
(it needs ``benchmarks/page/`` too); ``python benchmarks/cpu_bench.py`` is not an entry point.

Sections (``--only`` picks some):

* ``preprocess``: one frame through the runtime's preprocessing in Pyodide (Chromium), in CPython, and through
  transformers' ``Lfm2VlImageProcessor`` (torchvision backend, the old "Fast" one); ratio to CPython.
* ``loop``: the Python generation loop in Pyodide (the real ``Captioner`` over the browser backend) vs a minimal
  JavaScript loop over the same onnxruntime-web sessions, same page, wasm EP; tiny and mid synthetic models.
* ``graphopt``: the decoder optimizations (last_logits, argmax, q4_lm_head) one at a time and together, native
  onnxruntime on the mid model: prefill time, bytes read back, decode ms per token.
* ``start``: the built page, cold (new browser profile) and warm (reload): time to ready and to first caption;
  dist size by part.

The page side lives in ``benchmarks/page/`` (copied into each built dist as ``bench/``); the GPU benchmark
(``benchmarks/gpu/``) runs on the device machine and is described in BENCHMARKS.md.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lfmvl_site.config import chromium_path
from lfmvl_site.errors import InputError
from lfmvl_site.runtime.contract import DEFAULT_PROMPT
from lfmvl_site.serve import serving

if TYPE_CHECKING:  # pragma: no cover
    import onnx

SECTIONS = ("preprocess", "loop", "graphopt", "start")
SIZES = {"640x480": (640, 480), "1280x720": (1280, 720), "1920x1080": (1920, 1080)}
PROMPT = DEFAULT_PROMPT
CHROMIUM_ARGS = ["--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# Decoder variants of the graph-optimization table: which of the build's optimizations each one applies.
VARIANTS: dict[str, tuple[str, ...]] = {
    "none (published shape)": (),
    "last_logits": ("last_logits",),
    "argmax": ("argmax",),
    "q4_lm_head": ("q4_lm_head",),
    "all three, unfused": ("last_logits", "argmax", "q4_lm_head"),
    "all three + fuse, int8 activations": ("last_logits", "argmax", "q4_lm_head", "fuse"),
    # MatMulNBits accuracy_level 0: float activations (level 4, as published, quantizes them to int8 for DP4A).
    "site default (all three + fuse + float activations)": ("last_logits", "argmax", "q4_lm_head", "fuse", "float_activations"),
}


def make_frame(width: int, height: int, seed: int = 0) -> np.ndarray:
    """The benchmark frame (RGBA uint8 noise); benchmarks/page/bench_py.py makes the same bytes in Pyodide."""
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 4), dtype=np.uint8)


def repo_root() -> Path:
    """The source checkout this file is in (the bench page files sit beside it in benchmarks/page/)."""
    return Path(__file__).resolve().parents[1]


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 3) if xs else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


# ------------------------------------------------------------------------------------ decoder variants

def decoder_variants(fp32_decoder: onnx.ModelProto, names: list[str] | None = None,
                     progress: bool = False) -> dict[str, onnx.ModelProto]:
    """q4 decoders with each combination of VARIANTS, made with the model build's own functions.

    The linear layers are quantized once (symmetric q4, block 32, lm_head kept fp32, as published); each
    variant then gets its optimizations in the build's order (last_logits, q4_lm_head, fuse, argmax).
    """
    from lfmvl_site.model import fuse, optimize, quantize

    base = copy.deepcopy(fp32_decoder)
    head = quantize.find_lm_head(base)
    base = quantize.quantize_q4(base, exclude=[head.name] if head is not None else [], progress=progress,
                                desc="q4 decoder")
    out = {}
    for name in names or list(VARIANTS):
        opts = VARIANTS[name]
        m = copy.deepcopy(base)
        if "last_logits" in opts:
            optimize.last_logits(m)
        if "q4_lm_head" in opts:
            m = optimize.q4_lm_head(m)
        if "float_activations" in opts:
            optimize.float_activations(m)
        if "fuse" in opts:  # the build's order: after the q4 conversion, before argmax
            fuse.fuse(m)
        if "argmax" in opts:
            optimize.add_argmax(m)
        out[name] = m
    return out


def prompt_length(model_dir: Path, width: int, height: int) -> int:
    """Prompt tokens of one frame of this size with PROMPT (the runtime's own preprocessing and template)."""
    from lfmvl_site.runtime.preprocess import ProcessorConfig, preprocess
    from lfmvl_site.runtime.prompt import build_prompt_ids, chat_template_text, template_tokens
    from lfmvl_site.runtime.tokenizer import Tokenizer

    proc = json.loads((model_dir / "processor_config.json").read_text())
    tok_cfg_path = model_dir / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text()) if tok_cfg_path.is_file() else {}
    tmpl_path = model_dir / "chat_template.jinja"
    template = chat_template_text(tmpl_path.read_text() if tmpl_path.is_file() else None, tok_cfg)
    tokenizer = Tokenizer.from_json((model_dir / "tokenizer.json").read_text())
    inputs = preprocess([make_frame(width, height)], ProcessorConfig.from_dict(proc))
    return len(build_prompt_ids(tokenizer, template, PROMPT, inputs.layouts,
                                special_tokens=template_tokens(tok_cfg),
                                image_special_tokens=bool(proc.get("use_image_special_tokens", True))))


# ------------------------------------------------------------------------------------ sections

def bench_preprocess_native(model_dir: Path, reps: int) -> dict[str, Any]:
    """Runtime preprocessing in CPython and transformers' image processor, per frame size."""
    import warnings

    from lfmvl_site.runtime.preprocess import ProcessorConfig, preprocess

    proc = json.loads((model_dir / "processor_config.json").read_text())
    cfg = ProcessorConfig.from_dict(proc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers import AutoImageProcessor

        hf = AutoImageProcessor.from_pretrained(str(model_dir), backend="torchvision")
    out: dict[str, Any] = {"hf_class": f"{type(hf).__module__}.{type(hf).__name__} (backend=torchvision)"}
    for label, (w, h) in SIZES.items():
        rgba = make_frame(w, h)
        rgb = np.ascontiguousarray(rgba[..., :3])
        times: dict[str, list[float]] = {"cpython": [], "transformers": []}
        preprocess([rgba], cfg)
        hf(images=[rgb], return_tensors="pt")
        for _ in range(reps):  # interleaved: the machine's noise hits both alike
            t = time.perf_counter()
            preprocess([rgba], cfg)
            times["cpython"].append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            hf(images=[rgb], return_tensors="pt")
            times["transformers"].append((time.perf_counter() - t) * 1000)
        out[label] = {k: _median(v) for k, v in times.items()}
    return out


def _install_bench_page(dist: Path) -> None:
    page = repo_root() / "benchmarks" / "page"
    dest = dist / "bench"
    dest.mkdir(exist_ok=True)
    for f in ("index.html", "loops.mjs", "bench_py.py"):
        shutil.copyfile(page / f, dest / f)


def _bench_page(browser: Any, base: str, dist: Path, threads: int) -> Any:
    from lfmvl_site.site import assets

    page = browser.new_page()
    page.on("console", lambda m: m.type == "error" and "favicon" not in m.text and "404" not in m.text
            and print(f"  [page] {m.text}", file=sys.stderr))
    page.goto(base + "bench/index.html")
    page.wait_for_function("() => window.bench && window.bench.root", timeout=60_000)
    manifest = json.loads((dist / "manifest.json").read_text())
    page.evaluate("(a) => window.bench.init(a)", {
        "packages": list(assets.PYODIDE_PACKAGES), "wheel": base + manifest["runtime_wheel"], "threads": threads})
    return page


def bench_preprocess_pyodide(browser: Any, base: str, dist: Path, reps: int) -> dict[str, Any]:
    page = _bench_page(browser, base, dist, threads=1)
    pj = (dist / "model" / "processor_config.json").read_text()
    out = {}
    for label, (w, h) in SIZES.items():
        times = page.evaluate("(a) => window.bench.preprocess(a)", {"w": w, "h": h, "reps": reps, "processorJson": pj})
        out[label] = _median(times)
    page.close()
    return out


def bench_loop(browser: Any, base: str, dist: Path, tokens: int, reps: int, threads: int) -> dict[str, Any]:
    """Python loop vs JS loop (and JS loop with the embedding fed on directly), interleaved, wasm EP."""
    page = _bench_page(browser, base, dist, threads=threads)
    info = page.evaluate("(a) => window.bench.load(a)", {"modelUrl": base + "model/", "device": "wasm"})
    w, h = SIZES["640x480"]
    args = {"w": w, "h": h, "tokens": tokens, "prompt": PROMPT}
    calls = {"python": ("pyLoop", args), "js": ("jsLoop", args), "js_direct": ("jsLoop", {**args, "direct": True})}
    # Warm-up at full length: the first runs after loading grow the wasm heap and are several times slower.
    for fn, a in calls.values():
        page.evaluate(f"(a) => window.bench.{fn}(a)", a)
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in calls}
    order = list(calls)
    for rep in range(reps):  # rotate the order so no loop always runs first
        for k in order[rep % 3:] + order[:rep % 3]:
            fn, a = calls[k]
            runs[k].append(page.evaluate(f"(a) => window.bench.{fn}(a)", a))
    page.close()
    same = all(r["token_ids"] == runs["python"][0]["token_ids"] for rs in runs.values() for r in rs)
    out: dict[str, Any] = {"device": "wasm", "threads": threads, "tokens": tokens, "reps": reps,
                           "choices": info.get("describe"), "same_tokens": same}
    for k, rs in runs.items():
        steps = [s for r in rs for s in r["step_ms"]]
        out[k] = {
            "step_ms_median": _median(steps),
            "decode_wall_per_token_ms": _median([r["decode_wall_per_token_ms"] for r in rs]),
            "prefill_ms": _median([r["prefill_ms"] for r in rs]),
        }
    out["python"]["first_token_ms"] = _median([r["first_token_ms"] for r in runs["python"]])
    out["ratio_python_to_js"] = _ratio(out["python"]["decode_wall_per_token_ms"], out["js"]["decode_wall_per_token_ms"])
    out["ratio_python_to_js_direct"] = _ratio(out["python"]["decode_wall_per_token_ms"],
                                              out["js_direct"]["decode_wall_per_token_ms"])
    return out


def bench_graphopt(synth_dir: Path, steps: int, reps: int) -> dict[str, Any]:
    """Decoder variants on native onnxruntime (CPU): prefill of one 640x480 frame's prompt, decode steps."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(synth_dir / "onnx" / "decoder.onnx"))
    t = time.perf_counter()
    variants = decoder_variants(model)
    build_s = time.perf_counter() - t
    from measure import decode_weight_bytes

    S = prompt_length(synth_dir, *SIZES["640x480"])
    sessions, info = {}, {}
    ort.set_default_logger_severity(3)
    for name, m in variants.items():
        so = ort.SessionOptions()
        # Idle sessions must not spin their thread pools: five sessions share two cores here.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        sessions[name] = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        info[name] = {"weight_bytes_per_token": decode_weight_bytes(m), "nodes": len(m.graph.node)}
    del variants, model
    H = json.loads((synth_dir / "config.json").read_text())["text_config"]["hidden_size"]
    rng = np.random.default_rng(0)
    prompt = (rng.standard_normal((1, S, H)) * 0.02).astype(np.float32)
    step_in = (rng.standard_normal((1, 1, H)) * 0.02).astype(np.float32)

    def run_one(sess: Any) -> tuple[float, int, list[float]]:
        ins = {i.name: i for i in sess.get_inputs()}
        outs = [o.name for o in sess.get_outputs()]
        read = ["next_token"] if "next_token" in outs else ["logits"]
        cache_out = {n: ("present." + n[16:] if n.startswith("past_key_values.") else "present_" + n[5:])
                     for n in ins if n.startswith("past")}
        feeds: dict[str, Any] = {}
        for n, i in ins.items():
            if n in cache_out:
                shape = [d if isinstance(d, int) else (0 if "sequence" in str(d) else 1) for d in i.shape]
                feeds[n] = np.zeros(shape, np.float32)
        fetch = read + list(cache_out.values())
        length = S
        feeds.update(inputs_embeds=prompt, attention_mask=np.ones((1, length), np.int64))
        a = time.perf_counter()
        res = sess.run(fetch, feeds)
        prefill = (time.perf_counter() - a) * 1000
        read_bytes = int(res[0].nbytes)
        step_ms = []
        for _ in range(steps):
            for j, n in enumerate(cache_out):
                feeds[n] = res[1 + j]
            length += 1
            feeds.update(inputs_embeds=step_in, attention_mask=np.ones((1, length), np.int64))
            a = time.perf_counter()
            res = sess.run(fetch, feeds)
            step_ms.append((time.perf_counter() - a) * 1000)
        return prefill, read_bytes, step_ms

    results: dict[str, dict[str, list[float]]] = {n: {"prefill": [], "step": []} for n in sessions}
    for sess in sessions.values():  # warm-up
        run_one(sess)
    names = list(sessions)
    for rep in range(reps):
        for name in names[rep % len(names):] + names[:rep % len(names)]:  # rotate the order each rep
            p, b, st = run_one(sessions[name])
            results[name]["prefill"].append(p)
            results[name]["step"].extend(st)
            info[name]["prefill_read_bytes"] = b
    out: dict[str, Any] = {"engine": f"onnxruntime {ort.__version__} CPU", "prompt_tokens": S, "steps": steps,
                           "reps": reps, "variant_build_s": round(build_s, 1), "variants": {}}
    base = "none (published shape)"
    for name in sessions:
        out["variants"][name] = {**info[name], "prefill_ms": _median(results[name]["prefill"]),
                                 "decode_ms_per_token": _median(results[name]["step"])}
    for v in out["variants"].values():
        v["prefill_vs_none"] = _ratio(v["prefill_ms"], out["variants"][base]["prefill_ms"])
        v["decode_vs_none"] = _ratio(v["decode_ms_per_token"], out["variants"][base]["decode_ms_per_token"])
    return out


def bench_start(playwright: Any, base: str, dist: Path, tokens: int, work: Path) -> dict[str, Any]:
    """The real page, fake camera, wasm: cold (new profile) then warm (reload in the same profile)."""
    chromium = chromium_path()
    profile = Path(tempfile.mkdtemp(prefix="profile-", dir=work))
    ctx = playwright.chromium.launch_persistent_context(
        str(profile), executable_path=chromium, headless=True,
        args=CHROMIUM_ARGS + ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"])
    url = f"{base}?device=wasm&autostart=1&tokens={tokens}"
    js = ("() => { const s = window.lfmvl && window.lfmvl.state; return s && s.firstCaptionMs !== null ? "
          "{ready_ms: s.started + s.pageReadyMs, first_caption_ms: s.started + s.firstCaptionMs} : null; }")
    out = {}
    try:
        page = ctx.new_page()
        for kind in ("cold", "warm"):
            if kind == "cold":
                page.goto(url)
            else:
                page.reload()
            page.wait_for_function(js, timeout=300_000)
            out[kind] = {k: round(v, 1) for k, v in page.evaluate(js).items()}
    finally:
        ctx.close()
        shutil.rmtree(profile, ignore_errors=True)
    manifest = json.loads((dist / "manifest.json").read_text())
    out["dist_bytes_by_part"] = manifest["parts"]
    out["dist_total_bytes"] = manifest["total_bytes"]
    return out


# ------------------------------------------------------------------------------------ driver

def _build_site(dist: Path, size: str) -> None:
    from lfmvl_site.model.options import ModelBuildOptions
    from lfmvl_site.site.build import build_site

    if (dist / "manifest.json").is_file():
        return
    build_site(dist, ModelBuildOptions(synthetic=True, synthetic_size=size, progress=False), progress=False)


def machine() -> dict[str, Any]:
    chromium = chromium_path()
    try:
        version = subprocess.run([chromium, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError:
        version = None
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import onnxruntime

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "chromium": version,
            "onnxruntime": onnxruntime.__version__, "platform": platform.platform()}


def run(out_dir: Path, *, only: tuple[str, ...] = SECTIONS, work_dir: Path | None = None, quick: bool = False,
        say: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> dict[str, Any]:
    """Run the chosen sections; write ``out_dir/cpu-<stamp>.json`` and ``.md``; return the results."""
    unknown = set(only) - set(SECTIONS)
    if unknown:
        raise InputError(f"Unknown bench section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}.")
    repo_root()
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="lfmvl-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    results: dict[str, Any] = {"machine": machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                               "git": _git_head(), "quick": quick}
    dists = {}
    for size in ("tiny", "mid"):
        if size == "mid" and not ({"loop", "start"} & set(only)):
            continue
        dists[size] = work / f"dist-{size}"
        say(f"building the {size} site in {dists[size]}")
        _build_site(dists[size], size)
        _install_bench_page(dists[size])
    if "graphopt" in only:
        synth = work / "synth-mid"
        if not (synth / "config.json").is_file():
            from lfmvl_site.synth import write_model

            say("writing the mid synthetic model")
            write_model(synth, size="mid")
    from playwright.sync_api import sync_playwright

    chromium = chromium_path()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            if "preprocess" in only:
                say("preprocess: CPython + transformers")
                native = bench_preprocess_native(dists["tiny"] / "model", reps=10 if quick else 30)
                say("preprocess: Pyodide in Chromium")
                with serving(dists["tiny"]) as base:
                    pyo = bench_preprocess_pyodide(browser, base, dists["tiny"], reps=10 if quick else 30)
                table = {}
                for label in SIZES:
                    n = native[label]
                    table[label] = {"pyodide_ms": pyo[label], "cpython_ms": n["cpython"],
                                    "transformers_ms": n["transformers"],
                                    "pyodide_vs_cpython": _ratio(pyo[label], n["cpython"]),
                                    "transformers_vs_cpython": _ratio(n["transformers"], n["cpython"])}
                results["preprocess"] = {"hf_class": native["hf_class"], "sizes": table}
            if "loop" in only:
                results["loop"] = {}
                for size, tokens in (("tiny", 32), ("mid", 12)):
                    say(f"loop: {size} model")
                    with serving(dists[size]) as base:
                        results["loop"][size] = bench_loop(browser, base, dists[size], tokens=tokens,
                                                           reps=2 if quick else 3, threads=2)
                        say(f"  {results['loop'][size]['ratio_python_to_js']}x")
        finally:
            browser.close()
        if "start" in only:
            results["start"] = {}
            for size in ("tiny", "mid"):
                say(f"start: {size} site, cold and warm")
                with serving(dists[size]) as base:
                    results["start"][size] = bench_start(pw, base, dists[size], tokens=8, work=work)
    if "graphopt" in only:
        say("graphopt: decoder variants on native onnxruntime (mid)")
        results["graphopt"] = bench_graphopt(work / "synth-mid", steps=8 if quick else 16, reps=2 if quick else 3)
    results["elapsed_s"] = round(time.monotonic() - t0, 1)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out_dir / f"cpu-{stamp}.json").write_text(json.dumps(results, indent=1) + "\n")
    md = markdown(results)
    (out_dir / f"cpu-{stamp}.md").write_text(md)
    print(md)
    say(f"wrote {out_dir / f'cpu-{stamp}.json'} and .md in {results['elapsed_s']} s")
    if not work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return results


def _git_head() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo_root(), capture_output=True,
                              text=True, timeout=10).stdout.strip() or None
    except OSError:
        return None


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def markdown(r: dict[str, Any]) -> str:
    """The result tables as markdown."""
    m = r["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores; {m['chromium']}; onnxruntime {m['onnxruntime']}; "
             f"git {r.get('git')}; {r['started']}; {r.get('elapsed_s')} s.", ""]
    if "preprocess" in r:
        p = r["preprocess"]
        lines += ["### Preprocessing per frame (median ms)", "",
                  "| frame | runtime in Pyodide (Chromium) | runtime in CPython | transformers | Pyodide ÷ CPython | "
                  "transformers ÷ CPython |", "|---|---|---|---|---|---|"]
        for label, v in p["sizes"].items():
            lines.append(f"| {label} | {_fmt(v['pyodide_ms'])} | {_fmt(v['cpython_ms'])} | {_fmt(v['transformers_ms'])}"
                         f" | {_fmt(v['pyodide_vs_cpython'])}× | {_fmt(v['transformers_vs_cpython'])}× |")
        lines += ["", f"transformers: {p['hf_class']}.", ""]
    if "loop" in r:
        lines += ["### Generation loop, wasm EP (ms per generated token, medians)", "",
                  "| model | Python loop (Pyodide) | JS loop, same work | JS loop, embedding fed on | Python ÷ JS | "
                  "Python ÷ JS direct | Python step only | JS step | same tokens |", "|---|---|---|---|---|---|---|---|---|"]
        for size, v in r["loop"].items():
            lines.append(
                f"| {size} | {_fmt(v['python']['decode_wall_per_token_ms'])} | {_fmt(v['js']['decode_wall_per_token_ms'])}"
                f" | {_fmt(v['js_direct']['decode_wall_per_token_ms'])} | {_fmt(v['ratio_python_to_js'])}× | "
                f"{_fmt(v['ratio_python_to_js_direct'])}× | {_fmt(v['python']['step_ms_median'])} | "
                f"{_fmt(v['js']['step_ms_median'])} | {v['same_tokens']} |")
        lines.append("")
    if "graphopt" in r:
        g = r["graphopt"]
        lines += [f"### Decoder optimizations, mid model, {g['engine']} (prompt {g['prompt_tokens']} tokens)", "",
                  "| variant | prefill ms | ÷ none | bytes read back (prefill) | decode ms/token | ÷ none | "
                  "weight bytes/token |", "|---|---|---|---|---|---|---|"]
        for name, v in g["variants"].items():
            lines.append(f"| {name} | {_fmt(v['prefill_ms'])} | {_fmt(v['prefill_vs_none'])}× | "
                         f"{_fmt(v['prefill_read_bytes'])} | {_fmt(v['decode_ms_per_token'])} | "
                         f"{_fmt(v['decode_vs_none'])}× | {_fmt(v['weight_bytes_per_token'])} |")
        lines.append("")
    if "start" in r:
        lines += ["### Page start, wasm, fake camera (ms from navigation)", "",
                  "| site | cold: ready | cold: first caption | warm: ready | warm: first caption | dist MB "
                  "(pyodide / ort / runtime / model / page) |", "|---|---|---|---|---|---|"]
        for size, v in r["start"].items():
            parts = v["dist_bytes_by_part"]
            mb = " / ".join(f"{parts.get(k, 0) / 1e6:.2f}" for k in ("pyodide", "ort", "runtime", "model", "page"))
            lines.append(f"| {size} | {_fmt(v['cold']['ready_ms'])} | {_fmt(v['cold']['first_caption_ms'])} | "
                         f"{_fmt(v['warm']['ready_ms'])} | {_fmt(v['warm']['first_caption_ms'])} | {mb} |")
        lines.append("")
    return "\n".join(lines) + "\n"
