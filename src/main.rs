//! The `jobx-engine` command line. Library errors carry their cause; this layer adds context
//! (which file, which command) and turns them into a one-line message and a non-zero exit.

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use jobx_engine::extract::{self, Engine, ExtractOptions, InputFormat, InputRecord};
use jobx_engine::generate::{EarlyStopping, GenOptions, Sampling};
use jobx_engine::prompts::PromptTemplate;
use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "jobx-engine",
    version,
    about = "Job postings to schema-valid JSON with FLAN-T5 and Mistral"
)]
struct Cli {
    /// Worker threads for the CPU backend (default: all cores)
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Compute device: auto = CUDA for the commands that run models (verify, generate, extract,
    /// eval) when this binary has the CUDA backend and a GPU opens, else the CPU
    #[arg(long, global = true, value_enum, default_value = "auto")]
    device: Device,
    /// CPU storage of weight matrices (arithmetic is f32 in all cases): auto = bf16 checkpoints
    /// stay bf16 in place, f32 stays f32; f32 = widen everything; bf16 = also round f32
    /// checkpoints to bf16 (half the memory and bandwidth, bf16 weight rounding)
    #[arg(long, global = true, default_value = "auto")]
    cpu_weights: jobx_engine::checkpoint::CpuWeights,
    /// CUDA storage of linear-layer weights: bf16, or int8 (weight-only, per-output-channel
    /// scales; embeddings, LM heads and norms stay bf16)
    #[arg(long, global = true, value_enum, default_value = "bf16")]
    gpu_weights: Storage,
    /// CUDA storage of the T5 cross-attention keys and values (computed once per batch from
    /// the encoder output, read by every decode step): bf16, or int8 with one scale per head
    /// row (half the memory and the bytes each step reads; logits move within the int8
    /// weights' verify budget)
    #[arg(long, global = true, value_enum, default_value = "bf16")]
    cross_kv: Storage,
    /// CUDA graphs for decode steps (each step recorded once and replayed: one launch instead
    /// of hundreds): on by default; off runs every step's kernels one by one (the same as
    /// JOBX_CUDA_GRAPHS=0, which this option overrides)
    #[arg(long, global = true, value_enum)]
    cuda_graphs: Option<Switch>,
    #[command(subcommand)]
    cmd: Cmd,
}

/// `--cuda-graphs`.
#[derive(Clone, Copy, ValueEnum, Debug, PartialEq)]
enum Switch {
    On,
    Off,
}

/// A CUDA storage format (`--gpu-weights`, `--cross-kv`).
#[derive(Clone, Copy, ValueEnum, Debug, PartialEq)]
enum Storage {
    Bf16,
    Int8,
}

/// `--gpu-weights int8` for the commands that load CUDA graphs.
static GPU_INT8: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn gpu_int8() -> bool {
    GPU_INT8.load(std::sync::atomic::Ordering::Relaxed)
}

/// `--cross-kv int8` for the commands that run T5 on CUDA.
static CROSS_KV_INT8: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn cross_kv_int8() -> bool {
    CROSS_KV_INT8.load(std::sync::atomic::Ordering::Relaxed)
}

#[derive(Clone, Copy, ValueEnum, Debug)]
enum Device {
    Cpu,
    Cuda,
    Auto,
}

#[derive(Subcommand)]
enum SchemaCmd {
    /// Print a schema (`job`, or a file after checking that it compiles)
    Print { name: String },
}

#[derive(Subcommand)]
enum GrammarCmd {
    /// Sample documents by picking uniformly random allowed tokens; all must parse, validate and complete
    Check {
        #[arg(long, default_value = "job")]
        schema: String,
        #[arg(long)]
        tokenizer: PathBuf,
        #[arg(long, default_value_t = 1000)]
        samples: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 384)]
        max_tokens: u32,
        /// Write every sample (as JSON) here, one per line
        #[arg(long)]
        emit: Option<PathBuf>,
        /// Structural surface: auto, literal or unk
        #[arg(long, default_value = "auto")]
        surface: String,
    },
    /// Walk documents token by token, timing the mask computation before each token
    Bench {
        #[arg(long, default_value = "job")]
        schema: String,
        #[arg(long)]
        tokenizer: PathBuf,
        #[arg(long)]
        documents: PathBuf,
        #[arg(long, default_value = "auto")]
        surface: String,
    },
}

#[derive(Clone, Copy, ValueEnum, Debug)]
enum ScoreFormat {
    Jobextractx,
    Jsonl,
}

#[derive(Clone, Copy, ValueEnum, Debug)]
enum ScoreFamily {
    T5,
    Mistral,
}

