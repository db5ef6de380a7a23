#!/usr/bin/env bash
# Builds the emulated device (tools/cuda-emu/README.md) into OUT_DIR: libcuda.so, a
# stand-in for the NVIDIA driver whose kernels are kernels/*.cu compiled as host C++.
#   bash tools/cuda-emu/build.sh OUT_DIR
# Needs only a C++17 compiler ($CXX, else c++). Every kernels/*.cu is built, the sm_90a files
# (*_sm90.cu: wgmma, TMA, mbarriers) too; the runtime loads them when JOBX_EMU_SM=90 makes the
# device an sm_90 one.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: build.sh OUT_DIR}
mkdir -p "$out/obj"
cxx=${CXX:-c++}
# (-Wno-psabi: g++'s note that 64-byte aligned parameters, the TMA GEMMs' tensor maps, pass
# differently than before GCC 4.6; every caller and callee here is built by the same compiler)
flags=(-std=c++17 -O2 -fPIC -fno-strict-aliasing -DJOBX_HOST_EMU -Wall -Wno-unknown-pragmas
  -Wno-unused-function -Wno-unused-variable -Wno-psabi -Itools/cuda-emu/include -Ikernels)
inc="$out/obj/kernels.inc"
: > "$inc.tmp"
objs=()
for cu in kernels/*.cu; do
  # every `extern "C" __global__ void [__launch_bounds__(..) | __maxnreg__(..)] name([const __grid_constant__]
  # jobx_*_params p)`, on one line or two, becomes a table entry
  tr '\n' ' ' < "$cu" |
    grep -oE 'extern "C" __global__ void ((__launch_bounds__|__maxnreg__)\([^)]*\) +)?[a-z0-9_]+\((const __grid_constant__ )?jobx_[a-z0-9_]+ p\)' |
    sed -E 's/.*[ )]([a-z0-9_]+)\((const __grid_constant__ )?(jobx_[a-z0-9_]+) p\)$/JOBX_EMU_KERNEL(\1, \3)/' \
      >> "$inc.tmp" || true
  o="$out/obj/$(basename "$cu" .cu).o"
  extra=()
  # g++ 12 warns that gemm_sm90.cu's ring index `release` can be -1 (kt = 0), where release_ok
  # is false and it is not used; the op table covers every slot of every variant
  [[ $cu == *gemm_sm90.cu ]] && extra=(-Wno-array-bounds)
  "$cxx" "${flags[@]}" "${extra[@]}" -x c++ -c "$cu" -o "$o"
  objs+=("$o")
done
n_global=$(cat kernels/*.cu | grep -c '^extern "C" __global__' || true)
n_table=$(wc -l < "$inc.tmp")
if [[ $n_table -ne $n_global ]]; then
  echo "cuda-emu: $n_table kernels in the table, $n_global in kernels/*.cu:" \
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
