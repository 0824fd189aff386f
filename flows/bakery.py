"""The bakery registry (deployments/bakeries.yaml): a work pool, its storage roots and its Dask cluster.

A flow run learns its bakery from ``FORGE_BAKERY`` (the deployment sets it in the job variables) and
builds its task runner from the registry: a local cluster of single-threaded processes, or a
dask-kubernetes operator ``KubeCluster`` whose spec (image, resources, adaptive bounds, spot
tolerations, service account) comes from here.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEPLOYMENTS = Path(__file__).resolve().parents[1] / "deployments"
REGISTRY = DEPLOYMENTS / "bakeries.yaml"
JOB_TEMPLATE = DEPLOYMENTS / "kubernetes-job-template.json"
# The core logs through the standard library (each download attempt, say): this sends the forge loggers
# to the run's logs in the Prefect UI, from flow-run pods and Dask workers alike.
LOGGING_ENV = {"PREFECT_LOGGING_EXTRA_LOGGERS": "forge"}
CREDENTIAL_KINDS = {"none", "env", "workload-identity", "irsa", "pod-identity", "block"}


class BakeryError(ValueError):
    pass


@dataclass(frozen=True)
class Resources:
    cpu: str
    memory: str

    def k8s(self) -> dict[str, dict[str, str]]:
        # Requests equal limits: Guaranteed QoS, so the kubelet evicts these pods last under memory pressure.
        quantity = {"cpu": self.cpu, "memory": self.memory}
        return {"requests": dict(quantity), "limits": dict(quantity)}


@dataclass(frozen=True)
class KubeDask:
    image: str
    namespace: str
    service_account: str
    worker: Resources
    scheduler: Resources
    adapt_minimum: int
    adapt_maximum: int
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, str], ...] = ()
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Bakery:
    id: str
    description: str
    work_pool: str
    work_pool_type: str
    target_root: str
    cache_root: str
    credentials: dict[str, str]
    dask: KubeDask | None  # None: a local cluster
    flow_pod: dict[str, Any] = field(default_factory=dict)

    @property
    def on_kubernetes(self) -> bool:
        return self.work_pool_type == "kubernetes"


def _require(entry: dict, key: str, where: str) -> Any:
    if key not in entry:
        raise BakeryError(f"{where}: missing {key!r}")
    return entry[key]


def _kube_dask(entry: dict, where: str) -> KubeDask:
    adapt = _require(entry, "adapt", where)
    return KubeDask(
        image=_require(entry, "image", where),
        namespace=entry.get("namespace", "default"),
        service_account=_require(entry, "service_account", where),
        worker=Resources(**_require(entry, "worker", where)),
        scheduler=Resources(**_require(entry, "scheduler", where)),
        adapt_minimum=int(adapt["minimum"]),
        adapt_maximum=int(adapt["maximum"]),
        node_selector=dict(entry.get("node_selector", {})),
        tolerations=tuple(entry.get("tolerations", ())),
        labels=dict(entry.get("labels", {})),
    )


def parse_bakery(bakery_id: str, entry: dict) -> Bakery:
    where = f"{REGISTRY.name}: bakery {bakery_id!r}"
    pool = _require(entry, "work_pool", where)
    credentials = dict(_require(entry, "credentials", where))
    if credentials.get("kind") not in CREDENTIAL_KINDS:
        raise BakeryError(f"{where}: credentials kind must be one of {sorted(CREDENTIAL_KINDS)}")
    if set(credentials) - {"kind", "service_account", "block"}:
        raise BakeryError(f"{where}: credentials name how they are obtained, never values")
    dask_entry = _require(entry, "dask", where)
    kind = dask_entry.get("kind")
    if kind not in {"local", "kubernetes"}:
        raise BakeryError(f"{where}: dask kind must be 'local' or 'kubernetes', not {kind!r}")
    return Bakery(
        id=bakery_id,
        description=entry.get("description", ""),
        work_pool=_require(pool, "name", where),
        work_pool_type=_require(pool, "type", where),
        target_root=_require(entry, "target_root", where),
        cache_root=_require(entry, "cache_root", where),
        credentials=credentials,
        dask=_kube_dask(dask_entry, f"{where} dask") if kind == "kubernetes" else None,
        flow_pod=dict(entry.get("flow_pod", {})),
    )


def load_bakeries(path: Path = REGISTRY) -> dict[str, Bakery]:
    raw = yaml.safe_load(path.read_text()) or {}
    return {bakery_id: parse_bakery(bakery_id, entry) for bakery_id, entry in raw.items()}


def get_bakery(bakery_id: str) -> Bakery:
    registry = load_bakeries()
    if bakery_id not in registry:
        raise BakeryError(f"unknown bakery {bakery_id!r} (known: {sorted(registry)})")
    return registry[bakery_id]


def cluster_spec(dask: KubeDask, name: str, env: dict[str, str] | None = None) -> dict:
    """The DaskCluster resource the dask-kubernetes operator creates for one flow run."""
    from dask_kubernetes.operator import make_cluster_spec

    from flows.runtime.forkserver import PRELOAD
    from flows.runtime.runner import CLUSTER_CONFIG, config_env

    spec = make_cluster_spec(
        name=name,
        image=dask.image,
        n_workers=dask.adapt_minimum,
        resources=dask.worker.k8s(),
        env={**config_env(CLUSTER_CONFIG), **LOGGING_ENV, **(env or {})},
    )
    worker = spec["spec"]["worker"]["spec"]
    # One thread per worker: HDF5 decoding holds the GIL. No nanny: it would set MALLOC_TRIM_THRESHOLD_ (1.3x
    # slower store step, benchmarks/results/throughput-120d.txt); Kubernetes restarts a dead worker pod.
    # The preload imports what the tasks need as the pod starts, not in its first task
    # (flows/runtime/worker_preload).
    worker["containers"][0]["args"] += ["--nthreads", "1", "--no-nanny", "--preload", PRELOAD]
    worker["serviceAccountName"] = dask.service_account  # storage credentials by workload identity / IRSA
    worker["nodeSelector"] = dict(dask.node_selector)
    worker["tolerations"] = [dict(t) for t in dask.tolerations]
    scheduler = spec["spec"]["scheduler"]
    scheduler["spec"]["containers"][0]["resources"] = dask.scheduler.k8s()
    # The scheduler stays off spot nodes (no tolerations) and the autoscaler leaves it: losing it loses
    # the run.
    scheduler["metadata"] = {"annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}}
    spec["metadata"]["namespace"] = dask.namespace
    spec["metadata"]["labels"] = dict(dask.labels)  # the operator copies these onto every pod
    return spec


def dask_address(address: str | None = None) -> str | None:
    """An existing cluster to run on: ``address``, else FORGE_DASK_ADDRESS (None: the bakery's own)."""
    return address or os.environ.get("FORGE_DASK_ADDRESS") or None


def on_local_cluster(bakery: Bakery | None, address: str | None = None) -> bool:
    """Whether runs on ``bakery`` get a LocalCluster of this machine's processes."""
    return dask_address(address) is None and (bakery is None or bakery.dask is None)


def task_runner_for(bakery: Bakery | None, address: str | None = None, workers: int | None = None):
    """The flow's task runner on ``bakery`` (None: this machine)."""
    from prefect_dask import DaskTaskRunner

    from flows.runtime.runner import local_task_runner

    address = dask_address(address)
    if address:
        return DaskTaskRunner(address=address)
    if on_local_cluster(bakery):
        return local_task_runner(workers)
    name = f"forge-{uuid.uuid4().hex[:10]}"  # one cluster per flow run; each run is its own pod
    return DaskTaskRunner(
        cluster_class="dask_kubernetes.operator.KubeCluster",
        cluster_kwargs={
            "custom_cluster_spec": cluster_spec(bakery.dask, name, {"FORGE_BAKERY": bakery.id}),
            "namespace": bakery.dask.namespace,
            "shutdown_on_close": True,
        },
        adapt_kwargs={"minimum": bakery.dask.adapt_minimum, "maximum": bakery.dask.adapt_maximum},
    )


def store_workers(bakery: Bakery | None) -> int | None:
    """How many store tasks can run at once on ``bakery``'s cluster (None: a cluster we know nothing of)."""
    from flows.runtime.runner import local_workers

    if dask_address():
        return None
    return local_workers() if on_local_cluster(bakery) else bakery.dask.adapt_maximum


def current_bakery() -> Bakery | None:
    bakery_id = os.environ.get("FORGE_BAKERY")
    return get_bakery(bakery_id) if bakery_id else None


def job_variables(bakery: Bakery) -> dict[str, Any]:
    """Job variables of a deployment on ``bakery``: they fill the work pool's base job template."""
    variables: dict[str, Any] = {"env": {"FORGE_BAKERY": bakery.id, **LOGGING_ENV}}
    if bakery.on_kubernetes:
        pod = bakery.flow_pod
        variables.update(
            image=pod["image"],
            namespace=pod.get("namespace", "default"),
            service_account_name=bakery.credentials.get("service_account", "default"),
            cpu_request=str(pod["cpu"]),
            cpu_limit=str(pod["cpu"]),
            memory_request=str(pod["memory"]),
            memory_limit=str(pod["memory"]),
            node_selector=dict(pod.get("node_selector", {})),
            pod_labels=dict(pod.get("labels", {})),
        )
    return variables


def base_job_template(bakery: Bakery) -> dict | None:
    """The work pool's base job template: ours for Kubernetes, the worker type's default otherwise."""
    return json.loads(JOB_TEMPLATE.read_text()) if bakery.on_kubernetes else None
