import pandas as pd

from pangeo_forge_recipes.patterns import pattern_from_file_sequence
from pangeo_forge_recipes.recipes import XarrayZarrRecipe

input_url_pattern = (
    "https://www.ncei.noaa.gov/data/sea-surface-temperature-optimum-interpolation"
    "/v2.1/access/avhrr/{yyyymm}/oisst-avhrr-v02r01.{yyyymmdd}.nc"
)
dates = pd.date_range("1981-09-01", "2021-01-05", freq="D")
input_urls = [
    input_url_pattern.format(yyyymm=day.strftime("%Y%m"), yyyymmdd=day.strftime("%Y%m%d"))
    for day in dates
]
pattern = pattern_from_file_sequence(input_urls, "time", nitems_per_file=1)


def drop_zlev(ds, fname):
    """The analysis has one level: keep (time, lat, lon)."""
    return ds.isel(zlev=0, drop=True)


recipe = XarrayZarrRecipe(
    pattern,
    inputs_per_chunk=2,
    process_input=drop_zlev,
    subset_inputs={"time": 1},
    cache_inputs=True,
    copy_input_to_local_file=False,
    consolidate_zarr=True,
)
