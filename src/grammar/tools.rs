//! `grammar check` and `grammar bench`: the library side of the CLI commands.
//!
//! - [`grammar_check`] draws N documents by picking uniformly random allowed tokens (what random
//!   logits give) under the token budget, maps each back to JSON and checks that it parses,
//!   validates against the schema ([`super::validate`]) and is complete.
//! - [`grammar_bench`] walks real documents token by token as a model would emit them on the chosen
//!   surface, timing the full mask computation before every token (EOS included).
//!
//! Timing uses `std::time::Instant` around `Matcher::compute_mask` (a copy of the cached mask into
//! a caller buffer, or a budget-level mask built on first use).

use super::compiled::{CompileOptions, Grammar};
use super::matcher::Matcher;
use super::surface::SurfaceOptions;
use super::vocab::Vocab;
use super::{job, validate, GrammarError, Result};
use serde::Serialize;
use serde_json::Value;
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

/// Loads `job` (built-in) or a schema file, within the schema size budget.
pub fn load_schema(name_or_path: &str) -> Result<Value> {
    if name_or_path == "job" {
        return Ok(job::job_schema());
    }
    let text = std::fs::read_to_string(name_or_path).map_err(|e| GrammarError::Io {
        path: name_or_path.to_string(),
        source: e,
    })?;
    let limit = super::schema::Budgets::default().max_schema_bytes;
    if text.len() > limit {
        return Err(GrammarError::Budget {
            what: "schema bytes",
            limit,
            path: name_or_path.to_string(),
        });
    }
    serde_json::from_str(&text).map_err(|e| GrammarError::Json {
        what: name_or_path.to_string(),
        source: e,
    })
}

/// splitmix64: a tiny, seedable PRNG (no `rand` dependency).
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in 0..n (n > 0), by 128-bit multiply.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// Picks a uniformly random set bit of a mask (None if empty).
pub fn pick_uniform(mask: &[u32], rng: &mut SplitMix64) -> Option<u32> {
    let total: u64 = mask.iter().map(|w| w.count_ones() as u64).sum();
    if total == 0 {
        return None;
    }
    let mut k = rng.below(total);
    for (i, &w) in mask.iter().enumerate() {
        let c = w.count_ones() as u64;
        if k < c {
            let mut w = w;
            for _ in 0..k {
                w &= w - 1;
            }
            return Some(i as u32 * 32 + w.trailing_zeros());
        }
        k -= c;
    }
    None
}

/// Options of `jobx-engine grammar check`.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// `job` or a schema file.
    pub schema: String,
    /// A tokenizer.json path.
    pub tokenizer: String,
    pub samples: usize,
    pub seed: u64,
    /// Token budget per sample, EOS included (default 384).
    pub max_tokens: u32,
    /// Write every sample, mapped back to JSON, one per line.
    pub emit: Option<String>,
    pub surface: SurfaceOptions,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            schema: "job".into(),
            tokenizer: String::new(),
            samples: 100,
            seed: 0,
            max_tokens: 384,
            emit: None,
            surface: SurfaceOptions::default(),
        }
    }
}

/// The JSON summary line of `grammar check`.
#[derive(Debug, Clone, Serialize)]
pub struct CheckSummary {
    pub samples: usize,
    pub valid: usize,
    pub complete: usize,
    pub mean_mask_us: f64,
    pub p99_mask_us: f64,
    pub compile_ms: f64,
}

