variable "namespace" {
  type        = string
  description = "Namespace of the Prefect worker, flow pods and Dask clusters."
}

variable "service_account" {
  type        = string
  description = "Service account of flow and Dask pods; the cloud identity is bound to it."
}

variable "service_account_annotations" {
  type        = map(string)
  description = "Annotations that bind the service account to the cloud identity (GKE, IRSA, AKS)."
  default     = {}
}

variable "service_account_labels" {
  type        = map(string)
  description = "Labels on the service account (AKS workload identity needs azure.workload.identity/use)."
  default     = {}
}

variable "work_pool" {
  type        = string
  description = "Prefect work pool the worker polls (bakery-<cloud>, as in deployments/bakeries.yaml)."
}

variable "prefect_api_url" {
  type        = string
  description = "Prefect API URL the worker polls."
}

variable "prefect_api_key_secret" {
  type        = string
  description = "Name of an existing Kubernetes secret (key: key) with the Prefect API key; empty for a server without auth."
  default     = ""
}

variable "prefect_worker_chart_version" {
  type        = string
  description = "Version of the prefecthq prefect-worker Helm chart."
  default     = "2026.10.30"
}

variable "dask_operator_chart_version" {
  type        = string
  description = "Version of the dask-kubernetes-operator Helm chart."
  default     = "2026.3.0"
}

variable "system_node_selector" {
  type        = map(string)
  description = "Node labels of the system pool, where the worker and the operator run."
  default     = { "forge.dev/pool" = "system" }
}

variable "image" {
  type        = string
  description = "Container image with the forge command (built from the repository's Dockerfile)."
}

variable "receiver_token" {
  type        = string
  description = "The X-Forge-Token shared secret the receiver checks (AWS, Azure); \"\" where pushes carry an OIDC token (GCP)."
  sensitive   = true
}

variable "receiver_oidc" {
  type        = map(string)
  description = "FORGE_RECEIVER_OIDC_AUDIENCE and FORGE_RECEIVER_OIDC_EMAIL where Pub/Sub pushes with an OIDC token (GCP)."
  default     = {}
}

variable "receiver_window_seconds" {
  type        = number
  description = "Seconds the receiver gathers a burst of new files into one append run."
  default     = 30
}
