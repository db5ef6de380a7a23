//! The extraction pipeline: posting text → prompt → tokens (truncated to the source limit) →
//! batched encoder → constrained/unconstrained generation → text → JSON, one output record per
//! input record, errors included (nothing is dropped).

use crate::chat::{ChatTemplate, Message};
use crate::error::{Error, Result};
use crate::generate::{generate, EarlyStopping, Finish, GenOptions, Sampling, TokenConstraint};
use crate::hub::resolve_model;
use crate::models::adapter::LoraAdapter;
use crate::models::linear::HasLinears;
use crate::models::mistral::{MistralConfig, MistralModel, MistralStepper};
use crate::models::t5::{T5Model, T5Stepper};
use crate::prompts::PromptTemplate;
use crate::tokenizer::Tok;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The model graph behind an engine.
pub enum Arch {
    T5(T5Model),
    Mistral(MistralModel),
    /// the CUDA graphs (bf16, or int8 linear weights); the GPU context lives for the process
    #[cfg(feature = "cuda")]
    T5Device(Box<crate::models::t5_device::T5Device<'static, crate::cuda::Gpu>>),
    #[cfg(feature = "cuda")]
    MistralDevice(Box<crate::models::mistral_device::MistralDevice<'static, crate::cuda::Gpu>>),
}

/// A loaded model with its tokenizer, adapters and generation defaults.
pub struct Engine {
    pub dir: PathBuf,
    pub arch: Arch,
    pub tok: Option<Tok>,
    pub eos: Vec<u32>,
    pub load_ms: f64,
    /// chat template (decoder models)
    pub chat: Option<ChatTemplate>,
    /// adapter slot -> name
    pub adapters: Vec<String>,
}

impl Engine {
    pub fn load(model: &str) -> Result<Self> {
        Self::load_on(model, None)
    }

    /// `load` onto the GPU: the CUDA T5 / Mistral graphs, weights in bf16 or (`int8`) int8
    /// linear layers, T5 cross-attention K/V in bf16 or (`int8_cross_kv`) int8, on the
    /// process's GPU 0 (`Gpu::shared`: opened by the first load and kept for the rest of the
    /// process).
    #[cfg(feature = "cuda")]
    pub fn load_cuda(model: &str, int8: bool, int8_cross_kv: bool) -> Result<Self> {
        use std::sync::atomic::Ordering::Relaxed;
        let gpu = crate::cuda::Gpu::shared()?;
        gpu.int8_weights.store(int8, Relaxed);
        gpu.int8_cross_kv.store(int8_cross_kv, Relaxed);
        Self::load_on(model, Some(gpu))
    }

    #[cfg(not(feature = "cuda"))]
    fn load_on(model: &str, _gpu: Option<()>) -> Result<Self> {
        Self::load_any(model, |_, _, _| Ok(None))
    }

    #[cfg(feature = "cuda")]
    fn load_on(model: &str, gpu: Option<&'static crate::cuda::Gpu>) -> Result<Self> {
        Self::load_any(model, |mt, dir, text| {
            let Some(gpu) = gpu else { return Ok(None) };
            let cfg_path = dir.join("config.json");
            Ok(Some(match mt {
                "t5" | "mt5" => {
                    let cfg = crate::models::t5::T5Config::from_json_str(text, &cfg_path)?;
                    let ck = crate::checkpoint::Checkpoint::open_dir(dir)?;
                    let m = crate::models::t5_device::T5Device::load(gpu, cfg, &ck)?;
                    let (v, e) = (m.cfg.vocab_size, vec![m.cfg.eos_token_id]);
                    (Arch::T5Device(Box::new(m)), v, e)
                }
                _ => {
                    let cfg = MistralConfig::from_json_str(text, &cfg_path)?;
                    let ck = crate::checkpoint::Checkpoint::open_dir(dir)?;
                    let m = crate::models::mistral_device::MistralDevice::load(gpu, cfg, &ck)?;
                    let (v, e) = (m.cfg.vocab_size, m.cfg.eos_ids());
                    (Arch::MistralDevice(Box::new(m)), v, e)
                }
            }))
        })
    }

    /// Shared loading: `device_arch` builds the device graphs (None: the CPU ones).
    #[allow(clippy::type_complexity)]
    fn load_any(
        model: &str,
        device_arch: impl FnOnce(&str, &Path, &str) -> Result<Option<(Arch, usize, Vec<u32>)>>,
    ) -> Result<Self> {
        let t0 = std::time::Instant::now();
        let dir = resolve_model(model)?;
        let cfg_path = dir.join("config.json");
        let cfg_text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&cfg_text).map_err(|e| Error::config(&cfg_path, e.to_string()))?;
        let mt = v
            .get("model_type")
            .and_then(|x| x.as_str())
            .unwrap_or("t5")
            .to_string();
        let known = matches!(mt.as_str(), "t5" | "mt5" | "mistral" | "llama" | "mixtral");
        let device = if known {
            device_arch(mt.as_str(), &dir, &cfg_text)?
        } else {
            None
        };
        let (arch, vocab, fallback_eos) = if let Some(d) = device {
            d
        } else {
            Self::cpu_arch(&mt, &dir, &cfg_text, &cfg_path)?
        };
        let tok_path = dir.join("tokenizer.json");
        let tok = if tok_path.exists() {
            Some(Tok::from_file(&tok_path)?)
        } else {
            None
        };
        if let Some(t) = &tok {
            t.check_fits(vocab)?;
        }
        let mut eos = crate::verify::eos_ids(&dir, fallback_eos.first().copied().unwrap_or(1));
        if eos.is_empty() {
            eos = fallback_eos;
        }
        let chat = ChatTemplate::from_model_dir(&dir)?;
        Ok(Engine {
            dir,
            arch,
            tok,
            eos,
            load_ms: t0.elapsed().as_secs_f64() * 1e3,
            chat,
            adapters: Vec::new(),
        })
    }

    /// The CPU graphs for `model_type` `mt`.
    fn cpu_arch(
        mt: &str,
        dir: &Path,
        cfg_text: &str,
        cfg_path: &Path,
    ) -> Result<(Arch, usize, Vec<u32>)> {
        Ok(match mt {
            "t5" | "mt5" => {
                let m = T5Model::load_dir(dir)?;
                let (v, e) = (m.cfg.vocab_size, vec![m.cfg.eos_token_id]);
                (Arch::T5(m), v, e)
            }
            "mistral" | "llama" | "mixtral" => {
                let cfg = MistralConfig::from_json_str(cfg_text, cfg_path)?;
                let m = MistralModel::load(cfg, &crate::checkpoint::Checkpoint::open_dir(dir)?)?;
                let (v, e) = (m.cfg.vocab_size, m.cfg.eos_ids());
                (Arch::Mistral(m), v, e)
            }
            o => {
                return Err(Error::Unsupported(format!(
                    "model_type `{o}` is not supported (t5, mistral, llama)"
                )))
            }
        })
    }

    pub fn is_decoder_only(&self) -> bool {
        self.mistral_cfg().is_some()
    }

    /// The T5 config of a T5 engine (CPU or CUDA graph).
    fn t5_cfg(&self) -> Option<&crate::models::t5::T5Config> {
        match &self.arch {
            Arch::T5(m) => Some(&m.cfg),
            #[cfg(feature = "cuda")]
            Arch::T5Device(m) => Some(&m.cfg),
            _ => None,
        }
    }

    /// The config of a decoder-only engine (CPU or CUDA graph).
    fn mistral_cfg(&self) -> Option<&MistralConfig> {
        match &self.arch {
            Arch::Mistral(m) => Some(&m.cfg),
            #[cfg(feature = "cuda")]
            Arch::MistralDevice(m) => Some(&m.cfg),
            _ => None,
        }
    }

    /// The GPU's name when the engine runs on one.
    pub fn device_name(&self) -> Option<String> {
        #[cfg(feature = "cuda")]
        return self.gpu().map(|g| g.name.clone());
        #[cfg(not(feature = "cuda"))]
        None
    }

    /// The GPU the engine runs on, if it does.
    #[cfg(feature = "cuda")]
    fn gpu(&self) -> Option<&'static crate::cuda::Gpu> {
        match &self.arch {
            Arch::T5Device(m) => Some(m.dev),
            Arch::MistralDevice(m) => Some(m.dev),
            _ => None,
        }
    }

