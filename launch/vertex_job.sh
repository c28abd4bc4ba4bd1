#!/usr/bin/env bash
# Submit the job to Vertex AI Training (custom job), one or several GPU machines.
#
#   launch/vertex_job.sh --build --bucket gs://my-bucket --gpus 4 train/full_finetune.py --epochs 3
#   launch/vertex_job.sh --bucket gs://b --workers 2 --gpus 8 --spot train/full_finetune.py
#   launch/vertex_job.sh --dry-run ...        # print the gcloud commands and the job spec
#
# The job runs the project image: launch/Dockerfile with this project at the launched commit
# baked in. --build builds it with Cloud Build (from `git archive` of --ref) and pushes it to
# the Artifact Registry repository --registry (default REGION-docker.pkg.dev/PROJECT/finsent;
# create it once: gcloud artifacts repositories create finsent --repository-format docker
# --location REGION), tagged with the commit. Without --build the image of that commit must
# be there already (launch/preflight.sh checks, with the bucket, before the job is created).
# Vertex's prebuilt TensorFlow containers went up to TF 2.17 and are no longer available.
#
# Pool 0 is the chief, pool 1 holds --workers more machines; Vertex sets TF_CONFIG on each,
# so the script runs MultiWorkerMirroredStrategy. The run folder is the bucket itself,
# mounted by Vertex at /gcs/<bucket>/runs/<name> (Cloud Storage FUSE), so a restarted
# job resumes from its BackupAndRestore state. TensorBoard writes on the replica's disk and
# copies into the run folder (--tb-staging): the mount uploads a file only once it is closed.
# --ref must be pushed to --repo (the image's tag then names a commit anyone can check out).
# Project and region: --project/--region or GOOGLE_CLOUD_PROJECT / CLOUDSDK_AI_REGION.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)

NAME="finsent-$(date +%Y%m%d-%H%M%S)"
PROJECT=${GOOGLE_CLOUD_PROJECT:-}
REGION=${CLOUDSDK_AI_REGION:-us-central1}
GPUS=1
GPU_TYPE=NVIDIA_TESLA_T4
MACHINE=""
WORKERS=0
SPOT=0
BUCKET=${FINSENT_BUCKET:-}
IMAGE=""
REGISTRY=""
BUILD=0
REPO=$(git -C "$HERE/.." remote get-url origin 2>/dev/null || echo "")
REF=$(git -C "$HERE/.." rev-parse HEAD 2>/dev/null || echo "")
DRY=0

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; cat <<U
Options: --name N  --project P  --region R  --gpus N ($GPUS)  --gpu-type T ($GPU_TYPE)  --machine-type M
         --workers N ($WORKERS)  --spot  --bucket gs://B  --build  --registry HOST/PROJECT/REPOSITORY
         --image URI (instead of REGISTRY/finsent:COMMIT)  --repo URL  --ref REF  --dry-run
U
exit "${1:-2}"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --name) NAME=$2; shift 2;;  --project) PROJECT=$2; shift 2;;  --region) REGION=$2; shift 2;;
        --gpus) GPUS=$2; shift 2;;  --gpu-type) GPU_TYPE=$2; shift 2;;  --machine-type) MACHINE=$2; shift 2;;
        --workers) WORKERS=$2; shift 2;;  --spot) SPOT=1; shift;;  --bucket) BUCKET=$2; shift 2;;
        --image) IMAGE=$2; shift 2;;  --repo) REPO=$2; shift 2;;  --ref) REF=$2; shift 2;;
        --build) BUILD=1; shift;;  --registry) REGISTRY=$2; shift 2;;
        --dry-run) DRY=1; shift;;  -h|--help) usage 0;;  --) shift; break;;
        -*) echo "vertex_job.sh: unknown option $1" >&2; usage;;  *) break;;
    esac
