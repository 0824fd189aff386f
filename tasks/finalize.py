from __future__ import annotations

from prefect.runtime import flow_run

from forge.build.stages import finalize
from forge.build.types import TargetSpec
from tasks.common import recipe_for, stage


@stage(name="finalize-target", retries=2, retry_delay_seconds=10)
def finalize_target(target: TargetSpec) -> dict:
    """Commit the store: provenance, the complete flag, consolidated metadata. Returns its summary."""
    return finalize(recipe_for(target.run), target, {"forge:flow_run_id": str(flow_run.id or "")})
