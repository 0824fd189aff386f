"""Throughput on OISST-format files: the floor, plain xarray + Dask, and this project, side by side.

Run by hand (not a test): ``python benchmarks/throughput.py --days 60``. Each method runs in its own
subprocess so its peak memory (the largest RSS of the process or any of its children) is its own.

(a) floor: every input opened once and decoded with netCDF4 (packed values, no CF decoding), encoded
    with Zarr's default codec (zstd level 0) or lz4, one file per chunk written, over a process pool,
    no orchestration at all;
(b) xarray + Dask: ``open_mfdataset(parallel=True)`` then ``to_zarr`` with the same chunks on a
    distributed LocalCluster of single-threaded processes;
(c) forge: the ``recipe`` flow (Prefect server, Dask task runner): the store step alone and the whole
    recipe, caching from the local replica over HTTP included; ``forge_icechunk`` the same into an
    Icechunk repository, then an append of one more day (its commit timed);
(d) cache: the cache stage's core work alone (fetch and summarize every input, one process, no
    orchestration), for its CPU seconds: with the floor's, the least the whole recipe could take here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from usage import cpu_seconds

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CHUNK = 10
VARIABLES = ("sst", "anom", "err", "ice")
SOURCE = "https://www.ncei.noaa.gov/"  # the recipe's source, rewritten to the local replica


def _files(replica_dir: Path, days: int) -> list[Path]:
    from forge.replicas.oisst import OisstReplica

    replica = OisstReplica(replica_dir)
    return [replica.path_for(d) for d in pd.date_range("1981-09-01", periods=days, freq="D")]


def _numcodecs(codec: str):
    """The same codec as ``_zarr_codecs(codec)``, for the floor's raw encoding."""
    from numcodecs import Blosc, Zstd

    return Zstd(level=0) if codec == "zstd" else Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE)


def _zarr_codecs(codec: str) -> tuple | None:
    """Zarr's default (zstd level 0) or blosc-lz4 with byte shuffle, the fastest sensible alternative."""
    from zarr.codecs import BloscCodec

    return None if codec == "zstd" else (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),)


def _floor_chunk(args: tuple[list[str], str, str]) -> int:
    import netCDF4
    import numpy as np

    paths, out, codec_name = args
    codec = _numcodecs(codec_name)
    parts: dict[str, list] = {var: [] for var in VARIABLES}
    for p in paths:  # each input opened once, all its variables read
        with netCDF4.Dataset(p) as nc:
            for var in VARIABLES:
                v = nc.variables[var]
                v.set_auto_maskandscale(False)
                parts[var].append(v[:])
    written = 0
    for var in VARIABLES:
        block = np.concatenate(parts[var])
        Path(out, var).mkdir(parents=True, exist_ok=True)
        Path(out, var, Path(paths[0]).stem).write_bytes(codec.encode(np.ascontiguousarray(block)))
        written += block.nbytes
    return written


def floor(files: list[Path], out: Path, workers: int, codec: str) -> dict:
    from concurrent.futures import ProcessPoolExecutor

    groups = [[str(p) for p in files[i : i + CHUNK]] for i in range(0, len(files), CHUNK)]
    c0, t0 = cpu_seconds(), time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        nbytes = sum(pool.map(_floor_chunk, [(g, str(out), codec) for g in groups]))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "cpu": cpu_seconds() - c0, "bytes": nbytes, "stored_mb": _size_mb(out)}


def cache_core(files: list[Path], out: Path, replica_dir: Path) -> dict:
    """The cache stage's core work alone, in one process, no orchestration: every batch fetched from the
    local replica (served by a thread of this process, so its CPU counts) and every input summarized."""
    from flows.cli import local_replica
    from forge.engine.caching import fetch_missing, plan_cache, summarize_batch
    from forge.engine.stages import recipe_for
    from forge.engine.types import RunSpec
    from forge.recipe.loading import find_recipe

    with local_replica(str(replica_dir)) as url:
        recipe_id = find_recipe("noaa-oisst").recipe_id
        rewrites = ((SOURCE, url + "/"),)
        run = RunSpec("noaa-oisst", recipe_id, str(out), str(out / "cache"), len(files), rewrites)
        recipe = recipe_for(run)
        batches = plan_cache(recipe, run)
        c0, t0 = cpu_seconds(), time.perf_counter()
        for batch in batches:
            fetch_missing(recipe, run, batch)
        fetch_cpu = cpu_seconds() - c0
        for batch in batches:
            summarize_batch(recipe, run, batch)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "cpu": cpu_seconds() - c0, "fetch_cpu": fetch_cpu, "stored_mb": 0.0}


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def xarray_dask(files: list[Path], out: Path, workers: int, codec: str) -> dict:
    import xarray as xr
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster),
    ):
        t0 = time.perf_counter()
        ds = xr.open_mfdataset(
            files,
            engine="h5netcdf",
            parallel=True,
            combine="by_coords",
            data_vars="minimal",
            coords="minimal",
            compat="override",
        )
        compressors = _zarr_codecs(codec)
        # Passing an encoding replaces the source's: keep its packing (int16, scale/offset), as the others do.
        packing = ("dtype", "scale_factor", "add_offset", "_FillValue")
        encoding = (
            {
                v: {
                    **{k: ds[v].encoding[k] for k in packing if k in ds[v].encoding},
                    "compressors": compressors,
                }
                for v in VARIABLES
            }
            if compressors
            else None
        )
        ds.chunk({"time": CHUNK}).to_zarr(out, mode="w", consolidated=True, encoding=encoding)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "stored_mb": _size_mb(out)}


