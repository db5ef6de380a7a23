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

/// One layer's LoRA pairs over all adapter slots, stacked as the CUDA SGMV kernels read them
/// (`lora_shrink`: A [slots, r, in]; the GEMM epilogue: B [slots, out, r], scale [slots]), with
/// `r` the largest rank of any slot. Smaller ranks are zero-padded (extra rows of A and columns
/// of B), and a slot that does not target this layer is all zeros, so each adds exactly 0.
pub struct StackedLora {
    pub r: usize,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub scale: Vec<f32>,
}

pub fn stack_loras(slots: &[Option<Lora>], out_f: usize, in_f: usize) -> StackedLora {
    let n = slots.len();
    let r = slots
        .iter()
        .flatten()
        .map(|l| l.r)
        .max()
        .unwrap_or(1)
        .max(1);
    let mut a = vec![0f32; n * r * in_f];
    let mut b = vec![0f32; n * out_f * r];
    let mut scale = vec![0f32; n];
    for (s, l) in slots.iter().enumerate() {
        let Some(l) = l else { continue };
        scale[s] = l.scale;
        a[s * r * in_f..(s * r + l.r) * in_f].copy_from_slice(&l.a);
        for o in 0..out_f {
            let dst = (s * out_f + o) * r;
            b[dst..dst + l.r].copy_from_slice(&l.b[o * l.r..(o + 1) * l.r]);
        }
    }
    StackedLora { r, a, b, scale }
}

impl Lora {
    /// The operands of the merge W [out, in] += x·wᵀ as one GEMM in the y = x·wᵀ convention:
    /// x = scale·B [out, r] and w = Aᵀ [in, r] (the CUDA backend merges with its GEMM kernel).
    pub fn merge_operands(&self, in_f: usize) -> (Vec<f32>, Vec<f32>) {
        let sb = self.b.iter().map(|&v| v * self.scale).collect();
        let mut at = vec![0f32; in_f * self.r];
        for j in 0..self.r {
            for c in 0..in_f {
                at[c * self.r + j] = self.a[j * in_f + c];
            }
        }
        (sb, at)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A LoRA pair of rank r on a layer [out_f, in_f] with values in [-1, 1) from `seed`.
    pub(crate) fn lora(seed: u32, r: usize, out_f: usize, in_f: usize, scale: f32) -> Lora {
        let v = |n: usize, k: u32| -> Vec<f32> {
            (0..n)
                .map(|i| {
                    (((i as u32).wrapping_mul(2654435761) ^ (seed * 97 + k)) % 1000) as f32 / 500.0
                        - 1.0
                })
                .collect()
        };
        Lora {
            a: v(r * in_f, 1),
            b: v(out_f * r, 2),
            r,
            scale,
        }
    }

    /// What the kernels compute from a `StackedLora`, in f32:
    /// y[m, out] += scale[id]·(x[m]·A[id]ᵀ)·B[id]ᵀ for each row's slot id (None: nothing).
    fn apply(
        st: &StackedLora,
        x: &[f32],
        ids: &[Option<usize>],
        in_f: usize,
        out_f: usize,
        y: &mut [f32],
    ) {
        let r = st.r;
        for (m, id) in ids.iter().enumerate() {
            let Some(s) = *id else { continue };
            let xr = &x[m * in_f..(m + 1) * in_f];
            let t: Vec<f32> = (0..r)
                .map(|j| {
                    let ar = &st.a[(s * r + j) * in_f..(s * r + j + 1) * in_f];
                    ar.iter().zip(xr).map(|(p, q)| p * q).sum()
                })
                .collect();
            for o in 0..out_f {
                let br = &st.b[(s * out_f + o) * r..(s * out_f + o + 1) * r];
                let v: f32 = br.iter().zip(&t).map(|(p, q)| p * q).sum();
                y[m * out_f + o] += v * st.scale[s];
            }
        }
    }

    /// The stacked, rank-padded layout gives each row exactly its own adapter's unmerged LoRA
    /// (`Linear::fwd` per row), zero for the base model and for a slot without this layer.
    #[test]
    fn stacked_slots_match_each_rows_own_adapter() {
        let (out_f, in_f) = (7, 5);
        let slots = vec![
            Some(lora(1, 2, out_f, in_f, 0.5)),
            None,
            Some(lora(2, 4, out_f, in_f, 2.0)),
        ];
        let st = stack_loras(&slots, out_f, in_f);
        assert_eq!(st.r, 4);
        let ids = [Some(2), None, Some(0), Some(1), Some(2)];
        let x: Vec<f32> = (0..ids.len() * in_f)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let mut got = vec![0f32; ids.len() * out_f];
        apply(&st, &x, &ids, in_f, out_f, &mut got);
        let mut lin = Linear::new(crate::checkpoint::WeightTensor::from_vec(
            "l.weight",
            vec![out_f, in_f],
            vec![0.0; out_f * in_f],
        ));
        lin.loras = slots.clone();
        for (m, id) in ids.iter().enumerate() {
            let mut want = vec![0f32; out_f];
            lin.fwd(
                &x[m * in_f..(m + 1) * in_f],
                1,
                &mut want,
                false,
                *id,
                &mut Vec::new(),
            );
            for (g, w) in got[m * out_f..(m + 1) * out_f].iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "row {m}: {g} vs {w}"
                );
            }
        }
        assert!(got[out_f..2 * out_f].iter().all(|&v| v == 0.0));
    }

    /// x·wᵀ of the merge operands is scale·B·A, the update `Linear::merge` adds.
    #[test]
    fn merge_operands_give_the_merged_update() {
        let (out_f, in_f) = (6, 9);
        let l = lora(3, 3, out_f, in_f, 1.5);
        let (sb, at) = l.merge_operands(in_f);
        let mut delta = vec![0f32; out_f * in_f];
        crate::cpu::matmul_wt(&sb, out_f, l.r, &at[..], in_f, &mut delta, false);
        let mut lin = Linear::new(crate::checkpoint::WeightTensor::from_vec(
            "l.weight",
            vec![out_f, in_f],
            vec![0.0; out_f * in_f],
        ));
        lin.loras = vec![Some(l)];
        lin.merge(0);
        let merged = lin.w.wref().to_f32_vec();
        for (d, m) in delta.iter().zip(&merged) {
            assert!((d - m).abs() <= 1e-5 * (1.0 + m.abs()), "{d} vs {m}");
        }
    }
}
