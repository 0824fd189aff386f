"""The flow's per-group submission window and its wait, on a real Prefect server (thread-pool and Dask
task runners)."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter

import pytest
from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner

from flows.runtime.runner import local_task_runner
from flows.runtime.windows import submit_windowed, wait_ended

pytestmark = pytest.mark.usefixtures("prefect_server")

_changed = threading.Condition()
_active: Counter[str] = Counter()
_started: Counter[str] = Counter()
_peak: Counter[str] = Counter()
_checked = threading.Event()  # the flow has looked at the last item of the narrowest window
N_PER_GROUP = 5
WINDOWS = {"a": 2, "b": 1}


def _as_full_as_allowed(group: str) -> bool:
    """As many of ``group`` are running as its window lets run while the rest wait to start."""
    allowed = WINDOWS.get(group, N_PER_GROUP)
    return _active[group] >= min(allowed, N_PER_GROUP - _started[group] + _active[group])


@task
def occupy(item: tuple[str, int]) -> tuple[str, int]:
    group = item[0]
    with _changed:
        _active[group] += 1
        _started[group] += 1
        _peak[group] = max(_peak[group], _active[group])
        _changed.notify_all()
        # Held until its group is as full as the window allows (not for a fixed time, which a loaded
        # machine outlasts); a window that lets too few run fails the peaks after this timeout.
        _changed.wait_for(lambda: _as_full_as_allowed(group), timeout=20)
    time.sleep(0.3)  # a window that lets too many run shows in the peaks
    if item == ("b", N_PER_GROUP - 1):
        _checked.wait(20)
    with _changed:
        _active[group] -= 1
        _changed.notify_all()
    if item == ("b", 1):
        raise ValueError("b1 fails")
    return item


@flow(task_runner=ThreadPoolTaskRunner(max_workers=12))
def windowed(items: list[tuple[str, int]], windows: dict[str, int]) -> list:
    futures = submit_windowed(occupy.submit, items, lambda item: item[0], windows)
    # It returns once the last is submitted: the last of the narrowest window is still running.
    assert not futures[items.index(("b", N_PER_GROUP - 1))].state.is_final()
    _checked.set()
    wait_ended(futures)
    assert all(f.state.is_final() for f in futures)
    return [None if f.state.is_failed() else f.result() for f in futures]


def test_at_most_a_window_of_each_group_at_once_and_results_in_order():
    items = [(g, i) for i in range(N_PER_GROUP) for g in "abc"]
    _peak.clear()
    _started.clear()
    _checked.clear()
    results = windowed(items, WINDOWS)
    assert _peak == {"a": 2, "b": 1, "c": N_PER_GROUP}  # c has no window: all at once
    # in item order; the failure (None) did not stop the rest of its group
    assert results == [None if x == ("b", 1) else x for x in items]


_UNPICKLED: list[int] = []


def _unpickle_traced() -> _Traced:
    _UNPICKLED.append(os.getpid())
    return _Traced()


class _Traced:
    """Notes every process that unpickles it: a task's result fetched into the flow's process shows."""

    def __reduce__(self):
        return _unpickle_traced, ()


@task
def traced(i: int) -> _Traced:
    time.sleep(0.2 * i)
    return _Traced()


@flow(task_runner=local_task_runner(1))
def ended_on_dask(n: int) -> list[bool]:
    futures = [traced.submit(i) for i in range(n)]
    wait_ended(futures)
    return [f.state.is_completed() for f in futures]


def test_waiting_on_dask_fetches_no_results():
    _UNPICKLED.clear()
    assert ended_on_dask(3) == [True, True, True]
    assert _UNPICKLED == []  # the results stayed on the worker
