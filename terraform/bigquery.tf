# BigQuery: the dataset, the ledger table, and each worker's rights. A worker reads the
# dataset, inserts and deletes rows in the ledger and in its own output tables, and can drop,
# replace or re-schema none of them.

resource "google_bigquery_dataset" "pipeline" {
  #checkov:skip=CKV_GCP_81:Google-managed encryption; CMEK is optional here (add default_encryption_configuration in a fork where required)
  project    = local.project
  dataset_id = var.dataset_id
  location   = var.dataset_location
  labels     = local.labels
  # Seven days of time travel (the maximum): rows deleted by mistake can be restored.
  max_time_travel_hours = "168"
}

resource "google_bigquery_table" "processor_run_history" {
  #checkov:skip=CKV_GCP_80:Google-managed encryption; CMEK is optional here (add encryption_configuration in a fork where required)
  project             = local.project
  dataset_id          = google_bigquery_dataset.pipeline.dataset_id
  table_id            = "processor_run_history"
  description         = "phasegate run ledger: one row per state change of a run attempt; the latest recorded_at per run_id is its state."
  deletion_protection = true
  labels              = local.labels
  schema              = jsonencode(local.ledger_schema)

  time_partitioning {
    type  = "DAY"
    field = "data_date"
  }
  clustering = ["pipeline", "processor_name"]
}

# The claims table: one row per pipeline, processor and date naming the run that holds it.
# Workers MERGE into it (the compare-and-set that makes claims exclusive on BigQuery).
resource "google_bigquery_table" "processor_run_claims" {
  #checkov:skip=CKV_GCP_80:Google-managed encryption; CMEK is optional here (add encryption_configuration in a fork where required)
  project             = local.project
  dataset_id          = google_bigquery_dataset.pipeline.dataset_id
  table_id            = "processor_run_claims"
  description         = "phasegate claims: which run holds each pipeline/processor/date (MERGE compare-and-set)."
  deletion_protection = true
  labels              = local.labels
  schema              = jsonencode(local.claims_schema)
  clustering          = ["pipeline", "processor_name"]
}

# Rows, not tables: read, insert and delete rows of one table. Without bigquery.tables.delete,
# .update or .create a worker cannot drop the table, replace it (CREATE OR REPLACE), change
# its schema or its IAM. It can still delete rows: BigQuery has no insert-only permission (DML
# INSERT and DELETE both need updateData, and the worker deletes its own losing `running`
# claim). Rows deleted by mistake or malice stay restorable for 7 days (time travel, above).
resource "google_project_iam_custom_role" "table_writer" {
  project     = local.project
  role_id     = "phasegate_${replace(var.pipeline_name, "-", "_")}_table_writer"
  title       = "phasegate ${var.pipeline_name} table writer"
  description = "Read, insert and delete rows of a table; no drop, replace, schema or IAM change."
  permissions = [
    "bigquery.tables.get",
    "bigquery.tables.getData",
    "bigquery.tables.updateData",
  ]
}

locals {
  # (phase, table) pairs from var.output_tables.
  output_grants = {
    for pair in flatten([
      for p, tables in var.output_tables : [for t in tables : { phase = p, table = t }]
    ]) : "${pair.phase}/${pair.table}" => pair
  }
}

# Read: every table of the dataset (upstream outputs, references, the ledger).
resource "google_bigquery_dataset_iam_member" "worker_reader" {
  for_each   = toset(var.phases)
  project    = local.project
  dataset_id = google_bigquery_dataset.pipeline.dataset_id
  role       = "roles/bigquery.dataViewer"
  member     = "serviceAccount:${google_service_account.worker[each.key].email}"
}

# Write: the ledger (rows only) ...
resource "google_bigquery_table_iam_member" "worker_ledger_writer" {
  for_each   = toset(var.phases)
  project    = local.project
  dataset_id = google_bigquery_dataset.pipeline.dataset_id
  table_id   = google_bigquery_table.processor_run_history.table_id
  role       = google_project_iam_custom_role.table_writer.name
  member     = "serviceAccount:${google_service_account.worker[each.key].email}"
}

# ... the claims table (rows only) ...
resource "google_bigquery_table_iam_member" "worker_claims_writer" {
  for_each   = toset(var.phases)
  project    = local.project
  dataset_id = google_bigquery_dataset.pipeline.dataset_id
  table_id   = google_bigquery_table.processor_run_claims.table_id
  role       = google_project_iam_custom_role.table_writer.name
  member     = "serviceAccount:${google_service_account.worker[each.key].email}"
}

# ... and each phase's own output tables (rows only), nothing else.
resource "google_bigquery_table_iam_member" "worker_output_writer" {
  for_each   = local.output_grants
  project    = local.project
  dataset_id = google_bigquery_dataset.pipeline.dataset_id
  table_id   = each.value.table
  role       = google_project_iam_custom_role.table_writer.name
  member     = "serviceAccount:${google_service_account.worker[each.value.phase].email}"
}

# Run query jobs (a project-level permission; it grants no data access by itself).
resource "google_project_iam_member" "worker_job_user" {
  for_each = toset(var.phases)
  project  = local.project
  role     = "roles/bigquery.jobUser"
  member   = "serviceAccount:${google_service_account.worker[each.key].email}"
}
