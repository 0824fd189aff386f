"""The recipes' stages as plain functions, and their order, which every runner executes.

An XarrayZarrRecipe: cache (:func:`cache_batch`) -> prepare (:func:`prepare`) -> store
(:func:`store_batch`) -> finalize (:func:`finalize_target`) -> catalog. A ReferenceRecipe: reference
(:func:`reference_batch`) -> write the references (:func:`write_references`) -> catalog. Both with
:func:`plan_append` first in append mode. :func:`run_stages` holds those orders, once, as rechunker's
executors run one plan: a runner is an :class:`Executor` that says how each stage runs (a call in turn
for the local runner, task runs on Dask for the Prefect flow), not which stage comes next.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from forge.engine import append as copies
from forge.engine.append import describe_append, prepare_append
from forge.engine.caching import cache_batch, plan_cache, source_probe
from forge.engine.references import (
    plan_reference_append,
    plan_references,
    reference_batch,
    write_references,
)
from forge.engine.target import began, finalize_target, prepare_target, publish_staged
from forge.engine.types import InputSummary, RunSpec, TargetSpec, WriteBatch
from forge.engine.writers import BatchStats, store_batch
from forge.errors import RecipeError
from forge.io.urls import absolute
from forge.publish.transaction import RebuildBehind
from forge.recipe.loading import find_recipe, frozen, load_recipe, thawed
from forge.recipe.meta import version_of
from forge.recipe.patterns import Key
from forge.recipe.recipes import REFERENCE_FORMATS, TARGET_FORMATS, Recipe, ReferenceRecipe, XarrayZarrRecipe

__all__ = [
    "CATCH_UPS",
    "Executor",
    "RebuildBehind",
    "began",
    "cache_batch",
    "caught_up",
    "describe_append",
    "nothing_appended",
    "finalize",
    "plan_append",
    "plan_cache",
    "prepare",
    "publish_staged",
    "plan_references",
    "recipe_for",
    "reference_batch",
    "run_spec_for",
    "run_stages",
    "source_probe",
    "store_batch",
    "write_references",
]


def run_spec_for(
    ref: str,
    target_root: str,
    cache_root: str,
    prune: int | None = None,
    url_rewrites: Mapping[str, str] | None = None,
    target_format: str | None = None,
    workers: int | None = None,
    rebuild: bool = False,
) -> RunSpec:
    """A run of the recipe ``ref`` (an id or a path): its meta.yaml's ``version`` (one store per major)
    and ``validation`` thresholds come along; the target's format is the recipe's unless
    ``target_format`` says otherwise."""
    source = find_recipe(ref)
    meta = source.meta()
    validation = meta.get("validation") or {}
    recipe = source.ref if Path(ref).exists() or "/" in ref else ref  # a path, resolved; an id stays
    loaded = load_recipe(recipe)
    formats = REFERENCE_FORMATS if isinstance(loaded, ReferenceRecipe) else TARGET_FORMATS
    if target_format and target_format not in formats:
        kind = type(loaded).__name__
        raise RecipeError(f"a {kind} writes {' or '.join(formats)}, not {target_format!r}")
    return RunSpec(
        recipe,
        source.recipe_id,
        absolute(target_root),  # the run's folder, not that of a worker that serves many runs
        absolute(cache_root),
        prune,
        tuple((url_rewrites or {}).items()),
        workers=workers,
        target_format=target_format or loaded.target_format,
        max_missing_fraction=tuple(sorted((validation.get("max_missing_fraction") or {}).items())),
        version=version_of(meta),
        recipe_blob=frozen(recipe),
        rebuild=rebuild,
    )


# A rebuild beside appends catches up at most this many times (each a short append): appends that keep
# publishing faster than that mean a schedule far shorter than one append takes.
CATCH_UPS = 5


def caught_up(run: RunSpec, behind: RebuildBehind) -> RunSpec:
    """The run that catches a rebuild up with what was published while it ran: an append onto its
    unpublished work, which then publishes it. The recipe is read again: its pattern may reach
    further now (dates up to today), as the appends' did."""
    return dataclasses.replace(
        run,
        catch_up=behind.catch_up,
        append_from=None,
        prune=None,
        rebuild=False,
        recipe_blob=frozen(run.recipe, fresh=True),
    )


def recipe_for(run: RunSpec) -> Recipe:
    """The recipe a run works on, pruned as the run asks: the one the run froze when it was planned
    (its module is not imported again), else loaded by its reference."""
    recipe = thawed(run.recipe_blob) if run.recipe_blob else load_recipe(run.recipe)
    return recipe.pruned(run.prune)


def plan_append(
    recipe: Recipe, run: RunSpec, exists: Callable[[str], bool] | None = None
) -> tuple[RunSpec, list[str]]:
    """The run in append mode (from where the target ends up to what the source has) and the URLs it
    adds, for either kind of recipe. ``exists`` asks the source for a URL (default: as the recipe's
    first stage reads it)."""
    if isinstance(recipe, ReferenceRecipe):
        return plan_reference_append(recipe, run, exists)
    return copies.plan_append(recipe, run, exists)


