locals {
  apis    = toset(["cloudresourcemanager.googleapis.com", "firestore.googleapis.com"])
  project = one(distinct([for s in google_project_service.api : s.project]))
}

resource "google_project_service" "api" {
  for_each = local.apis
  project  = var.project_id
  service  = each.key
}

resource "google_firestore_database" "coordination" {
  project     = local.project
  name        = "phasegate"
  location_id = "nam5"
  type        = "FIRESTORE_NATIVE"
}

resource "google_firestore_field" "ttl" {
  for_each   = toset(["claims", "events"])
  project    = local.project
  database   = google_firestore_database.coordination.name
  collection = each.key
  field      = "expire_at"
  ttl_config {}
  index_config {}
}

resource "google_project_iam_member" "worker_firestore_user" {
  project = local.project
  role    = "roles/datastore.user"
  member  = "serviceAccount:worker@example.iam.gserviceaccount.com" # no condition: every database of the project
}

resource "google_project_iam_member" "reader_default_db" {
  project = local.project
  role    = "roles/datastore.viewer"
  member  = "serviceAccount:reader@example.iam.gserviceaccount.com"
  condition {
    title      = "the default database"
    expression = "resource.name == \"projects/${local.project}/databases/(default)\"" # not a database of this module
  }
}
