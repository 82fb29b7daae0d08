output "trigger_topic" {
  description = "Topic of the daily trigger."
  value       = module.phasegate.trigger_topic
}

output "worker_services" {
  description = "Cloud Run service of each phase."
  value       = module.phasegate.worker_services
}

output "dead_letter_subscriptions" {
  description = "Dead-letter subscription of each phase."
  value       = module.phasegate.dead_letter_subscriptions
}

output "ledger_table" {
  description = "The processor_run_history table."
  value       = module.phasegate.ledger_table
}

output "firestore_database" {
  description = "The Firestore database of the claims and leases (id and resource name)."
  value       = module.phasegate.firestore_database
}

output "image_repository" {
  description = "Where deploy/deploy.sh pushes the images (REGION-docker.pkg.dev/PROJECT/REPO)."
  value       = module.phasegate.image_repository
}
