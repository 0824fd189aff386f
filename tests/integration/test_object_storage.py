"""A recipe whose cache and target live on object storage: S3 (moto server), GCS (gcp-storage-emulator)
and Azure Blob (azurite), each started on loopback by the test.

Credentials reach the run the way a bakery passes them: through the environment of the flow and its
workers (workload identity on a cloud). They must not appear in logs, cache keys or store attributes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import xarray as xr

import forge
from forge.io.storage import zarr_store
from forge.testing import assert_store_matches, make_dataset, write_inputs
from tests.integration.helpers import SOURCE, free_port, logs, write_recipe

pytestmark = pytest.mark.usefixtures("prefect_server")
BIN = Path(sys.executable).parent
ROOT = Path(__file__).parents[2]
# azurite's well-known development account key (public, but treated as a secret here)
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass
class Bucket:
    protocol: str
    target_root: str
    cache_root: str
    secret: str
    fs: object


def start(command: list[str], url: str, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    for _ in range(300):
        try:
            httpx.get(url, timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    pytest.fail(f"{command[0]} did not start: {log.read_text()[-2000:]}")


def azurite_bin() -> Path | None:
    for candidate in (ROOT / "node_modules" / ".bin" / "azurite-blob", shutil.which("azurite-blob")):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    return None


@pytest.fixture(params=["s3", "gcs", "azure"])
def bucket(request, tmp_path: Path, monkeypatch):
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    if request.param == "s3":
        pytest.importorskip("s3fs")
        proc = start(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            endpoint,
            tmp_path / "s3.log",
        )
        secret = "moto-SECRET-access-key-42"
        env = {
            "AWS_ACCESS_KEY_ID": "forge-test",
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }
        protocol = "s3"
    elif request.param == "gcs":
        pytest.importorskip("gcsfs")
        proc = start(
            [
                str(BIN / "gcp-storage-emulator"),
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--in-memory",
            ],
            endpoint,
            tmp_path / "gcs.log",
        )
        secret = "gcs-emulator-token-never-logged"
        env = {
            "STORAGE_EMULATOR_HOST": endpoint,
            "FORGE_TEST_GCS_TOKEN": secret,  # stands in for a credential in the environment
        }
        protocol = "gs"
    else:
        pytest.importorskip("adlfs")
        binary = azurite_bin()
        if binary is None:
            pytest.skip("azurite is not installed (npm install azurite)")
        proc = start(
            [
                str(binary),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(port),
                "--silent",
                "--skipApiVersionCheck",
                "--inMemoryPersistence",
            ],
            endpoint,
            tmp_path / "azurite.log",
        )
        secret = AZURITE_KEY
        env = {
            "AZURE_STORAGE_CONNECTION_STRING": (
                f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
                f"BlobEndpoint={endpoint}/devstoreaccount1;"
            )
        }
        protocol = "abfs"
    for k, v in env.items():
        monkeypatch.setenv(k, v)  # the flow's Dask workers inherit this environment
    import fsspec

    fs = fsspec.filesystem(protocol, skip_instance_cache=True)
    fs.mkdir("forge-target")
    fs.mkdir("forge-cache")
    yield Bucket(protocol, f"{protocol}://forge-target/stores", f"{protocol}://forge-cache/c", secret, fs)
    proc.terminate()
    proc.wait(timeout=10)


def test_cache_and_target_on_object_storage(bucket, served, tmp_path):
    from flows.recipe import recipe as recipe_flow

    paths = write_inputs(make_dataset(6, packed=True), Path(served.root), 2)
    recipe_dir = write_recipe(tmp_path, len(paths), chunk=4)
    state = recipe_flow(
        recipe=str(recipe_dir),
        target_root=bucket.target_root,
        cache_root=bucket.cache_root,
        url_rewrites={SOURCE: served.url},
        return_state=True,
    )
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["url"] == f"{bucket.target_root}/demo.zarr"
    fs = bucket.fs
    fs.invalidate_cache()
    cached = [p for p in fs.find("forge-cache/c") if p.endswith(".nc")]
    assert len(cached) == 3  # each input cached once, as an object

    assert_store_matches(summary["url"], paths)
    # The catalog is in the bucket too, and opens the dataset from there.
    assert summary["catalog"] == f"{bucket.target_root}/catalog.json"
    through_catalog = forge.open_dataset("demo", catalog=bucket.target_root).load()
    xr.testing.assert_identical(through_catalog, xr.open_zarr(zarr_store(summary["url"])).load())
    metadata = "".join(
        fs.cat(p).decode(errors="ignore") for p in fs.find("forge-target") if p.endswith(".json")
    )
    assert "forge:complete" in metadata
    assert bucket.secret not in metadata and bucket.secret not in logs(state.state_details.flow_run_id)
    assert not any(bucket.secret in p for p in fs.find("forge-cache"))


@pytest.mark.parametrize("bucket", ["s3"], indirect=True)
def test_an_icechunk_target_on_object_storage(bucket, served, tmp_path):
    """Built then appended through the flow (store batches writing through forks on the Dask workers),
    each run one commit of an Icechunk repository in the bucket."""
    from flows.recipe import recipe as recipe_flow
    from forge.publish.icechunk import history

    paths = write_inputs(make_dataset(10, packed=True), Path(served.root), 2)
    for n_files in (2, 5):
        recipe_dir = write_recipe(tmp_path, n_files, chunk=3)
        state = recipe_flow(
            recipe=str(recipe_dir),
            target_root=bucket.target_root,
            cache_root=bucket.cache_root,
            url_rewrites={SOURCE: served.url},
            target_format="icechunk",
            append=n_files == 5,
            return_state=True,
        )
        assert state.is_completed(), state.message
    url = f"{bucket.target_root}/demo.icechunk"
    assert state.result()["url"] == url
    assert_store_matches(url, paths)
    assert [c.metadata["forge:kind"] for c in history(url)] == ["append", "build"]
    assert bucket.secret not in logs(state.state_details.flow_run_id)


def test_a_rebuilt_store_replaces_the_published_one_on_object_storage(bucket):
    """A full build over a complete store is made beside it and moved into place: objects copied over
    the old ones (metadata last), the old store's extra objects and the staging copy deleted."""
    from forge.engine.targets.zarr_target import move_into_place, staging_url

    url = f"{bucket.target_root}/moved.zarr"
    old, new = make_dataset(6), make_dataset(4, seed=1)
    # (not consolidated: zarr's consolidation lists nothing on azurite)
    old.to_zarr(zarr_store(url), encoding={"tas": {"chunks": (2, 3, 4)}}, consolidated=False)
    new.to_zarr(zarr_store(staging_url(url)), encoding={"tas": {"chunks": (2, 3, 4)}}, consolidated=False)
    move_into_place(staging_url(url), url)
    xr.testing.assert_identical(xr.open_zarr(zarr_store(url), consolidated=False).load(), new)
    bucket.fs.invalidate_cache()
    keys = bucket.fs.find(url.split("://", 1)[1])
    assert not [k for k in keys if "/tas/c/2/" in k]  # the old store's third time chunk is gone
    assert not bucket.fs.exists(staging_url(url).split("://", 1)[1])
