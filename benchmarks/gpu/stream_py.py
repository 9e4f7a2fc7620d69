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


async def diagnose(width, height, tokens):
    """Why drafted and plain tokens can differ on a GPU: the same tokens' logits from one-row steps (plain greedy)
    vs one multi-row run, without a past (prompt + tokens in one prefill) and with one (prompt cached, then the tokens
    as one run). Reports greedy agreement with the plain tokens, max |Δlogit| to the step logits and the step logits'
    top-2 gaps: rounding that differs with the run's row count flips near-tied tokens; a kernel bug would show as
    Δ far above the gaps' scale or as agreement collapsing only with a past."""
    from lfmvl_site.runtime.generate import _empty_cache
    from lfmvl_site.runtime.preprocess import preprocess

    cap = lfmvl_bench.RT.captioner
    frame = clip("same", 1, width, height)[0]
    inputs = preprocess([frame], cap.processor_config)
    ids = cap.prompt_ids("Describe this image.", inputs)
    prompt = cap.merge(await cap.embed(ids), ids, await cap.image_features(inputs))
    keep = list(cap._cache_map.values())
    empty = {name: _empty_cache(info) for name, info in cap._cache_info.items()}

    async def run(embeds, caches, past):
        n = past + embeds.shape[1]
        out = await cap.decoder.run({"inputs_embeds": embeds, "attention_mask": np.ones((1, n), np.int64), **caches},
                                    read=["logits"], keep=keep)
        present = {p: out[c] for p, c in cap._cache_map.items()}
        rows = np.asarray(out["logits"], np.float32).reshape(-1, np.asarray(out["logits"]).shape[-1])
        return rows, present

    # plain greedy, one row per step, keeping each step's logits row
    step_rows, toks, caches, past = [], [], empty, 0
    rows, caches = await run(prompt, empty, 0)
    past = prompt.shape[1]
    for _ in range(tokens):
        row = rows[-1]
        step_rows.append(row)
        toks.append(int(np.argmax(row)))
        emb = await cap.embed([toks[-1]])
        old = caches
        rows, caches = await run(emb, caches, past)
        cap.decoder.release(old.values())
        past += 1
    cap.decoder.release(caches.values())
    step = np.stack(step_rows)
    top2 = np.sort(step, axis=-1)[:, -2:]
    gaps = top2[:, 1] - top2[:, 0]

    def compare(rows):
        rows = rows[-tokens:]
        agree = [int(np.argmax(r)) == t for r, t in zip(rows, toks, strict=True)]
        first = agree.index(False) if False in agree else None
        return {"agreement": sum(agree) / tokens, "first_differing_token": first,
                "max_abs_dlogit": float(np.abs(rows - step).max()), "median_abs_dlogit": float(np.median(np.abs(rows - step)))}

    tok_emb = await cap.embed(toks[:-1])
    no_past, c1 = await run(np.concatenate([prompt, tok_emb], axis=1), empty, 0)
    cap.decoder.release(c1.values())
    pre, c2 = await run(prompt, empty, 0)
    with_past, c3 = await run(tok_emb, c2, prompt.shape[1])
    cap.decoder.release(c2.values())
    cap.decoder.release(c3.values())
    with_past = np.concatenate([pre[-1:], with_past], axis=0)  # the first token comes from the prefill itself
    return json.dumps({"tokens": tokens, "logit_scale_median_abs": float(np.median(np.abs(step))),
                       "top2_gap_median": float(np.median(gaps)), "top2_gap_min": float(gaps.min()),
                       "one_run_no_past": compare(no_past), "one_run_with_past": compare(with_past)})
