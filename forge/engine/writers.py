"""Store stage: fill whole target chunks from slices of the inputs and write each chunk once.

Memory stays near one target chunk of one variable: each variable's chunk is assembled, written, and
dropped before the next. Variables that every input stores exactly as the target does are copied as
packed values, never decoded; the others are decoded and re-encoded with the target's encoding.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr
import zarr
from xarray.conventions import encode_cf_variable

from forge.engine.caching import opened
from forge.engine.plan import ChunkWrite, Stack
from forge.engine.targets import copy_at
from forge.engine.types import TargetSpec, VariableSpec, WriteBatch
from forge.errors import RecipeCodeError
from forge.io.openers import RawInput
from forge.io.storage import Storage
from forge.publish.validate import StepStats, step_statistics
from forge.recipe.recipes import XarrayZarrRecipe

logger = logging.getLogger(__name__)
SLAB_BYTES = 8 * 2**20  # largest single read: bounds the decode temporaries whatever an input's size


class ChunkWriteError(RuntimeError):
    pass


@dataclass
class BatchStats:
    chunks: int = 0
    bytes_written: int = 0  # encoded (packed) bytes handed to Zarr
    seconds: float = 0.0
    handle: Any = None  # the batch's handle (an Icechunk fork) with what it wrote, for the publish
    # The newest steps' statistics, for the store's health plot: variable -> concat position -> stats
    health: dict[str, dict[int, StepStats]] = field(default_factory=dict)


class _Inputs:
    """Inputs opened once (raw and/or decoded) and closed as soon as no later chunk of the batch reads them,
    so a batch holds open only the inputs of the chunk it is writing."""

    def __init__(self, recipe: XarrayZarrRecipe, target: TargetSpec, batch: WriteBatch):
        self.recipe, self.batch = recipe, batch
        self.storage = Storage(target.run.cache_root)
        self.open: dict[tuple[int, tuple, int, bool], tuple[xr.Dataset | RawInput, contextlib.ExitStack]] = {}

    def dataset(
        self, position: int, source: tuple, raw: bool, stacked: int = 0
    ) -> tuple[xr.Dataset | RawInput, str]:
        """The input at concat ``position`` and stack position ``stacked`` holding variables of merge
        ``source``, and its URL for messages."""
        location, url = self.batch.inputs[(position, source, stacked)]
        key = (position, source, stacked, raw)
        if key not in self.open:
            stack = contextlib.ExitStack()
            self.open[key] = (
                stack.enter_context(opened(self.recipe, self.storage, location, url, raw)),
                stack,
            )
        return self.open[key][0], url

    def close_before(self, position: int | None = None) -> None:
        """Close the inputs before concat ``position`` (None: all of them)."""
        for key in [k for k in self.open if position is None or k[0] < position]:
            self.open.pop(key)[1].close()


def write_units(arr: zarr.Array) -> tuple[int, ...]:
    """What a writer writes whole: the array's shards, else its chunks."""
    return arr.shards or arr.chunks


def _blocks(spec: VariableSpec, arr: zarr.Array, concat_dim: str) -> Iterator[dict[str, slice]]:
    """Regions of one concat chunk (or shard), one per Zarr chunk (or shard) along the other dimensions."""
    ranges = []
    for dim, n, c in zip(spec.dims, spec.shape, write_units(arr), strict=True):
        if dim == concat_dim:
            continue
        ranges.append([(dim, slice(s, min(s + c, n))) for s in range(0, n, c)])
    for combo in itertools.product(*ranges):
        yield dict(combo)


def _read(source: xr.Dataset | RawInput, spec: VariableSpec, indexers: dict[str, slice]) -> np.ndarray:
    if isinstance(source, RawInput):
        return np.asarray(source.read(spec.name, indexers), dtype=spec.encoded_dtype)
    return _encoded(source[spec.name].variable[indexers], spec)


def _encoded(var: xr.Variable, spec: VariableSpec) -> np.ndarray:
    """Decoded values as the target stores them (its packing, fill value, dtype)."""
    var = var.copy(deep=False)
    var.encoding = dict(spec.encoding)
    return np.asarray(encode_cf_variable(var, name=spec.name).values, dtype=spec.encoded_dtype)


