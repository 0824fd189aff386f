"""``forge catalog --serve``: the target root over HTTP on loopback, for a look at its catalog page."""

from __future__ import annotations

import functools
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class names it)
        pass


def catalog_server(root: Path, port: int = 0) -> ThreadingHTTPServer:
    """A server of the files under ``root`` on 127.0.0.1 (``port`` 0: a free one); not started."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    return ThreadingHTTPServer(("127.0.0.1", port), handler)
