# Every value Google Cloud would reject at apply time is rejected here, at plan time.

# ── Where ─────────────────────────────────────────────────────────────────────────────────

variable "project_id" {
  description = "Google Cloud project that hosts the pipeline (every resource of the module lives in it)."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project ID (6-30 characters: lowercase letters, digits and hyphens, starting with a letter, not ending with a hyphen)."
  }
}

variable "region" {
  description = "Region of the Cloud Run services (and of the scheduler job unless scheduler_region is set)."
  type        = string
  default     = "us-central1"
  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a Google Cloud region such as us-central1 or europe-west4."
  }
}

variable "labels" {
  description = "Labels added to every labelled resource (services, topics, subscriptions, dataset, table, secret), beside app = phasegate and pipeline = <pipeline_name>."
  type        = map(string)
  default     = {}
  validation {
    condition = alltrue([
      for k, v in var.labels : can(regex("^[a-z][a-z0-9_-]{0,62}$", k)) && can(regex("^[a-z0-9_-]{0,63}$", v))
    ])
    error_message = "labels: keys must start with a lowercase letter and be at most 63 lowercase letters, digits, _ or -; values at most 63 of the same characters."
  }
}

# ── The pipeline ──────────────────────────────────────────────────────────────────────────

variable "pipeline_name" {
  description = "Pipeline name, as [pipeline] name in pipeline.toml: topics are <name>-trigger and <name>-<phase>-complete."
  type        = string
  default     = "nba"
  validation {
    # 20 = 30 (service account id) - len("pg-") - len("-pusher").
    condition     = can(regex("^[a-z]([a-z0-9-]*[a-z0-9])?$", var.pipeline_name)) && length(var.pipeline_name) <= 20 && !startswith(var.pipeline_name, "goog")
    error_message = "pipeline_name must be 1-20 lowercase letters, digits or hyphens, start with a letter, not end with a hyphen, and not start with \"goog\" (it names service accounts, topics and Cloud Run services)."
  }
}

variable "phases" {
  description = "Phase names in order, exactly as in pipeline.toml. Each phase subscribes to the previous phase's completion topic; the first to the trigger topic."
  type        = list(string)
  default     = ["raw", "analytics", "precompute", "predictions"]
  validation {
    condition     = length(var.phases) > 0 && length(distinct(var.phases)) == length(var.phases)
    error_message = "phases must list at least one phase, each once."
  }
  validation {
    condition     = alltrue([for p in var.phases : can(regex("^[a-z]([a-z0-9-]*[a-z0-9])?$", p)) && !contains(["pusher", "sched", "fresh"], p)])
    error_message = "Each phase name must be lowercase letters, digits or hyphens, start with a letter and not end with a hyphen (it names a Cloud Run service and a service account), and must not be \"pusher\", \"sched\" or \"fresh\" (the module's own identities)."
  }
  validation {
    condition     = alltrue([for p in var.phases : length("pg-${var.pipeline_name}-${p}") <= 30])
    error_message = "Service account ids pg-<pipeline_name>-<phase> must be at most 30 characters: shorten pipeline_name or the phase name."
  }
  validation {
    # Implied today by the service-account limit above (the service name is 7 characters
    # longer); kept so that changing either naming cannot produce a name Cloud Run rejects.
    condition     = alltrue([for p in var.phases : length("phasegate-${var.pipeline_name}-${p}") <= 49])
    error_message = "Cloud Run service names phasegate-<pipeline_name>-<phase> must be at most 49 characters: shorten pipeline_name or the phase name."
  }
}

variable "config_file" {
  description = "Path of the pipeline file (pipeline.toml) on the machine running Terraform. Its content becomes a Secret Manager secret version mounted into every service; there is no default and the image carries none."
  type        = string
  validation {
    condition     = can(file(var.config_file))
    error_message = "config_file must be a readable text file (the pipeline's pipeline.toml)."
  }
  validation {
    condition     = try(length(file(var.config_file)) <= 65536, true)
    error_message = "config_file is larger than a Secret Manager secret version may be (64 KiB)."
  }
}

