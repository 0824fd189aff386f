from __future__ import annotations

from prefect.runtime import flow_run

from forge.engine.stages import finalize, publish_staged
from forge.engine.types import RunSpec, TargetSpec
from forge.engine.writers import BatchStats
from tasks.common import recipe_for, stage


@stage(name="finalize-target", retries=2, retry_delay_seconds=10)
def finalize_target(target: TargetSpec, stored: list[BatchStats]) -> dict:
    """Publish the store (one commit on an Icechunk target, of what the store batches wrote). Returns
    its summary."""
    provenance = {"forge:flow_run_id": str(flow_run.id or "")}
    return finalize(recipe_for(target.run), target, provenance, stored)


@stage(name="finalize-target", retries=2, retry_delay_seconds=10)
def publish_rebuild(run: RunSpec) -> dict:
    """Publish a rebuild whose catch-up found nothing more to append."""
    return publish_staged(run, recipe_for(run).concat_dim)
