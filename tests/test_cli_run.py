"""`forge run` as the README runs it: its own Prefect server and Dask cluster, the OISST replica as source."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from forge.replicas.oisst import OisstReplica
from forge.testing import assert_store_matches

FORGE = Path(sys.executable).parent / "forge"


def test_forge_run_builds_the_store_from_the_replica(tmp_path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "FORGE_DASK_WORKERS": "1"}
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL")  # the session server's database is not this run's
    env.pop("PREFECT_API_URL", None)
    command = [str(FORGE), "run", "noaa-oisst", "--prune", "3", "--local-replica"]
    command += ["--replica-dir", str(tmp_path / "replica"), "--target-root", str(tmp_path / "target")]
    command += ["--cache-root", str(tmp_path / "cache")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Dask cluster ready" in done.stdout
    # One Prefect server: the flow used the one the command started, not an ephemeral one of its own.
    assert "Starting temporary server" not in done.stdout + done.stderr
    replica = OisstReplica(tmp_path / "replica")
    sources = [replica.path_for(day) for day in pd.date_range("1981-09-01", periods=3, freq="D")]
    assert_store_matches(str(tmp_path / "target" / "noaa-oisst.zarr"), sources)
