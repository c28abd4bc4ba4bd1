#!/usr/bin/env bash
# Before anything is created (and billed), ask the cloud what would make the job fail:
#
#   launch/preflight.sh --bucket gs://my-bucket --zone us-central1-a --gpu-type nvidia-tesla-t4 --gpus 4 --spot \
#       --image-family common-cu129-ubuntu-2204-nvidia-580 --image-project deeplearning-platform-release
#   launch/preflight.sh --bucket gs://my-bucket --image us-central1-docker.pkg.dev/P/finsent/finsent:COMMIT
#
# Each check runs only when its flags are given: the image family resolves; the bucket takes
# a write (a small object under runs/, then removed); the GPU type (and machine type) exists
# in the zone; the region's GPU (and vCPU) quota, spot or on-demand, and the project's
# GPUS_ALL_REGIONS cover the request; the container image tag, or the repository a build
# pushes to, exists.
# launch/gcp_vm.sh and launch/vertex_job.sh run it before they create anything. A failure
# is one line on stderr (exit 2): what is wrong, gcloud's own error line, and the fix.
set -euo pipefail
PROJECT=${GOOGLE_CLOUD_PROJECT:-}
ZONE="" GPU_TYPE="" GPUS=0 SPOT=0 BUCKET="" FAMILY="" IMAGE_PROJECT="" IMAGE="" MACHINE="" REPOSITORY=""

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; cat <<U
Options: --project P  --zone Z  --gpu-type T  --gpus N  --machine-type M  --spot  --bucket gs://B
         --image-family F  --image-project P  --image URI (a container image, tag included)
         --repository HOST/PROJECT/REPOSITORY (an Artifact Registry repository to push to)
U
exit "${1:-2}"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --project) PROJECT=$2; shift 2;;  --zone) ZONE=$2; shift 2;;  --gpu-type) GPU_TYPE=$2; shift 2;;
        --gpus) GPUS=$2; shift 2;;  --spot) SPOT=1; shift;;  --bucket) BUCKET=$2; shift 2;;
        --image-family) FAMILY=$2; shift 2;;  --image-project) IMAGE_PROJECT=$2; shift 2;;  --image) IMAGE=$2; shift 2;;
        --machine-type) MACHINE=$2; shift 2;;  --repository) REPOSITORY=$2; shift 2;;
        -h|--help) usage 0;;  *) echo "preflight.sh: unknown option $1" >&2; usage;;
    esac
