"""Sharded Zarr v3 targets: every shard has one writer, which writes it whole; appends into a partly
filled shard rewrite it once, and a crash in between leaves the published store as it was."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import xarray as xr

from forge import ConcatDim, FilePattern, XarrayZarrRecipe
from forge.engine.append import plan_append
from forge.engine.caching import cache_batch, plan_cache
from forge.engine.stages import prepare
from forge.engine.targets.zarr_target import open_group
from forge.engine.writers import store_batch
from forge.errors import RecipeError
from forge.publish.icechunk import published_session
from forge.replicas.oisst import oisst_url
from forge.run import run_locally
from forge.testing import assert_store_matches, open_store

NCEI = "https://www.ncei.noaa.gov/"
DAYS = pd.date_range("1981-09-01", periods=24)


def url(time: pd.Timestamp) -> str:
    return oisst_url(time)


def sharded(days: int, **kw) -> XarrayZarrRecipe:
    pattern = FilePattern(url, ConcatDim("time", list(DAYS[:days]), nitems_per_file=1))
    options = {"target_chunks": {"time": 4}, "target_shards": {"time": 12}, "max_write_batches": 4, **kw}
    return XarrayZarrRecipe(pattern, **options)


def group_of(url: str, target_format: str):
    if target_format == "icechunk":
        import zarr

        return zarr.open_group(published_session(url).store, mode="r", use_consolidated=False)
    return open_group(url)


def stored_shards(url: str, name: str) -> int:
    return sum(1 for p in (Path(url) / name / "c").rglob("*") if p.is_file())


def user_view(url: str) -> xr.Dataset:
    ds = open_store(url)
    ds.attrs = {k: v for k, v in ds.attrs.items() if not k.startswith("forge:")}
    return ds


@pytest.mark.parametrize("target_format", ["zarr", "icechunk"])
def test_24_days_in_two_shards_per_variable_and_an_append_into_a_partly_filled_shard(
    replica, run_spec, target_format
):
    sources = [replica.files.path_for(day) for day in DAYS]
    rewrites = ((NCEI, replica.url + "/"),)
    run = run_spec(url_rewrites=rewrites, target_format=target_format)
    one_shot = run_locally(sharded(24), run_spec(recipe_id="one-shot", url_rewrites=rewrites))
    assert_store_matches(one_shot["url"], sources)
    group = group_of(one_shot["url"], "zarr")
    for name in ("sst", "anom", "err", "ice"):
        assert (group[name].chunks, group[name].shards) == ((4, 1, 36, 72), (12, 1, 36, 72))
        assert stored_shards(one_shot["url"], name) == 2
    assert group["time"].shards is None  # coordinates stay one plain chunk

    # 18 days (the second shard half full), then the 6 that fill it: one writer rewrites that shard.
    built = run_locally(sharded(18), run)
    assert built["sizes"]["time"] == 18
    appended = run_locally(sharded(24), run, append=True)
    assert appended["appended"] == 6
    assert_store_matches(run.target_url, sources)
    xr.testing.assert_identical(user_view(run.target_url), user_view(one_shot["url"]))
    assert group_of(run.target_url, target_format)["sst"].shards == (12, 1, 36, 72)
    if target_format == "zarr":
        assert stored_shards(run.target_url, "sst") == 2


def test_an_append_into_a_shard_that_dies_midway_leaves_the_published_store_and_is_finished(
    replica, run_spec
):
    sources = [replica.files.path_for(day) for day in DAYS]
    run = run_spec(url_rewrites=((NCEI, replica.url + "/"),))
    run_locally(sharded(18), run)
    before = user_view(run.target_url)
    recipe = sharded(24)
    append_run, new = plan_append(recipe, run)
    summaries = [s for b in plan_cache(recipe, append_run) for s in cache_batch(recipe, append_run, b)]
    target, batches = prepare(recipe, append_run, summaries)
    assert len(new) == 6 and target.n_chunks == 1  # the one shard the new days fall in, written whole
    store_batch(recipe, target, batches[0])  # ... and the process dies here, the shard rewritten
    xr.testing.assert_identical(user_view(run.target_url), before)  # readers: the 18 published days
    out = run_locally(recipe, run, append=True)
    assert out["sizes"]["time"] == 24
    assert_store_matches(run.target_url, sources)


def test_shards_hold_whole_chunks_and_one_chunk_along_time_unless_told(replica, run_spec):
    rewrites = ((NCEI, replica.url + "/"),)
    with pytest.raises(
        RecipeError, match=r"target_shards\['time'\] = 10 is not a multiple of 'sst''s chunk length 4"
    ):
        run_locally(sharded(12, target_shards={"time": 10}), run_spec(url_rewrites=rewrites))
    # Shards along the other dimensions only: one chunk along time, so each shard still has one writer.
    out = run_locally(
        sharded(8, target_shards={"lat": 36}), run_spec(recipe_id="tiles", url_rewrites=rewrites)
    )
    assert open_group(out["url"])["sst"].shards == (4, 1, 36, 72)
    assert_store_matches(out["url"], [replica.files.path_for(day) for day in DAYS[:8]])
    with pytest.raises(ValueError, match="use zarr_format=3 with target_shards"):
        sharded(12, zarr_format=2)
