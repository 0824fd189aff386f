"""Task runs on Dask workers get the flow's Prefect settings, serialized once and never rebuilt."""

from __future__ import annotations

import os
import pickle

import pydantic_settings
import pytest
from prefect import flow, task
from prefect.context import hydrated_context, serialize_context
from prefect.settings import (
    PREFECT_API_KEY,
    PREFECT_CLIENT_MAX_RETRIES,
    get_current_settings,
    temporary_settings,
)

from flows.runtime.runner import local_task_runner
from flows.runtime.settings_once import settings_serialized_once

pytestmark = pytest.mark.usefixtures("prefect_server")


@task
def seen_on_worker() -> tuple[int, int, str]:
    settings = get_current_settings()
    return os.getpid(), settings.client.max_retries, settings.api.url


@flow(task_runner=local_task_runner(1))
@settings_serialized_once
def three_task_runs() -> list[tuple[int, int, str]]:
    return [seen_on_worker.submit().result() for _ in range(3)]


def test_task_runs_on_a_worker_get_the_flows_settings():
    # Set in this process only, as `forge run` sets the API URL: a worker can get it only from the flow,
    # which still sends it (Prefect's own way did too).
    with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 2}):
        seen = three_task_runs()
    assert {pid for pid, _, _ in seen} - {os.getpid()} == {seen[0][0]}  # one worker, not this process
    assert [(retries, url) for _, retries, url in seen] == [(2, get_current_settings().api.url)] * 3


def _hydrated_on_a_worker() -> tuple[object, object]:
    """What a task run sees of the settings (its context pickled, as a Dask worker gets it), and the
    settings as they were sent."""
    sent = pickle.loads(pickle.dumps(serialize_context()))
    with hydrated_context(sent):
        return get_current_settings(), sent["settings_context"]["settings"]


def test_hydrating_builds_no_settings(monkeypatch: pytest.MonkeyPatch):
    builds = []
    init = pydantic_settings.BaseSettings.__init__

    def counted(self, *args, **kwargs):
        builds.append(type(self).__name__)
        init(self, *args, **kwargs)

    monkeypatch.setattr(pydantic_settings.BaseSettings, "__init__", counted)
    with temporary_settings({PREFECT_API_KEY: "pnu_not-for-logs", PREFECT_CLIENT_MAX_RETRIES: 2}):
        flows_settings = get_current_settings()
        builds.clear()  # those of temporary_settings
        on_worker, sent = settings_serialized_once(_hydrated_on_a_worker)()
        assert builds == []
        assert on_worker == flows_settings and on_worker.api.key.get_secret_value() == "pnu_not-for-logs"
        assert "pnu_not-for-logs" not in repr(sent)
        _hydrated_on_a_worker()  # Prefect's own way: every nested settings model built again
        assert "Settings" in builds
