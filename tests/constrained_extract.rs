//! Grammar-constrained extraction end to end: with random tiny models (the worst case: the model
//! wants garbage), every output of greedy, beam search and sampling is complete, parses, and
//! validates against the job schema (checked with the independent jsonschema crate), ends with
//! EOS within max_new_tokens, for T5 (<unk> surface) and Mistral (literal surface).
mod common;
use jobx_engine::extract::{compile_grammar, extract_records, Engine, ExtractOptions, InputRecord};
use jobx_engine::generate::{EarlyStopping, Finish, Sampling};

fn records() -> Vec<InputRecord> {
    std::fs::read_to_string(common::repo().join("examples/hn-postings.jsonl"))
        .unwrap()
        .lines()
        .take(2)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            InputRecord {
                id: v["id"].as_str().unwrap().into(),
                adapter: None,
                source: Ok(v["source"].as_str().unwrap().into()),
            }
        })
        .collect()
}

fn check(e: &Engine, label: &str) {
    let g = compile_grammar(e, "job").unwrap();
    let schema = jobx_engine::grammar::job_schema();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let sampling = Some(Sampling {
        temperature: 1.3,
        top_p: 0.95,
        top_k: 0,
        seed: 5,
    });
    let min = g.min_tokens() as usize + 1;
    for (beams, max, samp) in [
        (1usize, 383usize, None),
        (3, 300, None),
        (1, 260, sampling.clone()),
        (1, min, None),
        (2, min + 3, None),
    ] {
        let opts = ExtractOptions {
            max_new_tokens: max,
            num_beams: beams,
            early_stopping: EarlyStopping::True,
            sampling: samp.clone(),
            max_source_tokens: 256,
            grammar: Some(g.clone()),
            ..Default::default()
        };
        let mut outs = Vec::new();
        extract_records(e, &records(), &opts, &mut |_| {}, &mut |_| {}, &mut |o| {
            outs.push(o);
            Ok(())
        })
        .unwrap();
        assert_eq!(outs.len(), 2);
        for o in &outs {
            let v = o
                .output
                .as_ref()
                .unwrap_or_else(|| panic!("{label} beams={beams} max={max}: {:?}", o.error));
            assert!(
                validator.is_valid(v),
                "{label} beams={beams} max={max}: invalid {v}"
            );
            assert_eq!(
                o.finish_reason,
                Some(Finish::Eos),
                "{label} beams={beams} max={max}"
            );
            assert!(o.new_tokens.unwrap() <= max);
            assert_eq!(
                v.as_object().unwrap().keys().next().unwrap(),
                "experience_level",
                "declared order"
            );
        }
    }
    // too small a budget is a clear error before any work
    let opts = ExtractOptions {
        max_new_tokens: min - 1,
        num_beams: 1,
        grammar: Some(g),
        ..Default::default()
    };
    let err = extract_records(e, &records(), &opts, &mut |_| {}, &mut |_| {}, &mut |_| {
        Ok(())
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("too small"), "{err}");
}

#[test]
fn t5_outputs_are_schema_valid_by_construction() {
    let t = common::tiny_t5_with_tokenizer();
    let e = Engine::load(t.path().to_str().unwrap()).unwrap();
    check(&e, "t5");
    // the <unk> surface: braces come from <unk> tokens, mapped back to exact JSON
    let g = compile_grammar(&e, "job").unwrap();
    assert!(g.uses_unk());
}

#[test]
fn mistral_outputs_are_schema_valid_by_construction() {
    let t = common::tiny_mistral_with_tokenizer();
    let mut e = Engine::load(t.path().to_str().unwrap()).unwrap();
    e.chat = Some(jobx_engine::chat::ChatTemplate {
        source: jobx_engine::chat::MISTRAL_V3.into(),
        bos_token: "<s>".into(),
        eos_token: "</s>".into(),
    });
    check(&e, "mistral");
    assert!(!compile_grammar(&e, "job").unwrap().uses_unk());
}

#[test]
fn extract_cli_constrains_by_default_and_takes_user_schemas() {
    let t = common::tiny_t5_with_tokenizer();
    let run = |extra: &[&str]| {
        let o = common::cli()
            .args(["extract", "--model"])
            .arg(t.path())
            .arg(common::repo().join("examples/hn-postings.jsonl"))
            .args(["--num-beams", "1", "--max-source-tokens", "128"])
            .args(extra)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (code, out, _) = run(&["--max-new-tokens", "300"]);
    assert_eq!(code, Some(0));
    for l in out.lines() {
        let r: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(r["output"].is_object() && r["error"].is_null(), "{r}");
    }
    // a small user schema
    let sp = t.path().join("s.json");
    std::fs::write(&sp, r#"{"type":"object","properties":{"title":{"type":"string","maxLength":20},"remote":{"type":"boolean"}},"required":["title","remote"],"additionalProperties":false}"#).unwrap();
    let (code, out, err) = run(&["--max-new-tokens", "60", "--schema"]);
    assert_ne!(code, Some(0), "--schema needs a value: {err}");
    let _ = out;
    let o = common::cli()
        .args(["extract", "--model"])
        .arg(t.path())
        .arg(common::repo().join("examples/hn-postings.jsonl"))
        .args([
            "--num-beams",
            "1",
            "--max-source-tokens",
            "128",
            "--max-new-tokens",
            "60",
            "--schema",
        ])
        .arg(&sp)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for l in String::from_utf8_lossy(&o.stdout).lines() {
        let r: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(
            r["output"]["title"].is_string() && r["output"]["remote"].is_boolean(),
            "{r}"
        );
        assert!(r["output"]["title"].as_str().unwrap().chars().count() <= 20);
    }
    // an unsupported keyword is named
    std::fs::write(
        &sp,
        r#"{"type":"object","patternProperties":{"a":{"type":"string"}}}"#,
    )
    .unwrap();
    let o = common::cli()
        .args(["extract", "--model"])
        .arg(t.path())
        .arg(common::repo().join("examples/hn-postings.jsonl"))
        .arg("--schema")
        .arg(&sp)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("patternProperties"));
    // --no-constrain falls back to the repair path
    let (code, out, _) = run(&["--max-new-tokens", "20", "--no-constrain"]);
    assert_eq!(code, Some(0));
    assert_eq!(out.lines().count(), 4);
}

#[test]
fn forced_tokens_give_the_same_output_with_fewer_forward_passes() {
    // Greedy with a constraint: forced runs (only one legal token) are appended without sampling
    // and fed in one forward pass. The result must equal token-by-token decoding.
    use jobx_engine::generate::TokenConstraint;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    #[derive(Clone)]
    struct Probe(
        jobx_engine::extract::GrammarConstraint,
        bool,
        Arc<AtomicUsize>,
    );
    impl TokenConstraint for Probe {
        fn mask(&mut self, s: &mut [f32]) -> jobx_engine::Result<()> {
            self.0.mask(s)
        }
        fn commit(&mut self, t: u32) -> jobx_engine::Result<()> {
            self.0.commit(t)
        }
        fn forced(&self) -> Vec<u32> {
            if !self.1 {
                return vec![];
            }
            let f = self.0.forced();
            self.2.fetch_add(f.len(), Ordering::Relaxed);
            f
        }
        fn box_clone(&self) -> Box<dyn TokenConstraint> {
            Box::new(self.clone())
        }
    }
    for mistral in [false, true] {
        let t = if mistral {
            common::tiny_mistral_with_tokenizer()
        } else {
            common::tiny_t5_with_tokenizer()
        };
        let mut e = Engine::load(t.path().to_str().unwrap()).unwrap();
        e.chat = Some(jobx_engine::chat::ChatTemplate {
            source: jobx_engine::chat::MISTRAL_V3.into(),
            bos_token: "<s>".into(),
            eos_token: "</s>".into(),
        });
        let g = compile_grammar(&e, "job").unwrap();
        let (ids, _) = e
            .prompt_ids(
                &jobx_engine::prompts::PromptTemplate {
                    text: "{source}".into(),
                },
                "Rust engineer, remote",
                512,
            )
            .unwrap();
        let opts = jobx_engine::generate::GenOptions {
            max_new_tokens: 300,
            num_beams: 1,
            eos: e.eos.clone(),
            ..Default::default()
        };
        let n = Arc::new(AtomicUsize::new(0));
        let mk = |force: bool| -> Vec<Option<Box<dyn TokenConstraint>>> {
            vec![Some(Box::new(Probe(
                jobx_engine::extract::GrammarConstraint::new(g.clone(), 300),
                force,
                n.clone(),
            )))]
        };
        let a = e
            .generate_ids(std::slice::from_ref(&ids), &opts, &mut mk(true))
            .unwrap();
        let forced = n.load(Ordering::Relaxed);
        let b = e.generate_ids(&[ids], &opts, &mut mk(false)).unwrap();
        assert_eq!(a[0].tokens, b[0].tokens, "mistral={mistral}");
        eprintln!(
            "mistral={mistral}: {forced} forced tokens of {}",
            a[0].tokens.len()
        );
        assert!(
            forced > 0,
            "mistral={mistral}: the forced path was not exercised"
        );
    }
}
