#!/usr/bin/env bash
# Build the image with Cloud Build and deploy one Cloud Run service per phase.
#
#   PROJECT=my-project REGION=us-central1 deploy/deploy.sh [TAG]
#
# Optional: PIPELINE (default nba), DATASET (default nba), PHASES (default
# "raw analytics precompute predictions"), REPO (Artifact Registry repo, default phasegate).
# Topics, subscriptions, service accounts and IAM come from terraform/ — apply it first
# (with the same image) or let Terraform own the services too and use this script only to
# build the image.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PROJECT:?set PROJECT}"
REGION="${REGION:-us-central1}"
PIPELINE="${PIPELINE:-nba}"
DATASET="${DATASET:-nba}"
PHASES="${PHASES:-raw analytics precompute predictions}"
REPO="${REPO:-phasegate}"
TAG="${1:-$(git rev-parse --short HEAD)}"
IMAGE="${REGION}-docker.pkg.dev/${PROJECT}/${REPO}/phasegate:${TAG}"

echo "== building ${IMAGE}"
gcloud builds submit --project "$PROJECT" --region "$REGION" \
  --config /dev/stdin . <<YAML
steps:
  - name: gcr.io/cloud-builders/docker
    args: [build, -f, deploy/Dockerfile, -t, "${IMAGE}", .]
images: ["${IMAGE}"]
YAML

for PHASE in $PHASES; do
  echo "== deploying phase ${PHASE}"
  export PROJECT PIPELINE PHASE DATASET IMAGE
  envsubst < deploy/service.yaml > "/tmp/phasegate-${PHASE}.yaml"
  gcloud run services replace "/tmp/phasegate-${PHASE}.yaml" --project "$PROJECT" --region "$REGION"
done
echo "== done: ${IMAGE}"
