"""Imported by every local Dask worker as it starts (``preload``): the modules its tasks run on."""

import netCDF4  # noqa: F401
import zarr  # noqa: F401

import tasks.cache  # noqa: F401
import tasks.store  # noqa: F401
