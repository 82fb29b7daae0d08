# A complete root module: the NBA example pipeline, triggered daily at 06:00 New York time,
# alerting an e-mail address. Copy this directory to your infrastructure repository and point
# `source` at a pinned ref of phasegate, e.g.
#   source = "git::https://github.com/OWNER/phasegate.git//terraform?ref=v0.1.0"

terraform {
  required_version = ">= 1.9"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.0, < 8.0"
    }
    google-beta = {
      source  = "hashicorp/google-beta"
      version = ">= 6.0, < 8.0"
    }
  }
  # Keep state remote and locked, e.g.:
  # backend "gcs" {
  #   bucket = "my-terraform-state"
  #   prefix = "phasegate/nba"
  # }
}

provider "google" {
  project = var.project_id
  region  = var.region
}

provider "google-beta" {
  project = var.project_id
  region  = var.region
}

resource "google_monitoring_notification_channel" "email" {
  # From the module: created only after the module has enabled the Monitoring API.
  project      = module.phasegate.project_id
  display_name = "phasegate nba on-call"
  type         = "email"
  labels = {
    email_address = var.alert_email
  }
}

module "phasegate" {
  source = "../.."

  project_id    = var.project_id
  region        = var.region
  image         = var.image
  pipeline_name = "nba"
  phases        = ["raw", "analytics", "precompute", "predictions"]
  config_file   = var.config_file
  dataset_id    = "nba"

  # What each phase's processors write (pipeline.toml, `output.table`).
  output_tables = {
    raw         = ["raw_player_boxscores"]
    analytics   = ["player_game_summary"]
    precompute  = ["player_daily_cache"]
    predictions = ["player_points_predictions"]
  }

  schedule           = "0 6 * * *"
  schedule_time_zone = "America/New_York"

  cpu                = "1"
  memory             = "512Mi"
  worker_concurrency = 8
  max_instances      = 5

  notification_channels = [google_monitoring_notification_channel.email.id]
  labels                = { env = "prod", team = "data" }
}
