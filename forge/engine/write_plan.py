"""The store stage's plan: chunk writes, in batches (one task run each), every chunk with one writer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from forge.engine.plan import batch_chunks, chunk_writes
from forge.engine.schema import merge_part
from forge.engine.times import value_text
from forge.engine.types import InputSummary, Template, WriteBatch
from forge.recipe.recipes import XarrayZarrRecipe

# Two, not one: a worker that finishes early takes another batch while a slower one still writes.
WRITE_BATCHES_PER_WORKER = 2


def plan_write_batches(
    recipe: XarrayZarrRecipe,
    template: Template,
    summaries: Sequence[InputSummary],
    chunk: int,
    offset: int = 0,
    workers: int | None = None,
    handles: Sequence[Any] = (),
) -> list[WriteBatch]:
    """Batches of chunk writes; ``offset`` items are already stored (an append).

    At most ``recipe.max_write_batches``, and ``WRITE_BATCHES_PER_WORKER`` per worker when the number of
    workers is known: every batch is a task run, whose orchestration costs what writing a chunk costs.
    ``handles``: what each batch writes through (from the target), at least as many as there are batches.
    """
    dim, stack = template.concat_dim, template.stack_dim
    location = {
        (
            s.key[dim],
            merge_part(s.key, dim, stack),
            s.key[stack] if stack else 0,
        ): (s.location, s.url)
        for s in summaries
    }
    first = min(s.key[dim] for s in summaries)
    writes = chunk_writes(template.lengths, chunk, offset=offset, first_position=first)
    sources = {
        (v.source, j) for v in template.concat_variables for j in range(len(template.stack_lengths) or 1)
    }
    batches = []
    n_batches = n_write_batches(recipe, workers)
    labels = [value_text(v) for v in template.concat_values] if template.concat_values is not None else []
    for i, chunks in enumerate(batch_chunks(writes, n_batches)):
        positions = {p.position for c in chunks for p in c.pieces}
        inputs = {(p, m, j): location[(p, m, j)] for p in positions for m, j in sources}
        start, stop = chunks[0].start, chunks[-1].stop
        batch_labels = tuple(labels[start - offset : stop - offset]) or tuple(map(str, range(start, stop)))
        handle = handles[i] if handles else None
        batches.append(WriteBatch(f"store-{i:04d}", chunks, inputs, batch_labels, start, handle))
    return batches


def n_write_batches(recipe: XarrayZarrRecipe, workers: int | None) -> int:
    """The most batches :func:`plan_write_batches` makes (forks are made before the plan)."""
    return (
        min(recipe.max_write_batches, WRITE_BATCHES_PER_WORKER * workers)
        if workers
        else recipe.max_write_batches
    )
