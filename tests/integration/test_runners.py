"""One scenario on both runners, for each kind of target: the local runner and the Prefect flow execute
the same stages (forge.engine.stages.run_stages), so a build, an append and a failing input give
identical stores and the same error."""

from __future__ import annotations

from pathlib import Path

import pytest
import xarray as xr

from forge.errors import ForgeError
from forge.recipe.loading import load_recipe
from forge.run import run_locally
from forge.testing import assert_store_matches, make_dataset, open_store, write_inputs
from tests.integration.helpers import local_run, run_flow, write_recipe

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.mark.parametrize("fmt", ["zarr", "icechunk"])
def test_both_runners_build_append_and_fail_alike(served, tmp_path, fmt):
    paths = write_inputs(make_dataset(10, packed=True), Path(served.root), 1)
    recipe_dir = write_recipe(tmp_path, 6, chunk=4)
    ref = str(recipe_dir / "recipe.py")

    def local(append: bool = False) -> dict:
        run = local_run(recipe_dir, tmp_path, served, "local", "cache-local", target_format=fmt)
        return run_locally(load_recipe(ref, fresh=True), run, append=append)

    def flow(append: bool = False):
        target_root = str(tmp_path / "flow")
        return run_flow(
            recipe_dir,
            tmp_path,
            served,
            "cache-flow",
            target_root=target_root,
            target_format=fmt,
            append=append,
        )

    def alike(local_url: str, flow_url: str, days: int) -> None:
        assert_store_matches(flow_url, paths[:days])
        xr.testing.assert_identical(open_store(local_url), open_store(flow_url))

    built, state = local(), flow()
    assert state.is_completed(), state.message
    alike(built["url"], state.result()["url"], 6)

    write_recipe(tmp_path, 8, chunk=4)  # two more days in the calendar
    appended, state = local(append=True), flow(append=True)
    assert state.is_completed(), state.message
    assert appended["appended"] == state.result()["appended"] == 2
    flow_url = state.result()["url"]
    alike(appended["url"], flow_url, 8)

    (Path(served.root) / "all_0008.nc").write_bytes(b"not a netCDF file")  # a broken input lands
    write_recipe(tmp_path, 10, chunk=4)
    with pytest.raises(ForgeError, match="all_0008.nc") as failed_locally:
        local(append=True)
    state = flow(append=True)
    assert state.is_failed() and "all_0008.nc" in state.message
    assert str(failed_locally.value) in state.message  # the same cause, in the flow run's state
    alike(appended["url"], flow_url, 8)  # neither published anything of it
