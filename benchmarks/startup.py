"""Start-up: from typing ``forge run`` to the first download at the source, and to the command's end.

Run by hand (not a test): ``python benchmarks/startup.py --runs 3``. The OISST recipe, pruned to
``--days`` days, reads the OISST replica, served by this process, which notes when each request arrives.
Each run is a fresh ``forge run`` process. The first run of a fresh PREFECT_HOME starts the server that
later runs find; ``--repo DIR`` runs the command from another checkout (``git worktree add DIR REV``:
the code before a change), its own server per run if that is what it does. ``--each-folder``: every run
from a folder of its own, with an environment variable of its own (as runs of different recipes from
their own checkouts are), instead of all from the checkout with the same environment.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def one_run(
    repo: Path, home: Path, work: Path, url: str, days: int, arrivals: list[float], folder: Path | None = None
) -> tuple[float, float]:
    """(seconds to the first request at the source, seconds to the command's end); ``folder``: run from
    there, with a variable of its own."""
    env = {**os.environ, "PREFECT_HOME": str(home), "PYTHONPATH": str(repo)}
    if folder is not None:
        folder.mkdir()
        env["FORGE_BENCHMARK_RUN"] = folder.name
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "flows.cli", "run", "noaa-oisst", "--prune", str(days)]
    command += ["--url-rewrite", f"https://www.ncei.noaa.gov/={url}/"]
    command += ["--target-root", str(work / "target"), "--cache-root", str(work / f"cache-{time.time_ns()}")]
    arrivals.clear()
    t0 = time.time()
    done = subprocess.run(command, cwd=folder or repo, env=env, capture_output=True, text=True)
    total = time.time() - t0
    if done.returncode:
        raise SystemExit(done.stdout[-3000:] + done.stderr[-3000:])
    return min(arrivals) - t0, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs after the first (default 3)")
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose `forge run` is timed")
    parser.add_argument("--each-folder", action="store_true", help="each run from a folder of its own")
    args = parser.parse_args()

    from forge.replicas.oisst import OisstReplica
    from forge.replicas.server import SourceServer

    with tempfile.TemporaryDirectory(prefix="forge-startup-") as scratch:
        work = Path(scratch)
        replica = OisstReplica(work / "replica")
        arrivals: list[float] = []

        def generate(path: str):
            arrivals.append(time.time())
            return replica.generate(path)

        for day in pd.date_range("1981-09-01", periods=args.days, freq="D"):
            replica.path_for(day)  # made before timing (the replica makes files on demand)
        home = work / "prefect-home"
        rows = []
        try:
            with SourceServer(generate=generate) as server:
                for i in range(args.runs + 1):
                    folder = work / f"run-{i}" if args.each_folder else None
                    first, total = one_run(args.repo, home, work, server.url, args.days, arrivals, folder)
                    rows.append(("first run" if i == 0 else f"run {i + 1}", first, total))
        finally:
            env = {**os.environ, "PREFECT_HOME": str(home), "PYTHONPATH": str(args.repo)}
            subprocess.run(
                [sys.executable, "-m", "flows.cli", "server", "stop"],
                cwd=args.repo,
                env=env,
                capture_output=True,
            )
    each = " --each-folder" if args.each_folder else ""
    print(f"# startup.py --runs {args.runs} --days {args.days} --repo {args.repo}{each}")
    print(f"# {platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{'run':12s} {'first download (s)':>20s} {'command (s)':>12s}")
    for name, first, total in rows:
        print(f"{name:12s} {first:20.2f} {total:12.2f}")
    later = sorted(first for _, first, _ in rows[1:])
    if later:
        print(f"median of the later runs: first download {later[len(later) // 2]:.2f} s")


if __name__ == "__main__":
    main()
