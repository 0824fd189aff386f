"""Target and cache locations as strings: a local path or a URL (``s3://bucket/prefix``). No I/O."""

from __future__ import annotations

import os


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def absolute(url: str) -> str:
    """A local path made absolute (against this process's folder); any other URL as it is."""
    return os.path.abspath(url) if is_local(url) and not url.startswith("file://") else url


def join(root: str, *parts: str) -> str:
    """``root`` and ``parts`` joined by single slashes (a URL's ``//`` kept)."""
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])
