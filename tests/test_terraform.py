"""infra/terraform, checked offline: formatting, the structure each bakery needs, and checkov.

Providers cannot be downloaded here, so `terraform validate` cannot run; the HCL is parsed with python-hcl2
and its structure checked against what a bakery needs (deployments/bakeries.yaml).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import hcl2
import pytest

from flows.bakery import load_bakeries

INFRA = Path(__file__).parents[1] / "infra" / "terraform"
CLOUDS = ("gcp", "aws", "azure")
MODULE = INFRA / "modules" / "bakery-k8s"


def _unquote(node):
    """python-hcl2 keeps HCL's quotes on keys and string values and marks blocks; drop both."""
    if isinstance(node, dict):
        return {
            _unquote(k): _unquote(v) for k, v in node.items() if k not in ("__is_block__", "__comments__")
        }
    if isinstance(node, list):
        return [_unquote(v) for v in node]
    if isinstance(node, str) and len(node) >= 2 and node[0] == node[-1] == '"':
        return node[1:-1]
    return node


def load(directory: Path) -> dict[str, dict]:
    """A Terraform directory's blocks: {"resource": {type: {name: body}}, "variable": {name: body}, ...}."""
    merged: dict[str, dict] = {"resource": {}, "data": {}, "variable": {}, "output": {}, "module": {}}
    providers: dict[str, dict] = {}
    for path in sorted(directory.glob("*.tf")):
        with path.open() as f:
            doc = _unquote(hcl2.load(f))
        for kind in ("resource", "data"):
            for block in doc.get(kind, []):
                for rtype, named in block.items():
                    merged[kind].setdefault(rtype, {}).update(named)
        for kind in ("variable", "output", "module"):
            for block in doc.get(kind, []):
                merged[kind].update(block)
        for block in doc.get("terraform", []):
            for required in block.get("required_providers", []):
                providers.update(required)
    merged["required_providers"] = providers
    return merged


@pytest.fixture(scope="module", params=CLOUDS)
def cloud(request) -> tuple[str, dict]:
    return request.param, load(INFRA / request.param)


def resources(tf: dict, rtype: str) -> dict[str, dict]:
    assert rtype in tf["resource"], f"no {rtype}"
    return tf["resource"][rtype]


