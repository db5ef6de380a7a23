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

/// The CLI on the CPU: these tests compare against f32 references, and `--device auto` (the
/// default) would run the models on a GPU where one opens.
pub fn cli() -> std::process::Command {
    let mut c = std::process::Command::new(bin());
    c.args(["--device", "cpu"]);
    c
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
    // f64::max drops NaN: a NaN anywhere would otherwise vanish from the error
    if a.iter().chain(b).any(|x| x.is_nan()) {
        return f64::INFINITY;
    }
    let num = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs() as f64));
    let den = b.iter().fold(0f64, |m, y| m.max(y.abs() as f64));
    num / den.max(1e-30)
}

/// The T5 device checks' case: a right-padded batch of two rows (`two_rows`, 9 positions) of
/// the model at `dir`, teacher-forced through 5 decoder tokens, with the f32 CPU graph's logits
/// per row and step (`want[row][step]`, [vocab] each).
pub struct T5TwoRows {
    pub v: usize,
    pub ids: Vec<u32>,
    pub mask: Vec<u8>,
    pub dec: [u32; 5],
    pub want: Vec<Vec<Vec<f32>>>,
}

impl T5TwoRows {
    pub const S: usize = 9;

    pub fn new(dir: &Path) -> Self {
        let cpu = jobx_engine::models::t5::T5Model::load_dir(dir).unwrap();
        let v = cpu.cfg.vocab_size;
        let rows = two_rows(v as u32);
        let (ids, mask) = right_padded(&rows, Self::S, cpu.cfg.pad_token_id);
        let dec = [cpu.cfg.decoder_start(), 7, 11, 13, 5];
        let want = rows
            .iter()
            .map(|r| t5_row_logits(&cpu, r, None, &dec))
            .collect();
        T5TwoRows {
            v,
            ids,
            mask,
            dec,
            want,
        }
    }

    /// The device graph's logits [2 * vocab] per step, plain steps.
    pub fn device_steps<B: jobx_engine::device::Backend>(
        &self,
        g: &jobx_engine::models::t5_device::T5Device<'_, B>,
    ) -> Vec<Vec<f32>> {
        use jobx_engine::generate::Stepper;
        let enc = g.encode(&self.ids, &self.mask, 2, Self::S).unwrap();
        let mut st = jobx_engine::models::t5_device::T5DeviceStepper::new(
            g,
            &enc,
            vec![0, 1],
            self.dec.len(),
        )
        .unwrap();
        self.dec
            .iter()
            .map(|&t| {
                let mut lg = Vec::new();
                st.step(&[t, t], &mut lg).unwrap();
                lg
            })
            .collect()
    }
}

/// `--cross-kv int8` on the T5 device graphs of `dev` (`set_kv8` switches it): for every T5
/// fixture, a padded batch of two rows, teacher-forced decode steps, each row's logits against
/// the f32 CPU graph. Returns (int8 error, bf16 error, label) per row and step; the int8 K/V
/// must stay within `CUDA_INT8_TOLERANCE_REL` (the int8 weights' budget) and must differ from
/// the bf16 run (so the int8 path ran).
pub fn t5_cross_kv_int8<B: jobx_engine::device::Backend>(
    dev: &B,
    set_kv8: &dyn Fn(bool),
) -> Vec<(f64, f64, String)> {
    use jobx_engine::models::t5_device::T5Device;
    let mut out = Vec::new();
    for name in [
        "t5-gated-gelu-untied",
        "t5-gated-silu",
        "t5-relu-tied",
        "t5-tiny-real-vocab",
    ] {
        let dir = fixtures_dir().join(name);
        let case = T5TwoRows::new(&dir);
        let g = T5Device::load_dir(dev, &dir).unwrap();
        let (v, want) = (case.v, &case.want);
        let mut runs = Vec::new();
        for kv8 in [true, false] {
            set_kv8(kv8);
            runs.push(case.device_steps(&g));
        }
        set_kv8(false);
        for (j, (a, b)) in runs[0].iter().zip(&runs[1]).enumerate() {
            for r in 0..2 {
                let (ra, rb) = (&a[r * v..(r + 1) * v], &b[r * v..(r + 1) * v]);
                let label = format!("{name} row {r} step {j}");
                out.push((rel_err(ra, &want[r][j]), rel_err(rb, &want[r][j]), label));
            }
        }
        if runs[0] == runs[1] {
            out.push((
                f64::INFINITY,
                0.0,
                format!("{name}: int8 K/V gave the bf16 logits"),
            ));
        }
    }
    out
}

/// Decode steps in the recorded layout (`Backend::graphs`: what changes between steps in fixed
/// device buffers, attention over the whole cache at a position read on the device; recorded
/// once and replayed as a CUDA graph on the GPU) against plain steps, for every T5 and Mistral
/// fixture: a padded batch of two rows teacher-forced through 3 steps (each after a reorder
/// that keeps the rows, so both cache sets get a recording), the rows swapped and then
/// duplicated (`select_rows` keeping the row count: the other cache set, its recording
/// replayed with the row inputs rewritten), a row dropped, 7 steps (past Mistral's sliding window), then 3 greedy picks
/// on the device; then a 2-beam search (its tokens added to the picks, its scores to the
/// logits). Per fixture: the largest relative difference of the logits and the
/// picks' log-probabilities (NaN counts as infinite), whether the picks agree, and whether
/// the last steps were replayed.
pub fn recorded_steps<B: jobx_engine::device::Backend>(
    dev: &B,
    set_graphs: &dyn Fn(bool),
) -> Vec<(String, f64, bool, bool)> {
    let names = [
        "t5-gated-gelu-untied",
        "t5-gated-silu",
        "t5-relu-tied",
        "t5-tiny-real-vocab",
        "mistral-gqa2-theta1e6",
        "mistral-gqa4-window",
        "mistral-tiny-real-vocab",
        // a LoRA adapter on one row of two (the one that survives the drop), its shrink
        // buffer allocated inside the recording
        "t5-lora",
        "mistral-lora",
    ];
    let mut dirs: Vec<_> = names
        .iter()
        .map(|n| (n.to_string(), fixtures_dir().join(n)))
        .collect();
    // and two fixtures widened to the specialised attention kernels' head dims (T5-Large's 64,
    // Mistral-7B's 128): the fixtures' own heads take the general kernel
    let widened: Vec<_> = [("t5-gated-silu", 64), ("mistral-gqa4-window", 128)]
        .into_iter()
        .map(|(n, hd)| (format!("{n} d{hd}"), with_head_dim(n, hd)))
        .collect();
    dirs.extend(
        widened
            .iter()
            .map(|(n, t)| (n.clone(), t.path().to_path_buf())),
    );
    recorded_steps_of(dev, set_graphs, &dirs)
}

