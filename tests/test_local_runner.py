"""End-to-end scenarios on the plain local runner (the reference), sources served over loopback HTTP."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

from forge import ConcatDim, FilePattern, MergeDim, XarrayZarrRecipe
from forge.engine import writers
from forge.errors import RecipeCodeError, RecipeError
from forge.io.openers import InputError
from forge.replicas.opendap import OpendapServer
from forge.run import run_locally
from forge.testing import (
    assert_same_dataset,
    assert_store_matches,
    make_dataset,
    open_sources,
    open_store,
    write_inputs,
)
from tests.test_catalog import assert_valid_stac


def concat_pattern(srv, n_files: int, nitems: int | None = None, prefix: str = "all", **kw) -> FilePattern:
    def url(time: int) -> str:
        return f"{srv.url}/{prefix}_{time:04d}.nc"

    return FilePattern(url, ConcatDim("time", list(range(n_files)), nitems_per_file=nitems), **kw)


@pytest.mark.parametrize(
    ("items_per_file", "chunk", "fmt"),
    [
        (1, 5, "NETCDF4"),  # one step per file
        (3, 3, "NETCDF4"),  # multi-step files, aligned
        (2, 3, "NETCDF4"),  # chunks straddle inputs
        (5, 2, "NETCDF3_64BIT"),  # netCDF3, inputs larger than chunks
        ([4, 1, 3, 4], 5, "NETCDF4_CLASSIC"),  # uneven files, lengths discovered by scanning
        (3, 4, "unknown"),  # pangeo-forge's FileType.unknown: xarray picks the engine
    ],
)
def test_concat(served, run_spec, items_per_file, chunk, fmt):
    ds = make_dataset(12, packed=True)
    paths = write_inputs(ds, Path(served.root), items_per_file, fmt="NETCDF4" if fmt == "unknown" else fmt)
    file_type = "netcdf3" if fmt.startswith("NETCDF3") else "unknown" if fmt == "unknown" else "netcdf4"
    nitems = items_per_file if isinstance(items_per_file, int) and 12 % items_per_file == 0 else None
    pattern = concat_pattern(served, len(paths), nitems, file_type=file_type)
    recipe = XarrayZarrRecipe(pattern, target_chunks={"time": chunk}, max_write_batches=3)
    out = run_locally(recipe, run_spec())
    assert_store_matches(out["url"], paths)
    assert xr.open_zarr(out["url"]).tas.encoding["chunks"][0] == chunk


def test_chunks_by_size_budget_for_every_dimension(served, run_spec):
    """forge.chunks_by_budget: no chunk over the budget, chunks balanced across dimensions."""
    import forge

    ds = make_dataset(12, nlat=8, nlon=16)  # float32: 12 x 8 x 16 x 4 bytes = 6 KiB per variable
    paths = write_inputs(ds, Path(served.root), 3)
    recipe = XarrayZarrRecipe(
        concat_pattern(served, len(paths), 3), dynamic_chunking_fn=forge.chunks_by_budget(1024)
    )
    out = run_locally(recipe, run_spec())
    assert_store_matches(out["url"], paths)
    assert xr.open_zarr(out["url"]).tas.encoding["chunks"] == (6, 4, 8)  # 768 bytes
    with pytest.raises(ValueError, match="target_chunks or dynamic_chunking_fn, not both"):
        XarrayZarrRecipe(recipe.pattern, target_chunks={"time": 2}, dynamic_chunking_fn=lambda ds: {})


def test_merge_dim_per_variable_files(served, run_spec):
    ds = make_dataset(6, variables=("tas", "pr"))
    paths = write_inputs(ds, Path(served.root), 2, per_variable=True)

    def url(variable: str, time: int) -> str:
        return f"{served.url}/{variable}_{time:04d}.nc"

    pattern = FilePattern(url, MergeDim("variable", ["tas", "pr"]), ConcatDim("time", [0, 1, 2]))
    out = run_locally(XarrayZarrRecipe(pattern, target_chunks={"time": 4}), run_spec())
    assert_store_matches(out["url"], paths)


def test_a_variable_along_time_in_every_merged_file_is_kept_once(served, run_spec, tmp_path):
    """Climatologies repeat ``climatology_bounds(time, nv)`` in each variable's files: kept once if it is
    the same in all of them, refused naming both files if not."""
    ds = make_dataset(6, variables=("tas", "pr"))
    ds["climatology_bounds"] = (("time", "nv"), np.arange(12.0).reshape(6, 2))
    paths = []
    for name in ("tas", "pr"):
        for i in range(3):
            paths.append(Path(served.root) / f"{name}_{i:04d}.nc")
            ds.isel(time=slice(2 * i, 2 * i + 2))[[name, "climatology_bounds"]].to_netcdf(paths[-1])

    def url(variable: str, time: int) -> str:
        return f"{served.url}/{variable}_{time:04d}.nc"

    recipe = XarrayZarrRecipe(
        FilePattern(url, MergeDim("variable", ["tas", "pr"]), ConcatDim("time", [0, 1, 2]))
    )
    out = run_locally(recipe, run_spec())
    assert_store_matches(out["url"], paths)

    ds.isel(time=slice(2, 4))[["pr"]].assign(climatology_bounds=ds.climatology_bounds[2:4] + 1).to_netcdf(
        paths[4]
    )
    shutil.rmtree(tmp_path / "cache")  # the changed file is fetched again
    with pytest.raises(
        InputError, match=rf"'climatology_bounds' along 'time' .* differs: {url('pr', 1)} and"
    ):
        run_locally(recipe, run_spec(recipe_id="other"))


def test_minus_one_chunks_a_whole_dimension_and_copy_pruned_prunes(served, run_spec):
    """pangeo-forge recipes say -1 for "the whole dimension" and copy_pruned() for a test build."""
    paths = write_inputs(make_dataset(6, nlat=3), Path(served.root), 2)
    recipe = XarrayZarrRecipe(concat_pattern(served, 3), target_chunks={"time": -1, "lat": -1, "lon": 2})
    out = run_locally(recipe, run_spec())
    assert_store_matches(out["url"], paths)
    assert zarr.open_group(out["url"], mode="r")["tas"].chunks == (6, 3, 2)
    assert len(recipe.copy_pruned().pattern) == 2


def test_hourly_files_with_their_own_time_units(served, run_spec):
    """Each file says 'hours since <its start>': the store must keep every hour, not collapse to days."""
    ds = make_dataset(48, freq="h")
    paths = write_inputs(ds, Path(served.root), 6, time_units_per_file=True)
    out = run_locally(
        XarrayZarrRecipe(concat_pattern(served, len(paths)), target_chunks={"time": 10}), run_spec()
    )
    assert_store_matches(out["url"], paths)
    store = xr.open_zarr(out["url"])
    assert store.time.to_index().is_unique and len(store.time) == 48


def test_hourly_data_with_daily_first_file_units(served, run_spec):
    """The first file's units ('days since', int) cannot hold hours: another exact encoding is chosen."""
    ds = make_dataset(24, freq="6h")
    paths = write_inputs(ds, Path(served.root), 4, time_units="days since 2000-01-01", time_dtype="float64")
    out = run_locally(
        XarrayZarrRecipe(concat_pattern(served, len(paths)), target_chunks={"time": 8}), run_spec()
    )
    assert_store_matches(out["url"], paths)


