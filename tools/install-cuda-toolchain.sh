#!/usr/bin/env bash
# Install the pinned CUDA compile toolchain that `cargo build --features cuda` needs, from NVIDIA's
# PyPI wheels, into a project-local folder (no system CUDA, no GPU, no root):
#
#   target/cuda-toolchain/            (or $JOBX_CUDA_TOOLCHAIN)
#     nvidia/cuda_nvrtc/lib/libnvrtc.so.12   NVRTC: CUDA C++ -> PTX (build.rs loads it with dlopen)
#     nvidia/cuda_runtime/include/           cuda_bf16.h, cuda_fp16.h, ... for the kernels
#     nvidia/cuda_nvcc/bin/ptxas             PTX -> sm_80 / sm_90 cubin, with the -v resource report
#     clang/native/libclang.so               libclang for bindgen (kernel parameter structs)
#
# Idempotent: a stamp file records the pins; a second run with the same pins does nothing.
# The 12.9 toolkit is pinned on purpose: GPU machines run driver 580 (CUDA 13.0), which JIT-compiles
# PTX up to its own ISA; see ../shared/docs/CUDA-TOOLCHAIN.md.
#
#   tools/install-cuda-toolchain.sh
#   JOBX_CUDA_TOOLCHAIN=/opt/jobx-cuda tools/install-cuda-toolchain.sh
#   PIP_ARGS="--index-url ..." tools/install-cuda-toolchain.sh
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${JOBX_CUDA_TOOLCHAIN:-$REPO/target/cuda-toolchain}"
PYTHON="${PYTHON:-python3}"
PINS=(
  "nvidia-cuda-nvrtc-cu12==12.9.86"
  "nvidia-cuda-runtime-cu12==12.9.79"
  "nvidia-cuda-nvcc-cu12==12.9.86"
  "libclang==18.1.1"
)
STAMP="$DEST/.jobx-pins"
WANT="$(printf '%s\n' "${PINS[@]}")"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  echo "cuda toolchain: up to date in $DEST"
  exit 0
fi
if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
  echo "error: $PYTHON has no pip; install Python 3 with pip (or set PYTHON=...)" >&2
  exit 1
fi
rm -rf "$DEST"
mkdir -p "$DEST"
echo "cuda toolchain: installing ${PINS[*]} into $DEST"
# --no-deps: the wheels are self-contained; --target keeps them out of any environment.
# shellcheck disable=SC2086
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps --target "$DEST" \
  ${PIP_ARGS:-} "${PINS[@]}"
for f in nvidia/cuda_nvrtc/lib/libnvrtc.so.12 nvidia/cuda_runtime/include/cuda_bf16.h \
         nvidia/cuda_nvcc/bin/ptxas clang/native/libclang.so; do
  if [[ ! -e "$DEST/$f" ]]; then
    echo "error: $DEST/$f missing after install (wheel layout changed?)" >&2
    exit 1
  fi
done
chmod +x "$DEST/nvidia/cuda_nvcc/bin/ptxas"
"$DEST/nvidia/cuda_nvcc/bin/ptxas" --version | tail -1
printf '%s\n' "${PINS[@]}" > "$STAMP"
echo "cuda toolchain: ready ($DEST)"
