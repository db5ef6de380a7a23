//! Mistral / Llama-family decoder (Jiang et al. 2023, "Mistral 7B"), mirroring Hugging Face
//! `transformers/models/mistral/modeling_mistral.py` (eager attention), with HF weight names.
//!
//! - RMSNorm (f32), RoPE in HF's rotate-half layout with `rope_theta`, grouped-query attention
//!   (query head h reads KV head h / (heads / kv_heads)), `head_dim` from config when present,
//!   scores scaled by head_dim^-0.5, SwiGLU MLP (down(silu(gate(x)) · up(x))).
//! - `sliding_window`: query at position p sees keys at positions q with p - q < window, in
//!   prefill and in decode steps from the cache (the cache keeps everything; the mask limits it).
//! - Left padding as HF `generate` lays it out: padded keys are masked and position ids are
//!   `cumsum(mask) - 1` (pads get 1); logits at pad positions are meaningless and not compared.

use crate::checkpoint::{Checkpoint, WeightTensor};
use crate::cpu::attention::{attention, AttnShape, ScoreMod, View};
use crate::cpu::{rms_norm, silu};
use crate::error::{Error, Result};
use crate::generate::{beam_parents, PendingLogits};
use crate::models::linear::{HasLinears, Linear};
use serde::Deserialize;
use std::path::Path;

fn d_eps() -> f64 {
    1e-5
}
fn d_theta() -> f64 {
    10000.0
}
fn d_silu() -> String {
    "silu".into()
}

#[derive(Debug, Clone, Deserialize)]
pub struct MistralConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "d_silu")]
    pub hidden_act: String,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub mlp_bias: Option<bool>,
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
}

impl MistralConfig {
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::config(path, e.to_string()))?;
        let mt = v
            .get("model_type")
            .and_then(|x| x.as_str())
            .unwrap_or("mistral");
        match mt {
            "mistral" | "llama" => {}
            "mixtral" => return Err(Error::config(path, "model_type `mixtral` (mixture of experts) is not supported: only dense Mistral/Llama decoders")),
            o => return Err(Error::config(path, format!("model_type `{o}` is not a Mistral/Llama decoder"))),
        }
        if v.get("num_local_experts").is_some() {
            return Err(Error::config(
                path,
                "mixture-of-experts configs (num_local_experts) are not supported",
            ));
        }
        let mut c: MistralConfig =
            serde_json::from_value(v).map_err(|e| Error::config(path, e.to_string()))?;
        if c.hidden_act != "silu" {
            return Err(Error::config(
                path,
                format!("hidden_act `{}` is not supported (silu)", c.hidden_act),
            ));
        }
        if c.attention_bias == Some(true) || c.mlp_bias == Some(true) {
            return Err(Error::config(
                path,
                "attention_bias / mlp_bias = true is not supported",
            ));
        }
        let scaling = c.rope_scaling.clone().or_else(|| c.rope_parameters.clone());
        if let Some(s) = scaling {
            let ty = s
                .get("rope_type")
                .or_else(|| s.get("type"))
                .and_then(|x| x.as_str())
                .unwrap_or("default");
            if ty != "default" {
                return Err(Error::config(
                    path,
                    format!("rope scaling `{ty}` is not supported (only default RoPE)"),
                ));
            }
            if c.rope_theta.is_none() {
                c.rope_theta = s.get("rope_theta").and_then(|x| x.as_f64());
            }
        }
        // Qwen2-style use_sliding_window=false disables the window.
        if c.use_sliding_window == Some(false) {
            c.sliding_window = None;
        }
        for (n, x) in [
            ("hidden_size", c.hidden_size),
            ("num_attention_heads", c.num_attention_heads),
            ("vocab_size", c.vocab_size),
            ("num_hidden_layers", c.num_hidden_layers),
        ] {
            if x == 0 {
                return Err(Error::config(path, format!("`{n}` must be positive")));
            }
        }
        let kv = c.kv_heads();
        if kv == 0 || !c.num_attention_heads.is_multiple_of(kv) {
            return Err(Error::config(
                path,
                format!(
                    "num_attention_heads {} is not a multiple of num_key_value_heads {kv}",
                    c.num_attention_heads
                ),
            ));
        }
        if !c.head_dim().is_multiple_of(2) {
            return Err(Error::config(path, "head_dim must be even for RoPE"));
        }
        Ok(c)
    }
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }
    pub fn theta(&self) -> f64 {
        self.rope_theta.unwrap_or(d_theta())
    }
    pub fn eos_ids(&self) -> Vec<u32> {
        match &self.eos_token_id {
            Some(serde_json::Value::Number(n)) => {
                n.as_u64().map(|x| vec![x as u32]).unwrap_or_default()
            }
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_u64().map(|x| x as u32))
                .collect(),
            _ => vec![2],
        }
    }
}