    /// Whether the engine runs on the GPU.
    pub fn on_gpu(&self) -> bool {
        !matches!(self.arch, Arch::T5(_) | Arch::Mistral(_))
    }

    pub fn vocab_size(&self) -> usize {
        match (self.t5_cfg(), self.mistral_cfg()) {
            (Some(c), _) => c.vocab_size,
            (_, Some(c)) => c.vocab_size,
            _ => 0,
        }
    }

    pub fn pad_id(&self) -> u32 {
        match (self.t5_cfg(), self.mistral_cfg()) {
            (Some(c), _) => c.pad_token_id,
            (_, Some(c)) => c
                .pad_token_id
                .unwrap_or_else(|| self.eos.first().copied().unwrap_or(0)),
            _ => 0,
        }
    }

    /// Load a PEFT LoRA adapter into a new slot named `name` (on either device); returns the
    /// slot.
    pub fn load_adapter(&mut self, name: &str, dir: &Path) -> Result<usize> {
        if self.adapters.iter().any(|n| n == name) {
            return Err(Error::Input(format!("adapter name `{name}` is used twice")));
        }
        let a = LoraAdapter::load(dir, name)?;
        let slot = self.adapters.len();
        match &mut self.arch {
            Arch::T5(m) => {
                a.attach(m, slot)?;
            }
            Arch::Mistral(m) => {
                a.attach(m, slot)?;
            }
            // the CUDA graphs stack every slot for the SGMV kernels: slots are the same numbers
            #[cfg(feature = "cuda")]
            Arch::T5Device(m) => check_slot(m.attach_adapter(&a)?, slot)?,
            #[cfg(feature = "cuda")]
            Arch::MistralDevice(m) => check_slot(m.attach_adapter(&a)?, slot)?,
        };
        self.adapters.push(name.to_string());
        Ok(slot)
    }

    /// Merge adapter `slot` into the base weights (then every request uses it). On the GPU the
    /// bf16 weights take the merge; int8 GPU weights cannot (an error, nothing changed).
    pub fn merge_adapter(&mut self, slot: usize) -> Result<()> {
        let lins = match &mut self.arch {
            Arch::T5(m) => m.linears_mut(),
            Arch::Mistral(m) => m.linears_mut(),
            #[cfg(feature = "cuda")]
            Arch::T5Device(m) => return m.merge_adapter(slot),
            #[cfg(feature = "cuda")]
            Arch::MistralDevice(m) => return m.merge_adapter(slot),
        };
        for l in lins {
            l.merge(slot);
        }
        Ok(())
    }

    pub fn adapter_slot(&self, name: &str) -> Option<usize> {
        self.adapters.iter().position(|n| n == name)
    }

    pub fn tokenizer(&self) -> Result<&Tok> {
        self.tok.as_ref().ok_or_else(|| {
            Error::Tokenizer(format!(
                "{} has no tokenizer.json: pass token ids with --input-ids",
                self.dir.display()
            ))
        })
    }

