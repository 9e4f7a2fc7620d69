"""User-facing errors. Each message names the problem and the next step.

The CLI turns any :class:`LfmvlError` into one clean line on stderr and a
non-zero exit code, never a traceback. ``click`` is imported lazily so the
runtime (which raises these too, inside Pyodide) does not need it.
"""

from __future__ import annotations

import errno


class LfmvlError(Exception):
    """Base class for errors a user can act on."""

    exit_code = 1


class ModelFileError(LfmvlError, FileNotFoundError):
    """A model file is missing, truncated or does not match its hash."""


class ContractError(LfmvlError, ValueError):
    """A graph's inputs/outputs do not match what the runtime drives."""


class InputError(LfmvlError, ValueError):
    """Bad user input: an unreadable image, an empty prompt, a bad option."""


class BuildError(LfmvlError, RuntimeError):
    """The site or model build could not finish; dist/ was left untouched."""


class AssetError(LfmvlError, RuntimeError):
    """A browser asset (Pyodide, onnxruntime-web) could not be fetched or verified."""


class Cancelled(LfmvlError):
    """Generation was cancelled by the caller (e.g. the prompt changed)."""


# What to do about an operating-system error, by errno (the message names the file and the problem).
_OS_FIXES = {
    errno.ENOSPC: "free some disk space and run again",
    errno.EDQUOT: "free some space within your disk quota and run again",
    errno.EACCES: "check its permissions, or choose a path you can write to",
    errno.EPERM: "check its permissions, or choose a path you can write to",
    errno.EROFS: "choose a path on a writable file system",
    errno.ENOENT: "check the path",
    errno.ELOOP: "a symbolic link points back to itself; fix or remove the link",
    errno.EISDIR: "a folder is where a file was expected; pass a file",
    errno.ENOTDIR: "part of the path is a file, not a folder; check the path",
    errno.ENAMETOOLONG: "choose a shorter path",
    errno.EMFILE: "raise the open-file limit (ulimit -n) and run again",
}

# Errors of the machine's storage rather than of a network or an input: report them as such.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def describe_os_error(exc: OSError) -> str:
    """One line naming the file(s), the problem and the fix, e.g. ``dist/x: No space left on device; free ...``."""
    problem = exc.strerror or str(exc) or type(exc).__name__
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    where = f"{' -> '.join(names)}: " if names else ""
    fix = _OS_FIXES.get(exc.errno or -1, "check the path and try again")
    return f"{where}{problem}; {fix}."
