# A complete root module: the NBA example pipeline, triggered daily at 06:00 New York time,
# alerting an e-mail address. It creates everything, the image registry and every table
# included, in one `terraform apply` (terraform/README.md, "First deployment"). Copy this directory to your infrastructure repository and point
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
    time = {
      source  = "hashicorp/time"
      version = ">= 0.9, < 1.0"
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

  # Claims and leases: a named Firestore database of this pipeline's own (a second pipeline
  # in the project takes another id), in the US multi-region beside the US dataset and the
  # us-central1 workers.
  firestore_database_id = "phasegate-nba"
  firestore_location    = "nam5"

  # Every table the workers use is created here, by the one `terraform apply` (no
  # `phasegate init` in production). What each phase's processors write (pipeline.toml,
  # `output.table`), with the schema of its `setup.bigquery` statement
  # (scripts/check_terraform.py compares the two), DAY-partitioned on its date column:
  output_tables = {
    raw = {
      raw_player_boxscores = { schema_file = "${path.module}/schemas/raw_player_boxscores.json", partition_field = "game_date", clustering = ["team", "player"] }
    }
    analytics = {
      player_game_summary = { schema_file = "${path.module}/schemas/player_game_summary.json", partition_field = "game_date", clustering = ["team", "player"] }
    }
    precompute = {
      player_daily_cache = { schema_file = "${path.module}/schemas/player_daily_cache.json", partition_field = "cache_date", clustering = ["team", "player"] }
    }
    predictions = {
      player_points_predictions = { schema_file = "${path.module}/schemas/player_points_predictions.json", partition_field = "game_date", clustering = ["team", "player"] }
    }
  }
  # What the workers only read: the schedule (reference) and the source the raw phase copies.
  source_tables = {
    team_schedule           = { schema_file = "${path.module}/schemas/team_schedule.json", partition_field = "game_date", clustering = ["team"] }
    source_player_boxscores = { schema_file = "${path.module}/schemas/source_player_boxscores.json", partition_field = "game_date", clustering = ["team"] }
  }

  # The daily trigger at 06:00 New York time; pipeline.toml's [trigger] must name the same
  # zone (Terraform refuses the plan otherwise).
  schedule           = "0 6 * * *"
  schedule_time_zone = "America/New_York"

  cpu                = "1"
  memory             = "512Mi"
  worker_concurrency = 8
  max_instances      = 5

  notification_channels = [google_monitoring_notification_channel.email.id]
  labels                = { env = "prod", team = "data" }
}