def _add_offset(ds: xr.Dataset, url: str) -> xr.Dataset:
    ds = ds.copy()
    ds["tas"] = ds["tas"] + 1
    ds["tas"].attrs = {"long_name": "shifted", "units": "K"}
    return ds.assign_attrs(processed=url.rsplit("/", 1)[-1][:3])


def _processed(served, run_spec, process_input) -> tuple[xr.Dataset, xr.Dataset]:
    """The store a three-input recipe with ``process_input`` makes, and ``process_input`` of the sources."""
    paths = write_inputs(make_dataset(6), Path(served.root), 2)
    recipe = XarrayZarrRecipe(
        concat_pattern(served, 3), target_chunks={"time": 4}, process_input=process_input
    )
    out = run_locally(recipe, run_spec())
    return open_store(out["url"]), process_input(open_sources(paths), "all")


def test_process_input_hook(served, run_spec):
    stored, expected = _processed(served, run_spec, _add_offset)
    xr.testing.assert_identical(stored, expected)


def _chunk_anomaly(ds: xr.Dataset) -> xr.Dataset:
    """A chunk-wise step (pangeo-forge's process_chunk): each chunk's tas less the chunk's mean."""
    return ds.assign(tas=ds.tas - ds.tas.mean("time"))


def test_process_chunk_sees_whole_chunks_across_inputs(served, run_spec):
    """Chunks of 4 steps over inputs of 3 (and a MergeDim): process_chunk gets each chunk whole, decoded,
    from both merged inputs; what it returns is what is stored."""
    ds = make_dataset(9, variables=("tas", "pr"), packed=True)
    paths = write_inputs(ds, Path(served.root), 3, per_variable=True)

    def url(variable: str, time: int) -> str:
        return f"{served.url}/{variable}_{time:04d}.nc"

    pattern = FilePattern(url, MergeDim("variable", ["tas", "pr"]), ConcatDim("time", [0, 1, 2]))
    recipe = XarrayZarrRecipe(
        pattern,
        target_chunks={"time": 4},
        process_chunk=_chunk_anomaly,
        xarray_concat_kwargs={"join": "exact"},
    )
    stored = open_store(run_locally(recipe, run_spec())["url"])
    sources = open_sources(paths)
    expected = xr.concat([_chunk_anomaly(sources.isel(time=slice(a, a + 4))) for a in (0, 4, 8)], "time")
    # Stored with the sources' packing (scale_factor 0.01): equal to the packing's precision
    xr.testing.assert_allclose(stored.tas, expected.tas, atol=0.006)
    xr.testing.assert_identical(stored.pr.astype(sources.pr.dtype), sources.pr)  # float32, as stored

    shape_changing = XarrayZarrRecipe(
        pattern, target_chunks={"time": 4}, process_chunk=lambda ds: ds.isel(lat=[0])
    )
    with pytest.raises(
        RecipeCodeError,
        match=r"process_chunk on chunk 0 \(2000-01-01 to 2000-01-04\) changed 'tas' .* must keep",
    ):
        run_locally(shape_changing, run_spec(recipe_id="other"))


