//! T5 / FLAN-T5 encoder-decoder (Raffel et al. 2020, "Exploring the Limits of Transfer Learning
//! with a Unified Text-to-Text Transformer"; T5 v1.1 for FLAN-T5), mirroring Hugging Face
//! `transformers/models/t5/modeling_t5.py`, with HF weight names.
//!
//! Numerics that matter (all checked against transformers by the fixtures in tests/fixtures):
//! - RMS layer norm without mean or bias (`T5LayerNorm`), eps from config.
//! - No 1/sqrt(d_kv) scaling of attention scores (folded into the initialisation).
//! - Relative position bias from the first layer of each stack, shared by the later layers;
//!   bidirectional buckets in the encoder, unidirectional in decoder self-attention, none in
//!   cross-attention. Bucket arithmetic is done in f32 like PyTorch so bucket edges agree.
//! - FFN: `relu` (wi, wo), `gated-gelu` (gelu_new, tanh form: wi_0 gated by wi_1), `gated-silu`.
//! - Tied head (original T5): logits = (h · d_model^-0.5) · sharedᵀ; untied (v1.1): lm_head.
//! - Decoder KV cache; cross-attention K/V are computed once per request at encode time and shared
//!   by every beam of that request.

use crate::checkpoint::{Checkpoint, WeightTensor};
use crate::cpu::attention::{attention, AttnShape, ScoreMod, View};
use crate::cpu::{gelu_erf, gelu_tanh, rms_norm, silu};
use crate::error::{Error, Result};
use crate::models::linear::{HasLinears, Linear};
use serde::Deserialize;
use std::path::Path;

fn d_32() -> usize {
    32
}
fn d_128() -> usize {
    128
}
fn d_eps() -> f64 {
    1e-6
}
fn d_relu() -> String {
    "relu".into()
}
fn d_true() -> bool {
    true
}
fn d_1() -> u32 {
    1
}

/// `config.json` of a T5 checkpoint; field names and defaults as in HF `T5Config`.
#[derive(Debug, Clone, Deserialize)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    #[serde(default)]
    pub num_decoder_layers: Option<usize>,
    pub num_heads: usize,
    #[serde(default = "d_32")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "d_128")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "d_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "d_relu")]
    pub feed_forward_proj: String,
    /// Original-T5 head: logits = (h · d_model^-0.5) · sharedᵀ. false (T5 v1.1 / FLAN-T5): an
    /// untied `lm_head`, no scaling. Normalised from `scale_decoder_outputs` when present.
    #[serde(default = "d_true")]
    pub tie_word_embeddings: bool,
    /// transformers >= 5 writes `tie_word_embeddings: true` for every T5 and keeps the old meaning
    /// (scale the decoder output; v1.1 models have their own lm_head) in this field.
    #[serde(default)]
    pub scale_decoder_outputs: Option<bool>,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default = "d_1")]
    pub eos_token_id: u32,
    #[serde(default)]
    pub decoder_start_token_id: Option<u32>,
    #[serde(default)]
    pub model_type: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Act {
    Relu,
    GeluTanh,
    GeluErf,
    Silu,
}

impl T5Config {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let mut cfg: T5Config =
            serde_json::from_str(text).map_err(|e| Error::config(path, format!("{e}")))?;
        if let Some(scale) = cfg.scale_decoder_outputs {
            cfg.tie_word_embeddings = scale;
        }
        if let Some(mt) = &cfg.model_type {
            if mt != "t5" && mt != "mt5" && mt != "umt5" {
                return Err(Error::config(
                    path,
                    format!("model_type `{mt}` is not a T5 model"),
                ));
            }
            if mt == "umt5" {
                return Err(Error::config(
                    path,
                    "umt5 (per-layer position bias) is not supported yet",
                ));
            }
        }
        for (name, v) in [
            ("d_model", cfg.d_model),
            ("d_kv", cfg.d_kv),
            ("num_heads", cfg.num_heads),
            ("vocab_size", cfg.vocab_size),
            ("num_layers", cfg.num_layers),
            ("d_ff", cfg.d_ff),
        ] {
            if v == 0 {
                return Err(Error::config(path, format!("`{name}` must be positive")));
            }
        }
        if cfg.relative_attention_num_buckets < 2 {
            return Err(Error::config(
                path,
                "`relative_attention_num_buckets` must be at least 2",
            ));
        }
        cfg.ffn_kind().map_err(|m| Error::config(path, m))?;
        Ok(cfg)
    }

    pub fn n_dec_layers(&self) -> usize {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }
    pub fn inner(&self) -> usize {
        self.num_heads * self.d_kv
    }
    pub fn decoder_start(&self) -> u32 {
        self.decoder_start_token_id.unwrap_or(self.pad_token_id)
    }

    /// (gated, activation) from `feed_forward_proj`, following HF's parsing: "[gated-]ACT".
    pub fn ffn_kind(&self) -> std::result::Result<(bool, Act), String> {
        let parts: Vec<&str> = self.feed_forward_proj.split('-').collect();
        let (gated, act) = match parts.as_slice() {
            [a] => (false, *a),
            ["gated", a] => (true, *a),
            _ => {
                return Err(format!(
                    "`feed_forward_proj` = `{}` is not of the form [gated-]ACT",
                    self.feed_forward_proj
                ))
            }
        };
        // HF maps "gated-gelu" to gelu_new (tanh form) for backwards compatibility.
        let act = match (gated, act) {
            (_, "relu") => Act::Relu,
            (true, "gelu") => Act::GeluTanh,
            (false, "gelu") => Act::GeluErf,
            (_, "gelu_new") | (_, "gelu_pytorch_tanh") => Act::GeluTanh,
            (_, "silu") | (_, "swish") => Act::Silu,
            _ => {
                return Err(format!(
                    "`feed_forward_proj` = `{}`: unknown activation `{act}` (supported: relu, gelu, gelu_new, silu, with optional gated- prefix)",
                    self.feed_forward_proj
                ))
            }
        };
        Ok((gated, act))
    }
}