#[derive(Clone, Copy, ValueEnum, Debug)]
enum Compat {
    Jobextractx,
}

#[derive(Args, Clone, Debug)]
struct ModelArgs {
    /// Model folder or Hugging Face repo id
    #[arg(long, default_value = "google/flan-t5-base")]
    model: String,
    /// PEFT LoRA adapter folder, optionally named: NAME=DIR (repeatable; several stay loaded)
    #[arg(long = "adapter")]
    adapters: Vec<String>,
    /// Adapter used by records that do not name one in a JSONL `adapter` field
    /// (default: the first --adapter; `none` for the base model)
    #[arg(long)]
    use_adapter: Option<String>,
    /// Merge the (single) adapter into the weights instead of applying it unmerged
    #[arg(long)]
    merge_adapter: bool,
    /// Chat template for decoder models: a Jinja file, or `mistral-v3` (built in);
    /// default: the model's tokenizer_config.json
    #[arg(long)]
    chat_template: Option<String>,
}

impl ModelArgs {
    /// The engine for `--device`: CPU graphs, or with `cuda` the CUDA graphs (feature `cuda`).
    fn load(&self, cuda: bool) -> anyhow::Result<(Engine, Option<String>)> {
        let mut e =
            load_engine(&self.model, cuda).with_context(|| format!("loading {}", self.model))?;
        for (i, a) in self.adapters.iter().enumerate() {
            let (name, dir) = match a.split_once('=') {
                Some((n, d)) if !n.is_empty() && !n.contains('/') => {
                    (n.to_string(), PathBuf::from(d))
                }
                _ => (format!("adapter{i}"), PathBuf::from(a)),
            };
            e.load_adapter(&name, &dir)
                .with_context(|| format!("loading adapter {}", dir.display()))?;
        }
        if self.merge_adapter {
            if e.adapters.len() != 1 {
                bail!(
                    "--merge-adapter needs exactly one --adapter (got {})",
                    e.adapters.len()
                );
            }
            e.merge_adapter(0).context("merging the adapter")?;
            e.adapters.clear();
        }
        if let Some(t) = &self.chat_template {
            let source = if t == "mistral-v3" {
                jobx_engine::chat::MISTRAL_V3.to_string()
            } else {
                std::fs::read_to_string(t).with_context(|| format!("reading chat template {t}"))?
            };
            let (bos, eos) = e
                .chat
                .as_ref()
                .map(|c| (c.bos_token.clone(), c.eos_token.clone()))
                .unwrap_or(("<s>".into(), "</s>".into()));
            e.chat = Some(jobx_engine::chat::ChatTemplate {
                source,
                bos_token: bos,
                eos_token: eos,
            });
        }
        let default_adapter = match &self.use_adapter {
            Some(n) if n == "none" => None,
            Some(n) => {
                if e.adapter_slot(n).is_none() {
                    bail!(
                        "--use-adapter {n}: no adapter of that name (loaded: {:?})",
                        e.adapters
                    );
                }
                Some(n.clone())
            }
            None => e.adapters.first().cloned(),
        };
        Ok((e, default_adapter))
    }
}

#[derive(Args, Clone, Debug)]
struct PromptArgs {
    /// Prompt template file with `{source}` where the posting goes (default: the reference prompt
    /// of the model family)
    #[arg(long)]
    prompt_template: Option<PathBuf>,
    /// Source length limit in tokens; longer prompts are cut from the right with a warning
    #[arg(long, default_value_t = 1536)]
    max_source_tokens: usize,
    /// Postings per batch
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
}

impl PromptArgs {
    fn template(&self) -> anyhow::Result<Option<PromptTemplate>> {
        self.prompt_template
            .as_ref()
            .map(|p| {
                Ok(PromptTemplate {
                    text: std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?,
                })
            })
            .transpose()
    }
}