    /// Generate for a batch of token-id sequences: encoder inputs (T5, right-padded) or prompts
    /// (decoder models, left-padded like HF `generate`), with LoRA adapter slot `adapter`.
    pub fn generate_ids(
        &self,
        inputs: &[Vec<u32>],
        opts: &GenOptions,
        constraints: &mut [Option<Box<dyn TokenConstraint>>],
    ) -> Result<Vec<crate::generate::GenOutput>> {
        self.generate_ids_with(inputs, opts, constraints, None)
    }

    pub fn generate_ids_with(
        &self,
        inputs: &[Vec<u32>],
        opts: &GenOptions,
        constraints: &mut [Option<Box<dyn TokenConstraint>>],
        adapter: Option<usize>,
    ) -> Result<Vec<crate::generate::GenOutput>> {
        self.generate_ids_rows(inputs, opts, constraints, &vec![adapter; inputs.len()])
    }

    /// Whether one batch may mix adapters (`generate_ids_rows` with different slots per row):
    /// the CUDA graphs apply LoRA per row (SGMV); the CPU graphs take one adapter per batch.
    pub fn mixes_adapters(&self) -> bool {
        self.on_gpu()
    }

    /// `generate_ids_with` with an adapter slot per input row (None: base model); rows may
    /// differ only where `mixes_adapters`.
    pub fn generate_ids_rows(
        &self,
        inputs: &[Vec<u32>],
        opts: &GenOptions,
        constraints: &mut [Option<Box<dyn TokenConstraint>>],
        adapters: &[Option<usize>],
    ) -> Result<Vec<crate::generate::GenOutput>> {
        let b = inputs.len();
        if b == 0 {
            return Ok(vec![]);
        }
        if adapters.len() != b {
            return Err(Error::Input(format!(
                "{} adapter slots for {b} inputs",
                adapters.len()
            )));
        }
        let adapter = adapters[0];
        if !self.mixes_adapters() && adapters.iter().any(|&a| a != adapter) {
            return Err(Error::Unsupported(
                "one batch with several adapters runs on CUDA only; the CPU graphs take one \
                 adapter per batch"
                    .into(),
            ));
        }
        if let Some(s) = adapters
            .iter()
            .flatten()
            .find(|&&s| s >= self.adapters.len())
        {
            return Err(Error::Input(format!("adapter slot {s} is not loaded")));
        }
        let s = inputs.iter().map(|v| v.len()).max().unwrap_or(0);
        if s == 0 || inputs.iter().any(|v| v.is_empty()) {
            return Err(Error::Input("empty input: nothing to encode".into()));
        }
        let r = self.generate_batch(inputs, s, opts, constraints, adapters);
        // after a GPU generation that ran out of memory (its state, recorded steps included,
        // dropped by now), the graph memory its recordings held goes back to the device first,
        // so the smaller batches `extract` retries with can use it
        #[cfg(feature = "cuda")]
        if let Some(gpu) = self.gpu() {
            if r.as_ref().is_err_and(|e| e.is_out_of_memory()) {
                gpu.trim_graph_memory();
            }
        }
        r
    }

    /// `generate_ids_rows` on checked inputs, padded to `s` tokens.
    fn generate_batch(
        &self,
        inputs: &[Vec<u32>],
        s: usize,
        opts: &GenOptions,
        constraints: &mut [Option<Box<dyn TokenConstraint>>],
        adapters: &[Option<usize>],
    ) -> Result<Vec<crate::generate::GenOutput>> {
        let (b, adapter) = (inputs.len(), adapters[0]);
        let pad = self.pad_id();
        let mut ids = vec![pad; b * s];
        let mut mask = vec![0u8; b * s];
        let k = opts.num_beams.max(1);
        // T5 encoder inputs are right-padded (HF's tokenizer padding), decoder-only prompts
        // left-padded (as HF generate lays them out), on either device
        let left = self.is_decoder_only();
        for (i, v) in inputs.iter().enumerate() {
            let off = if left { s - v.len() } else { 0 };
            ids[i * s + off..i * s + off + v.len()].copy_from_slice(v);
            mask[i * s + off..i * s + off + v.len()]
                .iter_mut()
                .for_each(|m| *m = 1);
        }
        match &self.arch {
            Arch::T5(model) => {
                let enc = model.encode_with(&ids, &mask, b, s, adapter)?;
                let src = crate::generate::beam_parents(b, k);
                let mut st = T5Stepper::new(model, &enc, src, opts.max_new_tokens + 1);
                let start = vec![model.cfg.decoder_start(); b];
                generate(&mut st, &start, opts, constraints)
            }
            Arch::Mistral(model) => {
                let mut st = MistralStepper::new(
                    model,
                    &ids,
                    &mask,
                    b,
                    s,
                    k,
                    opts.max_new_tokens + 1,
                    adapter,
                )?;
                generate(&mut st, &vec![0; b], opts, constraints)
            }
            #[cfg(feature = "cuda")]
            Arch::T5Device(model) => {
                let enc = model.encode_with(&ids, &mask, b, s, adapters)?;
                let src = crate::generate::beam_parents(b, k);
                let mut st = crate::models::t5_device::T5DeviceStepper::new(
                    model,
                    &enc,
                    src,
                    opts.max_new_tokens + 1,
                )?;
                let start = vec![model.cfg.decoder_start(); b];
                generate(&mut st, &start, opts, constraints)
            }
            #[cfg(feature = "cuda")]
            Arch::MistralDevice(model) => {
                let mut st = crate::models::mistral_device::MistralDeviceStepper::new(
                    model,
                    &ids,
                    &mask,
                    (b, s),
                    k,
                    opts.max_new_tokens + 1,
                    adapters,
                )?;
                generate(&mut st, &vec![0; b], opts, constraints)
            }
        }
    }

