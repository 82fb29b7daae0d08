# The Cloud Run workers: one service per phase, same image, `phasegate serve --phase P`, the
# pipeline file mounted from Secret Manager, invoked only by the push identity (pushes) and
# the scheduler identity (the scheduled relay, scheduler.tf); beside each worker, Google's
# Managed Service for Prometheus collector, which scrapes /metrics into Cloud Monitoring.

resource "google_service_account" "worker" {
  for_each     = toset(var.phases)
  project      = local.project
  account_id   = "pg-${var.pipeline_name}-${each.key}"
  display_name = "phasegate ${var.pipeline_name} ${each.key} worker"
}

resource "google_cloud_run_v2_service" "worker" {
  for_each = toset(var.phases)
  project  = local.project
  name     = "phasegate-${var.pipeline_name}-${each.key}"
  location = var.region
  labels   = merge(local.labels, { phase = each.key })
  # Internal only by default: Pub/Sub push from this project's subscriptions to the run.app URL
  # is internal traffic; nothing else needs to reach a worker.
  ingress = var.ingress
  # The worker is the one token check (src/auth): with Cloud Run's invoker IAM check on, Cloud
  # Run verifies the ID token and forwards it with its signature replaced by
  # SIGNATURE_REMOVED_BY_GOOGLE (https://cloud.google.com/run/docs/troubleshooting#signature-removed),
  # and a worker that verifies signatures would refuse every push. With the check off
  # (https://cloud.google.com/run/docs/securing/managing-access#invoker_check; provider >= 6.8)
  # the token arrives as Pub/Sub or Cloud Scheduler signed it and the worker checks all of it:
  # signature against Google's keys, audience, issuer, expiry, and the caller's email
  # (PHASEGATE_AUTH_ALLOWED_EMAILS for /push, PHASEGATE_AUTH_RELAY_EMAILS for /relay).
  invoker_iam_disabled = true
  # The OIDC audience Pub/Sub and Cloud Scheduler sign for, and the worker checks
  # (PHASEGATE_AUTH_AUDIENCE). Cloud Run itself checks it only with the invoker check on; kept
  # so a deployment that turns the check back on accepts the same tokens.
  custom_audiences = [local.audience[each.key]]
  # Terraform is the only owner and may replace a service; workers hold no state (the ledger
  # and the data live in BigQuery, which is protected).
  deletion_protection = false

  template {
    service_account                  = google_service_account.worker[each.key].email
    timeout                          = "${var.processing_timeout_seconds}s"
    max_instance_request_concurrency = var.worker_concurrency
    labels                           = merge(local.labels, { phase = each.key })

    scaling {
      min_instance_count = var.min_instances
      max_instance_count = var.max_instances
    }

    # The pipeline file, pinned to a secret version: a new config is a new version, hence a
    # new revision (never a silent change under running instances).
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
      # Named: the collector sidecar starts after it (depends_on below). The only container
      # with ports, hence the one that receives requests.
      name  = "worker"
      image = var.image
      args  = ["serve", "--phase", each.key]
      ports {
        container_port = 8080
      }
      resources {
        limits = {
          cpu    = var.cpu
          memory = var.memory
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
        # Claims and leases in Firestore (firestore.tf), in the project above
        # (GOOGLE_CLOUD_PROJECT, as for BigQuery); the ledger stays in BigQuery.
        name  = "PHASEGATE_COORDINATION"
        value = "firestore"
      }
      env {
        # The named database's id (never "(default)"); referencing it orders the service
        # after the database.
        name  = "PHASEGATE_FIRESTORE_DATABASE"
        value = google_firestore_database.coordination.name
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
        # Who may call POST /relay (Cloud Scheduler's OIDC token, same audience); pushes stay
        # limited to PHASEGATE_AUTH_ALLOWED_EMAILS.
        name  = "PHASEGATE_AUTH_RELAY_EMAILS"
        value = google_service_account.scheduler.email
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

    # Managed Service for Prometheus sidecar ("Write Prometheus metrics by using the
    # Prometheus sidecar", cloud.google.com/run/docs/monitoring-managed-prometheus-sidecar):
    # with no RunMonitoring config it scrapes 0.0.0.0:8080/metrics every 30 s (the worker's
    # port and path) and writes to Cloud Monitoring as the service's identity, which needs
    # roles/monitoring.metricWriter (below). It starts after the worker passed its startup
    # probe (containers.depends_on; Cloud Run "Deploying multiple containers to a service").
    # It scrapes once 10 s after start and once at shutdown however short-lived the instance;
    # with request-based billing a scrape between requests may be throttled (the page
    # recommends instance-based billing for full series; the push counters are cumulative,
    # so a missed scrape delays a sample, it does not lose counts of a live instance).
    dynamic "containers" {
      for_each = var.enable_prometheus_sidecar ? ["collector"] : []
      content {
        name       = containers.value
        image      = var.prometheus_sidecar_image
        depends_on = ["worker"]
        resources {
          limits = {
            cpu    = "1"
            memory = "512Mi"
          }
        }
      }
    }
  }

  # The worker must be able to read the pipeline file, and to claim in the coordination
  # database, before its first revision starts.
  depends_on = [
    google_secret_manager_secret_iam_member.worker_config_accessor,
    google_project_iam_member.worker_firestore_user,
  ]
}

# No run.invoker grants: the invoker IAM check is off (see invoker_iam_disabled above), so such
# grants would decide nothing; who may push or relay is the worker's allow-list.

# The collector writes the scraped series as the worker's identity. Metric writing is
# project-level only (there is no narrower resource to grant it on).
resource "google_project_iam_member" "worker_metric_writer" {
  for_each = var.enable_prometheus_sidecar ? toset(var.phases) : toset([])
  project  = local.project
  role     = "roles/monitoring.metricWriter"
  member   = "serviceAccount:${google_service_account.worker[each.key].email}"
}
