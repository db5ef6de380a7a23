//! tools/gpu_decide.py, which reads a tools/gpu-check.sh output folder on the GPU machine and
//! applies docs/PERFORMANCE.md's decision rule per opt-in kernel family: run here on a
//! synthetic folder (every family in a different state), since a wrong verdict would make a
//! rare GPU session adopt a kernel that lost or failed, or drop one that won.
mod common;
use serde_json::{json, Value};
use std::io::Write;

fn lines(path: &std::path::Path, rows: &[Value]) {
    let mut f = std::fs::File::create(path).unwrap();
    for r in rows {
        writeln!(f, "{r}").unwrap();
    }
}

/// python3 with `args`, which must succeed: its stdout.
fn python(args: &[&std::ffi::OsStr]) -> Vec<u8> {
    let out = std::process::Command::new("python3")
        .args(args)
        .output()
        .expect("python3 (the CUDA toolchain install needs it too)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs tools/gpu_decide.py on the folder `d`: the "decisions" it added to summary.json.
fn decide(d: &std::path::Path) -> Value {
    python(&[
        common::repo().join("tools/gpu_decide.py").as_os_str(),
        d.as_os_str(),
    ]);
    let s: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("summary.json")).unwrap()).unwrap();
    s["decisions"].clone()
}

#[test]
fn gpu_decide_applies_the_decision_rule() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("op-tests.log"),
        "test cuda_op_table ... cuda_op_table: 600 cases x 2 seeds, 0 failures\nok\n\
         opt-in dequant: exit 0\nopt-in fa2: exit 0\nopt-in wg: exit 0\nopt-in ws: exit 0\n\
         opt-in rms: exit 0\nopt-in online: exit 0\nopt-in persistent: exit 0\nopt-in splitk: exit 0\n\
         opt-in q8decode: exit 101\n\
         opt-in pdl: exit 0\n",
    )
    .unwrap();
    let enc = json!({"batch": 8, "heads": 16, "tq": 1024, "t": 1024, "dk": 64});
    let dec32 = json!({"batch": 32, "heads": 16, "tq": 1, "t": 1024, "dk": 64});
    let dec8 = json!({"batch": 8, "heads": 16, "tq": 1, "t": 1024, "dk": 64});
    let causal = json!({"batch": 1, "heads": 32, "tq": 4096, "t": 4096, "dk": 128});
    let with = |shape: &Value, op: &str, ms: f64| {
        let mut v = shape.clone();
        v["op"] = json!(op);
        v["ms"] = json!(ms);
        v
    };
    let gemm = |op: &str, m: usize, n: usize, k: usize, ms: f64| json!({"op": op, "m": m, "n": n, "k": k, "ms": ms});
    lines(
        &d.join("kernels.jsonl"),
        &[
            // wg beats the mma.sync kernel at both prefill shapes; fa2 loses at one (the default
            // row is wg's own time since it became the default: not the baseline)
            with(&enc, "attention", 0.25),
            with(&causal, "attention", 0.40),
            with(&enc, "attention_mma", 0.424),
            with(&causal, "attention_mma", 0.934),
            with(&enc, "attention_wg", 0.25),
            with(&causal, "attention_wg", 0.40),
            with(&enc, "attention_fa2", 0.30),
            with(&causal, "attention_fa2", 1.10),
            // ws (opt-in) beats the default at the causal shape only: it stays opt-in
            with(&enc, "attention_ws", 0.26),
            with(&causal, "attention_ws", 0.30),
            // the one-pass decode attention (opt-in) beats the two-pass default at both decode
            // shapes: make it the default (the forced chunk counts are for the record)
            with(&dec32, "attention", 0.060),
            with(&dec32, "attention_online", 0.045),
            with(&dec32, "attention_splits1", 0.060),
            with(&dec32, "attention_online_splits1", 0.045),
            with(&dec8, "attention", 0.020),
            with(&dec8, "attention_online", 0.019),
            json!({"op": "attention_trace", "kernel": "attention_ws_d128", "batch": 1, "heads": 32,
                   "tq": 4096, "t": 4096, "dk": 128, "cyc_per_step": 3000.0, "kv_wait_cyc": 100.0}),
            // the persistent bf16 GEMM wins, the int8 one loses: not faster everywhere
            gemm("gemm_bf16", 4096, 4096, 4096, 0.194),
            gemm("gemm_w8a8", 4096, 4096, 4096, 0.134),
            gemm("gemm_bf16_tma_n256_p", 4096, 4096, 4096, 0.180),
            gemm("gemm_w8a8_tma_n256_p", 4096, 4096, 4096, 0.140),
            // split-k wins at one decode shape of two: a candidate where it wins
            gemm("gemm_bf16_skinny_tc", 32, 1024, 1024, 0.011),
            gemm("gemm_bf16_skinny_tc_split", 32, 1024, 1024, 0.006),
            gemm("gemm_bf16_skinny_tc", 32, 5632, 1024, 0.013),
            gemm("gemm_bf16_skinny_tc_split", 32, 5632, 1024, 0.015),
            // weight-only int8: the widened default loses to the mma.sync tiles at 256 rows
            gemm("gemm_int8_weight_only", 256, 1024, 1024, 0.012),
            gemm("gemm_int8_weight_only_mma", 256, 1024, 1024, 0.010),
            gemm("gemm_int8_weight_only", 8192, 1024, 1024, 0.040),
            gemm("gemm_int8_weight_only_mma", 8192, 1024, 1024, 0.196),
            json!({"op": "decode_chain", "graph": true, "pdl": false, "us_per_kernel": 5.0, "ms": 1.2}),
            json!({"op": "decode_chain", "graph": true, "pdl": true, "us_per_kernel": 4.0, "ms": 1.0}),
            // the norms fused (rms): a faster step as a graph under PDL, fewer kernels each
            // slower (its row must not stand in for PDL's own)
            json!({"op": "decode_chain", "graph": true, "pdl": true, "rms": true, "kernels": 169,
                   "us_per_kernel": 5.5, "ms": 0.93}),
        ],
    );
    lines(
        &d.join("torch.jsonl"),
        &[
            with(&enc, "torch_sdpa", 0.197),
            with(&causal, "torch_sdpa", 0.292),
        ],
    );
    lines(
        &d.join("e2e.jsonl"),
        &[
            json!({"engine": "hf-bf16", "batch": 32, "seconds": 9.0, "seconds_runs": [9.5, 9.0]}),
            json!({"engine": "jobx-cuda-bf16", "batch": 32, "seconds": 1.1}),
            json!({"engine": "jobx-cuda-bf16-graphs", "batch": 32, "seconds": 0.9}),
            json!({"engine": "jobx-cuda-bf16-graphs-no-pdl", "batch": 32, "seconds": 1.0}),
            json!({"engine": "jobx-cuda-bf16-kernel-profile", "batch": 32, "seconds": 0.5}),
            // int8 K/V or weights: never the "fastest" configuration against HF's bf16
            json!({"engine": "jobx-cuda-bf16-cross-kv-int8", "batch": 32, "seconds": 0.45}),
            json!({"engine": "jobx-cuda-int8", "batch": 32, "seconds": 0.4}),
            json!({"engine": "jobx-cuda-int8-no-widen", "batch": 32, "seconds": 0.6}),
            json!({"engine": "jobx-cuda-bf16-graphs", "batch": 8, "error": "timed out"}),
        ],
    );
    let dec = &decide(d);
    let v = |f: &str| dec[f]["verdict"].as_str().unwrap().to_string();
    // (fa2, wg, split-k and PDL are the default since 2026-11-28: keep them so, or not)
    assert!(v("wg").contains("keep it the default"), "{}", v("wg"));
    assert!(v("ws").contains("stays opt-in"), "{}", v("ws"));
    assert!(v("rms").contains("make it the default"), "{}", v("rms"));
    assert!(
        v("online").contains("make it the default"),
        "{}",
        v("online")
    );
    assert!(
        v("fa2").contains("turn it off by default again"),
        "{}",
        v("fa2")
    );
    assert!(
        v("persistent").contains("stays opt-in"),
        "{}",
        v("persistent")
    );
    assert!(
        v("splitk").contains("keep it the default"),
        "{}",
        v("splitk")
    );
    assert!(
        v("q8decode").contains("op cases failed"),
        "{}",
        v("q8decode")
    );
    assert!(v("pdl").contains("keep it the default"), "{}", v("pdl"));
    assert!(
        v("dequant").contains("raise DEQUANT_MIN_M") && v("dequant").contains("[256]"),
        "{}",
        v("dequant")
    );
    assert!(
        dec["dequant"]["note"]
            .as_str()
            .unwrap()
            .contains("0.600 s without the widening -> 0.400 s"),
        "{}",
        dec["dequant"]
    );
    // against HF's fastest run; the kernel-profile run (events around every launch) and the
    // int8 runs never count, and a row with an error instead of seconds is left out
    let e = &dec["e2e"]["32"];
    assert!((e["speedup_default"].as_f64().unwrap() - 10.0).abs() < 1e-9);
    assert_eq!(e["fastest_engine"], "jobx-cuda-bf16-graphs");
    assert!((e["speedup_fastest"].as_f64().unwrap() - 10.0).abs() < 1e-9);
    // its family not run: not verified, whatever the times; failed: turn it off
    let log = std::fs::read_to_string(d.join("op-tests.log")).unwrap();
    std::fs::write(
        d.join("op-tests.log"),
        log.replace("opt-in dequant: exit 0\n", ""),
    )
    .unwrap();
    let v = decide(d)["dequant"]["verdict"].clone();
    assert!(v.as_str().unwrap().contains("not verified"), "{v}");
    std::fs::write(
        d.join("op-tests.log"),
        log.replace("opt-in dequant: exit 0", "opt-in dequant: exit 101"),
    )
    .unwrap();
    let dec = decide(d);
    let v = dec["dequant"]["verdict"].as_str().unwrap();
    assert!(v.contains("op cases failed (exit 101)"), "{v}");
    // PDL: the decode chain decides; end to end it may be up to 3% slower (noise), not more
    let pdl_with = |graphs: f64| {
        lines(
            &d.join("e2e.jsonl"),
            &[
                json!({"engine": "jobx-cuda-bf16-graphs", "batch": 32, "seconds": graphs}),
                json!({"engine": "jobx-cuda-bf16-graphs-no-pdl", "batch": 32, "seconds": 1.0}),
            ],
        );
        decide(d)["pdl"]["verdict"].as_str().unwrap().to_string()
    };
    let v = pdl_with(1.02);
    assert!(v.contains("keep it the default"), "{v}");
    let v = pdl_with(1.1);
    assert!(v.contains("turn it off by default again"), "{v}");
    // rms: a slower step with the norms fused stays opt-in; no fused row, not timed
    let rms_with = |rows: &[Value]| {
        lines(&d.join("kernels.jsonl"), rows);
        decide(d)["rms"]["verdict"].as_str().unwrap().to_string()
    };
    let base = json!({"op": "decode_chain", "graph": true, "pdl": true, "kernels": 241, "us_per_kernel": 4.0, "ms": 1.0});
    let fused = json!({"op": "decode_chain", "graph": true, "pdl": true, "rms": true, "kernels": 169,
                       "us_per_kernel": 6.2, "ms": 1.05});
    let v = rms_with(&[base.clone(), fused]);
    assert!(v.contains("stays opt-in"), "{v}");
    let v = rms_with(&[base]);
    assert!(v.contains("passed, not timed"), "{v}");
    // a fused row whose baseline (the same PDL setting) is missing: not a measurement
    let other =
        json!({"op": "decode_chain", "graph": true, "pdl": false, "kernels": 241, "ms": 1.2});
    let fused = json!({"op": "decode_chain", "graph": true, "pdl": true, "rms": true, "kernels": 169,
                       "ms": 1.05});
    let v = rms_with(&[other, fused]);
    assert!(v.contains("passed, not timed"), "{v}");
    // online: slower at one decode shape of two stays opt-in; without its rows, not timed
    let online_with = |rows: &[Value]| {
        lines(&d.join("kernels.jsonl"), rows);
        decide(d)["online"]["verdict"].as_str().unwrap().to_string()
    };
    let v = online_with(&[
        with(&dec32, "attention", 0.060),
        with(&dec32, "attention_online", 0.045),
        with(&dec8, "attention", 0.020),
        with(&dec8, "attention_online", 0.021),
    ]);
    assert!(v.contains("stays opt-in"), "{v}");
    let v = online_with(&[with(&dec32, "attention", 0.060)]);
    assert!(v.contains("passed, not timed"), "{v}");
}