/// HF `T5Attention._relative_position_bucket`, computed in f32 as PyTorch does.
pub fn relative_position_bucket(
    relative_position: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let mut nb = num_buckets as i64;
    let mut bucket = 0i64;
    let mut rp = relative_position;
    if bidirectional {
        nb /= 2;
        if rp > 0 {
            bucket += nb;
        }
        rp = rp.abs();
    } else {
        rp = -rp.min(0);
    }
    let max_exact = nb / 2;
    if rp < max_exact {
        bucket += rp;
    } else {
        // torch: max_exact + (log(rp.float() / max_exact) / math.log(max_distance / max_exact)
        //        * (num_buckets - max_exact)).to(long), clamped to num_buckets - 1.
        let denom = ((max_distance as f64) / (max_exact as f64)).ln() as f32;
        let val = ((rp as f32) / (max_exact as f32)).ln() / denom * ((nb - max_exact) as f32);
        let large = (max_exact + val as i64).min(nb - 1);
        bucket += large;
    }
    bucket as usize
}

/// The distance from which every relative position falls in its direction's last bucket:
/// `relative_position_bucket(r) == relative_position_bucket(r.clamp(-d, d))` for every r, with
/// d = `max_distance`. Holds when 1 <= max_exact < max_distance: at distance max_distance the
/// logarithmic part is exactly num_buckets - max_exact before rounding, so it truncates to at
/// least one less and the result is clamped to the last bucket, as for every longer distance.
/// `None` for configurations where that argument does not hold (the CUDA flash kernels then
/// fall back to their general kernel, which evaluates the bucket per score).
pub fn bucket_saturation(
    num_buckets: usize,
    max_distance: usize,
    bidirectional: bool,
) -> Option<usize> {
    let nb = if bidirectional {
        num_buckets / 2
    } else {
        num_buckets
    };
    let max_exact = nb / 2;
    (max_exact >= 1 && max_exact < max_distance).then_some(max_distance)
}

struct Attn {
    q: Linear, // [H*dk, d_model]
    k: Linear, // [H*dk, d_model]
    v: Linear, // [H*dk, d_model]
    o: Linear, // [d_model, H*dk]
}

enum Ffn {
    Plain {
        wi: Linear,
        wo: Linear,
    }, // wi [d_ff, d_model], wo [d_model, d_ff]
    Gated {
        wi0: Linear,
        wi1: Linear,
        wo: Linear,
    }, // wi_0, wi_1 [d_ff, d_model]
}

struct EncLayer {
    ln_attn: WeightTensor, // layer.0.layer_norm [d_model]
    attn: Attn,
    ln_ff: WeightTensor, // layer.1.layer_norm [d_model]
    ffn: Ffn,
}

struct DecLayer {
    ln_self: WeightTensor, // layer.0.layer_norm
    self_attn: Attn,
    ln_cross: WeightTensor, // layer.1.layer_norm
    cross: Attn,
    ln_ff: WeightTensor, // layer.2.layer_norm
    ffn: Ffn,
}

pub struct T5Model {
    pub cfg: T5Config,
    act: Act,
    shared: WeightTensor,       // [vocab, d_model]
    lm_head: Option<Linear>,    // [vocab, d_model] when untied
    enc_rel_bias: WeightTensor, // encoder.block.0...relative_attention_bias [buckets, H]
    dec_rel_bias: WeightTensor, // decoder.block.0...relative_attention_bias [buckets, H]
    enc: Vec<EncLayer>,
    enc_final_ln: WeightTensor,
    dec: Vec<DecLayer>,
    dec_final_ln: WeightTensor,
    /// number of weights used in place from the memory map (zero copy), for reports
    pub mapped_tensors: usize,
    pub total_tensors: usize,
}

impl HasLinears for T5Model {
    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        fn ffn(f: &mut Ffn) -> Vec<&mut Linear> {
            match f {
                Ffn::Plain { wi, wo } => vec![wi, wo],
                Ffn::Gated { wi0, wi1, wo } => vec![wi0, wi1, wo],
            }
        }
        let mut v: Vec<&mut Linear> = Vec::new();
        for l in self.enc.iter_mut() {
            v.extend([&mut l.attn.q, &mut l.attn.k, &mut l.attn.v, &mut l.attn.o]);
            v.extend(ffn(&mut l.ffn));
        }
        for l in self.dec.iter_mut() {
            v.extend([
                &mut l.self_attn.q,
                &mut l.self_attn.k,
                &mut l.self_attn.v,
                &mut l.self_attn.o,
            ]);
            v.extend([
                &mut l.cross.q,
                &mut l.cross.k,
                &mut l.cross.v,
                &mut l.cross.o,
            ]);
            v.extend(ffn(&mut l.ffn));
        }
        if let Some(h) = self.lm_head.as_mut() {
            v.push(h);
        }
        v
    }
}

