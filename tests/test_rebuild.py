"""A rebuild beside scheduled appends: readers keep the published store until the rebuild, caught up with
everything appended meanwhile, replaces it in one step; no append is ever dropped."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
import xarray as xr

from forge.engine.targets import target_at
from forge.engine.types import RunSpec
from forge.publish import icechunk as ic
from forge.recipe.loading import load_recipe
from forge.replicas.server import SourceServer
from forge.run import run_locally
from forge.testing import HeldFile, assert_store_matches, make_dataset, open_store, write_inputs

# The recipe's calendar is the days the source has when it is read, as "dates up to today" is.
RECIPE = """
from pathlib import Path

from forge import ConcatDim, FilePattern, XarrayZarrRecipe

DAYS = len(list(Path({src!r}).glob("all_*.nc")))
pattern = FilePattern(
    lambda time: f"{url}/all_{{time:04d}}.nc", ConcatDim("time", list(range(DAYS)), nitems_per_file=1)
)
recipe = XarrayZarrRecipe(pattern, target_chunks={{"time": 3}}, max_write_batches=2)
"""


def version_of(run: RunSpec) -> str:
    """The dataset version readers see at the run's target."""
    return target_at(run.target_url, run.target_format).published_group().attrs["forge:dataset_version"]


@pytest.mark.parametrize("fmt", ["zarr", "icechunk"])
def test_appends_during_a_rebuild_are_caught_up_and_the_result_equals_a_one_shot_build(tmp_path, fmt):
    days = make_dataset(14, packed=True)
    later = write_inputs(days, tmp_path / "later", 1)
    src = tmp_path / "src"
    src.mkdir()
    gate = HeldFile(src, "/all_0009.nc")

    def land(n: int) -> None:  # the source's next days come out
        for path in later[:n]:
            if not (src / path.name).exists():
                (src / path.name).write_bytes(path.read_bytes())

    with SourceServer(generate=gate) as server:
        folder = tmp_path / "demo"
        folder.mkdir()
        (folder / "recipe.py").write_text(RECIPE.format(src=str(src), url=server.url))
        ref = str(folder / "recipe.py")
        run = RunSpec(ref, "demo", str(tmp_path / "target"), str(tmp_path / "cache"), target_format=fmt)
        published = replace(run, version="1.0")
        land(10)
        run_locally(load_recipe(ref), published)

        # The rebuild (a new minor version, its own cache) stops at its last download...
        gate.hold()
        rebuild = replace(run, version="1.1", cache_root=str(tmp_path / "cache-rebuild"))
        result: dict = {}
        thread = threading.Thread(
            target=lambda: result.update(run_locally(load_recipe(ref, fresh=True), rebuild)), daemon=True
        )
        thread.start()
        assert gate.reached.wait(60), "the rebuild never reached its last download"

        # ... while the scheduled appends go on publishing: readers see them, on the published version.
        for n in (12, 14):
            land(n)
            out = run_locally(load_recipe(ref, fresh=True), published, append=True)
            assert out["appended"] == 2
            assert open_store(published.target_url).sizes["time"] == n
            assert version_of(published) == "1.0"

        gate.release()
        thread.join(120)
        assert not thread.is_alive() and result, "the rebuild did not finish"

    # One step replaced the published store by the rebuild, caught up with both appends.
    assert version_of(published) == "1.1"
    assert_store_matches(published.target_url, later)
    if fmt == "icechunk":
        newest = ic.history(published.target_url)[0]
        assert "caught up" in newest.message and newest.metadata["forge:kind"] == "build"
        repo = ic.open_repository(published.target_url)
        assert [b for b in repo.list_branches() if b.startswith(ic.RUN_BRANCH_PREFIX)] == []
    else:
        assert not (tmp_path / "target" / "demo" / ".v1.zarr.next").exists()

    one_shot = run_locally(load_recipe(ref, fresh=True), replace(run, recipe_id="one-shot", version="1.1"))
    xr.testing.assert_identical(open_store(published.target_url), open_store(one_shot["url"]))
