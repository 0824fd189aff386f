"""The Prefect server `forge run` keeps between runs: a real one (UI, background services), reused from
any folder, replaced when stale or foreign, stopped by hand, when idle or when its home is gone."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from flows.server import (
    CLUSTER_FILE,
    SERVER_MODULE,
    STATE_FILE,
    KeptCluster,
    KeptServer,
    all_stacks,
    kept_cluster,
    kept_server,
    running_server,
    stop_kept_server,
    wait_launched,
    worker_fingerprint,
)
from forge.replicas.oisst import OisstReplica
from forge.replicas.server import SourceServer
from forge.testing import assert_store_matches, make_dataset, write_inputs
from tests.browser import rendered
from tests.integration.helpers import ROOT, SOURCE, wait_for_scheduled_runs, write_recipe

FORGE = Path(sys.executable).parent / "forge"
NCEI = "https://www.ncei.noaa.gov/"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def gone(*pids: int, timeout: float = 30) -> bool:
    deadline = time.time() + timeout
    while any(alive(pid) for pid in pids) and time.time() < deadline:
        time.sleep(0.2)
    return not any(alive(pid) for pid in pids)


@pytest.fixture
def home(tmp_path: Path, monkeypatch):
    """A PREFECT_HOME of its own (the session's server and database are not these tests'), and a list of
    kept stacks of its own (XDG_STATE_HOME)."""
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "FORGE_DASK_WORKERS": "1",
    }
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL")
    env.pop("PREFECT_API_URL", None)
    monkeypatch.setenv("XDG_STATE_HOME", env["XDG_STATE_HOME"])
    yield tmp_path / "prefect", env
    subprocess.run([str(FORGE), "server", "stop", "--all"], env=env, capture_output=True)


def forge_run(env: dict, cwd: Path, *args: str) -> str:
    command = [str(FORGE), "run", *args]
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Starting temporary server" not in done.stdout + done.stderr  # one server, not Prefect's own
    return done.stdout + done.stderr


def test_forge_run_keeps_a_real_server_and_workers_for_runs_from_any_folder(home, tmp_path):
    """The kept server has Prefect's UI: the printed address and a run's "View at" page show the run in a
    browser. A later run from another folder, with a secret of its own in its environment and a relative
    target, finds the same server and the same workers, which read the secret with that run."""
    prefect_home, env = home
    (tmp_path / "a").mkdir()
    first = forge_run(
        env, tmp_path / "a", "noaa-oisst", "--prune", "2", "--local-replica", "--replica-dir", "../replica"
    )
    server = KeptServer(**json.loads((prefect_home / STATE_FILE).read_text()))
    workers = KeptCluster(**json.loads((prefect_home / CLUSTER_FILE).read_text()))
    assert f"stays up for later runs (UI: {server.ui_url})" in first and alive(server.pid)
    view = re.search(r"View at (http://\S+/runs/flow-run/\S+)", first).group(1)
    assert view.startswith(server.ui_url)
    name = "noaa-oisst · build · first 2"
    assert name in rendered(view, tmp_path / "flow-run.png", showing=name)
    assert "<title>Dashboard • Prefect Server</title>" in rendered(server.ui_url)  # the printed address
    assert name in rendered(f"{server.ui_url}/runs", showing=name)
    replica = OisstReplica(tmp_path / "replica")
    days = [replica.path_for(day) for day in pd.date_range("1981-09-01", periods=2)]
    assert_store_matches(str(tmp_path / "a" / "data" / "target" / "noaa-oisst.zarr"), days)

    # Another folder, a variable of its own, and a source that wants a password only this run has.
    paths = write_inputs(make_dataset(4), tmp_path / "src", 1)
    recipe = write_recipe(
        tmp_path / "b",
        len(paths),
        chunk=2,
        pattern_kwargs='fsspec_open_kwargs={"auth": ("alice", Secret("DEMO_PASSWORD"))}',
    )
    secret = "pw-only-in-the-second-run"
    with SourceServer(root=tmp_path / "src", basic_auth=("alice", secret)) as source:
        second_env = {**env, "DEMO_PASSWORD": secret, "UNRELATED_VARIABLE": "1"}
        args = (str(recipe), "--target-root", "out", "--url-rewrite", f"{SOURCE}={source.url}")
        second = forge_run(second_env, tmp_path / "b", *args)
    assert f"Prefect API {server.api_url}" in second  # the same server, found at once
    assert json.loads((prefect_home / CLUSTER_FILE).read_text())["pid"] == workers.pid  # the same workers
    assert_store_matches(str(tmp_path / "b" / "out" / "demo.zarr"), paths)  # the run's folder, not theirs
    assert secret not in second and secret.encode() not in (prefect_home / "prefect.db").read_bytes()

    status = subprocess.run([str(FORGE), "server", "status"], env=env, capture_output=True, text=True)
    assert status.returncode == 0 and f"pid {server.pid}" in status.stdout
    stop = subprocess.run([str(FORGE), "server", "stop"], env=env, capture_output=True, text=True)
    assert f"stopped the Prefect server (pid {server.pid})" in stop.stdout
    assert gone(server.pid, workers.pid, timeout=10)
    assert not (prefect_home / STATE_FILE).exists() and not (prefect_home / CLUSTER_FILE).exists()
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
        [sys.executable, "-c", "import time; time.sleep(60)", SERVER_MODULE],
        start_new_session=True,
    )
    wait_launched(other, "sleep")
    wait_launched(impostor, SERVER_MODULE)
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


def test_kept_workers_serve_every_run_of_the_same_code(monkeypatch, tmp_path):
    """The folder a run starts from and its environment reach the workers with the run; only the
    interpreter, the packages, the code and the number of workers choose the workers."""
    same = worker_fingerprint(2)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EARTHDATA_PASSWORD", "a new secret")
    assert worker_fingerprint(2) == same
    assert worker_fingerprint(3) != same


def test_a_run_killed_in_its_cache_stage_does_not_block_the_next(home, tmp_path):
    """SIGKILL `forge run` while it downloads, holding the source's slots: the next run of the recipe
    waits for the dead run's lease to lapse, saying so at least every 30 s, and finishes."""
    _, env = home
    replica = OisstReplica(tmp_path / "replica", nlat=36, nlon=72)
    days = [replica.path_for(day) for day in pd.date_range("1981-09-01", periods=6)]
    with SourceServer(generate=replica.generate, delay=2.0) as slow:
        rewrite = ("--url-rewrite", f"{NCEI}={slow.url}/", "--target-root", "target")
        command = [str(FORGE), "run", "noaa-oisst", "--prune", "6", *rewrite]
        killed = subprocess.Popen(
            command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        deadline = time.time() + 120
        while sum(slow.requests.values()) == 0 and time.time() < deadline:  # downloading: slots held
            time.sleep(0.1)
        assert sum(slow.requests.values()) > 0 and killed.poll() is None, killed.stdout.read().decode()[
            -3000:
        ]
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
        slow.delay = 0.0
        t0 = time.time()
        lines: list[tuple[float, str]] = []
        rerun = subprocess.Popen(
            command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        reader = threading.Thread(target=lambda: lines.extend((time.time(), line) for line in rerun.stdout))
        reader.start()
        code = rerun.wait(timeout=240)
        reader.join()
    text = "".join(line for _, line in lines)
    assert code == 0, text[-3000:]
    assert time.time() - t0 < 180
    stamps = [t0] + [t for t, _ in lines]
    assert max(b - a for a, b in zip(stamps, stamps[1:], strict=False)) < 60, text[-3000:]
    assert re.search(
        r"waited \d+ s for \d+ download slots of source-host:\S+: \d of \d in use; held by 'noaa-oisst", text
    ), text[-3000:]
    assert_store_matches(str(tmp_path / "target" / "noaa-oisst.zarr"), days)


def test_kept_stacks_stop_when_idle_or_their_home_is_gone_and_all_at_once(home, tmp_path, monkeypatch):
    _, env = home
    monkeypatch.delenv("PREFECT_API_DATABASE_CONNECTION_URL")  # each server its home's database
    idle_home, deleted_home, stopped_home = (tmp_path / name for name in ("idle", "deleted", "stopped"))
    monkeypatch.setenv("FORGE_SERVER_IDLE_TIMEOUT", "0")
    deleted = kept_server(deleted_home)
    deleted_workers = kept_cluster(1, deleted_home)
    stopped = kept_server(stopped_home)
    for server in (deleted, stopped):
        server.wait_ready()
    # The idle one last, so that its 20 s are not spent while the others start on a loaded machine.
    monkeypatch.setenv("FORGE_SERVER_IDLE_TIMEOUT", "20s")
    idle = kept_server(idle_home)
    idle_workers = kept_cluster(1, idle_home)
    idle.wait_ready()
    status = subprocess.run(
        [str(FORGE), "server", "status", "--all"], env=env, capture_output=True, text=True
    )
    assert status.returncode == 0
    for server in (idle, deleted, stopped):
        assert f"server up: pid {server.pid}, UI {server.ui_url}, PREFECT_HOME {server.home}" in status.stdout
    for workers, where in ((idle_workers, idle_home), (deleted_workers, deleted_home)):
        assert (
            f"workers up: pid {workers.pid}, scheduler {workers.address}, PREFECT_HOME {where}"
            in status.stdout
        )

    shutil.rmtree(deleted_home)
    assert gone(deleted.pid, deleted_workers.pid), "a stack whose PREFECT_HOME is gone keeps running"
    assert gone(idle.pid, idle_workers.pid, timeout=60), "an idle stack keeps running"
    assert alive(stopped.pid)
    assert "idle limit 20 s" in (idle_home / "forge-server.log").read_text()
    assert [p.pid for p in all_stacks()] == [stopped.pid]

    stop = subprocess.run([str(FORGE), "server", "stop", "--all"], env=env, capture_output=True, text=True)
    assert f"server stopped: pid {stopped.pid}" in stop.stdout and gone(stopped.pid, timeout=10)
    assert not (stopped_home / STATE_FILE).exists()
    status = subprocess.run(
        [str(FORGE), "server", "status", "--all"], env=env, capture_output=True, text=True
    )
    assert status.returncode == 1 and "no Prefect server" in status.stdout


def test_a_scheduled_deployment_on_the_kept_server_gets_its_runs(home, tmp_path):
    """The kept server runs Prefect's scheduler: a deployment's schedule makes runs."""
    _, env = home
    env = {**env, "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "1"}
    start = subprocess.run([str(FORGE), "server", "start"], env=env, capture_output=True, text=True)
    api = re.search(r"API (\S+/api)", start.stdout).group(1)
    env = {**env, "PREFECT_API_URL": api}
    for command in (("bakery", "up", "local"), ("deploy", "--data-dir", str(tmp_path / "data"))):
        done = subprocess.run([str(FORGE), *command], env=env, cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    deployment = httpx.get(f"{api}/deployments/name/recipe/noaa-oisst-append").json()
    scheduled = wait_for_scheduled_runs(api, deployment["id"])
    assert {r["expected_start_time"][11:16] for r in scheduled} == {"06:00"}
