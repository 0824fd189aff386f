"""The recipe flow on a real Prefect server and a real Dask local cluster, sources on loopback HTTP."""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import xarray as xr
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

from flows.recipe import recipe as recipe_flow
from forge.recipe.loading import load_recipe
from forge.run import run_locally
from forge.testing import (
    assert_no_secret,
    assert_store_matches,
    make_dataset,
    open_store,
    secret_forms,
    write_inputs,
)
from tasks.slots import host_limit_name
from tests.integration.helpers import (
    HEARTBEAT,
    SOURCE,
    artifacts,
    flow_run,
    flow_run_events,
    local_run,
    logs,
    run_flow,
    task_runs,
    write_recipe,
)

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_straddling_chunks_in_parallel_match_the_local_runner(served, tmp_path, prefect_server):
    ds = make_dataset(14, packed=True)
    paths = write_inputs(ds, Path(served.root), 2)  # 2-step files, chunk 3: chunks straddle inputs
    recipe_dir = write_recipe(
        tmp_path, len(paths), chunk=3, recipe_kwargs="max_write_batches=3, cache_batch_size=2"
    )
    state = run_flow(recipe_dir, tmp_path, served)
    assert state.is_completed(), state.message
    summary = state.result()
    assert_store_matches(summary["url"], paths)

    # the reference: the plain local runner over the same recipe gives the identical store
    run = local_run(recipe_dir, tmp_path, served, "ref")
    reference = run_locally(load_recipe(run.recipe), run)
    xr.testing.assert_identical(open_store(summary["url"]), open_store(reference["url"]))

    runs = task_runs(state.state_details.flow_run_id)
    assert all(tr.state.is_completed() for tr in runs)
    names = sorted(tr.name for tr in runs)
    assert [n for n in names if n.startswith("store-")] == ["store-0000", "store-0001", "store-0002"]
    assert len([n for n in names if n.startswith("cache-")]) == 4  # 7 inputs, limit 4 per host, batches of 2
    assert {"prepare-target", "finalize-target", "publish-catalog"} <= set(names)
    assert len(runs) == 4 + 1 + 3 + 1 + 1  # grows with batches, not with inputs or chunks
    assert flow_run(state.state_details.flow_run_id).state.is_completed()
    # On the command's own server, no heartbeats (see PrefectServer); deployments' runs keep them.
    seen = flow_run_events(
        prefect_server, state.state_details.flow_run_id, HEARTBEAT, "prefect.flow-run.Completed"
    )
    assert seen == {HEARTBEAT: 0, "prefect.flow-run.Completed": 1}


def test_rerun_is_idempotent_and_downloads_nothing(served, tmp_path):
    ds = make_dataset(6)
    paths = write_inputs(ds, Path(served.root), 2)
    recipe_dir = write_recipe(tmp_path, len(paths), chunk=4)
    first = run_flow(recipe_dir, tmp_path, served).result()
    store = Path(first["url"])
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}
    seen = sum(served.requests.values())
    second = run_flow(recipe_dir, tmp_path, served)
    assert second.is_completed()
    assert sum(served.requests.values()) == seen
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()} == before
    assert_store_matches(first["url"], paths)


def test_planted_secrets_stay_with_their_source(tmp_path, monkeypatch, capfd):
    """Basic auth, a secret header and a query token, at a source that redirects to a signed URL on a
    second origin (re-encoding the query), which fails twice per file before it serves: no form of any
    secret reaches the second origin, the output, the logs, the Prefect database, the store or the cache."""
    from urllib.parse import parse_qsl, quote

    from forge.replicas.server import SourceServer

    token, key, password = "Zq9+Tok/en=TOPSECRET", "key-TOPSECRET-55", "pw-TOPSECRET-1"
    forms = secret_forms(token, key, password, basic_auth=("alice", password))
    paths = write_inputs(make_dataset(4), tmp_path / "src", 2)
    for name, value in (("DEMO_PASSWORD", password), ("DEMO_KEY", key), ("DEMO_TOKEN", token)):
        monkeypatch.setenv(name, value)
    recipe_dir = write_recipe(
        tmp_path,
        len(paths),
        chunk=2,
        pattern_kwargs='fsspec_open_kwargs={"auth": ("alice", Secret("DEMO_PASSWORD")), '
        '"headers": {"X-Api-Key": Secret("DEMO_KEY")}}, query_string_secrets={"token": "DEMO_TOKEN"}',
    )
    faults = {f"/{p.name}": ["503", "503"] for p in paths}
    with SourceServer(root=tmp_path / "src", faults=faults) as other:

        def redirect(path: str, query: str) -> str:
            echoed = "&".join(f"{k}={quote(v, safe='/')}" for k, v in parse_qsl(query))
            return f"{other.url}{path}?{echoed}&sig=abc"

        with SourceServer(
            root=tmp_path / "src",
            basic_auth=("alice", password),
            required_query={"token": token},
            redirect=redirect,
        ) as origin:
            state = run_flow(recipe_dir, tmp_path, origin)
    assert state.is_completed(), state.message
    assert_store_matches(state.result()["url"], paths)
    assert other.statuses[503] == 4 and other.statuses[200] == 2  # the retries happened, and were logged
    text = logs(state.state_details.flow_run_id)
    assert "HTTP 503 (redirected to" in text
    for _, _, query, headers in other.seen:
        assert query == "sig=abc" and not {"authorization", "x-api-key"} & {h.lower() for h in headers}
    assert_no_secret(text, forms, "in the run's logs")
    out = capfd.readouterr()
    assert_no_secret(out.out + out.err, forms, "in the output")
    database = Path(os.environ["PREFECT_API_DATABASE_CONNECTION_URL"].split("///", 1)[1])
    for path in database.parent.glob(database.name + "*"):  # the database and its write-ahead log
        assert_no_secret(path.read_bytes(), forms, f"in {path}")
    for root in (tmp_path / "target", tmp_path / "cache"):
        for path in root.rglob("*"):
            assert_no_secret(str(path), forms, "in a path")
            if path.is_file():
                assert_no_secret(path.read_bytes(), forms, f"in {path}")


