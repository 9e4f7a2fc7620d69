"""A decode step as one backend call (issue 13): ``Backend.run_chain`` and the JS runner's ``chain``.

The default ``run_chain`` (native) awaits the two runs in turn; the browser backend does both inside one JavaScript
call. The JS half is run here in Node against a stand-in ``ort`` (its feeds, disposals and answers); the page tests
check the real onnxruntime-web gives native onnxruntime's tokens.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from lfmvl_site.runtime import browser
from lfmvl_site.runtime.backend import Backend, Session, TensorInfo
from lfmvl_site.runtime.generate import Captioner
from lfmvl_site.runtime.native import NativeBackend
from lfmvl_site.runtime.sampling import SamplingSettings


class _Fake(Session):
    def __init__(self, name: str, outputs: dict[str, Any], log: list[Any]) -> None:
        self.name, self._outputs, self.log = name, outputs, log
        self.inputs = [TensorInfo("x", "float32", ())]
        self.outputs = [TensorInfo(n, "float32", ()) for n in outputs]

    async def run(self, feeds: Mapping[str, Any], *, read: Sequence[str], keep: Sequence[str] = ()) -> dict[str, Any]:
        self.log.append(("run", self.name, dict(feeds), list(read), list(keep)))
        return {n: self._outputs[n] for n in [*read, *keep]}

    def release(self, values: Any) -> None:
        self.log.append(("release", self.name, list(values)))


class _Bare(Backend):
    async def read_text(self, relpath: str) -> str:
        raise FileNotFoundError(relpath)

    async def open_session(self, graph: str) -> Session:
        raise NotImplementedError


def test_default_run_chain_feeds_the_link_and_frees_it() -> None:
    log: list[Any] = []
    first = _Fake("embed", {"emb": "E"}, log)
    second = _Fake("dec", {"logits": "L", "present": "P"}, log)
    out = asyncio.run(_Bare().run_chain(first, {"ids": 1}, second, {"mask": 2}, link={"emb": "inputs_embeds"},
                                        read=["logits"], keep=["present"], free=["old"]))
    assert out == {"logits": "L", "present": "P"}
    assert log == [
        ("run", "embed", {"ids": 1}, [], ["emb"]),
        ("run", "dec", {"mask": 2, "inputs_embeds": "E"}, ["logits"], ["present"]),
        ("release", "embed", ["E"]),
        ("release", "dec", ["old"]),
    ]


class _Counting(NativeBackend):
    """The native backend, counting how the loop calls it."""

    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        self.chains = 0

    async def run_chain(self, *a: Any, **k: Any) -> dict[str, Any]:
        self.chains += 1
        return await super().run_chain(*a, **k)


def _reference_greedy(model_dir: Path, embeds: np.ndarray, n: int) -> list[int]:
    """Greedy decoding driven by onnxruntime directly: embed_tokens read back, then the decoder, per token."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    et = ort.InferenceSession(str(model_dir / "onnx/embed_tokens.onnx"), opts, providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(model_dir / "onnx/decoder.onnx"), opts, providers=["CPUExecutionProvider"])
    caches = {}
    for i in dec.get_inputs():
        if i.name.startswith("past_"):
            shape = [0 if isinstance(d, str) and "sequence" in d else (d if isinstance(d, int) else 1) for d in i.shape]
            caches[i.name] = np.zeros(shape, np.float16 if "float16" in i.type else np.float32)
    names = [o.name for o in dec.get_outputs()]
    x, length, tokens = embeds, embeds.shape[1], []
    for step in range(n):
        if step:
            x = et.run(None, {"input_ids": np.asarray([[tokens[-1]]], np.int64)})[0]
            length += 1
        feeds = {"inputs_embeds": x, "attention_mask": np.ones((1, length), np.int64), **caches}
        if "position_ids" in [i.name for i in dec.get_inputs()]:
            feeds["position_ids"] = np.arange(length - x.shape[1], length, dtype=np.int64)[None]
        out = dict(zip(names, dec.run(None, feeds), strict=True))
        caches = {p: out[p.replace("past_key_values.", "present.") if p.startswith("past_key_values.")
                         else "present_" + p[len("past_"):]] for p in caches}
        tokens.append(int(np.argmax(out["logits"][0, -1])))
    return tokens


def test_decode_steps_are_one_chain_call_each_with_the_same_tokens(tiny_model_dir: Path) -> None:
    backend = _Counting(tiny_model_dir)
    cap = asyncio.run(Captioner.load(backend))
    cap.text_config = dataclasses.replace(cap.text_config, eos_token_ids=())  # every run makes 10 tokens
    frame = np.random.default_rng(5).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    result = asyncio.run(cap.caption(frame, "Describe.", settings=SamplingSettings(max_new_tokens=10)))
    assert len(result.token_ids) == 10
    assert backend.chains == 9  # the prefill is a plain decoder run; every later token one chained step

    from lfmvl_site.runtime.preprocess import preprocess

    inputs = preprocess([frame], cap.processor_config)
    ids = cap.prompt_ids("Describe.", inputs)
    embeds = cap.merge(asyncio.run(cap.embed(ids)), ids, asyncio.run(cap.image_features(inputs)))
    assert result.token_ids == _reference_greedy(tiny_model_dir, embeds, 10)