def forge_flow(
    files: list[Path],
    out: Path,
    workers: int,
    replica_dir: Path,
    codec: str,
    write_batches: int | None,
    target_format: str = "zarr",
) -> dict:
    os.environ["FORGE_DASK_WORKERS"] = str(workers)
    from flows.cli import local_replica, quiet_prefect_env
    from flows.local import run_stack

    quiet_prefect_env()
    with local_replica(str(replica_dir)) as url, contextlib.ExitStack() as stack:
        t_start = time.perf_counter()  # as `forge run` does: server and cluster side by side
        runner = stack.enter_context(run_stack(keep_server=False))
        t_api = time.perf_counter() - t_start
        from flows.recipe import recipe

        # The committed recipe, with the codec under test.
        recipe_file = out / "oisst_with_codec.py"
        recipe_file.parent.mkdir(parents=True, exist_ok=True)
        recipe_file.write_text(
            "import dataclasses, importlib.util, sys\n"
            f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            "from throughput import _zarr_codecs\n"
            "from forge.recipe.loading import load_recipe\n"
            f"recipe = dataclasses.replace(load_recipe('noaa-oisst'), compressors=_zarr_codecs({codec!r}))\n"
        )
        if write_batches:
            recipe_file.write_text(
                recipe_file.read_text()
                + f"recipe = dataclasses.replace(recipe, max_write_batches={write_batches})\n"
            )
        flow = recipe.with_options(task_runner=runner)
        options = {
            "recipe": str(recipe_file),
            "target_root": str(out),
            "cache_root": str(out / "cache"),
            "url_rewrites": {SOURCE: url + "/"},
            "target_format": target_format,
        }
        t0 = time.perf_counter()
        summary = flow(**options, prune=len(files))
        seconds = time.perf_counter() - t0
        result = {
            "seconds": seconds,
            "server_start": t_api,
            "store_seconds": summary["timings"]["store"],
            "cache_prepare_seconds": summary["timings"]["cache + prepare"],
            "finalize_seconds": summary["timings"].get("finalize", 0.0),
            "catalog_seconds": summary["timings"].get("catalog", 0.0),
            "stored_mb": summary["stored_bytes"] / 1e6,
        }
        if target_format == "icechunk":  # and a daily update: one more day, one commit
            t0 = time.perf_counter()
            appended = flow(**options, prune=len(files) + 1, append=True)
            result["append_seconds"] = time.perf_counter() - t0
            result["append_finalize_seconds"] = appended["timings"]["finalize"]
    return result


def child(
    method: str, days: int, workers: int, work: Path, replica_dir: Path, codec: str, write_batches: int | None
) -> None:
    files = _files(replica_dir, days)
    out = work / method
    shutil.rmtree(out, ignore_errors=True)
    if method == "floor":
        result = floor(files, out, workers, codec)
    elif method == "xarray_dask":
        result = xarray_dask(files, out / "store.zarr", workers, codec)
    elif method == "cache":
        result = cache_core(files, out, replica_dir)
    else:
        target_format = "icechunk" if method == "forge_icechunk" else "zarr"
        result = forge_flow(files, out, workers, replica_dir, codec, write_batches, target_format)
    peak = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    )
    result["peak_rss_mb"] = peak / 1024
    print("RESULT " + json.dumps(result), flush=True)


