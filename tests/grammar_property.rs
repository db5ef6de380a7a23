//! Level 3 of the grammar tests: property tests with the real vocabularies.
//!
//! For each tokenizer, documents are drawn by picking uniformly random allowed tokens (what random
//! logits give) under the token budget; every one must be complete, parse, and validate against the
//! schema with the independent `jsonschema` crate.
//!
//! Sample counts: 10,000 per tokenizer when the test binary is optimised without debug assertions
//! (`cargo test --release`), 1,000 in the default test profile (override with
//! `JOBX_GRAMMAR_SAMPLES=N`). The `#[ignore]`d `full_10k_per_tokenizer` always runs 10,000.

use jobx_engine::grammar::tools::{pick_uniform, random_sample, SplitMix64};
use jobx_engine::grammar::{job_schema, CompileOptions, Grammar, Matcher, Vocab};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;

fn vocab(name: &str) -> Arc<Vocab> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tokenizers")
        .join(name)
        .join("tokenizer.json");
    Arc::new(Vocab::from_tokenizer_json(&p.to_string_lossy()).expect("tokenizer"))
}

fn default_samples() -> usize {
    if let Some(n) = std::env::var("JOBX_GRAMMAR_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return n;
    }
    if cfg!(debug_assertions) {
        1_000
    } else {
        10_000
    }
}

/// Draws `n` documents with budgets from `budget(i)` and checks every one.
fn check_samples(
    g: &Arc<Grammar>,
    schema: &Value,
    n: usize,
    seed: u64,
    budget: impl Fn(usize) -> u32,
) -> (usize, f64) {
    let validator = jsonschema::validator_for(schema).expect("jsonschema compiles the schema");
    let mut rng = SplitMix64(seed);
    let mut times = Vec::new();
    let mut tokens = 0;
    for i in 0..n {
        let max = budget(i);
        let s = random_sample(g, max, &mut rng, &mut times).expect("sampling never errors");
        tokens += s.tokens.len();
        assert!(
            s.complete,
            "sample {i} (seed {seed}, budget {max}) incomplete: {}",
            s.text
        );
        assert!(s.tokens.len() <= max as usize, "sample {i} over budget");
        // the budget counts EOS, and every document ends with it within the budget
        assert!(
            s.tokens
                .last()
                .is_some_and(|t| g.vocab().eos_ids().contains(t)),
            "sample {i} (budget {max}) does not end with EOS"
        );
        let v: Value = serde_json::from_str(&s.text)
            .unwrap_or_else(|e| panic!("sample {i} does not parse ({e}): {}", s.text));
        if let Err(e) = validator.validate(&v) {
            panic!("sample {i} invalid: {e}: {}", s.text);
        }
    }
    let mean_us = times.iter().map(|&t| t as f64).sum::<f64>() / times.len().max(1) as f64 / 1e3;
    (tokens, mean_us)
}

fn job_run(n: usize) {
    let schema = job_schema();
    for name in ["t5", "mistral-7b-v0.1"] {
        let g =
            Grammar::compile(&schema, vocab(name), &CompileOptions::default()).expect("compile");
        let (tokens, mean_us) = check_samples(&g, &schema, n, 42, |_| 384);
        eprintln!("{name}: {n} job documents, {tokens} tokens, mean mask {mean_us:.3} us");
    }
}

#[test]
fn job_schema_random_documents_are_valid() {
    job_run(default_samples());
}

#[test]
#[ignore = "the full 10,000 per tokenizer regardless of profile; run with --ignored"]
fn full_10k_per_tokenizer() {
    job_run(10_000);
}

