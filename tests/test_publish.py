"""Publishing on the local runner: Icechunk targets commit each run once, and only checked data.

The store stage's checks (CF valid range, missing values) and the coordinate checks apply to both formats;
with Icechunk a failed check means no commit, with Zarr the published metadata stays as it was.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from forge import ConcatDim, FilePattern, XarrayZarrRecipe
from forge.engine.append import plan_append
from forge.engine.caching import cache_batch, plan_cache
from forge.engine.stages import finalize, prepare
from forge.engine.targets.zarr_target import open_group
from forge.engine.writers import store_batch
from forge.publish import icechunk as ic
from forge.publish.validate import ValidationError
from forge.run import run_locally
from forge.testing import assert_store_matches, make_dataset, open_store, write_inputs

CHUNK = 3


def oisst_like(n: int) -> xr.Dataset:
    """Packed int16 days with the CF valid range their source declares (as OISST's sst has)."""
    ds = make_dataset(n, packed=True)
    for name in ("tas", "pr"):
        ds[name].attrs.update(valid_min=np.int16(-3000), valid_max=np.int16(5000))
    return ds


@pytest.fixture
def days20(served):
    return write_inputs(oisst_like(20), Path(served.root), 1)


def recipe_for(served, days: int, target_format: str = "icechunk") -> XarrayZarrRecipe:
    def url(time: int) -> str:
        return f"{served.url}/all_{time:04d}.nc"

    pattern = FilePattern(url, ConcatDim("time", list(range(days)), nitems_per_file=1))
    return XarrayZarrRecipe(
        pattern, target_chunks={"time": CHUNK}, max_write_batches=2, target_format=target_format
    )


def run_for(run_spec, target_format: str = "icechunk", **kw):
    return run_spec(target_format=target_format, **kw)


def user_view(url: str) -> xr.Dataset:
    ds = open_store(url)
    ds.attrs = {}
    return ds


def test_each_run_is_one_commit_and_history_and_rollback_round_trip(served, run_spec, days20):
    run = run_for(run_spec)
    built = run_locally(recipe_for(served, 10), run)
    assert built["url"].endswith("test.icechunk")
    assert_store_matches(built["url"], days20[:10])
    appended = run_locally(recipe_for(served, 20), run, append=True)
    assert appended["appended"] == 10
    assert_store_matches(appended["url"], days20)
    one_shot = run_locally(recipe_for(served, 20), run_for(run_spec, recipe_id="one-shot"))
    xr.testing.assert_identical(user_view(appended["url"]), user_view(one_shot["url"]))

    append_commit, build_commit = ic.history(run.target_url)
    assert build_commit.metadata[ic.KIND] == "build" and append_commit.metadata[ic.KIND] == "append"
    assert (
        append_commit.metadata["forge:appended_from"] == 10 and append_commit.metadata["forge:inputs"] == 10
    )
    assert append_commit.metadata["forge:recipe_id"] == "test" and "forge:version" in append_commit.metadata
    repo = ic.open_repository(run.target_url)
    assert repo.list_branches() == {"main"}  # the runs' own branches are gone once published
    # Consolidated metadata is not used with Icechunk: readers open main without it.
    store = ic.published_session(run.target_url).store
    assert xr.open_zarr(store, consolidated=False).sizes["time"] == 20

    ic.rollback(run.target_url, build_commit.id, {})
    assert user_view(run.target_url).sizes["time"] == 10
    xr.testing.assert_identical(user_view(run.target_url), user_view(one_shot["url"]).isel(time=slice(0, 10)))
    rolled_back = ic.history(run.target_url)[0]
    assert rolled_back.metadata[ic.KIND] == "rollback" and build_commit.id in rolled_back.message
    ic.rollback(run.target_url, append_commit.id, {})  # reversible
    xr.testing.assert_identical(user_view(run.target_url), user_view(one_shot["url"]))


def _prepared_append(served, run, days: int):
    recipe = recipe_for(served, days)
    append_run, _ = plan_append(recipe, run)
    summaries = [s for b in plan_cache(recipe, append_run) for s in cache_batch(recipe, append_run, b)]
    target, batches = prepare(recipe, append_run, summaries)
    return recipe, target, batches


def test_two_appends_started_together_one_commits_and_one_fails_clearly(served, run_spec, days20):
    run = run_for(run_spec)
    run_locally(recipe_for(served, 10), run)
    before = user_view(run.target_url)
    first = _prepared_append(served, run, 15)
    second = _prepared_append(served, run, 20)  # both from main as it was
    results = {}
    for name, (recipe, target, batches) in (("first", first), ("second", second)):
        stored = [store_batch(recipe, target, b) for b in batches]
        try:
            results[name] = finalize(recipe, target, {}, stored)
        except ic.PublishError as e:
            results[name] = e
    assert results["first"]["sizes"]["time"] == 15
    assert isinstance(results["second"], ic.PublishError)
    assert "main moved while this run worked" in str(results["second"]) and "published nothing" in str(
        results["second"]
    )
    xr.testing.assert_identical(user_view(run.target_url).isel(time=slice(0, 10)), before)
    assert user_view(run.target_url).sizes["time"] == 15  # the winner's, whole
    assert run_locally(recipe_for(served, 20), run, append=True)["sizes"]["time"] == 20  # a rerun goes on


KILLED_APPEND = """
import os, sys
import zarr
import forge.run
sys.path.insert(0, {tests!r})
from test_publish import recipe_for
from forge.engine.types import RunSpec

store_batch = forge.run.store_batch


def killed_at_first_write(recipe, target, batch):
    write = zarr.Array.__setitem__
    def write_then_die(self, key, value):
        write(self, key, value)
        os._exit(9)
    zarr.Array.__setitem__ = write_then_die
    return store_batch(recipe, target, batch)


class Served:
    url = {url!r}


forge.run.store_batch = killed_at_first_write
run = RunSpec("test", "test", {root!r}, {cache!r}, target_format="icechunk")
forge.run.run_locally(recipe_for(Served, 20), run, append=True)
"""


def test_an_append_killed_at_its_first_write_leaves_main_as_it_was(served, run_spec, days20, tmp_path):
    run = run_for(run_spec)
    run_locally(recipe_for(served, 10), run)
    before, tip = user_view(run.target_url), ic.open_repository(run.target_url).lookup_branch("main")
    script = KILLED_APPEND.format(
        tests=str(Path(__file__).parent), url=served.url, root=run.target_root, cache=run.cache_root
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 9, done.stderr[-2000:]
    assert ic.open_repository(run.target_url).lookup_branch("main") == tip
    xr.testing.assert_identical(user_view(run.target_url), before)
    out = run_locally(recipe_for(served, 20), run, append=True)  # the rerun starts clean, and finishes
    assert out["sizes"]["time"] == 20
    assert_store_matches(out["url"], days20)


def _spoil_day(path: Path, value: float) -> None:
    """Day 12 of the source, with values above its valid_max (in 3 cells)."""
    ds = xr.open_dataset(path).load()
    ds.close()
    ds["tas"].values[0, 1, 1:4] = value
    ds.to_netcdf(path)


@pytest.mark.parametrize("target_format", ["icechunk", "zarr"])
def test_a_day_above_valid_max_is_refused_and_nothing_published_changes(
    served, run_spec, days20, target_format
):
    run = run_for(run_spec, target_format)
    run_locally(recipe_for(served, 10, target_format), run)
    before = user_view(run.target_url)
    attrs = dict(open_group(run.target_url, mode="r").attrs) if target_format == "zarr" else None
    _spoil_day(days20[12], 60.0)  # packed 6000, valid_max 5000
    with pytest.raises(ValidationError) as info:
        run_locally(recipe_for(served, 20, target_format), run, append=True)
    message = str(info.value)
    assert "'tas' at 2000-01-13: 3 values above valid_max (5000)" in message, message
    xr.testing.assert_identical(user_view(run.target_url), before)
    if target_format == "zarr":  # the commit point readers use is untouched
        after = dict(open_group(run.target_url, mode="r").attrs)
        assert after == attrs and after["forge:concat_inputs"] == 10
        assert xr.open_zarr(run.target_url).sizes["time"] == 10  # the consolidated metadata
    else:
        assert [c.metadata[ic.KIND] for c in ic.history(run.target_url)] == ["build"]


def test_too_many_missing_values_in_a_step_are_refused(served, run_spec, days20):
    _spoil_day(days20[5], np.nan)  # 3 of 12 cells missing (one more is missing everywhere): 33%
    run = replace(run_for(run_spec), max_missing_fraction=(("tas", 0.3),))
    with pytest.raises(ValidationError, match=r"'tas' at 2000-01-06: 33.3% of its values are missing"):
        run_locally(recipe_for(served, 10), run)
    assert not ic.exists(run.target_url) or ic.history(run.target_url) == []
    fine = replace(run, max_missing_fraction=(("tas", 0.5),))
    assert run_locally(recipe_for(served, 10), fine)["sizes"]["time"] == 10


def test_a_full_build_never_shortens_a_published_store(served, run_spec, days20):
    run = run_for(run_spec)
    run_locally(recipe_for(served, 12), run)
    with pytest.raises(ValidationError, match="this build has 8 steps along 'time', the published store 12"):
        run_locally(recipe_for(served, 8), run)
    assert user_view(run.target_url).sizes["time"] == 12
    pruned = replace(run, prune=8)  # a pruned (test) build may
    assert run_locally(recipe_for(served, 12), pruned)["sizes"]["time"] == 8


READER = """
import json, os, sys, time
import numpy as np
import xarray as xr
from forge.publish.icechunk import published_session
seen, deadline = [], time.monotonic() + 300
while not os.path.exists({stop!r}) and time.monotonic() < deadline:
    ds = xr.open_zarr(published_session({url!r}).store, consolidated=False)
    seen.append([int(ds.sizes["time"]), bool((~np.isnan(ds.tas.values[:, 1:, :])).all())])
    if len(seen) == 1 or seen[-1][0] != seen[-2][0]:
        print(seen[-1][0], flush=True)  # each extent as it first sees it
print(json.dumps(seen))
"""


def test_a_polling_reader_never_sees_a_partial_append(served, run_spec, days20, tmp_path):
    run = run_for(run_spec)
    run_locally(recipe_for(served, 10), run)
    stop = tmp_path / "stop"
    script = READER.format(url=run.target_url, stop=str(stop))
    reader = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "10"  # reading
        run_locally(recipe_for(served, 20), run, append=True)
        assert reader.stdout.readline().strip() == "20"  # the next extent it saw: the whole append
    finally:
        stop.touch()
        out = reader.communicate(timeout=60)[0]
    seen = json.loads(out)
    assert {n for n, _ in seen} == {10, 20}, seen  # the old extent, then the new: nothing in between
    assert all(complete for _, complete in seen)  # every read had all of its data


def test_forge_history_and_rollback_on_the_command_line(served, run_spec, days20, tmp_path):
    run = replace(run_for(run_spec), target_root=str(tmp_path / "t"))
    recipe_file = tmp_path / "demo.py"  # the commands name the recipe; its id names the repository
    recipe_file.write_text("")
    url = str(tmp_path / "t" / "demo.icechunk")
    run_locally(recipe_for(served, 4), replace(run, recipe_id="demo"))
    run_locally(recipe_for(served, 6), replace(run, recipe_id="demo"), append=True)
    forge = [sys.executable, "-m", "flows.cli"]
    args = [str(recipe_file), "--target-root", str(tmp_path / "t")]
    listed = subprocess.run([*forge, "history", *args], capture_output=True, text=True, check=True).stdout
    lines = listed.strip().splitlines()
    assert len(lines) == 2 and "demo: append, 2 items appended" in lines[0] and "demo: build" in lines[1]
    build_id = lines[1].split()[0]
    done = subprocess.run([*forge, "rollback", *args, "--to", build_id], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert user_view(url).sizes["time"] == 4
    refused = subprocess.run(
        [*forge, "rollback", *args, "--to", "NOTASNAPSHOT"], capture_output=True, text=True
    )
    assert refused.returncode == 2 and "is not a commit forge published" in refused.stderr


ICECHUNK1 = Path(__file__).parent / "data" / "icechunk1"


def test_a_repository_of_the_icechunk_1_line_takes_appends_and_upgrades(tmp_path):
    """``demo.icechunk`` was written by this project on icechunk 1.1 (tests/data/icechunk1/make.py): the
    current stack appends to it as it is, and ``forge upgrade`` moves it to the current format."""
    from forge.engine.stages import run_spec_for
    from forge.recipe.loading import load_recipe
    from forge.replicas.server import SourceServer
    from forge.testing import forge_cli

    recipe = str(ICECHUNK1 / "demo")
    url = str(tmp_path / "target" / "demo.icechunk")
    shutil.copytree(ICECHUNK1 / "demo.icechunk", url)
    paths = write_inputs(make_dataset(4), tmp_path / "src", 1)
    assert ic.format_version(url) == 1
    with SourceServer(root=tmp_path / "src") as source:
        rewrites = {"https://data.example.org/archive/": source.url + "/"}
        run = run_spec_for(recipe, str(tmp_path / "target"), str(tmp_path / "cache"), None, rewrites)
        assert run_locally(load_recipe(recipe), run, append=True)["appended"] == 2
    assert_store_matches(url, paths)
    assert [c.metadata[ic.KIND] for c in ic.history(url)] == ["append", "build"]
    assert ic.format_version(url) == 1  # an append leaves the format as it was

    dry = forge_cli("upgrade", recipe, "--target-root", str(tmp_path / "target"), "--dry-run")
    assert dry.returncode == 0 and "from Icechunk format 1 to 2 (dry run" in dry.stdout, dry.stderr
    assert ic.format_version(url) == 1
    done = forge_cli("upgrade", recipe, "--target-root", str(tmp_path / "target"))
    assert done.returncode == 0 and "upgraded from Icechunk format 1 to 2" in done.stdout, done.stderr
    assert ic.format_version(url) == 2
    assert_store_matches(url, paths)
    assert [c.metadata[ic.KIND] for c in ic.history(url)] == ["append", "build"]
    again = forge_cli("upgrade", recipe, "--target-root", str(tmp_path / "target"))
    assert "already in Icechunk format 2" in again.stdout


def test_new_icechunk_repositories_are_in_the_current_format(tmp_path):
    txn, _ = ic.begin(str(tmp_path / "new.icechunk"))
    assert ic.format_version(txn.url) == 2