def slabs(start: int, stop: int, item_bytes: int, limit: int | None = None) -> Iterator[tuple[int, int]]:
    """``[start, stop)`` in reads of at most ``limit`` (default ``SLAB_BYTES``) bytes, one item at least.

    Examples
    --------
    >>> list(slabs(0, 10, item_bytes=4, limit=16))
    [(0, 4), (4, 8), (8, 10)]
    """
    step = max(1, (limit or SLAB_BYTES) // max(1, item_bytes))
    for lo in range(start, stop, step):
        yield lo, min(lo + step, stop)


def chunk_blocks(
    inputs: _Inputs,
    spec: VariableSpec,
    arr: zarr.Array,
    chunk: ChunkWrite,
    concat_dim: str,
    stack: Stack | None = None,
) -> Iterator[tuple[tuple[slice, ...], np.ndarray]]:
    """Each (region, encoded values) of one target chunk of one variable, assembled from input slices
    (a block along a stack dimension is read from the one stacked input that holds it)."""
    axis = spec.dims.index(concat_dim)
    length = chunk.stop - chunk.start
    size = write_units(arr)[axis]
    # A write stays inside one Zarr chunk (or shard) and ends at its end (or the array's); it may start
    # inside it only when an append fills the rest of a partly written one.
    if chunk.start // size != (chunk.stop - 1) // size or (
        chunk.stop % size and chunk.stop != arr.shape[axis]
    ):
        raise ChunkWriteError(
            f"chunk {chunk.index} [{chunk.start}, {chunk.stop}) does not match the Zarr chunks "
            f"{write_units(arr)} of {spec.name!r}; the write plan is inconsistent with the target"
        )
    for block in _blocks(spec, arr, concat_dim):
        shape = [length if d == concat_dim else block[d].stop - block[d].start for d in spec.dims]
        buf = np.empty(shape, dtype=spec.encoded_dtype)
        item_bytes = buf.size // length * max(spec.dtype.itemsize, buf.itemsize)  # one step, decoded
        stacked, within = 0, dict(block)
        if stack is not None and stack.dim in block:
            stacked, within[stack.dim] = stack.locate(block[stack.dim])
        for piece in chunk.pieces:
            source, url = inputs.dataset(piece.position, spec.source, spec.raw_ok, stacked)
            for lo, hi in slabs(piece.src_start, piece.src_stop, item_bytes):
                indexers = {**within, concat_dim: slice(lo, hi)}
                dst = [slice(None)] * len(shape)
                dst[axis] = slice(
                    piece.dst_start + lo - piece.src_start, piece.dst_start + hi - piece.src_start
                )
                try:
                    buf[tuple(dst)] = _read(source, spec, indexers)
                except Exception as e:
                    raise ChunkWriteError(
                        f"reading {spec.name!r} [{lo}:{hi}] from input {url}: {type(e).__name__}: {e}"
                    ) from e
        region = tuple(slice(chunk.start, chunk.stop) if d == concat_dim else block[d] for d in spec.dims)
        yield region, buf


def processed_chunk(
    recipe: XarrayZarrRecipe, inputs: _Inputs, target: TargetSpec, chunk: ChunkWrite, label: str
) -> xr.Dataset:
    """One target chunk, decoded, as xarray would combine its inputs' slices (merged across merge
    dimensions, concatenated): every variable, those not along the concat dimension too, as
    pangeo-forge 0.9 gives it to the recipe's ``process_chunk``."""
    concat = target.concat_dim
    sources = sorted({spec.source for spec in target.variables})
    parts = []
    for piece in chunk.pieces:
        window = {concat: slice(piece.src_start, piece.src_stop)}
        held = [inputs.dataset(piece.position, source, raw=False)[0].isel(window) for source in sources]
        parts.append(held[0] if len(held) == 1 else xr.merge(held, compat="override", join="override"))
    options = {
        "data_vars": "minimal",
        "coords": "minimal",
        "compat": "override",
        **recipe.xarray_concat_kwargs,
    }
    ds = parts[0] if len(parts) == 1 else xr.concat(parts, concat, **options)
    return recipe.postprocess_chunk(ds, label)


def processed_block(
    processed: xr.Dataset, spec: VariableSpec, chunk: ChunkWrite, concat_dim: str, label: str
) -> tuple[tuple[slice, ...], np.ndarray]:
    """(region, encoded values) of ``spec`` in a chunk ``process_chunk`` gave back: the whole chunk."""
    length = chunk.stop - chunk.start
    shape = tuple(length if d == concat_dim else n for d, n in zip(spec.dims, spec.shape, strict=True))
    var = processed.variables.get(spec.name)
    if var is None or var.dims != spec.dims or var.shape != shape:
        got = "no such variable" if var is None else f"dims {var.dims}, shape {var.shape}"
        raise RecipeCodeError(
            f"process_chunk on {label} changed {spec.name!r} ({got}; the target has dims {spec.dims}, "
            f"shape {shape} in this chunk): it must keep each variable's dimensions and shape"
        )
    region = tuple(slice(chunk.start, chunk.stop) if d == concat_dim else slice(None) for d in spec.dims)
    return region, _encoded(var, spec)


