#!/usr/bin/env bash
# Quickstart: a real engine measured by kvbench, on a fresh machine.
#   1. installs llama.cpp's llama-server and SmolLM2-135M (scripts/setup-engines.sh, cached),
#   2. builds kvbench (release),
#   3. runs `kvbench ab examples/quickstart.toml`: each arm (KV cache f16, q8_0, q4_0) is
#      launched, measured (quality suites, then speed) and torn down; then the arms are compared
#      and the verdict printed, with an HTML and a Markdown report.
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

export LLAMA_SERVER SMOLLM2_GGUF
dir=results/quickstart-$(date +%Y%m%d_%H%M%S)
say "running the A/B experiment examples/quickstart.toml (f16 vs q8_0 vs q4_0 KV cache) into $dir"
start=$(date +%s)
set +e
# Adaptive: rounds of runs until the verdict is settled, within a 9-minute budget.
"$kvbench" ab examples/quickstart.toml --out-dir "$dir" --until-decided --budget 9m
rc=$?
set -e
say "took $(( $(date +%s) - start )) s; everything is in $dir (open the comparison_*.html report)"
exit $rc