struct Layer {
    input_ln: WeightTensor, // input_layernorm [hidden]
    q: Linear,              // self_attn.q_proj [heads*hd, hidden]
    k: Linear,              // self_attn.k_proj [kv*hd, hidden]
    v: Linear,              // self_attn.v_proj [kv*hd, hidden]
    o: Linear,              // self_attn.o_proj [hidden, heads*hd]
    post_ln: WeightTensor,  // post_attention_layernorm [hidden]
    gate: Linear,           // mlp.gate_proj [inter, hidden]
    up: Linear,             // mlp.up_proj [inter, hidden]
    down: Linear,           // mlp.down_proj [hidden, inter]
}

pub struct MistralModel {
    pub cfg: MistralConfig,
    embed: WeightTensor, // model.embed_tokens [vocab, hidden]
    layers: Vec<Layer>,
    norm: WeightTensor,      // model.norm [hidden]
    lm_head: Option<Linear>, // lm_head [vocab, hidden] (None: tied to embed_tokens)
    inv_freq: Vec<f32>,      // [head_dim / 2]
}

impl HasLinears for MistralModel {
    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v: Vec<&mut Linear> = Vec::new();
        for l in self.layers.iter_mut() {
            v.extend([
                &mut l.q,
                &mut l.k,
                &mut l.v,
                &mut l.o,
                &mut l.gate,
                &mut l.up,
                &mut l.down,
            ]);
        }
        if let Some(h) = self.lm_head.as_mut() {
            v.push(h);
        }
        v
    }
}

