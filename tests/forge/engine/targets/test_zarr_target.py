"""The Zarr target: a store rebuilt beside the published one is swapped in only over what the rebuild
began from; an append's marker says where it started."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from forge.engine.attrs import FINGERPRINT_ATTR
from forge.engine.target import began
from forge.engine.targets import target_at
from forge.engine.targets.zarr_target import ZarrTarget, pending_marker, staging_url, swap_in
from forge.engine.types import RunSpec
from forge.publish.transaction import RebuildBehind


def store(url: str, days: int, fingerprint: str) -> None:
    ds = xr.Dataset({"tas": ("time", np.arange(days, dtype="f4"))}, attrs={FINGERPRINT_ATTR: fingerprint})
    ds.to_zarr(url, mode="w", consolidated=True)


def days_at(url: str) -> int:
    return xr.open_zarr(url).sizes["time"]


@pytest.fixture
def rebuilt(tmp_path: Path) -> tuple[str, str]:
    """A published store (fingerprint "a", 10 days) and a rebuild of it beside it (12 days)."""
    url = str(tmp_path / "demo" / "v1.zarr")
    store(url, 10, "a")
    store(staging_url(url), 12, "b")
    return staging_url(url), url


def test_the_rebuild_is_built_beside_the_published_store(tmp_path: Path):
    assert staging_url(f"{tmp_path}/demo/v1.zarr") == f"{tmp_path}/demo/.v1.zarr.next"
    assert staging_url("s3://bucket/t/demo/v1.zarr") == "s3://bucket/t/demo/.v1.zarr.next"


def test_a_rebuild_swaps_in_over_what_it_began_from(rebuilt):
    staged, url = rebuilt
    swap_in(staged, url, "a")
    assert days_at(url) == 12 and not Path(staged).exists()


def test_a_rebuild_that_an_append_overtook_catches_up_first(rebuilt):
    staged, url = rebuilt
    store(url, 11, "a+1")  # an append published
    with pytest.raises(RebuildBehind) as behind:
        swap_in(staged, url, "a")
    assert behind.value.catch_up.url == staged and behind.value.catch_up.base == "a+1"
    assert days_at(url) == 11 and days_at(staged) == 12  # nothing moved


def test_a_rebuild_never_swaps_while_an_append_is_writing(rebuilt):
    staged, url = rebuilt
    marker, key = pending_marker(url)
    marker.write_text(key, '{"from_inputs": 10, "from_length": 10}')
    assert ZarrTarget(url).interrupted_append() == {"from_inputs": 10, "from_length": 10}
    with pytest.raises(RebuildBehind, match="an append is writing to it"):
        swap_in(staged, url, "a")
    assert days_at(url) == 10


def test_a_build_notes_what_was_published_when_it_began(rebuilt, tmp_path: Path):
    _, url = rebuilt
    assert target_at(url, "zarr").published_id() == "a"
    assert target_at(str(tmp_path / "none.zarr"), "zarr").published_id() == ""
    run = RunSpec("demo", "demo", str(tmp_path), str(tmp_path / "cache"), version="1.0")
    assert run.target_url == url and began(run).published_base == "a"
    assert began(RunSpec("d", "d", str(tmp_path), "c", append_from=3)).published_base is None  # appends
