output "trigger_topic" {
  description = "Topic the scheduler (or `phasegate backfill --via-pubsub` for the first phase) publishes to."
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

output "worker_urls" {
  description = "Cloud Run URL of each phase's worker."
  value       = { for p, s in google_cloud_run_v2_service.worker : p => s.uri }
}

output "push_service_account" {
  description = "The identity that signs push tokens (allowed in PHASEGATE_AUTH_ALLOWED_EMAILS)."
  value       = google_service_account.pusher.email
}

output "ledger_table" {
  description = "The processor_run_history table."
  value       = "${var.project_id}.${google_bigquery_dataset.pipeline.dataset_id}.${google_bigquery_table.processor_run_history.table_id}"
}
