output "cluster_name" {
  description = "EKS cluster; `aws eks update-kubeconfig --name` with it."
  value       = aws_eks_cluster.bakery.name
}

output "landing_bucket" {
  description = "Bucket whose new objects trigger append runs."
  value       = aws_s3_bucket.landing.id
}

output "bakery_registry_entry" {
  description = "The `aws` entry of deployments/bakeries.yaml for this bakery (paste it there)."
  value = {
    description = "EKS ${aws_eks_cluster.bakery.name} with IRSA; dask-kubernetes operator on a spot node group."
    work_pool   = { name = "bakery-aws", type = "kubernetes" }
    target_root = "s3://${aws_s3_bucket.target.id}"
    cache_root  = "s3://${aws_s3_bucket.cache.id}"
    credentials = { kind = "irsa", service_account = module.in_cluster.service_account }
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
      tolerations     = [{ key = "forge.dev/dask", operator = "Equal", value = "true", effect = "NoSchedule" }]
    }
  }
}
