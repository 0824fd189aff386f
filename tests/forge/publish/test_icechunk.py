"""Publishing on Icechunk: a run's branch moves ``main`` only by compare-and-swap; a rebuild that lost
the race keeps its branch, to catch up."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import zarr

from forge.publish import icechunk as ic
from forge.publish.transaction import RebuildBehind


def committed(url: str, value: int, rebuild: bool = False) -> tuple[ic.Transaction, str]:
    """A transaction that writes ``value`` into the root's attrs and commits on its branch."""
    txn, session = ic.begin(url)
    zarr.open_group(session.store, mode="a").attrs["value"] = value
    return txn, session.commit(f"value {value}", metadata={ic.KIND: "build"})


def main_value(url: str) -> int:
    return zarr.open_group(ic.published_session(url).store, mode="r").attrs["value"]


def test_the_first_to_publish_wins_and_a_plain_run_that_lost_publishes_nothing(tmp_path: Path):
    url = str(tmp_path / "r.icechunk")
    first, first_snapshot = committed(url, 1)
    second, _ = committed(url, 2)
    ic.publish(first, first_snapshot)
    with pytest.raises(ic.PublishError, match="another run published first"):
        ic.publish(second)
    assert main_value(url) == 1 and [c.message for c in ic.history(url)] == ["value 1"]


def test_a_rebuild_that_lost_keeps_its_branch_and_publishes_over_main_as_it_is_now(tmp_path: Path):
    url = str(tmp_path / "r.icechunk")
    rebuild, _ = committed(url, 1)
    append, append_snapshot = committed(url, 2)
    ic.publish(append, append_snapshot)
    with pytest.raises(RebuildBehind) as behind:
        ic.publish(rebuild, rebuild=True)
    catch_up = pickle.loads(pickle.dumps(behind.value)).catch_up  # it crosses from a worker to the flow
    assert catch_up.branch == rebuild.branch and catch_up.base == ic.tip(url)
    txn, session = ic.begin(url, catch_up=catch_up)
    assert zarr.open_group(session.store, mode="r").attrs["value"] == 1  # the rebuild's work
    ic.publish(txn, rebuild=True)
    assert main_value(url) == 1
    assert rebuild.branch not in ic.open_repository(url).list_branches()
