"""User-facing errors. Each message names the problem and the next step.

The CLI turns any :class:`LfmvlError` into one clean line on stderr and a
non-zero exit code, never a traceback. ``click`` is imported lazily so the
runtime (which raises these too, inside Pyodide) does not need it.
"""

from __future__ import annotations


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