def test_wrong_password_fails_without_retry_or_leak(tmp_path, monkeypatch):
    from forge.replicas.server import SourceServer

    (tmp_path / "src").mkdir()
    paths = write_inputs(make_dataset(2), tmp_path / "src", 2)
    monkeypatch.setenv("DEMO_PASSWORD", "pw-WRONG-SECRET")
    recipe_dir = write_recipe(
        tmp_path,
        len(paths),
        chunk=2,
        pattern_kwargs='fsspec_open_kwargs={"auth": ("alice", Secret("DEMO_PASSWORD"))}',
    )
    with SourceServer(root=tmp_path / "src", basic_auth=("alice", "right")) as srv:
        state = run_flow(recipe_dir, tmp_path, srv)
        assert srv.statuses[401] == 1  # neither the transport nor Prefect retried a 401
    assert state.is_failed()
    text = logs(state.state_details.flow_run_id)
    assert "HTTP 401" in text and "all_0000.nc" in text and "WRONG-SECRET" not in text


@pytest.mark.parametrize("limit", [1, 2])
def test_per_host_limit(served, tmp_path, limit):
    # 2 batches of 4 slow requests on 2 workers: each batch holds its slot for about 4 s, so they overlap
    # whenever the limit lets them, even when one worker starts its first task a few seconds late (a cold
    # Prefect server at the start of the session)
    paths = write_inputs(make_dataset(8), Path(served.root), 1)
    served.delay = 1.0
    recipe_dir = write_recipe(
        tmp_path, len(paths), chunk=4, recipe_kwargs=f"max_concurrency_per_host={limit}, cache_batch_size=4"
    )
    held = []  # the limit's occupied slots, read from the Prefect API while the flow runs
    stop = threading.Event()

    def watch() -> None:
        name = host_limit_name(urlsplit(served.url).netloc)
        with get_client(sync_client=True) as client:
            while not stop.wait(0.2):
                with contextlib.suppress(ObjectNotFound):
                    held.append(client.read_global_concurrency_limit_by_name(name).active_slots)

    # in this thread's context: Prefect froze its settings at import, the test server's URL is in a contextvar
    watcher = threading.Thread(target=contextvars.copy_context().run, args=(watch,))
    watcher.start()
    try:
        state = run_flow(recipe_dir, tmp_path, served)
    finally:
        stop.set()
        watcher.join()
    assert state.is_completed(), state.message
    assert served.max_active == limit  # two Dask workers would reach 2 without the limit
    assert max(held) == limit and held[-1] == 0  # the run held its slots, and gave them back
    text = logs(state.state_details.flow_run_id)
    assert "8 inputs to cache in 2 batches from 1 source host(s)" in text  # planned by the flow itself
    assert f"taking {limit} download slots of source-host:" in text


def test_transient_failures_are_retried_to_success(served, tmp_path):
    paths = write_inputs(make_dataset(6), Path(served.root), 2)
    served.faults.update(
        {"/all_0000.nc": ["503", "reset"], "/all_0001.nc": ["truncate", "429"], "/all_0002.nc": ["500"]}
    )
    state = run_flow(write_recipe(tmp_path, len(paths), chunk=3), tmp_path, served)
    assert state.is_completed(), state.message
    assert_store_matches(state.result()["url"], paths)
    assert served.requests["/all_0000.nc"] == 3 and served.requests["/all_0001.nc"] == 3


