"""Backend on onnxruntime-web through Pyodide's FFI (runs only inside Pyodide).

The worker hands in the ``ort`` module object and two JavaScript helpers
(``fetch_bytes(url, label)`` streaming a file with progress, ``fetch_text(url)``);
everything else, choosing each graph's variant from ``manifest.json``, creating
sessions, converting tensors and keeping the decoder caches on the GPU, is here.

Tensors cross the FFI with one copy each way: a numpy array becomes a TypedArray
(``to_js`` on a flat, contiguous view; int64 → ``BigInt64Array``, float16 → the
``Uint16Array`` of its bits, which onnxruntime-web takes for float16), and an
output TypedArray is written straight into a fresh numpy array (``assign_to``).
Outputs named in ``keep`` stay as ``ort.Tensor`` objects, on the GPU on WebGPU
(``preferredOutputLocation: "gpu-buffer"``), and are fed back as they are;
:meth:`BrowserSession.release` disposes of them.

The pure parts (variant choice, dtype maps) import nothing from Pyodide so they
can be tested under CPython.
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ContractError, ModelFileError
from . import contract
from .backend import Backend, Session, TensorInfo
from .speculative import CaptionStream

ROLES = contract.GRAPH_ROLES
# numpy dtype name → onnxruntime-web tensor type.
_ORT_TYPE = {"float32": "float32", "float16": "float16", "int64": "int64", "int32": "int32", "bool": "bool",
             "uint8": "uint8"}
# Outputs whose values feed the next decoder step: left on the GPU when kept.
_CACHE_PREFIXES = ("present",)


@dataclass(frozen=True)
class Choice:
    """Which manifest variant serves a role, on which execution provider, and why.

    ``fallback`` is one of :data:`contract.FALLBACKS` (``"none"``, ``"variant"``, ``"wasm"``) and
    ``missing`` the adapter features the preferred variant needed: the page words them; ``reason``
    is the same in English for logs and the CLI.
    """

    role: str
    precision: str
    file: str
    external_data: tuple[str, ...]
    device: str  # "webgpu" or "wasm"
    reason: str
    fallback: str = "none"
    missing: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"role": self.role, "precision": self.precision, "file": self.file,
                "external_data": list(self.external_data), "device": self.device,
                "reason": self.reason, "fallback": self.fallback, "missing": list(self.missing)}


def choose_variant(role: str, variants: Sequence[Mapping[str, Any]], device: str, features: Iterable[str]) -> Choice:
    """Pick the first variant whose ``needs`` the device meets.

    On WebGPU ``needs`` are adapter features (``shader-f16``); the wasm EP meets
    every need. When no variant fits the WebGPU adapter, the role's first variant
    runs on the wasm EP instead (correct, slower) rather than failing at its first run.
    """
    if not variants:
        raise ModelFileError(f"manifest.json lists no variant for {role}; rebuild the site with `lfmvl-site build`.")
    have = set(features)

    def make(v: Mapping[str, Any], dev: str, reason: str, fallback: str = "none",
             missing: Iterable[str] = ()) -> Choice:
        return Choice(role, str(v.get("precision", "?")), str(v["file"]), tuple(v.get("external_data") or ()), dev,
                      reason, fallback, tuple(missing))

    if device != "webgpu":
        return make(variants[0], "wasm", "first variant (wasm runs every precision)")
    preferred_needs = [n for n in variants[0].get("needs") or [] if n not in have]
    for i, v in enumerate(variants):
        missing = [n for n in v.get("needs") or [] if n not in have]
        if not missing:
            if i == 0:
                return make(v, "webgpu", "preferred variant")
            return make(v, "webgpu", f"adapter lacks {', '.join(preferred_needs)}; using the {v.get('precision')} variant",
                        "variant", preferred_needs)
    needs = sorted({n for v in variants for n in v.get("needs") or [] if n not in have})
    return make(variants[0], "wasm", f"no variant fits this GPU (lacks {', '.join(needs)}); running on wasm", "wasm",
                needs)


def _info(meta: Any, name: str) -> TensorInfo:
    """TensorInfo from onnxruntime-web's ``inputMetadata``/``outputMetadata`` entry (or a bare name)."""
    if meta is None:
        return TensorInfo(name, "float32", ())
    dtype = str(getattr(meta, "type", "float32"))
    shape = tuple(d if isinstance(d, (int, str)) else None for d in (getattr(meta, "shape", None) or []))
    return TensorInfo(name, dtype, shape)


