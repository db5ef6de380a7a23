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
//!
//! With `Backend::graphs` (CUDA graphs) decode steps take a recorded layout (`Recorded`): the
//! activations, logits, token ids, RoPE positions, cache position and a key mask over the whole
//! cache live in the state, the step's k|v go into the cache at the position read on the device
//! (`copy_rows_at`) and attention runs over the whole cache (`attention_at`), so one recording
//! serves every step until the rows change.

use super::mistral::MistralConfig;
use crate::checkpoint::Checkpoint;
use crate::device::profile::StepProfile;
use crate::device::{
    fused_name, ActKind, AttnCall, Backend, DeviceWeights, FusedGroups, GemmShape, GraphState, Out,
    RowAdapters, Rows, StepKind, View,
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
    /// the second cache set a reorder that keeps the row count gathers into (graphs on: each
    /// set keeps its recording); empty until one does
    kv_alt: Vec<B::Buf<bf16>>,
    key_mask: Vec<i32>, // host [rows, cap]
    next_pos: Vec<usize>,
    /// LoRA adapter slot of each row (None: base model), and on the device
    adapters: Vec<Option<usize>>,
    ad: RowAdapters<B>,
    /// decode steps in the recorded layout (`Backend::graphs`): their buffers, made at the
    /// first recording and dropped when the rows change, and the recording's state. A state
    /// holding a recording must not outlive a change of the model's adapters (the recording
    /// reads their buffers); the stepper's borrow of the model ensures that.
    rec: Option<Recorded<B>>,
    graph: GraphState<B::Graph>,
}

/// The activations of one forward pass over `m` token rows.
struct Acts<B: Backend> {
    x: B::Buf<bf16>,
    n: B::Buf<bf16>,
    qkv: B::Buf<bf16>,
    ctx: B::Buf<bf16>,
    g: B::Buf<bf16>,
    gu: B::Buf<bf16>,
}

