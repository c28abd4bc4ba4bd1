#!/usr/bin/env bash
# GCE startup script (runs as root at every boot of the VM that launch/gcp_vm.sh creates).
#
# Installs the project, restores runs/<run> from the bucket, runs the command with
# --run-dir runs/<run>, syncs runs/<run> to the bucket every FINSENT_SYNC_EVERY seconds and
# at the end, then marks the run DONE in the bucket and deletes the VM. After a spot
# preemption + restart (or any reboot) the same steps resume the same run from its backup.
#
# Settings come from instance metadata (finsent-repo, finsent-ref, finsent-bucket,
# finsent-run, finsent-command), or from FINSENT_* environment variables of the same
# names, which take precedence (tests use them, with a folder standing in for the bucket).
# FINSENT_SYNC (default: gcloud storage rsync --recursive) and FINSENT_DELETE_VM are the
# only cloud commands; both can be pointed elsewhere.
set -euo pipefail

md() {  # metadata attribute $1, unless FINSENT_<NAME> is set
    local var="FINSENT_$(echo "$1" | tr 'a-z-' 'A-Z_')"
    if [ -n "${!var:-}" ]; then echo "${!var}"; return; fi
    curl -fsS -H "Metadata-Flavor: Google" \
        "http://metadata.google.internal/computeMetadata/v1/instance/attributes/finsent-$1" 2>/dev/null || true
}
REPO=$(md repo); REF=$(md ref); BUCKET=$(md bucket); RUN=$(md run); COMMAND=$(md command)
for v in REPO BUCKET RUN COMMAND; do
    [ -n "${!v}" ] || { echo "gce_startup: finsent-$(echo $v | tr A-Z a-z) is not set (metadata or FINSENT_$v)" >&2; exit 2; }
done
WORK=${FINSENT_WORKDIR:-/opt/finsent}
SYNC=${FINSENT_SYNC:-gcloud storage rsync --recursive}
SYNC_EVERY=${FINSENT_SYNC_EVERY:-300}
DELETE_VM=${FINSENT_DELETE_VM:-gcloud compute instances delete "$(hostname)" --zone "$(curl -fsS -H 'Metadata-Flavor: Google' http://metadata.google.internal/computeMetadata/v1/instance/zone | sed 's|.*/||')" --quiet}
PYTHON=${FINSENT_PYTHON:-python3}
REMOTE="$BUCKET/runs/$RUN"
mkdir -p "$WORK"
log() { echo "gce_startup $(date -u +%FT%TZ): $*"; }

# 1. the project, at the requested ref
if [ ! -d "$WORK/repo/.git" ]; then
    log "cloning $REPO"
    git clone --quiet "$REPO" "$WORK/repo"
fi
[ -z "$REF" ] || git -C "$WORK/repo" checkout --quiet "$REF"
cd "$WORK/repo"
LOCAL="runs/$RUN"

# 2. its environment (once per disk)
VENV=${FINSENT_VENV:-$WORK/venv}
if [ ! -x "$VENV/bin/python" ]; then "$PYTHON" -m venv "$VENV"; fi
if [ ! -f "$VENV/.finsent-installed" ] || [ "${FINSENT_VENV:-}" ]; then
    log "installing requirements"
    "$VENV/bin/python" -m pip install --quiet -r requirements.txt
    if command -v nvidia-smi >/dev/null; then  # CUDA libraries for TF 2.15 come as pip packages
        "$VENV/bin/python" -m pip install --quiet "tensorflow[and-cuda]==2.15.1"
    fi
    touch "$VENV/.finsent-installed"
fi

# 3. finished already? (a restart after the last sync)
if $SYNC "$REMOTE/" "$WORK/remote-check/" >/dev/null 2>&1 && [ -f "$WORK/remote-check/DONE" ]; then
    log "run $RUN is DONE in $REMOTE; deleting this VM"
    $DELETE_VM
    exit 0
fi

# 4. resume: bring back what the bucket holds of this run (backup/ included)
mkdir -p "$LOCAL"
if $SYNC "$REMOTE/" "$LOCAL/" 2>/dev/null; then log "restored $LOCAL from $REMOTE"; fi

# 5. run, syncing while it trains
sync_up() { $SYNC "$LOCAL/" "$REMOTE/" >/dev/null 2>&1 || log "sync to $REMOTE failed (will retry)"; }
log "running: $COMMAND --run-dir $LOCAL"
# shellcheck disable=SC2086  # COMMAND is a command line
"$VENV/bin/python" $COMMAND --run-dir "$LOCAL" &
TRAIN=$!
( while sleep "$SYNC_EVERY"; do sync_up; done ) &
SYNCER=$!
trap 'kill $TRAIN $SYNCER 2>/dev/null' TERM INT
set +e
wait $TRAIN
code=$?
set -e
kill $SYNCER 2>/dev/null || true
sync_up

# 6. done: mark, sync, delete the VM (a failed run keeps its VM for inspection)
if [ "$code" -ne 0 ]; then
    log "command failed with exit $code; VM kept; runs/$RUN synced to $REMOTE"
    exit "$code"
fi
date -u +%FT%TZ > "$LOCAL/DONE"
sync_up
log "run $RUN finished and synced to $REMOTE; deleting this VM"
$DELETE_VM
