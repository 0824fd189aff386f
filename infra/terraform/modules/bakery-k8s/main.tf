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

# `forge receiver`: the clouds' new-object notifications in, Prefect events out (which run the recipes'
# append deployments). The Service is cluster-internal: publish it at `trigger_endpoint` through the
# cluster's HTTPS ingress. The shared secret goes into a Kubernetes secret, never into the pod spec.
resource "kubernetes_secret" "receiver_token" {
  # Whether it is set is not secret; its value stays sensitive.
  count = nonsensitive(var.receiver_token != "") ? 1 : 0
  metadata {
    name      = "forge-receiver-token"
    namespace = kubernetes_namespace.forge.metadata[0].name
  }
  data = { token = var.receiver_token }
}

resource "kubernetes_deployment" "receiver" {
  # checkov:skip=CKV_K8S_43:The image is pinned by a version tag through var.image, like the flow and Dask pods.
  metadata {
    name      = "forge-receiver"
    namespace = kubernetes_namespace.forge.metadata[0].name
    labels    = { "app.kubernetes.io/name" = "forge-receiver" }
  }
  spec {
    replicas = 1 # bursts coalesce in one process: a second replica would split them
    selector {
      match_labels = { "app.kubernetes.io/name" = "forge-receiver" }
    }
    template {
      metadata {
        labels = { "app.kubernetes.io/name" = "forge-receiver" }
      }
      spec {
        automount_service_account_token = false
        node_selector                   = var.system_node_selector
        security_context {
          run_as_non_root = true
          run_as_user     = 1000 # the image's forge user
          seccomp_profile {
            type = "RuntimeDefault"
          }
        }
        volume {
          name = "tmp"
          empty_dir {
            size_limit = "64Mi"
          }
        }
        container {
          name              = "receiver"
          image             = var.image
          image_pull_policy = "Always"
          command           = ["forge", "receiver", "--host", "0.0.0.0", "--port", "8787", "--window", tostring(var.receiver_window_seconds)]
          port {
            container_port = 8787
          }
          env {
            name  = "PREFECT_API_URL"
            value = var.prefect_api_url
          }
          env {
            name  = "PREFECT_HOME" # the root filesystem is read-only
            value = "/tmp/prefect"
          }
          dynamic "env" {
            for_each = var.prefect_api_key_secret == "" ? [] : [var.prefect_api_key_secret]
            content {
              name = "PREFECT_API_KEY"
              value_from {
                secret_key_ref {
                  name = env.value
                  key  = "key"
                }
              }
            }
          }
          dynamic "env" {
            for_each = kubernetes_secret.receiver_token
            content {
              name = "FORGE_RECEIVER_TOKEN"
              value_from {
                secret_key_ref {
                  name = env.value.metadata[0].name
                  key  = "token"
                }
              }
            }
          }
          dynamic "env" {
            for_each = var.receiver_oidc
            content {
              name  = env.key
              value = env.value
            }
          }
          resources {
            requests = { cpu = "100m", memory = "256Mi" }
            limits   = { cpu = "1", memory = "512Mi" }
          }
          security_context {
            allow_privilege_escalation = false
            read_only_root_filesystem  = true
            capabilities {
              drop = ["ALL"]
            }
          }
          volume_mount {
            name       = "tmp"
            mount_path = "/tmp"
          }
          liveness_probe {
            http_get {
              path = "/healthz"
              port = 8787
            }
          }
          readiness_probe {
            http_get {
              path = "/healthz"
              port = 8787
            }
          }
        }
      }
    }
  }
}

resource "kubernetes_service" "receiver" {
  metadata {
    name      = "forge-receiver"
    namespace = kubernetes_namespace.forge.metadata[0].name
  }
  spec {
    selector = { "app.kubernetes.io/name" = "forge-receiver" }
    port {
      port        = 80
      target_port = 8787
    }
  }
}