impl MistralModel {
    pub fn load(cfg: MistralConfig, ck: &Checkpoint) -> Result<Self> {
        let (hd, h, kv, hid, inter, v) = (
            cfg.head_dim(),
            cfg.num_attention_heads,
            cfg.kv_heads(),
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.vocab_size,
        );
        // matrices follow the checkpoint's CpuWeights policy (bf16 kept in place by default);
        // norms are f32
        let lin = |n: &str, s: &[usize]| -> Result<Linear> { Ok(Linear::new(ck.matrix(n, s)?)) };
        let embed = ck.matrix("model.embed_tokens.weight", &[v, hid])?;
        let mut layers = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            layers.push(Layer {
                input_ln: ck.f32(&format!("{p}.input_layernorm.weight"), &[hid])?,
                q: lin(&format!("{p}.self_attn.q_proj.weight"), &[h * hd, hid])?,
                k: lin(&format!("{p}.self_attn.k_proj.weight"), &[kv * hd, hid])?,
                v: lin(&format!("{p}.self_attn.v_proj.weight"), &[kv * hd, hid])?,
                o: lin(&format!("{p}.self_attn.o_proj.weight"), &[hid, h * hd])?,
                post_ln: ck.f32(&format!("{p}.post_attention_layernorm.weight"), &[hid])?,
                gate: lin(&format!("{p}.mlp.gate_proj.weight"), &[inter, hid])?,
                up: lin(&format!("{p}.mlp.up_proj.weight"), &[inter, hid])?,
                down: lin(&format!("{p}.mlp.down_proj.weight"), &[hid, inter])?,
            });
        }
        if ck.contains(&format!(
            "model.layers.{}.input_layernorm.weight",
            cfg.num_hidden_layers
        )) {
            return Err(Error::config("config.json", "the checkpoint has more layers than num_hidden_layers: config and weights do not belong together"));
        }
        let norm = ck.f32("model.norm.weight", &[hid])?;
        let lm_head = if cfg.tie_word_embeddings && !ck.contains("lm_head.weight") {
            None
        } else {
            Some(lin("lm_head.weight", &[v, hid])?)
        };
        // HF: inv_freq = 1 / theta ** (arange(0, dim, 2).float() / dim), in f32
        let inv_freq = (0..hd / 2)
            .map(|i| 1.0f32 / (cfg.theta() as f32).powf((2 * i) as f32 / hd as f32))
            .collect();
        Ok(MistralModel {
            cfg,
            embed,
            layers,
            norm,
            lm_head,
            inv_freq,
        })
    }

    pub fn load_dir(dir: &Path) -> Result<Self> {
        let p = dir.join("config.json");
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        let cfg = MistralConfig::from_json_str(&text, &p)?;
        Self::load(cfg, &Checkpoint::open_dir(dir)?)
    }

    pub fn new_state(&self, rows: usize, capacity: usize) -> MistralState {
        let (kv, hd) = (self.cfg.kv_heads(), self.cfg.head_dim());
        let cap = capacity.max(1);
        MistralState {
            rows,
            len: 0,
            cap,
            k: (0..self.layers.len())
                .map(|_| vec![0.0; rows * kv * cap * hd])
                .collect(),
            v: (0..self.layers.len())
                .map(|_| vec![0.0; rows * kv * cap * hd])
                .collect(),
            spare: Vec::new(),
            key_mask: vec![0; rows * cap],
            next_pos: vec![0; rows],
            adapter: None,
            scratch: Scratch::default(),
        }
    }

    fn grow(&self, st: &mut MistralState, need: usize) {
        if need <= st.cap {
            return;
        }
        let (kv, hd) = (self.cfg.kv_heads(), self.cfg.head_dim());
        let nc = need.max(st.cap * 2);
        for buf in st.k.iter_mut().chain(st.v.iter_mut()) {
            let mut nb = vec![0.0f32; st.rows * kv * nc * hd];
            for r in 0..st.rows * kv {
                nb[r * nc * hd..r * nc * hd + st.len * hd]
                    .copy_from_slice(&buf[r * st.cap * hd..r * st.cap * hd + st.len * hd]);
            }
            *buf = nb;
        }
        let mut km = vec![0u8; st.rows * nc];
        for r in 0..st.rows {
            km[r * nc..r * nc + st.len]
                .copy_from_slice(&st.key_mask[r * st.cap..r * st.cap + st.len]);
        }
        st.key_mask = km;
        st.cap = nc;
    }

    /// Row r continues old row `parents[r]`.
    pub fn select_rows(&self, st: &mut MistralState, parents: &[usize]) -> Result<()> {
        if let Some(&bad) = parents.iter().find(|&&p| p >= st.rows) {
            return Err(Error::Input(format!(
                "select_rows: parent {bad} >= {} rows",
                st.rows
            )));
        }
        if parents.len() == st.rows && parents.iter().enumerate().all(|(i, &p)| i == p) {
            return Ok(());
        }
        let (kv, hd, cap) = (self.cfg.kv_heads(), self.cfg.head_dim(), st.cap);
        for buf in st.k.iter_mut().chain(st.v.iter_mut()) {
            crate::cpu::gather_cache_rows(buf, &mut st.spare, parents, (kv, cap, hd), st.len);
        }
        st.key_mask = parents
            .iter()
            .flat_map(|&p| st.key_mask[p * cap..(p + 1) * cap].to_vec())
            .collect();
        st.next_pos = parents.iter().map(|&p| st.next_pos[p]).collect();
        st.rows = parents.len();
        Ok(())
    }

    /// Feed `t_new` tokens per row (`ids` [rows, t_new], `mask` same shape: 0 = left padding) and
    /// append them to the cache. Position ids continue each row's count of real tokens.
    /// Writes logits for all new positions (`all`) or only the last one.
    pub fn forward(
        &self,
        st: &mut MistralState,
        ids: &[u32],
        mask: &[u8],
        t_new: usize,
        all: bool,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        let c = &self.cfg;
        let (hid, hd, h, kv, inter, vsz) = (
            c.hidden_size,
            c.head_dim(),
            c.num_attention_heads,
            c.kv_heads(),
            c.intermediate_size,
            c.vocab_size,
        );
        let rows = st.rows;
        if ids.len() != rows * t_new || mask.len() != ids.len() || t_new == 0 {
            return Err(Error::Input(format!(
                "forward: {} ids / {} mask for {rows} rows × {t_new}",
                ids.len(),
                mask.len()
            )));
        }
        let p0 = st.len;
        self.grow(st, p0 + t_new);
        let cap = st.cap;
        let m = rows * t_new;
        let eps = c.rms_norm_eps as f32;
        let ad = st.adapter;
        let mut s = std::mem::take(&mut st.scratch);
        s.x.resize(m * hid, 0.0);
        s.n.resize(m * hid, 0.0);
        s.q.resize(m * h * hd, 0.0);
        s.k.resize(m * kv * hd, 0.0);
        s.v.resize(m * kv * hd, 0.0);
        s.ctx.resize(m * h * hd, 0.0);
        s.g.resize(m * inter, 0.0);
        s.u.resize(m * inter, 0.0);
        let table = self.embed.wref();
        for (i, &t) in ids.iter().enumerate() {
            let t = t as usize;
            if t >= vsz {
                return Err(Error::Input(format!(
                    "token id {t} is outside the vocabulary (size {vsz})"
                )));
            }
            table.row_into(t, hid, &mut s.x[i * hid..(i + 1) * hid]);
        }
        // positions (HF: cumsum(mask) - 1, pads -> 1) and the key mask for the new slots
        s.pos.clear();
        for r in 0..rows {
            for t in 0..t_new {
                let real = mask[r * t_new + t] != 0;
                st.key_mask[r * cap + p0 + t] = real as u8;
                if real {
                    s.pos.push(st.next_pos[r]);
                    st.next_pos[r] += 1;
                } else {
                    s.pos.push(1);
                }
            }
        }
        let amod = DecMod {
            key_mask: &st.key_mask,
            cap,
            p0,
            window: c.sliding_window,
            scale: (hd as f32).powf(-0.5),
        };
        let shape = AttnShape {
            batch: rows,
            heads: h,
            kv_heads: kv,
            tq: t_new,
            tk: p0 + t_new,
            dk: hd,
        };
        let qview = View {
            sb: t_new * h * hd,
            sh: hd,
            st: h * hd,
        };
        let cview = View {
            sb: kv * cap * hd,
            sh: cap * hd,
            st: hd,
        };
        for (li, l) in self.layers.iter().enumerate() {
            rms_norm(&s.x, l.input_ln.as_slice(), eps, &mut s.n);
            l.q.fwd(&s.n, m, &mut s.q, false, ad, &mut s.tmp);
            l.k.fwd(&s.n, m, &mut s.k, false, ad, &mut s.tmp);
            l.v.fwd(&s.n, m, &mut s.v, false, ad, &mut s.tmp);
            rope(&mut s.q, &s.pos, h, hd, &self.inv_freq);
            rope(&mut s.k, &s.pos, kv, hd, &self.inv_freq);
            let (kc, vc) = (&mut st.k[li], &mut st.v[li]);
            for r in 0..rows {
                for t in 0..t_new {
                    for hh in 0..kv {
                        let src = (r * t_new + t) * kv * hd + hh * hd;
                        let dst = ((r * kv + hh) * cap + p0 + t) * hd;
                        kc[dst..dst + hd].copy_from_slice(&s.k[src..src + hd]);
                        vc[dst..dst + hd].copy_from_slice(&s.v[src..src + hd]);
                    }
                }
            }
            attention(
                &shape,
                &s.q,
                qview,
                kc,
                cview,
                vc,
                cview,
                &|b| b,
                &amod,
                &mut s.ctx,
                &mut s.sc,
            );
            l.o.fwd(&s.ctx, m, &mut s.x, true, ad, &mut s.tmp);
            rms_norm(&s.x, l.post_ln.as_slice(), eps, &mut s.n);
            l.gate.fwd(&s.n, m, &mut s.g, false, ad, &mut s.tmp);
            l.up.fwd(&s.n, m, &mut s.u, false, ad, &mut s.tmp);
            s.g.iter_mut()
                .zip(&s.u)
                .for_each(|(g, &u)| *g = silu(*g) * u);
            l.down.fwd(&s.g, m, &mut s.x, true, ad, &mut s.tmp);
        }
        rms_norm(&s.x, self.norm.as_slice(), eps, &mut s.n);
        let (hrows, hin) = crate::cpu::head_rows(&s.n, rows, t_new, hid, all, &mut s.last);
        logits.resize(hrows * vsz, 0.0);
        match &self.lm_head {
            Some(hd_lin) => hd_lin.fwd(hin, hrows, logits, false, ad, &mut s.tmp),
            None => crate::cpu::matmul_w(hin, hrows, hid, self.embed.wref(), vsz, logits, false),
        }
        st.len = p0 + t_new;
        st.scratch = s;
        Ok(())
    }
}