    /// Turn a posting into prompt token ids (T5: prompt + </s>; decoder models: the chat template
    /// with the prompt as the user message, no extra BOS), cut to `limit` tokens. Returns the ids
    /// and how many tokens of the posting were dropped.
    pub fn prompt_ids(
        &self,
        template: &PromptTemplate,
        source: &str,
        limit: usize,
    ) -> Result<(Vec<u32>, usize)> {
        let tok = self.tokenizer()?;
        if !self.is_decoder_only() {
            return tokenize_prompt(
                tok,
                &template.render(source),
                limit,
                self.eos.first().copied(),
            );
        }
        let chat = self.chat.as_ref().ok_or_else(|| {
            Error::Input(format!(
                "{} has no chat_template in tokenizer_config.json: pass --chat-template FILE or --chat-template mistral-v3",
                self.dir.display()
            ))
        })?;
        let render = |src: &str| -> Result<Vec<u32>> {
            let text = chat.render(
                &[Message {
                    role: "user".into(),
                    content: template.render(src),
                }],
                true,
            )?;
            let e = tok
                .inner
                .encode(text.as_str(), false)
                .map_err(|e| Error::Tokenizer(e.to_string()))?;
            Ok(e.get_ids().to_vec())
        };
        let full = render(source)?;
        if full.len() <= limit || limit == 0 {
            return Ok((full, 0));
        }
        // Cut the posting (not the template's closing [/INST]): binary search for the longest
        // prefix of the posting (in characters) whose prompt fits.
        let chars: Vec<char> = source.chars().collect();
        let (mut lo, mut hi) = (0usize, chars.len());
        let mut best: Option<Vec<u32>> = None;
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            let cur = render(&chars[..mid].iter().collect::<String>())?;
            if cur.len() <= limit {
                lo = mid;
                best = Some(cur);
            } else {
                hi = mid - 1;
            }
        }
        if best.is_none() && lo == 0 {
            let cur = render("")?;
            if cur.len() <= limit {
                best = Some(cur);
            }
        }
        if let Some(cur) = best {
            let cut = full.len() - cur.len();
            return Ok((cur, cut));
        }
        Err(Error::Input(format!(
            "the prompt does not fit in {limit} tokens even without the posting"
        )))
    }
}

/// One posting to extract from.
pub struct InputRecord {
    pub id: String,
    /// LoRA adapter to use (JSONL field `adapter`); None: the default
    pub adapter: Option<String>,
    /// the posting text, or why it could not be read
    pub source: std::result::Result<String, String>,
}

/// What kind of failure a record's `error` is (JSONL field `error_kind`), so that a batch job
/// can pick the lines to run again (with `--gpu-weights int8` or a smaller batch after
/// `out_of_device_memory`, say) without parsing messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// the input line: unreadable, empty, over the size limit, an unknown adapter
    Input,
    /// the generation did not fit in device memory, even as a batch of one
    OutOfDeviceMemory,
    /// the generation failed otherwise
    Generation,
    /// the model's output is not the expected JSON (unparsed, incomplete)
    Output,
    /// a bug: results lost or miscounted inside the engine
    Internal,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputRecord {
    pub id: String,
    pub output: Option<serde_json::Value>,
    pub raw: Option<String>,
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<ErrorKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<Finish>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_tokens: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_tokens: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_tokens_cut: Option<usize>,
    /// wall time of the generation that produced this record (the batch it ran in), plus any
    /// earlier attempts with it that ran out of device memory and were split
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
}

impl OutputRecord {
    pub fn error(id: &str, kind: ErrorKind, msg: String) -> Self {
        OutputRecord {
            id: id.to_string(),
            output: None,
            raw: None,
            error: Some(msg),
            error_kind: Some(kind),
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
    /// prompt template (None: the reference prompt of the model family)
    pub template: Option<PromptTemplate>,
    /// adapter name used by records that do not name one (None: base model)
    pub adapter: Option<String>,
    /// grammar constraint (None: unconstrained, output repaired/extracted afterwards)
    pub grammar: Option<std::sync::Arc<crate::grammar::Grammar>>,
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
            template: None,
            adapter: None,
            grammar: None,
            max_source_bytes: 1 << 20,
        }
    }
}

