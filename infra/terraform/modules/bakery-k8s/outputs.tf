output "namespace" {
  description = "Namespace of the bakery's pods."
  value       = kubernetes_namespace.forge.metadata[0].name
}

output "service_account" {
  description = "Service account of the flow and Dask pods."
  value       = kubernetes_service_account.bakery.metadata[0].name
}

output "receiver_service" {
  description = "In-cluster address of `forge receiver`; publish it at trigger_endpoint through an HTTPS ingress."
  value       = "http://${kubernetes_service.receiver.metadata[0].name}.${kubernetes_namespace.forge.metadata[0].name}.svc.cluster.local"
}
