locals {
  tags         = { "forge-bakery" = var.name }
  system_label = { "forge.dev/pool" = "system" }
  dask_label   = { "forge.dev/pool" = "dask" }
  containers   = toset(["cache", "target", "landing"])
}

resource "azurerm_resource_group" "bakery" {
  name     = var.name
  location = var.location
  tags     = local.tags
}

# ---------------------------------------------------------------- cluster

resource "azurerm_kubernetes_cluster" "bakery" {
  # checkov:skip=CKV_AZURE_115:A private cluster needs a private network path for Terraform; the API is limited to api_authorized_cidrs.
  # checkov:skip=CKV_AZURE_117:Disks use platform-managed keys; a disk encryption set is an organisation's choice.
  # checkov:skip=CKV_AZURE_226:Ephemeral OS disks depend on the VM size's cache; managed disks work for every size.
  # checkov:skip=CKV_AZURE_227:Host encryption must be enabled on the subscription first; not every organisation has it.
  # checkov:skip=CKV_AZURE_141:Terraform's helm and kubernetes providers use the admin kubeconfig; switch to Entra ID RBAC with kubelogin if you have it.
  # checkov:skip=CKV_AZURE_232:Flow pods and Dask schedulers belong on the system pool (never on spot); it is not for critical addons only.
  # checkov:skip=CKV_AZURE_6:Authorized ranges are set in api_server_access_profile from a validated variable, which checkov cannot read.
  name                      = var.name
  location                  = azurerm_resource_group.bakery.location
  resource_group_name       = azurerm_resource_group.bakery.name
  dns_prefix                = var.name
  sku_tier                  = "Standard"
  automatic_upgrade_channel = "stable"
  oidc_issuer_enabled       = true
  workload_identity_enabled = true
  azure_policy_enabled      = true
  local_account_disabled    = false # the helm/kubernetes providers authenticate with the cluster's admin config
  tags                      = local.tags

  default_node_pool {
    name                         = "system"
    vm_size                      = var.system_vm_size
    auto_scaling_enabled         = true
    min_count                    = 1
    max_count                    = 3
    max_pods                     = 50
    only_critical_addons_enabled = false
    node_labels                  = local.system_label
    upgrade_settings {
      max_surge = "33%"
    }
  }

  identity {
    type = "SystemAssigned"
  }

  network_profile {
    network_plugin = "azure"
    network_policy = "azure"
  }

  api_server_access_profile {
    authorized_ip_ranges = var.api_authorized_cidrs
  }

  key_vault_secrets_provider {
    secret_rotation_enabled = true
  }

  oms_agent {
    log_analytics_workspace_id = azurerm_log_analytics_workspace.bakery.id
  }
}

resource "azurerm_log_analytics_workspace" "bakery" {
  name                = var.name
  location            = azurerm_resource_group.bakery.location
  resource_group_name = azurerm_resource_group.bakery.name
  sku                 = "PerGB2018"
  retention_in_days   = 30
  tags                = local.tags
}

# Spot nodes for Dask workers: scale from zero, tainted so that only pods tolerating the taints
# (the DaskCluster spec in deployments/bakeries.yaml) land there. AKS adds the scalesetpriority taint
# itself; it is listed so that Terraform does not see a difference.
resource "azurerm_kubernetes_cluster_node_pool" "dask" {
  name                  = "daskspot"
  kubernetes_cluster_id = azurerm_kubernetes_cluster.bakery.id
  vm_size               = var.dask_vm_size
  priority              = "Spot"
  eviction_policy       = "Delete"
  spot_max_price        = -1
  auto_scaling_enabled  = true
  min_count             = 0
  max_count             = var.dask_max_nodes
  max_pods              = 50
  node_labels           = local.dask_label
  node_taints           = ["forge.dev/dask=true:NoSchedule", "kubernetes.azure.com/scalesetpriority=spot:NoSchedule"]
  tags                  = local.tags
  # checkov:skip=CKV_AZURE_227:Host encryption must be enabled on the subscription first; not every organisation has it.
}

# ---------------------------------------------------------------- storage