/// `recorded_steps` on the model folders `dirs` (name, folder): a name starting with "t5" is
/// a T5 model, else a Mistral one; one ending with "lora" has its adapter in `adapter/`.
pub fn recorded_steps_of<B: jobx_engine::device::Backend>(
    dev: &B,
    set_graphs: &dyn Fn(bool),
    dirs: &[(String, PathBuf)],
) -> Vec<(String, f64, bool, bool)> {
    use jobx_engine::generate::Stepper;
    use jobx_engine::models::mistral_device::{MistralDevice, MistralDeviceStepper};
    use jobx_engine::models::t5_device::{T5Device, T5DeviceStepper};
    let mut out = Vec::new();
    // 12 steps: the Mistral rows reach position 21, past the 16-key window of mistral-gqa4-window
    let tf = [7u32, 11, 13, 5, 9, 4, 6, 8, 10, 12, 3, 14];
    let greedy_steps = 3;
    for (name, dir) in dirs {
        let dir = dir.clone();
        // one run: the steps above through `st`, returning logits, picks, replaying
        let drive = |st: &mut dyn Stepper| {
            let mut logits = Vec::new();
            let mut rows = 2;
            for (j, &t) in tf.iter().enumerate() {
                if j < 3 {
                    // rows kept in order, but through the other cache set each time (graphs
                    // on): step 0 runs plainly, steps 1 and 2 record one set each, so the
                    // reorders below replay recordings with rewritten row inputs
                    st.select_rows(&[0, 1]).unwrap();
                }
                if j == 3 {
                    // the rows swapped (their key masks and adapters differ): replays the
                    // first set's recording
                    st.select_rows(&[1, 0]).unwrap();
                }
                if j == 4 {
                    // same row count again: the second set's recording, now holding
                    // duplicated rows
                    st.select_rows(&[0, 0]).unwrap();
                }
                if j == 5 {
                    // keep the unpadded row (old row 1), whose keys all count for the window
                    st.select_rows(&[0]).unwrap();
                    rows = 1;
                }
                let toks: Vec<u32> = (0..rows as u32).map(|r| t + r).collect();
                let mut lg = Vec::new();
                st.step(&toks, &mut lg).unwrap();
                logits.push(lg);
            }
            let mut picks = Vec::new();
            let mut next = vec![5u32];
            for _ in 0..greedy_steps {
                let p = st.step_greedy(&next, &[], None).unwrap().unwrap();
                next = vec![p[0].0];
                picks.push(p[0].0);
                logits.push(vec![p[0].1]); // its log-probability, compared as the logits are
            }
            (logits, picks)
        };
        let mut runs = Vec::new();
        let lora = name.ends_with("lora");
        let slots = if lora { [None, Some(0)] } else { [None, None] };
        let adapter = lora.then(|| {
            jobx_engine::models::adapter::LoraAdapter::load(&dir.join("adapter"), "a").unwrap()
        });
        for on in [false, true] {
            set_graphs(on);
            let cap = tf.len() + greedy_steps + 1;
            let run = if name.starts_with("t5") {
                let mut g = T5Device::load_dir(dev, &dir).unwrap();
                if let Some(a) = &adapter {
                    assert_eq!(g.attach_adapter(a).unwrap(), 0);
                }
                let v = g.cfg.vocab_size as u32;
                let (ids, mask) = right_padded(&two_rows(v), 9, g.cfg.pad_token_id);
                let enc = g.encode_with(&ids, &mask, 2, 9, &slots).unwrap();
                let mut st = T5DeviceStepper::new(&g, &enc, vec![0, 1], cap).unwrap();
                let mut first = Vec::new();
                st.step(&[g.cfg.decoder_start(); 2], &mut first).unwrap();
                let (mut l, mut p) = drive(&mut st);
                let mut replayed = st.replaying();
                // beam search (2 beams): rows reordered every step, into the other cache set,
                // each set replaying its own recording
                let opts = jobx_engine::generate::GenOptions {
                    max_new_tokens: 10,
                    min_new_tokens: 10,
                    num_beams: 2,
                    eos: vec![g.cfg.eos_token_id],
                    ..Default::default()
                };
                let src = jobx_engine::generate::beam_parents(2, 2);
                let mut st = T5DeviceStepper::new(&g, &enc, src, 11).unwrap();
                let outs = jobx_engine::generate::generate(
                    &mut st,
                    &[g.cfg.decoder_start(); 2],
                    &opts,
                    &mut [],
                )
                .unwrap();
                for o in outs {
                    p.extend(o.tokens);
                    l.push(vec![o.score]); // compared as the logits are
                }
                replayed &= st.replaying();
                (l, p, replayed)
            } else {
                let mut g = MistralDevice::load_dir(dev, &dir).unwrap();
                if let Some(a) = &adapter {
                    assert_eq!(g.attach_adapter(a).unwrap(), 0);
                }
                let v = g.cfg.vocab_size as u32;
                let rows = two_rows(v);
                let s = 9;
                let (ids, mask) = left_padded(&rows, s, 0);
                let mut st =
                    MistralDeviceStepper::new(&g, &ids, &mask, (2, s), 1, cap, &slots).unwrap();
                let mut first = Vec::new();
                st.step(&[0, 0], &mut first).unwrap(); // the prefill's logits
                let (mut l, mut p) = drive(&mut st);
                let mut replayed = st.replaying();
                // beam search (2 beams per row, 4 rows): rows reordered every step, into the
                // other cache set, each set replaying its own recording; 12 steps take the
                // padded row past the 16-key window
                let opts = jobx_engine::generate::GenOptions {
                    max_new_tokens: 12,
                    min_new_tokens: 12,
                    num_beams: 2,
                    eos: g.cfg.eos_ids(),
                    ..Default::default()
                };
                let mut st =
                    MistralDeviceStepper::new(&g, &ids, &mask, (2, s), 2, 13, &slots).unwrap();
                let outs =
                    jobx_engine::generate::generate(&mut st, &[0, 0], &opts, &mut []).unwrap();
                for o in outs {
                    p.extend(o.tokens);
                    l.push(vec![o.score]); // compared as the logits are
                }
                replayed &= st.replaying();
                (l, p, replayed)
            };
            runs.push(run);
        }
        set_graphs(false);
        let worst = runs[0]
            .0
            .iter()
            .zip(&runs[1].0)
            .map(|(a, b)| rel_err(b, a))
            .fold(0f64, f64::max);
        out.push((name.to_string(), worst, runs[0].1 == runs[1].1, runs[1].2));
    }
    out
}

