variable "project_id" {
  description = "Google Cloud project that hosts the pipeline."
  type        = string
}

variable "region" {
  description = "Region of the Cloud Run services."
  type        = string
  default     = "us-central1"
}

variable "image" {
  description = "Container image of phasegate (deploy/Dockerfile), e.g. us-docker.pkg.dev/P/phasegate/phasegate:TAG."
  type        = string
}

variable "pipeline_name" {
  description = "Pipeline name: topics are <name>-trigger and <name>-<phase>-complete, as in pipeline.toml."
  type        = string
  default     = "nba"
}

variable "phases" {
  description = "Phase names in order, exactly as in pipeline.toml. Each phase subscribes to the previous phase's completion topic; the first to the trigger topic."
  type        = list(string)
  default     = ["raw", "analytics", "precompute", "predictions"]
}

variable "dataset_id" {
  description = "BigQuery dataset holding the pipeline tables and processor_run_history."
  type        = string
  default     = "nba"
}

variable "dataset_location" {
  description = "BigQuery dataset location."
  type        = string
  default     = "US"
}

variable "processing_timeout_seconds" {
  description = "Longest a worker may take for one date; the Cloud Run request timeout and the push ack deadline (at most 600 s, Pub/Sub's limit)."
  type        = number
  default     = 600
  validation {
    condition     = var.processing_timeout_seconds >= 10 && var.processing_timeout_seconds <= 600
    error_message = "processing_timeout_seconds must be between 10 and 600 (Pub/Sub's maximum ack deadline)."
  }
}

variable "max_delivery_attempts" {
  description = "Deliveries of one message before it is dead-lettered (5-100)."
  type        = number
  default     = 10
}

variable "retry_minimum_backoff" {
  description = "Exponential retry policy: first delay after a nack."
  type        = string
  default     = "10s"
}

variable "retry_maximum_backoff" {
  description = "Exponential retry policy: longest delay after a nack."
  type        = string
  default     = "600s"
}

variable "worker_concurrency" {
  description = "Concurrent pushes per Cloud Run instance."
  type        = number
  default     = 8
}

variable "max_instances" {
  description = "Upper bound of Cloud Run instances per phase."
  type        = number
  default     = 5
}

variable "config_path" {
  description = "Path of pipeline.toml inside the image."
  type        = string
  default     = "/etc/phasegate/pipeline.toml"
}