/// Runs tools/gpu_bench_e2e.py's plan under a time budget with fake engines and a fake clock
/// (`setup` seconds pass after the budget starts, as the real script builds its checkpoint and
/// loads HF; then HF takes 30 s, a jobx run 5 s; weight-only int8 runs fail): the rows it
/// printed, in order. Also the fake clock's time when the last run ended.
/// The jobx run named `hang` ("engine@batch") times out after its whole timeout instead; an HF
/// run so named raises.
fn e2e_rows(budget: &str, setup: f64, optin: &str, hang: &str) -> (Vec<Value>, f64) {
    let script = format!(
        r#"
import json, sys
sys.path.insert(0, {tools:?})
import gpu_bench_e2e as g
rows, now = [], [0.0]
class Ctx:
    new, timeout, beam = 256, 90, (8, 4, 128)
    def hf(self, b, beam):
        if f"hf-bf16@{{b}}" == {hang:?}:
            raise RuntimeError("CUDA out of memory")
        now[0] += 30
        return 9.0, [10.0, 9.0], [[0] + [7] * 256] * b
    def host(self):
        return {{}}
    def jobx(self, eng, b, beam, weights, kv, env, timeout):
        assert timeout <= 90 and timeout >= 1, timeout
        if f"{{eng}}@{{b}}" == {hang:?}:
            now[0] += timeout
            rows.append(dict(engine=eng, batch=b, error="timed out"))
            return None
        now[0] += 5
        if weights == "int8":
            rows.append(dict(engine=eng, batch=b, error="fake failure"))
            return None
        ids = [[7] * 256] * (b * (4 if beam else 1))
        return dict(generate_ms=900.0, load_ms=1000, new_tokens=256, ids=ids), "jobx profile: x\n"
budget = g.Budget({budget}, clock=lambda: now[0])
now[0] += {setup}
steps = g.plan([1, 8, 32], {optin}, (8, 4, 128))
g.execute(steps, Ctx(), budget, emit=rows.append)
print(json.dumps(dict(rows=rows, steps=len(steps), end=now[0])))
"#,
        tools = common::repo().join("tools").to_str().unwrap(),
    );
    let v: Value = serde_json::from_slice(&python(&["-c".as_ref(), script.as_ref()])).unwrap();
    let rows = v["rows"].as_array().unwrap().clone();
    // nothing is lost: every planned run gives one line (a result, an error or a skip)
    assert_eq!(rows.len() as u64, v["steps"].as_u64().unwrap());
    (rows, v["end"].as_f64().unwrap())
}

