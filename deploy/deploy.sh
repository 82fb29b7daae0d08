#!/usr/bin/env bash
# Build and push the phasegate image, then roll it out as a new revision of every worker.
#
#   PROJECT=my-project REGION=us-central1 deploy/deploy.sh [TAG]
#
# Terraform owns every resource, the Cloud Run services included; this script owns only the
# image. It builds deploy/Dockerfile with Cloud Build, pushes it to Artifact Registry, looks
# up its digest, records it in <root module>/image.auto.tfvars (commit that file: it is the
# release record, and a later plain `terraform apply` keeps the image instead of rolling it
# back), and applies the root module (Terraform shows the plan: a new revision per service,
# nothing else). There is no second definition of the services anywhere.
#
# Optional: REPO (Artifact Registry repository, default phasegate), TF_DIR (the root module,
# default terraform/examples/daily), ROLLOUT=none (build, push and record only).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PROJECT:?set PROJECT}"
REGION="${REGION:-us-central1}"
REPO="${REPO:-phasegate}"
TF_DIR="${TF_DIR:-terraform/examples/daily}"
ROLLOUT="${ROLLOUT:-terraform}"
TAG="${1:-$(git rev-parse --short HEAD)}"
IMAGE="${REGION}-docker.pkg.dev/${PROJECT}/${REPO}/phasegate"
case "$ROLLOUT" in
  terraform | none) ;;
  *) echo "ROLLOUT must be terraform or none, not ${ROLLOUT}" >&2; exit 2 ;;
esac
[[ -d "$TF_DIR" ]] || { echo "no root module at ${TF_DIR} (set TF_DIR)" >&2; exit 2; }

echo "== building ${IMAGE}:${TAG}"
gcloud builds submit --project "$PROJECT" --region "$REGION" \
  --config /dev/stdin . <<YAML
steps:
  - name: gcr.io/cloud-builders/docker
    env: ["DOCKER_BUILDKIT=1"]
    args: [build, -f, deploy/Dockerfile, -t, "${IMAGE}:${TAG}", .]
images: ["${IMAGE}:${TAG}"]
YAML

# Deploy by digest: a tag can move, a digest cannot.
DIGEST="$(gcloud artifacts docker images describe "${IMAGE}:${TAG}" --project "$PROJECT" \
  --format='value(image_summary.digest)')"
IMAGE_REF="${IMAGE}@${DIGEST}"
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
