"""A real OPeNDAP (DAP2) server for loopback: pydap's netCDF handler over the files of a directory,
as THREDDS or Hyrax serve an archive (``{url}/{path}.nc``, with ``.dds``, ``.das`` and ``.dods``
constraint requests). Counts what it answered, so a test can see that reads are constrained slices.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

DAP_SUFFIXES = (".dods", ".das", ".dds", ".dmr", ".dap", ".html", ".ascii", ".asc", ".ver")


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class OpendapServer:
    """``with OpendapServer(root) as srv: srv.url`` serves the netCDF files under ``root`` over DAP2."""

    def __init__(self, root: Path, host: str = "127.0.0.1"):
        self.root = Path(root).resolve()
        self.requests: Counter[str] = Counter()  # by DAP response: dds, das, dods...
        self._lock = threading.Lock()
        self._httpd = make_server(host, 0, self._app, server_class=_ThreadingServer, handler_class=_Quiet)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def _app(self, environ, start_response):
        from pydap.handlers.netcdf_handler import NetCDFHandler

        name = environ["PATH_INFO"].lstrip("/")
        kind = next((s for s in DAP_SUFFIXES if name.endswith(s)), "")
        with self._lock:
            self.requests[kind.lstrip(".") or "other"] += 1
        path = (self.root / name[: len(name) - len(kind)]).resolve()
        if self.root not in path.parents or not path.is_file():
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        return NetCDFHandler(str(path))(environ, start_response)

    def __enter__(self) -> OpendapServer:
        threading.Thread(target=self._httpd.serve_forever, name="opendap-server", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
