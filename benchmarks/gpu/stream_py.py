"""Caption latency over a stream of frames, plain vs drafted, through the page's own entry point (Pyodide, Node).

Runs next to benchmarks/page/bench_py.py (imported as ``lfmvl_bench``: its ``RT`` is the loaded ``PageRuntime``,
which never stops at EOS there, so every caption has exactly ``tokens`` tokens). Three clips of RGBA noise frames,
the synthetic model having random weights: ``same`` (one frame repeated), ``moving`` (each frame the previous one
plus a little noise: every frame's pixels differ, as a webcam's do), ``cuts`` (a new scene every second frame).
``plain`` captions each frame alone; ``drafted`` passes the frames as one CaptionStream (image features reused for
unchanged frames, each greedy caption drafted from the previous one). Token ids must be equal frame by frame.
"""

import json
import time

import lfmvl_bench
import numpy as np
from pyodide.ffi import to_js

from lfmvl_site.runtime.speculative import CaptionStream


def clip(kind, frames, width, height, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(height, width, 4), dtype=np.uint8)
    out = []
    for i in range(frames):
        if kind == "moving" and i:
            base = np.clip(base.astype(np.int16) + rng.integers(-2, 3, base.shape), 0, 255).astype(np.uint8)
        elif kind == "cuts" and i and i % 2 == 0:
            base = rng.integers(0, 256, size=(height, width, 4), dtype=np.uint8)
        base[..., 3] = 255
        out.append(base.copy())
    return out


async def run(kind, frames, width, height, tokens, mode):
    rt = lfmvl_bench.RT
    rt.stream = CaptionStream() if mode == "drafted" else None
    settings = json.dumps({"max_new_tokens": tokens})
    rows = []
    try:
        for frame in clip(kind, frames, width, height):
            rgba = to_js(frame.reshape(-1))
            start = time.perf_counter()
            res = json.loads(await rt.caption(rgba, width, height, "Describe this image.", settings))
            wall = (time.perf_counter() - start) * 1000.0
            if "error" in res:
                raise RuntimeError(str(res["error"]))
            rows.append({"wall_ms": round(wall, 2), "decoder_runs": res["decoder_runs"],
                         "proposed": res["draft_tokens_proposed"], "accepted": res["draft_tokens_accepted"],
                         "features_reused": res["features_reused"], "token_ids": res["token_ids"],
                         "first_token_ms": res["timings"].get("first_token_ms")})
    finally:
        rt.stream = None
    return json.dumps(rows)
