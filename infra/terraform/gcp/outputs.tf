output "cluster_name" {
  description = "GKE cluster; `gcloud container clusters get-credentials` with it."
  value       = google_container_cluster.bakery.name
}

output "landing_bucket" {
  description = "Bucket whose new objects trigger append runs."
  value       = google_storage_bucket.landing.name
}

output "bakery_registry_entry" {
  description = "The `gcp` entry of deployments/bakeries.yaml for this bakery (paste it there)."
  value = {
    description = "GKE ${google_container_cluster.bakery.name} with workload identity; dask-kubernetes operator on a spot pool."
    work_pool   = { name = "bakery-gcp", type = "kubernetes" }
    target_root = "gs://${google_storage_bucket.target.name}"
    cache_root  = "gs://${google_storage_bucket.cache.name}"
    credentials = { kind = "workload-identity", service_account = module.in_cluster.service_account }
    flow_pod = {
      image         = var.image
      namespace     = module.in_cluster.namespace
      cpu           = "1"
      memory        = "4Gi"
      node_selector = local.system_label
    }
    dask = {
      kind            = "kubernetes"
      image           = var.image
      namespace       = module.in_cluster.namespace
      service_account = module.in_cluster.service_account
      worker          = { cpu = "1", memory = "4Gi" }
      scheduler       = { cpu = "1", memory = "2Gi" }
      adapt           = { minimum = 0, maximum = var.dask_max_nodes * 8 }
      node_selector   = local.dask_label
      tolerations = [
        { key = "forge.dev/dask", operator = "Equal", value = "true", effect = "NoSchedule" },
        { key = "cloud.google.com/gke-spot", operator = "Equal", value = "true", effect = "NoSchedule" },
      ]
    }
  }
}
