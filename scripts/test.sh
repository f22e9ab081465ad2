#!/usr/bin/env bash
# The project's test command (the README's second command; .ci/run calls it).
#
#   1. installs the real engines the end-to-end tests use (llama.cpp llama-server, vLLM on CPU,
#      SmolLM2-135M), cached under ~/.cache/kvbench, so repeated runs are fast;
#   2. cargo fmt --check, no import cycle among src's modules (scripts/dev/modgraph.py), clippy
#      with -D warnings, and every test (unit, integration against the in-process test server,
#      end-to-end against the real engines);
#   3. both install paths of the README (scripts/wheel.sh --check): the wheel users `pip install`,
#      packaged from the debug build the tests just made, installed into a fresh venv and run
#      against kvbench's own test server; and `cargo install --path . --locked`.
#
# Environment:
#   KVBENCH_ENGINES=all|llamacpp|none   which engines to set up (default: all)
#   CI=true                             end-to-end tests fail, instead of skipping, when an
#                                       engine they need is missing
#   KVBENCH_DOCKER_SETUP=0              skip scripts/setup-docker.sh (the compose tests then skip)
#   KVBENCH_RAY_SETUP=0                 skip scripts/setup-ray.sh (the Ray tests then skip)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*" >&2; }
t0=$(date +%s)

engines=${KVBENCH_ENGINES:-all}
if [ "$engines" != none ]; then
    step "setting up engines ($engines; cached under ${KVBENCH_CACHE:-$HOME/.cache/kvbench})"
    out=$(scripts/setup-engines.sh "$engines")
    eval "$(printf '%s\n' "$out" | grep -E '^[A-Z0-9_]+=')"
    export LLAMA_SERVER SMOLLM2_GGUF
    export VLLM_PYTHON="${VLLM_PYTHON:-}" VLLM_ENTRY="${VLLM_ENTRY:-}" SMOLLM2_HF_DIR="${SMOLLM2_HF_DIR:-}"
    printf '%s\n' "$out" | grep -E '^[A-Z0-9_]+=' >&2
    echo "engines ready after $(( $(date +%s) - t0 )) s" >&2
fi
# A private dockerd, Compose v2 and a llama-server image for tests/e2e/compose.rs (needs llama.cpp).
if [ "$engines" != none ] && [ "${KVBENCH_DOCKER_SETUP:-1}" != 0 ]; then
    step "setting up docker (scripts/setup-docker.sh; stop it with: scripts/setup-docker.sh stop)"
    t1=$(date +%s)
    if out=$(scripts/setup-docker.sh); then
        eval "$(printf '%s\n' "$out" | grep -E '^[A-Z0-9_]+=')"
        export DOCKER_HOST DOCKER_CONFIG KVBENCH_DOCKER KVBENCH_LLAMA_IMAGE
        echo "docker ready after $(( $(date +%s) - t1 )) s" >&2
        # CI leaves no daemon behind; on a developer's machine it stays up for the next run.
        [ "${CI:-}" != true ] || trap 'scripts/setup-docker.sh stop >/dev/null 2>&1 || true' EXIT
    elif [ "${CI:-}" = true ]; then
        exit 1
    else
        echo "docker set-up failed: the compose tests will skip" >&2
    fi
fi
# A two-node Ray cluster on this machine for tests/e2e/ray.rs (`kvbench ab --on ray://...`).
if [ "${KVBENCH_RAY_SETUP:-1}" != 0 ]; then
    step "setting up a Ray cluster (scripts/setup-ray.sh; stop it with: scripts/setup-ray.sh stop)"
    t1=$(date +%s)
    if out=$(scripts/setup-ray.sh); then
        eval "$(printf '%s\n' "$out" | grep -E '^RAY_ADDRESS=')"
        export RAY_ADDRESS
        echo "ray ready after $(( $(date +%s) - t1 )) s" >&2
        if [ "${CI:-}" = true ]; then
            # CI leaves no cluster behind (nor daemon: the docker trap is replaced by both).
            trap 'scripts/setup-ray.sh stop >/dev/null 2>&1 || true; scripts/setup-docker.sh stop >/dev/null 2>&1 || true' EXIT
            export KVBENCH_REQUIRE_RAY="${KVBENCH_REQUIRE_RAY:-1}"
        fi
    elif [ "${CI:-}" = true ]; then
        exit 1
    else
        echo "ray set-up failed: the Ray tests will skip" >&2
    fi
fi
if [ "${CI:-}" = true ]; then
    export KVBENCH_REQUIRE_ENGINES="${KVBENCH_REQUIRE_ENGINES:-$engines}"
    export KVBENCH_REQUIRE_CHROMIUM="${KVBENCH_REQUIRE_CHROMIUM:-1}"
    if [ "$engines" != none ] && [ "${KVBENCH_DOCKER_SETUP:-1}" != 0 ]; then
        export KVBENCH_REQUIRE_DOCKER="${KVBENCH_REQUIRE_DOCKER:-1}"
    fi
fi

# Headless Chromium checks the HTML report (tests/fast/report.rs): Debian's package, installed once.
ensure_chromium() {
    command -v chromium >/dev/null 2>&1 && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "chromium missing and no apt-get: the HTML report check will skip" >&2
        return 0
    fi
    step "installing chromium (Debian package, for the HTML report check)"
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends chromium >&2
}
ensure_chromium

step "cargo fmt --check"
cargo fmt --all -- --check
step "no import cycle among src's modules (scripts/dev/modgraph.py)"
graph=$(python3 scripts/dev/modgraph.py) || { printf '%s\n' "$graph" >&2; exit 1; }
step "cargo clippy -D warnings"
cargo clippy --all-targets --locked -- -D warnings
step "cargo test"
cargo test --locked --no-fail-fast -- --test-threads="${KVBENCH_TEST_THREADS:-2}"
# `--profile dev` reuses the debug build `cargo test` just made, where a release build would take
# 10 minutes (about 4 minutes cold, seconds warm: see scripts/wheel.sh). Skipped only outside CI,
# and only when maturin cannot be installed.
step "install: the wheel into a fresh venv, and cargo install (scripts/wheel.sh --profile dev --check)"
wheel_rc=0
scripts/wheel.sh --profile dev --check >/dev/null || wheel_rc=$?
if [ "$wheel_rc" -eq 3 ] && [ "${CI:-}" != true ]; then
    echo "wheel check SKIPPED: maturin could not be installed (see above); CI always runs it" >&2
elif [ "$wheel_rc" -ne 0 ]; then
    echo "wheel check failed (scripts/wheel.sh exit $wheel_rc)" >&2
    exit "$wheel_rc"
fi
echo "all checks passed in $(( $(date +%s) - t0 )) s" >&2
