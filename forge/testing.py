"""Test kit: synthetic inputs written as real files, and comparisons of a store with its sources."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from forge.io.storage import zarr_store


def make_dataset(
    n_time: int = 12,
    *,
    freq: str = "D",
    start: str = "2000-01-01",
    nlat: int = 3,
    nlon: int = 4,
    variables: Sequence[str] = ("tas", "pr"),
    packed: bool = False,
    seed: int = 0,
) -> xr.Dataset:
    """A small CF dataset (time, lat, lon) with a static ``mask`` and optionally int16-packed variables."""
    rng = np.random.default_rng(seed)
    time = pd.date_range(start, periods=n_time, freq=freq)
    lat = np.linspace(-60, 60, nlat, dtype="float32")
    lon = np.linspace(0, 300, nlon, dtype="float32")
    data = {}
    for i, name in enumerate(variables):
        values = np.round(rng.normal(10 * i, 3, size=(n_time, nlat, nlon)), 2).astype("float32")
        values[:, 0, 0] = np.nan
        var = xr.Variable(
            ("time", "lat", "lon"), values, attrs={"long_name": f"synthetic {name}", "units": "K"}
        )
        if packed:
            var.encoding = {
                "dtype": "int16",
                "scale_factor": np.float32(0.01),
                "add_offset": np.float32(0.0),
                "_FillValue": np.int16(-32767),
            }
        data[name] = var
    ds = xr.Dataset(
        data,
        coords={
            "time": time,
            "lat": ("lat", lat, {"units": "degrees_north"}),
            "lon": ("lon", lon, {"units": "degrees_east"}),
        },
        attrs={"title": "synthetic test data", "Conventions": "CF-1.8"},
    )
    ds["mask"] = (("lat", "lon"), (rng.random((nlat, nlon)) > 0.3).astype("int8"), {"long_name": "land mask"})
    return ds


def split_points(n: int, items_per_file: int | Sequence[int]) -> list[tuple[int, int]]:
    sizes = (
        [items_per_file] * -(-n // items_per_file)
        if isinstance(items_per_file, int)
        else list(items_per_file)
    )
    bounds, start = [], 0
    for size in sizes:
        stop = min(n, start + size)
        bounds.append((start, stop))
        start = stop
    return bounds


def write_inputs(
    ds: xr.Dataset,
    directory: Path,
    items_per_file: int | Sequence[int] = 1,
    *,
    fmt: str = "NETCDF4",
    per_variable: bool = False,
    time_units: str | None = None,
    time_units_per_file: bool = False,
    time_dtype: str | None = None,
    first_index: int = 0,
) -> list[Path]:
    """Write ``ds`` as files ``{variable}_{i:04d}.nc`` (or ``all_...``) split along time.

    Files are numbered from ``first_index`` (later files of a growing dataset).

    ``time_units_per_file`` gives each file its own reference date (``hours since <its first time>``), as
    many hourly products do; ``time_units`` and ``time_dtype`` set one encoding for all files.
    """
    directory.mkdir(parents=True, exist_ok=True)
    names = [v for v in ds.data_vars if "time" in ds[v].dims] if per_variable else ["all"]
    engine = "scipy" if fmt.startswith("NETCDF3") else "netcdf4"
    paths = []
    for i, (a, b) in enumerate(split_points(ds.sizes["time"], items_per_file)):
        part = ds.isel(time=slice(a, b))
        for name in names:
            piece = part if name == "all" else part[[name]].assign(mask=part["mask"])
            piece = piece.copy()
            if time_units_per_file:
                piece.time.encoding["units"] = (
                    f"hours since {pd.Timestamp(piece.time.values[0]):%Y-%m-%d %H:%M:%S}"
                )
            elif time_units:
                piece.time.encoding["units"] = time_units
            if time_dtype:
                piece.time.encoding["dtype"] = time_dtype
            path = directory / f"{name}_{first_index + i:04d}.nc"
            piece.to_netcdf(path, format=fmt, engine=engine)
            paths.append(path)
    return paths


def open_sources(paths: Sequence[Path], *, raw: bool = False) -> xr.Dataset:
    """The sources as xarray sees them, concatenated along time and merged: what a store must equal."""
    kwargs = {"mask_and_scale": False} if raw else {}
    groups: dict[str, list[xr.Dataset]] = {}
    for p in sorted(paths):
        # files from write_inputs are "{variable}_{i}.nc": one group per variable; others form one group
        group = Path(p).name.rsplit("_", 1)[0] if "_" in Path(p).name else ""
        groups.setdefault(group, []).append(xr.open_dataset(p, **kwargs).load())
    parts = [
        xr.concat(
            g,
            "time",
            data_vars="minimal",
            coords="minimal",
            compat="override",
            combine_attrs="drop_conflicts",
        )
        for g in groups.values()
    ]
    return xr.merge(parts, compat="override", combine_attrs="drop_conflicts", join="exact")


def open_store(url: str, *, raw: bool = False) -> xr.Dataset:
    """The store as readers see it: a Zarr store, or an Icechunk target's ``main`` (``*.icechunk``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if url.rstrip("/").endswith(".icechunk"):
            from forge.publish.icechunk import published_session

            store, consolidated = published_session(url).store, False
        else:
            store, consolidated = zarr_store(url, read_only=True), None
        ds = xr.open_zarr(store, mask_and_scale=not raw, consolidated=consolidated).load()
    ds.attrs = {k: v for k, v in ds.attrs.items() if not k.startswith("forge:")}
    return ds


