//! The T5 device graph, written against `device::Backend`: on the GPU (`cuda::Gpu`, feature
//! `cuda`) or on the host emulation of the kernels (`device::host`, how CI checks this file
//! without a GPU). The same computation as `t5.rs` (HF
//! `modeling_t5.py`: T5Stack, T5LayerSelfAttention, T5LayerCrossAttention, T5LayerFF), with bf16
//! weights and activations and f32 accumulation in every kernel (T5 overflows fp16:
//! ../shared/docs/MODEL-NOTES.md). Weights are loaded by their HF names (`t5::weight_shapes`),
//! converted to bf16 (or int8) once and kept on the device.
//!
//! Linear layers that read the same input are one weight and one GEMM (`fused`: q|k|v of each
//! self-attention, k|v of each cross-attention, wi_0|wi_1 of a gated feed-forward; fewer and
//! wider GEMMs, fewer launches per decode step). Adapters still target them by their HF names.
//!
//! Data layout on the device (all row-major, inner = H*dk):
//! - activations `x` [rows, d_model]; the fused q|k|v projection [rows, 3*inner], read by
//!   attention as three views (b, h, t, d) -> off + b*S*3*inner + t*3*inner + h*dk + d with
//!   off = 0 (q), inner (k), 2*inner (v);
//! - decoder self-attention cache per layer [batch rows, capacity, 3*inner]: each step's q|k|v
//!   GEMM writes its row at position t in place (GEMM output offset + row stride); attention
//!   reads that step's q and all positions' k and v from it (keeping q there costs a third more
//!   cache and saves a GEMM launch per layer and step; beam reordering copies only the
//!   positions written so far);
//! - cross-attention k|v per layer [batch, S, 2*inner], computed once per request from the
//!   encoder output.
//!
//! With `Backend::graphs` (CUDA graphs) a step is laid out so that one recording of its launches
//! serves every step (`Layout::Recorded`): what changes between steps (token ids, position)
//! lives in fixed device buffers written before the step, the q|k|v GEMM writes a fixed buffer
//! that one copy appends to the cache at the device's position, and self-attention runs over
//! the whole cache with the causal mask at that position. The cache holds the same values in
//! both layouts.
//!
//! `T5DeviceStepper` implements `generate::Stepper`, so greedy, beam search, sampling and the
//! grammar constraint run unchanged on top of it (logits come back to the host each step, except
//! for greedy rows, whose argmax and log-probability are taken on the device, with the grammar's
//! token mask applied there).

use super::t5::{weight_shapes, Act, T5Config};
use crate::checkpoint::Checkpoint;
use crate::device::profile::StepProfile;
use crate::device::{
    fused_name, ActKind, AttnCall, Backend, DeviceWeights, FusedGroups, GemmShape, GraphState, Out,
    RowAdapters, Rows, StepKind, View,
};
use crate::models::adapter::LoraAdapter;
use crate::{Error, Result};
use half::bf16;
use std::path::Path;

pub struct T5Device<'g, B: Backend> {
    pub dev: &'g B,
    pub cfg: T5Config,
    gated: bool,
    act: ActKind,
    /// weights and attached adapters
    pub(crate) w: DeviceWeights<'g, B>,
    /// relative_attention_bias tables as f32 [buckets, H] (encoder, decoder)
    enc_bias: B::Buf<f32>,
    dec_bias: B::Buf<f32>,
    /// decoder final norm weight, times d_model^-0.5 when the head is tied (HF rescales the
    /// decoder output before the tied LM head)
    dec_final: B::Buf<bf16>,
}

/// Encoder output of one request on the device.
pub struct DeviceEncoderOut<B: Backend> {
    pub batch: usize,
    pub seq: usize,
    /// [batch, seq] key mask (1 = real token)
    mask: B::Buf<i32>,
    /// per decoder layer: cross-attention k|v [batch, seq, 2*H*dk]
    cross_kv: Vec<CrossKv<B>>,
    /// adapter slot of each batch row (the decoder rows inherit their source row's)
    adapters: Vec<Option<usize>>,
}

/// One decoder layer's cross-attention k|v [batch, seq, 2*H*dk]: bf16, or int8 with one scale
/// per head row of K and of V (`Backend::int8_cross_kv`, `--cross-kv int8`; half the bytes
/// every decode step reads).
enum CrossKv<B: Backend> {
    Bf16(B::Buf<bf16>),
    Int8 { q: B::Buf<i8>, scales: B::Buf<f32> },
}

fn cfg_err(msg: String) -> Error {
    Error::config("config.json", msg)
}

