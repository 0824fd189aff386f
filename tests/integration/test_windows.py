"""The flow's per-group submission window, on a real Prefect server with a thread-pool task runner."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from prefect import flow, task
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from flows.windows import submit_windowed

pytestmark = pytest.mark.usefixtures("prefect_server")

_lock = threading.Lock()
_active: Counter[str] = Counter()
_peak: Counter[str] = Counter()


@task
def occupy(item: tuple[str, int]) -> tuple[str, int]:
    group = item[0]
    with _lock:
        _active[group] += 1
        _peak[group] = max(_peak[group], _active[group])
    time.sleep(0.3)
    with _lock:
        _active[group] -= 1
    if item == ("b", 1):
        raise ValueError("b1 fails")
    return item


@flow(task_runner=ThreadPoolTaskRunner(max_workers=12))
def windowed(items: list[tuple[str, int]], windows: dict[str, int]) -> list:
    futures = submit_windowed(occupy.submit, items, lambda item: item[0], windows)
    # It returns once the last is submitted: the last of the narrowest window is still running.
    assert not futures[items.index(("b", 4))].state.is_final()
    wait(futures)
    return [None if f.state.is_failed() else f.result() for f in futures]


def test_at_most_a_window_of_each_group_at_once_and_results_in_order():
    items = [(g, i) for i in range(5) for g in "abc"]
    _peak.clear()
    results = windowed(items, {"a": 2, "b": 1})
    assert _peak == {"a": 2, "b": 1, "c": 5}  # c has no window: all at once
    # in item order; the failure (None) did not stop the rest of its group
    assert results == [None if x == ("b", 1) else x for x in items]
