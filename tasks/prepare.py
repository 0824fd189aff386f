from __future__ import annotations

from forge.engine.stages import plan_append, prepare, source_probe
from forge.engine.types import InputSummary, RunSpec, TargetSpec, WriteBatch
from tasks.common import Opaque, recipe_for, secret_lookup, stage


@stage(name="prepare-target", retries=2, retry_delay_seconds=10)
def prepare_target(
    run: RunSpec, summaries: list[Opaque[list[InputSummary]]]
) -> tuple[TargetSpec, list[Opaque[WriteBatch]]]:
    """Combine the schemas of all inputs, write the template, plan the writes."""
    flat = [s for batch in summaries for s in batch.value]
    target, batches = prepare(recipe_for(run), run, flat)
    return target, [Opaque(b) for b in batches]


@stage(name="plan-append")
def plan_append_run(run: RunSpec) -> tuple[RunSpec, list[str]]:
    """Where the store ends, and the inputs beyond it (none: nothing to do), asked of the source with the
    secrets the cache stage fetches with (environment, then Prefect Secret blocks)."""
    recipe = recipe_for(run)
    return plan_append(recipe, run, source_probe(recipe, run, secret_lookup))