variable "config_mount_dir" {
  description = "Directory in the container where the pipeline file is mounted; PHASEGATE_CONFIG is <dir>/pipeline.toml."
  type        = string
  default     = "/etc/phasegate"
  validation {
    condition     = can(regex("^(/[a-z0-9_.-]+)+$", var.config_mount_dir)) && !contains(["/dev", "/proc", "/sys", "/etc", "/usr", "/bin", "/lib", "/var"], var.config_mount_dir)
    error_message = "config_mount_dir must be an absolute directory of its own (not /, /dev, /proc, /sys, /etc, /usr, /bin, /lib or /var, which a volume would hide)."
  }
}

# ── Image and workers ─────────────────────────────────────────────────────────────────────

variable "image" {
  description = "Container image of phasegate (deploy/Dockerfile), best by digest: REGION-docker.pkg.dev/PROJECT/REPO/phasegate@sha256:... (deploy/deploy.sh builds it and sets this variable)."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9.-]+(:[0-9]+)?/[a-z0-9._/-]+(:[A-Za-z0-9._-]+)?(@sha256:[a-f0-9]{64})?$", var.image))
    error_message = "image must be a full image reference such as us-docker.pkg.dev/P/phasegate/phasegate@sha256:<64 hex> or ...:TAG."
  }
}

variable "ingress" {
  description = "Cloud Run ingress. INGRESS_TRAFFIC_INTERNAL_ONLY (default) is enough: Pub/Sub push from a subscription in the same project to the run.app URL counts as internal. See README, \"Network and identity\"."
  type        = string
  default     = "INGRESS_TRAFFIC_INTERNAL_ONLY"
  validation {
    condition     = contains(["INGRESS_TRAFFIC_INTERNAL_ONLY", "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER", "INGRESS_TRAFFIC_ALL"], var.ingress)
    error_message = "ingress must be INGRESS_TRAFFIC_INTERNAL_ONLY, INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER or INGRESS_TRAFFIC_ALL."
  }
}

variable "cpu" {
  description = "CPU limit of each worker instance."
  type        = string
  default     = "1"
  validation {
    condition     = contains(["1", "2", "4", "6", "8"], var.cpu)
    error_message = "cpu must be 1, 2, 4, 6 or 8 (fractional CPUs would force a concurrency of 1)."
  }
}

variable "memory" {
  description = "Memory limit of each worker instance (Cloud Run quantity, e.g. 512Mi or 2Gi)."
  type        = string
  default     = "512Mi"
  validation {
    condition     = can(regex("^[1-9][0-9]*(Mi|Gi)$", var.memory))
    error_message = "memory must be a quantity in Mi or Gi, such as 512Mi or 2Gi."
  }
}

variable "worker_concurrency" {
  description = "Concurrent pushes per Cloud Run instance."
  type        = number
  default     = 8
  validation {
    condition     = var.worker_concurrency >= 1 && var.worker_concurrency <= 1000 && floor(var.worker_concurrency) == var.worker_concurrency
    error_message = "worker_concurrency must be a whole number from 1 to 1000."
  }
}

variable "min_instances" {
  description = "Instances kept warm per phase (0: scale to zero between runs)."
  type        = number
  default     = 0
  validation {
    condition     = var.min_instances >= 0 && floor(var.min_instances) == var.min_instances
    error_message = "min_instances must be a whole number, 0 or more."
  }
}

variable "max_instances" {
  description = "Upper bound of Cloud Run instances per phase."
  type        = number
  default     = 5
  validation {
    condition     = var.max_instances >= 1 && var.max_instances <= 1000 && floor(var.max_instances) == var.max_instances && var.max_instances >= var.min_instances
    error_message = "max_instances must be a whole number from 1 to 1000 and at least min_instances."
  }
}

variable "image_repository_id" {
  description = "Artifact Registry repository (Docker, in var.region) the module creates for the phasegate images; deploy/deploy.sh pushes there (REPO). null: bring your own registry (then the Cloud Run service agent must be able to pull var.image)."
  type        = string
  default     = "phasegate"
  validation {
    condition     = var.image_repository_id == null || can(regex("^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$", var.image_repository_id))
    error_message = "image_repository_id must be 1-63 lowercase letters, digits or hyphens, start with a letter and not end with a hyphen (or null)."
  }
}

