"""A local replica of NOAA OISST v2.1 (AVHRR): files in the real URL layout and schema, made on request.

Each daily file matches the product: dims time(1), zlev(1), lat(720), lon(1440); ``sst``, ``anom``,
``err`` and ``ice`` stored as zlib-compressed int16 with ``scale_factor``, ``add_offset`` and
``_FillValue``; ``time`` in ``days since 1978-01-01 12:00:00``. Values are synthetic but smooth and
plausible (land masked, ice near the poles), so sizes and compression are close to the real files.
"""

from __future__ import annotations

import datetime as dt
import re
import tempfile
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

OISST_ROOT = "https://www.ncei.noaa.gov/data/sea-surface-temperature-optimum-interpolation/v2.1/access/avhrr/"
OISST_PATH = re.compile(r"/(\d{6})/oisst-avhrr-v02r01\.(\d{8})(_preliminary)?\.nc$")
FIRST_DAY = pd.Timestamp("1981-09-01")
PRELIMINARY_LATENCY = pd.Timedelta(days=1)  # a day's preliminary file is out the next day
FINAL_LATENCY = pd.Timedelta(days=15)  # its final file (replacing the preliminary one) two weeks later


def oisst_url(day: pd.Timestamp, root: str = OISST_ROOT, preliminary: bool = False) -> str:
    return f"{root}{day:%Y%m}/oisst-avhrr-v02r01.{day:%Y%m%d}{'_preliminary' if preliminary else ''}.nc"


def _packed(name: str, values: np.ndarray, long_name: str, units: str, valid: tuple[int, int]) -> xr.Variable:
    var = xr.Variable(
        ("time", "zlev", "lat", "lon"),
        values[None, None].astype("float32"),
        attrs={
            "long_name": long_name,
            "units": units,
            "valid_min": np.int16(valid[0]),
            "valid_max": np.int16(valid[1]),
        },
    )
    var.encoding = {
        "dtype": "int16",
        "scale_factor": np.float32(0.01),
        "add_offset": np.float32(0.0),
        "_FillValue": np.int16(-999),
        "zlib": True,
        "complevel": 4,
        "chunksizes": (1, 1, 720, 1440),
    }
    return var


def oisst_dataset(
    day: pd.Timestamp, nlat: int = 720, nlon: int = 1440, preliminary: bool = False
) -> xr.Dataset:
    """One day of synthetic OISST in the product's exact schema; ``preliminary``: the first analysis of
    the day, before the final one corrects it (0.1 degC warmer here)."""
    lat = (np.arange(nlat, dtype="float32") + 0.5) * (180 / nlat) - 90
    lon = (np.arange(nlon, dtype="float32") + 0.5) * (360 / nlon)
    la, lo = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    doy = 2 * np.pi * day.dayofyear / 365.25
    land = (np.sin(3 * lo) * np.cos(2 * la) > 0.55) | (np.abs(la) > np.deg2rad(80)) & (np.sin(lo) > 0.3)
    sst = np.round(28 * np.cos(la) ** 2 - 1.8 + 2 * np.sin(2 * lo + doy) * np.cos(la), 2)
    anom = np.round(0.8 * np.sin(4 * lo - doy) * np.cos(3 * la), 2)
    err = np.round(0.1 + 0.3 * np.abs(np.sin(la + doy)), 2)
    ice = np.where(np.abs(la) > np.deg2rad(60), np.round(np.clip((np.abs(la) - 1.05) * 2, 0, 1), 2), np.nan)
    # Fine-scale structure at the product's 0.01 resolution, so files compress like the real ones (~1.6 MB).
    rng = np.random.default_rng(day.toordinal())
    sst = np.round(sst + rng.normal(0, 0.03, sst.shape), 2)
    anom = np.round(anom + rng.normal(0, 0.03, anom.shape), 2)
    err = np.round(err + rng.normal(0, 0.01, err.shape).clip(-0.05, 0.05), 2)
    if preliminary:
        sst = np.round(sst + 0.1, 2)
    for field in (sst, anom, err, ice):
        field[land] = np.nan
    days = (day + pd.Timedelta(hours=12) - pd.Timestamp("1978-01-01 12:00")).days
    time = xr.Variable(
        "time",
        np.array([days], dtype="float32"),
        attrs={"long_name": "Center time of the day", "units": "days since 1978-01-01 12:00:00"},
    )
    ds = xr.Dataset(
        {
            "sst": _packed("sst", sst, "Daily sea surface temperature", "Celsius", (-300, 4500)),
            "anom": _packed(
                "anom", anom, "Daily sea surface temperature anomalies", "Celsius", (-1200, 1200)
            ),
            "err": _packed(
                "err", err, "Estimated error standard deviation of analysed_sst", "Celsius", (0, 1000)
            ),
            "ice": _packed("ice", ice, "Sea ice concentration", "%", (0, 100)),
        },
        coords={
            "time": time,
            "zlev": (
                "zlev",
                np.array([0.0], dtype="float32"),
                {"long_name": "Sea surface height", "units": "meters", "positive": "down"},
            ),
            "lat": ("lat", lat, {"long_name": "Latitude", "units": "degrees_north", "grids": "Uniform grid"}),
            "lon": ("lon", lon, {"long_name": "Longitude", "units": "degrees_east", "grids": "Uniform grid"}),
        },
        attrs={
            "Conventions": "CF-1.6, ACDD-1.3",
            "title": "NOAA/NCEI 1/4 Degree Daily Optimum Interpolation Sea Surface Temperature (OISST) "
            f"Analysis, Version 2.1 - {'Preliminary' if preliminary else 'Final'}",
            "institution": "NOAA/National Centers for Environmental Information",
            "source": "ICOADS, NCEP_GTS, GSFC_ICE, NCEP_ICE, Pathfinder_AVHRR, Navy_AVHRR",
            "id": f"oisst-avhrr-v02r01.{day:%Y%m%d}{'_preliminary' if preliminary else ''}.nc",
            "time_coverage_start": f"{day:%Y-%m-%d}T00:00:00Z",
            "time_coverage_end": f"{day:%Y-%m-%d}T23:59:59Z",
            "references": "Reynolds, et al.(2007) Daily High-Resolution-Blended Analyses for Sea Surface "
            "Temperature (available at https://doi.org/10.1175/2007JCLI1824.1).",
            "comment": "Local replica with synthetic values in the product's exact layout and schema.",
        },
    )
    ds.time.encoding = {"dtype": "float32", "_FillValue": None}
    for name in ("zlev", "lat", "lon"):
        ds[name].encoding = {"_FillValue": None}
    return ds