#[derive(Args, Clone, Debug)]
struct DecodeArgs {
    /// Maximum number of new tokens (the reference project: max_length 384 = 383 new tokens)
    #[arg(long, default_value_t = 383)]
    max_new_tokens: usize,
    /// Suppress EOS until this many tokens are generated (fixed work for benchmarks)
    #[arg(long, default_value_t = 0)]
    min_new_tokens: usize,
    /// Beam width (1 = greedy or sampling)
    #[arg(long, default_value_t = 4)]
    num_beams: usize,
    /// Beam search stopping: true, false or never (HF semantics)
    #[arg(long, default_value = "true")]
    early_stopping: String,
    #[arg(long, default_value_t = 1.0)]
    length_penalty: f32,
    /// Sample instead of greedy/beam (needs --num-beams 1)
    #[arg(long)]
    do_sample: bool,
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Output JSON schema for constrained decoding: `job` (built in) or a JSON Schema file
    #[arg(long, default_value = "job")]
    schema: String,
    /// Turn grammar-constrained decoding off (the output is repaired/extracted afterwards)
    #[arg(long)]
    no_constrain: bool,
    /// Stop when the generated text contains this string (repeatable)
    #[arg(long = "stop")]
    stops: Vec<String>,
    /// Sampling seed (eval: also shuffles the data before --limit)
    #[arg(long)]
    seed: Option<u64>,
}

impl DecodeArgs {
    fn early(&self) -> anyhow::Result<EarlyStopping> {
        Ok(match self.early_stopping.as_str() {
            "true" | "True" | "1" => EarlyStopping::True,
            "false" | "False" | "0" => EarlyStopping::False,
            "never" => EarlyStopping::Never,
            o => bail!("--early-stopping must be true, false or never, not `{o}`"),
        })
    }
    /// Extraction options from the decoding flags (compiles the grammar unless --no-constrain).
    fn extract_options(
        &self,
        engine: &Engine,
        adapter: Option<String>,
        prompt: &PromptArgs,
    ) -> anyhow::Result<ExtractOptions> {
        let grammar = if self.no_constrain {
            None
        } else {
            Some(jobx_engine::extract::compile_grammar(engine, &self.schema)?)
        };
        Ok(ExtractOptions {
            grammar,
            max_new_tokens: self.max_new_tokens,
            min_new_tokens: self.min_new_tokens,
            num_beams: self.num_beams,
            early_stopping: self.early()?,
            length_penalty: self.length_penalty,
            sampling: self.sampling(),
            max_source_tokens: prompt.max_source_tokens,
            batch_size: prompt.batch_size,
            template: prompt.template()?,
            adapter,
            ..Default::default()
        })
    }
    fn sampling(&self) -> Option<Sampling> {
        self.do_sample.then(|| Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed.unwrap_or(0),
        })
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Extract structured JSON from job postings (files, stdin, or JSONL with a `source` field)
    Extract {
        #[command(flatten)]
        m: ModelArgs,
        /// Input files (none or `-`: stdin)
        files: Vec<PathBuf>,
        /// Input format (default: by file extension; .jsonl = jsonl, else text)
        #[arg(long, value_enum)]
        input_format: Option<InputFormat>,
        /// Write JSONL here instead of stdout
        #[arg(long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        prompt: PromptArgs,
        #[command(flatten)]
        decode: DecodeArgs,
    },
    /// Low-level generation: token ids (or text) in, generated ids and text out as one JSON line
    Generate {
        #[command(flatten)]
        m: ModelArgs,
        /// JSON file with an array of ids, or an array of arrays (a batch)
        #[arg(long, conflicts_with = "text")]
        input_ids: Option<PathBuf>,
        #[arg(long)]
        text: Option<String>,
        #[command(flatten)]
        decode: DecodeArgs,
    },
    /// Evaluate a model on labelled postings ({"source","target"} JSONL): predictions, scores, speed
    Eval {
        #[command(flatten)]
        m: ModelArgs,
        /// Labelled JSONL (the reference project's data format)
        #[arg(long, required_unless_present = "compare")]
        data: Option<PathBuf>,
        #[arg(long)]
        limit: Option<usize>,
        /// Output folder for predictions.jsonl and report.json
        #[arg(long, default_value = "eval-out")]
        out_dir: PathBuf,
        #[command(flatten)]
        prompt: PromptArgs,
        /// Print these reports side by side instead of running an evaluation
        #[arg(long, num_args = 1..)]
        compare: Vec<PathBuf>,
        #[command(flatten)]
        decode: DecodeArgs,
    },
    /// Render score/eval reports as per-field bar charts (SVG + PNG) with an index page
    Report {
        reports: Vec<PathBuf>,
        #[arg(long, default_value = "report-out")]
        out: PathBuf,
    },
    /// Output schemas: `schema print job` prints the built-in job schema
    Schema {
        #[command(subcommand)]
        cmd: SchemaCmd,
    },
    /// Grammar tools: random-sampling validity check and per-token mask benchmark
    Grammar {
        #[command(subcommand)]
        cmd: GrammarCmd,
    },
    /// Score prediction files with the reference project's metrics (bit-exact) and stricter ones
    Score {
        files: Vec<PathBuf>,
        /// Also write the report(s) here (one object, or an array for several files)
        #[arg(long)]
        output: Option<PathBuf>,
        /// Input format (default: detected)
        #[arg(long, value_enum)]
        format: Option<ScoreFormat>,
        /// Model family, which decides the scored JSON (T5: fixed_json; Mistral: generated_json)
        #[arg(long, value_enum)]
        family: Option<ScoreFamily>,
    },
    /// Rebuild JSON from T5 output: `--compat jobextractx` reproduces the reference project's
    /// fix_json_format; without it, the structure-aware repair for our own outputs
    Repair {
        file: PathBuf,
        #[arg(long, value_enum)]
        compat: Option<Compat>,
    },
    /// Check the engine against a jobx-reference-v1 dump (model folder + reference tensors)
    Verify {
        dirs: Vec<PathBuf>,
        /// Merge the fixture's adapter into the weights instead of applying it unmerged
        #[arg(long)]
        merge_adapter: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    // read by cuda::Gpu::new; set here, before any thread or GPU exists
    if let Some(g) = cli.cuda_graphs {
        std::env::set_var("JOBX_CUDA_GRAPHS", if g == Switch::On { "1" } else { "0" });
    }
    jobx_engine::checkpoint::set_default_cpu_weights(cli.cpu_weights);
    GPU_INT8.store(
        cli.gpu_weights == Storage::Int8,
        std::sync::atomic::Ordering::Relaxed,
    );
    CROSS_KV_INT8.store(
        cli.cross_kv == Storage::Int8,
        std::sync::atomic::Ordering::Relaxed,
    );
    if let Some(t) = cli.threads {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(t.max(1))
            .build_global();
    }
    // The commands that run models have CUDA paths; the others (score, repair, ...) run no model.
    let runs_on_cuda = matches!(
        cli.cmd,
        Cmd::Verify { .. } | Cmd::Generate { .. } | Cmd::Extract { .. } | Cmd::Eval { .. }
    );
    let device_ok = match cli.device {
        Device::Cuda if runs_on_cuda && jobx_engine::cuda::BUILT_WITH_CUDA => Ok(()),
        d => check_device(d),
    };
    let cuda = match cli.device {
        Device::Cuda => true,
        Device::Auto => runs_on_cuda && auto_picks_cuda(),
        Device::Cpu => false,
    };
    // the CUDA storage options change nothing on the CPU graphs (f32 or bf16 weights in f32
    // arithmetic): said, not silently ignored
    if !cuda && runs_on_cuda {
        for (flag, set) in [
            ("--gpu-weights int8", cli.gpu_weights == Storage::Int8),
            ("--cross-kv int8", cli.cross_kv == Storage::Int8),
            ("--cuda-graphs", cli.cuda_graphs.is_some()),
        ] {
            if set {
                eprintln!("note: {flag} applies to CUDA runs; this one runs on the CPU");
            }
        }
    }
    let code = match device_ok.and_then(|_| run(cli.cmd, cuda)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.chain().any(|c| {
                c.downcast_ref::<jobx_engine::Error>()
                    .is_some_and(|x| x.is_out_of_memory())
            }) {
                eprintln!("{OOM_HINT}");
            }
            2
        }
    };
    std::process::exit(code);
}

