"""The one output mechanism for what the tool says while it works: build log lines and progress messages go
through the ``lfmvl_site`` logger; the CLI's ``-v``/``-q`` set its level. Progress bars (tqdm, huggingface_hub)
are drawn only on a terminal, so a log file or CI output gets clean lines."""

from __future__ import annotations

import logging
import sys

LOGGER = "lfmvl_site"
_progress = logging.getLogger(f"{LOGGER}.progress")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted (test runners swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


class _Formatter(logging.Formatter):
    """Progress lines as they are; the steps inside them (build log lines) indented under them; warnings say so."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {text}"
        if record.name == _progress.name:
            return text
        return f"  {text}" if record.levelno == logging.INFO else f"  {record.name}: {text}"


def setup(verbosity: int = 0) -> None:
    """``-1``: warnings and errors only; ``0``: progress and build steps; ``1``+: debug detail too."""
    logger = logging.getLogger(LOGGER)
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(_Formatter())
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG)
    logger.propagate = False


def progress(message: str) -> None:
    """One progress line (shown unless quiet)."""
    _progress.info(message)


def bars_enabled() -> bool:
    """Whether progress bars may be drawn: progress is shown and stderr is a terminal."""
    isatty = getattr(sys.stderr, "isatty", None)
    return _progress.isEnabledFor(logging.INFO) and bool(isatty and isatty())
