"""The local Dask task runner: a cluster of single-threaded processes on this machine.

Processes, not threads: decoding HDF5 holds the GIL, and netCDF/HDF5 from many threads has hung and
crashed in the original project. Kubernetes bakeries get theirs from flows/bakery.py.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import dask
import distributed.utils  # (also registers the distributed.* config read below)
from distributed import Nanny
from prefect_dask import DaskTaskRunner

from flows.runtime.forkserver import PRELOAD, preload_forkserver
from tasks.environment import RunEnvironment, RunEnvironmentPlugin, plugin_name

# Dask's statistical profiler wakes every 10 ms to sample each worker's task thread, and has to take the
# GIL from it to do so: the cache stage of 16,500 tiny inputs (pure Python per input) used 13% more worker
# CPU with it on. Only the dashboard's Profile page needs it; the task stream and the rest stay.
# Every scheduler, nanny and worker also wakes 50 times a second to time its event loop (the "event loop
# unresponsive" warning) and twice a second for the dashboard's CPU and memory plots: an idle local
# cluster of two used 2.4 CPU-seconds per 30 s with those, 0.9 with these (the memory monitor that spills
# and restarts workers keeps its 100 ms).
CLUSTER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
}


def config_env(config: dict) -> dict[str, str]:
    """``config`` as the DASK_* environment variables that set it in a process started elsewhere."""
    return {"DASK_" + key.upper().replace(".", "__").replace("-", "_"): str(v) for key, v in config.items()}


def worker_environ() -> dict[str, str | int]:
    """Dask's worker environment without ``MALLOC_TRIM_THRESHOLD_``.

    Setting that variable turns off glibc's dynamic mmap threshold, so every multi-megabyte buffer
    (decompressed input, chunk, encoded chunk) is mmap'd and page-faulted afresh: the store step ran 1.3x
    slower on workers than in a plain process pool (benchmarks/results/throughput-120d.txt).
    """
    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    return env


def local_workers(workers: int | None = None) -> int:
    """Worker processes of the local cluster: ``workers``, else FORGE_DASK_WORKERS, else one per core."""
    return workers or int(os.environ.get("FORGE_DASK_WORKERS", 0)) or os.cpu_count() or 1


class CurrentEnvironmentNanny(Nanny):
    """A nanny whose worker gets the environment of the process starting the cluster, as it is then.

    Forked from the fork server, a worker would have the fork server's environment: this process's when
    that started, perhaps runs ago (secrets are looked up in it). Variables removed since stay set.
    """

    def __init__(self, *args: Any, env: dict | None = None, **kwargs: Any) -> None:
        super().__init__(*args, env={**os.environ, **(env or {})}, **kwargs)


def local_cluster_kwargs(workers: int | None = None) -> dict:
    """``LocalCluster`` arguments: one single-threaded worker process per core (or ``workers``), forked
    from a server that imported the tasks' modules once (flows/runtime/forkserver.py), rather than each
    importing them in its first task."""
    # The nannies hand this process's Dask config to the workers they spawn.
    dask.config.set(
        {
            "distributed.nanny.pre-spawn-environ": worker_environ(),
            "distributed.worker.multiprocessing-method": "forkserver",
            **CLUSTER_CONFIG,
        }
    )
    distributed.utils.get_mp_context()  # Dask sets its own preload list once, on first use ...
    preload_forkserver()  # ... which ours replaces (nothing starts here: the first worker starts it)
    return {
        "n_workers": local_workers(workers),
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": ":0",
        "preload": [PRELOAD],
        "worker_class": CurrentEnvironmentNanny,
    }


def local_task_runner(workers: int | None = None) -> DaskTaskRunner:
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster", cluster_kwargs=local_cluster_kwargs(workers)
    )


class KeptWorkersTaskRunner(DaskTaskRunner):
    """The task runner on workers that serve many runs (``forge run``'s kept cluster): before a flow run
    submits its first task, its environment and folder go to every worker as a plugin named after the
    flow run (tasks/environment.py), removed when the run's task runner closes. Through Dask, not the
    tasks' parameters: nothing of it reaches the Prefect database or a log."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shared: list[str] = []

    def submit(self, task: Any, parameters: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
        flow_run_id = str(context.flow_run.id) if context and context.flow_run else None
        if flow_run_id and flow_run_id not in self._shared:
            plugin = RunEnvironmentPlugin(flow_run_id, RunEnvironment.of_this_process())
            self.client.register_plugin(plugin, name=plugin_name(flow_run_id))
            self._shared.append(flow_run_id)
        return super().submit(task, parameters, *args, **kwargs)

    def __exit__(self, *args: Any) -> None:
        for flow_run_id in self._shared:
            with contextlib.suppress(Exception):  # the cluster may be gone; so are its plugins
                self.client.unregister_worker_plugin(plugin_name(flow_run_id))
        self._shared.clear()
        super().__exit__(*args)