# The per-run half that stays in JavaScript (one instance per backend, made with ``pyodide.code.run_js``).
# A run crosses the FFI once each way: a JSON spec (kept handles by id, small integer inputs inline, integer
# inputs whose elements are all one value as that value) plus a
# list of TypedArrays for the large inputs go in; a JSON answer (new handle ids with their location, small
# integer outputs inline) plus a list of TypedArrays for the large outputs come back. Kept tensors never
# leave JavaScript: Python holds their ids only, so no proxy is made or destroyed per cache per step.
# ``chain`` binds two sessions into one step (one promise for Python to await per call): the first's outputs named
# in the second's ``link`` feed the second as they are (on the GPU on WebGPU) and are disposed after it ran.
_RUNNER_JS = r"""
(ort) => {
  const kept = new Map();
  let nextId = 1;
  const TYPED = { float32: Float32Array, float16: Uint16Array, int64: BigInt64Array, int32: Int32Array,
                  bool: Uint8Array, uint8: Uint8Array };
  const INT = new Set(["int64", "int32", "bool", "uint8"]);
  const SMALL = 64;  // outputs of at most this many integer elements come back inline in the JSON answer
  // A tensor made by one session, fed to another: a wasm session cannot read a GPU buffer (a fallback role).
  async function forSession(spec, t, made) {
    if (!spec.wasm || t.location === "cpu") return t;
    const c = new ort.Tensor(t.type, await t.getData(), t.dims);
    made.push(c);
    return c;
  }
  async function feedsOf(spec, arrays, made) {
    const feeds = {};
    for (const [name, id] of spec.kept) {
      const t = kept.get(id);
      if (t === undefined) throw new Error(`${name}: a released value was fed back`);
      feeds[name] = await forSession(spec, t, made);
    }
    for (const [name, type, dims, values] of spec.inline) {
      const data = new TYPED[type](values.length);
      if (type === "int64") for (let i = 0; i < values.length; i++) data[i] = BigInt(values[i]);
      else data.set(values);
      const t = new ort.Tensor(type, data, dims);
      made.push(t);
      feeds[name] = t;
    }
    for (const [name, type, dims, value] of spec.fill) {  // every element the same (an attention mask of ones)
      const n = dims.reduce((a, b) => a * b, 1);
      const t = new ort.Tensor(type, new TYPED[type](n).fill(type === "int64" ? BigInt(value) : value), dims);
      made.push(t);
      feeds[name] = t;
    }
    for (let i = 0; i < spec.big.length; i++) {
      const [name, type, dims] = spec.big[i];
      const t = new ort.Tensor(type, arrays[i], dims);
      made.push(t);
      feeds[name] = t;
    }
    return feeds;
  }
  async function answerOf(spec, out) {
    const answer = {};
    const data = [];
    for (const name of spec.fetch) {
      const t = out[name];
      if (spec.keep.includes(name)) {
        const id = nextId++;
        kept.set(id, t);
        answer[name] = { id, where: t.location };
        continue;
      }
      const values = t.location === "cpu" ? t.data : await t.getData();
      const dims = Array.from(t.dims);
      if (INT.has(t.type) && values.length <= SMALL) {
        const v = Array.from(values, Number);
        if (v.every((x) => Number.isSafeInteger(x))) {
          answer[name] = { type: t.type, dims, values: v };
          t.dispose();
          continue;
        }
      }
      answer[name] = { type: t.type, dims, index: data.length };
      data.push(values);
      t.dispose();
    }
    return [JSON.stringify(answer), data];
  }
  async function run(session, specJson, arrays, options) {
    const spec = JSON.parse(specJson);
    const made = [];
    let out;
    try {
      out = await session.run(await feedsOf(spec, arrays, made), spec.fetch, options);
    } finally {
      for (const t of made) t.dispose();
    }
    return await answerOf(spec, out);
  }
  // Two sessions as one step, bound once (sessions and run options); each call takes one JSON of
  // [first's spec, second's spec, ids to free once the second run succeeded (the caches it replaces)].
  function chain(first, firstOptions, second, secondOptions) {
    return async (specsJson, firstArrays, secondArrays) => {
      const [spec1, spec2, free] = JSON.parse(specsJson);
      const made = [];
      let mid = {};
      let out;
      try {
        try {
          mid = await first.run(await feedsOf(spec1, firstArrays, made), spec1.fetch, firstOptions);
        } finally {
          for (const t of made.splice(0)) t.dispose();
        }
        const feeds = await feedsOf(spec2, secondArrays, made);
        for (const [from, to] of spec2.link) feeds[to] = await forSession(spec2, mid[from], made);
        out = await second.run(feeds, spec2.fetch, secondOptions);
      } finally {
        for (const t of made) t.dispose();
        for (const t of Object.values(mid)) t.dispose();
      }
      freeIds(free);
      return await answerOf(spec2, out);
    };
  }
  // Plain greedy decode steps, bound once like chain: each step embeds the last token (first), runs the decoder
  // (second) on that embedding, ones as attention mask, [[length - 1]] as position_ids and the caches, reads
  // next_token and calls onToken(token), a synchronous Python callback answering true to stop. The caches stay
  // ort.Tensors here between steps (never registered, never answered); those of the last step come back by id.
  // The call's JSON: {token, length, positions, caches: [[input, id]] (freed once the first step replaced them),
  // present: [[output, input]], link: [output of first, input of second], read, max, wasm}.
  function greedy(first, firstOptions, second, secondOptions) {
    return async (specJson, onToken) => {
      const spec = JSON.parse(specJson);
      const [from, to] = spec.link;
      const fetch = [spec.read, ...spec.present.map(([name]) => name)];
      let caches = {};
      for (const [name, id] of spec.caches) {
        const t = kept.get(id);
        if (t === undefined) throw new Error(`${name}: a released value was fed back`);
        caches[name] = t;
      }
      let own = false;  // caches made here (else still the caller's, in kept)
      let token = spec.token, length = spec.length, steps = 0;
      try {
        while (steps < spec.max) {
          const ids = new ort.Tensor("int64", BigInt64Array.of(BigInt(token)), [1, 1]);
          let mid = {};
          const made = [ids];
          let out;
          try {
            mid = await first.run({ input_ids: ids }, [from], firstOptions);
            const feeds = { ...caches };
            feeds[to] = await forSession(spec, mid[from], made);
            const mask = new ort.Tensor("int64", new BigInt64Array(length).fill(1n), [1, length]);
            made.push(mask);
            feeds.attention_mask = mask;
            if (spec.positions) {
              const pos = new ort.Tensor("int64", BigInt64Array.of(BigInt(length - 1)), [1, 1]);
              made.push(pos);
              feeds.position_ids = pos;
            }
            out = await second.run(feeds, fetch, secondOptions);
          } finally {
            for (const t of made) t.dispose();
            for (const t of Object.values(mid)) t.dispose();
          }
          if (own) for (const t of Object.values(caches)) t.dispose();
          else freeIds(spec.caches.map(([, id]) => id));
          caches = {};
          for (const [name, input] of spec.present) caches[input] = out[name];
          own = true;
          const picked = out[spec.read];
          const values = picked.location === "cpu" ? picked.data : await picked.getData();
          picked.dispose();
          token = Number(values[values.length - 1]);
          steps++;
          length++;
          if (onToken(token)) break;
        }
      } catch (e) {
        if (own) for (const t of Object.values(caches)) t.dispose();
        throw e;
      }
      const answer = {};
      if (own) {
        for (const [name, t] of Object.entries(caches)) {
          const id = nextId++;
          kept.set(id, t);
          answer[name] = { id, where: t.location };
        }
      }
      return JSON.stringify({ steps, caches: answer });
    };
  }
  function freeIds(ids) {
    for (const id of ids) {
      const t = kept.get(id);
      if (t !== undefined) { kept.delete(id); t.dispose(); }
    }
  }
  const release = (idsJson) => freeIds(JSON.parse(idsJson));
  // The ort.Tensor behind a handle (tests and tools; the loop never needs it).
  const tensor = (id) => kept.get(id);
  const live = () => kept.size;
  return { run, chain, greedy, release, tensor, live };
}
"""
# Integer inputs of at most this many elements travel inside the JSON spec (no TypedArray, no ort.Tensor
# made in Python): masks, positions and token ids of decode steps.
_INLINE_MAX = 64
_INT_TYPES = ("int64", "int32", "uint8", "bool")
_DTYPE_NAME = {np.dtype(name): name for name in _ORT_TYPE}
_SAFE_INT = 2**53 - 1


