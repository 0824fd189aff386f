"""What a store batch writes at once: whole shards where the array has them, in bounded reads."""

from __future__ import annotations

import zarr

from forge.engine.writers import slabs, write_units


def test_a_writer_writes_whole_shards_else_whole_chunks():
    plain = zarr.create_array(zarr.storage.MemoryStore(), shape=(24, 4), chunks=(4, 4), dtype="i2")
    sharded = zarr.create_array(
        zarr.storage.MemoryStore(), shape=(24, 4), chunks=(4, 4), shards=(12, 4), dtype="i2"
    )
    assert write_units(plain) == (4, 4) and write_units(sharded) == (12, 4)


def test_reads_are_bounded_but_never_split_an_item():
    assert list(slabs(0, 10, item_bytes=4, limit=16)) == [(0, 4), (4, 8), (8, 10)]
    assert list(slabs(5, 7, item_bytes=100, limit=16)) == [(5, 6), (6, 7)]  # one item at least
