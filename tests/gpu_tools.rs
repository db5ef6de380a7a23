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

#[test]
fn gpu_decide_applies_the_decision_rule() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("op-tests.log"),
        "test cuda_op_table ... ok\nopt-in fa2: exit 0\nopt-in wg: exit 0\n\
         opt-in persistent: exit 0\nopt-in splitk: exit 0\nopt-in q8decode: exit 101\n\
         opt-in pdl: exit 0\n",
    )
    .unwrap();
    let enc = json!({"batch": 8, "heads": 16, "tq": 1024, "t": 1024, "dk": 64});
    let causal = json!({"batch": 1, "heads": 32, "tq": 4096, "t": 4096, "dk": 128});
    let with = |shape: &Value, op: &str, ms: f64| {
        let mut v = shape.clone();
        v["op"] = json!(op);
        v["ms"] = json!(ms);
        v
    };
    lines(
        &d.join("kernels.jsonl"),
        &[
            // wg beats the default at both prefill shapes; fa2 loses at one
            with(&enc, "attention", 0.424),
            with(&causal, "attention", 0.934),
            with(&enc, "attention_wg", 0.25),
            with(&causal, "attention_wg", 0.40),
            with(&enc, "attention_fa2", 0.30),
            with(&causal, "attention_fa2", 1.10),
            // the persistent bf16 GEMM wins, the int8 one loses: not faster everywhere
            json!({"op": "gemm_bf16", "m": 4096, "n": 4096, "k": 4096, "ms": 0.194}),
            json!({"op": "gemm_w8a8", "m": 4096, "n": 4096, "k": 4096, "ms": 0.134}),
            json!({"op": "gemm_bf16_tma_n256_p", "m": 4096, "n": 4096, "k": 4096, "ms": 0.180}),
            json!({"op": "gemm_w8a8_tma_n256_p", "m": 4096, "n": 4096, "k": 4096, "ms": 0.140}),
            // split-k wins at one decode shape of two: a candidate where it wins
            json!({"op": "gemm_bf16_skinny_tc", "m": 32, "n": 1024, "k": 1024, "ms": 0.011}),
            json!({"op": "gemm_bf16_skinny_tc_split", "m": 32, "n": 1024, "k": 1024, "ms": 0.006}),
            json!({"op": "gemm_bf16_skinny_tc", "m": 32, "n": 5632, "k": 1024, "ms": 0.013}),
            json!({"op": "gemm_bf16_skinny_tc_split", "m": 32, "n": 5632, "k": 1024, "ms": 0.015}),
            json!({"op": "decode_chain", "graph": true, "pdl": false, "us_per_kernel": 5.0, "ms": 1.2}),
            json!({"op": "decode_chain", "graph": true, "pdl": true, "us_per_kernel": 4.0, "ms": 1.0}),
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
            json!({"engine": "jobx-cuda-bf16-graphs", "batch": 32, "seconds": 1.0}),
            json!({"engine": "jobx-cuda-bf16-graphs-pdl", "batch": 32, "seconds": 0.9}),
            json!({"engine": "jobx-cuda-bf16-kernel-profile", "batch": 32, "seconds": 0.5}),
            // int8 K/V or weights: never the "fastest" configuration against HF's bf16
            json!({"engine": "jobx-cuda-bf16-cross-kv-int8", "batch": 32, "seconds": 0.45}),
            json!({"engine": "jobx-cuda-int8", "batch": 32, "seconds": 0.4}),
            json!({"engine": "jobx-cuda-bf16-graphs", "batch": 8, "error": "timed out"}),
        ],
    );
    let out = std::process::Command::new("python3")
        .arg(common::repo().join("tools/gpu_decide.py"))
        .arg(d)
        .output()
        .expect("python3 (the CUDA toolchain install needs it too)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("summary.json")).unwrap()).unwrap();
    let dec = &s["decisions"];
    let v = |f: &str| dec[f]["verdict"].as_str().unwrap().to_string();
    assert!(v("wg").contains("make it the default"), "{}", v("wg"));
    assert!(v("fa2").contains("stays opt-in"), "{}", v("fa2"));
    assert!(
        v("persistent").contains("stays opt-in"),
        "{}",
        v("persistent")
    );
    assert!(
        v("splitk").contains("make it the default"),
        "{}",
        v("splitk")
    );
    assert!(
        v("q8decode").contains("op cases failed"),
        "{}",
        v("q8decode")
    );
    assert!(v("pdl").contains("make it the default"), "{}", v("pdl"));
    // against HF's fastest run; the kernel-profile run (events around every launch) and the
    // int8 runs never count, and a row with an error instead of seconds is left out
    let e = &dec["e2e"]["32"];
    assert_eq!(e["speedup_default"].as_f64().unwrap(), 9.0);
    assert_eq!(e["fastest_engine"], "jobx-cuda-bf16-graphs-pdl");
    assert!((e["speedup_fastest"].as_f64().unwrap() - 10.0).abs() < 1e-9);
}
