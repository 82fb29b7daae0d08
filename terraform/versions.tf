# Provider range, checked against the provider changelogs (terraform/README.md, "Versions"):
# - google >= 6.8: `invoker_iam_disabled` on google_cloud_run_v2_service arrived in 6.8.0
#   (CHANGELOG, "cloudrunv2: added `invoker_iam_disabled`"; the newest attribute this module
#   uses; `deletion_protection` is 6.0). 7.0 changed nothing used
#   here (its one relevant change, google_project_service's disable_on_destroy default, is
#   set explicitly below). < 8.0: 8.0 is a major release with breaking removals that this
#   module has not been reviewed against.
# - google-beta: google_project_service_identity (the Pub/Sub service agent, created before
#   anything is granted to it) exists only in the beta provider; same range.
# - hashicorp/time (time_sleep): the wait between creating the log-based metrics and the
#   alert policies on them (terraform-provider-google issue 11102). time_sleep with
#   create_duration and triggers exists since 0.7; < 1.0 excludes an unreviewed major.
# - Terraform >= 1.9: variable validations that refer to other variables (name lengths that
#   combine pipeline_name and phases, retry minimum <= maximum).
terraform {
  required_version = ">= 1.9"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.8, < 8.0"
    }
    google-beta = {
      source  = "hashicorp/google-beta"
      version = ">= 6.8, < 8.0"
    }
    time = {
      source  = "hashicorp/time"
      version = ">= 0.9, < 1.0"
    }
  }
}
