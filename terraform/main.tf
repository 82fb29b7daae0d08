# phasegate on Google Cloud: per phase a Cloud Run worker, its completion topic, a push
# subscription from the previous phase's completion topic (OIDC, exponential retry, dead
# letters), and the least IAM each identity needs; the BigQuery dataset and ledger table.

data "google_project" "this" {
  project_id = var.project_id
}

locals {
  trigger_topic = "${var.pipeline_name}-trigger"
  # Phase -> the topic it listens to: the trigger for the first, else the previous phase's
  # completion topic.
  input_topic = {
    for i, p in var.phases : p => i == 0 ? local.trigger_topic : "${var.pipeline_name}-${var.phases[i - 1]}-complete"
  }
  completion_topic = { for p in var.phases : p => "${var.pipeline_name}-${p}-complete" }
  audience         = { for p in var.phases : p => "phasegate-${var.pipeline_name}-${p}" }
  pubsub_agent     = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  ledger_schema    = jsondecode(file("${path.module}/ledger_schema.json"))
}

# ── Topics ────────────────────────────────────────────────────────────────────────────────

resource "google_pubsub_topic" "trigger" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption; pass a KMS key through a fork of this module where CMEK is required
  project = var.project_id
  name    = local.trigger_topic
}

resource "google_pubsub_topic" "completion" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption; pass a KMS key through a fork of this module where CMEK is required
  for_each = toset(var.phases)
  project  = var.project_id
  name     = local.completion_topic[each.key]
}

resource "google_pubsub_topic" "dead_letter" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption; pass a KMS key through a fork of this module where CMEK is required
  for_each = toset(var.phases)
  project  = var.project_id
  name     = "${var.pipeline_name}-${each.key}-dead-letter"
}

# Dead-lettered messages are kept for inspection and replay: nothing is lost.
resource "google_pubsub_subscription" "dead_letter" {
  for_each                   = toset(var.phases)
  project                    = var.project_id
  name                       = "${var.pipeline_name}-${each.key}-dead-letter"
  topic                      = google_pubsub_topic.dead_letter[each.key].id
  message_retention_duration = "604800s"
  ack_deadline_seconds       = 60
  expiration_policy {
    ttl = ""
  }
}

# ── Identities ────────────────────────────────────────────────────────────────────────────

resource "google_service_account" "worker" {
  for_each     = toset(var.phases)
  project      = var.project_id
  account_id   = substr("pg-${var.pipeline_name}-${each.key}", 0, 30)
  display_name = "phasegate ${var.pipeline_name} ${each.key} worker"
}

# The identity Pub/Sub signs push tokens as; the only one allowed to invoke the workers.
resource "google_service_account" "pusher" {
  project      = var.project_id
  account_id   = substr("pg-${var.pipeline_name}-pusher", 0, 30)
  display_name = "phasegate ${var.pipeline_name} Pub/Sub push identity"
}

# Pub/Sub mints OIDC tokens for the push identity.
resource "google_service_account_iam_member" "pusher_token_creator" {
  service_account_id = google_service_account.pusher.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent
}

# ── Workers ───────────────────────────────────────────────────────────────────────────────

resource "google_cloud_run_v2_service" "worker" {
  for_each            = toset(var.phases)
  project             = var.project_id
  name                = "phasegate-${var.pipeline_name}-${each.key}"
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_ALL"
  custom_audiences    = [local.audience[each.key]]
  deletion_protection = false

  template {
    service_account                  = google_service_account.worker[each.key].email
    timeout                          = "${var.processing_timeout_seconds}s"
    max_instance_request_concurrency = var.worker_concurrency
    scaling {
      max_instance_count = var.max_instances
    }
    containers {
      image = var.image
      args  = ["serve", "--phase", each.key]
      env {
        name  = "PHASEGATE_CONFIG"
        value = var.config_path
      }
      env {
        name  = "PHASEGATE_BACKEND"
        value = "bigquery"
      }
      env {
        name  = "PHASEGATE_BUS"
        value = "pubsub"
      }
      env {
        name  = "GOOGLE_CLOUD_PROJECT"
        value = var.project_id
      }
      env {
        name  = "PHASEGATE_BIGQUERY_DATASET"
        value = var.dataset_id
      }
      env {
        name  = "PHASEGATE_AUTH_MODE"
        value = "oidc"
      }
      env {
        name  = "PHASEGATE_AUTH_AUDIENCE"
        value = local.audience[each.key]
      }
      env {
        name  = "PHASEGATE_AUTH_ALLOWED_EMAILS"
        value = google_service_account.pusher.email
      }
      env {
        name  = "PHASEGATE_LOG_FORMAT"
        value = "json"
      }
      startup_probe {
        http_get {
          path = "/healthz"
        }
      }
      liveness_probe {
        http_get {
          path = "/healthz"
        }
      }
    }
  }
}