/// Tokenise one prompt, truncating from the right to `limit` tokens while keeping the final EOS
/// (what HF `tokenizer(..., truncation=True, max_length=limit)` does). Returns (ids, tokens cut).
pub fn tokenize_prompt(
    tok: &Tok,
    prompt: &str,
    limit: usize,
    eos: Option<u32>,
) -> Result<(Vec<u32>, usize)> {
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

/// The grammar constraint as the generation loop's per-sequence hook. The matcher's budget is
/// the generation's `max_new_tokens` (EOS included): it holds the last slot back for EOS, so
/// every output is a complete document ending with EOS within the budget.
#[derive(Clone)]
pub struct GrammarConstraint {
    pub inner: crate::grammar::JsonConstraint,
}

impl GrammarConstraint {
    /// A constraint for one sequence of at most `max_new_tokens` tokens (EOS included).
    pub fn new(g: std::sync::Arc<crate::grammar::Grammar>, max_new_tokens: usize) -> Self {
        let budget = max_new_tokens.min(u32::MAX as usize) as u32;
        GrammarConstraint {
            inner: crate::grammar::JsonConstraint::new(g, budget),
        }
    }
}

impl TokenConstraint for GrammarConstraint {
    fn mask(&mut self, scores: &mut [f32]) -> Result<()> {
        self.inner.apply_mask(scores);
        Ok(())
    }
    fn commit(&mut self, token: u32) -> Result<()> {
        self.inner
            .matcher
            .commit_token(token)
            .map_err(|e| Error::Input(format!("grammar: {e}")))
    }
    fn is_complete(&self) -> bool {
        self.inner.matcher.is_complete()
    }
    fn forced(&self) -> Vec<u32> {
        self.inner.matcher.forced_tokens()
    }
    /// `mask` is exactly the matcher's word mask (`apply_mask_words`), so a device stepper can
    /// apply it where the logits are.
    fn mask_words(&mut self) -> Option<Vec<u32>> {
        Some(self.inner.matcher.mask().to_vec())
    }
    fn box_clone(&self) -> Box<dyn TokenConstraint> {
        Box::new(self.clone())
    }
}

/// Compile `schema` ("job" or a JSON Schema file) for the engine's tokenizer.
pub fn compile_grammar(
    engine: &Engine,
    schema: &str,
) -> Result<std::sync::Arc<crate::grammar::Grammar>> {
    let tp = engine.dir.join("tokenizer.json");
    let vocab = crate::grammar::Vocab::from_tokenizer_json(&tp.display().to_string())
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    let sch = crate::grammar::load_schema(schema)
        .map_err(|e| Error::Input(format!("schema {schema}: {e}")))?;
    crate::grammar::Grammar::compile(
        &sch,
        std::sync::Arc::new(vocab),
        &crate::grammar::CompileOptions::default(),
    )
    .map_err(|e| Error::Input(format!("schema {schema}: {e}")))
}

/// Turn the model's text (with `<unk>` markers kept) into JSON.
pub fn text_to_json(raw: &str) -> std::result::Result<serde_json::Value, String> {
    crate::eval::repair_t5_output(raw, &crate::eval::JobSchema::jobextractx())
        .map_err(|e| e.to_string())
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
    let template = opts.template.clone().unwrap_or_else(|| {
        if engine.is_decoder_only() {
            PromptTemplate::mistral()
        } else {
            PromptTemplate::flan_t5()
        }
    });
    let gen = GenOptions {
        max_new_tokens: opts.max_new_tokens,
        min_new_tokens: opts.min_new_tokens,
        num_beams: opts.num_beams.max(1),
        early_stopping: opts.early_stopping,
        length_penalty: opts.length_penalty,
        eos: engine.eos.clone(),
        sampling: opts.sampling.clone(),
    };
    if let Some(g) = &opts.grammar {
        let need = g.min_tokens() as usize + 1;
        if gen.max_new_tokens < need {
            return Err(Error::Input(format!(
                "--max-new-tokens {} is too small: the shortest document of this schema takes {} tokens with this tokenizer, plus EOS",
                gen.max_new_tokens,
                need - 1
            )));
        }
    }
    let mut done = 0usize;
    // the most rows a generation may take: lowered when a batch runs out of device memory
    let mut oom_cap = OomCap::default();
    for chunk in records.chunks(opts.batch_size.max(1)) {
        // prepare: errors become records right away; valid ones are batched per adapter
        let mut batch: Vec<(usize, Vec<u32>, usize, Option<usize>)> = Vec::new();
        let mut outs: Vec<Option<OutputRecord>> = vec![None; chunk.len()];
        for (i, r) in chunk.iter().enumerate() {
            let src = match &r.source {
                Err(e) => {
                    outs[i] = Some(OutputRecord::error(&r.id, ErrorKind::Input, e.clone()));
                    continue;
                }
                Ok(s) => s,
            };
            if src.trim().is_empty() {
                outs[i] = Some(OutputRecord::error(
                    &r.id,
                    ErrorKind::Input,
                    "empty posting: nothing to extract".into(),
                ));
                continue;
            }
            if src.len() > opts.max_source_bytes {
                outs[i] = Some(OutputRecord::error(
                    &r.id,
                    ErrorKind::Input,
                    format!(
                        "posting is {} bytes, over the {} byte limit (--max-source-bytes)",
                        src.len(),
                        opts.max_source_bytes
                    ),
                ));
                continue;
            }
            let adapter = match r.adapter.as_deref().or(opts.adapter.as_deref()) {
                None | Some("none") | Some("") => None,
                Some(name) => match engine.adapter_slot(name) {
                    Some(s) => Some(s),
                    None => {
                        outs[i] = Some(OutputRecord::error(
                            &r.id,
                            ErrorKind::Input,
                            format!("unknown adapter `{name}` (loaded: {:?})", engine.adapters),
                        ));
                        continue;
                    }
                },
            };
            match engine.prompt_ids(&template, src, opts.max_source_tokens) {
                Ok((ids, cut)) => {
                    if cut > 0 {
                        warn(format!(
                            "record {}: prompt is {} tokens; cut to {} ({cut} tokens of the end of the posting dropped)",
                            r.id,
                            ids.len() + cut,
                            opts.max_source_tokens
                        ));
                    }
                    batch.push((i, ids, cut, adapter));
                }
                Err(e) => {
                    outs[i] = Some(OutputRecord::error(&r.id, ErrorKind::Input, e.to_string()))
                }
            }
        }
        // one batch per adapter on the CPU; on CUDA one batch whatever the adapters (SGMV)
        let mixed = engine.mixes_adapters();
        let key = |a: Option<usize>| if mixed { None } else { a };
        let mut groups: Vec<Option<usize>> = batch.iter().map(|b| key(b.3)).collect();
        groups.sort();
        groups.dedup();
        for g_key in groups {
            let group: Vec<&(usize, Vec<u32>, usize, Option<usize>)> =
                batch.iter().filter(|b| key(b.3) == g_key).collect();
            // out of device memory: the group again in halves (and later ones at that size)
            let results = run_with_oom_backoff(
                &group,
                &mut oom_cap,
                &mut |piece| {
                    let t0 = std::time::Instant::now();
                    let inputs: Vec<Vec<u32>> = piece.iter().map(|b| b.1.clone()).collect();
                    let slots: Vec<Option<usize>> = piece.iter().map(|b| b.3).collect();
                    let mut cons: Vec<Option<Box<dyn TokenConstraint>>> = match &opts.grammar {
                        Some(g) => (0..inputs.len())
                            .map(|_| {
                                Some(
                                    Box::new(GrammarConstraint::new(g.clone(), gen.max_new_tokens))
                                        as Box<dyn TokenConstraint>,
                                )
                            })
                            .collect(),
                        None => vec![],
                    };
                    let gens = engine.generate_ids_rows(&inputs, &gen, &mut cons, &slots)?;
                    let ms = t0.elapsed().as_secs_f64() * 1e3;
                    Ok(gens.into_iter().map(|g| (g, ms)).collect())
                },
                warn,
            );
            for ((i, ids, cut, _), att) in
                group.iter().map(|x| (&x.0, &x.1, &x.2, &x.3)).zip(results)
            {
                let r = &chunk[*i];
                let (g, ms) = match att.result {
                    Ok(x) => x,
                    Err(e) => {
                        outs[*i] = Some(OutputRecord::error(
                            &r.id,
                            e.kind,
                            format!("generation failed: {}", e.msg),
                        ));
                        continue;
                    }
                };
                let (raw, output, error) = match &opts.grammar {
                    Some(gr) => postprocess_constrained(engine, tok, gr, &g.tokens),
                    None => postprocess(engine, tok, &g.tokens),
                };
                outs[*i] = Some(OutputRecord {
                    id: r.id.clone(),
                    output,
                    raw,
                    error_kind: error.as_ref().map(|_| ErrorKind::Output),
                    error,
                    finish_reason: Some(g.finish),
                    new_tokens: Some(g.tokens.len()),
                    source_tokens: Some(ids.len()),
                    source_tokens_cut: if *cut > 0 { Some(*cut) } else { None },
                    latency_ms: Some(ms + att.retried_ms),
                });
            }
        }
        for (i, o) in outs.into_iter().enumerate() {
            sink(o.unwrap_or_else(|| {
                OutputRecord::error(
                    &chunk[i].id,
                    ErrorKind::Internal,
                    "internal: no result".into(),
                )
            }))?;
        }
        done += chunk.len();
        progress(done);
    }
    Ok(())
}

/// How many rows a generation may take (`run_with_oom_backoff`): unbounded at first, halved
/// when a batch runs out of device memory, doubled again after `OomCap::REGROW` pieces in a
/// row at the cap succeed (memory use depends on the postings' lengths too, so one long
/// batch must not hold every later one small).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OomCap {
    pub cap: usize,
    streak: usize,
}