/// A copy of fixture `name` whose attention heads are `hd` wide (T5's `d_kv`, Mistral's
/// `head_dim`): its q/k/v/o projections replaced by seeded random ones of the new shapes
/// (uniform in +-1/sqrt(fan_in)), every other weight kept. The fixtures' heads are 4-16 wide,
/// so the CUDA backend's specialised attention kernels (head dims 64 and 128) never run on
/// them. No HF reference exists for such a model: it serves comparisons of two device paths.
pub fn with_head_dim(name: &str, hd: usize) -> tempfile::TempDir {
    let t = copy_dir(&fixtures_dir().join(name));
    let cfg_path = t.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let key = if cfg.get("d_kv").is_some() {
        "d_kv"
    } else {
        "head_dim"
    };
    let old = cfg[key].as_u64().expect("a head width in config.json") as usize;
    cfg[key] = hd.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let path = t.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ hd as u64);
    let mut bufs = Vec::new();
    // by name: `tensors()` comes in a hash map's order, which differs between processes, and
    // the random stream must meet the tensors in one order for the model to be the same
    let mut tensors = st.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    for (n, v) in tensors {
        assert_eq!(v.dtype(), safetensors::Dtype::F32, "{n}");
        let mut shape = v.shape().to_vec();
        // (HF names: T5 `...SelfAttention.q.weight`, `EncDecAttention.o.weight`; Mistral
        // `self_attn.q_proj.weight`)
        let attn = n.contains("Attention.") || n.contains("self_attn.");
        let module = n.rsplit('.').nth(1).unwrap_or("");
        let axis = match module {
            "q" | "k" | "v" | "q_proj" | "k_proj" | "v_proj" if attn => Some(0),
            "o" | "o_proj" if attn => Some(1),
            _ => None,
        };
        let data = match axis {
            Some(a) => {
                shape[a] = shape[a] / old * hd;
                let scale = 1.0 / (shape[1] as f32).sqrt();
                (0..shape[0] * shape[1])
                    .flat_map(|_| (rng.f() * scale).to_le_bytes())
                    .collect()
            }
            None => v.data().to_vec(),
        };
        bufs.push((n, shape, data));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = bufs
        .iter()
        .map(|(n, s, b)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b);
            (n.clone(), v.unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
    t
}

/// `rows` as one right-padded batch of width `s` (T5's encoder input): ids and key mask.
pub fn right_padded(rows: &[Vec<u32>], s: usize, pad: u32) -> (Vec<u32>, Vec<u8>) {
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for r in rows {
        ids.extend(
            r.iter()
                .copied()
                .chain(std::iter::repeat_n(pad, s - r.len())),
        );
        mask.extend((0..s).map(|j| (j < r.len()) as u8));
    }
    (ids, mask)
}

/// `rows` as one left-padded batch of width `s` (a decoder-only prompt): ids and key mask.
pub fn left_padded(rows: &[Vec<u32>], s: usize, pad: u32) -> (Vec<u32>, Vec<u8>) {
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for r in rows {
        ids.extend(std::iter::repeat_n(pad, s - r.len()).chain(r.iter().copied()));
        mask.extend((0..s).map(|j| (j >= s - r.len()) as u8));
    }
    (ids, mask)
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
    // (fixture, int8 linear weights, merge the adapter, int8 T5 cross-attention K/V)
    let mut runs = Vec::new();
    for n in &names {
        runs.extend([(n, false, false, false), (n, true, false, false)]);
        if n.contains("lora") {
            runs.extend([(n, false, true, false), (n, true, true, false)]);
        }
        if n.starts_with("t5") {
            runs.push((n, false, false, true));
        }
    }
    for (n, int8, merge, kv8) in runs {
        let opts = jobx_engine::verify::VerifyOptions {
            cuda,
            cuda_int8: int8,
            cuda_cross_kv_int8: kv8,
            merge_adapter: merge,
            host_device: !cuda,
        };
        let what = format!("{n} int8 {int8} merged {merge} int8 cross K/V {kv8}");
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
    use jobx_engine::models::mistral_device::MistralDevice;
    use jobx_engine::models::t5::T5Model;
    use jobx_engine::models::t5_device::{T5Device, T5DeviceStepper};
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
        let mut g = T5Device::load_dir(dev, &dir).unwrap();
        assert_eq!(g.attach_adapter(&a).unwrap(), 0);
        let rows = two_rows(cpu.cfg.vocab_size as u32);
        let s = 9;
        let (ids, mask) = right_padded(&rows, s, cpu.cfg.pad_token_id);
        let dec = [cpu.cfg.decoder_start(), 7, 11, 13];
        let enc = g.encode_with(&ids, &mask, 2, s, &slots).unwrap();
        let mut st = T5DeviceStepper::new(&g, &enc, vec![0, 1], dec.len()).unwrap();
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
        let mut g = MistralDevice::load_dir(dev, &dir).unwrap();
        assert_eq!(g.attach_adapter(&a).unwrap(), 0);
        let v = cpu.cfg.vocab_size;
        let rows = two_rows(v as u32);
        let (ids, mask) = left_padded(&rows, s, cpu.cfg.pad_token_id.unwrap_or(0));
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

/// The fixtures widened to the head dims of the specialised attention kernels (`with_head_dim`):
/// T5 at 64 (T5-Large's heads) and 128, Mistral at 128 (Mistral-7B's) and 64.
pub fn widened_models() -> Vec<(String, tempfile::TempDir)> {
    [
        ("t5-gated-gelu-untied", 64),
        ("t5-relu-tied", 128),
        ("mistral-gqa4-window", 128),
        ("mistral-gqa2-theta1e6", 64),
    ]
    .into_iter()
    .map(|(n, hd)| (format!("{n} d{hd}"), with_head_dim(n, hd)))
    .collect()
}

/// The device graphs of `dev` on `models` (`widened_models`) against the f32 CPU graph, row by
/// row: T5 `T5TwoRows` (encoder on the prefill attention kernels, then decode steps); Mistral
/// a left-padded prompt of two rows (prefill, 9 positions, causal; mistral-gqa4-window's
/// 16-key window) and 12 decode steps through its stepper, past the window. Returns (relative logits error, case) for every row and step:
/// the fixtures' own heads (4-16 wide) take the general attention kernel, so only these reach
/// the flash and decode kernels inside a model.
pub fn widened_vs_cpu<B: jobx_engine::device::Backend>(
    dev: &B,
    models: &[(String, tempfile::TempDir)],
) -> Vec<(f64, String)> {
    use jobx_engine::generate::Stepper;
    use jobx_engine::models::mistral::MistralModel;
    use jobx_engine::models::mistral_device::{MistralDevice, MistralDeviceStepper};
    use jobx_engine::models::t5_device::T5Device;
    let mut all = Vec::new();
    let s = 9;
    for (name, dir) in models {
        let dir = dir.path();
        if name.starts_with("t5") {
            let case = T5TwoRows::new(dir);
            let g = T5Device::load_dir(dev, dir).unwrap();
            let (v, want) = (case.v, &case.want);
            for (j, lg) in case.device_steps(&g).iter().enumerate() {
                for r in 0..2 {
                    let e = rel_err(&lg[r * v..(r + 1) * v], &want[r][j]);
                    all.push((e, format!("{name} row {r} step {j}")));
                }
            }
        } else {
            let cpu = MistralModel::load_dir(dir).unwrap();
            let g = MistralDevice::load_dir(dev, dir).unwrap();
            let v = cpu.cfg.vocab_size;
            let rows = two_rows(v as u32);
            let toks = [7u32, 11, 13, 5, 9, 4, 6, 8, 10, 12, 3, 14];
            let (ids, mask) = left_padded(&rows, s, 0);
            // the CPU graph on each row followed by the teacher-forced tokens: logits at every
            // position
            let want: Vec<_> = rows
                .iter()
                .map(|r| {
                    let seq: Vec<u32> = r.iter().chain(&toks).copied().collect();
                    mistral_row_logits(&cpu, &seq, None)
                })
                .collect();
            let slots = [None, None];
            let cap = s + toks.len() + 1;
            let mut st =
                MistralDeviceStepper::new(&g, &ids, &mask, (2, s), 1, cap, &slots).unwrap();
            let mut lg = Vec::new();
            st.step(&[0, 0], &mut lg).unwrap(); // the prefill's logits (last position)
            for (j, t) in std::iter::once(None)
                .chain(toks.iter().map(Some))
                .enumerate()
            {
                if let Some(&t) = t {
                    lg.clear();
                    st.step(&[t, t], &mut lg).unwrap();
                }
                for (r, row) in rows.iter().enumerate() {
                    let p = row.len() - 1 + j;
                    let e = rel_err(&lg[r * v..(r + 1) * v], &want[r][p * v..(p + 1) * v]);
                    all.push((e, format!("{name} row {r} step {j}")));
                }
            }
        }
    }
    all
}

/// Every `Backend` op called with one bad argument at a time (a buffer one element short, an
/// option the kernels do not implement, an id outside the vocabulary) must fail with this
/// backend's `Error::Backend` for that op, naming the buffer or the reason; the same calls with
/// every argument right must succeed (so a check that rejects everything fails too). Returns the
/// cases that went wrong. The checks are `device::check`, shared by every backend; on a GPU this
/// also shows no bad call reaches a kernel (a launch would fault or corrupt memory).
pub fn backend_rejects_bad_arguments<B: jobx_engine::device::Backend>(b: &B) -> Vec<String> {
    use half::bf16;
    use jobx_engine::device::{AttnCall, GemmShape, Lora, Out, View, Weight};
    use jobx_engine::{Error, Result};
    let mut bad = Vec::new();
    let mut expect = |case: &str, op: &str, needle: &str, r: Result<()>| match r {
        Err(Error::Backend {
            backend,
            op: got_op,
            msg,
        }) if backend == B::KIND && got_op == op && msg.contains(needle) => {}
        Ok(()) if needle.is_empty() => {}
        other => bad.push(format!(
            "{case}: expected {} of op `{op}`, got {other:?}",
            if needle.is_empty() {
                "success".to_string()
            } else {
                format!("an error naming `{needle}`")
            }
        )),
    };
    let bf = |n: usize| b.zeros::<bf16>("t", n).unwrap();
    let f = |n: usize| b.zeros::<f32>("t", n).unwrap();
    let i = |n: usize| b.zeros::<i32>("t", n).unwrap();

    // copy
    let (src, mut dst) = (bf(8), bf(8));
    expect("copy ok", "t", "", b.copy("t", &src, 2, &mut dst, 3, 5));
    expect(
        "copy src",
        "t",
        "copy source",
        b.copy("t", &src, 4, &mut dst, 0, 5),
    );
    expect(
        "copy dst",
        "t",
        "copy destination",
        b.copy("t", &src, 0, &mut dst, 4, 5),
    );

    // rms_norm: rows 3, d 8
    let (x, w, mut y) = (bf(24), bf(8), bf(24));
    expect(
        "rms ok",
        "rms_norm",
        "",
        b.rms_norm(&x, &w, &mut y, 3, 8, 1e-6),
    );
    expect(
        "rms x",
        "rms_norm",
        "x:",
        b.rms_norm(&bf(23), &w, &mut y, 3, 8, 1e-6),
    );
    expect(
        "rms w",
        "rms_norm",
        "w:",
        b.rms_norm(&x, &bf(7), &mut y, 3, 8, 1e-6),
    );
    expect(
        "rms y",
        "rms_norm",
        "y:",
        b.rms_norm(&x, &w, &mut bf(23), 3, 8, 1e-6),
    );
    // a size that overflows usize must not wrap around to a small number that passes
    expect(
        "rms overflow",
        "rms_norm",
        "overflows",
        b.rms_norm(&x, &w, &mut y, usize::MAX / 2 + 1, 2, 1e-6),
    );

    // gather_blocks: blocks of 4, the first `used` of each copied, every buffer checked
    let r = b.gather_blocks("t", &mut [bf(8), bf(8)], 4, 3, &[1, 0, 1]);
    expect("gather ok", "t", "", r);
    let r = b.gather_blocks("t", &mut [bf(8)], 4, 5, &[0]);
    expect(
        "gather used",
        "t",
        "gather of 5 elements from blocks of 4",
        r,
    );
    let r = b.gather_blocks("t", &mut [bf(8)], 4, 3, &[2]);
    expect("gather parent", "t", "gather source (parent block 2)", r);
    let r = b.gather_blocks("t", &mut [bf(12), bf(11)], 4, 3, &[2, 0]);
    expect(
        "gather short buffer",
        "t",
        "gather source (parent block 2)",
        r,
    );
    // gather_blocks_into: as many destinations as sources, each a block per parent
    let gsrc = vec![bf(3 * 4), bf(3 * 4)];
    let mut gdst = vec![bf(2 * 4), bf(2 * 4)];
    expect(
        "gather_into ok",
        "t",
        "",
        b.gather_blocks_into("t", &gsrc, &mut gdst, 4, 3, &[2, 0]),
    );
    expect(
        "gather_into count",
        "t",
        "2 source buffers, 1 destinations",
        b.gather_blocks_into("t", &gsrc, &mut [bf(8)], 4, 3, &[2, 0]),
    );
    expect(
        "gather_into short",
        "t",
        "gather destination",
        b.gather_blocks_into("t", &gsrc, &mut [bf(8), bf(7)], 4, 3, &[2, 0]),
    );

    // copy_rows: 3 rows of 4, source rows 5 apart from 1, destination rows 6 apart from 2
    use jobx_engine::device::Rows;
    let at = |off, ld| Rows { off, ld };
    let (src, mut dst) = (bf(15), bf(18));
    expect(
        "copy_rows ok",
        "t",
        "",
        b.copy_rows("t", (&src, at(1, 5)), (&mut dst, at(2, 6)), 3, 4),
    );
    expect(
        "copy_rows src",
        "t",
        "copy source",
        b.copy_rows("t", (&src, at(2, 5)), (&mut dst, at(2, 6)), 3, 4),
    );
    expect(
        "copy_rows dst",
        "t",
        "copy destination",
        b.copy_rows("t", (&src, at(1, 5)), (&mut dst, at(3, 6)), 3, 4),
    );
    expect(
        "copy_rows overlap",
        "t",
        "row stride 3",
        b.copy_rows("t", (&src, at(1, 5)), (&mut dst, at(0, 3)), 3, 4),
    );
    expect(
        "copy_rows overflow",
        "t",
        "overflows",
        b.copy_rows(
            "t",
            (&src, at(1, usize::MAX / 2)),
            (&mut dst, at(0, 6)),
            3,
            4,
        ),
    );

    // copy_rows_at: the copy above at position pos of stride `stride` (checked at `max`)
    let pos = b.upload("t", &[1i32]).unwrap();
    let mut at_pos = |stride, max| {
        b.copy_rows_at(
            "t",
            (&src, at(1, 5)),
            (&mut dst, at(0, 6)),
            3,
            4,
            &pos,
            stride,
            max,
        )
    };
    expect("copy_rows_at ok", "t", "", at_pos(1, 2));
    expect(
        "copy_rows_at past the end",
        "t",
        "copy destination",
        at_pos(1, 3),
    );
    // (usize::MAX / 2) * 3 overflows in copy_rows_at itself
    expect(
        "copy_rows_at overflow",
        "t",
        "destination offset overflows",
        at_pos(usize::MAX / 2, 3),
    );

    // write
    let mut w4 = i(4);
    expect("write ok", "t", "", b.write("t", &[1, 2, 3], &mut w4));
    expect(
        "write long",
        "t",
        "5",
        b.write("t", &[1, 2, 3, 4, 5], &mut w4),
    );

    // embedding from device ids: 3 ids, rows of 4, vocab 6
    let (tab, mut ey) = (bf(24), bf(12));
    let ids3 = b.upload("t", &[0i32, 5, 2]).unwrap();
    expect(
        "embedding ok",
        "embedding",
        "",
        b.embedding(&ids3, 3, &tab, &mut ey, 4, 6),
    );
    expect(
        "embedding ids",
        "embedding",
        "ids:",
        b.embedding(&ids3, 4, &tab, &mut bf(16), 4, 6),
    );
    expect(
        "embedding table",
        "embedding",
        "table:",
        b.embedding(&ids3, 3, &bf(23), &mut ey, 4, 6),
    );
    expect(
        "embedding y",
        "embedding",
        "y:",
        b.embedding(&ids3, 3, &tab, &mut bf(11), 4, 6),
    );

    // activation
    use jobx_engine::device::ActKind::Silu;
    let mut g = bf(10);
    expect(
        "act ok",
        "activation",
        "",
        b.activation_inplace(&mut g, 10, Silu),
    );
    expect(
        "act x",
        "activation",
        "x:",
        b.activation_inplace(&mut bf(9), 10, Silu),
    );
    // gated: rows 2 of 5 from gate|up rows of 10
    let (gu, mut y) = (bf(20), bf(10));
    expect(
        "gated ok",
        "gated_activation",
        "",
        b.gated_activation(&gu, &mut y, 2, 5, Silu),
    );
    expect(
        "gated gu",
        "gated_activation",
        "gate|up:",
        b.gated_activation(&bf(19), &mut y, 2, 5, Silu),
    );
    expect(
        "gated y",
        "gated_activation",
        "y:",
        b.gated_activation(&gu, &mut bf(9), 2, 5, Silu),
    );

    // rope: 2 tokens, 3 heads, head_dim 4 (rows of 12, or 16 apart)
    let mut x = bf(24);
    let pos = b.upload("t", &[0i32, 5]).unwrap();
    expect(
        "rope ok",
        "rope",
        "",
        b.rope(&mut x, &pos, 2, 3, 4, 12, 1e4),
    );
    expect(
        "rope strided ok",
        "rope",
        "",
        b.rope(&mut bf(28), &pos, 2, 3, 4, 16, 1e4),
    );
    expect(
        "rope odd",
        "rope",
        "is odd",
        b.rope(&mut bf(30), &pos, 2, 3, 5, 15, 1e4),
    );
    expect(
        "rope x",
        "rope",
        "x:",
        b.rope(&mut bf(23), &pos, 2, 3, 4, 12, 1e4),
    );
    expect(
        "rope strided x",
        "rope",
        "x:",
        b.rope(&mut bf(27), &pos, 2, 3, 4, 16, 1e4),
    );
    expect(
        "rope ld",
        "rope",
        "row stride 11",
        b.rope(&mut x, &pos, 2, 3, 4, 11, 1e4),
    );
    expect(
        "rope pos",
        "rope",
        "pos:",
        b.rope(&mut x, &i(1), 2, 3, 4, 12, 1e4),
    );

    // embedding: vocab 5, d 4
    let table = bf(20);
    let mut y = bf(8);
    expect(
        "emb ok",
        "embedding",
        "",
        b.embedding_ids(&[4, 0], &table, &mut y, 4, 5),
    );
    expect(
        "emb id",
        "embedding",
        "token id 5",
        b.embedding_ids(&[1, 5], &table, &mut y, 4, 5),
    );
    expect(
        "emb table",
        "embedding",
        "table:",
        b.embedding_ids(&[1], &bf(19), &mut y, 4, 5),
    );
    expect(
        "emb y",
        "embedding",
        "y:",
        b.embedding_ids(&[1, 2], &table, &mut bf(7), 4, 5),
    );

    // gemm: m 3, n 5, k 8, into row 1 of an output with row stride 7; LoRA rank 2, 2 adapters
    let s = GemmShape {
        m: 3,
        n: 5,
        k: 8,
        ldy: 7,
        y_off: 7,
        accumulate: false,
    };
    let ylen = s.y_len().expect("small shape"); // 7 + 2 * 7 + 5
    let (x, w, wq, ws) = (bf(24), bf(40), b.zeros::<i8>("t", 40).unwrap(), f(5));
    let (lt, lb, lids, lsc) = (f(6), bf(20), b.upload("t", &[0i32, -1, 1]).unwrap(), f(2));
    let lora = |t, bb, ids, scale| Lora::<B> {
        t,
        b: bb,
        ids,
        scale,
        r: 2,
        adapters: 2,
    };
    let ok_lora = lora(&lt, &lb, &lids, &lsc);
    let (mut yb, mut yf) = (bf(ylen), f(ylen));
    let gemm = |x: &B::Buf<bf16>, w: Weight<B>, y: Out<B>, s: &GemmShape, l: Option<&Lora<B>>| {
        b.gemm(x, w, y, s, l)
    };
    expect(
        "gemm ok",
        "gemm",
        "",
        gemm(&x, Weight::Bf16(&w), Out::Bf16(&mut yb), &s, Some(&ok_lora)),
    );
    let int8 = || Weight::Int8 { w: &wq, scale: &ws };
    expect(
        "gemm int8 f32 ok",
        "gemm",
        "",
        gemm(&x, int8(), Out::F32(&mut yf), &s, None),
    );
    let narrow = GemmShape { ldy: 4, ..s };
    expect(
        "gemm ldy",
        "gemm",
        "ldy 4 < n 5",
        gemm(&x, Weight::Bf16(&w), Out::Bf16(&mut yb), &narrow, None),
    );
    expect(
        "gemm x",
        "gemm",
        "x:",
        gemm(&bf(23), Weight::Bf16(&w), Out::Bf16(&mut yb), &s, None),
    );
    let far = GemmShape {
        y_off: usize::MAX - 2,
        ..s
    };
    expect(
        "gemm y overflow",
        "gemm",
        "overflows",
        gemm(&x, Weight::Bf16(&w), Out::Bf16(&mut yb), &far, None),
    );
    expect(
        "gemm w",
        "gemm",
        "w:",
        gemm(&x, Weight::Bf16(&bf(39)), Out::Bf16(&mut yb), &s, None),
    );
    let wq_short = b.zeros::<i8>("t", 39).unwrap();
    expect(
        "gemm w int8",
        "gemm",
        "w:",
        gemm(
            &x,
            Weight::Int8 {
                w: &wq_short,
                scale: &ws,
            },
            Out::F32(&mut yf),
            &s,
            None,
        ),
    );
    expect(
        "gemm w_scale",
        "gemm",
        "w_scale",
        gemm(
            &x,
            Weight::Int8 {
                w: &wq,
                scale: &f(4),
            },
            Out::F32(&mut yf),
            &s,
            None,
        ),
    );
    expect(
        "gemm y bf16",
        "gemm",
        "y:",
        gemm(&x, Weight::Bf16(&w), Out::Bf16(&mut bf(ylen - 1)), &s, None),
    );
    expect(
        "gemm y f32",
        "gemm",
        "y:",
        gemm(&x, int8(), Out::F32(&mut f(ylen - 1)), &s, None),
    );
    let (t5, b19, ids2, sc1) = (f(5), bf(19), i(2), f(1));
    for (case, needle, l) in [
        ("gemm lora t", "lora t", lora(&t5, &lb, &lids, &lsc)),
        ("gemm lora b", "lora b", lora(&lt, &b19, &lids, &lsc)),
        ("gemm lora ids", "lora ids", lora(&lt, &lb, &ids2, &lsc)),
        ("gemm lora scale", "lora scale", lora(&lt, &lb, &lids, &sc1)),
    ] {
        expect(
            case,
            "gemm",
            needle,
            gemm(&x, Weight::Bf16(&w), Out::Bf16(&mut yb), &s, Some(&l)),
        );
    }

    // lora_shrink: m 3, k 8, r 2, 2 adapters
    let (a, mut t) = (bf(32), f(6));
    expect(
        "shrink ok",
        "lora_shrink",
        "",
        b.lora_shrink(&x, &a, &lids, &mut t, 3, 8, 2, 2),
    );
    expect(
        "shrink x",
        "lora_shrink",
        "x:",
        b.lora_shrink(&bf(23), &a, &lids, &mut t, 3, 8, 2, 2),
    );
    expect(
        "shrink a",
        "lora_shrink",
        "a:",
        b.lora_shrink(&x, &bf(31), &lids, &mut t, 3, 8, 2, 2),
    );
    expect(
        "shrink ids",
        "lora_shrink",
        "ids:",
        b.lora_shrink(&x, &a, &ids2, &mut t, 3, 8, 2, 2),
    );
    expect(
        "shrink t",
        "lora_shrink",
        "t:",
        b.lora_shrink(&x, &a, &lids, &mut f(5), 3, 8, 2, 2),
    );

    // attention: 2 query rows over 1 K/V row (kv_batch map), 4 heads over 2 kv heads, 3 queries,
    // 5 keys, head size 8, T5 bias with 8 buckets; contiguous [row, t, heads, dk] layouts
    let c = AttnCall {
        batch: 2,
        kv_batch_rows: 1,
        heads: 4,
        kv_heads: 2,
        tq: 3,
        tk: 5,
        dk: 8,
        q_offset: 2,
        window: 0,
        scale: 0.5,
        causal: true,
        t5_bias: Some((8, 16, false)),
    };
    let qv = View {
        sb: 3 * 32,
        sh: 8,
        st: 32,
        off: 0,
    };
    let kv = View {
        sb: 5 * 16,
        sh: 8,
        st: 16,
        off: 0,
    };
    let (q, k, v, mut o) = (bf(2 * 96), bf(80), bf(80), bf(2 * 96));
    let (mask, map, bias) = (i(5), i(2), f(32));
    let attn = |c: &AttnCall,
                q: &B::Buf<bf16>,
                k: &B::Buf<bf16>,
                v: &B::Buf<bf16>,
                o: &mut B::Buf<bf16>,
                m: Option<&B::Buf<i32>>,
                kb: Option<&B::Buf<i32>>,
                rb: Option<&B::Buf<f32>>| {
        b.attention(c, (q, qv), (k, kv), (v, kv), o, m, kb, rb)
    };
    expect(
        "attn ok",
        "attention",
        "",
        attn(&c, &q, &k, &v, &mut o, Some(&mask), Some(&map), Some(&bias)),
    );
    let all = |c: &AttnCall, o: &mut B::Buf<bf16>| {
        attn(c, &q, &k, &v, o, Some(&mask), Some(&map), Some(&bias))
    };
    expect(
        "attn dk 0",
        "attention",
        "head size 0",
        all(&AttnCall { dk: 0, ..c }, &mut o),
    );
    expect(
        "attn dk 129",
        "attention",
        "head size 129",
        all(&AttnCall { dk: 129, ..c }, &mut o),
    );
    expect(
        "attn gqa",
        "attention",
        "not a multiple",
        all(&AttnCall { kv_heads: 3, ..c }, &mut o),
    );
    expect(
        "attn q",
        "attention",
        "q:",
        attn(&c, &bf(191), &k, &v, &mut o, None, Some(&map), None),
    );
    expect(
        "attn k",
        "attention",
        "k:",
        attn(&c, &q, &bf(79), &v, &mut o, None, Some(&map), None),
    );
    expect(
        "attn v",
        "attention",
        "v:",
        attn(&c, &q, &k, &bf(79), &mut o, None, Some(&map), None),
    );
    expect("attn o", "attention", "o:", all(&c, &mut bf(191)));
    // attention_at: the same checks, and the position buffer
    let p2 = b.upload("t", &[2i32]).unwrap();
    let at_call = |c: &AttnCall, p: &B::Buf<i32>, k: &B::Buf<bf16>, o: &mut B::Buf<bf16>| {
        b.attention_at(
            c,
            p,
            (&q, qv),
            (k, kv),
            (&v, kv),
            o,
            Some(&mask),
            Some(&map),
            Some(&bias),
        )
    };
    expect("attn_at ok", "attention", "", at_call(&c, &p2, &k, &mut o));
    expect(
        "attn_at k",
        "attention",
        "k:",
        at_call(&c, &p2, &bf(79), &mut o),
    );
    let huge = View {
        sh: usize::MAX / 2, // (heads - 1) * sh overflows
        ..qv
    };
    expect(
        "attn view overflow",
        "attention",
        "overflows",
        b.attention(
            &c,
            (&q, huge),
            (&k, kv),
            (&v, kv),
            &mut o,
            None,
            Some(&map),
            None,
        ),
    );
    // an operand at an offset inside a larger buffer (fused projections, K|V caches)
    let kv_at = View { off: 8, ..kv };
    let (k88, v88) = (bf(88), bf(88));
    for (case, needle, kb, vb) in [
        ("attn offset ok", "", &k88, &v88),
        ("attn offset k", "k:", &k, &v88),
        ("attn offset v", "v:", &k88, &v),
    ] {
        let r = b.attention(
            &c,
            (&q, qv),
            (kb, kv_at),
            (vb, kv_at),
            &mut o,
            None,
            Some(&map),
            None,
        );
        expect(case, "attention", needle, r);
    }
    expect(
        "attn mask",
        "attention",
        "key_mask",
        attn(&c, &q, &k, &v, &mut o, Some(&i(4)), Some(&map), None),
    );
    expect(
        "attn map",
        "attention",
        "kv_batch",
        attn(&c, &q, &k, &v, &mut o, None, Some(&i(1)), None),
    );
    expect(
        "attn no map",
        "attention",
        "no kv_batch map",
        attn(&c, &q, &k, &v, &mut o, None, None, None),
    );
    let no_bias = AttnCall { t5_bias: None, ..c };
    expect(
        "attn bias cfg",
        "attention",
        "relative bias needs",
        all(&no_bias, &mut o),
    );
    let one_bucket = AttnCall {
        t5_bias: Some((1, 16, false)),
        ..c
    };
    expect(
        "attn buckets",
        "attention",
        "relative bias needs",
        all(&one_bucket, &mut o),
    );
    expect(
        "attn bias",
        "attention",
        "rel_bias",
        attn(&c, &q, &k, &v, &mut o, None, Some(&map), Some(&f(31))),
    );

    // attention_q8: int8 K|V views into one buffer (strides multiples of dk), a scale per dk
    // group; no relative bias
    let cq = AttnCall { t5_bias: None, ..c };
    let (kv8, sc) = (
        b.upload("t", &(0..80).map(|j| (j % 7) as i8 - 3).collect::<Vec<_>>())
            .unwrap(),
        b.upload("t", &[0.01f32; 10]).unwrap(),
    );
    let q8 = |kview: View, scales: &B::Buf<f32>, o: &mut B::Buf<bf16>| {
        b.attention_q8(
            &cq,
            (&q, qv),
            &kv8,
            kview,
            kview,
            scales,
            o,
            None,
            Some(&map),
        )
    };
    expect("attn q8 ok", "attention", "", q8(kv, &sc, &mut o));
    let odd = View { sh: 4, ..kv };
    expect(
        "attn q8 stride",
        "attention",
        "multiples of dk",
        q8(odd, &sc, &mut o),
    );
    let shifted = View { off: 4, ..kv };
    expect(
        "attn q8 offset",
        "attention",
        "multiples of dk",
        q8(shifted, &sc, &mut o),
    );
    let short = b.upload("t", &[0.01f32; 9]).unwrap();
    expect(
        "attn q8 scales",
        "attention",
        "scales",
        q8(kv, &short, &mut o),
    );
    // quantize_kv: groups of 1..=1024
    let (mut q8buf, mut q8sc) = (b.zeros::<i8>("t", 16).unwrap(), f(4));
    let xq = bf(32);
    expect(
        "quantize ok",
        "quantize_kv",
        "",
        b.quantize_kv(&xq, 2, 8, &mut q8buf, &mut q8sc),
    );
    expect(
        "quantize group",
        "quantize_kv",
        "group size",
        b.quantize_kv(&xq, 2, 0, &mut q8buf, &mut q8sc),
    );
    expect(
        "quantize q",
        "quantize_kv",
        "q:",
        b.quantize_kv(&xq, 4, 8, &mut q8buf, &mut q8sc),
    );

    // greedy_pick: 2 rows of 40 ids (2 mask words a row)
    let mut lg = b
        .upload("t", &(0..80).map(|j| j as f32 * 0.1).collect::<Vec<_>>())
        .unwrap();
    let masks = vec![u32::MAX; 4];
    let pick = |lg: &mut B::Buf<f32>, rows, vocab, m: Option<&[u32]>| {
        b.greedy_pick(lg, rows, vocab, &[3], m).map(|_| ())
    };
    expect(
        "pick ok",
        "greedy_pick",
        "",
        pick(&mut lg, 2, 40, Some(&masks)),
    );
    expect(
        "pick vocab 0",
        "greedy_pick",
        "vocabulary of 0",
        pick(&mut lg, 2, 0, None),
    );
    expect(
        "pick logits",
        "greedy_pick",
        "logits",
        pick(&mut lg, 3, 40, None),
    );
    expect(
        "pick masks",
        "greedy_pick",
        "masks",
        pick(&mut lg, 2, 40, Some(&masks[..3])),
    );
    // topk_logprobs: the same buffers, k within 1..=min(64, vocab)
    let top = |lg: &mut B::Buf<f32>, rows, vocab, k, m: Option<&[u32]>| {
        b.topk_logprobs(lg, rows, vocab, k, &[3], m).map(|_| ())
    };
    let t = "topk_logprobs";
    expect("topk ok", t, "", top(&mut lg, 2, 40, 8, Some(&masks)));
    expect("topk k 0", t, "k 0", top(&mut lg, 2, 40, 0, None));
    expect("topk k 65", t, "k 65", top(&mut lg, 1, 80, 65, None));
    expect("topk k > vocab", t, "k 9", top(&mut lg, 2, 8, 9, None));
    expect("topk logits", t, "logits", top(&mut lg, 3, 40, 4, None));
    expect(
        "topk masks",
        t,
        "masks",
        top(&mut lg, 2, 40, 4, Some(&masks[..3])),
    );
    bad
}
