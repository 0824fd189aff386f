from __future__ import annotations

from forge.build.types import TargetSpec, WriteBatch
from forge.build.writers import BatchStats, store_batch
from tasks.common import Opaque, recipe_for, retry_transient, stage


@stage(
    name="store-chunks",
    task_run_name="{batch.value.label}",
    retries=2,
    retry_delay_seconds=[10, 30],
    retry_condition_fn=retry_transient,
)
def store_chunks(batch: Opaque[WriteBatch], target: TargetSpec) -> BatchStats:
    """Write the batch's target chunks. Each chunk has exactly one writer, so a retry rewrites it safely."""
    return store_batch(recipe_for(target.run), target, batch.value)