const QKV: &[&str] = &["q", "k", "v"];
const KV: &[&str] = &["k", "v"];
const GATE_UP: &[&str] = &["wi_0", "wi_1"];

/// The fused weights of a T5 checkpoint: (module prefix, parts) in row order (`fused_name`).
fn fused_groups(cfg: &T5Config, gated: bool) -> Vec<(String, &'static [&'static str])> {
    let mut g = Vec::new();
    for l in 0..cfg.num_layers {
        g.push((format!("encoder.block.{l}.layer.0.SelfAttention"), QKV));
        if gated {
            g.push((format!("encoder.block.{l}.layer.1.DenseReluDense"), GATE_UP));
        }
    }
    for l in 0..cfg.n_dec_layers() {
        g.push((format!("decoder.block.{l}.layer.0.SelfAttention"), QKV));
        g.push((format!("decoder.block.{l}.layer.1.EncDecAttention"), KV));
        if gated {
            g.push((format!("decoder.block.{l}.layer.2.DenseReluDense"), GATE_UP));
        }
    }
    g
}

impl<'g, B: Backend> T5Device<'g, B> {
    /// Load a T5 checkpoint folder onto the device (bf16, or int8 when the backend asks for it).
    pub fn load_dir(dev: &'g B, dir: &Path) -> Result<Self> {
        let cfg = T5Config::from_file(&dir.join("config.json"))?;
        let ck = Checkpoint::open_dir(dir)?;
        Self::load(dev, cfg, &ck)
    }

