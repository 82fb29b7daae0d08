# Alerts, all notifying var.notification_channels:
# - a message in any dead-letter subscription;
# - a push subscription whose oldest unacknowledged message is older than
#   unacked_age_alert_seconds (work stuck or refused, long before it dead-letters);
# - any push that ended `blocked` or `failed` (log-based metric on the worker's one
#   "push summary" JSON line per push: jsonPayload.outcome and jsonPayload.phase);
# - refused requests by outcome (401/403 tokens, 400 messages, 404/405, 413/408 bodies,
#   503 overload), from the "request refused" lines and the "push summary" lines;
# - a failed Cloud Scheduler attempt (daily trigger, relay, freshness), from Cloud
#   Scheduler's own AttemptFinished log entries;
# - a failed execution of the freshness job (a phase is late);
# - any UPDATE, MERGE, DELETE or TRUNCATE of the ledger.
#
# Field names are those of the JSON lines as Cloud Logging stores them: tracing-stackdriver
# camelCases event fields (data_date -> jsonPayload.dataDate), Cloud Run's logging agent moves
# the `httpRequest` object into the LogEntry (httpRequest.status) and keeps `message` as
# jsonPayload.message ("Structured logging", special JSON fields).

# Dead letters: backlog > 0 in a phase's dead-letter subscription.
resource "google_monitoring_alert_policy" "dead_letter_backlog" {
  for_each              = toset(var.phases)
  project               = local.project
  display_name          = "phasegate ${var.pipeline_name}/${each.key}: dead-lettered messages"
  combiner              = "OR"
  notification_channels = var.notification_channels
  user_labels           = merge(local.labels, { phase = each.key })

  conditions {
    display_name = "${google_pubsub_subscription.dead_letter[each.key].name} has undelivered messages"
    condition_threshold {
      filter          = "resource.type = \"pubsub_subscription\" AND resource.labels.subscription_id = \"${google_pubsub_subscription.dead_letter[each.key].name}\" AND metric.type = \"pubsub.googleapis.com/subscription/num_undelivered_messages\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period   = "300s"
        per_series_aligner = "ALIGN_MAX"
      }
      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "A message to phase `${each.key}` exhausted ${var.max_delivery_attempts} delivery attempts and waits in `${google_pubsub_subscription.dead_letter[each.key].name}` (kept 7 days). Inspect it (`gcloud pubsub subscriptions pull ${google_pubsub_subscription.dead_letter[each.key].name}`), fix the cause, then replay the date with `phasegate backfill` (docs/operations-guide.md)."
  }

  alert_strategy {
    auto_close = "604800s"
  }
}

# Blocked or failed runs, counted from the worker's per-push log line.
resource "google_logging_metric" "blocked_or_failed" {
  project     = local.project
  name        = "phasegate-${var.pipeline_name}-blocked-or-failed"
  description = "Pushes to phasegate ${var.pipeline_name} workers that ended blocked (a gate refused the date) or failed (a processor failed)."
  filter = join(" AND ", [
    "resource.type=\"cloud_run_revision\"",
    "resource.labels.service_name=(${join(" OR ", [for p in var.phases : "\"phasegate-${var.pipeline_name}-${p}\""])})",
    # The summary line only: the worker's "push not acknowledged" warning carries the same
    # outcome, and counting both would double every blocked or failed push.
    "jsonPayload.message=\"push summary\"",
    "jsonPayload.outcome=(\"blocked\" OR \"failed\")",
  ])

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
    labels {
      key        = "phase"
      value_type = "STRING"
    }
    labels {
      key        = "outcome"
      value_type = "STRING"
    }
  }
  label_extractors = {
    phase   = "EXTRACT(jsonPayload.phase)"
    outcome = "EXTRACT(jsonPayload.outcome)"
  }
}

