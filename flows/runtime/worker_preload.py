"""Imported by every Dask worker as it starts (``preload``): what its first task would otherwise wait for.

Prefect loads its collections (prefect-kubernetes alone is 3 s of imports) in a worker's first task run,
so the first round of cache batches started seconds late; here it happens while the cluster starts.
"""

import netCDF4  # noqa: F401
import prefect.task_engine  # noqa: F401
import zarr  # noqa: F401
from prefect.plugins import load_prefect_collections

import tasks.cache  # noqa: F401
import tasks.prepare  # noqa: F401
import tasks.store  # noqa: F401
from flows.runtime.gc_freeze import freeze_loaded
from flows.runtime.tracebacks import install_traceback_filter

load_prefect_collections()
install_traceback_filter()
freeze_loaded()  # last: everything above is loaded for the worker's lifetime