/// Said after a command failed for the GPU running out of memory (loading a model, say), and
/// after `extract` when postings did not fit even one at a time (their error records).
const OOM_HINT: &str =
    "hint: the GPU ran out of memory. `--gpu-weights int8` halves the memory of the linear \
     layers' weights, `--cross-kv int8` (T5) that of the cross-attention cache; shorter postings \
     (`--max-source-tokens` of extract and eval) or fewer new tokens (`--max-new-tokens`) need \
     less for each posting.";

/// `--device auto` for a command that runs models: CUDA when this binary has the backend and
/// GPU 0 opens (driver present, kernels loaded for its architecture), else the CPU. Either way
/// the choice is said on stderr when there is a driver, so a GPU machine that falls back to the
/// CPU does not do so silently.
fn auto_picks_cuda() -> bool {
    #[cfg(feature = "cuda")]
    {
        if !jobx_engine::cuda::driver_present() {
            return false;
        }
        // the GPU the engine will load onto (Gpu::shared), so it opens once
        match jobx_engine::cuda::Gpu::shared() {
            Ok(g) => {
                eprintln!(
                    "jobx: --device auto: CUDA on {} (--device cpu for the CPU)",
                    g.name
                );
                true
            }
            Err(e) => {
                eprintln!("jobx: --device auto: the CPU, as the GPU did not open: {e}");
                false
            }
        }
    }
    #[cfg(not(feature = "cuda"))]
    false
}

