"""NOAA OISST v2.1 (AVHRR): daily 1/4-degree SST, one netCDF4 file per day since 1981-09-01."""

import pandas as pd

from forge import ConcatDim, FilePattern, XarrayZarrRecipe

# A day is out as "_preliminary" file the next day, and as its final file (the preliminary one deleted)
# about two weeks later: the store keeps the preliminary days, flagged, until their final files replace them.
LATENCY = pd.Timedelta(days=1)
dates = pd.date_range(
    "1981-09-01", pd.Timestamp.now(tz="UTC").tz_localize(None).normalize() - LATENCY, freq="D"
)
ACCESS = "https://www.ncei.noaa.gov/data/sea-surface-temperature-optimum-interpolation/v2.1/access/avhrr/"


def make_url(time: pd.Timestamp) -> str:
    return f"{ACCESS}{time:%Y%m}/oisst-avhrr-v02r01.{time:%Y%m%d}.nc"


def make_preliminary_url(time: pd.Timestamp) -> str:
    return f"{ACCESS}{time:%Y%m}/oisst-avhrr-v02r01.{time:%Y%m%d}_preliminary.nc"


pattern = FilePattern(
    make_url,
    ConcatDim("time", dates, nitems_per_file=1),
    file_type="netcdf4",
    provisional=make_preliminary_url,
)

# 10 days per chunk: ~20 MB of packed int16 per variable chunk, whole global maps for map-style reads.
recipe = XarrayZarrRecipe(pattern, target_chunks={"time": 10}, max_concurrency_per_host=4)
