"""A local Dask cluster kept between runs: ``python -m flows.runtime.kept_cluster STATE WORKERS FINGERPRINT``.

Launched in the background by ``forge run`` (flows/server.py) with the run's environment, it records its
scheduler's address in STATE and runs until it is stopped (``forge server stop``) or its scheduler has
been idle for 30 minutes. Runs made with the same environment and code connect to it: their first
download starts without waiting for workers to start (benchmarks/startup.py).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

IDLE_TIMEOUT = "30 minutes"


def main(state: Path, workers: int, fingerprint: str) -> None:
    import dask
    from distributed import LocalCluster

    from flows.runtime.runner import local_cluster_kwargs

    dask.config.set({"distributed.scheduler.idle-timeout": IDLE_TIMEOUT})
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    with LocalCluster(**local_cluster_kwargs(workers)) as cluster:
        record = {"pid": os.getpid(), "address": cluster.scheduler_address, "fingerprint": fingerprint}
        state.write_text(json.dumps({**record, "started": time.time()}))
        while not stopping and cluster.scheduler.status.name == "running":
            time.sleep(0.5)
    if state.exists() and json.loads(state.read_text()).get("pid") == os.getpid():
        state.unlink()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