impl CheckSummary {
    /// Every sample valid and complete (the CLI exits non-zero otherwise).
    pub fn ok(&self) -> bool {
        self.valid == self.samples && self.complete == self.samples
    }
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Result of drawing one random document.
#[derive(Debug, Clone)]
pub struct Sample {
    pub tokens: Vec<u32>,
    pub text: String,
    pub complete: bool,
}

/// Draws one document by uniformly random allowed tokens. `mask_ns` receives one timing per mask.
pub fn random_sample(
    g: &Arc<Grammar>,
    max_tokens: u32,
    rng: &mut SplitMix64,
    mask_ns: &mut Vec<u32>,
) -> Result<Sample> {
    let mut m = Matcher::new(g.clone(), max_tokens);
    let mut buf = vec![0u32; g.mask_words()];
    let mut tokens = Vec::new();
    loop {
        let t0 = Instant::now();
        m.compute_mask(&mut buf);
        mask_ns.push(t0.elapsed().as_nanos().min(u32::MAX as u128) as u32);
        let Some(tok) = pick_uniform(&buf, rng) else {
            break;
        };
        m.commit_token(tok)?;
        tokens.push(tok);
        if m.is_finished() {
            break;
        }
    }
    let text = g.decode_text(&tokens)?;
    Ok(Sample {
        tokens,
        text,
        complete: m.is_complete(),
    })
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64
}

/// Runs `grammar check`. Invalid or incomplete samples are counted, not errors.
pub fn grammar_check(opts: &CheckOptions) -> Result<CheckSummary> {
    let schema = load_schema(&opts.schema)?;
    let vocab = Arc::new(Vocab::from_tokenizer_json(&opts.tokenizer)?);
    vocab.prepare(opts.surface.ascii);
    let t0 = Instant::now();
    let g = Grammar::compile(
        &schema,
        vocab,
        &CompileOptions {
            surface: opts.surface,
            ..Default::default()
        },
    )?;
    let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut emit = match &opts.emit {
        Some(p) => Some(std::io::BufWriter::new(std::fs::File::create(p).map_err(
            |e| GrammarError::Io {
                path: p.clone(),
                source: e,
            },
        )?)),
        None => None,
    };
    let mut rng = SplitMix64(opts.seed);
    let mut times = Vec::new();
    let (mut valid, mut complete) = (0, 0);
    for _ in 0..opts.samples {
        let s = random_sample(&g, opts.max_tokens, &mut rng, &mut times)?;
        if s.complete {
            complete += 1;
        }
        if let Ok(v) = serde_json::from_str::<Value>(&s.text) {
            if validate::validate(&schema, &v).is_ok() {
                valid += 1;
            }
        }
        if let Some(w) = emit.as_mut() {
            writeln!(w, "{}", s.text).map_err(|e| GrammarError::Io {
                path: opts.emit.clone().unwrap_or_default(),
                source: e,
            })?;
        }
    }
    if let Some(mut w) = emit {
        w.flush().map_err(|e| GrammarError::Io {
            path: opts.emit.clone().unwrap_or_default(),
            source: e,
        })?;
    }
    let mean = if times.is_empty() {
        0.0
    } else {
        times.iter().map(|&t| t as f64).sum::<f64>() / times.len() as f64
    };
    times.sort_unstable();
    Ok(CheckSummary {
        samples: opts.samples,
        valid,
        complete,
        mean_mask_us: mean / 1e3,
        p99_mask_us: percentile(&times, 0.99) / 1e3,
        compile_ms,
    })
}

/// A tokenizer callback: document text → token ids, without BOS/EOS.
pub type EncodeFn = dyn Fn(&str) -> anyhow::Result<Vec<u32>> + Send + Sync;

/// Options of `jobx-engine grammar bench`.
pub struct BenchOptions {
    pub schema: String,
    pub tokenizer: String,
    /// JSONL: each line a document, a JSON string holding a document, or an object with an
    /// `expected_json` string (eval-results records); or a whole eval-results JSON file.
    pub documents: String,
    pub surface: SurfaceOptions,
    /// The real tokenizer (recommended). Without it, documents are split greedily into the longest
    /// allowed tokens ([`Grammar::greedy_tokenize`]).
    pub encode: Option<Box<EncodeFn>>,
}

/// The JSON summary line of `grammar bench`.
#[derive(Debug, Clone, Serialize)]
pub struct BenchSummary {
    pub documents: usize,
    pub tokens: usize,
    pub median_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub compile_ms: f64,
    /// Documents skipped because they do not validate against the schema (not in the JSON
    /// line, whose keys are fixed; the CLI reports it on stderr).
    #[serde(skip)]
    pub skipped: usize,
}

impl BenchSummary {
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Reads the documents of a bench file (see [`BenchOptions::documents`]).
pub fn read_documents(path: &str) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| GrammarError::Io {
        path: path.to_string(),
        source: e,
    })?;
    let mut out = Vec::new();
    // Also accepted: a whole eval-results file ({"evaluation_results": [{"expected_json": ...}]}).
    if let Ok(Value::Object(o)) = serde_json::from_str::<Value>(&text) {
        if let Some(Value::Array(records)) = o.get("evaluation_results") {
            for (i, r) in records.iter().enumerate() {
                if let Some(s) = r.get("expected_json").and_then(Value::as_str) {
                    let what = format!("{path} record {i}");
                    out.push(
                        serde_json::from_str(s)
                            .map_err(|e| GrammarError::Json { what, source: e })?,
                    );
                }
            }
            return Ok(out);
        }
    }
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let what = || format!("{path} line {}", i + 1);
        let v: Value = serde_json::from_str(line).map_err(|e| GrammarError::Json {
            what: what(),
            source: e,
        })?;
        let doc = match &v {
            Value::String(s) => serde_json::from_str(s).map_err(|e| GrammarError::Json {
                what: what(),
                source: e,
            })?,
            Value::Object(o) if o.get("expected_json").is_some_and(Value::is_string) => {
                let s = o
                    .get("expected_json")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                serde_json::from_str(s).map_err(|e| GrammarError::Json {
                    what: what(),
                    source: e,
                })?
            }
            _ => v,
        };
        out.push(doc);
    }
    Ok(out)
}