impl T5Model {
    pub fn load(cfg: T5Config, ck: &Checkpoint) -> Result<Self> {
        let (d, inner, dff, v) = (cfg.d_model, cfg.inner(), cfg.d_ff, cfg.vocab_size);
        let (gated, act) = cfg
            .ffn_kind()
            .map_err(|m| Error::config("config.json", m))?;
        let mut n_total = 0usize;
        let mut n_mapped = 0usize;
        // matrices (2-D: linear layers, embedding, head) follow the checkpoint's CpuWeights
        // policy; norms and bias tables are always f32
        let mut get = |name: &str, shape: &[usize]| -> Result<WeightTensor> {
            let w = if shape.len() == 2 && !name.contains("relative_attention_bias") {
                ck.matrix(name, shape)?
            } else {
                ck.f32(name, shape)?
            };
            n_total += 1;
            if w.data.is_mapped() {
                n_mapped += 1;
            }
            Ok(w)
        };
        let shared_name = [
            "shared.weight",
            "encoder.embed_tokens.weight",
            "decoder.embed_tokens.weight",
        ]
        .into_iter()
        .find(|n| ck.contains(n))
        .unwrap_or("shared.weight");
        let shared = get(shared_name, &[v, d])?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(Linear::new(get("lm_head.weight", &[v, d])?))
        };
        let nb = cfg.relative_attention_num_buckets;
        let attn = |get: &mut dyn FnMut(&str, &[usize]) -> Result<WeightTensor>,
                    p: &str|
         -> Result<Attn> {
            Ok(Attn {
                q: Linear::new(get(&format!("{p}.q.weight"), &[inner, d])?),
                k: Linear::new(get(&format!("{p}.k.weight"), &[inner, d])?),
                v: Linear::new(get(&format!("{p}.v.weight"), &[inner, d])?),
                o: Linear::new(get(&format!("{p}.o.weight"), &[d, inner])?),
            })
        };
        let ffn = |get: &mut dyn FnMut(&str, &[usize]) -> Result<WeightTensor>,
                   p: &str|
         -> Result<Ffn> {
            Ok(if gated {
                Ffn::Gated {
                    wi0: Linear::new(get(&format!("{p}.DenseReluDense.wi_0.weight"), &[dff, d])?),
                    wi1: Linear::new(get(&format!("{p}.DenseReluDense.wi_1.weight"), &[dff, d])?),
                    wo: Linear::new(get(&format!("{p}.DenseReluDense.wo.weight"), &[d, dff])?),
                }
            } else {
                Ffn::Plain {
                    wi: Linear::new(get(&format!("{p}.DenseReluDense.wi.weight"), &[dff, d])?),
                    wo: Linear::new(get(&format!("{p}.DenseReluDense.wo.weight"), &[d, dff])?),
                }
            })
        };
        let enc_rel_bias = get(
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            &[nb, cfg.num_heads],
        )?;
        let dec_rel_bias = get(
            "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            &[nb, cfg.num_heads],
        )?;
        let mut enc = Vec::new();
        for i in 0..cfg.num_layers {
            let p = format!("encoder.block.{i}");
            enc.push(EncLayer {
                ln_attn: get(&format!("{p}.layer.0.layer_norm.weight"), &[d])?,
                attn: attn(&mut get, &format!("{p}.layer.0.SelfAttention"))?,
                ln_ff: get(&format!("{p}.layer.1.layer_norm.weight"), &[d])?,
                ffn: ffn(&mut get, &format!("{p}.layer.1"))?,
            });
        }
        let enc_final_ln = get("encoder.final_layer_norm.weight", &[d])?;
        let mut dec = Vec::new();
        for i in 0..cfg.n_dec_layers() {
            let p = format!("decoder.block.{i}");
            dec.push(DecLayer {
                ln_self: get(&format!("{p}.layer.0.layer_norm.weight"), &[d])?,
                self_attn: attn(&mut get, &format!("{p}.layer.0.SelfAttention"))?,
                ln_cross: get(&format!("{p}.layer.1.layer_norm.weight"), &[d])?,
                cross: attn(&mut get, &format!("{p}.layer.1.EncDecAttention"))?,
                ln_ff: get(&format!("{p}.layer.2.layer_norm.weight"), &[d])?,
                ffn: ffn(&mut get, &format!("{p}.layer.2"))?,
            });
        }
        let dec_final_ln = get("decoder.final_layer_norm.weight", &[d])?;
        // Checkpoints with a layer more than the config says are mismatched: say so.
        if ck.contains(&format!(
            "encoder.block.{}.layer.0.layer_norm.weight",
            cfg.num_layers
        )) || ck.contains(&format!(
            "decoder.block.{}.layer.0.layer_norm.weight",
            cfg.n_dec_layers()
        )) {
            return Err(Error::config(
                "config.json",
                "the checkpoint has more layers than num_layers/num_decoder_layers say: config and weights do not belong together",
            ));
        }
        Ok(T5Model {
            cfg,
            act,
            shared,
            lm_head,
            enc_rel_bias,
            dec_rel_bias,
            enc,
            enc_final_ln,
            dec,
            dec_final_ln,
            mapped_tensors: n_mapped,
            total_tensors: n_total,
        })
    }

    pub fn load_dir(dir: &Path) -> Result<Self> {
        let cfg = T5Config::from_file(&dir.join("config.json"))?;
        let ck = Checkpoint::open_dir(dir)?;
        Self::load(cfg, &ck)
    }

    pub fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    fn embed(&self, ids: &[u32], out: &mut [f32]) -> Result<()> {
        let d = self.cfg.d_model;
        let table = self.shared.wref();
        for (i, &t) in ids.iter().enumerate() {
            let t = t as usize;
            if t >= self.cfg.vocab_size {
                return Err(Error::Input(format!(
                    "token id {t} is outside the vocabulary (size {})",
                    self.cfg.vocab_size
                )));
            }
            table.row_into(t, d, &mut out[i * d..(i + 1) * d]);
        }
        Ok(())
    }

    fn ffn(
        &self,
        f: &Ffn,
        x: &[f32],
        m: usize,
        out: &mut [f32],
        s: &mut FfnScratch,
        ad: Option<usize>,
    ) {
        let dff = self.cfg.d_ff;
        s.a.resize(m * dff, 0.0);
        let act = self.act;
        match f {
            Ffn::Plain { wi, wo } => {
                wi.fwd(x, m, &mut s.a, false, ad, &mut s.tmp);
                if m >= 256 {
                    use rayon::prelude::*;
                    s.a.par_chunks_mut(1 << 14)
                        .for_each(|c| act_inplace(act, c));
                } else {
                    act_inplace(act, &mut s.a);
                }
                wo.fwd(&s.a, m, out, true, ad, &mut s.tmp);
            }
            Ffn::Gated { wi0, wi1, wo } => {
                s.b.resize(m * dff, 0.0);
                wi0.fwd(x, m, &mut s.a, false, ad, &mut s.tmp);
                wi1.fwd(x, m, &mut s.b, false, ad, &mut s.tmp);
                // act(gate) · linear, in parallel chunks for encoder-sized inputs
                let gate_mul = |(g, l): (&mut [f32], &[f32])| {
                    act_inplace(act, g);
                    g.iter_mut().zip(l).for_each(|(g, &l)| *g *= l);
                };
                if m >= 256 {
                    use rayon::prelude::*;
                    s.a.par_chunks_mut(1 << 14)
                        .zip(s.b.par_chunks(1 << 14))
                        .for_each(gate_mul);
                } else {
                    gate_mul((&mut s.a[..], &s.b[..]));
                }
                wo.fwd(&s.a, m, out, true, ad, &mut s.tmp);
            }
        }
    }

    /// Run the encoder on a right-padded batch. `ids` and `mask` are [batch, seq] row-major.
    /// Returns the encoder state (hidden states and the cross-attention K/V of every decoder layer).
    pub fn encode(&self, ids: &[u32], mask: &[u8], batch: usize, seq: usize) -> Result<EncoderOut> {
        self.encode_with(ids, mask, batch, seq, None)
    }

    /// `encode` for a request that uses LoRA adapter slot `adapter` (also used by its decoding).
    pub fn encode_with(
        &self,
        ids: &[u32],
        mask: &[u8],
        batch: usize,
        seq: usize,
        adapter: Option<usize>,
    ) -> Result<EncoderOut> {
        let ad = adapter;
        let c = &self.cfg;
        let (d, inner, h, dk) = (c.d_model, c.inner(), c.num_heads, c.d_kv);
        if ids.len() != batch * seq || mask.len() != batch * seq {
            return Err(Error::Input(format!(
                "encode: ids/mask length {} / {} != batch {batch} × seq {seq}",
                ids.len(),
                mask.len()
            )));
        }
        if seq == 0 {
            return Err(Error::Input(
                "empty input: the encoder needs at least one token".into(),
            ));
        }
        let m = batch * seq;
        let mut x = vec![0.0f32; m * d];
        self.embed(ids, &mut x)?;
        let mut n = vec![0.0f32; m * d];
        let mut q = vec![0.0f32; m * inner];
        let mut k = vec![0.0f32; m * inner];
        let mut v = vec![0.0f32; m * inner];
        let mut ctx = vec![0.0f32; m * inner];
        let mut sc = Vec::new();
        let mut fs = FfnScratch::default();
        // Bucketed bias table per relative distance j - i in [-(seq-1), seq-1].
        let buckets: Vec<usize> = (0..2 * seq - 1)
            .map(|r| {
                relative_position_bucket(
                    r as i64 - (seq as i64 - 1),
                    true,
                    c.relative_attention_num_buckets,
                    c.relative_attention_max_distance,
                )
            })
            .collect();
        let table = bias_table(self.enc_rel_bias.as_slice(), &buckets, h);
        let sm = EncMod {
            bias: self.enc_rel_bias.as_slice(),
            buckets: &buckets,
            heads: h,
            seq,
            mask,
            seqk: seq,
            offset: seq - 1,
            table: &table,
        };
        let shape = AttnShape {
            batch,
            heads: h,
            kv_heads: h,
            tq: seq,
            tk: seq,
            dk,
        };
        let view = View {
            sb: seq * inner,
            sh: dk,
            st: inner,
        };
        for l in &self.enc {
            rms_norm(
                &x,
                l.ln_attn.as_slice(),
                c.layer_norm_epsilon as f32,
                &mut n,
            );
            l.attn.q.fwd(&n, m, &mut q, false, ad, &mut fs.tmp);
            l.attn.k.fwd(&n, m, &mut k, false, ad, &mut fs.tmp);
            l.attn.v.fwd(&n, m, &mut v, false, ad, &mut fs.tmp);
            attention(
                &shape,
                &q,
                view,
                &k,
                view,
                &v,
                view,
                &|b| b,
                &sm,
                &mut ctx,
                &mut sc,
            );
            l.attn.o.fwd(&ctx, m, &mut x, true, ad, &mut fs.tmp);
            rms_norm(&x, l.ln_ff.as_slice(), c.layer_norm_epsilon as f32, &mut n);
            self.ffn(&l.ffn, &n, m, &mut x, &mut fs, ad);
        }
        rms_norm(
            &x,
            self.enc_final_ln.as_slice(),
            c.layer_norm_epsilon as f32,
            &mut n,
        );
        // Cross-attention K/V for every decoder layer, once per request: [batch, seq, inner].
        let mut cross = Vec::with_capacity(self.dec.len());
        for l in &self.dec {
            let mut ck = vec![0.0f32; m * inner];
            let mut cv = vec![0.0f32; m * inner];
            l.cross.k.fwd(&n, m, &mut ck, false, ad, &mut fs.tmp);
            l.cross.v.fwd(&n, m, &mut cv, false, ad, &mut fs.tmp);
            // [b, s, H*dk] -> [b, H, s, dk]: each head's keys contiguous for the decode GEMV
            cross.push((
                heads_major(&ck, batch, seq, h, dk),
                heads_major(&cv, batch, seq, h, dk),
            ));
        }
        Ok(EncoderOut {
            batch,
            seq,
            hidden: n,
            mask: mask.to_vec(),
            cross,
            adapter,
        })
    }

    /// A fresh decoder state for `rows` sequences; `src[r]` is the encoder batch row of sequence r.
    pub fn new_decoder_state(
        &self,
        enc: &EncoderOut,
        src: Vec<usize>,
        capacity: usize,
    ) -> DecoderState {
        let c = &self.cfg;
        let rows = src.len();
        let cap = capacity.max(1);
        let per = rows * c.num_heads * cap * c.d_kv;
        DecoderState {
            src,
            len: 0,
            cap,
            self_k: (0..self.dec.len()).map(|_| vec![0.0; per]).collect(),
            self_v: (0..self.dec.len()).map(|_| vec![0.0; per]).collect(),
            spare: Vec::new(),
            enc_seq: enc.seq,
            scratch: DecScratch::default(),
        }
    }

    fn grow(&self, st: &mut DecoderState, need: usize) {
        if need <= st.cap {
            return;
        }
        let c = &self.cfg;
        let (h, dk, rows) = (c.num_heads, c.d_kv, st.src.len());
        let new_cap = need.max(st.cap * 2);
        for buf in st.self_k.iter_mut().chain(st.self_v.iter_mut()) {
            let mut nb = vec![0.0f32; rows * h * new_cap * dk];
            for r in 0..rows {
                for hh in 0..h {
                    let o = (r * h + hh) * st.cap * dk;
                    let n = (r * h + hh) * new_cap * dk;
                    nb[n..n + st.len * dk].copy_from_slice(&buf[o..o + st.len * dk]);
                }
            }
            *buf = nb;
        }
        st.cap = new_cap;
    }

    /// Row r of the new state continues old row `parents[r]` (beam reordering, or dropping
    /// finished rows). Copies only the filled part of each cache row.
    pub fn select_rows(&self, st: &mut DecoderState, parents: &[usize]) -> Result<()> {
        let c = &self.cfg;
        let (h, dk) = (c.num_heads, c.d_kv);
        let old_rows = st.src.len();
        if let Some(&bad) = parents.iter().find(|&&p| p >= old_rows) {
            return Err(Error::Input(format!(
                "select_rows: parent {bad} >= {old_rows} rows"
            )));
        }
        if parents.len() == old_rows && parents.iter().enumerate().all(|(i, &p)| i == p) {
            return Ok(());
        }
        for buf in st.self_k.iter_mut().chain(st.self_v.iter_mut()) {
            crate::cpu::gather_cache_rows(buf, &mut st.spare, parents, (h, st.cap, dk), st.len);
        }
        st.src = parents.iter().map(|&p| st.src[p]).collect();
        Ok(())
    }

    /// Feed `t_new` tokens per sequence (ids: [rows, t_new]) at positions len..len+t_new, appending
    /// to the KV cache. Writes logits for every new position (`all`) or only the last one into
    /// `logits` ([rows, t_new or 1, vocab]).
    pub fn decode(
        &self,
        enc: &EncoderOut,
        st: &mut DecoderState,
        ids: &[u32],
        t_new: usize,
        all: bool,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        let c = &self.cfg;
        let (d, inner, h, dk, vsz) = (c.d_model, c.inner(), c.num_heads, c.d_kv, c.vocab_size);
        let rows = st.src.len();
        if ids.len() != rows * t_new || t_new == 0 {
            return Err(Error::Input(format!(
                "decode: {} ids for {rows} sequences × {t_new} tokens",
                ids.len()
            )));
        }
        let p0 = st.len;
        self.grow(st, p0 + t_new);
        let m = rows * t_new;
        let cap = st.cap;
        let eps = c.layer_norm_epsilon as f32;
        let mut s = std::mem::take(&mut st.scratch);
        s.x.resize(m * d, 0.0);
        s.n.resize(m * d, 0.0);
        s.q.resize(m * inner, 0.0);
        s.k.resize(m * inner, 0.0);
        s.v.resize(m * inner, 0.0);
        s.ctx.resize(m * inner, 0.0);
        self.embed(ids, &mut s.x)?;
        let tk = p0 + t_new;
        // Unidirectional buckets for key j vs query position p0+i. Only visible keys (j <= p0+i)
        // are biased, so the distance j - (p0+i) lies in [-(tk-1), 0]: index it by + (tk-1).
        s.buckets.clear();
        s.buckets.extend((0..tk).map(|r| {
            relative_position_bucket(
                r as i64 - (tk as i64 - 1),
                false,
                c.relative_attention_num_buckets,
                c.relative_attention_max_distance,
            )
        }));
        let self_mod = DecSelfMod {
            bias: self.dec_rel_bias.as_slice(),
            buckets: &s.buckets,
            heads: h,
            p0,
            offset: tk - 1,
        };
        let cross_mod = CrossMod {
            mask: &enc.mask,
            seq: enc.seq,
            src: &st.src,
        };
        let qview = View {
            sb: t_new * inner,
            sh: dk,
            st: inner,
        };
        let cache_view = View {
            sb: h * cap * dk,
            sh: cap * dk,
            st: dk,
        };
        let enc_view = View {
            sb: enc.seq * inner,
            sh: enc.seq * dk,
            st: dk,
        };
        let self_shape = AttnShape {
            batch: rows,
            heads: h,
            kv_heads: h,
            tq: t_new,
            tk,
            dk,
        };
        let cross_shape = AttnShape {
            batch: rows,
            heads: h,
            kv_heads: h,
            tq: t_new,
            tk: enc.seq,
            dk,
        };
        let src = st.src.clone();
        let ad = enc.adapter;
        for (li, l) in self.dec.iter().enumerate() {
            // self-attention
            rms_norm(&s.x, l.ln_self.as_slice(), eps, &mut s.n);
            l.self_attn
                .q
                .fwd(&s.n, m, &mut s.q, false, ad, &mut s.ffn.tmp);
            l.self_attn
                .k
                .fwd(&s.n, m, &mut s.k, false, ad, &mut s.ffn.tmp);
            l.self_attn
                .v
                .fwd(&s.n, m, &mut s.v, false, ad, &mut s.ffn.tmp);
            // append K/V: [rows, t_new, H*dk] -> cache [rows, H, cap, dk] at p0..
            let (kc, vc) = (&mut st.self_k[li], &mut st.self_v[li]);
            for r in 0..rows {
                for t in 0..t_new {
                    for hh in 0..h {
                        let src_off = (r * t_new + t) * inner + hh * dk;
                        let dst = ((r * h + hh) * cap + p0 + t) * dk;
                        kc[dst..dst + dk].copy_from_slice(&s.k[src_off..src_off + dk]);
                        vc[dst..dst + dk].copy_from_slice(&s.v[src_off..src_off + dk]);
                    }
                }
            }
            attention(
                &self_shape,
                &s.q,
                qview,
                kc,
                cache_view,
                vc,
                cache_view,
                &|b| b,
                &self_mod,
                &mut s.ctx,
                &mut s.sc,
            );
            l.self_attn
                .o
                .fwd(&s.ctx, m, &mut s.x, true, ad, &mut s.ffn.tmp);
            // cross-attention over the encoder output (K/V precomputed at encode time)
            rms_norm(&s.x, l.ln_cross.as_slice(), eps, &mut s.n);
            l.cross.q.fwd(&s.n, m, &mut s.q, false, ad, &mut s.ffn.tmp);
            let (ck, cv) = &enc.cross[li];
            attention(
                &cross_shape,
                &s.q,
                qview,
                ck,
                enc_view,
                cv,
                enc_view,
                &|b| src[b],
                &cross_mod,
                &mut s.ctx,
                &mut s.sc,
            );
            l.cross.o.fwd(&s.ctx, m, &mut s.x, true, ad, &mut s.ffn.tmp);
            // feed-forward
            rms_norm(&s.x, l.ln_ff.as_slice(), eps, &mut s.n);
            self.ffn(&l.ffn, &s.n, m, &mut s.x, &mut s.ffn, ad);
        }
        rms_norm(&s.x, self.dec_final_ln.as_slice(), eps, &mut s.n);
        // Select rows for the head: all positions, or the last position of each sequence.
        let (hrows, hin) = crate::cpu::head_rows(&s.n, rows, t_new, d, all, &mut s.last);
        logits.resize(hrows * vsz, 0.0);
        match &self.lm_head {
            Some(w) => w.fwd(hin, hrows, logits, false, ad, &mut s.ffn.tmp),
            None => {
                // tied: sequence_output * model_dim**-0.5, then the shared embedding
                let scale = (d as f32).powf(-0.5);
                s.tied.clear();
                s.tied.extend(hin.iter().map(|v| v * scale));
                crate::cpu::matmul_w(&s.tied, hrows, d, self.shared.wref(), vsz, logits, false);
            }
        }
        st.len = p0 + t_new;
        st.scratch = s;
        Ok(())
    }
}

