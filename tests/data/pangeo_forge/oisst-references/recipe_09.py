import pandas as pd

from pangeo_forge_recipes.patterns import ConcatDim, FilePattern
from pangeo_forge_recipes.recipes.reference_hdf_zarr import HDFReferenceRecipe

dates = pd.date_range("1981-09-01", "2021-01-05", freq="D")


def make_url(time):
    return (
        "https://www.ncei.noaa.gov/data/sea-surface-temperature-optimum-interpolation/"
        f"v2.1/access/avhrr/{time:%Y%m}/oisst-avhrr-v02r01.{time:%Y%m%d}.nc"
    )


pattern = FilePattern(make_url, ConcatDim("time", dates, nitems_per_file=1))

recipe = HDFReferenceRecipe(
    pattern,
    netcdf_storage_options={"anon": True},
    concat_dims=["time"],
    identical_dims=["lat", "lon", "zlev"],
    inline_threshold=500,
    output_json_fname="reference.json",
)
