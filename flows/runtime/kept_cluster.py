"""A local Dask cluster kept between runs:
``python -m flows.runtime.kept_cluster STATE WORKERS FINGERPRINT IDLE_SECONDS``.

Launched in the background by ``forge run`` (flows/server.py), it records its scheduler's address in STATE
and runs until it is stopped (``forge server stop``), its scheduler has been idle for IDLE_SECONDS (0:
never), or the folder of STATE (the run's PREFECT_HOME) is deleted. Runs of the same interpreter,
packages and code connect to it, from any folder and with any environment (what a run needs of its
environment reaches the workers with the run: flows/runtime/runner.py): their first download starts
without waiting for workers to start (benchmarks/startup.py).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path


def main(state: Path, workers: int, fingerprint: str, idle: float) -> None:
    import dask
    from distributed import LocalCluster

    from flows.runtime.runner import local_cluster_kwargs

    if idle:
        dask.config.set({"distributed.scheduler.idle-timeout": f"{idle}s"})
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    with LocalCluster(**local_cluster_kwargs(workers)) as cluster:
        record = {"pid": os.getpid(), "address": cluster.scheduler_address, "fingerprint": fingerprint}
        state.write_text(json.dumps({**record, "started": time.time()}))
        while not stopping and cluster.scheduler.status.name == "running" and state.parent.exists():
            time.sleep(0.5)
    if state.exists() and json.loads(state.read_text()).get("pid") == os.getpid():
        state.unlink()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4]))