resource "azurerm_storage_account" "bakery" {
  # checkov:skip=CKV_AZURE_33:Queue service is unused, so it has nothing to log.
  # checkov:skip=CKV_AZURE_206:Stores can be rebuilt from their sources; LRS is the cost-effective choice, raise it if needed.
  # checkov:skip=CKV2_AZURE_1:Platform-managed keys; customer-managed keys are an organisation's choice.
  # checkov:skip=CKV_AZURE_59:Pods reach storage over the internet from a cluster without a private endpoint; access needs Entra ID.
  # checkov:skip=CKV2_AZURE_33:See CKV_AZURE_59: no private endpoint in this minimal bakery.
  # checkov:skip=CKV2_AZURE_40:Shared keys are disabled below; checkov misreads the provider flag.
  # checkov:skip=CKV2_AZURE_38:Soft delete of a disposable cache only adds cost; the target's blobs are kept 7 days (see below).
  # checkov:skip=CKV2_AZURE_41:No SAS tokens are issued: access is by Entra ID only.
  name                            = var.storage_account_name
  resource_group_name             = azurerm_resource_group.bakery.name
  location                        = azurerm_resource_group.bakery.location
  account_tier                    = "Standard"
  account_replication_type        = "LRS"
  account_kind                    = "StorageV2"
  is_hns_enabled                  = true # Data Lake Gen2: abfs:// paths
  min_tls_version                 = "TLS1_2"
  https_traffic_only_enabled      = true
  allow_nested_items_to_be_public = false
  shared_access_key_enabled       = false
  local_user_enabled              = false
  tags                            = local.tags

  blob_properties {
    delete_retention_policy {
      days = 7
    }
  }
}

resource "azurerm_storage_container" "bakery" {
  # checkov:skip=CKV2_AZURE_21:Blob logging is set on the account's diagnostic settings by the organisation.
  for_each              = local.containers
  name                  = each.value
  storage_account_id    = azurerm_storage_account.bakery.id
  container_access_type = "private"
}

resource "azurerm_storage_management_policy" "bakery" {
  storage_account_id = azurerm_storage_account.bakery.id
  rule {
    name    = "expire-cache-and-landing"
    enabled = true
    filters {
      blob_types   = ["blockBlob"]
      prefix_match = ["cache/", "landing/"]
    }
    actions {
      base_blob {
        delete_after_days_since_modification_greater_than = var.cache_retention_days
      }
    }
  }
}

# ---------------------------------------------------------------- identity (AKS workload identity)

resource "azurerm_user_assigned_identity" "bakery" {
  name                = var.name
  resource_group_name = azurerm_resource_group.bakery.name
  location            = azurerm_resource_group.bakery.location
  tags                = local.tags
}

resource "azurerm_federated_identity_credential" "bakery" {
  name                = "${var.name}-${var.service_account}"
  resource_group_name = azurerm_resource_group.bakery.name
  parent_id           = azurerm_user_assigned_identity.bakery.id
  audience            = ["api://AzureADTokenExchange"]
  issuer              = azurerm_kubernetes_cluster.bakery.oidc_issuer_url
  subject             = "system:serviceaccount:${var.namespace}:${var.service_account}"
}

resource "azurerm_role_assignment" "bakery_storage" {
  scope                = azurerm_storage_account.bakery.id
  role_definition_name = "Storage Blob Data Contributor"
  principal_id         = azurerm_user_assigned_identity.bakery.principal_id
}

# ---------------------------------------------------------------- storage-event triggers

resource "azurerm_eventgrid_system_topic" "storage" {
  name                   = "${var.name}-storage"
  resource_group_name    = azurerm_resource_group.bakery.name
  location               = azurerm_resource_group.bakery.location
  source_arm_resource_id = azurerm_storage_account.bakery.id
  topic_type             = "Microsoft.Storage.StorageAccounts"
  tags                   = local.tags
}

# Event Grid first sends a SubscriptionValidationEvent, which `forge receiver` answers.
resource "azurerm_eventgrid_system_topic_event_subscription" "receiver" {
  name                 = "${var.name}-receiver"
  system_topic         = azurerm_eventgrid_system_topic.storage.name
  resource_group_name  = azurerm_resource_group.bakery.name
  included_event_types = ["Microsoft.Storage.BlobCreated"]
  subject_filter {
    subject_begins_with = "/blobServices/default/containers/landing/"
  }
  webhook_endpoint {
    url                               = var.trigger_endpoint
    max_events_per_batch              = 50
    preferred_batch_size_in_kilobytes = 64
  }
  delivery_property {
    header_name = "X-Forge-Token"
    type        = "Static"
    value       = var.trigger_secret
    secret      = true
  }
  retry_policy {
    max_delivery_attempts = 30
    event_time_to_live    = 1440
  }
}

# ---------------------------------------------------------------- in-cluster: namespace, RBAC, helm

module "in_cluster" {
  source                      = "../modules/bakery-k8s"
  namespace                   = var.namespace
  service_account             = var.service_account
  service_account_annotations = { "azure.workload.identity/client-id" = azurerm_user_assigned_identity.bakery.client_id }
  service_account_labels      = { "azure.workload.identity/use" = "true" }
  work_pool                   = "bakery-azure"
  prefect_api_url             = var.prefect_api_url
  prefect_api_key_secret      = var.prefect_api_key_secret
  image                       = var.image
  receiver_token              = var.trigger_secret
  depends_on                  = [azurerm_kubernetes_cluster.bakery]
}