def test_opendap_sources_are_read_in_place_a_slice_at_a_time(tmp_path, run_spec):
    """Files behind a real DAP2 server (pydap), as THREDDS serves an archive: nothing is downloaded whole
    (the cache stays empty), every read is a constrained request, and the store equals the files."""
    ds = make_dataset(6, packed=True)
    paths = write_inputs(ds, tmp_path / "archive", 2)
    with OpendapServer(tmp_path / "archive") as dap:

        def url(time: int) -> str:
            return f"{dap.url}/all_{time:04d}.nc"

        pattern = FilePattern(url, ConcatDim("time", [0, 1, 2]), is_opendap=True)  # 0.9's spelling
        out = run_locally(XarrayZarrRecipe(pattern, target_chunks={"time": 4}), run_spec())
        assert dap.requests["dods"] > 0 and dap.requests["other"] == 0
    assert not list((tmp_path / "cache").rglob("*.nc"))
    stored = open_store(out["url"])
    # pydap adds the sizes as global attributes (dimensions.time, ...): not the files' own
    stored.attrs = {k: v for k, v in stored.attrs.items() if not k.startswith("dimensions.")}
    assert_same_dataset(stored, open_sources(paths))
    with pytest.raises(RecipeError, match="OPeNDAP sources are read by netCDF-C's own client"):
        XarrayZarrRecipe(
            FilePattern(url, ConcatDim("time", [0]), file_type="opendap", query_string_secrets={"k": "K"})
        )


