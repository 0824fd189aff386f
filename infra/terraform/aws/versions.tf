terraform {
  required_version = ">= 1.6"
  required_providers {
    aws        = { source = "hashicorp/aws", version = "~> 5.80" }
    helm       = { source = "hashicorp/helm", version = "~> 2.16" }
    kubernetes = { source = "hashicorp/kubernetes", version = "~> 2.33" }
    tls        = { source = "hashicorp/tls", version = "~> 4.0" }
  }
}

provider "aws" {
  region = var.region
  default_tags {
    tags = { "forge-bakery" = var.name }
  }
}

data "aws_eks_cluster_auth" "bakery" {
  name = aws_eks_cluster.bakery.name
}

provider "kubernetes" {
  host                   = aws_eks_cluster.bakery.endpoint
  token                  = data.aws_eks_cluster_auth.bakery.token
  cluster_ca_certificate = base64decode(aws_eks_cluster.bakery.certificate_authority[0].data)
}

provider "helm" {
  kubernetes {
    host                   = aws_eks_cluster.bakery.endpoint
    token                  = data.aws_eks_cluster_auth.bakery.token
    cluster_ca_certificate = base64decode(aws_eks_cluster.bakery.certificate_authority[0].data)
  }
}