fn act_inplace(a: Act, x: &mut [f32]) {
    match a {
        // vectorised exp-based tanh: the scalar libm tanh was ~14% of encoder time
        Act::GeluTanh => crate::cpu::simd::gelu_tanh_inplace(x),
        _ => x.iter_mut().for_each(|v| *v = apply_act(a, *v)),
    }
}

#[inline]
fn apply_act(a: Act, v: f32) -> f32 {
    match a {
        Act::Relu => v.max(0.0),
        Act::GeluTanh => gelu_tanh(v),
        Act::GeluErf => gelu_erf(v),
        Act::Silu => silu(v),
    }
}

#[derive(Default)]
struct FfnScratch {
    a: Vec<f32>,
    b: Vec<f32>,
    tmp: Vec<f32>,
}

/// Buffers reused across decode steps so a step allocates nothing once warmed up.
#[derive(Default)]
pub struct DecScratch {
    x: Vec<f32>,
    n: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    ctx: Vec<f32>,
    sc: Vec<f32>,
    last: Vec<f32>,
    tied: Vec<f32>,
    buckets: Vec<usize>,
    ffn: FfnScratch,
}

/// Encoder output for one batch of requests.
pub struct EncoderOut {
    pub batch: usize,
    pub seq: usize,
    /// final encoder hidden states [batch, seq, d_model]
    pub hidden: Vec<f32>,
    /// 1 = real token, 0 = padding; [batch, seq]
    pub mask: Vec<u8>,
    /// per decoder layer: (K, V) each [batch, H, seq, dk]
    cross: Vec<(Vec<f32>, Vec<f32>)>,
    /// LoRA adapter slot of this request (None: base model)
    pub adapter: Option<usize>,
}

