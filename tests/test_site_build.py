"""``lfmvl-site build``: the dist/ tree, its manifest, and the all-or-nothing replacement."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from support import pyodide_mirror

from lfmvl_site.cli import main
from lfmvl_site.site.output import MARKER


def run_build(out: Path, *extra: str) -> object:
    args = ["build", "--synthetic", "--out", str(out), *extra]
    mirror = pyodide_mirror()
    if mirror is not None:
        args += ["--pyodide-dir", str(mirror)]
    return CliRunner().invoke(main, args)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("b") / "dist"
    result = run_build(out)
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    return out, result


def test_tree_and_serve_hint(dist: tuple[Path, object]) -> None:
    out, result = dist
    assert result.stdout.strip().splitlines()[-1] == f"lfmvl-site serve {out}"  # type: ignore[attr-defined]
    for rel in ["index.html", "app.js", "worker.js", "style.css", "manifest.json", "model/manifest.json",
                "pyodide/pyodide.mjs", "pyodide/pyodide.asm.wasm", "pyodide/python_stdlib.zip",
                "pyodide/pyodide-lock.json", "py/lfmvl_site-0.1.0-py3-none-any.whl"]:
        assert (out / rel).is_file(), rel
    assert sorted(p.name for p in (out / "ort").iterdir()) == [
        "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm", "ort.webgpu.min.mjs"]
    assert not list(out.parent.glob(".dist.*"))  # no staging left behind


def test_manifest_lists_every_file_with_size_and_sha256(dist: tuple[Path, object]) -> None:
    out, _ = dist
    manifest = json.loads((out / "manifest.json").read_text())
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.json", MARKER}
    site_files = {f["path"] for f in manifest["files"]}
    host_files = {f["path"] for f in manifest["deploy_files"]}
    assert site_files | host_files == on_disk and not site_files & host_files
    assert {"_headers", "netlify.toml", "vercel.json", ".htaccess", "deploy/hf-space/Dockerfile"} <= host_files
    for f in manifest["files"] + manifest["deploy_files"]:
        data = (out / f["path"]).read_bytes()
        assert f["size"] == len(data) and f["sha256"] == hashlib.sha256(data).hexdigest()
    assert sum(manifest["parts"].values()) == manifest["total_bytes"] == sum(f["size"] for f in manifest["files"])
    assert set(manifest["parts"]) == {"page", "pyodide", "ort", "runtime", "model"}


def test_page_settings_point_at_shipped_files(dist: tuple[Path, object]) -> None:
    out, _ = dist
    html = (out / "index.html").read_text()
    m = re.search(r'<script type="application/json" id="settings">(.*?)</script>', html, re.S)
    assert m
    settings = json.loads(m.group(1))
    assert (out / settings["runtime_wheel"]).is_file()
    assert (out / settings["model_url"] / "manifest.json").is_file()
    lock = json.loads((out / "pyodide" / "pyodide-lock.json").read_text())
    for name in settings["pyodide_packages"]:
        assert name in lock["packages"]
    for entry in lock["packages"].values():  # the lock's hashes are the shipped files' hashes
        path = out / "pyodide" / entry["file_name"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]


@pytest.mark.parametrize(("error", "code", "said"), [(RuntimeError("disk on fire"), 1, "disk on fire"),
                                                    (KeyboardInterrupt(), 130, "Interrupted")])
def test_failed_or_interrupted_build_leaves_previous_dist_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException, code: int, said: str
) -> None:
    out = tmp_path / "dist"
    out.mkdir()
    (out / MARKER).write_text('{"generator": "lfmvl-site", "pid": 1, "state": "built"}')
    (out / "index.html").write_text("old page")

    def boom(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr("lfmvl_site.model.build.build_model", boom)
    result = run_build(out)
    assert result.exit_code == code  # type: ignore[attr-defined]
    assert said in result.output  # type: ignore[attr-defined]
    assert (out / "index.html").read_text() == "old page"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist"]  # staging removed


def test_refuses_to_replace_a_directory_that_is_not_a_site(tmp_path: Path) -> None:
    out = tmp_path / "important"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    result = run_build(out)
    assert result.exit_code != 0  # type: ignore[attr-defined]
    assert "not a site built by lfmvl-site" in result.output  # type: ignore[attr-defined]
    assert (out / "thesis.tex").read_text() == "years of work"
