"""Downloading one source to a local file, with the project's single per-request retry policy.

Transient failures (timeouts, connection resets, truncated bodies, 5xx, 429 with Retry-After) are retried
here with exponential backoff and full jitter. Permanent ones (401, 403, 404 and other 4xx) fail at once
with :class:`PermanentSourceError`, which the Prefect task does not retry either. Whole-task failures are
left to Prefect's ``retries=``: no third layer.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import fsspec
import requests

from forge.io.secrets import scrub

logger = logging.getLogger(__name__)
T = TypeVar("T")


class SourceError(Exception):
    """A source could not be fetched. The message names the URL with secrets removed."""


class PermanentSourceError(SourceError):
    """Retrying will not help (401/403/404 and other client errors)."""


class TransientSourceError(SourceError):
    pass


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


def _http_once(
    http: Any, url: str, dest: Path, auth: Any, headers: dict, timeout: float
) -> tuple[int, float | None]:
    """One attempt through ``http`` (a Session, or the requests module); returns (bytes written, None) or
    raises. A short body raises TransientSourceError."""
    with http.get(url, auth=auth, headers=headers, stream=True, timeout=timeout) as r:
        if r.status_code == 429 or r.status_code >= 500:
            raise _Retryable(f"HTTP {r.status_code}", _retry_after(r))
        if r.status_code >= 400:
            raise PermanentSourceError(f"HTTP {r.status_code} {r.reason}")
        expected = r.headers.get("Content-Length")
        written = 0
        with open(dest, "wb") as f:
            for block in r.iter_content(chunk_size=1 << 20):
                f.write(block)
                written += len(block)
        if expected is not None and written != int(expected):
            raise _Retryable(f"truncated body: got {written} of {expected} bytes", None)
        return written, None


class HostSession(requests.Session):
    """A session for a run of downloads from one host, reading the environment once per host.

    Requests looks up proxies and the CA bundle in the environment for every request (three walks over
    ``os.environ``: 0.1-0.2 ms each time, seconds of CPU over 16,500 tiny inputs). The answer only
    depends on the URL's scheme and host, so it is kept for the session's life. Redirects elsewhere
    (a login server) are still looked up by requests itself, and so are ``.netrc`` credentials.
    """

    def __init__(self) -> None:
        super().__init__()
        self._environment: dict[tuple, dict[str, Any]] = {}

    def merge_environment_settings(
        self, url: str, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> dict[str, Any]:
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc, tuple(sorted((proxies or {}).items())), stream, verify, cert)
        if key not in self._environment:
            self._environment[key] = super().merge_environment_settings(url, proxies, stream, verify, cert)
        found = self._environment[key]
        return {**found, "proxies": dict(found["proxies"])}  # requests may change what it is given


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None):
        super().__init__(reason)
        self.retry_after = retry_after


def _fsspec_once(url: str, dest: Path, options: dict) -> int:
    with fsspec.open(url, "rb", **options) as src, open(dest, "wb") as f:
        shutil.copyfileobj(src, f, length=1 << 20)
    return dest.stat().st_size


def download(
    url: str,
    dest: Path,
    *,
    display_url: str,
    options: dict | None = None,
    secrets: list[str] | None = None,
    policy: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
    session: requests.Session | None = None,
) -> int:
    """Download ``url`` to ``dest`` (a local path), retrying transient failures; returns the size.

    ``url`` may contain secrets; every message uses ``display_url`` and is scrubbed of ``secrets``.
    ``session``: reuse its connections (and TLS) for a run of downloads from one host.
    """
    auth, headers, options = _http_options(options)

    def once() -> int:
        if url.startswith(("http://", "https://")):
            return _http_once(session or requests, url, dest, auth, headers, policy.timeout)[0]
        return _fsspec_once(url, dest, options)

    try:
        return _with_retries(once, display_url, secrets or [], policy, sleep)
    except SourceError:
        dest.unlink(missing_ok=True)
        raise


def source_exists(
    url: str,
    *,
    display_url: str,
    options: dict | None = None,
    secrets: list[str] | None = None,
    policy: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Whether the source has ``url`` yet (HEAD for HTTP). Only "not found" answers False: a throttled or
    failing server is retried and then raises, so it is never mistaken for a missing file."""
    auth, headers, options = _http_options(options)

    def once() -> bool:
        if url.startswith(("http://", "https://")):
            return _http_head(url, auth, headers, policy.timeout)
        fs, path = fsspec.core.url_to_fs(url, **options)
        return bool(fs.exists(path))

    return _with_retries(once, display_url, secrets or [], policy, sleep)


def _http_options(options: dict | None) -> tuple[tuple | None, dict, dict]:
    """(auth, headers) for requests, and the rest for fsspec."""
    rest = dict(options or {})
    auth = rest.pop("auth", None)
    return (tuple(auth) if auth else None), rest.pop("headers", {}), rest


def _http_head(url: str, auth: Any, headers: dict, timeout: float) -> bool:
    r = requests.head(url, auth=auth, headers=headers, timeout=timeout, allow_redirects=True)
    if r.status_code == 405:  # no HEAD here: ask for the first byte instead
        r = requests.get(url, auth=auth, headers={**headers, "Range": "bytes=0-0"}, timeout=timeout)
    if r.status_code in (404, 410):
        return False
    if r.status_code == 429 or r.status_code >= 500:
        raise _Retryable(f"HTTP {r.status_code}", _retry_after(r))
    if r.status_code >= 400:
        raise PermanentSourceError(f"HTTP {r.status_code} {r.reason}")
    return True


def _with_retries(
    once: Callable[[], T],
    display_url: str,
    secrets: list[str],
    policy: RetryPolicy,
    sleep: Callable[[float], None],
) -> T:
    """``once()`` with the retry policy: transient failures retried, permanent ones raised at once."""
    for attempt in range(policy.attempts):
        try:
            return once()
        except PermanentSourceError as e:
            raise PermanentSourceError(f"{display_url}: {scrub(str(e), secrets)}") from None
        except FileNotFoundError:
            raise PermanentSourceError(f"{display_url}: not found") from None
        except (_Retryable, requests.RequestException, OSError) as e:
            reason = scrub(f"{type(e).__name__}: {e}", secrets)
            if attempt + 1 == policy.attempts:
                raise TransientSourceError(
                    f"{display_url}: gave up after {policy.attempts} attempts; last error {reason}"
                ) from None
            wait = policy.delay(attempt, getattr(e, "retry_after", None))
            logger.warning("fetch %s failed (%s); retry %d in %.1fs", display_url, reason, attempt + 1, wait)
            sleep(wait)
    raise AssertionError("unreachable")


def make_temp_path(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f".{name}.{os.getpid()}.{random.getrandbits(32):08x}.part"
