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


# -- several greedy decode steps per backend call (Backend.run_greedy) ----------------------------------------------


@pytest.fixture(scope="module")
def argmax_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with the build's in-graph argmax (``next_token``) added to its decoder: plain greedy decoding
    then goes through ``Backend.run_greedy``."""
    import onnx

    from lfmvl_site.model.optimize import add_argmax

    dest = tmp_path_factory.mktemp("argmax") / "model"
    shutil.copytree(tiny_model_dir, dest)
    model = onnx.load(str(tiny_model_dir / "onnx/decoder.onnx"), load_external_data=True)
    add_argmax(model)
    (dest / "onnx/decoder.onnx_data").unlink()
    onnx.save(model, str(dest / "onnx/decoder.onnx"), save_as_external_data=True, location="decoder.onnx_data")
    return dest


class _CountingSteps(_Counting):
    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        self.greedy_calls: list[int] = []

    async def run_greedy(self, *a: Any, **k: Any) -> dict[str, Any]:
        self.greedy_calls.append(k["max_steps"])
        return await super().run_greedy(*a, **k)


def _frame() -> np.ndarray:
    return np.random.default_rng(5).integers(0, 256, (240, 320, 3), dtype=np.uint8)


def _captioner(model_dir: Path, steps: bool, eos: tuple[int, ...] = ()) -> tuple[Captioner, _CountingSteps]:
    backend = _CountingSteps(model_dir)
    cap = asyncio.run(Captioner.load(backend))
    cap.text_config = dataclasses.replace(cap.text_config, eos_token_ids=eos)
    cap.greedy_steps = steps
    return cap, backend


def test_greedy_steps_give_the_per_step_tokens(argmax_model_dir: Path, tiny_model_dir: Path) -> None:
    settings = SamplingSettings(max_new_tokens=12)
    new, nb = _captioner(argmax_model_dir, True)
    old, ob = _captioner(argmax_model_dir, False)
    got = asyncio.run(new.caption(_frame(), "Describe.", settings=settings))
    ref = asyncio.run(old.caption(_frame(), "Describe.", settings=settings))
    assert nb.greedy_calls == [11] and ob.greedy_calls == []  # the 11 decode steps after the prefill: one call
    assert nb.chains == ob.chains == 11  # the default run_greedy is the per-step loop over run_chain
    assert len(got.token_ids) == 12 and got.token_ids == ref.token_ids and got.text == ref.text
    assert got.stop_reason == ref.stop_reason == "length"
    assert len(got.timings.token_ms) == len(got.timings.run_ms) == 12 and got.timings.prefill_ms > 0
    # And both are onnxruntime's own greedy decoding of the model without the argmax output.
    from lfmvl_site.runtime.preprocess import preprocess

    plain, _ = _captioner(tiny_model_dir, True)
    inputs = preprocess([_frame()], plain.processor_config)
    ids = plain.prompt_ids("Describe.", inputs)
    embeds = plain.merge(asyncio.run(plain.embed(ids)), ids, asyncio.run(plain.image_features(inputs)))
    assert got.token_ids == _reference_greedy(tiny_model_dir, embeds, 12)


def test_greedy_steps_stop_at_eos_like_the_per_step_loop(argmax_model_dir: Path) -> None:
    settings = SamplingSettings(max_new_tokens=12)
    free, _ = _captioner(argmax_model_dir, True)
    tokens = asyncio.run(free.caption(_frame(), "Describe.", settings=settings)).token_ids
    eos = tokens[5]
    first = tokens.index(eos)  # the eos id may occur earlier than position 5
    for steps in (True, False):
        cap, _ = _captioner(argmax_model_dir, steps, eos=(eos,))
        seen: list[tuple[int, str]] = []
        result = asyncio.run(cap.caption(_frame(), "Describe.", settings=settings,
                                         on_token=lambda i, p, seen=seen: seen.append((i, p))))
        assert result.stop_reason == "eos" and result.token_ids == tokens[:first], steps
        assert [i for i, _ in seen if i >= 0] == tokens[:first]
        assert len(result.timings.token_ms) == first + 1  # the eos token's step counts too


def test_greedy_steps_cancel_between_tokens_and_release_the_caches(argmax_model_dir: Path) -> None:
    from lfmvl_site.errors import Cancelled
    from lfmvl_site.runtime.generate import CancelToken

    for steps in (True, False):
        cap, backend = _captioner(argmax_model_dir, steps)
        released: list[Any] = []

        def release(values: Any, released: list[Any] = released) -> None:
            released.extend(values)

        cap.decoder.release = release  # type: ignore[method-assign]
        token = CancelToken()
        got: list[int] = []

        def on_token(i: int, piece: str, got: list[int] = got, token: CancelToken = token) -> None:
            got.append(i)
            if len(got) == 3:
                token.cancel()

        with pytest.raises(Cancelled):
            asyncio.run(cap.caption(_frame(), "Describe.", settings=SamplingSettings(max_new_tokens=12),
                                    on_token=on_token, cancel=token))
        assert len(got) == 3 and backend.chains == 2, steps  # the prefill's token and two chained steps, no more
        assert released  # the caches went back (native: no-op releases, but they are asked for)


def test_a_failing_token_callback_stops_the_steps_and_raises(argmax_model_dir: Path) -> None:
    cap, backend = _captioner(argmax_model_dir, True)

    def on_token(i: int, piece: str) -> None:
        if backend.chains == 4:
            raise RuntimeError("page gone")

    with pytest.raises(RuntimeError, match="page gone"):
        asyncio.run(cap.caption(_frame(), "Describe.", settings=SamplingSettings(max_new_tokens=12), on_token=on_token))
    assert backend.chains == 4


class _Step(Session):
    """A fake decoder: next_token = the input token + 1, caches tagged by step; fails at step ``fail``."""

    def __init__(self, log: list[Any], fail: int = -1) -> None:
        self.log, self.fail, self.step = log, fail, 0
        self.inputs = [TensorInfo("past", "float32", ())]
        self.outputs = [TensorInfo("next_token", "int64", ()), TensorInfo("present", "float32", ())]

    async def run(self, feeds: Mapping[str, Any], *, read: Sequence[str], keep: Sequence[str] = ()) -> dict[str, Any]:
        self.step += 1
        if self.step == self.fail:
            raise RuntimeError("run failed")
        self.log.append((feeds["inputs_embeds"], feeds["past"], feeds["attention_mask"].shape,
                         int(feeds["position_ids"][0, 0])))
        return {"next_token": np.asarray([feeds["inputs_embeds"] + 1]), "present": f"cache{self.step}"}

    def release(self, values: Any) -> None:
        self.log.append(("release", list(values)))


class _Embed(Session):
    inputs = [TensorInfo("input_ids", "int64", ())]
    outputs = [TensorInfo("emb", "float32", ())]

    async def run(self, feeds: Mapping[str, Any], *, read: Sequence[str], keep: Sequence[str] = ()) -> dict[str, Any]:
        return {"emb": int(feeds["input_ids"][0, 0])}


def _greedy(backend: Backend, dec: _Step, stop_at: int, max_steps: int = 10) -> tuple[dict[str, Any], list[int]]:
    tokens: list[int] = []

    def on_token(t: int) -> bool:
        tokens.append(t)
        return t == stop_at

    out = asyncio.run(backend.run_greedy(_Embed(), dec, 5, {"past": "cache0"}, length=7, link={"emb": "inputs_embeds"},
                                         present={"past": "present"}, position_ids=True, on_token=on_token,
                                         max_steps=max_steps))
    return out, tokens


def test_default_run_greedy_feeds_tokens_back_frees_replaced_caches_and_stops_on_the_callback() -> None:
    log: list[Any] = []
    out, tokens = _greedy(_Bare(), _Step(log), stop_at=8)
    assert tokens == [6, 7, 8] and out == {"past": "cache3"}
    runs = [e for e in log if e[0] != "release"]
    assert runs == [(5, "cache0", (1, 7), 6), (6, "cache1", (1, 8), 7), (7, "cache2", (1, 9), 8)]
    assert [e[1] for e in log if e[0] == "release"] == [["cache0"], ["cache1"], ["cache2"]]  # not the last one
    log.clear()
    out, tokens = _greedy(_Bare(), _Step(log), stop_at=-1, max_steps=4)
    assert tokens == [6, 7, 8, 9] and out == {"past": "cache4"}


def test_default_run_greedy_frees_its_own_caches_when_a_run_fails() -> None:
    log: list[Any] = []
    with pytest.raises(RuntimeError, match="run failed"):
        _greedy(_Bare(), _Step(log, fail=3), stop_at=-1)
    assert [e[1] for e in log if e[0] == "release"] == [["cache0"], ["cache1"], ["cache2"]]
    log.clear()
    with pytest.raises(RuntimeError, match="run failed"):  # the first run: the caller's caches stay the caller's
        _greedy(_Bare(), _Step(log, fail=1), stop_at=-1)
    assert log == []


# The runner's greedy step loop against the stand-in ort: tokens fed back, caches replaced and disposed, the last
# ones handed back by id, the callback stopping it, and a failing run leaving nothing behind.
_NODE_GREEDY = r"""
const runnerSource = process.argv[2];
const where = process.argv[3];
const failAt = Number(process.argv[4]);
const disposed = [];
let made = 0;
class Tensor {
  constructor(type, data, dims, location = "cpu") {
    this.type = type; this.data = data; this.dims = dims; this.location = location; this.tag = null; made++;
  }
  async getData() { return this.data; }
  dispose() { disposed.push(this.tag || this.type); }
}
const ort = { Tensor };
const runner = eval(runnerSource)(ort);
const tagged = (tag, t) => { t.tag = tag; return t; };
const seen = [];
const embed = { async run(feeds, fetch) {
  const id = Number(feeds.input_ids.data[0]);
  return { emb: tagged("emb" + id, new Tensor("float32", new Float32Array([id]), [1, 1, 1], where)) };
} };
let step = 0;
const decoder = { async run(feeds, fetch) {
  step++;
  if (step === failAt) throw new Error("run failed");
  seen.push({ emb: feeds.inputs_embeds.data[0], embTag: feeds.inputs_embeds.tag, past: feeds.past.tag,
              mask: Array.from(feeds.attention_mask.data, Number), pos: Array.from(feeds.position_ids.data, Number),
              fetch });
  return { next_token: tagged("next", new Tensor("int64", BigInt64Array.from([BigInt(feeds.inputs_embeds.data[0] + 1)]), [1])),
           present: tagged("cache" + step, new Tensor("float32", new Float32Array(4), [1, 4], where)) };
} };
const prefill = { async run() { return { present: tagged("cache0", new Tensor("float32", new Float32Array(4), [1, 4])) }; } };
const spec0 = { kept: [], inline: [], fill: [], big: [], fetch: ["present"], keep: ["present"], wasm: false, link: [] };
(async () => {
  const [first] = await runner.run(prefill, JSON.stringify(spec0), null, {});
  const oldId = JSON.parse(first).present.id;
  const loop = runner.greedy(embed, {}, decoder, {});
  const tokens = [];
  const spec = { token: 5, length: 3, positions: true, caches: [["past", oldId]], present: [["present", "past"]],
                 link: ["emb", "inputs_embeds"], read: "next_token", max: 10, wasm: process.argv[5] === "wasm" };
  let answer = null, error = null;
  try {
    answer = JSON.parse(await loop(JSON.stringify(spec), (t) => { tokens.push(t); return t === 8; }));
  } catch (e) { error = String(e.message); }
  console.log(JSON.stringify({ oldId, answer, error, tokens, seen, disposed, live: runner.live(),
                               lastTag: answer && runner.tensor(answer.caches.past.id).tag }));
})().catch((e) => { console.error(e); process.exit(1); });
"""


def _node_greedy(tmp_path: Path, where: str, fail_at: int, device: str = "wasm") -> dict[str, Any]:
    script = tmp_path / "greedy.cjs"
    script.write_text(_NODE_GREEDY)
    done = subprocess.run(["node", str(script), _js_runner(), where, str(fail_at), device], capture_output=True,
                          text=True, timeout=60, check=True)
    return json.loads(done.stdout)


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node")
@pytest.mark.parametrize(("where", "device"), [("cpu", "wasm"), ("gpu-buffer", "webgpu"), ("gpu-buffer", "wasm")])
def test_js_greedy_feeds_tokens_back_and_keeps_only_the_last_caches(where: str, device: str, tmp_path: Path) -> None:
    got = _node_greedy(tmp_path, where, -1, device)
    assert got["error"] is None and got["tokens"] == [6, 7, 8]  # the callback stopped it at 8
    assert [s["emb"] for s in got["seen"]] == [5, 6, 7]
    assert [s["past"] for s in got["seen"]] == ["cache0", "cache1", "cache2"]
    assert [s["mask"] for s in got["seen"]] == [[1] * 3, [1] * 4, [1] * 5]
    assert [s["pos"] for s in got["seen"]] == [[2], [3], [4]]
    assert got["seen"][0]["fetch"] == ["next_token", "present"]
    copied = where != "cpu" and device == "wasm"  # a wasm decoder gets a CPU copy of a GPU embedding
    assert all((s["embTag"] is None) == copied for s in got["seen"])
    assert got["answer"]["steps"] == 3 and got["answer"]["caches"]["past"]["where"] == where
    assert got["lastTag"] == "cache3" and got["live"] == 1 and got["answer"]["caches"]["past"]["id"] == got["oldId"] + 1
    named = [d for d in got["disposed"] if d.startswith(("cache", "emb", "next"))]
    assert sorted(named) == sorted(["cache0", "cache1", "cache2", "emb5", "emb6", "emb7", "next", "next", "next"])
    # per step: the input_ids and attention mask and position tensors, and the embedding's copy where made
    assert got["disposed"].count("int64") == 9 and got["disposed"].count("float32") == (3 if copied else 0)


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node")
@pytest.mark.parametrize("fail_at", [1, 3])
def test_js_greedy_run_failure_frees_what_it_made(fail_at: int, tmp_path: Path) -> None:
    got = _node_greedy(tmp_path, "cpu", fail_at)
    assert got["error"] == "run failed" and got["answer"] is None
    made = [f"cache{i}" for i in range(1, fail_at)]
    caches = sorted(d for d in got["disposed"] if d.startswith("cache"))
    if fail_at == 1:  # nothing replaced yet: the caller's cache is still kept (the caller releases it)
        assert caches == [] and got["live"] == 1
    else:  # the caller's was freed by the first step; the loop's own are all disposed
        assert caches == sorted(["cache0", *made]) and got["live"] == 0
