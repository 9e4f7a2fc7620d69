"""`lfmvl-site bench` finds its code in a source checkout and, outside one, says so in one line."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lfmvl_site.benchmarks import CHECKOUT_HINT, find_checkout, load_cpu_bench
from lfmvl_site.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def test_checkout_is_found_from_the_editable_package_and_from_cwd(tmp_path: Path) -> None:
    assert find_checkout() == REPO
    installed = tmp_path / "site-packages" / "lfmvl_site" / "benchmarks.py"  # a wheel install's layout
    assert find_checkout(installed, cwd=REPO / "tests") == REPO
    module = load_cpu_bench()
    assert module.__file__ is not None and Path(module.__file__).resolve() == REPO / "benchmarks" / "cpu_bench.py"
    assert module.SECTIONS == ("preprocess", "loop", "graphopt", "start")


def test_outside_a_checkout_bench_refuses_in_one_line(tmp_path: Path) -> None:
    installed = tmp_path / "site-packages" / "lfmvl_site" / "benchmarks.py"
    elsewhere = tmp_path / "somewhere"
    elsewhere.mkdir()
    assert find_checkout(installed, cwd=elsewhere) is None
    with pytest.raises(InputError, match="source checkout"):
        load_cpu_bench(installed, cwd=elsewhere)
    assert "\n" not in CHECKOUT_HINT


def test_wheel_ships_no_benchmark_code(tmp_path: Path) -> None:
    tree = tmp_path / "tree"  # a copy, so the build's build/ and egg-info stay out of the checkout
    for part in ("src", "web", "benchmarks"):
        shutil.copytree(REPO / part, tree / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tree / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                    str(tree)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("lfmvl_site-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "lfmvl_site/cli.py" in names and "lfmvl_site/site/web/worker.js" in names  # the product is there
    leaked = [n for n in names if n.endswith(("bench.py", "measure.py", "static_decode.py")) or "benchmarks/" in n]
    assert leaked == []