def assert_same_dataset(actual: xr.Dataset, expected: xr.Dataset) -> None:
    """Identical, decoded variables cast to the expected dtypes first (see :func:`assert_store_matches`)."""
    for name, var in expected.variables.items():
        if name in actual.variables and actual[name].dtype != var.dtype and var.dtype.kind == "f":
            actual[name] = actual[name].astype(var.dtype)
    xr.testing.assert_identical(actual, expected)


def assert_store_matches(url: str, sources: Sequence[Path], *, check_packed: bool = True) -> None:
    """The store equals its sources: decoded, and (``check_packed``) as stored, packed bytes and all.

    Zarr keeps attributes as JSON, so a float32 ``scale_factor`` comes back as a Python float and xarray
    then decodes to float64; decoded variables are cast back to the sources' dtypes before comparing.
    The packed comparison is the strict one: identical stored integers and identical packing attrs.
    """
    assert_same_dataset(open_store(url), open_sources(sources))
    if check_packed:
        raw_expected = open_sources(sources, raw=True)
        raw_actual = open_store(url, raw=True)
        packed = [n for n, v in raw_expected.data_vars.items() if "scale_factor" in v.attrs]
        for name in packed:
            xr.testing.assert_identical(
                raw_actual[name].reset_coords(drop=True), raw_expected[name].reset_coords(drop=True)
            )


def secret_forms(*values: str, basic_auth: tuple[str, str] | None = None) -> list[str]:
    """Every form a planted secret could take in a URL, a header or a log: as it is, percent-encoded with
    any usual safe set in either case of hex, with ``+`` for spaces, and the base64 of basic auth."""
    import base64
    from urllib.parse import quote, quote_plus

    forms: set[str] = set()
    if basic_auth:
        forms.add(base64.b64encode(":".join(basic_auth).encode()).decode())
    for value in values:
        for safe in ("", "/", "/+=", ":/?=&"):
            forms |= {quote(value, safe=safe), quote(value, safe=safe).lower()}
        forms |= {value, quote_plus(value)}
    return sorted(forms)


def assert_no_secret(text: str | bytes, forms: Sequence[str], where: str = "") -> None:
    """None of ``forms`` (:func:`secret_forms`) is in ``text``."""
    data = text if isinstance(text, bytes) else text.encode()
    found = [form for form in forms if form.encode() in data]
    assert not found, f"secret forms {found} found {where}"


def forge_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``forge ARGS...`` as a user types it, in this checkout."""
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).parents[1],
        env={**os.environ, **(env or {})},
    )


def forge_run_on_replica(
    recipe: str, work: Path, prune: int, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess:
    """``forge run RECIPE --prune N --local-replica`` as a user types it, everything under ``work``
    (``replica/``, ``target/``, ``cache/``), in this checkout."""
    args = ["run", recipe, "--prune", str(prune), "--local-replica", "--replica-dir", str(work / "replica")]
    args += ["--target-root", str(work / "target"), "--cache-root", str(work / "cache")]
    return forge_cli(*args, env=env, timeout=timeout)


class HeldFile:
    """A source server's ``generate``: the files under ``root``, every request for ``held`` kept waiting
    once :meth:`hold` is called, until :meth:`release`: a run stopped mid-download, for as long as a
    test does something else meanwhile."""

    def __init__(self, root: Path, held: str):
        self.root, self.held = root, held
        self.holding, self.reached, self.released = False, threading.Event(), threading.Event()

    def hold(self) -> None:
        self.holding = True

    def release(self) -> None:
        self.released.set()

    def __call__(self, path: str) -> Path | None:
        if self.holding and path == self.held:
            self.reached.set()
            self.released.wait(300)
        found = self.root / path.lstrip("/")
        return found if found.is_file() else None
