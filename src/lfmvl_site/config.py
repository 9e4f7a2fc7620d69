"""Settings from the environment: every ``LFMVL_*`` variable is read here and nowhere else.

| variable | meaning |
| --- | --- |
| ``LFMVL_CACHE_DIR`` | where fetched browser assets are kept between builds (default: the user cache dir) |
| ``LFMVL_PYODIDE_DIR`` | a local mirror of the official Pyodide files, tried before the CDN |
| ``LFMVL_CHROMIUM`` | the Chromium binary benchmarks and browser tests drive (default /usr/bin/chromium) |

huggingface_hub reads its own variables (``HF_TOKEN``, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``...).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def cache_dir() -> Path:
    """Where fetched assets are kept between builds: ``LFMVL_CACHE_DIR``, else the platform's user cache."""
    env = os.environ.get("LFMVL_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "lfmvl-site"
    if os.name == "nt":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "lfmvl-site" / "Cache"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "lfmvl-site"


def pyodide_dir_from_env() -> Path | None:
    """A local Pyodide mirror named by ``LFMVL_PYODIDE_DIR``, if any."""
    env = os.environ.get("LFMVL_PYODIDE_DIR")
    return Path(env).expanduser() if env else None


def chromium_path() -> str:
    """The Chromium binary to drive (Debian's by default)."""
    return os.environ.get("LFMVL_CHROMIUM") or "/usr/bin/chromium"
