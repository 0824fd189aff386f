locals {
  system_label = { "forge.dev/pool" = "system" }
  dask_label   = { "forge.dev/pool" = "dask" }
  buckets      = { cache = aws_s3_bucket.cache, target = aws_s3_bucket.target, landing = aws_s3_bucket.landing }
}

data "aws_caller_identity" "current" {}

resource "aws_kms_key" "bakery" {
  description         = "Encrypts the ${var.name} buckets, queue and Kubernetes secrets."
  enable_key_rotation = true
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "AccountAdministers"
        Effect    = "Allow"
        Principal = { AWS = "arn:aws:iam::${data.aws_caller_identity.current.account_id}:root" }
        Action    = "kms:*"
        Resource  = "*"
      },
      {
        Sid       = "EventsEncrypt"
        Effect    = "Allow"
        Principal = { Service = ["events.amazonaws.com", "s3.amazonaws.com"] }
        Action    = ["kms:GenerateDataKey", "kms:Decrypt"]
        Resource  = "*"
      },
    ]
  })
}

# ---------------------------------------------------------------- cluster

resource "aws_iam_role" "cluster" {
  name = "${var.name}-cluster"
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Principal = { Service = "eks.amazonaws.com" }, Action = "sts:AssumeRole" }]
  })
}

resource "aws_iam_role_policy_attachment" "cluster" {
  role       = aws_iam_role.cluster.name
  policy_arn = "arn:aws:iam::aws:policy/AmazonEKSClusterPolicy"
}

resource "aws_eks_cluster" "bakery" {
  # checkov:skip=CKV_AWS_39:Terraform's helm and kubernetes providers need the API; it is open to api_public_cidrs only.
  # checkov:skip=CKV_AWS_38:api_public_cidrs is validated to exclude 0.0.0.0/0 (variables.tf); checkov cannot see a variable.
  name                      = var.name
  version                   = var.kubernetes_version
  role_arn                  = aws_iam_role.cluster.arn
  enabled_cluster_log_types = ["api", "audit", "authenticator", "controllerManager", "scheduler"]
  vpc_config {
    subnet_ids              = var.private_subnet_ids
    endpoint_private_access = true
    endpoint_public_access  = true
    public_access_cidrs     = var.api_public_cidrs
  }
  encryption_config {
    resources = ["secrets"]
    provider {
      key_arn = aws_kms_key.bakery.arn
    }
  }
  depends_on = [aws_iam_role_policy_attachment.cluster]
}

resource "aws_iam_role" "nodes" {
  name = "${var.name}-nodes"
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Principal = { Service = "ec2.amazonaws.com" }, Action = "sts:AssumeRole" }]
  })
}

resource "aws_iam_role_policy_attachment" "nodes" {
  for_each   = toset(["AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryReadOnly"])
  role       = aws_iam_role.nodes.name
  policy_arn = "arn:aws:iam::aws:policy/${each.value}"
}

resource "aws_eks_node_group" "system" {
  cluster_name    = aws_eks_cluster.bakery.name
  node_group_name = "system"
  node_role_arn   = aws_iam_role.nodes.arn
  subnet_ids      = var.private_subnet_ids
  instance_types  = var.system_instance_types
  capacity_type   = "ON_DEMAND"
  labels          = local.system_label
  scaling_config {
    min_size     = 1
    desired_size = 1
    max_size     = 3
  }
  depends_on = [aws_iam_role_policy_attachment.nodes]
}