    pub fn load(dev: &'g B, cfg: T5Config, ck: &Checkpoint) -> Result<Self> {
        let (gated, act) = cfg.ffn_kind().map_err(cfg_err)?;
        let act =
            match act {
                Act::Relu => ActKind::Relu,
                Act::GeluTanh => ActKind::GeluTanh,
                Act::Silu => ActKind::Silu,
                Act::GeluErf => return Err(Error::Unsupported(
                    "CUDA backend: feed_forward_proj with exact (erf) GELU is not implemented; \
                     use --device cpu"
                        .into(),
                )),
            };
        let mut w = DeviceWeights::new(dev, "T5");
        let mut enc_bias = None;
        let mut dec_bias = None;
        let shapes = weight_shapes(&cfg);
        let groups = FusedGroups::new(&fused_groups(&cfg, gated), &shapes)?;
        for (name, shape) in shapes {
            if w.load_if_fused(ck, &groups, &name)? {
                continue;
            }
            let src = if name == "shared.weight" && !ck.contains(&name) {
                ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]
                    .into_iter()
                    .find(|n| ck.contains(n))
                    .unwrap_or("shared.weight")
                    .to_string()
            } else {
                name.clone()
            };
            if name.ends_with("relative_attention_bias.weight") {
                let t = ck.f32(&src, &shape)?;
                let dev = dev.upload("load", t.as_slice())?;
                if name.starts_with("encoder") {
                    enc_bias = Some(dev);
                } else {
                    dec_bias = Some(dev);
                }
                continue;
            }
            // bf16 checkpoints go to the device as stored, without an f32 round trip
            let t = ck.stored(&src, &shape)?;
            // linear layers (everything 2-D but the embedding and the head) may be int8
            if shape.len() == 2 && name != "shared.weight" && name != "lm_head.weight" {
                w.insert_linear(&name, t.wref(), shape[0], shape[1])?;
            } else {
                w.insert(&name, t.wref())?;
            }
        }
        if !cfg.tie_word_embeddings {
            w.mark_linear("lm_head.weight", cfg.vocab_size, cfg.d_model);
        }
        let final_name = "decoder.final_layer_norm.weight";
        let mut fin: Vec<f32> = ck.f32(final_name, &[cfg.d_model])?.as_slice().to_vec();
        if cfg.tie_word_embeddings {
            let s = (cfg.d_model as f32).powf(-0.5);
            fin.iter_mut().for_each(|v| *v *= s);
        }
        let fin: Vec<bf16> = fin.iter().map(|&v| bf16::from_f32(v)).collect();
        let dec_final = dev.upload("load", &fin)?;
        let missing = || Error::MissingTensor {
            name: "relative_attention_bias".into(),
            where_: "T5 checkpoint".into(),
        };
        Ok(T5Device {
            dev,
            gated,
            act,
            w,
            enc_bias: enc_bias.ok_or_else(missing)?,
            dec_bias: dec_bias.ok_or_else(missing)?,
            dec_final,
            cfg,
        })
    }

    fn wt(&self, name: &str) -> Result<&B::Buf<bf16>> {
        self.w.get(name)
    }

    /// Attach a PEFT LoRA adapter (unmerged) in the next slot; returns the slot.
    pub fn attach_adapter(&mut self, adapter: &LoraAdapter) -> Result<usize> {
        self.w.attach_adapter(adapter)
    }

    /// Merge adapter `slot` into the bf16 weights (`DeviceWeights::merge_adapter`).
    pub fn merge_adapter(&mut self, slot: usize) -> Result<()> {
        self.w.merge_adapter(slot)
    }

    fn buf(&self, n: usize) -> Result<B::Buf<bf16>> {
        self.w.buf(n)
    }

    /// The feed-forward blocks' scratch for `rows` rows.
    fn ffn_bufs(&self, rows: usize) -> Result<FfnBufs<B>> {
        let (d, dff) = (self.cfg.d_model, self.cfg.d_ff);
        Ok(FfnBufs {
            h: self.buf(rows * d)?,
            a: self.buf(rows * dff)?,
            gu: if self.gated {
                Some(self.buf(rows * 2 * dff)?)
            } else {
                None
            },
        })
    }

    /// x += FFN(rms_norm(x)) for the layer prefix `p` (e.g. "encoder.block.3.layer.1"), with
    /// scratch `fb` from `ffn_bufs(rows)` (every buffer written before it is read).
    fn ffn(
        &self,
        x: &mut B::Buf<bf16>,
        rows: usize,
        p: &str,
        ad: &RowAdapters<B>,
        fb: &mut FfnBufs<B>,
    ) -> Result<()> {
        let (d, dff) = (self.cfg.d_model, self.cfg.d_ff);
        let FfnBufs { h, a, gu } = fb;
        // the norm into h, or fused into the first product (Backend::gemm_rms)
        let norm = (
            self.wt(&format!("{p}.layer_norm.weight"))?,
            self.cfg.layer_norm_epsilon as f32,
        );
        let dr = format!("{p}.DenseReluDense");
        if let Some(gu) = gu {
            // wi_0|wi_1 in one GEMM [rows, 2*dff], then act(wi_0) * wi_1
            self.w.gemm_rms(
                x,
                norm,
                h,
                &fused_name(&dr, GATE_UP),
                Out::Bf16(gu),
                &GemmShape::new(rows, 2 * dff, d, false),
                ad,
            )?;
            self.dev.gated_activation(gu, a, rows, dff, self.act)?;
        } else {
            self.w.gemm_rms(
                x,
                norm,
                h,
                &format!("{dr}.wi.weight"),
                Out::Bf16(a),
                &GemmShape::new(rows, dff, d, false),
                ad,
            )?;
            self.dev.activation_inplace(a, rows * dff, self.act)?;
        }
        self.w
            .linear(a, &format!("{dr}.wo.weight"), (rows, d, dff), x, true, ad)
    }

    /// Encoder over `ids` [batch, seq] with `mask` (1 = token, 0 = padding), base model.
    pub fn encode(
        &self,
        ids: &[u32],
        mask: &[u8],
        batch: usize,
        seq: usize,
    ) -> Result<DeviceEncoderOut<B>> {
        self.encode_with(ids, mask, batch, seq, &vec![None; batch])
    }

    /// `encode` with a LoRA adapter slot per batch row (`None`: base model), applied by the
    /// SGMV kernels, so rows of one batch may use different adapters; the decoder steps of
    /// each row use the same slot.
    pub fn encode_with(
        &self,
        ids: &[u32],
        mask: &[u8],
        batch: usize,
        seq: usize,
        adapters: &[Option<usize>],
    ) -> Result<DeviceEncoderOut<B>> {
        let c = &self.cfg;
        let (d, h, dk) = (c.d_model, c.num_heads, c.d_kv);
        let inner = h * dk;
        let rows = batch * seq;
        if ids.len() != rows || mask.len() != rows {
            return Err(Error::Input(format!(
                "encode: {} ids / {} mask values for batch {batch} x {seq}",
                ids.len(),
                mask.len()
            )));
        }
        if adapters.len() != batch {
            return Err(Error::Input(format!(
                "encode: {} adapter slots for batch {batch}",
                adapters.len()
            )));
        }
        // one slot per encoder token row
        let ad = &self.w.row_adapters(
            &adapters
                .iter()
                .flat_map(|&a| std::iter::repeat_n(a, seq))
                .collect::<Vec<_>>(),
        )?;
        let mask_d = self
            .dev
            .upload("t5", &mask.iter().map(|&m| m as i32).collect::<Vec<_>>())?;
        let mut x = self.buf(rows * d)?;
        self.dev
            .embedding_ids(ids, self.wt("shared.weight")?, &mut x, d, c.vocab_size)?;
        // q, k, v: the thirds of each row of the fused projection
        let view = |off| View {
            sb: seq * 3 * inner,
            sh: dk,
            st: 3 * inner,
            off,
        };
        let eps = c.layer_norm_epsilon as f32;
        // scratch shared by the layers (each buffer is written before it is read)
        let mut hn = self.buf(rows * d)?;
        let mut qkv = self.buf(rows * 3 * inner)?;
        let mut o = self.buf(rows * inner)?;
        let mut fb = self.ffn_bufs(rows)?;
        for l in 0..c.num_layers {
            let p = format!("encoder.block.{l}.layer.0");
            self.dev.rms_norm(
                &x,
                self.wt(&format!("{p}.layer_norm.weight"))?,
                &mut hn,
                rows,
                d,
                eps,
            )?;
            let sa = format!("{p}.SelfAttention");
            self.w.linear(
                &hn,
                &fused_name(&sa, QKV),
                (rows, 3 * inner, d),
                &mut qkv,
                false,
                ad,
            )?;
            let call = AttnCall {
                batch,
                kv_batch_rows: batch,
                heads: h,
                kv_heads: h,
                tq: seq,
                tk: seq,
                dk,
                q_offset: 0,
                window: 0,
                scale: 1.0, // T5: no 1/sqrt(d)
                causal: false,
                t5_bias: Some((
                    c.relative_attention_num_buckets,
                    c.relative_attention_max_distance,
                    true,
                )),
            };
            self.dev.attention(
                &call,
                (&qkv, view(0)),
                (&qkv, view(inner)),
                (&qkv, view(2 * inner)),
                &mut o,
                Some(&mask_d),
                None,
                Some(&self.enc_bias),
            )?;
            self.w.linear(
                &o,
                &format!("{sa}.o.weight"),
                (rows, d, inner),
                &mut x,
                true,
                ad,
            )?;
            self.ffn(
                &mut x,
                rows,
                &format!("encoder.block.{l}.layer.1"),
                ad,
                &mut fb,
            )?;
        }
        let mut enc = self.buf(rows * d)?;
        self.dev.rms_norm(
            &x,
            self.wt("encoder.final_layer_norm.weight")?,
            &mut enc,
            rows,
            d,
            eps,
        )?;
        let mut cross_kv = Vec::new();
        let int8 = self.dev.int8_cross_kv();
        // int8: each layer's bf16 k|v goes through one shared buffer into its int8 copy
        let mut shared = None;
        for l in 0..c.n_dec_layers() {
            let ca = format!("decoder.block.{l}.layer.1.EncDecAttention");
            let mut kv = match shared.take() {
                Some(b) => b,
                None => self.buf(rows * 2 * inner)?,
            };
            self.w.linear(
                &enc,
                &fused_name(&ca, KV),
                (rows, 2 * inner, d),
                &mut kv,
                false,
                ad,
            )?;
            if int8 {
                let groups = rows * 2 * h;
                // every element written by quantize_kv (scratch: JOBX_CUDA_POISON shows a miss)
                let mut q = self.dev.scratch::<i8>("t5", groups * dk)?;
                let mut scales = self.dev.scratch::<f32>("t5", groups)?;
                self.dev.quantize_kv(&kv, groups, dk, &mut q, &mut scales)?;
                cross_kv.push(CrossKv::Int8 { q, scales });
                shared = Some(kv);
            } else {
                cross_kv.push(CrossKv::Bf16(kv));
            }
        }
        Ok(DeviceEncoderOut {
            batch,
            seq,
            mask: mask_d,
            cross_kv,
            adapters: adapters.to_vec(),
        })
    }
}

