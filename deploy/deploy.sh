#!/usr/bin/env bash
# Build and push the phasegate image, then roll it out as a new revision of every worker.
#
#   PROJECT=my-project REGION=us-central1 deploy/deploy.sh [TAG]
#
# Terraform owns every resource, the Cloud Run services included; this script owns only the
# image. It builds deploy/Dockerfile (and deploy/command-processor/Dockerfile, the same binary
# on Python, pushed as phasegate-python) with Cloud Build (deploy/cloudbuild.yaml), pushes
# them to the Artifact Registry repository the module creates, looks up the digest, records it in <root module>/image.auto.tfvars (commit that file: it is the
# release record, and a later plain `terraform apply` keeps the image instead of rolling it
# back), and applies the root module (Terraform shows the plan: a new revision per service,
# nothing else). There is no second definition of the services anywhere.
#
# Optional: REPO (Artifact Registry repository, default phasegate: the module's
# image_repository_id), TF_DIR (the root module, default terraform/examples/daily),
# ROLLOUT=none (build, push and record only), IMAGE_VARIANT=python (record the
# command-processor image instead), BUILD_SERVICE_ACCOUNT (the identity Cloud Build runs as,
# projects/P/serviceAccounts/EMAIL; it needs roles/artifactregistry.writer on the repository
# and roles/logging.logWriter).
#
# The first deployment: the repository must exist before the first push, so create it alone
# first (terraform/README.md, "First deployment"):
#   terraform -chdir=TF_DIR apply -target=module.phasegate.google_artifact_registry_repository.images
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PROJECT:?set PROJECT}"
REGION="${REGION:-us-central1}"
REPO="${REPO:-phasegate}"
TF_DIR="${TF_DIR:-terraform/examples/daily}"
ROLLOUT="${ROLLOUT:-terraform}"
IMAGE_VARIANT="${IMAGE_VARIANT:-}"
TAG="${1:-$(git rev-parse --short HEAD)}"
IMAGE="${REGION}-docker.pkg.dev/${PROJECT}/${REPO}/phasegate"
case "$ROLLOUT" in
  terraform | none) ;;
  *) echo "ROLLOUT must be terraform or none, not ${ROLLOUT}" >&2; exit 2 ;;
esac
case "$IMAGE_VARIANT" in
  "" | python) ;;
  *) echo "IMAGE_VARIANT must be empty or python, not ${IMAGE_VARIANT}" >&2; exit 2 ;;
esac
[[ -d "$TF_DIR" ]] || { echo "no root module at ${TF_DIR} (set TF_DIR)" >&2; exit 2; }

echo "== building ${IMAGE}:${TAG} and ${IMAGE}-python:${TAG}"
BUILD_ARGS=(--project "$PROJECT" --region "$REGION" --config deploy/cloudbuild.yaml
  --substitutions "_IMAGE=${IMAGE},_TAG=${TAG}")
if [[ -n "${BUILD_SERVICE_ACCOUNT:-}" ]]; then
  BUILD_ARGS+=(--service-account "$BUILD_SERVICE_ACCOUNT")
fi
gcloud builds submit "${BUILD_ARGS[@]}" .

RECORDED="$IMAGE"
if [[ "$IMAGE_VARIANT" == python ]]; then RECORDED="${IMAGE}-python"; fi

# Deploy by digest: a tag can move, a digest cannot.
DIGEST="$(gcloud artifacts docker images describe "${RECORDED}:${TAG}" --project "$PROJECT" \
  --format='value(image_summary.digest)')"
IMAGE_REF="${RECORDED}@${DIGEST}"
echo "== pushed ${IMAGE_REF}"

printf '# Written by deploy/deploy.sh: the image the workers run.\nimage = "%s"\n' "$IMAGE_REF" \
  > "${TF_DIR}/image.auto.tfvars"
echo "== recorded in ${TF_DIR}/image.auto.tfvars"

case "$ROLLOUT" in
  terraform)
    echo "== rolling out through Terraform (${TF_DIR})"
    terraform -chdir="$TF_DIR" apply
    ;;
  none)
    echo "== not rolled out; run terraform -chdir=${TF_DIR} apply"
    ;;
esac
