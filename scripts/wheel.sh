#!/usr/bin/env bash
# wheel.sh — build kvbench as a Python wheel, the way vLLM users install tools: `pip install`.
#
# Usage: scripts/wheel.sh [--profile release|dev] [--check]
#
# The wheel carries the kvbench binary (maturin, bindings = "bin", see pyproject.toml): no Python
# module, pip puts `kvbench` on the venv's PATH. It is tagged for the oldest glibc the binary
# runs on (manylinux_2_X), so it installs on that Linux and newer.
#
#   --profile release  (default) the optimised build users install (a cold release build takes
#                      10 minutes or more on 2 cores). Wheel: ${CARGO_TARGET_DIR:-target}/wheels/
#   --profile dev      a debug build, for CI: it reuses what `cargo test` has built (dependencies
#                      at opt-level 2, see Cargo.toml) instead of a release build. Wheel:
#                      .../wheels/dev/, so that it never replaces a release wheel.
#   --check            then install the wheel into a fresh venv in a temporary directory, run
#                      `kvbench --version` and a 5-request `kvbench run` against
#                      `kvbench test-server` from that venv, and require outcome "ok" with 5
#                      completed requests. The test server is stopped on exit, also on failure.
#                      Then `cargo install --path . --locked` (--debug for dev) into a temporary
#                      root, from the same target directory, and `kvbench --version`.
#
# maturin is pinned (MATURIN_VERSION) and installed once, like the engines of
# scripts/setup-engines.sh: its wheel is fetched from PyPI with pip and its static binary kept
# in ${KVBENCH_CACHE:-$HOME/.cache/kvbench}/maturin-<version>/bin/maturin.
#
# Measured on a 2-core machine shared with other builds (load 5), `--profile dev --check` right
# after `cargo test`, as scripts/test.sh runs it:
#   maturin         cold 3-4 s (10.8 MB from PyPI), warm 0 s (cached)
#   wheel build     cold 247 s, warm 1 s. Cold, cargo rebuilds 24 of the ~230 crates the binary
#                   needs (serde_json, regex-automata, num-traits, rustix, and what builds on them:
#                   tokenizers, reqwest, axum, clap, kvbench): `cargo test` built them with the
#                   features the dev-dependencies add, a build of the binary alone does not.
#   check           12-17 s: fresh venv with pip, install, --version, 5-request run 7-9 s;
#                   cargo install (relink, copy) 5-8 s
#   wheel size      8.0 MiB (the stripped debug binary is 25.8 MB)
# So CI pays about 4 minutes once per fresh clone, and seconds when target/ is kept.
#
# Exit status: 0 built (and checked); 1 failed; 2 usage; 3 maturin could not be installed (no
# Python with pip, or PyPI unreachable). scripts/test.sh skips the wheel step on 3 outside CI.
#
# Environment:
#   KVBENCH_CACHE     cache root (default $HOME/.cache/kvbench)
#   KVBENCH_PYTHON    Python used for pip and as the check venv's base (default python3)
#   CARGO_TARGET_DIR  as for cargo (default target)
set -Eeuo pipefail

readonly MATURIN_VERSION=1.16.0

cd "$(dirname "$0")/.."
CACHE=${KVBENCH_CACHE:-$HOME/.cache/kvbench}
PYTHON=${KVBENCH_PYTHON:-python3}
TARGET=${CARGO_TARGET_DIR:-target}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

log() { printf 'wheel: %s\n' "$*" >&2; }
die() {
    printf 'wheel: error: %s\n' "$*" >&2
    exit 1
}
usage() { printf 'usage: %s [--profile release|dev] [--check]\n' "$(basename "$0")" >&2; }

profile=release
check=false
while (($# > 0)); do
    case $1 in
        --profile)
            [[ ${2:-} == release || ${2:-} == dev ]] || { usage; exit 2; }
            profile=$2
            shift 2
            ;;
        --check) check=true; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage; exit 2 ;;
    esac
done

