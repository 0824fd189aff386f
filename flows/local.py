"""What a run on this machine needs around the flow: a Prefect API and a Dask cluster, started side by side.

The server (flows/server.py) is kept between runs; when one has to be launched, the Dask workers start, and
import what their tasks need, while it boots.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from flows.runtime.forkserver import start_worker_forkserver
from flows.server import PrefectServer, kept_cluster, kept_server, prefect_home


def one_root_bundle(directory: Path) -> str:
    """A CA file holding one root certificate (certifi's first), for API clients of a plain-HTTP server.

    Every Prefect API client builds an SSLContext from PREFECT_API_SSL_CERT_FILE, or else from certifi's
    ~150 roots (35 ms), even when the API is plain HTTP and the context is never used; a task run on a
    Dask worker makes two clients (PrefectHQ/prefect#19106). One root takes 1 ms, and trusts nothing
    the full bundle does not.
    """
    import certifi

    pem = Path(certifi.where()).read_text()
    first = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", pem, re.DOTALL)
    if first is None:
        raise RuntimeError(f"no certificate in {certifi.where()}")
    path = directory / "one-root.pem"
    path.write_text(first.group(0))
    return str(path)


@contextlib.contextmanager
def api_session(api_url: str, ca_dir: Path | None = None) -> Iterator[str]:
    """``api_url`` as this process's API (Prefect froze its settings at import) and in PREFECT_API_URL:
    Dask workers started from here on inherit it (and the CA file of the plain-HTTP API's clients,
    :func:`one_root_bundle`).

    ``ca_dir``: where that CA file is kept (default: a folder removed at the end), the same for every
    run that uses the kept workers (their environment must not change between runs).

    Flow runs in this process send no heartbeats: they let a server mark a run whose process died as
    crashed, and Prefect's heartbeat thread sleeps in whole seconds, and every flow run joins it at its
    end (0.5 s on average). A local run that is interrupted ends Crashed by itself; only one that is
    killed stays Running. Flow runs that workers start (deployments) keep their heartbeats: the setting
    is this process's, not the environment's.
    """
    from prefect.settings import PREFECT_API_SSL_CERT_FILE, PREFECT_API_URL, temporary_settings

    scratch = None if ca_dir else Path(tempfile.mkdtemp(prefix="forge-api-"))
    updates = {PREFECT_API_URL: api_url, PREFECT_API_SSL_CERT_FILE: one_root_bundle(ca_dir or scratch)}
    environ = {setting.name: os.environ.get(setting.name) for setting in updates}
    os.environ.update({setting.name: str(value) for setting, value in updates.items()})
    try:
        with temporary_settings(updates={**updates, "flows.heartbeat_frequency": None}):
            try:
                yield api_url
            finally:
                # Send what is queued while the server is still up; otherwise workers retry for minutes.
                from prefect.events.worker import EventsWorker
                from prefect.logging.handlers import APILogWorker

                APILogWorker.drain_all(timeout=10)
                EventsWorker.drain_all(timeout=10)
    finally:
        for name, value in environ.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """The API URL: PREFECT_API_URL if set, otherwise a server that lives as long as this context."""
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    server = PrefectServer().start()
    try:
        server.wait_ready()
        with api_session(server.api_url) as url:
            yield url
    finally:
        server.stop()


def warm_up(dask_address: str | None = None) -> None:
    """What a run with a Dask cluster of its own can start before anything else: the fork server of its
    workers (flows/runtime/forkserver.py), whose imports then overlap this process's. Runs on the kept
    server use kept workers instead (:func:`run_stack`)."""
    from flows.bakery import current_bakery, on_local_cluster

    if os.environ.get("PREFECT_API_URL") and on_local_cluster(current_bakery(), dask_address):
        start_worker_forkserver()


@contextlib.contextmanager
def run_stack(dask_address: str | None = None, *, keep_server: bool = True) -> Iterator:
    """The task runner for a run from this machine, with a Prefect API up.

    The API is PREFECT_API_URL if set. Else it is the server kept between runs (flows/server.py), and on
    the local bakery the workers are kept too, launched now if none match this run; with
    ``keep_server=False``, a server and a local cluster that live as long as this context. A new cluster
    starts its workers while a new server boots, sized by FORGE_DASK_WORKERS as the flow's write plan is;
    a cloud bakery or ``dask_address`` gets its own runner, as the flow would.
    """
    from prefect_dask import DaskTaskRunner

    from flows.bakery import current_bakery, on_local_cluster, task_runner_for
    from flows.runtime.runner import KeptWorkersTaskRunner, local_workers

    bakery = current_bakery()
    local = on_local_cluster(bakery, dask_address)
    keep = keep_server and not os.environ.get("PREFECT_API_URL")
    with contextlib.ExitStack() as stack:
        booting = None
        if not os.environ.get("PREFECT_API_URL"):
            booting = kept_server() if keep else PrefectServer().start()
            if not keep:
                stack.callback(booting.stop)
            # The API's address in the environment before any worker process starts: they inherit it.
            stack.enter_context(api_session(booting.api_url, prefect_home() if keep else None))
        if not local:
            runner = task_runner_for(bakery, dask_address)
        elif keep:
            runner = KeptWorkersTaskRunner(address=kept_cluster(local_workers()).address)
        else:
            from distributed import LocalCluster

            from flows.runtime.runner import local_cluster_kwargs

            cluster = stack.enter_context(LocalCluster(**local_cluster_kwargs()))
            runner = DaskTaskRunner(address=cluster.scheduler_address)
        if booting is not None:
            booting.wait_ready()
        yield runner
