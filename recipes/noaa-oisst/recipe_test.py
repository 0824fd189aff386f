"""The OISST recipe, pruned, through the CLI against the local replica: the store equals the source files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from forge.recipe.loading import load_recipe
from forge.replicas.oisst import OISST_ROOT, oisst_url
from forge.testing import assert_store_matches, forge_run_on_replica


def test_pattern_uses_the_real_ncei_layout():
    recipe = load_recipe("noaa-oisst")
    first = next(iter(recipe.pattern.items()))[1]
    assert first == oisst_url(pd.Timestamp("1981-09-01"))
    assert first == OISST_ROOT + "198109/oisst-avhrr-v02r01.19810901.nc"
    assert len(recipe.pattern) > 15_000  # daily since 1981


def test_cli_runs_the_pruned_recipe_against_the_replica(tmp_path: Path, prefect_server):
    replica = tmp_path / "replica"  # forge_run_on_replica's
    result = forge_run_on_replica("noaa-oisst", tmp_path, 3, {"PREFECT_API_URL": prefect_server})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    url = str(tmp_path / "target" / "noaa-oisst.zarr")
    assert f"store: {url}" in result.stdout and "<xarray.Dataset>" in result.stdout
    # The flow published the store in the target root's STAC catalog; `forge catalog` lists it.
    assert f"catalog: {tmp_path / 'target' / 'catalog.json'}" in result.stdout
    listed = subprocess.run(
        [sys.executable, "-m", "flows.cli", "catalog", "--target-root", str(tmp_path / "target")],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    lines = listed.stdout.splitlines()
    assert lines[:2] == [
        "noaa-oisst  NOAA Optimum Interpolation SST v2.1 (AVHRR), daily",
        f"  1981-09-01 to 1981-09-03; zarr: {url}",
    ], listed.stdout + listed.stderr
    # on its daily schedule: updated just now
    assert len(lines) == 3 and lines[2].startswith("  last update ") and "on schedule" in lines[2], lines
    sources = sorted((replica / "720x1440").rglob("*.nc"))
    assert len(sources) == 3
    assert_store_matches(url, sources)
    # replica files are the product's schema: packed int16 with zlib
    import xarray as xr

    src = xr.open_dataset(sources[0])
    assert src.sst.encoding["dtype"] == "int16" and src.sst.encoding["zlib"]
    assert dict(src.sizes) == {"time": 1, "zlev": 1, "lat": 720, "lon": 1440}
    # The store opens like pangeo-forge's: each dimension coordinate in one chunk, and time as the source
    # encodes it (float32 days since 1978-01-01 12:00:00).
    import zarr

    group = zarr.open_group(url, mode="r")
    for name in ("time", "zlev", "lat", "lon"):
        assert group[name].chunks == group[name].shape, name
    assert group["time"].dtype == "float32"
    assert group["time"].attrs["units"] == src.time.encoding["units"] == "days since 1978-01-01 12:00:00"


def test_cli_lists_recipes():
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", "list"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    assert out.returncode == 0 and "noaa-oisst" in out.stdout and "Optimum Interpolation" in out.stdout
