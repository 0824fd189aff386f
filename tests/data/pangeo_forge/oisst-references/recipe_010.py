import apache_beam as beam
import pandas as pd

from pangeo_forge_recipes.patterns import ConcatDim, FilePattern
from pangeo_forge_recipes.transforms import OpenWithKerchunk, WriteCombinedReference

dates = pd.date_range("1981-09-01", "2022-02-01", freq="D")


def make_url(time):
    return (
        "https://www.ncei.noaa.gov/data/sea-surface-temperature-optimum-interpolation/"
        f"v2.1/access/avhrr/{time:%Y%m}/oisst-avhrr-v02r01.{time:%Y%m%d}.nc"
    )


pattern = FilePattern(make_url, ConcatDim("time", dates, nitems_per_file=1))

recipe = (
    beam.Create(pattern.items())
    | OpenWithKerchunk(remote_protocol="https", file_type=pattern.file_type)
    | WriteCombinedReference(
        store_name="noaa-oisst-references",
        concat_dims=["time"],
        identical_dims=["lat", "lon", "zlev"],
        output_file_name="reference.parquet",
    )
)