def test_terraform_fmt_check():
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("terraform is not on this machine (the HCL is still parsed and scanned below)")
    result = subprocess.run(
        [terraform, "fmt", "-check", "-recursive", str(INFRA)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"terraform fmt would change: {result.stdout}"


def test_providers_are_pinned(cloud):
    _, tf = cloud
    for directory in (tf, load(MODULE)):
        assert {"helm", "kubernetes"} <= set(directory["required_providers"])
        for name, spec in directory["required_providers"].items():
            assert spec["source"].startswith("hashicorp/"), name
            assert re.fullmatch(r"(~>|=) ?\d+\.\d+(\.\d+)?", spec["version"]), f"{name} is not pinned"


def test_variables_are_typed_and_described_and_secrets_have_no_default(cloud):
    name, tf = cloud
    for directory in (tf, load(MODULE)):
        for var, body in directory["variable"].items():
            assert body.get("type"), f"{name}: variable {var} has no type"
            assert len(body.get("description", "")) > 15, f"{name}: variable {var} is not described"
            if body.get("sensitive") or "secret" in var and "secret_name" not in var:
                assert "default" not in body or not body.get("sensitive"), f"{var}: a secret has no default"


CLUSTER = {
    "gcp": ("google_container_cluster", "google_container_node_pool"),
    "aws": ("aws_eks_cluster", "aws_eks_node_group"),
    "azure": ("azurerm_kubernetes_cluster", "azurerm_kubernetes_cluster_node_pool"),
}


def test_cluster_has_a_system_pool_and_a_tainted_autoscaling_spot_pool(cloud):
    name, tf = cloud
    cluster_type, pool_type = CLUSTER[name]
    assert len(resources(tf, cluster_type)) == 1
    pools = resources(tf, pool_type)
    dask = pools["dask"]
    text = json.dumps(dask)
    assert "forge.dev/dask" in text and "NoSchedule".lower() in text.lower().replace("_", ""), (
        "spot pool untainted"
    )
    if name == "gcp":
        assert dask["node_config"][0]["spot"] is True
        assert dask["autoscaling"][0]["total_min_node_count"] == 0
        assert "system" in pools
    elif name == "aws":
        assert dask["capacity_type"] == "SPOT" and dask["scaling_config"][0]["min_size"] == 0
        assert pools["system"]["capacity_type"] == "ON_DEMAND"
    else:
        assert dask["priority"] == "Spot" and dask["min_count"] == 0 and dask["auto_scaling_enabled"] is True
        assert resources(tf, cluster_type)["bakery"]["default_node_pool"][0]["name"] == "system"
    # The node labels the bakery registry's node selectors rely on.
    assert "local.dask_label" in text
    locals_text = (INFRA / name / "main.tf").read_text()
    assert 'dask_label   = { "forge.dev/pool" = "dask" }' in locals_text
    assert 'system_label = { "forge.dev/pool" = "system" }' in locals_text


def test_cache_bucket_expires_by_age_and_target_bucket_exists(cloud):
    name, tf = cloud
    if name == "gcp":
        buckets = resources(tf, "google_storage_bucket")
        rule = buckets["cache"]["lifecycle_rule"][0]
        assert (
            rule["action"][0]["type"] == "Delete"
            and rule["condition"][0]["age"] == "${var.cache_retention_days}"
        )
        assert {"target", "landing"} <= set(buckets)
    elif name == "aws":
        assert {"cache", "target", "landing"} <= set(resources(tf, "aws_s3_bucket"))
        rule = resources(tf, "aws_s3_bucket_lifecycle_configuration")["all"]["rule"][0]
        expiration = rule["dynamic"][0]["expiration"]
        assert expiration["content"][0]["days"] == "${var.cache_retention_days}"
        assert '"target"' in expiration["for_each"], "everything but the target expires by age"
        assert len(resources(tf, "aws_s3_bucket_public_access_block")) == 1
    else:
        assert "cache" in (INFRA / "azure" / "main.tf").read_text()
        policy = resources(tf, "azurerm_storage_management_policy")["bakery"]["rule"][0]
        assert "cache/" in policy["filters"][0]["prefix_match"]
        base = policy["actions"][0]["base_blob"][0]
        assert base["delete_after_days_since_modification_greater_than"] == "${var.cache_retention_days}"


def test_one_cloud_identity_is_bound_to_the_kubernetes_service_account(cloud):
    name, tf = cloud
    subject = "system:serviceaccount:${var.namespace}:${var.service_account}"
    if name == "gcp":
        member = resources(tf, "google_service_account_iam_member")["workload_identity"]
        assert member["role"] == "roles/iam.workloadIdentityUser"
        assert member["member"].endswith(".svc.id.goog[${var.namespace}/${var.service_account}]")
        annotation = "iam.gke.io/gcp-service-account"
    elif name == "aws":
        trust = resources(tf, "aws_iam_role")["bakery"]["assume_role_policy"]
        assert "AssumeRoleWithWebIdentity" in trust and subject in trust
        annotation = "eks.amazonaws.com/role-arn"
    else:
        credential = resources(tf, "azurerm_federated_identity_credential")["bakery"]
        assert credential["subject"] == subject
        annotation = "azure.workload.identity/client-id"
    module = tf["module"]["in_cluster"]
    assert module["source"] == "../modules/bakery-k8s"
    assert annotation in module["service_account_annotations"]
    assert module["work_pool"] == load_bakeries()[name].work_pool


def test_new_objects_notify_the_receiver(cloud):
    name, tf = cloud
    if name == "gcp":
        notification = resources(tf, "google_storage_notification")["landing"]
        assert notification["event_types"] == ["OBJECT_FINALIZE"]
        push = resources(tf, "google_pubsub_subscription")["receiver"]["push_config"][0]
        assert push["push_endpoint"] == "${var.trigger_endpoint}" and push["oidc_token"]
    elif name == "aws":
        assert resources(tf, "aws_s3_bucket_notification")["landing"]["eventbridge"] is True
        target = resources(tf, "aws_cloudwatch_event_target")["receiver"]
        assert (
            "api_destination" in target["arn"]
            and "aws_sqs_queue.undelivered" in target["dead_letter_config"][0]["arn"]
        )
        assert "X-Forge-Token" in json.dumps(resources(tf, "aws_cloudwatch_event_connection"))
    else:
        subscription = resources(tf, "azurerm_eventgrid_system_topic_event_subscription")["receiver"]
        assert subscription["included_event_types"] == ["Microsoft.Storage.BlobCreated"]
        assert subscription["delivery_property"][0]["header_name"] == "X-Forge-Token"
        assert subscription["delivery_property"][0]["secret"] is True


def test_registry_entry_output_fills_the_bakery_registry(cloud):
    name, tf = cloud
    entry = tf["output"]["bakery_registry_entry"]["value"]
    bakery = load_bakeries()[name]
    assert set(entry) == {
        "description",
        "work_pool",
        "target_root",
        "cache_root",
        "credentials",
        "flow_pod",
        "dask",
    }
    assert entry["work_pool"] == {"name": bakery.work_pool, "type": "kubernetes"}
    assert entry["target_root"].split("//")[0] == bakery.target_root.split("//")[0]
    assert entry["credentials"]["kind"] == bakery.credentials["kind"]
    assert {t["key"] for t in entry["dask"]["tolerations"]} == {t["key"] for t in bakery.dask.tolerations}
    dask_keys = {"kind", "image", "namespace", "service_account", "worker", "scheduler", "adapt"}
    assert set(entry["dask"]) - {"labels"} == dask_keys | {"node_selector", "tolerations"}


def test_in_cluster_module_installs_the_worker_the_operator_and_dask_rbac():
    tf = load(MODULE)
    releases = resources(tf, "helm_release")
    assert releases["prefect_worker"]["chart"] == "prefect-worker"
    assert releases["dask_operator"]["chart"] == "dask-kubernetes-operator"
    for release in releases.values():
        assert release["version"].startswith("${var.") and release["repository"].startswith("https://")
    for var in ("prefect_worker_chart_version", "dask_operator_chart_version"):
        assert re.fullmatch(r"\d{4}\.\d+\.\d+", tf["variable"][var]["default"]), f"{var} is not pinned"
    rules = resources(tf, "kubernetes_role")["dask"]["rule"]
    dask_rule = next(r for r in rules if r["api_groups"] == ["kubernetes.dask.org"])
    assert {"daskclusters", "daskworkergroups", "daskautoscalers"} <= set(dask_rule["resources"])
    assert {"create", "delete", "patch"} <= set(dask_rule["verbs"])
    binding = resources(tf, "kubernetes_role_binding")["dask"]["subject"][0]
    assert binding["kind"] == "ServiceAccount" and "kubernetes_service_account.bakery" in binding["name"]


def checkov() -> str:
    for candidate in (Path(sys.prefix).parent / ".venv-iac" / "bin" / "checkov", shutil.which("checkov")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    pytest.fail(
        "checkov not found: python3 -m venv .venv-iac && .venv-iac/bin/pip install checkov (see README)"
    )


def test_checkov_finds_nothing_unjustified(tmp_path):
    # --skip-download: no network here (and none needed): the built-in policies only.
    result = subprocess.run(
        [checkov(), "-d", str(INFRA), "--framework", "terraform", "--skip-download", "--quiet", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [c for r in reports for c in r["results"]["failed_checks"]]
    assert not failed, [(c["check_id"], c["resource"], c["file_path"]) for c in failed]
    assert sum(r["summary"]["passed"] for r in reports) > 100
    # Every skip says why.
    for tf in INFRA.rglob("*.tf"):
        for skip in re.findall(r"checkov:skip=([^\n]*)", tf.read_text()):
            check, _, reason = skip.partition(":")
            assert len(reason.strip()) > 20, f"{tf}: skip of {check} without a reason"
