"""The ``recipe`` flow: cache inputs -> prepare target -> store chunks -> finalize target (a copy), or
reference inputs -> write references (a ReferenceRecipe), in the order forge.engine.stages runs them."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.states import State

from flows.alerts import announce_update
from flows.bakery import current_bakery, store_workers, task_runner_for
from flows.outcomes import StageFailed, end_unrun, failure_of, first_failure, in_stage
from flows.reports import Progress, failed_run, source_text, summary_artifact
from flows.runtime.gc_freeze import loaded_frozen
from flows.runtime.settings_once import settings_serialized_once
from flows.runtime.tracebacks import install_traceback_filter
from flows.runtime.windows import submit_windowed, wait_ended
from forge.engine.stages import RebuildBehind, recipe_for, run_spec_for, run_stages
from forge.engine.types import RunSpec, TargetSpec
from forge.errors import ForgeError
from forge.recipe.loading import find_recipe
from forge.recipe.patterns import Key, parse_rewrites
from forge.recipe.recipes import Recipe
from tasks.cache import cache_inputs, plan_cache_batches
from tasks.catalog import update_catalog
from tasks.common import Opaque
from tasks.finalize import finalize_target, publish_rebuild
from tasks.prepare import plan_append_run, prepare_target
from tasks.references import reference_inputs, write_reference_store
from tasks.slots import source_host_slots
from tasks.store import store_chunks

DEFAULT_TARGET_ROOT = str(Path("data/target").resolve())
DEFAULT_CACHE_ROOT = str(Path("data/cache").resolve())

install_traceback_filter()


def run_spec(
    recipe: str,
    target_root: str,
    cache_root: str,
    prune: int | None,
    url_rewrites: dict[str, str] | None,
    target_format: str | None = None,
    rebuild: bool = False,
) -> RunSpec:
    """The run's spec (:func:`forge.engine.stages.run_spec_for`), planned for the bakery's store workers.
    FORGE_URL_REWRITES ("FROM=TO ..."): a worker's mirrors, under the run's rewrites."""
    rewrites = {
        **dict(parse_rewrites(os.environ.get("FORGE_URL_REWRITES", "").split())),
        **(url_rewrites or {}),
    }
    workers = store_workers(current_bakery())
    return run_spec_for(recipe, target_root, cache_root, prune, rewrites, target_format, workers, rebuild)


def run_name() -> str:
    """``noaa-oisst · append``: runs told apart by recipe and mode in the UI (not a random name)."""
    params = flow_run.parameters
    try:
        recipe_id = find_recipe(params["recipe"]).recipe_id
    except ForgeError:
        recipe_id = str(params["recipe"])
    mode = "append" if params.get("append") else "rebuild" if params.get("rebuild") else "build"
    if params.get("append") and params.get("dry_run"):
        mode += " (dry run)"
    prune = f" · first {params['prune']}" if params.get("prune") else ""
    return f"{recipe_id} · {mode}{prune}"


# The bakery (FORGE_BAKERY, set by the deployment) picks the task runner: local processes or a KubeCluster.
# No full garbage collection walks what the process loaded before the run (Prefect, Dask, xarray), and the
# task runs carry the flow's Prefect settings as they are (not dumped and rebuilt for every task run).
@flow(name="recipe", flow_run_name=run_name, task_runner=task_runner_for(current_bakery()), log_prints=True)
@loaded_frozen
@settings_serialized_once
def recipe(
    recipe: str,
    target_root: str = DEFAULT_TARGET_ROOT,
    cache_root: str = DEFAULT_CACHE_ROOT,
    prune: int | None = None,
    url_rewrites: dict[str, str] | None = None,
    append: bool = False,
    dry_run: bool = False,
    target_format: str | None = None,
    rebuild: bool = False,
) -> dict | State:
    """Build a recipe's Zarr store, or append to it what is new at the source.

    Args:
        recipe: A recipe id from recipes/ (e.g. noaa-oisst), or a path to a recipe directory or .py file.
        target_root: Where stores go, {target_root}/{recipe_id}.zarr (a local path, s3://, gs://, abfs://).
        cache_root: Where inputs are cached before they are read.
        prune: Keep only the first N keys of the concat dimension (a test build).
        url_rewrites: Source URL prefix -> mirror prefix, e.g. a local replica of the source server.
        append: Add only the inputs beyond the store's end (idempotent; finishes an interrupted append).
        dry_run: With append: list what would be added and change nothing.
        target_format: zarr or icechunk ({recipe_id}.icechunk, every run one commit); references also json
            or parquet (kerchunk); default: the recipe's.
        rebuild: Build the store anew beside the published one, even from the same inputs; appends that
            publish meanwhile are caught up before it replaces the published store, in one step.
    """
    try:
        run = run_spec(recipe, target_root, cache_root, prune, url_rewrites, target_format, rebuild)
    except ForgeError as e:  # the recipe does not load: say why, and where
        return failed_run(StageFailed("load-recipe", None, e), str(recipe))
    try:
        return run_stages(run, OnPrefect(), append=append, dry_run=dry_run)
    except StageFailed as failure:
        return failed_run(failure, run.recipe_id)
    except RebuildBehind as behind:  # overtaken again after every catch-up
        return failed_run(StageFailed("finalize-target", None, behind), run.recipe_id)


class OnPrefect:
    """Each stage as Prefect task runs on the flow's task runner (:class:`forge.engine.stages.Executor`):
    downloads within the source hosts' slots, store batches mapped over the Dask workers, progress and
    timings reported. A stage that fails raises :class:`StageFailed` with its cause."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.timings: dict[str, float] = {}

    def recipe_of(self, run: RunSpec) -> Recipe:
        return recipe_for(run)

    def note(self, message: str) -> None:
        get_run_logger().info("%s", message)

    def plan_append(self, run: RunSpec) -> tuple[RunSpec, list[str]]:
        return in_stage("plan-append", plan_append_run, run)

    def cache_and_prepare(self, run: RunSpec) -> tuple[TargetSpec, list]:
        batches, windows = plan_cache_batches(run)
        cached = Progress(f"inputs cached for {run.recipe_id}", sum(len(b.value.items) for b in batches))
        with source_host_slots(windows):
            summaries = submit_windowed(
                lambda b: cache_inputs.submit(b, run), batches, lambda b: b.value.host, windows
            )
            # Submitted now, it starts the moment the last batch ends. On a worker, not in the flow's
            # process: it holds every input's summary (about 9 KB each).
            prepared = prepare_target.submit(run, summaries)
            # The download slots are held until every batch has ended.
            wait_ended(summaries, lambda i: cached.advance(len(batches[i].value.items)))
        failed = first_failure("cache", summaries, [b.value.label for b in batches])
        if failed:
            end_unrun(prepared, "prepare-target", f"not started: {failed}")
            raise failed
        if failed := first_failure("prepare-target", [prepared], [None]):
            raise failed
        self.timings["cache + prepare"] = time.perf_counter() - self.t0
        return prepared.result()  # the target, and its write batches (each in an Opaque)

    def store(self, target: TargetSpec, batches: list) -> list:
        t1 = time.perf_counter()
        stored = Progress(f"chunks stored for {target.run.recipe_id}", target.n_chunks)
        futures = store_chunks.map(batches, unmapped(target))
        written = []  # what each batch wrote (on an Icechunk target, its fork), its newest steps' stats
        for future in as_completed(futures):
            if failure_of(future) is None:
                result = future.result()
                stored.advance(result.chunks)
                written.append(result)
        if failed := first_failure("store", futures, [b.value.label for b in batches]):
            raise failed
        if not futures:
            stored.advance(1)
        self.timings["store"] = time.perf_counter() - t1
        return written

    def finalize(self, target: TargetSpec, stored: list) -> dict:
        t2 = time.perf_counter()
        summary = in_stage("finalize-target", finalize_target, target, stored)
        self.timings["finalize"] = time.perf_counter() - t2
        return summary

    def publish_staged(self, run: RunSpec) -> dict:
        return in_stage("finalize-target", publish_rebuild, run)

    def reference(self, run: RunSpec) -> list[tuple[Key, Any]]:
        batches, windows = plan_cache_batches(run, "reference")
        referenced = Progress(
            f"inputs referenced for {run.recipe_id}", sum(len(b.value.items) for b in batches)
        )
        # The source hosts' download slots, as the cache stage takes them: referencing reads each input's
        # metadata from its server, and other runs may be reading it too.
        with source_host_slots(windows):
            futures = submit_windowed(
                lambda b: reference_inputs.submit(b, run), batches, lambda b: b.value.host, windows
            )
            wait_ended(futures, lambda i: referenced.advance(len(batches[i].value.items)))
        if failed := first_failure("reference", futures, [b.value.label for b in batches]):
            raise failed
        self.timings["reference"] = time.perf_counter() - self.t0
        return [ref for future in futures for ref in future.result().value]

    def write_references(self, run: RunSpec, refs: list[tuple[Key, Any]]) -> dict:
        t1 = time.perf_counter()
        summary = in_stage("write-references", write_reference_store, run, [Opaque(refs)])
        self.timings["write references"] = time.perf_counter() - t1
        return summary

    def publish_catalog(self, run: RunSpec) -> str:
        t3 = time.perf_counter()
        catalog = in_stage("publish-catalog", update_catalog, run)
        self.timings["catalog"] = time.perf_counter() - t3
        return catalog

    def announce(self, run: RunSpec, summary: dict) -> None:
        announce_update(run.recipe_id, summary)

    def published(self, run: RunSpec, summary: dict, target: TargetSpec | None) -> dict:
        self.timings["total"] = time.perf_counter() - self.t0
        if target is not None:
            first_url = next(iter(recipe_for(run).pattern.items()))[1]
            summary_artifact(run, target, summary, source_text(first_url, run), self.timings)
        what = "references" if summary.get("references") else "store"
        more = f" (appended {summary['appended']})" if run.append_from is not None else ""
        print(f"{what} ready: {summary['url']}{more}")
        return {**summary, "timings": self.timings}
