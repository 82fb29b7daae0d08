locals {
  apis    = toset(["bigquery.googleapis.com", "pubsub.googleapis.com", "cloudscheduler.googleapis.com", "firestore.googleapis.com", "cloudresourcemanager.googleapis.com"])
  project = one(distinct([for s in google_project_service.api : s.project]))
}

resource "google_project_service" "api" {
  for_each = local.apis
  project  = var.project_id
  service  = each.key
}

resource "google_bigquery_dataset" "d" {
  project    = local.project
  dataset_id = "d"
}

resource "google_bigquery_table" "t" {
  project    = local.project
  dataset_id = google_bigquery_dataset.d.dataset_id
  table_id   = "t"
}

resource "google_bigquery_table_iam_member" "w" {
  project    = local.project
  dataset_id = google_bigquery_dataset.d.dataset_id
  table_id   = google_bigquery_table.t.table_id
  role       = "roles/bigquery.dataViewer"
  member     = "user:someone@example.com"
}

resource "google_pubsub_topic" "trigger" {
  project = local.project
  name    = "trigger"
}

resource "google_cloud_scheduler_job" "daily_trigger" {
  count     = var.enable_scheduler ? 1 : 0
  project   = local.project
  name      = "daily"
  schedule  = "0 6 * * *"
  time_zone = var.schedule_time_zone
  pubsub_target {
    topic_name = google_pubsub_topic.trigger.id
    data       = base64encode("{}")
  }
}