impl Default for OomCap {
    fn default() -> Self {
        OomCap {
            cap: usize::MAX,
            streak: 0,
        }
    }
}

impl OomCap {
    pub const REGROW: usize = 4;
}

/// Warnings from `run_with_oom_backoff` start with this (`eval` counts them apart).
pub const OOM_RETRY_WARNING: &str = "out of device memory: ";

/// Why `run_with_oom_backoff` has no result for an item: `OutOfDeviceMemory` with the item
/// alone, `Generation` for any other error of `run`, `Internal` when `run` returned the wrong
/// number of results.
#[derive(Clone, Debug)]
pub(crate) struct ItemError {
    pub kind: ErrorKind,
    pub msg: String,
}

/// One item's outcome from `run_with_oom_backoff`.
#[derive(Debug)]
pub(crate) struct Attempted<R> {
    pub result: std::result::Result<R, ItemError>,
    /// wall time of the attempts with this item that ran out of device memory and were split
    /// (the time of the attempt that gave `result` is `run`'s to measure)
    pub retried_ms: f64,
}

/// Runs `run` over `items` in order, in pieces of at most `cap.cap` items. A piece that runs
/// out of device memory (`Error::is_out_of_memory`) runs again as two halves, down to single
/// items, and the cap drops to the half, so that later calls start there instead of failing
/// again (`warn` says so); it doubles again after `OomCap::REGROW` full pieces in a row
/// succeed. Any other error, or running out of memory with one item, is that piece's items'
/// error. One outcome per item, in order: nothing is lost.
pub(crate) fn run_with_oom_backoff<T, R>(
    items: &[T],
    cap: &mut OomCap,
    run: &mut dyn FnMut(&[T]) -> Result<Vec<R>>,
    warn: &mut dyn FnMut(String),
) -> Vec<Attempted<R>> {
    let mut out: Vec<Option<std::result::Result<R, ItemError>>> =
        (0..items.len()).map(|_| None).collect();
    let mut retried_ms = vec![0.0f64; items.len()];
    // pieces (start, len) still to run, the next first
    let mut todo: std::collections::VecDeque<(usize, usize)> = Default::default();
    todo.push_back((0, items.len()));
    while let Some((start, len)) = todo.pop_front() {
        if len == 0 {
            continue;
        }
        let c = cap.cap.max(1);
        if len > c {
            // `c` now, the rest split when its turn comes (under the cap then)
            todo.push_front((start + c, len - c));
            todo.push_front((start, c));
            continue;
        }
        // the piece's error, for each of its items (the other outcomes go on to the next)
        let t0 = std::time::Instant::now();
        let err = match run(&items[start..start + len]) {
            Ok(rs) if rs.len() == len => {
                for (k, r) in rs.into_iter().enumerate() {
                    out[start + k] = Some(Ok(r));
                }
                if len == c && c < usize::MAX {
                    cap.streak += 1;
                    if cap.streak >= OomCap::REGROW {
                        cap.cap = c.saturating_mul(2);
                        cap.streak = 0;
                    }
                }
                continue;
            }
            Ok(rs) => ItemError {
                kind: ErrorKind::Internal,
                msg: format!("internal: {} results for {len} inputs", rs.len()),
            },
            Err(e) if e.is_out_of_memory() && len > 1 => {
                let ms = t0.elapsed().as_secs_f64() * 1e3;
                for t in &mut retried_ms[start..start + len] {
                    *t += ms;
                }
                let half = len.div_ceil(2);
                cap.cap = cap.cap.min(half);
                cap.streak = 0;
                warn(format!(
                    "{OOM_RETRY_WARNING}a batch of {len} did not fit ({e}); running it as batches of at most {half}, as the batches after it"
                ));
                todo.push_front((start + half, len - half));
                todo.push_front((start, half));
                continue;
            }
            Err(e) => ItemError {
                kind: if e.is_out_of_memory() {
                    ErrorKind::OutOfDeviceMemory
                } else {
                    ErrorKind::Generation
                },
                msg: e.to_string(),
            },
        };
        for o in &mut out[start..start + len] {
            *o = Some(Err(err.clone()));
        }
    }
    out.into_iter()
        .zip(retried_ms)
        .map(|(o, retried_ms)| Attempted {
            result: o.unwrap_or_else(|| {
                Err(ItemError {
                    kind: ErrorKind::Internal,
                    msg: "internal: not run".into(),
                })
            }),
            retried_ms,
        })
        .collect()
}