fn check_device(d: Device) -> anyhow::Result<()> {
    match d {
        Device::Cpu | Device::Auto => Ok(()),
        Device::Cuda if !jobx_engine::cuda::BUILT_WITH_CUDA => bail!(
            "--device cuda: this binary was built without the CUDA backend \
             (rebuild with --features cuda) ; use --device cpu"
        ),
        Device::Cuda => bail!(
            "--device cuda: this command runs no model on CUDA (verify, generate, extract and \
             eval do); use --device cpu"
        ),
    }
}

#[cfg(feature = "cuda")]
fn load_engine(model: &str, cuda: bool) -> jobx_engine::Result<Engine> {
    if cuda {
        Engine::load_cuda(model, gpu_int8(), cross_kv_int8())
    } else {
        Engine::load(model)
    }
}

#[cfg(not(feature = "cuda"))]
fn load_engine(model: &str, _cuda: bool) -> jobx_engine::Result<Engine> {
    // --device cuda was refused by check_device in a build without the CUDA backend
    Engine::load(model)
}

fn gen_options(d: &DecodeArgs, eos: Vec<u32>) -> anyhow::Result<GenOptions> {
    Ok(GenOptions {
        max_new_tokens: d.max_new_tokens,
        min_new_tokens: d.min_new_tokens,
        num_beams: d.num_beams.max(1),
        early_stopping: d.early()?,
        length_penalty: d.length_penalty,
        eos,
        sampling: d.sampling(),
    })
}

fn load_report(p: &PathBuf) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
    let t = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&t).with_context(|| format!("{}: not JSON", p.display()))?;
    let stem = p
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let name_of = |v: &serde_json::Value, i: Option<usize>| -> String {
        let base = v
            .pointer("/jobx/model")
            .and_then(|m| m.as_str())
            .map(String::from)
            .unwrap_or_else(|| stem.clone());
        match i {
            Some(i) => format!("{base}#{i}"),
            None => base,
        }
    };
    Ok(match v {
        serde_json::Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, x)| (name_of(x, Some(i)), x.clone()))
            .collect(),
        o => vec![(name_of(&o, None), o)],
    })
}

