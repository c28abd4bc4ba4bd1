#!/usr/bin/env bash
# GCE startup script (runs as root at every boot of the VM that launch/gcp_vm.sh creates).
#
# Installs the project, checks that TensorFlow sees the GPUs, restores runs/<run> from the
# bucket, runs the command with --run-dir runs/<run>, syncs runs/<run> to the bucket every
# FINSENT_SYNC_EVERY seconds and at the end, then marks the run DONE in the bucket and
# deletes the VM. After a spot preemption + restart (or any reboot) the same steps resume
# the same run from its backup.
#
# No GPU VM is left running by accident: EVERY exit (clone, install, GPU check, training
# or sync failing, or success) goes through one handler that syncs what exists, writes
# runs/<run>/EXIT (status, failed step, time) to the bucket, and then deletes the VM;
# finsent-on-failure=stop stops it instead (keeps the disk), =keep leaves it running for
# debugging (only when asked).
#
# Settings come from instance metadata (finsent-repo, finsent-ref, finsent-bucket,
# finsent-run, finsent-argv, finsent-on-failure), or from FINSENT_* environment
# variables of the same names, which take precedence (tests use them, with a folder
# standing in for the bucket). finsent-argv is the command as a JSON array, one element per
# argument, read back into a bash array: no argument is split, globbed or run as code.
# FINSENT_SYNC (default: gcloud storage rsync --recursive), FINSENT_DELETE_VM and
# FINSENT_STOP_VM are the only cloud commands; all can be pointed elsewhere.
# A delete or stop that fails (say the VM's service account lacks the right) falls back to
# FINSENT_SHUTDOWN (default: shutdown -h now): a VM that shuts itself down is stopped, and a
# stopped VM bills its disk only, not its GPUs.
set -uo pipefail

