"""`forge run` as the README runs it: its own Prefect server and Dask cluster, the OISST replica as source."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from forge.replicas.oisst import OisstReplica
from forge.testing import assert_store_matches, make_dataset, write_inputs
from tests.integration.helpers import SOURCE, write_recipe

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


RECIPE_HEAD = """from forge import ConcatDim, FilePattern, XarrayZarrRecipe

def url(time):
    return f"https://data.example.org/archive/all_{time:04d}.nc"

pattern = FilePattern(url, ConcatDim("time", [0, 1]))
"""
BROKEN_RECIPES = {
    "syntax": (RECIPE_HEAD + "recipe = XarrayZarrRecipe(pattern\n", 7, "syntax error: '(' was never closed"),
    "import": ("import nonexistent_xyz\n" + RECIPE_HEAD, 1, "No module named 'nonexistent_xyz'"),
    "argument": (
        RECIPE_HEAD + "recipe = XarrayZarrRecipe(pattern, target_chunks={'time': 0})\n",
        7,
        "target_chunks['time'] must be a positive integer, not 0",
    ),
    "process_input": (
        RECIPE_HEAD + "def fix(ds, url, extra):\n    return ds\n\n"
        "recipe = XarrayZarrRecipe(pattern, process_input=fix)\n",
        10,
        "process_input 'fix'(ds, url, extra) must take (ds, url) or (ds)",
    ),
}


@pytest.mark.parametrize("case", BROKEN_RECIPES)
def test_a_recipe_that_does_not_load_fails_at_once_naming_file_and_line(tmp_path, case):
    text, line, cause = BROKEN_RECIPES[case]
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "recipe.py").write_text(text)
    t0 = time.perf_counter()
    done = subprocess.run([str(FORGE), "run", str(tmp_path / "broken")], capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and last.startswith(f"forge: error: {tmp_path}/broken/recipe.py:{line}: "), (
        last
    )
    assert cause in last
    assert "Prefect API" not in done.stdout and elapsed < 15  # no server, no cluster: about a second


def test_a_failed_run_ends_with_its_cause_and_a_non_zero_status(served, tmp_path, prefect_server):
    write_inputs(make_dataset(2), Path(served.root), 1)
    recipe_dir = write_recipe(tmp_path, 3, chunk=2)  # the server has two of the three files
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "FORGE_DASK_WORKERS": "1"}
    command = [str(FORGE), "run", str(recipe_dir), "--url-rewrite", f"{SOURCE}={served.url}"]
    command += ["--target-root", str(tmp_path / "target"), "--cache-root", str(tmp_path / "cache")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    cause = f"cache stage failed (cache-0002): {SOURCE}/all_0002.nc (from {served.url}/all_0002.nc): HTTP 404"
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(f"forge: error: {cause}"), done.stderr[-2000:]
    assert "Traceback" not in done.stdout + done.stderr  # an expected failure: its message says it all
    flow_run_id = re.search(r"/runs/flow-run/([0-9a-f-]{36})", done.stdout + done.stderr).group(1)
    state = httpx.get(f"{prefect_server}/flow_runs/{flow_run_id}").json()["state"]
    assert state["type"] == "FAILED" and state["message"].startswith(cause)
