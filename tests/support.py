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


def shared_fixture(*parts: str) -> Path:
    """A real-file fixture under ../shared/fixtures (beside the clone; $LFMVL_FIXTURES overrides). Missing is an error:
    these files are what proves the code on files nobody here wrote."""
    root = Path(os.environ.get("LFMVL_FIXTURES") or REPO.parent / "shared" / "fixtures")
    path = root.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"real-file fixture {path} is missing; clone the project beside ../shared (or set LFMVL_FIXTURES)")
    return path


def real_tokenizer_json(tmp_dir: Path) -> Path:
    """The published LFM2.5-VL-1.6B tokenizer.json, gunzipped into ``tmp_dir`` and checked against its recorded size."""
    import gzip

    out = tmp_dir / "tokenizer.json"
    if not out.exists():
        data = gzip.decompress(shared_fixture("lfm2.5-vl-1.6b", "tokenizer.json.gz").read_bytes())
        assert len(data) == 4_733_040, "the fixture is not the hub file (size differs from its README)"
        out.write_bytes(data)
    return out