class KeptValue:
    """A value left inside onnxruntime-web (GPU buffer on WebGPU) between runs: its id in the JS runner."""

    __slots__ = ("_stats", "id", "name", "where")

    def __init__(self, handle: int, name: str, where: str, stats: dict[str, Any]) -> None:
        self.id: int | None = handle
        self.name = name
        self.where = where
        self._stats = stats
        stats["kept"][where] = stats["kept"].get(where, 0) + 1
        stats["live"] += 1

    def forget(self) -> int | None:
        """Mark released; return the id to free in JavaScript (None if already released)."""
        handle, self.id = self.id, None
        if handle is not None:
            self._stats["live"] -= 1
        return handle


class BrowserSession(Session):
    def __init__(self, backend: BrowserBackend, session: Any, choice: Choice) -> None:
        self._b = backend
        self._s = session
        self.choice = choice
        names_in = list(session.inputNames)
        names_out = list(session.outputNames)
        meta_in = _metadata(session, "inputMetadata", names_in)
        meta_out = _metadata(session, "outputMetadata", names_out)
        self.inputs = [_info(meta_in.get(n), n) for n in names_in]
        self.outputs = [_info(meta_out.get(n), n) for n in names_out]
        self._run_options: Any = None
        self._fixed: dict[tuple[Any, ...], tuple[list[str], str]] = {}  # (read, keep, link) → fetch names, JSON tail

    async def run(self, feeds: Mapping[str, Any], *, read: Sequence[str], keep: Sequence[str] = ()) -> dict[str, Any]:
        spec, wanted, arrays = self._spec(feeds, read, keep)
        b = self._b
        return self._answer(await b.runner.run(self._s, spec, b.js_list(arrays) if arrays else None,
                                               self.run_options), wanted)

    @property
    def run_options(self) -> Any:
        """The JS object of per-run options (made once): logging stays at warnings even when the session logs
        verbosely (placement at load)."""
        if self._run_options is None:
            self._run_options = self._b.js_object({"logSeverityLevel": 2})
        return self._run_options

    def _spec(self, feeds: Mapping[str, Any], read: Sequence[str], keep: Sequence[str],
              link: Sequence[tuple[str, str]] = ()) -> tuple[str, list[str], list[Any]]:
        """One run for the JS runner: its JSON spec, the names it fetches, the TypedArrays of its large inputs.

        ``link`` (output of the chain's first session → input here) is for :meth:`BrowserBackend.run_chain`.
        """
        import json

        kept: list[tuple[str, int]] = []
        inline: list[tuple[str, str, list[int], list[int]]] = []
        fill: list[tuple[str, str, list[int], int]] = []
        big: list[tuple[str, str, list[int]]] = []
        arrays: list[Any] = []
        for name, value in feeds.items():
            if isinstance(value, KeptValue):
                if value.id is None:
                    raise ContractError(f"{name}: a released value was fed back to {self.choice.role}.")
                kept.append((name, value.id))
                continue
            array = np.asarray(value)
            dtype = _DTYPE_NAME.get(array.dtype)  # by dtype object: numpy's ``dtype.name`` is slow Python code
            if dtype is None:
                raise ContractError(f"Cannot pass a {array.dtype.name} array to onnxruntime-web.")
            if dtype in _INT_TYPES:
                flat = array.reshape(-1)
                if flat.size <= _INLINE_MAX:  # plain Python on a few values: cheaper than numpy calls here
                    ints = [int(v) for v in flat.tolist()]
                    if dtype != "int64" or all(-_SAFE_INT <= v <= _SAFE_INT for v in ints):
                        inline.append((name, _ORT_TYPE[dtype], list(array.shape), ints))
                        continue
                first = int(flat[0])
                if abs(first) <= _SAFE_INT and bool((flat == flat[0]).all()):
                    fill.append((name, _ORT_TYPE[dtype], list(array.shape), first))
                    continue
            big.append((name, _ORT_TYPE[dtype], list(array.shape)))
            arrays.append(self._b.typed_array(array))
        key = (tuple(read), tuple(keep), tuple(link))
        fixed = self._fixed.get(key)
        if fixed is None:  # what a decode step repeats every token, encoded once
            wanted = list(dict.fromkeys([*read, *keep]))
            tail = json.dumps({"fetch": wanted, "keep": list(keep), "wasm": self.choice.device == "wasm",
                               "link": [list(pair) for pair in link]})
            fixed = self._fixed[key] = (wanted, tail[1:])
        wanted, tail = fixed
        text = json.dumps({"kept": kept, "inline": inline, "fill": fill, "big": big})[:-1] + ", " + tail
        return text, list(wanted), arrays

    def _answer(self, answer_js: Any, wanted: Sequence[str]) -> dict[str, Any]:
        """The JS runner's answer as :meth:`run` returns it: numpy arrays for reads, handles for keeps."""
        import json

        b = self._b
        answer = json.loads(str(answer_js[0]))
        data: Any = answer_js[1] if any("index" in v for v in answer.values()) else None
        out: dict[str, Any] = {}
        for name in wanted:
            a = answer[name]
            if "id" in a:
                out[name] = KeptValue(int(a["id"]), name, str(a["where"]), b.stats)
            elif "values" in a:
                out[name] = np.asarray(a["values"], dtype=_np_dtype(str(a["type"]))).reshape(a["dims"])
            else:
                out[name] = b.from_typed(data[int(a["index"])], str(a["type"]), a["dims"])
        return out

    def release(self, values: Iterable[Any]) -> None:
        ids = [h for v in values if isinstance(v, KeptValue) and (h := v.forget()) is not None]
        if ids:
            import json

            self._b.runner.release(json.dumps(ids))

    async def close(self) -> None:
        await self._s.release()