# Spot nodes for Dask workers: scale from zero, tainted so that only pods tolerating the taint
# (the DaskCluster spec in deployments/bakeries.yaml) land there.
resource "aws_eks_node_group" "dask" {
  cluster_name    = aws_eks_cluster.bakery.name
  node_group_name = "dask-spot"
  node_role_arn   = aws_iam_role.nodes.arn
  subnet_ids      = var.private_subnet_ids
  instance_types  = var.dask_instance_types
  capacity_type   = "SPOT"
  labels          = local.dask_label
  taint {
    key    = "forge.dev/dask"
    value  = "true"
    effect = "NO_SCHEDULE"
  }
  scaling_config {
    min_size     = 0
    desired_size = 0
    max_size     = var.dask_max_nodes
  }
  lifecycle {
    ignore_changes = [scaling_config[0].desired_size] # owned by the cluster autoscaler
  }
  depends_on = [aws_iam_role_policy_attachment.nodes]
}

# ---------------------------------------------------------------- storage

resource "aws_s3_bucket" "cache" {
  bucket = "${var.name}-cache"
  # checkov:skip=CKV_AWS_21:The cache is disposable (re-downloadable) and expires by age; versions would only add cost.
  # checkov:skip=CKV_AWS_144:Cross-region replication of a disposable cache is pointless.
  # checkov:skip=CKV_AWS_18:Access is audited by CloudTrail data events, not a second logging bucket.
  # checkov:skip=CKV2_AWS_62:Only the landing bucket's new objects trigger runs.
}

resource "aws_s3_bucket" "target" {
  bucket = "${var.name}-target"
  # checkov:skip=CKV_AWS_144:Stores can be rebuilt from their sources; replicate with your own policy if needed.
  # checkov:skip=CKV_AWS_18:Access is audited by CloudTrail data events, not a second logging bucket.
  # checkov:skip=CKV2_AWS_62:Only the landing bucket's new objects trigger runs.
}

# Where new source files land (mirrored by a provider or a sync job); new objects trigger appends.
resource "aws_s3_bucket" "landing" {
  bucket = "${var.name}-landing"
  # checkov:skip=CKV_AWS_21:Landing files are copies of public sources, kept until cached; versions would only add cost.
  # checkov:skip=CKV_AWS_144:Copies of public sources need no replication.
  # checkov:skip=CKV_AWS_18:Access is audited by CloudTrail data events, not a second logging bucket.
}

resource "aws_s3_bucket_public_access_block" "all" {
  for_each                = local.buckets
  bucket                  = each.value.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "all" {
  for_each = local.buckets
  bucket   = each.value.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.bakery.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_versioning" "target" {
  bucket = aws_s3_bucket.target.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "all" {
  for_each = local.buckets
  bucket   = each.value.id
  rule {
    id     = each.key == "target" ? "expire-overwritten-chunks" : "expire-by-age"
    status = "Enabled"
    filter {}
    dynamic "expiration" {
      for_each = each.key == "target" ? [] : [1]
      content {
        days = var.cache_retention_days
      }
    }
    # Versions of overwritten chunks are kept a week, enough to recover from a bad run.
    noncurrent_version_expiration {
      noncurrent_days = 7
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 2
    }
  }
}

# ---------------------------------------------------------------- identity (IRSA)

data "tls_certificate" "oidc" {
  url = aws_eks_cluster.bakery.identity[0].oidc[0].issuer
}

resource "aws_iam_openid_connect_provider" "eks" {
  url             = aws_eks_cluster.bakery.identity[0].oidc[0].issuer
  client_id_list  = ["sts.amazonaws.com"]
  thumbprint_list = [data.tls_certificate.oidc.certificates[0].sha1_fingerprint]
}

resource "aws_iam_role" "bakery" {
  name = var.name
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Federated = aws_iam_openid_connect_provider.eks.arn }
      Action    = "sts:AssumeRoleWithWebIdentity"
      Condition = {
        StringEquals = {
          "${replace(aws_iam_openid_connect_provider.eks.url, "https://", "")}:sub" = "system:serviceaccount:${var.namespace}:${var.service_account}"
          "${replace(aws_iam_openid_connect_provider.eks.url, "https://", "")}:aud" = "sts.amazonaws.com"
        }
      }
    }]
  })
}

