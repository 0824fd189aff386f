"""Appending new inputs along the concat dimension: idempotent, crash-safe, checked against the store.

The store's attrs say how many concat positions it holds (``forge:concat_inputs``). An append takes the
pattern's positions from there on, checks that they match the stored schema and encoding, records its
intent (a marker file saying where it starts), resizes, writes, and only then commits the new count
and re-consolidates the metadata. Readers of the consolidated metadata see the old extent until the
commit. A run that finds a pending append redoes it from the recorded start: every write lands in the
same place, so the result is the same as an uninterrupted append, and the same as one full build.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import xarray as xr
import zarr

from forge.engine.attrs import COMPLETE_ATTR, FINGERPRINT_ATTR, INPUTS_ATTR, PROVISIONAL
from forge.engine.caching import source_probe
from forge.engine.fingerprint import digest_inputs
from forge.engine.layout import stack_of
from forge.engine.target import checks_for, current_group
from forge.engine.targets import copy_at
from forge.engine.targets.base import dims_of
from forge.engine.template import combine_inputs, provisional_flags
from forge.engine.times import decode_times, exact_encoding, is_time_units
from forge.engine.types import (
    InputSummary,
    RunSpec,
    TargetSpec,
    Template,
    VariableSpec,
    WriteBatch,
    cache_key,
)
from forge.engine.write_plan import n_write_batches, plan_write_batches
from forge.engine.writers import write_units
from forge.errors import ForgeError
from forge.io.storage import Storage
from forge.recipe.patterns import FilePattern
from forge.recipe.recipes import XarrayZarrRecipe

logger = logging.getLogger(__name__)

# Up to this many new positions, every one is probed (finding any gap); beyond, a binary search finds
# the source's frontier and probes this many past it for a gap.
LINEAR_PROBES = 64
GAP_LOOKAHEAD = 5
PACKING = ("scale_factor", "add_offset", "_FillValue", "missing_value", "units", "calendar")


class AppendError(ForgeError, ValueError):
    """The new inputs cannot be appended; the store is left as it was."""


@dataclass(frozen=True)
class StoreState:
    concat_dim: str
    concat_inputs: int  # concat positions in the store (an interrupted append: where it started)
    length: int  # items along the concat dimension, likewise
    pending: bool
    # An interrupted append's record of the concat coordinate as it was: its metadata documents and
    # stored values (the append rewrites that array whole, to keep it one chunk).
    coordinate: dict[str, Any] | None = None


def read_state(
    url: str, concat_dim: str, target_format: str = "zarr", group: zarr.Group | None = None
) -> StoreState:
    """How far the store at ``url`` goes along ``concat_dim`` (``group``: read there, not from what is
    published), or where an interrupted append started (a Zarr store's marker)."""
    target = copy_at(url, target_format)
    group = group if group is not None else target.published_group()
    if group is None:
        raise AppendError(f"{url} does not exist: build it first (run without --append)")
    attrs = dict(group.attrs)
    pending = target.interrupted_append()
    if pending:
        return StoreState(
            concat_dim,
            int(pending["from_inputs"]),
            int(pending["from_length"]),
            True,
            pending.get("coordinate"),
        )
    if attrs.get(COMPLETE_ATTR) is not True:
        raise AppendError(f"{url} is an unfinished build: run the recipe without --append to finish it")
    if INPUTS_ATTR not in attrs:
        raise AppendError(f"{url} does not record {INPUTS_ATTR}: rebuild it with this version to append")
    return StoreState(concat_dim, int(attrs[INPUTS_ATTR]), group[concat_dim].shape[0], False)


def new_inputs(pattern: FilePattern, concat_dim: str, held: int) -> list[list[str]]:
    """URLs of the pattern's inputs beyond the ``held`` concat positions a store has (what an append
    would add), by concat position."""
    by_position: dict[int, list[str]] = {}
    for key, url in pattern.items():
        if key[concat_dim] >= held:
            by_position.setdefault(key[concat_dim], []).append(url)
    return [by_position[p] for p in sorted(by_position)]


def available_prefix(positions: Sequence[Sequence[str]], exists: Callable[[str], bool]) -> int:
    """How many of the new positions the source has already (they appear in order).

    A short list (a daily append) is probed in full; a long one (catching up) by a binary search for the
    frontier, in log2(n) probes. A position missing while a later one is there is a gap at the source:
    refused before anything is fetched, never skipped.
    """

    def has(i: int) -> bool:
        return all(exists(url) for url in positions[i])

    n = len(positions)
    if n <= LINEAR_PROBES:
        first_missing, look_to = next((i for i in range(n) if not has(i)), n), n
    elif has(n - 1):
        return n
    else:
        lo, hi = -1, n - 1  # has(lo) (or lo is before the start); not has(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if has(mid) else (lo, mid)
        first_missing, look_to = hi, min(n, hi + 1 + GAP_LOOKAHEAD)
    for later in range(first_missing + 1, look_to):
        if has(later):
            missing = next(url for url in positions[first_missing] if not exists(url))
            raise AppendError(
                f"gap at the source: {missing} is not there but {positions[later][0]} is; nothing was "
                "appended (an append never skips an input): fix the source, or wait for it, and run again"
            )
    return first_missing


def _time_encoding(arr: zarr.Array) -> tuple[str, str] | None:
    """(units, calendar) of a CF time coordinate ("<unit> since <date>"), None for plain numbers."""
    units = arr.attrs.get("units")
    if is_time_units(units):
        return str(units), arr.attrs.get("calendar", "standard")
    return None


def stored_coordinate(group: zarr.Group, dim: str, length: int, raw: np.ndarray | None = None) -> np.ndarray:
    """The first ``length`` values of the store's concat coordinate, decoded (``raw``: its stored
    numbers, when they come from elsewhere: an interrupted append's marker)."""
    arr = group[dim]
    raw = arr[:length] if raw is None else raw
    encoding = _time_encoding(arr)
    return decode_times(raw, *encoding) if encoding else np.asarray(raw)


def encode_coordinate(group: zarr.Group, dim: str, values: np.ndarray, first_url: str) -> np.ndarray:
    """The new coordinate values in the store's own encoding; exactly, or an error naming the input."""
    arr = group[dim]
    encoding = _time_encoding(arr)
    units, calendar = encoding or (arr.attrs.get("units"), None)
    if encoding is None:
        encoded = np.asarray(values).astype(arr.dtype)
        exact = np.array_equal(encoded, values)
    else:
        encoded = exact_encoding(values, units, calendar, arr.dtype)
        exact = encoded is not None
    if not exact:
        raise AppendError(
            f"{dim!r} values of the new inputs (from {first_url}) cannot be stored exactly in the store's "
            f"encoding ({units!r}, calendar {calendar!r}, {arr.dtype}); the time resolution of the source "
            "changed. Rebuild the store."
        )
    return np.asarray(encoded)


def check_continuity(stored: np.ndarray, new: np.ndarray, dim: str, first_url: str) -> None:
    """New coordinate values must follow the stored ones: no overlap, and no gap in a regular series."""
    if len(stored) and new[0] <= stored[-1]:
        raise AppendError(
            f"overlap: the new inputs (from {first_url}) start at {dim}={new[0]}, not after the store's "
            f"last {dim}={stored[-1]}"
        )
    series = np.concatenate([stored[-2:], new])
    steps = np.diff(series)
    if len(steps) and any(s <= steps[0] * 0 for s in steps):  # also cftime dates, whose steps are timedeltas
        raise AppendError(f"{dim!r} of the new inputs (from {first_url}) is not increasing")
    if len(stored) >= 2:
        step = stored[-1] - stored[-2]
        gaps = [(series[i], series[i + 1]) for i in range(len(steps)) if steps[i] != step]
        if gaps:
            missing = ", ".join(f"after {a} the next is {b}" for a, b in gaps[:5])
            raise AppendError(
                f"gap in {dim!r}: the store steps by {step}, but {missing} (new inputs from {first_url}); "
                "a source file is missing. Nothing was appended."
            )


def check_compatible(group: zarr.Group, template: Template, first_url: str) -> None:
    """Every difference between the new inputs' schema and the store's, listed in one error."""
    dim = template.concat_dim
    problems = []
    new = {v.name: v for v in template.variables}
    for name, arr in group.arrays():
        if dim in dims_of(arr) and name not in new and name != PROVISIONAL:  # forge's, not the inputs'
            problems.append(f"variable {name!r} is in the store but not in the new inputs")
    missing = [v.name for v in template.variables if v.name not in group]
    problems += [f"variable {name!r} is new at the source (the store does not have it)" for name in missing]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        # The arrays' own metadata (not the consolidated copy, stale during an interrupted append),
        # decoded by xarray so that packing attrs compare as values.
        stored = xr.open_zarr(group.store, consolidated=False, decode_times=False)
    for v in template.variables:
        if v.name not in missing:
            problems += _variable_problems(group[v.name], stored[v.name], v, dim)
    if problems:
        raise AppendError(
            f"the new inputs (from {first_url}) do not match the store {group.store}: "
            + "; ".join(problems)
            + ". The store was not changed."
        )


def _variable_problems(arr: zarr.Array, stored: xr.DataArray, v: VariableSpec, dim: str) -> list[str]:
    stored_dims = dims_of(arr)
    if stored_dims != v.dims:
        return [f"{v.name!r} has dims {v.dims}, the store {stored_dims}"]
    problems = []
    for d, n_new, n_old in zip(v.dims, v.shape, arr.shape, strict=True):
        if d != dim and n_new != n_old:
            problems.append(f"{v.name!r} has {n_new} items along {d!r}, the store {n_old}")
    if not v.along_concat or v.name == dim:
        return problems  # static variables: shape only; the concat coordinate: by its values
    if np.dtype(arr.dtype) != v.encoded_dtype:
        problems.append(f"{v.name!r} is stored as {arr.dtype}, the new inputs as {v.encoded_dtype}")
    for attr in PACKING:
        new_value = v.encoding.get(attr, v.attrs.get(attr))
        old_value = stored.encoding.get(attr, stored.attrs.get(attr))
        if not _same_value(new_value, old_value):
            problems.append(f"{v.name!r} {attr} is {new_value!r}, the store's {old_value!r}")
    return problems


def _same_value(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    try:
        return bool(np.all(np.asarray(a, dtype=float) == np.asarray(b, dtype=float))) or (
            np.isnan(float(a)) and np.isnan(float(b))
        )
    except (TypeError, ValueError):
        return str(a) == str(b)


def prepare_append(
    recipe: XarrayZarrRecipe, run: RunSpec, summaries: Sequence[InputSummary]
) -> tuple[TargetSpec, list[WriteBatch]]:
    """Check the new inputs against the store, record the intent, resize, write the coordinate, plan."""
    dim = recipe.concat_dim
    if dim is None:
        raise AppendError("append needs a recipe with a concat dimension")
    ordered = sorted(summaries, key=lambda s: s.key)
    first_url = ordered[0].url
    template = combine_inputs(recipe, ordered)
    url = run.store_url  # the published store, or the rebuild this append catches up
    target = copy_at(url, run.target_format)
    work = target.begin_append(run)
    group = work.group()
    state = read_state(url, dim, run.target_format, group)
    if run.append_from is not None and run.append_from < state.concat_inputs:
        # Provisional steps replaced: the append starts at the first of them, as if the store ended there.
        nitems = recipe.pattern.concat_dim.nitems_per_file or 1
        state = replace(state, concat_inputs=run.append_from, length=run.append_from * nitems)
    if state.pending:  # an append died here: back to where it started
        target.resume(work, dim, state.length, state.coordinate)
        group = work.group()
    check_compatible(group, template, first_url)
    new_values = np.asarray(template.concat_values)
    stored = group[dim][: state.length]
    flags = None
    if recipe.pattern.provisional is not None:
        held = np.asarray(group[PROVISIONAL][: state.length], bool) if PROVISIONAL in group else None
        new_flags = provisional_flags(ordered, template)
        if held is not None or new_flags.any():  # a store of final files only has none
            flags = (held if held is not None else np.zeros(state.length, bool), new_flags)
    check_continuity(stored_coordinate(group, dim, state.length, stored), new_values, dim, first_url)
    encoded = encode_coordinate(group, dim, new_values, first_url)

    n_new = int(sum(template.lengths))
    total = state.length + n_new
    concat_inputs = state.concat_inputs + len(template.lengths)
    start = (state.concat_inputs, state.length)
    target.record_intent(work, dim, start, stored, state.coordinate, flags[0] if flags else None)
    chunk = None
    for name, arr in group.arrays():
        dims = dims_of(arr)
        if dim in dims and name not in (dim, PROVISIONAL):  # those two are written whole, at once
            axis = dims.index(dim)
            arr.resize(tuple(total if i == axis else n for i, n in enumerate(arr.shape)))
            chunk = chunk or write_units(arr)[axis]
    new_coordinate, new_provisional = target.extend_coordinate(work, dim, stored, encoded, flags)
    n_batches = n_write_batches(recipe, run.workers)
    handles = target.template_written(work, f"{run.recipe_id}: template", n_batches)
    batches = plan_write_batches(
        recipe, template, ordered, chunk or n_new, offset=state.length, workers=run.workers, handles=handles
    )
    logger.info(
        "appending %d items (%d inputs) to %s from %s=%s",
        n_new,
        len(ordered),
        url,
        dim,
        new_values[0],
    )
    spec = TargetSpec(
        run,
        url,
        dim,
        template.concat_variables,
        # Chained: the stored fingerprint and the new inputs (a full build of the range differs only here).
        fingerprint=digest_inputs(
            hashlib.sha256(str(group.attrs.get(FINGERPRINT_ATTR, "")).encode()), ordered
        ),
        complete=False,
        n_inputs=len(ordered),
        n_chunks=sum(len(b.chunks) for b in batches),
        concat_inputs=concat_inputs,
        appended=n_new,
        new_coordinate=new_coordinate,
        new_provisional=new_provisional,
        checks=checks_for(recipe, run, template),
        stack=stack_of(template),
        transaction=work.transaction,
        publish_to=work.publish_to,
        publish_base=work.publish_base,
        dataset_version=group.attrs.get("forge:dataset_version"),  # appends never change it
    )
    return spec, batches


def plan_append(
    recipe: XarrayZarrRecipe, run: RunSpec, exists: Callable[[str], bool] | None = None
) -> tuple[RunSpec, list[str]]:
    """The run in append mode (from where the store ends up to what the source has) and the URLs it adds.

    ``exists`` asks the source for a URL (default: the way the cache stage would fetch it).
    """
    if recipe.concat_dim is None:
        raise AppendError("append needs a recipe with a concat dimension")
    state = read_state(run.store_url, recipe.concat_dim, run.target_format, current_group(run))
    if state.pending:
        logger.warning("%s has an interrupted append: finishing it first", run.store_url)
    exists = exists or source_probe(recipe, run)
    start = state.concat_inputs
    if recipe.pattern.provisional is not None:
        start = min(start, first_final_again(recipe, run, state, exists))
        # A key not out yet as a final file may be out as a provisional one.
        finals = {url: recipe.pattern.provisional_url(key) for key, url in recipe.pattern.items()}
        exists = _or_provisional(exists, finals)
    positions = new_inputs(recipe.pattern, state.concat_dim, start)
    n = available_prefix(positions, exists)
    if n < len(positions):
        logger.info("the source has nothing from %s on yet: appending up to there", positions[n][0])
        # Pruning the concat dimension there keeps every later stage within what the source has.
        run = replace(run, prune=start + n)
    return replace(run, append_from=start), [url for urls in positions[:n] for url in urls]


def _or_provisional(
    exists: Callable[[str], bool], provisional_of: dict[str, str | None]
) -> Callable[[str], bool]:
    def either(url: str) -> bool:
        other = provisional_of.get(url)
        return exists(url) or (other is not None and exists(other))

    return either


def first_final_again(
    recipe: XarrayZarrRecipe, run: RunSpec, state: StoreState, exists: Callable[[str], bool]
) -> int:
    """The first stored provisional step whose final file is out now (the store's end if none): an
    append rewrites from there. A provisional step with neither file at the source any more is kept
    from the cache, and said; one the cache lost too stops the replacement before it."""
    group = current_group(run)
    if group is None or PROVISIONAL not in group:
        return state.concat_inputs
    nitems = recipe.pattern.concat_dim.nitems_per_file
    flags = np.asarray(group[PROVISIONAL][: state.length], dtype=bool)
    flagged = sorted({int(i) // nitems for i in np.flatnonzero(flags)})
    by_position: dict[int, list] = {}
    for key in recipe.pattern:
        if key[state.concat_dim] in flagged:
            by_position.setdefault(key[state.concat_dim], []).append(key)
    cache = Storage(run.cache_root)
    start = state.concat_inputs
    for position in reversed(flagged):
        keys = by_position.get(position, [])
        finals = [recipe.pattern[k] for k in keys]
        if keys and all(exists(url) for url in finals):
            start = position
            continue
        provisional = [recipe.pattern.provisional_url(k) for k in keys]
        if keys and not any(exists(url) for url in provisional):
            if all(cache.exists(cache_key(url)) for url in provisional):
                logger.warning(
                    "%s: neither the final nor the provisional file is at the source any more; the "
                    "provisional one is kept (from the cache)",
                    finals[0],
                )
            else:
                logger.warning(
                    "%s: neither the final nor the provisional file is at the source, nor in the cache: "
                    "the stored provisional step is kept as it is, and those before it too",
                    finals[0],
                )
                break
    return start


def describe_append(
    recipe: XarrayZarrRecipe, run: RunSpec, new: Sequence[str], dry_run: bool, listed: int = 20
) -> str:
    """What an append adds (or would add, or that there is nothing new): the range of the concat
    dimension's keys (the days, for a daily product) and the first ``listed`` URLs. For the CLI and the
    flow's log."""
    if not new:
        return f"nothing new to append to {run.target_url}"
    concat = recipe.pattern.concat_dim
    n_positions = len(new) // max(1, len(recipe.pattern) // len(concat.keys))
    keys = [_key_text(k) for k in concat.keys[run.append_from : run.append_from + n_positions]]
    span = keys[0] if len(keys) == 1 else f"{keys[0]} to {keys[-1]}"
    verb = "would append" if dry_run else "appending"
    more = f"\n  ... and {len(new) - listed} more" if len(new) > listed else ""
    return (
        f"{verb} {len(new)} inputs to {run.target_url} ({concat.name} {span}):"
        + "".join(f"\n  {u}" for u in new[:listed])
        + more
    )


def _key_text(key: Any) -> str:
    """A concat key for people: a day as 2026-11-14, anything else as it prints."""
    if hasattr(key, "strftime") and getattr(key, "hour", 0) == getattr(key, "minute", 0) == 0:
        return key.strftime("%Y-%m-%d")
    return str(key)
