"""`forge run` when things go wrong: recipes that do not load, runs that fail (tests/test_server.py runs it
as the README does)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import xarray as xr

from flows.cli import catalog_hint
from forge.testing import make_dataset, write_inputs
from tests.integration.helpers import SOURCE, write_recipe

FORGE = Path(sys.executable).parent / "forge"


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
        "target_chunks['time'] must be a positive integer or -1 (whole), not 0",
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


def _months_since_standard(path: Path) -> None:
    xr.Dataset(
        {"tas": ("time", [1.0])}, coords={"time": ("time", [3], {"units": "months since 2000-01-01"})}
    ).to_netcdf(path)


FAILED_RUNS = {  # how the second input is spoiled, the recipe's arguments, and the cause expected
    "missing": (
        lambda path: path.unlink(),
        "",
        "cache stage failed (cache-0001): {source}/all_0001.nc (from {url}/all_0001.nc): HTTP 404",
    ),
    "corrupt": (
        lambda path: path.write_bytes(b"<html><body>Service moved</body></html>"),
        "",
        "cache stage failed (cache-0001): {source}/all_0001.nc (from {url}/all_0001.nc): not a netcdf4 file",
    ),
    "months-since": (
        _months_since_standard,
        "",
        "{source}/all_0001.nc: variable 'time' has time units 'months since 2000-01-01' in the 'standard' "
        "calendar, which cannot be decoded",
    ),
    "process-input-bug": (
        lambda path: None,
        "process_input=fix",
        "process_input on {source}/all_0000.nc: the recipe's fix at recipe.py:8 raised KeyError",
    ),
}


@pytest.mark.parametrize("case", FAILED_RUNS)
def test_a_failed_run_ends_with_its_cause_and_a_non_zero_status(served, tmp_path, prefect_server, case):
    spoil, recipe_kwargs, expected = FAILED_RUNS[case]
    paths = write_inputs(make_dataset(2), Path(served.root), 1)
    spoil(paths[1])
    code = """
        def fix(ds, url):
            return ds.drop_vars(ds["lat_bnds"].name)
    """
    recipe_dir = write_recipe(tmp_path, 2, chunk=2, recipe_kwargs=recipe_kwargs, code=code)
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "FORGE_DASK_WORKERS": "1"}
    command = [str(FORGE), "run", str(recipe_dir), "--url-rewrite", f"{SOURCE}={served.url}"]
    command += ["--target-root", str(tmp_path / "target"), "--cache-root", str(tmp_path / "cache")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    cause = expected.format(source=SOURCE, url=served.url)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1 and last.startswith("forge: error: ") and cause in last, done.stderr[-2000:]
    assert "Traceback" not in done.stdout + done.stderr  # an expected failure: its message says it all
    flow_run_id = re.search(r"/runs/flow-run/([0-9a-f-]{36})", done.stdout + done.stderr).group(1)
    state = httpx.get(f"{prefect_server}/flow_runs/{flow_run_id}").json()["state"]
    assert state["type"] == "FAILED" and cause in state["message"]  # what the Prefect UI shows
    body = {"flow_runs": {"id": {"any_": [flow_run_id]}}}
    runs = httpx.post(f"{prefect_server}/task_runs/filter", json=body).json()
    assert all(r["run_count"] == 1 for r in runs if r["name"].startswith("cache-"))  # none retried


def test_the_catalog_hint_keeps_a_urls_scheme():
    opener, page = catalog_hint("s3://bucket/target/catalog.json", "sst").splitlines()
    assert opener.endswith("forge.open_dataset('sst', catalog='s3://bucket/target'))")
    assert page.startswith("page: s3://bucket/target/index.html")
    assert (
        catalog_hint("/data/target/catalog.json", "sst").splitlines()[0].endswith("catalog='/data/target'))")
    )
