#!/usr/bin/env bash
# The one install path: a virtual environment with this project's pinned stack, on any
# Linux machine whatever its python3 is. The GCE startup script, the SkyPilot setup, the
# Vertex container build and the README all run it.
#
#   bash launch/install.sh                      # .venv/ in this checkout
#   bash launch/install.sh --venv ~/finsent-venv --gpu
#
# Keras 3.15 and KerasHub 0.32 declare Requires-Python >= 3.11 (TensorFlow 2.21 has wheels for
# 3.10-3.13), so a python3 of 3.10 (Ubuntu 22.04) or of 3.14 cannot install requirements.txt.
# This script:
#   1. finds python3.13, python3.12, python3.11, or a python3 that is one of them, the newest
#      that has the venv module; where none has it (Ubuntu ships it apart, as python3.X-venv)
#      it installs that with apt-get;
#   2. else gets Python 3.12 with uv (`uv python install 3.12`); without uv on PATH, uv is
#      pip-installed into a throw-away venv (never into the system Python: PEP 668);
#   3. creates the venv (an existing one of 3.11-3.13 is reused), installs requirements.txt,
#      plus tensorflow[and-cuda] (CUDA/cuDNN as pip packages) where nvidia-smi lists a GPU
#      or with --gpu (image builds run without one), runs pip check, imports the stack;
#   4. on a GPU machine (nvidia-smi there, or an NVIDIA device on the PCI bus even when its
#      driver is broken), checks that TensorFlow lists the GPUs.
# Each failure ends in one line saying what failed and what to do. FINSENT_EXPECT_GPU=1
# makes step 4 run on a machine without a GPU (tests).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV="$ROOT/.venv"
GPU=0
UV_VERSION=0.13.9   # pinned, as everything else; only used where no Python 3.11-3.13 is found
UV_PYTHON=3.12      # what uv brings: the Python of Ubuntu 24.04, Colab and the Vertex image

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
          echo "Options: --venv DIR ($VENV)  --gpu (install the CUDA packages without a GPU here)"; exit "${1:-2}"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --venv) [ $# -ge 2 ] || usage; VENV=$(realpath -m "$2"); shift 2;;
        --gpu) GPU=1; shift;;
        -h|--help) usage 0;;
        *) echo "install.sh: unknown option $1" >&2; usage;;
    esac
done
log() { echo "install.sh: $*"; }
die() { echo "install.sh: $*" >&2; exit "${CODE:-1}"; }
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/finsent-install-XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
trap 'die "stopped at line $LINENO of $0 (the command above failed)"' ERR

