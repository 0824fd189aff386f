"""One scenario on both runners, for each kind of target: the local runner and the Prefect flow execute
the same stages (forge.engine.stages.run_stages), so a build, an append and a failing input give
identical stores (copies, or references read back from the sources) and the same error."""

from __future__ import annotations

from pathlib import Path

import pytest
import xarray as xr

from forge.engine.references import open_references
from forge.errors import ForgeError
from forge.recipe.loading import load_recipe
from forge.run import run_locally
from forge.testing import (
    assert_same_dataset,
    assert_store_matches,
    make_dataset,
    open_sources,
    open_store,
    write_inputs,
)
from tests.integration.helpers import local_run, run_flow, write_recipe

pytestmark = pytest.mark.usefixtures("prefect_server")


def read_back(url: str) -> xr.Dataset:
    """References as readers open them, their chunks read from the sources, forge's attributes aside."""
    ds = open_references(url).load()
    ds.attrs = {k: v for k, v in ds.attrs.items() if not k.startswith("forge:")}
    return ds


@pytest.mark.parametrize(
    "fmt, references",
    [("zarr", False), ("icechunk", False), ("json", True), ("icechunk", True)],
    ids=["zarr", "icechunk", "kerchunk-json", "icechunk-references"],
)
def test_both_runners_build_append_and_fail_alike(served, tmp_path, fmt, references):
    paths = write_inputs(make_dataset(10, packed=True), Path(served.root), 1)
    kind = fmt if references else None

    def calendar(days: int) -> Path:
        return write_recipe(tmp_path, days, chunk=4, references=kind)

    recipe_dir = calendar(6)
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
        if references:
            assert_same_dataset(read_back(flow_url), open_sources(paths[:days]))
            xr.testing.assert_identical(read_back(local_url), read_back(flow_url))
        else:
            assert_store_matches(flow_url, paths[:days])
            xr.testing.assert_identical(open_store(local_url), open_store(flow_url))

    built, state = local(), flow()
    assert state.is_completed(), state.message
    alike(built["url"], state.result()["url"], 6)

    calendar(8)  # two more days in the calendar
    appended, state = local(append=True), flow(append=True)
    assert state.is_completed(), state.message
    assert appended["appended"] == state.result()["appended"] == 2
    flow_url = state.result()["url"]
    alike(appended["url"], flow_url, 8)

    (Path(served.root) / "all_0008.nc").write_bytes(b"not a netCDF file")  # a broken input lands
    calendar(10)
    with pytest.raises(ForgeError, match="all_0008.nc") as failed_locally:
        local(append=True)
    state = flow(append=True)
    assert state.is_failed() and "all_0008.nc" in state.message
    assert str(failed_locally.value) in state.message  # the same cause, in the flow run's state
    alike(appended["url"], flow_url, 8)  # neither published anything of it