def _np_dtype(ort_type: str) -> np.dtype:
    return np.dtype(bool) if ort_type == "bool" else np.dtype(ort_type)


def _metadata(session: Any, attr: str, names: list[str]) -> dict[str, Any]:
    meta = getattr(session, attr, None)
    if meta is None:
        return {}
    items = list(meta)
    return {n: items[i] for i, n in enumerate(names) if i < len(items)}


class BrowserBackend(Backend):
    """onnxruntime-web sessions for the graphs listed in the site's ``model/manifest.json``.

    ``device`` is ``"webgpu"`` or ``"wasm"``; ``features`` are the WebGPU
    adapter's features (e.g. ``{"shader-f16"}``), used to choose variants.
    """

    def __init__(
        self,
        ort: Any,
        model_url: str,
        manifest: Mapping[str, Any],
        *,
        device: str,
        features: Iterable[str] = (),
        fetch_bytes: Any,
        fetch_text: Any,
        verbose: bool = False,
    ) -> None:
        if device not in ("webgpu", "wasm"):
            raise ContractError(f"Unknown device {device!r}; use 'webgpu' or 'wasm'.")
        self.ort = ort
        self.model_url = model_url.rstrip("/") + "/"
        self.manifest = manifest
        self.device = device
        self.features = set(features)
        self._fetch_bytes = fetch_bytes
        self._fetch_text = fetch_text
        self.verbose = verbose
        self.choices: dict[str, Choice] = {}
        # Where kept values lived (location → count) and how many are still held: tests check the caches
        # stay on the GPU and are all freed.
        self.stats: dict[str, Any] = {"kept": {}, "live": 0}
        self._runner: Any = None
        self._chains: dict[tuple[BrowserSession, BrowserSession], Any] = {}  # (first, second) → bound JS step
        self._greedy: dict[tuple[BrowserSession, BrowserSession], Any] = {}  # (first, second) → bound JS step loop
        self._texts: dict[str, Any] = {}  # relpath → task, see start()
        self._opening: dict[str, Any] = {}  # role → task
        import asyncio

        self._create_lock = asyncio.Lock()
        graphs = manifest.get("graphs") or {}
        for role in ROLES:
            self.choices[role] = choose_variant(role, graphs.get(role) or [], device, self.features)
        self.name = "onnxruntime-web (WebGPU)" if device == "webgpu" else "onnxruntime-web (wasm)"

    def start(self, texts: Iterable[str] = ()) -> None:
        """Begin at once every download this load needs and the session creations that follow them.

        :meth:`read_text` and :meth:`open_session` then await what was started: files arrive in parallel
        while Python reads the configs and the tokenizer, and each session is created as soon as its
        files are in (one creation at a time: onnxruntime-web's wasm is not re-entrant).
        """
        import asyncio

        def quiet(task: Any) -> None:  # a failure surfaces where the task is awaited, not as a warning
            if not task.cancelled():
                task.exception()

        for rel in texts:
            if rel not in self._texts:
                self._texts[rel] = asyncio.ensure_future(self._read_text(rel))
                self._texts[rel].add_done_callback(quiet)
        for role in ROLES:
            if role not in self._opening:
                self._opening[role] = asyncio.ensure_future(self._open_session(role))
                self._opening[role].add_done_callback(quiet)

    async def read_text(self, relpath: str) -> str:
        task = self._texts.pop(relpath, None)
        return await task if task is not None else await self._read_text(relpath)

    async def _read_text(self, relpath: str) -> str:
        try:
            text = await self._fetch_text(self.model_url + relpath)
        except Exception as exc:  # noqa: BLE001  (a JsException from fetch; the worker keeps the structured failure)
            raise ModelFileError(f"Could not download model/{relpath} ({exc}); check the connection and reload.") from None
        if text is None:  # the helper's answer for HTTP 404
            raise FileNotFoundError(relpath)
        return str(text)

    async def open_session(self, graph: str) -> Session:
        if graph not in self.choices:
            raise ContractError(f"Unknown graph role {graph!r}; roles are {list(ROLES)}.")
        task = self._opening.pop(graph, None)
        return await task if task is not None else await self._open_session(graph)

    async def _open_session(self, graph: str) -> Session:
        import asyncio

        import js  # type: ignore[import-not-found]
        from pyodide.ffi import to_js  # type: ignore[import-not-found]

        choice = self.choices[graph]

        async def get(rel: str) -> Any:
            return await self._fetch_bytes(self.model_url + rel, rel)

        # The graph and its external data download together (and with the other graphs', after start()).
        model, *datas = await asyncio.gather(get(choice.file), *(get(rel) for rel in choice.external_data))
        # The .onnx refers to its data by the file name beside it.
        external = [{"path": posixpath.basename(rel), "data": data} for rel, data in zip(choice.external_data, datas,
                                                                                        strict=True)]
        options: dict[str, Any] = {
            "executionProviders": [choice.device],
            "graphOptimizationLevel": "all",
            "externalData": external,
        }
        if self.verbose:
            options["logSeverityLevel"] = 0
            options["logVerbosityLevel"] = 0
        if choice.device == "webgpu":
            options["preferredOutputLocation"] = "gpu-buffer"
        async with self._create_lock:
            try:
                session = await self.ort.InferenceSession.create(
                    model, to_js(options, dict_converter=js.Object.fromEntries)
                )
            except Exception as exc:  # noqa: BLE001  (whatever onnxruntime-web throws becomes one line)
                raise ModelFileError(
                    f"onnxruntime-web could not load {choice.file} on {choice.device} ({str(exc)[:300]}); "
                    "rebuild the site or reload the page."
                ) from None
        return BrowserSession(self, session, choice)

    # -- tensors ------------------------------------------------------------------------

    @property
    def runner(self) -> Any:
        """The JavaScript half of :meth:`BrowserSession.run` (made on first use)."""
        if self._runner is None:
            from pyodide.code import run_js  # type: ignore[import-not-found]

            self._runner = run_js(_RUNNER_JS)(self.ort)
        return self._runner

    def js_object(self, value: Mapping[str, Any]) -> Any:
        import js  # type: ignore[import-not-found]
        from pyodide.ffi import to_js  # type: ignore[import-not-found]

        return to_js(value, dict_converter=js.Object.fromEntries)

    def js_list(self, items: list[Any]) -> Any:
        from pyodide.ffi import to_js  # type: ignore[import-not-found]

        return to_js(items)

    def typed_array(self, array: np.ndarray) -> Any:
        """A TypedArray holding a copy of ``array`` (int64 → BigInt64Array, float16 → its Uint16Array bits)."""
        from pyodide.ffi import to_js  # type: ignore[import-not-found]

        flat = np.ascontiguousarray(array).reshape(-1)
        if flat.dtype == np.float16:
            flat = flat.view(np.uint16)
        elif flat.dtype == np.bool_:
            flat = flat.view(np.uint8)
        return to_js(flat)  # one copy into a TypedArray of the matching type

    def tensor(self, array: np.ndarray) -> Any:
        """An ``ort.Tensor`` holding a copy of ``array``."""
        from pyodide.ffi import to_js  # type: ignore[import-not-found]

        dtype = array.dtype.name
        if dtype not in _ORT_TYPE:
            raise ContractError(f"Cannot pass a {dtype} array to onnxruntime-web.")
        return self.ort.Tensor.new(_ORT_TYPE[dtype], self.typed_array(array), to_js([int(d) for d in array.shape]))

    def from_typed(self, data: Any, ort_type: str, dims: Sequence[int]) -> np.ndarray:
        """Copy an output TypedArray into a fresh numpy array of the tensor's dtype and shape."""
        np_dtype = {"float16": np.uint16, "bool": np.uint8}.get(ort_type, np.dtype(ort_type))
        out = np.empty(int(data.length), dtype=np_dtype)
        data.assign_to(out)
        if ort_type == "float16":
            out = out.view(np.float16)
        elif ort_type == "bool":
            out = out.astype(bool)
        return out.reshape([int(d) for d in dims])

    async def to_numpy(self, tensor: Any) -> np.ndarray:
        """Copy an output tensor (downloading it from the GPU if it lives there) into numpy."""
        data = await tensor.getData() if str(tensor.location) != "cpu" else tensor.data
        return self.from_typed(data, str(tensor.type), tensor.dims.to_py())

    def kept_tensor(self, value: KeptValue) -> Any:
        """The ``ort.Tensor`` behind a kept value (for tools; the loop never touches it)."""
        return None if value.id is None else self.runner.tensor(value.id)

    async def run_chain(
        self,
        first: Session,
        first_feeds: Mapping[str, Any],
        second: Session,
        second_feeds: Mapping[str, Any],
        *,
        link: Mapping[str, str],
        read: Sequence[str],
        keep: Sequence[str] = (),
        free: Iterable[Any] = (),
    ) -> dict[str, Any]:
        """Both runs in one JavaScript call: Python awaits one promise per decode step instead of two (each await
        resumes Python through a macrotask, ~1 ms in Pyodide 0.27), the linked values never reach Python, and
        ``free`` is freed in the same call."""
        import json

        if not (isinstance(first, BrowserSession) and isinstance(second, BrowserSession)):
            return await super().run_chain(first, first_feeds, second, second_feeds, link=link, read=read, keep=keep,
                                           free=free)
        step = self._chains.get((first, second))
        if step is None:
            step = self._chains[(first, second)] = self.runner.chain(first._s, first.run_options, second._s,
                                                                     second.run_options)
        spec1, _, arrays1 = first._spec(first_feeds, [], list(link))  # kept in JS for the chain, never answered
        spec2, wanted, arrays2 = second._spec(second_feeds, read, keep, link=list(link.items()))
        freed = [v for v in free if isinstance(v, KeptValue) and v.id is not None]
        answer = await step(f"[{spec1}, {spec2}, {json.dumps([v.id for v in freed])}]",
                            self.js_list(arrays1) if arrays1 else None, self.js_list(arrays2) if arrays2 else None)
        for v in freed:  # JavaScript disposed of them after the run
            v.forget()
        return second._answer(answer, wanted)

    async def run_greedy(
        self,
        first: Session,
        second: Session,
        token: int,
        caches: Mapping[str, Any],
        *,
        length: int,
        link: Mapping[str, str],
        present: Mapping[str, str],
        position_ids: bool,
        on_token: Callable[[int], bool],
        max_steps: int,
        read: str = "next_token",
    ) -> dict[str, Any]:
        """All the steps inside one JavaScript call (the runner's ``greedy``): Python awaits one promise for the
        whole run instead of one per token, and ``on_token`` is called from JavaScript between runs (a plain
        synchronous call, ~0.02 ms). The caches never reach Python until the last step's come back as handles."""
        import json

        from pyodide.ffi import create_proxy  # type: ignore[import-not-found]

        handles = list(caches.items())
        if (not (isinstance(first, BrowserSession) and isinstance(second, BrowserSession)) or len(link) != 1
                or not all(isinstance(v, KeptValue) and v.id is not None for _, v in handles)):
            return await super().run_greedy(first, second, token, caches, length=length, link=link, present=present,
                                            position_ids=position_ids, on_token=on_token, max_steps=max_steps,
                                            read=read)
        if max_steps <= 0:
            return dict(caches)
        step = self._greedy.get((first, second))
        if step is None:
            step = self._greedy[(first, second)] = self.runner.greedy(first._s, first.run_options, second._s,
                                                                      second.run_options)
        spec = json.dumps({
            "token": int(token), "length": int(length), "positions": bool(position_ids),
            "caches": [[name, v.id] for name, v in handles], "present": [[out, past] for past, out in present.items()],
            "link": list(next(iter(link.items()))), "read": read, "max": int(max_steps),
            "wasm": second.choice.device == "wasm"})
        callback = create_proxy(lambda t: bool(on_token(int(t))))
        try:
            answer = json.loads(str(await step(spec, callback)))
        finally:
            callback.destroy()
        if not answer["caches"]:  # no step ran: the caches are still the caller's
            return dict(caches)
        for _, v in handles:  # JavaScript disposed of them once the first step replaced them
            v.forget()
        return {past: KeptValue(int(a["id"]), past, str(a["where"]), self.stats) for past, a in answer["caches"].items()}

    def describe(self) -> str:
        parts = [f"{c.role}: {c.precision} on {c.device}" for c in self.choices.values()]
        return f"{self.name} — " + ", ".join(parts)


