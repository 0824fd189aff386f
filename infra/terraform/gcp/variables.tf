variable "project_id" {
  type        = string
  description = "GCP project that holds the bakery."
}

variable "region" {
  type        = string
  description = "Region of the cluster and the buckets; put it near the data sources to shorten transfers."
  default     = "us-central1"
}

variable "name" {
  type        = string
  description = "Prefix of every resource name (the bakery id)."
  default     = "forge-bakery-gcp"
}

variable "namespace" {
  type        = string
  description = "Kubernetes namespace of the Prefect worker, flow pods and Dask clusters."
  default     = "forge"
}

variable "service_account" {
  type        = string
  description = "Kubernetes service account of flow and Dask pods, bound to the bakery's Google identity."
  default     = "forge-bakery"
}

variable "master_authorized_cidrs" {
  type        = list(string)
  description = "CIDR blocks allowed to reach the Kubernetes API (your office or CI runners)."
  validation {
    condition     = !contains(var.master_authorized_cidrs, "0.0.0.0/0")
    error_message = "The Kubernetes API must not be open to the whole internet."
  }
}

variable "system_machine_type" {
  type        = string
  description = "Machine type of the system pool (Prefect worker, flow pods, Dask schedulers)."
  default     = "e2-standard-4"
}

variable "dask_machine_type" {
  type        = string
  description = "Machine type of the spot pool that runs Dask workers."
  default     = "c2d-standard-8"
}

variable "dask_max_nodes" {
  type        = number
  description = "Upper bound of the autoscaling spot pool for Dask workers."
  default     = 20
}

variable "cache_retention_days" {
  type        = number
  description = "Cached source files older than this many days are deleted."
  default     = 30
}

variable "prefect_api_url" {
  type        = string
  description = "Prefect API URL the worker polls (Prefect Cloud workspace or self-hosted server)."
}

variable "prefect_api_key_secret" {
  type        = string
  description = "Name of an existing Kubernetes secret (key: key) holding the Prefect API key; never the key."
  default     = "prefect-api-key"
}

variable "trigger_endpoint" {
  type        = string
  description = "HTTPS URL of `forge receiver` that Pub/Sub pushes new-object notifications to."
}

variable "trigger_audience" {
  type        = string
  description = "Audience of the OIDC token Pub/Sub signs its pushes with (checked by the receiver)."
  default     = "forge-receiver"
}

variable "image" {
  type        = string
  description = "Container image of flow and Dask pods (built from the repository's Dockerfile)."
  default     = "ghcr.io/forge-recipes/forge:0.1.0"
}
