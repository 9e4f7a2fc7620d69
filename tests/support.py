"""Helpers shared by test modules (importable as ``support``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def pyodide_mirror() -> Path | None:
    """The offline Pyodide mirror: $LFMVL_PYODIDE_DIR, else ../shared/pyodide/0.27.7 beside the clone."""
    env = os.environ.get("LFMVL_PYODIDE_DIR")
    if env:
        return Path(env)
    candidate = REPO.parent / "shared" / "pyodide" / "0.27.7"
    return candidate if candidate.is_dir() else None
