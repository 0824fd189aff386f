"""A real Prefect server on loopback for the deployment tests, and the commands they run against it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.helpers import BIN, free_port, wait_until_up


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
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "1",  # schedules create their runs at once
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
    wait_until_up(f"http://127.0.0.1:{port}/api/health", server, tmp_path / "server.log", "prefect server")
    yield env
    server.terminate()
    server.wait(timeout=30)
