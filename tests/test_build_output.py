"""``lfmvl-site build`` owns its output: refusals, signals that end a build, stale staging, undeletable old dists."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from support import REPO, pyodide_mirror

from lfmvl_site.cli import main
from lfmvl_site.site.output import MARKER


def build_args(out: Path, *extra: str) -> list[str]:
    args = ["build", "--synthetic", "--out", str(out), *extra]
    mirror = pyodide_mirror()
    if mirror is not None:
        args += ["--pyodide-dir", str(mirror)]
    return args


def run_build(out: Path, *extra: str) -> object:
    return CliRunner().invoke(main, build_args(out, *extra))


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("own") / "dist"
    result = run_build(out)
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    return out


def test_a_build_marks_its_output(built: Path) -> None:
    marker = json.loads((built / MARKER).read_text())
    assert marker["generator"] == "lfmvl-site" and marker["state"] == "built"
    listed = {f["path"] for f in json.loads((built / "manifest.json").read_text())["files"]}
    assert MARKER not in listed  # not part of the site the service worker caches


def test_folder_with_a_foreign_manifest_survives(tmp_path: Path) -> None:
    ext = tmp_path / "my-extension"
    ext.mkdir()
    (ext / "manifest.json").write_text(json.dumps({"manifest_version": 3, "name": "mine", "version": "1.0"}))
    (ext / "background.js").write_text("chrome.runtime.onInstalled.addListener(() => {});\n")
    before = tree(ext)
    result = run_build(ext)
    assert result.exit_code != 0  # type: ignore[attr-defined]
    lines = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]  # type: ignore[attr-defined]
    assert len(lines) == 1 and str(ext) in lines[0] and "pick another --out" in lines[0]
    assert "Traceback" not in result.output  # type: ignore[attr-defined]
    assert tree(ext) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my-extension"]  # no staging made


def test_refuses_a_folder_inside_another_build(built: Path) -> None:
    before = tree(built)
    for inner in (built / "model", built / "new-sub"):
        result = run_build(inner)
        assert result.exit_code != 0  # type: ignore[attr-defined]
        assert f"inside the lfmvl-site build {built}" in result.output  # type: ignore[attr-defined]
    assert tree(built) == before


def test_refuses_to_build_over_or_around_the_model_source(tmp_path: Path) -> None:
    model = tmp_path / "work" / "model"
    result = CliRunner().invoke(main, ["synth-model", str(model)])
    assert result.exit_code == 0, result.output
    before = tree(tmp_path)
    for out in (model, tmp_path / "work", model / "site"):
        args = ["build", "--model-dir", str(model), "--out", str(out)]
        mirror = pyodide_mirror()
        if mirror is not None:
            args += ["--pyodide-dir", str(mirror)]
        result = CliRunner().invoke(main, args)
        assert result.exit_code != 0, out
        assert "overlaps the model source" in result.output and "Traceback" not in result.output
    assert tree(tmp_path) == before


def test_refuses_a_file_as_out(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    out.write_text("a file")
    result = run_build(out)
    assert result.exit_code != 0 and str(out) in result.output  # type: ignore[attr-defined]
    assert out.read_text() == "a file"
    real = tmp_path / "real"
    real.mkdir()
    (real / "keep.txt").write_text("keep")
    link = tmp_path / "link"
    link.symlink_to(real)  # a link to a folder is not replaced either (the rename would drop the link)
    result = run_build(link)
    assert result.exit_code != 0 and "Traceback" not in result.output  # type: ignore[attr-defined]
    assert (real / "keep.txt").read_text() == "keep" and link.is_symlink()


def test_replaces_its_own_build_and_an_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    out.mkdir()
    assert run_build(out).exit_code == 0  # type: ignore[attr-defined]
    (out / "stale.txt").write_text("from the old build")
    result = run_build(out)
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert not (out / "stale.txt").exists() and (out / "index.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist"]


def test_removes_stale_staging_it_can_prove_dead_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    host = socket.gethostname()
    gone = dead_pid()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        def staged(name: str, pid: int, host: str = host, marker: bool = True) -> Path:
            d = tmp_path / name
            (d / "pyodide").mkdir(parents=True)
            (d / "pyodide" / "big.wasm").write_bytes(b"\0" * 1000)
            if marker:
                (d / MARKER).write_text(json.dumps({"generator": "lfmvl-site", "state": "building", "pid": pid,
                                                    "host": host}))
            return d

        dead_staging = staged(".dist.building-dead1", gone)
        dead_old = staged(f".dist.old-{gone}-0", 1)  # an old dist: its pid is the renaming build's, in the name
        live = staged(".dist.building-live1", alive.pid)
        foreign = staged(".dist.building-foreign", gone, marker=False)
        elsewhere = staged(".dist.building-host2", gone, host=host + "-other")
        result = run_build(out)
        assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
        for d in (dead_staging, dead_old):
            assert not d.exists()
            assert f"Removed {d}" in result.output and "no longer running" in result.output  # type: ignore[attr-defined]
        for d in (live, foreign, elsewhere):
            assert (d / "pyodide" / "big.wasm").is_file(), d.name
    finally:
        alive.kill()
        alive.wait()


def test_old_dist_that_cannot_be_removed_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "dist"
    assert run_build(out).exit_code == 0  # type: ignore[attr-defined]
    (out / "model").chmod(0o555)  # read-only; root ignores the bit, so the refusal is forced below as well

    def refuse(path: Path) -> None:
        raise PermissionError(13, "Read-only file system", str(path))

    monkeypatch.setattr("lfmvl_site.site.output._rmtree", refuse)
    result = run_build(out)
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".dist.old-")]
    assert len(left) == 1
    assert f"could not remove the previous build {left[0]}" in result.output  # type: ignore[attr-defined]
    assert "rm -rf" in result.output  # type: ignore[attr-defined]
    monkeypatch.undo()
    result = run_build(out)  # the next build, in another process, would sweep it; this one is still "alive"
    assert result.exit_code == 0  # type: ignore[attr-defined]


SLOW_BUILD = """
import sys, time
from pathlib import Path
import lfmvl_site.model.build as mb
ready = Path(sys.argv[1])
def slow(options, dest, progress=True):
    Path(dest).mkdir(parents=True)
    (Path(dest) / "half-written.onnx").write_bytes(b"\\0" * 100000)
    ready.write_text("ready")
    time.sleep(120)
mb.build_model = slow
from lfmvl_site.cli import main
sys.argv = ["lfmvl-site", *sys.argv[2:]]
main()
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_mid_build_removes_staging_and_keeps_the_old_dist(built: Path, tmp_path: Path,
                                                                    sig: signal.Signals) -> None:
    out = tmp_path / "dist"
    assert run_build(out).exit_code == 0  # type: ignore[attr-defined]
    before = tree(out)
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_BUILD, str(ready), *build_args(out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert [p.name for p in tmp_path.glob(".dist.building-*")]  # mid-build: staging exists
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Interrupted." in err
    if sig != signal.SIGINT:
        assert f"Stopped by {sig.name}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist", "ready"]
    assert tree(out) == before
