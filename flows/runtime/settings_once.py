"""Prefect's settings, serialized once per flow run and never rebuilt on a Dask worker.

Every task run submitted to a Dask task runner carries the flow's ``SettingsContext``. Prefect dumps the
settings in the flow's process for each submission (30-50 ms: about fifty nested settings models), and
the worker builds them again from that dump for each task run, re-reading every settings source (about
50 ms). For the 14 task runs of 16,500 inputs that was over a CPU second, on a 2-core machine where the
run is CPU-bound. (Prefect's ProcessPoolTaskRunner work, PrefectHQ/prefect#20853, caches the worker's side.)

Here the task runs carry the flow's ``Settings`` object itself: pickled, it is about 11 KB and a
millisecond each way, and ``SettingsContext`` takes it as it is. A worker then runs with exactly the flow's
settings, where Prefect's rebuild would also read the worker's own PREFECT_* environment for what the flow
left unset; the local cluster's workers inherit the flow's environment and the Kubernetes bakeries' get
none of their own, so they run with the same settings either way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from prefect.context import SettingsContext
from pydantic import PrivateAttr


class _SerializedOnce(SettingsContext):
    _serialized: dict[str, Any] | None = PrivateAttr(default=None)

    def serialize(self, include_secrets: bool = True) -> dict[str, Any]:
        if not include_secrets:  # a view for display, not for a worker
            return super().serialize(include_secrets=False)
        if self._serialized is None:
            self._serialized = {**super().serialize(), "settings": self.settings}
        return dict(self._serialized)


def settings_serialized_once[**P, R](fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` (a flow's function) run in a copy of the current settings context whose task runs on Dask
    workers get the flow's settings as they are, serialized once."""

    @functools.wraps(fn)
    def with_settings_serialized_once(*args: P.args, **kwargs: P.kwargs) -> R:
        current = SettingsContext.get()
        with _SerializedOnce(profile=current.profile, settings=current.settings):
            return fn(*args, **kwargs)

    return with_settings_serialized_once
