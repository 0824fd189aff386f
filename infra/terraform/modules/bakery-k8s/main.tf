# What every cloud bakery runs inside its cluster: the namespace, the pods' service account and the
# Dask RBAC it needs, the dask-kubernetes operator, and a Prefect worker polling the bakery's pool.

resource "kubernetes_namespace" "forge" {
  metadata {
    name = var.namespace
  }
}

resource "kubernetes_service_account" "bakery" {
  metadata {
    name        = var.service_account
    namespace   = kubernetes_namespace.forge.metadata[0].name
    annotations = var.service_account_annotations
    labels      = var.service_account_labels
  }
}

# The flow pod creates and scales a DaskCluster through the operator and connects to its scheduler.
resource "kubernetes_role" "dask" {
  metadata {
    name      = "forge-dask"
    namespace = kubernetes_namespace.forge.metadata[0].name
  }
  rule {
    api_groups = ["kubernetes.dask.org"]
    resources  = ["daskclusters", "daskworkergroups", "daskautoscalers", "daskjobs"]
    verbs      = ["get", "list", "watch", "create", "patch", "update", "delete"]
  }
  rule {
    api_groups = [""]
    resources  = ["pods", "services", "events"]
    verbs      = ["get", "list", "watch"]
  }
  rule {
    api_groups = [""]
    resources  = ["pods/portforward"]
    verbs      = ["create"]
  }
}

resource "kubernetes_role_binding" "dask" {
  metadata {
    name      = "forge-dask"
    namespace = kubernetes_namespace.forge.metadata[0].name
  }
  role_ref {
    api_group = "rbac.authorization.k8s.io"
    kind      = "Role"
    name      = kubernetes_role.dask.metadata[0].name
  }
  subject {
    kind      = "ServiceAccount"
    name      = kubernetes_service_account.bakery.metadata[0].name
    namespace = kubernetes_namespace.forge.metadata[0].name
  }
}

resource "helm_release" "dask_operator" {
  name             = "dask-kubernetes-operator"
  repository       = "https://helm.dask.org"
  chart            = "dask-kubernetes-operator"
  version          = var.dask_operator_chart_version
  namespace        = "dask-operator"
  create_namespace = true
  values           = [yamlencode({ nodeSelector = var.system_node_selector })]
}

resource "helm_release" "prefect_worker" {
  name       = "prefect-worker"
  repository = "https://prefecthq.github.io/prefect-helm"
  chart      = "prefect-worker"
  version    = var.prefect_worker_chart_version
  namespace  = kubernetes_namespace.forge.metadata[0].name
  values = [yamlencode({
    worker = {
      apiConfig    = var.prefect_api_key_secret == "" ? "selfHostedServer" : "cloud"
      nodeSelector = var.system_node_selector
      config = {
        workPool = var.work_pool
        type     = "kubernetes"
      }
      selfHostedServerApiConfig = { apiUrl = var.prefect_api_url }
      cloudApiConfig = {
        # The key stays in the existing secret: only its name passes through Terraform.
        apiKeySecret = { create = false, name = var.prefect_api_key_secret, key = "key" }
      }
    }
  })]
}