/// Constrained output: the grammar maps the tokens back to the exact JSON text (T5's `<unk>`
/// included), which parses by construction; an incomplete document is reported, never guessed.
fn postprocess_constrained(
    engine: &Engine,
    tok: &Tok,
    g: &crate::grammar::Grammar,
    tokens: &[u32],
) -> (Option<String>, Option<serde_json::Value>, Option<String>) {
    let body: Vec<u32> = tokens
        .iter()
        .copied()
        .filter(|t| !engine.eos.contains(t))
        .collect();
    let raw = tok.decode(&body, false).ok();
    match g.decode_text(&body) {
        Ok(text) => match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v) => (raw, Some(v), None),
            Err(e) => (
                raw,
                None,
                Some(format!(
                    "constrained output incomplete or invalid ({e}): {text}"
                )),
            ),
        },
        Err(e) => (raw, None, Some(format!("grammar: {e}"))),
    }
}

/// Generated ids -> (raw text, JSON, error). T5: decode keeping `<unk>` (it marks `{`, `}` and
/// `\`) and repair; decoder models: the first balanced JSON object of the completion (never the
/// prompt's schema: the prompt is not part of the decoded text).
fn postprocess(
    engine: &Engine,
    tok: &Tok,
    tokens: &[u32],
) -> (Option<String>, Option<serde_json::Value>, Option<String>) {
    let pad = engine.pad_id();
    if engine.is_decoder_only() {
        let keep: Vec<u32> = tokens
            .iter()
            .copied()
            .filter(|t| !engine.eos.contains(t))
            .collect();
        let raw = match tok.decode(&keep, true) {
            Ok(r) => r,
            Err(e) => return (None, None, Some(e.to_string())),
        };
        let res = match crate::chat::first_json_object(&raw) {
            Ok((a, b)) => match serde_json::from_str::<serde_json::Value>(&raw[a..b]) {
                Ok(v) => (Some(v), None),
                Err(e) => (
                    None,
                    Some(format!("the completion's JSON object does not parse: {e}")),
                ),
            },
            Err(why) => (None, Some(why.to_string())),
        };
        return (Some(raw), res.0, res.1);
    }
    let keep: Vec<u32> = tokens
        .iter()
        .copied()
        .filter(|t| !engine.eos.contains(t) && *t != pad)
        .collect();
    match tok.decode(&keep, false) {
        Ok(raw) => match text_to_json(&raw) {
            Ok(v) => (Some(raw), Some(v), None),
            Err(e) => (
                Some(raw),
                None,
                Some(format!("output is not JSON after repair: {e}")),
            ),
        },
        Err(e) => (None, None, Some(e.to_string())),
    }
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
                .map_err(|e| {
                    format!(
                        "input is not valid UTF-8 (first bad byte at offset {})",
                        e.valid_up_to()
                    )
                });
            vec![InputRecord {
                id: name.to_string(),
                adapter: None,
                source,
            }]
        }
        InputFormat::Jsonl => {
            let mut out = Vec::new();
            for (ln, line) in bytes.split(|&b| b == b'\n').enumerate() {
                if line.iter().all(|b| b.is_ascii_whitespace()) {
                    continue;
                }
                let default_id = format!("{name}:{}", ln + 1);
                let rec = match std::str::from_utf8(line) {
                    Err(e) => InputRecord {
                        id: default_id,
                        adapter: None,
                        source: Err(format!(
                            "line is not valid UTF-8 (offset {})",
                            e.valid_up_to()
                        )),
                    },
                    Ok(text) => match serde_json::from_str::<serde_json::Value>(text) {
                        Err(e) => InputRecord {
                            id: default_id,
                            adapter: None,
                            source: Err(format!("line is not JSON: {e}")),
                        },
                        Ok(v) => {
                            let id = match v.get("id") {
                                Some(serde_json::Value::String(s)) => s.clone(),
                                Some(serde_json::Value::Number(n)) => n.to_string(),
                                _ => default_id,
                            };
                            let adapter =
                                v.get("adapter").and_then(|a| a.as_str()).map(String::from);
                            match v.get("source") {
                                Some(serde_json::Value::String(s)) => InputRecord {
                                    id,
                                    adapter,
                                    source: Ok(s.clone()),
                                },
                                Some(_) => InputRecord {
                                    id,
                                    adapter,
                                    source: Err("`source` is not a string".into()),
                                },
                                None => InputRecord {
                                    id,
                                    adapter,
                                    source: Err("record has no `source` field".into()),
                                },
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

/// The CUDA graphs number adapter slots themselves; they must agree with the engine's.
#[cfg(feature = "cuda")]
fn check_slot(got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::Backend {
            backend: "cuda",
            op: "load_adapter",
            msg: format!("the GPU graph put the adapter in slot {got}, the engine expected {want}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oom() -> Error {
        Error::OutOfMemory {
            backend: "test",
            op: "generate",
            msg: "allocating 1 bytes failed".into(),
        }
    }

    #[test]
    fn out_of_memory_batches_run_again_in_halves_and_nothing_is_lost() {
        let items: Vec<u32> = (0..10).collect();
        // the device holds at most 3 rows; a piece with item 7 fails for another reason (its
        // rows get that error, no retry)
        let calls = std::cell::RefCell::new(Vec::<Vec<u32>>::new());
        let mut run = |p: &[u32]| -> Result<Vec<u32>> {
            calls.borrow_mut().push(p.to_vec());
            if p.len() > 3 {
                // (a failed attempt takes time: it counts in its items' latency)
                std::thread::sleep(std::time::Duration::from_millis(20));
                return Err(oom());
            }
            if p.contains(&7) {
                return Err(Error::Input("bad row".into()));
            }
            Ok(p.iter().map(|x| x * 10).collect())
        };
        let mut warned = Vec::new();
        let mut cap = OomCap::default();
        let out = run_with_oom_backoff(&items, &mut cap, &mut run, &mut |w| warned.push(w));
        assert_eq!(out.len(), 10);
        for (i, a) in out.iter().enumerate() {
            match (i, &a.result) {
                (5..=7, Err(e)) => {
                    assert!(e.msg.contains("bad row"), "{e:?}");
                    assert_eq!(e.kind, ErrorKind::Generation);
                }
                (_, Ok(v)) => assert_eq!(*v, 10 * i as u32),
                other => panic!("{other:?}"),
            }
        }
        // the failed attempts' time, per item: 0..5 were in the failed 10 and 5, 5..10 in the
        // 10 only (each attempt >= 20 ms)
        let t: Vec<f64> = out.iter().map(|a| a.retried_ms).collect();
        assert!(
            t[..5].iter().all(|&x| x == t[0]) && t[5..].iter().all(|&x| x == t[5]),
            "{t:?}"
        );
        assert!(t[5] >= 20.0 && t[0] - t[5] >= 20.0, "{t:?}");
        // 10 -> 5 | 5 -> 3 2 | 3 2 ... : each piece in order, later ones started at the new cap
        assert_eq!(
            *calls.borrow(),
            vec![
                (0..10).collect::<Vec<_>>(),
                (0..5).collect(),
                vec![0, 1, 2],
                vec![3, 4],
                vec![5, 6, 7],
                vec![8, 9]
            ]
        );
        assert_eq!(cap.cap, 3);
        assert_eq!(warned.len(), 2, "{warned:?}");
        assert!(warned[0].starts_with(OOM_RETRY_WARNING) && warned[0].contains("a batch of 10"));
        // the next call starts at the lowered cap: no failing first attempt
        calls.borrow_mut().clear();
        let items: Vec<u32> = (0..4).collect();
        let out = run_with_oom_backoff(&items, &mut cap, &mut run, &mut |_| {});
        assert!(out.iter().all(|a| a.result.is_ok() && a.retried_ms == 0.0));
        assert_eq!(*calls.borrow(), vec![vec![0, 1, 2], vec![3]]);
    }

    #[test]
    fn the_cap_grows_back_after_full_pieces_succeed() {
        // the device fits 3 rows at first, then (shorter postings, say) any number
        let limit = std::cell::Cell::new(3usize);
        let sizes = std::cell::RefCell::new(Vec::new());
        let mut run = |p: &[u32]| -> Result<Vec<u32>> {
            sizes.borrow_mut().push(p.len());
            if p.len() > limit.get() {
                return Err(oom());
            }
            Ok(p.to_vec())
        };
        let mut cap = OomCap::default();
        let items: Vec<u32> = (0..8).collect();
        let _ = run_with_oom_backoff(&items, &mut cap, &mut run, &mut |_| {});
        // 8 and 4 did not fit: cap 2; four pieces of 2 then fitted: cap 4 again
        assert_eq!(cap.cap, 4, "{cap:?}");
        limit.set(usize::MAX);
        sizes.borrow_mut().clear();
        let items: Vec<u32> = (0..48).collect();
        let out = run_with_oom_backoff(&items, &mut cap, &mut run, &mut |_| {});
        assert!(out.iter().all(|a| a.result.is_ok()));
        // REGROW (4) full pieces at each size, then twice the size
        assert_eq!(*sizes.borrow(), [4, 4, 4, 4, 8, 8, 8, 8]);
        assert_eq!(cap.cap, 16, "{cap:?}");
    }

    #[test]
    fn out_of_memory_with_one_item_is_its_error() {
        let mut cap = OomCap::default();
        let mut n = 0;
        let out = run_with_oom_backoff(
            &[1u8, 2],
            &mut cap,
            &mut |_: &[u8]| -> Result<Vec<u8>> {
                n += 1;
                Err(oom())
            },
            &mut |_| {},
        );
        assert_eq!(n, 3, "both, then each alone");
        assert_eq!(cap.cap, 1);
        for a in out {
            let e = a.result.unwrap_err();
            assert!(e.msg.contains("out of device memory"), "{e:?}");
            assert_eq!(e.kind, ErrorKind::OutOfDeviceMemory);
        }
        // a run that returns the wrong number of results is an error for its items, not a panic
        let out = run_with_oom_backoff(
            &[1u8, 2, 3],
            &mut OomCap::default(),
            &mut |_: &[u8]| -> Result<Vec<u8>> { Ok(vec![1]) },
            &mut |_| {},
        );
        assert!(out.iter().all(|a| {
            let e = a.result.as_ref().unwrap_err();
            e.msg.contains("internal") && e.kind == ErrorKind::Internal
        }));
    }
}
