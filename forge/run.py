"""The local runner: a plain loop over the stages, no orchestration. The reference every flow must match."""

from __future__ import annotations

import logging

from forge.catalog.catalog import publish_catalog
from forge.engine.references import plan_reference_append, plan_references, reference_batch, write_references
from forge.engine.stages import (
    CATCH_UPS,
    RebuildBehind,
    began,
    cache_batch,
    caught_up,
    finalize,
    plan_append,
    plan_cache,
    prepare,
    publish_staged,
    recipe_for,
    source_probe,
    store_batch,
)
from forge.engine.summary import describe
from forge.engine.types import RunSpec
from forge.io.secrets import Lookup, env_lookup
from forge.recipe.recipes import Recipe, ReferenceRecipe, XarrayZarrRecipe

logger = logging.getLogger(__name__)


def run_locally(recipe: Recipe, run: RunSpec, lookup: Lookup = env_lookup, *, append: bool = False) -> dict:
    recipe = recipe.pruned(run.prune)
    if isinstance(recipe, ReferenceRecipe):
        return reference_locally(recipe, run, lookup, append=append)
    catch_ups = 0
    while True:
        try:
            return stages_locally(recipe, run, lookup, append=append)
        except RebuildBehind as behind:  # appends published while a rebuild ran: it appends them too
            catch_ups += 1
            if catch_ups > CATCH_UPS:
                raise
            logger.info("%s", behind)
            run, append = caught_up(run, behind), True
            recipe = recipe_for(run)


def stages_locally(recipe: XarrayZarrRecipe, run: RunSpec, lookup: Lookup, *, append: bool) -> dict:
    if append:
        run, new = plan_append(recipe, run, source_probe(recipe, run, lookup))
        if not new and run.catch_up is not None:  # a rebuild with nothing left to catch up: publish it
            return {**publish_staged(run, recipe.concat_dim), "catalog": publish_catalog(run), "appended": 0}
        if not new:
            return {**describe(run.target_url, recipe.concat_dim, run.target_format), "appended": 0}
        recipe = recipe.pruned(run.prune)  # the append may stop at the source's frontier
    else:
        run = began(run)
    summaries = [s for batch in plan_cache(recipe, run) for s in cache_batch(recipe, run, batch, lookup)]
    target, batches = prepare(recipe, run, summaries)
    stored = [store_batch(recipe, target, batch) for batch in batches]
    summary = finalize(recipe, target, {"forge:runner": "local"}, stored)
    return {**summary, "catalog": publish_catalog(run), "appended": target.appended}


def reference_locally(recipe: ReferenceRecipe, run: RunSpec, lookup: Lookup, *, append: bool) -> dict:
    if append:
        run, new = plan_reference_append(recipe, run, source_probe(recipe, run, lookup))
        if not new:
            return {"url": run.target_url, "appended": 0}
        recipe = recipe.pruned(run.prune)
    refs = [ref for batch in plan_references(recipe, run) for ref in reference_batch(recipe, batch, lookup)]
    summary = write_references(recipe, run, refs, {"forge:runner": "local"})
    return {**summary, "catalog": publish_catalog(run)}
