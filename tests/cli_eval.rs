//! `score` and `repair` through the CLI on the reference project's result files.
mod common;

fn shared() -> Option<std::path::PathBuf> {
    let p = common::repo().join("../shared/seed/eval-results");
    if p.exists() {
        return Some(p);
    }
    if std::env::var("JOBX_ALLOW_NO_SHARED").is_ok() {
        eprintln!("SKIP: ../shared/seed/eval-results not found");
        return None;
    }
    panic!("../shared/seed/eval-results not found beside the repository (set JOBX_ALLOW_NO_SHARED=1 to skip)");
}

fn bits_equal(a: &serde_json::Value, b: &serde_json::Value, path: &str) {
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            let kx: Vec<&String> = x.keys().collect();
            let ky: Vec<&String> = y.keys().collect();
            assert_eq!(kx, ky, "{path}: keys");
            for k in x.keys() {
                bits_equal(&x[k], &y[k], &format!("{path}.{k}"));
            }
        }
        (serde_json::Value::Number(x), serde_json::Value::Number(y)) => {
            if x.is_f64() || y.is_f64() {
                assert_eq!(
                    x.as_f64().unwrap().to_bits(),
                    y.as_f64().unwrap().to_bits(),
                    "{path}: {x} vs {y}"
                );
            } else {
                assert_eq!(x, y, "{path}");
            }
        }
        _ => assert_eq!(a, b, "{path}"),
    }
}

#[test]
fn score_cli_reproduces_every_stored_metrics_block() {
    let Some(dir) = shared() else { return };
    for f in [
        "flan_t5_large_eval.json",
        "flan_t5_xl_lora_batch_2_eval.json",
        "flan_t5_xl_lora_batch_4_eval.json",
        "mistral_lora_eval.json",
    ] {
        let p = dir.join(f);
        let last = common::run_last_json(common::cli().arg("score").arg(&p));
        let stored: serde_json::Value =
            serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&p).unwrap())
                .unwrap()["metrics"]
                .clone();
        let mut ours = last.clone();
        ours.as_object_mut().unwrap().remove("jobx");
        bits_equal(&ours, &stored, f);
        assert_eq!(last["jobx"]["stored_metrics_match"], true, "{f}");
    }
}

#[test]
fn repair_compat_rebuilds_fixed_json_byte_for_byte() {
    let Some(dir) = shared() else { return };
    for f in [
        "flan_t5_large_eval.json",
        "flan_t5_xl_lora_batch_2_eval.json",
        "flan_t5_xl_lora_batch_4_eval.json",
    ] {
        let last = common::run_last_json(
            common::cli()
                .args(["repair", "--compat", "jobextractx"])
                .arg(dir.join(f)),
        );
        assert_eq!(
            last,
            serde_json::json!({"records": 1000, "identical": 1000}),
            "{f}"
        );
    }
}

#[test]
fn repair_restores_braces_and_escapes_from_unk_markers() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("raw.txt");
    // What a FLAN-T5 trained on json.dumps targets emits: <unk> where {, } and \\ were.
    std::fs::write(
        &p,
        "<unk>\"experience_level\": \"Senior\", \"employment_status\": [], \"work_location\": \"Remote\", \"salary\": <unk>\"min\": \"1\", \"max\": \"2\", \"period\": \"year\", \"currency\": \"USD\"<unk>, \"benefits\": [], \"job_functions\": [], \"required_skills\": <unk>\"programming_languages\": [\"Rust\"], \"tools\": [], \"frameworks\": [], \"databases\": [], \"other\": []<unk>, \"required_certifications\": [], \"required_minimum_degree\": \"Bachelor<unk>u2019s\", \"required_experience\": \"\", \"industries\": [], \"additional_keywords\": [\"low lat\n",
    )
    .unwrap();
    let out = common::cli().arg("repair").arg(&p).output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let v = &lines[0]["output"];
    assert_eq!(v["salary"]["currency"], "USD");
    assert_eq!(
        v["required_skills"]["programming_languages"],
        serde_json::json!(["Rust"])
    );
    assert_eq!(v["required_minimum_degree"], "Bachelor\u{2019}s");
    assert_eq!(
        v["additional_keywords"],
        serde_json::json!([]),
        "a cut item is dropped, the list kept"
    );
    assert_eq!(lines[1], serde_json::json!({"records": 1, "repaired": 1}));
}
