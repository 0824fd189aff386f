"""Prepare and finalize the target store.

``prepare_target`` combines the inputs' summaries into a template, writes only metadata, the concat
coordinate and static variables, and plans the writes. ``finalize_target`` records provenance and
consolidates metadata. A finished store with the same fingerprint is left alone, so a re-run is a no-op.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import dask.array
import numpy as np
import xarray as xr
import zarr

from forge._version import __version__
from forge.engine.attrs import COMPLETE_ATTR, FINGERPRINT_ATTR, INPUTS_ATTR, PROVISIONAL, PROVISIONAL_ATTRS
from forge.engine.caching import opened
from forge.engine.chunking import dynamic_chunks
from forge.engine.plan import Stack, batch_chunks, chunk_writes, default_chunk
from forge.engine.schema import InputSummary, Template, VariableSpec, combine, merge_part
from forge.engine.targets import target_at
from forge.engine.targets.zarr_target import (  # noqa: F401  (the Zarr target's, as the engine names them)
    move_into_place,
    open_group,
    pending_marker,
    staging_url,
    swap_in,
)
from forge.engine.times import exact_encoding, is_time_units
from forge.engine.types import RunSpec, TargetSpec, WriteBatch
from forge.errors import RecipeCodeError, RecipeError
from forge.io.storage import Storage
from forge.publish import icechunk as icechunk_commits
from forge.publish.validate import (
    HEALTH_ATTR,
    Checks,
    StepStats,
    check_coordinate,
    check_no_retraction,
    health_summary,
)
from forge.recipe.recipes import XarrayZarrRecipe

logger = logging.getLogger(__name__)

__all__ = ["COMPLETE_ATTR", "FINGERPRINT_ATTR", "INPUTS_ATTR", "PROVISIONAL", "PROVISIONAL_ATTRS"]
# Two, not one: a worker that finishes early takes another batch while a slower one still writes.
WRITE_BATCHES_PER_WORKER = 2


def current_group(run: RunSpec) -> zarr.Group | None:
    """The store a run appends to, read-only: what is published, or the unpublished rebuild it catches
    up (a Zarr store beside the published one, or an Icechunk run branch)."""
    branch = run.catch_up.branch if run.catch_up else None
    return target_at(run.store_url, run.target_format).published_group(branch)


def began(run: RunSpec) -> RunSpec:
    """A build as it begins, noting what is published (its base): appends published while it runs are
    then caught up before it publishes, even those before its prepare stage."""
    if run.append_from is not None or run.catch_up is not None:
        return run
    published = target_at(run.target_url, run.target_format).published_id()
    return dataclasses.replace(run, published_base=published)


def checks_for(recipe: XarrayZarrRecipe, run: RunSpec, template: Template) -> Checks:
    """The checks the store stage applies: each variable's CF valid range, and the run's thresholds
    (meta.yaml's ``validation: {max_missing_fraction: {variable: fraction}}``)."""
    max_missing = dict(run.max_missing_fraction)
    variables = [
        (v.name, {**v.encoding, **v.attrs}, v.encoding.get("_FillValue")) for v in template.concat_variables
    ]
    return Checks.build(variables, max_missing)


def check_template(
    run: RunSpec, template: Template, published: Mapping[str, Any], published_length: int
) -> None:
    """What can be checked before anything is written: the concat coordinate increases and has no gap,
    and a full (not pruned) build does not publish fewer steps than are published."""
    dim = template.concat_dim
    if dim is None:
        return
    if template.concat_values is not None:
        check_coordinate(np.asarray(template.concat_values), dim, run.target_url)
    if published.get(COMPLETE_ATTR) is True and run.prune is None:
        check_no_retraction(published_length, template.sizes[dim], dim, run.target_url)


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
    return recipe.target_shards.get(template.concat_dim, chunk)  # a whole number of chunks: _shards_for


def _shards_for(
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


def _chunks_for(
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


def fingerprint(
    recipe: XarrayZarrRecipe,
    template: Template,
    summaries: Sequence[InputSummary],
    version: str | None = None,
) -> str:
    """What a finished store is made of: a store with the same fingerprint is not built again (a new
    minor version is: it rebuilds its major's store)."""
    h = hashlib.sha256(template.digest().encode())
    h.update(
        repr(
            (
                sorted(recipe.target_chunks.items()),
                sorted(recipe.target_shards.items()),
                recipe.inputs_per_chunk,
                recipe.zarr_format,
                sorted(recipe.attrs.items()),
                __version__,
                version,
            )
        ).encode()
    )
    return digest_inputs(h, summaries)


def digest_inputs(h: hashlib._Hash, summaries: Sequence[InputSummary]) -> str:
    """``h`` updated with every input's key, URL and size (in key order): a store's fingerprint."""
    for s in sorted(summaries, key=lambda s: s.key):
        h.update(f"{s.key.label} {s.url} {s.size}\n".encode())
    return h.hexdigest()[:32]


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


def _template_dataset(
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
        chunks = _chunks_for(recipe, v, template, chunk)
        sharded = bool(recipe.target_shards) and v.along_concat and not v.is_coord
        shards = _shards_for(recipe, v, chunks, template.concat_dim) if sharded else None
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


def plan_write_batches(
    recipe: XarrayZarrRecipe,
    template: Template,
    summaries: Sequence[InputSummary],
    chunk: int,
    offset: int = 0,
    workers: int | None = None,
    sessions: Sequence[Any] = (),
) -> list[WriteBatch]:
    """Batches of chunk writes; ``offset`` items are already stored (an append).

    At most ``recipe.max_write_batches``, and ``WRITE_BATCHES_PER_WORKER`` per worker when the number of
    workers is known: every batch is a task run, whose orchestration costs what writing a chunk costs.
    ``sessions``: one Icechunk fork per batch, at least as many as there are batches.
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
    labels = [_value_text(v) for v in template.concat_values] if template.concat_values is not None else []
    for i, chunks in enumerate(batch_chunks(writes, n_batches)):
        positions = {p.position for c in chunks for p in c.pieces}
        inputs = {(p, m, j): location[(p, m, j)] for p in positions for m, j in sources}
        start, stop = chunks[0].start, chunks[-1].stop
        batch_labels = tuple(labels[start - offset : stop - offset]) or tuple(map(str, range(start, stop)))
        session = sessions[i] if sessions else None
        batches.append(WriteBatch(f"store-{i:04d}", chunks, inputs, batch_labels, start, session))
    return batches


def n_write_batches(recipe: XarrayZarrRecipe, workers: int | None) -> int:
    """The most batches :func:`plan_write_batches` makes (forks are made before the plan)."""
    return (
        min(recipe.max_write_batches, WRITE_BATCHES_PER_WORKER * workers)
        if workers
        else recipe.max_write_batches
    )


def prepare_target(
    recipe: XarrayZarrRecipe, run: RunSpec, summaries: Sequence[InputSummary]
) -> tuple[TargetSpec, list[WriteBatch]]:
    """Combine all inputs' schemas, check them, write the template (unless an identical store is done),
    plan writes. On an Icechunk target the template is committed on the run's own branch, and each write
    batch gets a fork of a session there; ``main`` is untouched until finalize."""
    template = combine_inputs(recipe, summaries)
    if recipe.dynamic_chunking_fn is not None:  # chunks chosen from the schema, then as if given
        chunks = dynamic_chunks(recipe.dynamic_chunking_fn, recipe.dynamic_chunking_fn_kwargs, template)
        recipe = dataclasses.replace(recipe, target_chunks=chunks, dynamic_chunking_fn=None)
    if -1 in recipe.target_chunks.values():  # -1: the whole dimension, as in Dask and xarray
        whole = {d: template.sizes.get(d, 1) if n == -1 else n for d, n in recipe.target_chunks.items()}
        recipe = dataclasses.replace(recipe, target_chunks=whole)
    fp = fingerprint(recipe, template, summaries, run.version)
    url = run.target_url
    kind = target_at(url, run.target_format)
    published = kind.published_group()
    existing = dict(published.attrs) if published is not None else {}
    same = existing.get(COMPLETE_ATTR) is True and existing.get(FINGERPRINT_ATTR) == fp
    complete = same and not run.rebuild
    chunk = concat_chunk(recipe, template) if template.concat_dim else 1
    work, sessions = None, []
    if complete:
        logger.info("%s is complete with fingerprint %s: nothing to write", url, fp)
    else:
        now = kind.published_id()
        length = published[template.concat_dim].shape[0] if template.concat_dim in (published or {}) else 0
        if run.published_base not in (None, now):
            length = 0  # appends published since the build began: it catches up with them at its publish
        check_template(run, template, existing, length)
        ds = _template_dataset(recipe, run, template, summaries, chunk)
        flags = provisional_flags(summaries, template) if recipe.pattern.provisional else None
        if flags is not None and flags.any():  # a store of final files only has none (until it has one)
            ds = ds.assign_coords({PROVISIONAL: (template.concat_dim, flags, PROVISIONAL_ATTRS)})
            ds[PROVISIONAL].encoding = {"chunks": (len(flags),)}
        base = now if run.published_base is None else run.published_base
        work = kind.begin_build(run, existing.get(COMPLETE_ATTR) is True, base)
        url = work.url
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            fmt = recipe.zarr_format
            ds.to_zarr(work.store, mode="w", compute=False, zarr_format=fmt, consolidated=False)
        n_batches = n_write_batches(recipe, run.workers)
        sessions = kind.template_written(work, f"{run.recipe_id}: template", n_batches)
        logger.info("prepared %s: %s", url, dict(template.sizes))
    batches = (
        []
        if complete or not template.concat_dim
        else plan_write_batches(
            recipe,
            template,
            summaries,
            concat_write_unit(recipe, template, chunk),
            workers=run.workers,
            sessions=sessions,
        )
    )
    spec = TargetSpec(
        run,
        url,
        template.concat_dim,
        template.concat_variables,
        fp,
        complete,
        len(summaries),
        sum(len(b.chunks) for b in batches),
        concat_inputs=len(template.lengths) if template.concat_dim else 1,
        checks=checks_for(recipe, run, template),
        stack=stack_of(template),
        transaction=work.transaction if work else None,
        publish_to=work.publish_to if work else None,
        publish_base=work.publish_base if work else None,
        dataset_version=run.version,
    )
    return spec, batches


def commit_attrs(
    recipe: XarrayZarrRecipe, target: TargetSpec, provenance: Mapping[str, Any]
) -> dict[str, Any]:
    """The root attributes a finished store carries: provenance, the count of inputs, the complete flag."""
    return {
        **{k: v for k, v in provenance.items() if v is not None},
        **({"forge:dataset_version": target.dataset_version} if target.dataset_version else {}),
        "forge:updated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "forge:recipe_id": target.run.recipe_id,
        "forge:version": __version__,
        "forge:pattern_sha256": recipe.pattern.sha256(),
        INPUTS_ATTR: target.concat_inputs,
        FINGERPRINT_ATTR: target.fingerprint,
        COMPLETE_ATTR: True,  # last: an append's commit point
    }


def health_attrs(
    target: TargetSpec, group: zarr.Group, health: Sequence[Mapping[str, Mapping[int, StepStats]]]
) -> dict[str, Any]:
    """The store's record of its newest steps (missing fraction and mean of each data variable), for its
    health plot: this run's steps, after those an appended store kept."""
    previous = group.attrs.get(HEALTH_ATTR) if target.run.append_from is not None else None
    unpack = {
        v.name: (float(v.encoding.get("scale_factor", 1.0)), float(v.encoding.get("add_offset", 0.0)))
        for v in target.variables
    }
    summary = health_summary(health, unpack, previous if isinstance(previous, dict) else None)
    return {HEALTH_ATTR: summary} if summary else {}


def finalize_target(
    recipe: XarrayZarrRecipe,
    target: TargetSpec,
    provenance: Mapping[str, Any],
    sessions: Sequence[Any] = (),
    health: Sequence[Mapping[str, Mapping[int, StepStats]]] = (),
) -> dict:
    """Publish: on a Zarr store, provenance attrs, the complete flag and consolidated metadata (the commit
    point readers of consolidated metadata see); on an Icechunk target, the store batches' sessions
    merged, those attrs, and one commit that ``main`` moves to only if no other run published first."""
    if target.complete:
        return describe(target.published_url, target.concat_dim, target.format)
    run = target.run
    appended = run.append_from is not None
    kind = "append" if appended and not run.catch_up else "build"
    span = f"{target.appended} items appended" if appended else f"{target.n_inputs} inputs"
    span += ", caught up with what was published meanwhile" if run.catch_up else ""
    metadata = icechunk_commits.run_metadata(
        kind, run.recipe_id, provenance, target.n_inputs, target.concat_inputs, run.append_from
    )
    target_at(target.url, target.format).publish(
        recipe,
        target,
        lambda group: {**commit_attrs(recipe, target, provenance), **health_attrs(target, group, health)},
        sessions,
        f"{run.recipe_id}: {kind}, {span}",
        metadata,
    )
    return describe(target.published_url, target.concat_dim, target.format)


def publish_staged(run: RunSpec, concat_dim: str | None) -> dict:
    """Publish a caught-up rebuild that had nothing left to append: over what is published now, if
    nothing moved it since the catch-up looked (else :class:`RebuildBehind` again)."""
    target_at(run.store_url, run.target_format).publish_staged(run)
    return describe(run.target_url, concat_dim, run.target_format)


def describe(url: str, concat_dim: str | None = None, target_format: str = "zarr") -> dict:
    """A summary of the published store, for the CLI and Prefect artifacts: with ``concat_dim``, the first
    and last of its values and how many inputs the store holds along it."""
    ds = target_at(url, target_format).open_published()
    stored = Storage(url).total_size()
    summary = {
        "url": url,
        "repr": repr(ds),
        "nbytes": int(ds.nbytes),
        "stored_bytes": int(stored),
        "sizes": {str(k): int(v) for k, v in ds.sizes.items()},
    }
    if concat_dim in ds.coords and ds.sizes[concat_dim]:
        values = ds[concat_dim].values
        summary["range"] = [_value_text(values[0]), _value_text(values[-1])]
        summary["inputs_held"] = ds.attrs.get(INPUTS_ATTR)
    return summary


def _value_text(value: Any) -> str:
    if isinstance(value, np.datetime64):
        return str(np.datetime_as_string(value, unit="s")).removesuffix("T00:00:00")
    return str(value)
