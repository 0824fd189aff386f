from __future__ import annotations

from forge.engine.types import TargetSpec, WriteBatch
from forge.engine.writers import BatchStats, store_batch
from tasks.common import Opaque, recipe_for, stage


@stage(
    name="store-chunks",
    task_run_name="{batch.value.label}",
    retries=2,
    retry_delay_seconds=10,
)
def store_chunks(batch: Opaque[WriteBatch], target: TargetSpec) -> BatchStats:
    """Write the batch's target chunks. Each chunk has exactly one writer, so a retry rewrites it safely."""
    return store_batch(recipe_for(target.run), target, batch.value)
