"""The local runner: a plain loop over the stages, no orchestration. The reference every flow must match."""

from __future__ import annotations

import logging
from typing import Any

from forge.catalog.catalog import publish_catalog
from forge.engine.stages import (
    cache_batch,
    finalize,
    plan_append,
    plan_cache,
    plan_references,
    prepare,
    publish_staged,
    recipe_for,
    reference_batch,
    run_stages,
    source_probe,
    store_batch,
    write_references,
)
from forge.engine.types import RunSpec, TargetSpec, WriteBatch
from forge.engine.writers import BatchStats
from forge.io.secrets import Lookup, env_lookup
from forge.recipe.patterns import Key
from forge.recipe.recipes import Recipe

logger = logging.getLogger(__name__)


def run_locally(recipe: Recipe, run: RunSpec, lookup: Lookup = env_lookup, *, append: bool = False) -> dict:
    return run_stages(run, InTurn(recipe.pruned(run.prune), lookup), append=append)


class InTurn:
    """Each stage called in turn, in this process (:class:`forge.engine.stages.Executor`)."""

    def __init__(self, recipe: Recipe, lookup: Lookup):
        self.recipe, self.lookup = recipe, lookup  # the recipe as given (tests pass one not on disk)

    def recipe_of(self, run: RunSpec) -> Recipe:
        """The given recipe, pruned as the run asks; a catch-up's, read again (its own blob)."""
        return recipe_for(run) if run.catch_up else self.recipe.pruned(run.prune)

    def plan_append(self, run: RunSpec) -> tuple[RunSpec, list[str]]:
        recipe = self.recipe_of(run)
        return plan_append(recipe, run, source_probe(recipe, run, self.lookup))

    def cache_and_prepare(self, run: RunSpec) -> tuple[TargetSpec, list[WriteBatch]]:
        recipe = self.recipe_of(run)
        batches = plan_cache(recipe, run)
        summaries = [s for batch in batches for s in cache_batch(recipe, run, batch, self.lookup)]
        return prepare(recipe, run, summaries)

    def store(self, target: TargetSpec, batches: list[WriteBatch]) -> list[BatchStats]:
        return [store_batch(self.recipe_of(target.run), target, batch) for batch in batches]

    def finalize(self, target: TargetSpec, stored: list[BatchStats]) -> dict:
        return finalize(self.recipe_of(target.run), target, {"forge:runner": "local"}, stored)

    def publish_staged(self, run: RunSpec) -> dict:
        return publish_staged(run, self.recipe_of(run).concat_dim)

    def reference(self, run: RunSpec) -> list[tuple[Key, Any]]:
        recipe = self.recipe_of(run)
        return [
            ref
            for batch in plan_references(recipe, run)
            for ref in reference_batch(recipe, batch, self.lookup)
        ]

    def write_references(self, run: RunSpec, refs: list[tuple[Key, Any]]) -> dict:
        return write_references(self.recipe_of(run), run, refs, {"forge:runner": "local"})

    def publish_catalog(self, run: RunSpec) -> str:
        return publish_catalog(run)

    def announce(self, run: RunSpec, summary: dict) -> None:
        """Nobody watches a local run's events: the Prefect flow announces its updates."""

    def published(self, run: RunSpec, summary: dict, target: TargetSpec | None) -> dict:
        return summary

    def note(self, message: str) -> None:
        logger.info("%s", message)
