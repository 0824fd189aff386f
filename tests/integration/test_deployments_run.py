"""`prefect deployment run recipe/noaa-oisst` on a real Prefect server with a real process worker."""

from __future__ import annotations

import httpx
import xarray as xr

from flows.cli import local_replica
from forge.replica import OISST_ROOT
from forge.testing import assert_store_matches
from tests.integration.helpers import forge, process_worker, run_deployment, stage_names


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
    with process_worker(env, tmp_path / "worker.log"), local_replica(str(tmp_path / "replica")) as url:
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
