"""What a run on this machine needs around the flow: a Prefect API and a Dask cluster, started side by side.

The server is Prefect's own (the app and uvicorn command of Prefect's ephemeral ``SubprocessASGIServer``),
launched without importing the server package into this process (about 3 s) and without waiting for it,
so that the Dask workers start, and import what their tasks need, while it boots.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


class PrefectServer:
    """A Prefect API server in a subprocess on loopback (SQLite under PREFECT_HOME, as Prefect's own)."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.process: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> PrefectServer:
        import prefect
        from prefect.settings import get_current_settings

        env = {
            **os.environ,
            **get_current_settings().to_environment_variables(exclude_unset=True),
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
        }
        env.pop("PREFECT_API_URL", None)
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent)),
                *("--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1"),
                *("--port", str(self.port), "--log-level", "error", "--lifespan", "on"),
            ],
            env=env,
        )
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until the API answers its health check."""
        deadline = time.monotonic() + timeout
        with httpx.Client() as client:
            while time.monotonic() < deadline:
                if self.process is None or self.process.poll() is not None:
                    code = None if self.process is None else self.process.returncode
                    raise RuntimeError(f"the Prefect server on port {self.port} exited (code {code})")
                try:
                    if client.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise RuntimeError(f"the Prefect server on port {self.port} did not answer within {timeout:.0f}s")

    def __enter__(self) -> PrefectServer:
        """Started, its URL this process's API (Prefect froze its settings at import) and in
        PREFECT_API_URL: Dask workers started from here on inherit it (and the CA file of the plain-HTTP
        API's clients, :func:`one_root_bundle`).

        Flow runs in this process send no heartbeats: they let a server mark a run whose process died
        as crashed, and this server dies with the process. Prefect's heartbeat thread sleeps in whole
        seconds and every flow run joins it at its end (0.5 s on average). Flow runs that workers start
        (deployments) keep theirs: the setting is this process's, not the environment's.
        """
        from prefect.settings import PREFECT_API_SSL_CERT_FILE, PREFECT_API_URL, temporary_settings

        self.start()
        self._scratch = Path(tempfile.mkdtemp(prefix="forge-api-"))
        updates = {PREFECT_API_URL: self.api_url, PREFECT_API_SSL_CERT_FILE: one_root_bundle(self._scratch)}
        self._environ = {setting.name: os.environ.get(setting.name) for setting in updates}
        os.environ.update({setting.name: str(value) for setting, value in updates.items()})
        self._settings = temporary_settings(updates={**updates, "flows.heartbeat_frequency": None})
        self._settings.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        # Send what is queued while the server is still up; otherwise the workers retry for minutes.
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)
        for name, value in self._environ.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._settings.__exit__(*exc)
        self.stop()
        shutil.rmtree(self._scratch, ignore_errors=True)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """The API URL: PREFECT_API_URL if set, otherwise a server started for this command and stopped after."""
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    with PrefectServer() as server:
        server.wait_ready()
        yield server.api_url


@contextlib.contextmanager
def run_stack(dask_address: str | None = None) -> Iterator:
    """The task runner for a run from this machine, with a Prefect API up.

    On the local bakery the Dask cluster starts (its workers importing the tasks' modules) while the
    server boots, sized by FORGE_DASK_WORKERS as the flow's write plan is; a cloud bakery or
    ``dask_address`` gets its own runner, as the flow would.
    """
    from flows.bakery import current_bakery, on_local_cluster, task_runner_for

    bakery = current_bakery()
    with contextlib.ExitStack() as stack:
        server = None if os.environ.get("PREFECT_API_URL") else stack.enter_context(PrefectServer())
        if not on_local_cluster(bakery, dask_address):
            runner = task_runner_for(bakery, dask_address)
        else:
            from distributed import LocalCluster
            from prefect_dask import DaskTaskRunner

            from flows.runtime.runner import local_cluster_kwargs

            cluster = stack.enter_context(LocalCluster(**local_cluster_kwargs()))
            runner = DaskTaskRunner(address=cluster.scheduler_address)
        if server is not None:
            server.wait_ready()
        yield runner
