//! The extraction pipeline: posting text → prompt → tokens (truncated to the source limit) →
//! batched encoder → constrained/unconstrained generation → text → JSON, one output record per
//! input record, errors included (nothing is dropped).

use crate::error::{Error, Result};
use crate::generate::{generate, EarlyStopping, Finish, GenOptions, Sampling, TokenConstraint};
use crate::hub::resolve_model;
use crate::models::t5::{T5Model, T5Stepper};
use crate::prompts::PromptTemplate;
use crate::tokenizer::Tok;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A loaded model with its tokenizer and generation defaults.
pub struct Engine {
    pub dir: PathBuf,
    pub model: T5Model,
    pub tok: Option<Tok>,
    pub eos: Vec<u32>,
    pub load_ms: f64,
}

impl Engine {
    pub fn load(model: &str) -> Result<Self> {
        let t0 = std::time::Instant::now();
        let dir = resolve_model(model)?;
        let cfg_text = std::fs::read_to_string(dir.join("config.json")).map_err(|e| Error::io(dir.join("config.json"), e))?;
        let v: serde_json::Value = serde_json::from_str(&cfg_text).map_err(|e| Error::config(dir.join("config.json"), e.to_string()))?;
        let mt = v.get("model_type").and_then(|x| x.as_str()).unwrap_or("t5");
        if mt != "t5" && mt != "mt5" {
            return Err(Error::Unsupported(format!("model_type `{mt}` is not supported yet (supported: t5)")));
        }
        let model = T5Model::load_dir(&dir)?;
        let tok_path = dir.join("tokenizer.json");
        let tok = if tok_path.exists() { Some(Tok::from_file(&tok_path)?) } else { None };
        if let Some(t) = &tok {
            t.check_fits(model.cfg.vocab_size)?;
        }
        let eos = crate::verify::eos_ids(&dir, model.cfg.eos_token_id);
        Ok(Engine { dir, model, tok, eos, load_ms: t0.elapsed().as_secs_f64() * 1e3 })
    }

    pub fn tokenizer(&self) -> Result<&Tok> {
        self.tok
            .as_ref()
            .ok_or_else(|| Error::Tokenizer(format!("{} has no tokenizer.json: pass token ids with --input-ids", self.dir.display())))
    }

    /// Generate for a batch of token-id sequences (each already with its EOS); right-padded.
    pub fn generate_ids(
        &self,
        inputs: &[Vec<u32>],
        opts: &GenOptions,
        constraints: &mut [Option<Box<dyn TokenConstraint>>],
    ) -> Result<Vec<crate::generate::GenOutput>> {
        let b = inputs.len();
        if b == 0 {
            return Ok(vec![]);
        }
        let s = inputs.iter().map(|v| v.len()).max().unwrap_or(0);
        if s == 0 || inputs.iter().any(|v| v.is_empty()) {
            return Err(Error::Input("empty input: nothing to encode".into()));
        }
        let pad = self.model.cfg.pad_token_id;
        let mut ids = vec![pad; b * s];
        let mut mask = vec![0u8; b * s];
        for (i, v) in inputs.iter().enumerate() {
            ids[i * s..i * s + v.len()].copy_from_slice(v);
            mask[i * s..i * s + v.len()].iter_mut().for_each(|m| *m = 1);
        }
        let enc = self.model.encode(&ids, &mask, b, s)?;
        let k = opts.num_beams.max(1);
        let src: Vec<usize> = (0..b).flat_map(|i| std::iter::repeat(i).take(k)).collect();
        let mut st = T5Stepper::new(&self.model, &enc, src, opts.max_new_tokens + 1);
        let start = vec![self.model.cfg.decoder_start(); b];
        generate(&mut st, &start, opts, constraints)
    }
}

