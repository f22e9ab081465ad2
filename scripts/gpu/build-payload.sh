#!/usr/bin/env bash
# Builds, on this machine, everything the GPU validation needs on the lent H100 machine, which
# has Python 3.12, torch 2.11.0+cu130 and transformers but no vLLM and no network:
#
#   vllm-site.tar.xz  vLLM 0.26.0 and only the dependencies the device image lacks, installed
#                     into one folder (pip --target) and trimmed of what a dense model on an
#                     H100 never loads
#   model.gguf        SmolLM2-135M-Instruct (the GGUF scripts/setup-engines.sh fetches)
#   kvbench           this checkout's release binary
#
# bundled into one tar and split into pieces of at most PIECE_MIB MiB (one per device `run`
# call), with SHA256SUMS, in gpu-payload/ (ignored by git). Downloads and the packed vLLM
# folder are cached under ~/.cache/kvbench/gpu. docs/gpu-validation.md says how to use it.
#
# Usage: scripts/gpu/build-payload.sh            (re-running is cheap once cached)
#        KVBENCH_BIN=/path/to/kvbench scripts/gpu/build-payload.sh   (use that binary)
#        SMOLLM2_GGUF=/path/to/SmolLM2-135M-Instruct.Q4_1.gguf       (skip setup-engines.sh)
#        PIECE_MIB=N                                                  (piece size; default below)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${KVBENCH_CACHE:-$HOME/.cache/kvbench}/gpu
OUT=$ROOT/gpu-payload
VLLM_VERSION=0.26.0
# vLLM 0.26.0 was released on 2026-07-25: resolve its dependencies as they were then.
EXCLUDE_NEWER=2026-07-26
UV_VERSION=0.13.9
# Each device call carries one piece plus the working tree (tracked and untracked-not-ignored
# files), 64 MiB in all: by default a piece gets what the tree leaves, less 6 MiB of headroom for
# files others add before the calls (the tree was 12 MB on 2026-12-01: 42 MiB pieces).
tree_mib() {
    (cd "$ROOT" && git ls-files -co --exclude-standard -z | du -c -b --files0-from=- 2>/dev/null | tail -1 | cut -f1) |
        awk '{ printf "%d\n", ($1 + 1048575) / 1048576 }'
}
PIECE_MIB=${PIECE_MIB:-$((64 - $(tree_mib) - 6))}
((PIECE_MIB >= 8)) || { printf 'build-payload: error: the working tree leaves only %s MiB per device call\n' "$PIECE_MIB" >&2; exit 1; }

log() { printf 'build-payload: %s\n' "$*" >&2; }
die() { printf 'build-payload: error: %s\n' "$*" >&2; exit 1; }

# Distributions vLLM 0.26.0 requires that are not carried although the device lacks them: kernels
# for other GPUs or features this validation does not use (FlashInfer: VLLM_USE_FLASHINFER_SAMPLER=0
# and the FlashAttention backend; MoE, MLA, video and CUTLASS-DSL kernels; fast safetensors
# loading, the Triton fork of TokenSpeed MLA), and the CUDA libraries torch already brings.
SKIP_REGEX='^(flashinfer-.*|tokenspeed-.*|tilelang|nvidia-.*|cuda-.*|quack-kernels|tokenspeed-mla|humming-kernels|pynvvideocodec|torchcodec|fastsafetensors|torch|torchaudio|torchvision|triton|z3-solver)$'

find_python312() {
    local c
    for c in "${PYTHON312:-}" python3.12 "$(pyenv root 2>/dev/null)/versions/3.12"*/bin/python3.12; do
        [[ -n $c ]] && command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null && { echo "$c"; return; }
    done
    die "no Python 3.12 found (the device runs 3.12; set PYTHON312)"
}

mkdir -p "$CACHE" "$OUT"
PY=$(find_python312)
if [[ ! -x $CACHE/tools/bin/uv ]] || [[ $("$CACHE/tools/bin/uv" --version) != "uv $UV_VERSION"* ]]; then
    log "creating a tools venv with uv $UV_VERSION"
    rm -rf "$CACHE/tools"
    "$PY" -m venv "$CACHE/tools"
    "$CACHE/tools/bin/pip" install -q "uv==$UV_VERSION"
fi
UV=$CACHE/tools/bin/uv

# 1. Resolve vLLM's dependencies for Python 3.12 on x86-64 Linux, as of its release.
log "resolving vllm==$VLLM_VERSION (+ gguf, for the model conversion) as of $EXCLUDE_NEWER"
printf 'vllm==%s\ngguf\n' "$VLLM_VERSION" >"$CACHE/requirements.in"
"$UV" pip compile -q "$CACHE/requirements.in" -o "$CACHE/resolved.txt" --python-version 3.12 \
    --python-platform x86_64-manylinux_2_28 --exclude-newer "$EXCLUDE_NEWER" --no-header --no-annotate \
    || die "dependency resolution failed"

