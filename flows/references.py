"""The ``recipe`` flow's stages for a :class:`~forge.recipe.recipes.ReferenceRecipe`: reference the
inputs in batches (on the task runner) -> write the combined references."""

from __future__ import annotations

import time

from prefect import get_run_logger

from flows.alerts import announce_update
from flows.outcomes import first_failure, in_stage
from flows.reports import Progress
from flows.runtime.windows import submit_windowed, wait_ended
from forge.engine.stages import nothing_appended
from forge.engine.types import RunSpec
from tasks.cache import plan_cache_batches
from tasks.catalog import update_catalog
from tasks.references import plan_reference_append_run, reference_inputs, write_reference_store
from tasks.slots import source_host_slots


def build_references(run: RunSpec, append: bool, dry_run: bool) -> dict:
    """The stages, in order; a stage that fails raises :class:`StageFailed` with its cause."""
    t0 = time.perf_counter()
    if append:
        run, new = in_stage("plan-append", plan_reference_append_run, run)
        get_run_logger().info("%s: %d new input(s) to reference", run.target_url, new)
        if dry_run or not new:
            return nothing_appended(run, new, dry_run)

    batches, windows = plan_cache_batches(run, "reference")
    referenced = Progress(f"inputs referenced for {run.recipe_id}", sum(len(b.value.items) for b in batches))
    # The source hosts' download slots, as the cache stage takes them: referencing reads each input's
    # metadata from its server, and other runs may be reading it too.
    with source_host_slots(windows):
        futures = submit_windowed(
            lambda b: reference_inputs.submit(b, run), batches, lambda b: b.value.host, windows
        )
        wait_ended(futures, lambda i: referenced.advance(len(batches[i].value.items)))
    if failed := first_failure("reference", futures, [b.value.label for b in batches]):
        raise failed
    summary = in_stage("write-references", write_reference_store, run, [f.result() for f in futures])
    summary["catalog"] = in_stage("publish-catalog", update_catalog, run)
    if not append or summary["appended"]:
        announce_update(run.recipe_id, summary)
    summary["timings"] = {"total": time.perf_counter() - t0}
    print(f"references ready: {summary['url']}" + (f" (appended {summary['appended']})" if append else ""))
    return summary