/// RoPE, HF rotate-half layout: for each head, pairs (i, i + d/2) rotate by pos·inv_freq[i].
pub fn rope(x: &mut [f32], pos: &[usize], heads: usize, hd: usize, inv_freq: &[f32]) {
    let half = hd / 2;
    for (ti, &p) in pos.iter().enumerate() {
        for h in 0..heads {
            let base = (ti * heads + h) * hd;
            for i in 0..half {
                // f32 like HF: freqs = inv_freq · position (f32 matmul), then cos/sin in f32
                let ang = inv_freq[i] * p as f32;
                let (sn, cs) = ang.sin_cos();
                let (a, b) = (x[base + i], x[base + i + half]);
                x[base + i] = a * cs - b * sn;
                x[base + i + half] = b * cs + a * sn;
            }
        }
    }
}

struct DecMod<'a> {
    key_mask: &'a [u8],
    cap: usize,
    p0: usize,
    window: Option<usize>,
    scale: f32,
}
impl ScoreMod for DecMod<'_> {
    #[inline]
    fn allowed(&self, b: usize, i: usize, j: usize) -> bool {
        let qpos = self.p0 + i;
        // causal, padding, and the sliding window over cache slots (slots = absolute positions
        // for every row since all rows advance together)
        j <= qpos
            && self.key_mask[b * self.cap + j] != 0
            && self.window.map(|w| qpos - j < w).unwrap_or(true)
    }
    fn scale(&self) -> f32 {
        self.scale
    }
}

