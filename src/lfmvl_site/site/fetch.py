"""Verified downloads into the user cache: the one place the site build touches the network.

Every file is checked against a digest known in advance (pinned in code or taken
from a pinned lock) before it is used or cached; a download is written to a
``.incomplete`` file and renamed only once complete and verified.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import log
from ..errors import STORAGE_ERRNOS, AssetError, describe_os_error

Progress = Callable[[str], None]

USER_AGENT = "lfmvl-site (+https://github.com/)"
CONNECT_TIMEOUT_S = 20.0


def stderr_progress(message: str) -> None:
    """Default progress sink: one line through the tool's log (lfmvl_site/log.py), on stderr."""
    log.progress(message)


def quiet(_: str) -> None:
    """Progress sink that drops everything."""


def sri_matches(path: Path, integrity: str) -> bool:
    """Check a file against an npm/SRI ``sha512-<base64>`` integrity string."""
    algo, _, b64 = integrity.partition("-")
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return base64.b64encode(h.digest()).decode() == b64


class CacheWriteError(AssetError):
    """The download cache could not be written (disk full, read-only): no other source would help."""


class FetchFailed(Exception):
    """One source did not answer or gave the wrong bytes (internal; callers try the next source)."""


def get_json(url: str, *, accept: str = "application/json", timeout: float = CONNECT_TIMEOUT_S) -> Any:
    """Small GET of registry metadata, parsed."""
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": accept})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise FetchFailed(f"{url}: {_reason(exc)}") from exc


def download(url: str, dest: Path, *, check: Callable[[Path], bool], progress: Progress, label: str) -> Path:
    """Stream ``url`` to ``dest`` (via ``dest.incomplete``); keep it only if ``check`` passes."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".incomplete")
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(req, timeout=CONNECT_TIMEOUT_S) as resp, open(part, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0)
            done, last = 0, time.monotonic()
            for block in iter(lambda: resp.read(1 << 20), b""):
                out.write(block)
                done += len(block)
                now = time.monotonic()
                if now - last > 2.0:
                    last = now
                    pct = f" {100 * done / total:.0f}%" if total else ""
                    progress(f"  {label}: {done / 1e6:.1f} MB{pct}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        part.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, urllib.error.URLError) and exc.errno in STORAGE_ERRNOS:
            raise CacheWriteError(f"Could not write the download cache {dest.parent}: {describe_os_error(exc)}") from None
        raise FetchFailed(f"{url}: {_reason(exc)}") from exc
    if not check(part):
        part.unlink(missing_ok=True)
        raise FetchFailed(f"{url}: downloaded bytes do not match the pinned digest")
    os.replace(part, dest)
    return dest


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__