class OisstReplica:
    """Makes (and keeps) daily files on request; use ``generate`` with :class:`SourceServer`.

    As NCEI does on ``today``: a day's ``_preliminary`` file is out a day after it, and replaced by its
    final file (the preliminary one deleted) fifteen days after it.
    """

    def __init__(
        self,
        directory: Path | None = None,
        nlat: int = 720,
        nlon: int = 1440,
        last_day: pd.Timestamp | None = None,
        today: pd.Timestamp | None = None,
    ):
        self.directory = Path(directory or Path(tempfile.gettempdir()) / "forge-oisst-replica")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.nlat, self.nlon = nlat, nlon
        # The newest day "published" (later ones answer 404, like days NOAA has not released yet).
        self.last_day = last_day
        self.today = today  # None: the real today
        self._lock = threading.Lock()

    def path_for(self, day: pd.Timestamp, preliminary: bool = False) -> Path:
        suffix = "_preliminary" if preliminary else ""
        path = (
            self.directory
            / f"{self.nlat}x{self.nlon}"
            / f"{day:%Y%m}"
            / f"oisst-avhrr-v02r01.{day:%Y%m%d}{suffix}.nc"
        )
        with self._lock:
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                ds = oisst_dataset(day, self.nlat, self.nlon, preliminary)
                ds.to_netcdf(tmp, format="NETCDF4", engine="netcdf4")
                tmp.replace(path)
        return path

    def published(self, day: pd.Timestamp, preliminary: bool) -> bool:
        """Whether the day's final (or preliminary) file is out on the replica's today."""
        today = (
            self.today if self.today is not None else pd.Timestamp.now(tz="UTC").tz_localize(None).normalize()
        )
        final = day <= today - FINAL_LATENCY
        if self.last_day is not None and day > self.last_day:
            return False
        return (not final and day <= today - PRELIMINARY_LATENCY) if preliminary else final

    def generate(self, url_path: str) -> Path | None:
        m = OISST_PATH.search(url_path)
        if not m:
            return None
        day, preliminary = pd.Timestamp(dt.datetime.strptime(m.group(2), "%Y%m%d")), bool(m.group(3))
        if m.group(1) != f"{day:%Y%m}" or day < FIRST_DAY or not self.published(day, preliminary):
            return None
        return self.path_for(day, preliminary)
