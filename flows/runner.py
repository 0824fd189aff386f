"""The flow's Dask task runner: a local cluster of single-threaded processes, or an existing cluster.

Processes, not threads: decoding HDF5 holds the GIL, and netCDF/HDF5 from many threads has hung and
crashed in the original project.
"""

from __future__ import annotations

import os

from prefect_dask import DaskTaskRunner


def dask_task_runner(address: str | None = None, workers: int | None = None) -> DaskTaskRunner:
    address = address or os.environ.get("FORGE_DASK_ADDRESS") or None
    if address:
        return DaskTaskRunner(address=address)
    n = workers or int(os.environ.get("FORGE_DASK_WORKERS", 0)) or os.cpu_count() or 1
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": n, "threads_per_worker": 1, "processes": True, "dashboard_address": ":0"}
    )
