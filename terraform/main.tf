# phasegate on Google Cloud, one file per concept: the APIs and shared names (here), Pub/Sub
# (pubsub.tf), the Cloud Run workers (run.tf), the pipeline file (config.tf), BigQuery
# (bigquery.tf), the claims and leases in Firestore (firestore.tf), Cloud Scheduler: the
# daily trigger and the relay (scheduler.tf), the freshness job (freshness.tf), the image
# registry (registry.tf) and the alerts (monitoring.tf).
#
# Every resource that calls an API waits for it: each takes `project = local.project`, which
# is read from google_project_service.api, so Terraform orders it after every API is on;
# resources without a project argument reference one that has it. scripts/check_terraform.py
# checks this graph statically (and that each resource type's API is in local.apis).

locals {
  # Every API a resource of this module calls.
  apis = toset([
    "artifactregistry.googleapis.com",
    "bigquery.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudscheduler.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
  ])

  labels = merge(var.labels, { app = "phasegate", pipeline = var.pipeline_name })

  trigger_topic = "${var.pipeline_name}-trigger"
  # Phase -> the topic it listens to: the trigger for the first, else the previous phase's
  # completion topic (the convention pipeline.toml follows; scripts/check_terraform.py checks it).
  input_topic = {
    for i, p in var.phases : p => i == 0 ? local.trigger_topic : "${var.pipeline_name}-${var.phases[i - 1]}-complete"
  }
  completion_topic = { for p in var.phases : p => "${var.pipeline_name}-${p}-complete" }
  audience         = { for p in var.phases : p => "phasegate-${var.pipeline_name}-${p}" }
  config_path      = "${var.config_mount_dir}/pipeline.toml"
  ledger_schema    = jsondecode(file("${path.module}/ledger_schema.json"))
  claims_schema    = jsondecode(file("${path.module}/claims_schema.json"))
}

resource "google_project_service" "api" {
  for_each = local.apis
  project  = var.project_id
  service  = each.key
  # Leave the APIs on when this module is destroyed: other workloads may use them (also the
  # 7.x default; explicit for 6.x).
  disable_on_destroy = false
}

locals {
  # Every resource takes its project from the enabled APIs, so none is created before them.
  project = one(distinct([for s in google_project_service.api : s.project]))
}

# The Pub/Sub service agent exists only once Pub/Sub has created it, which a fresh project may
# not have done yet: create it before granting it anything (dead-lettering, push tokens).
resource "google_project_service_identity" "pubsub" {
  provider = google-beta
  project  = local.project
  service  = "pubsub.googleapis.com"
}

locals {
  pubsub_agent = "serviceAccount:${google_project_service_identity.pubsub.email}"
}
