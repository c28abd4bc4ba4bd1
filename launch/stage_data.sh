# Sourced by the launchers: a local --data file or folder (your own labelled data) goes to
# the bucket beside the run, and the command reads it from there; a gs:// URL or 'hub' is
# passed on as it is.
#   stage_data LAUNCHER DEST_URL READ_PREFIX ARGS...
# sets STAGED_ARGS (ARGS, --data rewritten to READ_PREFIX/<name>, each argument still one
# element) and UPLOAD (the copy command to run before the VM or job is created; empty when
# there is nothing to copy).
stage_data() {
    local me=$1 dest=$2 prefix=$3 value base own
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
        [ -e "$value" ] || { echo "$me: --data $(shown "$value"): no such file or folder here; pass your labelled file or" \
                                  "folder, a gs:// URL, or hub" >&2; return 2; }
        # own data or not: the training scripts' own test (common/sources.py, standard library
        # only), so the formats they read are listed in one place, common/texts.py
        own=0
        PYTHONDONTWRITEBYTECODE=1 python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); from common import sources
sys.exit(0 if sources.is_own(sys.argv[2]) else 3)' "$HERE/.." "$value" || own=$?
        [ "$own" != 3 ] || {
            echo "$me: --data $(shown "$value"): not your own labelled data (a CSV / TSV / JSONL file, or a folder with" \
                 "train / validation / test files); for the Financial PhraseBank the job reads it from the" \
                 "Hub: drop --data (its default is hub)" >&2; return 2; }
        [ "$own" = 0 ] || { echo "$me: python3 could not run common/sources.py (exit $own, above)" >&2; return 2; }
        base=$(basename "${value%/}")
        UPLOAD=(gcloud storage cp --recursive "${value%/}" "$dest/")
        STAGED_ARGS+=(--data "$prefix/$base")
    done
}
