# Sourced by launch/gcp_vm.sh and launch/vertex_job.sh: the flags they share, every value
# checked against the provider's naming rules before anything is created, and the job's
# command kept as a list of arguments from the user's shell to the machine that runs it.
#
# The launcher sets ME, OPTIONS (its part of --help) and its own defaults, adds its own
# flags to VALUE_FLAGS (--flag -> the variable it sets) and SWITCH_FLAGS, then calls
# parse_flags "$@". The script and its arguments are left in JOB_ARGV exactly as given: they
# are never joined into a string, split, globbed or evaluated, and travel to the job as a
# JSON array (json_array) or a YAML list, which the job reads back into an argv.
#
# A bad value is one line on stderr naming the flag, what the provider accepts and an
# example, and exit 2: the providers' rules are cited in docs/cloud.md#sources.

if [ "${BASH_VERSINFO[0]:-0}" -lt 4 ]; then  # associative arrays below (macOS ships bash 3.2)
    echo "${ME:-launch}: needs bash 4 or newer (this is $BASH_VERSION); install one, e.g. brew install bash" >&2
    exit 2
fi

NAME="finsent-$(date +%Y%m%d-%H%M%S)"
PROJECT=${GOOGLE_CLOUD_PROJECT:-}
GPUS=1
MACHINE=""
SPOT=0
BUCKET=${FINSENT_BUCKET:-}
REPO=$(git -C "$HERE/.." remote get-url origin 2>/dev/null || echo "")
REF=$(git -C "$HERE/.." rev-parse HEAD 2>/dev/null || echo "")
DRY=0
JOB_ARGV=()
. "$HERE/argv.sh"   # json_array: the job's command as it travels

declare -A VALUE_FLAGS=([--name]=NAME [--project]=PROJECT [--gpus]=GPUS [--gpu-type]=GPU_TYPE
                        [--machine-type]=MACHINE [--bucket]=BUCKET [--repo]=REPO [--ref]=REF)
declare -A SWITCH_FLAGS=([--spot]=SPOT [--dry-run]=DRY)
# where a value came from when no flag gave it, so that its error line says so
declare -A FROM_ENV=([--project]=GOOGLE_CLOUD_PROJECT [--bucket]=FINSENT_BUCKET)
declare -A GIVEN=()
declare -A OPTIONAL=([--project]=1 [--machine-type]=1 [--ref]=1)   # may be empty: derived, or left out

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; echo "$OPTIONS"; exit "${1:-2}"; }

shown() {  # a value as the user could type it back, on one line: n1-standard-8, 'job;echo X', $'a\nb'
    if [[ $1 =~ ^[A-Za-z0-9_./:@%+=,-]+$ ]]; then printf '%s' "$1"
    elif [[ $1 == *[[:cntrl:]]* ]]; then printf '%q' "$1"
    else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}

fail() { echo "$ME: $*" >&2; exit 2; }

