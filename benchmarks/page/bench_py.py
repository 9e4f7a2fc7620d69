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
