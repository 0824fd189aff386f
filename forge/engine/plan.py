"""The write plan: pure arithmetic over input lengths and target chunk sizes (no I/O, no xarray).

Every target chunk along the concat dimension gets exactly one writer, which writes it whole (all other
dimensions included), so writers need no locks and no region can straddle a Zarr chunk, whatever the
combination of ``nitems_per_file`` and ``target_chunks``. A writer reads from each overlapping input only
the slice it needs. Writers are grouped into contiguous batches; task runs grow with batches, not inputs.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate


@dataclass(frozen=True)
class Piece:
    """Items ``[src_start, src_stop)`` of the input at concat ``position`` go to ``dst_start``."""

    position: int
    src_start: int
    src_stop: int
    dst_start: int


@dataclass(frozen=True)
class ChunkWrite:
    """Target chunk ``index`` covers ``[start, stop)`` along the concat dimension."""

    index: int
    start: int
    stop: int
    pieces: tuple[Piece, ...]


@dataclass(frozen=True)
class Stack:
    """Files stacked whole along ``dim`` (a second ConcatDim): stack position ``j`` holds items
    ``[offsets[j], offsets[j + 1])`` of the target along it."""

    dim: str
    lengths: tuple[int, ...]

    def locate(self, region: slice) -> tuple[int, slice]:
        """The stack position holding ``region`` of the target, and the region within its files.

        >>> Stack("member", (2, 2, 1)).locate(slice(2, 4))
        (1, slice(0, 2, None))
        """
        offsets = [0, *accumulate(self.lengths)]
        j = bisect.bisect_right(offsets, region.start) - 1
        if not 0 <= j < len(self.lengths) or region.stop > offsets[j + 1]:
            raise ValueError(f"{self.dim} [{region.start}, {region.stop}) is not within one stacked input")
        return j, slice(region.start - offsets[j], region.stop - offsets[j])

    def chunk(self, requested: int | None) -> int:
        """The target chunk along the stack dimension: ``requested``, or the largest that fits every
        input's length; it must divide each, so that no chunk takes items of two inputs.

        >>> Stack("member", (2, 4, 2)).chunk(None)
        2
        """
        size = requested or math.gcd(*self.lengths)
        if any(n % size for n in self.lengths):
            raise ValueError(
                f"target_chunks[{self.dim!r}] = {size} does not divide the inputs' lengths along "
                f"{self.dim!r} {list(self.lengths)}: a chunk along a stacked dimension is one input's"
            )
        return size


def split_evenly(n: int, parts: int) -> list[range]:
    """``range(n)`` cut into ``parts`` contiguous, near-equal, non-empty ranges (fewer if n < parts).

    Examples
    --------
    >>> split_evenly(10, 3)
    [range(0, 3), range(3, 6), range(6, 10)]
    """
    parts = max(1, min(parts, n))
    bounds = [n * i // parts for i in range(parts + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def chunk_writes(
    lengths: Sequence[int], chunk: int, offset: int = 0, first_position: int = 0
) -> list[ChunkWrite]:
    """One :class:`ChunkWrite` per target chunk, with the input slices that fill it.

    ``offset`` items are already stored (an append): writes start there, so the first one may fill the
    rest of a partly written chunk; it is still that chunk's only writer. Inputs are numbered from
    ``first_position``.

    Examples
    --------
    >>> [(c.start, c.stop, [(p.position, p.src_start, p.src_stop) for p in c.pieces])
    ...  for c in chunk_writes([2, 2, 2], 3)]
    [(0, 3, [(0, 0, 2), (1, 0, 1)]), (3, 6, [(1, 1, 2), (2, 0, 2)])]
    >>> [(c.index, c.start, c.stop, [(p.position, p.src_start, p.dst_start) for p in c.pieces])
    ...  for c in chunk_writes([2, 2], 3, offset=4, first_position=4)]
    [(1, 4, 6, [(4, 0, 0)]), (2, 6, 8, [(5, 0, 0)])]
    """
    if chunk < 1:
        raise ValueError("chunk size must be >= 1")
    if any(n < 1 for n in lengths):
        raise ValueError("every input must have at least one item along the concat dimension")
    offsets = [offset + n for n in (0, *accumulate(lengths))]
    total = offsets[-1]
    writes = []
    pos = 0
    for start in range(offset - offset % chunk, total, chunk):
        lo_chunk, stop = max(start, offset), min(start + chunk, total)
        while offsets[pos + 1] <= lo_chunk:
            pos += 1
        pieces = []
        p = pos
        while p < len(lengths) and offsets[p] < stop:
            lo, hi = max(lo_chunk, offsets[p]), min(stop, offsets[p + 1])
            pieces.append(Piece(p + first_position, lo - offsets[p], hi - offsets[p], lo - lo_chunk))
            p += 1
        writes.append(ChunkWrite(start // chunk, lo_chunk, stop, tuple(pieces)))
    return writes


def batch_chunks(writes: Sequence[ChunkWrite], max_batches: int) -> list[tuple[ChunkWrite, ...]]:
    """Group chunk writes into at most ``max_batches`` contiguous batches."""
    return [tuple(writes[r.start : r.stop]) for r in split_evenly(len(writes), max_batches)]


def default_chunk(item_bytes: int, total: int, target_bytes: int = 64 * 2**20) -> int:
    """Items per chunk so that the largest variable's chunk is about ``target_bytes`` (at least 1)."""
    return max(1, min(total, target_bytes // max(1, item_bytes)))


def n_cache_batches(n_inputs: int, max_concurrency: int, batch_size: int) -> int:
    """Enough batches to use the per-host concurrency, none larger than ``batch_size`` inputs, and a
    whole number of rounds of ``max_concurrency`` batches, so that the last round does not run alone.

    >>> n_cache_batches(16_500, 4, 1000), n_cache_batches(10, 4, 1000), n_cache_batches(3, 4, 1000)
    (20, 4, 3)
    """
    rounds = math.ceil(n_inputs / (batch_size * max_concurrency))
    return max(1, min(n_inputs, rounds * max_concurrency))
