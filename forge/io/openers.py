"""Opening cached inputs with xarray: an explicit ``file_type`` picks the engine, nothing is guessed.

Inputs are opened from local paths (the cache), never through fsspec file objects from threads: that
combination hangs HDF5 intermittently. Each opener checks the file's magic bytes first, so a wrong or
truncated file fails with a message naming it instead of a library's opaque error.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from forge.errors import ForgeError


class InputError(ForgeError, ValueError):
    """An input is unreadable or does not fit the recipe; the message names the file."""


@dataclass(frozen=True)
class Opener:
    engine: str | None  # None: xarray's guess
    module: str
    install_hint: str
    magic: tuple[bytes, ...] = ()
    in_place: bool = False  # read where it is (a Zarr store, an OPeNDAP URL): never downloaded
    open_kwargs: tuple[tuple[str, Any], ...] = ()
    netcdf_c: bool = False  # the netCDF-C library reads it: packed values come straight from netCDF4


HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
OPENERS: dict[str, Opener] = {
    "netcdf4": Opener(
        "netcdf4", "netCDF4", "pip install netCDF4", (HDF5_MAGIC, b"CDF\x01", b"CDF\x02"), netcdf_c=True
    ),
    # h5netcdf reads through h5py, which it no longer installs itself
    "hdf5": Opener("h5netcdf", "h5py", "pip install h5netcdf h5py", (HDF5_MAGIC,)),
    # no mmap: summaries keep small arrays after the file is closed
    "netcdf3": Opener(
        "scipy",
        "scipy",
        "pip install scipy",
        (b"CDF\x01", b"CDF\x02", b"CDF\x05"),
        open_kwargs=(("mmap", False),),
        netcdf_c=True,
    ),
    "zarr": Opener("zarr", "zarr", "pip install zarr", in_place=True),
    # pangeo-forge's FileType.unknown: xarray picks the engine from the file itself
    "unknown": Opener(None, "xarray", "pip install xarray"),
    # a DAP2 URL, read by netCDF-C (its DAP client) a slice at a time: nothing is downloaded whole
    "opendap": Opener("netcdf4", "netCDF4", "pip install netCDF4", in_place=True, netcdf_c=True),
    "grib": Opener("cfgrib", "cfgrib", "pip install cfgrib (and the eccodes library)", (b"GRIB",)),
}


def get_opener(file_type: str) -> Opener:
    try:
        opener = OPENERS[file_type]
    except KeyError:
        raise InputError(f"unknown file_type {file_type!r}; known types: {sorted(OPENERS)}") from None
    if importlib.util.find_spec(opener.module) is None:
        raise InputError(f"file_type {file_type!r} needs {opener.module}: {opener.install_hint}")
    return opener


def check_magic(path: Path, file_type: str, name: str) -> None:
    opener = get_opener(file_type)
    if opener.in_place or not opener.magic:
        return
    with open(path, "rb") as f:
        head = f.read(8)
    if not any(head.startswith(m) for m in opener.magic):
        raise InputError(
            f"{name}: not a {file_type} file (starts with {head[:8]!r}); check the URL or the file_type"
        )


class RawInput:
    """Packed values of one input, as stored: nothing decoded, nothing masked or scaled."""

    def __init__(self, ds: xr.Dataset):
        self.ds = ds

    def read(self, name: str, indexers: Mapping[str, slice]) -> np.ndarray:
        return np.asarray(self.ds[name].variable[dict(indexers)].values)

    def close(self) -> None:
        self.ds.close()


MAX_CHUNK_CACHE = 64 * 2**20  # netCDF-C's default per variable, now the ceiling
DECODED_CHUNK_CACHE = 16 * 2**20  # per variable of inputs opened through xarray, which reads in slabs


def chunk_row_bytes(shape: tuple[int, ...], chunking: list[int] | str | None, itemsize: int) -> int:
    """Bytes of one row of HDF5 chunks along the first dimension: what a cache must hold so that reading
    consecutive slices along that dimension decompresses every chunk once.

    Examples
    --------
    >>> chunk_row_bytes((365, 720, 1440), [1, 720, 1440], 2)
    2073600
    >>> chunk_row_bytes((365, 720, 1440), "contiguous", 2)
    0
    """
    if not isinstance(chunking, list) or not shape:
        return 0  # contiguous, or netCDF3 (None): no chunk cache involved
    return int(np.prod((chunking[0], *shape[1:]), dtype=np.int64)) * itemsize


class NetCDF4RawInput(RawInput):
    """Reads packed values through the netCDF4 library directly: the cheapest path, as in the floor.

    Each variable's chunk cache holds one row of its HDF5 chunks (at most netCDF-C's default, 64 MiB):
    the default would keep up to 64 MiB per variable per open input, several times a target chunk.
    """

    def __init__(self, path: Path):
        import netCDF4

        self.nc = netCDF4.Dataset(path)
        self.nc.set_auto_maskandscale(False)
        self._sized: set[str] = set()

    def read(self, name: str, indexers: Mapping[str, slice]) -> np.ndarray:
        var = self.nc.variables[name]
        if name not in self._sized:
            row = chunk_row_bytes(var.shape, var.chunking(), var.dtype.itemsize)
            if row:
                var.set_var_chunk_cache(size=min(row, MAX_CHUNK_CACHE))
            self._sized.add(name)
        return np.asarray(var[tuple(indexers.get(d, slice(None)) for d in var.dimensions)])

    def close(self) -> None:
        self.nc.close()


def open_raw(path: Path, file_type: str, name: str, open_kwargs: Mapping[str, Any] | None = None) -> RawInput:
    """Open one cached input for reading packed values."""
    if get_opener(file_type).netcdf_c:
        check_magic(path, file_type, name)
        try:
            return NetCDF4RawInput(path)
        except OSError as e:
            raise InputError(f"{name}: could not open as {file_type} ({e})") from e
    return RawInput(open_input(path, file_type, name, raw=True, open_kwargs=open_kwargs))


def open_input(
    path: Path, file_type: str, name: str, *, raw: bool = False, open_kwargs: Mapping[str, Any] | None = None
) -> xr.Dataset:
    """Open one cached input lazily. ``raw=True`` returns stored (packed, undecoded) values."""
    opener = get_opener(file_type)
    check_magic(path, file_type, name)
    if opener.engine == "netcdf4":
        import netCDF4

        # The default for files opened from now on in this process (xarray gives no per-file option).
        netCDF4.set_chunk_cache(size=DECODED_CHUNK_CACHE)
    kwargs: dict[str, Any] = {"cache": False, **dict(opener.open_kwargs), **(open_kwargs or {})}
    if raw:
        kwargs.update(decode_cf=False, mask_and_scale=False, decode_times=False, decode_timedelta=False)
    try:
        return xr.open_dataset(path, engine=opener.engine, chunks=None, **kwargs)
    except Exception as e:
        undecodable = _undecodable_times(path, opener, kwargs) if "decode time units" in str(e) else None
        if undecodable:
            raise InputError(f"{name}: {undecodable}") from None
        raise InputError(f"{name}: could not open as {file_type} ({type(e).__name__}: {e})") from e


def _undecodable_times(path: Path, opener: Opener, kwargs: Mapping[str, Any]) -> str | None:
    """What to say of time units xarray cannot decode: ``months since`` or ``years since`` outside the
    360_day calendar, the one calendar in which months and years have a fixed length."""
    with xr.open_dataset(path, engine=opener.engine, chunks=None, **{**kwargs, "decode_times": False}) as ds:
        for var_name, var in ds.variables.items():
            units = str(var.attrs.get("units", ""))
            if re.match(r"\s*(months?|years?)\s+since\s", units, re.IGNORECASE):
                calendar = var.attrs.get("calendar", "standard")
                return (
                    f"variable {var_name!r} has time units {units!r} in the {calendar!r} calendar, which "
                    "cannot be decoded: months and years have a fixed length only in the 360_day calendar. "
                    "Set xarray_open_kwargs={'decode_times': False} and give the times their dates in "
                    "process_input."
                )
    return None
