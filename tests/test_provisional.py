"""Provisional files replaced by final ones (NCEI's ``_preliminary`` OISST days, ERA5T): a key is stored
from its final file where that exists, else from its provisional one, and flagged in the store's
``provisional`` coordinate; an append first replaces the provisional steps whose final file is out, then
adds the new keys, in one publish (one commit on Icechunk)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from forge import ConcatDim, FilePattern, XarrayZarrRecipe
from forge.engine.types import RunSpec
from forge.publish import icechunk as ic
from forge.run import run_locally
from forge.testing import make_dataset, open_store, write_inputs

DAYS = make_dataset(14, packed=True)


def provisional_of(day: int) -> xr.Dataset:
    """What the provisional file of a day holds: the final values, not yet corrected (warmer by 1 K)."""
    ds = DAYS.isel(time=[day])
    return ds.assign(tas=ds.tas + 1.0, pr=ds.pr + 1.0)


def publish(src: Path, finals: range, provisionals: range) -> None:
    """The source as it is on one day: these finals, these provisional files (the rest gone)."""
    for path in src.glob("*.nc"):
        path.unlink()
    write_inputs(DAYS.isel(time=list(finals)), src, 1, first_index=finals.start)
    for day in provisionals:
        provisional_of(day).to_netcdf(src / f"all_{day:04d}_preliminary.nc", engine="netcdf4")


def recipe(url: str, days: int, fmt: str) -> XarrayZarrRecipe:
    pattern = FilePattern(
        lambda time: f"{url}/all_{time:04d}.nc",
        ConcatDim("time", list(range(days)), nitems_per_file=1),
        provisional=lambda time: f"{url}/all_{time:04d}_preliminary.nc",
    )
    return XarrayZarrRecipe(pattern, target_chunks={"time": 3}, target_format=fmt)


def expected(finals: int, days: int) -> tuple[xr.Dataset, list[bool]]:
    parts = [DAYS.isel(time=[d]) if d < finals else provisional_of(d) for d in range(days)]
    return xr.concat(parts, "time"), [d >= finals for d in range(days)]


@pytest.mark.parametrize("fmt", ["zarr", "icechunk"])
def test_provisional_days_are_stored_flagged_and_replaced_by_their_final_files(served, tmp_path, fmt, caplog):
    src = Path(served.root)
    run = RunSpec("demo", "demo", str(tmp_path / "target"), str(tmp_path / "cache"), target_format=fmt)
    publish(src, range(0, 8), range(8, 12))  # 8 final days, 4 preliminary
    run_locally(recipe(served.url, 12, fmt), run)
    store = open_store(run.target_url)
    want, flags = expected(8, 12)
    np.testing.assert_allclose(store.tas.values, want.tas.values, rtol=1e-6)
    assert store["provisional"].values.tolist() == flags
    commits = len(ic.history(run.target_url)) if fmt == "icechunk" else 0

    # Two of them become final (their preliminary files deleted), two new preliminary days appear.
    publish(src, range(0, 10), range(10, 14))
    served.reset_counts()
    out = run_locally(recipe(served.url, 14, fmt), run, append=True)
    store = open_store(run.target_url)
    want, flags = expected(10, 14)
    assert store.sizes["time"] == 14 and out["appended"] == 6  # days 8 to 13 written again or anew
    for name in ("tas", "pr"):
        np.testing.assert_allclose(store[name].values, want[name].values, rtol=1e-6)
    np.testing.assert_array_equal(store.time.values, DAYS.time.values)
    assert store["provisional"].values.tolist() == flags
    fetched = {path for method, path, _, _ in served.seen if method == "GET"}
    assert {"/all_0008.nc", "/all_0009.nc", "/all_0012_preliminary.nc", "/all_0013_preliminary.nc"} <= fetched
    assert "/all_0010_preliminary.nc" not in fetched  # still provisional: read again from the cache
    if fmt == "icechunk":
        assert len(ic.history(run.target_url)) == commits + 1  # one commit: replacements and new days
    # The catalog says how far each kind goes.
    collection = json.loads((tmp_path / "target" / "demo" / "collection.json").read_text())
    days = [str(t)[:10] for t in DAYS.time.values]
    assert collection["forge:final_through"][:10] == days[9]
    assert collection["forge:provisional_through"][:10] == days[13]

    # A preliminary file withdrawn with no final one: the day is kept (from the cache), and said.
    before = open_store(run.target_url)
    publish(src, range(0, 10), range(11, 14))
    with caplog.at_level(logging.WARNING, logger="forge.engine.append"):
        again = run_locally(recipe(served.url, 14, fmt), run, append=True)
    assert again["appended"] == 0
    assert "all_0010.nc: neither the final nor the provisional file is at the source any more" in caplog.text
    xr.testing.assert_identical(open_store(run.target_url), before)
    publish(src, range(0, 10), range(10, 14))

    # The same as one build of the source as it is now.
    fresh = RunSpec("demo", "demo", str(tmp_path / "fresh"), str(tmp_path / "cache2"), target_format=fmt)
    run_locally(recipe(served.url, 14, fmt), fresh)
    xr.testing.assert_identical(open_store(fresh.target_url), store)
