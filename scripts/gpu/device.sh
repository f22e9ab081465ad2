#!/usr/bin/env bash
# Runs on the lent GPU machine, in the copy of this repository that each `run` call brings there.
# The payload that scripts/gpu/build-payload.sh made here arrives one piece per call (carried as
# gpu-payload/part-NN with gpu-payload/SHA256SUMS); the machine keeps /tmp between calls while it
# stays warm. docs/gpu-validation.md lists the calls in order.
#
# Usage: scripts/gpu/device.sh STEP...      steps run in the order given:
#   info            the machine: GPU, driver, Python, torch, transformers
#   receive         copy the carried pieces into $W/parts and check their checksums
#   install         join the pieces, check everything, unpack vLLM, convert the model (bf16),
#                   and write a copy with calibrated q/k/v scales (calibrate_kv_scales.py)
#   binary PATH     install a kvbench binary carried in this call (PATH relative to the
#                   repository, e.g. target/release/kvbench) over the payload's, for a run of a
#                   newer kvbench without rebuilding the payload
#   start [EXP]     start `kvbench ab EXP $KVBENCH_AB_ARGS` (default examples/gpu-h100-fp8.toml) in
#                   the background, into $W/results; refuses while an earlier one still runs.
#                   Its output goes to $W/ab-N.log (N counts the starts on this machine)
#   wait SECONDS    wait until it ends or SECONDS pass, printing progress
#   stop            SIGTERM to kvbench: it ends the arm in flight, writes what it has and the
#                   comparison, then exits 130 (a second SIGTERM hurries the teardown)
#   collect         pack results, ab logs and the engine-cache listing into $OUT (at most 8 files
#                   come back, 16 MiB each); safe while kvbench runs (a snapshot)
#
# Example, the adaptive run: KVBENCH_AB_ARGS="--until-decided --max-runs 3 --budget 20m"
#   scripts/gpu/device.sh receive install start examples/gpu-h200-fp8.toml wait 400 collect
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
W=${KVBENCH_GPU_DIR:-/tmp/kvbench-gpu}
PY=${DEVICE_PYTHON:-python3}
EXP_DEFAULT=examples/gpu-h100-fp8.toml
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 PYTHONUNBUFFERED=1

