variable "region" {
  type        = string
  description = "AWS region of the cluster and the buckets; put it near the data sources to shorten transfers."
  default     = "us-west-2"
}

variable "name" {
  type        = string
  description = "Prefix of every resource name (the bakery id)."
  default     = "forge-bakery-aws"
}

variable "vpc_id" {
  type        = string
  description = "VPC of the cluster (one with NAT, so private nodes reach HTTP/FTP data sources)."
}

variable "private_subnet_ids" {
  type        = list(string)
  description = "Private subnets (two or more availability zones) for the control plane and the nodes."
}

variable "api_public_cidrs" {
  type        = list(string)
  description = "CIDR blocks allowed to reach the public Kubernetes API endpoint (your office or CI runners)."
  validation {
    condition     = !contains(var.api_public_cidrs, "0.0.0.0/0")
    error_message = "The Kubernetes API must not be open to the whole internet."
  }
}

variable "kubernetes_version" {
  type        = string
  description = "EKS Kubernetes version."
  default     = "1.33"
}

variable "namespace" {
  type        = string
  description = "Kubernetes namespace of the Prefect worker, flow pods and Dask clusters."
  default     = "forge"
}

variable "service_account" {
  type        = string
  description = "Kubernetes service account of flow and Dask pods, bound to the bakery's IAM role (IRSA)."
  default     = "forge-bakery"
}

variable "system_instance_types" {
  type        = list(string)
  description = "Instance types of the system node group (Prefect worker, flow pods, Dask schedulers)."
  default     = ["m6i.xlarge"]
}

variable "dask_instance_types" {
  type        = list(string)
  description = "Instance types of the spot node group for Dask workers (several, for spot capacity)."
  default     = ["c6i.2xlarge", "c6a.2xlarge", "c5.2xlarge"]
}

variable "dask_max_nodes" {
  type        = number
  description = "Upper bound of the autoscaling spot node group for Dask workers."
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
  description = "HTTPS URL of `forge receiver` that EventBridge posts new-object events to."
}

variable "trigger_secret" {
  type        = string
  description = "Shared secret EventBridge sends in the X-Forge-Token header; the receiver checks it."
  sensitive   = true
}

variable "image" {
  type        = string
  description = "Container image of flow and Dask pods (built from the repository's Dockerfile)."
  default     = "ghcr.io/forge-recipes/forge:0.1.0"
}