/// One posting to extract from.
pub struct InputRecord {
    pub id: String,
    /// the posting text, or why it could not be read
    pub source: std::result::Result<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputRecord {
    pub id: String,
    pub output: Option<serde_json::Value>,
    pub raw: Option<String>,
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<Finish>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_tokens: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_tokens: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_tokens_cut: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
}

impl OutputRecord {
    pub fn error(id: &str, msg: String) -> Self {
        OutputRecord {
            id: id.to_string(),
            output: None,
            raw: None,
            error: Some(msg),
            finish_reason: None,
            new_tokens: None,
            source_tokens: None,
            source_tokens_cut: None,
            latency_ms: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ExtractOptions {
    pub max_new_tokens: usize,
    pub min_new_tokens: usize,
    pub num_beams: usize,
    pub early_stopping: EarlyStopping,
    pub length_penalty: f32,
    pub sampling: Option<Sampling>,
    pub max_source_tokens: usize,
    pub batch_size: usize,
    pub template: PromptTemplate,
    /// Largest posting accepted, in bytes (huge inputs are refused before tokenising).
    pub max_source_bytes: usize,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            // the reference project: generate(max_length=384, num_beams=4, early_stopping=True)
            max_new_tokens: 383,
            min_new_tokens: 0,
            num_beams: 4,
            early_stopping: EarlyStopping::True,
            length_penalty: 1.0,
            sampling: None,
            max_source_tokens: 1536,
            batch_size: 4,
            template: PromptTemplate::flan_t5(),
            max_source_bytes: 1 << 20,
        }
    }
}

/// Tokenise one prompt, truncating from the right to `limit` tokens while keeping the final EOS
/// (what HF `tokenizer(..., truncation=True, max_length=limit)` does). Returns (ids, tokens cut).
pub fn tokenize_prompt(tok: &Tok, prompt: &str, limit: usize, eos: Option<u32>) -> Result<(Vec<u32>, usize)> {
    let mut ids = tok.encode(prompt)?;
    let n = ids.len();
    if n > limit && limit > 0 {
        let ends_with_eos = eos.is_some() && ids.last() == eos.as_ref();
        ids.truncate(if ends_with_eos { limit - 1 } else { limit });
        if ends_with_eos {
            ids.push(eos.unwrap_or_default());
        }
        return Ok((ids, n - limit));
    }
    Ok((ids, 0))
}

/// Turn the model's text (with `<unk>` markers kept) into JSON.
pub fn text_to_json(raw: &str) -> std::result::Result<serde_json::Value, String> {
    crate::eval::repair_t5_output(raw, &crate::eval::JobSchema::jobextractx()).map_err(|e| e.to_string())
}

/// Extract every record; `progress` is called after each batch with the number done.
pub fn extract_records(
    engine: &Engine,
    records: &[InputRecord],
    opts: &ExtractOptions,
    warn: &mut dyn FnMut(String),
    progress: &mut dyn FnMut(usize),
    sink: &mut dyn FnMut(OutputRecord) -> Result<()>,
) -> Result<()> {
    let tok = engine.tokenizer()?;
    let eos_tok = engine.eos.first().copied();
    let gen = GenOptions {
        max_new_tokens: opts.max_new_tokens,
        min_new_tokens: opts.min_new_tokens,
        num_beams: opts.num_beams.max(1),
        early_stopping: opts.early_stopping,
        length_penalty: opts.length_penalty,
        eos: engine.eos.clone(),
        sampling: opts.sampling.clone(),
    };
    let mut done = 0usize;
    for chunk in records.chunks(opts.batch_size.max(1)) {
        // prepare: errors become records right away; valid ones are batched
        let mut batch: Vec<(usize, Vec<u32>, usize)> = Vec::new();
        let mut outs: Vec<Option<OutputRecord>> = vec![None; chunk.len()];
        for (i, r) in chunk.iter().enumerate() {
            let src = match &r.source {
                Err(e) => {
                    outs[i] = Some(OutputRecord::error(&r.id, e.clone()));
                    continue;
                }
                Ok(s) => s,
            };
            if src.trim().is_empty() {
                outs[i] = Some(OutputRecord::error(&r.id, "empty posting: nothing to extract".into()));
                continue;
            }
            if src.len() > opts.max_source_bytes {
                outs[i] = Some(OutputRecord::error(
                    &r.id,
                    format!("posting is {} bytes, over the {} byte limit (--max-source-bytes)", src.len(), opts.max_source_bytes),
                ));
                continue;
            }
            let prompt = opts.template.render(src);
            match tokenize_prompt(tok, &prompt, opts.max_source_tokens, eos_tok) {
                Ok((ids, cut)) => {
                    if cut > 0 {
                        warn(format!(
                            "record {}: prompt is {} tokens; cut to {} ({cut} tokens of the end of the posting dropped)",
                            r.id,
                            ids.len() + cut,
                            opts.max_source_tokens
                        ));
                    }
                    batch.push((i, ids, cut));
                }
                Err(e) => outs[i] = Some(OutputRecord::error(&r.id, e.to_string())),
            }
        }
        if !batch.is_empty() {
            let t0 = std::time::Instant::now();
            let inputs: Vec<Vec<u32>> = batch.iter().map(|b| b.1.clone()).collect();
            match engine.generate_ids(&inputs, &gen, &mut []) {
                Ok(gens) => {
                    let ms = t0.elapsed().as_secs_f64() * 1e3;
                    for ((i, ids, cut), g) in batch.iter().zip(gens) {
                        let r = &chunk[*i];
                        // keep <unk> (it marks braces and backslashes), drop pad/eos
                        let keep: Vec<u32> = g.tokens.iter().copied().filter(|t| !engine.eos.contains(t) && *t != engine.model.cfg.pad_token_id).collect();
                        let rec = match tok.decode(&keep, false) {
                            Ok(raw) => {
                                let (output, error) = match text_to_json(&raw) {
                                    Ok(v) => (Some(v), None),
                                    Err(e) => (None, Some(format!("output is not JSON after repair: {e}"))),
                                };
                                OutputRecord {
                                    id: r.id.clone(),
                                    output,
                                    raw: Some(raw),
                                    error,
                                    finish_reason: Some(g.finish),
                                    new_tokens: Some(g.tokens.len()),
                                    source_tokens: Some(ids.len()),
                                    source_tokens_cut: if *cut > 0 { Some(*cut) } else { None },
                                    latency_ms: Some(ms),
                                }
                            }
                            Err(e) => OutputRecord::error(&r.id, e.to_string()),
                        };
                        outs[*i] = Some(rec);
                    }
                }
                Err(e) => {
                    for (i, _, _) in &batch {
                        outs[*i] = Some(OutputRecord::error(&chunk[*i].id, format!("generation failed: {e}")));
                    }
                }
            }
        }
        for (i, o) in outs.into_iter().enumerate() {
            sink(o.unwrap_or_else(|| OutputRecord::error(&chunk[i].id, "internal: no result".into())))?;
        }
        done += chunk.len();
        progress(done);
    }
    Ok(())
}

/// Input format of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    Text,
    Jsonl,
}

/// Read records: `text` = the whole file is one posting; `jsonl` = one JSON object per line with a
/// `source` string (and optional `id`). Bad lines become error records, never a crash.
pub fn read_records(name: &str, bytes: &[u8], fmt: InputFormat) -> Vec<InputRecord> {
    match fmt {
        InputFormat::Text => {
            let source = std::str::from_utf8(bytes)
                .map(|s| s.to_string())
                .map_err(|e| format!("input is not valid UTF-8 (first bad byte at offset {})", e.valid_up_to()));
            vec![InputRecord { id: name.to_string(), source }]
        }
        InputFormat::Jsonl => {
            let mut out = Vec::new();
            for (ln, line) in bytes.split(|&b| b == b'\n').enumerate() {
                if line.iter().all(|b| b.is_ascii_whitespace()) {
                    continue;
                }
                let default_id = format!("{name}:{}", ln + 1);
                let rec = match std::str::from_utf8(line) {
                    Err(e) => InputRecord { id: default_id, source: Err(format!("line is not valid UTF-8 (offset {})", e.valid_up_to())) },
                    Ok(text) => match serde_json::from_str::<serde_json::Value>(text) {
                        Err(e) => InputRecord { id: default_id, source: Err(format!("line is not JSON: {e}")) },
                        Ok(v) => {
                            let id = match v.get("id") {
                                Some(serde_json::Value::String(s)) => s.clone(),
                                Some(serde_json::Value::Number(n)) => n.to_string(),
                                _ => default_id,
                            };
                            match v.get("source") {
                                Some(serde_json::Value::String(s)) => InputRecord { id, source: Ok(s.clone()) },
                                Some(_) => InputRecord { id, source: Err("`source` is not a string".into()) },
                                None => InputRecord { id, source: Err("record has no `source` field".into()) },
                            }
                        }
                    },
                };
                out.push(rec);
            }
            out
        }
    }
}

pub fn format_for_path(p: &Path) -> InputFormat {
    match p.extension().and_then(|e| e.to_str()) {
        Some("jsonl") | Some("ndjson") => InputFormat::Jsonl,
        _ => InputFormat::Text,
    }
}