variable "enable_prometheus_sidecar" {
  description = "Run Google's Managed Service for Prometheus collector beside each worker, so /metrics reaches Cloud Monitoring (terraform/README.md, \"Metrics\")."
  type        = bool
  default     = true
}

variable "prometheus_sidecar_image" {
  description = "Image of the Managed Service for Prometheus sidecar for Cloud Run (run-gmp-sidecar). It scrapes 0.0.0.0:8080/metrics every 30 s by default, the worker's port and path."
  type        = string
  default     = "us-docker.pkg.dev/cloud-ops-agents-artifacts/cloud-run-gmp-sidecar/cloud-run-gmp-sidecar:1.2.0"
  validation {
    condition     = can(regex("^[a-z0-9.-]+(:[0-9]+)?/[a-z0-9._/-]+(:[A-Za-z0-9._-]+)?(@sha256:[a-f0-9]{64})?$", var.prometheus_sidecar_image))
    error_message = "prometheus_sidecar_image must be a full image reference (registry/path:tag or @sha256:digest)."
  }
}

# ── Delivery ──────────────────────────────────────────────────────────────────────────────

variable "processing_timeout_seconds" {
  description = "Longest a worker may take for one date: the Cloud Run request timeout and the push subscription's ack deadline."
  type        = number
  default     = 600
  validation {
    condition     = var.processing_timeout_seconds >= 10 && var.processing_timeout_seconds <= 600 && floor(var.processing_timeout_seconds) == var.processing_timeout_seconds
    error_message = "processing_timeout_seconds must be a whole number from 10 to 600 (Pub/Sub's ack deadline range)."
  }
}

variable "max_delivery_attempts" {
  description = "Deliveries of one message before it is dead-lettered."
  type        = number
  default     = 10
  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100 && floor(var.max_delivery_attempts) == var.max_delivery_attempts
    error_message = "max_delivery_attempts must be a whole number from 5 to 100 (Pub/Sub's range)."
  }
  # A delivery answered 503 while another holds its event (publish_pending) or its run must
  # be retried until the holder's lease (the processing timeout + 60 s) ran out and a relay
  # (every 5 minutes) could have published it; dead-lettering it sooner alerts on an event that
  # was never lost. Pub/Sub's backoff is approximately exponential and "can be more or less than
  # configured" (RetryPolicy reference), so this is the nominal span: doubling from the minimum,
  # capped at the maximum.
  validation {
    condition = sum([
      for k in range(var.max_delivery_attempts - 1) :
      min(var.retry_maximum_backoff_seconds, var.retry_minimum_backoff_seconds * pow(2, k))
    ]) >= var.processing_timeout_seconds + 60 + 300
    error_message = "The retry schedule (max_delivery_attempts, retry_minimum/maximum_backoff_seconds) must span at least processing_timeout_seconds + 360 s before dead-lettering: a delivery waiting for another's lease and the next relay would otherwise be dead-lettered while its event is still owed."
  }
}

variable "retry_minimum_backoff_seconds" {
  description = "Exponential retry policy: first delay after a nack, in seconds."
  type        = number
  default     = 10
  validation {
    condition     = var.retry_minimum_backoff_seconds >= 0 && var.retry_minimum_backoff_seconds <= 600
    error_message = "retry_minimum_backoff_seconds must be from 0 to 600."
  }
}

variable "retry_maximum_backoff_seconds" {
  description = "Exponential retry policy: longest delay after a nack, in seconds."
  type        = number
  default     = 600
  validation {
    condition     = var.retry_maximum_backoff_seconds >= 0 && var.retry_maximum_backoff_seconds <= 600
    error_message = "retry_maximum_backoff_seconds must be from 0 to 600."
  }
  validation {
    condition     = var.retry_minimum_backoff_seconds <= var.retry_maximum_backoff_seconds
    error_message = "retry_minimum_backoff_seconds must not exceed retry_maximum_backoff_seconds."
  }
}

# ── BigQuery ──────────────────────────────────────────────────────────────────────────────

