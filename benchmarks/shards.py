"""Sharded against unsharded OISST stores: writing 365 days, then reading one day's map and one point's
full series (wall time and storage reads) from each layout.

Run by hand (not a test): ``python benchmarks/shards.py --days 365``. Each layout is built by the local
runner (no Prefect: the store step's work alone) from the same cached replica files:

- ``chunks``: the noaa-oisst recipe's layout, 10 days of whole maps per chunk;
- ``small chunks``: 10 days of 180 x 360 tiles per chunk, one object each;
- ``sharded``: the same small chunks, 120 days of whole maps per shard (``target_shards``).

Reads go through zarr's ``LoggingStore``, which counts the storage calls (``get`` is one object or byte
range read, as a request would be on object storage).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SOURCE = "https://www.ncei.noaa.gov/"
LAYOUTS = {
    "chunks": ({"time": 10}, {}),
    "small chunks": ({"time": 10, "lat": 180, "lon": 360}, {}),
    "sharded": ({"time": 10, "lat": 180, "lon": 360}, {"time": 120}),
}


def build(name: str, days: int, work: Path, replica: str, warm_up: bool) -> tuple[str, float]:
    import dataclasses

    from forge.engine.types import RunSpec
    from forge.recipe.loading import load_recipe
    from forge.run import run_locally

    chunks, shards = LAYOUTS[name]
    recipe = dataclasses.replace(load_recipe("noaa-oisst"), target_chunks=chunks, target_shards=shards)
    root = work / name.replace(" ", "-")
    shutil.rmtree(root, ignore_errors=True)
    run = RunSpec(
        "noaa-oisst", "noaa-oisst", str(root), str(work / "cache"), days, ((SOURCE, f"{replica}/"),)
    )
    if warm_up:  # the cache is filled once, by a first build, so that every timed build reads the same
        run_locally(recipe, run)
        shutil.rmtree(root)
    t0 = time.perf_counter()
    out = run_locally(recipe, run)
    return out["url"], time.perf_counter() - t0


def reads(url: str) -> dict[str, tuple[float, int]]:
    """(seconds, storage gets) for one day's map and one point's full series of ``sst``."""
    import xarray as xr
    from zarr.storage import LocalStore, LoggingStore

    found = {}
    for what, index in (("map", {"time": -1}), ("series", {"lat": 360, "lon": 720})):
        store = LoggingStore(LocalStore(url, read_only=True), log_level="CRITICAL")
        t0 = time.perf_counter()
        ds = xr.open_zarr(store, consolidated=True)
        ds.sst.isel(index).load()
        found[what] = (time.perf_counter() - t0, store.counter["get"])
    return found


def objects(url: str) -> int:
    return sum(1 for p in (Path(url) / "sst").rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "forge-bench-shards")
    args = parser.parse_args()

    from forge.replicas.oisst import OisstReplica
    from forge.replicas.server import SourceServer

    replica = OisstReplica(args.work / "replica")
    for day in pd.date_range("1981-09-01", periods=args.days, freq="D"):
        replica.path_for(day)
    rows = []
    with SourceServer(generate=replica.generate) as server:
        for i, name in enumerate(LAYOUTS):
            url, seconds = build(name, args.days, args.work, server.url, warm_up=i == 0)
            found = reads(url)
            rows.append((name, seconds, objects(url), *found["map"], *found["series"]))
    import icechunk
    import zarr

    print(f"# shards.py --days {args.days}: zarr {zarr.__version__}, icechunk {icechunk.__version__}")
    print(f"# {platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}")
    print(
        f"{'layout':14s} {'write (s)':>9s} {'sst objects':>11s} {'map (s)':>8s} {'gets':>5s} "
        f"{'series (s)':>10s} {'gets':>5s}"
    )
    for name, seconds, n, map_s, map_gets, series_s, series_gets in rows:
        print(
            f"{name:14s} {seconds:9.1f} {n:11d} {map_s:8.2f} {map_gets:5d} {series_s:10.2f} {series_gets:5d}"
        )


if __name__ == "__main__":
    main()
