//! The Mistral / Llama device graph, written against `device::Backend` (the GPU with feature
//! `cuda`, or the host emulation of the kernels that CI checks it on): the computation of
//! `mistral.rs` (HF `modeling_mistral.py`) with bf16 weights and activations and f32 accumulation
//! in every kernel. Weights are loaded by their HF names, converted to bf16 once.
//!
//! q_proj|k_proj|v_proj and gate_proj|up_proj are each one fused weight and one GEMM
//! (`DeviceWeights::load_if_fused`; adapters still target them by their HF names).
//!
//! Device layout: activations [tokens, hidden]; the fused projection [tokens, H*hd + 2*KV*hd]
//! (q | k | v; RoPE in place on the q and k heads, adjacent at the start of each row, in one
//! call); KV cache per layer [rows, capacity, 2*KV*hd] (k | v of each position; time-major, so
//! one row's new positions are one contiguous block, and a decode step's k|v rows go in with one
//! strided copy); attention reads it as the views (b, h, t, d) -> off + b*cap*2*KV*hd +
//! t*2*KV*hd + h*hd + d (off 0: k, KV*hd: v) with GQA, causal mask, sliding window and the
//! padding mask.
//! Left padding follows HF `generate`: position ids are cumsum(mask) - 1, pads get 1 and are
//! masked as keys (host bookkeeping, as in the CPU graph).

use super::mistral::MistralConfig;
use crate::checkpoint::Checkpoint;
use crate::device::profile::StepProfile;
use crate::device::{
    fused_name, ActKind, AttnCall, Backend, DeviceWeights, FusedGroups, GemmShape, Out,
    RowAdapters, Rows, View,
};
use crate::generate::{beam_parents, PendingLogits};
use crate::models::adapter::LoraAdapter;
use crate::{Error, Result};
use half::bf16;
use std::path::Path;

/// The linear layers of each layer stored fused (`fused_name`), in row order.
const QKV: &[&str] = &["q_proj", "k_proj", "v_proj"];
const GATE_UP: &[&str] = &["gate_proj", "up_proj"];

pub struct MistralDevice<'g, B: Backend> {
    pub dev: &'g B,
    pub cfg: MistralConfig,
    /// weights and attached adapters
    pub(crate) w: DeviceWeights<'g, B>,
    head: &'static str,
}

/// KV cache and per-row positions for a batch of sequences on the device.
pub struct MistralDeviceState<B: Backend> {
    pub rows: usize,
    pub len: usize,
    cap: usize,
    kv: Vec<B::Buf<bf16>>, // per layer [rows, cap, 2*KV*hd]: k | v
    key_mask: Vec<i32>,    // host [rows, cap]
    next_pos: Vec<usize>,
    /// LoRA adapter slot of each row (None: base model), and on the device
    adapters: Vec<Option<usize>>,
    ad: RowAdapters<B>,
}

impl<'g, B: Backend> MistralDevice<'g, B> {
    pub fn load_dir(dev: &'g B, dir: &Path) -> Result<Self> {
        let p = dir.join("config.json");
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        let cfg = MistralConfig::from_json_str(&text, &p)?;
        let ck = Checkpoint::open_dir(dir)?;
        Self::load(dev, cfg, &ck)
    }

