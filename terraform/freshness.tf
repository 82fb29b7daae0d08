# Freshness: a Cloud Run job running `phasegate freshness` on a schedule. The command exits
# non-zero when a phase's expected date is not done by its deadline ([phases] freshness in
# pipeline.toml), which fails the execution; monitoring.tf alerts on failed executions.
# It reads the pipeline file from the same Secret Manager secret as the workers (config.tf)
# and the ledger with read-only rights (bigquery.tf).

resource "google_service_account" "freshness" {
  count        = var.enable_freshness_job ? 1 : 0
  project      = local.project
  account_id   = "pg-${var.pipeline_name}-fresh"
  display_name = "phasegate ${var.pipeline_name} freshness job"
}

resource "google_secret_manager_secret_iam_member" "freshness_config_accessor" {
  count     = var.enable_freshness_job ? 1 : 0
  project   = local.project
  secret_id = google_secret_manager_secret.config.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.freshness[0].email}"
}

resource "google_cloud_run_v2_job" "freshness" {
  count    = var.enable_freshness_job ? 1 : 0
  project  = local.project
  name     = "phasegate-${var.pipeline_name}-freshness"
  location = var.region
  labels   = local.labels
  # Stateless; Terraform may replace it.
  deletion_protection = false

  template {
    labels = local.labels
    # One task, no retries: a late phase is the signal, a retry would only delay it.
    task_count = 1
    template {
      service_account = google_service_account.freshness[0].email
      timeout         = "300s"
      max_retries     = 0

      volumes {
        name = "pipeline-config"
        secret {
          secret = google_secret_manager_secret.config.secret_id
          items {
            version = google_secret_manager_secret_version.config.version
            path    = "pipeline.toml"
          }
        }
      }

      containers {
        image = var.image
        args  = ["freshness"]
        resources {
          limits = {
            cpu    = "1"
            memory = "512Mi"
          }
        }
        volume_mounts {
          name       = "pipeline-config"
          mount_path = var.config_mount_dir
        }
        env {
          name  = "PHASEGATE_CONFIG"
          value = local.config_path
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
          value = local.project
        }
        env {
          name  = "PHASEGATE_BIGQUERY_DATASET"
          value = google_bigquery_dataset.pipeline.dataset_id
        }
        env {
          name  = "PHASEGATE_BIGQUERY_LOCATION"
          value = google_bigquery_dataset.pipeline.location
        }
        env {
          name  = "PHASEGATE_LOG_FORMAT"
          value = "json"
        }
      }
    }
  }

  depends_on = [google_secret_manager_secret_iam_member.freshness_config_accessor]
}

# The scheduler identity may run this job (roles/run.invoker on the job: "Execute jobs on a
# schedule", cloud.google.com/run/docs/execute/jobs-on-schedule).
resource "google_cloud_run_v2_job_iam_member" "freshness_invoker" {
  count    = var.enable_freshness_job ? 1 : 0
  project  = local.project
  location = var.region
  name     = google_cloud_run_v2_job.freshness[0].name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.scheduler.email}"
}

# Runs the job through the Cloud Run Admin API (jobs.run) with an OAuth token (a Google API,
# not a Cloud Run URL: OAuth, not OIDC).
resource "google_cloud_scheduler_job" "freshness" {
  count            = var.enable_freshness_job ? 1 : 0
  project          = local.project
  region           = local.scheduler_region
  name             = "${var.pipeline_name}-freshness"
  description      = "phasegate ${var.pipeline_name}: run the freshness job (fails when a phase is late)."
  schedule         = var.freshness_schedule
  time_zone        = var.schedule_time_zone
  attempt_deadline = "60s"

  retry_config {
    retry_count = 1
  }

  http_target {
    http_method = "POST"
    uri         = "https://run.googleapis.com/v2/projects/${local.project}/locations/${var.region}/jobs/${google_cloud_run_v2_job.freshness[0].name}:run"
    oauth_token {
      service_account_email = google_service_account.scheduler.email
      scope                 = "https://www.googleapis.com/auth/cloud-platform"
    }
  }

  depends_on = [google_cloud_run_v2_job_iam_member.freshness_invoker]
}
