"""Local Dask workers forked from a server process that has imported what they run.

Spawned, each worker imported Prefect, xarray, zarr, netCDF4 and the tasks on its own as it started:
2-3 CPU seconds per worker, the largest part of a ``forge run`` start-up once the Prefect server is kept
(benchmarks/startup.py). Forked from a fork server, the workers find it all imported, once: and the
fork server starts first, so that its imports overlap this process's own. It is a fresh interpreter
(spawned, with one thread), so forking it is safe; it ends with this process.

Imports nothing heavy itself: it runs before this process has imported Dask or Prefect.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver

PRELOAD = "flows.runtime.worker_preload"  # what every local and Kubernetes worker imports as it starts


def preload_forkserver() -> None:
    """What the fork server imports when it starts (it starts with the first worker, if not before)."""
    multiprocessing.get_context("forkserver").set_forkserver_preload(["distributed", PRELOAD])


def start_worker_forkserver() -> None:
    """Start the fork server now, its imports done before the first worker is forked (idempotent)."""
    preload_forkserver()
    multiprocessing.forkserver.ensure_running()
