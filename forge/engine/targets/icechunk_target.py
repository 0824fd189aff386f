"""Icechunk repositories: every run works on a branch of its own and publishes in one commit, moving
``main`` by compare-and-swap (forge.publish.icechunk); store batches write through forks of the run's
session."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
import zarr

from forge.engine.acceptance import ReadersView, publish_metadata, run_checks
from forge.engine.attrs import REFERENCED_INPUTS_ATTR
from forge.engine.targets.base import (
    AttrsFor,
    CopyTarget,
    Target,
    Work,
    is_rebuild,
    write_coordinate,
    write_flags,
)
from forge.publish import icechunk as repository
from forge.publish.transaction import Transaction

if TYPE_CHECKING:
    from forge.engine.types import RunSpec, TargetSpec, WriteBatch
    from forge.publish.icechunk import Commit
    from forge.recipe.recipes import XarrayZarrRecipe


class IcechunkRepository(Target):
    """What every Icechunk repository is, whatever it holds: ``main`` is what readers see, and every
    run one commit on it, kept (history, rollback)."""

    format = "icechunk"
    consolidated = False  # a repository's metadata is whole already

    def published_id(self) -> str:
        return repository.tip(self.url)

    def history(self) -> list[Commit]:
        return repository.history(self.url)

    def rollback(self, to: str, metadata: Mapping[str, Any]) -> str:
        return repository.rollback(self.url, to, metadata)

    def asset_fields(self) -> dict[str, Any]:
        return {**super().asset_fields(), "icechunk:branch": repository.MAIN}

    def holds_references(self) -> bool | None:
        """Whether ``main`` holds references or a copy (None: nothing is published), read from its root
        attributes alone (no virtual chunk container needs authorizing for that)."""
        if not repository.exists(self.url):
            return None
        store = repository.published_session(self.url).store
        try:
            attrs = zarr.open_group(store, mode="r", use_consolidated=False).attrs
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            return None
        return REFERENCED_INPUTS_ATTR in attrs

    def reader_snippet(self) -> tuple[str, str]:
        return (
            "Open with icechunk and xarray",
            "import icechunk\nimport xarray as xr\n\n"
            f"repo = icechunk.Repository.open({icechunk_storage_code(self.url)})\n"
            'ds = xr.open_zarr(repo.readonly_session("main").store, consolidated=False)',
        )


def icechunk_storage_code(url: str) -> str:
    """The icechunk call that makes storage for ``url`` (credentials from the reader's environment)."""
    parts = urlsplit(url)
    bucket, prefix = parts.netloc, parts.path.strip("/")
    if parts.scheme == "s3":
        return f"icechunk.s3_storage(bucket={bucket!r}, prefix={prefix!r}, from_env=True)"
    if parts.scheme in ("gs", "gcs"):
        return f"icechunk.gcs_storage(bucket={bucket!r}, prefix={prefix!r}, from_env=True)"
    if parts.scheme in ("az", "abfs", "abfss"):
        container, _, host = bucket.partition("@")
        account = host.split(".")[0]
        return (
            f"icechunk.azure_storage(account={account!r}, container={container!r}, prefix={prefix!r}, "
            "from_env=True)"
        )
    return f"icechunk.local_filesystem_storage({(parts.path if parts.scheme else url)!r})"


class IcechunkTarget(IcechunkRepository, CopyTarget):
    """An Icechunk repository holding a copy of the data."""

    def is_here(self) -> bool:
        return self.holds_references() is not True

    def published_store(self, branch: str | None = None) -> zarr.abc.store.Store | None:
        if not repository.exists(self.url):
            return None
        return repository.published_session(self.url, branch=branch or repository.MAIN).store

    def begin_build(self, run: RunSpec, replacing: bool, base: str) -> Work:
        # Readers keep main until the commit, whatever the build replaces.
        transaction, session = repository.begin(self.url, base=base or None)
        return Work(self.url, session.store, transaction, session=session)

    def begin_append(self, run: RunSpec) -> Work:
        # Everything on the run's branch, from main as it is now (or on the rebuild it catches up).
        transaction, session = repository.begin(self.url, catch_up=run.catch_up)
        return Work(self.url, session.store, transaction, session=session)

    def record_intent(
        self,
        work: Work,
        dim: str,
        start: tuple[int, int],
        stored: np.ndarray,
        recorded: dict[str, Any] | None,
        held: np.ndarray | None,
    ) -> None:
        """Nothing to record: a run that dies leaves ``main`` as it was (its branch is deleted later)."""

    def extend_coordinate(
        self,
        work: Work,
        dim: str,
        stored: np.ndarray,
        new: np.ndarray,
        flags: tuple[np.ndarray, np.ndarray] | None,
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        # Nobody reads the run's branch: the coordinate is written now.
        group = work.group()
        write_coordinate(group, dim, np.concatenate([stored, new]))
        if flags is not None:
            write_flags(group, dim, np.concatenate(flags))
        return None, None

    def template_written(self, work: Work, message: str, n_batches: int) -> list[Any]:
        # Icechunk forks only a session without uncommitted changes: the template is a commit of its own
        # on the run's branch (never published: main moves to the run's final commit only).
        work.session.commit(message, metadata={"forge:stage": "prepare"})
        return repository.fork(work.transaction, n_batches)

    def batch_group(self, target: TargetSpec, batch: WriteBatch) -> zarr.Group:
        return zarr.open_group(batch.handle.store, mode="r+", use_consolidated=False)

    def publish(
        self,
        recipe: XarrayZarrRecipe,
        target: TargetSpec,
        attrs_for: AttrsFor,
        handles: Sequence[Any],
        message: str,
        metadata: Mapping[str, Any],
    ) -> None:
        session = repository.merged(target.transaction, handles)
        group = zarr.open_group(session.store, mode="r+", use_consolidated=False)
        group.attrs.update(attrs_for(group))
        if recipe.tests:  # on the commit as readers will open it (consolidated too, if they ask)
            view = ReadersView(session.store)
            publish_metadata(view, {}, True, recipe.zarr_format)
            run_checks(recipe.tests, view, target.url, consolidated=None)
        repository.commit_and_publish(target.transaction, session, message, metadata, is_rebuild(target.run))

    def publish_staged(self, run: RunSpec) -> None:
        catch_up = run.catch_up
        if catch_up is None or catch_up.branch is None:
            raise ValueError("publish_staged needs a run that catches an Icechunk rebuild up")
        repository.publish(Transaction(self.url, catch_up.branch, catch_up.base or ""), rebuild=True)