/// The feed-forward blocks' scratch (`T5Device::ffn_bufs`): normed input [rows, d], the
/// activation [rows, d_ff] and, gated, the wi_0|wi_1 projection [rows, 2*d_ff].
struct FfnBufs<B: Backend> {
    h: B::Buf<bf16>,
    a: B::Buf<bf16>,
    gu: Option<B::Buf<bf16>>,
}

/// A decode step's scratch for `rows` rows, kept by the stepper across steps and shared by the
/// layers: one allocation each per generation (and per change of the row count) instead of
/// several per layer and step, host time a batch-1 step is bound by. Every buffer is written
/// before it is read in each layer.
struct DecScratch<B: Backend> {
    rows: usize,
    x: B::Buf<bf16>,
    hn: B::Buf<bf16>,
    q: B::Buf<bf16>,
    o: B::Buf<bf16>,
    fb: FfnBufs<B>,
    /// the step's logits [rows, vocab] (f32)
    lg: B::Buf<f32>,
    /// the recorded-step layout's inputs (`Backend::graphs`)
    rec: Option<RecBufs<B>>,
}

/// What a recorded decode step reads that changes between steps, in buffers that stay put: the
/// rows' token ids, the position, and the step's q|k|v before it is appended to the cache.
struct RecBufs<B: Backend> {
    ids: B::Buf<i32>,
    pos: B::Buf<i32>,
    qkv: B::Buf<bf16>,
}