/// Per-request decoder state: KV cache [rows, H, cap, dk] per layer, and each row's source index.
pub struct DecoderState {
    pub src: Vec<usize>,
    pub len: usize,
    cap: usize,
    self_k: Vec<Vec<f32>>,
    self_v: Vec<Vec<f32>>,
    /// the buffer beam reordering gathers into (see `cpu::gather_cache_rows`)
    spare: Vec<f32>,
    pub enc_seq: usize,
    scratch: DecScratch,
}

/// [b, s, H*dk] -> [b, H, s, dk]
fn heads_major(x: &[f32], b: usize, s: usize, h: usize, dk: usize) -> Vec<f32> {
    use rayon::prelude::*;
    assert_eq!(
        x.len(),
        b * s * h * dk,
        "heads_major: buffer is not [b, s, h*dk]"
    );
    let mut out = vec![0.0f32; x.len()];
    // one (batch row, head) block of s·dk per task: written once, in parallel
    out.par_chunks_mut((s * dk).max(1))
        .enumerate()
        .for_each(|(bh, blk)| {
            let (bi, hh) = (bh / h, bh % h);
            for (t, dst) in blk.chunks_exact_mut(dk).enumerate() {
                let src = (bi * s + t) * h * dk + hh * dk;
                dst.copy_from_slice(&x[src..src + dk]);
            }
        });
    out
}

