"""New files in a bucket -> `forge receiver` -> Prefect event -> the automation `forge deploy` created ->
`recipe/noaa-oisst-append` on a real process worker -> the new days in the store.

The "bucket" is the notification only: the files themselves come from the OISST replica, which publishes
one more day just before each notification (as NOAA does), so the append finds exactly what landed.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
import xarray as xr

from forge.replicas.oisst import FIRST_DAY, OISST_ROOT, OisstReplica
from forge.replicas.server import SourceServer
from forge.testing import assert_store_matches
from tests.integration.helpers import (
    BIN,
    ROOT,
    forge,
    free_port,
    process_worker,
    run_deployment,
    wait_for_flow_run,
    wait_until_up,
)
from tests.test_receiver import VALIDATION, event_grid, eventbridge, sqs_delivery

TOKEN = "trigger-secret-for-tests"


def landed_key(day: pd.Timestamp) -> str:
    """Where the mirror job puts a day's file in the landing bucket (meta.yaml: prefix noaa-oisst/)."""
    return f"noaa-oisst/{day:%Y%m}/oisst-avhrr-v02r01.{day:%Y%m%d}.nc"


@pytest.fixture
def receiver(server_env, tmp_path: Path):
    """`forge receiver` on loopback (2 s coalescing window), talking to the test's Prefect server."""
    port = free_port()
    env = {**server_env, "FORGE_RECEIVER_TOKEN": TOKEN}
    with open(tmp_path / "receiver.log", "w") as log:
        proc = subprocess.Popen(
            [str(BIN / "forge"), "receiver", "--port", str(port), "--window", "2"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        wait_until_up(f"{url}/healthz", proc, tmp_path / "receiver.log", "forge receiver")
        yield url
        proc.terminate()
        proc.wait(timeout=30)
    assert TOKEN not in (tmp_path / "receiver.log").read_text(), "the secret never reaches the log"


def append_runs(api: str, deployment_id: str) -> list[dict]:
    """The deployment's runs but those its schedule made (the server's scheduler makes them too)."""
    runs = httpx.post(
        f"{api}/flow_runs/filter",
        json={"deployments": {"id": {"any_": [deployment_id]}}, "sort": "START_TIME_ASC"},
    ).json()
    return [r for r in runs if not r["auto_scheduled"]]


def wait_for_new_run(api: str, deployment_id: str, known: set[str], timeout: float = 120) -> dict:
    """The append run the automation started (one we did not know of), once it finished."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        new = [r for r in append_runs(api, deployment_id) if r["id"] not in known]
        if new:
            assert len(new) == 1, f"one run per burst, got {len(new)}"
            return wait_for_flow_run(api, new[0]["id"])
        time.sleep(1)
    pytest.fail("the automation started no append run")


def automation_runs(api: str, automation_id: str) -> set[str]:
    """Flow runs the automation's RunDeployment action says it started (from the event log)."""
    events = httpx.post(
        f"{api}/events/filter",
        json={"filter": {"event": {"name": ["prefect.automation.action.executed"]}}, "limit": 50},
    ).json()["events"]
    started = set()
    for event in events:
        if event["resource"]["prefect.resource.id"] != f"prefect.automation.{automation_id}":
            continue
        for related in event.get("related", []):
            if related["prefect.resource.id"].startswith("prefect.flow-run."):
                started.add(related["prefect.resource.id"].removeprefix("prefect.flow-run."))
    return started


def test_new_files_in_a_bucket_run_the_append_deployment(server_env, receiver, tmp_path):
    api = server_env["PREFECT_API_URL"]
    replica = OisstReplica(tmp_path / "replica", last_day=FIRST_DAY + pd.Timedelta(days=2))
    with SourceServer(generate=replica.generate) as source:
        # The worker's mirror of NCEI: the deployments' runs (and the automation's) fetch from the replica.
        env = {**server_env, "FORGE_URL_REWRITES": f"{OISST_ROOT.split('/data/')[0]}/={source.url}/"}
        forge("bakery", "up", "local", env=env)
        forge("deploy", "--data-dir", str(tmp_path / "data"), env=env)
        deployment = httpx.get(f"{api}/deployments/name/recipe/noaa-oisst-append").json()
        assert deployment["global_concurrency_limit"]["limit"] == 1, "one append at a time"
        assert deployment["concurrency_options"]["collision_strategy"] == "ENQUEUE"
        [automation] = [
            a
            for a in httpx.post(f"{api}/automations/filter", json={}).json()
            if a["name"] == "noaa-oisst: new source files"
        ]
        assert automation["trigger"]["expect"] == ["forge.source.objects-landed"]
        assert automation["actions"][0]["type"] == "run-deployment"
        assert automation["actions"][0]["deployment_id"] == deployment["id"]

        store = tmp_path / "data" / "target" / "noaa-oisst.zarr"
        files = replica.directory / "720x1440"
        with process_worker(env, tmp_path / "worker.log"):
            record = run_deployment("recipe/noaa-oisst", {"prune": 3}, env)
            assert record["state"]["type"] == "COMPLETED", record["state"]
            assert xr.open_zarr(store).sizes["time"] == 3
            known = {r["id"] for r in append_runs(api, deployment["id"])}

            # Refused notifications start nothing.
            day4 = FIRST_DAY + pd.Timedelta(days=3)
            assert httpx.post(receiver, json=sqs_delivery(landed_key(day4))).status_code == 401
            bad = httpx.post(receiver, content=b"{not json", headers={"X-Forge-Token": TOKEN})
            assert bad.status_code == 400

            # S3 -> SQS: one new day lands (delivered twice, as SQS may).
            replica.last_day = day4
            auth = {"X-Forge-Token": TOKEN}
            for _ in range(2):
                r = httpx.post(receiver, json=sqs_delivery(landed_key(day4)), headers=auth)
                assert r.status_code == 202 and r.json()["recipes"] == ["noaa-oisst"], r.text
            run = wait_for_new_run(api, deployment["id"], known)
            assert run["state"]["type"] == "COMPLETED", run["state"]
            known.add(run["id"])
            assert xr.open_zarr(store).sizes["time"] == 4
            assert_store_matches(str(store), sorted(files.rglob("*.nc")))

            # Azure Event Grid: the subscription handshake, then a burst of two days from several
            # senders within the window: one run.
            r = httpx.post(receiver, json=VALIDATION, headers={"aeg-event-type": "SubscriptionValidation"})
            assert r.json() == {"validationResponse": VALIDATION[0]["data"]["validationCode"]}
            day5, day6 = FIRST_DAY + pd.Timedelta(days=4), FIRST_DAY + pd.Timedelta(days=5)
            replica.last_day = day6
            for body in (
                event_grid(landed_key(day5)),
                event_grid(landed_key(day6)),
                eventbridge(landed_key(day6)),
            ):
                assert httpx.post(receiver, json=body, headers=auth).status_code == 202
            run = wait_for_new_run(api, deployment["id"], known)
            assert run["state"]["type"] == "COMPLETED", run["state"]
            known.add(run["id"])
            assert xr.open_zarr(store).sizes["time"] == 6
            assert_store_matches(str(store), sorted(files.rglob("*.nc")))
            time.sleep(5)  # nothing else is coming: the duplicates coalesced
            assert {r["id"] for r in append_runs(api, deployment["id"])} == known

    # Both runs were started by the automation, in answer to the receiver's events.
    triggered = known - {record["id"]}
    assert automation_runs(api, automation["id"]) == triggered
    landed = httpx.post(
        f"{api}/events/filter", json={"filter": {"event": {"name": ["forge.source.objects-landed"]}}}
    ).json()["events"]
    assert sorted(e["payload"]["count"] for e in landed) == [1, 3]
    assert all(e["resource"]["prefect.resource.id"] == "forge.recipe.noaa-oisst" for e in landed)
    assert json.dumps(landed).find(TOKEN) == -1