    pub fn load(dev: &'g B, cfg: MistralConfig, ck: &Checkpoint) -> Result<Self> {
        let (hd, h, kv, hid, inter, v) = (
            cfg.head_dim(),
            cfg.num_attention_heads,
            cfg.kv_heads(),
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.vocab_size,
        );
        if hd > 128 {
            return Err(Error::Unsupported(format!(
                "CUDA backend: head_dim {hd} (the attention kernel supports up to 128)"
            )));
        }
        let mut names: Vec<(String, Vec<usize>)> = vec![
            ("model.embed_tokens.weight".into(), vec![v, hid]),
            ("model.norm.weight".into(), vec![hid]),
        ];
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            for (n, s) in [
                ("input_layernorm", vec![hid]),
                ("self_attn.q_proj", vec![h * hd, hid]),
                ("self_attn.k_proj", vec![kv * hd, hid]),
                ("self_attn.v_proj", vec![kv * hd, hid]),
                ("self_attn.o_proj", vec![hid, h * hd]),
                ("post_attention_layernorm", vec![hid]),
                ("mlp.gate_proj", vec![inter, hid]),
                ("mlp.up_proj", vec![inter, hid]),
                ("mlp.down_proj", vec![hid, inter]),
            ] {
                names.push((format!("{p}.{n}.weight"), s));
            }
        }
        let tied = cfg.tie_word_embeddings && !ck.contains("lm_head.weight");
        if !tied {
            names.push(("lm_head.weight".into(), vec![v, hid]));
        }
        let mut w = DeviceWeights::new(dev, "Mistral");
        let groups: Vec<(String, &[&str])> = (0..cfg.num_hidden_layers)
            .flat_map(|i| {
                [
                    (format!("model.layers.{i}.self_attn"), QKV),
                    (format!("model.layers.{i}.mlp"), GATE_UP),
                ]
            })
            .collect();
        let groups = FusedGroups::new(&groups, &names)?;
        for (name, shape) in names {
            if w.load_if_fused(ck, &groups, &name)? {
                continue;
            }
            let t = ck.f32(&name, &shape)?;
            if name.ends_with("_proj.weight") {
                w.insert_linear(&name, t.as_slice(), shape[0], shape[1])?; // may be int8
            } else {
                w.insert_f32(&name, t.as_slice())?;
            }
        }
        if !tied {
            w.mark_linear("lm_head.weight", v, hid); // adapters may target the head
        }
        Ok(MistralDevice {
            dev,
            cfg,
            w,
            head: if tied {
                "model.embed_tokens.weight"
            } else {
                "lm_head.weight"
            },
        })
    }

    fn wt(&self, name: &str) -> Result<&B::Buf<bf16>> {
        self.w.get(name)
    }

    fn buf(&self, n: usize) -> Result<B::Buf<bf16>> {
        self.w.buf(n)
    }

    /// Attach a PEFT LoRA adapter (unmerged) in the next slot; returns the slot.
    pub fn attach_adapter(&mut self, adapter: &LoraAdapter) -> Result<usize> {
        self.w.attach_adapter(adapter)
    }

    /// Merge adapter `slot` into the bf16 weights (`DeviceWeights::merge_adapter`).
    pub fn merge_adapter(&mut self, slot: usize) -> Result<()> {
        self.w.merge_adapter(slot)
    }

    /// A state for `rows` sequences on the base model.
    pub fn new_state(&self, rows: usize, capacity: usize) -> Result<MistralDeviceState<B>> {
        self.new_state_with(rows, capacity, &vec![None; rows])
    }

    /// A state whose rows use LoRA adapter slots `adapters` [rows] (None: base model); rows of
    /// one batch may differ (the SGMV kernels take a slot per row).
    pub fn new_state_with(
        &self,
        rows: usize,
        capacity: usize,
        adapters: &[Option<usize>],
    ) -> Result<MistralDeviceState<B>> {
        if adapters.len() != rows {
            return Err(Error::Input(format!(
                "{} adapter slots for {rows} rows",
                adapters.len()
            )));
        }
        let kvd = self.cfg.kv_heads() * self.cfg.head_dim();
        let cap = capacity.max(1);
        let mut kv = Vec::new();
        for _ in 0..self.cfg.num_hidden_layers {
            kv.push(self.buf(rows * cap * 2 * kvd)?);
        }
        Ok(MistralDeviceState {
            rows,
            len: 0,
            cap,
            kv,
            key_mask: vec![0; rows * cap],
            next_pos: vec![0; rows],
            adapters: adapters.to_vec(),
            ad: self.w.row_adapters(adapters)?,
        })
    }

    /// Feed `t_new` tokens per row (`ids`/`mask` [rows, t_new]); logits for every new position
    /// (`all`) or the last one of each row, as f32 on the host.
    pub fn forward(
        &self,
        st: &mut MistralDeviceState<B>,
        ids: &[u32],
        mask: &[u8],
        t_new: usize,
        all: bool,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        let lg = self.forward_device(st, ids, mask, t_new, all)?;
        *logits = self.dev.download("mistral", &lg)?;
        Ok(())
    }

    /// `forward` with the f32 logits left on the device.
    pub fn forward_device(
        &self,
        st: &mut MistralDeviceState<B>,
        ids: &[u32],
        mask: &[u8],
        t_new: usize,
        all: bool,
    ) -> Result<B::Buf<f32>> {
        let c = &self.cfg;
        let dev = self.dev;
        let (hid, hd, h, kv, inter, vsz) = (
            c.hidden_size,
            c.head_dim(),
            c.num_attention_heads,
            c.kv_heads(),
            c.intermediate_size,
            c.vocab_size,
        );
        let (qd, kvd) = (h * hd, kv * hd);
        let qkvd = qd + 2 * kvd;
        let rows = st.rows;
        if ids.len() != rows * t_new || mask.len() != ids.len() || t_new == 0 {
            return Err(Error::Input(format!(
                "forward: {} ids / {} mask for {rows} rows x {t_new}",
                ids.len(),
                mask.len()
            )));
        }
        let p0 = st.len;
        if p0 + t_new > st.cap {
            return Err(Error::Input(format!(
                "KV cache of {} positions is full ({p0} + {t_new})",
                st.cap
            )));
        }
        let m = rows * t_new;
        let eps = c.rms_norm_eps as f32;
        // positions (HF: cumsum(mask) - 1, pads -> 1) and the key mask of the new slots
        let mut pos = Vec::with_capacity(m);
        for r in 0..rows {
            for t in 0..t_new {
                let real = mask[r * t_new + t] != 0;
                st.key_mask[r * st.cap + p0 + t] = real as i32;
                if real {
                    pos.push(st.next_pos[r] as i32);
                    st.next_pos[r] += 1;
                } else {
                    pos.push(1);
                }
            }
        }
        let tk = p0 + t_new;
        let kmask: Vec<i32> = (0..rows)
            .flat_map(|r| st.key_mask[r * st.cap..r * st.cap + tk].to_vec())
            .collect();
        let kmask = dev.upload("mistral", &kmask)?;
        let pos = dev.upload("mistral", &pos)?;
        // adapter slot of every token row: the state's per-row buffer for decode steps (one
        // token per row), expanded for a prefill
        let expanded;
        let ad = if t_new == 1 {
            &st.ad
        } else {
            expanded = self.w.row_adapters(
                &st.adapters
                    .iter()
                    .flat_map(|&a| std::iter::repeat_n(a, t_new))
                    .collect::<Vec<_>>(),
            )?;
            &expanded
        };
        let mut x = self.buf(m * hid)?;
        dev.embedding_ids(ids, self.wt("model.embed_tokens.weight")?, &mut x, hid, vsz)?;
        let mut n = self.buf(m * hid)?;
        let mut qkv = self.buf(m * qkvd)?;
        let mut ctx = self.buf(m * qd)?;
        let mut g = self.buf(m * inter)?;
        let mut gu = self.buf(m * 2 * inter)?;
        let call = AttnCall {
            batch: rows,
            kv_batch_rows: rows,
            heads: h,
            kv_heads: kv,
            tq: t_new,
            tk,
            dk: hd,
            q_offset: p0,
            window: c.sliding_window.unwrap_or(0),
            scale: (hd as f32).powf(-0.5),
            causal: true,
            t5_bias: None,
        };
        // q: the first qd of each row of the fused projection
        let qview = View {
            sb: t_new * qkvd,
            sh: hd,
            st: qkvd,
            off: 0,
        };
        // k (off 0) and v (off kvd) in the cache
        let cview = |off| View {
            sb: st.cap * 2 * kvd,
            sh: hd,
            st: 2 * kvd,
            off,
        };
        let theta = c.theta() as f32;
        for li in 0..c.num_hidden_layers {
            let p = format!("model.layers.{li}");
            dev.rms_norm(
                &x,
                self.wt(&format!("{p}.input_layernorm.weight"))?,
                &mut n,
                m,
                hid,
                eps,
            )?;
            let (sa, mlp) = (format!("{p}.self_attn"), format!("{p}.mlp"));
            self.w.linear(
                &n,
                &fused_name(&sa, QKV),
                (m, qkvd, hid),
                &mut qkv,
                false,
                ad,
            )?;
            // the H query heads and the KV key heads are adjacent at the start of each row
            dev.rope(&mut qkv, &pos, m, h + kv, hd, qkvd, theta)?;
            // the new positions' k|v into the cache: a decode step's rows in one copy, a
            // prefill's rows row by row (each row's positions are one block of the cache)
            let cache = &mut st.kv[li];
            let src = |r: usize| Rows {
                off: r * t_new * qkvd + qd,
                ld: qkvd,
            };
            if t_new == 1 {
                let dst = Rows {
                    off: p0 * 2 * kvd,
                    ld: st.cap * 2 * kvd,
                };
                dev.copy_rows("kv_cache", (&qkv, src(0)), (cache, dst), rows, 2 * kvd)?;
            } else {
                for r in 0..rows {
                    let dst = Rows {
                        off: (r * st.cap + p0) * 2 * kvd,
                        ld: 2 * kvd,
                    };
                    dev.copy_rows("kv_cache", (&qkv, src(r)), (cache, dst), t_new, 2 * kvd)?;
                }
            }
            let cache = &st.kv[li];
            dev.attention(
                &call,
                (&qkv, qview),
                (cache, cview(0)),
                (cache, cview(kvd)),
                &mut ctx,
                Some(&kmask),
                None,
                None,
            )?;
            self.w.linear(
                &ctx,
                &format!("{p}.self_attn.o_proj.weight"),
                (m, hid, qd),
                &mut x,
                true,
                ad,
            )?;
            dev.rms_norm(
                &x,
                self.wt(&format!("{p}.post_attention_layernorm.weight"))?,
                &mut n,
                m,
                hid,
                eps,
            )?;
            self.w.linear(
                &n,
                &fused_name(&mlp, GATE_UP),
                (m, 2 * inter, hid),
                &mut gu,
                false,
                ad,
            )?;
            dev.gated_activation(&gu, &mut g, m, inter, ActKind::Silu)?;
            self.w.linear(
                &g,
                &format!("{p}.mlp.down_proj.weight"),
                (m, hid, inter),
                &mut x,
                true,
                ad,
            )?;
        }
        dev.rms_norm(&x, self.wt("model.norm.weight")?, &mut n, m, hid, eps)?;
        // rows of the LM head: every position, or the last of each row
        let (hrows, hin) = if all || t_new == 1 {
            (m, n)
        } else {
            let mut last = self.buf(rows * hid)?;
            for r in 0..rows {
                dev.copy(
                    "head_rows",
                    &n,
                    (r * t_new + t_new - 1) * hid,
                    &mut last,
                    r * hid,
                    hid,
                )?;
            }
            (rows, last)
        };
        let mut lg = dev.scratch::<f32>("mistral", hrows * vsz)?;
        self.w.gemm(
            &hin,
            self.head,
            Out::F32(&mut lg),
            &GemmShape::new(hrows, vsz, hid, false),
            if hrows == m { ad } else { &st.ad },
        )?;
        st.len = tk;
        Ok(lg)
    }

    /// Row r continues from old row `parents[r]` (beam reordering, finished rows dropped).
    pub fn select_rows(&self, st: &mut MistralDeviceState<B>, parents: &[usize]) -> Result<()> {
        if parents.iter().any(|&p| p >= st.rows) {
            return Err(Error::Input("select_rows: parent out of range".into()));
        }
        let kv2 = 2 * self.cfg.kv_heads() * self.cfg.head_dim();
        let (per, used) = (st.cap * kv2, st.len * kv2);
        self.dev
            .gather_blocks("select_rows", &mut st.kv, per, used, parents)?;
        let cap = st.cap;
        st.key_mask = parents
            .iter()
            .flat_map(|&p| st.key_mask[p * cap..(p + 1) * cap].to_vec())
            .collect();
        st.next_pos = parents.iter().map(|&p| st.next_pos[p]).collect();
        st.adapters = parents.iter().map(|&p| st.adapters[p]).collect();
        st.ad = self.w.row_adapters(&st.adapters)?;
        st.rows = parents.len();
        Ok(())
    }
}

