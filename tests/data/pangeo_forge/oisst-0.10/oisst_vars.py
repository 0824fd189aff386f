from dataclasses import dataclass, field
from typing import Union

import apache_beam as beam
import pandas as pd
import xarray as xr

from pangeo_forge_recipes.config import Config
from pangeo_forge_recipes.patterns import ConcatDim, FilePattern
from pangeo_forge_recipes.storage import FSSpecTarget
from pangeo_forge_recipes.transforms import (
    OpenURLWithFSSpec,
    OpenWithXarray,
    RequiredAtRuntimeDefault,
    StoreToZarr,
)
from pangeo_forge_recipes.types import Indexed

dates = pd.date_range("1981-09-01", "2022-02-01", freq="D")


def make_url(time):
    return (
        "https://www.ncei.noaa.gov/data/sea-surface-temperature-optimum-interpolation/"
        f"v2.1/access/avhrr/{time:%Y%m}/oisst-avhrr-v02r01.{time:%Y%m%d}.nc"
    )


pattern = FilePattern(make_url, ConcatDim("time", dates, nitems_per_file=1))


def keep(ds: xr.Dataset, name: str) -> xr.Dataset:
    return ds[[name]].isel(zlev=0, drop=True)


class SSTOnly(beam.PTransform):
    """Keep sea surface temperature, on (time, lat, lon)."""

    @staticmethod
    def _keep_sst(item: Indexed[xr.Dataset]) -> Indexed[xr.Dataset]:
        index, ds = item
        return index, keep(ds, "sst")

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | beam.Map(self._keep_sst)


@dataclass
class PassThrough(beam.PTransform):
    target_root: Union[str, FSSpecTarget, RequiredAtRuntimeDefault] = field(
        default_factory=RequiredAtRuntimeDefault
    )

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll


def ice_chunks(template_ds: xr.Dataset, days: int) -> dict:
    """Chunks chosen from the target's schema: a few days of half the globe."""
    return {"time": days, "lat": template_ds.sizes["lat"] // 2}


config = Config()

sst = (
    beam.Create(pattern.items())
    | OpenURLWithFSSpec()
    | OpenWithXarray(file_type=pattern.file_type)
    | SSTOnly()
    | StoreToZarr(store_name="sst.zarr", combine_dims=pattern.combine_dim_keys, target_chunks={"time": 2})
)

ice = (
    beam.Create(pattern.items())
    | OpenURLWithFSSpec()
    | OpenWithXarray(file_type=pattern.file_type, xarray_open_kwargs={"decode_coords": "all"})
    | beam.MapTuple(lambda index, ds: (index, keep(ds, "ice")))
    | PassThrough(target_root=config.target_storage)
    | StoreToZarr(
        store_name="ice.zarr",
        combine_dims=pattern.combine_dim_keys,
        dynamic_chunking_fn=ice_chunks,
        dynamic_chunking_fn_kwargs={"days": 2},
    )
)
