variable "subscription_id" {
  type        = string
  description = "Azure subscription that holds the bakery."
}

variable "location" {
  type        = string
  description = "Azure region of the cluster and the storage account; put it near the data sources."
  default     = "eastus2"
}

variable "name" {
  type        = string
  description = "Prefix of every resource name (the bakery id)."
  default     = "forge-bakery-azure"
}

variable "storage_account_name" {
  type        = string
  description = "Globally unique storage account name (3-24 lowercase letters and digits)."
  default     = "forgebakery"
  validation {
    condition     = can(regex("^[a-z0-9]{3,24}$", var.storage_account_name))
    error_message = "Storage account names are 3-24 lowercase letters and digits."
  }
}

variable "api_authorized_cidrs" {
  type        = list(string)
  description = "CIDR blocks allowed to reach the Kubernetes API (your office or CI runners)."
  validation {
    condition     = !contains(var.api_authorized_cidrs, "0.0.0.0/0")
    error_message = "The Kubernetes API must not be open to the whole internet."
  }
}

variable "namespace" {
  type        = string
  description = "Kubernetes namespace of the Prefect worker, flow pods and Dask clusters."
  default     = "forge"
}

variable "service_account" {
  type        = string
  description = "Kubernetes service account of flow and Dask pods, federated with the bakery's managed identity."
  default     = "forge-bakery"
}

variable "system_vm_size" {
  type        = string
  description = "VM size of the system pool (Prefect worker, flow pods, Dask schedulers)."
  default     = "Standard_D4s_v5"
}

variable "dask_vm_size" {
  type        = string
  description = "VM size of the spot pool for Dask workers."
  default     = "Standard_F8s_v2"
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
  description = "HTTPS URL of `forge receiver` that Event Grid posts BlobCreated events to."
}

variable "trigger_secret" {
  type        = string
  description = "Shared secret Event Grid sends in the X-Forge-Token header; the receiver checks it."
  sensitive   = true
}

variable "image" {
  type        = string
  description = "Container image of flow and Dask pods (built from the repository's Dockerfile)."
  default     = "ghcr.io/forge-recipes/forge:0.1.0"
}
