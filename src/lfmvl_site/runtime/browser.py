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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ContractError, ModelFileError
from . import contract
from .backend import Backend, Session, TensorInfo

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


class KeptValue:
    """A value left inside onnxruntime-web (GPU buffer on WebGPU) between runs."""

    __slots__ = ("_stats", "name", "tensor")

    def __init__(self, tensor: Any, name: str, stats: dict[str, Any]) -> None:
        self.tensor = tensor
        self.name = name
        self._stats = stats
        where = str(tensor.location)
        stats["kept"][where] = stats["kept"].get(where, 0) + 1
        stats["live"] += 1

    def dispose(self) -> None:
        if self.tensor is not None:
            self.tensor.dispose()
            self.tensor = None
            self._stats["live"] -= 1


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
        self._fetches: dict[tuple[str, ...], Any] = {}
        self._run_options: Any = None

    async def run(self, feeds: Mapping[str, Any], *, read: Sequence[str], keep: Sequence[str] = ()) -> dict[str, Any]:
        import js  # type: ignore[import-not-found]
        from pyodide.ffi import to_js  # type: ignore[import-not-found]

        js_feeds = js.Object.new()
        made = []
        for name, value in feeds.items():
            if isinstance(value, KeptValue):
                if value.tensor is None:
                    raise ContractError(f"{name}: a released value was fed back to {self.choice.role}.")
                if self.choice.device == "wasm" and str(value.tensor.location) != "cpu":
                    # Kept by a WebGPU session but fed to a wasm one (a role that fell back): bring it over.
                    t = self._b.tensor(await self._b.to_numpy(value.tensor))
                    made.append(t)
                    setattr(js_feeds, name, t)
                else:
                    setattr(js_feeds, name, value.tensor)
            else:
                t = self._b.tensor(np.asarray(value))
                made.append(t)
                setattr(js_feeds, name, t)
        wanted = list(dict.fromkeys([*read, *keep]))
        key = tuple(wanted)
        if key not in self._fetches:  # the decoder asks for the same outputs every step: convert once
            self._fetches[key] = to_js(wanted)
        if self._run_options is None:
            # Per-run logging stays at warnings even when the session logs verbosely (placement at load).
            self._run_options = to_js({"logSeverityLevel": 2}, dict_converter=js.Object.fromEntries)
        results = await self._s.run(js_feeds, self._fetches[key], self._run_options)
        out: dict[str, Any] = {}
        for name in wanted:
            t = getattr(results, name)
            if name in read and name not in keep:
                out[name] = await self._b.to_numpy(t)
                t.dispose()
            else:
                out[name] = KeptValue(t, name, self._b.stats)
        for t in made:
            t.dispose()
        return out

    def release(self, values: Iterable[Any]) -> None:
        for v in values:
            if isinstance(v, KeptValue):
                v.dispose()

    async def close(self) -> None:
        await self._s.release()


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
        graphs = manifest.get("graphs") or {}
        for role in ROLES:
            self.choices[role] = choose_variant(role, graphs.get(role) or [], device, self.features)
        self.name = "onnxruntime-web (WebGPU)" if device == "webgpu" else "onnxruntime-web (wasm)"

    async def read_text(self, relpath: str) -> str:
        try:
            text = await self._fetch_text(self.model_url + relpath)
        except Exception as exc:  # noqa: BLE001  (a JsException from fetch; the worker keeps the structured failure)
            raise ModelFileError(f"Could not download model/{relpath} ({exc}); check the connection and reload.") from None
        if text is None:  # the helper's answer for HTTP 404
            raise FileNotFoundError(relpath)
        return str(text)

    async def open_session(self, graph: str) -> Session:
        import js  # type: ignore[import-not-found]
        from pyodide.ffi import to_js  # type: ignore[import-not-found]

        if graph not in self.choices:
            raise ContractError(f"Unknown graph role {graph!r}; roles are {list(ROLES)}.")
        choice = self.choices[graph]
        model = await self._fetch_bytes(self.model_url + choice.file, choice.file)
        external = []
        for rel in choice.external_data:
            data = await self._fetch_bytes(self.model_url + rel, rel)
            # The .onnx refers to its data by the file name beside it.
            external.append({"path": posixpath.basename(rel), "data": data})
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

    def tensor(self, array: np.ndarray) -> Any:
        """An ``ort.Tensor`` holding a copy of ``array``."""
        from pyodide.ffi import to_js  # type: ignore[import-not-found]

        dtype = array.dtype.name
        if dtype not in _ORT_TYPE:
            raise ContractError(f"Cannot pass a {dtype} array to onnxruntime-web.")
        flat = np.ascontiguousarray(array).reshape(-1)
        if dtype == "float16":
            flat = flat.view(np.uint16)
        elif dtype == "bool":
            flat = flat.view(np.uint8)
        data = to_js(flat)  # one copy into a TypedArray of the matching type (int64 → BigInt64Array)
        return self.ort.Tensor.new(_ORT_TYPE[dtype], data, to_js([int(d) for d in array.shape]))

    async def to_numpy(self, tensor: Any) -> np.ndarray:
        """Copy an output tensor (downloading it from the GPU if it lives there) into numpy."""
        data = await tensor.getData() if str(tensor.location) != "cpu" else tensor.data
        dtype = str(tensor.type)
        np_dtype = {"float16": np.uint16, "bool": np.uint8}.get(dtype, np.dtype(dtype))
        out = np.empty(int(data.length), dtype=np_dtype)
        data.assign_to(out)
        if dtype == "float16":
            out = out.view(np.float16)
        elif dtype == "bool":
            out = out.astype(bool)
        return out.reshape([int(d) for d in tensor.dims])

    def describe(self) -> str:
        parts = [f"{c.role}: {c.precision} on {c.device}" for c in self.choices.values()]
        return f"{self.name} — " + ", ".join(parts)


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

    async def load(self, ort: Any, model_url: str, device: str, features: Any, fetch_bytes: Any, fetch_text: Any,
                   verbose: bool = False, on_plan: Any = None) -> str:
        """Load the model; ``on_plan(json)`` hears which graph files (path, size) will be fetched."""
        import json

        try:
            text = await fetch_text(model_url.rstrip("/") + "/manifest.json")
            if text is None:
                raise ModelFileError("model/manifest.json is missing (HTTP 404); rebuild the site with `lfmvl-site build`.")
            manifest = contract.check_model_manifest(json.loads(str(text)))
            self._io = (fetch_bytes, fetch_text, bool(verbose))
            self._on_plan = on_plan
            await self._open(ort, model_url, manifest, device, features)
        except Exception as exc:  # noqa: BLE001  (the FFI boundary: the page gets a code, never a traceback)
            return json.dumps({"error": contract.error_payload(exc)})
        return self._ready()

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
        if old is not None:
            for session in (old.embed_tokens, old.embed_images, old.decoder):
                with contextlib.suppress(Exception):  # an already released session: nothing left to free
                    await session.close()
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
            prefix = "model/"
            plan = [{"file": prefix + rel, "size": sizes.get(rel, 0)}
                    for c in backend.choices.values() for rel in (c.file, *c.external_data)]
            self._on_plan(json.dumps(plan))
        captioner = await Captioner.load(backend)
        self.backend, self.captioner = backend, captioner

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

        def forward(token_id: int, piece: str) -> None:
            if on_token is not None:
                on_token(int(token_id), piece)

        try:
            options = dict(json.loads(settings_json))
            if "max_new_tokens" in options:
                options["max_new_tokens"] = contract.check_setting("max_new_tokens", options["max_new_tokens"])
            settings = SamplingSettings(**options)
            result = await self.captioner.caption(frame, contract.check_setting("prompt", prompt), settings=settings,
                                                  on_token=forward, cancel=token)
        except Cancelled:
            return json.dumps({"cancelled": True})
        except Exception as exc:  # noqa: BLE001  (the FFI boundary: the page gets a code, never a traceback)
            return json.dumps({"error": contract.error_payload(exc)})
        finally:
            if self._cancel is token:
                self._cancel = None
        data = result.as_dict()
        data["token_ids"] = [int(t) for t in result.token_ids]
        data["timings"]["frame_copy_ms"] = round(copy_ms, 3)
        if self.backend is not None:
            data["kept"] = dict(self.backend.stats["kept"])
            data["kept_live"] = self.backend.stats["live"]
        return json.dumps(data)