impl<B: Backend> DecScratch<B> {
    fn new(m: &T5Device<'_, B>, rows: usize) -> Result<Self> {
        let (d, inner) = (m.cfg.d_model, m.cfg.num_heads * m.cfg.d_kv);
        let rec = if m.dev.graphs() {
            Some(RecBufs {
                ids: m.dev.zeros("t5", rows)?,
                pos: m.dev.zeros("t5", 1)?,
                qkv: m.buf(rows * 3 * inner)?,
            })
        } else {
            None
        };
        Ok(DecScratch {
            rows,
            x: m.buf(rows * d)?,
            hn: m.buf(rows * d)?,
            q: m.buf(rows * inner)?,
            o: m.buf(rows * inner)?,
            fb: m.ffn_bufs(rows)?,
            lg: m.dev.scratch("t5", rows * m.cfg.vocab_size)?,
            rec,
        })
    }
}

/// How a decode step is laid out.
#[derive(Clone, Copy)]
enum Layout<'t> {
    /// Everything that changes between steps is in the launches' arguments: the tokens are
    /// uploaded, the q|k|v GEMM writes into the cache at position t (the stepper's length),
    /// attention sees t + 1 keys.
    Plain(&'t [u32]),
    /// What changes is in `RecBufs`, written before the step, so that one recording of the
    /// launches serves every step (CUDA graphs): the embedding reads the ids there, the q|k|v
    /// GEMM writes `qkv`, one copy appends it to the cache at the position the device reads,
    /// and attention runs over the whole cache with the causal mask at that position.
    Recorded,
}

/// Decoder state of one generation: per layer the self-attention cache [rows, cap, 3*H*dk]
/// (q|k|v of every position).
pub struct T5DeviceStepper<'a, 'g, B: Backend> {
    model: &'a T5Device<'g, B>,
    enc: &'a DeviceEncoderOut<B>,
    /// encoder batch row of each decoder row (beams share one encoder row)
    src: Vec<usize>,
    src_d: B::Buf<i32>,
    /// adapter slot of each decoder row, on the device (None: no row uses one)
    ad: RowAdapters<B>,
    cap: usize,
    len: usize,
    cache: Vec<B::Buf<bf16>>,
    /// with graphs, the other cache set: beam search gathers its reordered rows into it and
    /// the two swap, so each keeps its recording (made at the first reorder)
    cache_alt: Vec<B::Buf<bf16>>,
    scratch: Option<DecScratch<B>>,
    graph: GraphState<B::Graph>,
    /// `JOBX_PROFILE` (device::profile)
    profile: Option<StepProfile<'g, B>>,
}

impl<'a, 'g, B: Backend> T5DeviceStepper<'a, 'g, B> {
    pub fn new(
        model: &'a T5Device<'g, B>,
        enc: &'a DeviceEncoderOut<B>,
        src: Vec<usize>,
        capacity: usize,
    ) -> Result<Self> {
        if src.iter().any(|&s| s >= enc.batch) {
            return Err(Error::Input(
                "decoder row maps past the encoder batch".into(),
            ));
        }
        let inner = model.cfg.num_heads * model.cfg.d_kv;
        let rows = src.len();
        let cap = capacity.max(1);
        if cap > i32::MAX as usize {
            return Err(Error::Input(format!("decoder capacity {cap} beyond i32")));
        }
        let mut cache = Vec::new();
        for _ in 0..model.cfg.n_dec_layers() {
            cache.push(model.buf(rows * cap * 3 * inner)?);
        }
        let (src_d, ad) = row_maps(model, enc, &src)?;
        Ok(T5DeviceStepper {
            model,
            enc,
            src,
            src_d,
            ad,
            cap,
            len: 0,
            cache,
            cache_alt: Vec::new(),
            scratch: None,
            graph: GraphState::default(),
            profile: StepProfile::from_env(model.dev, "T5 device decode", "load and encoder"),
        })
    }

    /// Whether steps are replayed from a recording now (tests).
    pub fn replaying(&self) -> bool {
        self.graph.replaying()
    }
}

