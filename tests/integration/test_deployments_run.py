"""`prefect deployment run recipe/noaa-oisst` on a real Prefect server with a real process worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

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


def test_deployment_run_on_a_process_worker(server_env, tmp_path):
    env = server_env
    forge("bakery", "up", "local", env=env)
    forge("bakery", "up", "local", env=env)  # idempotent
    forge("deploy", "--data-dir", str(tmp_path / "data"), env=env)
    forge("deploy", "--data-dir", str(tmp_path / "data"), env=env)  # idempotent
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
                params = {"prune": 3, "url_rewrites": {OISST_ROOT.split("/data/")[0] + "/": url + "/"}}
                run = subprocess.run(
                    [
                        str(BIN / "prefect"),
                        "deployment",
                        "run",
                        "recipe/noaa-oisst",
                        "--params",
                        json.dumps(params),
                    ],
                    cwd=ROOT,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                assert run.returncode == 0, run.stdout + run.stderr
                api = env["PREFECT_API_URL"]
                runs = httpx.post(f"{api}/flow_runs/filter", json={}).json()
                assert len(runs) == 1
                flow_run_id = runs[0]["id"]
                deadline = time.time() + 300
                while time.time() < deadline:
                    state = httpx.get(f"{api}/flow_runs/{flow_run_id}").json()["state"]
                    if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                        break
                    time.sleep(2)
                assert state["type"] == "COMPLETED", state
                tasks = httpx.post(
                    f"{api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [flow_run_id]}}}
                ).json()
                names = {
                    t["name"].rsplit("-", 1)[0]
                    if not t["name"].startswith(("cache-", "store-"))
                    else t["name"].split("-")[0]
                    for t in tasks
                }
                assert {
                    "plan-cache",
                    "limit-source-hosts",
                    "cache",
                    "prepare-target",
                    "store",
                    "finalize-target",
                } <= names
                assert all(t["state"]["type"] == "COMPLETED" for t in tasks)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    store = tmp_path / "data" / "target" / "noaa-oisst.zarr"
    assert_store_matches(str(store), sorted((tmp_path / "replica" / "720x1440").rglob("*.nc")))
