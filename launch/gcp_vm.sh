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
# The image: Deep Learning VM "Base GPU" on Ubuntu 22.04 (CUDA 12.9, driver 580); its
# python3 is 3.12, and launch/install.sh uses its /usr/bin/python3.10.
# Project, zone and bucket come from flags or GOOGLE_CLOUD_PROJECT, CLOUDSDK_COMPUTE_ZONE,
# FINSENT_BUCKET; credentials are gcloud's own, never in files.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)

NAME="finsent-$(date +%Y%m%d-%H%M%S)"
PROJECT=${GOOGLE_CLOUD_PROJECT:-}
ZONE=${CLOUDSDK_COMPUTE_ZONE:-us-central1-a}
GPUS=1
GPU_TYPE=nvidia-tesla-t4
MACHINE=""
SPOT=0
BUCKET=${FINSENT_BUCKET:-}
IMAGE_FAMILY=common-cu129-ubuntu-2204-nvidia-580   # Deep Learning VM Base GPU (TF comes from requirements.txt)
IMAGE_PROJECT=deeplearning-platform-release
REPO=$(git -C "$HERE/.." remote get-url origin 2>/dev/null || echo "")
REF=$(git -C "$HERE/.." rev-parse HEAD 2>/dev/null || echo "")
DISK=100GB
ON_FAILURE=delete
MAX_RUN=24h
SERVICE_ACCOUNT=""
DRY=0

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; cat <<U
Options: --name NAME  --project P  --zone Z  --gpus N ($GPUS)  --gpu-type T ($GPU_TYPE)
         --machine-type M (default n1-standard-\$((8*GPUS)))  --spot  --bucket gs://B
         --image-family F ($IMAGE_FAMILY)  --image-project P  --repo URL  --ref REF  --disk SIZE
         --on-failure delete|stop|keep ($ON_FAILURE)  --max-run-duration D ($MAX_RUN; e.g. 90m, 2d)
         --service-account EMAIL  --dry-run
U
exit "${1:-2}"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --name) NAME=$2; shift 2;;  --project) PROJECT=$2; shift 2;;  --zone) ZONE=$2; shift 2;;
        --gpus) GPUS=$2; shift 2;;  --gpu-type) GPU_TYPE=$2; shift 2;;  --machine-type) MACHINE=$2; shift 2;;
        --spot) SPOT=1; shift;;  --bucket) BUCKET=$2; shift 2;;  --image-family) IMAGE_FAMILY=$2; shift 2;;
        --image-project) IMAGE_PROJECT=$2; shift 2;;  --repo) REPO=$2; shift 2;;  --ref) REF=$2; shift 2;;
        --disk) DISK=$2; shift 2;;  --on-failure) ON_FAILURE=$2; shift 2;;  --dry-run) DRY=1; shift;;
        --max-run-duration) MAX_RUN=$2; shift 2;;  --service-account) SERVICE_ACCOUNT=$2; shift 2;;
        -h|--help) usage 0;;
        --) shift; break;;  -*) echo "gcp_vm.sh: unknown option $1" >&2; usage;;  *) break;;
    esac
done
[ $# -ge 1 ] || { echo "gcp_vm.sh: give the script to run, e.g. train/full_finetune.py" >&2; usage; }
[ -f "$HERE/../$1" ] || { echo "gcp_vm.sh: no script $1 in this project" >&2; exit 2; }
[ -n "$BUCKET" ] || { [ "$DRY" = 1 ] && BUCKET="gs://YOUR-BUCKET"; } || { echo "gcp_vm.sh: --bucket gs://... (or FINSENT_BUCKET) is required" >&2; exit 2; }
case "$ON_FAILURE" in delete|stop|keep) ;; *) echo "gcp_vm.sh: --on-failure takes delete, stop or keep" >&2; exit 2;; esac
[[ "$MAX_RUN" =~ ^([0-9]+[dhms])+$ ]] || { echo "gcp_vm.sh: --max-run-duration $MAX_RUN: give a duration such as 24h, 90m or 1d12h" >&2; exit 2; }
[ -n "$REPO" ] || { echo "gcp_vm.sh: --repo URL is required (no git remote 'origin' here)" >&2; exit 2; }
. "$HERE/repo_check.sh"
check_repo gcp_vm.sh "$REPO" "$REF" || exit 2
MACHINE=${MACHINE:-n1-standard-$((8 * GPUS))}
# your own --data goes to the bucket beside the run; the VM reads it there (tf.io.gfile)
. "$HERE/stage_data.sh"
stage_data gcp_vm.sh "$BUCKET/runs/$NAME/data" "$BUCKET/runs/$NAME/data" "$@" || exit 2
set -- "${STAGED_ARGS[@]}"
# the command: the user's script and flags, with --gpus added unless given
COMMAND="$*"
case " $COMMAND " in *" --gpus "*) ;; *) COMMAND="$COMMAND --gpus $GPUS";; esac

CMD=(gcloud compute instances create "$NAME" --zone "$ZONE" --machine-type "$MACHINE"
     --accelerator "type=$GPU_TYPE,count=$GPUS" --maintenance-policy TERMINATE
     --image-family "$IMAGE_FAMILY" --image-project "$IMAGE_PROJECT" --boot-disk-size "$DISK"
     --scopes cloud-platform
     --metadata-from-file "startup-script=$HERE/gce_startup.sh"
     --metadata "^##^install-nvidia-driver=True##finsent-repo=$REPO##finsent-ref=$REF##finsent-bucket=$BUCKET##finsent-run=$NAME##finsent-command=$COMMAND##finsent-on-failure=$ON_FAILURE")
# ^##^ sets gcloud's list delimiter to ## (see `gcloud topic escaping`): the command may hold commas
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
    echo "# startup script: $HERE/gce_startup.sh; results: $BUCKET/runs/$NAME"
    exit 0
fi
"${PREFLIGHT[@]}" || exit 2
[ ${#UPLOAD[@]} -eq 0 ] || "${UPLOAD[@]}"
"${CMD[@]}"
echo "VM $NAME created. Follow: gcloud compute ssh $NAME --zone $ZONE -- sudo journalctl -u google-startup-scripts -f"
echo "Results: $BUCKET/runs/$NAME   TensorBoard: tensorboard --logdir $BUCKET/runs"
