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
  # (phase, table) pairs from var.output_tables: one writer per table.
  output_grants = merge([
    for p, tables in var.output_tables : { for t, spec in tables : t => merge(spec, { phase = p }) }
  ]...)
  # Every pipeline table the module creates: the outputs, and the tables workers only read.
  pipeline_tables = merge(local.output_grants, { for t, spec in var.source_tables : t => merge(spec, { phase = null }) })
}

# The pipeline's own tables, owned by Terraform (not by `phasegate init`): each with the
# schema the caller declares, DAY partitions on its DATE column (queries filter on the date,
# so a run reads one partition) and clustering. BigQuery: "Introduction to partitioned
# tables" (time-unit column partitioning) and "Introduction to clustered tables".
resource "google_bigquery_table" "pipeline" {
  #checkov:skip=CKV_GCP_80:Google-managed encryption; CMEK is optional here (add encryption_configuration in a fork where required)
  for_each                 = local.pipeline_tables
  project                  = local.project
  dataset_id               = google_bigquery_dataset.pipeline.dataset_id
  table_id                 = each.key
  description              = each.value.description != "" ? each.value.description : (each.value.phase == null ? "phasegate ${var.pipeline_name}: read by the workers." : "phasegate ${var.pipeline_name}: written by phase ${each.value.phase}.")
  deletion_protection      = true
  require_partition_filter = each.value.require_partition_filter
  labels                   = each.value.phase == null ? local.labels : merge(local.labels, { phase = each.value.phase })
  schema                   = jsonencode(jsondecode(file(each.value.schema_file)))

  time_partitioning {
    type  = "DAY"
    field = each.value.partition_field
  }
  clustering = length(each.value.clustering) > 0 ? each.value.clustering : null
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
  table_id   = google_bigquery_table.pipeline[each.key].table_id
  role       = google_project_iam_custom_role.table_writer.name
  member     = "serviceAccount:${google_service_account.worker[each.value.phase].email}"
}

# The freshness job reads the ledger (dataset-level read, nothing else in BigQuery).
resource "google_bigquery_dataset_iam_member" "freshness_reader" {
  count      = var.enable_freshness_job ? 1 : 0
  project    = local.project
  dataset_id = google_bigquery_dataset.pipeline.dataset_id
  role       = "roles/bigquery.dataViewer"
  member     = "serviceAccount:${google_service_account.freshness[0].email}"
}

resource "google_project_iam_member" "freshness_job_user" {
  count   = var.enable_freshness_job ? 1 : 0
  project = local.project
  role    = "roles/bigquery.jobUser"
  member  = "serviceAccount:${google_service_account.freshness[0].email}"
}

# Run query jobs (a project-level permission; it grants no data access by itself).
resource "google_project_iam_member" "worker_job_user" {
  for_each = toset(var.phases)
  project  = local.project
  role     = "roles/bigquery.jobUser"
  member   = "serviceAccount:${google_service_account.worker[each.key].email}"
}
