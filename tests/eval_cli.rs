//! `eval` end to end on the tiny real-vocabulary T5: every input line yields a prediction record,
//! the report carries the reference block, the stricter metrics and the speed section; `--compare`
//! puts reports side by side.
mod common;

const TARGET: &str = r#"{"experience_level": "Senior", "employment_status": [], "work_location": "Remote", "salary": {"min": "", "max": "", "period": "", "currency": ""}, "benefits": [], "job_functions": ["Engineering"], "required_skills": {"programming_languages": ["Rust"], "tools": [], "frameworks": [], "databases": [], "other": []}, "required_certifications": [], "required_minimum_degree": "", "required_experience": "", "industries": [], "additional_keywords": []}"#;

#[test]
fn eval_writes_predictions_report_and_compare() {
    let t = common::tiny_t5_with_tokenizer();
    let data = t.path().join("data.jsonl");
    let line = |src: &str| serde_json::json!({"source": src, "target": TARGET}).to_string();
    std::fs::write(
        &data,
        format!(
            "{}\n{}\nnot json\n{}\n",
            line("Senior Rust engineer, remote"),
            line("Data analyst, SQL"),
            line("Nurse, night shifts")
        ),
    )
    .unwrap();
    let out_dir = t.path().join("out");
    let run = |extra: &[&str]| {
        let o = common::cli()
            .args(["eval", "--model"])
            .arg(t.path())
            .arg("--data")
            .arg(&data)
            .arg("--out-dir")
            .arg(&out_dir)
            .args([
                "--max-new-tokens",
                "6",
                "--num-beams",
                "1",
                "--batch-size",
                "2",
                "--no-constrain",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_str::<serde_json::Value>(
            String::from_utf8(o.stdout).unwrap().lines().last().unwrap(),
        )
        .unwrap()
    };
    let rep = run(&[]);
    let preds = std::fs::read_to_string(out_dir.join("predictions.jsonl")).unwrap();
    assert_eq!(preds.lines().count(), 4, "one record per input line");
    // the unreadable line has no `expected`: it is reported as an input error, not scored
    assert_eq!(rep["overall"]["total_samples"], 3);
    let errs: u64 = rep["jobx"]["input_errors"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(errs, 1, "{}", rep["jobx"]["input_errors"]);
    for k in [
        "samples_per_s",
        "generated_tokens_per_s",
        "latency_ms",
        "device",
        "batch_size",
    ] {
        assert!(rep["jobx"]["speed"].get(k).is_some(), "speed lacks {k}");
    }
    // on the CPU: said so, and no batch ran out of (device) memory
    let speed = &rep["jobx"]["speed"];
    assert!(
        speed["device"].as_str().unwrap().starts_with("cpu ("),
        "{speed}"
    );
    assert_eq!(speed["out_of_memory_retries"], 0, "{speed}");
    assert!(rep["jobx"]["stricter"]["raw_parse"].is_object());
    assert!(out_dir.join("report.json").exists());
    // --limit with --seed takes a deterministic subset
    let rep2 = run(&["--limit", "2", "--seed", "3"]);
    let n2 = rep2["overall"]["total_samples"].as_u64().unwrap()
        + rep2["jobx"]["input_errors"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>();
    assert_eq!(n2, 2);
    assert_eq!(
        std::fs::read_to_string(out_dir.join("predictions.jsonl"))
            .unwrap()
            .lines()
            .count(),
        2
    );
    std::fs::copy(out_dir.join("report.json"), t.path().join("r2.json")).unwrap();
    let rep3 = run(&["--limit", "2", "--seed", "3"]);
    assert_eq!(rep2["overall"], rep3["overall"]);
    // compare
    std::fs::write(t.path().join("r1.json"), rep.to_string()).unwrap();
    let o = common::cli()
        .args(["eval", "--compare"])
        .arg(t.path().join("r1.json"))
        .arg(t.path().join("r2.json"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(
        text.contains("| mean F1 (reference) |") && text.contains("samples/s"),
        "{text}"
    );
    let js: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(js["runs"].as_array().unwrap().len(), 2);
}