#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    n: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    ctx: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    sc: Vec<f32>,
    tmp: Vec<f32>,
    last: Vec<f32>,
    pos: Vec<usize>,
}

/// KV cache and per-row positions for a batch of sequences.
pub struct MistralState {
    pub rows: usize,
    pub len: usize,
    cap: usize,
    k: Vec<Vec<f32>>, // per layer [rows, kv, cap, hd]
    v: Vec<Vec<f32>>,
    /// the buffer beam reordering gathers into (see `cpu::gather_cache_rows`)
    spare: Vec<f32>,
    key_mask: Vec<u8>, // [rows, cap]
    next_pos: Vec<usize>,
    /// adapter slot used by this request (None: base model)
    pub adapter: Option<usize>,
    scratch: Scratch,
}

/// The decoder as a `Stepper`: construction runs the prefill; the first `step` returns its logits.
pub struct MistralStepper<'a> {
    pub model: &'a MistralModel,
    pub state: MistralState,
    pending: PendingLogits,
}

impl<'a> MistralStepper<'a> {
    /// `prompts` are left-padded to one length with `mask`; `beams` copies each row for beam search.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: &'a MistralModel,
        ids: &[u32],
        mask: &[u8],
        batch: usize,
        seq: usize,
        beams: usize,
        capacity: usize,
        adapter: Option<usize>,
    ) -> Result<Self> {
        let mut state = model.new_state(batch, seq + capacity);
        state.adapter = adapter;
        let mut logits = Vec::new();
        model.forward(&mut state, ids, mask, seq, false, &mut logits)?;
        let mut pending = PendingLogits::new(logits, model.cfg.vocab_size);
        if beams > 1 {
            let parents = beam_parents(batch, beams);
            model.select_rows(&mut state, &parents)?;
            pending.reorder(&parents);
        }
        Ok(MistralStepper {
            model,
            state,
            pending,
        })
    }
}

impl crate::generate::Stepper for MistralStepper<'_> {
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
    fn step_many(&mut self, tokens: &[u32], logits: &mut Vec<f32>) -> Result<bool> {
        if self.state.rows != 1 || self.pending.is_pending() {
            return Ok(false);
        }
        let mask = vec![1u8; tokens.len()];
        self.model
            .forward(&mut self.state, tokens, &mask, tokens.len(), false, logits)?;
        Ok(true)
    }
}
