locals {
  labels = { "forge-bakery" = var.name }
  # Pods of flows and Dask schedulers run on the system pool; Dask workers on the tainted spot pool.
  system_label = { "forge.dev/pool" = "system" }
  dask_label   = { "forge.dev/pool" = "dask" }
}

# ---------------------------------------------------------------- network and cluster

resource "google_compute_network" "bakery" {
  name                    = var.name
  auto_create_subnetworks = false
}

resource "google_compute_subnetwork" "bakery" {
  name                     = var.name
  network                  = google_compute_network.bakery.id
  region                   = var.region
  ip_cidr_range            = "10.10.0.0/20"
  private_ip_google_access = true

  secondary_ip_range {
    range_name    = "pods"
    ip_cidr_range = "10.20.0.0/14"
  }
  secondary_ip_range {
    range_name    = "services"
    ip_cidr_range = "10.30.0.0/20"
  }

  log_config {
    aggregation_interval = "INTERVAL_10_MIN"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

# Nothing from outside reaches the nodes; GKE adds its own rules for the control plane.
resource "google_compute_firewall" "deny_ingress" {
  name          = "${var.name}-deny-ingress"
  network       = google_compute_network.bakery.id
  direction     = "INGRESS"
  priority      = 65534
  source_ranges = ["0.0.0.0/0"]
  deny {
    protocol = "all"
  }
  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}

# Private nodes reach HTTP/FTP data sources through Cloud NAT.
resource "google_compute_router" "bakery" {
  name    = var.name
  network = google_compute_network.bakery.id
  region  = var.region
}

resource "google_compute_router_nat" "bakery" {
  name                               = var.name
  router                             = google_compute_router.bakery.name
  region                             = var.region
  nat_ip_allocate_option             = "AUTO_ONLY"
  source_subnetwork_ip_ranges_to_nat = "ALL_SUBNETWORKS_ALL_IP_RANGES"
}

resource "google_service_account" "nodes" {
  account_id   = "${var.name}-nodes"
  display_name = "GKE nodes of ${var.name}"
}

resource "google_project_iam_member" "nodes" {
  for_each = toset(["roles/logging.logWriter", "roles/monitoring.metricWriter", "roles/artifactregistry.reader"])
  project  = var.project_id
  role     = each.value
  member   = "serviceAccount:${google_service_account.nodes.email}"
}

resource "google_container_cluster" "bakery" {
  # checkov:skip=CKV_GCP_65:Google Groups for RBAC needs Google Workspace, which not every organisation has; access is by IAM.
  name     = var.name
  location = var.region
  # Node pools are managed below; the default one is removed at creation.
  remove_default_node_pool    = true
  initial_node_count          = 1
  deletion_protection         = true
  network                     = google_compute_network.bakery.id
  subnetwork                  = google_compute_subnetwork.bakery.id
  resource_labels             = local.labels
  enable_intranode_visibility = true

  release_channel {
    channel = "REGULAR"
  }
  workload_identity_config {
    workload_pool = "${var.project_id}.svc.id.goog"
  }
  ip_allocation_policy {
    cluster_secondary_range_name  = "pods"
    services_secondary_range_name = "services"
  }
  private_cluster_config {
    enable_private_nodes    = true
    enable_private_endpoint = false
    master_ipv4_cidr_block  = "172.16.0.0/28"
  }
  master_authorized_networks_config {
    dynamic "cidr_blocks" {
      for_each = var.master_authorized_cidrs
      content {
        cidr_block = cidr_blocks.value
      }
    }
  }
  network_policy {
    enabled = true
  }
  master_auth {
    client_certificate_config {
      issue_client_certificate = false
    }
  }
  binary_authorization {
    evaluation_mode = "PROJECT_SINGLETON_POLICY_ENFORCE"
  }
  enable_shielded_nodes = true
  node_config {
    service_account = google_service_account.nodes.email
    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
  }
}

resource "google_container_node_pool" "system" {
  name     = "system"
  cluster  = google_container_cluster.bakery.id
  location = var.region
  autoscaling {
    min_node_count = 1
    max_node_count = 3
  }
  management {
    auto_repair  = true
    auto_upgrade = true
  }
  node_config {
    machine_type    = var.system_machine_type
    image_type      = "COS_CONTAINERD"
    service_account = google_service_account.nodes.email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    labels          = local.system_label
    metadata        = { "disable-legacy-endpoints" = "true" }
    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
  }
}

# Spot nodes for Dask workers: scale from zero, tainted so that only pods tolerating the taint
# (the DaskCluster spec in deployments/bakeries.yaml) land there.
resource "google_container_node_pool" "dask" {
  name     = "dask-spot"
  cluster  = google_container_cluster.bakery.id
  location = var.region
  autoscaling {
    total_min_node_count = 0
    total_max_node_count = var.dask_max_nodes
  }
  management {
    auto_repair  = true
    auto_upgrade = true
  }
  node_config {
    machine_type    = var.dask_machine_type
    image_type      = "COS_CONTAINERD"
    spot            = true
    service_account = google_service_account.nodes.email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    labels          = local.dask_label
    metadata        = { "disable-legacy-endpoints" = "true" }
    taint {
      key    = "forge.dev/dask"
      value  = "true"
      effect = "NO_SCHEDULE"
    }
    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
  }
}

# ---------------------------------------------------------------- storage

resource "google_storage_bucket" "cache" {
  name                        = "${var.name}-cache"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = local.labels
  # checkov:skip=CKV_GCP_78:The cache is disposable (re-downloadable) and expires by age; versions would only add cost.
  # checkov:skip=CKV_GCP_62:Access logs of a disposable cache are not needed; Cloud Audit Logs cover access.
  lifecycle_rule {
    condition {
      age = var.cache_retention_days
    }
    action {
      type = "Delete"
    }
  }
}

resource "google_storage_bucket" "target" {
  name                        = "${var.name}-target"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = local.labels
  # checkov:skip=CKV_GCP_62:Access logs go to Cloud Audit Logs (data access logs), not a second bucket.
  versioning {
    enabled = true
  }
  # Versions of overwritten chunks are kept a week, enough to recover from a bad run.
  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 7
    }
    action {
      type = "Delete"
    }
  }
}

