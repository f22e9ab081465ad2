#!/usr/bin/env bash
# setup-ray.sh — a real two-node Ray cluster on this machine, for `kvbench ab --on ray://...`
# and its tests (tests/e2e/ray.rs).
#
# Usage: scripts/setup-ray.sh [start|stop]     (default: start)
#
#   start  installs ray[default]==RAY_VERSION into a venv cached under
#          ${KVBENCH_CACHE:-$HOME/.cache/kvbench}/ray-<version> (about 380 MB; ~50-110 s cold),
#          then starts, unless they already run, a head node on 127.0.0.2 and a second node on
#          127.0.0.3. Each node offers one unit of the custom resource `kvgpu`, standing in for a
#          GPU (this machine has none), so two arms that each need one unit run at the same time
#          and a third waits. Ray's session files are under /tmp/kvbench-ray-<uid> (Ray's socket
#          paths must stay short).
#   stop   stops the processes of this cluster only, found by that directory in their command
#          lines; other Ray clusters on the machine are left alone (`ray stop` would end every
#          Ray process on the machine).
#
# Facts this relies on (Ray 2.60): `--node-ip-address 127.0.0.1` is silently replaced by the
# machine's address, so the nodes use 127.0.0.2 and 127.0.0.3; the second node needs its own
# `--dashboard-agent-listen-port` (else its jobs' logs answer HTTP 500) and explicit `--memory`
# / `--object-store-memory`.
#
# On success the last line on stdout is RAY_ADDRESS=http://HOST:PORT, the Jobs API (the
# dashboard), for `eval`. Everything else goes to stderr.
#
# Environment:
#   KVBENCH_CACHE        cache root (default $HOME/.cache/kvbench)
#   KVBENCH_RAY_PORT     the dashboard's port (default 8265); the head's GCS port is 6390
set -Eeuo pipefail

readonly RAY_VERSION=2.60.0

CACHE=${KVBENCH_CACHE:-$HOME/.cache/kvbench}
readonly VENV=$CACHE/ray-$RAY_VERSION
readonly TEMP=/tmp/kvbench-ray-$(id -u)
readonly HEAD_IP=127.0.0.2 NODE_IP=127.0.0.3
readonly DASH_PORT=${KVBENCH_RAY_PORT:-8265}
readonly GCS_PORT=6390
PYTHON=${KVBENCH_PYTHON:-python3}

# Plain stdout goes to stderr; fd 3 is the real stdout, for the final KEY=VALUE line only.
exec 3>&1 1>&2

log() { printf 'setup-ray: %s\n' "$*" >&2; }
die() {
    printf 'setup-ray: error: %s\n' "$*" >&2
    exit 1
}
trap 'die "unexpected failure (line $LINENO): $BASH_COMMAND"' ERR

mode=${1:-start}
case $mode in
start | stop) ;;
*)
    printf 'usage: %s [start|stop]\n' "$(basename "$0")" >&2
    exit 2
    ;;
esac
mkdir -p "$CACHE/logs"

# PIDs of this cluster's processes: those whose command line names our session directory or
# our GCS address (the raylets, GCS, dashboard and their workers all do).
our_pids() {
    local d pid
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        [[ $pid == "$$" ]] && continue
        if tr '\0' ' ' <"$d/cmdline" 2>/dev/null | grep -qE -- "$TEMP|$HEAD_IP:$GCS_PORT"; then
            echo "$pid"
        fi
    done
}

