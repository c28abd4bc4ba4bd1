# Sourced by the launchers: a local --data file or folder (your own labelled data) goes to
# the bucket beside the run, and the command reads it from there; a gs:// URL or 'hub' is
# passed on as it is.
#   stage_data LAUNCHER DEST_URL READ_PREFIX ARGS...
# sets STAGED_ARGS (ARGS, --data rewritten to READ_PREFIX/<name>) and UPLOAD (the copy
# command to run before the VM or job is created; empty when there is nothing to copy).
stage_data() {
    local me=$1 dest=$2 prefix=$3 value base
    shift 3
    STAGED_ARGS=()
    UPLOAD=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --data) [ $# -ge 2 ] || { echo "$me: --data needs a value" >&2; return 2; }; value=$2; shift 2;;
            --data=*) value=${1#--data=}; shift;;
            *) STAGED_ARGS+=("$1"); shift; continue;;
        esac
        case "$value" in
            *://*|hub|/gcs/*) STAGED_ARGS+=(--data "$value"); continue;;  # already where the job reads
        esac
        [ -e "$value" ] || { echo "$me: --data $value: no such file or folder here; pass your labelled file or" \
                                  "folder, a gs:// URL, or hub" >&2; return 2; }
        case "$value" in
            *.csv|*.tsv|*.jsonl|*.ndjson|*.json) ;;
            *) ls "$value"/train.csv "$value"/train.tsv "$value"/train.jsonl "$value"/train.ndjson \
                  "$value"/train.json 2>/dev/null | grep -q . || {
                   echo "$me: --data $value: not your own labelled data (a CSV / TSV / JSONL file, or a folder with" \
                        "train / validation / test files); for the Financial PhraseBank the job reads it from the" \
                        "Hub: drop --data (its default is hub)" >&2; return 2; };;
        esac
        base=$(basename "${value%/}")
        UPLOAD=(gcloud storage cp --recursive "${value%/}" "$dest/")
        STAGED_ARGS+=(--data "$prefix/$base")
    done
}
