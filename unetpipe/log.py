"""Logging set-up shared by the command line and the workflow's rule scripts."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path


def setup_logging(log_file: str | Path | None = None, level: int = logging.INFO) -> None:
    """Log to stderr and, when given, to ``log_file`` (created with its parent folders)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


@contextlib.contextmanager
def logged(log_file: str | Path, what: str) -> Iterator[None]:
    """Log to ``log_file`` (and stderr) while a rule's work runs; an exception is logged there
    with its traceback before it propagates, so that a failed job's log says why."""
    setup_logging(log_file)
    try:
        yield
    except Exception:
        logging.getLogger("unetpipe").exception("%s failed", what)
        raise
