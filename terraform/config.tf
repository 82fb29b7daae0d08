# The pipeline file, delivered at deploy time: a Secret Manager secret whose version is the
# content of var.config_file, mounted into every worker (run.tf). The image carries no config.

resource "google_secret_manager_secret" "config" {
  project   = local.project
  secret_id = "${var.pipeline_name}-pipeline-config"
  labels    = local.labels
  replication {
    auto {}
  }
}

resource "google_secret_manager_secret_version" "config" {
  secret      = google_secret_manager_secret.config.id
  secret_data = file(var.config_file)
  # A replaced version (a new config) is disabled, not deleted: the history stays auditable.
  deletion_policy = "DISABLE"
  lifecycle {
    # The new version exists before the services move to it and the old one is disabled.
    create_before_destroy = true
  }
}

# Each worker reads this secret only.
resource "google_secret_manager_secret_iam_member" "worker_config_accessor" {
  for_each  = toset(var.phases)
  project   = local.project
  secret_id = google_secret_manager_secret.config.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.worker[each.key].email}"
}
