"""Plain Zarr stores: an append records its intent in a marker beside the store and commits by rewriting
the concat coordinate and the consolidated metadata; a rebuild is built beside the published store and
swapped in."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from forge.engine.acceptance import ReadersView, publish_metadata, run_checks
from forge.engine.attrs import FINGERPRINT_ATTR
from forge.engine.targets.base import AttrsFor, CopyTarget, Work, dims_of, write_coordinate, write_flags
from forge.errors import ForgeError
from forge.io.storage import Storage, zarr_store
from forge.publish.transaction import CatchUp, RebuildBehind

if TYPE_CHECKING:
    from forge.engine.types import RunSpec, TargetSpec, WriteBatch
    from forge.recipe.recipes import XarrayZarrRecipe

ARRAY_DOCUMENTS = ("zarr.json", ".zarray", ".zattrs")  # an array's metadata, Zarr v3 and v2
ZARR_METADATA = ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata")


def open_group(url: str, mode: str = "r+") -> zarr.Group:
    # Never the consolidated copy: it is stale while a run writes (it is rewritten at the end).
    return zarr.open_group(zarr_store(url, read_only=mode == "r"), mode=mode, use_consolidated=False)


def pending_marker(url: str) -> tuple[Storage, str]:
    """Where an append records its start while it writes: a file next to the store, so that the root
    group (and its consolidated metadata, which readers use) is not touched until the append commits."""
    parent, name = url.rstrip("/").rsplit("/", 1)
    return Storage(parent), f"{name}.pending-append.json"


def staging_url(url: str) -> str:
    """Where a Zarr store is rebuilt beside its published self: ``.{name}.next`` in the same folder."""
    parent, name = url.rstrip("/").rsplit("/", 1)
    return f"{parent}/.{name}.next"


class ZarrTarget(CopyTarget):
    format = "zarr"

    def zarr_format(self) -> int:
        return 2 if Storage(self.url).exists(".zgroup") else 3

    def reader_snippet(self) -> tuple[str, str]:
        return (
            "Open with xarray",
            f"import xarray as xr\n\nds = xr.open_zarr({self.url!r}, consolidated=True)",
        )

    def published_store(self, branch: str | None = None) -> zarr.abc.store.Store:
        return zarr_store(self.url, read_only=True)

    def interrupted_append(self) -> dict[str, Any] | None:
        storage, key = pending_marker(self.url)
        text = storage.read_text(key)
        return json.loads(text) if text else None

    def begin_build(self, run: RunSpec, replacing: bool, base: str) -> Work:
        if not replacing:
            return Work(self.url, zarr_store(self.url))
        staged = staging_url(self.url)  # readers keep the previous build until this one is done
        Storage(staged).delete("")
        marker, key = pending_marker(staged)  # a catch-up of an earlier rebuild that died there
        marker.delete(key)
        return Work(staged, zarr_store(staged), publish_to=self.url, publish_base=base)

    def begin_append(self, run: RunSpec) -> Work:
        beside = run.catch_up is not None  # a rebuild's store, published once caught up
        return Work(
            self.url,
            zarr_store(self.url),
            publish_to=run.target_url if beside else None,
            publish_base=run.catch_up.base if beside else None,
        )

    def resume(self, work: Work, dim: str, length: int, coordinate: dict[str, Any] | None) -> None:
        # A crash may have resized some arrays and not others: all back to the recorded start.
        if coordinate:
            _restore_array(Storage(self.url), dim, coordinate)
        for _, arr in work.group().arrays():
            dims = dims_of(arr)
            if dim in dims and arr.shape[dims.index(dim)] != length:
                arr.resize(tuple(length if d == dim else n for d, n in zip(dims, arr.shape, strict=True)))

    def record_intent(
        self,
        work: Work,
        dim: str,
        start: tuple[int, int],
        stored: np.ndarray,
        recorded: dict[str, Any] | None,
        held: np.ndarray | None,
    ) -> None:
        # The intent first: a crash from here on is finished by the next append, from the same start.
        marker: dict[str, Any] = {
            "from_inputs": start[0],
            "from_length": start[1],
            "coordinate": recorded or _record_array(Storage(self.url), dim, stored),
        }
        if held is not None:
            marker["provisional"] = held.tolist()
        storage, key = pending_marker(self.url)
        storage.write_text(key, json.dumps(marker))

    def extend_coordinate(
        self,
        work: Work,
        dim: str,
        stored: np.ndarray,
        new: np.ndarray,
        flags: tuple[np.ndarray, np.ndarray] | None,
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        # The coordinate keeps its length until the commit (which rewrites it in one chunk): readers of
        # the consolidated metadata see the old extent, data and all, until then.
        return new, (flags[1] if flags is not None else None)

    def template_written(self, work: Work, message: str, n_batches: int) -> list[Any]:
        return []

    def batch_group(self, target: TargetSpec, batch: WriteBatch) -> zarr.Group:
        return open_group(target.url)

    def publish(
        self,
        recipe: XarrayZarrRecipe,
        target: TargetSpec,
        attrs_for: AttrsFor,
        handles: Sequence[Any],
        message: str,
        metadata: Mapping[str, Any],
    ) -> None:
        if target.new_coordinate is not None:
            commit_coordinate(target)
        attrs = attrs_for(open_group(target.url))
        if recipe.tests:  # on the store as readers will see it, its metadata in memory until they pass
            view = ReadersView(zarr_store(target.url))
            publish_metadata(view, attrs, recipe.consolidated, recipe.zarr_format)
            run_checks(recipe.tests, view, target.url, consolidated=recipe.consolidated or None)
        publish_metadata(zarr_store(target.url), attrs, recipe.consolidated, recipe.zarr_format)
        storage, key = pending_marker(target.url)
        storage.delete(key)  # an append is committed (into a rebuild's store, when it catches one up)
        if target.publish_to:
            swap_in(target.url, target.publish_to, target.publish_base)

    def publish_staged(self, run: RunSpec) -> None:
        swap_in(self.url, run.target_url, run.catch_up.base if run.catch_up else None)


def commit_coordinate(target: TargetSpec) -> None:
    """Write the appended concat coordinate in one chunk: the recorded values, then the new ones. The
    array is first put back as the marker recorded it, so a crash in the middle of this is redone."""
    storage, key = pending_marker(target.url)
    marker = json.loads(storage.read_text(key) or "{}")
    record = marker.get("coordinate")
    if record is None:
        raise ForgeError(f"{target.url}: the append's marker is gone; run the append again")
    _restore_array(Storage(target.url), target.concat_dim, record)
    stored = np.asarray(record["values"], dtype=target.new_coordinate.dtype)
    group = open_group(target.url)
    write_coordinate(group, target.concat_dim, np.concatenate([stored, target.new_coordinate]))
    if target.new_provisional is not None:
        held = np.asarray(marker.get("provisional", np.zeros(len(stored))), bool)
        write_flags(group, target.concat_dim, np.concatenate([held, target.new_provisional]))


def _record_array(storage: Storage, name: str, values: np.ndarray) -> dict[str, Any]:
    """What restores the 1-D array ``name`` exactly: its metadata documents (Zarr v3 or v2) and values."""
    documents = {doc: storage.read_text(f"{name}/{doc}") for doc in ARRAY_DOCUMENTS}
    return {"documents": {k: v for k, v in documents.items() if v is not None}, "values": values.tolist()}


def _restore_array(storage: Storage, name: str, record: dict[str, Any]) -> None:
    for doc, text in record["documents"].items():
        storage.write_text(f"{name}/{doc}", text)
    arr = open_group(storage.root)[name]
    values = np.asarray(record["values"], dtype=arr.dtype)
    if arr.shape != values.shape:  # an append that replaces provisional steps recorded fewer values
        arr.resize(values.shape)
    arr[:] = values


def swap_in(staged: str, url: str, base: str | None) -> None:
    """Publish the Zarr store rebuilt at ``staged`` in place of ``url`` if ``url`` is still what it was
    when the rebuild began (its fingerprint ``base``) and no append is writing to it; otherwise raise
    :class:`RebuildBehind`, to catch the rebuild up with what was published meanwhile."""
    published = ZarrTarget(url).published_group()
    now = published.attrs.get(FINGERPRINT_ATTR) if published is not None else None
    marker, key = pending_marker(url)
    if now != base or marker.exists(key):
        what = "an append is writing to it" if now == base else "an append published"
        raise RebuildBehind(
            f"{url}: {what} while this rebuild ran: it catches up before it is published (its store is "
            f"kept at {staged})",
            CatchUp(staged, now),
        )
    move_into_place(staged, url)


def move_into_place(staging: str, url: str) -> None:
    """Replace the store at ``url`` by the finished one at ``staging`` (beside it), its metadata
    documents last where objects are copied (:meth:`Storage.replace_folder`). Atomic only short of
    that: use Icechunk for an atomic swap."""
    parent, name = url.rstrip("/").rsplit("/", 1)
    Storage(parent).replace_folder(staging.rsplit("/", 1)[1], name, last=ZARR_METADATA)