# The JS runner against a stand-in ort: sessions record their feeds and answer fixed tensors.
_NODE_TEST = r"""
const runnerSource = process.argv[2];
const disposed = [];
class Tensor {
  constructor(type, data, dims, location = "cpu") {
    this.type = type; this.data = data; this.dims = dims; this.location = location; this.tag = null;
  }
  async getData() { return this.data; }
  dispose() { disposed.push(this.tag || this.type); }
}
const ort = { Tensor };
const runner = eval(runnerSource)(ort);
const seen = {};
const tagged = (tag, t) => { t.tag = tag; return t; };
const embed = { async run(feeds, fetch) {
  seen.embed = { ids: Array.from(feeds.input_ids.data, Number), fetch };
  return { emb: tagged("emb", new Tensor("float32", new Float32Array([1, 2]), [1, 1, 2], process.argv[3])) };
} };
const prefill = { async run() { return { present: tagged("old cache", new Tensor("float32", new Float32Array(4), [1, 4])) }; } };
const decoder = { async run(feeds, fetch) {
  seen.decoder = { names: Object.keys(feeds).sort(), embeds: Array.from(feeds.inputs_embeds.data),
                   embedsTag: feeds.inputs_embeds.tag, mask: feeds.attention_mask.dims,
                   maskValues: Array.from(feeds.attention_mask.data, Number), pastTag: feeds.past.tag, fetch };
  return { next_token: new Tensor("int64", BigInt64Array.from([7n]), [1]),
           present: tagged("new cache", new Tensor("float32", new Float32Array(4), [1, 4])) };
} };
const spec0 = { kept: [], inline: [], fill: [], big: [], fetch: ["present"], keep: ["present"], wasm: false, link: [] };
const spec1 = { kept: [], inline: [["input_ids", "int64", [1, 1], [42]]], fill: [], big: [], fetch: ["emb"],
                keep: ["emb"], wasm: false, link: [] };
const spec2 = { kept: [["past", 1]], inline: [], fill: [["attention_mask", "int64", [1, 3], 1]], big: [],
                fetch: ["next_token", "present"], keep: ["present"], wasm: process.argv[4] === "wasm",
                link: [["emb", "inputs_embeds"]] };
(async () => {
  const [first] = await runner.run(prefill, JSON.stringify(spec0), null, {});
  const oldId = JSON.parse(first).present.id;
  const step = runner.chain(embed, {}, decoder, {});
  const [answer] = await step(JSON.stringify([spec1, spec2, [oldId]]), null, null);
  console.log(JSON.stringify({ oldId, answer: JSON.parse(answer), seen, disposed, live: runner.live() }));
})().catch((e) => { console.error(e); process.exit(1); });
"""


def _js_runner() -> str:
    return browser._RUNNER_JS


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node")
@pytest.mark.parametrize(("where", "device"), [("cpu", "wasm"), ("gpu-buffer", "webgpu"), ("gpu-buffer", "wasm")])
def test_js_chain_feeds_the_embedding_on_and_frees_it(where: str, device: str, tmp_path: Path) -> None:
    script = tmp_path / "chain.cjs"
    script.write_text(_NODE_TEST)
    done = subprocess.run(["node", str(script), _js_runner(), where, device], capture_output=True, text=True,
                          timeout=60, check=True)
    got = json.loads(done.stdout)
    assert got["seen"]["embed"] == {"ids": [42], "fetch": ["emb"]}
    dec = got["seen"]["decoder"]
    assert dec["names"] == ["attention_mask", "inputs_embeds", "past"] and dec["pastTag"] == "old cache"
    assert dec["embeds"] == [1, 2] and dec["mask"] == [1, 3] and dec["maskValues"] == [1, 1, 1]
    # The embedding reaches the decoder as the tensor embed_tokens made, unless a wasm decoder needs a CPU copy.
    copied = where != "cpu" and device == "wasm"
    assert (dec["embedsTag"] == "emb") != copied
    assert got["answer"]["next_token"] == {"type": "int64", "dims": [1], "values": [7]}
    assert got["oldId"] == 1 and got["answer"]["present"]["id"] == 2 and got["live"] == 1  # the new cache, by id
    # Freed: the inline inputs made for each run, the embedding (and its copy), the read next_token, the old cache
    # (asked to be freed); not the new cache.
    assert sorted(got["disposed"]) == sorted(["int64", "int64", "emb", "int64", "old cache",
                                              *(["float32"] if copied else [])])


def test_stream_runs_after_the_prefill_are_chained_with_plain_greedy_tokens(tiny_model_dir: Path) -> None:
    from lfmvl_site.runtime.speculative import CaptionStream

    backend = _Counting(tiny_model_dir)
    cap = asyncio.run(Captioner.load(backend))
    cap.text_config = dataclasses.replace(cap.text_config, eos_token_ids=())
    frame = np.random.default_rng(5).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    settings = SamplingSettings(max_new_tokens=10)
    plain = asyncio.run(cap.caption(frame, "Describe.", settings=settings))
    stream = CaptionStream()
    backend.chains = 0
    first = asyncio.run(cap.caption(frame, "Describe.", settings=settings, stream=stream))
    assert first.speculative and first.token_ids == plain.token_ids
    # No draft on a first frame: the prefill is a plain run, every later run one chained step (token rows only).
    assert backend.chains == first.decoder_runs - 1 == 9
    backend.chains = 0
    second = asyncio.run(cap.caption(frame, "Describe.", settings=settings, stream=stream))
    assert second.token_ids == plain.token_ids and second.decoder_runs < first.decoder_runs
