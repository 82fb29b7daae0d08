# Cloud Scheduler: the daily trigger, the scheduled relay of owed completion events, and the
# freshness check (freshness.tf). One identity for the HTTP jobs: pg-<pipeline>-sched.
#
# The daily trigger publishes to the first phase's input topic. The message carries no date:
# the worker derives the data date from the message's publishTime with the pipeline's
# [trigger] timezone and offset_days (pipeline.toml), so a retried or late publish still
# names the intended day and nobody edits a date into the schedule. Terraform refuses a
# pipeline file without [trigger], or with a [trigger] timezone other than
# schedule_time_zone (validations of enable_scheduler and schedule_time_zone). Backfills
# name their dates explicitly (`phasegate backfill`), never through this job.

locals {
  scheduler_region = coalesce(var.scheduler_region, var.region)
  # The body a scheduled trigger carries: who sent it, no data_date.
  scheduled_trigger_body = jsonencode({ trigger = "scheduler" })
}

resource "google_cloud_scheduler_job" "daily_trigger" {
  count       = var.enable_scheduler ? 1 : 0
  project     = local.project
  region      = local.scheduler_region
  name        = "${var.pipeline_name}-daily-trigger"
  description = "phasegate ${var.pipeline_name}: publish the daily trigger (the worker derives the date from publishTime in [trigger] timezone)."
  schedule    = var.schedule
  time_zone   = var.schedule_time_zone

  # Publishing is retried by the job; processing is retried by the push subscription.
  retry_config {
    retry_count = 3
  }

  # Cloud Scheduler publishes as its service agent, whose predefined role
  # (roles/cloudscheduler.serviceAgent) already includes pubsub.topics.publish.
  pubsub_target {
    topic_name = google_pubsub_topic.trigger.id
    data       = base64encode(local.scheduled_trigger_body)
  }
}

# The identity of the HTTP jobs below: an OIDC token for the workers' /relay (audience = the
# worker's), an OAuth token for the Cloud Run Admin API (running the freshness job). It holds
# run.invoker on the freshness job (freshness.tf), nothing else; the workers accept its OIDC
# token on /relay only (PHASEGATE_AUTH_RELAY_EMAILS, run.tf: their invoker check is off).
# Cloud Scheduler mints its tokens through its service agent ("Use authentication with HTTP
# targets", cloud.google.com/scheduler/docs/http-target-auth); whoever applies needs
# iam.serviceAccounts.actAs on it.
resource "google_service_account" "scheduler" {
  project      = local.project
  account_id   = "pg-${var.pipeline_name}-sched"
  display_name = "phasegate ${var.pipeline_name} Cloud Scheduler identity (relay, freshness)"
}

# The scheduled relay: with min_instances = 0 and CPU only during requests, a worker's own
# background sweep does not run between pushes, so an event owed after its last push (a
# publish that failed, an instance stopped between the run and its publish) would wait for
# the next push. Every relay_schedule (default 5 min) Cloud Scheduler POSTs /relay to each
# worker, which publishes that phase's owed events, inside a request, where Cloud Run gives
# CPU. The bound on an owed event's wait is one schedule period plus the relay's own time.
# Ingress INTERNAL_ONLY admits Cloud Scheduler of the same project (Cloud Run, "Restrict
# network ingress").
resource "google_cloud_scheduler_job" "relay" {
  for_each         = var.enable_relay_scheduler ? toset(var.phases) : toset([])
  project          = local.project
  region           = local.scheduler_region
  name             = "${var.pipeline_name}-${each.key}-relay"
  description      = "phasegate ${var.pipeline_name}/${each.key}: publish the phase's owed completion events (POST /relay)."
  schedule         = var.relay_schedule
  time_zone        = "Etc/UTC"
  attempt_deadline = "120s"

  # No retries: the next run is minutes away, and a failed attempt is logged (and alerted on,
  # monitoring.tf).
  retry_config {
    retry_count = 0
  }

  http_target {
    http_method = "POST"
    uri         = "${google_cloud_run_v2_service.worker[each.key].uri}/relay"
    headers     = { "Content-Type" = "application/json" }
    body        = base64encode(jsonencode({ relay = each.key }))
    oidc_token {
      service_account_email = google_service_account.scheduler.email
      audience              = local.audience[each.key]
    }
  }

  # The worker accepts the token on /relay only (PHASEGATE_AUTH_RELAY_EMAILS, run.tf).
  depends_on = [google_cloud_run_v2_service.worker]
}