version_of() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true; }
SUPPORTED="3.13 3.12 3.11"  # the Pythons the stack installs on, newest first (the order candidates are tried in)
supported() { case " $SUPPORTED " in *" $(version_of "$1") "*) return 0;; esac; return 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi; }
has_venv() { "$1" -c 'import venv, ensurepip' >/dev/null 2>&1; }
ensure_venv() {  # PYTHON: make sure it can create a venv (Debian/Ubuntu ship that module apart)
    has_venv "$1" && return 0
    command -v apt-get >/dev/null || return 1
    local pkg="python$(version_of "$1")-venv"
    log "$1 has no venv module: installing $pkg with apt-get"
    # at a VM's first boot unattended-upgrades may hold apt's lock: wait for it rather than fail;
    # a stale third-party list must not stop the install (the package may be known already)
    as_root apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null 2>&1 || true
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "$pkg" \
        || { log "apt-get install $pkg failed (not root, or no such package): trying without it"; return 1; }
    has_venv "$1"
}
gpu_machine() {  # nvidia-smi, or an NVIDIA display/3D controller on the PCI bus (a driver that failed)
    command -v nvidia-smi >/dev/null && return 0
    local dev
    for dev in /sys/bus/pci/devices/*; do
        [ "$(cat "$dev/vendor" 2>/dev/null)" = 0x10de ] && case "$(cat "$dev/class" 2>/dev/null)" in 0x03*) return 0;; esac
    done
    return 1
}
run_logged() {  # LOG CMD...: show the output, keep it for the one-line error
    local logfile=$1; shift
    "$@" 2>&1 | tee "$logfile"
}
last_error() { grep -E '^(ERROR|error)' "$1" | tail -1 || true; }

# 1. a Python the stack installs on
PYTHON=""
if [ -x "$VENV/bin/python" ] && supported "$VENV/bin/python"; then
    log "reusing $VENV (Python $(version_of "$VENV/bin/python"))"
else
    [ ! -e "$VENV" ] || die "$VENV exists but is not a Python 3.11-3.13 venv: remove it, or pass another --venv"
    CANDIDATES=()  # the supported ones, newest first by version (python3 may be newer than a python3.X here)
    for version in $SUPPORTED; do
        for name in "python$version" python3; do
            candidate=$(command -v "$name") || continue
            [ "$(version_of "$candidate")" = "$version" ] || continue
            CANDIDATES+=("$candidate")
        done
    done
    for candidate in "${CANDIDATES[@]}"; do  # the newest that has venv; else the first apt can give it
        if has_venv "$candidate"; then PYTHON=$candidate; break; fi
    done
    if [ -z "$PYTHON" ]; then
        for candidate in "${CANDIDATES[@]}"; do
            if ensure_venv "$candidate"; then PYTHON=$candidate; break; fi
        done
    fi
    if [ -n "$PYTHON" ]; then
        log "creating $VENV with $PYTHON (Python $(version_of "$PYTHON"))"
        "$PYTHON" -m venv "$VENV" || die "$PYTHON -m venv $VENV failed (see above)"
    else
        # 2. no Python 3.11-3.13 here: uv brings one
        UV=$(command -v uv || true)
        if [ -z "$UV" ]; then
            for name in python3 python3.10 python3.14; do
                candidate=$(command -v "$name") || continue
                ensure_venv "$candidate" 2>/dev/null || continue
                log "getting uv $UV_VERSION (into a throw-away venv) to install Python $UV_PYTHON"
                "$candidate" -m venv "$SCRATCH/uv" && "$SCRATCH/uv/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION" \
                    && UV="$SCRATCH/uv/bin/uv" && break
            done
        fi
        found=$(for n in python3 python3.13 python3.12 python3.11 python3.10 python3.14; do
                    p=$(command -v $n) || continue
                    if supported "$p"; then echo "$n is $(version_of "$p") without its venv module"; else echo "$n is $(version_of "$p")"; fi
                done | paste -sd, - | sed 's/,/, /g')
        [ -n "$UV" ] || die "no usable Python 3.11-3.13 here (${found:-no python3}), and no uv or pip to get one:" \
            "install uv (https://docs.astral.sh/uv/getting-started/installation/) or python$UV_PYTHON, then run this again"
        log "no usable Python 3.11-3.13 here (${found:-no python3}): installing Python $UV_PYTHON with uv"
        "$UV" python install "$UV_PYTHON" || die "uv python install $UV_PYTHON failed (see above; it downloads Python from" \
            "github.com/astral-sh/python-build-standalone): where that is blocked, install python$UV_PYTHON (or 3.11, 3.13)" \
            "with your package manager, then run this again"
        "$UV" venv --python "$UV_PYTHON" --seed "$VENV" || die "uv venv --python $UV_PYTHON $VENV failed (see above)"
    fi
fi
PY="$VENV/bin/python"
supported "$PY" || die "$PY is not Python 3.11-3.13 ($(version_of "$PY")): remove $VENV and run this again"

# 3. the stack (exact pins), the CUDA libraries where there is a GPU, then pip's own consistency check
if gpu_machine; then GPU=1; ON_GPU=1; else ON_GPU=0; fi
PIN=$(grep -E '^tensorflow==' "$ROOT/requirements.txt")
EXTRA=()
[ "$GPU" = 0 ] || EXTRA=("tensorflow[and-cuda]==${PIN#tensorflow==}")
log "installing requirements.txt ${EXTRA[*]:+and ${EXTRA[*]} }into $VENV"
run_logged "$SCRATCH/pip.log" "$PY" -m pip install -r "$ROOT/requirements.txt" "${EXTRA[@]}" \
    || die "pip could not install requirements.txt${EXTRA[*]:+ and ${EXTRA[*]}}: $(last_error "$SCRATCH/pip.log")" \
           "(full output above)"
run_logged "$SCRATCH/check.log" "$PY" -m pip check \
    || die "pip check found a conflict: $(tail -1 "$SCRATCH/check.log") (do not add packages to this venv)"
(cd "$SCRATCH" && KERAS_BACKEND=tensorflow PYTHONDONTWRITEBYTECODE=1 \
    "$PY" -c "import tensorflow, keras, keras_hub, keras_tuner, tensorflow_text") 2>"$SCRATCH/import.log" \
    || die "the stack does not import: $(tail -1 "$SCRATCH/import.log")"

# 4. a GPU machine whose TensorFlow sees no GPU would train on its CPU for days
if [ "$ON_GPU" = 1 ] || [ -n "${FINSENT_EXPECT_GPU:-}" ]; then
    "$PY" -c "import sys, tensorflow as tf; g = tf.config.list_physical_devices('GPU'); print('GPUs:', g); sys.exit(not g)" \
        || CODE=3 die "TensorFlow sees no GPU on this GPU machine (NVIDIA driver? nvidia-smi should list the GPUs;" \
                      "the CUDA libraries come from tensorflow[and-cuda])"
fi
log "done. Activate it with: . $VENV/bin/activate"
