"""`forge replica`: the OISST replica served on loopback, throttled like a busy source server."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import xarray as xr

from forge.replicas.oisst import OISST_ROOT, oisst_url
from tests.integration.helpers import free_port

FORGE = Path(sys.executable).parent / "forge"


def test_replica_command_serves_oisst_files_with_the_requested_delay_up_to_the_last_day(tmp_path):
    port = free_port()
    command = [str(FORGE), "replica", "--port", str(port), "--dir", str(tmp_path), "--delay", "0.5"]
    command += ["--last-day", "1981-09-02"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = server.stdout.readline()
        assert f"127.0.0.1:{port}" in banner, banner + server.stdout.read()
        local = oisst_url(pd.Timestamp("1981-09-01"), root=f"http://127.0.0.1:{port}/")
        assert local.endswith(oisst_url(pd.Timestamp("1981-09-01"))[len(OISST_ROOT) :])
        t0 = time.perf_counter()
        response = httpx.get(local, timeout=60)
        elapsed = time.perf_counter() - t0
        assert response.status_code == 200 and response.content[:4] == b"\x89HDF"
        assert elapsed >= 0.5, f"--delay 0.5 was not applied ({elapsed:.2f}s)"
        unreleased = oisst_url(pd.Timestamp("1981-09-03"), root=f"http://127.0.0.1:{port}/")
        assert httpx.head(unreleased, timeout=60).status_code == 404, "--last-day: later days not served"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_append_dry_run_from_the_command_line_lists_what_the_source_has(tmp_path):
    """`forge run --append --dry-run` asks the source (the replica), needs no Prefect, writes nothing."""
    from forge.engine.types import RunSpec
    from forge.recipe.loading import load_recipe
    from forge.replicas.oisst import OisstReplica
    from forge.replicas.server import SourceServer
    from forge.run import run_locally

    replica_dir, target = tmp_path / "replica", tmp_path / "target"
    with SourceServer(generate=OisstReplica(replica_dir).generate) as source:
        run = RunSpec("noaa-oisst", "noaa-oisst", str(target), str(tmp_path / "cache"), 2)
        run = RunSpec(
            **{**run.__dict__, "url_rewrites": ((OISST_ROOT.split("/data/")[0] + "/", source.url + "/"),)}
        )
        run_locally(load_recipe("noaa-oisst").pruned(2), run)
    before = sorted(p.name for p in target.rglob("*"))
    command = [str(FORGE), "run", "noaa-oisst", "--prune", "4", "--append", "--dry-run", "--local-replica"]
    command += ["--replica-dir", str(replica_dir), "--target-root", str(target)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "would append 2 inputs" in out.stdout, out.stdout
    assert "19810903.nc" in out.stdout and "19810904.nc" in out.stdout
    assert "Prefect API" not in out.stdout, "answered without starting Prefect"
    assert sorted(p.name for p in target.rglob("*")) == before


def test_the_replica_publishes_preliminary_days_and_replaces_them_as_ncei_does(tmp_path):
    """On its today: a day's preliminary file from the next day on, its final file (and no preliminary
    one) from fifteen days on; the OISST recipe asks for both kinds at the replica's paths."""
    from urllib.parse import urlsplit

    from forge.recipe.loading import load_recipe
    from forge.replicas.oisst import OisstReplica

    replica = OisstReplica(tmp_path, nlat=4, nlon=8, today=pd.Timestamp("1981-10-01"))

    def out(day: str, preliminary: bool) -> bool:
        path = urlsplit(oisst_url(pd.Timestamp(day), preliminary=preliminary)).path
        return replica.generate(path) is not None

    assert out("1981-09-16", False) and not out("1981-09-16", True)  # final: fifteen days on
    assert not out("1981-09-17", False) and out("1981-09-17", True)  # preliminary until then
    assert out("1981-09-30", True) and not out("1981-10-01", True)  # out the next day
    prelim = xr.open_dataset(
        replica.generate(urlsplit(oisst_url(pd.Timestamp("1981-09-20"), preliminary=True)).path)
    )
    assert prelim.attrs["title"].endswith("- Preliminary")
    recipe = load_recipe("noaa-oisst")
    key = next(iter(recipe.pattern))
    assert recipe.pattern.provisional_url(key) == oisst_url(pd.Timestamp("1981-09-01"), preliminary=True)
    assert recipe.pattern.concat_dim.keys[-1] == pd.Timestamp.now(tz="UTC").tz_localize(
        None
    ).normalize() - pd.Timedelta(days=1)
