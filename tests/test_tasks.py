"""What the Prefect layer adds around the core: cheap task-run names for batches, the API clients' CA file,
the flow's process kept out of full garbage collections."""

from __future__ import annotations

import gc
import os
import ssl
from pathlib import Path

import cloudpickle
import pytest
from dask.tokenize import tokenize

from flows.local import one_root_bundle
from flows.recipe import recipe
from tasks.common import Opaque


class Unpicklable:
    """A batch stand-in that fails the test if anything pickles it."""

    def __reduce__(self):
        raise AssertionError("the batch was pickled")


def test_batches_are_named_without_pickling_them():
    batch, other = Opaque(Unpicklable()), Opaque(Unpicklable())
    assert tokenize(batch) == tokenize(batch)
    assert tokenize(batch) != tokenize(other)


def test_one_root_bundle_loads_one_certificate(tmp_path: Path):
    path = one_root_bundle(tmp_path)
    assert Path(path).read_text().count("BEGIN CERTIFICATE") == 1
    assert ssl.create_default_context(cafile=path).cert_store_stats()["x509_ca"] == 1


def test_the_local_servers_clients_use_the_one_root_bundle(prefect_server):
    from prefect.settings import get_current_settings

    path = get_current_settings().api.ssl_cert_file
    assert path == os.environ["PREFECT_API_SSL_CERT_FILE"]  # what the Dask workers inherit
    assert Path(path).read_text().count("BEGIN CERTIFICATE") == 1


def test_the_recipe_flow_runs_with_what_was_loaded_frozen_then_unfreezes(monkeypatch):
    seen = []

    def first_step(*args):
        seen.append(gc.get_freeze_count())
        raise RuntimeError("a failed run")

    monkeypatch.setattr("flows.recipe.run_spec", first_step)  # the module the flow's body looks it up in
    before = gc.get_freeze_count()  # 0 on Python 3.11; 3.12 starts with a few hundred of its own
    assert before < 1000
    with pytest.raises(RuntimeError, match="a failed run"):
        recipe.fn("any-recipe")  # the flow's body, without Prefect's engine
    assert seen[0] > 100_000  # Prefect, Dask and xarray's objects
    assert gc.get_freeze_count() <= before  # unfrozen after the run, a failed one too
    cloudpickle.dumps(recipe)  # what Prefect does with the flow for every task it submits to Dask


def test_the_workers_fork_server_does_not_import_icechunk():
    """Workers are forked from a server that imported the tasks: a process that has imported icechunk 2
    cannot fork (the child's first Icechunk call through zarr never returns), so the stages import it
    only when they use it."""
    import subprocess
    import sys

    check = "import sys, flows.runtime.worker_preload; print('icechunk' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stdout + done.stderr[-2000:]
