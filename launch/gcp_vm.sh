#!/usr/bin/env bash
# Submit a training or tuning command to a Google Cloud GPU VM (Deep Learning VM image).
#
#   launch/gcp_vm.sh --bucket gs://my-bucket --gpus 4 --spot train/full_finetune.py --epochs 3
#   launch/gcp_vm.sh --dry-run --gpus 2 train/full_finetune.py      # print what would run
#
# The VM runs launch/gce_startup.sh at every boot: it installs this project (git clone
# of --repo at --ref), runs the command with --run-dir runs/<name>, syncs runs/<name> to
# <bucket>/runs/<name>, resumes from there after a preemption/restart, and deletes the
# VM when the run is DONE, and also when anything fails (clone, install, no GPU seen by
# TensorFlow, training, sync): the reason is in <bucket>/runs/<name>/EXIT. --on-failure
# stop keeps the disk of a failed VM, --on-failure keep leaves it running (debugging only:
# it bills until you delete it). A --spot VM stops on preemption; restart it with
# `gcloud compute instances start NAME --zone ZONE` and the run resumes.
#
# Nothing bills past its job: the VM stops itself after --max-run-duration (24h) whatever
# happens, and if its delete/stop call fails (its service account lacks the right) it shuts
# itself down. gcloud has one --instance-termination-action for spot preemption and the run
# duration: it is STOP (a preempted spot VM keeps its disk and resumes). --service-account
# runs the VM as that account (roles it needs: README.md#cloud). launch/preflight.sh
# checks the image, bucket, GPU type and quota before the VM is created.
# The image: Deep Learning VM "Base GPU" on Ubuntu 22.04 (CUDA 12.9, driver 580), documented
# with Python 3.12; launch/install.sh uses a 3.11-3.13 on the PATH, else gets 3.12 with uv
# (Ubuntu 22.04's own /usr/bin/python3 is 3.10: docs/cloud.md).
# Project, zone and bucket come from flags or GOOGLE_CLOUD_PROJECT, CLOUDSDK_COMPUTE_ZONE,
# FINSENT_BUCKET; credentials are gcloud's own, never in files.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ME=gcp_vm.sh
. "$HERE/flags.sh"   # --name --project --gpus --gpu-type --machine-type --spot --bucket --repo --ref --dry-run

ZONE=${CLOUDSDK_COMPUTE_ZONE:-us-central1-a}
GPU_TYPE=nvidia-tesla-t4
IMAGE_FAMILY=common-cu129-ubuntu-2204-nvidia-580   # Deep Learning VM Base GPU (TF comes from requirements.txt)
IMAGE_PROJECT=deeplearning-platform-release
DISK=100GB
ON_FAILURE=delete
MAX_RUN=24h
SERVICE_ACCOUNT=""
VALUE_FLAGS+=([--zone]=ZONE [--image-family]=IMAGE_FAMILY [--image-project]=IMAGE_PROJECT [--disk]=DISK
              [--on-failure]=ON_FAILURE [--max-run-duration]=MAX_RUN [--service-account]=SERVICE_ACCOUNT)
FROM_ENV+=([--zone]=CLOUDSDK_COMPUTE_ZONE)
OPTIONAL+=([--service-account]=1)
OPTIONS="Options: --name NAME  --project P  --zone Z  --gpus N ($GPUS)  --gpu-type T ($GPU_TYPE)
         --machine-type M (default n1-standard-\$((8*GPUS)))  --spot  --bucket gs://B
         --image-family F ($IMAGE_FAMILY)  --image-project P  --repo URL  --ref REF  --disk SIZE
         --on-failure delete|stop|keep ($ON_FAILURE)  --max-run-duration D ($MAX_RUN; e.g. 90m, 2d)
         --service-account EMAIL  --dry-run"