resource "google_monitoring_alert_policy" "blocked_or_failed" {
  # A just-created log-based metric is unknown to Cloud Monitoring for up to 10 minutes.
  depends_on            = [time_sleep.log_metrics]
  project               = local.project
  display_name          = "phasegate ${var.pipeline_name}: run blocked or failed"
  combiner              = "OR"
  notification_channels = var.notification_channels
  user_labels           = local.labels

  conditions {
    display_name = "a push ended blocked or failed"
    condition_threshold {
      filter          = "resource.type = \"cloud_run_revision\" AND metric.type = \"logging.googleapis.com/user/${google_logging_metric.blocked_or_failed.name}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["metric.label.phase", "metric.label.outcome"]
      }
      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "A phase of ${var.pipeline_name} ended `blocked` (a strict gate refused the date: upstream failed, history gap, incomplete entities) or `failed` (a processor failed). The message is retried with backoff and dead-lettered after ${var.max_delivery_attempts} attempts. The push's lines share its trace: the \"push summary\" line (jsonPayload.outcome, jsonPayload.phase, jsonPayload.dataDate, jsonPayload.messageId, jsonPayload.deliveryAttempt, httpRequest.status), and before it \"blocked by strict gate\" (jsonPayload.processor, jsonPayload.reason) or \"processor failed\" (jsonPayload.processor, jsonPayload.error). Then `phasegate history --phase P --date D` and `phasegate check` (docs/operations-guide.md, \"When something fails\")."
  }

  alert_strategy {
    auto_close = "86400s"
  }
}

# The ledger is append-only by design, but IAM cannot forbid row changes (bigquery.tf). What
# IAM cannot prevent is detected: phasegate never updates, merges, deletes from or truncates
# the ledger (its only DELETE is of its own losing claim, in processor_run_claims), so any
# such statement against the ledger (whoever ran it) opens an incident. BigQuery writes these
# job records to its Data Access audit log, which is always on.
resource "google_logging_metric" "ledger_rewrite" {
  project     = local.project
  name        = "phasegate-${var.pipeline_name}-ledger-rewrite"
  description = "UPDATE, MERGE, DELETE or TRUNCATE statements against the phasegate ${var.pipeline_name} ledger (phasegate itself only inserts into it)."
  filter = join(" AND ", [
    "logName=\"projects/${local.project}/logs/cloudaudit.googleapis.com%2Fdata_access\"",
    "protoPayload.metadata.jobChange.after=\"DONE\"",
    "protoPayload.metadata.jobChange.job.jobConfig.queryConfig.destinationTable=\"projects/${local.project}/datasets/${google_bigquery_dataset.pipeline.dataset_id}/tables/${google_bigquery_table.processor_run_history.table_id}\"",
    "protoPayload.metadata.jobChange.job.jobConfig.queryConfig.statementType=(\"UPDATE\" OR \"MERGE\" OR \"DELETE\" OR \"TRUNCATE_TABLE\")",
  ])

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
    labels {
      key        = "principal"
      value_type = "STRING"
    }
    labels {
      key        = "statement"
      value_type = "STRING"
    }
  }
  label_extractors = {
    principal = "EXTRACT(protoPayload.authenticationInfo.principalEmail)"
    statement = "EXTRACT(protoPayload.metadata.jobChange.job.jobConfig.queryConfig.statementType)"
  }
}

resource "google_monitoring_alert_policy" "ledger_rewrite" {
  depends_on            = [time_sleep.log_metrics]
  project               = local.project
  display_name          = "phasegate ${var.pipeline_name}: ledger rewritten"
  combiner              = "OR"
  notification_channels = var.notification_channels
  user_labels           = local.labels

  conditions {
    display_name = "an UPDATE, MERGE, DELETE or TRUNCATE ran against processor_run_history"
    condition_threshold {
      filter          = "resource.type = \"bigquery_project\" AND metric.type = \"logging.googleapis.com/user/${google_logging_metric.ledger_rewrite.name}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["metric.label.principal", "metric.label.statement"]
      }
      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Someone changed rows of the append-only ledger `${local.project}.${google_bigquery_dataset.pipeline.dataset_id}.processor_run_history` (metric labels: principal = who, statement = UPDATE, MERGE, DELETE or TRUNCATE_TABLE). phasegate never does this. Find the job in the BigQuery audit log; the previous contents can be read with `FOR SYSTEM_TIME AS OF` for 7 days (time travel) and restored from there."
  }

  alert_strategy {
    auto_close = "604800s"
  }
}

# ── Log-based metrics reach Cloud Monitoring late ─────────────────────────────────────────
# Creating an alert policy on a log-based metric created moments before fails with "Cannot
# find metric(s) that match type = logging.googleapis.com/user/…. If a metric was created
# recently, it could take up to 10 minutes to become available" (terraform-provider-google
# issue 11102, open). Every policy on a log-based metric depends on this sleep, which runs
# once after the metrics are created (and again only when a metric's name changes).
resource "time_sleep" "log_metrics" {
  create_duration = var.log_metric_propagation_wait
  triggers = {
    metrics = join(",", [
      google_logging_metric.blocked_or_failed.name,
      google_logging_metric.refused.name,
      google_logging_metric.scheduler_failed.name,
      google_logging_metric.ledger_rewrite.name,
    ])
  }
}

