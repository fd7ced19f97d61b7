"""Logging set-up: readable lines on stderr, optionally a copy in a file."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)-7s %(message)s"
DATEFMT = "%H:%M:%S"


class _StderrHandler(logging.StreamHandler):
    """A stream handler that always writes to the *current* ``sys.stderr``.

    (Test runners and notebooks swap ``sys.stderr``; a handler holding the
    old object would write to a closed stream.)
    """

    @property  # type: ignore[override]
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # the base class assigns it; ignore
        pass


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Send lesionseg's log lines to stderr (INFO by default, DEBUG with -v)."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    root = logging.getLogger("lesionseg")
    root.setLevel(level)
    if not any(getattr(h, "_lesionseg", False) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(FORMAT, DATEFMT))
        handler._lesionseg = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.propagate = False


def add_file_log(path: str | Path) -> logging.Handler:
    """Also write lesionseg's log to ``path`` (returns the handler to remove later)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.getLogger("lesionseg").addHandler(handler)
    return handler
