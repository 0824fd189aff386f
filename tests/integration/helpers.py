"""Helpers for flow tests: recipe files as users write them, and reading runs back from the Prefect API."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId

SOURCE = "https://data.example.org/archive"
HEARTBEAT = "prefect.flow-run.heartbeat"
ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent


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
    code: str = "",
    references: str | None = None,
) -> Path:
    """A recipe directory ``directory/name/recipe.py`` over ``{SOURCE}/all_{i:04d}.nc``; ``code`` goes
    before the pattern (a ``process_input``, say). ``references``: a ReferenceRecipe writing that format
    instead of a copy."""
    path = directory / name / "recipe.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    made = (
        f"ReferenceRecipe(pattern, target_format={references!r})"
        if references
        else f'XarrayZarrRecipe(pattern, target_chunks={{"time": {chunk}}}, {recipe_kwargs})'
    )
    path.write_text(
        textwrap.dedent(f"""
        from forge import ConcatDim, FilePattern, ReferenceRecipe, Secret, XarrayZarrRecipe

        def url(time):
            return f"{SOURCE}/all_{{time:04d}}.nc"

        {textwrap.indent(textwrap.dedent(code), "        ").strip()}

        pattern = FilePattern(url, ConcatDim("time", list(range({n_files}))), {pattern_kwargs})
        recipe = {made}
    """)
    )
    return path.parent


def task_runs(flow_run_id: UUID) -> list:
    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def artifacts(flow_run_id: UUID) -> dict[str, str]:
    """The flow run's artifacts: key (or type) -> data."""
    body = {"artifacts": {"flow_run_id": {"any_": [str(flow_run_id)]}}}
    with get_client(sync_client=True) as client:
        found = client._client.post("/artifacts/filter", json=body).json()
    return {a["key"] or a["type"]: a["data"] for a in found}


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


def flow_run_events(api: str, flow_run_id, *names: str, timeout: float = 60) -> dict[str, int]:
    """How many events of each name the server holds about the flow run, once it holds the last name's
    (events are persisted in batches, after the run's own records)."""
    body = {
        "filter": {"event": {"name": list(names)}, "resource": {"id": [f"prefect.flow-run.{flow_run_id}"]}},
        "limit": 50,
    }
    deadline = time.time() + timeout
    while True:
        events = httpx.post(f"{api}/events/filter", json=body).json()["events"]
        counts = {name: sum(e["event"] == name for e in events) for name in names}
        if counts[names[-1]] or time.time() > deadline:
            return counts
        time.sleep(1)


def forge(*args: str, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(BIN / "forge"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def run_deployment(name: str, params: dict, env: dict) -> dict:
    """`prefect deployment run NAME --params ...`, then wait for the flow run's end; its final API record."""
    return wait_for_flow_run(env["PREFECT_API_URL"], start_deployment(name, params, env))


def start_deployment(name: str, params: dict, env: dict) -> str:
    """`prefect deployment run` without waiting; the flow run's id."""
    run = subprocess.run(
        [str(BIN / "prefect"), "deployment", "run", name, "--params", json.dumps(params)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return re.search(r"UUID: ([0-9a-f-]{36})", run.stdout).group(1)


def wait_for_flow_run(api: str, flow_run_id: str, timeout: float = 300) -> dict:
    """The flow run's API record once it reached a final state."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        record = httpx.get(f"{api}/flow_runs/{flow_run_id}").json()
        if record["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return record
        time.sleep(2)
    pytest.fail(f"flow run {flow_run_id} did not finish: {record['state']}")


@contextlib.contextmanager
def process_worker(env: dict, log_path: Path) -> Iterator[subprocess.Popen]:
    """`prefect worker start --pool bakery-local`, stopped at the end."""
    with log_path.open("w") as log:
        worker = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", "bakery-local"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield worker
        finally:
            worker.terminate()
            worker.wait(timeout=30)


def stage_names(api: str, flow_run_id: str) -> tuple[set[str], list[dict]]:
    tasks = httpx.post(f"{api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [flow_run_id]}}}).json()
    names = {
        t["name"].split("-")[0] if t["name"].startswith(("cache-", "store-")) else t["name"] for t in tasks
    }
    return names, tasks


def wait_until_up(url: str, proc: subprocess.Popen, log_path: Path, what: str, timeout: float = 120) -> None:
    """Poll ``url`` until it answers 200; on timeout kill ``proc`` and fail with the end of its log."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail(f"{what} did not start: " + log_path.read_text()[-2000:])


def wait_for_scheduled_runs(api: str, deployment_id: str, timeout: float = 60) -> list[dict]:
    """The deployment's scheduled flow runs, once the server's scheduler has made some."""
    body = {
        "deployments": {"id": {"any_": [deployment_id]}},
        "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
    }
    deadline = time.time() + timeout
    while time.time() < deadline:
        runs = httpx.post(f"{api}/flow_runs/filter", json=body).json()
        if runs:
            return runs
        time.sleep(1)
    raise AssertionError(f"no scheduled runs of {deployment_id} within {timeout}s: the schedule never fires")


def run_flow(recipe_dir: Path, tmp_path: Path, server, cache: str = "cache", **kw):
    """The recipe flow over ``recipe_dir``, its sources rewritten to ``server``, into ``tmp_path/target``
    (``target_root=`` says otherwise); its final state."""
    from flows.recipe import recipe as recipe_flow

    kw.setdefault("target_root", str(tmp_path / "target"))
    return recipe_flow(
        recipe=str(recipe_dir),
        cache_root=str(tmp_path / cache),
        url_rewrites={SOURCE: server.url},
        return_state=True,
        **kw,
    )


def local_run(recipe_dir: Path, tmp_path: Path, server, root: str, cache: str = "cache", **kw):
    """A run of the recipe in ``recipe_dir`` for the local runner (the reference the flow must match),
    into ``tmp_path/root``, its sources rewritten to ``server``."""
    from forge.engine.types import RunSpec

    ref = str(recipe_dir / "recipe.py")
    return RunSpec(
        ref, "demo", str(tmp_path / root), str(tmp_path / cache), url_rewrites=((SOURCE, server.url),), **kw
    )
