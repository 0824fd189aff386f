from __future__ import annotations

from prefect import task
from prefect.concurrency.sync import concurrency

from forge.caching import cache_batch, plan_cache
from forge.schema import InputSummary
from forge.types import CacheBatch, RunSpec
from tasks.common import recipe_for, retry_transient, secret_lookup


def host_limit_name(host: str) -> str:
    return f"source-host:{host}"


def _host_limit(host: str):
    # strict: a missing limit is a setup bug (the flow creates it), not a reason to run unthrottled.
    return concurrency(host_limit_name(host), occupy=1, strict=True)


@task(name="plan-cache")
def plan_cache_batches(run: RunSpec) -> list[CacheBatch]:
    return plan_cache(recipe_for(run), run)


@task(
    name="cache-inputs",
    task_run_name="{batch.label}",
    retries=3,
    retry_delay_seconds=[5, 20, 60],
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_transient,
)
def cache_inputs(batch: CacheBatch, run: RunSpec) -> list[InputSummary]:
    """Fetch the batch's missing inputs (one slot of its host's concurrency limit) and summarize them."""
    return cache_batch(recipe_for(run), run, batch, secret_lookup, _host_limit)


@task(name="limit-source-hosts")
def limit_source_hosts(batches: list[CacheBatch], run: RunSpec) -> dict[str, int]:
    """Create or update one global concurrency limit per source host (idempotent)."""
    from prefect.client.orchestration import get_client

    limit = recipe_for(run).max_concurrency_per_host
    hosts = sorted({b.host for b in batches})
    with get_client(sync_client=True) as client:
        for host in hosts:
            client.upsert_global_concurrency_limit_by_name(host_limit_name(host), limit)
    return dict.fromkeys(hosts, limit)
