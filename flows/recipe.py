"""The ``recipe`` flow: cache inputs -> prepare target -> store chunks -> finalize target."""

from __future__ import annotations

import os
import time
from pathlib import Path

from prefect import flow, unmapped
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed

from flows.bakery import current_bakery, store_workers, task_runner_for
from flows.runtime.gc_freeze import loaded_frozen
from flows.runtime.settings_once import settings_serialized_once
from flows.runtime.windows import submit_windowed, wait_ended
from forge.build.append import describe_append
from forge.build.types import RunSpec
from forge.recipe.loading import find_recipe
from forge.recipe.patterns import parse_rewrites
from tasks.cache import cache_inputs, plan_cache_batches, source_host_slots
from tasks.finalize import finalize_target
from tasks.prepare import plan_append_run, prepare_target
from tasks.store import store_chunks

DEFAULT_TARGET_ROOT = str(Path("data/target").resolve())
DEFAULT_CACHE_ROOT = str(Path("data/cache").resolve())


def run_spec(
    recipe: str, target_root: str, cache_root: str, prune: int | None, url_rewrites: dict[str, str] | None
) -> RunSpec:
    """The run's spec. FORGE_URL_REWRITES ("FROM=TO ..."): a worker's mirrors, under the run's rewrites."""
    source = find_recipe(recipe)
    ref = recipe if not Path(recipe).exists() else str(source.path)
    rewrites = {
        **dict(parse_rewrites(os.environ.get("FORGE_URL_REWRITES", "").split())),
        **(url_rewrites or {}),
    }
    return RunSpec(
        ref,
        source.recipe_id,
        target_root,
        cache_root,
        prune,
        tuple(rewrites.items()),
        workers=store_workers(current_bakery()),
    )


# The bakery (FORGE_BAKERY, set by the deployment) picks the task runner: local processes or a KubeCluster.
# No full garbage collection walks what the process loaded before the run (Prefect, Dask, xarray), and the
# task runs carry the flow's Prefect settings as they are (not dumped and rebuilt for every task run).
@flow(name="recipe", task_runner=task_runner_for(current_bakery()), log_prints=True)
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
) -> dict:
    """Build ``{target_root}/{recipe_id}.zarr`` from a recipe id (in ``recipes/``) or a recipe path.

    ``append``: add only the inputs beyond the store's end (idempotent; finishes an interrupted append).
    ``dry_run`` (with ``append``): list what would be added, touch nothing.
    """
    run = run_spec(recipe, target_root, cache_root, prune, url_rewrites)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if append:
        run, new = plan_append_run(run)
        if dry_run or not new:
            print(describe_append(run.target_url, new, dry_run))
            return {"url": run.target_url, "new_inputs": new, "appended": 0, "dry_run": dry_run}

    batches, windows = plan_cache_batches(run)
    with source_host_slots(windows):
        summaries = submit_windowed(
            lambda b: cache_inputs.submit(b, run), batches, lambda b: b.value.host, windows
        )
        # Submitted now, it starts the moment the last batch ends. On a worker, not in the flow's
        # process: it holds every input's summary (about 9 KB each).
        prepared = prepare_target.submit(run, summaries)
        wait_ended(summaries)  # the download slots are held until every batch has ended
    target, write_batches = prepared.result()
    timings["cache + prepare"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    progress = create_progress_artifact(0.0, description=f"chunks stored for {run.recipe_id}")
    stored = store_chunks.map(write_batches, unmapped(target))
    done = 0
    for future in as_completed(stored):
        done += future.result().chunks
        update_progress_artifact(progress, 100.0 * done / max(1, target.n_chunks))
    if not stored:
        update_progress_artifact(progress, 100.0)
    timings["store"] = time.perf_counter() - t1

    summary = finalize_target(target, timings)
    print(f"store ready: {summary['url']}" + (f" (appended {target.appended})" if append else ""))
    return {**summary, "appended": target.appended}
