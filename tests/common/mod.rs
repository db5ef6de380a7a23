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

/// The fixtures folder (JOBX_FIXTURES: where tools/gpu-check.sh put them on a GPU machine).
pub fn fixtures_dir() -> PathBuf {
    std::env::var_os("JOBX_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("tests/fixtures"))
}

/// `verify` on the device graphs (CUDA with `cuda`, else the host emulation) for every fixture:
/// bf16 and int8 weights; the LoRA fixtures also with the adapter merged into bf16 weights, and
/// merging into int8 weights must be refused with a clear error. Returns the failures, or Err
/// with the reason when there is no usable GPU.
pub fn verify_device_fixtures(cuda: bool) -> Result<Vec<String>, String> {
    let dir = fixtures_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("reference.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 8, "fixtures found: {names:?}");
    let mut failed = Vec::new();
    // (fixture, int8 linear weights, merge the adapter)
    let mut runs = Vec::new();
    for n in &names {
        runs.extend([(n, false, false), (n, true, false)]);
        if n.contains("lora") {
            runs.extend([(n, false, true), (n, true, true)]);
        }
    }
    for (n, int8, merge) in runs {
        let opts = jobx_engine::verify::VerifyOptions {
            cuda,
            cuda_int8: int8,
            merge_adapter: merge,
            host_device: !cuda,
        };
        let what = format!("{n} int8 {int8} merged {merge}");
        match jobx_engine::verify::verify_dir_with(&dir.join(n), &opts, &mut |l| eprintln!("  {l}"))
        {
            Ok(_) if int8 && merge => failed.push(format!("{what}: merged into int8 weights")),
            Ok(s) if s.ok => eprintln!("{what}: ok, max_rel_err {:.3e}", s.max_rel_err),
            Ok(s) => failed.push(format!("{what}: {s:?}")),
            Err(e) => {
                let msg = e.to_string();
                if msg.contains("built without the CUDA backend") || msg.contains("op `init`") {
                    return Err(msg);
                }
                if int8 && merge && msg.contains("int8 GPU weights") {
                    eprintln!("{what}: refused as expected ({msg})");
                    continue;
                }
                failed.push(format!("{what}: {msg}"));
            }
        }
    }
    Ok(failed)
}

/// LoRA in the device graphs, SGMV style: one padded batch whose first row uses the fixture's
/// adapter and whose second row the base model (T5: right-padded encoder rows and teacher-forced
/// decoder steps; Mistral: left-padded prompt, logits of every real position). Each row's logits
/// must be within the bf16 (int8) tolerance of the f32 CPU graph run on that row alone with that
/// row's adapter, with bf16 and with int8 base weights (`set_int8` switches the backend before
/// each load). Returns the (error, tolerance, case) over the tolerance. The adapters move the
/// logits by 0.6-1.3 relative, far beyond the tolerance (adapters_bad_input.rs checks it).
pub fn mixed_adapter_rows<B: jobx_engine::device::Backend>(
    dev: &B,
    set_int8: &dyn Fn(bool),
) -> Vec<(f64, f64, String)> {
    use jobx_engine::generate::Stepper;
    use jobx_engine::models::adapter::LoraAdapter;
    use jobx_engine::models::mistral::MistralModel;
    use jobx_engine::models::mistral_cuda::MistralCuda;
    use jobx_engine::models::t5::T5Model;
    use jobx_engine::models::t5_cuda::{T5Cuda, T5CudaStepper};
    use jobx_engine::verify::{CUDA_BF16_TOLERANCE_REL, CUDA_INT8_TOLERANCE_REL};
    let fx = fixtures_dir();
    let slots = [Some(0usize), None];
    let mut all = Vec::new();
    for int8 in [false, true] {
        set_int8(int8);
        let tol = if int8 {
            CUDA_INT8_TOLERANCE_REL
        } else {
            CUDA_BF16_TOLERANCE_REL
        };
        // T5
        let dir = fx.join("t5-lora");
        let a = LoraAdapter::load(&dir.join("adapter"), "a").unwrap();
        let mut cpu = T5Model::load_dir(&dir).unwrap();
        a.attach(&mut cpu, 0).unwrap();
        let mut g = T5Cuda::load_dir(dev, &dir).unwrap();
        assert_eq!(g.attach_adapter(&a).unwrap(), 0);
        let rows = two_rows(cpu.cfg.vocab_size as u32);
        let s = 9;
        let (mut ids, mut mask) = (Vec::new(), Vec::new());
        for r in &rows {
            let pad = std::iter::repeat_n(cpu.cfg.pad_token_id, s - r.len());
            ids.extend(r.iter().copied().chain(pad));
            mask.extend((0..s).map(|j| (j < r.len()) as u8));
        }
        let dec = [cpu.cfg.decoder_start(), 7, 11, 13];
        let enc = g.encode_with(&ids, &mask, 2, s, &slots).unwrap();
        let mut st = T5CudaStepper::new(&g, &enc, vec![0, 1], dec.len()).unwrap();
        let v = cpu.cfg.vocab_size;
        let want: Vec<_> = rows
            .iter()
            .zip(slots)
            .map(|(r, a)| t5_row_logits(&cpu, r, a, &dec))
            .collect();
        for (j, &t) in dec.iter().enumerate() {
            let mut lg = Vec::new();
            st.step(&[t, t], &mut lg).unwrap();
            for r in 0..2 {
                let e = rel_err(&lg[r * v..(r + 1) * v], &want[r][j]);
                all.push((e, tol, format!("t5-lora int8 {int8} row {r} step {j}")));
            }
        }
        // Mistral
        let dir = fx.join("mistral-lora");
        let a = LoraAdapter::load(&dir.join("adapter"), "a").unwrap();
        let mut cpu = MistralModel::load_dir(&dir).unwrap();
        a.attach(&mut cpu, 0).unwrap();
        let mut g = MistralCuda::load_dir(dev, &dir).unwrap();
        assert_eq!(g.attach_adapter(&a).unwrap(), 0);
        let v = cpu.cfg.vocab_size;
        let rows = two_rows(v as u32);
        let pad = cpu.cfg.pad_token_id.unwrap_or(0);
        let (mut ids, mut mask) = (Vec::new(), Vec::new());
        for r in &rows {
            ids.extend(std::iter::repeat_n(pad, s - r.len()).chain(r.iter().copied()));
            mask.extend((0..s).map(|j| (j >= s - r.len()) as u8));
        }
        let mut st = g.new_state_with(2, s, &slots).unwrap();
        let mut lg = Vec::new();
        g.forward(&mut st, &ids, &mask, s, true, &mut lg).unwrap();
        for (r, (row, a)) in rows.iter().zip(slots).enumerate() {
            let want = mistral_row_logits(&cpu, row, a);
            for p in 0..row.len() {
                let at = (r * s + s - row.len() + p) * v;
                let e = rel_err(&lg[at..at + v], &want[p * v..(p + 1) * v]);
                all.push((e, tol, format!("mistral-lora int8 {int8} row {r} pos {p}")));
            }
        }
    }
    set_int8(false);
    let max = all.iter().map(|w| w.0).fold(0f64, f64::max);
    eprintln!(
        "mixed adapter rows: {} rows/steps, max rel err {max:.3e}",
        all.len()
    );
    all.into_iter().filter(|(e, tol, _)| e > tol).collect()
}
