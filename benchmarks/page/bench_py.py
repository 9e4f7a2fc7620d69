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
    """The benchmark frame: seeded RGBA noise, the same bytes as lfmvl_site.bench.make_frame."""
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
