# Alerts: a message in any dead-letter subscription; any push that ended `blocked` or
# `failed` (a log-based metric on the worker's one JSON line per push: jsonPayload.outcome and
# jsonPayload.phase); any UPDATE, MERGE or TRUNCATE of the ledger. All notify
# var.notification_channels.

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
    content   = "A phase of ${var.pipeline_name} ended `blocked` (a strict gate refused the date: upstream failed, history gap, incomplete entities) or `failed` (a processor failed). The message is retried with backoff and dead-lettered after ${var.max_delivery_attempts} attempts. See the worker's log line (jsonPayload.reason) and `phasegate status` / `phasegate check` (docs/operations-guide.md, \"When something fails\")."
  }

  alert_strategy {
    auto_close = "86400s"
  }
}

# The ledger is append-only by design, but IAM cannot forbid row changes (bigquery.tf). What
# IAM cannot prevent is detected: phasegate never updates, merges or truncates the ledger, so
# any such statement against it (whoever ran it) opens an incident. BigQuery writes these
# job records to its Data Access audit log, which is always on.
resource "google_logging_metric" "ledger_rewrite" {
  project     = local.project
  name        = "phasegate-${var.pipeline_name}-ledger-rewrite"
  description = "UPDATE, MERGE or TRUNCATE statements against the phasegate ${var.pipeline_name} ledger (phasegate itself only inserts, and deletes its own losing claims)."
  filter = join(" AND ", [
    "logName=\"projects/${local.project}/logs/cloudaudit.googleapis.com%2Fdata_access\"",
    "protoPayload.metadata.jobChange.after=\"DONE\"",
    "protoPayload.metadata.jobChange.job.jobConfig.queryConfig.destinationTable=\"projects/${local.project}/datasets/${google_bigquery_dataset.pipeline.dataset_id}/tables/${google_bigquery_table.processor_run_history.table_id}\"",
    "protoPayload.metadata.jobChange.job.jobConfig.queryConfig.statementType=(\"UPDATE\" OR \"MERGE\" OR \"TRUNCATE_TABLE\")",
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
  project               = local.project
  display_name          = "phasegate ${var.pipeline_name}: ledger rewritten"
  combiner              = "OR"
  notification_channels = var.notification_channels
  user_labels           = local.labels

  conditions {
    display_name = "an UPDATE, MERGE or TRUNCATE ran against processor_run_history"
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
    content   = "Someone changed rows of the append-only ledger `${local.project}.${google_bigquery_dataset.pipeline.dataset_id}.processor_run_history` (metric labels: who, which statement). phasegate never does this. Find the job in the BigQuery audit log; the previous contents can be read with `FOR SYSTEM_TIME AS OF` for 7 days (time travel) and restored from there."
  }

  alert_strategy {
    auto_close = "604800s"
  }
}
