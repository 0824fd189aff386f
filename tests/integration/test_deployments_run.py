"""`prefect deployment run recipe/noaa-oisst` on a real Prefect server with a real process worker."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import xarray as xr

from flows.cli import local_replica
from forge.replica import OISST_ROOT
from forge.testing import assert_store_matches
from tests.integration.helpers import free_port

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def server_env(tmp_path: Path):
    """`prefect server start` on loopback with its own SQLite database, stopped at the end."""
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path}/server.db",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "FORGE_DASK_WORKERS": "2",
    }
    with open(tmp_path / "server.log", "w") as log:
        yield from _serve(env, port, log, tmp_path)


def _serve(env: dict, port: int, log, tmp_path: Path):
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("prefect server did not start: " + (tmp_path / "server.log").read_text()[-2000:])
    yield env
    server.terminate()
    server.wait(timeout=30)


def forge(*args: str, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(BIN / "forge"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def run_deployment(name: str, params: dict, env: dict) -> dict:
    """`prefect deployment run NAME --params ...`, then wait for the flow run's end; its final API record."""
    run = subprocess.run(
        [str(BIN / "prefect"), "deployment", "run", name, "--params", json.dumps(params)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", run.stdout).group(1)
    api = env["PREFECT_API_URL"]
    deadline = time.time() + 300
    while time.time() < deadline:
        record = httpx.get(f"{api}/flow_runs/{flow_run_id}").json()
        if record["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return record
        time.sleep(2)
    pytest.fail(f"{name} did not finish: {record['state']}")


def stage_names(api: str, flow_run_id: str) -> tuple[set[str], list[dict]]:
    tasks = httpx.post(f"{api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [flow_run_id]}}}).json()
    names = {
        t["name"].split("-")[0] if t["name"].startswith(("cache-", "store-")) else t["name"].rsplit("-", 1)[0]
        for t in tasks
    }
    return names, tasks


def test_deployment_run_and_scheduled_append_deployment_on_a_process_worker(server_env, tmp_path):
    env = server_env
    api = env["PREFECT_API_URL"]
    forge("bakery", "up", "local", env=env)
    forge("bakery", "up", "local", env=env)  # idempotent
    forge("deploy", "--data-dir", str(tmp_path / "data"), env=env)
    forge("deploy", "--data-dir", str(tmp_path / "data"), env=env)  # idempotent
    append_deployment = httpx.get(f"{api}/deployments/name/recipe/noaa-oisst-append").json()
    assert append_deployment["parameters"]["append"] is True
    [schedule] = append_deployment["schedules"]
    assert schedule["schedule"]["cron"] == "0 6 * * *" and schedule["schedule"]["timezone"] == "UTC"
    assert schedule["active"] is True  # pausable in the UI
    store = tmp_path / "data" / "target" / "noaa-oisst.zarr"
    replica = tmp_path / "replica" / "720x1440"
    with (tmp_path / "worker.log").open("w") as worker_log:
        worker = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", "bakery-local"],
            cwd=ROOT,
            env=env,
            stdout=worker_log,
            stderr=subprocess.STDOUT,
        )
        try:
            with local_replica(str(tmp_path / "replica")) as url:
                rewrites = {OISST_ROOT.split("/data/")[0] + "/": url + "/"}
                record = run_deployment("recipe/noaa-oisst", {"prune": 3, "url_rewrites": rewrites}, env)
                assert record["state"]["type"] == "COMPLETED", record["state"]
                names, tasks = stage_names(api, record["id"])
                stages = {
                    "plan-cache",
                    "limit-source-hosts",
                    "cache",
                    "prepare-target",
                    "store",
                    "finalize-target",
                }
                assert stages <= names
                assert all(t["state"]["type"] == "COMPLETED" for t in tasks)
                assert_store_matches(str(store), sorted(replica.rglob("*.nc")))

                # The append deployment adds the two days beyond the store, then finds nothing new.
                params = {"prune": 5, "url_rewrites": rewrites}
                record = run_deployment("recipe/noaa-oisst-append", params, env)
                assert record["state"]["type"] == "COMPLETED", record["state"]
                names, _ = stage_names(api, record["id"])
                assert {"plan-append", "cache", "prepare-target", "store", "finalize-target"} <= names
                assert xr.open_zarr(store).sizes["time"] == 5
                assert_store_matches(str(store), sorted(replica.rglob("*.nc")))
                record = run_deployment("recipe/noaa-oisst-append", params, env)
                assert record["state"]["type"] == "COMPLETED"
                names, _ = stage_names(api, record["id"])
                assert "store" not in names and "cache" not in names, "nothing new: nothing cached or stored"
        finally:
            worker.terminate()
            worker.wait(timeout=30)
