#!/usr/bin/env bash
# The one script to run on a GPU machine (H100/H200, driver 580, PyTorch + transformers, no Rust,
# no internet), from the repository root after tools/gpu-bundle.sh built gpu-bundle/ on the
# development machine:
#   bash tools/gpu-check.sh OUT_DIR
# With this workplace's `device` tool: run `bash tools/gpu-bundle.sh` here first, then
#   run(command="bash tools/gpu-check.sh $OUT", carry=["gpu-bundle"], timeout_s=540)
#   (the check ends within JOBX_CHECK_BUDGET, 460 s, unpacking and the verdicts included; the
#   rest of the 540 s is margin)
#   (a rerun of a lost end-to-end step: command="JOBX_CHECK_STEPS=optin,e2e bash ..."; the
#   opt-in step takes seconds and decides which families the -optin run turns on)
# (gpu-bundle/ is git-ignored, so it must be carried explicitly).
# 1. GPU op tests against the CPU reference (JOBX_REQUIRE_GPU=1: no silent skip), with
#    JOBX_CUDA_SYNC=1 so a fault names its kernel;
# 2. kernel benchmarks (benches/cuda_kernels.rs) and the PyTorch baselines on the same card;
#    (the op tests include `verify --device cuda` on the committed T5 fixtures);
# 3. end-to-end greedy generation, FLAN-T5-Large-shaped random checkpoint, source 1024, 256 new
#    tokens, batch 1/8/32: jobx-engine --device cuda vs HF transformers bf16 (tools/gpu_bench_e2e.py),
#    plus one bf16 run per batch with JOBX_PROFILE=kernels (device time per kernel, for the record).
# Writes OUT_DIR/{gpu.txt (card, date, seconds per step),op-tests.log,kernels.jsonl,torch.jsonl,bench.err,e2e.jsonl,e2e.err,summary.json}
# and ends with tools/gpu_decide.py's verdict per opt-in family and target (added to summary.json)
# (8 files: the device tool returns at most 8).
# Time: the issue asks for under 8 minutes in all. The steps' least shares add up to ~300 s;
# below that the op tests still get up to 60 s (JOBX_T_OPS_MIN) and the later steps less.
# JOBX_CHECK_BUDGET (default 460 s, counted from
# the start) bounds the whole check: each step runs under its own cap (op tests JOBX_T_OPS 180 s,
# run 5 took 105; each opt-in family JOBX_T_EXP 40 s, normally a few seconds; kernel bench
# JOBX_T_BENCH 90 s and its PyTorch twin JOBX_T_TORCH 60 s; end to end JOBX_T_E2E 240 s) or
# less, where the budget minus the least the later steps need (opt-in 40, bench 60, e2e 190 s)
# leaves less; a step left under 10 s is skipped and says so. The end-to-end script gets the
# rest as its own budget and runs the targets' runs first (tools/gpu_bench_e2e.py), so a short
# budget costs diagnostics, not the HF comparison.
# JOBX_CHECK_STEPS (default ops,optin,bench,e2e) runs only the steps named, e.g. for a rerun
# of the one a first run lost; without optin no opt-in family is used (the defaults are), so
# name it with bench or e2e: it takes seconds.
# `gpu-check.sh --digest` prints the digest of the sources (gpu-bundle.sh stamps the bundle with
# it; the check compares it with the tree it runs in).
set -uo pipefail
# sha256 over the sources a bundle is built from (paths and contents, in a fixed order), from
# the repository root; the same on the development machine and on the GPU machine's copy of
# the tree (which has no ignored files: hence by extension, not every file)
digest() {
  (cd "$(dirname "${BASH_SOURCE[0]}")/.." && find kernels src tests benches tools build.rs Cargo.toml Cargo.lock -type f \
    \( -name '*.rs' -o -name '*.cu' -o -name '*.cuh' -o -name '*.h' -o -name '*.py' -o -name '*.sh' \
       -o -name '*.toml' -o -name '*.lock' \) -not -path '*/fixtures/*' 2>/dev/null | LC_ALL=C sort | xargs -d '\n' sha256sum \
    | sha256sum | cut -c1-16)
}
if [[ "${1:-}" == --digest ]]; then digest; exit 0; fi
OUT="${1:?usage: gpu-check.sh OUT_DIR}"
STEPS=",${JOBX_CHECK_STEPS:-ops,optin,bench,e2e},"
step() { [[ $STEPS == *",$1,"* ]]; }
for s in ${STEPS//,/ }; do
  case $s in ops|optin|bench|e2e) ;; *) echo "JOBX_CHECK_STEPS: unknown step '$s' (ops, optin, bench, e2e)" >&2; exit 2 ;; esac
