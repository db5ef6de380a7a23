//! Weights of a device graph by HF name, and the LoRA adapters attached to them.

use super::{Backend, GemmShape, Lora, Out, Weight};
use crate::Result;
use half::bf16;

/// Weights on the device by HF name (bf16, or weight-only int8 with per-channel scales for the
/// linear layers when the backend stores int8 at load: `Backend::int8_weights`), the LoRA adapters attached to them, and
/// the helpers the device graphs share.
pub struct DeviceWeights<'g, B: Backend> {
    pub dev: &'g B,
    w: std::collections::HashMap<String, B::Buf<bf16>>,
    q: std::collections::HashMap<String, (B::Buf<i8>, B::Buf<f32>)>,
    /// linear layers adapters may target: weight name -> (out, in)
    linears: std::collections::BTreeMap<String, (usize, usize)>,
    /// weight name -> the LoRA pairs of every adapter slot, stacked for the SGMV kernels
    loras: std::collections::HashMap<String, DeviceLora<B>>,
    /// adapter slots attached so far (every `DeviceLora` has this many slots)
    slots: usize,
    int8: bool,
    /// which graph, for error messages
    what: &'static str,
}

/// One linear layer's LoRA pairs over all adapter slots, as `lora_shrink` and the GEMM epilogue
/// read them: A [slots, r, in], B [slots, out, r], scale [slots], with r the largest rank of any
/// slot (smaller ranks and slots that do not target this layer are zero-padded, which adds
/// exactly 0). The host copies let a later slot restack them.
struct DeviceLora<B: Backend> {
    host: Vec<Option<crate::models::linear::Lora>>,
    r: usize,
    a: B::Buf<bf16>,
    b: B::Buf<bf16>,
    scale: B::Buf<f32>,
}

/// Per-row adapter slots of one call ([rows], -1: the base model), on the device; `None` where no
/// row uses an adapter (the GEMMs then skip LoRA entirely).
pub type RowAdapters<B> = Option<<B as Backend>::Buf<i32>>;

impl<'g, B: Backend> DeviceWeights<'g, B> {
    pub fn new(dev: &'g B, what: &'static str) -> Self {
        DeviceWeights {
            dev,
            w: Default::default(),
            q: Default::default(),
            linears: Default::default(),
            loras: Default::default(),
            slots: 0,
            int8: dev.int8_weights(),
            what,
        }
    }

    /// A linear layer's weight [n, k]: int8 (per-channel, `cpu::quantize_rows_int8`) when this
    /// load stores int8, else bf16. Adapters may target it.
    pub fn insert_linear(&mut self, name: &str, data: &[f32], n: usize, k: usize) -> Result<()> {
        self.linears.insert(name.to_string(), (n, k));
        if !self.int8 {
            return self.insert_f32(name, data);
        }
        let (q, s) = crate::cpu::quantize_rows_int8(data, n, k);
        let dq = self.dev.upload("load", &q)?;
        let ds = self.dev.upload("load", &s)?;
        self.q.insert(name.to_string(), (dq, ds));
        Ok(())
    }

    /// Let adapters target `name` [n, k], a bf16 weight kept out of int8 (an untied LM head, as
    /// PEFT may target `lm_head`).
    pub fn mark_linear(&mut self, name: &str, n: usize, k: usize) {
        self.linears.insert(name.to_string(), (n, k));
    }

