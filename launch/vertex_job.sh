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
ME=vertex_job.sh
. "$HERE/flags.sh"   # --name --project --gpus --gpu-type --machine-type --spot --bucket --repo --ref --dry-run

REGION=${CLOUDSDK_AI_REGION:-us-central1}
GPU_TYPE=NVIDIA_TESLA_T4
WORKERS=0
IMAGE=""
REGISTRY=""
BUILD=0
VALUE_FLAGS+=([--region]=REGION [--workers]=WORKERS [--image]=IMAGE [--registry]=REGISTRY)
SWITCH_FLAGS+=([--build]=BUILD)
FROM_ENV+=([--region]=CLOUDSDK_AI_REGION)
OPTIONAL+=([--image]=1 [--registry]=1)
OPTIONS="Options: --name N  --project P  --region R  --gpus N ($GPUS)  --gpu-type T ($GPU_TYPE)  --machine-type M
         --workers N ($WORKERS)  --spot  --bucket gs://B  --build  --registry HOST/PROJECT/REPOSITORY
         --image URI (instead of REGISTRY/finsent:COMMIT)  --repo URL  --ref REF  --dry-run"
parse_flags "$@"
check --region region
check --workers count0
check --registry registry
check --image image
check_common job accelerator
COMMIT=$(git -C "$HERE/.." rev-parse --verify --quiet "$REF^{commit}") \
    || fail "commit $REF is not in this checkout (git fetch it; the image is built from it)"
if [ -z "$REGISTRY" ]; then
    [ -n "$PROJECT" ] || [ "$DRY" = 1 ] || fail "--registry HOST/PROJECT/REPOSITORY or --project is required (the image's home)"
    REGISTRY="$REGION-docker.pkg.dev/${PROJECT:-YOUR-PROJECT}/finsent"
fi
IMAGE=${IMAGE:-$REGISTRY/finsent:$COMMIT}
MACHINE=${MACHINE:-n1-standard-$((8 * GPUS))}   # GPUS is a checked number: nothing to evaluate
# your own --data goes to the bucket beside the run; the job reads it through Vertex's /gcs/ mount
. "$HERE/stage_data.sh"
stage_data "$ME" "$BUCKET/runs/$NAME/data" "/gcs/${BUCKET#gs://}/runs/$NAME/data" "${JOB_ARGV[@]}" || exit 2
has_flag --gpus "${STAGED_ARGS[@]}" || STAGED_ARGS+=(--gpus "$GPUS")
RUN_DIR="/gcs/${BUCKET#gs://}/runs/$NAME"
# the container runs `python SCRIPT ARGS...` in /app with the image's venv first on the PATH;
# Vertex starts it with this argv as it is (command and args are lists: no shell in between)
ARGS=("${STAGED_ARGS[@]}" --run-dir "$RUN_DIR" --tb-staging /tmp/finsent-tb)

SPEC=$(mktemp "${TMPDIR:-/tmp}/vertex-$NAME-XXXX.yaml")
SOURCE=$(mktemp -d "${TMPDIR:-/tmp}/finsent-source-XXXXXX")   # --build: the commit's files, Cloud Build's source
trap 'rm -rf "$SPEC" "$SOURCE"' EXIT
# The job spec (a CustomJobSpec), written by a serializer rather than pasted into a text:
# each string is plain only when YAML can read it back as that same string (letters, digits
# and ._/:@- from a letter on, not ending in ':', no YAML keyword); any other, and every list element, is a
# JSON string (JSON's quoting is YAML's), with what YAML may not hold raw written as \uXXXX.
python3 - "$SPEC" "$MACHINE" "$GPU_TYPE" "$GPUS" "$WORKERS" "$SPOT" "$IMAGE" "${ARGS[@]}" <<'PY' || exit 2
import json, re, sys
out, machine, gpu_type, gpus, workers, spot, image, *args = sys.argv[1:]
for i, a in enumerate(args):  # surrogateescape: bytes that were not UTF-8 in the shell
    if any(0xD800 <= ord(c) <= 0xDFFF for c in a):
        sys.exit(f"vertex_job.sh: argument {i + 1} of the job ({a.encode('utf-8', 'surrogateescape')!r}) is not "
                 f"UTF-8 text, which a job spec must be; pass it as UTF-8")
PLAIN = re.compile(r"[A-Za-z]([A-Za-z0-9_./:@-]*[A-Za-z0-9_./@-])?")  # not ending in ":" (a key)
KEYWORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}
NOT_PRINTABLE = re.compile("[^\t\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]")

def quoted(s):
    return NOT_PRINTABLE.sub(lambda m: "\\u%04x" % ord(m.group()), json.dumps(s, ensure_ascii=False))

def scalar(v):
    if isinstance(v, int):
        return str(v)
    return v if PLAIN.fullmatch(v) and v.lower() not in KEYWORDS else quoted(v)

def emit(mapping, indent=""):
    lines = []
    for key, v in mapping.items():
        if isinstance(v, dict):
            lines += [f"{indent}{key}:"] + emit(v, indent + "  ")
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            lines.append(f"{indent}{key}:")
            for item in v:
                first, *rest = emit(item, indent + "  ")
                lines += [f"{indent}- {first.lstrip()}"] + rest
        elif isinstance(v, list):
            lines.append(f"{indent}{key}: [{', '.join(quoted(x) for x in v)}]")
        else:
            lines.append(f"{indent}{key}: {scalar(v)}")
    return lines

def pool(replicas):
    return {"machineSpec": {"machineType": machine, "acceleratorType": gpu_type, "acceleratorCount": int(gpus)},
            "replicaCount": replicas, "diskSpec": {"bootDiskSizeGb": 100},
            "containerSpec": {"imageUri": image, "command": ["python"], "args": args}}

spec = {"workerPoolSpecs": [pool(1)] + ([pool(int(workers))] if int(workers) else [])}
if spot == "1":
    spec["scheduling"] = {"strategy": "SPOT"}
with open(out, "w", encoding="utf-8") as f:
    f.write("\n".join(emit(spec)) + "\n")
PY
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