# The text files Captioner.load reads (those the manifest lists are fetched at once, in parallel).
_LOAD_TEXTS = ("config.json", "generation_config.json", "processor_config.json", "tokenizer_config.json",
               "tokenizer.json", "chat_template.jinja", "chat_template.json")
# Token callbacks closer together than this are merged into one (one animation frame at 60 Hz).
TOKEN_BATCH_MS = 16.0


class PageRuntime:
    """What the page's worker drives: load once, then caption frames one at a time.

    Arguments and results cross the FFI as JSON strings and typed arrays only, so
    no proxies leak between calls. Failures come back as ``{"error": {code, detail}}``
    (codes in :data:`contract.ERRORS`), never as a traceback for the page to parse.
    """

    def __init__(self) -> None:
        self.backend: BrowserBackend | None = None
        self.captioner: Any = None
        self._cancel: Any = None
        self._io: tuple[Any, Any, bool] | None = None
        self._on_plan: Any = None
        self.token_batch_ms = TOKEN_BATCH_MS
        # The camera is one stream: an unchanged frame reuses its image features and greedy captions are drafted
        # from the previous one (token-identical to plain greedy). None: every frame alone (benchmarks of the loop).
        self.stream: CaptionStream | None = None

    def choose(self, choices_json: str, device: str, features: Any, remembered: str = "") -> str:
        """The site's default model choice for this device (runtime/choices.py): JSON ``{id, why}``."""
        import json

        from .choices import default_choice

        try:
            feats = [str(f) for f in (features.to_py() if hasattr(features, "to_py") else features)]
            return json.dumps(default_choice(json.loads(choices_json), str(device), feats, str(remembered or "")))
        except Exception as exc:  # noqa: BLE001  (the FFI boundary: the page gets a code, never a traceback)
            return json.dumps({"error": contract.error_payload(exc)})

    async def load(self, ort: Any, model_url: str, device: str, features: Any, fetch_bytes: Any, fetch_text: Any,
                   verbose: bool = False, on_plan: Any = None, preset: str | None = None) -> str:
        """Load a model (``preset``: one of its manifest's presets; a loaded one is closed first);
        ``on_plan(json)`` hears which graph files (path, size) will be fetched."""
        import json

        from .choices import preset_manifest

        try:
            text = await fetch_text(model_url.rstrip("/") + "/manifest.json")
            if text is None:
                raise ModelFileError("model/manifest.json is missing (HTTP 404); rebuild the site with `lfmvl-site build`.")
            manifest = preset_manifest(contract.check_model_manifest(json.loads(str(text))), preset or None)
            self._io = (fetch_bytes, fetch_text, bool(verbose))
            self._on_plan = on_plan
            # Another model replaces the loaded one: its sessions go first, so two models never share the memory.
            old, self.captioner = self.captioner, None
            await self._close(old)
            await self._open(ort, model_url, manifest, device, features)
        except Exception as exc:  # noqa: BLE001  (the FFI boundary: the page gets a code, never a traceback)
            return json.dumps({"error": contract.error_payload(exc)})
        return self._ready()

    @staticmethod
    async def _close(captioner: Any) -> None:
        if captioner is not None:
            for session in (captioner.embed_tokens, captioner.embed_images, captioner.decoder):
                with contextlib.suppress(Exception):  # an already released session: nothing left to free
                    await session.close()

    async def switch(self, ort: Any, device: str, features: Any) -> str:
        """Re-create the sessions on another backend (same model, prompt and page)."""
        import json

        if self.backend is None or self._io is None:
            return json.dumps({"error": contract.error_payload(ContractError("The model is not loaded yet."))})
        old = self.captioner
        try:
            await self._open(ort, self.backend.model_url, self.backend.manifest, device, features)
        except Exception as exc:  # noqa: BLE001  (the FFI boundary: the page gets a code, never a traceback)
            return json.dumps({"error": contract.error_payload(exc)})
        await self._close(old)
        return self._ready()

    async def _open(self, ort: Any, model_url: str, manifest: Mapping[str, Any], device: str, features: Any) -> None:
        from .generate import Captioner

        assert self._io is not None
        fetch_bytes, fetch_text, verbose = self._io
        feats = [str(f) for f in (features.to_py() if hasattr(features, "to_py") else features)]
        backend = BrowserBackend(ort, model_url, manifest, device=device, features=feats,
                                 fetch_bytes=fetch_bytes, fetch_text=fetch_text, verbose=verbose)
        if self._on_plan is not None:
            import json

            sizes = {f["path"]: f["size"] for f in manifest["files"]}
            prefix = self.site_path(model_url)
            plan = [{"file": prefix + rel, "size": sizes.get(rel, 0)}
                    for c in backend.choices.values() for rel in (c.file, *c.external_data)]
            self._on_plan(json.dumps(plan))
        listed = {f["path"] for f in manifest["files"]}
        backend.start(rel for rel in _LOAD_TEXTS if rel in listed)
        captioner = await Captioner.load(backend)
        self.backend, self.captioner = backend, captioner
        self.stream = CaptionStream()  # a new model or device: nothing carried over

    @staticmethod
    def site_path(model_url: str) -> str:
        """The model folder as a site path (``model/`` or ``models/<slug>/``) from its absolute URL."""
        parts = model_url.rstrip("/").split("/")
        if len(parts) >= 2 and parts[-2] == contract.MODELS_DIR:
            return f"{contract.MODELS_DIR}/{parts[-1]}/"
        return contract.MODEL_DIR + "/"

    def _ready(self) -> str:
        import json

        assert self.backend is not None
        return json.dumps({
            "backend": self.backend.name,
            "describe": self.backend.describe(),
            "choices": [c.as_dict() for c in self.backend.choices.values()],
        })

    def cancel(self) -> None:
        """Stop the running caption at its next step (the prompt changed)."""
        if self._cancel is not None:
            self._cancel.cancel()

    async def caption(self, rgba: Any, width: int, height: int, prompt: str, settings_json: str,
                      on_token: Any = None) -> str:
        """Caption one RGBA frame (a ``Uint8ClampedArray`` of ``height*width*4``); JSON result."""
        import json
        import time

        from ..errors import Cancelled
        from .generate import CancelToken
        from .sampling import SamplingSettings

        if self.captioner is None:
            return json.dumps({"error": contract.error_payload(ContractError("The model is not loaded yet."))})
        start = time.perf_counter()
        flat = np.empty(int(height) * int(width) * 4, dtype=np.uint8)
        rgba.assign_to(flat)  # the one copy out of JavaScript memory
        frame = flat.reshape(int(height), int(width), 4)
        copy_ms = (time.perf_counter() - start) * 1000.0
        self._cancel = token = CancelToken()

        # Tokens reach JavaScript in batches: the first at once, then whatever came within TOKEN_BATCH_MS of
        # the last call goes with the next one (slow steps still post every token at once). One call carries
        # (last token id, the batch's text, how many tokens): one FFI call and one postMessage per batch.
        pending: list[Any] = [-1, "", 0]  # last id, text, tokens
        last = [-1e9]

        def flush() -> None:
            if on_token is not None and (pending[2] or pending[1]):
                on_token(int(pending[0]), pending[1], pending[2])
            pending[0], pending[1], pending[2] = -1, "", 0
            last[0] = time.perf_counter()

        def forward(token_id: int, piece: str) -> None:
            if token_id >= 0:
                pending[0] = token_id
                pending[2] += 1
            pending[1] += piece
            if (time.perf_counter() - last[0]) * 1000.0 >= self.token_batch_ms:
                flush()

        try:
            options = dict(json.loads(settings_json))
            if "max_new_tokens" in options:
                options["max_new_tokens"] = contract.check_setting("max_new_tokens", options["max_new_tokens"])
            settings = SamplingSettings(**options)
            result = await self.captioner.caption(frame, contract.check_setting("prompt", prompt), settings=settings,
                                                  on_token=forward, cancel=token, stream=self.stream)
        except Cancelled:
            flush()
            return json.dumps({"cancelled": True})
        except Exception as exc:  # noqa: BLE001  (the FFI boundary: the page gets a code, never a traceback)
            return json.dumps({"error": contract.error_payload(exc)})
        finally:
            if self._cancel is token:
                self._cancel = None
        flush()  # the last batch (and a character the last token left incomplete) before the result
        data = result.as_dict()
        data["token_ids"] = [int(t) for t in result.token_ids]
        data["timings"]["frame_copy_ms"] = round(copy_ms, 3)
        if self.backend is not None:
            data["kept"] = dict(self.backend.stats["kept"])
            data["kept_live"] = self.backend.stats["live"]
        return json.dumps(data)
