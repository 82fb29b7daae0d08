# Pub/Sub: the trigger topic; per phase a completion topic, a push subscription from its input
# topic to its worker (OIDC, exponential retry, dead letters) and a dead-letter topic kept for
# inspection; the push identity; and the Pub/Sub service agent's rights.

resource "google_pubsub_topic" "trigger" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption; CMEK is optional here (add kms_key_name in a fork where required)
  project = local.project
  name    = local.trigger_topic
  labels  = local.labels
}

resource "google_pubsub_topic" "completion" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption; CMEK is optional here (add kms_key_name in a fork where required)
  for_each = toset(var.phases)
  project  = local.project
  name     = local.completion_topic[each.key]
  labels   = merge(local.labels, { phase = each.key })
}

resource "google_pubsub_topic" "dead_letter" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption; CMEK is optional here (add kms_key_name in a fork where required)
  for_each = toset(var.phases)
  project  = local.project
  name     = "${var.pipeline_name}-${each.key}-dead-letter"
  labels   = merge(local.labels, { phase = each.key })
}

# Dead-lettered messages are kept for inspection and replay (7 days, Pub/Sub's maximum), and
# alerted on (monitoring.tf): nothing is lost silently.
resource "google_pubsub_subscription" "dead_letter" {
  for_each                   = toset(var.phases)
  project                    = local.project
  name                       = "${var.pipeline_name}-${each.key}-dead-letter"
  topic                      = google_pubsub_topic.dead_letter[each.key].id
  labels                     = merge(local.labels, { phase = each.key })
  message_retention_duration = "604800s"
  ack_deadline_seconds       = 60
  expiration_policy {
    ttl = ""
  }
}

# The identity Pub/Sub signs push tokens as; the only one allowed to invoke the workers.
resource "google_service_account" "pusher" {
  project      = local.project
  account_id   = "pg-${var.pipeline_name}-pusher"
  display_name = "phasegate ${var.pipeline_name} Pub/Sub push identity"
}

# Pub/Sub mints the OIDC tokens of the push identity. (Needed where Pub/Sub was enabled before
# 2021-04-08; granted on this one service account only, never project-wide.)
resource "google_service_account_iam_member" "pusher_token_creator" {
  service_account_id = google_service_account.pusher.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent
}

# Each phase listens to the one before.
resource "google_pubsub_subscription" "push" {
  for_each = toset(var.phases)
  project  = local.project
  name     = "${var.pipeline_name}-${each.key}-push"
  topic    = "projects/${local.project}/topics/${local.input_topic[each.key]}"
  labels   = merge(local.labels, { phase = each.key })
  # At least the worker's processing timeout: a long date is not redelivered while it runs.
  ack_deadline_seconds = var.processing_timeout_seconds

  push_config {
    # The run.app URL: with ingress INTERNAL_ONLY, Pub/Sub in this project reaches it only there.
    push_endpoint = "${google_cloud_run_v2_service.worker[each.key].uri}/push"
    oidc_token {
      service_account_email = google_service_account.pusher.email
      audience              = local.audience[each.key]
    }
  }

  retry_policy {
    minimum_backoff = "${var.retry_minimum_backoff_seconds}s"
    maximum_backoff = "${var.retry_maximum_backoff_seconds}s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter[each.key].id
    max_delivery_attempts = var.max_delivery_attempts
  }

  expiration_policy {
    ttl = ""
  }

  depends_on = [google_pubsub_topic.trigger, google_pubsub_topic.completion]
}

# Dead-lettering: the Pub/Sub service agent publishes to the dead-letter topic and
# acknowledges on the source subscription.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  for_each = toset(var.phases)
  project  = local.project
  topic    = google_pubsub_topic.dead_letter[each.key].name
  role     = "roles/pubsub.publisher"
  member   = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  for_each     = toset(var.phases)
  project      = local.project
  subscription = google_pubsub_subscription.push[each.key].name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}

# Each worker publishes to its own completion topic only (topic-level, no project-wide role).
resource "google_pubsub_topic_iam_member" "completion_publisher" {
  for_each = toset(var.phases)
  project  = local.project
  topic    = google_pubsub_topic.completion[each.key].name
  role     = "roles/pubsub.publisher"
  member   = "serviceAccount:${google_service_account.worker[each.key].email}"
}
