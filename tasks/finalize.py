from __future__ import annotations

from typing import Any

from prefect.runtime import flow_run

from forge.build.stages import finalize
from forge.build.types import TargetSpec
from tasks.common import recipe_for, stage


@stage(name="finalize-target", retries=2, retry_delay_seconds=10)
def finalize_target(target: TargetSpec, sessions: list[Any] | None = None) -> dict:
    """Publish the store (one commit on an Icechunk target, of the store batches' ``sessions``). Returns
    its summary."""
    provenance = {"forge:flow_run_id": str(flow_run.id or "")}
    return finalize(recipe_for(target.run), target, provenance, sessions or [])
