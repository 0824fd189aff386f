"""`forge replica`: the OISST replica served on loopback, throttled like a busy source server."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd

from forge.replica import OISST_ROOT, oisst_url
from tests.integration.helpers import free_port

FORGE = Path(sys.executable).parent / "forge"


def test_replica_command_serves_oisst_files_with_the_requested_delay(tmp_path):
    port = free_port()
    command = [str(FORGE), "replica", "--port", str(port), "--dir", str(tmp_path), "--delay", "0.5"]
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
    finally:
        server.terminate()
        server.wait(timeout=30)