def prepare(
    recipe: XarrayZarrRecipe, run: RunSpec, summaries: Sequence[InputSummary]
) -> tuple[TargetSpec, list[WriteBatch]]:
    """Write the target's template and plan the writes: a new store, or (``run.append_from`` set) the
    extension of a finished one."""
    if run.append_from is not None:
        return prepare_append(recipe, run, summaries)
    return prepare_target(recipe, run, summaries)


def finalize(
    recipe: XarrayZarrRecipe,
    target: TargetSpec,
    provenance: Mapping[str, Any],
    stored: Sequence[BatchStats] = (),
) -> dict:
    """Publish the store: on a Zarr store an append's coordinate, then provenance, the complete flag and
    the consolidated metadata (the commit point readers see); on an Icechunk target, one commit of what
    the store batches wrote (:func:`forge.engine.target.finalize_target`). The batches' statistics of the
    newest steps become the store's health record."""
    handles = [s.handle for s in stored if s.handle is not None]
    return finalize_target(recipe, target, provenance, handles, [s.health for s in stored])


class Executor(Protocol):
    """How a runner runs each stage of :func:`run_stages`."""

    def recipe_of(self, run: RunSpec) -> Recipe:
        """The recipe the run works on, pruned as it asks."""

    def plan_append(self, run: RunSpec) -> tuple[RunSpec, list[str]]:
        """The run in append mode and the inputs it adds (asked of the source)."""

    def cache_and_prepare(self, run: RunSpec) -> tuple[TargetSpec, list[WriteBatch]]:
        """Cache every input, then prepare the target from their summaries."""

    def store(self, target: TargetSpec, batches: list[WriteBatch]) -> list[BatchStats]:
        """Run every store batch."""

    def finalize(self, target: TargetSpec, stored: list[BatchStats]) -> dict:
        """Publish what the store batches wrote."""

    def publish_staged(self, run: RunSpec) -> dict:
        """Publish a rebuild whose catch-up found nothing more to append."""

    def reference(self, run: RunSpec) -> list[tuple[Key, Any]]:
        """Every input of a ReferenceRecipe's run as a virtual dataset."""

    def write_references(self, run: RunSpec, refs: list[tuple[Key, Any]]) -> dict:
        """Combine the inputs' references and publish them."""

    def publish_catalog(self, run: RunSpec) -> str:
        """Update the STAC catalog (and its page) for the run's recipe."""

    def announce(self, run: RunSpec, summary: dict) -> None:
        """Tell whoever watches the dataset that new data is published (its staleness alert)."""

    def published(self, run: RunSpec, summary: dict, target: TargetSpec | None) -> dict:
        """The run's result, once the catalog is updated: its summary with what the runner adds (a
        summary artifact of ``target``: a copying run's; None for references, or a caught-up rebuild
        published as it was)."""

    def note(self, message: str) -> None:
        """Tell the user something about the run (a catch-up, what an append adds)."""


def nothing_appended(run: RunSpec, new: Any, dry_run: bool) -> dict:
    """The summary of an append that adds nothing: a dry run, or nothing new at the source."""
    return {"url": run.target_url, "new_inputs": new, "appended": 0, "dry_run": dry_run}


def run_stages(run: RunSpec, executor: Executor, *, append: bool = False, dry_run: bool = False) -> dict:
    """The stages of the run's recipe, in order, each run by ``executor``; a rebuild that an append
    overtook is caught up (:func:`caught_up`) and published again, at most :data:`CATCH_UPS` times."""
    catch_ups = 0
    while True:
        try:
            return _stages(run, executor, append, dry_run)
        except RebuildBehind as behind:  # appends published while a rebuild ran: it appends them too
            catch_ups += 1
            if catch_ups > CATCH_UPS:
                raise
            executor.note(str(behind))
            run, append, dry_run = caught_up(run, behind), True, False


def _stages(run: RunSpec, executor: Executor, append: bool, dry_run: bool) -> dict:
    if append:
        run, new = executor.plan_append(run)
        executor.note(describe_append(executor.recipe_of(run), run, new, dry_run))
        if not new and run.catch_up is not None:  # a rebuild with nothing left to catch up: publish it
            summary = {**executor.publish_staged(run), "appended": 0}
            return _announced(run, executor, summary, None)
        if dry_run or not new:
            return nothing_appended(run, new, dry_run)
    if isinstance(executor.recipe_of(run), ReferenceRecipe):
        summary = executor.write_references(run, executor.reference(run))
        news = run.append_from is None or summary["appended"] > 0
        return _announced(run, executor, summary, None, news)
    if not append:
        run = began(run)
    target, batches = executor.cache_and_prepare(run)
    stored = executor.store(target, batches)
    summary = {**executor.finalize(target, stored), "appended": target.appended}
    # A build that found the same inputs already published publishes nothing new.
    news = not target.complete and (run.append_from is None or target.appended > 0)
    return _announced(run, executor, summary, target, news)


def _announced(
    run: RunSpec, executor: Executor, summary: dict, target: TargetSpec | None, news: bool = True
) -> dict:
    """The catalog updated, the news told, the run's result."""
    summary["catalog"] = executor.publish_catalog(run)
    if news:
        executor.announce(run, summary)
    return executor.published(run, summary, target)
