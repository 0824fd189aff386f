"""What a run leaves in the Prefect UI besides its logs: a summary artifact when it succeeds, a failure
artifact when it fails, and progress bars while it caches inputs and stores chunks."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.states import Failed, State

from flows.outcomes import StageFailed
from forge.catalog.catalog import HEALTH_PLOT, PAGE, QUICKLOOK
from forge.engine.types import RunSpec, TargetSpec
from forge.io.urls import join


def artifact_key(recipe_id: str, suffix: str = "") -> str:
    """Prefect artifact keys take lowercase letters, digits and dashes only (recipe ids may have more)."""
    return re.sub(r"[^a-z0-9-]+", "-", f"recipe-{recipe_id}{suffix}".lower())[:100]


class Progress:
    """A progress artifact of one stage: ``advance(n)`` as work of ``total`` ends."""

    def __init__(self, description: str, total: int):
        self.total, self.done = max(1, total), 0
        self.id = create_progress_artifact(0.0, description=description)

    def advance(self, n: int) -> None:
        self.done += n
        update_progress_artifact(self.id, min(100.0, 100.0 * self.done / self.total))


def source_text(first_url: str, run: RunSpec) -> str:
    """Where the inputs come from: the first input's URL, and the rewrite that maps it to a mirror."""
    rewrite = next(((old, new) for old, new in run.url_rewrites if first_url.startswith(old)), None)
    return f"`{first_url}`" + (f" (read through `{rewrite[1]}`)" if rewrite else "")


def summary_artifact(
    run: RunSpec, target: TargetSpec, summary: Mapping[str, Any], source: str, timings: Mapping[str, float]
) -> None:
    """The finished store: where it is, its source, the range it covers, what this run added, and times."""
    lines = [f"# {run.recipe_id}", "", f"Store: `{summary['url']}`", ""]
    if run.version:
        lines += [f"Version: {run.version}", ""]
    if "catalog" in summary:
        folder = join(run.target_root, run.recipe_id)
        lines += [
            f"STAC catalog: `{summary['catalog']}`; its page: `{join(run.target_root, PAGE)}`",
            "",
            f"Quick look: [{QUICKLOOK}]({join(folder, QUICKLOOK)}), "
            f"health: [{HEALTH_PLOT}]({join(folder, HEALTH_PLOT)})",
            "",
        ]
    lines += [f"Source: {source}", ""]
    if "range" in summary:
        first, last = summary["range"]
        lines += [f"{target.concat_dim}: {first} to {last} ({summary['sizes'][target.concat_dim]} steps)", ""]
    held = f"the store holds {target.concat_inputs} along {target.concat_dim}"
    if run.append_from is not None:
        lines.append(f"Appended {target.n_inputs} inputs this run; {held}.")
    else:
        done = " (already complete: nothing written)" if target.complete else ""
        lines.append(f"Built from {target.n_inputs} inputs{done}; {held}.")
    lines += [
        f"Chunks written this run: {target.n_chunks}",
        "",
        f"Decoded size: {summary['nbytes'] / 1e6:.1f} MB; stored: {summary['stored_bytes'] / 1e6:.1f} MB",
        "",
        "| stage | time |",
        "|---|---|",
        *(f"| {stage} | {seconds:.1f} s |" for stage, seconds in timings.items()),
        "",
        f"```\n{summary['repr']}\n```",
    ]
    create_markdown_artifact(
        key=artifact_key(run.recipe_id),
        description=f"Store for recipe {run.recipe_id}",
        markdown="\n".join(lines) + "\n",
    )


def failed_run(failure: StageFailed, recipe_id: str) -> State:
    """The run's final state, and a short failure artifact: the stage, the task run, the cause."""
    create_markdown_artifact(
        key=artifact_key(recipe_id, "-failure"),
        description=f"Why the run of {recipe_id} failed",
        markdown=(
            f"# {recipe_id}: failed\n\n| | |\n|---|---|\n| stage | {failure.stage} |\n"
            f"| task run | {failure.task or failure.stage} |\n"
            f"| error | `{type(failure.cause).__name__}` |\n\n{failure}\n"
        ),
    )
    return Failed(message=str(failure))