def _noon_north(ds: xr.Dataset, url: str) -> xr.Dataset:
    """Daily means stamped at noon, northern hemisphere: works on the inputs' pandas indexes."""
    return ds.assign_coords(time=ds.indexes["time"] + pd.Timedelta(hours=12)).sel(lat=slice(0, None))


def test_process_input_gets_indexes(served, run_spec):
    """Inputs are opened without pandas indexes unless process_input is there to use them."""
    stored, expected = _processed(served, run_spec, _noon_north)
    assert expected.sizes["lat"] == 2 and expected.time.dt.hour.item(0) == 12
    xr.testing.assert_identical(stored, expected)


@pytest.mark.parametrize("process_input", [None, _add_offset], ids=["packed", "decoded"])
def test_inputs_larger_than_chunks_are_read_in_slabs(served, run_spec, monkeypatch, process_input):
    """Reads are cut to SLAB_BYTES whatever an input's size; here one time step per read."""
    monkeypatch.setattr(writers, "SLAB_BYTES", 1)
    ds = make_dataset(12, packed=process_input is None)  # packed: the undecoded copy path
    paths = write_inputs(ds, Path(served.root), 6)
    recipe = XarrayZarrRecipe(
        concat_pattern(served, 2), target_chunks={"time": 5}, process_input=process_input
    )
    out = run_locally(recipe, run_spec())
    sources = open_sources(paths)
    if process_input is None:
        assert_store_matches(out["url"], paths)
    else:
        xr.testing.assert_identical(open_store(out["url"]), process_input(sources, "all"))


def _open_inputs() -> int:
    return sum(Path(f"/proc/self/fd/{fd}").resolve().suffix == ".nc" for fd in os.listdir("/proc/self/fd"))


def _count_open_inputs(seen: list[int]):
    def process_input(ds: xr.Dataset, url: str) -> xr.Dataset:
        seen.append(_open_inputs())
        return ds

    return process_input


def test_a_store_batch_keeps_only_the_current_chunks_inputs_open(served, run_spec):
    ds = make_dataset(12)
    write_inputs(ds, Path(served.root), 1)
    seen: list[int] = []
    recipe = XarrayZarrRecipe(
        concat_pattern(served, 12),
        target_chunks={"time": 3},
        process_input=_count_open_inputs(seen),
        max_write_batches=1,
    )
    run_locally(recipe, run_spec())
    # 12 opens summarize the inputs and one reads the static variables, one at a time; then the store
    # stage opens all 12 in its one batch, each while at most the other inputs of its chunk of 3 are open.
    assert len(seen) == 25 and max(seen[:13]) == 1, seen
    assert max(seen[13:]) == 3, seen


def test_prune(served, run_spec):
    ds = make_dataset(10)
    paths = write_inputs(ds, Path(served.root), 1)
    recipe = XarrayZarrRecipe(concat_pattern(served, 10), target_chunks={"time": 3})
    out = run_locally(recipe, run_spec(prune=4))
    assert_store_matches(out["url"], paths[:4])
    assert sum(served.requests.values()) == 4


def test_zarr_format_2(served, run_spec):
    ds = make_dataset(4, packed=True)
    paths = write_inputs(ds, Path(served.root), 2)
    out = run_locally(XarrayZarrRecipe(concat_pattern(served, 2), zarr_format=2), run_spec())
    assert_store_matches(out["url"], paths)
    assert (Path(out["url"]) / ".zmetadata").exists()


def test_compressors_apply_to_data_variables(served, run_spec):
    import zarr
    from zarr.codecs import BloscCodec

    paths = write_inputs(make_dataset(6, packed=True), Path(served.root), 1)
    lz4 = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    recipe = XarrayZarrRecipe(concat_pattern(served, 6), target_chunks={"time": 3}, compressors=(lz4,))
    out = run_locally(recipe, run_spec())
    assert_store_matches(out["url"], paths)
    group = zarr.open_group(out["url"], mode="r")
    assert [str(getattr(c.cname, "value", c.cname)) for c in group["tas"].compressors] == ["lz4"]
    assert type(group["time"].compressors[0]).__name__ == "ZstdCodec", "coordinates keep the default"


