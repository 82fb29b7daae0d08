variable "project_id" {
  type = string
}

variable "config_file" {
  type = string
}

variable "enable_scheduler" {
  type    = bool
  default = true
  validation {
    condition     = !var.enable_scheduler || length(regexall("(?m)^[ \t]*\\[trigger\\][ \t]*(#.*)?$", try(file(var.config_file), ""))) > 0
    error_message = "no [trigger]"
  }
}

variable "schedule_time_zone" {
  type    = string
  default = "Etc/UTC"
  validation {
    condition     = !var.enable_scheduler || try(regex("(?m)^[ \t]*timezone[ \t]*=[ \t]*[\"']([^\"']*)[\"']", regex("(?ms)^[ \t]*\\[trigger\\][^\n]*\n(.*?)(?:^[ \t]*\\[|\\z)", file(var.config_file))[0])[0], "") == var.schedule_time_zone
    error_message = "time zone mismatch"
  }
}