done
BUDGET="${JOBX_CHECK_BUDGET:-460}"
T0=$SECONDS
# (e2e: its setup, 15-35 s, and the three batches' HF + plain + graphs runs, ~40 s each in run 5)
declare -A NEED=([ops]=0 [optin]=40 [bench]=60 [e2e]=190)
# the least the steps after $1 (those named in JOBX_CHECK_STEPS) need, plus 5 s for the verdicts
after() {
  local s=5 seen=0 x
  for x in ops optin bench e2e; do
    if (( seen )) && step "$x"; then s=$(( s + ${NEED[$x]} )); fi
    [[ $x == "$1" ]] && seen=1
  done
  echo "$s"
}
# seconds a command may take: its cap $1, or what the budget leaves after reserving $2 s (at
# least 1: `timeout 0` would mean no limit; callers skip a step left under 10 s). Every
# `timeout` has `-k 5`: a process that outlives SIGTERM (stuck in the driver) is killed 5 s on.
allow() {
  local l=$(( BUDGET - (SECONDS - T0) - $2 ))
  (( l < 1 )) && l=1
  (( l < $1 )) && echo "$l" || echo "$1"
}
# each step's seconds into gpu.txt (where the 8 minutes go, for the next budget)
t_last=$SECONDS
mark() { step "$1" && echo "step $1: $(( SECONDS - t_last )) s" >> "$OUT/gpu.txt"; t_last=$SECONDS; }
spent() { echo "skipped: the check's budget (JOBX_CHECK_BUDGET=$BUDGET s) leaves too little after $(( SECONDS - T0 )) s"; }
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
B="${JOBX_GPU_BUNDLE:-$HERE/../gpu-bundle}"
[[ -e "$B/cuda_ops.gz" || -x "$B/cuda_ops" ]] || B="$HERE"   # running from inside the bundle
mkdir -p "$OUT"
# gpu-bundle.sh gzips the binaries (size limit of the transfer): unpack them next to a copy of
# the rest of the bundle
if [[ -e "$B/cuda_ops.gz" ]]; then
  U="${TMPDIR:-/tmp}/jobx-gpu-bundle"
  rm -rf "$U" && mkdir -p "$U" && cp -r "$B"/. "$U"/
  for f in "$U"/*.gz; do gunzip "$f" && chmod +x "${f%.gz}"; done
  B="$U"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
date -u +%FT%TZ >> "$OUT/gpu.txt"
# the bundle's sources against this tree's (when the check runs from a repository checkout)
if [[ -e "$B/stamp.txt" ]]; then
  sed 's/^/bundle: /' "$B/stamp.txt" >> "$OUT/gpu.txt"
  if [[ -d "$HERE/../src" ]] && here=$(digest) && ! grep -q "^sources $here\$" "$B/stamp.txt"; then
    echo "WARNING: gpu-bundle/ was built from other sources than this tree ($here): rebuild it (tools/gpu-bundle.sh)" \
      | tee -a "$OUT/gpu.txt"
  fi
fi
echo "unpacked: $(( SECONDS - T0 )) s" >> "$OUT/gpu.txt"; t_last=$SECONDS

ops_rc=skipped; bench_rc=skipped; torch_rc=skipped; e2e_rc=skipped
# (without the opt-in step: the kernel bench leaves out the kernels that are not the default;
# fa2, wg, split-k, PDL and the int8 widening are, since the H100 runs of 2026-11-28)
bench_skip="persistent,q8decode,ws,rms,online"
optin=""

t_ops=$(allow "${JOBX_T_OPS:-180}" "$(after ops)")
# correctness first: where the later steps' least shares would leave the op tests under
# JOBX_T_OPS_MIN (60 s; they took 23-28 s on an H100), the op tests get that much if the budget
# has it, and the later steps make do with less (a 265 s budget skipped them, 2026-11-28)
if (( t_ops < ${JOBX_T_OPS_MIN:-60} )); then t_ops=$(allow "${JOBX_T_OPS_MIN:-60}" 5); fi
if step ops && (( t_ops < 10 )); then
  ops_rc="budget"; echo "== op tests $(spent)"
elif step ops; then
echo "== op tests"
# The opt-in kernels (the persistent GEMMs "n256p"; the int8 decode attention of
# --cross-kv int8, "attention q8"; the warp-specialised prefill attention "kernel Ws", with its
# traced twin "ws trace"; the decode GEMMs with the RMS norm fused in, "gemm rms", and their
# model test cuda_gemm_rms; the one-pass decode attention "kernel Online", with its model test
# cuda_decode_online) are left out of this run and checked one family at a time
# below, so that a fault or hang in one cannot take the established table down. fa2, wg,
# split-k, PDL and the int8 widening for the wgmma tiles passed every H100 run of 2026-11-28
# and are the default: their cases run here too (and again as their families below, which
# say per family whether it still passes).
EXPERIMENTAL="n256p,attention q8,kernel Ws,ws trace,gemm rms,kernel Online"
JOBX_OP_SKIP="$EXPERIMENTAL" JOBX_FIXTURES="$B/fixtures" JOBX_REQUIRE_GPU=1 JOBX_CUDA_SYNC=1 JOBX_CUDA_POISON=1 timeout -k 5 "$t_ops" "$B/cuda_ops" --nocapture --test-threads 1 \
  --skip cuda_pdl --skip cuda_gemm_rms --skip cuda_decode_online > "$OUT/op-tests.log" 2>&1
ops_rc=$?
grep -E "^  [a-z]|FAIL|cuda_|: ok|test result" "$OUT/op-tests.log" | grep -v '^  {' | tail -80
fi
mark ops

if step optin; then
# each family's op cases alone (appended to the same log: the device tool returns 8 files);
# the kernel benchmarks then time only the families that passed
texp() { allow "${JOBX_T_EXP:-40}" "$(after optin)"; }
# one command of a family under what the budget leaves of its cap (JOBX_T_EXP): rc = its exit
# status, or "budget" where the budget, not the cap, stopped it or left under 10 s to start it
# (a family cut short is not a failed one: it gets no "exit N" line, gpu_decide says "not run")
run_exp() {
  local te
  te=$(texp)
  if (( te < 10 )); then rc=budget; return; fi
  timeout -k 5 "$te" env "$@"
  rc=$?
  # (124: timeout's SIGTERM; 137: its SIGKILL 5 s later, for a process that ignored it)
  if [[ $rc == 124 || $rc == 137 ]] && (( te < ${JOBX_T_EXP:-40} )); then rc=budget; fi
}
bench_skip=""
# dequant first: every int8 GEMM case with the widening on (the default path), the persistent
# kernels' ones left to their own family. If it fails, the widening is turned off for the
# rest of the check (JOBX_GEMM_DEQUANT=0: the later families, the benchmarks and the end-to-end
# runs take the mma.sync tiles) and the other families leave out its cases.
widen_skip=""
for fam in "dequant:int8 widened,int8w true" "fa2:kernel Fa2" "wg:kernel Wg" "ws:kernel Ws,ws trace" "persistent:n256p" "splitk:SkinnyTcSplit" "rms:gemm rms" "online:kernel Online" "q8decode:attention q8" "pdl:-"; do
  key="${fam%%:*}"; cases="${fam#*:}"
  echo "== op cases of opt-in kernels: $key ($cases)" | tee -a "$OUT/op-tests.log"
  if [[ $key == pdl ]]; then
    # programmatic dependent launch is a way of launching every kernel, not a kernel: its test
    # (bit-identical decode steps, plain and replayed), verify on the fixtures with it on, and
    # the decode GEMMs' op cases with it on (their weight prefetch; the split kernel's only if
    # its own family passed); on a card without the sm_90 kernels it does not exist (SKIP: the
    # family counts as failed, so no run claims it)
    # (the split kernel takes part only if its own family passed: tuning times candidates
    # without checking their output, so a faulty one would fail this family in its place)
    split_skip=""; split_on=1
    if [[ ",$bench_skip," == *",splitk,"* ]]; then split_skip="SkinnyTcSplit"; split_on=0; fi
    pdl_log="${TMPDIR:-/tmp}/jobx-pdl-test.log"
    : > "$pdl_log"
    run_exp JOBX_FIXTURES="$B/fixtures" JOBX_REQUIRE_GPU=1 \
      "$B/cuda_ops" cuda_pdl --nocapture --test-threads 1 > "$pdl_log" 2>&1
    cat "$pdl_log" >> "$OUT/op-tests.log"
    # (libtest prints "test NAME ... " before the test's own stderr, on the same line)
    if [[ $rc == 0 ]] && grep -q "SKIP cuda_pdl" "$pdl_log"; then rc=3; fi
    if [[ $rc == 0 ]]; then
      run_exp JOBX_PDL=1 JOBX_FIXTURES="$B/fixtures" JOBX_REQUIRE_GPU=1 \
        "$B/cuda_ops" cuda_verify_fixtures --nocapture --test-threads 1 >> "$OUT/op-tests.log" 2>&1
    fi
    if [[ $rc == 0 ]]; then
      run_exp JOBX_PDL=1 JOBX_GEMM_SPLITK=$split_on JOBX_OP_CASES="Skinny,skinny,recorded step,rms_norm" \
        JOBX_OP_SKIP="gemm rms,kernel Online${split_skip:+,$split_skip}${widen_skip:+,$widen_skip}" JOBX_REQUIRE_GPU=1 \
        "$B/cuda_ops" cuda_op_table --nocapture --test-threads 1 >> "$OUT/op-tests.log" 2>&1
    fi
  else
    fam_skip="$widen_skip"
    # (dequant: neither the persistent kernels nor the split one, each a family of its own;
    # no family but rms takes the fused-norm cases, whose names hold "int8w true" and
    # "SkinnyTcSplit" too; rms leaves out the split kernel's cases if its family failed)
    [[ $key == dequant ]] && fam_skip="n256p,SkinnyTcSplit"
    # (the int8 K/V cases of the one-pass decode kernel are online's, not q8decode's)
    [[ $key == q8decode ]] && fam_skip="${fam_skip:+$fam_skip,}kernel Online"
    if [[ $key != rms ]]; then
      fam_skip="${fam_skip:+$fam_skip,}gemm rms"
    elif [[ ",$bench_skip," == *",splitk,"* ]]; then
      fam_skip="${fam_skip:+$fam_skip,}SkinnyTcSplit"
    fi
    run_exp JOBX_OP_CASES="$cases" JOBX_OP_SKIP="$fam_skip" JOBX_REQUIRE_GPU=1 JOBX_CUDA_SYNC=1 JOBX_CUDA_POISON=1 \
      "$B/cuda_ops" cuda_op_table --nocapture --test-threads 1 >> "$OUT/op-tests.log" 2>&1
    # rms: also the decode steps of every fixture, bit for bit with and without the fusion
    if [[ $key == rms && $rc == 0 ]]; then
      run_exp JOBX_FIXTURES="$B/fixtures" JOBX_REQUIRE_GPU=1 \
        "$B/cuda_ops" cuda_gemm_rms --nocapture --test-threads 1 >> "$OUT/op-tests.log" 2>&1
    fi
    # online: also its model test, the decode steps of fixtures widened to head dims 64 and
    # 128 against the two-pass kernel and the CPU graph (`verify` on the fixtures would not
    # reach it: their 4-16 wide heads take the general kernel)
    if [[ $key == online && $rc == 0 ]]; then
      run_exp JOBX_FIXTURES="$B/fixtures" JOBX_REQUIRE_GPU=1 \
        "$B/cuda_ops" cuda_decode_online --nocapture --test-threads 1 >> "$OUT/op-tests.log" 2>&1
    fi
  fi
  if [[ $rc != 0 && $key == dequant ]]; then
    export JOBX_GEMM_DEQUANT=0; widen_skip="int8 widened"
  fi
  if [[ $rc == budget ]]; then
    echo "opt-in $key: $(spent)" | tee -a "$OUT/op-tests.log"
    bench_skip="$bench_skip,$key"
    continue
  fi
  echo "opt-in $key: exit $rc" | tee -a "$OUT/op-tests.log"
  # fa2, wg, split-k and PDL are the default since the H100 run of 2026-11-28: a pass adds
  # nothing to the -optin run (JOBX_PDL=1 there only asks gpu_bench_e2e for its -no-pdl
  # baseline), a failure turns the family off for the rest of the check
  if [[ $rc -eq 0 ]]; then
    case $key in
      persistent) optin="$optin,JOBX_GEMM_PERSISTENT=1" ;;
      ws) optin="$optin,JOBX_FLASH_WS=1" ;;
      rms) optin="$optin,JOBX_GEMM_RMS=1" ;;
      online) optin="$optin,JOBX_DECODE_ONLINE=1" ;;
      pdl) optin="$optin,JOBX_PDL=1" ;;
    esac
  else
    bench_skip="$bench_skip,$key"
    case $key in
      fa2) export JOBX_FLASH_FA2=0 ;;
      wg) export JOBX_FLASH_WG=0 ;;
      splitk) export JOBX_GEMM_SPLITK=0 ;;
      pdl) export JOBX_PDL=0 ;;
    esac
  fi
done
grep -E "^FAIL" "$OUT/op-tests.log" | tail -20
fi
mark optin

# (the PyTorch twin keeps 15 s of the budget)
t_bench=$(allow "${JOBX_T_BENCH:-90}" $(( 15 + $(after bench) )))
if step bench && (( t_bench < 10 )); then
  bench_rc="budget"; torch_rc="budget"; echo "== kernel benchmarks $(spent)"
elif step bench; then
echo "== kernel benchmarks"
JOBX_REQUIRE_GPU=1 JOBX_BENCH_SKIP="$bench_skip" timeout -k 5 "$t_bench" \
  "$B/cuda_kernels" > "$OUT/kernels.jsonl" 2> "$OUT/bench.err"
bench_rc=$?
# (unbuffered: lines printed before a timeout's SIGTERM are kept)
PYTHONUNBUFFERED=1 timeout -k 5 "$(allow "${JOBX_T_TORCH:-60}" "$(after bench)")" python3 "$B/gpu_bench_torch.py" > "$OUT/torch.jsonl" 2>> "$OUT/bench.err"
torch_rc=$?
python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
def load(n):
    p = os.path.join(out, n)
    rows = []
    for l in open(p) if os.path.exists(p) else []:
        try:  # (a line cut short by a timeout is left out, not the table)
            rows.append(json.loads(l)) if l.startswith("{") else None
        except ValueError:
            pass
    return rows
ours, torch = load("kernels.jsonl"), load("torch.jsonl")
rows = []
def find(op, **kw):
    for r in torch:
        if r["op"] == op and all(r.get(k) == v for k, v in kw.items()):
            return r
print(f"{'op':<24}{'shape':<26}{'ours ms':>10}{'torch ms':>10}{'ours/torch speed':>18}")
for r in ours:
    # (gemm_trace rows: per-block phases; decode_chain rows: no torch twin; both below)
    if "ms" not in r or r["op"] == "decode_chain":
        continue
    if r["op"].startswith("gemm"):
        shape = dict(m=r["m"], n=r["n"], k=r["k"])
        t = find("torch_int_mm" if r["op"].startswith("gemm_w8a8") else "torch_matmul_bf16", **shape)
    elif r["op"] in ("rms_norm", "gated_gelu"):
        # (the HF form: what transformers runs; torch_rms_norm, the fused one, is in torch.jsonl)
        shape = dict(rows=r["rows"], d=r["d"])
        t = find("torch_rms_norm_hf" if r["op"] == "rms_norm" else "torch_gated_gelu", **shape)
    else:
        shape = dict(batch=r["batch"], heads=r["heads"], tq=r["tq"], t=r["t"], dk=r["dk"])
        t = find("torch_sdpa", **shape)
    tm = t.get("ms") if t else None
    ratio = (tm / r["ms"]) if tm else None
    rows.append(dict(op=r["op"], shape=shape, ours_ms=r["ms"], torch_ms=tm, speed_vs_torch=ratio))
    print(f"{r['op']:<24}{str(list(shape.values())):<26}{r['ms']:>10.3f}{(tm or float('nan')):>10.3f}{(ratio or float('nan')):>18.2f}")
# the issue's GEMM targets per large product: bf16 >= 0.8 of torch.matmul, W8A8 >= 1.6x our
# bf16 (the defaults, and the best variant timed of each)
targets = []
print(f"{'targets (m > 32)':<26}{'bf16/torch':>12}{'best':>8}{'w8a8/bf16':>11}{'best':>8}")
for shape in sorted({(r["m"], r["n"], r["k"]) for r in ours if "m" in r and r["m"] > 32}):
    at = [r for r in ours if (r.get("m"), r.get("n"), r.get("k")) == shape]
    ms = lambda pre: {r["op"]: r["ms"] for r in at if r["op"] == pre or r["op"].startswith(pre + "_tma")
                      or r["op"] == pre + "_mma"}
    bf, w8 = ms("gemm_bf16"), ms("gemm_w8a8")
    tb = find("torch_matmul_bf16", m=shape[0], n=shape[1], k=shape[2])
    if not bf or not w8 or "gemm_bf16" not in bf or "gemm_w8a8" not in w8:
        continue
    t = dict(shape=list(shape), bf16_vs_torch=tb["ms"] / bf["gemm_bf16"] if tb and "ms" in tb else None,
             best_bf16=min(bf, key=bf.get), best_w8a8=min(w8, key=w8.get),
             w8a8_vs_bf16=bf["gemm_bf16"] / w8["gemm_w8a8"], best_w8a8_vs_best_bf16=min(bf.values()) / min(w8.values()))
    t["best_bf16_vs_torch"] = tb["ms"] / min(bf.values()) if tb and "ms" in tb else None
    targets.append(t)
    f = lambda v: f"{v:>8.2f}" if v is not None else f"{'-':>8}"
    print(f"{str(list(shape)):<26}{f(t['bf16_vs_torch']):>12}{f(t['best_bf16_vs_torch'])}{f(t['w8a8_vs_bf16']):>11}"
          f"{f(t['best_w8a8_vs_best_bf16'])}  ({t['best_bf16']}, {t['best_w8a8']})")
chain = [r for r in ours if r["op"] == "decode_chain"]
if chain:
    print(f"{'decode chain (no attention)':<30}{'graph':>7}{'pdl':>6}{'ms':>9}{'us/kernel':>11}")
    for r in chain:
        print(f"{r['kernels']:>4} kernels, {r['rows']} rows{'':<13}{str(r['graph']):>7}{str(r['pdl']):>6}{r['ms']:>9.3f}{r['us_per_kernel']:>11.2f}")
json.dump(dict(kernels=rows, gemm_targets=targets, decode_chain=chain), open(os.path.join(out, "summary.json"), "w"), indent=1)
PY
fi
mark bench

# the script's own budget ends 10 s before the hard limit: it starts no run it cannot finish
te=$(allow "${JOBX_T_E2E:-240}" 5)
if step e2e && (( te < 30 )); then
  e2e_rc="budget"; echo "== end to end $(spent)"
elif step e2e; then
echo "== end to end (T5-Large shape, src 1024, 256 new, greedy)"
echo "(${te} s: the script's own budget $(( te - 10 )) s)"
PYTHONUNBUFFERED=1 timeout -k 5 "$te" python3 "$B/gpu_bench_e2e.py" --jobx "$B/jobx-engine" --budget $(( te - 10 )) \
  --workdir "${TMPDIR:-/tmp}/jobx-t5-large" --optin "$optin" ${JOBX_E2E_ARGS:-} 2> "$OUT/e2e.err" | tee "$OUT/e2e.jsonl"
e2e_rc=${PIPESTATUS[0]}
tail -5 "$OUT/e2e.err"
fi
mark e2e
echo "== decisions (docs/PERFORMANCE.md's rule; also in summary.json)"
python3 "$B/gpu_decide.py" "$OUT" || true
echo "total: $(( SECONDS - T0 )) s of the ${BUDGET} s budget" >> "$OUT/gpu.txt"
echo "exit codes: op tests $ops_rc, kernel bench $bench_rc, torch bench $torch_rc, e2e $e2e_rc; $(( SECONDS - T0 )) s of the ${BUDGET} s budget"
[[ $ops_rc == 0 || $ops_rc == skipped ]]