log() { printf '[device %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() { printf '[device] error: %s\n' "$*" >&2; exit 1; }

step_info() {
    log "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || die "no GPU"
    "$PY" -c 'import sys, torch, transformers; print("python", sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__, "gpu", torch.cuda.get_device_name())'
    log "state of $W: $(ls "$W/parts" 2>/dev/null | tr '\n' ' ')"
}

# Prints "HAVE WANT": pieces in $W/parts, and pieces SHA256SUMS lists.
pieces() {
    echo "$(ls "$W/parts" | grep -c '^part-' || true) $(grep -c ' part-' "$W/parts/SHA256SUMS")"
}

step_receive() {
    mkdir -p "$W/parts"
    [[ -f $ROOT/gpu-payload/SHA256SUMS ]] || die "no gpu-payload/SHA256SUMS here (carry it)"
    cp "$ROOT/gpu-payload/SHA256SUMS" "$W/parts/"
    local f n=0
    for f in "$ROOT"/gpu-payload/part-*; do
        [[ -e $f ]] || continue
        cp "$f" "$W/parts/"
        (cd "$W/parts" && grep " $(basename "$f")\$" SHA256SUMS | sha256sum -c --quiet) \
            || die "checksum mismatch for $(basename "$f")"
        n=$((n + 1))
    done
    local have want
    read -r have want < <(pieces)
    log "received $n piece(s) in this call; $have of $want here"
}

step_install() {
    local have want
    read -r have want < <(pieces)
    [[ $have == "$want" ]] || die "only $have of $want pieces are here (a fresh machine? start again from the first piece)"
    mkdir -p "$W/payload"
    cat "$W"/parts/part-* >"$W/payload.tar"
    (cd "$W" && grep ' payload.tar$' parts/SHA256SUMS | sha256sum -c --quiet) || die "payload.tar checksum mismatch"
    tar -C "$W/payload" -xf "$W/payload.tar"
    rm -f "$W/payload.tar"
    (cd "$W/payload" && sha256sum -c --quiet CONTENTS.sha256) || die "payload contents checksum mismatch"
    log "payload checked; unpacking vLLM"
    rm -rf "$W/site" && mkdir -p "$W/site"
    xz -dc -T0 "$W/payload/vllm-site.tar.xz" | tar -C "$W/site" -xf -
    install -m 755 "$W/payload/kvbench" "$W/kvbench"
    export PYTHONPATH=$W/site
    "$PY" -c 'import vllm, torch; print("vllm", vllm.__version__, "torch", torch.__version__, "cuda", torch.version.cuda)' \
        || die "vLLM does not import"
    "$W/kvbench" --version
    if [[ ! -f $W/model/tokenizer.json ]]; then
        log "converting the GGUF to a bf16 Hugging Face folder"
        rm -rf "$W/model"
        "$PY" "$W/payload/gguf_to_hf.py" "$W/payload/model.gguf" "$W/model" --dtype bfloat16
    fi
    if [[ ! -f $W/model-kv-scales/kv_scales.safetensors ]]; then
        log "calibrating q/k/v scales into a copy of the model (the fp8-checkpoint arm)"
        rm -rf "$W/model-kv-scales"
        "$PY" "$ROOT/scripts/gpu/calibrate_kv_scales.py" "$W/model" "$W/model-kv-scales"
    fi
    log "installed: vLLM in $W/site, models in $W/model and $W/model-kv-scales"
}

running() { [[ -f $W/ab.pid && ! -f $W/ab.rc ]] && kill -0 "$(cat "$W/ab.pid")" 2>/dev/null; }

step_binary() {
    local bin=${1:?binary needs a path}
    [[ -x $ROOT/$bin ]] || die "no executable $bin here (carry it)"
    install -m 755 "$ROOT/$bin" "$W/kvbench"
    log "kvbench replaced: $("$W/kvbench" --version)"
}

step_start() {
    local exp=${1:-$EXP_DEFAULT}
    [[ -x $W/kvbench ]] || die "not installed (run install first)"
    running && die "kvbench ab (pid $(cat "$W/ab.pid")) is still running"
    local n=1
    while [[ -e $W/ab-$n.log ]]; do n=$((n + 1)); done
    rm -f "$W/ab.rc" "$W/ab.pid"
    ln -sfn "ab-$n.log" "$W/ab.log"
    mkdir -p "$W/results"
    # shellcheck disable=SC2086 # KVBENCH_AB_ARGS is a list of words
    log "starting kvbench ab $exp ${KVBENCH_AB_ARGS:-} (log: $W/ab-$n.log)"
    # A new session, so that the run outlives this call; the next calls wait for it.
    # shellcheck disable=SC2086
    setsid nohup env VLLM_PYTHON="$(command -v "$PY")" MODEL_DIR="$W/model" \
        CALIBRATED_MODEL_DIR="$W/model-kv-scales" PYTHONPATH="$W/site" \
        bash -c '"$0" ab "$1" --out-dir "$2" "${@:5}" & echo $! >"$4"; wait $!; echo $? >"$3"' \
        "$W/kvbench" "$ROOT/$exp" "$W/results" "$W/ab.rc" "$W/ab.pid" ${KVBENCH_AB_ARGS:-} \
        >"$W/ab-$n.log" 2>&1 </dev/null &
    sleep 2
}

step_stop() {
    if running; then
        log "sending SIGTERM to kvbench (pid $(cat "$W/ab.pid"))"
        kill -TERM "$(cat "$W/ab.pid")"
    else
        log "kvbench is not running"
    fi
}

step_wait() {
    local secs=${1:-540} t0=$SECONDS last=""
    while :; do
        if [[ -f $W/ab.rc ]]; then
            log "kvbench ab ended with exit status $(cat "$W/ab.rc")"
            tail -n 40 "$W/ab.log"
            return 0
        fi
        local now
        now=$(grep -v '^\s*$' "$W/ab.log" 2>/dev/null | tail -n 1 | cut -c1-200)
        [[ $now != "$last" ]] && log "$now" && last=$now
        ((SECONDS - t0 < secs)) || break
        sleep 5
    done
    log "still running after ${secs} s"
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader || true
}

step_collect() {
    [[ -n ${OUT:-} ]] || die "OUT is not set"
    local f cache=${KVBENCH_CACHE:-$HOME/.cache/kvbench}/engine-cache
    for f in "$W"/ab-*.log; do [[ -e $f ]] && cp "$f" "$OUT/"; done
    { echo "# du -sk of the engine caches ($cache), $(date -u +%FT%TZ)"; du -sk "$cache"/* 2>/dev/null; } \
        >"$OUT/engine-cache.txt" || true
    # Journals and logs compress well; one archive keeps under the 8-file limit.
    tar -C "$W" -cf - results | xz -T0 -6 >"$OUT/results.tar.xz"
    ls -la "$OUT"
}

[[ $# -gt 0 ]] || { sed -n '2,22p' "$0"; exit 2; }
while [[ $# -gt 0 ]]; do
    s=$1
    shift
    case $s in
        info | receive | install | collect | stop) "step_$s" ;;
        start)
            if [[ $# -gt 0 && $1 == *.toml ]]; then step_start "$1"; shift; else step_start; fi
            ;;
        wait)
            if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then step_wait "$1"; shift; else step_wait; fi
            ;;
        binary)
            [[ $# -gt 0 ]] || die "binary needs a path"
            step_binary "$1"
            shift
            ;;
        *) die "unknown step $s" ;;
    esac
done
