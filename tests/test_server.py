"""The Prefect server `forge run` keeps between runs: reused, replaced when stale or foreign, stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.server import (
    CLUSTER_FILE,
    SERVER_APP,
    STATE_FILE,
    KeptCluster,
    KeptServer,
    kept_server,
    running_server,
    stop_kept_server,
    wait_launched,
    worker_fingerprint,
)
from forge.replicas.oisst import OisstReplica
from forge.testing import assert_store_matches

FORGE = Path(sys.executable).parent / "forge"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.fixture
def home(tmp_path: Path):
    """A PREFECT_HOME of its own (the session's server and database are not these tests')."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "FORGE_DASK_WORKERS": "1"}
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL")
    env.pop("PREFECT_API_URL", None)
    yield tmp_path / "prefect", env
    subprocess.run([str(FORGE), "server", "stop"], env=env, capture_output=True)


def test_forge_run_keeps_its_server_for_the_next_run(home, tmp_path):
    prefect_home, env = home

    def run(days: int) -> str:
        command = [str(FORGE), "run", "noaa-oisst", "--prune", str(days), "--local-replica"]
        command += ["--replica-dir", str(tmp_path / "replica"), "--target-root", str(tmp_path / "target")]
        command += ["--cache-root", str(tmp_path / "cache")]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "Starting temporary server" not in done.stdout + done.stderr  # one server, not Prefect's own
        return done.stdout

    first = run(2)
    server = KeptServer(**json.loads((prefect_home / STATE_FILE).read_text()))
    workers = KeptCluster(**json.loads((prefect_home / CLUSTER_FILE).read_text()))
    assert f"stays up for later runs (UI: {server.ui_url})" in first and alive(server.pid)
    second = run(3)
    assert f"Prefect API {server.api_url}" in second  # the same server, found at once
    assert json.loads((prefect_home / CLUSTER_FILE).read_text())["pid"] == workers.pid  # the same workers
    replica = OisstReplica(tmp_path / "replica")
    days = [replica.path_for(day) for day in __import__("pandas").date_range("1981-09-01", periods=3)]
    assert_store_matches(str(tmp_path / "target" / "noaa-oisst.zarr"), days)
    status = subprocess.run([str(FORGE), "server", "status"], env=env, capture_output=True, text=True)
    assert status.returncode == 0 and f"pid {server.pid}" in status.stdout
    stop = subprocess.run([str(FORGE), "server", "stop"], env=env, capture_output=True, text=True)
    assert f"stopped the Prefect server (pid {server.pid})" in stop.stdout
    deadline = time.time() + 10
    while (alive(server.pid) or alive(workers.pid)) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(server.pid) and not (prefect_home / STATE_FILE).exists()
    assert not alive(workers.pid) and not (prefect_home / CLUSTER_FILE).exists()
    status = subprocess.run([str(FORGE), "server", "status"], env=env, capture_output=True, text=True)
    assert status.returncode == 1


def test_a_stale_or_foreign_server_is_left_and_replaced(home, monkeypatch):
    """A recorded pid that is now another program is left alone; one that looks like a Prefect server
    but does not answer as this home's is stopped; either way a new server starts and is recorded."""
    prefect_home, env = home
    monkeypatch.setenv("PREFECT_HOME", str(prefect_home))
    prefect_home.mkdir(parents=True)
    other = subprocess.Popen(["sleep", "60"])  # the recorded pid, reused by another program
    impostor = subprocess.Popen(  # its command line names the server app, yet nothing answers
        [sys.executable, "-c", "import time; time.sleep(60)", SERVER_APP],
        start_new_session=True,
    )
    wait_launched(other, "sleep")
    wait_launched(impostor, SERVER_APP)
    home = prefect_home.resolve()

    def record(pid: int) -> None:
        stale = KeptServer(pid, 9, str(home), "3.8.8", time.time() - 600)
        (prefect_home / STATE_FILE).write_text(json.dumps(stale.__dict__))

    try:
        record(other.pid)
        assert running_server(home) is None
        assert stop_kept_server(home).pid == other.pid and alive(other.pid), (
            "another program's process was killed"
        )
        record(impostor.pid)
        server = kept_server(home)
        assert server.booting(), "a server just launched must be recognized as booting by the next command"
        server.wait_ready()
        assert server.pid != impostor.pid and running_server(home) == server
        impostor.wait(timeout=10)  # stopped: it claimed to be the recorded server and did not answer as one
        assert kept_server(home) == server  # found, not started again
        assert stop_kept_server(home) == server and running_server(home) is None
    finally:
        other.kill()
        impostor.kill()


def test_kept_workers_serve_only_runs_of_the_same_environment(monkeypatch):
    """Secrets and the API's address are read from the workers' environment: another one, another cluster."""
    same = worker_fingerprint(2)
    monkeypatch.setenv("PWD", "/elsewhere")  # a shell's bookkeeping changes nothing a worker does
    assert worker_fingerprint(2) == same
    assert worker_fingerprint(3) != same
    monkeypatch.setenv("EARTHDATA_PASSWORD", "a new secret")
    assert worker_fingerprint(2) != same