/// The json.dumps text of a document (structural characters literal), as a tokenizer sees it.
pub fn dumps(doc: &Value) -> String {
    fn esc(s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                ' '..='~' => out.push(c),
                _ => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{:04x}", u));
                    }
                }
            }
        }
        out.push('"');
    }
    fn go(v: &Value, out: &mut String) {
        match v {
            Value::String(s) => esc(s, out),
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    go(x, out);
                }
                out.push(']');
            }
            Value::Object(m) => {
                out.push('{');
                for (i, (k, x)) in m.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    esc(k, out);
                    out.push_str(": ");
                    go(x, out);
                }
                out.push('}');
            }
            _ => out.push_str(&v.to_string()),
        }
    }
    let mut s = String::new();
    go(doc, &mut s);
    s
}

/// Runs `grammar bench`.
pub fn grammar_bench(opts: &BenchOptions) -> Result<BenchSummary> {
    let schema = load_schema(&opts.schema)?;
    let vocab = Arc::new(Vocab::from_tokenizer_json(&opts.tokenizer)?);
    vocab.prepare(opts.surface.ascii);
    let t0 = Instant::now();
    let g = Grammar::compile(
        &schema,
        vocab.clone(),
        &CompileOptions {
            surface: opts.surface,
            ..Default::default()
        },
    )?;
    let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
    let docs = read_documents(&opts.documents)?;
    let mut times: Vec<u32> = Vec::new();
    let mut buf = vec![0u32; g.mask_words()];
    let (mut n_docs, mut skipped) = (0, 0);
    for (i, doc) in docs.iter().enumerate() {
        if validate::validate(&schema, doc).is_err() {
            skipped += 1;
            continue;
        }
        let mut tokens = match &opts.encode {
            Some(enc) => enc(&dumps(doc))
                .map_err(|e| GrammarError::Vocab(format!("encode failed on document {i}: {e}")))?,
            None => g.greedy_tokenize(doc)?,
        };
        if tokens.last().is_none_or(|t| !vocab.eos_ids().contains(t)) {
            tokens.push(vocab.eos_ids()[0]);
        }
        let mut m = Matcher::new(g.clone(), u32::MAX);
        for (k, &tok) in tokens.iter().enumerate() {
            let t0 = Instant::now();
            m.compute_mask(&mut buf);
            times.push(t0.elapsed().as_nanos().min(u32::MAX as u128) as u32);
            m.commit_token(tok).map_err(|e| {
                GrammarError::Vocab(format!("document {i}: token {k} (id {tok}) rejected: {e}"))
            })?;
        }
        n_docs += 1;
    }
    let n = times.len();
    times.sort_unstable();
    Ok(BenchSummary {
        documents: n_docs,
        tokens: n,
        median_us: percentile(&times, 0.5) / 1e3,
        p99_us: percentile(&times, 0.99) / 1e3,
        max_us: times.last().copied().unwrap_or(0) as f64 / 1e3,
        compile_ms,
        skipped,
    })
}
