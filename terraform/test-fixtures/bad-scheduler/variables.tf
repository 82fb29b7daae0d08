variable "project_id" {
  type = string
}

variable "config_file" {
  type = string
}

# Nothing ties the scheduler to the pipeline file's [trigger].
variable "enable_scheduler" {
  type    = bool
  default = true
}

variable "schedule_time_zone" {
  type    = string
  default = "Etc/UTC"
}
