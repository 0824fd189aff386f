output "cluster_name" {
  description = "AKS cluster; `az aks get-credentials --name` with it."
  value       = azurerm_kubernetes_cluster.bakery.name
}

output "landing_container" {
  description = "Container whose new blobs trigger append runs."
  value       = "abfs://landing@${azurerm_storage_account.bakery.name}.dfs.core.windows.net"
}

output "bakery_registry_entry" {
  description = "The `azure` entry of deployments/bakeries.yaml for this bakery (paste it there)."
  value = {
    description = "AKS ${azurerm_kubernetes_cluster.bakery.name} with workload identity; dask-kubernetes operator on a spot pool."
    work_pool   = { name = "bakery-azure", type = "kubernetes" }
    target_root = "abfs://target@${azurerm_storage_account.bakery.name}.dfs.core.windows.net"
    cache_root  = "abfs://cache@${azurerm_storage_account.bakery.name}.dfs.core.windows.net"
    credentials = { kind = "workload-identity", service_account = module.in_cluster.service_account }
    flow_pod = {
      image         = var.image
      namespace     = module.in_cluster.namespace
      cpu           = "1"
      memory        = "4Gi"
      node_selector = local.system_label
      labels        = { "azure.workload.identity/use" = "true" }
    }
    dask = {
      kind            = "kubernetes"
      image           = var.image
      namespace       = module.in_cluster.namespace
      service_account = module.in_cluster.service_account
      worker          = { cpu = "1", memory = "4Gi" }
      scheduler       = { cpu = "1", memory = "2Gi" }
      adapt           = { minimum = 0, maximum = var.dask_max_nodes * 8 }
      labels          = { "azure.workload.identity/use" = "true" }
      node_selector   = local.dask_label
      tolerations = [
        { key = "forge.dev/dask", operator = "Equal", value = "true", effect = "NoSchedule" },
        { key = "kubernetes.azure.com/scalesetpriority", operator = "Equal", value = "spot", effect = "NoSchedule" },
      ]
    }
  }
}