/// A recorded decode step's buffers, the same at every step so one recording serves all: the
/// activations, logits, and what changes between steps, written before each (token ids, RoPE
/// positions, the cache position, the key mask over the whole cache).
struct Recorded<B: Backend> {
    acts: Acts<B>,
    lg: B::Buf<f32>,
    ids: B::Buf<i32>,
    pos: B::Buf<i32>,
    at: B::Buf<i32>,
    kmask: B::Buf<i32>,
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
            // bf16 checkpoints go to the device as stored, without an f32 round trip
            let t = ck.stored(&name, &shape)?;
            if name.ends_with("_proj.weight") {
                w.insert_linear(&name, t.wref(), shape[0], shape[1])?; // may be int8
            } else {
                w.insert(&name, t.wref())?;
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
            kv_alt: Vec::new(),
            key_mask: vec![0; rows * cap],
            next_pos: vec![0; rows],
            adapters: adapters.to_vec(),
            ad: self.w.row_adapters(adapters)?,
            rec: None,
            graph: GraphState::default(),
        })
    }

    fn acts(&self, m: usize) -> Result<Acts<B>> {
        let c = &self.cfg;
        let (qd, kvd) = (
            c.num_attention_heads * c.head_dim(),
            c.kv_heads() * c.head_dim(),
        );
        Ok(Acts {
            x: self.buf(m * c.hidden_size)?,
            n: self.buf(m * c.hidden_size)?,
            qkv: self.buf(m * (qd + 2 * kvd))?,
            ctx: self.buf(m * qd)?,
            g: self.buf(m * c.intermediate_size)?,
            gu: self.buf(m * 2 * c.intermediate_size)?,
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
        if t_new == 1 && mask.iter().all(|&m| m != 0) {
            let mut owned = None;
            let lg = self.decode_step(st, ids, &mut owned)?;
            *logits = self.dev.download("mistral", lg)?;
            return Ok(());
        }
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
        let (hid, vsz) = (c.hidden_size, c.vocab_size);
        let rows = st.rows;
        let (p0, pos) = self.positions(st, ids, mask, t_new)?;
        if t_new > 1 || mask.contains(&0) {
            // a recording's key mask holds 1 for every later position (real decode tokens):
            // a pad here makes it stale
            st.graph.reset();
        }
        let m = rows * t_new;
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
        let mut a = self.acts(m)?;
        dev.embedding_ids(
            ids,
            self.wt("model.embed_tokens.weight")?,
            &mut a.x,
            hid,
            vsz,
        )?;
        let at = LayerInputs {
            t_new,
            tk,
            pos: &pos,
            kmask: &kmask,
            at: Place::Fixed(p0),
        };
        self.layers(&mut st.kv, st.cap, rows, &mut a, ad, &at)?;
        let Acts { x, mut n, .. } = a;
        dev.rms_norm(
            &x,
            self.wt("model.norm.weight")?,
            &mut n,
            m,
            hid,
            c.rms_norm_eps as f32,
        )?;
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

    /// Checks a forward's inputs and does the host bookkeeping of its new positions: the cache
    /// position of the first (p0), each token's RoPE position (HF: cumsum(mask) - 1, pads 1),
    /// and the key mask of the new slots.
    fn positions(
        &self,
        st: &mut MistralDeviceState<B>,
        ids: &[u32],
        mask: &[u8],
        t_new: usize,
    ) -> Result<(usize, Vec<i32>)> {
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
        let mut pos = Vec::with_capacity(rows * t_new);
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
        Ok((p0, pos))
    }

    /// One decode step, a real token per row: recorded or replayed when graphs allow
    /// (`decode_recorded`: logits in the state), else plain (logits kept in `owned`).
    fn decode_step<'s>(
        &self,
        st: &'s mut MistralDeviceState<B>,
        ids: &[u32],
        owned: &'s mut Option<B::Buf<f32>>,
    ) -> Result<&'s mut B::Buf<f32>> {
        if self.next_step_kind(st) != StepKind::Plain {
            return self.decode_recorded(st, ids);
        }
        let lg = self.forward_device(st, ids, &vec![1u8; ids.len()], 1, false)?;
        st.graph.ran();
        Ok(owned.insert(lg))
    }

    /// What the next decode step does with graphs on (`Backend::graphs`): plain until a plain
    /// step has run with the rows it will have, then recorded once and replayed.
    fn next_step_kind(&self, st: &MistralDeviceState<B>) -> StepKind {
        if self.dev.graphs() {
            st.graph.next()
        } else {
            StepKind::Plain
        }
    }

    /// One decode step (a real token per row) recorded or replayed (`next_step_kind`): the
    /// recorded layout's buffers (made at the first recording, outside it), the step's inputs
    /// written into them, then the recording. The logits stay on the device, in the state.
    fn decode_recorded<'s>(
        &self,
        st: &'s mut MistralDeviceState<B>,
        ids: &[u32],
    ) -> Result<&'s mut B::Buf<f32>> {
        let c = &self.cfg;
        let dev = self.dev;
        let (hid, vsz) = (c.hidden_size, c.vocab_size);
        let rows = st.rows;
        let mask = vec![1u8; ids.len()];
        // the ids checked here (the kernel cannot report a bad one), before the bookkeeping
        crate::device::check::ids_in_vocab::<B>(ids, vsz)?;
        if st.rec.is_none() {
            st.rec = Some(Recorded {
                acts: self.acts(rows)?,
                lg: dev.scratch("mistral", rows * vsz)?,
                ids: dev.zeros("mistral", rows)?,
                pos: dev.zeros("mistral", rows)?,
                at: dev.zeros("mistral", 1)?,
                kmask: dev.zeros("mistral", rows * st.cap)?,
            });
        }
        let (p0, pos) = self.positions(st, ids, &mask, 1)?;
        let MistralDeviceState {
            kv,
            cap,
            key_mask,
            ad,
            rec: Some(rec),
            graph,
            ..
        } = st
        else {
            return Err(Error::Input("recorded-step buffers missing".into()));
        };
        let cap = *cap;
        let idv: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
        dev.write("mistral", &idv, &mut rec.ids)?;
        dev.write("mistral", &pos, &mut rec.pos)?;
        dev.write("mistral", &[p0 as i32], &mut rec.at)?;
        if !graph.replaying() {
            // the key mask over the whole cache, the positions after this one as the real
            // tokens later steps add (the causal mask hides them until then): a replay needs
            // no new mask until the rows change
            let mut km = key_mask.clone();
            for r in 0..rows {
                km[r * cap + p0..(r + 1) * cap].fill(1);
            }
            dev.write("mistral", &km, &mut rec.kmask)?;
        }
        let Recorded {
            acts,
            lg,
            ids: rids,
            pos: rpos,
            at,
            kmask,
        } = rec;
        let mut step = || -> Result<()> {
            dev.embedding(
                rids,
                rows,
                self.wt("model.embed_tokens.weight")?,
                &mut acts.x,
                hid,
                vsz,
            )?;
            let li = LayerInputs {
                t_new: 1,
                tk: cap,
                pos: rpos,
                kmask,
                at: Place::Device(at),
            };
            self.layers(kv, cap, rows, acts, ad, &li)?;
            dev.rms_norm(
                &acts.x,
                self.wt("model.norm.weight")?,
                &mut acts.n,
                rows,
                hid,
                c.rms_norm_eps as f32,
            )?;
            self.w.gemm(
                &acts.n,
                self.head,
                Out::F32(lg),
                &GemmShape::new(rows, vsz, hid, false),
                ad,
            )
        };
        if graph.replaying() {
            graph.replay(dev)?;
        } else if !graph.record(dev, "Mistral", &mut step)? {
            step()?; // the same layout, run now
        }
        graph.ran();
        st.len = p0 + 1;
        match &mut st.rec {
            Some(rec) => Ok(&mut rec.lg),
            None => Err(Error::Input("recorded-step buffers missing".into())),
        }
    }

    /// The decoder layers over `a` (`rows` x `li.t_new` token rows, embeddings in a.x): each
    /// layer's new k|v into the cache `kv` (capacity `cap`) at `li.at`, attention over its
    /// first `li.tk` positions.
    fn layers(
        &self,
        kv: &mut [B::Buf<bf16>],
        cap: usize,
        rows: usize,
        a: &mut Acts<B>,
        ad: &RowAdapters<B>,
        li: &LayerInputs<B>,
    ) -> Result<()> {
        let c = &self.cfg;
        let dev = self.dev;
        let (hid, hd, h, kvh, inter) = (
            c.hidden_size,
            c.head_dim(),
            c.num_attention_heads,
            c.kv_heads(),
            c.intermediate_size,
        );
        let (qd, kvd) = (h * hd, kvh * hd);
        let qkvd = qd + 2 * kvd;
        let t_new = li.t_new;
        let m = rows * t_new;
        let eps = c.rms_norm_eps as f32;
        let call = AttnCall {
            batch: rows,
            kv_batch_rows: rows,
            heads: h,
            kv_heads: kvh,
            tq: t_new,
            tk: li.tk,
            dk: hd,
            q_offset: match li.at {
                Place::Fixed(p0) => p0,
                Place::Device(_) => 0, // read on the device
            },
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
            sb: cap * 2 * kvd,
            sh: hd,
            st: 2 * kvd,
            off,
        };
        let theta = c.theta() as f32;
        let Acts {
            x,
            n,
            qkv,
            ctx,
            g,
            gu,
        } = a;
        // (the layer index names its weights as well as its cache)
        #[allow(clippy::needless_range_loop)]
        for li_ in 0..c.num_hidden_layers {
            let p = format!("model.layers.{li_}");
            let (sa, mlp) = (format!("{p}.self_attn"), format!("{p}.mlp"));
            // each norm into n, or fused into the product after it (Backend::gemm_rms)
            self.w.gemm_rms(
                x,
                (self.wt(&format!("{p}.input_layernorm.weight"))?, eps),
                n,
                &fused_name(&sa, QKV),
                Out::Bf16(qkv),
                &GemmShape::new(m, qkvd, hid, false),
                ad,
            )?;
            // the H query heads and the KV key heads are adjacent at the start of each row
            dev.rope(qkv, li.pos, m, h + kvh, hd, qkvd, theta)?;
            // the new positions' k|v into the cache: a decode step's rows in one copy, a
            // prefill's rows row by row (each row's positions are one block of the cache)
            let cache = &mut kv[li_];
            let src = |r: usize| Rows {
                off: r * t_new * qkvd + qd,
                ld: qkvd,
            };
            match li.at {
                Place::Device(at) => {
                    let dst = Rows {
                        off: 0,
                        ld: cap * 2 * kvd,
                    };
                    dev.copy_rows_at(
                        "kv_cache",
                        (qkv, src(0)),
                        (cache, dst),
                        rows,
                        2 * kvd,
                        at,
                        2 * kvd,
                        cap - 1,
                    )?;
                }
                Place::Fixed(p0) if t_new == 1 => {
                    let dst = Rows {
                        off: p0 * 2 * kvd,
                        ld: cap * 2 * kvd,
                    };
                    dev.copy_rows("kv_cache", (qkv, src(0)), (cache, dst), rows, 2 * kvd)?;
                }
                Place::Fixed(p0) => {
                    for r in 0..rows {
                        let dst = Rows {
                            off: (r * cap + p0) * 2 * kvd,
                            ld: 2 * kvd,
                        };
                        dev.copy_rows("kv_cache", (qkv, src(r)), (cache, dst), t_new, 2 * kvd)?;
                    }
                }
            }
            let cache = &kv[li_];
            let (q, k, v) = ((&*qkv, qview), (cache, cview(0)), (cache, cview(kvd)));
            match li.at {
                Place::Device(at) => {
                    dev.attention_at(&call, at, q, k, v, ctx, Some(li.kmask), None, None)?
                }
                Place::Fixed(_) => {
                    dev.attention(&call, q, k, v, ctx, Some(li.kmask), None, None)?
                }
            }
            self.w.linear(
                ctx,
                &format!("{p}.self_attn.o_proj.weight"),
                (m, hid, qd),
                x,
                true,
                ad,
            )?;
            self.w.gemm_rms(
                x,
                (
                    self.wt(&format!("{p}.post_attention_layernorm.weight"))?,
                    eps,
                ),
                n,
                &fused_name(&mlp, GATE_UP),
                Out::Bf16(gu),
                &GemmShape::new(m, 2 * inter, hid, false),
                ad,
            )?;
            dev.gated_activation(gu, g, m, inter, ActKind::Silu)?;
            self.w.linear(
                g,
                &format!("{p}.mlp.down_proj.weight"),
                (m, hid, inter),
                x,
                true,
                ad,
            )?;
        }
        Ok(())
    }

    /// Row r continues from old row `parents[r]` (beam reordering, finished rows dropped).
    pub fn select_rows(&self, st: &mut MistralDeviceState<B>, parents: &[usize]) -> Result<()> {
        if parents.iter().any(|&p| p >= st.rows) {
            return Err(Error::Input("select_rows: parent out of range".into()));
        }
        let kv2 = 2 * self.cfg.kv_heads() * self.cfg.head_dim();
        let (per, used) = (st.cap * kv2, st.len * kv2);
        let cap = st.cap;
        let key_mask: Vec<i32> = parents
            .iter()
            .flat_map(|&p| st.key_mask[p * cap..(p + 1) * cap].to_vec())
            .collect();
        let next_pos: Vec<usize> = parents.iter().map(|&p| st.next_pos[p]).collect();
        let adapters: Vec<Option<usize>> = parents.iter().map(|&p| st.adapters[p]).collect();
        if parents.len() == st.rows
            && st.graph.second_set(
                self.dev.graphs(),
                &mut st.kv_alt,
                st.kv.len(),
                st.rows * per,
                |b| B::len(b),
                || self.buf(st.rows * per),
            )
        {
            // same row count (beam search): gather into the other cache set and rewrite the
            // recorded step's row inputs in place, so the recordings (one per set) stay valid
            // and beam search replays every step, as T5's does
            self.dev.gather_blocks_into(
                "select_rows",
                &st.kv,
                &mut st.kv_alt,
                per,
                used,
                parents,
            )?;
            // the recorded step's key mask (a replay does not rewrite it): the rows' new masks,
            // positions from the next one on open (as decode_recorded writes it)
            if let Some(rec) = &mut st.rec {
                let mut km = key_mask.clone();
                for r in 0..st.rows {
                    km[r * cap + st.len..(r + 1) * cap].fill(1);
                }
                self.dev.write("select_rows", &km, &mut rec.kmask)?;
            }
            if self.w.update_row_adapters(&mut st.ad, &adapters)? {
                st.graph.reset();
            }
            std::mem::swap(&mut st.kv, &mut st.kv_alt);
            st.graph.swap();
            (st.key_mask, st.next_pos, st.adapters) = (key_mask, next_pos, adapters);
            return Ok(());
        }
        // new cache and row buffers follow (even if this fails half-way): a recording made
        // before reads the old ones; the second cache set goes until a reorder needs it
        st.rec = None;
        st.graph.reset();
        st.kv_alt.clear();
        self.dev
            .gather_blocks("select_rows", &mut st.kv, per, used, parents)?;
        (st.key_mask, st.next_pos) = (key_mask, next_pos);
        st.ad = self.w.row_adapters(&adapters)?;
        st.adapters = adapters;
        st.rows = parents.len();
        Ok(())
    }
}

/// Where a forward's new k|v go in the cache: a position known on the host, or one read on the
/// device (a recorded step).
#[derive(Clone, Copy)]
enum Place<'a, B: Backend> {
    Fixed(usize),
    Device(&'a B::Buf<i32>),
}

/// What the layers of one forward read besides the activations.
struct LayerInputs<'a, B: Backend> {
    t_new: usize,
    /// keys attention reads (the key mask's row length)
    tk: usize,
    /// RoPE position of each token row
    pos: &'a B::Buf<i32>,
    kmask: &'a B::Buf<i32>,
    at: Place<'a, B>,
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
    /// Whether decode steps are replayed from a recording now (tests).
    pub fn replaying(&self) -> bool {
        self.state.graph.replaying()
    }

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
        let t0 = std::time::Instant::now();
        let (dev, v) = (self.model.dev, self.model.cfg.vocab_size);
        let mut owned = None;
        let lg = self
            .model
            .decode_step(&mut self.state, tokens, &mut owned)?;
        let t1 = std::time::Instant::now();
        let picks = pick(dev, lg, tokens.len(), v)?;
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
