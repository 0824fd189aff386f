"""The bakery registry: the DaskCluster spec, task runner and Kubernetes job each cloud bakery produces.

No Kubernetes runs here, so the produced objects are checked against the real schemas: the dask-kubernetes
DaskCluster CRD, the Kubernetes client's PodSpec model, and prefect-kubernetes' own job-template rendering.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from pathlib import Path

import dask.config as dask_config
import dask_kubernetes
import jsonschema
import pytest
import yaml
from distributed import LocalCluster
from kubernetes.client import ApiClient
from prefect.utilities.importtools import import_object

from flows.bakery import (
    JOB_TEMPLATE,
    REGISTRY,
    BakeryError,
    cluster_spec,
    get_bakery,
    job_variables,
    load_bakeries,
    parse_bakery,
    task_runner_for,
)
from flows.runtime.runner import CLUSTER_CONFIG, local_cluster_kwargs

CLOUDS = {"gcp": "gs://", "aws": "s3://", "azure": "abfs://"}
SAFE_TO_EVICT = "cluster-autoscaler.kubernetes.io/safe-to-evict"


def daskcluster_schema() -> dict:
    """The DaskCluster CRD schema; its references to Kubernetes core types (another package) are left open."""
    path = Path(dask_kubernetes.__file__).parent / "operator/customresources/templates.yaml"
    text = path.read_text().replace("python://dask_kubernetes/operator/customresources/templates.yaml", "")

    def open_core_refs(node):
        if isinstance(node, dict):
            if str(node.get("$ref", "")).startswith("python://k8s_crd_resolver"):
                return {"type": "object"}  # checked below through the Kubernetes client's models instead
            return {k: open_core_refs(v) for k, v in node.items()}
        return [open_core_refs(v) for v in node] if isinstance(node, list) else node

    definitions = open_core_refs(yaml.safe_load(text)["definitions"])
    return {**definitions["dask.k8s.api.v1.DaskCluster"], "definitions": definitions}


def assert_valid_pod_spec(pod_spec: dict) -> None:
    """Round-trip through the Kubernetes client's V1PodSpec: a misspelt or misplaced field is dropped."""
    client = ApiClient()
    model = client._ApiClient__deserialize(copy.deepcopy(pod_spec), "V1PodSpec")  # the client's own decoder
    assert client.sanitize_for_serialization(model) == pod_spec


def test_registry_has_the_four_bakeries_with_their_storage():
    registry = load_bakeries()
    assert set(registry) == {"local", *CLOUDS}
    assert registry["local"].dask is None and registry["local"].work_pool_type == "process"
    for cloud, scheme in CLOUDS.items():
        bakery = registry[cloud]
        assert bakery.on_kubernetes and bakery.dask is not None, cloud
        assert bakery.target_root.startswith(scheme) and bakery.cache_root.startswith(scheme), cloud
        assert bakery.credentials["kind"] in {"workload-identity", "irsa"}, cloud


@pytest.mark.parametrize("cloud", sorted(CLOUDS))
def test_cluster_spec_is_a_valid_daskcluster_with_spot_workers(cloud):
    dask = get_bakery(cloud).dask
    spec = cluster_spec(dask, "forge-test", {"FORGE_BAKERY": cloud})
    jsonschema.validate(spec, daskcluster_schema())
    assert spec["metadata"] == {"name": "forge-test", "namespace": dask.namespace, "labels": dask.labels}

    worker = spec["spec"]["worker"]
    assert worker["replicas"] == dask.adapt_minimum
    pod = worker["spec"]
    assert_valid_pod_spec(pod)
    container = pod["containers"][0]
    assert container["image"] == dask.image
    assert container["resources"]["limits"] == {"cpu": dask.worker.cpu, "memory": dask.worker.memory}
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert "--no-nanny" in container["args"]
    assert container["args"][container["args"].index("--preload") + 1] == "flows.runtime.worker_preload"
    assert container["args"][container["args"].index("--nthreads") + 1] == "1"
    assert {"name": "FORGE_BAKERY", "value": cloud} in container["env"]
    # Dask in the pod reads flows/runner.CLUSTER_CONFIG from its environment.
    seen = dask_config.collect_env({e["name"]: e["value"] for e in container["env"]})
    assert {key: dask_config.get(key, config=seen) for key in CLUSTER_CONFIG} == CLUSTER_CONFIG
    assert pod["serviceAccountName"] == dask.service_account
    assert pod["nodeSelector"] == dask.node_selector == {"forge.dev/pool": "dask"}
    # Workers tolerate the taint Terraform puts on the spot pool, and the cloud's own spot taint if any.
    keys = {t["key"] for t in pod["tolerations"]}
    assert "forge.dev/dask" in keys
    assert {"gcp": "cloud.google.com/gke-spot", "azure": "kubernetes.azure.com/scalesetpriority"}.get(
        cloud, "forge.dev/dask"
    ) in keys

    scheduler = spec["spec"]["scheduler"]
    assert_valid_pod_spec(scheduler["spec"])
    assert "tolerations" not in scheduler["spec"], "the scheduler must not land on spot nodes"
    assert scheduler["metadata"]["annotations"][SAFE_TO_EVICT] == "false"
    assert scheduler["spec"]["containers"][0]["resources"]["limits"]["memory"] == dask.scheduler.memory


def test_azure_pods_carry_the_workload_identity_label():
    azure = get_bakery("azure")
    assert cluster_spec(azure.dask, "x")["metadata"]["labels"] == {"azure.workload.identity/use": "true"}
    assert job_variables(azure)["pod_labels"] == {"azure.workload.identity/use": "true"}


