"""Append mode on the local runner (the reference): idempotent, crash-safe, and checked against the store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from forge import ConcatDim, FilePattern, XarrayZarrRecipe
from forge.engine.append import AppendError, plan_append
from forge.engine.caching import cache_batch, plan_cache
from forge.engine.stages import prepare
from forge.engine.targets.zarr_target import open_group, pending_marker
from forge.engine.writers import store_batch
from forge.io.fetch import SourceError
from forge.run import run_locally
from forge.testing import assert_store_matches, make_dataset, open_store, write_inputs

CHUNK = 3  # 10 days end inside a chunk, so the first append fills a partly written chunk


def recipe_for(
    served, days: list[int], prefix: str = "all", chunk: int = CHUNK, zarr_format: int = 3
) -> XarrayZarrRecipe:
    def url(time: int) -> str:
        return f"{served.url}/{prefix}_{time:04d}.nc"

    pattern = FilePattern(url, ConcatDim("time", days, nitems_per_file=1))
    return XarrayZarrRecipe(
        pattern, target_chunks={"time": chunk}, max_write_batches=2, zarr_format=zarr_format
    )


def data_vars_and_attrs(url: str) -> xr.Dataset:
    """The store as users see it, without forge's provenance attrs (run ids and fingerprints differ)."""
    ds = open_store(url)
    ds.attrs = {k: v for k, v in ds.attrs.items() if not k.startswith("forge:")}
    return ds


@pytest.fixture
def days20(served):
    ds = make_dataset(20, packed=True)
    return write_inputs(ds, Path(served.root), 1)


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_append_equals_one_shot_build_and_a_second_append_changes_nothing(
    served, run_spec, days20, tmp_path, zarr_format
):
    run = run_spec()
    run_locally(recipe_for(served, list(range(10)), zarr_format=zarr_format), run)
    before = served.requests.copy()
    out = run_locally(recipe_for(served, list(range(20)), zarr_format=zarr_format), run, append=True)
    assert out["appended"] == 10 and out["sizes"]["time"] == 20
    fetched = [p for p in served.requests if p not in before]
    assert sorted(fetched) == [f"/all_{t:04d}.nc" for t in range(10, 20)], "only the new inputs are fetched"
    assert_store_matches(out["url"], days20)

    one_shot = run_locally(
        recipe_for(served, list(range(20)), zarr_format=zarr_format), run_spec(recipe_id="one-shot")
    )
    xr.testing.assert_identical(data_vars_and_attrs(out["url"]), data_vars_and_attrs(one_shot["url"]))
    assert open_store(out["url"]).tas.encoding["chunks"][0] == CHUNK
    assert open_group(out["url"]).attrs["forge:concat_inputs"] == 20
    assert open_group(out["url"])["time"].chunks == (20,)  # the index is one chunk after the append too
    store = Path(out["url"])
    if zarr_format == 2:  # what zarr-python 2 and older xarray read: no Zarr v3 document anywhere
        assert (store / ".zmetadata").exists() and (store / "time" / ".zarray").exists()
        assert not list(store.rglob("zarr.json"))
        assert json.loads((store / "time" / ".zattrs").read_text())["_ARRAY_DIMENSIONS"] == ["time"]
    else:
        assert not list(store.rglob(".zarray"))

    # Nothing new: no download, no write, same store.
    attrs = dict(open_group(out["url"]).attrs)
    n_requests = len(served.requests)
    again = run_locally(recipe_for(served, list(range(20))), run, append=True)
    assert again["appended"] == 0 and len(served.requests) == n_requests
    assert dict(open_group(out["url"]).attrs) == attrs


def _begin_append(served, run, days: int, zarr_format: int = 3):
    """An append of the store up to ``days`` days, prepared (marker written, arrays resized) and nothing
    stored yet: where a crash leaves it."""
    recipe = recipe_for(served, list(range(days)), zarr_format=zarr_format)
    append_run, new = plan_append(recipe, run)
    summaries = [s for b in plan_cache(recipe, append_run) for s in cache_batch(recipe, append_run, b)]
    target, batches = prepare(recipe, append_run, summaries)
    return recipe, new, target, batches