md() {  # metadata attribute $1, unless FINSENT_<NAME> is set
    local var="FINSENT_$(echo "$1" | tr 'a-z-' 'A-Z_')"
    if [ -n "${!var:-}" ]; then echo "${!var}"; return; fi
    curl -fsS -H "Metadata-Flavor: Google" \
        "http://metadata.google.internal/computeMetadata/v1/instance/attributes/finsent-$1" 2>/dev/null || true
}
REPO=$(md repo); REF=$(md ref); BUCKET=$(md bucket); RUN=$(md run); ARGV_JSON=$(md argv)
ON_FAILURE=$(md on-failure); ON_FAILURE=${ON_FAILURE:-delete}
WORK=${FINSENT_WORKDIR:-/opt/finsent}
SYNC=${FINSENT_SYNC:-gcloud storage rsync --recursive}
SYNC_EVERY=${FINSENT_SYNC_EVERY:-300}
ZONE_OF_VM() { curl -fsS -H 'Metadata-Flavor: Google' http://metadata.google.internal/computeMetadata/v1/instance/zone | sed 's|.*/||'; }
DELETE_VM=${FINSENT_DELETE_VM:-gcloud compute instances delete "$(hostname)" --zone "$(ZONE_OF_VM)" --quiet}
STOP_VM=${FINSENT_STOP_VM:-gcloud compute instances stop "$(hostname)" --zone "$(ZONE_OF_VM)" --quiet}
SHUTDOWN=${FINSENT_SHUTDOWN:-shutdown -h now}
REMOTE="$BUCKET/runs/$RUN"
log() { echo "gce_startup $(date -u +%FT%TZ): $*"; }

# The one way out. STEP names what was being done; a failure anywhere exits through here.
STEP="reading settings"
LOCAL=""
REPORT=1        # 0: a restart found the run DONE; its report stands
TERMINATED=0    # 1: SIGTERM, i.e. the VM is shutting down (spot preemption, stop): sync, then let it
finish() {
    local code=$?
    trap - EXIT
    [ -n "${SYNCER:-}" ] && kill "$SYNCER" 2>/dev/null
    local status="failed" synced=1
    [ "$code" -eq 0 ] && status="ok"
    [ "$TERMINATED" = 1 ] && status="terminated (preemption or shutdown; the next boot resumes)"
    log "exit $code ($status) while $STEP"
    if [ "$REPORT" = 1 ] && [ -n "$BUCKET" ] && [ -n "$RUN" ]; then  # what exists, and why we stopped
        mkdir -p "$WORK/exit-report"
        printf 'status: %s\nexit_code: %s\nstep: %s\ntime: %s\nhost: %s\n' "$status" "$code" "$STEP" \
            "$(date -u +%FT%TZ)" "$(hostname)" > "$WORK/exit-report/EXIT"
        if [ -n "$LOCAL" ] && [ -d "$WORK/repo/$LOCAL" ]; then
            cp "$WORK/exit-report/EXIT" "$WORK/repo/$LOCAL/EXIT"
            (cd "$WORK/repo" && sync_up) || { synced=0; log "final sync to $REMOTE failed"; }
        else
            $SYNC "$WORK/exit-report/" "$REMOTE/" >/dev/null 2>&1 || { synced=0; log "could not write EXIT to $REMOTE"; }
        fi
    fi
    if [ "$TERMINATED" = 1 ]; then
        log "the VM is shutting down; not deleting it (a restart resumes the run)"
    elif [ "$synced" = 0 ] && [ "$ON_FAILURE" != keep ]; then
        log "stopping (not deleting) this VM: the run folder on its disk could not be synced"; end_vm stop
    elif [ "$code" -ne 0 ] && [ "$ON_FAILURE" = keep ]; then
        log "finsent-on-failure=keep: leaving this VM running (it bills until you delete it)"
    elif [ "$code" -ne 0 ] && [ "$ON_FAILURE" = stop ]; then
        log "stopping this VM (finsent-on-failure=stop)"; end_vm stop
    else
        log "deleting this VM"; end_vm delete
    fi
    exit "$code"
}
end_vm() {  # delete|stop: the call, checked; if it fails, the VM shuts itself down (= stopped)
    local how=$1 cmd=$DELETE_VM status
    [ "$how" = stop ] && cmd=$STOP_VM
    $cmd && return 0
    status=$?
    log "could not $how this VM (exit $status; its service account needs compute.instances.$how, see README):" \
        "shutting it down instead (a stopped VM bills its disk only)"
    $SHUTDOWN
}
# The run folder goes up as it is, except backup/: Keras rewrites it while training, so a
# plain rsync could upload a pointer ("checkpoint") to files not yet (or no longer) there.
# Instead: hard-link the files of the checkpoint the pointer names (a snapshot that Keras'
# next save cannot change), upload them, then the pointer, then prune older checkpoints.
# A kill at any moment leaves the bucket's pointer naming a checkpoint that is all there.
upload_backup() {
    local dir="$LOCAL/backup/chief" snap="$WORK/backup-snapshot" ckpt="" try
    if [ ! -f "$dir/checkpoint" ]; then  # training finished (Keras removed it) or not started
        [ -d "$LOCAL/backup" ] && return 0
        mkdir -p "$snap-empty" && $SYNC --delete-unmatched-destination-objects "$snap-empty/" "$REMOTE/backup/" 2>/dev/null
        return 0
    fi
    for try in 1 2 3; do
        rm -rf "$snap"; mkdir -p "$snap/files" "$snap/pointer"
        cp "$dir/checkpoint" "$snap/pointer/checkpoint" 2>/dev/null || continue
        ckpt=$(sed -n 's/^model_checkpoint_path: "\(.*\)"$/\1/p' "$snap/pointer/checkpoint")
        [ -n "$ckpt" ] && ln "$dir/$ckpt".* "$snap/files/" 2>/dev/null && [ -f "$snap/files/$ckpt.index" ] && break
        ckpt=""  # Keras replaced it meanwhile: read the pointer again
    done
    [ -n "$ckpt" ] || return 1
    $SYNC "$snap/files/" "$REMOTE/backup/chief/" >/dev/null 2>&1 || return 1
    $SYNC "$snap/pointer/" "$REMOTE/backup/chief/" >/dev/null 2>&1 || return 1
    ln "$snap/pointer/checkpoint" "$snap/files/checkpoint"
    $SYNC --delete-unmatched-destination-objects "$snap/files/" "$REMOTE/backup/chief/" >/dev/null 2>&1 || true
}
sync_up() {
    { $SYNC --exclude '^backup/' "$LOCAL/" "$REMOTE/" >/dev/null 2>&1 && upload_backup; } \
        || { log "sync to $REMOTE failed (will retry)"; return 1; }
}
trap finish EXIT
trap 'TERMINATED=1; exit 143' TERM
trap 'exit 130' INT
mkdir -p "$WORK"
for v in REPO BUCKET RUN ARGV_JSON; do
    key=$(echo "${v%_JSON}" | tr A-Z a-z)
    [ -n "${!v}" ] || { echo "gce_startup: finsent-$key is not set (metadata or FINSENT_${v%_JSON})" >&2; exit 2; }
done
case "$ON_FAILURE" in delete|stop|keep) ;; *) echo "gce_startup: finsent-on-failure must be delete, stop or keep" >&2; exit 2;; esac
[[ $REPO != -* && $REF != -* ]] \
    || { echo "gce_startup: finsent-repo and finsent-ref must not start with '-' (git would read an option)" >&2; exit 2; }