fn run(cmd: Cmd, cuda: bool) -> anyhow::Result<i32> {
    match cmd {
        Cmd::Eval {
            m,
            data,
            limit,
            out_dir,
            prompt,
            compare,
            decode,
        } => {
            if !compare.is_empty() {
                let mut all = Vec::new();
                for p in &compare {
                    all.extend(load_report(p)?);
                }
                let (md, js) = jobx_engine::eval_run::compare(&all);
                print!("{md}");
                println!("{js}");
                return Ok(0);
            }
            let data = data.context("eval: --data FILE.jsonl is required")?;
            if !data.exists() {
                bail!("{}: no such file", data.display());
            }
            let (engine, adapter) = m.load(cuda)?;
            let opts = jobx_engine::eval_run::EvalOptions {
                limit,
                seed: decode.seed,
                out_dir,
                model_name: m.model.clone(),
                extract: decode.extract_options(&engine, adapter, &prompt)?,
            };
            let pb = indicatif::ProgressBar::new(0);
            let report = jobx_engine::eval_run::run_eval(&engine, &data, &opts, &mut |d, n| {
                pb.set_length(n as u64);
                pb.set_position(d as u64);
            })?;
            pb.finish_and_clear();
            eprintln!(
                "wrote {}/predictions.jsonl and report.json",
                opts.out_dir.display()
            );
            println!("{}", serde_json::to_string(&report)?);
            Ok(0)
        }
        Cmd::Score {
            files,
            output,
            format,
            family,
        } => {
            use jobx_engine::eval;
            if files.is_empty() {
                bail!("score: give at least one prediction file");
            }
            let opts = eval::ScoreOptions {
                format: format.map(|f| match f {
                    ScoreFormat::Jobextractx => eval::Format::JobExtractX,
                    ScoreFormat::Jsonl => eval::Format::JobxJsonl,
                }),
                family: family.map(|f| match f {
                    ScoreFamily::T5 => eval::Family::T5,
                    ScoreFamily::Mistral => eval::Family::Mistral,
                }),
            };
            let mut reports = Vec::new();
            for f in &files {
                let r = eval::score_file(f, &opts)
                    .with_context(|| format!("scoring {}", f.display()))?;
                // The reference `metrics` block first (same keys and order), our additions under "jobx".
                let mut line = r.metrics.to_json();
                let mut extra = r.to_json();
                if let Some(o) = extra.as_object_mut() {
                    o.remove("metrics");
                }
                if let Some(o) = line.as_object_mut() {
                    o.insert("jobx".into(), extra);
                }
                println!("{}", serde_json::to_string(&line)?);
                reports.push(line);
            }
            if let Some(p) = output {
                let v = if reports.len() == 1 {
                    reports.remove(0)
                } else {
                    serde_json::Value::Array(reports)
                };
                std::fs::write(&p, serde_json::to_string_pretty(&v)?)
                    .with_context(|| format!("writing {}", p.display()))?;
            }
            Ok(0)
        }
        Cmd::Schema {
            cmd: SchemaCmd::Print { name },
        } => {
            let v = jobx_engine::grammar::load_schema(&name)
                .map_err(|e| anyhow::anyhow!("schema {name}: {e}"))?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(0)
        }
        Cmd::Grammar { cmd } => {
            use jobx_engine::grammar::{
                grammar_bench, grammar_check, BenchOptions, CheckOptions, SurfaceOptions,
            };
            let surface_of = |s: &str| -> anyhow::Result<SurfaceOptions> {
                Ok(SurfaceOptions {
                    structural: SurfaceOptions::parse_structural(s)
                        .map_err(|e| anyhow::anyhow!("--surface: {e}"))?,
                    ..Default::default()
                })
            };
            match cmd {
                GrammarCmd::Check {
                    schema,
                    tokenizer,
                    samples,
                    seed,
                    max_tokens,
                    emit,
                    surface,
                } => {
                    let opts = CheckOptions {
                        schema,
                        tokenizer: tokenizer.display().to_string(),
                        samples,
                        seed,
                        max_tokens,
                        emit: emit.map(|p| p.display().to_string()),
                        surface: surface_of(&surface)?,
                    };
                    let s =
                        grammar_check(&opts).map_err(|e| anyhow::anyhow!("grammar check: {e}"))?;
                    println!("{}", s.to_json_line());
                    Ok(if s.ok() { 0 } else { 1 })
                }
                GrammarCmd::Bench {
                    schema,
                    tokenizer,
                    documents,
                    surface,
                } => {
                    let tk = tokenizers::Tokenizer::from_file(&tokenizer)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", tokenizer.display()))?;
                    let enc: Box<jobx_engine::grammar::tools::EncodeFn> =
                        Box::new(move |text: &str| {
                            Ok(tk
                                .encode(text, false)
                                .map_err(|e| anyhow::anyhow!("{e}"))?
                                .get_ids()
                                .to_vec())
                        });
                    let opts = BenchOptions {
                        schema,
                        tokenizer: tokenizer.display().to_string(),
                        documents: documents.display().to_string(),
                        surface: surface_of(&surface)?,
                        encode: Some(enc),
                    };
                    let s =
                        grammar_bench(&opts).map_err(|e| anyhow::anyhow!("grammar bench: {e}"))?;
                    println!("{}", s.to_json_line());
                    Ok(0)
                }
            }
        }
        Cmd::Report { reports, out } => {
            if reports.is_empty() {
                bail!("report: give at least one report file");
            }
            let loaded = jobx_engine::eval::report::load_reports(&reports)?;
            let files = jobx_engine::eval::report::render_reports(&loaded, &out)?;
            for f in &files {
                eprintln!("wrote {}", f.display());
            }
            println!(
                "{}",
                serde_json::json!({"out": out, "files": files.len(), "runs": loaded.len()})
            );
            Ok(0)
        }
        Cmd::Repair { file, compat } => {
            use jobx_engine::eval;
            match compat {
                Some(Compat::Jobextractx) => {
                    let (n, same) = eval::repair_compat_file(&file)
                        .with_context(|| format!("repairing {}", file.display()))?;
                    println!("{}", serde_json::json!({"records": n, "identical": same}));
                    Ok(if n == same { 0 } else { 1 })
                }
                None => {
                    // JSONL with a "raw" field (as extract writes it), or one raw output per line.
                    let text = std::fs::read_to_string(&file)
                        .with_context(|| format!("reading {}", file.display()))?;
                    let schema = eval::JobSchema::jobextractx();
                    let (mut n, mut ok) = (0usize, 0usize);
                    for line in text.lines().filter(|l| !l.trim().is_empty()) {
                        n += 1;
                        let raw = match serde_json::from_str::<serde_json::Value>(line) {
                            Ok(serde_json::Value::Object(o)) => o
                                .get("raw")
                                .and_then(|r| r.as_str())
                                .unwrap_or(line)
                                .to_string(),
                            _ => line.to_string(),
                        };
                        match eval::repair_t5_output(&raw, &schema) {
                            Ok(v) => {
                                ok += 1;
                                println!("{}", serde_json::json!({"output": v, "error": null}));
                            }
                            Err(e) => println!(
                                "{}",
                                serde_json::json!({"output": null, "error": e.to_string()})
                            ),
                        }
                    }
                    println!("{}", serde_json::json!({"records": n, "repaired": ok}));
                    Ok(0)
                }
            }
        }
        Cmd::Verify {
            dirs,
            merge_adapter,
        } => {
            let vopts = jobx_engine::verify::VerifyOptions {
                merge_adapter,
                cuda,
                cuda_int8: gpu_int8(),
                cuda_cross_kv_int8: cross_kv_int8(),
                host_device: false,
            };
            if dirs.is_empty() {
                bail!("verify: give at least one fixture folder");
            }
            let mut ok = true;
            for d in dirs {
                let s = jobx_engine::verify::verify_dir_with(&d, &vopts, &mut |v| println!("{v}"))
                    .with_context(|| format!("verify {}", d.display()))?;
                println!("{}", serde_json::to_string(&s)?);
                ok &= s.ok;
            }
            Ok(if ok { 0 } else { 1 })
        }
        Cmd::Generate {
            m,
            input_ids,
            text,
            decode,
        } => {
            let (engine, adapter) = m.load(cuda)?;
            let adapter = adapter.and_then(|n| engine.adapter_slot(&n));
            let (batch, single): (Vec<Vec<u32>>, bool) = if let Some(p) = input_ids {
                let t = std::fs::read_to_string(&p)
                    .with_context(|| format!("reading {}", p.display()))?;
                let v: serde_json::Value = serde_json::from_str(&t)
                    .with_context(|| format!("{}: not JSON", p.display()))?;
                parse_ids(&v).with_context(|| {
                    format!(
                        "{}: expected an array of token ids or an array of arrays",
                        p.display()
                    )
                })?
            } else if let Some(t) = text {
                (vec![engine.tokenizer()?.encode(&t)?], true)
            } else {
                bail!("generate: give --input-ids FILE or --text TEXT");
            };
            let vocab = engine.vocab_size() as u32;
            if let Some(bad) = batch.iter().flatten().find(|&&t| t >= vocab) {
                bail!("token id {bad} is outside the model's vocabulary ({vocab})");
            }
            let opts = gen_options(&decode, engine.eos.clone())?;
            let t0 = std::time::Instant::now();
            let mut cons = stop_constraints(&engine, &decode.stops, batch.len())?;
            let outs = engine.generate_ids_with(&batch, &opts, &mut cons, adapter)?;
            let secs = t0.elapsed().as_secs_f64();
            let new_tokens: usize = outs.iter().map(|o| o.tokens.len()).sum();
            let ids: Vec<&Vec<u32>> = outs.iter().map(|o| &o.tokens).collect();
            let texts: Option<Vec<String>> = engine.tok.as_ref().map(|t| {
                outs.iter()
                    .map(|o| {
                        jobx_engine::generate::StopStrings::cut(
                            &t.decode(&o.tokens, true).unwrap_or_default(),
                            &decode.stops,
                        )
                        .to_string()
                    })
                    .collect()
            });
            let mut line = serde_json::json!({
                "ids": if single { serde_json::json!(ids[0]) } else { serde_json::json!(ids) },
                "finish": outs.iter().map(|o| o.finish).collect::<Vec<_>>(),
                "new_tokens": new_tokens,
                "load_ms": engine.load_ms,
                "generate_ms": secs * 1e3,
                "tokens_per_s": new_tokens as f64 / secs.max(1e-9),
                "threads": rayon::current_num_threads(),
            });
            if let Some(d) = engine.device_name() {
                line["device"] = serde_json::json!(d);
            }
            if let Some(t) = texts {
                line["text"] = if single {
                    serde_json::json!(t[0])
                } else {
                    serde_json::json!(t)
                };
            }
            println!("{line}");
            Ok(0)
        }
        Cmd::Extract {
            m,
            files,
            input_format,
            output,
            prompt,
            decode,
        } => {
            // Read all inputs first so a missing file fails before the model loads.
            let mut records: Vec<InputRecord> = Vec::new();
            if files.is_empty() || (files.len() == 1 && files[0].as_os_str() == "-") {
                let mut buf = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut buf)
                    .context("reading stdin")?;
                records.extend(extract::read_records(
                    "stdin",
                    &buf,
                    input_format.unwrap_or(InputFormat::Text),
                ));
            } else {
                for f in &files {
                    let bytes =
                        std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
                    let fmt = input_format.unwrap_or_else(|| extract::format_for_path(f));
                    let name = f
                        .file_name()
                        .map(|s| s.to_string_lossy().to_string())
                        .unwrap_or_default();
                    records.extend(extract::read_records(&name, &bytes, fmt));
                }
            }
            let (engine, adapter) = m.load(cuda)?;
            let opts = decode.extract_options(&engine, adapter, &prompt)?;
            let mut out: Box<dyn Write> = match &output {
                Some(p) => Box::new(BufWriter::new(
                    std::fs::File::create(p)
                        .with_context(|| format!("creating {}", p.display()))?,
                )),
                None => Box::new(BufWriter::new(std::io::stdout())),
            };
            let pb = if records.len() > 1 {
                let pb = indicatif::ProgressBar::new(records.len() as u64);
                pb.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{elapsed_precise} [{bar:30}] {pos}/{len} postings ({per_sec}, eta {eta})",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                Some(pb)
            } else {
                None
            };
            let (mut errors, mut oom) = (0usize, 0usize);
            let n = records.len();
            extract::extract_records(
                &engine,
                &records,
                &opts,
                &mut |w| match &pb {
                    // a hidden bar (stderr not a terminal) would swallow println
                    Some(pb) if !pb.is_hidden() => pb.println(format!("warning: {w}")),
                    _ => eprintln!("warning: {w}"),
                },
                &mut |done| {
                    if let Some(pb) = &pb {
                        pb.set_position(done as u64)
                    }
                },
                &mut |rec| {
                    if rec.error.is_some() {
                        errors += 1;
                        // (a posting that did not fit even alone: the batches were already
                        // split down to it)
                        oom += (rec.error_kind == Some(extract::ErrorKind::OutOfDeviceMemory))
                            as usize;
                    }
                    let line = serde_json::to_string(&rec)
                        .map_err(|e| jobx_engine::Error::Input(e.to_string()))?;
                    writeln!(out, "{line}").map_err(|e| {
                        jobx_engine::Error::io(output.clone().unwrap_or_else(|| "stdout".into()), e)
                    })?;
                    out.flush().map_err(|e| {
                        jobx_engine::Error::io(output.clone().unwrap_or_else(|| "stdout".into()), e)
                    })
                },
            )?;
            if let Some(pb) = pb {
                pb.finish_and_clear();
            }
            eprintln!("extracted {n} records ({errors} with errors)");
            if oom > 0 {
                eprintln!("{oom} of them did not fit in GPU memory even alone; {OOM_HINT}");
            }
            Ok(0)
        }
    }
}