parse_flags() {  # parse_flags "$@": the launcher's flags, up to the script; sets JOB_ARGV
    local flag
    while [ $# -gt 0 ]; do
        case "$1" in
            -h|--help) usage 0;;
            --) shift; break;;
            -*) ;;
            *) break;;
        esac
        flag=${1%%=*}
        if [ -n "${SWITCH_FLAGS[$flag]:-}" ] && [ "$flag" = "$1" ]; then
            printf -v "${SWITCH_FLAGS[$flag]}" 1
            shift
        elif [ -n "${VALUE_FLAGS[$flag]:-}" ]; then
            if [ "$flag" != "$1" ]; then  # --flag=value
                printf -v "${VALUE_FLAGS[$flag]}" '%s' "${1#*=}"
                shift
            else
                [ $# -ge 2 ] || fail "$flag needs a value; see $ME --help"
                printf -v "${VALUE_FLAGS[$flag]}" '%s' "$2"
                shift 2
            fi
            GIVEN[$flag]=1
        else
            echo "$ME: unknown option $(shown "$1")" >&2
            usage 2
        fi
    done
    JOB_ARGV=("$@")
    [ $# -ge 1 ] || { echo "$ME: give the script to run, e.g. train/full_finetune.py" >&2; usage 2; }
    [[ $1 != -* && $1 != /* && -f "$HERE/../$1" ]] || fail "no script $(shown "$1") in this project; give one such as train/full_finetune.py"
    command -v python3 >/dev/null \
        || fail "python3 is not on the PATH; it writes the job's arguments as a list (install python3)"
}

# What each provider accepts, as an extended regular expression the whole value must match,
# why, and what to use instead. Names and IDs: Compute Engine "Naming resources" (RFC 1035),
# Resource Manager's project IDs, Vertex AI's CustomJob.displayName, Artifact Registry and
# Docker image references; numbers and durations: what the launchers can count with.
rule() {
    # (too short a project ID or bucket name, under 6 or 3 characters, is left to the preflight,
    # which asks the cloud: it cannot become code, and stand-in names such as gs://b stay usable)
    local rfc1035='[a-z]([-a-z0-9]{0,61}[a-z0-9])?' project='[a-z]([-a-z0-9]{0,28}[a-z0-9])?'
    case "$1" in
        instance) RE="^$rfc1035\$"
            WHY="a Compute Engine instance name is 1-63 lowercase letters, digits or '-', starting with a letter and not ending with '-'"
            USE="e.g. --name finsent-run-1";;
        job) RE='^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$'
            WHY="the job's name is its Vertex display name and its run folder (runs/NAME in the bucket): up to 128 letters, digits, '.', '_' or '-', starting with a letter or digit"
            USE="e.g. --name finsent-run-1";;
        project) RE="^([a-z][-a-z0-9.]*[a-z0-9]:)?$project\$"
            WHY="a project ID is 6-30 lowercase letters, digits or '-', starting with a letter and not ending with '-'"
            USE="the ID that gcloud projects list shows";;
        region) RE='^[a-z]+-[a-z]+[0-9]+$'
            WHY="a region is named like us-central1"; USE="one that gcloud compute regions list shows";;
        zone) RE='^[a-z]+-[a-z]+[0-9]+-[a-z]$'
            WHY="a zone is named like us-central1-a"; USE="one that gcloud compute zones list shows";;
        resource) RE="^$rfc1035\$"  # GPU and machine types, image families: Compute Engine resource names
            WHY="a Compute Engine resource name is 1-63 lowercase letters, digits or '-', starting with a letter"
            USE="one that gcloud compute ${2:-machine-types} list shows";;
        accelerator) RE='^[A-Z][A-Z0-9_]{0,62}$'
            WHY="Vertex names GPU types in capitals, like NVIDIA_TESLA_T4 or NVIDIA_L4"
            USE="e.g. --gpu-type NVIDIA_L4";;
        registry) RE="^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]+)?/$project/[a-z]([-a-z0-9]{0,61}[a-z0-9])?\$"
            WHY="an Artifact Registry repository is HOST/PROJECT/REPOSITORY, the repository lowercase letters, digits or '-'"
            USE="e.g. --registry us-central1-docker.pkg.dev/my-project/finsent";;
        image) RE='^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?$'
            WHY="a container image is HOST/PATH[:TAG] in lowercase (a Docker reference)"
            USE="e.g. --image us-central1-docker.pkg.dev/my-project/finsent/finsent:COMMIT";;
        on-failure) RE='^(delete|stop|keep)$'; WHY="takes delete, stop or keep"; USE="e.g. --on-failure stop";;
        duration) RE='^([0-9]+[dhms])+$'; WHY="a duration is a number of days, hours, minutes or seconds"
            USE="e.g. 24h, 90m or 1d12h";;
        count) RE='^[1-9][0-9]{0,2}$'; WHY="a whole number from 1 to 999"; USE="e.g. $3 4";;
        count0) RE='^[0-9]{1,3}$'; WHY="a whole number from 0 to 999"; USE="e.g. $3 1";;
        disk) RE='^[1-9][0-9]{0,5}(GB|TB)?$'; WHY="a disk size is a number of GB"; USE="e.g. --disk 100GB";;
        email) RE='^[a-z0-9][-a-z0-9._]*@[a-z0-9][-a-z0-9.]*[a-z0-9]$'
            WHY="a service account is an email address"; USE="e.g. --service-account finsent@my-project.iam.gserviceaccount.com";;
        ref) RE='^[A-Za-z0-9][A-Za-z0-9._/~^-]{0,254}$'
            WHY="a commit or branch name of letters, digits and . _ / ~ ^ -, not starting with '-'"; USE="a pushed commit, e.g. --ref \$(git rev-parse HEAD)";;
    esac
}

check() {  # check FLAG KIND [LIST]: the flag's current value against rule KIND
    local var=${VALUE_FLAGS[$1]} value
    value=${!var}
    [ -n "$value" ] || [ -z "${OPTIONAL[$1]:-}" ] || return 0
    rule "$2" "${3:-}" "$1"
    [[ $value =~ $RE ]] || refuse "$1" "$value" "$WHY" "$USE"
}

refuse() {  # refuse FLAG VALUE WHY USE: the one line, and exit 2
    local from=""
    [ -n "${GIVEN[$1]:-}" ] || [ -z "${FROM_ENV[$1]:-}" ] || from=" (from ${FROM_ENV[$1]})"
    fail "$1 $(shown "$2")$from: $3; use $4"
}

check_bucket() {  # Cloud Storage "Bucket names": gs://NAME, with the rules a regex cannot say alone
    local name=${BUCKET#gs://} parts part max=63
    name=${name%/}
    local why="a bucket is gs://NAME, NAME 3-63 lowercase letters, digits, '-', '_' or '.' (up to 222 with dots, 63 between them), starting and ending with a letter or digit, not an IP address, not starting with goog nor containing google"
    [[ $name == *.* ]] && max=222
    IFS=. read -ra parts <<< "$name"
    [[ $BUCKET == gs://* && $name =~ ^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$ && ${#name} -le $max ]] \
        && [[ ! $name =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ && $name != goog* && $name != *google* && $name != *..* ]] \
        || refuse --bucket "$BUCKET" "$why" "e.g. --bucket gs://my-finsent-runs"
    for part in "${parts[@]}"; do
        [ ${#part} -le 63 ] || refuse --bucket "$BUCKET" "$why" "at most 63 characters between dots"
    done
    BUCKET="gs://$name"
}

check_common() {  # check_common NAME_KIND GPU_KIND: the shared values, each against its rule
    check --name "$1"
    check --project project
    check --gpus count
    check --gpu-type "$2" accelerator-types
    check --machine-type resource machine-types
    check --ref ref
    if [ -n "$BUCKET" ]; then check_bucket
    elif [ "$DRY" = 1 ]; then BUCKET="gs://YOUR-BUCKET"  # a dry run shows where it would go
    else fail "--bucket gs://... (or FINSENT_BUCKET) is required"; fi
    [ -n "$REPO" ] || fail "--repo URL is required (no git remote 'origin' here)"
    . "$HERE/repo_check.sh"
    check_repo "$ME" "$REPO" "$REF" || exit 2
}

has_flag() {  # has_flag FLAG ARGS...: does the job's command give FLAG (as FLAG V or FLAG=V)?
    local flag=$1 a
    shift
    for a in "$@"; do
        [[ $a == "$flag" || $a == "$flag="* ]] && return 0
    done
    return 1
}
