//! `nn.Linear` without bias (y = x·Wᵀ) as T5 and Mistral use it, with optional PEFT LoRA
//! adapters attached unmerged: y = x·Wᵀ + scale·(x·Aᵀ)·Bᵀ, the base weight untouched (the form the
//! CUDA backend fuses, and the one that lets several adapters share one base model). Adapters
//! live in slots; a request names its slot (or none).

use crate::checkpoint::WeightTensor;
use crate::cpu::matmul_wt;

/// One LoRA pair for one linear layer.
#[derive(Clone)]
pub struct Lora {
    pub a: Vec<f32>, // lora_A [r, in]
    pub b: Vec<f32>, // lora_B [out, r]
    pub r: usize,
    pub scale: f32,
}

#[derive(Clone)]
pub struct Linear {
    /// HF module name (weight name without `.weight`), e.g. `model.layers.0.self_attn.q_proj`
    pub name: String,
    pub w: WeightTensor, // [out, in]
    pub out_f: usize,
    pub in_f: usize,
    /// adapter slot -> LoRA pair (None: this adapter does not target this layer)
    pub loras: Vec<Option<Lora>>,
}

impl Linear {
    pub fn new(w: WeightTensor) -> Self {
        let (out_f, in_f) = (w.shape[0], w.shape.get(1).copied().unwrap_or(1));
        let name = w
            .name
            .strip_suffix(".weight")
            .unwrap_or(&w.name)
            .to_string();
        Linear {
            name,
            w,
            out_f,
            in_f,
            loras: Vec::new(),
        }
    }

    /// out[m, out_f] (+)= x[m, in_f]·Wᵀ (+ LoRA of `adapter`). `tmp` is scratch.
    #[inline]
    pub fn fwd(
        &self,
        x: &[f32],
        m: usize,
        out: &mut [f32],
        accumulate: bool,
        adapter: Option<usize>,
        tmp: &mut Vec<f32>,
    ) {
        crate::cpu::matmul_w(x, m, self.in_f, self.w.wref(), self.out_f, out, accumulate);
        if let Some(Some(l)) = adapter.and_then(|a| self.loras.get(a)) {
            // (x·Aᵀ) [m, r], scaled, then ·Bᵀ accumulated into out
            tmp.resize(m * l.r, 0.0);
            matmul_wt(x, m, self.in_f, &l.a, l.r, tmp, false);
            tmp.iter_mut().for_each(|v| *v *= l.scale);
            matmul_wt(tmp, m, l.r, &l.b, self.out_f, out, true);
        }
    }

    /// W' = W + scale·B·A for adapter `slot` (merged mode); the LoRA pair is then dropped.
    pub fn merge(&mut self, slot: usize) {
        let Some(Some(l)) = self.loras.get(slot).cloned() else {
            return;
        };
        // merged weights are f32 whatever the storage was (W + scale·BA is not a bf16 value)
        let mut w = self.w.wref().to_f32_vec();
        for o in 0..self.out_f {
            for rr in 0..l.r {
                let bv = l.b[o * l.r + rr] * l.scale;
                if bv == 0.0 {
                    continue;
                }
                let arow = &l.a[rr * self.in_f..(rr + 1) * self.in_f];
                let wrow = &mut w[o * self.in_f..(o + 1) * self.in_f];
                for (wv, av) in wrow.iter_mut().zip(arow) {
                    *wv += bv * av;
                }
            }
        }
        self.w = WeightTensor::from_vec(&self.w.name, self.w.shape.clone(), w);
        self.loras[slot] = None;
    }
}

/// Anything that owns linear layers, so adapters can be attached generically.
pub trait HasLinears {
    fn linears_mut(&mut self) -> Vec<&mut Linear>;
}