impl<B: Backend> crate::generate::Stepper for T5DeviceStepper<'_, '_, B> {
    fn vocab_size(&self) -> usize {
        self.model.cfg.vocab_size
    }

    fn step(&mut self, tokens: &[u32], logits: &mut Vec<f32>) -> Result<()> {
        let t0 = std::time::Instant::now();
        let dev = self.model.dev;
        let lg = self.forward(tokens)?;
        let t1 = std::time::Instant::now();
        *logits = dev.download("t5", lg)?;
        self.account(t0, t1);
        Ok(())
    }

    fn picks_on_device(&self) -> bool {
        true
    }

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

    fn select_rows(&mut self, parents: &[usize]) -> Result<()> {
        let m = self.model;
        let inner = m.cfg.num_heads * m.cfg.d_kv;
        let per = self.cap * 3 * inner;
        if parents.iter().any(|&p| p >= self.src.len()) {
            return Err(Error::Input("select_rows: parent out of range".into()));
        }
        let src: Vec<usize> = parents.iter().map(|&p| self.src[p]).collect();
        let used = self.len * 3 * inner;
        let need = self.src.len() * per;
        if parents.len() == self.src.len()
            && self.graph.second_set(
                m.dev.graphs(),
                &mut self.cache_alt,
                self.cache.len(),
                need,
                |b| B::len(b),
                || m.buf(need),
            )
        {
            // same rows: gather into the other cache set and write the row maps in place, so
            // the recordings (one per set) stay valid; beam search replays every step
            m.dev.gather_blocks_into(
                "select_rows",
                &self.cache,
                &mut self.cache_alt,
                per,
                used,
                parents,
            )?;
            let ids: Vec<i32> = src.iter().map(|&s| s as i32).collect();
            m.dev.write("select_rows", &ids, &mut self.src_d)?;
            let slots: Vec<Option<usize>> = src.iter().map(|&s| self.enc.adapters[s]).collect();
            if m.w.update_row_adapters(&mut self.ad, &slots)? {
                self.graph.reset();
            }
            std::mem::swap(&mut self.cache, &mut self.cache_alt);
            self.graph.swap();
            self.src = src;
            return Ok(());
        }
        // new cache and row-map buffers follow (even if this fails half-way): a recording
        // made before reads the old ones; the second cache set goes until a reorder needs it
        self.graph.reset();
        self.cache_alt.clear();
        m.dev
            .gather_blocks("select_rows", &mut self.cache, per, used, parents)?;
        self.src = src;
        (self.src_d, self.ad) = row_maps(m, self.enc, &self.src)?;
        Ok(())
    }
}

/// The device forms of the decoder rows' encoder rows `src` and of their adapter slots (each
/// row's source row's).
fn row_maps<B: Backend>(
    m: &T5Device<'_, B>,
    enc: &DeviceEncoderOut<B>,
    src: &[usize],
) -> Result<(B::Buf<i32>, RowAdapters<B>)> {
    let src_d = m
        .dev
        .upload("t5", &src.iter().map(|&s| s as i32).collect::<Vec<_>>())?;
    let ad =
        m.w.row_adapters(&src.iter().map(|&s| enc.adapters[s]).collect::<Vec<_>>())?;
    Ok((src_d, ad))
}

impl<B: Backend> T5DeviceStepper<'_, '_, B> {
    /// One decode step whose logits stay on the device, reduced there by `pick` (greedy
    /// choice or beam candidates: a few bytes per row read back).
    #[allow(clippy::type_complexity)]
    fn pick(
        &mut self,
        tokens: &[u32],
        pick: impl FnOnce(&B, &mut B::Buf<f32>, usize, usize) -> Result<Vec<(u32, f32)>>,
    ) -> Result<Option<Vec<(u32, f32)>>> {
        let t0 = std::time::Instant::now();
        let (dev, v) = (self.model.dev, self.model.cfg.vocab_size);
        let lg = self.forward(tokens)?;
        let t1 = std::time::Instant::now();
        let picks = pick(dev, lg, tokens.len(), v)?;
        self.account(t0, t1);
        Ok(Some(picks))
    }

    /// Profile one step: enqueued from t0 to t1, results back now.
    fn account(&mut self, t0: std::time::Instant, t1: std::time::Instant) {
        let rows = self.src.len();
        if let Some(p) = &mut self.profile {
            p.account(rows, t0, t1);
        }
    }