def test_a_missing_file_fails_the_run_naming_it_with_every_task_run_ended(served, tmp_path):
    paths = write_inputs(make_dataset(4), Path(served.root), 2)
    recipe_dir = write_recipe(tmp_path, len(paths) + 1, chunk=2)  # one more input than the server has
    state = run_flow(recipe_dir, tmp_path, served)
    assert state.is_failed()
    assert served.requests["/all_0002.nc"] == 1  # a 404 is not retried, at any layer
    cause = f"{SOURCE}/all_0002.nc (from {served.url}/all_0002.nc): HTTP 404"
    assert state.message.startswith(f"cache stage failed (cache-0002): {cause}"), state.message
    flow_run_id = state.state_details.flow_run_id
    record = flow_run(flow_run_id)
    assert record.name == "demo · build" and record.state.message == state.message  # what the UI shows
    runs = {tr.name: tr.state for tr in task_runs(flow_run_id)}
    assert all(s.is_final() for s in runs.values()), runs  # nothing left Pending
    assert runs["prepare-target"].is_cancelled() and cause in runs["prepare-target"].message
    assert cause in artifacts(flow_run_id)["recipe-demo-failure"]
    assert not (tmp_path / "target" / "demo.zarr").exists()


def test_a_mistyped_mirror_fails_within_one_retry_budget_each_attempt_logged(tmp_path):
    """Connection refused: the download's own retries (logged to the run), and no Prefect retries on top."""
    from tests.integration.helpers import free_port

    recipe_dir = write_recipe(tmp_path, 2, chunk=2)
    t0 = time.perf_counter()
    state = recipe_flow(
        recipe=str(recipe_dir),
        target_root=str(tmp_path / "target"),
        cache_root=str(tmp_path / "cache"),
        url_rewrites={SOURCE: f"http://127.0.0.1:{free_port()}"},
        return_state=True,
    )
    assert state.is_failed() and time.perf_counter() - t0 < 90  # 4 min 19 s when retries were stacked
    assert "gave up after 6 attempts; last error could not connect" in state.message, state.message
    text = logs(state.state_details.flow_run_id)
    assert all(f"attempt {n} of 6" in text for n in range(2, 7)), text
    cache_runs = [tr for tr in task_runs(state.state_details.flow_run_id) if tr.name.startswith("cache-")]
    assert cache_runs and all(tr.run_count == 1 for tr in cache_runs)


def test_schema_mismatch_fails_before_writing_and_keeps_the_old_store(served, tmp_path):
    ds = make_dataset(6)
    paths = write_inputs(ds, Path(served.root), 2)
    recipe_dir = write_recipe(tmp_path, len(paths), chunk=2)
    good = run_flow(recipe_dir, tmp_path, served).result()
    before = open_store(good["url"])
    # the source changes: one file loses a variable; the existing store must survive untouched
    bad = make_dataset(6).isel(time=slice(4, 6)).drop_vars("pr")
    bad.to_netcdf(paths[2])
    (tmp_path / "cache").rename(tmp_path / "old-cache")
    state = run_flow(recipe_dir, tmp_path, served)
    assert state.is_failed()
    assert "all_0002.nc: variables differ" in logs(state.state_details.flow_run_id)
    xr.testing.assert_identical(open_store(good["url"]), before)


def test_a_password_only_in_a_secret_block_builds_and_appends(tmp_path, monkeypatch):
    """Every stage and probe looks secrets up the same way (environment, then Prefect Secret block):
    the append's look at the source too, which once asked the environment only."""
    from prefect.blocks.system import Secret as SecretBlock

    from forge.replicas.server import SourceServer

    password = "pw-only-in-a-block"
    monkeypatch.delenv("DEMO_BLOCK_PASSWORD", raising=False)
    SecretBlock(value=password).save("demo-block-password", overwrite=True)
    paths = write_inputs(make_dataset(6), tmp_path / "src", 1)
    auth = 'fsspec_open_kwargs={"auth": ("alice", Secret("DEMO_BLOCK_PASSWORD"))}'
    with SourceServer(root=tmp_path / "src", basic_auth=("alice", password)) as source:
        recipe_dir = write_recipe(tmp_path, 4, chunk=2, pattern_kwargs=auth)
        built = run_flow(recipe_dir, tmp_path, source)
        assert built.is_completed(), built.message
        write_recipe(tmp_path, 6, chunk=2, pattern_kwargs=auth)  # two more days in the pattern
        fetched_before = {p for p, n in source.requests.items() if n}
        appended = run_flow(recipe_dir, tmp_path, source, append=True)
    assert appended.is_completed(), appended.message
    assert appended.result()["appended"] == 2
    assert {p for p in source.requests if p not in fetched_before} == {"/all_0004.nc", "/all_0005.nc"}
    assert_store_matches(appended.result()["url"], paths)