done
[ $# -ge 1 ] || { echo "vertex_job.sh: give the script to run, e.g. train/full_finetune.py" >&2; usage; }
[ -f "$HERE/../$1" ] || { echo "vertex_job.sh: no script $1 in this project" >&2; exit 2; }
[ -n "$BUCKET" ] || { [ "$DRY" = 1 ] && BUCKET="gs://YOUR-BUCKET"; } || { echo "vertex_job.sh: --bucket gs://... (or FINSENT_BUCKET) is required" >&2; exit 2; }
[ -n "$REPO" ] || { echo "vertex_job.sh: --repo URL is required (no git remote 'origin' here)" >&2; exit 2; }
. "$HERE/repo_check.sh"
check_repo vertex_job.sh "$REPO" "$REF" || exit 2
COMMIT=$(git -C "$HERE/.." rev-parse --verify --quiet "$REF^{commit}") \
    || { echo "vertex_job.sh: commit $REF is not in this checkout (git fetch it; the image is built from it)" >&2; exit 2; }
if [ -z "$REGISTRY" ]; then
    [ -n "$PROJECT" ] || [ "$DRY" = 1 ] \
        || { echo "vertex_job.sh: --registry HOST/PROJECT/REPOSITORY or --project is required (the image's home)" >&2; exit 2; }
    REGISTRY="$REGION-docker.pkg.dev/${PROJECT:-YOUR-PROJECT}/finsent"
fi
IMAGE=${IMAGE:-$REGISTRY/finsent:$COMMIT}
MACHINE=${MACHINE:-n1-standard-$((8 * GPUS))}
# your own --data goes to the bucket beside the run; the job reads it through Vertex's /gcs/ mount
. "$HERE/stage_data.sh"
stage_data vertex_job.sh "$BUCKET/runs/$NAME/data" "/gcs/${BUCKET#gs://}/runs/$NAME/data" "$@" || exit 2
set -- "${STAGED_ARGS[@]}"
COMMAND="$*"
case " $COMMAND " in *" --gpus "*) ;; *) COMMAND="$COMMAND --gpus $GPUS";; esac
RUN_DIR="/gcs/${BUCKET#gs://}/runs/$NAME"
ENTRY="python $COMMAND --run-dir $RUN_DIR --tb-staging /tmp/finsent-tb"   # in /app, the image's venv

pool() {  # one workerPoolSpecs entry
    cat <<Y
  - machineSpec:
      machineType: $MACHINE
      acceleratorType: $GPU_TYPE
      acceleratorCount: $GPUS
    replicaCount: $1
    diskSpec:
      bootDiskSizeGb: 100
    containerSpec:
      imageUri: $IMAGE
      command: ["bash", "-c"]
      args: ["$ENTRY"]
Y
}
SPEC=$(mktemp "${TMPDIR:-/tmp}/vertex-$NAME-XXXX.yaml")
SOURCE=$(mktemp -d "${TMPDIR:-/tmp}/finsent-source-XXXXXX")   # --build: the commit's files, Cloud Build's source
trap 'rm -rf "$SPEC" "$SOURCE"' EXIT
{
    echo "workerPoolSpecs:"
    pool 1
    [ "$WORKERS" -eq 0 ] || pool "$WORKERS"
    [ "$SPOT" = 0 ] || printf 'scheduling:\n  strategy: SPOT\n'
} > "$SPEC"
CMD=(gcloud ai custom-jobs create --region "$REGION" --display-name "$NAME" --config "$SPEC")
P=(); [ -z "$PROJECT" ] || P=(--project "$PROJECT")
CMD+=("${P[@]}")
# the image: built now from the commit (Cloud Build), or already in the registry (preflight checks)
BUILD_CMD=(gcloud builds submit "$SOURCE" --config "$SOURCE/launch/cloudbuild.yaml"
           --substitutions "_IMAGE=$IMAGE,_COMMIT=$COMMIT"
           "${P[@]}")
PREFLIGHT=(bash "$HERE/preflight.sh" --bucket "$BUCKET" "${P[@]}")
if [ "$BUILD" = 1 ]; then PREFLIGHT+=(--repository "${IMAGE%/*}"); else PREFLIGHT+=(--image "$IMAGE"); fi

if [ "$DRY" = 1 ]; then
    printf '%q ' "${PREFLIGHT[@]}"; echo
    [ "$BUILD" = 0 ] || { echo "git archive $COMMIT | tar -x -C $SOURCE"; printf '%q ' "${BUILD_CMD[@]}"; echo; }
    echo "# image: $IMAGE"
    [ ${#UPLOAD[@]} -eq 0 ] || { printf '%q ' "${UPLOAD[@]}"; echo; }
    printf '%q ' "${CMD[@]}"; echo
    echo "# job spec (--config):"; cat "$SPEC"
    exit 0
fi
"${PREFLIGHT[@]}" || exit 2
if [ "$BUILD" = 1 ]; then
    git -C "$HERE/.." archive "$COMMIT" | tar -x -C "$SOURCE"
    "${BUILD_CMD[@]}" || { echo "vertex_job.sh: the image build failed (Cloud Build's log above)" >&2; exit 1; }
fi
[ ${#UPLOAD[@]} -eq 0 ] || "${UPLOAD[@]}"
"${CMD[@]}"
echo "Results: $BUCKET/runs/$NAME   TensorBoard: tensorboard --logdir $BUCKET/runs"