def test_a_crash_mid_append_is_finished_by_the_next_append(served, run_spec, days20):
    run = run_spec()
    run_locally(recipe_for(served, list(range(10))), run)
    recipe, new, target, batches = _begin_append(served, run, 20)
    assert len(new) == 10
    store_batch(recipe, target, batches[0])  # ... and the process dies here
    storage, key = pending_marker(run.target_url)
    marker = json.loads(storage.read_text(key))
    assert (marker["from_inputs"], marker["from_length"]) == (10, 10)
    assert len(marker["coordinate"]["values"]) == 10  # the coordinate as it was, to restore it
    # Readers of the consolidated metadata still see the old, complete store.
    assert open_store(run.target_url).sizes["time"] == 10

    out = run_locally(recipe, run, append=True)
    assert out["sizes"]["time"] == 20 and not storage.exists(key)
    assert_store_matches(out["url"], days20)
    one_shot = run_locally(recipe, run_spec(recipe_id="one-shot"))
    xr.testing.assert_identical(data_vars_and_attrs(out["url"]), data_vars_and_attrs(one_shot["url"]))
    assert open_group(out["url"])["time"].chunks == (20,)  # the index stays one chunk


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_a_crash_between_resizes_and_mid_coordinate_is_finished_by_the_next_append(
    served, run_spec, days20, zarr_format
):
    """Killed while resizing ('tas' still holds 10 items, 'pr' 20), or inside the commit's rewrite of the
    coordinate (its array is gone: the rewrite deletes it first): the rerun restores it from the marker."""
    run = run_spec()
    run_locally(recipe_for(served, list(range(10)), zarr_format=zarr_format), run)
    _begin_append(served, run, 20, zarr_format)
    open_group(run.target_url)["tas"].resize((10, *open_group(run.target_url)["tas"].shape[1:]))
    shutil.rmtree(Path(run.target_url) / "time")  # as if killed inside the commit's rewrite
    out = run_locally(recipe_for(served, list(range(20)), zarr_format=zarr_format), run, append=True)
    assert out["sizes"]["time"] == 20 and not pending_marker(run.target_url)[0].exists(
        pending_marker(run.target_url)[1]
    )
    one_shot = run_locally(
        recipe_for(served, list(range(20)), zarr_format=zarr_format), run_spec(recipe_id="one-shot")
    )
    xr.testing.assert_identical(data_vars_and_attrs(out["url"]), data_vars_and_attrs(one_shot["url"]))


def _assert_refused_and_untouched(served, run, recipe, *expected: str, errors=AppendError) -> None:
    before = open_store(run.target_url).load()
    attrs = dict(open_group(run.target_url).attrs)
    with pytest.raises(errors) as info:
        run_locally(recipe, run, append=True)
    for text in expected:
        assert text in str(info.value), str(info.value)
    xr.testing.assert_identical(open_store(run.target_url).load(), before)
    assert dict(open_group(run.target_url).attrs) == attrs


def test_schema_change_at_the_source_fails_naming_file_and_variable(served, run_spec):
    write_inputs(make_dataset(10, packed=True), Path(served.root), 1)
    later = make_dataset(12, packed=False).isel(time=slice(10, 12))  # float32, no packing any more
    write_inputs(later, Path(served.root), 1, first_index=10)
    run = run_spec()
    run_locally(recipe_for(served, list(range(10))), run)
    _assert_refused_and_untouched(
        served, run, recipe_for(served, list(range(12))), "all_0010.nc", "'tas'", "float32", "scale_factor"
    )


def test_gap_at_the_source_is_reported_and_nothing_is_appended(served, run_spec, days20):
    run = run_spec()
    run_locally(recipe_for(served, list(range(10))), run)
    # Day 10 never arrived; the pattern lists what the source has.
    days = [*range(10), *range(11, 20)]
    _assert_refused_and_untouched(served, run, recipe_for(served, days), "gap", "all_0011.nc")


