//! Golden tests: every committed jobx-reference-v1 fixture (written by tools/gen_reference.py from
//! HF transformers) must verify: logits within tolerance_rel, greedy and beam ids identical.
mod common;
use jobx_engine::verify::verify_dir;

fn spec(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

#[test]
fn every_fixture_matches_transformers_and_peft() {
    // T5 and Mistral, with and without LoRA adapters (applied unmerged, as served).
    let mut n = 0;
    let mut archs = std::collections::BTreeSet::new();
    for dir in common::reference_fixtures() {
        let s = spec(&dir);
        let sum = verify_dir(&dir, &mut |l| eprintln!("{l}"))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        assert!(sum.ok, "{}: {:?}", dir.display(), sum);
        archs.insert((
            s["arch"].as_str().unwrap().to_string(),
            s["adapter"].is_null(),
        ));
        n += 1;
    }
    assert!(n >= 8, "fixtures found: {n}");
    assert_eq!(
        archs.len(),
        4,
        "t5/mistral × base/adapter all covered: {archs:?}"
    );
}

#[test]
fn merged_adapters_give_the_same_logits_as_unmerged() {
    for name in ["t5-lora", "mistral-lora"] {
        let opts = jobx_engine::verify::VerifyOptions {
            merge_adapter: true,
            ..Default::default()
        };
        let sum = jobx_engine::verify::verify_dir_with(&common::fixture(name), &opts, &mut |_| {})
            .unwrap();
        assert!(sum.ok, "{name} merged: {sum:?}");
    }
}

#[test]
fn adapters_change_the_logits() {
    // Verifying a LoRA fixture without its adapter must fail, or the adapter test proves nothing.
    for name in ["t5-lora", "mistral-lora"] {
        let t = common::copy_dir(&common::fixture(name));
        let p = t.path().join("reference.json");
        let mut s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        s["adapter"] = serde_json::Value::Null;
        std::fs::write(&p, s.to_string()).unwrap();
        let sum = verify_dir(t.path(), &mut |_| {}).unwrap();
        assert!(
            !sum.ok && sum.max_rel_err > 1e-3,
            "{name} without adapter: {sum:?}"
        );
    }
}

#[test]
fn every_t5_fixture_matches_transformers() {
    let mut n = 0;
    for dir in common::reference_fixtures() {
        let s = spec(&dir);
        if s["arch"] != "t5" || !s["adapter"].is_null() {
            continue;
        }
        let mut lines = Vec::new();
        let sum = verify_dir(&dir, &mut |v| lines.push(v))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for l in &lines {
            eprintln!("{l}");
        }
        assert!(sum.ok, "{}: {:?}", dir.display(), sum);
        assert!(sum.max_rel_err <= 1e-4);
        assert!(
            lines
                .iter()
                .any(|l| l.get("greedy_match") == Some(&serde_json::Value::Bool(true))),
            "{}: no greedy case",
            dir.display()
        );
        n += 1;
    }
    assert!(n >= 4, "expected at least 4 plain T5 fixtures, found {n}");
}

#[test]
fn beam_search_cases_are_checked() {
    let mut beams = 0;
    for dir in common::reference_fixtures() {
        let s = spec(&dir);
        if s["arch"] != "t5" || !s["adapter"].is_null() {
            continue;
        }
        let mut lines = Vec::new();
        verify_dir(&dir, &mut |v| lines.push(v)).unwrap();
        beams += lines
            .iter()
            .filter(|l| l.get("beam_match") == Some(&serde_json::Value::Bool(true)))
            .count();
    }
    assert!(beams >= 3, "beam-search references: {beams}");
}

#[test]
fn perturbed_weights_fail_verification() {
    // The check must be able to fail: flip one weight of a fixture and verify again.
    let t = common::copy_dir(&common::fixture("t5-gated-gelu-untied"));
    let p = t.path().join("model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let off = header["decoder.final_layer_norm.weight"]["data_offsets"][0]
        .as_u64()
        .unwrap() as usize;
    let at = 8 + n + off;
    let v = f32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) + 0.5;
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    std::fs::write(&p, bytes).unwrap();
    let sum = verify_dir(t.path(), &mut |_| {}).unwrap();
    assert!(!sum.ok, "a perturbed weight still verified: {sum:?}");
    assert!(sum.max_rel_err > 1e-4);
}

#[test]
fn verify_cli_prints_summary_last_and_exit_code() {
    let out = common::cli()
        .args(["verify"])
        .arg(common::fixture("t5-relu-tied"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["fixture"], "t5-relu-tied");
    assert_eq!(last["ok"], true);
    assert_eq!(last["greedy_match"], true);
    for k in ["cases", "max_rel_err"] {
        assert!(last.get(k).is_some(), "summary lacks {k}");
    }
}

/// The CUDA storage options on a CPU run: the run is the CPU's, unchanged, and each option set
/// is named on stderr rather than ignored silently.
#[test]
fn cuda_storage_options_on_the_cpu_are_said_not_ignored() {
    let out = common::cli()
        .args([
            "--cross-kv",
            "int8",
            "--gpu-weights",
            "int8",
            "--cuda-graphs",
            "off",
            "verify",
        ])
        .arg(common::fixture("t5-relu-tied"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    for flag in ["--cross-kv int8", "--gpu-weights int8", "--cuda-graphs"] {
        assert!(
            err.contains(&format!("note: {flag} applies to CUDA runs")),
            "{err}"
        );
    }
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["ok"], true);
    // the CPU graph's f32 accuracy: no int8 anywhere
    assert!(last["max_rel_err"].as_f64().unwrap() < 1e-4, "{last}");
    let bad = common::cli()
        .args(["--cross-kv", "fp8", "verify"])
        .arg(common::fixture("t5-relu-tied"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("fp8"));
    let bad = common::cli()
        .args(["--cuda-graphs", "maybe", "verify"])
        .arg(common::fixture("t5-relu-tied"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("maybe"));
}
