//! The text pipeline end to end on a tiny random T5 with the real T5 vocabulary: tokenisation
//! matches HF's ids, generation matches HF's greedy ids, and `extract` writes one record per input.
mod common;
use std::io::Write;
use std::process::Stdio;

fn reference() -> (serde_json::Value, Vec<i64>, Vec<i64>) {
    let dir = common::fixture("t5-tiny-real-vocab");
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let ck = jobx_engine::checkpoint::Checkpoint::open_files(
        &[dir.join("reference.safetensors")],
        "ref",
    )
    .unwrap();
    (
        spec,
        ck.i64("case0.input_ids").unwrap().1,
        ck.i64("case0.greedy").unwrap().1,
    )
}

#[test]
fn tokenizer_ids_match_hf_and_generate_text_matches_greedy() {
    let t = common::tiny_t5_with_tokenizer();
    let (spec, ids, greedy) = reference();
    let e = jobx_engine::extract::Engine::load(t.path().to_str().unwrap()).unwrap();
    let ours: Vec<i64> = e
        .tokenizer()
        .unwrap()
        .encode(spec["text"].as_str().unwrap())
        .unwrap()
        .iter()
        .map(|&x| x as i64)
        .collect();
    assert_eq!(ours, ids, "tokenizers crate vs HF tokenizer");
    let line = common::run_last_json(
        common::cli()
            .args(["generate", "--model"])
            .arg(t.path())
            .args([
                "--text",
                spec["text"].as_str().unwrap(),
                "--max-new-tokens",
                "20",
                "--num-beams",
                "1",
            ]),
    );
    let got: Vec<i64> = line["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    assert_eq!(got, greedy);
    assert_eq!(line["text"], spec["greedy_text"]);
}

#[test]
fn generate_min_new_tokens_suppresses_eos_and_batches() {
    let t = common::tiny_t5_with_tokenizer();
    let f = t.path().join("ids.json");
    std::fs::write(&f, "[[100, 200, 300, 1], [5, 1]]").unwrap();
    let line = common::run_last_json(
        common::cli()
            .args(["generate", "--threads", "1", "--model"])
            .arg(t.path())
            .arg("--input-ids")
            .arg(&f)
            .args([
                "--max-new-tokens",
                "12",
                "--min-new-tokens",
                "12",
                "--num-beams",
                "1",
            ]),
    );
    let ids = line["ids"].as_array().unwrap();
    assert_eq!(ids.len(), 2);
    for s in ids {
        assert_eq!(s.as_array().unwrap().len(), 12);
        assert!(
            !s.as_array().unwrap().contains(&serde_json::json!(1)),
            "EOS before min_new_tokens"
        );
    }
}

#[test]
fn batched_generation_equals_one_by_one() {
    // Padding must not change results: batch of 3 uneven inputs vs each alone, greedy and beam.
    let t = common::tiny_t5_with_tokenizer();
    let e = jobx_engine::extract::Engine::load(t.path().to_str().unwrap()).unwrap();
    let inputs = vec![
        vec![100u32, 200, 300, 400, 500, 1],
        vec![7, 1],
        vec![42, 43, 44, 1],
    ];
    for beams in [1usize, 3] {
        let opts = jobx_engine::generate::GenOptions {
            max_new_tokens: 15,
            num_beams: beams,
            eos: vec![1],
            ..Default::default()
        };
        let batched = e.generate_ids(&inputs, &opts, &mut []).unwrap();
        for (i, inp) in inputs.iter().enumerate() {
            let single = e
                .generate_ids(std::slice::from_ref(inp), &opts, &mut [])
                .unwrap();
            assert_eq!(batched[i].tokens, single[0].tokens, "beams={beams} row {i}");
        }
    }
}

#[test]
fn extract_writes_one_record_per_input_line() {
    let t = common::tiny_t5_with_tokenizer();
    let input = t.path().join("in.jsonl");
    let mut f = std::fs::File::create(&input).unwrap();
    writeln!(
        f,
        "{{\"id\": \"a\", \"source\": \"Senior Rust engineer, remote.\"}}"
    )
    .unwrap();
    writeln!(f, "{{\"id\": \"b\", \"source\": \"   \"}}").unwrap();
    writeln!(f, "this is not json").unwrap();
    writeln!(
        f,
        "{{\"id\": \"d\", \"source\": \"Data analyst in Berlin, SQL, Python.\"}}"
    )
    .unwrap();
    drop(f);
    let out = common::cli()
        .args(["extract", "--model"])
        .arg(t.path())
        .arg(&input)
        .args([
            "--max-new-tokens",
            "8",
            "--num-beams",
            "2",
            "--max-source-tokens",
            "64",
            "--no-constrain",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cut to 64"),
        "truncation warning expected: {stderr}"
    );
    let recs: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 4);
    assert_eq!(recs[0]["id"], "a");
    assert!(recs[0]["raw"].is_string());
    assert_eq!(recs[0]["source_tokens"], 64);
    assert!(recs[1]["error"].as_str().unwrap().contains("empty"));
    assert!(recs[2]["error"].as_str().unwrap().contains("not JSON"));
    assert_eq!(recs[3]["id"], "d");
    // each error says its kind, machine-readably; a record without an error has none
    assert_eq!(recs[1]["error_kind"], "input", "{}", recs[1]);
    assert_eq!(recs[2]["error_kind"], "input", "{}", recs[2]);
    for r in &recs {
        assert_eq!(r["error"].is_null(), r.get("error_kind").is_none(), "{r}");
    }
    // the generated ones: the tiny random model's 8 unconstrained tokens are no JSON (its
    // weights and the decoding are fixed, so this is the same every run)
    for r in [&recs[0], &recs[3]] {
        assert!(r["raw"].is_string() && !r["error"].is_null(), "{r}");
        assert_eq!(r["error_kind"], "output", "{r}");
    }
    for r in &recs {
        for k in ["id", "output", "raw", "error"] {
            assert!(r.get(k).is_some(), "record lacks {k}: {r}");
        }
    }
}

#[test]
fn extract_reports_unreadable_files_and_offline_models_clearly() {
    let out = common::cli()
        .args([
            "extract",
            "--model",
            "/nonexistent/model",
            "/nonexistent/file.txt",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/file.txt"));
    let t = common::tiny_t5_with_tokenizer();
    let p = t.path().join("p.txt");
    std::fs::write(&p, "posting").unwrap();
    let out = common::cli()
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", t.path().join("hf"))
        .args(["extract", "--model", "google/flan-t5-base"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not in the Hugging Face cache") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
}

#[test]
fn stop_strings_end_generation() {
    // The tiny model's greedy text is "Choir pulp pulp ..." (HF reference); stop at "pulp".
    let t = common::tiny_t5_with_tokenizer();
    let (spec, _, greedy) = reference();
    let run = |extra: &[&str]| {
        let out = common::cli()
            .args(["generate", "--model"])
            .arg(t.path())
            .args([
                "--text",
                spec["text"].as_str().unwrap(),
                "--max-new-tokens",
                "20",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str::<serde_json::Value>(
            String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .last()
                .unwrap(),
        )
        .unwrap()
    };
    let line = run(&["--stop", "pulp", "--num-beams", "1"]);
    let ids = line["ids"].as_array().unwrap();
    assert!(ids.len() < greedy.len(), "stopped early: {ids:?}");
    assert_eq!(
        ids.last().unwrap(),
        1,
        "ends with EOS after the stop string"
    );
    assert!(
        !line["text"].as_str().unwrap().contains("pulp"),
        "{}",
        line["text"]
    );
    assert_eq!(line["finish"][0], "eos");
    // beam search honours it too: a beam that produced the stop string ends right after it
    let line = run(&["--stop", "pulp", "--num-beams", "3"]);
    let ids: Vec<u64> = line["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    if let Some(p) = ids.iter().position(|&x| x == 21237) {
        assert_eq!(ids[p + 1], 1, "EOS right after the stop token: {ids:?}");
    }
    assert!(!line["text"].as_str().unwrap().contains("pulp"));
}