def run_child(method: str, days: int, args: argparse.Namespace) -> dict | None:
    """One method in its own process (so its peak memory is its own); its RESULT line."""
    command = [
        sys.executable,
        __file__,
        "--child",
        method,
        "--days",
        str(days),
        "--workers",
        str(args.workers),
    ]
    command += ["--work", str(args.work), "--codec", args.codec]
    command += ["--write-batches", str(args.write_batches)] if args.write_batches else []
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        print(f"{method} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        return None
    return json.loads(line[len("RESULT ") :])


def print_cache_bound(results: dict[str, dict], workers: int) -> None:
    """The least the whole recipe could take here: the floor's work plus the cache stage's, on all
    workers at once, perfectly overlapped, with no orchestration at all."""
    fl, cache = results["floor"], results["cache"]
    cores = min(workers, os.cpu_count() or workers)
    bound = (fl["cpu"] + cache["cpu"]) / cores
    line = (
        f"CPU s: floor {fl['cpu']:.1f}, cache stage core {cache['cpu']:.1f} "
        f"(fetching {cache['fetch_cpu']:.1f}, server included; "
        f"summarizing {cache['cpu'] - cache['fetch_cpu']:.1f}); whole recipe on {cores} "
        f"cores >= {bound:.2f} s = {bound / fl['seconds']:.2f}x floor"
    )
    if "xarray_dask" in results:
        line += f", so at most {results['xarray_dask']['seconds'] / bound:.2f}x faster than xarray + Dask"
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "forge-bench")
    parser.add_argument("--methods", default="floor,xarray_dask,cache,forge")
    parser.add_argument("--codec", choices=("zstd", "lz4"), default="zstd", help="zstd: Zarr's default")
    parser.add_argument(
        "--baseline-days",
        type=int,
        help="also run floor and forge on this many days: per-input cost = difference / extra days",
    )
    parser.add_argument("--write-batches", type=int, help="the recipe's max_write_batches (default: its own)")
    parser.add_argument("--child")
    args = parser.parse_args()
    replica_dir = args.work / "replica"
    if args.child:
        return child(
            args.child, args.days, args.workers, args.work, replica_dir, args.codec, args.write_batches
        )
    files = _files(replica_dir, args.days)  # generate the inputs once, outside the timings
    raw_mb = args.days * len(VARIABLES) * 720 * 1440 * 2 / 1e6
    compressed_mb = sum(p.stat().st_size for p in files) / 1e6
    results = {m: r for m in args.methods.split(",") if (r := run_child(m, args.days, args))}
    baseline = {}
    if args.baseline_days:
        baseline = {m: r for m in ("floor", "forge") if (r := run_child(m, args.baseline_days, args))}
    print(
        f"\n{args.days} OISST-format days: {compressed_mb:.0f} MB compressed, {raw_mb:.0f} MB packed int16; "
        f"codec {args.codec}; {args.workers} workers on {os.cpu_count()} cores; {platform.platform()}; "
        f"Python {platform.python_version()}"
    )
    floor_s = results.get("floor", {}).get("seconds")
    rows = []
    for method, r in results.items():
        rows.append((method, r["seconds"], r["peak_rss_mb"], r["stored_mb"]))
        if method in ("forge", "forge_icechunk"):
            rows.append((f"{method} store step", r["store_seconds"], None, None))
    print(f"{'method':24s} {'wall s':>8s} {'MB/s':>8s} {'x floor':>8s} {'peak MB':>8s} {'stored MB':>9s}")
    for name, seconds, peak, stored in rows:
        ratio = f"{seconds / floor_s:8.2f}" if floor_s else "       -"
        peak_s = f"{peak:8.0f}" if peak else "       -"
        stored_s = f"{stored:9.0f}" if stored else "        -"
        print(f"{name:24s} {seconds:8.2f} {raw_mb / seconds:8.1f} {ratio} {peak_s} {stored_s}")
    if "forge" in results:
        f = results["forge"]
        print(
            f"forge fixed start-up: Prefect server and Dask cluster {f['server_start']:.1f}s; "
            f"cache+prepare {f['cache_prepare_seconds']:.1f}s; finalize {f['finalize_seconds']:.1f}s; "
            f"catalog {f['catalog_seconds']:.1f}s"
        )
    if {"forge", "forge_icechunk"} <= results.keys():
        ratio = results["forge_icechunk"]["store_seconds"] / results["forge"]["store_seconds"]
        print(f"Icechunk store step / Zarr store step: {ratio:.2f}x")
    if "forge_icechunk" in results:
        ic = results["forge_icechunk"]
        print(
            f"Icechunk append of one day: {ic['append_seconds']:.1f}s in all, its commit (finalize) "
            f"{ic['append_finalize_seconds']:.2f}s"
        )
    if {"floor", "cache"} <= results.keys():
        print_cache_bound(results, args.workers)
    if {"floor", "forge"} <= baseline.keys() and {"floor", "forge"} <= results.keys():
        extra = args.days - args.baseline_days
        per_input = {m: (results[m]["seconds"] - baseline[m]["seconds"]) / extra for m in ("floor", "forge")}
        floor_ms, forge_ms = per_input["floor"] * 1000, per_input["forge"] * 1000
        # The whole recipe's fixed cost: what a run would take with no inputs at all.
        fixed = (
            results["forge"]["server_start"]
            + baseline["forge"]["seconds"]
            - per_input["forge"] * args.baseline_days
        )
        print(
            f"per input ({args.days} vs {args.baseline_days} days): floor {floor_ms:.0f} ms, forge whole "
            f"recipe {forge_ms:.0f} ms = {forge_ms / floor_ms:.2f}x floor; "
            f"forge fixed start-up (server + flow at zero inputs) {fixed:.1f}s"
        )


if __name__ == "__main__":
    main()
