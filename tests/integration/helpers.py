"""Helpers for flow tests: recipe files as users write them, and reading runs back from the Prefect API."""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId

SOURCE = "https://data.example.org/archive"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_recipe(
    directory: Path,
    n_files: int,
    *,
    chunk: int,
    pattern_kwargs: str = "",
    recipe_kwargs: str = "",
    name: str = "demo",
) -> Path:
    """A recipe directory ``directory/name/recipe.py`` over ``{SOURCE}/all_{i:04d}.nc``."""
    path = directory / name / "recipe.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        textwrap.dedent(f"""
        from forge import ConcatDim, FilePattern, Secret, XarrayZarrRecipe

        def url(time):
            return f"{SOURCE}/all_{{time:04d}}.nc"

        pattern = FilePattern(url, ConcatDim("time", list(range({n_files}))), {pattern_kwargs})
        recipe = XarrayZarrRecipe(pattern, target_chunks={{"time": {chunk}}}, {recipe_kwargs})
    """)
    )
    return path.parent


def task_runs(flow_run_id: UUID) -> list:
    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def flow_run(flow_run_id: UUID):
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def logs(flow_run_id: UUID) -> str:
    from prefect.events.worker import EventsWorker  # noqa: F401  (keeps import order stable)
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        found = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)
    return "\n".join(log.message for log in found)