# ── Work stuck in a push subscription ─────────────────────────────────────────────────────
# pubsub.googleapis.com/subscription/oldest_unacked_message_age (GAUGE, seconds) of each push
# subscription: grows while pushes are refused (401/403/400), nacked (blocked, failed, 503) or
# unanswered, well before max_delivery_attempts dead-letters the message.
resource "google_monitoring_alert_policy" "oldest_unacked" {
  for_each              = toset(var.phases)
  project               = local.project
  display_name          = "phasegate ${var.pipeline_name}/${each.key}: pushes not acknowledged"
  combiner              = "OR"
  notification_channels = var.notification_channels
  user_labels           = merge(local.labels, { phase = each.key })

  conditions {
    display_name = "${google_pubsub_subscription.push[each.key].name}: oldest unacked message older than ${var.unacked_age_alert_seconds}s"
    condition_threshold {
      filter          = "resource.type = \"pubsub_subscription\" AND resource.labels.subscription_id = \"${google_pubsub_subscription.push[each.key].name}\" AND metric.type = \"pubsub.googleapis.com/subscription/oldest_unacked_message_age\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.unacked_age_alert_seconds
      duration        = "0s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "A message in `${google_pubsub_subscription.push[each.key].name}` has waited more than ${var.unacked_age_alert_seconds} s for phase `${each.key}` to acknowledge it. Find why in the worker's logs (service `phasegate-${var.pipeline_name}-${each.key}`): \"request refused\" lines (jsonPayload.outcome, jsonPayload.status, jsonPayload.reason) for pushes refused before any work, and \"push summary\" lines (jsonPayload.outcome, jsonPayload.dataDate, jsonPayload.deliveryAttempt, httpRequest.status) for the others. After ${var.max_delivery_attempts} attempts the message is dead-lettered."
  }

  alert_strategy {
    auto_close = "86400s"
  }
}

# ── Refused requests, by outcome ──────────────────────────────────────────────────────────
# Two kinds of worker lines: "request refused" (refused before any work: a bad or missing
# token, 401/403; an unknown path or method, 404/405; a body too large or too slow, 413/408;
# too many pushes in flight, 503 too_busy; fields status, outcome, reason), and the "push
# summary" of a push the handler refused or could not finish (outcome bad_message or
# wrong_phase, 400; unknown_phase, 404; store_unavailable or publish_failed, 503). Counted by
# service and outcome (bounded sets); the free-text reason stays in the log line. The alert
# conditions select outcomes with monitoring.regex.full_match ("Monitoring filters",
# cloud.google.com/monitoring/api/v3/filters).
locals {
  worker_services_filter = "resource.labels.service_name=(${join(" OR ", [for p in var.phases : "\"phasegate-${var.pipeline_name}-${p}\""])})"
  # Refusals that never happen to a correct deployment: any one is an incident.
  invalid_outcomes = ["unauthorized", "bad_message", "wrong_phase", "unknown_phase", "not_found", "method_not_allowed", "too_large", "body_timeout"]
  # Overload or an unavailable store/bus: normal in a burst, an incident when it lasts.
  unavailable_outcomes = ["too_busy", "store_unavailable", "publish_failed"]
}

resource "google_logging_metric" "refused" {
  project     = local.project
  name        = "phasegate-${var.pipeline_name}-refused"
  description = "Requests to phasegate ${var.pipeline_name} workers refused before any work (\"request refused\" lines) or by the push handler (\"push summary\" lines with a 4xx/503 outcome other than blocked, failed or in_progress), by service and outcome."
  filter = join(" AND ", [
    "resource.type=\"cloud_run_revision\"",
    local.worker_services_filter,
    "(jsonPayload.message=\"request refused\" OR (jsonPayload.message=\"push summary\" AND jsonPayload.outcome=(\"bad_message\" OR \"wrong_phase\" OR \"unknown_phase\" OR \"store_unavailable\" OR \"publish_failed\")))",
  ])

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
    labels {
      key        = "service"
      value_type = "STRING"
    }
    labels {
      key        = "outcome"
      value_type = "STRING"
    }
  }
  label_extractors = {
    service = "EXTRACT(resource.labels.service_name)"
    outcome = "EXTRACT(jsonPayload.outcome)"
  }
}

