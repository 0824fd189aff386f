"""The target interface: what the stages, the catalog and the commands ask of a kind of target, in the
spirit of zarr-python's ``Store``: a few operations each kind implements once, and the engine
(forge.engine.target, forge.engine.append, forge.engine.writers, forge.engine.references) and the
catalog built on them, never asking which kind they have.

:class:`Target` is what every kind is to readers: how it opens, its history, how the catalog describes
it. :class:`CopyTarget` adds a copy's writes (a Zarr store, an Icechunk repository: template, store
batches, publish); :class:`~forge.engine.targets.references.ReferenceTarget` adds the references'
(kerchunk JSON or Parquet, an Icechunk repository of virtual chunks)."""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import xarray as xr
import zarr

from forge.engine.attrs import FINGERPRINT_ATTR, PROVISIONAL, PROVISIONAL_ATTRS
from forge.errors import ForgeError
from forge.publish.transaction import Transaction

if TYPE_CHECKING:
    from forge.engine.types import RunSpec, TargetSpec, WriteBatch
    from forge.publish.icechunk import Commit
    from forge.recipe.recipes import XarrayZarrRecipe

ZARR_MEDIA_TYPE = "application/vnd+zarr"  # the STAC Zarr best practices' media type

# The root attributes a run publishes, made from the store as the run leaves it (an append keeps the
# health record of the steps before it).
AttrsFor = Callable[[zarr.Group], dict[str, Any]]


@dataclass
class Work:
    """A run's unpublished store, open for writing: where it is (``url``), its writable ``store``, and
    what its publish needs (an Icechunk run's transaction and session; a Zarr store built beside the
    published one, with what was published when it began)."""

    url: str
    store: zarr.abc.store.Store
    transaction: Transaction | None = None
    publish_to: str | None = None
    publish_base: str | None = None
    session: Any = field(default=None, repr=False)

    def group(self) -> zarr.Group:
        # Never a consolidated copy: it is stale while a run writes (it is rewritten at the end).
        return zarr.open_group(self.store, mode="r+", use_consolidated=False)


class NoHistory(ForgeError):
    """The target keeps no history of its runs (only Icechunk repositories do)."""


class Target(ABC):
    """One kind of target at ``url``, as readers and the catalog see it."""

    format: ClassVar[str]
    # Virtual references to the sources' chunks (a ReferenceRecipe's), not a copy of the data.
    references: ClassVar[bool] = False
    # How readers open it with xarray: consolidated metadata if the store has it (None), or never (False).
    consolidated: ClassVar[bool | None] = None
    media_type: ClassVar[str] = ZARR_MEDIA_TYPE

    def __init__(self, url: str):
        self.url = url

    @abstractmethod
    def open_published(self, **kwargs: Any) -> xr.Dataset:
        """The dataset readers see, lazily, its chunks readable (``kwargs`` go to ``xr.open_zarr``);
        FileNotFoundError if nothing is published."""

    def is_here(self) -> bool:
        """Whether what is at ``url`` is of this kind, where two kinds share a format (an Icechunk
        repository holds a copy or references)."""
        return True

    def history(self) -> list[Commit]:
        """The published runs, newest first."""
        raise NoHistory(f"{self.url}: a {self.format} target keeps no history (Icechunk targets do)")

    def rollback(self, to: str, metadata: Mapping[str, Any]) -> str:
        """Publish again what the run ``to`` published, as a new run that says so; its id."""
        raise NoHistory(f"{self.url}: a {self.format} target cannot be rolled back (Icechunk targets can)")

    def zarr_format(self) -> int:
        return 3

    def asset_fields(self) -> dict[str, Any]:
        """What a reader needs besides the href, for the STAC asset (the Zarr and xarray extensions')."""
        fields: dict[str, Any] = {
            "zarr:zarr_format": self.zarr_format(),
            "forge:format": self.format,
            "xarray:open_kwargs": {"consolidated": self.consolidated is not False},
        }
        if self.references:  # chunks read from the sources: forge.open_references opens it
            fields["forge:references"] = True
        return fields

    @property
    def roles(self) -> list[str]:
        return ["data", "references"] if self.references else ["data"]

    @abstractmethod
    def reader_snippet(self) -> tuple[str, str]:
        """How to open it without forge, for the catalog page: (a title, Python code)."""