def test_target_chunks_on_other_dimensions(served, run_spec):
    ds = make_dataset(6, nlat=5, nlon=7)
    paths = write_inputs(ds, Path(served.root), 3)
    recipe = XarrayZarrRecipe(concat_pattern(served, 2), target_chunks={"time": 2, "lat": 2, "lon": 3})
    out = run_locally(recipe, run_spec())
    assert_store_matches(out["url"], paths)
    assert xr.open_zarr(out["url"]).tas.encoding["chunks"] == (2, 2, 3)


def test_rerun_is_idempotent(served, run_spec):
    ds = make_dataset(6)
    paths = write_inputs(ds, Path(served.root), 2)
    recipe = XarrayZarrRecipe(concat_pattern(served, 3), target_chunks={"time": 4})
    out = run_locally(recipe, run_spec())
    files = {p: p.stat().st_mtime_ns for p in Path(out["url"]).rglob("*") if p.is_file()}
    requests = sum(served.requests.values())
    again = run_locally(recipe, run_spec())
    assert again["url"] == out["url"]
    assert sum(served.requests.values()) == requests  # nothing downloaded again
    assert {p: p.stat().st_mtime_ns for p in Path(out["url"]).rglob("*") if p.is_file()} == files
    assert_store_matches(out["url"], paths)


def test_a_batch_downloads_over_one_kept_alive_connection(served, run_spec):
    from forge.engine.caching import fetch_missing, plan_cache

    write_inputs(make_dataset(6), Path(served.root), 1)
    recipe = XarrayZarrRecipe(concat_pattern(served, 6), max_concurrency_per_host=1)
    run = run_spec()
    (batch,) = plan_cache(recipe, run)
    assert fetch_missing(recipe, run, batch) == 6
    assert sum(served.requests.values()) == 6 and served.connections == 1


def test_zarr_inputs_are_read_in_place(tmp_path, run_spec):
    ds = make_dataset(6)
    for i in range(3):
        ds.isel(time=slice(2 * i, 2 * i + 2)).to_zarr(tmp_path / f"in_{i}.zarr", zarr_format=3)

    def url(time: int) -> str:
        return str(tmp_path / f"in_{time}.zarr")

    pattern = FilePattern(url, ConcatDim("time", [0, 1, 2]), file_type="zarr")
    out = run_locally(XarrayZarrRecipe(pattern, target_chunks={"time": 3}), run_spec())
    expected = xr.concat([xr.open_zarr(url(i)) for i in range(3)], "time", data_vars="minimal").load()
    xr.testing.assert_identical(open_store(out["url"]), expected)


def test_unreadable_input_names_the_file(served, run_spec):
    (Path(served.root) / "all_0000.nc").write_text("<html>maintenance page</html>")
    recipe = XarrayZarrRecipe(concat_pattern(served, 1))
    with pytest.raises(InputError, match=r"all_0000.nc: not a netcdf4 file"):
        run_locally(recipe, run_spec())
    assert not list(Path(run_spec().cache_root).rglob("*all_0000.nc"))  # never taken as cached
    assert not Path(run_spec().target_url).exists()


def test_unknown_file_type():
    with pytest.raises(InputError, match=r"unknown file_type 'hdf4'; known types: \[.*'netcdf4'"):
        XarrayZarrRecipe(FilePattern(lambda time: "x", ConcatDim("time", [0]), file_type="hdf4"))


