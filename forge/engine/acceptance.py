"""The recipe's own checks of its finished store (``tests=[fn, ...]``, pangeo-forge's ``test_ds`` steps),
run before the store is published: a check that fails fails the run and publishes nothing (but on a
Zarr append, whose new steps are in place before it is checked; an Icechunk target publishes none).

A check sees the store exactly as readers will: its final attributes and its consolidated metadata
(pangeo-forge runs ``test_ds`` after ``ConsolidateMetadata``), held in memory over the unpublished
store (:class:`ReadersView`) until the checks pass and the publish writes them.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

import xarray as xr
import zarr
from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import WrapperStore

from forge.errors import call_recipe_code

DATASET_PARAMS = ("ds", "dataset")


def wants_dataset(fn: Callable) -> bool:
    """A check whose parameter is named ``ds`` gets the opened Dataset; others get the Zarr store, as
    pangeo-forge's ``test_ds(store)`` does."""
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0] in DATASET_PARAMS


def run_checks(checks: tuple[Callable, ...], store: Any, url: str, consolidated: bool | None) -> None:
    """Each check on ``store`` (a zarr Store at ``url``); the first that raises is a RecipeCodeError
    naming it, its line and the store."""
    for check in checks:
        arg = store
        if wants_dataset(check):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                arg = xr.open_zarr(store, consolidated=consolidated)
        with warnings.catch_warnings():  # a check opening the store before its metadata is consolidated
            warnings.filterwarnings("ignore", "Failed to open Zarr store with consolidated", RuntimeWarning)
            call_recipe_code(check, f"the check {check.__name__} of {url}", arg)


class ReadersView(WrapperStore):
    """A store as it will be once its metadata is published: what is written through the view (the
    root's attributes, the consolidated metadata) stays in memory over ``store``, which is not changed."""

    def __init__(self, store: Store, written: dict[str, Buffer] | None = None):
        super().__init__(store)
        self._written = {} if written is None else written

    def _with_store(self, store: Store) -> ReadersView:
        return type(self)(store, self._written)

    @property
    def supports_consolidated_metadata(self) -> bool:  # an Icechunk session's store says no
        return True

    async def set(self, key: str, value: Buffer) -> None:
        self._written[key] = value

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        if key in self._written:  # metadata documents, read whole
            return self._written[key]
        return await self._store.get(key, prototype, byte_range)

    async def exists(self, key: str) -> bool:
        return key in self._written or await self._store.exists(key)


def publish_metadata(store: Store, attrs: dict[str, Any], consolidated: bool, zarr_format: int) -> None:
    """The root's attributes, then (``consolidated``) the consolidated metadata: what publishing a store
    writes, on the store or on a :class:`ReadersView` of it."""
    group = zarr.open_group(store, mode="r+", use_consolidated=False)
    group.attrs.put({**dict(group.attrs), **attrs})
    if consolidated:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            zarr.consolidate_metadata(store, zarr_format=zarr_format)
