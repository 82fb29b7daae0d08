# The daily trigger: Cloud Scheduler publishes to the first phase's input topic. The message
# carries no date: the worker derives the data date from the message's publishTime with the
# pipeline's [trigger] timezone and offset_days (pipeline.toml), so a retried or late publish
# still names the intended day and nobody edits a date into the schedule. Backfills name their
# dates explicitly (`phasegate backfill`), never through this job.

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
  description = "phasegate ${var.pipeline_name}: publish the daily trigger (the worker derives the date from publishTime)."
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
