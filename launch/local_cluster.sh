#!/usr/bin/env bash
# Run any train/tune script as an N-worker MultiWorkerMirroredStrategy job on this machine.
#
#   launch/local_cluster.sh 2 train/full_finetune.py --run-dir runs/mw --epochs 1 ...
#
# Picks N free ports on 127.0.0.1, gives each worker its TF_CONFIG (worker 0 is the
# chief and alone writes --run-dir), prefixes each worker's output with [worker i], and
# stops every worker on Ctrl-C or when one fails. Exit status: the first failure's.
# Environment: PYTHON (default python), LOCAL_CLUSTER_HOST (default 127.0.0.1).
set -uo pipefail

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
[ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ] && usage 0
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
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind((sys.argv[2], 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)
WORKERS=$(for p in $PORTS; do printf '"%s:%s",' "$HOST" "$p"; done)
WORKERS="[${WORKERS%,}]"

PIDS=()
stop_all() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done; }
trap 'echo "local_cluster.sh: stopping all workers" >&2; stop_all; exit 130' INT TERM

for ((i = 0; i < N; i++)); do
    TF_CONFIG="{\"cluster\": {\"worker\": $WORKERS}, \"task\": {\"type\": \"worker\", \"index\": $i}}" \
        "$PYTHON" -u "$SCRIPT" "$@" > >(sed -u "s/^/[worker $i] /") 2>&1 &
    PIDS+=($!)
done
echo "local_cluster.sh: $N workers on $WORKERS (pids ${PIDS[*]})" >&2

status=0
remaining=$N
while [ "$remaining" -gt 0 ]; do
    wait -n -p done_pid  # any worker (process substitutions are not jobs)
    code=$?
    [ "$code" -eq 127 ] && break  # no job left
    remaining=$((remaining - 1))
    if [ "$code" -ne 0 ] && [ "$status" -eq 0 ]; then
        status=$code
        echo "local_cluster.sh: worker pid $done_pid exited $code; stopping the others" >&2
        stop_all
    fi
done
exit "$status"