#[test]
fn gpu_bench_e2e_runs_the_targets_first_and_skips_what_the_budget_cannot_fit() {
    let optin = r#"{"JOBX_GEMM_PERSISTENT": "1", "JOBX_PDL": "1"}"#;
    let name = |r: &Value| format!("{}@{}", r["engine"].as_str().unwrap(), r["batch"]);
    // no budget: every run, targets first (HF, plain, graphs per batch), beam search last
    let (all, end_all) = e2e_rows("None", 0.0, optin, "");
    let names: Vec<String> = all.iter().map(name).collect();
    assert_eq!(
        names[..9],
        [
            "hf-bf16@1",
            "jobx-cuda-bf16@1",
            "jobx-cuda-bf16-graphs@1",
            "hf-bf16@8",
            "jobx-cuda-bf16@8",
            "jobx-cuda-bf16-graphs@8",
            "hf-bf16@32",
            "jobx-cuda-bf16@32",
            "jobx-cuda-bf16-graphs@32"
        ]
    );
    assert!(names.contains(&"jobx-cuda-bf16-graphs-optin@32".to_string()));
    assert!(names.contains(&"jobx-cuda-bf16-graphs-no-pdl@32".to_string()));
    assert!(names.contains(&"jobx-cuda-bf16-kernel-profile@32".to_string()));
    assert_eq!(names.last().unwrap(), "jobx-cuda-bf16-beam-graphs@8");
    assert!(all.iter().all(|r| r.get("skipped").is_none()));
    let graphs32 = &all[8];
    assert_eq!(graphs32["speedup_vs_hf"].as_f64().unwrap(), 10.0);
    assert_eq!(graphs32["same_ids_as_plain"], json!(true));
    assert_eq!(graphs32["hf_prefix_match_mean"].as_f64().unwrap(), 256.0);
    assert_eq!(all[6]["seconds_runs"], json!([10.0, 9.0]));
    let failed: Vec<&Value> = all.iter().filter(|r| r.get("error").is_some()).collect();
    assert_eq!(
        failed.len(),
        4,
        "the weight-only int8 runs: three batches, and the largest without the widening"
    );
    assert!(names.contains(&"jobx-cuda-int8-no-widen@32".to_string()));
    // the kernel profile's seconds include its events: no speed-up claimed from it
    let prof = all
        .iter()
        .find(|r| r["engine"] == "jobx-cuda-bf16-kernel-profile")
        .unwrap();
    assert!(prof["speedup_vs_hf"].is_null());

    // 180 s of which 30 go to the setup: the targets' runs all fit (HF 3 x 30 s, jobx 6 x 5 s);
    // the diagnostics run while their estimates fit, the rest is skipped with a line each, and
    // no run ends past 180 s
    let (cut, end_cut) = e2e_rows("180", 30.0, optin, "");
    assert!(end_all > 180.0 && end_cut <= 180.0, "{end_all} {end_cut}");
    let names: Vec<String> = cut.iter().map(name).collect();
    assert_eq!(names, all.iter().map(name).collect::<Vec<_>>());
    assert!(cut[..9].iter().all(|r| r.get("seconds").is_some()));
    let skipped: Vec<&Value> = cut.iter().filter(|r| r.get("skipped").is_some()).collect();
    assert!(!skipped.is_empty());
    // the beam run, last in the plan, is among those skipped
    assert!(cut
        .iter()
        .any(|r| r["engine"] == "hf-bf16-beam" && r.get("skipped").is_some()));
    assert!(skipped[0]["skipped"]
        .as_str()
        .unwrap()
        .contains("time budget"));
    // a run that times out (90 s) says nothing of the others' length: the next ones still run
    let (hung, _) = e2e_rows("300", 0.0, optin, "jobx-cuda-bf16-graphs-optin@1");
    let after = hung
        .iter()
        .find(|r| r["engine"] == "jobx-cuda-bf16-graphs-optin" && r["batch"] == 8)
        .unwrap();
    assert!(after.get("seconds").is_some(), "{after}");
    // without opt-in families there is neither an -optin nor a -no-pdl run; with PDL's family
    // alone (the default: no family to time) only the -no-pdl baseline
    let (none, _) = e2e_rows("None", 0.0, "{}", "");
    assert!(!none
        .iter()
        .any(|r| r["engine"].as_str().unwrap().contains("optin")
            || r["engine"].as_str().unwrap().contains("-pdl")));
    let (pdl, _) = e2e_rows("None", 0.0, r#"{"JOBX_PDL": "1"}"#, "");
    assert!(!pdl
        .iter()
        .any(|r| r["engine"].as_str().unwrap().contains("optin")));
    assert!(pdl
        .iter()
        .any(|r| r["engine"] == "jobx-cuda-bf16-graphs-no-pdl" && r["batch"] == 32));
    // 120 s left after the setup: the first HF run starts on the estimates made before any run
    // (35 s for HF, 15 for each jobx run: run 5 took 9-12 s and 5-9 s), not on guesses so large
    // that the check's least e2e share would never compare batch 1 with HF
    let (tight, _) = e2e_rows("150", 30.0, optin, "");
    assert!(tight[0].get("seconds").is_some(), "{}", tight[0]);
    // an HF run that raises gives an error line; its jobx runs go on, with no speed-up claimed
    let (oom, _) = e2e_rows("None", 0.0, optin, "hf-bf16@8");
    let hf8 = oom
        .iter()
        .find(|r| r["engine"] == "hf-bf16" && r["batch"] == 8)
        .unwrap();
    assert!(
        hf8["error"].as_str().unwrap().contains("out of memory"),
        "{hf8}"
    );
    let ours8 = oom
        .iter()
        .find(|r| r["engine"] == "jobx-cuda-bf16" && r["batch"] == 8)
        .unwrap();
    assert!(
        ours8.get("seconds").is_some() && ours8["speedup_vs_hf"].is_null(),
        "{ours8}"
    );
}

/// tools/gpu-check.sh with a fake bundle (JOBX_GPU_BUNDLE: a `cuda_ops` that runs `body`, and
/// the real gpu_decide.py): (its exit status, its stdout followed by the gpu.txt and the
/// op-tests.log it wrote, seconds taken).
fn gpu_check(budget: &str, steps: &str, body: &str) -> (i32, String, f64) {
    gpu_check_stamped(budget, steps, body, None)
}

/// `gpu_check` with the bundle's stamp.txt (as gpu-bundle.sh writes it) holding `stamp`.
fn gpu_check_stamped(
    budget: &str,
    steps: &str,
    body: &str,
    stamp: Option<&str>,
) -> (i32, String, f64) {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    if let Some(s) = stamp {
        std::fs::write(bundle.join("stamp.txt"), s).unwrap();
    }
    let ops = bundle.join("cuda_ops");
    std::fs::write(&ops, format!("#!/usr/bin/env bash\n{body}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ops, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::copy(
        common::repo().join("tools/gpu_decide.py"),
        bundle.join("gpu_decide.py"),
    )
    .unwrap();
    let t0 = std::time::Instant::now();
    let out = std::process::Command::new("bash")
        .arg(common::repo().join("tools/gpu-check.sh"))
        .arg(dir.path().join("out"))
        .env("JOBX_GPU_BUNDLE", &bundle)
        .env("JOBX_CHECK_BUDGET", budget)
        .env("JOBX_CHECK_STEPS", steps)
        .output()
        .unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let read =
        |f: &str| std::fs::read_to_string(dir.path().join("out").join(f)).unwrap_or_default();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}\n--- gpu.txt\n{}\n--- op-tests.log\n{}",
            String::from_utf8_lossy(&out.stdout),
            read("gpu.txt"),
            read("op-tests.log")
        ),
        secs,
    )
}