# Where new source files land (mirrored by a provider or a sync job); new objects trigger appends.
resource "google_storage_bucket" "landing" {
  name                        = "${var.name}-landing"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = local.labels
  # checkov:skip=CKV_GCP_78:Landing files are copies of public sources, kept until cached; versions would only add cost.
  # checkov:skip=CKV_GCP_62:Access logs go to Cloud Audit Logs (data access logs), not a second bucket.
  lifecycle_rule {
    condition {
      age = var.cache_retention_days
    }
    action {
      type = "Delete"
    }
  }
}

# ---------------------------------------------------------------- identity (GKE workload identity)

resource "google_service_account" "bakery" {
  account_id   = var.name
  display_name = "Flow and Dask pods of ${var.name}"
}

resource "google_service_account_iam_member" "workload_identity" {
  service_account_id = google_service_account.bakery.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project_id}.svc.id.goog[${var.namespace}/${var.service_account}]"
}

resource "google_storage_bucket_iam_member" "bakery" {
  for_each = {
    cache   = google_storage_bucket.cache.name
    target  = google_storage_bucket.target.name
    landing = google_storage_bucket.landing.name
  }
  bucket = each.value
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.bakery.email}"
}

# ---------------------------------------------------------------- storage-event triggers

resource "google_pubsub_topic" "new_objects" {
  # checkov:skip=CKV_GCP_83:Messages carry object names only (public source files), never data or credentials.
  name   = "${var.name}-new-objects"
  labels = local.labels
}

data "google_storage_project_service_account" "gcs" {}

resource "google_pubsub_topic_iam_member" "gcs_publishes" {
  topic  = google_pubsub_topic.new_objects.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}

resource "google_storage_notification" "landing" {
  bucket         = google_storage_bucket.landing.name
  topic          = google_pubsub_topic.new_objects.id
  payload_format = "JSON_API_V1"
  event_types    = ["OBJECT_FINALIZE"]
  depends_on     = [google_pubsub_topic_iam_member.gcs_publishes]
}

resource "google_service_account" "pusher" {
  account_id   = "${var.name}-push"
  display_name = "Signs Pub/Sub pushes to the forge receiver"
}

resource "google_pubsub_subscription" "receiver" {
  name                 = "${var.name}-receiver"
  topic                = google_pubsub_topic.new_objects.id
  ack_deadline_seconds = 60
  labels               = local.labels
  push_config {
    push_endpoint = var.trigger_endpoint
    oidc_token {
      service_account_email = google_service_account.pusher.email
      audience              = var.trigger_audience
    }
  }
  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }
}

# ---------------------------------------------------------------- in-cluster: namespace, RBAC, helm

module "in_cluster" {
  source                      = "../modules/bakery-k8s"
  namespace                   = var.namespace
  service_account             = var.service_account
  service_account_annotations = { "iam.gke.io/gcp-service-account" = google_service_account.bakery.email }
  work_pool                   = "bakery-gcp"
  prefect_api_url             = var.prefect_api_url
  prefect_api_key_secret      = var.prefect_api_key_secret
  image                       = var.image
  receiver_token              = "" # Pub/Sub authenticates with an OIDC token instead
  receiver_oidc = {
    FORGE_RECEIVER_OIDC_AUDIENCE = var.trigger_audience
    FORGE_RECEIVER_OIDC_EMAIL    = google_service_account.pusher.email
  }
  depends_on = [google_container_node_pool.system]
}