done
P=(); [ -z "$PROJECT" ] || P=(--project "$PROJECT")
ERR=$(mktemp "${TMPDIR:-/tmp}/preflight-XXXXXX")
trap 'rm -f "$ERR" "$ERR.probe"' EXIT
fail() { echo "preflight.sh: $*" >&2; exit 2; }
said() {  # gcloud's own error as one line: its ERROR: line, and the next when that ends in ':'
    local line  # ("Could not fetch resource:" / " - The resource '...' was not found")
    line=$(awk 'NF && !e && /^ERROR:/ { e = $0; if (e !~ /:$/) exit; next }
                e && NF { sub(/^[ \t]*-[ \t]*/, ""); e = e " " $0; exit }
                END { print e }' "$ERR")
    [ -n "$line" ] || line=$(grep -v '^[[:space:]]*$' "$ERR" | tail -1 || true)
    echo "$line"
}
ok() { echo "preflight: ok: $*"; }
read_quotas() {  # WHAT, then regions describe R | project-info describe: "metric,limit,usage" lines
    local what=$1; shift
    gcloud compute "$@" "${P[@]}" --flatten quotas --format 'csv[no-heading](quotas.metric,quotas.limit,quotas.usage)' \
        2>"$ERR" || fail "cannot read the quotas of $what (gcloud: $(said)); check --project and your access"
}
spot_or_not() {  # a Spot VM takes preemptible quota where there is some, else the standard one
    if [ "$SPOT" = 1 ]; then echo "PREEMPTIBLE_$1 $1"; else echo "$1"; fi; }
check_quota() {  # QUOTAS METRICS NEED WHERE UNIT HINT: the listed metric with most room must cover NEED
    local quotas=$1 need=$3 where=$4 unit=$5 hint=$6 m line free best="" best_line="" best_m=""
    for m in $2; do
        line=$(echo "$quotas" | grep "^$m," || true)
        [ -n "$line" ] || continue
        free=$(echo "$line" | awk -F, '{ printf "%d", $2 - $3 }')
        if [ -z "$best" ] || [ "$free" -gt "$best" ]; then best=$free; best_line=$line; best_m=$m; fi
    done
    if [ -z "$best" ]; then  # newer GPUs' quotas are per GPU family, not listed here: unknown is not zero
        echo "preflight: note: $where lists no ${2// / or } quota; not checked (see the console's Quotas page)"
        return 0
    fi
    [ "$best" -ge "$need" ] || fail "quota $best_m in $where: $(echo "$best_line" | cut -d, -f2) $unit," \
        "$(echo "$best_line" | cut -d, -f3) in use, $need asked; request more (console: IAM & Admin > Quotas," \
        "metric $best_m), or $hint"
    ok "quota $best_m in $where: $best free, $need asked"
}

if [ -n "$FAMILY" ]; then
    gcloud compute images describe-from-family "$FAMILY" --project "$IMAGE_PROJECT" --format 'value(name)' \
        >"$ERR.probe" 2>"$ERR" \
        || fail "image family $FAMILY in project $IMAGE_PROJECT does not resolve (gcloud: $(said)); list the" \
                "current ones with: gcloud compute images list --project $IMAGE_PROJECT --no-standard-images" \
                "--format 'value(family)' | sort -u, and pass --image-family"
    ok "image family $FAMILY -> $(cat "$ERR.probe")"
fi
if [ -n "$BUCKET" ]; then
    echo "written by launch/preflight.sh; safe to delete" > "$ERR.probe"
    probe="${BUCKET%/}/runs/.preflight-$(date +%s)-$$"
    gcloud storage cp "$ERR.probe" "$probe" "${P[@]}" >/dev/null 2>"$ERR" \
        || fail "cannot write to $BUCKET (gcloud: $(said)); create it (gcloud storage buckets create $BUCKET)" \
                "or give your account roles/storage.objectAdmin on it"
    gcloud storage rm "$probe" "${P[@]}" >/dev/null 2>&1 || true
    ok "bucket $BUCKET is writable"
fi
if [ -n "$GPU_TYPE" ] && [ -n "$ZONE" ]; then
    gcloud compute accelerator-types describe "$GPU_TYPE" --zone "$ZONE" "${P[@]}" --format 'value(name)' \
        >/dev/null 2>"$ERR" \
        || fail "GPU type $GPU_TYPE is not offered in zone $ZONE (gcloud: $(said)); see where it is with:" \
                "gcloud compute accelerator-types list --filter name=$GPU_TYPE, and pass --zone or --gpu-type"
    ok "GPU type $GPU_TYPE in $ZONE"
    # quotas: the region's for this GPU (nvidia-tesla-t4 -> NVIDIA_T4_GPUS) and, with
    # --machine-type, for its vCPUs (n1 -> CPUS, a2 -> A2_CPUS); the project's GPUS_ALL_REGIONS
    region=${ZONE%-*}
    gpu=$(echo "$GPU_TYPE" | sed 's/^nvidia-//; s/^tesla-//; s/^h100-80gb$/h100/' | tr 'a-z-' 'A-Z_')
    quotas=$(read_quotas "region $region" regions describe "$region")
    check_quota "$quotas" "$(spot_or_not "NVIDIA_${gpu}_GPUS")" "$GPUS" "region $region" GPUs \
        "pass fewer --gpus, another --zone or --gpu-type"
    if [ -n "$MACHINE" ]; then
        gcloud compute machine-types describe "$MACHINE" --zone "$ZONE" "${P[@]}" --format 'value(guestCpus)' \
            >"$ERR.probe" 2>"$ERR" \
            || fail "machine type $MACHINE is not offered in zone $ZONE (gcloud: $(said)); pass --machine-type"
        family=$(echo "${MACHINE%%-*}" | tr a-z A-Z)
        [ "$family" = N1 ] && cpus=CPUS || cpus="${family}_CPUS"
        check_quota "$quotas" "$(spot_or_not "$cpus")" "$(cat "$ERR.probe")" "region $region" vCPUs \
            "pass a smaller --machine-type or fewer --gpus"
    fi
    check_quota "$(read_quotas "the project" project-info describe)" GPUS_ALL_REGIONS "$GPUS" "project" GPUs \
        "GPUS_ALL_REGIONS is 0 on a new project"
fi
if [ -n "$REPOSITORY" ]; then  # HOST/PROJECT/REPOSITORY, HOST = LOCATION-docker.pkg.dev
    location=${REPOSITORY%%-docker.pkg.dev/*}; rest=${REPOSITORY#*/}
    gcloud artifacts repositories describe "${rest#*/}" --location "$location" --project "${rest%%/*}" \
        --format 'value(name)' >/dev/null 2>"$ERR" \
        || fail "Artifact Registry repository $REPOSITORY is not there (gcloud: $(said)); create it: gcloud artifacts" \
                "repositories create ${rest#*/} --repository-format docker --location $location --project ${rest%%/*}"
    ok "Artifact Registry repository $REPOSITORY"
fi
if [ -n "$IMAGE" ]; then
    gcloud artifacts docker images describe "$IMAGE" "${P[@]}" --format 'value(image_summary.digest)' \
        >/dev/null 2>"$ERR" \
        || fail "container image $IMAGE is not in the registry (gcloud: $(said)); build and push it with" \
                "launch/vertex_job.sh --build (or pass --image)"
    ok "container image $IMAGE"
fi