resource "google_monitoring_alert_policy" "refused" {
  depends_on            = [time_sleep.log_metrics]
  project               = local.project
  display_name          = "phasegate ${var.pipeline_name}: requests refused"
  combiner              = "OR"
  notification_channels = var.notification_channels
  user_labels           = local.labels

  conditions {
    display_name = "a request was refused as invalid (token, message, route, body)"
    condition_threshold {
      filter          = "resource.type = \"cloud_run_revision\" AND metric.type = \"logging.googleapis.com/user/${google_logging_metric.refused.name}\" AND metric.labels.outcome = monitoring.regex.full_match(\"${join("|", local.invalid_outcomes)}\")"
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["metric.label.service", "metric.label.outcome"]
      }
      trigger {
        count = 1
      }
    }
  }

  conditions {
    display_name = "requests refused as unavailable for 15 minutes"
    condition_threshold {
      filter          = "resource.type = \"cloud_run_revision\" AND metric.type = \"logging.googleapis.com/user/${google_logging_metric.refused.name}\" AND metric.labels.outcome = monitoring.regex.full_match(\"${join("|", local.unavailable_outcomes)}\")"
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "900s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["metric.label.service", "metric.label.outcome"]
      }
      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "A phasegate ${var.pipeline_name} worker refused requests (metric labels: service, outcome). Refused before any work: the \"request refused\" line (jsonPayload.outcome, jsonPayload.status, jsonPayload.reason): `unauthorized` (401/403: check the push subscription's OIDC service account and audience against PHASEGATE_AUTH_AUDIENCE / PHASEGATE_AUTH_ALLOWED_EMAILS), `too_busy` (503), `too_large`/`body_timeout`, `not_found`/`method_not_allowed`. Refused by the handler: the \"push summary\" line (jsonPayload.outcome, jsonPayload.phase, jsonPayload.dataDate, jsonPayload.messageId, jsonPayload.deliveryAttempt, httpRequest.status): `bad_message`/`wrong_phase` (400: the message is dead-lettered after ${var.max_delivery_attempts} attempts), `store_unavailable`/`publish_failed` (503: retried). docs/operations-guide.md, \"When something fails\"."
  }

  alert_strategy {
    auto_close = "86400s"
  }
}

# ── Cloud Scheduler attempts that failed ──────────────────────────────────────────────────
# Cloud Scheduler logs every attempt under resource.type cloud_scheduler_job; a finished
# attempt is an AttemptFinished entry (jsonPayload.@type), at severity ERROR when it failed,
# with the error code in jsonPayload.status and, for HTTP targets, httpRequest.status
# ("View Cloud Scheduler logs", cloud.google.com/scheduler/docs/view-logs).
locals {
  scheduler_job_ids = concat(
    var.enable_scheduler ? ["${var.pipeline_name}-daily-trigger"] : [],
    var.enable_freshness_job ? ["${var.pipeline_name}-freshness"] : [],
    var.enable_relay_scheduler ? [for p in var.phases : "${var.pipeline_name}-${p}-relay"] : [],
  )
  # A failed relay is retried by the next one minutes later; only repeated failures alert.
  relay_job_ids = var.enable_relay_scheduler ? [for p in var.phases : "${var.pipeline_name}-${p}-relay"] : []
  once_job_ids  = [for j in local.scheduler_job_ids : j if !contains(local.relay_job_ids, j)]
}

resource "google_logging_metric" "scheduler_failed" {
  project     = local.project
  name        = "phasegate-${var.pipeline_name}-scheduler-failed"
  description = "Failed Cloud Scheduler attempts of phasegate ${var.pipeline_name}'s jobs (daily trigger, relays, freshness), by job and status."
  filter = join(" AND ", [
    "resource.type=\"cloud_scheduler_job\"",
    "resource.labels.job_id=(${join(" OR ", [for j in concat(local.scheduler_job_ids, ["${var.pipeline_name}-none"]) : "\"${j}\""])})",
    "jsonPayload.\"@type\"=\"type.googleapis.com/google.cloud.scheduler.logging.AttemptFinished\"",
    "severity>=ERROR",
  ])

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
    labels {
      key        = "job_id"
      value_type = "STRING"
    }
    labels {
      key        = "status"
      value_type = "STRING"
    }
  }
  label_extractors = {
    job_id = "EXTRACT(resource.labels.job_id)"
    status = "EXTRACT(jsonPayload.status)"
  }
}

