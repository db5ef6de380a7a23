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
#      the CPU references, whether or not this machine has a GPU; then the op table once more on
#      the sm_90 device with the threads of each block taking turns in reverse order
#      (JOBX_EMU_ORDER=reverse: a barrier missing between two threads fails in one order), and
#      its TMA GEMM cases with the TMA loads landing as late as they may (JOBX_EMU_TMA=late: a
#      slot read before its fill fails there, as one released too early fails in the default).
#      Each run starts the test binary as parallel processes (the op table in two halves,
#      JOBX_OP_SHARD, the other tests in a third): the emulator keeps one core busy per process.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
cargo build --release --locked --all-targets
bash tools/install-cuda-toolchain.sh
cargo build --release --locked --features cuda --all-targets
# the emulated runs of step 4: device, thread order, TMA landing, tests, op cases (- for all)
emu_runs=("80 forward early all -" "90 forward early all -" "90 reverse early cuda_op_table -"
  "90 forward late cuda_op_table tma")
log=$(mktemp)
emu_logs=()  # one per run
for _ in "${emu_runs[@]}"; do emu_logs+=("$(mktemp)"); done
part_logs=()  # one per process of an emulated run
trap 'rm -f "$log" "${emu_logs[@]}" "${part_logs[@]}"' EXIT
emu_title() {
  set -- $1
  if [[ $4 == all ]]; then echo "GPU tests on the emulated sm_$1 device"
  elif [[ $3 == late ]]; then echo "the op table's TMA cases on the emulated sm_$1 device, TMA loads landing late"
  else echo "the op table on the emulated sm_$1 device, threads in $2 order"; fi
}
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
  bash tools/cuda-emu/build.sh "$emu_dir"
  status=$?
  # the test binary itself: each emulated run below starts it several times at once (the
  # emulator runs a kernel's blocks in one thread, and `cargo test` would run the processes one
  # after another): the op table in two halves (JOBX_OP_SHARD), the other tests in a third
  ops_bin=$(cargo test --release --locked --features cuda --test cuda_ops --no-run 2>&1 |
    sed -n 's/^ *Executable tests\/cuda_ops\.rs (\(.*\))$/\1/p')
  if [[ $status -eq 0 && ! -x $ops_bin ]]; then
    echo "cannot find the cuda_ops test binary (cargo test --no-run printed no Executable line)"
    status=1
  fi
  if [[ $status -eq 0 ]]; then
    emu_dir=$(cd "$emu_dir" && pwd)
    for i in "${!emu_runs[@]}"; do
      read -r sm order tma tests cases <<< "${emu_runs[$i]}"
      [[ $cases == - ]] && cases=
      echo "== $(emu_title "${emu_runs[$i]}")"
      parts=("JOBX_OP_SHARD=0/2 --exact cuda_op_table" "JOBX_OP_SHARD=1/2 --exact cuda_op_table")
      [[ $tests == all ]] && parts+=("JOBX_OP_SHARD= --skip cuda_op_table")
      pids=()
      part_logs=()
      for part in "${parts[@]}"; do
        read -r shard args <<< "$part"
        part_logs+=("$(mktemp)")
        # (word splitting of $args intended: the filter's options)
        # shellcheck disable=SC2086
        LD_LIBRARY_PATH="$emu_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" JOBX_EMU_SM=$sm \
          JOBX_EMU_ORDER=$order JOBX_EMU_TMA=$tma JOBX_OP_CASES="$cases" JOBX_REQUIRE_GPU=1 \
          env "$shard" "$ops_bin" $args > "${part_logs[-1]}" 2>&1 &
        pids+=($!)
      done
      for j in "${!pids[@]}"; do
        wait "${pids[$j]}"
        run_status=$?
        if [[ $run_status -ne 0 ]]; then status=$run_status; fi
        echo "-- ${parts[$j]}: exit $run_status"
        tee -a "${emu_logs[$i]}" < "${part_logs[$j]}"
        rm -f "${part_logs[$j]}"
      done
    done
  fi
fi
set -e
# One closing line over all test binaries (cargo prints one "test result" line per binary).
# sum_of PATTERN FILE FIELD / lines_of PATTERN FILE: 0 where nothing matches (not a pipefail exit)
sum_of() { { grep -Eo "$1" "$2" || true; } | awk -v f="$3" '{s += $f} END {print s + 0}'; }
lines_of() { { grep -Eo "$1" "$2" || true; } | wc -l; }
passed=$(sum_of 'test result: [A-Za-z]+\. [0-9]+ passed' "$log" 4)
failed=$(sum_of '[0-9]+ failed;' "$log" 1)
ignored=$(sum_of '[0-9]+ ignored;' "$log" 1)
# tests that found no GPU pass with a visible SKIP line; count them as skipped, not passed
# (anywhere in a line: parallel tests' output can put one after another test's name)
gpu_skips=$(lines_of 'SKIP [a-z_0-9]+:' "$log")
echo "tests: $((passed - gpu_skips)) passed, ${failed} failed, $((ignored + gpu_skips)) skipped (${gpu_skips} need a GPU)"
# the emulated runs (step 4): their passes are the GPU tests above, run again (the sm_80 device
# skips the sm_90-only test; none may skip on the sm_90 one)
# (counted by test name: the op table runs as two processes, each reporting it)
names_of() { { grep -Eo "^test [a-z_0-9]+ \.\.\. $1" "$2" || true; } | awk '{print $2}' | sort -u; }
for i in "${!emu_runs[@]}"; do
  failed_names=$(names_of FAILED "${emu_logs[$i]}")
  emu_failed=$(printf '%s' "$failed_names" | grep -c . || true)
  emu_passed=$(names_of ok "${emu_logs[$i]}" | { grep -vxF -e "${failed_names:-@none@}" || true; } | wc -l)
  emu_skips=$(lines_of 'SKIP [a-z_0-9]+:' "${emu_logs[$i]}")
  echo "$(emu_title "${emu_runs[$i]}"): $((emu_passed - emu_skips)) passed, ${emu_failed} failed, ${emu_skips} skipped"
done
exit "$status"