/// Per-head bias by relative-distance index: table[h * n + r] = emb[bucket[r], h].
fn bias_table(emb: &[f32], buckets: &[usize], heads: usize) -> Vec<f32> {
    let n = buckets.len();
    let mut t = vec![0.0f32; heads * n];
    for h in 0..heads {
        for (r, &bk) in buckets.iter().enumerate() {
            t[h * n + r] = emb[bk * heads + h];
        }
    }
    t
}

struct EncMod<'a> {
    table: &'a [f32],
    bias: &'a [f32],
    buckets: &'a [usize],
    heads: usize,
    seq: usize,
    seqk: usize,
    mask: &'a [u8],
    offset: usize,
}
impl ScoreMod for EncMod<'_> {
    #[inline]
    fn bias(&self, h: usize, i: usize, j: usize) -> f32 {
        self.bias[self.buckets[j + self.offset - i] * self.heads + h]
    }
    #[inline]
    fn allowed(&self, b: usize, _i: usize, j: usize) -> bool {
        let _ = self.seq;
        self.mask[b * self.seqk + j] != 0
    }
    fn apply_row(&self, b: usize, h: usize, i: usize, row: &mut [f32]) {
        // keys j = 0..tk have relative index j + offset - i: a contiguous slice of the table
        let n = self.buckets.len();
        let start = self.offset - i;
        let bias = &self.table[h * n + start..h * n + start + row.len()];
        let mask = &self.mask[b * self.seqk..b * self.seqk + row.len()];
        for ((x, &bv), &mk) in row.iter_mut().zip(bias).zip(mask) {
            *x = if mk != 0 { *x + bv } else { f32::NEG_INFINITY };
        }
    }
}