parse_flags "$@"
check --zone zone
check --image-family resource images
check --image-project project
check --disk disk
check --service-account email
check --on-failure on-failure
check --max-run-duration duration
check_common instance resource
MACHINE=${MACHINE:-n1-standard-$((8 * GPUS))}   # GPUS is a checked number: nothing to evaluate
# your own --data goes to the bucket beside the run; the VM reads it there (tf.io.gfile)
. "$HERE/stage_data.sh"
stage_data "$ME" "$BUCKET/runs/$NAME/data" "$BUCKET/runs/$NAME/data" "${JOB_ARGV[@]}" || exit 2
# the command: the user's script and flags, with --gpus added unless given. It reaches the VM
# as a JSON array in the metadata key finsent-argv, from a file: --metadata values are split
# at commas (or at the delimiter ^##^ names), which any argument may hold.
has_flag --gpus "${STAGED_ARGS[@]}" || STAGED_ARGS+=(--gpus "$GPUS")
ARGV_FILE=$(mktemp "${TMPDIR:-/tmp}/finsent-argv-XXXXXX")
trap 'rm -f "$ARGV_FILE"' EXIT
json_array "${STAGED_ARGS[@]}" > "$ARGV_FILE"
[[ "$HERE$ARGV_FILE" != *'##'* ]] || fail "the paths $HERE and $ARGV_FILE must not hold '##' (gcloud's list delimiter here)"

CMD=(gcloud compute instances create "$NAME" --zone "$ZONE" --machine-type "$MACHINE"
     --accelerator "type=$GPU_TYPE,count=$GPUS" --maintenance-policy TERMINATE
     --image-family "$IMAGE_FAMILY" --image-project "$IMAGE_PROJECT" --boot-disk-size "$DISK"
     --scopes cloud-platform
     --metadata-from-file "^##^startup-script=$HERE/gce_startup.sh##finsent-argv=$ARGV_FILE"
     --metadata "^##^install-nvidia-driver=True##finsent-repo=$REPO##finsent-ref=$REF##finsent-bucket=$BUCKET##finsent-run=$NAME##finsent-on-failure=$ON_FAILURE")
# ^##^ sets gcloud's list delimiter to ## (see `gcloud topic escaping`): a path or URL may hold
# commas; none of these values can hold '##' (each was checked above)
# one termination action for both: STOP keeps a preempted spot VM's disk, so a restart resumes
CMD+=(--max-run-duration "$MAX_RUN" --instance-termination-action STOP)
[ "$SPOT" = 0 ] || CMD+=(--provisioning-model SPOT)
[ -z "$SERVICE_ACCOUNT" ] || CMD+=(--service-account "$SERVICE_ACCOUNT")
[ -z "$PROJECT" ] || CMD+=(--project "$PROJECT")
PREFLIGHT=(bash "$HERE/preflight.sh" --zone "$ZONE" --gpu-type "$GPU_TYPE" --gpus "$GPUS" --machine-type "$MACHINE"
           --bucket "$BUCKET"
           --image-family "$IMAGE_FAMILY" --image-project "$IMAGE_PROJECT")
[ "$SPOT" = 0 ] || PREFLIGHT+=(--spot)
[ -z "$PROJECT" ] || PREFLIGHT+=(--project "$PROJECT")

if [ "$DRY" = 1 ]; then
    printf '%q ' "${PREFLIGHT[@]}"; echo
    [ ${#UPLOAD[@]} -eq 0 ] || { printf '%q ' "${UPLOAD[@]}"; echo; }
    printf '%q ' "${CMD[@]}"; echo
    echo "# finsent-argv (the job's command, one JSON array element per argument): $(cat "$ARGV_FILE")"
    echo "# startup script: $HERE/gce_startup.sh; results: $BUCKET/runs/$NAME"
    exit 0
fi
"${PREFLIGHT[@]}" || exit 2
[ ${#UPLOAD[@]} -eq 0 ] || "${UPLOAD[@]}"
"${CMD[@]}"
echo "VM $NAME created. Follow: gcloud compute ssh $NAME --zone $ZONE -- sudo journalctl -u google-startup-scripts -f"
echo "Results: $BUCKET/runs/$NAME   TensorBoard: tensorboard --logdir $BUCKET/runs"