@pytest.mark.parametrize(("workers", "expected"), [(None, 6), (1, 2), (2, 4), (8, 6)])
def test_write_batches_are_a_few_per_worker(served, run_spec, workers, expected):
    """Each write batch is a task run: two per worker when the cluster's size is known, and never more
    than the recipe's max_write_batches or the number of chunks."""
    from forge.engine.caching import cache_batch, plan_cache
    from forge.engine.target import prepare_target

    paths = write_inputs(make_dataset(12), Path(served.root), 1)
    recipe = XarrayZarrRecipe(concat_pattern(served, 12), target_chunks={"time": 2}, max_write_batches=8)
    run = run_spec(workers=workers)
    summaries = [s for batch in plan_cache(recipe, run) for s in cache_batch(recipe, run, batch)]
    target, batches = prepare_target(recipe, run, summaries)
    assert len(batches) == expected
    assert [c.index for b in batches for c in b.chunks] == list(range(6))
    for batch in batches:
        writers.store_batch(recipe, target, batch)
    assert_store_matches(target.url, paths)


def _ensemble(served) -> tuple[xr.Dataset, dict[tuple[int, int], Path]]:
    """Three members, one file per member and 2 days, each with the member's coordinate and weight, the
    shared static mask and time bounds: the layout of ensemble forecast archives."""
    members = []
    for m in range(3):
        ds = make_dataset(6, packed=True, seed=m).expand_dims(member=[m], axis=1)
        ds["mask"] = make_dataset(1).mask  # static: the same in every file
        ds["weight"] = ("member", [0.5 + m])
        ds["time_bnds"] = (("time", "nv"), np.arange(12.0).reshape(6, 2))
        members.append(ds)
    paths = {}
    for m, ds in enumerate(members):
        for t in range(3):
            paths[t, m] = Path(served.root) / f"ens_{t}_{m}.nc"
            ds.isel(time=slice(2 * t, 2 * t + 2)).to_netcdf(paths[t, m])
    sources = [
        xr.concat([xr.open_dataset(paths[t, m]) for t in range(3)], "time", data_vars="minimal").load()
        for m in range(3)
    ]
    return xr.concat(sources, "member", data_vars="minimal"), paths


def test_a_second_concat_dim_stacks_files_along_it_and_appends_along_the_first(served, run_spec):
    expected, _ = _ensemble(served)

    def recipe(days: int, **kwargs) -> XarrayZarrRecipe:
        def url(time: int, member: int) -> str:
            return f"{served.url}/ens_{time}_{member}.nc"

        pattern = FilePattern(url, ConcatDim("time", list(range(days))), ConcatDim("member", [0, 1, 2]))
        return XarrayZarrRecipe(pattern, target_chunks={"time": 4}, **kwargs)

    out = run_locally(recipe(3), run_spec())
    store = open_store(out["url"])
    assert_same_dataset(store, expected)  # the static mask and the time bounds once, a weight per member
    np.testing.assert_array_equal(store.weight, [0.5, 1.5, 2.5])
    collection = json.loads((Path(out["url"]).parent / "test" / "collection.json").read_text())
    assert_valid_stac(collection)
    assert collection["cube:dimensions"]["member"] == {"type": "other", "extent": [0.0, 2.0]}
    assert xr.open_zarr(out["url"]).tas.encoding["chunks"] == (4, 1, 3, 4)  # a member per chunk
    assert zarr.open_group(out["url"])["tas"].dtype == np.int16  # packed values copied as they are

    appended = run_spec(recipe_id="appended")
    run_locally(recipe(2), appended)
    assert open_store(appended.target_url).sizes == {"time": 4, "member": 3, "lat": 3, "lon": 4, "nv": 2}
    run_locally(recipe(3), appended, append=True)
    xr.testing.assert_identical(open_store(appended.target_url), open_store(out["url"]))

    with pytest.raises(RecipeError, match=r"target_chunks\['member'\] = 2 does not divide .* \[1, 1, 1\]"):
        run_locally(XarrayZarrRecipe(recipe(3).pattern, target_chunks={"member": 2}), run_spec(recipe_id="x"))
    with pytest.raises(RecipeError, match="process_chunk is not supported with a second ConcatDim"):
        recipe(3, process_chunk=lambda ds: ds)
