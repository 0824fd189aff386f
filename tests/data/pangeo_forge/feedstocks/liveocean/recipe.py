"""LiveOcean forecast history files on OSN, referenced in place, in the shape of the LiveOcean feedstock
(0.9 ``HDFReferenceRecipe``): S3 sources read anonymously from an S3-compatible endpoint of their own."""

import pandas as pd

from pangeo_forge_recipes.patterns import ConcatDim, FilePattern
from pangeo_forge_recipes.recipes.reference_hdf_zarr import HDFReferenceRecipe

dates = pd.date_range("2021-01-01", "2021-03-31", freq="D")


def make_url(ocean_time):
    return f"s3://rsignellbucket1/LiveOcean/f{ocean_time:%Y.%m.%d}/ocean_his_0025.nc"


pattern = FilePattern(make_url, ConcatDim("ocean_time", dates, nitems_per_file=1))

recipe = HDFReferenceRecipe(
    pattern,
    netcdf_storage_options={"anon": True, "client_kwargs": {"endpoint_url": "https://mghp.osn.xsede.org"}},
    identical_dims=["lat_rho", "lon_rho"],
)
