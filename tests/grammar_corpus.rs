//! The schema corpus: tests/fixtures/schemas/*.json, hand-written schemas covering the supported
//! features and the rejections, with a committed baseline (`baseline.json`).
//!
//! - A schema the baseline lists under `compiles` must compile with both test tokenizers (the
//!   baseline may grow, never shrink), and 300 random documents per tokenizer (random allowed
//!   tokens, random budgets from the minimum up) must be complete and valid per `jsonschema`.
//! - A schema listed under `rejected` must fail with an error containing the given text (so the
//!   error names the keyword); if it starts compiling, the test prints a note to move it.
//! - Every schema file must appear in the baseline.

use jobx_engine::grammar::tools::{random_sample, SplitMix64};
use jobx_engine::grammar::{CompileOptions, Grammar, Vocab};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn vocab(name: &str) -> Arc<Vocab> {
    let p = root().join("tokenizers").join(name).join("tokenizer.json");
    Arc::new(Vocab::from_tokenizer_json(&p.to_string_lossy()).expect("tokenizer"))
}

#[test]
fn schema_corpus_against_baseline() {
    let dir = root().join("schemas");
    let baseline: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("baseline.json")).expect("baseline.json"),
    )
    .expect("baseline json");
    let compiles: Vec<&str> = baseline["compiles"]
        .as_array()
        .expect("compiles")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let rejected = baseline["rejected"].as_object().expect("rejected");
    let vocabs = [
        ("t5", vocab("t5")),
        ("mistral-7b-v0.1", vocab("mistral-7b-v0.1")),
    ];
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("schemas dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && p.file_name().is_some_and(|n| n != "baseline.json")
        })
        .collect();
    files.sort();
    assert!(files.len() >= 40, "corpus too small: {}", files.len());
    let mut failures = Vec::new();
    let mut notes = Vec::new();
    for path in &files {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("read"))
            .expect("schema json");
        let in_compiles = compiles.contains(&name.as_str());
        let expect_err = rejected.get(&name).and_then(Value::as_str);
        if !in_compiles && expect_err.is_none() {
            failures.push(format!(
                "{name}: not in baseline.json (add it to 'compiles' or 'rejected')"
            ));
            continue;
        }
        for (vname, v) in &vocabs {
            let t0 = std::time::Instant::now();
            match Grammar::compile(&schema, v.clone(), &CompileOptions::default()) {
                Ok(g) => {
                    let ms = t0.elapsed().as_secs_f64() * 1e3;
                    if let Some(msg) = expect_err {
                        notes.push(format!("{name} ({vname}) now compiles (expected error '{msg}'): move it to 'compiles'"));
                        continue;
                    }
                    eprintln!(
                        "{name:36} {vname:16} compile {ms:7.2} ms, {} states, min {} tokens",
                        g.stats.dfa_states,
                        g.min_tokens()
                    );
                    let validator =
                        jsonschema::validator_for(&schema).expect("jsonschema compiles the schema");
                    let mut rng = SplitMix64(0xC0FFEE);
                    let mut times = Vec::new();
                    for i in 0..300 {
                        // the minimal document plus EOS, and up to 149 tokens more
                        let budget = g.min_tokens() + 1 + (rng.next_u64() % 150) as u32;
                        let s = random_sample(&g, budget, &mut rng, &mut times).expect("sample");
                        if !s.complete {
                            failures.push(format!(
                                "{name} ({vname}) sample {i}: incomplete: {}",
                                s.text
                            ));
                            break;
                        }
                        match serde_json::from_str::<Value>(&s.text) {
                            Ok(doc) => {
                                if let Err(e) = validator.validate(&doc) {
                                    failures.push(format!(
                                        "{name} ({vname}) sample {i}: invalid ({e}): {}",
                                        s.text
                                    ));
                                    break;
                                }
                            }
                            Err(e) => {
                                failures.push(format!(
                                    "{name} ({vname}) sample {i}: not JSON ({e}): {}",
                                    s.text
                                ));
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    let e = e.to_string();
                    match expect_err {
                        Some(msg) if e.contains(msg) => {}
                        Some(msg) => {
                            failures.push(format!("{name} ({vname}): error '{e}' lacks '{msg}'"))
                        }
                        None => failures.push(format!(
                            "{name} ({vname}): in the baseline as compiling, now fails: {e}"
                        )),
                    }
                }
            }
        }
    }
    for n in &notes {
        eprintln!("note: {n}");
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
