"""Downloading one source to a local file, with the project's single per-request retry policy.

Transient failures (timeouts, connection resets, truncated bodies, 5xx, 429 with Retry-After) are retried
here with exponential backoff and full jitter, each attempt logged. Permanent ones (401, 403, 404 and
other 4xx) fail at once with :class:`PermanentSourceError`. Neither is retried again by Prefect: one
retry budget, not one per layer.

Messages name the source as the caller describes it (the recipe's URL), never a URL this module did not
build: a redirect target appears without its query string, and every form of every secret is scrubbed.
Credentials follow the rules of :mod:`forge.io.access`: they never go to another origin.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import fsspec
import requests

from forge.errors import ForgeError
from forge.io.access import SourceAccess
from forge.io.secrets import scrub, without_query, without_url_secrets

logger = logging.getLogger(__name__)
NO_ACCESS = SourceAccess()


class _WithoutUrlSecrets(logging.Filter):
    """urllib3 logs each request line, query string and all, at DEBUG: not the secret parameters."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = without_url_secrets(record.getMessage()), ()
        return True


logging.getLogger("urllib3.connectionpool").addFilter(_WithoutUrlSecrets())


class SourceError(ForgeError):
    """A source could not be fetched. The message names the URL with secrets removed."""


class PermanentSourceError(SourceError):
    """Retrying will not help (401/403/404 and other client errors)."""


class TransientSourceError(SourceError):
    """The source kept failing in ways that can pass (5xx, timeouts); the retries are spent."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0
    timeout: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_delay)
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None):
        super().__init__(reason)
        self.retry_after = retry_after


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _bare(url: str) -> str:
    """``url`` as messages may show it: no user-info, no query string."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class SourceSession(requests.Session):
    """A session for a run of requests to one source host: credentials kept to their origin, and the
    environment read once per host.

    On a redirect that leaves the origin of the request it follows, every header that carries a secret,
    the ``Authorization`` header and the secret query parameters are dropped (requests itself strips
    only ``Authorization``), unless the new host is one of the recipe's trusted redirect hosts.

    Requests also looks up proxies and the CA bundle in the environment for every request (three walks
    over ``os.environ``: 0.1-0.2 ms each time, seconds of CPU over 16,500 tiny inputs). The answer only
    depends on the URL's scheme and host, so it is kept for the session's life. ``.netrc`` credentials are
    still looked up by requests itself.
    """

    def __init__(self, access: SourceAccess = NO_ACCESS) -> None:
        super().__init__()
        self.access = access
        self._first_url = ""
        self._environment: dict[tuple, dict[str, Any]] = {}

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        self._first_url = url  # the origin the credentials belong to, for the redirects that follow
        kwargs.setdefault("auth", self.access.auth)
        kwargs["headers"] = {**self.access.headers, **(kwargs.get("headers") or {})}
        return super().request(method, url, *args, **kwargs)

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: requests.Response) -> None:
        super().rebuild_auth(prepared_request, response)
        if self.access.may_receive(self._first_url, prepared_request.url):
            if self.access.auth and "Authorization" not in prepared_request.headers:
                prepared_request.prepare_auth(self.access.auth)  # a trusted host on another origin
            return
        for name in [h for h in prepared_request.headers if h.lower() in self.access.secret_headers]:
            del prepared_request.headers[name]
        prepared_request.headers.pop("Authorization", None)
        prepared_request.url = without_query(
            prepared_request.url, [name for name, _ in self.access.query], self.access.secrets
        )

    def merge_environment_settings(
        self, url: str, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> dict[str, Any]:
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc, tuple(sorted((proxies or {}).items())), stream, verify, cert)
        if key not in self._environment:
            self._environment[key] = super().merge_environment_settings(url, proxies, stream, verify, cert)
        found = self._environment[key]
        return {**found, "proxies": dict(found["proxies"])}  # requests may change what it is given


def _redirected(r: requests.Response) -> str:
    return f" (redirected to {_bare(r.url)})" if r.history else ""


def _http_get(session: SourceSession, url: str, dest: Path, timeout: float) -> int:
    """One attempt; returns the bytes written or raises. A short body is retryable."""
    with session.get(url, stream=True, timeout=timeout) as r:
        if r.status_code == 429 or r.status_code >= 500:
            raise _Retryable(f"HTTP {r.status_code}{_redirected(r)}", _retry_after(r))
        if r.status_code >= 400:
            raise PermanentSourceError(f"HTTP {r.status_code} {r.reason}{_redirected(r)}")
        expected = r.headers.get("Content-Length")
        written = 0
        with open(dest, "wb") as f:
            for block in r.iter_content(chunk_size=1 << 20):
                f.write(block)
                written += len(block)
        if expected is not None and written != int(expected):
            raise _Retryable(f"truncated body: got {written} of {expected} bytes", None)
        return written