resource "google_monitoring_alert_policy" "scheduler_failed" {
  count                 = length(local.scheduler_job_ids) > 0 ? 1 : 0
  depends_on            = [time_sleep.log_metrics]
  project               = local.project
  display_name          = "phasegate ${var.pipeline_name}: Cloud Scheduler job failed"
  combiner              = "OR"
  notification_channels = var.notification_channels
  user_labels           = local.labels

  dynamic "conditions" {
    for_each = length(local.once_job_ids) > 0 ? [local.once_job_ids] : []
    content {
      display_name = "the daily trigger or the freshness job could not be started"
      condition_threshold {
        filter          = "resource.type = \"cloud_scheduler_job\" AND metric.type = \"logging.googleapis.com/user/${google_logging_metric.scheduler_failed.name}\" AND metric.labels.job_id = monitoring.regex.full_match(\"${join("|", conditions.value)}\")"
        comparison      = "COMPARISON_GT"
        threshold_value = 0
        duration        = "0s"
        aggregations {
          alignment_period     = "300s"
          per_series_aligner   = "ALIGN_SUM"
          cross_series_reducer = "REDUCE_SUM"
          group_by_fields      = ["metric.label.job_id", "metric.label.status"]
        }
        trigger {
          count = 1
        }
      }
    }
  }

  dynamic "conditions" {
    for_each = length(local.relay_job_ids) > 0 ? [local.relay_job_ids] : []
    content {
      display_name = "a relay job failed for 15 minutes"
      condition_threshold {
        filter          = "resource.type = \"cloud_scheduler_job\" AND metric.type = \"logging.googleapis.com/user/${google_logging_metric.scheduler_failed.name}\" AND metric.labels.job_id = monitoring.regex.full_match(\"${join("|", conditions.value)}\")"
        comparison      = "COMPARISON_GT"
        threshold_value = 0
        duration        = "900s"
        aggregations {
          alignment_period     = "300s"
          per_series_aligner   = "ALIGN_SUM"
          cross_series_reducer = "REDUCE_SUM"
          group_by_fields      = ["metric.label.job_id"]
        }
        trigger {
          count = 1
        }
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "A Cloud Scheduler job of phasegate ${var.pipeline_name} failed (metric labels: job_id, status). Its AttemptFinished log entries (resource.type cloud_scheduler_job, resource.labels.job_id) carry jsonPayload.status (e.g. PERMISSION_DENIED, UNAUTHENTICATED, DEADLINE_EXCEEDED), jsonPayload.debugInfo and, for HTTP targets, httpRequest.status. `<pipeline>-daily-trigger` failing means today's date was not triggered: publish it by hand with `phasegate backfill --phase ${var.phases[0]} --from D --to D` once fixed. A `-relay` job failing means owed completion events wait for the next push: check the worker's \"request refused\" lines for the scheduler identity. `-freshness` failing to start means lateness goes unchecked."
  }

  alert_strategy {
    auto_close = "86400s"
  }
}

# ── A phase is late ───────────────────────────────────────────────────────────────────────
# The freshness job's execution fails when a phase's expected date is not done by its
# deadline: run.googleapis.com/job/completed_execution_count with result = "failed".
resource "google_monitoring_alert_policy" "freshness" {
  count                 = var.enable_freshness_job ? 1 : 0
  project               = local.project
  display_name          = "phasegate ${var.pipeline_name}: a phase is late"
  combiner              = "OR"
  notification_channels = var.notification_channels
  user_labels           = local.labels

  conditions {
    display_name = "${google_cloud_run_v2_job.freshness[0].name} execution failed"
    condition_threshold {
      filter          = "resource.type = \"cloud_run_job\" AND resource.labels.job_name = \"${google_cloud_run_v2_job.freshness[0].name}\" AND metric.type = \"run.googleapis.com/job/completed_execution_count\" AND metric.labels.result = \"failed\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period   = "300s"
        per_series_aligner = "ALIGN_SUM"
      }
      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "`phasegate freshness` failed: a phase of ${var.pipeline_name} has not finished its expected date by its deadline ([phases] freshness in pipeline.toml), or the check itself could not run. Its output is in the job's logs (`gcloud run jobs executions list --job ${google_cloud_run_v2_job.freshness[0].name} --region ${var.region}`); run `phasegate freshness` and `phasegate status --from D --to D` with the production config to see which phase and date, then the other alerts (refused, blocked or failed, unacked) for why."
  }

  alert_strategy {
    auto_close = "86400s"
  }
}