variable "dataset_id" {
  description = "BigQuery dataset holding the pipeline tables and processor_run_history (PHASEGATE_BIGQUERY_DATASET)."
  type        = string
  default     = "nba"
  validation {
    # (RE2 caps a repetition count at 1000, hence the length test beside the pattern.)
    condition     = can(regex("^[A-Za-z0-9_]+$", var.dataset_id)) && length(var.dataset_id) <= 1024
    error_message = "dataset_id must be letters, digits and underscores only (at most 1024)."
  }
}

variable "dataset_location" {
  description = "BigQuery dataset location (a multi-region such as US or EU, or a region)."
  type        = string
  default     = "US"
  validation {
    condition     = can(regex("^([A-Z]{2}|[a-z]+-[a-z]+[0-9]+)$", var.dataset_location))
    error_message = "dataset_location must be a multi-region (US, EU) or a region (europe-west4)."
  }
}

variable "output_tables" {
  description = "Per phase, the tables (in dataset_id) its processors write, each with its schema (a BigQuery JSON schema file on the machine running Terraform), its DATE partitioning column and up to four clustering columns. The module creates them (deletion-protected) and grants the phase's worker insert/delete-rows rights on them only (no drop, no schema change)."
  type = map(map(object({
    schema_file              = string
    partition_field          = string
    clustering               = optional(list(string), [])
    require_partition_filter = optional(bool, false)
    description              = optional(string, "")
  })))
  default = {}
  validation {
    condition     = alltrue([for p in keys(var.output_tables) : contains(var.phases, p)])
    error_message = "output_tables keys must be phase names from var.phases."
  }
  validation {
    condition     = alltrue(flatten([for p, ts in var.output_tables : [for t, _ in ts : can(regex("^[A-Za-z0-9_]+$", t)) && length(t) <= 1024 && !contains(["processor_run_history", "processor_run_claims"], t)]]))
    error_message = "output_tables must name tables (letters, digits, underscores), never the ledger processor_run_history or processor_run_claims (their rights are fixed by the module)."
  }
  validation {
    condition     = length(distinct(flatten([for p, ts in var.output_tables : keys(ts)]))) == length(flatten([for p, ts in var.output_tables : keys(ts)]))
    error_message = "output_tables: a table belongs to one phase only (one writer per table)."
  }
  validation {
    # The partitioning column must be a DATE column of the schema; clustering columns must
    # exist and be at most four (BigQuery's limit).
    condition = alltrue(flatten([for p, ts in var.output_tables : [for t, spec in ts : try(
      contains([for f in jsondecode(file(spec.schema_file)) : f.name if upper(f.type) == "DATE"], spec.partition_field)
      && length(spec.clustering) <= 4
      && alltrue([for c in spec.clustering : contains([for f in jsondecode(file(spec.schema_file)) : f.name], c)]),
    false)]]))
    error_message = "output_tables: each schema_file must be a readable BigQuery JSON schema whose partition_field is a DATE column, with at most 4 clustering columns that exist in the schema."
  }
}

variable "source_tables" {
  description = "Tables in dataset_id the workers only read (references such as a schedule, and the sources the first phase copies), with their schema, DATE partitioning column and clustering. The module creates them (deletion-protected); whatever loads them needs its own write access."
  type = map(object({
    schema_file              = string
    partition_field          = string
    clustering               = optional(list(string), [])
    require_partition_filter = optional(bool, false)
    description              = optional(string, "")
  }))
  default = {}
  validation {
    condition     = alltrue([for t, _ in var.source_tables : can(regex("^[A-Za-z0-9_]+$", t)) && length(t) <= 1024 && !contains(["processor_run_history", "processor_run_claims"], t)])
    error_message = "source_tables must name tables (letters, digits, underscores), never processor_run_history or processor_run_claims."
  }
  validation {
    condition     = length(setintersection(keys(var.source_tables), flatten([for p, ts in var.output_tables : keys(ts)]))) == 0
    error_message = "source_tables and output_tables must not name the same table."
  }
  validation {
    condition = alltrue([for t, spec in var.source_tables : try(
      contains([for f in jsondecode(file(spec.schema_file)) : f.name if upper(f.type) == "DATE"], spec.partition_field)
      && length(spec.clustering) <= 4
      && alltrue([for c in spec.clustering : contains([for f in jsondecode(file(spec.schema_file)) : f.name], c)]),
    false)])
    error_message = "source_tables: each schema_file must be a readable BigQuery JSON schema whose partition_field is a DATE column, with at most 4 clustering columns that exist in the schema."
  }
}