# Only the push identity may invoke a worker.
resource "google_cloud_run_v2_service_iam_member" "invoker" {
  for_each = toset(var.phases)
  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.worker[each.key].name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.pusher.email}"
}

# ── Subscriptions: each phase listens to the one before ─────────────────────────────────

resource "google_pubsub_subscription" "push" {
  for_each = toset(var.phases)
  project  = var.project_id
  name     = "${var.pipeline_name}-${each.key}-push"
  topic    = "projects/${var.project_id}/topics/${local.input_topic[each.key]}"
  # At least the worker's processing timeout: a long date is not redelivered while it runs.
  ack_deadline_seconds = var.processing_timeout_seconds

  push_config {
    push_endpoint = "${google_cloud_run_v2_service.worker[each.key].uri}/push"
    oidc_token {
      service_account_email = google_service_account.pusher.email
      audience              = local.audience[each.key]
    }
  }

  retry_policy {
    minimum_backoff = var.retry_minimum_backoff
    maximum_backoff = var.retry_maximum_backoff
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter[each.key].id
    max_delivery_attempts = var.max_delivery_attempts
  }

  expiration_policy {
    ttl = ""
  }

  depends_on = [google_pubsub_topic.trigger, google_pubsub_topic.completion]
}

# Dead-lettering: the Pub/Sub service agent publishes to the dead-letter topic and
# acknowledges on the source subscription.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  for_each = toset(var.phases)
  project  = var.project_id
  topic    = google_pubsub_topic.dead_letter[each.key].name
  role     = "roles/pubsub.publisher"
  member   = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  for_each     = toset(var.phases)
  project      = var.project_id
  subscription = google_pubsub_subscription.push[each.key].name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}

# Each worker publishes to its own completion topic only.
resource "google_pubsub_topic_iam_member" "completion_publisher" {
  for_each = toset(var.phases)
  project  = var.project_id
  topic    = google_pubsub_topic.completion[each.key].name
  role     = "roles/pubsub.publisher"
  member   = "serviceAccount:${google_service_account.worker[each.key].email}"
}

# ── BigQuery ──────────────────────────────────────────────────────────────────────────────

resource "google_bigquery_dataset" "pipeline" {
  #checkov:skip=CKV_GCP_81:Google-managed encryption; add default_encryption_configuration where CMEK is required
  project    = var.project_id
  dataset_id = var.dataset_id
  location   = var.dataset_location
}

resource "google_bigquery_table" "processor_run_history" {
  #checkov:skip=CKV_GCP_80:Google-managed encryption; add encryption_configuration where CMEK is required
  project             = var.project_id
  dataset_id          = google_bigquery_dataset.pipeline.dataset_id
  table_id            = "processor_run_history"
  description         = "phasegate run ledger: one row per state change of a run attempt; the latest recorded_at per run_id is its state."
  deletion_protection = true
  schema              = jsonencode(local.ledger_schema)

  time_partitioning {
    type  = "DAY"
    field = "data_date"
  }
  clustering = ["processor_name"]
}

# Workers read and write the pipeline's tables in this dataset only...
resource "google_bigquery_dataset_iam_member" "worker_data_editor" {
  for_each   = toset(var.phases)
  project    = var.project_id
  dataset_id = google_bigquery_dataset.pipeline.dataset_id
  role       = "roles/bigquery.dataEditor"
  member     = "serviceAccount:${google_service_account.worker[each.key].email}"
}

# ...and run query jobs (a project-level permission; it grants no data access by itself).
resource "google_project_iam_member" "worker_job_user" {
  for_each = toset(var.phases)
  project  = var.project_id
  role     = "roles/bigquery.jobUser"
  member   = "serviceAccount:${google_service_account.worker[each.key].email}"
}