struct DecSelfMod<'a> {
    bias: &'a [f32],
    buckets: &'a [usize],
    heads: usize,
    p0: usize,
    offset: usize,
}
impl ScoreMod for DecSelfMod<'_> {
    #[inline]
    fn bias(&self, h: usize, i: usize, j: usize) -> f32 {
        // index = (j - (p0+i)) + offset, with j <= p0+i guaranteed by `allowed`
        let r = j + self.offset - (self.p0 + i);
        self.bias[self.buckets[r] * self.heads + h]
    }
    #[inline]
    fn allowed(&self, _b: usize, i: usize, j: usize) -> bool {
        j <= self.p0 + i
    }
}

struct CrossMod<'a> {
    mask: &'a [u8],
    seq: usize,
    src: &'a [usize],
}
impl ScoreMod for CrossMod<'_> {
    #[inline]
    fn allowed(&self, b: usize, _i: usize, j: usize) -> bool {
        self.mask[self.src[b] * self.seq + j] != 0
    }
}

/// The T5 decoder as a `Stepper` for the generation loop: one request batch's encoder output and
/// its decoder cache.
pub struct T5Stepper<'a> {
    pub model: &'a T5Model,
    pub enc: &'a EncoderOut,
    pub state: DecoderState,
}

impl<'a> T5Stepper<'a> {
    /// `src[r]` = encoder batch row of decoder row r (beams: b repeated K times).
    pub fn new(model: &'a T5Model, enc: &'a EncoderOut, src: Vec<usize>, capacity: usize) -> Self {
        let state = model.new_decoder_state(enc, src, capacity);
        T5Stepper { model, enc, state }
    }
}

impl crate::generate::Stepper for T5Stepper<'_> {
    fn vocab_size(&self) -> usize {
        self.model.cfg.vocab_size
    }
    fn step(&mut self, tokens: &[u32], logits: &mut Vec<f32>) -> Result<()> {
        self.model
            .decode(self.enc, &mut self.state, tokens, 1, false, logits)
    }
    fn select_rows(&mut self, parents: &[usize]) -> Result<()> {
        self.model.select_rows(&mut self.state, parents)
    }
    fn step_many(&mut self, tokens: &[u32], logits: &mut Vec<f32>) -> Result<bool> {
        if self.state.src.len() != 1 {
            return Ok(false);
        }
        self.model.decode(
            self.enc,
            &mut self.state,
            tokens,
            tokens.len(),
            false,
            logits,
        )?;
        Ok(true)
    }
}

/// Weight names and shapes of a T5 checkpoint for `cfg` (HF layout, `shared.weight` for the
/// embedding), used to write random checkpoints for benchmarks and tests.
pub fn weight_shapes(cfg: &T5Config) -> Vec<(String, Vec<usize>)> {
    let (d, inner, dff, v, nb, h) = (
        cfg.d_model,
        cfg.inner(),
        cfg.d_ff,
        cfg.vocab_size,
        cfg.relative_attention_num_buckets,
        cfg.num_heads,
    );
    let gated = cfg.ffn_kind().map(|g| g.0).unwrap_or(false);
    let mut w: Vec<(String, Vec<usize>)> = vec![("shared.weight".into(), vec![v, d])];
    if !cfg.tie_word_embeddings {
        w.push(("lm_head.weight".into(), vec![v, d]));
    }
    let attn = |w: &mut Vec<(String, Vec<usize>)>, p: &str| {
        for x in ["q", "k", "v"] {
            w.push((format!("{p}.{x}.weight"), vec![inner, d]));
        }
        w.push((format!("{p}.o.weight"), vec![d, inner]));
    };
    let ffn = |w: &mut Vec<(String, Vec<usize>)>, p: &str| {
        if gated {
            w.push((format!("{p}.DenseReluDense.wi_0.weight"), vec![dff, d]));
            w.push((format!("{p}.DenseReluDense.wi_1.weight"), vec![dff, d]));
        } else {
            w.push((format!("{p}.DenseReluDense.wi.weight"), vec![dff, d]));
        }
        w.push((format!("{p}.DenseReluDense.wo.weight"), vec![d, dff]));
    };
    for (stack, n) in [("encoder", cfg.num_layers), ("decoder", cfg.n_dec_layers())] {
        w.push((
            format!("{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
            vec![nb, h],
        ));
        for i in 0..n {
            let p = format!("{stack}.block.{i}");
            w.push((format!("{p}.layer.0.layer_norm.weight"), vec![d]));
            attn(&mut w, &format!("{p}.layer.0.SelfAttention"));
            if stack == "decoder" {
                w.push((format!("{p}.layer.1.layer_norm.weight"), vec![d]));
                attn(&mut w, &format!("{p}.layer.1.EncDecAttention"));
                w.push((format!("{p}.layer.2.layer_norm.weight"), vec![d]));
                ffn(&mut w, &format!("{p}.layer.2"));
            } else {
                w.push((format!("{p}.layer.1.layer_norm.weight"), vec![d]));
                ffn(&mut w, &format!("{p}.layer.1"));
            }
        }
        w.push((format!("{stack}.final_layer_norm.weight"), vec![d]));
    }
    w
}

/// Write a seeded random f32 T5 checkpoint (config.json + model.safetensors) into `dir`.
/// Norm weights are 1, other weights uniform in ±1/sqrt(fan_in) so activations stay tame.
pub fn write_random_checkpoint(dir: &Path, cfg_json: &serde_json::Value, seed: u64) -> Result<()> {
    write_random_checkpoint_as(dir, cfg_json, seed, safetensors::Dtype::F32)
}

/// `write_random_checkpoint` with the tensors stored as `dtype` (F32 or BF16, rounded to
/// nearest even: how real FLAN-T5 and Mistral checkpoints ship).
pub fn write_random_checkpoint_as(
    dir: &Path,
    cfg_json: &serde_json::Value,
    seed: u64,
    dtype: safetensors::Dtype,
) -> Result<()> {
    if !matches!(dtype, safetensors::Dtype::F32 | safetensors::Dtype::BF16) {
        return Err(Error::Unsupported(format!(
            "random checkpoints are written as F32 or BF16, not {dtype:?}"
        )));
    }
    let cfg: T5Config = serde_json::from_value(cfg_json.clone())
        .map_err(|e| Error::config(dir.join("config.json"), e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(cfg_json).unwrap_or_default(),
    )
    .map_err(|e| Error::io(dir, e))?;
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let shapes = weight_shapes(&cfg);
    let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, shape) in shapes {
        let n: usize = shape.iter().product();
        let scale = if name.contains("layer_norm") {
            0.0
        } else {
            1.0 / (*shape.last().unwrap_or(&1) as f32).sqrt()
        };
        let mut data: Vec<u8> = Vec::with_capacity(n * dtype.bitsize() / 8);
        for _ in 0..n {
            let v = if scale == 0.0 { 1.0 } else { next() * scale };
            if dtype == safetensors::Dtype::BF16 {
                data.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes());
            } else {
                data.extend_from_slice(&v.to_le_bytes());
            }
        }
        bufs.push((name, shape, data));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = bufs
        .iter()
        .map(|(n, s, d)| {
            safetensors::tensor::TensorView::new(dtype, s.clone(), d)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Safetensors {
                    path: dir.join("model.safetensors"),
                    msg: e.to_string(),
                })
        })
        .collect::<Result<_>>()?;
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).map_err(|e| {
        Error::Safetensors {
            path: dir.join("model.safetensors"),
            msg: e.to_string(),
        }
    })
}