# 2. Keep only what the device lacks.
normalize() { tr 'A-Z_.' 'a-z--'; }
grep -v '^#' "$ROOT/scripts/gpu/device-packages.txt" | normalize | sort -u >"$CACHE/device.txt"
: >"$CACHE/carried.txt"
sed -E 's/\[[^]]*\]//; s/[[:space:]]*;.*$//' "$CACHE/resolved.txt" | while IFS= read -r line; do
    [[ $line == *==* ]] || continue
    name=$(printf '%s' "${line%%==*}" | normalize)
    if grep -qx "$name" "$CACHE/device.txt" || [[ $name =~ $SKIP_REGEX ]]; then continue; fi
    printf '%s==%s\n' "$name" "${line#*==}" >>"$CACHE/carried.txt"
done
log "$(wc -l <"$CACHE/resolved.txt") resolved, $(wc -l <"$CACHE/carried.txt") carried (the rest is on the device or not needed)"

# 3. Install the carried set into one folder and trim it; cached by the carried set's hash.
key=$(sha256sum "$CACHE/carried.txt" "$0" | sha256sum | cut -c1-16)
site_xz=$CACHE/vllm-site-$key.tar.xz
if [[ ! -s $site_xz ]]; then
    rm -rf "$CACHE/site"
    log "installing $(wc -l <"$CACHE/carried.txt") distributions into a folder"
    "$UV" pip install -q --target "$CACHE/site" --python-version 3.12 --python-platform x86_64-manylinux_2_28 \
        --no-deps --no-compile -r "$CACHE/carried.txt" || die "install failed"
    before=$(du -sm "$CACHE/site" | cut -f1)
    v=$CACHE/site/vllm
    # Unused on an H100 serving a dense model with FlashAttention 3: the FA2 library, the MoE
    # kernels, the bundled Rust front end, DeepGEMM and the sm100 FMHA sources, other CPython
    # builds, static libraries, pycountry's translations, and bytecode.
    rm -f "$v/vllm_flash_attn/_vllm_fa2_C.abi3.so" "$v/_moe_C_stable_libtorch.abi3.so" "$v/vllm-rs"
    rm -rf "$v/third_party/deep_gemm" "$v/third_party/fmha_sm100"
    rm -rf "$CACHE/site/pycountry/locales"
    find "$CACHE/site" -name '*.a' -delete
    find "$CACHE/site" -name '__pycache__' -type d -prune -exec rm -rf {} +
    find "$CACHE/site" -name '*.cpython-3[!1][!2]-*.so' -delete
    log "site folder: ${before} MiB installed, $(du -sm "$CACHE/site" | cut -f1) MiB after trimming; packing (xz -9e, slow)"
    tar -C "$CACHE/site" -cf - . | xz -T2 -9e >"$site_xz.tmp"
    mv "$site_xz.tmp" "$site_xz"
fi
log "packed vLLM folder: $(du -m "$site_xz" | cut -f1) MiB"

# 4. The model and the kvbench binary.
# SMOLLM2_GGUF set: that file (setup-engines.sh waits while another run of it builds an engine).
if [[ -z ${SMOLLM2_GGUF:-} ]]; then
    eval "$("$ROOT/scripts/setup-engines.sh" llamacpp | grep '^SMOLLM2_GGUF=')"
fi
[[ -s ${SMOLLM2_GGUF:-} ]] || die "setup-engines.sh printed no SMOLLM2_GGUF"
# KVBENCH_BIN: a release binary built elsewhere (e.g. from a clean clone of HEAD with its own
# CARGO_TARGET_DIR, so that uncommitted edits in this checkout do not go into the payload).
if [[ -n ${KVBENCH_BIN:-} ]]; then
    [[ -x $KVBENCH_BIN ]] || die "KVBENCH_BIN=$KVBENCH_BIN is not an executable"
    log "using the kvbench binary $KVBENCH_BIN ($("$KVBENCH_BIN" --version))"
else
    log "building the kvbench release binary"
    (cd "$ROOT" && cargo build --release --locked -q) || die "cargo build failed"
    KVBENCH_BIN=$ROOT/target/release/kvbench
fi

# 5. Bundle and split.
stage=$CACHE/stage
rm -rf "$stage" && mkdir -p "$stage"
cp "$site_xz" "$stage/vllm-site.tar.xz"
cp "$SMOLLM2_GGUF" "$stage/model.gguf"
strip -o "$stage/kvbench" "$KVBENCH_BIN"
cp "$ROOT/scripts/engines/gguf_to_hf.py" "$stage/"
cp "$CACHE/carried.txt" "$stage/"
(cd "$stage" && sha256sum vllm-site.tar.xz model.gguf kvbench gguf_to_hf.py carried.txt >CONTENTS.sha256)
rm -rf "$OUT" && mkdir -p "$OUT"
tar -C "$stage" -cf "$CACHE/payload.tar" CONTENTS.sha256 vllm-site.tar.xz model.gguf kvbench gguf_to_hf.py carried.txt
split -b "${PIECE_MIB}M" -d -a 2 "$CACHE/payload.tar" "$OUT/part-"
(cd "$OUT" && sha256sum part-* >SHA256SUMS && sha256sum "$CACHE/payload.tar" | sed 's|  .*|  payload.tar|' >>SHA256SUMS)
rm -f "$CACHE/payload.tar"
n=$(ls "$OUT"/part-* | wc -l)
log "done: $n pieces in gpu-payload/ ($(du -cm "$OUT"/part-* | tail -1 | cut -f1) MiB); one per device call, see docs/gpu-validation.md"
ls "$OUT"
