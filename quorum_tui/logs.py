"""Logging, configured once per process: a file under the data directory, the terminal on -v.

Modules log through `logging.getLogger(__name__)`. Where a failure must not stop what is going
on (closing a connection, a best-effort read), `logged` swallows it like contextlib.suppress,
but never silently: the exception goes to the log with its traceback.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import sys
from collections.abc import Iterator
from pathlib import Path

from quorum_tui import paths

LOG_NAME = "quorum.log"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ROOT = "quorum_tui"


def log_path() -> Path:
    return paths.data_dir() / "logs" / LOG_NAME


def configure(verbose: int = 0, terminal: bool = True) -> Path:
    """Send Quorum's log records to `log_path()` (rotated at 5 MB) and, with `verbose` (-v:
    info, -vv: debug) and a `terminal` to write to, to stderr. Calling it again replaces the
    handlers it added, so tests and long sessions never stack them."""
    logger = logging.getLogger(ROOT)
    for handler in [h for h in logger.handlers if getattr(h, "quorum", False)]:
        logger.removeHandler(handler)
        handler.close()
    path = log_path()
    paths.ensure(path.parent)
    to_file = logging.handlers.RotatingFileHandler(path, maxBytes=5 << 20, backupCount=3)
    to_file.setFormatter(logging.Formatter(FORMAT))
    to_file.quorum = True  # type: ignore[attr-defined]
    logger.addHandler(to_file)
    logger.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    if verbose and terminal:
        to_terminal = logging.StreamHandler(sys.stderr)
        to_terminal.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        to_terminal.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
        to_terminal.quorum = True  # type: ignore[attr-defined]
        logger.addHandler(to_terminal)
    logger.propagate = False
    return path


@contextlib.contextmanager
def logged(
    log: logging.Logger, what: str, *kinds: type[Exception], level: int = logging.WARNING
) -> Iterator[None]:
    """Suppress `kinds` (Exception when none are given), logging each with its traceback."""
    caught: tuple[type[Exception], ...] = kinds or (Exception,)
    try:
        yield
    except caught as exc:
        log.log(level, "%s: %s: %s", what, type(exc).__name__, exc, exc_info=True)
