"""A real HTTP source server for loopback: serves a directory or generated files, with optional auth,
throttling and injected faults, and counts what it saw: requests per path, and the most requests in
flight at once (received and not yet answered).

Used by the tests, the benchmarks and the OISST replica (``forge replica``).
"""

from __future__ import annotations

import base64
import threading
import time
from collections import Counter
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

Generator = Callable[[str], "bytes | Path | None"]


class SourceServer:
    """``with SourceServer(root=dir) as srv: srv.url`` serves ``dir`` on 127.0.0.1 on a free port.

    Parameters
    ----------
    root, generate
        Serve files under ``root``, or ask ``generate(path)`` for bytes or a file path (None means 404).
    basic_auth
        ``(user, password)`` required on every request (401 otherwise).
    required_query
        Query parameters every request must carry with these values (403 otherwise).
    faults
        Path -> list of faults to inject on its first requests, in order: ``503``, ``429`` (with
        ``Retry-After: 0``), ``500``, ``reset`` (drop the connection) or ``truncate`` (half the body).
    delay, bytes_per_second
        Throttling: a pause before each response, and a cap on each response's rate.
    redirect
        ``redirect(path, query) -> location or None``: answer a request with a 302 to ``location``
        (``query`` is the raw query string, as the client sent it).

    Every request is recorded in ``seen`` (method, path, raw query, headers), so a test can check what
    reached this origin.
    """

    def __init__(
        self,
        root: Path | None = None,
        generate: Generator | None = None,
        *,
        basic_auth: tuple[str, str] | None = None,
        required_query: dict[str, str] | None = None,
        faults: dict[str, list[str]] | None = None,
        delay: float = 0.0,
        bytes_per_second: float | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        redirect: Callable[[str, str], str | None] | None = None,
    ):
        if (root is None) == (generate is None):
            raise ValueError("give exactly one of root or generate")
        self.root, self.generate = root, generate
        self.basic_auth, self.required_query = basic_auth, required_query or {}
        self.faults = {k: list(v) for k, v in (faults or {}).items()}
        self.delay, self.bytes_per_second = delay, bytes_per_second
        self.redirect = redirect
        self.seen: list[tuple[str, str, str, dict[str, str]]] = []
        self.requests: Counter[str] = Counter()
        self.methods: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.active = 0
        self.max_active = 0
        self.connections = 0  # TCP connections accepted: fewer than requests when clients keep them alive
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), self._handler())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> SourceServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="source-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> SourceServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.seen.clear()
            self.methods.clear()
            self.statuses.clear()
            self.max_active = 0
            self.connections = 0

    # -- request handling ------------------------------------------------------------------------
    def _resolve(self, path: str) -> bytes | None:
        if self.generate is not None:
            found = self.generate(path)
        else:
            candidate = (self.root / path.lstrip("/")).resolve()
            found = candidate if candidate.is_file() and self.root.resolve() in candidate.parents else None
        if isinstance(found, Path):
            return found.read_bytes()
        return found

    def _next_fault(self, path: str) -> str | None:
        with self._lock:
            queue = self.faults.get(path)
            return queue.pop(0) if queue else None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; with Nagle on, a kept-alive connection waits for the
            # client's delayed ACK (40 ms) before each body, as real servers (TCP_NODELAY) do not.
            disable_nagle_algorithm = True

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def setup(self) -> None:
                super().setup()
                with server._lock:
                    server.connections += 1

            def _answering(self) -> None:
                """The request stops counting as in flight once its answer starts: the client cannot act
                on the answer (and, say, release a concurrency slot) before this point, so counting up to
                here never sees two requests overlap that the client kept apart."""
                if self._in_flight:
                    self._in_flight = False
                    with server._lock:
                        server.active -= 1

            def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
                self._answering()
                with server._lock:
                    server.statuses[status] += 1
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":  # a body after a HEAD answer would be read as the next answer
                    self.wfile.write(body)

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                path = unquote(parts.path)
                with server._lock:
                    server.requests[path] += 1
                    server.seen.append((self.command, path, parts.query, dict(self.headers.items())))
                    server.methods[self.command] += 1
                    server.active += 1
                    server.max_active = max(server.max_active, server.active)
                self._in_flight = True
                try:
                    self._serve(path, parts.query)
                finally:
                    self._answering()

            def _serve(self, path: str, raw_query: str) -> None:
                query = parse_qs(raw_query)
                if server.delay:
                    time.sleep(server.delay)
                if server.basic_auth and not self._authorized():
                    return self._send(401, b"unauthorized", {"WWW-Authenticate": 'Basic realm="source"'})
                for k, v in server.required_query.items():
                    if query.get(k) != [v]:
                        return self._send(403, b"forbidden")
                location = server.redirect(path, raw_query) if server.redirect else None
                if location:
                    return self._send(302, b"", {"Location": location})
                fault = server._next_fault(path)
                if fault in ("503", "500"):
                    return self._send(int(fault), b"unavailable")
                if fault == "429":
                    return self._send(429, b"slow down", {"Retry-After": "0"})
                if fault == "reset":
                    self._answering()
                    self.close_connection = True
                    return None
                body = server._resolve(path)
                if body is None:
                    return self._send(404, b"not found")
                status, headers = HTTPStatus.OK, {}
                span = _byte_range(self.headers.get("Range"), len(body))
                if span is not None:  # readers of references fetch just the bytes of a chunk
                    start, stop = span
                    status, headers = (
                        HTTPStatus.PARTIAL_CONTENT,
                        {"Content-Range": f"bytes {start}-{stop - 1}/{len(body)}"},
                    )
                    body = body[start:stop]
                self._answering()
                with server._lock:
                    server.statuses[status] += 1
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Accept-Ranges", "bytes")
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "HEAD":
                    return None
                if fault == "truncate":
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                    return None
                self._write_throttled(body)
                return None

            def _write_throttled(self, body: bytes) -> None:
                if not server.bytes_per_second:
                    self.wfile.write(body)
                    return
                step = max(1, int(server.bytes_per_second / 20))
                for i in range(0, len(body), step):
                    self.wfile.write(body[i : i + step])
                    time.sleep(step / server.bytes_per_second)

            def _authorized(self) -> bool:
                header = self.headers.get("Authorization", "")
                user, password = server.basic_auth
                expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
                return header == expected

        return Handler


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``[start, stop)`` of a single-range ``Range: bytes=a-b`` (or ``a-``, ``-n``) header; None for no
    header or one this server answers in full (several ranges, or not satisfiable)."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[len("bytes=") :].strip().partition("-")
    try:
        if not first:
            start, stop = max(size - int(last), 0), size
        else:
            start, stop = int(first), min(int(last) + 1, size) if last else size
    except ValueError:
        return None
    return (start, stop) if start < stop else None
