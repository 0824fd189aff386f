"""A narrow storage interface over fsspec for the cache and the target: local disk or object storage.

Writes are atomic: on local disk a temp file is renamed into place; on object stores an upload is atomic
by nature. Credentials come from the environment the way each cloud's SDK expects (a bakery's workload
identity); nothing here stores them.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import zarr
import zarr.storage
from fsspec.implementations.local import LocalFileSystem

from forge.io.urls import is_local, join


def zarr_store(url: str, read_only: bool = False) -> zarr.abc.store.Store:
    """A Zarr store for ``url``, on a fresh filesystem instance.

    fsspec caches filesystem instances with their directory listings: a listing taken before workers wrote
    the arrays made consolidated metadata miss every one of them. Each store here starts with none cached.
    """
    if is_local(url):
        return zarr.storage.LocalStore(url.removeprefix("file://"), read_only=read_only)
    store = zarr.storage.FsspecStore.from_url(
        url, storage_options={"skip_instance_cache": True}, read_only=read_only
    )
    _close_at_exit(store.fs)
    return store


# zarr 3.1 never closes the filesystems its object-store stores open (zarr-python#2901, fixed for Python
# 3.12+ only): at exit aiohttp logged "ERROR Unclosed client session" as the last lines of a run that had
# succeeded. Their sessions are closed at exit, before zarr's loop stops. (Those the garbage collector
# takes during a run still log it: closing them then would need to know that no other store shares the
# filesystem, which zarr's derived stores do.)
_OPENED: weakref.WeakSet[Any] = weakref.WeakSet()


def _close_at_exit(fs: Any) -> None:
    if not _OPENED:  # registered after zarr's own exit handler, so it runs first, while zarr's loop runs
        atexit.register(_close_sessions)
    _OPENED.add(fs)


def _close_sessions() -> None:
    from zarr.core.sync import sync

    for fs in list(_OPENED):
        with contextlib.suppress(Exception):  # exiting: nothing is left to report to
            sync(_close_session(fs))
    _OPENED.clear()


async def _close_session(fs: Any) -> None:
    """Close the HTTP session of an async filesystem (a no-op if it never opened one, or did already)."""
    if (client := getattr(fs, "_s3", None)) is not None:  # s3fs: an aiobotocore client
        await client.close()
    elif (session := getattr(fs, "_session", None)) is not None and not session.closed:  # gcsfs
        await session.close()
    elif (client := getattr(fs, "service_client", None)) is not None:  # adlfs
        await client.close()


@dataclass(frozen=True)
class Storage:
    """Files under ``root`` (a local path or a URL such as ``s3://bucket/prefix``)."""

    root: str
    options: dict[str, Any] = field(default_factory=dict)

    @functools.cached_property
    def fs(self) -> fsspec.AbstractFileSystem:
        # a fresh instance: no directory listings cached by another Storage (see zarr_store)
        fs, _ = fsspec.url_to_fs(self.root, **{"skip_instance_cache": True, **self.options})
        return fs

    @property
    def supports_local_paths(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def url(self, key: str) -> str:
        return join(self.root, key)

    def _path(self, key: str) -> str:
        return self.fs._strip_protocol(self.url(key))

    def exists(self, key: str) -> bool:
        return self.fs.exists(self._path(key))

    def size(self, key: str) -> int:
        return int(self.fs.size(self._path(key)))

    def put_file_atomic(self, local: Path, key: str) -> None:
        """Move a finished local file into storage so that readers never see a partial file."""
        path = self._path(key)
        if self.supports_local_paths:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            os.replace(local, path) if _same_device(local, Path(path).parent) else _copy_rename(local, path)
        else:
            self.fs.put_file(str(local), path)
            local.unlink(missing_ok=True)

    @contextlib.contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        """A local path to read ``key``: the file itself on local disk, a temporary copy otherwise."""
        if self.supports_local_paths:
            yield Path(self._path(key))
            return
        with tempfile.TemporaryDirectory(prefix="forge-") as d:
            local = Path(d) / Path(key).name
            self.fs.get_file(self._path(key), str(local))
            yield local

    def list(self, prefix: str = "") -> list[str]:
        base = self._path("")
        try:
            found = self.fs.find(self._path(prefix)) if prefix else self.fs.find(base)
        except FileNotFoundError:
            return []
        return sorted(p[len(base) :].lstrip("/") for p in found)

    def glob(self, pattern: str) -> list[str]:
        """Keys under the root matching ``pattern`` (one level of folders per ``*``, as fsspec globs)."""
        base = self._path("")
        return sorted(p[len(base) :].lstrip("/") for p in self.fs.glob(self._path(pattern)))

    def total_size(self) -> int:
        """Bytes stored under the root."""
        return int(sum(self.fs.du(self._path(""), total=False).values()))

    def read_text(self, key: str) -> str | None:
        path = self._path(key)
        return self.fs.cat_file(path).decode() if self.fs.exists(path) else None

    def write_text(self, key: str, text: str) -> None:
        self.write_bytes(key, text.encode())

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if self.supports_local_paths:  # object stores have no folders to make
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.fs.pipe_file(path, data)

    def delete(self, key: str) -> None:
        path = self._path(key)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def replace_folder(self, source: str, target: str, last: tuple[str, ...] = ()) -> None:
        """Replace the folder ``target`` by the folder ``source`` (both keys under the root), which is
        gone afterwards. Local disk: two renames (a moment with neither). Object storage has no rename:
        the new objects are copied over the old ones, those whose names end with one of ``last`` after
        the others (readers keep the old metadata until the data is there), then the old objects the new
        folder lacks are deleted, then ``source``."""
        src, dest = self._path(source), self._path(target)
        if self.supports_local_paths:
            previous = Path(dest).with_name(f".{Path(dest).name}.previous")
            shutil.rmtree(previous, ignore_errors=True)
            Path(dest).rename(previous)
            Path(src).rename(dest)
            shutil.rmtree(previous, ignore_errors=True)
            return
        fs = self.fs
        # Objects, not directories: a recursive copy also copies "directories", which object stores do
        # not have (s3fs failed there, after the old store had been deleted).
        new = {path[len(src) :].lstrip("/") for path in fs.find(src)}
        for at_last in (False, True):
            part = sorted(key for key in new if key.endswith(last) == at_last)
            if part:
                fs.copy([f"{src}/{key}" for key in part], [f"{dest}/{key}" for key in part])
        # Folders of the new one are kept: some object stores (Azure) list their markers as objects.
        kept = new | {key.rsplit("/", i)[0] for key in new for i in range(1, key.count("/") + 1)}
        stale = [path for path in fs.find(dest) if path[len(dest) :].strip("/") not in kept]
        if stale:
            fs.rm(stale)
        fs.rm(src, recursive=True)

    def staging_dir(self) -> Path:
        """Where downloads are written before they are moved in (on the same disk when local)."""
        if self.supports_local_paths:
            d = Path(self._path(".staging"))
            d.mkdir(parents=True, exist_ok=True)
            return d
        return Path(tempfile.gettempdir()) / "forge-staging"


def _same_device(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_dev == b.stat().st_dev
    except OSError:
        return False


def _copy_rename(src: Path, dest: str) -> None:
    tmp = f"{dest}.part"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    src.unlink(missing_ok=True)
