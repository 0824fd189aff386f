"""The target's layout: its chunks along each dimension, and shards where the recipe asks for them."""

from __future__ import annotations

import math

import numpy as np

from forge.engine.plan import Stack, default_chunk
from forge.engine.types import Template, VariableSpec
from forge.errors import RecipeError
from forge.recipe.recipes import XarrayZarrRecipe


def concat_chunk(recipe: XarrayZarrRecipe, template: Template) -> int:
    dim = template.concat_dim
    if dim in recipe.target_chunks:
        return recipe.target_chunks[dim]
    if recipe.inputs_per_chunk:  # pangeo-forge's: that many inputs per chunk
        concat = recipe.pattern.concat_dim
        per_input = concat.nitems_per_file if concat and concat.nitems_per_file else max(template.lengths)
        return recipe.inputs_per_chunk * per_input
    item_bytes = 0
    for v in template.concat_variables:
        per_item = int(np.prod([n for d, n in zip(v.dims, v.shape, strict=True) if d != dim], dtype=np.int64))
        item_bytes = max(item_bytes, per_item * v.encoded_dtype.itemsize)
    return default_chunk(item_bytes, template.sizes[dim])


def concat_write_unit(recipe: XarrayZarrRecipe, template: Template, chunk: int) -> int:
    """What one writer writes whole along the concat dimension: a shard where the recipe shards the
    target (concurrent partial writes of one shard lose data, zarr-python#3682), else a chunk."""
    return recipe.target_shards.get(template.concat_dim, chunk)  # a whole number of chunks: shards_for


def shards_for(
    recipe: XarrayZarrRecipe, spec: VariableSpec, chunks: tuple[int, ...], concat_dim: str | None
) -> tuple[int, ...]:
    """The shard shape of a sharded data variable: ``target_shards``, else one chunk along the concat
    dimension (what :func:`concat_write_unit` writes) and one shard spanning any other dimension."""
    shards = []
    for dim, n, c in zip(spec.dims, spec.shape, chunks, strict=True):
        shard = recipe.target_shards.get(dim, c if dim == concat_dim else math.ceil(n / c) * c)
        if shard % c:
            raise RecipeError(
                f"target_shards[{dim!r}] = {shard} is not a multiple of {spec.name!r}'s chunk length {c} "
                f"along {dim!r}"
            )
        shards.append(shard)
    return tuple(shards)


def stack_of(template: Template) -> Stack | None:
    """How the inputs are stacked along a second ConcatDim (None: there is none)."""
    return Stack(template.stack_dim, template.stack_lengths) if template.stack_dim else None


def chunks_for(
    recipe: XarrayZarrRecipe, spec: VariableSpec, template: Template, chunk: int
) -> tuple[int, ...]:
    if not spec.along_concat or spec.name == template.concat_dim:
        # Static variables and dimension coordinates, the concat one included: one chunk each, so that
        # opening the dataset reads one object per index (as pangeo-forge's ConsolidateDimensionCoordinates).
        return spec.shape
    stack = stack_of(template)
    fixed = {template.concat_dim: chunk}
    if stack is not None:
        try:
            fixed[stack.dim] = stack.chunk(recipe.target_chunks.get(stack.dim))
        except ValueError as e:
            raise RecipeError(str(e)) from None
    return tuple(
        fixed.get(d, min(n, recipe.target_chunks.get(d, n)))
        for d, n in zip(spec.dims, spec.shape, strict=True)
    )