# ── Firestore (claims and leases) ─────────────────────────────────────────────────────────

variable "firestore_database_id" {
  description = "ID of the named Firestore (Native mode) database the module creates for claims and leases (PHASEGATE_FIRESTORE_DATABASE of every worker). Never \"(default)\", which may belong to something else in the project. One database per module instance: two pipelines in one project need two ids."
  type        = string
  default     = "phasegate"
  validation {
    # Firestore's database ID rule ("Database ID", Firestore "Manage databases"): 4-63
    # characters, lowercase letters, digits and hyphens, a letter first, a letter or digit
    # last, not UUID-like. "(default)" is valid there and refused here on purpose.
    condition     = can(regex("^[a-z][a-z0-9-]{2,61}[a-z0-9]$", var.firestore_database_id)) && !can(regex("^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$", var.firestore_database_id))
    error_message = "firestore_database_id must be 4-63 lowercase letters, digits or hyphens, start with a letter, end with a letter or digit and not look like a UUID (Firestore's rule for a named database; \"(default)\" is not accepted)."
  }
}

variable "firestore_location" {
  description = "Location of the Firestore database, fixed once created: a multi-region (nam5, nam7, eur3) or a Firestore region (e.g. us-central1). Default nam5 (read-write replicas in us-central1 and us-central2, witness us-east1): beside the default Cloud Run region and the default US dataset, and multi-region because every claim goes through it. A region costs less per operation and writes faster; pick the workers' own."
  type        = string
  default     = "nam5"
  validation {
    condition     = contains(["nam5", "nam7", "eur3"], var.firestore_location) || can(regex("^[a-z]+-[a-z]+[0-9]+$", var.firestore_location))
    error_message = "firestore_location must be a Firestore multi-region (nam5, nam7, eur3) or a region such as us-central1 or europe-west4."
  }
}

# ── Operations ────────────────────────────────────────────────────────────────────────────

variable "enable_scheduler" {
  description = "Create the Cloud Scheduler job that publishes the daily trigger. Requires a [trigger] section in config_file (the scheduled message names no date)."
  type        = bool
  default     = true
  # Terraform has no TOML decoder: a `[trigger]` table header on a line of its own is looked
  # for with a regular expression (see schedule_time_zone for the time zone).
  validation {
    condition     = !var.enable_scheduler || length(regexall("(?m)^[ \t]*\\[trigger\\][ \t]*(#.*)?$", try(file(var.config_file), ""))) > 0
    error_message = "enable_scheduler is true but config_file has no [trigger] section: the scheduled trigger carries no data_date, so every scheduled push would be refused (400). Add [trigger] with timezone = schedule_time_zone (and offset_days), or set enable_scheduler = false."
  }
}

variable "schedule" {
  description = "Cron schedule of the daily trigger (in schedule_time_zone)."
  type        = string
  default     = "0 6 * * *"
  validation {
    condition     = length(split(" ", trimspace(var.schedule))) == 5
    error_message = "schedule must be a five-field cron expression, e.g. \"0 6 * * *\"."
  }
}

