"""Python half of the benchmark page: runs inside Pyodide (Chromium or Node), next to loops.mjs.

Only the project's runtime is used; the one bench-only change is that the loaded Captioner never stops at
eos, so every run decodes exactly the requested number of tokens (random-weight models hit eos at random).
"""

import dataclasses
import json
import time

import numpy as np
from pyodide.ffi import to_js

from lfmvl_site.runtime.browser import PageRuntime
from lfmvl_site.runtime.preprocess import ProcessorConfig, preprocess

RT = None


def make_frame(width, height, seed=0):
    """The benchmark frame: seeded RGBA noise, the same bytes as benchmarks/cpu_bench.make_frame."""
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 4), dtype=np.uint8)


def frame_js(width, height):
    return to_js(make_frame(width, height).reshape(-1))


def time_preprocess(width, height, reps, processor_json):
    cfg = ProcessorConfig.from_dict(json.loads(processor_json))
    frame = make_frame(width, height)
    preprocess([frame], cfg)  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        preprocess([frame], cfg)
        times.append((time.perf_counter() - start) * 1000.0)
    return json.dumps(times)


async def load(ort, model_url, device, features, fetch_bytes, fetch_text):
    global RT
    RT = PageRuntime()
    info = await RT.load(ort, model_url, device, features, fetch_bytes, fetch_text)
    cap = RT.captioner
    if cap is None:  # the runtime reports load failures as {"error": ...}, not by raising
        raise RuntimeError(f"the model did not load: {info}")
    cap.text_config = dataclasses.replace(cap.text_config, eos_token_ids=())
    RT.stream = None  # the loop benchmarks time plain decoding: no drafts from the previous (identical) frame
    return info


def sessions():
    """The onnxruntime-web InferenceSession objects the Python backend opened (for the JS loop)."""
    cap = RT.captioner
    return {"embed_tokens": cap.embed_tokens._s, "embed_images": cap.embed_images._s, "decoder": cap.decoder._s}


async def prompt_embeds(width, height, prompt):
    """Prompt embeddings with the frame's vision rows merged in, as the Python loop makes them."""
    cap = RT.captioner
    inputs = preprocess([make_frame(width, height)], cap.processor_config)
    ids = cap.prompt_ids(prompt, inputs)
    merged = cap.merge(await cap.embed(ids), ids, await cap.image_features(inputs))
    return to_js({"data": to_js(np.ascontiguousarray(merged, dtype=np.float32).reshape(-1)),
                  "shape": [int(d) for d in merged.shape]}, dict_converter=__import__("js").Object.fromEntries)


async def caption(rgba, width, height, prompt, settings_json):
    return await RT.caption(rgba, width, height, prompt, settings_json)


async def close():
    """Release the three sessions (between model variants)."""
    global RT
    if RT is not None and RT.captioner is not None:
        cap = RT.captioner
        for s in (cap.embed_tokens, cap.embed_images, cap.decoder):
            await s.close()
    RT = None


async def step_breakdown(width, height, prompt, tokens):
    """Where a Python-loop step goes: embed_tokens run, decoder run (both through the backend), the rest."""
    from lfmvl_site.runtime.generate import _empty_cache

    cap = RT.captioner
    inputs = preprocess([make_frame(width, height)], cap.processor_config)
    ids = cap.prompt_ids(prompt, inputs)
    embeds = cap.merge(await cap.embed(ids), ids, await cap.image_features(inputs))
    keep = list(cap._cache_map.values())
    read = ["next_token"] if cap._has_argmax else ["logits"]
    caches = {n: _empty_cache(i) for n, i in cap._cache_info.items()}
    length, x, token, rows = len(ids), embeds, 0, []
    for step in range(tokens):
        t0 = time.perf_counter()
        if step:
            x = await cap.embed([token])
            length += 1
        t1 = time.perf_counter()
        feeds = {"inputs_embeds": x, "attention_mask": np.ones((1, length), np.int64), **caches}
        out = await cap.decoder.run(feeds, read=read, keep=keep)
        t2 = time.perf_counter()
        if step:
            cap.decoder.release(caches.values())
        caches = {p: out[q] for p, q in cap._cache_map.items()}
        token = int(np.asarray(out[read[0]]).reshape(-1)[-1]) if read[0] == "next_token" else 0
        rows.append([(t1 - t0) * 1000, (t2 - t1) * 1000, (time.perf_counter() - t2) * 1000])
    cap.decoder.release(v for v in caches.values() if not isinstance(v, np.ndarray))
    return json.dumps(rows[1:])


_WRAP_RUN_JS = """
(session, acc, key) => {
  // Time onnxruntime-web's own run (promise created → resolved) as JS sees it, whoever calls it.
  if (session.__lfmvlRun) return;
  const run = session.run.bind(session);
  session.__lfmvlRun = run;
  session.run = async (...args) => {
    const t = performance.now();
    try { return await run(...args); } finally { acc[key] = (acc[key] || 0) + performance.now() - t; }
  };
}
"""
_UNWRAP_RUN_JS = "(session) => { if (session.__lfmvlRun) { session.run = session.__lfmvlRun; delete session.__lfmvlRun; } }"