# Removed on exit, success or failure: temporary directories, and the test server (by its pid).
TMP=$(mktemp -d "${TMPDIR:-/tmp}/kvbench-wheel.XXXXXX")
SERVER_PID=
cleanup() {
    if [[ -n $SERVER_PID ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf -- "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# maturin, pinned and cached

MATURIN=$CACHE/maturin-$MATURIN_VERSION/bin/maturin
maturin_ok() { [[ -x $MATURIN && $("$MATURIN" --version 2>/dev/null) == "maturin $MATURIN_VERSION" ]]; }

# Fetch the maturin wheel and keep its binary; built beside the entry and renamed into place,
# under a lock, so a concurrent or interrupted run never leaves a half-written entry.
ensure_maturin() {
    maturin_ok && return 0
    local name=maturin-$MATURIN_VERSION t0=$SECONDS
    mkdir -p "$CACHE"
    if command -v flock >/dev/null 2>&1; then
        exec {lock_fd}>"$CACHE/.$name.lock"
        flock "$lock_fd"
        maturin_ok && return 0
    fi
    if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
        log "$PYTHON with pip not found (set KVBENCH_PYTHON): cannot install maturin"
        exit 3
    fi
    local tmp
    tmp=$(mktemp -d "$CACHE/.$name.tmp.XXXXXX")
    log "downloading maturin==$MATURIN_VERSION from PyPI (11 MB)"
    if ! "$PYTHON" -m pip download -q --no-deps --only-binary :all: -d "$tmp/dl" \
        "maturin==$MATURIN_VERSION" >&2; then
        rm -rf -- "$tmp"
        log "pip download maturin==$MATURIN_VERSION failed: cannot install maturin"
        exit 3
    fi
    mkdir -p "$tmp/entry/bin"
    "$PYTHON" - "$tmp/dl" "$tmp/entry/bin/maturin" <<'PY' || { rm -rf -- "$tmp"; die "no maturin binary in the downloaded wheel"; }
import glob, os, shutil, sys, zipfile
dl, out = sys.argv[1:]
(wheel,) = glob.glob(os.path.join(dl, "maturin-*.whl"))
with zipfile.ZipFile(wheel) as z:
    (member,) = [n for n in z.namelist() if n.endswith(".data/scripts/maturin")]
    with z.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
os.chmod(out, 0o755)
PY
    rm -rf -- "$CACHE/$name"
    mv -T -- "$tmp/entry" "$CACHE/$name"
    rm -rf -- "$tmp"
    maturin_ok || die "$MATURIN does not report version $MATURIN_VERSION"
    log "maturin $MATURIN_VERSION ready in $((SECONDS - t0)) s: $MATURIN"
}

t0=$SECONDS
ensure_maturin
t_maturin=$((SECONDS - t0))

# ---------------------------------------------------------------------------------------------
# build

out=$TARGET/wheels
[[ $profile == release ]] || out=$TARGET/wheels/$profile
mkdir -p "$out"
# One wheel per directory, so that `pip install $out/kvbench-*.whl` names exactly this one.
rm -f -- "$out"/kvbench-*.whl
t0=$SECONDS
log "building the wheel (--profile $profile) into $out/"
"$MATURIN" build --locked --profile "$profile" --out "$out" >&2
t_build=$((SECONDS - t0))
wheels=("$out"/kvbench-*.whl)
[[ ${#wheels[@]} -eq 1 && -f ${wheels[0]} ]] || die "maturin left no single kvbench wheel in $out"
WHEEL=${wheels[0]}
log "built $WHEEL ($(du -h "$WHEEL" | cut -f1)) in $t_build s (maturin ready in $t_maturin s)"

if ! $check; then
    printf '%s\n' "$WHEEL"
    exit 0
fi

# ---------------------------------------------------------------------------------------------
# check: what a user does, in a fresh venv

t0=$SECONDS
venv=$TMP/venv
log "check: pip install $(basename "$WHEEL") into a fresh venv ($venv)"
"$PYTHON" -m venv "$venv" >&2 || die "$PYTHON -m venv failed"
"$venv/bin/python" -m pip install -q --no-index "$WHEEL" >&2 || die "pip install $WHEEL failed"
export PATH=$venv/bin:$PATH
[[ $(command -v kvbench) == "$venv/bin/kvbench" ]] ||
    die "pip did not put kvbench on the venv's PATH (found: $(command -v kvbench || echo nothing))"

want="kvbench $(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)"
got=$(kvbench --version)
[[ $got == "$want" ]] || die "kvbench --version printed '$got', expected '$want'"
log "check: kvbench --version: $got"

# Port 0: the server picks a free port and prints its URL first.
kvbench test-server --listen 127.0.0.1:0 --ttft-ms 20 --itl-ms 2 >"$TMP/server.log" 2>&1 &
SERVER_PID=$!
url=
for _ in $(seq 100); do
    url=$(sed -n 's/^kvbench test server on \(http[^ ]*\).*/\1/p' "$TMP/server.log")
    [[ -n $url ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || die "kvbench test-server exited: $(cat "$TMP/server.log")"
    sleep 0.1
done
[[ -n $url ]] || die "kvbench test-server printed no URL within 10 s: $(cat "$TMP/server.log")"

result=$TMP/run.json
kvbench run --url "$url" -n 5 --max-tokens 16 --output "$result" >"$TMP/run.log" 2>&1 ||
    die "kvbench run against the test server failed: $(tail -n 20 "$TMP/run.log")"
"$venv/bin/python" - "$result" <<'PY' || die "the run's result is not ok"
import json, sys
r = json.load(open(sys.argv[1]))
outcome, n = r["outcome"], r["requests"]["completed"]
print(f"wheel: check: kvbench run: outcome {outcome}, {n} of 5 requests completed", file=sys.stderr)
sys.exit(0 if outcome == "ok" and n == 5 else 1)
PY

# The README's other install line, from the same build (--debug for the dev profile).
debug=()
[[ $profile == release ]] || debug=(--debug)
cargo install -q --path . --locked ${debug[@]+"${debug[@]}"} --target-dir "$TARGET" \
    --root "$TMP/cargo-root" >"$TMP/install.log" 2>&1 ||
    die "cargo install --path . --locked failed: $(tail -n 20 "$TMP/install.log")"
got=$("$TMP/cargo-root/bin/kvbench" --version)
[[ $got == "$want" ]] || die "cargo-installed kvbench --version printed '$got', expected '$want'"
log "check: cargo install --path . --locked: $got"
log "check passed in $((SECONDS - t0)) s: the wheel and cargo install both install and run"
printf '%s\n' "$WHEEL"