# the command: finsent-argv back into an array, one element per argument, with the image's
# python3 (nothing is installed yet). launch/argv.sh's argv_from_json, restated: this script
# runs alone, before the clone, and must not depend on what it clones.
STEP="reading finsent-argv"
mapfile -t -d '' ARGV < <(python3 -c 'import json, sys
try:
    argv = json.loads(sys.argv[1])
except ValueError:
    argv = None
if not (isinstance(argv, list) and argv and all(isinstance(a, str) and "\0" not in a for a in argv)):
    sys.exit(f"gce_startup: finsent-argv is not a JSON array of strings: {sys.argv[1][:80]!r}; "
             "give e.g. [\"train/full_finetune.py\", \"--epochs\", \"3\"]")
sys.stdout.buffer.write(b"".join(a.encode("utf-8", "surrogateescape") + b"\0" for a in argv))' "$ARGV_JSON")
wait $! || exit 2   # the decoder's status (mapfile's is not it)
COMMAND=$(printf '%q ' "${ARGV[@]}")   # for the log and the EXIT report only

# 1. the project, at the requested ref
STEP="cloning $REPO"
if [ ! -d "$WORK/repo/.git" ]; then
    log "cloning $REPO"
    git clone --quiet -- "$REPO" "$WORK/repo" || exit 1
fi
STEP="checking out $REF"
[ -z "$REF" ] || git -C "$WORK/repo" checkout --quiet "$REF" || exit 1
cd "$WORK/repo" || exit 1
LOCAL="runs/$RUN"

# 2. its environment: the one install path (a Python 3.11-3.13 venv, the CUDA packages, and
# the check that TensorFlow sees the GPUs: a GPU VM training on its CPU would bill for days).
# Every boot runs it; on a disk that has the venv it only confirms it.
STEP="installing requirements (launch/install.sh)"
VENV=${FINSENT_VENV:-$WORK/venv}
bash launch/install.sh --venv "$VENV"
code=$?
[ "$code" -ne 3 ] || STEP="checking that TensorFlow sees the GPUs"
[ "$code" -eq 0 ] || exit "$code"

# 3. finished already? (a restart after the last sync)
STEP="checking $REMOTE"
if $SYNC "$REMOTE/" "$WORK/remote-check/" >/dev/null 2>&1 && [ -f "$WORK/remote-check/DONE" ]; then
    log "run $RUN is DONE in $REMOTE"
    REPORT=0  # nothing to sync up; its EXIT stands
    exit 0
fi

# 4. resume. A disk that kept the run folder (a spot VM stopped and started again) is newer
# than the bucket, which only ever receives copies of it: keep it. A new disk gets what the
# bucket holds (backup/ included: its pointer names a checkpoint uploaded whole, see 5).
STEP="restoring $LOCAL from $REMOTE"
mkdir -p "$LOCAL" || exit 1
rm -f "$LOCAL/EXIT"  # the previous boot's
if [ -n "$(ls -A "$LOCAL")" ]; then
    log "keeping $LOCAL from this disk (newer than $REMOTE)"
elif $SYNC "$REMOTE/" "$LOCAL/" 2>/dev/null; then
    log "restored $LOCAL from $REMOTE"
fi
rm -f "$LOCAL/EXIT"

# 5. run, syncing while it trains
STEP="training: ${COMMAND% }"
# TensorBoard writes on this disk and copies into the run folder at every backup (as on the
# other launchers): the bucket then holds closed, flushed event files up to the last backup
log "running: $COMMAND--run-dir $LOCAL --tb-staging $WORK/tb-staging"
"$VENV/bin/python" "${ARGV[@]}" --run-dir "$LOCAL" --tb-staging "$WORK/tb-staging" &
TRAIN=$!
( while sleep "$SYNC_EVERY"; do sync_up; done ) &
SYNCER=$!
trap 'TERMINATED=1; kill $TRAIN 2>/dev/null; exit 143' TERM
trap 'kill $TRAIN 2>/dev/null; exit 130' INT
wait $TRAIN
code=$?
[ "$code" -eq 0 ] || { log "command failed with exit $code"; exit "$code"; }

# 6. done: mark, sync (finish() does), delete the VM
STEP="finishing"
date -u +%FT%TZ > "$LOCAL/DONE"
log "run $RUN finished; syncing to $REMOTE"
exit 0
