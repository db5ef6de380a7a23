#!/usr/bin/env bash
# The test command (README, .ci/run): builds everything in release mode and runs every test.
# Needs a Rust toolchain, crates.io and PyPI (the pinned CUDA compile toolchain: NVIDIA's NVRTC,
# headers and ptxas wheels, no GPU); fixtures are committed, ../shared is read when present.
#   1. the CPU-only build (default features), every target;
#   2. the CUDA build: every kernels/*.cu compiled to PTX and sm_80/sm_90 cubin, ptxas's resource
#      report printed, a spilling kernel fails the build;
#   3. every test, on the CUDA build (GPU tests print SKIP without a GPU, fail with
#      JOBX_REQUIRE_GPU=1), then the model checks again with JOBX_NO_AVX512=1;
#   4. the GPU tests again on the emulated device (tools/cuda-emu: kernels/*.cu compiled as host
#      C++ behind a stand-in libcuda.so), with JOBX_REQUIRE_GPU=1, once as an sm_80 device and
#      once as an sm_90 one (JOBX_EMU_SM=90: the wgmma/TMA kernels, PDL): every kernel against
#      the CPU references, whether or not this machine has a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
cargo build --release --locked --all-targets
bash tools/install-cuda-toolchain.sh
cargo build --release --locked --features cuda --all-targets
log=$(mktemp)
emu_log=$(mktemp)
emu80_log=$(mktemp)
emu90_log=$(mktemp)
trap 'rm -f "$log" "$emu_log" "$emu80_log" "$emu90_log"' EXIT
set +e
cargo test --release --locked --features cuda 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# the same model checks on the paths for CPUs without AVX-512 (gemm crate, SIMD dot, AVX2 exp),
# which this machine would otherwise never take
if [[ $status -eq 0 ]]; then
  JOBX_NO_AVX512=1 cargo test --release --locked --features cuda \
    --test reference_fixtures --test cpu_weights --test mistral_pipeline 2>&1 | tee -a "$log"
  status=${PIPESTATUS[0]}
fi
if [[ $status -eq 0 ]]; then
  emu_dir="${CARGO_TARGET_DIR:-target}/cuda-emu"
  bash tools/cuda-emu/build.sh "$emu_dir" 2>&1 | tee -a "$emu_log"
  status=${PIPESTATUS[0]}
  if [[ $status -eq 0 ]]; then
    emu_dir=$(cd "$emu_dir" && pwd)
    for sm in 80 90; do
      sm_log=$emu80_log
      [[ $sm == 90 ]] && sm_log=$emu90_log
      echo "== GPU tests on the emulated sm_$sm device" | tee -a "$emu_log"
      LD_LIBRARY_PATH="$emu_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" JOBX_EMU_SM=$sm JOBX_REQUIRE_GPU=1 \
        cargo test --release --locked --features cuda --test cuda_ops 2>&1 | tee "$sm_log"
      sm_status=${PIPESTATUS[0]}
      cat "$sm_log" >> "$emu_log"
      [[ $sm_status -ne 0 ]] && status=$sm_status
    done
  fi
fi
set -e
# One closing line over all test binaries (cargo prints one "test result" line per binary).
passed=$(grep -Eo 'test result: [A-Za-z]+\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s += $1} END {print s + 0}')
ignored=$(grep -Eo '[0-9]+ ignored;' "$log" | awk '{s += $1} END {print s + 0}')
# tests that found no GPU pass with a visible SKIP line; count them as skipped, not passed
# (anywhere in a line: parallel tests' output can put one after another test's name)
gpu_skips=$(grep -Eo 'SKIP [a-z_0-9]+:' "$log" | wc -l)
echo "tests: $((passed - gpu_skips)) passed, ${failed} failed, $((ignored + gpu_skips)) skipped (${gpu_skips} need a GPU)"
# the emulated devices' runs (step 4): their passes are the GPU tests above, run again (the sm_80
# device skips the sm_90-only test; none may skip on the sm_90 one)
for sm in 80 90; do
  sm_log=$emu80_log
  [[ $sm == 90 ]] && sm_log=$emu90_log
  emu_passed=$(grep -Eo 'test result: [A-Za-z]+\. [0-9]+ passed' "$sm_log" | awk '{s += $4} END {print s + 0}')
  emu_failed=$(grep -Eo '[0-9]+ failed;' "$sm_log" | awk '{s += $1} END {print s + 0}')
  emu_skips=$(grep -Eo 'SKIP [a-z_0-9]+:' "$sm_log" | wc -l)
  echo "GPU tests on the emulated sm_$sm device: $((emu_passed - emu_skips)) passed, ${emu_failed} failed, ${emu_skips} skipped"
done
exit "$status"