fn stop_constraints(
    engine: &Engine,
    stops: &[String],
    rows: usize,
) -> anyhow::Result<Vec<Option<Box<dyn jobx_engine::generate::TokenConstraint>>>> {
    if stops.is_empty() {
        return Ok(vec![]);
    }
    let tok = engine.tokenizer()?.inner.clone();
    let dec: jobx_engine::generate::DecodeFn =
        std::sync::Arc::new(move |ids: &[u32]| tok.decode(ids, true).unwrap_or_default());
    let eos = *engine
        .eos
        .first()
        .context("the model has no EOS id for stop strings")?;
    Ok((0..rows)
        .map(|_| {
            Some(Box::new(jobx_engine::generate::StopStrings::new(
                dec.clone(),
                stops.to_vec(),
                eos,
            ))
                as Box<dyn jobx_engine::generate::TokenConstraint>)
        })
        .collect())
}

fn parse_ids(v: &serde_json::Value) -> anyhow::Result<(Vec<Vec<u32>>, bool)> {
    let arr = v.as_array().context("not an array")?;
    let one = |a: &serde_json::Value| -> anyhow::Result<Vec<u32>> {
        a.as_array()
            .context("not an array")?
            .iter()
            .map(|x| {
                x.as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .context("ids must be non-negative integers")
            })
            .collect()
    };
    if arr.iter().all(|x| x.is_array()) && !arr.is_empty() {
        let b: Vec<Vec<u32>> = arr.iter().map(one).collect::<anyhow::Result<_>>()?;
        if b.iter().any(|s| s.is_empty()) {
            bail!("an input sequence is empty");
        }
        Ok((b, false))
    } else {
        let s = one(v)?;
        if s.is_empty() {
            bail!("the input sequence is empty");
        }
        Ok((vec![s], true))
    }
}