/// flan-t5-small's shape (d_model 512, 8+8 layers, 6 heads × 64, d_ff 1024, vocab 32128,
/// gated-gelu, untied): the CPU benchmark model.
pub fn flan_t5_small_config() -> serde_json::Value {
    flan_t5_config(512, 1024, 8, 6)
}

/// flan-t5-large's shape (d_model 1024, 24+24 layers, 16 heads × 64, d_ff 2816): the GPU
/// end-to-end model (tools/gpu_bench_e2e.py) and the device load benchmark.
pub fn flan_t5_large_config() -> serde_json::Value {
    flan_t5_config(1024, 2816, 24, 16)
}

fn flan_t5_config(d_model: usize, d_ff: usize, layers: usize, heads: usize) -> serde_json::Value {
    serde_json::json!({
        "model_type": "t5", "vocab_size": 32128, "d_model": d_model, "d_kv": 64, "d_ff": d_ff,
        "num_layers": layers, "num_decoder_layers": layers, "num_heads": heads,
        "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
        "feed_forward_proj": "gated-gelu", "tie_word_embeddings": false, "layer_norm_epsilon": 1e-6,
        "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0
    })
}

#[cfg(test)]
mod tests {
    use super::relative_position_bucket as rb;
    #[test]
    fn buckets_match_hf_examples() {
        // Hand-derived from HF's T5Attention._relative_position_bucket formula (32 buckets, max
        // distance 128); the fixtures check the full tables against transformers end to end.
        // bidirectional: positive distances use the upper half.
        assert_eq!(rb(0, true, 32, 128), 0);
        assert_eq!(rb(1, true, 32, 128), 17);
        assert_eq!(rb(-1, true, 32, 128), 1);
        assert_eq!(rb(-7, true, 32, 128), 7);
        assert_eq!(rb(-8, true, 32, 128), 8);
        assert_eq!(rb(-1000, true, 32, 128), 15);
        // unidirectional (decoder): only the past has buckets; the future collapses to 0.
        assert_eq!(rb(5, false, 32, 128), 0);
        assert_eq!(rb(-15, false, 32, 128), 15);
        assert_eq!(rb(-16, false, 32, 128), 16);
        assert_eq!(rb(-1000, false, 32, 128), 31);
    }

    #[test]
    fn buckets_saturate_at_max_distance() {
        // The CUDA flash kernels tabulate the bias for relative positions in [-d, d] and clamp
        // longer ones (super::bucket_saturation); check that this is exact for every config it
        // admits over a range of sizes, far past d on both sides.
        let mut checked = 0;
        for nb in [2, 3, 4, 5, 6, 8, 12, 16, 32, 33, 64, 128] {
            for md in [
                1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 32, 64, 100, 127, 128, 129, 255, 500, 512,
            ] {
                for bidir in [true, false] {
                    let Some(d) = super::bucket_saturation(nb, md, bidir) else {
                        continue;
                    };
                    let d = d as i64;
                    for r in -(d + 2000)..=(d + 2000) {
                        assert_eq!(
                            rb(r, bidir, nb, md),
                            rb(r.clamp(-d, d), bidir, nb, md),
                            "buckets {nb}, max_distance {md}, bidirectional {bidir}, position {r}"
                        );
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 300, "{checked}");
        // what T5 uses is admitted; degenerate ones are not
        assert_eq!(super::bucket_saturation(32, 128, true), Some(128));
        assert_eq!(super::bucket_saturation(32, 128, false), Some(128));
        assert_eq!(super::bucket_saturation(2, 128, true), None); // no exact buckets
        assert_eq!(super::bucket_saturation(32, 8, true), None); // max_distance <= max_exact
    }
}
