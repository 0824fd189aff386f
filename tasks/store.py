from __future__ import annotations

from prefect import task

from forge.types import TargetSpec, WriteBatch
from forge.writers import BatchStats, store_batch
from tasks.common import recipe_for, retry_transient


@task(
    name="store-chunks",
    task_run_name="{batch.label}",
    retries=2,
    retry_delay_seconds=[10, 30],
    retry_condition_fn=retry_transient,
)
def store_chunks(batch: WriteBatch, target: TargetSpec) -> BatchStats:
    """Write the batch's target chunks. Each chunk has exactly one writer, so a retry rewrites it safely."""
    return store_batch(recipe_for(target.run), target, batch)
