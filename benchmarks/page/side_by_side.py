"""Per-token cost of the page's Python loop against the leanest JS loop, for one or more built sites, one run.

    python benchmarks/page/side_by_side.py LABEL=DIST [LABEL=DIST ...] [--tokens 32] [--reps 5] [--profile]

Each DIST is a built site (``lfmvl-site build --synthetic``); the bench page (this folder) is copied into it as
``bench/``. One Chromium, one page per site, all loaded first; then each repetition runs, for every site in turn
(order rotated per repetition), the Python loop (``PageRuntime.caption``) and the JS loop that feeds embed_tokens'
output straight to the decoder (``jsLoop({direct: true})``) over the same sessions; wasm EP, 2 threads, 640x480
frame. So two runtimes (e.g. two wheels, before and after a change) are compared under the same machine load.
``--profile`` adds ``bench_py.profile`` (timers around each part of the Python loop) per repetition.
Prints a JSON summary (medians over repetitions of ms per decode token) and the machine load (``os.getloadavg``).
Needs only the package (``lfmvl_site``), Playwright and Debian's Chromium, like ``lfmvl-site bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from lfmvl_site.config import chromium_path
from lfmvl_site.runtime.contract import DEFAULT_PROMPT
from lfmvl_site.serve import serving
from lfmvl_site.site import assets

HERE = Path(__file__).resolve().parent
ARGS = ["--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def _med(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 3) if xs else None


def _open(browser: Any, base: str, dist: Path) -> Any:
    dest = dist / "bench"
    dest.mkdir(exist_ok=True)
    for f in ("index.html", "loops.mjs", "bench_py.py"):
        shutil.copyfile(HERE / f, dest / f)
    page = browser.new_page()
    page.goto(base + "bench/index.html")
    page.wait_for_function("() => window.bench && window.bench.root", timeout=60_000)
    manifest = json.loads((dist / "manifest.json").read_text())
    page.evaluate("(a) => window.bench.init(a)", {
        "packages": list(assets.PYODIDE_PACKAGES), "wheel": base + manifest["runtime_wheel"], "threads": 2})
    page.evaluate("(a) => window.bench.load(a)", {"modelUrl": base + "model/", "device": "wasm"})
    return page


def main() -> None:
    from contextlib import ExitStack

    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser()
    ap.add_argument("sites", nargs="+", help="LABEL=DIST")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    opts = ap.parse_args()
    sites = [(s.split("=", 1)[0], Path(s.split("=", 1)[1])) for s in opts.sites]
    args = {"w": 640, "h": 480, "tokens": opts.tokens, "prompt": DEFAULT_PROMPT}
    calls = [("python", "pyLoop", args), ("js_direct", "jsLoop", {**args, "direct": True})]
    if opts.profile:
        calls.append(("profile", "profile", args))
    load = [os.getloadavg()[0]]
    t_start = time.time()
    with sync_playwright() as pw, ExitStack() as stack:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=ARGS)
        pages = {}
        for label, dist in sites:
            base = stack.enter_context(serving(dist))
            pages[label] = _open(browser, base, dist)
        for page in pages.values():  # warm-up at full length (the first runs grow the wasm heap)
            for _, fn, a in calls:
                page.evaluate(f"(a) => window.bench.{fn}(a)", a)
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {lab: {k: [] for k, _, _ in calls} for lab, _ in sites}
        order = [(lab, c) for lab, _ in sites for c in calls]
        for rep in range(opts.reps):
            r = rep % len(order)
            for label, (key, fn, a) in order[r:] + order[:r]:
                runs[label][key].append(pages[label].evaluate(f"(a) => window.bench.{fn}(a)", a))
            load.append(os.getloadavg()[0])
        browser.close()
    out: dict[str, Any] = {"tokens": opts.tokens, "reps": opts.reps, "wall_s": round(time.time() - t_start, 1),
                           "load_1min": [round(x, 2) for x in load]}
    ref = next(iter(runs.values()))["python"][0]["token_ids"]
    out["same_tokens"] = all(r["token_ids"] == ref for rs in runs.values() for v in rs.values() for r in v)
    for label, rs in runs.items():
        py = [r["decode_wall_per_token_ms"] for r in rs["python"]]
        js = [r["decode_wall_per_token_ms"] for r in rs["js_direct"]]
        # Per repetition, the difference of two neighbouring runs: less sensitive to load drifting across the run.
        diff = [p - j for p, j in zip(py, js, strict=True)]
        row: dict[str, Any] = {"python_ms_per_token": _med(py), "js_direct_ms_per_token": _med(js),
                               "python_minus_js_ms": _med(diff),
                               "ratio": round(_med(py) / _med(js), 2) if _med(js) else None,
                               "python_all": [round(x, 2) for x in py], "js_all": [round(x, 2) for x in js]}
        if rs.get("profile"):
            keys = sorted({k for p in rs["profile"] for k in p["per_token_ms"]})
            row["profile"] = {k: _med([p["per_token_ms"].get(k, 0.0) for p in rs["profile"]]) for k in keys}
        out[label] = row
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
