# The coordination store (issue 26): claims and leases live in a named Firestore database in
# Native mode; the ledger of record stays in BigQuery (bigquery.tf).
#
# Documents, all read and written by key (no query, hence no composite index):
#   pipelines/{pipeline}/claims/{processor}@{date}   collection group `claims`
#   pipelines/{pipeline}/events/{phase}@{date}       collection group `events`
# with the fields holder, status, renewed_at (server time), lease_secs, published, expire_at.
#
# Order of apply: the API (main.tf) -> the database -> its field configurations (below) and the
# workers' conditional grant -> the Cloud Run services (run.tf: PHASEGATE_FIRESTORE_DATABASE
# references the database, and the services depend_on the grant).

locals {
  # The collection groups the workers write, and the fields of their documents. Every field is
  # exempt from single-field indexing (nothing queries them); expire_at also carries the TTL.
  firestore_collections = toset(["claims", "events"])
  firestore_ttl_field   = "expire_at"
  firestore_unindexed = {
    for pair in setproduct(local.firestore_collections, ["holder", "status", "renewed_at", "lease_secs", "published"]) :
    "${pair[0]}.${pair[1]}" => { collection = pair[0], field = pair[1] }
  }
  # The database's resource name as IAM conditions see it: projects/PROJECT_ID/databases/DATABASE_ID.
  firestore_database_name = "projects/${local.project}/databases/${google_firestore_database.coordination.name}"
}

# A named database, never `(default)`: a project's default database may already exist (App
# Engine, Firebase, another team) in another mode or location, and its data would share the
# workers' grant. A named one is this module's alone, created, granted and destroyed with it.
resource "google_firestore_database" "coordination" {
  project     = local.project
  name        = var.firestore_database_id
  location_id = var.firestore_location
  type        = "FIRESTORE_NATIVE"
  # Native mode's default for new databases, stated: a read-write transaction locks what it
  # read, so two deliveries racing for one claim serialize (one commits, the other is aborted
  # and retries), never both win.
  concurrency_mode            = "PESSIMISTIC"
  app_engine_integration_mode = "DISABLED"
  # Claims and leases are short-lived coordination state; the record of every run is the
  # BigQuery ledger (7 days of time travel there). PITR would bill 7 days of versions for
  # documents that are worthless an hour later.
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_DISABLED"
  # Live claims gate every push: no API call or console click deletes the database while this
  # is on. terraform destroy is refused too (like the deletion-protected tables); with
  # deletion_policy = DELETE a destroy after turning protection off deletes it instead of
  # orphaning it (an orphan keeps the id taken and the next apply fails with 409).
  delete_protection_state = "DELETE_PROTECTION_ENABLED"
  deletion_policy         = "DELETE"
}

# TTL on expire_at, per collection group: Firestore deletes a document once expire_at has
# passed — "typically within 24 hours after its expiration date", and until then an expired
# document is still returned by reads ("Manage data retention with TTL policies",
# cloud.google.com/firestore/docs/ttl). So TTL is garbage collection only: whether a lease
# has expired is decided by the worker from its fields, never by the document's absence.
# TTL deletes are billed as document deletes. The field is also exempt from indexing (an
# indexed, ever-increasing timestamp caps a collection at 500 writes/s: "Sharded timestamps",
# cloud.google.com/firestore/docs/solutions/shard-timestamp); one field configuration holds
# both, as the provider's "Firestore Field Timestamp" example does.
resource "google_firestore_field" "ttl" {
  for_each   = local.firestore_collections
  project    = local.project
  database   = google_firestore_database.coordination.name
  collection = each.key
  field      = local.firestore_ttl_field

  ttl_config {}
  # An empty index_config disables every single-field index on the field.
  index_config {}
}

# The other fields: exempt from single-field indexing. Firestore indexes every field by
# default; reads here are by document key only, so the index entries would only add write
# latency ("the main contributor to write latency is index fanout", Firestore best practices)
# and billed index storage. (Document writes are billed per document, indexed or not.)
resource "google_firestore_field" "unindexed" {
  for_each   = local.firestore_unindexed
  project    = local.project
  database   = google_firestore_database.coordination.name
  collection = each.value.collection
  field      = each.value.field

  index_config {}
}

# Each worker reads and writes documents of this database, and of no other. Firestore IAM is
# project-level, so roles/datastore.user is granted on the project with the IAM condition
# Firestore documents for per-database access ("Configure per-database access permissions",
# cloud.google.com/firestore/native/docs/manage-databases#configure_per-database_access_permissions:
# --role='roles/datastore.user'
# --condition='expression=resource.name=="projects/PROJECT_ID/databases/DATABASE_ID",…').
# The freshness job gets nothing: `phasegate freshness` only reads the BigQuery ledger
# (src/freshness.rs), it never claims.
resource "google_project_iam_member" "worker_firestore_user" {
  for_each = toset(var.phases)
  project  = local.project
  role     = "roles/datastore.user"
  member   = "serviceAccount:${google_service_account.worker[each.key].email}"

  condition {
    title       = "phasegate ${var.pipeline_name} coordination database only"
    description = "Documents of the Firestore database ${var.firestore_database_id} (phasegate claims and leases), nothing else in the project."
    expression  = "resource.name == \"${local.firestore_database_name}\""
  }
}