def _http_exists(session: SourceSession, url: str, timeout: float) -> bool:
    r = session.head(url, timeout=timeout, allow_redirects=True)
    if r.status_code == 405:  # no HEAD here: ask for the first byte instead
        r = session.get(url, headers={"Range": "bytes=0-0"}, timeout=timeout)
    if r.status_code in (404, 410):
        return False
    if r.status_code == 429 or r.status_code >= 500:
        raise _Retryable(f"HTTP {r.status_code}{_redirected(r)}", _retry_after(r))
    if r.status_code >= 400:
        raise PermanentSourceError(f"HTTP {r.status_code} {r.reason}{_redirected(r)}")
    return True


def _fsspec_get(url: str, dest: Path, options: dict) -> int:
    with fsspec.open(url, "rb", **options) as src, open(dest, "wb") as f:
        shutil.copyfileobj(src, f, length=1 << 20)
    return dest.stat().st_size


def _is_http(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def download(
    url: str,
    dest: Path,
    *,
    display_url: str,
    access: SourceAccess = NO_ACCESS,
    policy: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
    session: SourceSession | None = None,
) -> int:
    """Download ``url`` (as the recipe has it, after rewrites; ``access`` adds the credentials) to
    ``dest``, a local path, retrying transient failures; returns the size. Messages say ``display_url``.

    ``session``: reuse its connections (and TLS) for a run of downloads from one host.
    """
    target = access.url(url)

    def once() -> int:
        if _is_http(url):
            return _http_get(session or SourceSession(access), target, dest, policy.timeout)
        return _fsspec_get(target, dest, dict(access.options))

    try:
        return _with_retries(once, display_url, access.secrets, policy, sleep)
    except SourceError:
        dest.unlink(missing_ok=True)
        raise


def source_exists(
    url: str,
    *,
    display_url: str,
    access: SourceAccess = NO_ACCESS,
    policy: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
    session: SourceSession | None = None,
) -> bool:
    """Whether the source has ``url`` yet (HEAD for HTTP). Only "not found" answers False: a throttled or
    failing server is retried and then raises, so it is never mistaken for a missing file."""
    target = access.url(url)

    def once() -> bool:
        if _is_http(url):
            return _http_exists(session or SourceSession(access), target, policy.timeout)
        fs, path = fsspec.core.url_to_fs(target, **access.options)
        return bool(fs.exists(path))

    return _with_retries(once, display_url, access.secrets, policy, sleep)


def _reason(e: BaseException, secrets: tuple[str, ...]) -> str:
    """A failure as messages may show it: the library's words without URL queries or secrets, and for a
    connection that failed, only why (urllib3 wraps that in two layers of its own)."""
    if isinstance(e, _Retryable | SourceError):
        text = str(e)
    elif isinstance(e, requests.ConnectionError) and getattr(e.args[0] if e.args else None, "reason", None):
        root = str(e.args[0].reason)
        text = f"could not connect: {re.sub(r'^[A-Za-z]*Connection[^:]*: ', '', root)}"
    else:
        text = f"{type(e).__name__}: {e}"
    return scrub(without_url_secrets(text), secrets)


def _with_retries[T](
    once: Callable[[], T],
    display_url: str,
    secrets: tuple[str, ...],
    policy: RetryPolicy,
    sleep: Callable[[float], None],
) -> T:
    """``once()`` with the retry policy: transient failures retried, permanent ones raised at once."""
    for attempt in range(policy.attempts):
        try:
            return once()
        except PermanentSourceError as e:
            raise PermanentSourceError(f"{display_url}: {_reason(e, secrets)}") from None
        except FileNotFoundError:
            raise PermanentSourceError(f"{display_url}: not found") from None
        except (_Retryable, requests.RequestException, OSError) as e:
            reason = _reason(e, secrets)
            if attempt + 1 == policy.attempts:
                raise TransientSourceError(
                    f"{display_url}: gave up after {policy.attempts} attempts; last error {reason}"
                ) from None
            wait = policy.delay(attempt, getattr(e, "retry_after", None))
            logger.warning(
                "fetch %s failed (%s); attempt %d of %d in %.1fs",
                display_url,
                reason,
                attempt + 2,
                policy.attempts,
                wait,
            )
            sleep(wait)
    raise AssertionError("unreachable")


def make_temp_path(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f".{name}.{os.getpid()}.{random.getrandbits(32):08x}.part"
