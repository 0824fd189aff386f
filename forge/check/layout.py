"""Chunk and shard sizes against published guidance for cloud reads (compressed chunks of a few MB,
shards of a few hundred MB, as dynamical.org's layout tool advises): pure arithmetic, warnings only."""

from __future__ import annotations

import math
from collections.abc import Sequence

MB = 2**20
CHUNK_BYTES = (MB // 4, 64 * MB)  # "a few MB", compressed, give or take a factor of 4 to 16
SHARD_BYTES = (25 * MB, 2048 * MB)  # "a few hundred MB"
ADVICE = {  # (when too small, when too large)
    "chunks": ("larger chunks read faster from object storage", "a small read fetches all of it"),
    "shards": ("fewer, larger shards make fewer objects", "each is rewritten whole by an append into it"),
}


def _size(n: float) -> str:
    return f"{n / MB:.3g} MB"


def layout_warnings(
    name: str,
    chunks: Sequence[int],
    shards: Sequence[int] | None,
    itemsize: int,
    ratio: float | None = None,
) -> list[str]:
    """What is far from the guidance in ``name``'s layout. ``ratio``: compressed over raw bytes, as the
    pruned build measured it (None: sizes are judged raw).

    Examples
    --------
    >>> layout_warnings("sst", (10, 720, 1440), None, 2, ratio=0.4)
    []
    >>> layout_warnings("tas", (2, 3, 4), None, 4)
    ['tas: chunks of 9.16e-05 MB raw, far below a few MB: larger chunks read faster from object storage']
    """
    scale, how = (ratio, "compressed (estimated)") if ratio else (1.0, "raw")
    judged = [("chunks", chunks, CHUNK_BYTES, "a few MB", ADVICE["chunks"])]
    if shards:
        judged.append(("shards", shards, SHARD_BYTES, "a few hundred MB", ADVICE["shards"]))
    found = []
    for what, shape, (low, high), guidance, (if_small, if_large) in judged:
        size = math.prod(shape) * itemsize * scale
        if not low <= size <= high:
            side, advice = ("below", if_small) if size < low else ("above", if_large)
            found.append(f"{name}: {what} of {_size(size)} {how}, far {side} {guidance}: {advice}")
    return found
