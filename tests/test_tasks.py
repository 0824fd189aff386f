"""What the Prefect layer adds around the core: cheap task-run names for batches, the API clients' CA file."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from dask.tokenize import tokenize

from flows.local import one_root_bundle
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
