//! Criterion benches of the grammar-constrained decoding core.
//!
//! - `compile/<tokenizer>`: compiling the built-in job schema against a prepared vocabulary.
//! - `mask_walk/<tokenizer>`: per-token cost of walking real target documents (the
//!   `expected_json` strings of ../shared/seed/eval-results, tokenized by the real tokenizer as
//!   in training) token by token: the full mask computation before every token, then the commit.
//!   Throughput is reported per token.
//!
//! Before the criterion runs, the same walk is timed per mask by `grammar_bench` and its JSON
//! line (median / p99 / max per mask) is printed, since criterion reports means.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use jobx_engine::grammar::tools::{grammar_bench, BenchOptions};
use jobx_engine::grammar::{job_schema, CompileOptions, Grammar, Matcher, SurfaceOptions, Vocab};
use serde_json::Value;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

const TOKENIZERS: [&str; 2] = ["t5", "mistral-7b-v0.1"];

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tokenizer_path(name: &str) -> String {
    manifest()
        .join("tests/fixtures/tokenizers")
        .join(name)
        .join("tokenizer.json")
        .to_string_lossy()
        .into_owned()
}

fn eval_results() -> Vec<PathBuf> {
    let dir = manifest().join("../shared/seed/eval-results");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (shared/ must sit beside the repository)",
                dir.display()
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    v.sort();
    v
}

/// Distinct schema-valid targets from every eval-results file.
fn targets() -> Vec<String> {
    let schema = job_schema();
    let mut seen = std::collections::BTreeSet::new();
    for p in eval_results() {
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(&p).expect("read")).expect("json");
        for r in v["evaluation_results"].as_array().into_iter().flatten() {
            if let Some(s) = r["expected_json"].as_str() {
                if let Ok(doc) = serde_json::from_str::<Value>(s) {
                    if jobx_engine::grammar::validate::validate(&schema, &doc).is_ok()
                        && !s.contains(['~', '^', '`'])
                    {
                        seen.insert(s.to_string());
                    }
                }
            }
        }
    }
    seen.into_iter().collect()
}

fn encoder(path: &str) -> tokenizers::Tokenizer {
    tokenizers::Tokenizer::from_file(path).expect("tokenizer")
}

fn benches(c: &mut Criterion) {
    let docs = targets();
    // Per-mask distribution through the library's bench (what `jobx-engine grammar bench` prints).
    let jsonl = std::env::temp_dir().join("jobx_grammar_bench_docs.jsonl");
    let lines: Vec<String> = docs
        .iter()
        .map(|d| serde_json::to_string(d).unwrap_or_default())
        .collect();
    std::fs::write(&jsonl, lines.join("\n")).expect("write temp jsonl");
    for name in TOKENIZERS {
        let path = tokenizer_path(name);
        let tok = encoder(&path);
        let opts = BenchOptions {
            schema: "job".into(),
            tokenizer: path.clone(),
            documents: jsonl.to_string_lossy().into_owned(),
            surface: SurfaceOptions::default(),
            encode: Some(Box::new(move |s: &str| {
                Ok(tok
                    .encode(s, false)
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .get_ids()
                    .to_vec())
            })),
        };
        match grammar_bench(&opts) {
            Ok(s) => println!("grammar_bench {name}: {}", s.to_json_line()),
            Err(e) => println!("grammar_bench {name}: error {e}"),
        }
    }

    let schema = job_schema();
    let mut group = c.benchmark_group("compile");
    for name in TOKENIZERS {
        let vocab = Arc::new(Vocab::from_tokenizer_json(&tokenizer_path(name)).expect("vocab"));
        vocab.prepare(true);
        group.bench_function(name, |b| {
            b.iter(|| {
                black_box(
                    Grammar::compile(&schema, vocab.clone(), &CompileOptions::default())
                        .expect("compile"),
                )
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("mask_walk");
    for name in TOKENIZERS {
        let path = tokenizer_path(name);
        let vocab = Arc::new(Vocab::from_tokenizer_json(&path).expect("vocab"));
        let g =
            Grammar::compile(&schema, vocab.clone(), &CompileOptions::default()).expect("compile");
        let tok = encoder(&path);
        let eos = vocab.eos_ids()[0];
        let seqs: Vec<Vec<u32>> = docs
            .iter()
            .take(200)
            .map(|d| {
                let mut ids = tok
                    .encode(d.as_str(), false)
                    .expect("encode")
                    .get_ids()
                    .to_vec();
                ids.push(eos);
                ids
            })
            .collect();
        let total: usize = seqs.iter().map(Vec::len).sum();
        group.throughput(Throughput::Elements(total as u64));
        let mut buf = vec![0u32; g.mask_words()];
        group.bench_function(name, |b| {
            b.iter(|| {
                for ids in &seqs {
                    let mut m = Matcher::new(g.clone(), u32::MAX);
                    for &t in ids {
                        m.compute_mask(&mut buf);
                        black_box(&buf);
                        m.commit_token(t).expect("target token");
                    }
                }
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = grammar;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = benches
}
criterion_main!(grammar);