    /// One decoder step for one token per row: the f32 logits [rows, vocab], on the device.
    /// With `Backend::graphs` every step takes the recorded layout; the first one with
    /// unchanged buffers after a plain-run step in it is recorded (CUDA graph), and the later
    /// ones replay that recording after writing their tokens and position.
    fn forward(&mut self, tokens: &[u32]) -> Result<&mut B::Buf<f32>> {
        let m = self.model;
        let dev = m.dev;
        let rows = self.src.len();
        if tokens.len() != rows {
            return Err(Error::Input(format!(
                "{} tokens for {rows} rows",
                tokens.len()
            )));
        }
        if self.len >= self.cap {
            return Err(Error::Input(format!(
                "decoder cache of {} positions is full",
                self.cap
            )));
        }
        let t = self.len;
        if !matches!(&self.scratch, Some(sc) if sc.rows == rows) {
            self.scratch = Some(DecScratch::new(m, rows)?);
            self.graph.reset();
        }
        let has_rec = self.scratch.as_ref().is_some_and(|sc| sc.rec.is_some());
        let kind = if dev.graphs() && has_rec {
            self.graph.next()
        } else {
            StepKind::Plain
        };
        if kind != StepKind::Plain {
            // the step's inputs into the buffers the recording reads (the ids checked here:
            // the kernel cannot report a bad one)
            crate::device::check::ids_in_vocab::<B>(tokens, m.cfg.vocab_size)?;
            if let Some(DecScratch { rec: Some(rec), .. }) = &mut self.scratch {
                let ids: Vec<i32> = tokens.iter().map(|&i| i as i32).collect();
                dev.write("t5", &ids, &mut rec.ids)?;
                dev.write("t5", &[t as i32], &mut rec.pos)?;
            }
        }
        match kind {
            StepKind::Replay => self.graph.replay(dev)?,
            StepKind::Record => {
                let mut graph = std::mem::take(&mut self.graph);
                let r = graph.record(dev, "T5", &mut || self.layers(Layout::Recorded));
                self.graph = graph;
                if !r? {
                    self.layers(Layout::Plain(tokens))?;
                }
            }
            StepKind::Plain => self.layers(Layout::Plain(tokens))?,
        }
        self.graph.ran();
        self.len += 1;
        match &mut self.scratch {
            Some(sc) => Ok(&mut sc.lg),
            None => Err(Error::Input("decode scratch missing".into())),
        }
    }

