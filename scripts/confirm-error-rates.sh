#!/usr/bin/env bash
# Confirms the simulated error rates of `kvbench ab --until-decided` (docs/decision.md) on real
# runs: N experiments each, on `kvbench test-server` arms whose every start draws a drift factor
# (σ = 5 %, `--run-drift-pct 5`), for identical arms and for a +30 % TTFT candidate. Prints one
# line per experiment (verdict, speed verdicts, runs per arm, how it stopped, seconds) and the
# counts.
#
#   scripts/confirm-error-rates.sh [N] [MAX_RUNS]     (defaults: 10 experiments, 8 runs)
#
# Needs a built kvbench (target/release/kvbench, else target/debug/kvbench) and jq.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10}
max_runs=${2:-8}
kvbench=$PWD/target/release/kvbench
[ -x "$kvbench" ] || kvbench=$PWD/target/debug/kvbench
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

experiment() { # name candidate_ttft_ms
    cat >"$work/$1.toml" <<EOF
name = "$1"
[server]
command = ["$kvbench", "test-server", "--listen", "127.0.0.1:{port}", "--itl-ms", "2", "--tokens", "8", "--run-drift-pct", "5"]
port = "auto"
[workload]
num_requests = 40
concurrency = 4
max_tokens = 8
warmup = 2
[decision]
min_warnings_resolved = 0
[[arms]]
name = "a"
args = ["--ttft-ms", "200"]
[[arms]]
name = "b"
args = ["--ttft-ms", "$2"]
EOF
}

for case in "aa 200" "plus30 260"; do
    set -- $case
    experiment "$1" "$2"
    echo "== $1: candidate TTFT $2 ms against 200 ms, σ_run 5 %, $n experiments"
    for i in $(seq 1 "$n"); do
        out="$work/$1-$i"
        start=$(date +%s.%N)
        "$kvbench" ab "$work/$1.toml" --out-dir "$out" --until-decided --max-runs "$max_runs" -q >/dev/null 2>&1 || true
        secs=$(echo "$(date +%s.%N) - $start" | bc)
        jq -r --arg s "$secs" '[.decision,
              ([.recommendations[] | select(.criterion == "ttft_ms.p50" or .criterion == "output_tok_per_s") | .verdict] | join("/")),
              "runs=\(.effort.runs_per_arm.b)", .effort.stopped, ("\($s | tonumber | floor) s")] | join(" ")' \
            "$out"/comparison_*.json
    done | tee "$work/$1.txt"
    echo "-- counts (overall verdict, speed verdicts):"
    awk '{print $1, $2}' "$work/$1.txt" | sort | uniq -c
    awk '{sub("runs=", "", $3); s += $3} END {printf "mean runs per arm: %.2f\n", s / NR}' "$work/$1.txt"
done