class CopyTarget(Target):
    """A target that holds a copy of the data (Zarr, Icechunk): its template, its store batches'
    writes, and a publish in one step after the checks."""

    # -- what readers see ---------------------------------------------------------------------------
    @abstractmethod
    def published_store(self, branch: str | None = None) -> zarr.abc.store.Store | None:
        """What readers see, read-only (None: nothing published yet); ``branch``: an Icechunk run's
        unpublished work instead."""

    def published_group(self, branch: str | None = None) -> zarr.Group | None:
        store = self.published_store(branch)
        if store is None:
            return None
        try:
            return zarr.open_group(store, mode="r", use_consolidated=False)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError, ValueError):
            return None

    def open_published(self, **kwargs: Any) -> xr.Dataset:
        store = self.published_store()
        if store is None:
            raise FileNotFoundError(self.url)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # zarr's about consolidated metadata
            return xr.open_zarr(store, consolidated=self.consolidated, **kwargs)

    def published_id(self) -> str:
        """Which state readers see ("": none), for a build to publish only over what it began from."""
        group = self.published_group()
        return str(group.attrs.get(FINGERPRINT_ATTR, "")) if group is not None else ""

    def interrupted_append(self) -> dict[str, Any] | None:
        """The record of an append that died before its commit (None: there is none)."""
        return None

    # -- a run's work -------------------------------------------------------------------------------
    @abstractmethod
    def begin_build(self, run: RunSpec, replacing: bool, base: str) -> Work:
        """Where a build writes: ``replacing`` a finished store readers keep until this one publishes,
        over ``base`` (what was published when the build began)."""

    @abstractmethod
    def begin_append(self, run: RunSpec) -> Work:
        """Where an append writes: the store (or the rebuild it catches up), to be extended."""

    def resume(self, work: Work, dim: str, length: int, coordinate: dict[str, Any] | None) -> None:  # noqa: B027
        """Put a store an append died in back to how the append found it (``length`` items along
        ``dim``): only stores with an :meth:`interrupted_append` have anything to put back."""

    @abstractmethod
    def record_intent(
        self,
        work: Work,
        dim: str,
        start: tuple[int, int],
        stored: np.ndarray,
        recorded: dict[str, Any] | None,
        held: np.ndarray | None,
    ) -> None:
        """Before an append resizes anything: where it starts (concat inputs, items), the concat
        coordinate's ``stored`` values (``recorded``: as an interrupted append recorded them) and the
        ``provisional`` flags ``held``, for a crash to be finished from the same start."""

    @abstractmethod
    def extend_coordinate(
        self,
        work: Work,
        dim: str,
        stored: np.ndarray,
        new: np.ndarray,
        flags: tuple[np.ndarray, np.ndarray] | None,
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The appended concat coordinate (``stored`` then ``new`` values, encoded) and ``provisional``
        flags (held, new): written now, or the new ones returned, to be written at the commit (readers
        see the store's extent move then)."""

    @abstractmethod
    def template_written(self, work: Work, message: str, n_batches: int) -> list[Any]:
        """The template (metadata, coordinates, static variables) is written: what each of at most
        ``n_batches`` store batches writes through (none: the store itself)."""

    @abstractmethod
    def batch_group(self, target: TargetSpec, batch: WriteBatch) -> zarr.Group:
        """The group a store batch writes its chunks into."""

    @abstractmethod
    def publish(
        self,
        recipe: XarrayZarrRecipe,
        target: TargetSpec,
        attrs_for: AttrsFor,
        handles: Sequence[Any],
        message: str,
        metadata: Mapping[str, Any],
    ) -> None:
        """Make the run's work what readers see, in one step, after the recipe's tests pass on it as
        readers will open it; ``message`` and ``metadata`` describe the run where the target keeps a
        history. A rebuild overtaken by an append raises
        :class:`~forge.publish.transaction.RebuildBehind`."""

    @abstractmethod
    def publish_staged(self, run: RunSpec) -> None:
        """Publish a rebuild that a catch-up found nothing more to append to."""


def dims_of(arr: zarr.Array) -> tuple[str, ...]:
    names = getattr(arr.metadata, "dimension_names", None)
    return tuple(names) if names else tuple(arr.attrs.get("_ARRAY_DIMENSIONS", ()))


def write_coordinate(group: zarr.Group, name: str, values: np.ndarray) -> None:
    """Replace the 1-D array ``name`` by ``values`` in one chunk, keeping its metadata (an append grows
    the concat coordinate, which stays one chunk)."""
    old = group[name]
    kwargs: dict[str, Any] = {
        "shape": values.shape,
        "chunks": values.shape,
        "dtype": old.dtype,
        "fill_value": old.fill_value,
        "compressors": old.compressors,
        "filters": old.filters,
        "attributes": dict(old.attrs),
        "overwrite": True,
    }
    if old.metadata.zarr_format == 3:
        kwargs["dimension_names"] = old.metadata.dimension_names
    group.create_array(name, **kwargs)[:] = values


def write_flags(group: zarr.Group, dim: str, flags: np.ndarray) -> None:
    """The store's ``provisional`` flags, whole, in one chunk (made if the store, built before its
    pattern had provisional files, has none)."""
    if PROVISIONAL not in group:
        v3 = group.metadata.zarr_format == 3
        attrs = dict(PROVISIONAL_ATTRS, **({} if v3 else {"_ARRAY_DIMENSIONS": [dim]}))
        extra = {"dimension_names": [dim]} if v3 else {}
        group.create_array(
            PROVISIONAL, shape=flags.shape, chunks=flags.shape, dtype=bool, attributes=attrs, **extra
        )
    write_coordinate(group, PROVISIONAL, flags)


def is_rebuild(run: RunSpec) -> bool:
    """Whether a run that finds the published store moved on catches up with it (a build, or the
    catch-up of one), rather than failing (an append: the next one adds what it missed)."""
    return run.append_from is None or run.catch_up is not None