async def profile(rgba, width, height, prompt, settings_json, on_token):
    """Where the page loop's time goes per decode token: PageRuntime.caption with timers around each part.

    Timers (ms, summed over the caption, then divided by decode tokens): onnxruntime-web's run as JS sees it
    (``ort_<role>``), each BrowserSession.run in total (``run_<role>``: ORT + feeds/outputs glue + the await's
    resumption), each BrowserBackend.run_chain in total (``run_chain``: a decode step's embed_tokens → decoder in
    one call, where the runtime has it), numpy → ort.Tensor conversions (``tensor``) and output read-backs
    (``to_numpy``) inside those, incremental detokenization (``detok``), the token callback into JavaScript
    (``callback``: the worker's postMessage in the page), and the rest of the loop (``loop``: decode wall minus all
    of the above).
    """
    import js
    from pyodide.code import run_js

    from lfmvl_site.runtime import browser

    cap, b = RT.captioner, RT.backend
    jacc = js.Object.new()
    acc = {}

    state = {"decoding": False, "t_first": 0.0, "js0": {}, "calls": 0}

    def add(key, t0):  # only decode tokens count: from the end of the first token's callback on
        if state["decoding"]:
            acc[key] = acc.get(key, 0.0) + (time.perf_counter() - t0) * 1000.0

    def js_sums():
        return {str(k): float(getattr(jacc, k)) for k in js.Object.keys(jacc)}

    wrap, unwrap = run_js(_WRAP_RUN_JS), run_js(_UNWRAP_RUN_JS)
    roles = {"embed_tokens": cap.embed_tokens, "embed_images": cap.embed_images, "decoder": cap.decoder}
    for role, s in roles.items():
        wrap(s._s, jacc, "ort_" + role)
    orig_run = browser.BrowserSession.run
    orig_chain = getattr(browser.BrowserBackend, "run_chain", None)  # absent in runtimes before issue 13's step
    hooks = {n: getattr(b, n) for n in ("tensor", "to_numpy", "typed_array", "from_typed") if hasattr(b, n)}
    orig_stream = cap.tokenizer.stream_decoder

    async def run(self, feeds, *, read, keep=()):
        t0 = time.perf_counter()
        try:
            return await orig_run(self, feeds, read=read, keep=keep)
        finally:
            add("run_" + self.choice.role, t0)

    async def run_chain(self, *a, **k):
        t0 = time.perf_counter()
        try:
            return await orig_chain(self, *a, **k)
        finally:
            add("run_chain", t0)

    def timed(name, fn):
        if name == "to_numpy":  # the one coroutine
            async def wrapped_async(*a):
                t0 = time.perf_counter()
                try:
                    return await fn(*a)
                finally:
                    add("numpy_out", t0)
            return wrapped_async

        def wrapped(*a):
            t0 = time.perf_counter()
            try:
                return fn(*a)
            finally:
                add("numpy_out" if name == "from_typed" else "numpy_in", t0)
        return wrapped

    def stream_decoder(*a, **k):
        dec = orig_stream(*a, **k)
        push = dec.push

        def timed_push(token_id):
            t0 = time.perf_counter()
            try:
                return push(token_id)
            finally:
                add("detok", t0)

        dec.push = timed_push
        return dec

    def callback(*args):
        t0 = time.perf_counter()
        try:
            on_token(*args)
        finally:
            add("callback", t0)
            state["calls"] += 1
            if not state["decoding"]:
                state["js0"] = js_sums()
                state["decoding"] = True
                state["t_first"] = time.perf_counter()

    browser.BrowserSession.run = run
    if orig_chain is not None:
        browser.BrowserBackend.run_chain = run_chain
    for n, fn in hooks.items():
        setattr(b, n, timed(n, fn))
    cap.tokenizer.stream_decoder = stream_decoder
    try:
        t0 = time.perf_counter()
        res = json.loads(await RT.caption(rgba, width, height, prompt, settings_json, callback))
        t_end = time.perf_counter()
    finally:
        browser.BrowserSession.run = orig_run
        if orig_chain is not None:
            browser.BrowserBackend.run_chain = orig_chain
        for n in hooks:
            delattr(b, n)
        del cap.tokenizer.stream_decoder
        for s in roles.values():
            unwrap(s._s)
    if "error" in res:
        raise RuntimeError(str(res["error"]))
    for k, v in js_sums().items():
        acc[k] = v - state["js0"].get(k, 0.0)
    n = max(1, len(res["token_ids"]) - 1)  # decode tokens (token 0 comes out of the prefill)
    decode = (t_end - state["t_first"]) * 1000.0
    per = {k: v / n for k, v in acc.items()}
    inside = (sum(per.get("run_" + r, 0.0) for r in roles) + per.get("run_chain", 0.0) + per.get("detok", 0.0)
              + per.get("callback", 0.0))
    per["loop"] = decode / n - inside
    per["total"] = decode / n
    per["ort"] = sum(per.get("ort_" + r, 0.0) for r in roles)
    per["python"] = per["total"] - per["ort"]
    return json.dumps({"wall_ms": (t_end - t0) * 1000.0, "decode_tokens": n, "callbacks": state["calls"],
                       "per_token_ms": per, "token_ids": res["token_ids"]})