    /// The decoder layers, final norm and LM head of one step, logits into the scratch's `lg`.
    fn layers(&mut self, at: Layout) -> Result<()> {
        let m = self.model;
        let dev = m.dev;
        let c = &m.cfg;
        let (d, h, dk, v) = (c.d_model, c.num_heads, c.d_kv, c.vocab_size);
        let inner = h * dk;
        let rows = self.src.len();
        let eps = c.layer_norm_epsilon as f32;
        let Some(DecScratch {
            x,
            hn,
            q,
            o,
            fb,
            lg,
            rec,
            ..
        }) = &mut self.scratch
        else {
            return Err(Error::Input("decode scratch missing".into()));
        };
        let mut rec = match at {
            Layout::Plain(tokens) => {
                dev.embedding_ids(tokens, m.wt("shared.weight")?, x, d, v)?;
                None
            }
            Layout::Recorded => {
                let Some(rec) = rec else {
                    return Err(Error::Input("recorded-step buffers missing".into()));
                };
                dev.embedding(&rec.ids, rows, m.wt("shared.weight")?, x, d, v)?;
                Some(rec)
            }
        };
        let qview = View {
            sb: inner,
            sh: dk,
            st: inner,
            off: 0,
        };
        // the self-attention cache's q (this step's), k and v
        let cache_view = |off| View {
            sb: self.cap * 3 * inner,
            sh: dk,
            st: 3 * inner,
            off,
        };
        // the cross-attention k|v
        let enc_view = |off| View {
            sb: self.enc.seq * 2 * inner,
            sh: dk,
            st: 2 * inner,
            off,
        };
        for l in 0..c.n_dec_layers() {
            // self-attention over the cache (positions 0..=t), unidirectional relative bias
            let p = format!("decoder.block.{l}.layer.0");
            // the norm into hn, or fused into the q|k|v product (Backend::gemm_rms)
            let norm = (m.wt(&format!("{p}.layer_norm.weight"))?, eps);
            let sa = format!("{p}.SelfAttention");
            let cache = &mut self.cache[l];
            let call = |tk, q_offset| AttnCall {
                batch: rows,
                kv_batch_rows: rows,
                heads: h,
                kv_heads: h,
                tq: 1,
                tk,
                dk,
                q_offset,
                window: 0,
                scale: 1.0,
                causal: true,
                t5_bias: Some((
                    c.relative_attention_num_buckets,
                    c.relative_attention_max_distance,
                    false,
                )),
            };
            let qkv_name = fused_name(&sa, QKV);
            // (`rec` is Some exactly for the recorded layout)
            match rec.as_deref_mut() {
                None => {
                    let t = self.len;
                    // q|k|v of this step into position t of every row's cache
                    let at_t = GemmShape {
                        m: rows,
                        n: 3 * inner,
                        k: d,
                        ldy: self.cap * 3 * inner,
                        y_off: t * 3 * inner,
                        accumulate: false,
                    };
                    m.w.gemm_rms(x, norm, hn, &qkv_name, Out::Bf16(cache), &at_t, &self.ad)?;
                    dev.attention(
                        &call(t + 1, t),
                        (cache, cache_view(t * 3 * inner)),
                        (cache, cache_view(inner)),
                        (cache, cache_view(2 * inner)),
                        o,
                        None,
                        None,
                        Some(&m.dec_bias),
                    )?;
                }
                Some(rec) => {
                    let qkv = &mut rec.qkv;
                    let shape = GemmShape::new(rows, 3 * inner, d, false);
                    m.w.gemm_rms(x, norm, hn, &qkv_name, Out::Bf16(qkv), &shape, &self.ad)?;
                    // the plain layout's cache contents (q kept too), at the device's position
                    dev.copy_rows_at(
                        "t5 cache",
                        (
                            qkv,
                            Rows {
                                off: 0,
                                ld: 3 * inner,
                            },
                        ),
                        (
                            cache,
                            Rows {
                                off: 0,
                                ld: self.cap * 3 * inner,
                            },
                        ),
                        rows,
                        3 * inner,
                        &rec.pos,
                        3 * inner,
                        self.cap - 1,
                    )?;
                    let qkv_view = View {
                        sb: 3 * inner,
                        sh: dk,
                        st: 3 * inner,
                        off: 0,
                    };
                    // the whole cache; the causal mask at the device's position hides the
                    // positions not written yet
                    dev.attention_at(
                        &call(self.cap, 0),
                        &rec.pos,
                        (qkv, qkv_view),
                        (cache, cache_view(inner)),
                        (cache, cache_view(2 * inner)),
                        o,
                        None,
                        None,
                        Some(&m.dec_bias),
                    )?;
                }
            }
            m.w.linear(
                o,
                &format!("{sa}.o.weight"),
                (rows, d, inner),
                x,
                true,
                &self.ad,
            )?;
            // cross-attention over the encoder output (no position bias, padding mask)
            let p = format!("decoder.block.{l}.layer.1");
            let ca = format!("{p}.EncDecAttention");
            m.w.gemm_rms(
                x,
                (m.wt(&format!("{p}.layer_norm.weight"))?, eps),
                hn,
                &format!("{ca}.q.weight"),
                Out::Bf16(q),
                &GemmShape::new(rows, inner, d, false),
                &self.ad,
            )?;
            let ekv = &self.enc.cross_kv[l];
            let (mask, src) = (Some(&self.enc.mask), Some(&self.src_d));
            let call = AttnCall {
                batch: rows,
                kv_batch_rows: self.enc.batch,
                heads: h,
                kv_heads: h,
                tq: 1,
                tk: self.enc.seq,
                dk,
                q_offset: 0,
                window: 0,
                scale: 1.0,
                causal: false,
                t5_bias: None,
            };
            match ekv {
                CrossKv::Bf16(kv) => dev.attention(
                    &call,
                    (q, qview),
                    (kv, enc_view(0)),
                    (kv, enc_view(inner)),
                    o,
                    mask,
                    src,
                    None,
                )?,
                CrossKv::Int8 { q: kv, scales } => dev.attention_q8(
                    &call,
                    (q, qview),
                    kv,
                    enc_view(0),
                    enc_view(inner),
                    scales,
                    o,
                    mask,
                    src,
                )?,
            }
            m.w.linear(
                o,
                &format!("{ca}.o.weight"),
                (rows, d, inner),
                x,
                true,
                &self.ad,
            )?;
            m.ffn(x, rows, &format!("decoder.block.{l}.layer.2"), &self.ad, fb)?;
        }
        let head = if c.tie_word_embeddings {
            "shared.weight"
        } else {
            "lm_head.weight" // adapters may target it
        };
        m.w.gemm_rms(
            x,
            (&m.dec_final, eps),
            hn,
            head,
            Out::F32(lg),
            &GemmShape::new(rows, v, d, false),
            &self.ad,
        )
    }
}
