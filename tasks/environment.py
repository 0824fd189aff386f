"""A run's environment on workers that serve many runs (the Dask workers ``forge run`` keeps).

A kept worker was started by some earlier run, from some folder, with that run's environment. What a task
reads from its process (secrets, object-storage credentials and endpoints, URL rewrites, relative paths)
must be its own run's: the run sends its environment and folder to the workers as a Dask worker plugin
named after its flow run (flows/runtime/runner.py), held in the workers' memory only, never in a task's
parameters, a log or the Prefect database; each stage task runs inside :func:`run_environment` of its flow
run. The workers are single-threaded processes, so one task at a time sees the process's environment.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from distributed import WorkerPlugin

# The worker's own: its Prefect settings (the same server for every run), Dask's and the thread limits
# the nanny set for it.
WORKER_OWN_PREFIXES = ("PREFECT_", "DASK_")
WORKER_OWN = {"OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_"}

_RUNS: dict[str, RunEnvironment] = {}
_applied: list[RunEnvironment] = []  # the environment the process last had applied


def _worker_own(name: str) -> bool:
    return name.startswith(WORKER_OWN_PREFIXES) or name in WORKER_OWN


@dataclass(frozen=True)
class RunEnvironment:
    """A run's environment variables and folder (``repr`` names neither values nor secrets)."""

    variables: Mapping[str, str] = field(repr=False)
    cwd: str = field(repr=False)

    @classmethod
    def of_this_process(cls) -> RunEnvironment:
        own = {k: v for k, v in os.environ.items() if not _worker_own(k)}
        return cls(own, os.getcwd())


class RunEnvironmentPlugin(WorkerPlugin):
    """A Dask worker plugin holding one flow run's environment on every worker, new ones included."""

    def __init__(self, flow_run_id: str, environment: RunEnvironment) -> None:
        self.flow_run_id = flow_run_id
        self.environment = environment

    def setup(self, worker: Any) -> None:
        _RUNS[self.flow_run_id] = self.environment

    def teardown(self, worker: Any) -> None:
        _RUNS.pop(self.flow_run_id, None)


def plugin_name(flow_run_id: str) -> str:
    return f"forge-run-environment-{flow_run_id}"


@contextlib.contextmanager
def run_environment(flow_run_id: str | None) -> Iterator[None]:
    """The process's environment and folder are the run's while the block runs, then what they were.
    A run that sent none (a worker of its own, a deployment's) leaves them as they are."""
    environment = _RUNS.get(str(flow_run_id)) if flow_run_id else None
    if environment is None:
        yield
        return
    before, cwd = dict(os.environ), os.getcwd()
    _apply(environment.variables)
    with contextlib.suppress(OSError):  # a folder deleted since: paths are absolute where it matters
        os.chdir(environment.cwd)
    if _applied != [environment]:
        _forget_clients()
        _applied[:] = [environment]
    try:
        yield
    finally:
        _apply(before, everything=True)
        with contextlib.suppress(OSError):
            os.chdir(cwd)


def _apply(variables: Mapping[str, str], everything: bool = False) -> None:
    for name in [k for k in os.environ if k not in variables and (everything or not _worker_own(k))]:
        del os.environ[name]
    os.environ.update({k: v for k, v in variables.items() if everything or not _worker_own(k)})


def _forget_clients() -> None:
    """fsspec keeps a filesystem per set of arguments, with the credentials it read from the environment
    when it was made: another run's environment must not reach storage through them."""
    import fsspec

    def subclasses(cls: type) -> Iterator[type]:
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    for cls in subclasses(fsspec.AbstractFileSystem):
        cls.clear_instance_cache()