#[test]
fn tight_budgets_always_complete() {
    let schema = job_schema();
    for name in ["t5", "mistral-7b-v0.1"] {
        let g =
            Grammar::compile(&schema, vocab(name), &CompileOptions::default()).expect("compile");
        let min = g.min_tokens();
        // From exactly the minimal document plus EOS to 60 tokens more.
        check_samples(&g, &schema, 300, 7, |i| min + 1 + (i % 61) as u32);
        // Below that nothing is allowed at all (the minimal document without room for EOS).
        let m = Matcher::new(g.clone(), min);
        assert!(m.mask().iter().all(|&w| w == 0));
    }
    // A small schema under a 40-token budget (the example).
    let small = json!({
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 4},
            "level": {"enum": ["junior", "mid", "senior"]},
            "years": {"type": ["integer", "null"]}
        },
        "required": ["title", "tags"],
        "additionalProperties": false
    });
    for name in ["t5", "mistral-7b-v0.1"] {
        let g = Grammar::compile(&small, vocab(name), &CompileOptions::default()).expect("compile");
        assert!(g.min_tokens() < 40, "{name}: {}", g.min_tokens());
        check_samples(&g, &small, 2_000, 11, |_| 40);
    }
}

/// Uniform sampling rarely leaves the first string; this sampler prefers tokens that are not
/// plain words half of the time, so arrays, escapes, numbers and optional keys get exercised.
#[test]
fn structure_biased_sampling_is_valid() {
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 20},
            "kind": {"enum": ["a\"b", "x\\y", "Bachelor\u{2019}s", "{brace}", "^caret~", null, 3]},
            "n": {"type": "number"},
            "i": {"type": "integer"},
            "flag": {"type": "boolean"},
            "list": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}, "minItems": 1, "maxItems": 5},
            "nested": {"type": "object", "properties": {"x": {"type": ["string", "null"]}, "y": {"type": "array", "items": {"type": "object", "properties": {"z": {"const": "zz"}}, "required": ["z"], "additionalProperties": false}}}, "additionalProperties": false}
        },
        "required": ["name", "list"],
        "additionalProperties": false
    });
    for name in ["t5", "mistral-7b-v0.1"] {
        let v = vocab(name);
        let g = Grammar::compile(&schema, v.clone(), &CompileOptions::default()).expect("compile");
        let validator = jsonschema::validator_for(&schema).expect("validator");
        // "Structural" tokens: any byte outside letters and space, or <unk>.
        let words = g.mask_words();
        let mut structural = vec![0u32; words];
        for id in 0..v.len() as u32 {
            let t = v.token_bytes(id);
            if Some(id) == v.unk_id()
                || (!t.is_empty() && t.iter().any(|b| !b.is_ascii_alphabetic() && *b != b' '))
            {
                structural[id as usize / 32] |= 1 << (id % 32);
            }
        }
        let mut rng = SplitMix64(3);
        let mut buf = vec![0u32; words];
        let mut seen_keys = std::collections::BTreeSet::new();
        for i in 0..2_000 {
            let max = 60 + (i % 200) as u32;
            let mut m = Matcher::new(g.clone(), max);
            let mut toks = Vec::new();
            loop {
                m.compute_mask(&mut buf);
                let pick = if rng.next_u64().is_multiple_of(2) {
                    let both: Vec<u32> = buf.iter().zip(&structural).map(|(a, b)| a & b).collect();
                    pick_uniform(&both, &mut rng).or_else(|| pick_uniform(&buf, &mut rng))
                } else {
                    pick_uniform(&buf, &mut rng)
                };
                let Some(t) = pick else { break };
                m.commit_token(t).expect("allowed token");
                toks.push(t);
                if m.is_finished() {
                    break;
                }
            }
            assert!(m.is_complete(), "{name} sample {i} incomplete");
            let text = g.decode_text(&toks).expect("decode");
            let doc: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} {i}: {e}: {text}"));
            if let Err(e) = validator.validate(&doc) {
                panic!("{name} {i}: {e}: {text}");
            }
            if let Some(o) = doc.as_object() {
                seen_keys.extend(o.keys().cloned());
            }
        }
        // Every optional key was produced at least once.
        assert_eq!(seen_keys.len(), 7, "{name}: keys seen {seen_keys:?}");
    }
}
