"""Prepare and finalize the target store, on whatever kind of target (forge.engine.targets).

``prepare_target`` combines the inputs' summaries into a template (forge.engine.template), checks it,
writes only metadata, the concat coordinate and static variables, and plans the writes
(forge.engine.write_plan). ``finalize_target`` records provenance and publishes. A finished store with
the same fingerprint (forge.engine.fingerprint) is left alone, so a re-run is a no-op.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zarr

from forge._version import __version__
from forge.engine.attrs import COMPLETE_ATTR, FINGERPRINT_ATTR, INPUTS_ATTR, PROVISIONAL, PROVISIONAL_ATTRS
from forge.engine.chunking import dynamic_chunks
from forge.engine.fingerprint import fingerprint
from forge.engine.layout import concat_chunk, concat_write_unit, stack_of
from forge.engine.summary import describe
from forge.engine.targets import copy_at
from forge.engine.template import combine_inputs, provisional_flags, template_dataset
from forge.engine.types import InputSummary, RunSpec, TargetSpec, Template, WriteBatch
from forge.engine.write_plan import n_write_batches, plan_write_batches
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


def current_group(run: RunSpec) -> zarr.Group | None:
    """The store a run appends to, read-only: what is published, or the unpublished rebuild it catches
    up (a Zarr store beside the published one, or an Icechunk run branch)."""
    branch = run.catch_up.branch if run.catch_up else None
    return copy_at(run.store_url, run.target_format).published_group(branch)


def began(run: RunSpec) -> RunSpec:
    """A build as it begins, noting what is published (its base): appends published while it runs are
    then caught up before it publishes, even those before its prepare stage."""
    if run.append_from is not None or run.catch_up is not None:
        return run
    published = copy_at(run.target_url, run.target_format).published_id()
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
    kind = copy_at(url, run.target_format)
    published = kind.published_group()
    existing = dict(published.attrs) if published is not None else {}
    same = existing.get(COMPLETE_ATTR) is True and existing.get(FINGERPRINT_ATTR) == fp
    complete = same and not run.rebuild
    chunk = concat_chunk(recipe, template) if template.concat_dim else 1
    work, handles = None, []
    if complete:
        logger.info("%s is complete with fingerprint %s: nothing to write", url, fp)
    else:
        now = kind.published_id()
        length = published[template.concat_dim].shape[0] if template.concat_dim in (published or {}) else 0
        if run.published_base not in (None, now):
            length = 0  # appends published since the build began: it catches up with them at its publish
        check_template(run, template, existing, length)
        ds = template_dataset(recipe, run, template, summaries, chunk)
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
        handles = kind.template_written(work, f"{run.recipe_id}: template", n_batches)
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
            handles=handles,
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
    handles: Sequence[Any] = (),
    health: Sequence[Mapping[str, Mapping[int, StepStats]]] = (),
) -> dict:
    """Publish: on a Zarr store, provenance attrs, the complete flag and consolidated metadata (the commit
    point readers of consolidated metadata see); on an Icechunk target, the store batches' forks (``handles``)
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
    copy_at(target.url, target.format).publish(
        recipe,
        target,
        lambda group: {**commit_attrs(recipe, target, provenance), **health_attrs(target, group, health)},
        handles,
        f"{run.recipe_id}: {kind}, {span}",
        metadata,
    )
    return describe(target.published_url, target.concat_dim, target.format)


def publish_staged(run: RunSpec, concat_dim: str | None) -> dict:
    """Publish a caught-up rebuild that had nothing left to append: over what is published now, if
    nothing moved it since the catch-up looked (else :class:`RebuildBehind` again)."""
    copy_at(run.store_url, run.target_format).publish_staged(run)
    return describe(run.target_url, concat_dim, run.target_format)
