"""Model sources: the Hugging Face hub (through huggingface_hub), a local directory, or the synthetic tiny model.

A source answers ``get(relpath) -> Path | None`` (None = the file is not part of the model), downloading lazily
so that only the files the chosen preset needs are fetched. Its ``layout`` (the 1.6B or the 450M file naming,
runtime/layout.py) is recognised from the files present, and ``graph_relpath(role, precision)`` names its graph
files. :func:`load_graph` loads a graph with its external data after checking that every tensor's bytes are
really there (a truncated file is a clear ModelFileError).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BuildError, ModelFileError
from ..files import file_digest, sha256_file
from ..runtime.layout import (
    DEFAULT_LAYOUT,
    SUFFIXES,
    detect_layout,
    graph_file,
    probe_layout,
)
from .options import ModelBuildOptions

if TYPE_CHECKING:  # pragma: no cover
    import onnx

CONFIG_FILES = ("config.json", "generation_config.json", "processor_config.json", "tokenizer.json",
                "tokenizer_config.json", "chat_template.jinja")
REQUIRED_CONFIG_FILES = ("config.json", "processor_config.json", "tokenizer.json", "tokenizer_config.json")

_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")


def graph_relpath(role: str, precision: str, layout: str = DEFAULT_LAYOUT) -> str:
    """``onnx/<stem><suffix>.onnx`` in ``layout`` (fp32 has no suffix); the built ``dist/model`` uses the default."""
    if precision not in SUFFIXES:
        raise BuildError(f"Unknown precision {precision!r}; use one of {', '.join(SUFFIXES)}.")
    return graph_file(role, precision, layout)


class Source:
    """Files of one model; ``info`` is the manifest's ``source`` entry."""

    info: dict[str, Any]
    _layout: str | None = None

    def get(self, relpath: str) -> Path | None:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def layout(self) -> str:
        """The published file layout of this model (``"1.6b"`` or ``"450m"``), recognised on first use."""
        if self._layout is None:
            self._layout = self._detect_layout()
        return self._layout

    def _detect_layout(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def graph_relpath(self, role: str, precision: str) -> str:
        """The file of ``role`` at ``precision`` in this source's layout."""
        return graph_relpath(role, precision, self.layout)

    def require(self, relpath: str) -> Path:
        path = self.get(relpath)
        if path is None:
            raise ModelFileError(f"{self.describe()} has no {relpath}; check the model id/directory and revision.")
        return path

    def describe(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError


class LocalSource(Source):
    """A directory with the published layout (``--model-dir``, or the synthetic model)."""

    def __init__(self, root: Path, info: dict[str, Any]) -> None:
        self.root = Path(root)
        self.info = info
        if not self.root.is_dir():
            raise ModelFileError(f"Model directory {self.root} does not exist; pass an existing --model-dir.")

    def get(self, relpath: str) -> Path | None:
        path = self.root / relpath
        return path if path.is_file() else None

    def _detect_layout(self) -> str:
        folder = self.root / "onnx"
        names = [p.name for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
        return detect_layout(names, self.describe())

    def describe(self) -> str:
        return f"model directory {self.root}"


class HubSource(Source):
    """A Hugging Face repo, through huggingface_hub (its cache, resume, HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE).

    The revision is pinned to the commit that ``config.json`` resolved to, so every file comes from one commit.
    Each downloaded file is checked against the hub's ETag (sha256 for LFS files, git blob sha1 otherwise).
    """

    def __init__(self, repo_id: str, revision: str | None, *, progress: bool) -> None:
        self.repo_id, self.requested = repo_id, revision
        self.progress = progress
        self.commit: str | None = None
        config = self._download("config.json", revision)
        if config is None:
            raise ModelFileError(f"{repo_id} has no config.json; is --model a LFM2.5-VL ONNX repo?")
        self.commit = _commit_of(config)
        self.info = {"repo_id": repo_id, "revision": self.commit, "local_dir": None, "synthetic": False}

    def describe(self) -> str:
        return f"hub repo {self.repo_id}@{self.commit or self.requested or 'main'}"

    def get(self, relpath: str) -> Path | None:
        return self._download(relpath, self.commit or self.requested)

    def _detect_layout(self) -> str:
        return probe_layout(self.exists, self.describe())

    def exists(self, relpath: str) -> bool:
        """Whether the repo has ``relpath``, without downloading it: the huggingface_hub cache first, then a HEAD."""
        from huggingface_hub import HfApi, try_to_load_from_cache
        from huggingface_hub.errors import OfflineModeIsEnabled

        revision = self.commit or self.requested
        cached = try_to_load_from_cache(self.repo_id, relpath, revision=revision)
        if isinstance(cached, str):
            return True
        if cached is not None:  # huggingface_hub's "known absent" marker
            return False
        try:
            return bool(HfApi().file_exists(self.repo_id, relpath, revision=revision))
        except OfflineModeIsEnabled:
            return False  # offline and not cached: as good as absent for this run
        except OSError as exc:
            raise ModelFileError(
                f"Could not ask {self.repo_id} whether it has {relpath}: {exc}. Check the network (or HF_ENDPOINT), "
                "or use a cached copy with HF_HUB_OFFLINE=1, or a local copy with --model-dir."
            ) from exc

    def _download(self, relpath: str, revision: str | None) -> Path | None:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
        from huggingface_hub.errors import (
            LocalEntryNotFoundError,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        try:
            with _progress_bars(self.progress):
                path = Path(hf_hub_download(self.repo_id, relpath, revision=revision))
        except RemoteEntryNotFoundError:
            return None  # the hub says the repo has no such file
        except LocalEntryNotFoundError as exc:
            cached = try_to_load_from_cache(self.repo_id, relpath, revision=revision)
            if cached is not None and not isinstance(cached, str):  # huggingface_hub's "known absent" marker
                return None
            raise ModelFileError(
                f"{relpath} of {self.repo_id}@{revision or 'main'} is not in the huggingface_hub cache and the hub "
                f"cannot be reached ({exc.__class__.__name__}). Go online (unset HF_HUB_OFFLINE), or use a local "
                "copy with --model-dir."
            ) from exc
        except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
            raise ModelFileError(
                f"{self.repo_id}@{revision or 'main'} was not found on the hub ({type(exc).__name__}); check --model "
                "and --revision, and set HF_TOKEN for a private or gated repo."
            ) from exc
        except OSError as exc:  # network errors, offline mode without a cached copy, size consistency check
            raise ModelFileError(
                f"Could not download {relpath} from {self.repo_id}: {exc}. Check the network (or HF_ENDPOINT), "
                "or use a cached copy with HF_HUB_OFFLINE=1, or a local copy with --model-dir."
            ) from exc
        verify_etag(path, relpath)
        return path


def verify_etag(path: Path, relpath: str) -> None:
    """Compare a cached hub file with its ETag (the blob's name in the huggingface_hub cache)."""
    etag = Path(os.path.realpath(path)).name
    if _SHA256.fullmatch(etag):
        digest = sha256_file(path)
    elif _SHA1.fullmatch(etag):
        header = b"blob %d\0" % path.stat().st_size
        digest = file_digest(path, lambda: hashlib.sha1(header))  # noqa: S324 - git blob id, not security
    else:
        return  # an ETag we cannot interpret (not from the hub's git/LFS storage): nothing to compare
    if digest != etag:
        raise ModelFileError(
            f"{relpath} in the hub cache ({os.path.realpath(path)}) does not match its hash {etag} (got {digest}): "
            "the download is truncated or corrupt. Delete that file and run the build again."
        )


def _commit_of(snapshot_file: Path) -> str | None:
    """The commit a file resolved to: huggingface_hub stores it as ``.../snapshots/<commit>/<file>``."""
    parts = Path(snapshot_file).parts
    if "snapshots" in parts:
        commit = parts[len(parts) - 1 - parts[::-1].index("snapshots") + 1]
        if _SHA1.fullmatch(commit):
            return commit
    return None


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    from .. import log

    enabled = enabled and log.bars_enabled()  # on a terminal only: elsewhere they are noise between log lines
    was_disabled = are_progress_bars_disabled()
    if not enabled and not was_disabled:
        disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and not was_disabled:
            enable_progress_bars()


@contextlib.contextmanager
def open_source(options: ModelBuildOptions, *, progress: bool = True) -> Iterator[Source]:
    """The model source the options name; a synthetic model lives in a temporary directory for the ``with``."""
    if options.synthetic:
        from ..synth import write_model

        tmp = Path(tempfile.mkdtemp(prefix="lfmvl-synth-"))
        try:
            try:
                root = write_model(tmp / "model", seed=options.seed, size=options.synthetic_size)
            except OSError as exc:
                raise BuildError(f"Could not write the synthetic model in {tmp}: {exc}. Free space in the temp dir.") from exc
            yield LocalSource(root, {"repo_id": None, "revision": None, "local_dir": None, "synthetic": True,
                                     "seed": options.seed, "size": options.synthetic_size})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    elif options.model_dir is not None:
        root = Path(options.model_dir).resolve()
        yield LocalSource(root, {"repo_id": None, "revision": None, "local_dir": str(root), "synthetic": False})
    else:
        yield HubSource(options.repo_id, options.revision, progress=progress)


def external_locations(model: onnx.ModelProto) -> list[str]:
    """External data file names a graph refers to, in first-use order."""
    from .shard import iter_tensors

    seen: dict[str, None] = {}
    for t in iter_tensors(model.graph):
        for e in t.external_data:
            if e.key == "location":
                seen.setdefault(e.value, None)
    return list(seen)


def load_graph(source: Source, relpath: str) -> onnx.ModelProto | None:
    """Load ``relpath`` and its external data from ``source``; None if the source has no such graph.

    Every external tensor's range is checked against its file's size first, so a truncated download is a
    ModelFileError naming the file rather than an obscure onnx error.
    """
    import onnx
    from google.protobuf.message import DecodeError

    from .shard import iter_tensors

    path = source.get(relpath)
    if path is None:
        return None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError) as exc:
        raise ModelFileError(f"{relpath} ({path}) is not a readable ONNX file ({exc}); re-download it.") from exc
    folder = str(Path(relpath).parent)
    data_paths = {loc: source.require(f"{folder}/{loc}") for loc in external_locations(model)}
    for t in iter_tensors(model.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        ext = {e.key: e.value for e in t.external_data}
        file = data_paths[ext["location"]]
        end = int(ext.get("offset", 0)) + int(ext.get("length", 0))
        size = file.stat().st_size
        if end > size:
            raise ModelFileError(
                f"{folder}/{ext['location']} is truncated: tensor {t.name!r} needs bytes up to {end} but the file "
                f"has {size}. Re-download it (delete the cached copy) or fix the model directory."
            )
        # Read from wherever the source keeps the file (hub cache blobs live apart from each other).
        with open(file, "rb") as f:
            f.seek(int(ext.get("offset", 0)))
            data = f.read(int(ext["length"])) if "length" in ext else f.read()
        t.raw_data = data
        t.data_location = onnx.TensorProto.DEFAULT
        del t.external_data[:]
    return model