def test_append_stops_at_the_sources_frontier_and_goes_on_when_files_land(served, run_spec, tmp_path):
    """The pattern runs ahead of the source (dates up to "today"): append what is there, no more."""
    ds = make_dataset(20, packed=True)
    paths = write_inputs(ds, tmp_path / "later", 1)
    root = Path(served.root)
    for path in paths[:14]:  # the source has days 0-13 so far
        path.rename(root / path.name)
    run = run_spec()
    recipe = recipe_for(served, list(range(200)))  # the calendar says 200 days
    run_locally(recipe_for(served, list(range(10))), run)
    out = run_locally(recipe, run, append=True)
    assert out["appended"] == 4 and out["sizes"]["time"] == 14
    again = run_locally(recipe, run, append=True)
    assert again["appended"] == 0, "nothing new at the source: nothing appended"
    assert served.statuses[404] < 30, "the frontier is found by a binary search, not by probing every day"

    for path in paths[14:]:  # six more days land
        path.rename(root / path.name)
    out = run_locally(recipe, run, append=True)
    assert out["appended"] == 6
    assert_store_matches(out["url"], sorted(root.glob("all_*.nc")))
    one_shot = run_locally(recipe_for(served, list(range(20))), run_spec(recipe_id="one-shot"))
    xr.testing.assert_identical(data_vars_and_attrs(out["url"]), data_vars_and_attrs(one_shot["url"]))


def test_a_missing_file_at_the_source_is_a_gap_reported_before_any_fetch(served, run_spec, days20):
    run = run_spec()
    run_locally(recipe_for(served, list(range(10))), run)
    (Path(served.root) / "all_0012.nc").unlink()  # day 12 never arrived, 13-19 did
    served.reset_counts()
    _assert_refused_and_untouched(
        served, run, recipe_for(served, list(range(20))), "gap at the source", "all_0012.nc", "all_0013.nc"
    )
    assert served.methods["HEAD"] > 0 and served.methods["GET"] == 0, "probed, nothing fetched"


def test_catching_up_past_a_gap_fails_naming_the_missing_file(served, run_spec, days20):
    """A long catch-up finds the frontier by binary search; a gap behind it fails the fetch (404)."""
    run = run_spec()
    run_locally(recipe_for(served, list(range(10))), run)
    for day in (12, 16, 17, 18, 19):  # the source has up to day 15, without day 12
        (Path(served.root) / f"all_{day:04d}.nc").unlink()
    _assert_refused_and_untouched(
        served, run, recipe_for(served, list(range(200))), "all_0012.nc", errors=(AppendError, SourceError)
    )


def test_overlap_is_reported(served, run_spec, days20):
    run = run_spec()
    run_locally(recipe_for(served, list(range(10))), run)
    days = [*range(10), 8, 9, 10]  # a provider re-issued two days under new positions
    _assert_refused_and_untouched(served, run, recipe_for(served, days), "overlap", "all_0008.nc")


def test_finer_time_resolution_at_the_source_is_refused(served, run_spec):
    """The original project took the time encoding from the first file only: hours collapsed to days."""
    write_inputs(make_dataset(4), Path(served.root), 1)
    hourly = make_dataset(2, freq="h", start="2000-01-05T06:00")
    write_inputs(hourly, Path(served.root), 1, first_index=4, time_units_per_file=True)
    run = run_spec()
    run_locally(recipe_for(served, list(range(4)), chunk=2), run)
    _assert_refused_and_untouched(served, run, recipe_for(served, list(range(6)), chunk=2), "all_0004.nc")


def test_append_to_a_missing_store_says_build_first(served, run_spec, days20):
    with pytest.raises(AppendError, match="build it first"):
        run_locally(recipe_for(served, list(range(3))), run_spec(), append=True)


def test_append_keeps_time_values_exact(served, run_spec, days20):
    run = run_spec()
    run_locally(recipe_for(served, list(range(7))), run)
    run_locally(recipe_for(served, list(range(13))), run, append=True)
    out = run_locally(recipe_for(served, list(range(20))), run, append=True)
    times = open_store(out["url"]).time.values
    np.testing.assert_array_equal(times, make_dataset(20).time.values)
