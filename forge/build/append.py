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
import json
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import xarray as xr
import zarr
from xarray.coding.times import decode_cf_datetime, encode_cf_datetime

from forge.build.caching import source_probe
from forge.recipe.recipes import XarrayZarrRecipe
from forge.build.schema import InputSummary, Template, VariableSpec
from forge.build.target import (
    COMPLETE_ATTR,
    FINGERPRINT_ATTR,
    INPUTS_ATTR,
    combine_inputs,
    digest_inputs,
    open_group,
    pending_marker,
    plan_write_batches,
)
from forge.build.types import RunSpec, TargetSpec, WriteBatch

logger = logging.getLogger(__name__)

# Up to this many new positions, every one is probed (finding any gap); beyond, a binary search finds
# the source's frontier and probes this many past it for a gap.
LINEAR_PROBES = 64
GAP_LOOKAHEAD = 5
PACKING = ("scale_factor", "add_offset", "_FillValue", "missing_value", "units", "calendar")


class AppendError(ValueError):
    """The new inputs cannot be appended; the store is left as it was."""


@dataclass(frozen=True)
class StoreState:
    concat_dim: str
    concat_inputs: int  # concat positions in the store (an interrupted append: where it started)
    length: int  # items along the concat dimension, likewise
    pending: bool


def dims_of(arr: zarr.Array) -> tuple[str, ...]:
    names = getattr(arr.metadata, "dimension_names", None)
    return tuple(names) if names else tuple(arr.attrs.get("_ARRAY_DIMENSIONS", ()))


def read_state(url: str, concat_dim: str) -> StoreState:
    """How far the store at ``url`` goes along ``concat_dim``."""
    try:
        group = open_group(url, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        raise AppendError(f"{url} does not exist: build it first (run without --append)") from None
    attrs = dict(group.attrs)
    storage, key = pending_marker(url)
    marker = storage.read_text(key)
    if marker:
        pending = json.loads(marker)
        return StoreState(concat_dim, int(pending["from_inputs"]), int(pending["from_length"]), True)
    if attrs.get(COMPLETE_ATTR) is not True:
        raise AppendError(f"{url} is an unfinished build: run the recipe without --append to finish it")
    if INPUTS_ATTR not in attrs:
        raise AppendError(f"{url} does not record {INPUTS_ATTR}: rebuild it with this version to append")
    return StoreState(concat_dim, int(attrs[INPUTS_ATTR]), group[concat_dim].shape[0], False)


def new_inputs(recipe: XarrayZarrRecipe, state: StoreState) -> list[list[str]]:
    """URLs of the pattern's inputs beyond the store (what an append would add), by concat position."""
    by_position: dict[int, list[str]] = {}
    for key, url in recipe.pattern.items():
        if key[state.concat_dim] >= state.concat_inputs:
            by_position.setdefault(key[state.concat_dim], []).append(url)
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
    if units and "since" in str(units):
        return str(units), arr.attrs.get("calendar", "standard")
    return None


def _stored_coordinate(group: zarr.Group, dim: str, length: int) -> np.ndarray:
    arr = group[dim]
    raw = arr[:length]
    encoding = _time_encoding(arr)
    return np.asarray(decode_cf_datetime(raw, *encoding) if encoding else raw)


def encode_coordinate(group: zarr.Group, dim: str, values: np.ndarray, first_url: str) -> np.ndarray:
    """The new coordinate values in the store's own encoding; exactly, or an error naming the input."""
    arr = group[dim]
    encoding = _time_encoding(arr)
    units, calendar = encoding or (arr.attrs.get("units"), None)
    if encoding is None:
        encoded = np.asarray(values).astype(arr.dtype)
        exact = np.array_equal(encoded, values)
    else:
        encoded, _, _ = encode_cf_datetime(values, units, calendar, dtype=arr.dtype)
        exact = np.array_equal(np.asarray(decode_cf_datetime(encoded, units, calendar)), values)
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
    if (steps <= np.zeros_like(steps[:1])).any():
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
        if dim in dims_of(arr) and name not in new:
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
    state = read_state(run.target_url, dim)
    ordered = sorted(summaries, key=lambda s: s.key)
    first_url = ordered[0].url
    template = combine_inputs(recipe, ordered)
    group = open_group(run.target_url)
    if state.pending:  # a crash may have resized some arrays and not others: back to the recorded start
        for _, arr in group.arrays():
            dims = dims_of(arr)
            if dim in dims and arr.shape[dims.index(dim)] != state.length:
                arr.resize(
                    tuple(state.length if d == dim else n for d, n in zip(dims, arr.shape, strict=True))
                )
    check_compatible(group, template, first_url)
    new_values = np.asarray(template.concat_values)
    check_continuity(_stored_coordinate(group, dim, state.length), new_values, dim, first_url)
    encoded = encode_coordinate(group, dim, new_values, first_url)

    n_new = int(sum(template.lengths))
    total = state.length + n_new
    concat_inputs = state.concat_inputs + len(template.lengths)
    # The intent first: a crash from here on is finished by the next append, from the same start.
    marker = {"from_inputs": state.concat_inputs, "from_length": state.length}
    storage, key = pending_marker(run.target_url)
    storage.write_text(key, json.dumps(marker))
    chunk = None
    for name, arr in group.arrays():
        dims = dims_of(arr)
        if dim in dims:
            axis = dims.index(dim)
            arr.resize(tuple(total if i == axis else n for i, n in enumerate(arr.shape)))
            if name != dim and chunk is None:
                chunk = arr.chunks[axis]
    group[dim][state.length : total] = encoded
    batches = plan_write_batches(
        recipe, template, ordered, chunk or n_new, offset=state.length, workers=run.workers
    )
    logger.info(
        "appending %d items (%d inputs) to %s from %s=%s",
        n_new,
        len(ordered),
        run.target_url,
        dim,
        new_values[0],
    )
    spec = TargetSpec(
        run,
        run.target_url,
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
    state = read_state(run.target_url, recipe.concat_dim)
    if state.pending:
        logger.warning("%s has an interrupted append: finishing it first", run.target_url)
    positions = new_inputs(recipe, state)
    n = available_prefix(positions, exists or source_probe(recipe, run))
    if n < len(positions):
        logger.info("the source has nothing from %s on yet: appending up to there", positions[n][0])
        # Pruning the concat dimension there keeps every later stage within what the source has.
        run = replace(run, prune=state.concat_inputs + n)
    return replace(run, append_from=state.concat_inputs), [url for urls in positions[:n] for url in urls]


def describe_append(url: str, new: Sequence[str], dry_run: bool) -> str:
    """What an append adds (or would add, or that there is nothing new), for the CLI and the flow log."""
    if not new:
        return f"nothing new to append to {url}"
    verb = "would append" if dry_run else "appending"
    return f"{verb} {len(new)} inputs to {url}:" + "".join(f"\n  {u}" for u in new)