resource "aws_iam_role_policy" "bakery_storage" {
  name = "storage"
  role = aws_iam_role.bakery.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Effect   = "Allow"
        Action   = ["s3:ListBucket", "s3:GetBucketLocation"]
        Resource = [for b in local.buckets : b.arn]
      },
      {
        Effect   = "Allow"
        Action   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
        Resource = [for b in local.buckets : "${b.arn}/*"]
      },
      {
        Effect   = "Allow"
        Action   = ["kms:GenerateDataKey", "kms:Decrypt"]
        Resource = [aws_kms_key.bakery.arn]
      },
    ]
  })
}

# ---------------------------------------------------------------- storage-event triggers

# New landing objects go to EventBridge, which posts them to `forge receiver`; undeliverable events wait
# in an SQS dead-letter queue.
resource "aws_s3_bucket_notification" "landing" {
  bucket      = aws_s3_bucket.landing.id
  eventbridge = true
}

resource "aws_cloudwatch_event_rule" "new_objects" {
  name        = "${var.name}-new-objects"
  description = "New objects in the landing bucket trigger append runs."
  event_pattern = jsonencode({
    source        = ["aws.s3"]
    "detail-type" = ["Object Created"]
    detail        = { bucket = { name = [aws_s3_bucket.landing.id] } }
  })
}

resource "aws_cloudwatch_event_connection" "receiver" {
  name               = "${var.name}-receiver"
  authorization_type = "API_KEY"
  auth_parameters {
    api_key {
      key   = "X-Forge-Token"
      value = var.trigger_secret
    }
  }
}

resource "aws_cloudwatch_event_api_destination" "receiver" {
  name                             = "${var.name}-receiver"
  invocation_endpoint              = var.trigger_endpoint
  http_method                      = "POST"
  invocation_rate_limit_per_second = 10
  connection_arn                   = aws_cloudwatch_event_connection.receiver.arn
}

resource "aws_sqs_queue" "undelivered" {
  name                      = "${var.name}-undelivered-events"
  kms_master_key_id         = aws_kms_key.bakery.arn
  message_retention_seconds = 1209600
}

resource "aws_iam_role" "events" {
  name = "${var.name}-events"
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Principal = { Service = "events.amazonaws.com" }, Action = "sts:AssumeRole" }]
  })
}

resource "aws_iam_role_policy" "events" {
  name = "invoke-receiver"
  role = aws_iam_role.events.id
  policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Action = "events:InvokeApiDestination", Resource = aws_cloudwatch_event_api_destination.receiver.arn }]
  })
}

resource "aws_sqs_queue_policy" "undelivered" {
  queue_url = aws_sqs_queue.undelivered.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "events.amazonaws.com" }
      Action    = "sqs:SendMessage"
      Resource  = aws_sqs_queue.undelivered.arn
      Condition = { ArnEquals = { "aws:SourceArn" = aws_cloudwatch_event_rule.new_objects.arn } }
    }]
  })
}

resource "aws_cloudwatch_event_target" "receiver" {
  rule     = aws_cloudwatch_event_rule.new_objects.name
  arn      = aws_cloudwatch_event_api_destination.receiver.arn
  role_arn = aws_iam_role.events.arn
  retry_policy {
    maximum_event_age_in_seconds = 3600
    maximum_retry_attempts       = 20
  }
  dead_letter_config {
    arn = aws_sqs_queue.undelivered.arn
  }
}

# ---------------------------------------------------------------- in-cluster: namespace, RBAC, helm

module "in_cluster" {
  source                      = "../modules/bakery-k8s"
  namespace                   = var.namespace
  service_account             = var.service_account
  service_account_annotations = { "eks.amazonaws.com/role-arn" = aws_iam_role.bakery.arn }
  work_pool                   = "bakery-aws"
  prefect_api_url             = var.prefect_api_url
  prefect_api_key_secret      = var.prefect_api_key_secret
  image                       = var.image
  receiver_token              = var.trigger_secret
  depends_on                  = [aws_eks_node_group.system]
}
