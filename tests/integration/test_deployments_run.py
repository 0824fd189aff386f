"""`prefect deployment run recipe/noaa-oisst` on a real Prefect server with a real process worker."""

from __future__ import annotations

import time

import httpx
import psutil
import xarray as xr

from flows.cli import local_replica
from forge.publish.icechunk import history
from forge.replicas.oisst import OISST_ROOT
from forge.testing import assert_store_matches
from tests.integration.helpers import (
    HEARTBEAT,
    flow_run_events,
    forge,
    process_worker,
    run_deployment,
    stage_names,
    start_deployment,
    wait_for_flow_run,
    wait_for_scheduled_runs,
)


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
    scheduled = wait_for_scheduled_runs(api, append_deployment["id"])  # the server's scheduler fires
    assert {r["expected_start_time"][11:16] for r in scheduled} == {"06:00"}
    assert all(r["parameters"]["append"] is True for r in scheduled)
    store = tmp_path / "data" / "target" / "noaa-oisst.zarr"
    replica_dir = tmp_path / "replica"
    one_shot_root = tmp_path / "one-shot"
    with process_worker(env, tmp_path / "worker.log") as worker, local_replica(str(replica_dir)) as url:
        rewrites = {OISST_ROOT.split("/data/")[0] + "/": url + "/"}
        record = run_deployment("recipe/noaa-oisst", {"prune": 10, "url_rewrites": rewrites}, env)
        assert record["state"]["type"] == "COMPLETED", record["state"]
        names, tasks = stage_names(api, record["id"])
        stages = {"cache", "prepare-target", "store", "finalize-target"}
        assert stages <= names
        assert all(t["state"]["type"] == "COMPLETED" for t in tasks)
        assert_store_matches(str(store), sorted(replica_dir.rglob("*.nc")))
        # A worker's flow run beats, so a server can tell when its process died (zombie detection).
        assert flow_run_events(api, record["id"], HEARTBEAT)[HEARTBEAT] >= 1

        # The reference: one build of all 30 days, into another root.
        params = {"prune": 30, "url_rewrites": rewrites, "target_root": str(one_shot_root)}
        assert run_deployment("recipe/noaa-oisst", params, env)["state"]["type"] == "COMPLETED"
        one_shot = user_view(one_shot_root / "noaa-oisst.zarr")

        # Append 10 more days: only those are cached and stored; equal to the one-shot build's first 20.
        params = {"prune": 20, "url_rewrites": rewrites}
        record = run_deployment("recipe/noaa-oisst-append", params, env)
        assert record["state"]["type"] == "COMPLETED", record["state"]
        names, _ = stage_names(api, record["id"])
        assert {"plan-append", "cache", "prepare-target", "store", "finalize-target"} <= names
        xr.testing.assert_identical(user_view(store), one_shot.isel(time=slice(0, 20)))

        # Again: nothing new, nothing cached or stored, the store unchanged.
        record = run_deployment("recipe/noaa-oisst-append", params, env)
        assert record["state"]["type"] == "COMPLETED"
        names, _ = stage_names(api, record["id"])
        assert "store" not in names and "cache" not in names, "nothing new: nothing cached or stored"
        xr.testing.assert_identical(user_view(store), one_shot.isel(time=slice(0, 20)))

        # A crash mid-append: the flow-run process is killed once the append has begun writing.
        params = {"prune": 30, "url_rewrites": rewrites}
        flow_run_id = start_deployment("recipe/noaa-oisst-append", params, env)
        marker = store.parent / "noaa-oisst.zarr.pending-append.json"
        deadline = time.time() + 300
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the append never started writing"
        kill_descendants(worker.pid)
        assert marker.exists(), "killed too late: the append had already committed"
        crashed = wait_for_flow_run(api, flow_run_id)
        assert crashed["state"]["type"] in ("CRASHED", "FAILED"), crashed["state"]
        assert xr.open_zarr(store).sizes["time"] == 20, "readers still see the last committed store"

        # The rerun finishes the interrupted append: identical to the one-shot build of 30 days.
        record = run_deployment("recipe/noaa-oisst-append", params, env)
        assert record["state"]["type"] == "COMPLETED", record["state"]
        assert not marker.exists()
        xr.testing.assert_identical(user_view(store), one_shot)
        assert_store_matches(str(store), sorted(replica_dir.rglob("*.nc"))[:30])

        # The same deployments with an Icechunk target: each run one commit of the repository.
        icechunk_root = tmp_path / "icechunk"
        for name, days in (("recipe/noaa-oisst", 3), ("recipe/noaa-oisst-append", 5)):
            params = {"prune": days, "url_rewrites": rewrites, "target_format": "icechunk"}
            record = run_deployment(name, {**params, "target_root": str(icechunk_root)}, env)
            assert record["state"]["type"] == "COMPLETED", record["state"]
        repository = str(icechunk_root / "noaa-oisst.icechunk")
        assert [c.metadata["forge:kind"] for c in history(repository)] == ["append", "build"]
        assert_store_matches(repository, sorted(replica_dir.rglob("*.nc"))[:5])


def user_view(url) -> xr.Dataset:
    """The store as users see it, without forge's provenance attrs (run ids and fingerprints differ)."""
    ds = xr.open_zarr(url).load()
    ds.attrs = {k: v for k, v in ds.attrs.items() if not k.startswith("forge:")}
    return ds


def kill_descendants(pid: int) -> None:
    """SIGKILL every process under ``pid`` (the flow run and its Dask cluster), not ``pid`` itself."""
    children = psutil.Process(pid).children(recursive=True)
    for child in children:
        child.kill()
    psutil.wait_procs(children, timeout=30)
