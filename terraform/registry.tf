# The image registry: an Artifact Registry Docker repository in var.region, where
# deploy/deploy.sh (Cloud Build, deploy/cloudbuild.yaml) pushes the phasegate image and the
# command-processor image. The Cloud Run service agent of this project pulls from a
# repository of the same project without any grant ("Deploying container images", Artifact
# Registry). Set image_repository_id = null to use a registry of your own.

resource "google_artifact_registry_repository" "images" {
  #checkov:skip=CKV_GCP_84:Google-managed encryption; CMEK is optional here (add kms_key_name in a fork where required)
  count         = var.image_repository_id == null ? 0 : 1
  project       = local.project
  location      = var.region
  repository_id = var.image_repository_id
  description   = "phasegate ${var.pipeline_name} images (deploy/deploy.sh)"
  format        = "DOCKER"
  labels        = local.labels
}