class _Hooks(ThreadingHTTPServer):
    """A webhook receiver on loopback: the bodies POSTed to it."""

    def __init__(self):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                received.append(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_a_dataset_with_no_update_within_stale_after_notifies_through_its_block(
    served, tmp_path, prefect_server
):
    """A run that publishes says so (a forge.recipe.updated event about the recipe); the automation
    `forge deploy` installs for ``update: {stale_after, notify}`` notifies through the named block when
    no such event comes within the window."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    from flows.alerts import install_staleness_automations

    hooks = _Hooks()
    try:
        CustomWebhookNotificationBlock(
            name="forge-test",
            url=f"http://127.0.0.1:{hooks.server_address[1]}/alerts",
            json_data={"subject": "{{subject}}", "body": "{{body}}"},
            allow_private_urls=True,
        ).save("forge-alerts", overwrite=True)
        write_inputs(make_dataset(2), Path(served.root), 1)
        state = run_flow(write_recipe(tmp_path, 2, chunk=2, name="stale-demo"), tmp_path, served)
        assert state.is_completed(), state.message
        body = {
            "filter": {
                "event": {"name": ["forge.recipe.updated"]},
                "resource": {"id": ["forge.recipe.stale-demo"]},
            }
        }
        deadline = time.time() + 60
        while not (events := httpx.post(f"{prefect_server}/events/filter", json=body).json()["events"]):
            assert time.time() < deadline, "the run announced no update"
            time.sleep(1)
        assert events[0]["payload"]["url"].endswith("stale-demo.zarr")

        meta = {
            "title": "Stale demo",
            "update": {"stale_after": "10s", "notify": "custom-webhook/forge-alerts"},
        }
        missing = {"title": "No block", "update": {"stale_after": "5s", "notify": "custom-webhook/not-there"}}
        assert install_staleness_automations({"stale-demo": meta, "no-block": missing}) == [
            "forge: stale stale-demo"
        ]
        deadline = time.time() + 120
        while not hooks.received:
            assert time.time() < deadline, "no notification: the staleness automation never fired"
            time.sleep(1)
        assert (
            "stale-demo is stale" in hooks.received[0]
            and "no update published in the last 10s" in hooks.received[0]
        )
    finally:
        with get_client(sync_client=True) as client:
            for automation in client.read_automations():
                if automation.name.startswith("forge: stale"):
                    client.delete_automation(automation.id)
        hooks.shutdown()


def test_forge_run_rebuild_catches_up_with_an_append_published_while_it_ran(tmp_path):
    """`forge run --rebuild` (the flow's ``rebuild``) on an Icechunk target, stopped at its last download
    while an append publishes four more days: the flow catches up with them and publishes once."""
    from forge.publish import icechunk as ic
    from forge.replicas.server import SourceServer
    from forge.testing import HeldFile

    later = write_inputs(make_dataset(14), tmp_path / "later", 1)
    src = tmp_path / "src"
    src.mkdir()
    for path in later[:10]:
        (src / path.name).write_bytes(path.read_bytes())
    held = HeldFile(src, "/all_0009.nc")
    with SourceServer(generate=held) as source:
        recipe_dir = write_recipe(tmp_path, 10, chunk=3)
        built = run_flow(recipe_dir, tmp_path, source, target_format="icechunk")
        assert built.is_completed(), built.message
        url = built.result()["url"]

        held.hold()
        ran: dict = {}
        rebuild = threading.Thread(
            target=lambda: ran.update(
                state=run_flow(
                    recipe_dir, tmp_path, source, "cache-rebuild", target_format="icechunk", rebuild=True
                )
            ),
        )
        rebuild.start()
        assert held.reached.wait(180), "the rebuild never reached its last download"
        for path in later[10:]:
            (src / path.name).write_bytes(path.read_bytes())
        write_recipe(tmp_path, 14, chunk=3)  # the calendar moved on
        run = local_run(recipe_dir, tmp_path, source, "target", target_format="icechunk")
        assert run_locally(load_recipe(run.recipe, fresh=True), run, append=True)["appended"] == 4
        held.release()
        rebuild.join(300)
    state = ran["state"]
    assert state.is_completed(), state.message
    assert_store_matches(url, later)
    newest = ic.history(url)[0]
    assert "caught up" in newest.message and newest.metadata["forge:concat_inputs"] == 14
    assert "catches up" in logs(state.state_details.flow_run_id)