    /// The GEMM weight stored under `name`, whichever format.
    pub fn weight(&self, name: &str) -> Result<Weight<'_, B>> {
        if let Some((w, scale)) = self.q.get(name) {
            return Ok(Weight::Int8 { w, scale });
        }
        Ok(Weight::Bf16(self.get(name)?))
    }

    /// Round f32 values to bf16 and upload them under `name`.
    pub fn insert_f32(&mut self, name: &str, data: &[f32]) -> Result<()> {
        let b: Vec<bf16> = data.iter().map(|&x| bf16::from_f32(x)).collect();
        let dev = self.dev.upload("load", &b)?;
        self.w.insert(name.to_string(), dev);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Result<&B::Buf<bf16>> {
        self.w.get(name).ok_or_else(|| crate::Error::MissingTensor {
            name: name.to_string(),
            where_: format!("{} weights on the device", self.what),
        })
    }

    /// An activation buffer the next op overwrites completely (`Backend::scratch`).
    pub fn buf(&self, n: usize) -> Result<B::Buf<bf16>> {
        self.dev.scratch::<bf16>(self.what, n)
    }

    /// Attach a PEFT adapter in the next slot (unmerged); returns the slot. Checked against the
    /// linear layers like on the CPU (`LoraAdapter::resolve`); nothing changes on an error.
    pub fn attach_adapter(
        &mut self,
        adapter: &crate::models::adapter::LoraAdapter,
    ) -> Result<usize> {
        let layers: Vec<(String, usize, usize)> = self
            .linears
            .iter()
            .map(|(name, &(n, k))| (module_name(name).to_string(), n, k))
            .collect();
        let pairs = adapter.resolve(&layers)?;
        let slot = self.slots;
        let mut hosts: std::collections::HashMap<String, Vec<Option<crate::models::linear::Lora>>> =
            self.loras
                .iter()
                .map(|(n, l)| (n.clone(), l.host.clone()))
                .collect();
        for (i, lora) in pairs {
            let h = hosts.entry(format!("{}.weight", layers[i].0)).or_default();
            h.resize(slot, None);
            h.push(Some(lora));
        }
        // every layer gets slot + 1 slots (a layer this adapter does not target: a zero slot)
        let mut stacked = std::collections::HashMap::new();
        for (name, mut host) in hosts {
            host.resize(slot + 1, None);
            let (n, k) = self.linears[&name];
            stacked.insert(name, self.stack_lora(host, n, k)?);
        }
        self.loras = stacked;
        self.slots = slot + 1;
        Ok(slot)
    }

    /// Upload one layer's LoRA pairs of all slots (`linear::stack_loras`: rank-padded) as bf16.
    fn stack_lora(
        &self,
        host: Vec<Option<crate::models::linear::Lora>>,
        n: usize,
        k: usize,
    ) -> Result<DeviceLora<B>> {
        let st = crate::models::linear::stack_loras(&host, n, k);
        let b16 = |v: &[f32]| v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>();
        Ok(DeviceLora {
            host,
            r: st.r,
            a: self.dev.upload("adapter", &b16(&st.a))?,
            b: self.dev.upload("adapter", &b16(&st.b))?,
            scale: self.dev.upload("adapter", &st.scale)?,
        })
    }

    /// The device form of per-row adapter slots (`None`: base model), after checking each slot
    /// exists; `None` when no row uses an adapter.
    pub fn row_adapters(&self, rows: &[Option<usize>]) -> Result<RowAdapters<B>> {
        if rows.iter().all(Option::is_none) {
            return Ok(None);
        }
        if let Some(s) = rows.iter().flatten().find(|&&s| s >= self.slots) {
            return Err(crate::Error::Input(format!(
                "adapter slot {s} is not loaded ({} loaded)",
                self.slots
            )));
        }
        let ids: Vec<i32> = rows.iter().map(|s| s.map_or(-1, |s| s as i32)).collect();
        Ok(Some(self.dev.upload("adapter", &ids)?))
    }

    /// Merge adapter `slot` into the bf16 weights on the device (W += scale·B·A, one GEMM per
    /// layer, rounded to bf16 like a merged bf16 checkpoint) and clear the slot. Int8 weights
    /// were quantised at load, so they cannot take a merge: an error, before anything changes.
    pub fn merge_adapter(&mut self, slot: usize) -> Result<()> {
        if slot >= self.slots {
            return Err(crate::Error::Input(format!(
                "adapter slot {slot} is not loaded"
            )));
        }
        let targets: Vec<String> = self
            .loras
            .iter()
            .filter(|(_, l)| l.host[slot].is_some())
            .map(|(n, _)| n.clone())
            .collect();
        if targets.iter().any(|n| self.q.contains_key(n)) {
            return Err(crate::Error::Unsupported(
                "merging an adapter into int8 GPU weights (they were quantised at load): apply it \
                 unmerged, or use --gpu-weights bf16"
                    .into(),
            ));
        }
        for name in targets {
            let (n, k) = self.linears[&name];
            let Some(l) = self.loras[&name].host[slot].clone() else {
                continue;
            };
            // x = scale·B [n, r], w = Aᵀ [k, r]: W [n, k] += x · wᵀ
            let (sb, at) = l.merge_operands(k);
            let b16 = |v: Vec<f32>| v.into_iter().map(bf16::from_f32).collect::<Vec<_>>();
            let x = self.dev.upload("merge", &b16(sb))?;
            let wt = self.dev.upload("merge", &b16(at))?;
            let w = self
                .w
                .get_mut(&name)
                .ok_or_else(|| crate::Error::MissingTensor {
                    name: name.clone(),
                    where_: format!("{} weights on the device", self.what),
                })?;
            self.dev.gemm(
                &x,
                Weight::Bf16(&wt),
                Out::Bf16(w),
                &GemmShape::new(n, k, l.r, true),
                None,
            )?;
            let mut host = self.loras[&name].host.clone();
            host[slot] = None;
            let restacked = self.stack_lora(host, n, k)?;
            self.loras.insert(name, restacked);
        }
        Ok(())
    }

    /// y (+)= x · W(name)ᵀ [+ the LoRA of each row's adapter] for `shape` (m rows of x).
    pub fn gemm(
        &self,
        x: &B::Buf<bf16>,
        name: &str,
        y: Out<B>,
        shape: &GemmShape,
        rows: &RowAdapters<B>,
    ) -> Result<()> {
        let w = self.weight(name)?;
        let (Some(ids), Some(l)) = (rows, self.loras.get(name)) else {
            return self.dev.gemm(x, w, y, shape, None);
        };
        // t = x · Aᵀ per row's slot (f32 [m, r]), then the GEMM adds t · B[slot]ᵀ · scale[slot]
        let mut t = self.dev.scratch::<f32>("lora", shape.m * l.r)?;
        self.dev
            .lora_shrink(x, &l.a, ids, &mut t, shape.m, shape.k, l.r, self.slots)?;
        let lora = Lora {
            t: &t,
            b: &l.b,
            ids,
            scale: &l.scale,
            r: l.r,
            adapters: self.slots,
        };
        self.dev.gemm(x, w, y, shape, Some(&lora))
    }

    /// out (+)= x · W(name)ᵀ [+ LoRA] with shapes (m, n, k): x [m, k] -> out [m, n].
    pub fn linear(
        &self,
        x: &B::Buf<bf16>,
        name: &str,
        (m, n, k): (usize, usize, usize),
        out: &mut B::Buf<bf16>,
        accumulate: bool,
        rows: &RowAdapters<B>,
    ) -> Result<()> {
        self.gemm(
            x,
            name,
            Out::Bf16(out),
            &GemmShape::new(m, n, k, accumulate),
            rows,
        )
    }
}

/// `a.b.weight` -> `a.b` (the module names PEFT adapters use).
fn module_name(weight: &str) -> &str {
    weight.strip_suffix(".weight").unwrap_or(weight)
}
