variable "project_id" {
  description = "Google Cloud project of the pipeline."
  type        = string
}

variable "region" {
  description = "Region of the Cloud Run services and the scheduler job."
  type        = string
  default     = "us-central1"
}

variable "image" {
  description = "phasegate image by digest; deploy/deploy.sh records it in image.auto.tfvars on each release."
  type        = string
}

variable "config_file" {
  description = "The pipeline file to deploy."
  type        = string
}

variable "alert_email" {
  description = "Where alerts go."
  type        = string
}
