from hypothesis import given, settings
from hypothesis import strategies as st

from forge.engine.plan import batch_chunks, chunk_writes, split_evenly

lengths_st = st.lists(st.integers(1, 7), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(lengths=lengths_st, chunk=st.integers(1, 25), max_batches=st.integers(1, 10))
def test_every_target_item_has_exactly_one_writer(lengths, chunk, max_batches):
    total = sum(lengths)
    writes = chunk_writes(lengths, chunk)
    written = [0] * total
    offsets = [sum(lengths[:i]) for i in range(len(lengths))]
    for w in writes:
        # no region straddles a Zarr chunk: each write is one whole chunk (the last may be short)
        assert w.start % chunk == 0 and (w.stop - w.start == chunk or w.stop == total)
        for p in w.pieces:
            assert 0 <= p.src_start < p.src_stop <= lengths[p.position]
            for i in range(p.src_stop - p.src_start):
                target = w.start + p.dst_start + i
                assert target == offsets[p.position] + p.src_start + i  # the right source item
                written[target] += 1
    assert written == [1] * total
    batches = batch_chunks(writes, max_batches)
    assert len(batches) <= max_batches
    assert [w for b in batches for w in b] == writes  # batches cover the plan, in order


@given(n=st.integers(0, 500), parts=st.integers(1, 50))
def test_split_evenly(n, parts):
    ranges = split_evenly(n, parts)
    assert [i for r in ranges for i in r] == list(range(n))
    if ranges:
        sizes = [len(r) for r in ranges]
        assert max(sizes) - min(sizes) <= 1 and len(ranges) <= parts
