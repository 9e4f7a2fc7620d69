"""Browser assets: what is fetched is what the publishers published (npm integrity, Pyodide's lock)."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import tarfile
import urllib.request
from pathlib import Path

import pytest

from support import pyodide_mirror

from lfmvl_site.errors import AssetError
from lfmvl_site.site import assets
from lfmvl_site.config import cache_dir
from lfmvl_site.site.fetch import quiet


DEAD = "http://127.0.0.1:9"  # nothing listens on the discard port


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def mirror() -> Path:
    m = pyodide_mirror()
    if m is None:
        pytest.skip("no offline Pyodide mirror (../shared/pyodide/0.27.7 or LFMVL_PYODIDE_DIR)")
    return m


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty cache and every network source pointing at a dead port."""
    monkeypatch.setenv("LFMVL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(assets, "PYODIDE_CDN", DEAD + "/pyodide")
    monkeypatch.setattr(assets, "NPM_REGISTRY", DEAD + "/npm")
    monkeypatch.setattr(assets, "PYPI_SIMPLE", DEAD + "/simple")
    assets._unreachable.clear()
    return tmp_path / "cache"


def test_ort_files_match_the_npm_registry_tarball() -> None:
    files = assets.fetch_ort(quiet)
    assert [f.name for f in files] == ["ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs",
                                       "ort-wasm-simd-threaded.asyncify.wasm"]
    tgz = cache_dir() / "npm" / f"onnxruntime-web-{assets.ORT_VERSION}.tgz"
    # Independent reference: the integrity the npm registry publishes for this version.
    try:
        with urllib.request.urlopen(f"https://registry.npmjs.org/onnxruntime-web/{assets.ORT_VERSION}", timeout=20) as r:
            published = json.load(r)["dist"]["integrity"]
    except OSError as exc:
        pytest.skip(f"npm registry unreachable: {exc}")
    digest = base64.b64encode(hashlib.sha512(tgz.read_bytes()).digest()).decode()
    assert published == f"sha512-{digest}"
    with tarfile.open(tgz) as tf:
        for f in files:
            member = tf.extractfile(f"package/dist/{f.name}")
            assert member is not None and member.read() == f.path.read_bytes()


def test_tampered_cached_ort_file_is_replaced(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_tgz = cache_dir() / "npm" / f"onnxruntime-web-{assets.ORT_VERSION}.tgz"
    assets.fetch_ort(quiet)  # make sure the real cache holds the tarball
    monkeypatch.setenv("LFMVL_CACHE_DIR", str(tmp_path / "c"))
    (tmp_path / "c" / "npm").mkdir(parents=True)
    shutil.copyfile(real_tgz, tmp_path / "c" / "npm" / real_tgz.name)
    bad = tmp_path / "c" / f"onnxruntime-web-{assets.ORT_VERSION}" / "ort.webgpu.min.mjs"
    bad.parent.mkdir(parents=True)
    bad.write_text("tampered")
    files = {f.name: f for f in assets.fetch_ort(quiet)}
    assert files["ort.webgpu.min.mjs"].source == "npm"
    with tarfile.open(real_tgz) as tf:
        member = tf.extractfile("package/dist/ort.webgpu.min.mjs")
        assert member is not None and bad.read_bytes() == member.read()


def test_pyodide_from_mirror_matches_the_official_lock(mirror: Path) -> None:
    bundle = assets.fetch_pyodide(mirror, quiet)
    official = json.loads((mirror / "pyodide-lock.json").read_text())
    assert official["info"]["version"] == "0.27.7"
    for entry, asset in bundle.packages:
        ref = official["packages"][entry["name"].lower()]
        if asset.source == "PyPI":  # jinja2/markupsafe substitutes: PyPI's own files, pinned by PyPI's sha256
            assert entry["version"] == ref["version"]
        else:
            assert _sha256(asset.path) == ref["sha256"] and asset.name == ref["file_name"]
        assert _sha256(asset.path) == entry["sha256"]
    for asset in bundle.runtime:  # byte-identical to the mirror (= the official release)
        assert asset.path.read_bytes() == (mirror / asset.name).read_bytes()
    lock = bundle.trimmed_lock()
    assert lock["info"] == official["info"]
    assert set(lock["packages"]) == {"numpy", "jinja2", "markupsafe"}
    assert lock["packages"]["numpy"] == official["packages"]["numpy"]


def test_corrupt_mirror_and_no_network_fails_with_what_to_do(mirror: Path, offline: Path, tmp_path: Path) -> None:
    bad = tmp_path / "mirror"
    shutil.copytree(mirror, bad)
    (bad / "pyodide.asm.wasm").chmod(0o644)
    (bad / "pyodide.asm.wasm").write_bytes(b"not wasm")
    with pytest.raises(AssetError) as err:
        assets.fetch_pyodide(bad, quiet)
    text = str(err.value)
    assert "pyodide.asm.wasm" in text and "--pyodide-dir" in text and "LFMVL_PYODIDE_DIR" in text
    assert "does not match the pinned sha256" in text


def test_tampered_lock_is_refused(mirror: Path, offline: Path, tmp_path: Path) -> None:
    bad = tmp_path / "mirror"
    shutil.copytree(mirror, bad)
    lock = bad / "pyodide-lock.json"
    lock.chmod(0o644)
    data = json.loads(lock.read_text())
    data["packages"]["numpy"]["sha256"] = "0" * 64
    lock.write_text(json.dumps(data))
    with pytest.raises(AssetError, match="pyodide-lock.json"):
        assets.fetch_pyodide(bad, quiet)


def test_no_source_for_ort_is_a_clear_error(offline: Path) -> None:
    with pytest.raises(AssetError, match="npm registry"):
        assets.fetch_ort(quiet)


def test_cdn_source_is_verified_and_cached(mirror: Path, offline: Path, tmp_path: Path) -> None:
    """The CDN path, with a local server standing in for the CDN: files arrive, are checked, land in the cache."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(mirror))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assets.PYODIDE_CDN = f"http://127.0.0.1:{server.server_address[1]}"  # restored by monkeypatch in `offline`
        # The stand-in holds the runtime and numpy but not Pyodide's markupsafe build, and PyPI is cut off.
        with pytest.raises(AssetError, match=r"markupsafe-2\.1\.5.*PyPI fallback failed"):
            assets.fetch_pyodide(None, quiet)
    finally:
        server.shutdown()
        server.server_close()
    cached = offline / "pyodide-0.27.7"
    official = json.loads((mirror / "pyodide-lock.json").read_text())
    numpy_file = official["packages"]["numpy"]["file_name"]
    assert _sha256(cached / numpy_file) == official["packages"]["numpy"]["sha256"]
    for name in assets.PYODIDE_RUNTIME:
        assert (cached / name).read_bytes() == (mirror / name).read_bytes()
