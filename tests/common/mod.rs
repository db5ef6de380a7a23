//! Helpers shared by the integration tests.
#![allow(dead_code)]
use std::path::{Path, PathBuf};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures").join(name)
}

/// Every fixture folder holding a reference.json, sorted.
pub fn reference_fixtures() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join("tests/fixtures"))
        .expect("tests/fixtures exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("reference.json").exists())
        .collect();
    v.sort();
    v
}

/// Copy a folder's files (not subfolders) into a fresh temp dir.
pub fn copy_dir(src: &Path) -> tempfile::TempDir {
    let t = tempfile::tempdir().expect("tempdir");
    for e in std::fs::read_dir(src).expect("read fixture") {
        let p = e.expect("entry").path();
        if p.is_file() {
            std::fs::copy(&p, t.path().join(p.file_name().unwrap())).expect("copy");
        }
    }
    t
}

/// A complete model folder (weights + real T5 tokenizer) for text-pipeline tests.
pub fn tiny_t5_with_tokenizer() -> tempfile::TempDir {
    let t = copy_dir(&fixture("t5-tiny-real-vocab"));
    let tok = repo().join("tests/fixtures/tokenizers/t5/tokenizer.json");
    std::fs::copy(&tok, t.path().join("tokenizer.json"))
        .expect("tests/fixtures/tokenizers/t5/tokenizer.json is committed");
    t
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_jobx-engine"))
}

/// The tiny real-vocabulary Mistral with the real Mistral tokenizer, in a temp model folder.
pub fn tiny_mistral_with_tokenizer() -> tempfile::TempDir {
    let t = copy_dir(&fixture("mistral-tiny-real-vocab"));
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        std::fs::copy(
            repo()
                .join("tests/fixtures/tokenizers/mistral-7b-v0.1")
                .join(f),
            t.path().join(f),
        )
        .expect("mistral tokenizer fixture");
    }
    t
}

/// Run a jobx-engine command, require success (stderr in the panic message), and return the
/// last stdout line parsed as JSON (the summary / result line every command ends with).
pub fn run_last_json(cmd: &mut std::process::Command) -> serde_json::Value {
    let out = cmd.output().expect("run jobx-engine");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 stdout");
    let last = stdout.lines().last().expect("at least one output line");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last line not JSON ({e}): {last}"))
}

/// Seeded xorshift64 for test data (the same sequence on every machine).
pub struct Rng(pub u64);

impl Rng {
    /// Uniform in [-1, 1).
    pub fn f(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// Per-row CPU references for the adapter checks: T5 decoder logits, one [vocab] vector per
/// step, for one unpadded source row fed the decoder tokens `dec` (teacher forcing), with LoRA
/// slot `adapter` of `model`.
pub fn t5_row_logits(
    model: &jobx_engine::models::t5::T5Model,
    src: &[u32],
    adapter: Option<usize>,
    dec: &[u32],
) -> Vec<Vec<f32>> {
    use jobx_engine::generate::Stepper;
    let enc = model
        .encode_with(src, &vec![1; src.len()], 1, src.len(), adapter)
        .expect("encode");
    let mut st = jobx_engine::models::t5::T5Stepper::new(model, &enc, vec![0], dec.len());
    let mut out = Vec::new();
    for &t in dec {
        let mut lg = Vec::new();
        st.step(&[t], &mut lg).expect("step");
        out.push(lg);
    }
    out
}

/// Mistral logits [len, vocab] of every position of one unpadded prompt, LoRA slot `adapter`.
pub fn mistral_row_logits(
    model: &jobx_engine::models::mistral::MistralModel,
    ids: &[u32],
    adapter: Option<usize>,
) -> Vec<f32> {
    let mut st = model.new_state(1, ids.len());
    st.adapter = adapter;
    let mut lg = Vec::new();
    model
        .forward(&mut st, ids, &vec![1; ids.len()], ids.len(), true, &mut lg)
        .expect("forward");
    lg
}

/// max |a - b| / max |b|
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs() as f64));
    let den = b.iter().fold(0f64, |m, y| m.max(y.abs() as f64));
    num / den.max(1e-30)
}

/// Two token rows of lengths 5 and 9 inside vocab [3, v): a padded batch's contents.
pub fn two_rows(v: u32) -> Vec<Vec<u32>> {
    [5usize, 9]
        .iter()
        .enumerate()
        .map(|(r, &n)| {
            (0..n as u32)
                .map(|i| (i * 7 + 3 * r as u32 + 2) % (v - 3) + 3)
                .collect()
        })
        .collect()
}
