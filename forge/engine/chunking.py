"""Target chunks chosen from the target's schema: pangeo-forge's ``dynamic_chunking_fn`` hook, and a
chunker by size budget for every dimension (:func:`chunks_by_budget`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import dask.array
import numpy as np
import xarray as xr
from dask.utils import parse_bytes

from forge.engine.types import Template
from forge.errors import RecipeError, call_recipe_code

ChunkingFn = Callable[..., Mapping[str, int]]


def schema_dataset(template: Template) -> xr.Dataset:
    """The target as a lazy Dataset (no values read): dimensions, dtypes and attributes, what a
    ``dynamic_chunking_fn`` looks at. The concat coordinate holds its values when they are known."""
    variables = {}
    for v in template.variables:
        if v.name == template.concat_dim and template.concat_values is not None:
            data = template.concat_values
        else:
            data = dask.array.empty(v.shape, dtype=v.dtype, chunks=v.shape or ())
        variables[v.name] = xr.Variable(v.dims, data, attrs=v.attrs)
    coords = {n: variables.pop(n) for n in list(variables) if n in template.sizes}
    return xr.Dataset(variables, coords=coords, attrs=template.attrs)


def dynamic_chunks(fn: ChunkingFn, kwargs: Mapping[str, Any], template: Template) -> dict[str, int]:
    """``fn(schema, **kwargs)``: chunk lengths per dimension, checked."""
    chunks = dict(call_recipe_code(fn, "dynamic_chunking_fn", schema_dataset(template), **kwargs))
    for dim, n in chunks.items():
        if dim not in template.sizes:
            raise RecipeError(f"dynamic_chunking_fn gave chunks for {dim!r}, which the target does not have")
        if not isinstance(n, int | np.integer) or n < 1:
            raise RecipeError(f"dynamic_chunking_fn gave {dim!r} a chunk of {n!r}, not a positive integer")
    return {dim: int(n) for dim, n in chunks.items()}


def chunks_by_budget(budget: int | str = "100MB", fixed: Mapping[str, int] | None = None) -> ChunkingFn:
    """A ``dynamic_chunking_fn``: chunks for every dimension such that no variable's chunk is over
    ``budget`` bytes (``"100MB"`` or a number), halving the longest chunk until it fits (balanced chunks,
    as dask's ``"auto"``); ``fixed`` chunks (e.g. ``{"time": 1}``, for maps) are kept as given.

    >>> ds = xr.Dataset({"t": (("time", "lat", "lon"), dask.array.empty((365, 720, 1440), dtype="f4"))})
    >>> chunks_by_budget("64MB")(ds)
    {'time': 183, 'lat': 180, 'lon': 360}
    >>> chunks_by_budget("5MB", fixed={"time": 1})(ds)
    {'time': 1, 'lat': 720, 'lon': 1440}
    """
    limit = parse_bytes(budget) if isinstance(budget, str) else int(budget)
    held = dict(fixed or {})

    def choose(ds: xr.Dataset) -> dict[str, int]:
        chunks = {str(d): min(n, held.get(str(d), n)) for d, n in ds.sizes.items()}
        for var in sorted(ds.data_vars.values(), key=lambda v: -v.dtype.itemsize * v.size):
            while var.dtype.itemsize * math.prod(chunks[str(d)] for d in var.dims) > limit:
                free = [str(d) for d in var.dims if str(d) not in held and chunks[str(d)] > 1]
                if not free:
                    break
                longest = max(free, key=lambda d: chunks[d])  # halved, so chunks stay near a cube
                chunks[longest] = math.ceil(chunks[longest] / 2)
        return chunks

    return choose
