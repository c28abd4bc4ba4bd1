#!/usr/bin/env bash
# Run a script as N cooperating processes on this machine.
#
#   launch/local_cluster.sh 2 train/full_finetune.py --run-dir runs/mw --epochs 1 ...
#   launch/local_cluster.sh --tuner 2 tune/lr_search.py --run-dir runs/search ...
#
# Default: an N-worker MultiWorkerMirroredStrategy job; each worker gets a TF_CONFIG on a
# free port (worker 0 is the chief and alone writes --run-dir). --tuner: a keras-tuner
# chief (the oracle, on a free port) plus N tuner workers that run the trials
# (KERASTUNER_TUNER_ID / _ORACLE_IP / _ORACLE_PORT). Output is prefixed with [worker i]
# or [chief]; Ctrl-C, closing the terminal (HUP), TERM, or one process failing stops them
# all. Exit status: 0, the first failing process's status, or 128 + the signal's number.
# Environment: PYTHON (default python), LOCAL_CLUSTER_HOST (default 127.0.0.1: loopback only).
# Needs bash 4 or newer (no `wait -n -p`, which is bash 5.1's).
set -uo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-2}"; }
[ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ] && usage 0
MODE=mirrored
[ "${1:-}" = "--tuner" ] && { MODE=tuner; shift; }
[ $# -ge 2 ] || usage
N=$1; shift
SCRIPT=$1; shift
case "$N" in ''|*[!0-9]*) echo "local_cluster.sh: N must be a number of workers, got '$N'" >&2; exit 2;; esac
[ -f "$SCRIPT" ] || { echo "local_cluster.sh: no script $SCRIPT" >&2; exit 2; }
PYTHON=${PYTHON:-python}
HOST=${LOCAL_CLUSTER_HOST:-127.0.0.1}

PORTS=$("$PYTHON" - "$N" "$HOST" <<'PY'
import socket, sys
socks = []
for _ in range(max(int(sys.argv[1]), 1)):
    s = socket.socket(); s.bind((sys.argv[2], 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)
WORKERS=$(for p in $PORTS; do printf '"%s:%s",' "$HOST" "$p"; done)
WORKERS="[${WORKERS%,}]"

PIDS=()
stop_all() {  # TERM every process, KILL what is left after 5 s: under MultiWorkerMirroredStrategy
    # TensorFlow's coordination service takes SIGTERM as a preemption notice and trains on
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for _ in $(seq 10); do
        alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && return
        sleep 0.5
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
}
on_signal() { echo "local_cluster.sh: $1: stopping all workers" >&2; trap - HUP INT TERM; stop_all; exit "$2"; }
trap 'on_signal HUP 129' HUP
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM

start() {  # start NAME [ENV=VALUE...]: the script under `env`, output prefixed with [NAME]
    local name=$1; shift
    env "$@" "$PYTHON" -u "$SCRIPT" "${ARGS[@]}" > >(sed -u "s/^/[$name] /") 2>&1 &
    PIDS+=($!)
}
ARGS=("$@")
if [ "$MODE" = tuner ]; then
    ORACLE_PORT=${PORTS%% *}
    start chief KERASTUNER_TUNER_ID=chief KERASTUNER_ORACLE_IP="$HOST" KERASTUNER_ORACLE_PORT="$ORACLE_PORT"
    for ((i = 0; i < N; i++)); do
        start "worker $i" KERASTUNER_TUNER_ID="tuner$i" KERASTUNER_ORACLE_IP="$HOST" KERASTUNER_ORACLE_PORT="$ORACLE_PORT"
    done
    echo "local_cluster.sh: keras-tuner oracle on $HOST:$ORACLE_PORT, $N tuner workers (pids ${PIDS[*]})" >&2
    N=$((N + 1))
else
    for ((i = 0; i < N; i++)); do
        start "worker $i" TF_CONFIG="{\"cluster\": {\"worker\": $WORKERS}, \"task\": {\"type\": \"worker\", \"index\": $i}}"
    done
    echo "local_cluster.sh: $N workers on $WORKERS (pids ${PIDS[*]})" >&2
fi

# Poll every process (process substitutions are not jobs, and `wait -n -p` is bash 5.1+);
# `wait PID` collects each one's status once it is gone.
status=0
declare -A DONE=()
while [ "${#DONE[@]}" -lt "${#PIDS[@]}" ]; do
    for pid in "${PIDS[@]}"; do
        [ -n "${DONE[$pid]:-}" ] && continue
        kill -0 "$pid" 2>/dev/null && continue
        wait "$pid"
        code=$?
        DONE[$pid]=$code
        if [ "$code" -ne 0 ] && [ "$status" -eq 0 ]; then
            status=$code
            echo "local_cluster.sh: worker pid $pid exited $code; stopping the others" >&2
            stop_all
        fi
    done
    sleep 0.5 & wait $!  # (a sleep the traps can interrupt)
done
exit "$status"
