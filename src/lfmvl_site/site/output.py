"""Who owns ``--out``: the build marker, the refusal rules, stale-staging cleanup and signal-safe staging.

``build`` replaces a directory only when it holds :data:`MARKER`, a file a build wrote itself (a
``manifest.json`` proves nothing: web apps and browser extensions have one). Staging directories
(``.<out>.building-*``) carry the same marker with ``state: building`` and the builder's pid; old
copies moved aside during the swap are named ``.<out>.old-<pid>-*``. A later build removes those only
when they carry the marker, were made on this host, and that pid is no longer running.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from .. import __version__
from ..errors import BuildError
from ..files import replace_dir

MARKER = ".lfmvl-site-build.json"
GENERATOR = "lfmvl-site"
_OLD_PID = re.compile(r"\.old-(\d+)(?:-|$)")


class Terminated(KeyboardInterrupt):
    """A build ended by SIGTERM/SIGHUP: handled like Ctrl-C (staging removed, exit 130)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def write_marker(directory: Path, state: str) -> None:
    """Mark ``directory`` as this process's build (``state``: ``building`` or ``built``)."""
    data = {"generator": GENERATOR, "version": __version__, "state": state, "pid": os.getpid(),
            "host": socket.gethostname(), "time": int(time.time())}
    (directory / MARKER).write_text(json.dumps(data) + "\n", encoding="utf-8")


def read_marker(directory: Path) -> dict[str, Any] | None:
    """The marker's fields when ``directory`` holds one written by a build; else None."""
    try:
        data = json.loads((directory / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("generator") != GENERATOR or not isinstance(data.get("pid"), int):
        return None
    return data


def _inside(a: Path, b: Path) -> bool:
    """``a`` is ``b`` or lies under it."""
    return a == b or b in a.parents


def check_out(out: Path, protected: Iterable[Path] = ()) -> None:
    """Raise BuildError unless ``out`` may be replaced: absent, empty, or a build's own marked output.

    ``out`` must be resolved. Never inside another build (``dist/model``), never overlapping a model
    source in ``protected``.
    """
    for src in protected:
        src = Path(src).resolve()
        if _inside(out, src) or _inside(src, out):
            raise BuildError(f"--out {out} overlaps the model source {src}; building there would delete the model. "
                             "Pick an --out outside the model folder.")
    for parent in out.parents:
        if read_marker(parent) is not None:
            raise BuildError(f"--out {out} is inside the lfmvl-site build {parent}; the next build of {parent} "
                             f"would delete it. Pick an --out outside {parent}.")
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise BuildError(f"--out {out} exists and is not a directory; pick another --out or move it away.")
    if read_marker(out) is None and any(out.iterdir()):
        raise BuildError(f"--out {out} is not a site built by lfmvl-site (no {MARKER} in it), so it was left "
                         "untouched; pick another --out, or empty that folder yourself.")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    except OSError:
        return True
    return True


def _rmtree(path: Path) -> None:
    """Remove a tree of ours, making read-only directories writable on the way."""

    def retry(func: Callable[..., Any], p: str, _exc: Any) -> None:
        parent = os.path.dirname(p)
        os.chmod(parent, os.stat(parent).st_mode | 0o700)
        if os.path.isdir(p) and not os.path.islink(p):
            os.chmod(p, os.stat(p).st_mode | 0o700)
        func(p)

    shutil.rmtree(path, onerror=retry)


def remove_tree(path: Path, say: Callable[[str], None], what: str) -> bool:
    """Remove ``path``; on failure say so with the fix (never silently left)."""
    try:
        _rmtree(path)
    except OSError as exc:
        if not path.exists():
            return True
        reason = exc.strerror or str(exc)
        say(f"Warning: could not remove {what} {path} ({reason}); remove it yourself "
            f"(chmod -R u+w '{path}' && rm -rf '{path}').")
        return False
    return True


def sweep_stale(out: Path, say: Callable[[str], None]) -> None:
    """Remove ``.<out>.building-*`` / ``.<out>.old-*`` left by builds that are provably ours and dead."""
    host = socket.gethostname()
    try:
        candidates = sorted(out.parent.glob(f".{out.name}.building-*")) + sorted(out.parent.glob(f".{out.name}.old-*"))
    except OSError:
        return
    for path in candidates:
        if path.is_symlink() or not path.is_dir():
            continue
        marker = read_marker(path)
        if marker is None or marker.get("host") != host:
            continue  # not provably ours: leave it
        if ".building-" in path.name:
            pid = marker["pid"]
        else:
            m = _OLD_PID.search(path.name)
            if m is None:
                continue
            pid = int(m.group(1))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        if remove_tree(path, say, "the stale build folder"):
            say(f"Removed {path}, left by an earlier build (pid {pid}) that is no longer running.")


@contextlib.contextmanager
def signals_end_build() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Terminated` (SIGINT already raises
    KeyboardInterrupt), so the caller's cleanup runs; a second signal during cleanup is ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        if fired:
            return
        fired.append(signum)
        raise Terminated(signum)

    wanted = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {s: signal.signal(s, handler) for s in wanted}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def old_name(out: Path) -> Path:
    """A free ``.<out>.old-<pid>-<n>`` sibling to move the previous build to."""
    for n in range(1000):
        cand = out.with_name(f".{out.name}.old-{os.getpid()}-{n}")
        if not cand.exists():
            return cand
    raise BuildError(f"Too many .{out.name}.old-* folders beside {out}; remove them and build again.")


def swap_into_place(staging: Path, out: Path, say: Callable[[str], None]) -> None:
    """Replace ``out`` by ``staging`` with renames only; the old build survives until the new one is in place."""
    check_out(out)  # again: the folder may have changed during the build
    write_marker(staging, "built")
    old = old_name(out)
    moved = replace_dir(staging, out, old)
    os.chmod(out, 0o755)
    if moved:
        remove_tree(old, say, "the previous build")


__all__ = ["MARKER", "Terminated", "check_out", "read_marker", "remove_tree", "signals_end_build", "swap_into_place",
           "sweep_stale", "write_marker"]
