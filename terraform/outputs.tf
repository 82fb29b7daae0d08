output "trigger_topic" {
  description = "Topic the scheduler job publishes the daily trigger to (the first phase's input)."
  value       = google_pubsub_topic.trigger.id
}

output "completion_topics" {
  description = "Completion topic of each phase."
  value       = { for p, t in google_pubsub_topic.completion : p => t.id }
}

output "dead_letter_subscriptions" {
  description = "Where each phase's dead-lettered messages wait for inspection."
  value       = { for p, s in google_pubsub_subscription.dead_letter : p => s.id }
}

output "worker_services" {
  description = "Cloud Run service name of each phase (for `gcloud run services describe`)."
  value       = { for p, s in google_cloud_run_v2_service.worker : p => s.name }
}

output "worker_urls" {
  description = "Cloud Run URL of each phase's worker (reachable only as the ingress setting allows)."
  value       = { for p, s in google_cloud_run_v2_service.worker : p => s.uri }
}

output "worker_service_accounts" {
  description = "Service account of each phase's worker (grant it access to anything a command processor needs)."
  value       = { for p, s in google_service_account.worker : p => s.email }
}

output "push_service_account" {
  description = "The identity that signs push tokens (PHASEGATE_AUTH_ALLOWED_EMAILS of every worker)."
  value       = google_service_account.pusher.email
}

output "ledger_table" {
  description = "The processor_run_history table."
  value       = "${local.project}.${google_bigquery_dataset.pipeline.dataset_id}.${google_bigquery_table.processor_run_history.table_id}"
}

output "firestore_database" {
  description = "The Firestore database of the claims and leases: its id (PHASEGATE_FIRESTORE_DATABASE) and resource name (projects/P/databases/ID, what the workers' IAM condition names)."
  value = {
    id   = google_firestore_database.coordination.name
    name = local.firestore_database_name
  }
}

output "config_secret" {
  description = "Secret Manager secret holding the pipeline file, and the version the services mount."
  value = {
    secret  = google_secret_manager_secret.config.id
    version = google_secret_manager_secret_version.config.version
  }
}

output "scheduler_job" {
  description = "The Cloud Scheduler job of the daily trigger (null when enable_scheduler is false)."
  value       = one(google_cloud_scheduler_job.daily_trigger[*].id)
}

output "alert_policies" {
  description = "Alert policy ids: dead letters and oldest unacked message per phase, blocked or failed runs, refused requests, Cloud Scheduler failures, lateness (freshness), rewrites of the ledger."
  value = {
    dead_letter       = { for p, a in google_monitoring_alert_policy.dead_letter_backlog : p => a.id }
    oldest_unacked    = { for p, a in google_monitoring_alert_policy.oldest_unacked : p => a.id }
    blocked_or_failed = google_monitoring_alert_policy.blocked_or_failed.id
    refused           = google_monitoring_alert_policy.refused.id
    scheduler_failed  = one(google_monitoring_alert_policy.scheduler_failed[*].id)
    freshness         = one(google_monitoring_alert_policy.freshness[*].id)
    ledger_rewrite    = google_monitoring_alert_policy.ledger_rewrite.id
  }
}

output "pipeline_tables" {
  description = "The pipeline tables the module created (output_tables and source_tables), as project.dataset.table."
  value       = { for t, r in google_bigquery_table.pipeline : t => "${local.project}.${google_bigquery_dataset.pipeline.dataset_id}.${r.table_id}" }
}

output "image_repository" {
  description = "The Artifact Registry repository for the images, as REGION-docker.pkg.dev/PROJECT/REPO (null when image_repository_id is null)."
  value       = one([for r in google_artifact_registry_repository.images : "${r.location}-docker.pkg.dev/${local.project}/${r.repository_id}"])
}

output "scheduler_service_account" {
  description = "The identity of the relay and freshness Cloud Scheduler jobs (PHASEGATE_AUTH_RELAY_EMAILS of every worker)."
  value       = google_service_account.scheduler.email
}

output "relay_jobs" {
  description = "The Cloud Scheduler job that POSTs /relay to each phase's worker."
  value       = { for p, j in google_cloud_scheduler_job.relay : p => j.id }
}

output "freshness_job" {
  description = "The Cloud Run job running `phasegate freshness` (null when enable_freshness_job is false)."
  value       = one(google_cloud_run_v2_job.freshness[*].name)
}

output "project_id" {
  description = "The project, known only once the module's APIs are enabled: give it to resources outside the module that need those APIs (e.g. notification channels), so they wait for them."
  value       = local.project
}
