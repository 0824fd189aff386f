"""Shared fixtures. Prefect settings are fixed here, before anything imports Prefect."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_HOME = tempfile.mkdtemp(prefix="forge-test-prefect-")
os.environ["PREFECT_HOME"] = _HOME
os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{_HOME}/prefect.db"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] = "forge"
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("FORGE_DASK_WORKERS", "2")

import pytest  # noqa: E402

from forge.engine.types import RunSpec  # noqa: E402
from forge.replicas.oisst import OisstReplica  # noqa: E402
from forge.replicas.server import SourceServer  # noqa: E402


@pytest.fixture
def served(tmp_path: Path):
    """A loopback HTTP server over ``tmp_path / 'src'``; tests put files there and configure faults."""
    root = tmp_path / "src"
    root.mkdir()
    with SourceServer(root=root) as srv:
        yield srv


@pytest.fixture
def replica(tmp_path: Path):
    """NCEI's server on loopback, in the product's layout (a small grid: the layout is what matters);
    ``replica.files`` makes and holds its files."""
    files = OisstReplica(tmp_path / "replica", nlat=36, nlon=72)
    with SourceServer(generate=files.generate) as server:
        server.files = files
        yield server


@pytest.fixture
def run_spec(tmp_path: Path):
    def make(recipe: str = "test", **kw) -> RunSpec:
        return RunSpec(
            recipe, kw.pop("recipe_id", "test"), str(tmp_path / "target"), str(tmp_path / "cache"), **kw
        )

    return make


@pytest.fixture(scope="session")
def prefect_server():
    """One real Prefect server (SQLite in a temp dir) for the session; Dask workers inherit its URL."""
    from flows.local import prefect_api

    with prefect_api() as url:
        yield url
