"""Store-worker memory with inputs much larger than the target chunk.

Run by hand: ``python benchmarks/memory.py``. Writes OISST-sized grids (720 x 1440, two int16-packed
variables) in netCDF4 files of ``--steps`` time steps each, and stores them with ``target_chunks`` of
``--chunk`` steps through the ``recipe`` flow on a Dask cluster of single-threaded worker processes. For
each input size it reports the peak resident memory of a worker above its resident memory just before
the run (Linux's VmHWM, reset through /proc/self/clear_refs after a one-input warm-up run), next to the
size of one target chunk and of one input, per variable. Both store paths are measured: packed values
copied undecoded (the default) and decoded then re-encoded (a recipe with ``process_input``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from usage import read_peak, reset_peak

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
NLAT, NLON, VARIABLES = 720, 1440, ("sst", "anom")


def _mb(kb: int) -> float:
    return kb / 1024


def write_inputs(directory: Path, n_inputs: int, steps: int) -> list[Path]:
    """Smooth fields plus noise, packed as OISST packs them, zlib level 1, one HDF5 chunk per step."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lat = np.linspace(-89.875, 89.875, NLAT, dtype="float32")
    lon = np.linspace(0.125, 359.875, NLON, dtype="float32")
    base = 15 + 12 * np.cos(np.deg2rad(lat))[:, None] + np.zeros(NLON, dtype="float32")
    paths = []
    for i in range(n_inputs):
        time = pd.date_range("2000-01-01", periods=steps, freq="D") + pd.Timedelta(days=i * steps)
        encoding = {"dtype": "int16", "scale_factor": 0.01, "add_offset": 0.0, "_FillValue": -999}
        data = {}
        for k, name in enumerate(VARIABLES):
            values = base[None] + k + rng.normal(0, 0.5, size=(steps, 1, NLON)).astype("float32")
            data[name] = xr.Variable(("time", "lat", "lon"), values.astype("float32"))
            data[name].encoding = {**encoding, "zlib": True, "complevel": 1, "chunksizes": (1, NLAT, NLON)}
        ds = xr.Dataset(data, coords={"time": time, "lat": lat, "lon": lon})
        path = directory / f"input-{i:03d}.nc"
        ds.to_netcdf(path, engine="netcdf4")
        paths.append(path)
    return paths


def write_recipe(directory: Path, paths: list[Path], steps: int, chunk: int, decode: bool) -> Path:
    path = directory / f"recipe-{'decoded' if decode else 'packed'}.py"
    path.write_text(
        textwrap.dedent(f"""
        from forge import ConcatDim, FilePattern, XarrayZarrRecipe

        PATHS = {[str(p) for p in paths]!r}

        def url(time):
            return PATHS[time]

        def process_input(ds, url):
            return ds

        pattern = FilePattern(url, ConcatDim("time", range(len(PATHS)), nitems_per_file={steps}))
        recipe = XarrayZarrRecipe(
            pattern, target_chunks={{"time": {chunk}}}, process_input={"process_input" if decode else None}
        )
    """)
    )
    return path


def measure(recipe_file: Path, out: Path, workers: int) -> tuple[float, float]:
    """(largest store-worker peak above its start, in MB; that worker's RSS at the start, in MB)."""
    from distributed import Client, LocalCluster
    from prefect_dask import DaskTaskRunner

    from flows.recipe import recipe
    from flows.runtime.runner import local_cluster_kwargs

    # The flow's own local cluster: its workers' environment, and its preload of the tasks' modules, so
    # that imports do not count as the run's memory.
    with LocalCluster(**local_cluster_kwargs(workers)) as cluster, Client(cluster) as client:
        flow = recipe.with_options(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
        shutil.rmtree(out, ignore_errors=True)
        kwargs = {
            "recipe": str(recipe_file),
            "target_root": str(out / "target"),
            "cache_root": str(out / "cache"),
        }
        # A run of the first input only: the workers' Prefect machinery (clients, log and event
        # workers) is then up, as on any long-lived cluster, and does not count as the store's memory.
        flow(**kwargs, prune=1)
        shutil.rmtree(out / "target")
        before = client.run(reset_peak)
        flow(**kwargs)
        peaks = client.run(read_peak)
    worker = max(peaks, key=lambda w: peaks[w] - before[w])
    return _mb(peaks[worker] - before[worker]), _mb(before[worker])


def check_store(out: Path, paths: list[Path]) -> None:
    store = xr.open_zarr(next((out / "target").glob("*.zarr")), consolidated=False)
    sources = xr.open_mfdataset(paths, combine="nested", concat_dim="time")
    xr.testing.assert_equal(
        store[list(VARIABLES)].isel(time=[0, -1]), sources[list(VARIABLES)].isel(time=[0, -1])
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", default="120,360", help="time steps per input, comma-separated")
    parser.add_argument("--chunk", type=int, default=12, help="target chunk length along time")
    parser.add_argument("--inputs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "forge-memory")
    args = parser.parse_args()
    from flows.cli import quiet_prefect_env
    from flows.local import prefect_api

    quiet_prefect_env()
    item_mb = NLAT * NLON * 2 / 2**20  # one packed time step of one variable
    rows = []
    with prefect_api():
        for steps in (int(s) for s in args.steps.split(",")):
            inputs_dir = args.work / f"inputs-{steps}"
            paths = write_inputs(inputs_dir, args.inputs, steps)
            for decode in (False, True):
                recipe_file = write_recipe(inputs_dir, paths, steps, args.chunk, decode)
                out = args.work / f"run-{steps}-{decode}"
                growth, start = measure(recipe_file, out, args.workers)
                check_store(out, paths)
                rows.append((steps, "decoded" if decode else "packed", growth, start))
    chunk_mb = args.chunk * item_mb
    print(
        f"\n{args.inputs} inputs per size, {len(VARIABLES)} int16-packed variables on a {NLAT}x{NLON} grid, "
        f"target chunk {args.chunk} steps = {chunk_mb:.1f} MB packed ({2 * chunk_mb:.1f} MB decoded) "
        f"per variable; {args.workers} worker processes"
    )
    print(
        f"{'steps/input':>11s} {'input MB/var':>12s} {'x chunk':>8s} {'path':>8s} "
        f"{'worker start MB':>15s} {'peak above start MB':>19s} {'in chunks/var':>13s}"
    )
    for steps, path, growth, start in rows:
        print(
            f"{steps:11d} {steps * item_mb:12.0f} {steps / args.chunk:8.0f} {path:>8s} "
            f"{start:15.0f} {growth:19.0f} {growth / chunk_mb:13.1f}"
        )


if __name__ == "__main__":
    main()
