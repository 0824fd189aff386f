from __future__ import annotations

from prefect import get_run_logger

from forge.engine.caching import cache_batch, host_windows, plan_cache
from forge.engine.types import CacheBatch, InputSummary, RunSpec
from tasks.common import Opaque, recipe_for, secret_lookup, stage
from tasks.slots import host_limit_name


def plan_cache_batches(run: RunSpec, stage: str = "cache") -> tuple[list[Opaque[CacheBatch]], dict[str, int]]:
    """The cache batches, grouped by source host, and how many of each host's slots this run takes.

    Creates or updates each host's global concurrency limit (idempotent) before the flow takes slots.
    Run by the flow itself, not as a task: the server records a finished task's state just as the flow
    then takes its slots, and on SQLite one of those two writes is refused with a 503 that the client
    retries 2 s later (in half of the runs).
    """
    from prefect.client.orchestration import get_client

    recipe = recipe_for(run)
    batches = plan_cache(recipe, run, stage)
    windows = host_windows(recipe, batches)
    limit = recipe.max_concurrency_per_host
    with get_client(sync_client=True) as client:
        for host in windows:
            client.upsert_global_concurrency_limit_by_name(host_limit_name(host), limit)
    get_run_logger().info(
        "%d inputs to %s in %d batches from %d source host(s)",
        sum(len(b.items) for b in batches),
        stage,
        len(batches),
        len({b.host for b in batches}),
    )
    return [Opaque(b) for b in batches], windows


@stage(
    name="cache-inputs",
    task_run_name="{batch.value.label}",
    retries=2,
    retry_delay_seconds=10,  # one number: the UI shows a list as "NaN"
    retry_jitter_factor=0.5,
)
def cache_inputs(batch: Opaque[CacheBatch], run: RunSpec) -> Opaque[list[InputSummary]]:
    """Fetch the batch's missing inputs, one at a time, and summarize them."""
    return Opaque(cache_batch(recipe_for(run), run, batch.value, secret_lookup))
