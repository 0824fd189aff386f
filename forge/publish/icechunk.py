"""Icechunk targets: every build and append is one commit, published only if ``main`` has not moved.

A run works on a branch of its own, ``forge-run-<id>``, made at ``main``'s tip when it starts (its
*base*). It writes the template there and commits it (Icechunk forks only a session without uncommitted
changes), hands each store batch a fork of a session on that branch, merges the forks back, validates,
and commits. Then it moves ``main`` to that commit, but only if ``main`` is still at the base: a run that
lost the race to another fails, saying so, and nothing is clobbered. A crash at any point leaves ``main``
as it was; the abandoned branch is deleted by a later run. Readers only ever see ``main``:

    repo = icechunk.Repository.open(storage)
    xr.open_zarr(repo.readonly_session("main").store, consolidated=False)

Storage comes from the target URL: a local path, ``s3://bucket/prefix`` (credentials and endpoint from
the environment, as the clouds' SDKs take them), ``gs://``, or ``az://container/prefix`` with
``AZURE_STORAGE_ACCOUNT_NAME``.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import zarr

from forge._version import __version__
from forge.errors import ForgeError
from forge.io.s3_options import S3Options
from forge.publish.transaction import CatchUp, RebuildBehind, Transaction

if TYPE_CHECKING:
    import icechunk
    from icechunk import ForkSession, Repository, Session

logger = logging.getLogger(__name__)
MAIN = "main"
RUN_BRANCH_PREFIX = "forge-run-"
STALE_AFTER = dt.timedelta(days=7)  # an abandoned run branch older than this is deleted
KIND = "forge:kind"  # commit metadata: build, append, rollback (prepare: a run's template, not published)


@functools.cache
def _icechunk() -> ModuleType:
    """icechunk, imported on first use, not with this module: a process that has imported icechunk 2
    cannot fork (the child's first Icechunk call through zarr never returns: tokio), and the fork server
    of the Dask workers imports the stages, this module among them."""
    import icechunk

    if "ICECHUNK_LOG" not in os.environ:
        # Icechunk warns on every open of a local repository that concurrent commits are unsafe there: a
        # run's publish is a compare-and-swap of main, which local disk makes atomic only short of a race
        # within the same instant (docs/publishing.md). Errors still show; ICECHUNK_LOG sets the rest.
        icechunk.set_logs_filter("error")
    return icechunk


class PublishError(ForgeError):
    """The run could not publish: another run moved ``main`` first, or the repository is not one."""


def storage_for(url: str) -> icechunk.Storage:
    """Icechunk storage for a target URL, configured from the environment."""
    parts = urlsplit(url)
    scheme, bucket, prefix = parts.scheme, parts.netloc, parts.path.strip("/")
    if scheme in ("", "file"):
        return _icechunk().local_filesystem_storage(parts.path if scheme else url)
    if scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return _icechunk().s3_storage(
            bucket=bucket,
            prefix=prefix,
            region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
            endpoint_url=endpoint,
            allow_http=bool(endpoint and endpoint.startswith("http://")),
            force_path_style=bool(endpoint),
            from_env=True,
        )
    if scheme in ("gs", "gcs"):
        return _icechunk().gcs_storage(bucket=bucket, prefix=prefix, from_env=True)
    if scheme in ("az", "abfs", "abfss"):
        container, _, account_host = bucket.partition("@")
        account = account_host.split(".")[0] or os.environ.get("AZURE_STORAGE_ACCOUNT_NAME", "")
        return _icechunk().azure_storage(account=account, container=container, prefix=prefix, from_env=True)
    raise PublishError(f"no Icechunk storage for {url!r}: use a local path, s3://, gs:// or az://")


def open_repository(url: str, create: bool = False) -> Repository:
    storage = storage_for(url)
    if _icechunk().Repository.exists(storage):
        return _icechunk().Repository.open(storage)
    if not create:
        raise PublishError(f"{url} is not an Icechunk repository: build it first")
    return _icechunk().Repository.create(storage)


def virtual_repository(url: str, prefixes: Sequence[str] = (), s3: S3Options | None = None) -> Repository:
    """The repository of virtual references at ``url`` (made when missing), with a virtual chunk
    container for each of ``prefixes`` (``scheme://host/``, or a local folder's ``file://`` URL) that no
    container covers yet, saved in its config; opened with read access to all of its containers (S3
    sources as ``s3`` says)."""
    icechunk = _icechunk()
    storage = storage_for(url)
    new = not icechunk.Repository.exists(storage)
    config = None if new else icechunk.Repository.fetch_config(storage)
    config = config or icechunk.RepositoryConfig.default()
    known = set(config.virtual_chunk_containers or {})
    missing = [p for p in prefixes if not any(p.startswith(k) for k in known)]
    for prefix in missing:
        config.set_virtual_chunk_container(
            icechunk.VirtualChunkContainer(prefix, _container_store(prefix, s3))
        )
    access = dict.fromkeys(known | set(missing))
    if new:
        return icechunk.Repository.create(storage, config=config, authorize_virtual_chunk_access=access)
    repo = icechunk.Repository.open(
        storage, config=config if missing else None, authorize_virtual_chunk_access=access
    )
    if missing:
        repo.save_config()
    return repo


def _container_store(prefix: str, s3: S3Options | None) -> Any:
    """Where a virtual chunk container's chunks are read from."""
    parts = urlsplit(prefix)
    if parts.scheme in ("http", "https"):
        return _icechunk().http_store()
    if parts.scheme == "file":
        return _icechunk().local_filesystem_store(parts.path)
    if parts.scheme == "s3":  # read as the recipe's storage_options say (credentials: the environment's)
        s3 = s3 or S3Options()
        return _icechunk().s3_store(
            region=s3.region,
            endpoint_url=s3.endpoint,
            allow_http=bool(s3.endpoint and s3.endpoint.startswith("http://")),
            anonymous=s3.anonymous,
            s3_compatible=bool(s3.endpoint),
            force_path_style=bool(s3.endpoint),
            requester_pays=s3.requester_pays,
        )
    if parts.scheme in ("gs", "gcs"):
        return _icechunk().gcs_store()
    raise PublishError(f"Icechunk cannot hold references to {prefix} sources")


def exists(url: str) -> bool:
    return _icechunk().Repository.exists(storage_for(url))


def format_version(url: str) -> int:
    """The repository's Icechunk format (spec) version: 1 as the Icechunk 1 line writes it, 2 as new
    repositories are made. This project reads, appends to and publishes both."""
    return int(open_repository(url).spec_version)


def upgrade(url: str, dry_run: bool = False) -> tuple[int, int]:
    """Move a repository to the current Icechunk format: (version before, version after; with
    ``dry_run``, the version it would have).

    Irreversible: readers on the Icechunk 1 line can no longer open it. Icechunk requires that nothing
    else reads or writes the repository meanwhile (no run, no append deployment).
    """
    repo = open_repository(url)
    before = int(repo.spec_version)
    if before >= int(_icechunk().spec_version()):
        return before, before
    upgraded = _icechunk().upgrade_icechunk_repository(repo, dry_run=dry_run)
    return before, int(_icechunk().spec_version()) if dry_run else int(upgraded.spec_version)


def begin(
    url: str, repo: Repository | None = None, catch_up: CatchUp | None = None, base: str | None = None
) -> tuple[Transaction, Session]:
    """A transaction from ``main``'s tip (the repository is made if there is none), and a writable
    session on its branch. ``repo``: the repository at ``url`` already opened, as a writer of virtual
    references opens it (with its chunk containers). ``base``: publish only over this snapshot of
    ``main`` (what a build found when it began), not over the tip. ``catch_up``: go on with a rebuild's
    branch instead, to publish over ``main`` as it was when the rebuild last looked."""
    repo = repo or open_repository(url, create=True)
    if catch_up is not None and catch_up.branch is not None:
        return Transaction(url, catch_up.branch, catch_up.base or ""), repo.writable_session(catch_up.branch)
    _delete_stale_branches(repo)
    tip = repo.lookup_branch(MAIN)
    branch = f"{RUN_BRANCH_PREFIX}{uuid.uuid4().hex[:12]}"
    repo.create_branch(branch, tip)
    return Transaction(url, branch, base or tip), repo.writable_session(branch)


def tip(url: str) -> str:
    """``main``'s snapshot ("": there is no repository yet)."""
    return open_repository(url).lookup_branch(MAIN) if exists(url) else ""


def published_session(url: str, snapshot: str | None = None, branch: str = MAIN) -> Session:
    """A read-only session on what readers see (``main``), on ``snapshot``, or on a run's ``branch``."""
    repo = open_repository(url)
    return repo.readonly_session(snapshot_id=snapshot) if snapshot else repo.readonly_session(branch=branch)


def fork(txn: Transaction, n: int) -> list[ForkSession]:
    """``n`` picklable sessions on the transaction's branch, one per store batch."""
    session = open_repository(txn.url).writable_session(txn.branch)
    return [session.fork() for _ in range(n)]


def merged(txn: Transaction, forks: Iterable[ForkSession]) -> Session:
    """A session on the transaction's branch holding what the store batches wrote."""
    session = open_repository(txn.url).writable_session(txn.branch)
    forks = [f for f in forks if f is not None]
    if forks:
        session.merge(*forks)
    return session


def run_metadata(
    kind: str,
    recipe_id: str,
    provenance: Mapping[str, Any],
    inputs: int,
    concat_inputs: int,
    appended_from: int | None = None,
) -> dict[str, Any]:
    """What a run's commit says of it, for ``forge history``: build or append, the recipe, the run (a
    flow run's id, or the runner), forge's version, the inputs it read and those the store now holds."""
    metadata = {
        KIND: kind,
        "forge:recipe_id": recipe_id,
        "forge:run_id": provenance.get("forge:flow_run_id") or provenance.get("forge:runner"),
        "forge:version": __version__,
        "forge:inputs": inputs,
        "forge:concat_inputs": concat_inputs,
    }
    if appended_from is not None:
        metadata["forge:appended_from"] = appended_from
    return metadata


def commit_and_publish(
    txn: Transaction, session: Session, message: str, metadata: Mapping[str, Any], rebuild: bool = False
) -> str:
    """Commit on the run's branch, then move ``main`` there if it is still where the run began."""
    snapshot = session.commit(message, metadata=dict(metadata))
    publish(txn, snapshot, rebuild)
    return snapshot


def publish(txn: Transaction, snapshot: str | None = None, rebuild: bool = False) -> None:
    """Move ``main`` to ``snapshot`` (default: the run branch's tip) if it is still at the run's base.
    A ``rebuild`` that finds it moved (appends published while it ran) raises :class:`RebuildBehind`,
    its branch kept, to be caught up; any other run fails, publishing nothing."""
    repo = open_repository(txn.url)
    snapshot = snapshot or repo.lookup_branch(txn.branch)
    try:
        repo.reset_branch(MAIN, snapshot, from_snapshot_id=txn.base)
    except _icechunk().IcechunkError as e:
        now = repo.lookup_branch(MAIN)
        if rebuild:
            raise RebuildBehind(
                f"{txn.url}: main moved while this rebuild ran (from {txn.base} to {now}): it catches up "
                f"with what was published meanwhile (its work is kept on branch {txn.branch})",
                CatchUp(txn.url, now, txn.branch),
            ) from e
        raise PublishError(
            f"{txn.url}: main moved while this run worked (from {txn.base} to {now}): another run published "
            "first, and this one published nothing. Run again to build on what is there now."
        ) from e
    repo.delete_branch(txn.branch)


def _delete_stale_branches(repo: Repository) -> None:
    """Run branches left by crashed runs, once they are a week old (a live run's branch is younger)."""
    now = dt.datetime.now(dt.UTC)
    for branch in repo.list_branches():
        if branch.startswith(RUN_BRANCH_PREFIX):
            tip = repo.lookup_snapshot(repo.lookup_branch(branch))
            if now - tip.written_at > STALE_AFTER:
                repo.delete_branch(branch)


@dataclass(frozen=True)
class Commit:
    id: str
    written_at: dt.datetime
    message: str
    metadata: dict[str, Any]


def history(url: str) -> list[Commit]:
    """``main``'s published commits, newest first (a run's template commits are left out)."""
    repo = open_repository(url)
    return [
        Commit(s.id, s.written_at, s.message, dict(s.metadata))
        for s in repo.ancestry(branch=MAIN)
        if KIND in s.metadata
    ]


def rollback(url: str, to: str, metadata: Mapping[str, Any]) -> str:
    """Move ``main`` to the content of the published commit ``to``, as a new commit on top of it that
    records the rollback. The commits rolled back stay in the repository (a ``forge-rolled-back-<tip>``
    branch keeps them), so rolling back to the old tip undoes it."""
    repo = open_repository(url)
    try:
        published = KIND in repo.lookup_snapshot(to).metadata
    except _icechunk().IcechunkError:
        published = False
    if not published:
        raise PublishError(f"{to} is not a commit forge published in {url} (see `forge history`)")
    tip = repo.lookup_branch(MAIN)
    # A branch at the tip keeps the commits being rolled back reachable (and garbage collection away).
    if f"forge-rolled-back-{tip}" not in repo.list_branches():
        repo.create_branch(f"forge-rolled-back-{tip}", tip)
    branch = f"{RUN_BRANCH_PREFIX}{uuid.uuid4().hex[:12]}"
    repo.create_branch(branch, to)
    session = repo.writable_session(branch)
    group = zarr.open_group(session.store, mode="r+")
    group.attrs.update({"forge:rolled_back_from": tip, "forge:rolled_back_to": to})
    txn = Transaction(url, branch, tip)
    message = f"rollback to {to} (from {tip})"
    return commit_and_publish(txn, session, message, {**metadata, KIND: "rollback", "forge:rollback_to": to})
