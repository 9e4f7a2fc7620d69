"""What the CLI prints while it works: one mechanism (lfmvl_site/log.py) for progress and build log lines,
clean lines when stderr is not a terminal, and -q / -v."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support import pyodide_mirror

EXE = Path(sys.executable).with_name("lfmvl-site")


def _build(out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    mirror = pyodide_mirror()
    args = [str(EXE), "build", *flags, "--synthetic", "--out", str(out), *(["--pyodide-dir", str(mirror)] if mirror else [])]
    return subprocess.run(args, capture_output=True, text=True, timeout=600)


def test_build_progress_and_model_log_lines_are_clean_lines_and_quiet_hides_them(tmp_path: Path) -> None:
    normal = _build(tmp_path / "dist")
    assert normal.returncode == 0, normal.stderr[-2000:]
    err = normal.stderr
    assert "[4/5] model" in err and "[5/5] page" in err
    # The model build's own steps (logging in model/build.py), indented under the step they belong to.
    assert "  onnx/decoder_q4.onnx: making from onnx/decoder.onnx" in err.splitlines()
    assert "\r" not in err and "\x1b[" not in err  # no progress bars or cursor codes outside a terminal

    quiet = _build(tmp_path / "dist", "-q")
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert quiet.stderr.strip() == "", quiet.stderr
    assert "lfmvl-site serve" in quiet.stdout  # the result is still said, on stdout

    verbose = _build(tmp_path / "dist", "-v")
    assert verbose.returncode == 0
    assert "  onnx/decoder_q4.onnx: making from onnx/decoder.onnx" in verbose.stderr.splitlines()
