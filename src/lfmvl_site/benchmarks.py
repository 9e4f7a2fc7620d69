"""Finds the benchmark code, which lives in a source checkout's ``benchmarks/`` and is not installed with the package.

The product (build, serve, caption) never imports it; ``lfmvl-site bench`` loads ``benchmarks/cpu_bench.py`` from
the checkout this package was installed from (``pip install -e .``) or from the current directory or a parent.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

from .errors import InputError

ENTRY = Path("benchmarks") / "cpu_bench.py"
CHECKOUT_HINT = ("`lfmvl-site bench` runs from a source checkout (benchmarks/ is not part of the installed package): "
                 "clone the project, `pip install -e '.[test]'` there, and run it from that folder.")


def find_checkout(package_file: Path | None = None, cwd: Path | None = None) -> Path | None:
    """The source checkout holding benchmarks/cpu_bench.py: the package's own (editable install), else cwd or a parent."""
    here = (package_file or Path(__file__)).resolve()
    start = (cwd or Path.cwd()).resolve()
    for root in (here.parents[2], start, *start.parents):
        if (root / ENTRY).is_file() and (root / "pyproject.toml").is_file():
            return root
    return None


def load_cpu_bench(package_file: Path | None = None, cwd: Path | None = None) -> ModuleType:
    """Import benchmarks/cpu_bench.py (its folder goes on sys.path: it imports its neighbour ``measure``)."""
    root = find_checkout(package_file, cwd)
    if root is None:
        raise InputError(CHECKOUT_HINT)
    folder = str(root / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module("cpu_bench")