/// The decoder as a `Stepper`: construction runs the prefill; the first `step` returns its logits.
pub struct MistralDeviceStepper<'a, 'g, B: Backend> {
    model: &'a MistralDevice<'g, B>,
    pub state: MistralDeviceState<B>,
    pending: PendingLogits,
    /// `JOBX_PROFILE` (device::profile): the decode steps picked on the device
    profile: Option<StepProfile<'g, B>>,
}

impl<'a, 'g, B: Backend> MistralDeviceStepper<'a, 'g, B> {
    /// `ids`/`mask` [batch, seq], left-padded; `beams` copies each row for beam search; every
    /// row r uses LoRA adapter slot `adapters[r]` (None: base model).
    pub fn new(
        model: &'a MistralDevice<'g, B>,
        ids: &[u32],
        mask: &[u8],
        (batch, seq): (usize, usize),
        beams: usize,
        capacity: usize,
        adapters: &[Option<usize>],
    ) -> Result<Self> {
        let mut state = model.new_state_with(batch, seq + capacity, adapters)?;
        let mut logits = Vec::new();
        model.forward(&mut state, ids, mask, seq, false, &mut logits)?;
        let mut pending = PendingLogits::new(logits, model.cfg.vocab_size);
        if beams > 1 {
            let parents = beam_parents(batch, beams);
            model.select_rows(&mut state, &parents)?;
            pending.reorder(&parents);
        }
        Ok(MistralDeviceStepper {
            model,
            state,
            pending,
            profile: StepProfile::from_env(model.dev, "Mistral device decode", "load and prefill"),
        })
    }
}