class _StepHealth:
    """The statistics of one variable's steps in one chunk, summed over the chunk's blocks: only for
    steps from ``first`` on (the newest), and only for data variables with numbers."""

    def __init__(self, spec: VariableSpec, chunk: ChunkWrite, first: int, axis: int):
        self.start = max(chunk.start, first)
        self.skip = self.start - chunk.start
        self.on = chunk.stop > first and not spec.is_coord and spec.encoded_dtype.kind in "iuf"
        self.name, self.axis, self.fill = spec.name, axis, spec.encoding.get("_FillValue")
        self.missing: np.ndarray | int = 0
        self.sums: np.ndarray | float = 0.0

    def add(self, buf: np.ndarray) -> None:
        if self.on:
            newest = buf[(slice(None),) * self.axis + (slice(self.skip, None),)]
            missing, sums = step_statistics(newest, self.axis, self.fill)
            self.missing, self.sums = self.missing + missing, self.sums + sums

    def record(self, into: dict[str, dict[int, StepStats]], labels: tuple[str, ...], cells: int) -> None:
        if not self.on or isinstance(self.missing, int):
            return
        steps = into.setdefault(self.name, {})
        for i, (missing, total) in enumerate(zip(self.missing, self.sums, strict=True)):
            position = self.start + i
            label = labels[self.skip + i] if labels else str(position)
            steps[position] = (label, int(missing), cells, float(total))


def store_batch(recipe: XarrayZarrRecipe, target: TargetSpec, batch: WriteBatch) -> BatchStats:
    """Write every chunk of the batch; each chunk has exactly this one writer.

    One write is in flight while the next block is read, so decoding inputs overlaps encoding and
    writing the previous block; memory holds at most two blocks.
    """
    t0 = time.perf_counter()
    stats = BatchStats(handle=batch.handle)
    group = copy_at(target.url, target.format).batch_group(target, batch)
    arrays = {v.name: group[v.name] for v in target.variables}
    pending: Future | None = None
    inputs = _Inputs(recipe, target, batch)
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(1, thread_name_prefix="zarr-write") as writer:
        stack.callback(inputs.close_before)
        for i, chunk in enumerate(batch.chunks):
            labels = batch.labels_of(chunk)
            where = f"chunk {chunk.index} ({labels[0]} to {labels[-1]})" if labels else f"chunk {chunk.index}"
            processed = (
                processed_chunk(recipe, inputs, target, chunk, where) if recipe.process_chunk else None
            )
            for spec in target.variables:
                arr = arrays[spec.name]
                axis = spec.dims.index(target.concat_dim)
                missing = np.zeros(chunk.stop - chunk.start, dtype=np.int64)  # per step, over its blocks
                blocks = (
                    [processed_block(processed, spec, chunk, target.concat_dim, where)]
                    if processed is not None
                    else chunk_blocks(inputs, spec, arr, chunk, target.concat_dim, target.stack)
                )
                health = _StepHealth(spec, chunk, target.health_from, axis)
                try:
                    for region, buf in blocks:
                        missing += target.checks.scan(spec.name, buf, axis, labels, target.url)
                        health.add(buf)
                        if pending is not None:
                            pending.result()
                        pending = writer.submit(arr.__setitem__, region, buf)
                        stats.bytes_written += buf.nbytes
                    cells = int(np.prod([n for i, n in enumerate(spec.shape) if i != axis], dtype=np.int64))
                    target.checks.check_missing(spec.name, missing, cells, labels, target.url)
                    health.record(stats.health, labels, cells)
                except ChunkWriteError as e:
                    raise ChunkWriteError(
                        f"{batch.label}: variable {spec.name!r}, chunk {chunk.index}: {e}"
                    ) from e
            stats.chunks += 1
            if i + 1 < len(batch.chunks):
                inputs.close_before(batch.chunks[i + 1].pieces[0].position)
        if pending is not None:
            pending.result()
    stats.seconds = time.perf_counter() - t0
    logger.info(
        "%s: wrote %d chunks (%.1f MB) in %.2fs",
        batch.label,
        stats.chunks,
        stats.bytes_written / 1e6,
        stats.seconds,
    )
    return stats