#[test]
fn gpu_check_keeps_to_its_time_budget() {
    // a budget that leaves the op tests less than the later opt-in step's share: both skipped,
    // said so, and the check fails (nothing was verified)
    let (rc, out, _) = gpu_check("12", "ops,optin", "echo 'test result: ok'");
    assert_ne!(rc, 0, "{out}");
    assert!(
        out.contains("== op tests skipped: the check's budget"),
        "{out}"
    );
    assert!(out.contains("opt-in fa2: skipped"), "{out}");
    assert!(out.contains("op tests budget"), "{out}");
    // a budget below the steps' least shares (~300 s) still runs the op tests first, up to
    // JOBX_T_OPS_MIN (a 265 s budget skipped them on the H100, 2026-11-28); the later steps
    // make do with what is left (here they fail fast: the fake bundle has no bench or e2e)
    let (_, out, _) = gpu_check("150", "ops,e2e", "echo 'test result: ok'");
    assert!(out.contains("exit codes: op tests 0"), "{out}");
    // enough budget: the op tests run and pass
    let (rc, out, _) = gpu_check("60", "ops", "echo 'test result: ok'");
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("exit codes: op tests 0"), "{out}");
    // each step's seconds and the total, for the next budget
    assert!(
        out.contains("\nstep ops: ") && out.contains("\ntotal: ") && !out.contains("step bench"),
        "{out}"
    );
    // a hanging op test binary is stopped where the budget says (16 s less the verdicts' 5),
    // not at its own 180 s cap
    let (rc, out, secs) = gpu_check("16", "ops", "exec sleep 100");
    assert_ne!(rc, 0, "{out}");
    assert!(out.contains("exit codes: op tests 124"), "{out}");
    assert!(secs < 16.0, "{secs} s");
    // an opt-in family stopped by the budget (12 s left of its 40 s cap) is not a failed one:
    // no "exit N" line (gpu_decide: not run), and the later families are skipped
    let (_, out, secs) = gpu_check("17", "optin", "exec sleep 100");
    assert!(
        out.contains("opt-in dequant: skipped: the check's budget"),
        "{out}"
    );
    assert!(
        out.contains("opt-in fa2: skipped: the check's budget"),
        "{out}"
    );
    assert!(
        out.contains("opt-in pdl: skipped: the check's budget"),
        "{out}"
    );
    assert!(!out.contains("opt-in fa2: exit"), "{out}");
    assert!(secs < 17.0, "{secs} s");
    // also when the family ignores SIGTERM and is killed 5 s later (exit 137, not a failure)
    let (_, out, secs) = gpu_check("17", "optin", "trap '' TERM\nsleep 100");
    assert!(
        out.contains("opt-in dequant: skipped: the check's budget") && !out.contains("exit 137"),
        "{out}"
    );
    assert!(secs < 25.0, "{secs} s");
    // the established run takes the defaults (the widening too) and leaves only the opt-in
    // kernels to their families; when the widening's family fails, the later ones run without
    // the widening and its cases
    let body = "echo \"env: DEQUANT=${JOBX_GEMM_DEQUANT:-on} SKIP=${JOBX_OP_SKIP:-} CASES=${JOBX_OP_CASES:-}\"\n\
                [[ \"${JOBX_OP_CASES:-}\" == *'int8 widened'* ]] && exit 101\n\
                echo 'test result: ok'";
    let (_, out, _) = gpu_check("200", "ops,optin", body);
    assert!(
        out.contains(
            "env: DEQUANT=on SKIP=n256p,attention q8,kernel Ws,ws trace,gemm rms,kernel Online CASES=\n"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "env: DEQUANT=on SKIP=n256p,SkinnyTcSplit,gemm rms CASES=int8 widened,int8w true"
        ),
        "{out}"
    );
    assert!(out.contains("opt-in dequant: exit 101"), "{out}");
    assert!(
        out.contains("env: DEQUANT=0 SKIP=int8 widened,gemm rms CASES=kernel Fa2"),
        "{out}"
    );
    assert!(out.contains("opt-in fa2: exit 0"), "{out}");
    // the int8 K/V cases of the one-pass decode kernel are its family's, not q8decode's (nor
    // the PDL family's decode steps)
    assert!(
        out.contains("env: DEQUANT=0 SKIP=int8 widened,gemm rms CASES=kernel Online"),
        "{out}"
    );
    assert!(
        out.contains("env: DEQUANT=0 SKIP=int8 widened,kernel Online,gemm rms CASES=attention q8"),
        "{out}"
    );
    assert!(
        out.contains("SKIP=gemm rms,kernel Online,int8 widened CASES=Skinny,skinny,recorded step"),
        "{out}"
    );
    // with time enough, every family runs and passes (the fake binary passes everything)
    let (rc, out, _) = gpu_check("100", "optin", "echo 'test result: ok'");
    assert_eq!(rc, 0, "{out}");
    for fam in [
        "dequant",
        "fa2",
        "wg",
        "ws",
        "persistent",
        "splitk",
        "rms",
        "online",
        "q8decode",
        "pdl",
    ] {
        assert!(out.contains(&format!("opt-in {fam}: exit 0")), "{out}");
    }
}

#[test]
fn gpu_check_says_when_the_bundle_was_built_from_other_sources() {
    let digest = String::from_utf8(
        std::process::Command::new("bash")
            .arg(common::repo().join("tools/gpu-check.sh"))
            .arg("--digest")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let digest = digest.trim();
    assert_eq!(digest.len(), 16, "{digest}");
    // the stamp of this very tree: recorded in gpu.txt, no warning
    let stamp = format!("commit abc1234\nsources {digest}\n");
    let (rc, out, _) = gpu_check_stamped("60", "ops", "echo 'test result: ok'", Some(&stamp));
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains(&format!("bundle: sources {digest}")), "{out}");
    assert!(!out.contains("WARNING"), "{out}");
    // a bundle built before a change: said on stdout and in gpu.txt
    let (_, out, _) = gpu_check_stamped(
        "60",
        "ops",
        "echo 'test result: ok'",
        Some("commit abc1234\nsources 0123456789abcdef\n"),
    );
    assert!(
        out.matches("WARNING: gpu-bundle/ was built from other sources")
            .count()
            == 2,
        "{out}"
    );
}
