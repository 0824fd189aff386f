"""Virtual datasets (VirtualiZarr's: chunk manifests in place of data) as references are made of them:
where their chunks live and how two of them become one. Used by the reference stages and by the
reference targets that write and read them back."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import xarray as xr


def source_url(url: str) -> str:
    """``url`` as references name it: a local path becomes a ``file://`` URL."""
    if "://" in url:
        return url
    return Path(url).resolve().as_uri()


def prefix_of(url: str) -> str:
    """The store a source lives in: ``scheme://host/`` (``file:///`` for local files)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/"


def containers(vds: xr.Dataset) -> list[str]:
    """The URL prefixes of the stores the references point into: ``scheme://host/``, and for local
    files the folder that holds them all (Icechunk wants a path)."""
    from virtualizarr.manifests import ManifestArray

    prefixes, local = set(), set()
    for var in vds.variables.values():
        if isinstance(var.data, ManifestArray):
            for path in var.data.manifest.iter_nonempty_paths():
                if str(path).startswith("file://"):
                    local.add(os.path.dirname(urlsplit(str(path)).path))
                else:
                    prefixes.add(prefix_of(str(path)))
    if local:
        prefixes.add(Path(os.path.commonpath(sorted(local))).as_uri().rstrip("/") + "/")
    return sorted(prefixes)


def concat(datasets: Sequence[xr.Dataset], dim: str, attrs: str = "drop_conflicts") -> xr.Dataset:
    """Virtual datasets end to end along ``dim``; the rest (variables without ``dim``: static ones,
    bounds stacked inputs share) from the first: its references are the same file's."""
    return xr.concat(
        datasets, dim=dim, data_vars="minimal", coords="minimal", compat="override", combine_attrs=attrs
    )


def agreed(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict:
    """The attributes of a store extended by inputs with attributes ``new``: those all inputs agree on
    (as a build keeps them), and forge's own from ``new``."""
    kept = {k: v for k, v in old.items() if new.get(k, v) == v}
    return {**kept, **{k: v for k, v in new.items() if k.startswith("forge:")}}