variable "schedule_time_zone" {
  description = "IANA time zone of the schedule. With enable_scheduler, config_file must have a [trigger] section whose timezone is this zone: the scheduled message carries no data_date, and the worker derives it from publishTime in [trigger] timezone (a missing section makes every scheduled push a 400)."
  type        = string
  default     = "Etc/UTC"
  validation {
    condition     = can(regex("^[A-Za-z_]+(/[A-Za-z0-9_+-]+)*$", var.schedule_time_zone))
    error_message = "schedule_time_zone must be an IANA time zone such as Etc/UTC or America/New_York."
  }
  # Terraform has no TOML decoder, so the pipeline file is read with regular expressions
  # (RE2): a `[trigger]` table header on a line of its own, and in the text up to the next
  # table header a `timezone = "..."` key. Only that form is recognised (not a dotted
  # `trigger.timezone` key or an inline table): scripts/check_terraform.py checks that the
  # same reading of the shipped example agrees with a real TOML parser. The section's presence
  # is checked on enable_scheduler.
  validation {
    condition     = !var.enable_scheduler || try(regex("(?m)^[ \t]*timezone[ \t]*=[ \t]*[\"']([^\"']*)[\"']", regex("(?ms)^[ \t]*\\[trigger\\][^\n]*\n(.*?)(?:^[ \t]*\\[|\\z)", file(var.config_file))[0])[0], "") == var.schedule_time_zone
    error_message = "schedule_time_zone must equal [trigger] timezone of config_file (the zone the worker derives the data date in): a different zone names the wrong day around midnight."
  }
}

variable "scheduler_region" {
  description = "Region of the Cloud Scheduler job (null: var.region). Cloud Scheduler is not offered in every Cloud Run region."
  type        = string
  default     = null
  validation {
    condition     = var.scheduler_region == null || can(regex("^[a-z]+-[a-z]+[0-9]+$", var.scheduler_region))
    error_message = "scheduler_region must be a Google Cloud region such as us-central1."
  }
}

variable "enable_relay_scheduler" {
  description = "Per phase, a Cloud Scheduler job that POSTs to the worker's /relay every relay_schedule, so an owed completion event is published even while the service is scaled to zero."
  type        = bool
  default     = true
}

variable "relay_schedule" {
  description = "Cron schedule (Etc/UTC) of the relay jobs. Every 5 minutes keeps an owed event's wait under 10 minutes."
  type        = string
  default     = "*/5 * * * *"
  validation {
    condition     = length(split(" ", trimspace(var.relay_schedule))) == 5
    error_message = "relay_schedule must be a five-field cron expression, e.g. \"*/5 * * * *\"."
  }
}

variable "enable_freshness_job" {
  description = "Create the Cloud Run job `phasegate freshness` and its Cloud Scheduler trigger; an execution fails (and alerts) when a phase's expected date is late ([phases] freshness in pipeline.toml)."
  type        = bool
  default     = true
}

variable "freshness_schedule" {
  description = "Cron schedule (in schedule_time_zone) of the freshness job."
  type        = string
  default     = "15 * * * *"
  validation {
    condition     = length(split(" ", trimspace(var.freshness_schedule))) == 5
    error_message = "freshness_schedule must be a five-field cron expression, e.g. \"15 * * * *\"."
  }
}

variable "unacked_age_alert_seconds" {
  description = "Alert when a push subscription's oldest unacknowledged message is older than this (pubsub.googleapis.com/subscription/oldest_unacked_message_age): work is stuck or refused long before it dead-letters."
  type        = number
  default     = 1800
  validation {
    condition     = var.unacked_age_alert_seconds >= 60 && floor(var.unacked_age_alert_seconds) == var.unacked_age_alert_seconds
    error_message = "unacked_age_alert_seconds must be a whole number of at least 60."
  }
}

variable "log_metric_propagation_wait" {
  description = "How long to wait after creating the log-based metrics before creating the alert policies on them: a new metric can take up to 10 minutes to be visible to Cloud Monitoring (terraform-provider-google issue 11102). Only the first apply (or a renamed metric) waits."
  type        = string
  default     = "600s"
  validation {
    condition     = can(regex("^[0-9]+s$", var.log_metric_propagation_wait))
    error_message = "log_metric_propagation_wait must be a number of seconds such as 600s."
  }
}

variable "notification_channels" {
  description = "Cloud Monitoring notification channel ids (projects/P/notificationChannels/N) the alert policies notify. Empty: incidents are opened but nobody is notified."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for c in var.notification_channels : can(regex("^projects/[^/]+/notificationChannels/[^/]+$", c))])
    error_message = "notification_channels must be ids of the form projects/PROJECT/notificationChannels/ID."
  }
}
