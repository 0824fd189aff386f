"""Real feedstocks that failed before, each written the way its original is (``tests/data/pangeo_forge/
feedstocks/``), its sources made in their own layout and chunking and served on loopback (HTTP) or by an
S3 emulator (moto), then ``forge port`` and ``forge run --prune 2`` as a user runs them, and the store
compared with the sources:

- AGDC (0.9): a ``process_chunk`` that drops the variables not along time gets every variable;
- TerraClimate (0.10): a ``beam.PTransform`` whose ``expand`` maps a method calling a staticmethod;
- LiveOcean (0.9 ``HDFReferenceRecipe``): S3 sources read anonymously from an endpoint of their own;
- nClimGrid (0.10 kerchunk): monthly files chunked by month cannot be referenced as one array: refused
  before anything is written, and the copying recipe it points to builds them.

(pangeo-forge-recipes' own OISST example, whose ``test_ds`` opens the store consolidated, is ported and
run in ``tests/test_port.py``.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from forge import XarrayZarrRecipe
from forge.engine.references import open_references
from forge.engine.types import RunSpec
from forge.recipe.loading import load_recipe
from forge.replicas.server import SourceServer
from forge.run import run_locally
from forge.testing import assert_same_dataset, forge_cli, open_store

FEEDSTOCKS = Path(__file__).parent / "data" / "pangeo_forge" / "feedstocks"


def port_and_run(original: Path, tmp_path: Path, api: str, *run_args: str) -> tuple[str, object]:
    """``forge port`` of ``original``, then ``forge run PORTED --prune 2 RUN_ARGS`` on ``api``: the port's
    output and the finished run."""
    ported = tmp_path / "recipe.py"
    port = forge_cli("port", str(original), "-o", str(ported), timeout=60)
    assert port.returncode == 0, port.stdout + port.stderr
    target = ["--target-root", str(tmp_path / "target"), "--cache-root", str(tmp_path / "cache")]
    run = forge_cli("run", str(ported), "--prune", "2", *target, *run_args, env={"PREFECT_API_URL": api})
    return port.stdout, run


def write_netcdf(ds: xr.Dataset, path: Path, encoding: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(path, engine="netcdf4", encoding=encoding)
    return path


def grid(nlat: int = 3, nlon: int = 4) -> dict[str, xr.Variable]:
    lat = np.linspace(-40.0, -10.0, nlat)
    lon = np.linspace(115.0, 150.0, nlon)
    return {"lat": xr.Variable("lat", lat, {"units": "degrees_north"}), "lon": xr.Variable("lon", lon)}


def agcd_file(variable: str, year: int) -> xr.Dataset:
    """One AGCD file: a year of days, with the cell bounds and ``crs`` of the product."""
    days = pd.date_range(f"{year}-01-01", f"{year}-12-31", freq="D")
    since = (days - pd.Timestamp("1850-01-01")).days.to_numpy().astype("float64")
    coords = grid()
    rng = np.random.default_rng(year * 10 + len(variable))
    values = rng.gamma(2.0, 3.0, (len(days), 3, 4)).astype("float32")
    return xr.Dataset(
        {
            variable: (("time", "lat", "lon"), values, {"units": "mm" if variable == "precip" else "degC"}),
            "crs": ((), np.int32(0), {"grid_mapping_name": "latitude_longitude"}),
            "lat_bnds": (
                ("lat", "nv"),
                np.stack([coords["lat"].values - 0.5, coords["lat"].values + 0.5], 1),
            ),
            "lon_bnds": (
                ("lon", "nv"),
                np.stack([coords["lon"].values - 0.5, coords["lon"].values + 0.5], 1),
            ),
            "time_bnds": (("time", "nv"), np.stack([since, since + 1], 1)),
        },
        coords={"time": ("time", since, {"units": "days since 1850-01-01"}), **coords},
    )


def test_agdc_process_chunk_drops_the_variables_not_along_time(tmp_path, prefect_server):
    root = tmp_path / "nci"
    for variable, kind in (("precip", "total"), ("tmax", "mean")):
        for year in (1971, 1972):
            folder = root / f"thredds/fileServer/zv2/agcd/v1/{variable}/{kind}/r005/01day"
            write_netcdf(
                agcd_file(variable, year), folder / f"agcd_v1_{variable}_{kind}_r005_daily_{year}.nc"
            )
    with SourceServer(root=root) as nci:
        rewrite = ["--url-rewrite", f"https://dapds00.nci.org.au/={nci.url}/"]
        _, run = port_and_run(FEEDSTOCKS / "agdc" / "recipe.py", tmp_path, prefect_server, *rewrite)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    store = xr.open_zarr(tmp_path / "target" / "recipe.zarr", decode_times=False).load()
    dropped = ["crs", "lat_bnds", "lon_bnds", "time_bnds"]
    expected = xr.merge(
        [
            xr.concat([agcd_file(v, y).drop_vars(dropped) for y in (1971, 1972)], "time")
            for v in ("precip", "tmax")
        ]
    )
    assert not set(dropped) & set(store.variables)
    for name in ("precip", "tmax", "time", "lat", "lon"):
        np.testing.assert_array_equal(store[name].values, expected[name].values)


def terraclimate_file(variable: str, year: int) -> xr.Dataset:
    """A year of months of one variable, its masked cells holding 32767 (as the real files do)."""
    months = pd.date_range(f"{year}-01-01", periods=12, freq="MS")
    rng = np.random.default_rng(year + len(variable))
    values = rng.uniform(0, 500, (12, 3, 4)).astype("float32")
    values[:, 0, 0] = 32767  # ocean
    return xr.Dataset(
        {variable: (("time", "lat", "lon"), values, {"units": "mm"})},
        coords={"time": months, **grid()},
        attrs={"title": "TerraClimate \N{DEGREE SIGN} with attributes the recipe replaces"},
    )


def test_terraclimate_ptransform_class_runs_its_methods_on_every_input(tmp_path, prefect_server):
    root = tmp_path / "nkn"
    for variable in ("soil", "srad"):
        for year in (2000, 2001):
            name = f"TerraClimate_{variable}_{year}.nc"
            write_netcdf(
                terraclimate_file(variable, year), root / "thredds/fileServer/TERRACLIMATE_ALL/data" / name
            )
    with SourceServer(root=root) as nkn:
        rewrite = ["--url-rewrite", f"http://thredds.northwestknowledge.net:8080/={nkn.url}/"]
        port, run = port_and_run(
            FEEDSTOCKS / "terraclimate" / "recipe.py", tmp_path, prefect_server, *rewrite
        )
    assert "class Munge: no longer a PTransform; its steps run on every input" in port
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    store = open_store(str(tmp_path / "target" / "recipe.zarr"))
    sources = xr.merge(
        [xr.concat([terraclimate_file(v, y) for y in (2000, 2001)], "time") for v in ("soil", "srad")],
        combine_attrs="drop",
    )
    expected = sources.where(sources < 32767).astype("float32")  # Munge._apply_mask, through self
    assert_same_dataset(store[["soil", "srad"]].drop_attrs(), expected.drop_attrs())
    assert (
        xr.open_zarr(tmp_path / "target" / "recipe.zarr").attrs["title"].startswith("TerraClimate: monthly")
    )


@pytest.fixture
def moto_s3():
    """An S3 emulator on loopback (moto), with no credentials in the environment."""
    from moto.server import ThreadedMotoServer

    from tests.integration.helpers import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def liveocean_file(day: pd.Timestamp) -> xr.Dataset:
    """One ROMS history file of the LiveOcean forecast: a step of temperature on rho points."""
    eta, xi = np.meshgrid(np.arange(4), np.arange(5), indexing="ij")
    rng = np.random.default_rng(day.day)
    return xr.Dataset(
        {
            "temp": (
                ("ocean_time", "s_rho", "eta_rho", "xi_rho"),
                rng.normal(10, 2, (1, 2, 4, 5)),
                {"units": "C"},
            )
        },
        coords={
            "ocean_time": ("ocean_time", [day.to_datetime64()]),
            "lon_rho": (("eta_rho", "xi_rho"), -125.0 + 0.1 * xi),
            "lat_rho": (("eta_rho", "xi_rho"), 45.0 + 0.1 * eta),
        },
    )


def test_liveocean_references_read_s3_anonymously_from_the_recipes_endpoint(
    tmp_path, prefect_server, moto_s3
):
    import boto3

    s3 = boto3.client(
        "s3", endpoint_url=moto_s3, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    s3.create_bucket(Bucket="rsignellbucket1")
    days = pd.date_range("2021-01-01", periods=3)
    for day in days:
        path = write_netcdf(liveocean_file(day), tmp_path / "src" / f"{day:%Y%m%d}.nc")
        key = f"LiveOcean/f{day:%Y.%m.%d}/ocean_his_0025.nc"
        s3.upload_file(str(path), "rsignellbucket1", key, ExtraArgs={"ACL": "public-read"})  # as on OSN
    # The feedstock as it is, its OSN endpoint pointed at the emulator.
    original = tmp_path / "liveocean.py"
    text = (FEEDSTOCKS / "liveocean" / "recipe.py").read_text()
    original.write_text(text.replace("https://mghp.osn.xsede.org", moto_s3))
    port, run = port_and_run(original, tmp_path, prefect_server)
    assert "netcdf_storage_options= -> storage_options= (how the S3 sources are read)" in port
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    refs = open_references(str(tmp_path / "target" / "recipe.json")).load()
    assert refs.attrs["forge:source_storage_options"] == {
        "anon": True,
        "client_kwargs": {"endpoint_url": moto_s3},
    }
    expected = xr.concat([liveocean_file(day) for day in days[:2]], "ocean_time")
    for name in ("temp", "lon_rho", "lat_rho", "ocean_time"):
        np.testing.assert_array_equal(refs[name].values, expected[name].values)


def nclimgrid_file(month: pd.Timestamp) -> xr.Dataset:
    days = pd.date_range(month, month + pd.offsets.MonthEnd(0), freq="D")
    rng = np.random.default_rng(month.month)
    return xr.Dataset(
        {"prcp": (("time", "lat", "lon"), rng.gamma(1.0, 2.0, (len(days), 3, 4)).astype("float32"))},
        coords={"time": days, **grid()},
    )


def test_nclimgrid_references_of_months_are_refused_and_the_copy_builds(tmp_path, prefect_server):
    root = tmp_path / "pds"
    months = pd.date_range("1951-01-01", periods=2, freq="MS")
    for month in months:
        ds = nclimgrid_file(month)
        path = root / f"v1-0-0/grids/{month:%Y}/ncdd-{month:%Y%m}-grd-scaled.nc"
        write_netcdf(ds, path, {"prcp": {"chunksizes": (ds.sizes["time"], 3, 4)}})  # a chunk per month
    with SourceServer(root=root) as pds:
        rewrite = ["--url-rewrite", f"s3://noaa-nclimgrid-daily-pds/={pds.url}/"]
        _, run = port_and_run(FEEDSTOCKS / "nclimgrid" / "recipe.py", tmp_path, prefect_server, *rewrite)
        assert run.returncode != 0
        last = (run.stdout + run.stderr).strip().splitlines()[-1]
        assert "'prcp' is stored in chunks of (31, 3, 4) in s3://noaa-nclimgrid-daily-pds/" in last
        assert "but (28, 3, 4) in" in last and "XarrayZarrRecipe(pattern, target_chunks=" in last
        assert not (tmp_path / "target" / "recipe.json").exists()  # nothing written
        # The way out it names: the same pattern, copied.
        sys.path.insert(0, str(tmp_path))
        try:
            pattern = load_recipe(str(tmp_path / "recipe.py")).pattern
        finally:
            sys.path.remove(str(tmp_path))
        spec = RunSpec(
            "copy",
            "nclimgrid-copy",
            str(tmp_path / "target"),
            str(tmp_path / "cache"),
            prune=2,
            url_rewrites=(("s3://noaa-nclimgrid-daily-pds/", pds.url + "/"),),
        )
        url = run_locally(XarrayZarrRecipe(pattern, target_chunks={"time": 31}), spec)["url"]
    expected = xr.concat([nclimgrid_file(m) for m in months], "time")
    assert_same_dataset(open_store(url), expected)
