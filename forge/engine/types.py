"""Frozen, picklable values that cross from the planner into the stages (and into Prefect tasks)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from forge.engine.plan import ChunkWrite, Stack
from forge.io.urls import join
from forge.publish.transaction import CatchUp, Transaction
from forge.publish.validate import HEALTH_STEPS, Checks
from forge.recipe.meta import major_of
from forge.recipe.patterns import Key


@dataclass(frozen=True)
class VariableSummary:
    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: np.dtype
    attrs: dict[str, Any]
    encoding: dict[str, Any]
    is_coord: bool
    digest: str | None = None  # of the values, for variables without the concat dimension


@dataclass(frozen=True)
class InputSummary:
    key: Key
    url: str  # as in the recipe, secret-free
    location: str  # where the stages read it: a cache key, or a URL for inputs read in place
    size: int
    dims: dict[str, int]
    variables: tuple[VariableSummary, ...]
    attrs: dict[str, Any]
    concat_values: np.ndarray | None = None
    # Digests of the small variables along the concat dimension (bounds, climatology_bounds): a merge may
    # find the same one in several inputs, and keeps it once if they agree. Kept apart from ``variables``,
    # which inputs of one product share.
    concat_digests: dict[str, str] = field(default_factory=dict)
    provisional: bool = False  # read from the key's provisional file: its final one is not there yet

    def variable(self, name: str) -> VariableSummary | None:
        return next((v for v in self.variables if v.name == name), None)


@dataclass(frozen=True)
class VariableSpec:
    """One variable of the target."""

    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: np.dtype
    attrs: dict[str, Any]
    encoding: dict[str, Any]
    is_coord: bool
    source: tuple[tuple[str, int], ...]  # merge-dimension positions of the inputs that hold it
    along_concat: bool
    raw_ok: bool  # every input stores it exactly as the target does: copy packed values undecoded

    @property
    def encoded_dtype(self) -> np.dtype:
        return np.dtype(self.encoding.get("dtype", self.dtype))


@dataclass(frozen=True)
class Template:
    concat_dim: str | None
    lengths: tuple[int, ...]
    sizes: dict[str, int]
    variables: tuple[VariableSpec, ...]
    attrs: dict[str, Any]
    concat_values: np.ndarray | None = None
    concat_encoding: dict[str, Any] = field(default_factory=dict)
    # A second ConcatDim: files stacked whole along it, each stack position this long along it.
    stack_dim: str | None = None
    stack_lengths: tuple[int, ...] = ()

    @property
    def concat_variables(self) -> tuple[VariableSpec, ...]:
        return tuple(v for v in self.variables if v.along_concat and v.name != self.concat_dim)

    def digest(self) -> str:
        h = hashlib.sha256(repr((self.concat_dim, self.lengths, sorted(self.sizes.items()))).encode())
        if self.stack_dim is not None:
            h.update(repr((self.stack_dim, self.stack_lengths)).encode())
        for v in self.variables:
            h.update(repr((v.name, v.dims, v.shape, str(v.dtype), _sorted_repr(v.encoding))).encode())
        if self.concat_values is not None:
            h.update(
                np.ascontiguousarray(self.concat_values).astype("datetime64[ns]", copy=False).tobytes()
                if self.concat_values.dtype.kind == "M"
                else repr(self.concat_values.tolist()).encode()
            )
        h.update(_sorted_repr(self.concat_encoding).encode())
        return h.hexdigest()


def _sorted_repr(d: Mapping) -> str:
    return repr(sorted((k, str(v)) for k, v in d.items()))


@dataclass(frozen=True)
class RunSpec:
    """What one run of a recipe needs to know besides the recipe itself."""

    recipe: str  # an id from recipes/, or a path to a recipe directory or .py file
    recipe_id: str
    target_root: str
    cache_root: str
    prune: int | None = None
    url_rewrites: tuple[tuple[str, str], ...] = ()
    # Append mode: the concat positions already in the store (None: build the whole store).
    append_from: int | None = None
    # Store tasks that can run at once (None: unknown): the write plan makes a few batches per worker.
    workers: int | None = None
    target_format: str = "zarr"  # or "icechunk": every run one commit (forge.publish.icechunk)
    # meta.yaml's validation.max_missing_fraction: variable -> the largest fraction missing in one step
    max_missing_fraction: tuple[tuple[str, float], ...] = ()

    # meta.yaml's "MAJOR.MINOR": each major version has a store of its own (None: the unversioned path)
    version: str | None = None
    # The recipe as planned (forge.recipe.loading.frozen): workers load it without importing its module
    recipe_blob: bytes | None = field(default=None, repr=False, compare=False)
    # Build anew beside what is published even if it is made of the same inputs (``forge run --rebuild``)
    rebuild: bool = False
    # A build: what was published when it began (a Zarr store's fingerprint, or Icechunk main's snapshot;
    # "": nothing; None: not looked at). A build that finds it moved catches up before it publishes.
    published_base: str | None = None
    # An append that catches a rebuild up with appends published while it ran: it extends the rebuild's
    # unpublished work, then publishes it (forge.publish.transaction.CatchUp)
    catch_up: CatchUp | None = None

    @property
    def target_url(self) -> str:
        if self.version:
            return join(self.target_root, self.recipe_id, f"v{major_of(self.version)}.{self.target_format}")
        return join(self.target_root, f"{self.recipe_id}.{self.target_format}")

    @property
    def store_url(self) -> str:
        """Where this run reads and writes its store: the target, or a Zarr rebuild's store beside it
        that this run catches up (an Icechunk rebuild's work is a branch of the target)."""
        return self.catch_up.url if self.catch_up else self.target_url


def cache_key(url: str) -> str:
    """Where a source lands in the cache: a digest of its URL plus its file name. Secret-free by design,
    since recipe URLs carry no secrets (they are added only when fetching)."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    name = PurePosixPath(urlsplit(url).path).name or "input"
    return f"{digest}-{name}"


@dataclass(frozen=True)
class CacheItem:
    key: Key
    url: str  # as in the recipe
    fetch_url: str  # after URL rewrites (a mirror or local replica)
    # The key's provisional file, where the pattern has them: read when the final one is not there yet.
    provisional_url: str | None = None
    provisional_fetch_url: str | None = None

    @property
    def cache_key(self) -> str:
        return cache_key(self.url)

    @property
    def provisional_cache_key(self) -> str | None:
        return cache_key(self.provisional_url) if self.provisional_url else None


@dataclass(frozen=True)
class CacheBatch:
    label: str
    host: str
    items: tuple[CacheItem, ...]

    def __str__(self) -> str:
        return f"{self.label} ({len(self.items)} inputs from {self.host})"


@dataclass(frozen=True)
class WriteBatch:
    label: str
    chunks: tuple[ChunkWrite, ...]
    # (concat position, merge positions, stack position) -> (location, url) of each input this batch reads
    inputs: dict[tuple[int, tuple[tuple[str, int], ...], int], tuple[str, str]] = field(default_factory=dict)
    # The concat coordinate's values at the batch's positions, from ``label_start`` on, for messages.
    labels: tuple[str, ...] = ()
    label_start: int = 0
    # What the target gave this batch to write through (CopyTarget.template_written), opaque to the
    # engine: an Icechunk fork, which Icechunk makes to be pickled to a worker and merged back; None for
    # a Zarr store, which batches write directly.
    handle: Any = None

    def labels_of(self, chunk: ChunkWrite) -> tuple[str, ...]:
        return self.labels[chunk.start - self.label_start : chunk.stop - self.label_start]

    def __str__(self) -> str:
        first, last = self.chunks[0], self.chunks[-1]
        return f"{self.label} (chunks {first.index}-{last.index}, items {first.start}-{last.stop})"


@dataclass(frozen=True)
class TargetSpec:
    """The prepared target, as the store and finalize stages need it."""

    run: RunSpec
    url: str
    concat_dim: str | None
    variables: tuple[VariableSpec, ...]  # those written by the store stage
    fingerprint: str
    complete: bool  # an identical finished store is already there: nothing to write
    n_inputs: int
    n_chunks: int
    concat_inputs: int = 0  # concat positions the store holds once this run is finalized
    appended: int = 0  # items added along the concat dimension by this run (append mode)
    # Append mode: the concat coordinate's new values (encoded), written at the commit, which rewrites
    # the coordinate in one chunk.
    new_coordinate: np.ndarray | None = None
    checks: Checks = field(default_factory=Checks)  # what the store stage checks before anything publishes
    transaction: Transaction | None = None  # Icechunk targets: the run's unpublished work
    # A Zarr store rebuilt while its previous build stays published: ``url`` is where it is built, and
    # finalize moves it here once it is complete.
    publish_to: str | None = None
    publish_base: str | None = None  # that store's fingerprint then: publish only over it, else catch up
    dataset_version: str | None = None  # "MAJOR.MINOR" the store holds once published
    # A pattern with provisional files: the store's ``provisional`` flags along the concat dimension
    # from where this run writes (an append writes them at its commit, like the coordinate).
    new_provisional: np.ndarray | None = None
    stack: Stack | None = None  # inputs stacked along a second ConcatDim

    @property
    def published_url(self) -> str:
        return self.publish_to or self.url

    @property
    def health_from(self) -> int:
        """The first concat position whose statistics the store keeps (for its health plot): only the
        newest steps', so a long build does not pay for them."""
        return max(0, self.concat_inputs - HEALTH_STEPS)

    @property
    def format(self) -> str:
        return self.run.target_format
