"""The target's template: the inputs' schemas combined, as the recipe asks for it, and the dataset whose
metadata, concat coordinate and static variables a build writes before any chunk."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import dask.array
import numpy as np
import xarray as xr

from forge.engine.caching import opened
from forge.engine.layout import chunks_for, shards_for
from forge.engine.schema import combine, merge_part
from forge.engine.times import exact_encoding, is_time_units
from forge.engine.types import InputSummary, RunSpec, Template, VariableSpec
from forge.errors import RecipeCodeError
from forge.io.storage import Storage
from forge.recipe.recipes import XarrayZarrRecipe


def concat_coordinate(
    spec: VariableSpec, values: np.ndarray, encoding: Mapping[str, Any]
) -> tuple[xr.Variable, dict[str, Any]]:
    """The concat coordinate as stored, and its Zarr encoding. Times are encoded here, with the template's
    exact encoding (the source's own where it holds every value), rather than by xarray: one path for
    every calendar and unit (xarray cannot encode ``months since``)."""
    units = encoding.get("units")
    if not is_time_units(units) or values.dtype.kind not in "MO":
        return xr.Variable(spec.dims, values, attrs=spec.attrs), {**spec.encoding, **encoding}
    calendar = encoding.get("calendar", "standard")
    num = exact_encoding(values, units, calendar, encoding.get("dtype"))
    if num is None:  # unify_time_encoding chose this encoding for being exact
        raise AssertionError(f"{spec.name!r}: {units!r} does not hold the values exactly")
    attrs = {**spec.attrs, "units": units, "calendar": calendar}
    return xr.Variable(spec.dims, num, attrs=attrs), {"dtype": num.dtype, "_FillValue": None}


def provisional_flags(summaries: Sequence[InputSummary], template: Template) -> np.ndarray:
    """For each step of the concat dimension: whether it comes from a provisional file (any of its
    merge parts)."""
    concat = template.concat_dim
    flagged = {s.key[concat] for s in summaries if s.provisional}
    positions = sorted({s.key[concat] for s in summaries})
    return np.repeat([p in flagged for p in positions], template.lengths).astype(bool)


def combine_inputs(recipe: XarrayZarrRecipe, summaries: Sequence[InputSummary]) -> Template:
    """The target template from the inputs' summaries, as the recipe asks for it."""
    template = combine(
        summaries,
        recipe.concat_dim,
        preprocessed=recipe.process_input is not None,
        nitems_per_file=recipe.pattern.concat_dim.nitems_per_file if recipe.concat_dim else None,
        stack_dim=recipe.stack_dim,
    )
    return kept_by_process_chunk(recipe, template)


def kept_by_process_chunk(recipe: XarrayZarrRecipe, template: Template) -> Template:
    """The template without the variables ``process_chunk`` drops, as pangeo-forge 0.9 makes its target
    from the first chunk as ``process_chunk`` gives it back. What it drops is found on a stand-in of one
    step (zeros, lazily): a function that cannot run on it leaves the template whole, and the real
    chunks say what is wrong."""
    if recipe.process_chunk is None:
        return template
    dims = {d for v in template.variables for d in v.dims}
    sample = xr.Dataset()
    for v in template.variables:
        shape = tuple(1 if d == template.concat_dim else n for d, n in zip(v.dims, v.shape, strict=True))
        var = xr.Variable(v.dims, dask.array.zeros(shape, dtype=v.dtype), attrs=v.attrs)
        if v.is_coord or v.name in dims:
            sample = sample.assign_coords({v.name: var})
        else:
            sample[v.name] = var
    try:
        kept = set(recipe.postprocess_chunk(sample, "a stand-in of the first chunk").variables)
    except RecipeCodeError:
        return template
    variables = tuple(v for v in template.variables if v.name in kept or v.name in dims)
    return dataclasses.replace(template, variables=variables)


def template_dataset(
    recipe: XarrayZarrRecipe, run: RunSpec, template: Template, summaries: Sequence[InputSummary], chunk: int
) -> xr.Dataset:
    storage = Storage(run.cache_root)
    stack = template.stack_dim
    # The first input of each merge group, and of each stack position in it (in order along the stack).
    first_of_group: dict[tuple, dict[int, InputSummary]] = {}
    for s in sorted(summaries, key=lambda s: s.key):
        source = merge_part(s.key, template.concat_dim, stack)
        first_of_group.setdefault(source, {}).setdefault(s.key[stack] if stack else 0, s)
    variables: dict[str, xr.Variable] = {}
    statics = [v for v in template.variables if not v.along_concat]
    for source, firsts in first_of_group.items():
        wanted = [v for v in statics if v.source == source]
        parts: dict[str, list[xr.Variable]] = {v.name: [] for v in wanted}
        for j, s in sorted(firsts.items()):
            # Along the stack dimension: from every stack position; the others from the first.
            here = [v for v in wanted if stack in v.dims or j == min(firsts)]
            if not here:
                continue
            with opened(recipe, storage, s.location, s.url) as ds:
                for v in here:
                    parts[v.name].append(ds[v.name].variable.load().copy())
        for name, found in parts.items():
            variables[name] = found[0] if len(found) == 1 else xr.Variable.concat(found, stack)
    for v in template.variables:
        chunks = chunks_for(recipe, v, template, chunk)
        sharded = bool(recipe.target_shards) and v.along_concat and not v.is_coord
        shards = shards_for(recipe, v, chunks, template.concat_dim) if sharded else None
        if v.name == template.concat_dim and template.concat_values is not None:
            var, encoding = concat_coordinate(v, template.concat_values, template.concat_encoding)
        elif v.along_concat:
            lazy = dask.array.zeros(v.shape, dtype=v.dtype, chunks=shards or chunks)
            var = xr.Variable(v.dims, lazy, attrs=v.attrs)
            encoding = dict(v.encoding)
            if recipe.compressors is not None and not v.is_coord:
                encoding["compressors"] = tuple(recipe.compressors)
        else:
            var = variables[v.name]
            var.attrs = dict(v.attrs)
            encoding = dict(v.encoding)
        var.encoding = {**encoding, "chunks": chunks, **({"shards": shards} if shards else {})}
        variables[v.name] = var
    coords = {v.name: variables[v.name] for v in template.variables if v.is_coord}
    data = {v.name: variables[v.name] for v in template.variables if not v.is_coord}
    return xr.Dataset(data, coords=coords, attrs={**template.attrs, **recipe.attrs})
