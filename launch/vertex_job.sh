#!/usr/bin/env bash
# Submit the job to Vertex AI Training (custom job), one or several GPU machines.
#
#   launch/vertex_job.sh --bucket gs://my-bucket --gpus 4 train/full_finetune.py --epochs 3
#   launch/vertex_job.sh --bucket gs://b --workers 2 --gpus 8 --spot train/full_finetune.py
#   launch/vertex_job.sh --dry-run ...        # print the gcloud command and the job spec
#
# Pool 0 is the chief, pool 1 holds --workers more machines; Vertex sets TF_CONFIG on each,
# so the script runs MultiWorkerMirroredStrategy. The run folder is the bucket itself,
# mounted by Vertex at /gcs/<bucket>/runs/<name> (Cloud Storage FUSE), so a restarted
# job resumes from its BackupAndRestore state. The code comes from --repo at --ref.
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
IMAGE=us-docker.pkg.dev/vertex-ai/training/tf-gpu.2-15.py310:latest   # Vertex's prebuilt TF 2.15 GPU container
REPO=$(git -C "$HERE/.." remote get-url origin 2>/dev/null || echo "")
REF=$(git -C "$HERE/.." rev-parse HEAD 2>/dev/null || echo "")
DRY=0

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; cat <<U
Options: --name N  --project P  --region R  --gpus N ($GPUS)  --gpu-type T ($GPU_TYPE)  --machine-type M
         --workers N ($WORKERS)  --spot  --bucket gs://B  --image URI  --repo URL  --ref REF  --dry-run
U
exit "${1:-2}"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --name) NAME=$2; shift 2;;  --project) PROJECT=$2; shift 2;;  --region) REGION=$2; shift 2;;
        --gpus) GPUS=$2; shift 2;;  --gpu-type) GPU_TYPE=$2; shift 2;;  --machine-type) MACHINE=$2; shift 2;;
        --workers) WORKERS=$2; shift 2;;  --spot) SPOT=1; shift;;  --bucket) BUCKET=$2; shift 2;;
        --image) IMAGE=$2; shift 2;;  --repo) REPO=$2; shift 2;;  --ref) REF=$2; shift 2;;
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
MACHINE=${MACHINE:-n1-standard-$((8 * GPUS))}
# your own --data goes to the bucket beside the run; the job reads it through Vertex's /gcs/ mount
. "$HERE/stage_data.sh"
stage_data vertex_job.sh "$BUCKET/runs/$NAME/data" "/gcs/${BUCKET#gs://}/runs/$NAME/data" "$@" || exit 2
set -- "${STAGED_ARGS[@]}"
COMMAND="$*"
case " $COMMAND " in *" --gpus "*) ;; *) COMMAND="$COMMAND --gpus $GPUS";; esac
RUN_DIR="/gcs/${BUCKET#gs://}/runs/$NAME"
ENTRY="git clone --quiet $REPO /app && cd /app && git checkout --quiet $REF && pip install --quiet -r requirements.txt && python $COMMAND --run-dir $RUN_DIR"

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
{
    echo "workerPoolSpecs:"
    pool 1
    [ "$WORKERS" -eq 0 ] || pool "$WORKERS"
    [ "$SPOT" = 0 ] || printf 'scheduling:\n  strategy: SPOT\n'
} > "$SPEC"
CMD=(gcloud ai custom-jobs create --region "$REGION" --display-name "$NAME" --config "$SPEC")
[ -z "$PROJECT" ] || CMD+=(--project "$PROJECT")

if [ "$DRY" = 1 ]; then
    [ ${#UPLOAD[@]} -eq 0 ] || { printf '%q ' "${UPLOAD[@]}"; echo; }
    printf '%q ' "${CMD[@]}"; echo
    echo "# job spec (--config):"; cat "$SPEC"
    rm -f "$SPEC"
    exit 0
fi
[ ${#UPLOAD[@]} -eq 0 ] || "${UPLOAD[@]}"
"${CMD[@]}"
echo "Results: $BUCKET/runs/$NAME   TensorBoard: tensorboard --logdir $BUCKET/runs"
