"""What a Prefect task run costs on the Dask task runner: many small tasks on the local stack.

Run by hand: ``python benchmarks/task_runs.py --tasks 40 --repeat 6``. Each task burns ``--cpu-ms`` of CPU;
the ideal wall time is their CPU divided among the workers, and what the flow takes beyond it, per task
run on each worker, is what orchestration costs per task run. Flows alternate between the way the
``recipe`` flow runs its tasks (Prefect's settings serialized once per flow run,
``flows/settings_once``) and Prefect's own way (dumped for every submission, rebuilt for every task run),
on one Prefect server and Dask cluster, started once.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect import flow, task  # noqa: E402


@task
def burn(cpu_seconds: float) -> float:
    start = time.process_time()
    while time.process_time() - start < cpu_seconds:
        pass
    return cpu_seconds


def many(n: int, cpu_seconds: float) -> float:
    futures = [burn.submit(cpu_seconds) for _ in range(n)]
    return sum(f.result() for f in futures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--cpu-ms", type=float, default=50.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=6, help="pairs of flows, every other one in reverse")
    args = parser.parse_args()
    os.environ["FORGE_DASK_WORKERS"] = str(args.workers)
    from flows.cli import quiet_prefect_env

    quiet_prefect_env()
    from flows.local import run_stack
    from flows.runtime.settings_once import settings_serialized_once

    ways = {
        "settings serialized once (the recipe flow)": settings_serialized_once(many),
        "Prefect's own": many,
    }
    walls: dict[str, list[float]] = {name: [] for name in ways}
    with run_stack(keep_server=False) as runner:
        flows = {name: flow(name="many", task_runner=runner)(fn) for name, fn in ways.items()}
        for f in flows.values():
            f(args.workers, 0.0)  # the workers' first task runs, and the server's first requests
        for i in range(args.repeat):
            for name in list(flows)[:: 1 if i % 2 == 0 else -1]:
                t0 = time.perf_counter()
                flows[name](args.tasks, args.cpu_ms / 1000)
                walls[name].append(time.perf_counter() - t0)
                print(f"run {i + 1}, {name}: {walls[name][-1]:.2f} s", file=sys.__stdout__, flush=True)

    ideal = args.tasks * args.cpu_ms / 1000 / args.workers
    shape = f"{args.tasks} tasks of {args.cpu_ms:.0f} CPU-ms, {args.workers} Dask workers"
    print(f"\n{shape}, {os.cpu_count()} cores")
    print(f"(medians of {args.repeat} flows each; ideal wall {ideal:.2f} s)")
    for name, seconds in walls.items():
        wall = statistics.median(seconds)
        per_task = 1000 * (wall - ideal) / (args.tasks / args.workers)
        print(f"{name:44s} wall {wall:5.2f} s   beyond the ideal per task run {per_task:4.0f} ms")


if __name__ == "__main__":
    main()
