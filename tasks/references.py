"""The reference stages' Prefect tasks: thin wrappers of :mod:`forge.engine.references`."""

from __future__ import annotations

from prefect.runtime import flow_run

from forge.engine.stages import reference_batch, write_references
from forge.engine.types import CacheBatch, RunSpec
from forge.recipe.patterns import Key
from tasks.common import Opaque, recipe_for, secret_lookup, stage


@stage(
    name="reference-inputs",
    task_run_name="{batch.value.label}",
    retries=2,
    retry_delay_seconds=10,
    retry_jitter_factor=0.5,
)
def reference_inputs(batch: Opaque[CacheBatch], run: RunSpec) -> Opaque[list[tuple[Key, object]]]:
    """The batch's inputs as virtual datasets (their metadata read, their chunks located)."""
    return Opaque(reference_batch(recipe_for(run), batch.value, secret_lookup))


@stage(name="write-references", retries=2, retry_delay_seconds=10)
def write_reference_store(run: RunSpec, batches: list[Opaque[list[tuple[Key, object]]]]) -> dict:
    """Combine the inputs' references and write them: one Icechunk commit, or one kerchunk file."""
    refs = [ref for batch in batches for ref in batch.value]
    return write_references(recipe_for(run), run, refs, {"forge:flow_run_id": str(flow_run.id or "")})
