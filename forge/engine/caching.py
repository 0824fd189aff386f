"""Cache stage: copy sources into the cache in batches and summarize every input's schema and length."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from urllib.parse import urlsplit

from forge.engine.plan import n_cache_batches, split_evenly
from forge.engine.schema import share_equal_parts, summarize
from forge.engine.types import CacheBatch, CacheItem, InputSummary, RunSpec
from forge.io.access import SourceAccess
from forge.io.fetch import SourceSession, download, make_temp_path, source_exists
from forge.io.openers import check_magic, get_opener, open_input, open_raw
from forge.io.secrets import Lookup, env_lookup, redact_url
from forge.io.storage import Storage
from forge.recipe.patterns import rewrite_url
from forge.recipe.recipes import XarrayZarrRecipe

logger = logging.getLogger(__name__)


def host_of(url: str) -> str:
    return urlsplit(url).netloc or urlsplit(url).scheme or "local"


def plan_cache(recipe: XarrayZarrRecipe, run: RunSpec, stage: str = "cache") -> list[CacheBatch]:
    """Group the inputs by source host into batches (enough to use each host's concurrency limit),
    labelled ``{stage}-NNNN``."""
    by_host: dict[str, list[CacheItem]] = {}
    concat = recipe.concat_dim
    for key, url in recipe.pattern.items():
        if run.append_from and concat and key[concat] < run.append_from:
            continue  # already in the store
        fetch_url = rewrite_url(url, run.url_rewrites)
        provisional = recipe.pattern.provisional_url(key)
        provisional_fetch = rewrite_url(provisional, run.url_rewrites) if provisional else None
        item = CacheItem(key, url, fetch_url, provisional, provisional_fetch)
        by_host.setdefault(host_of(fetch_url), []).append(item)
    batches = []
    for host, items in by_host.items():
        n = n_cache_batches(len(items), recipe.max_concurrency_per_host, recipe.cache_batch_size)
        for r in split_evenly(len(items), n):
            batches.append(CacheBatch(f"{stage}-{len(batches):04d}", host, tuple(items[r.start : r.stop])))
    return batches


def host_windows(recipe: XarrayZarrRecipe, batches: list[CacheBatch]) -> dict[str, int]:
    """How many batches of each source host may fetch at once: the host's limit, or fewer if it has fewer
    batches. Empty for inputs read in place: nothing is downloaded."""
    if reads_in_place(recipe):
        return {}
    counts = Counter(b.host for b in batches)
    return {host: min(recipe.max_concurrency_per_host, n) for host, n in sorted(counts.items())}


def reads_in_place(recipe: XarrayZarrRecipe) -> bool:
    """Zarr stores and OPeNDAP URLs are read where they are; everything else is copied into the cache."""
    return get_opener(recipe.pattern.file_type).in_place


def fetch_missing(
    recipe: XarrayZarrRecipe,
    run: RunSpec,
    batch: CacheBatch,
    lookup: Lookup = env_lookup,
) -> int:
    """Download every input of the batch that is not cached yet; returns how many were downloaded.

    Each file is written to a staging path, checked (complete body, right file type) and only then moved
    into the cache, so a truncated or wrong download is never taken as cached.
    """
    if reads_in_place(recipe):
        return 0
    storage = Storage(run.cache_root)
    missing = [item for item in batch.items if not storage.exists(item.cache_key)]
    if not missing:
        return 0
    access = source_access(recipe, lookup)
    staging = storage.staging_dir()
    t0, total, fetched = time.perf_counter(), 0, 0
    # One session per batch: a batch's inputs come from one host, so connections (and TLS) are reused.
    with SourceSession(access) as session:
        for item in missing:
            url, fetch_url, key = item.url, item.fetch_url, item.cache_key
            if item.provisional_url and not source_exists(
                fetch_url, display_url=source_text(url, fetch_url), access=access, session=session
            ):  # no final file yet: its provisional one (cached already, or fetched now)
                url, fetch_url, key = (
                    item.provisional_url,
                    item.provisional_fetch_url,
                    item.provisional_cache_key,
                )
                if storage.exists(key):
                    continue
            display = source_text(url, fetch_url)
            tmp = make_temp_path(staging, key)
            try:
                size = download(fetch_url, tmp, display_url=display, access=access, session=session)
                check_magic(tmp, recipe.pattern.file_type, display)
                storage.put_file_atomic(tmp, key)
            finally:
                tmp.unlink(missing_ok=True)
            total, fetched = total + size, fetched + 1
            # Per input at DEBUG only: on Prefect every INFO record is a row in its database.
            logger.debug("cached %s (%d bytes)", display, size)
    logger.info(
        "%s: cached %d inputs (%.1f MB) from %s in %.1fs",
        batch.label,
        fetched,
        total / 1e6,
        batch.host,
        time.perf_counter() - t0,
    )
    return fetched


def source_text(url: str, fetch_url: str) -> str:
    """An input as messages name it: the recipe's URL, and the mirror it was read from, if any."""
    if fetch_url == url:
        return redact_url(url)
    return f"{redact_url(url)} (from {redact_url(fetch_url)})"


def source_access(recipe: XarrayZarrRecipe, lookup: Lookup = env_lookup) -> SourceAccess:
    """The pattern's credentials, resolved, and the hosts they may go to."""
    pattern = recipe.pattern
    return SourceAccess.resolve(
        recipe.source_options, pattern.query_string_secrets, pattern.trusted_redirect_hosts, lookup
    )


def source_probe(
    recipe: XarrayZarrRecipe, run: RunSpec, lookup: Lookup = env_lookup
) -> Callable[[str], bool]:
    """``exists(url)`` for the pattern's URLs, asked of the source the way the cache stage fetches them."""
    access = source_access(recipe, lookup)
    session = SourceSession(access)

    def exists(url: str) -> bool:
        fetch_url = rewrite_url(url, run.url_rewrites)
        return source_exists(
            fetch_url, display_url=source_text(url, fetch_url), access=access, session=session
        )

    return exists


def location_of(recipe: XarrayZarrRecipe, item: CacheItem) -> str:
    return item.fetch_url if reads_in_place(recipe) else item.cache_key


@contextlib.contextmanager
def opened(recipe: XarrayZarrRecipe, storage: Storage, location: str, name: str, raw: bool = False):
    """An input opened lazily from the cache (or in place), with ``process_input`` applied. Without
    ``process_input``, nothing selects by label, so no pandas indexes are built (a third of an open).

    ``raw=True`` gives a :class:`~forge.io.openers.RawInput` of packed values instead of a Dataset.
    ``name`` is the input's secret-free URL, used in messages and passed to ``process_input``.
    """
    path_cm: AbstractContextManager[Path | str] = (
        contextlib.nullcontext(location) if reads_in_place(recipe) else storage.local_path(location)
    )
    with path_cm as path:
        file_type = recipe.pattern.file_type
        kwargs = {"create_default_indexes": recipe.process_input is not None, **recipe.xarray_open_kwargs}
        ds = (
            open_raw(path, file_type, name, kwargs)
            if raw
            else open_input(path, file_type, name, open_kwargs=kwargs)
        )
        try:
            yield ds if raw else recipe.preprocess(ds, name)
        finally:
            ds.close()


def summarize_batch(recipe: XarrayZarrRecipe, run: RunSpec, batch: CacheBatch) -> list[InputSummary]:
    storage = Storage(run.cache_root)
    out = []
    # Inputs may repeat variables along the concat dimension (bounds): merged or stacked ones
    merged = bool(recipe.pattern.merge_dims) or recipe.stack_dim is not None
    for item in batch.items:
        location, url = location_of(recipe, item), item.url
        provisional = item.provisional_url is not None and not storage.exists(location)
        if provisional:  # its final file is not there yet (fetch_missing took the provisional one)
            location, url = item.provisional_cache_key, item.provisional_url
        size = 0 if reads_in_place(recipe) else storage.size(location)
        with opened(recipe, storage, location, url) as ds:
            summary = summarize(ds, item.key, url, location, size, recipe.concat_dim, merged)
        out.append(dataclasses.replace(summary, provisional=True) if provisional else summary)
    return share_equal_parts(out)


def cache_batch(
    recipe: XarrayZarrRecipe,
    run: RunSpec,
    batch: CacheBatch,
    lookup: Lookup = env_lookup,
) -> list[InputSummary]:
    """The whole cache stage for one batch: fetch what is missing, then summarize every input.

    Downloads are one at a time within a batch; the flow bounds how many batches of a host run at once
    (:func:`host_windows`)."""
    fetch_missing(recipe, run, batch, lookup)
    return summarize_batch(recipe, run, batch)