def test_kubernetes_bakery_task_runner_is_an_adaptive_kubecluster(monkeypatch):
    monkeypatch.delenv("FORGE_DASK_ADDRESS", raising=False)
    gcp = get_bakery("gcp")
    runner = task_runner_for(gcp)
    from dask_kubernetes.operator import KubeCluster

    assert import_object(runner.cluster_class) is KubeCluster  # resolved the way the runner resolves it
    assert runner.adapt_kwargs == {"minimum": gcp.dask.adapt_minimum, "maximum": gcp.dask.adapt_maximum}
    spec = runner.cluster_kwargs["custom_cluster_spec"]
    assert spec["metadata"]["name"].startswith("forge-")
    assert runner.cluster_kwargs["namespace"] == gcp.dask.namespace
    # A fresh name per flow run: two runs must not share (and tear down) one cluster.
    assert (
        task_runner_for(gcp).cluster_kwargs["custom_cluster_spec"]["metadata"]["name"]
        != spec["metadata"]["name"]
    )


def test_local_bakery_gets_a_local_cluster_of_processes(monkeypatch):
    monkeypatch.delenv("FORGE_DASK_ADDRESS", raising=False)
    runner = task_runner_for(get_bakery("local"), workers=3)
    assert import_object(runner.cluster_class) is LocalCluster
    assert runner.cluster_kwargs["n_workers"] == 3 and runner.cluster_kwargs["threads_per_worker"] == 1


def _worker_setup(config_keys: list[str]) -> dict:
    import gc
    import os
    import sys

    import dask

    return {
        "config": {key: dask.config.get(key) for key in config_keys},
        "malloc_trim": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
        # What the first task would import (Prefect loads its collections in a worker's first task run).
        "preloaded": {"tasks.cache", "tasks.prepare", "tasks.store", *prefect_collections()}
        <= set(sys.modules),
        # What it imported is out of the cycle collector's full passes (flows/runtime/gc_freeze.py).
        "frozen": gc.get_freeze_count() > 100_000,
    }


def prefect_collections() -> set[str]:
    from importlib.metadata import entry_points

    return {ep.value for ep in entry_points(group="prefect.collections")}


def test_local_workers_start_with_our_config_without_malloc_trim_with_the_tasks_imported_and_frozen():
    assert "prefect_kubernetes" in prefect_collections()  # the slow one (3 s of imports)
    from distributed import Client

    with LocalCluster(**local_cluster_kwargs(1)) as cluster, Client(cluster) as client:
        (setup,) = client.run(_worker_setup, list(CLUSTER_CONFIG)).values()
    assert setup == {"config": CLUSTER_CONFIG, "malloc_trim": None, "preloaded": True, "frozen": True}


@pytest.mark.parametrize("cloud", sorted(CLOUDS))
def test_job_template_renders_the_flow_pod_prefect_kubernetes_would_submit(cloud, prefect_server):
    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    bakery = get_bakery(cloud)
    template = json.loads(JOB_TEMPLATE.read_text())
    render = KubernetesWorkerJobConfiguration.from_template_and_values(template, job_variables(bakery))
    config = asyncio.run(render)
    config.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="tidy-otter"))  # what the worker does
    job = config.job_manifest
    assert job["metadata"]["namespace"] == bakery.flow_pod["namespace"]
    assert job["spec"]["completions"] == 1
    pod = job["spec"]["template"]
    assert pod["metadata"]["annotations"] == {SAFE_TO_EVICT: "false"}
    assert bakery.flow_pod.get("labels", {}).items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["serviceAccountName"] == bakery.credentials["service_account"]
    assert pod["spec"]["nodeSelector"] == {"forge.dev/pool": "system"}
    container = pod["spec"]["containers"][0]
    assert container["image"] == bakery.flow_pod["image"]
    assert container["resources"]["requests"] == {"cpu": "1", "memory": "4Gi"}
    assert container["resources"]["limits"] == {"cpu": "1", "memory": "4Gi"}
    assert {"name": "FORGE_BAKERY", "value": cloud} in container["env"]
    assert_valid_pod_spec(pod["spec"])


def test_job_template_variables_have_types_and_descriptions():
    properties = json.loads(JOB_TEMPLATE.read_text())["variables"]["properties"]
    for name in ("cpu_request", "memory_limit", "service_account_name", "pod_labels", "node_selector"):
        assert properties[name].get("description"), name


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"credentials": {"kind": "env", "secret_access_key": "abc"}}, "never values"),
        ({"credentials": {"kind": "password"}}, "credentials kind"),
        ({"dask": {"kind": "yarn"}}, "dask kind"),
        ({"cache_root": None}, None),
    ],
)
def test_bad_registry_entries_are_refused_with_the_bakery_named(change, message):
    entry = yaml.safe_load(REGISTRY.read_text())["aws"]
    entry.update(change)
    if change.get("cache_root", 1) is None:
        del entry["cache_root"]
        message = "missing 'cache_root'"
    with pytest.raises(BakeryError, match=message) as info:
        parse_bakery("aws", entry)
    assert "'aws'" in str(info.value)


def test_bakery_up_creates_the_kubernetes_pool_with_our_job_template(prefect_server):
    from prefect.client.orchestration import get_client

    from flows.deploy import bakery_up

    assert bakery_up("azure") == bakery_up("azure") == "bakery-azure"  # idempotent
    with get_client(sync_client=True) as client:
        pool = client.read_work_pool("bakery-azure")
    assert pool.type == "kubernetes"
    assert pool.base_job_template == json.loads(JOB_TEMPLATE.read_text())
