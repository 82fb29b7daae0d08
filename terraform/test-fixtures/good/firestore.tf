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
  member  = "serviceAccount:worker@example.iam.gserviceaccount.com"
  condition {
    title      = "coordination database only"
    expression = "resource.name == \"projects/${local.project}/databases/${google_firestore_database.coordination.name}\""
  }
}