impl<B: Backend> MistralDeviceStepper<'_, '_, B> {
    /// One decode step whose logits stay on the device, reduced there by `pick` (greedy choice
    /// or beam candidates); None while the prefill's logits are pending (they are on the host).
    #[allow(clippy::type_complexity)]
    fn pick(
        &mut self,
        tokens: &[u32],
        pick: impl FnOnce(&B, &mut B::Buf<f32>, usize, usize) -> Result<Vec<(u32, f32)>>,
    ) -> Result<Option<Vec<(u32, f32)>>> {
        if self.pending.is_pending() {
            return Ok(None);
        }
        let mask = vec![1u8; tokens.len()];
        let t0 = std::time::Instant::now();
        let mut lg = self
            .model
            .forward_device(&mut self.state, tokens, &mask, 1, false)?;
        let t1 = std::time::Instant::now();
        let picks = pick(
            self.model.dev,
            &mut lg,
            tokens.len(),
            self.model.cfg.vocab_size,
        )?;
        if let Some(p) = &mut self.profile {
            p.account(tokens.len(), t0, t1);
        }
        Ok(Some(picks))
    }
}

impl<B: Backend> crate::generate::Stepper for MistralDeviceStepper<'_, '_, B> {
    fn vocab_size(&self) -> usize {
        self.model.cfg.vocab_size
    }
    fn step(&mut self, tokens: &[u32], logits: &mut Vec<f32>) -> Result<()> {
        if self.pending.take_into(logits) {
            return Ok(());
        }
        let mask = vec![1u8; tokens.len()];
        self.model
            .forward(&mut self.state, tokens, &mask, 1, false, logits)
    }
    fn select_rows(&mut self, parents: &[usize]) -> Result<()> {
        self.pending.reorder(parents);
        self.model.select_rows(&mut self.state, parents)
    }
    fn picks_on_device(&self) -> bool {
        !self.pending.is_pending()
    }
    /// Decode steps pick on the device (`Backend::greedy_pick`); the prefill's logits, already on the
    /// host, go through the host path (None).
    fn step_greedy(
        &mut self,
        tokens: &[u32],
        suppress: &[u32],
        masks: Option<&[u32]>,
    ) -> Result<Option<Vec<(u32, f32)>>> {
        self.pick(tokens, |dev, lg, rows, v| {
            dev.greedy_pick(lg, rows, v, suppress, masks)
        })
    }
    /// Decode steps on the device like `step_greedy`; the prefill's logits go the host way.
    fn step_topk(
        &mut self,
        tokens: &[u32],
        k: usize,
        suppress: &[u32],
        masks: Option<&[u32]>,
    ) -> Result<Option<Vec<(u32, f32)>>> {
        self.pick(tokens, |dev, lg, rows, v| {
            dev.topk_logprobs(lg, rows, v, k, suppress, masks)
        })
    }
}
