#!/usr/bin/env bash
# Builds the emulated device (tools/cuda-emu/README.md) into OUT_DIR: libcuda.so, a
# stand-in for the NVIDIA driver whose kernels are kernels/*.cu compiled as host C++.
#   bash tools/cuda-emu/build.sh OUT_DIR
# Needs only a C++17 compiler ($CXX, else c++). The sm_90a-only files (*_sm90.cu: wgmma, TMA)
# are left out; the device reports sm_80, so the runtime never asks for their kernels.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: build.sh OUT_DIR}
mkdir -p "$out/obj"
cxx=${CXX:-c++}
flags=(-std=c++17 -O2 -fPIC -fno-strict-aliasing -DJOBX_HOST_EMU -Wall -Wno-unknown-pragmas
  -Wno-unused-function -Wno-unused-variable -Itools/cuda-emu/include -Ikernels)
inc="$out/obj/kernels.inc"
: > "$inc.tmp"
objs=()
for cu in kernels/*.cu; do
  case "$cu" in *_sm90.cu) continue ;; esac
  # every `extern "C" __global__ void ... name(jobx_*_params p)` becomes a table entry
  sed -nE 's/^extern "C" __global__ void (.*[ )])?([a-z0-9_]+)\((jobx_[a-z0-9_]+) p\).*/JOBX_EMU_KERNEL(\2, \3)/p' \
    "$cu" >> "$inc.tmp"
  o="$out/obj/$(basename "$cu" .cu).o"
  "$cxx" "${flags[@]}" -x c++ -c "$cu" -o "$o"
  objs+=("$o")
done
n_global=$(cat kernels/*.cu | grep -c '^extern "C" __global__' || true)
n_sm90=$(cat kernels/*_sm90.cu | grep -c '^extern "C" __global__' || true)
n_table=$(wc -l < "$inc.tmp")
if [[ $n_table -ne $((n_global - n_sm90)) ]]; then
  echo "cuda-emu: $n_table kernels in the table, $((n_global - n_sm90)) in kernels/*.cu (not *_sm90.cu):" \
    "a kernel signature the table's pattern does not match" >&2
  exit 1
fi
mv "$inc.tmp" "$inc"
"$cxx" "${flags[@]}" -I"$out/obj" -c tools/cuda-emu/emu.cpp -o "$out/obj/emu.o"
# Only the name cudarc tries first, libcuda.so: no libcuda.so.1 file or soname. NVRTC dlopens
# libcuda.so.1 itself (in build.rs, to compile the kernels) and crashed on finding this one.
"$cxx" -shared -Wl,-soname,libcuda.so -o "$out/libcuda.so" "$out/obj/emu.o" "${objs[@]}"
rm -f "$out/libcuda.so.1"
echo "cuda-emu: $out/libcuda.so ($n_table kernels)"
