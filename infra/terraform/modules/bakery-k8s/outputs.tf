output "namespace" {
  description = "Namespace of the bakery's pods."
  value       = kubernetes_namespace.forge.metadata[0].name
}

output "service_account" {
  description = "Service account of the flow and Dask pods."
  value       = kubernetes_service_account.bakery.metadata[0].name
}
