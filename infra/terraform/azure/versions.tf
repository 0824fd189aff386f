terraform {
  required_version = ">= 1.6"
  required_providers {
    azurerm    = { source = "hashicorp/azurerm", version = "~> 4.14" }
    helm       = { source = "hashicorp/helm", version = "~> 2.16" }
    kubernetes = { source = "hashicorp/kubernetes", version = "~> 2.33" }
  }
}

provider "azurerm" {
  features {}
  subscription_id     = var.subscription_id
  storage_use_azuread = true # shared keys are disabled on the storage account
}

provider "kubernetes" {
  host                   = azurerm_kubernetes_cluster.bakery.kube_config[0].host
  client_certificate     = base64decode(azurerm_kubernetes_cluster.bakery.kube_config[0].client_certificate)
  client_key             = base64decode(azurerm_kubernetes_cluster.bakery.kube_config[0].client_key)
  cluster_ca_certificate = base64decode(azurerm_kubernetes_cluster.bakery.kube_config[0].cluster_ca_certificate)
}

provider "helm" {
  kubernetes {
    host                   = azurerm_kubernetes_cluster.bakery.kube_config[0].host
    client_certificate     = base64decode(azurerm_kubernetes_cluster.bakery.kube_config[0].client_certificate)
    client_key             = base64decode(azurerm_kubernetes_cluster.bakery.kube_config[0].client_key)
    cluster_ca_certificate = base64decode(azurerm_kubernetes_cluster.bakery.kube_config[0].cluster_ca_certificate)
  }
}
