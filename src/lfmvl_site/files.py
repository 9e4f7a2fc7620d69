"""File helpers every stage shares: one way to hash a file and one way to swap a finished folder into place."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def file_digest(path: Path, make: str | Callable[[], Any] = "sha256") -> str:
    """Hex digest of ``path``'s bytes (``make``: an algorithm name or a function returning a primed hash)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, make).hexdigest()


def sha256_file(path: Path) -> str:
    return file_digest(path, "sha256")


def replace_dir(staging: Path, dest: Path, old: Path) -> bool:
    """Put ``staging`` at ``dest`` with renames only: an existing ``dest`` moves to ``old`` first and comes back if
    the second rename fails. Returns whether ``old`` now holds the previous ``dest`` (for the caller to remove)."""
    moved = dest.exists()
    if moved:
        os.replace(dest, old)
    try:
        os.replace(staging, dest)
    except BaseException:
        if moved:
            os.replace(old, dest)
        raise
    return moved
