"""Backend on native onnxruntime (CPython only): how ``lfmvl-site caption`` and the tests run.

A model directory is either a published layout (``onnx/<stem><suffix>.onnx``, the 1.6B or the 450M naming of
runtime/layout.py, recognised from the files present) or a built ``dist/model`` whose ``manifest.json`` names each
role's variants.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ContractError, ModelFileError
from .backend import Backend, Session, TensorInfo
from .layout import ROLES, detect_layout, graph_file

# onnxruntime's type strings → numpy dtype names.
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(bool)": "bool",
}


def _info(arg: Any) -> TensorInfo:
    dtype = _ORT_TYPES.get(arg.type)
    if dtype is None:
        raise ContractError(f"Unsupported tensor type {arg.type} for {arg.name!r}.")
    return TensorInfo(arg.name, dtype, tuple(arg.shape))


class NativeSession(Session):
    def __init__(self, session: Any, path: Path | None = None) -> None:
        self._session = session
        self.path = path
        self.inputs = [_info(a) for a in session.get_inputs()]
        self.outputs = [_info(a) for a in session.get_outputs()]

    async def run(
        self, feeds: Mapping[str, Any], *, read: Sequence[str], keep: Sequence[str] = ()
    ) -> dict[str, Any]:
        names = list(dict.fromkeys([*read, *keep]))
        try:
            values = self._session.run(names, dict(feeds))
        except Exception as exc:  # onnxruntime's own Fail/InvalidArgument/RuntimeException types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            shapes = ", ".join(f"{k} {getattr(v, 'dtype', '?')}{list(getattr(v, 'shape', ()))}" for k, v in feeds.items())
            raise ContractError(
                f"onnxruntime could not run {self.path or 'a graph'} ({first[:300]}) on inputs {shapes[:300]}; "
                "the graph does not fit this runtime: use a published LFM2.5-VL export or rebuild the model."
            ) from None
        return dict(zip(names, values, strict=True))


class NativeBackend(Backend):
    """Opens graphs with onnxruntime from a local model directory.

    ``precision`` picks a published variant per role (``{"decoder": "q4"}``);
    roles not named use fp32, or the manifest's first variant for a built model.
    """

    name = "onnxruntime (CPU)"

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        precision: Mapping[str, str] | None = None,
        threads: int | None = None,
    ) -> None:
        self.root = Path(model_dir)
        if not self.root.is_dir():
            raise ModelFileError(f"Model directory {self.root} does not exist; pass a directory made by "
                                 "`lfmvl-site synth-model` or downloaded from the hub.")
        self.precision = dict(precision or {})
        unknown = set(self.precision) - set(ROLES)
        if unknown:
            raise ContractError(f"Unknown graph role(s) {sorted(unknown)}; roles are {list(ROLES)}.")
        self.threads = threads
        manifest = self.root / "manifest.json"
        self.manifest = json.loads(manifest.read_text()) if manifest.is_file() else None
        self._layout: str | None = None
        self._text_config: dict[str, Any] | None = None

    async def read_text(self, relpath: str) -> str:
        path = self.root / relpath
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ModelFileError(f"{path} is missing; the model directory is incomplete.") from None

    def graph_path(self, role: str) -> Path:
        """The .onnx file serving ``role``."""
        if role not in ROLES:
            raise ContractError(f"Unknown graph role {role!r}; roles are {list(ROLES)}.")
        wanted = self.precision.get(role)
        if self.manifest is not None:
            variants = self.manifest.get("graphs", {}).get(role) or []
            for variant in variants:
                if wanted is None or variant.get("precision") == wanted:
                    return self.root / variant["file"]
            raise ModelFileError(f"{self.root / 'manifest.json'} has no {wanted or 'usable'} variant for {role}.")
        if self._layout is None:
            folder = self.root / "onnx"
            names = [p.name for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
            self._layout = detect_layout(names, f"Model directory {self.root}")
        return self.root / graph_file(role, wanted or "fp32", self._layout)

    async def open_session(self, graph: str) -> Session:
        import onnxruntime as ort

        path = self.graph_path(graph)
        if not path.is_file():
            raise ModelFileError(f"{path} is missing; the model directory is incomplete (re-download or rebuild it).")
        ort.set_default_logger_severity(4)  # errors reach the user as one line below, not as ORT's log
        options = ort.SessionOptions()
        options.log_severity_level = 4
        if self.threads:
            options.intra_op_num_threads = self.threads
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/RuntimeException types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "out of bounds" in first or "can not be read in full" in first:
                raise ModelFileError(
                    f"{path.name}'s external data ({path.stem}.onnx_data*) is truncated: a tensor ends past the end "
                    "of the file. Delete the model files and download or rebuild them."
                ) from None
            raise ModelFileError(
                f"{path} could not be loaded ({first[:300]}); the file or its .onnx_data may be truncated or "
                "corrupt: delete it and download or rebuild the model."
            ) from None
        native = NativeSession(session, path)
        self._check_contract(graph, native, path)
        return native

    def _check_contract(self, role: str, session: NativeSession, path: Path) -> None:
        """The build's graph contract (model/contract.py), so ``caption`` refuses what ``build`` refuses."""
        from ..model.contract import check_io

        if self._text_config is None:  # read once for the three graphs
            try:
                cfg = json.loads((self.root / "config.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                cfg = {}  # the loader reports a missing or broken config.json by itself
            self._text_config = (cfg.get("text_config", cfg) if isinstance(cfg, dict) else None) or {}
        text = self._text_config
        hidden = text.get("hidden_size") if isinstance(text.get("hidden_size"), int) else None
        layers = text.get("layer_types") if isinstance(text.get("layer_types"), list) else None
        check_io(role, session.inputs, session.outputs, file=path, hidden_size=hidden, layer_types=layers)

    def describe(self) -> str:
        return f"{self.name} from {self.root}"

