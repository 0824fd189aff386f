"""Tracebacks in what users read: none under an expected failure, at most a screenful under a bug.

An expected failure (:class:`forge.errors.ForgeError`: a 404, a corrupt file, a schema mismatch, an
error in the recipe's code) says what is wrong in its message; Prefect's 70 lines of its own frames
under it only bury that. Any other exception is a bug, whose traceback helps: its last frames are kept.
``FORGE_DEBUG=1`` (``forge run --debug``) keeps every traceback whole. Installed on the handlers of the
processes that run flows and tasks: the flow's, and every Dask worker (flows/runtime/worker_preload).
"""

from __future__ import annotations

import logging
import os
import traceback

from forge.errors import ForgeError

MAX_LINES = 40


class ShortTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or record.exc_info[1] is None or os.environ.get("FORGE_DEBUG"):
            return True
        exc = record.exc_info[1]
        if isinstance(exc, ForgeError):
            record.exc_info, record.exc_text = None, None
            return True
        lines = "".join(traceback.format_exception(*record.exc_info)).rstrip().splitlines()
        if len(lines) > MAX_LINES:
            cut = len(lines) - (MAX_LINES - 2)
            lines = [lines[0], f"  ... {cut - 1} lines left out (FORGE_DEBUG=1 shows them)", *lines[cut:]]
        record.exc_text = "\n".join(lines)
        return True


def install_traceback_filter() -> None:
    """Put the filter on every handler configured in this process (idempotent)."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if not any(isinstance(f, ShortTracebacks) for f in handler.filters):
                handler.addFilter(ShortTracebacks())
