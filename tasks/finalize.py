from __future__ import annotations

import re

from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from forge.build.target import finalize_target as finalize
from forge.build.types import TargetSpec
from tasks.common import recipe_for, stage


def artifact_key(recipe_id: str) -> str:
    """Prefect artifact keys take lowercase letters, digits and dashes only (recipe ids may have more)."""
    return re.sub(r"[^a-z0-9-]+", "-", f"recipe-{recipe_id}".lower())[:100]


@stage(name="finalize-target", retries=2, retry_delay_seconds=10)
def finalize_target(target: TargetSpec, timings: dict[str, float] | None = None) -> dict:
    """Record provenance, consolidate metadata, and publish a summary artifact."""
    summary = finalize(recipe_for(target.run), target, {"forge:flow_run_id": str(flow_run.id or "")})
    rows = "\n".join(f"| {stage} | {seconds:.1f} s |" for stage, seconds in (timings or {}).items())
    create_markdown_artifact(
        key=artifact_key(target.run.recipe_id),
        description=f"Store for recipe {target.run.recipe_id}",
        markdown=(
            f"# {target.run.recipe_id}\n\nStore: `{summary['url']}`\n\n"
            f"Inputs: {target.n_inputs}; chunks written this run: {target.n_chunks}"
            f"{' (already complete: nothing written)' if target.complete else ''}\n\n"
            f"Decoded size: {summary['nbytes'] / 1e6:.1f} MB; "
            f"stored: {summary['stored_bytes'] / 1e6:.1f} MB\n\n"
            f"| stage | time |\n|---|---|\n{rows}\n\n```\n{summary['repr']}\n```\n"
        ),
    )
    return {**summary, "timings": dict(timings or {}), "chunks_written": target.n_chunks}
