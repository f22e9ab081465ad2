#!/usr/bin/env bash
# Quickstart: a real engine measured by kvbench, on a fresh machine.
#   1. installs llama.cpp's llama-server and SmolLM2-135M (scripts/setup-engines.sh, cached),
#   2. builds kvbench (release),
#   3. starts llama-server on a free loopback port, runs `kvbench run` against it, stops it.
# Results go to results/quickstart-YYYYMMDD_HHMMSS/.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'quickstart: %s\n' "$*" >&2; }

say "setting up llama.cpp and SmolLM2 (first time: ~20 min build; cached afterwards)"
out=$(scripts/setup-engines.sh llamacpp)
eval "$(printf '%s\n' "$out" | grep -E '^[A-Z0-9_]+=')"

say "building kvbench"
cargo build --release --locked --quiet
kvbench=$PWD/target/release/kvbench

dir=results/quickstart-$(date +%Y%m%d_%H%M%S)
mkdir -p "$dir"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
say "starting llama-server on 127.0.0.1:$port (log: $dir/llama-server.log)"
"$LLAMA_SERVER" -m "$SMOLLM2_GGUF" --host 127.0.0.1 --port "$port" --metrics --alias smollm2 \
    -c 8192 -np 4 -t 1 >"$dir/llama-server.log" 2>&1 &
server_pid=$!
trap 'kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true' EXIT INT TERM

for _ in $(seq 1 120); do
    if curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
        say "error: llama-server exited; last lines of its log:"; tail -n 20 "$dir/llama-server.log" >&2; exit 1
    fi
    sleep 0.5
done

"$kvbench" run --url "http://127.0.0.1:$port" --num-requests 16 --concurrency 4 \
    --input-len 256 --max-tokens 32 --warmup 2 --output "$dir/run.json"
say "done: $dir/run.json (per-request journal: $dir/run.requests.jsonl)"