stop_cluster() {
    local pids i
    pids=$(our_pids | tr '\n' ' ')
    if [[ -z ${pids// /} ]]; then
        log "no Ray process of ours is running"
        return 0
    fi
    log "stopping this cluster's Ray processes: $pids"
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        [[ -z $(our_pids) ]] && return 0
        sleep 0.1
    done
    pids=$(our_pids | tr '\n' ' ')
    log "still running after 10 s, killing: $pids"
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
}

if [[ $mode == stop ]]; then
    stop_cluster
    exit 0
fi

t_start=$SECONDS
venv_ok() { [[ -f $VENV/.kvbench-complete && -x $VENV/bin/ray ]]; }
if ! venv_ok; then
    "$PYTHON" -m venv --help >/dev/null 2>&1 || die "$PYTHON cannot make a venv (python3-venv missing?)"
    logfile=$CACHE/logs/setup-ray.log
    log "installing ray[default]==$RAY_VERSION into $VENV (log: $logfile)"
    # A venv's scripts name its own path, so it is built where it stays; the marker file says
    # it is complete, and an incomplete one is built again.
    rm -rf -- "$VENV"
    "$PYTHON" -m venv "$VENV" >>"$logfile" 2>&1 || die "python -m venv failed (log: $logfile)"
    "$VENV/bin/python" -m pip install -q "ray[default]==$RAY_VERSION" >>"$logfile" 2>&1 ||
        die "pip install ray[default]==$RAY_VERSION failed (log: $logfile)"
    touch "$VENV/.kvbench-complete"
    log "ray installed in $((SECONDS - t_start)) s"
fi
RAY=$VENV/bin/ray
ADDRESS=http://$HEAD_IP:$DASH_PORT

up() { curl -fsS -m 2 "$ADDRESS/api/version" >/dev/null 2>&1; }
# Whole units of the stand-in resource the cluster offers (0 while a node is missing).
kvgpus() {
    "$VENV/bin/python" - "$ADDRESS" <<'PY' 2>/dev/null || echo 0
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/nodes?view=summary", timeout=3) as r:
    data = json.load(r)
total = 0.0
for n in data["data"]["summary"]:
    if n.get("raylet", {}).get("state") == "ALIVE":
        total += n["raylet"].get("resourcesTotal", {}).get("kvgpu", 0)
print(int(total))
PY
}

if up && [[ $(kvgpus) -ge 2 ]]; then
    log "the cluster is already running"
else
    stop_cluster
    rm -rf -- "$TEMP"
    mkdir -p "$TEMP"
    export RAY_USAGE_STATS_ENABLED=0 RAY_DISABLE_DOCKER_CPU_WARNING=1
    log "starting the head node on $HEAD_IP (dashboard $ADDRESS)"
    "$RAY" start --head --node-ip-address "$HEAD_IP" --port "$GCS_PORT" \
        --dashboard-host "$HEAD_IP" --dashboard-port "$DASH_PORT" --include-dashboard true \
        --temp-dir "$TEMP" --num-cpus 2 --num-gpus 0 --resources '{"kvgpu": 1}' \
        --memory $((2 * 1024 * 1024 * 1024)) --object-store-memory $((256 * 1024 * 1024)) \
        --disable-usage-stats >"$TEMP/head.out" 2>&1 </dev/null ||
        die "ray start --head failed: $(tail -5 "$TEMP/head.out" | tr '\n' ' ')"
    log "starting the second node on $NODE_IP"
    "$RAY" start --address "$HEAD_IP:$GCS_PORT" --node-ip-address "$NODE_IP" \
        --num-cpus 2 --num-gpus 0 --resources '{"kvgpu": 1}' \
        --dashboard-agent-listen-port 52366 --dashboard-agent-grpc-port 52367 \
        --metrics-export-port 52368 --runtime-env-agent-port 52369 \
        --memory $((2 * 1024 * 1024 * 1024)) --object-store-memory $((256 * 1024 * 1024)) \
        --disable-usage-stats >"$TEMP/node.out" 2>&1 </dev/null ||
        die "ray start (second node) failed: $(tail -5 "$TEMP/node.out" | tr '\n' ' ')"
    for ((i = 0; i < 120; i++)); do
        up && [[ $(kvgpus) -ge 2 ]] && break
        sleep 0.5
    done
    up || die "the Jobs API at $ADDRESS did not answer within 60 s (logs: $TEMP/session_latest/logs)"
    [[ $(kvgpus) -ge 2 ]] || die "the cluster has fewer than 2 kvgpu units after 60 s (logs: $TEMP/session_latest/logs)"
fi
log "ready after $((SECONDS - t_start)) s"
printf 'RAY_ADDRESS=%s\n' "$ADDRESS" >&3
