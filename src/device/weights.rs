//! Weights of a device graph by HF name, and the LoRA adapters attached to them.

use super::{Backend, GemmShape, Lora, Out, Weight};
use crate::cpu::{simd::Bf16, WRef};
use crate::Result;
use half::bf16;

/// The checkpoint's bf16 bits as `half::bf16`, the device element type: both are
/// `#[repr(transparent)]` wrappers of a u16, so this is a cast, not a copy.
fn as_half_bf16(b: &[Bf16]) -> &[bf16] {
    // SAFETY: same size, alignment and validity (every u16 is a valid value of both types);
    // the lifetime is the input's.
    unsafe { std::slice::from_raw_parts(b.as_ptr() as *const bf16, b.len()) }
}

/// An int8 weight on the device: its values and per-output-channel scales.
type Int8Weight<B> = (<B as Backend>::Buf<i8>, <B as Backend>::Buf<f32>);

/// Weights on the device by HF name (bf16, or weight-only int8 with per-channel scales for the
/// linear layers when the backend stores int8 at load: `Backend::int8_weights`), the LoRA adapters attached to them, and
/// the helpers the device graphs share.
pub struct DeviceWeights<'g, B: Backend> {
    pub dev: &'g B,
    w: std::collections::HashMap<String, B::Buf<bf16>>,
    q: std::collections::HashMap<String, Int8Weight<B>>,
    /// linear layers adapters may target: HF weight name -> (out, in)
    linears: std::collections::BTreeMap<String, (usize, usize)>,
    /// fused GEMM weights (`insert_fused`): name -> (out, in) of the whole matrix
    fused: std::collections::HashMap<String, (usize, usize)>,
    /// HF weight name of a fused part -> (its fused weight, its first output row there)
    part_of: std::collections::HashMap<String, (String, usize)>,
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

/// The device name of the fused weight of linear layers `parts` under module `prefix` (e.g.
/// "decoder.block.0.layer.0.SelfAttention.q+k+v.weight"); not an HF name, so no checkpoint or
/// adapter can mean it.
pub fn fused_name(prefix: &str, parts: &[&str]) -> String {
    format!("{prefix}.{}.weight", parts.join("+"))
}

/// One part of a fused weight: its HF name and shape [n_i, k].
type FusedPart = (String, Vec<usize>);

/// The groups of linear layers a graph stores fused (`DeviceWeights::load_if_fused`).
pub struct FusedGroups {
    /// fused weight name -> its parts (HF weight name, shape [n_i, k]) in row order
    groups: Vec<(String, Vec<FusedPart>)>,
    /// HF weight name of a part -> (group, index in the group)
    part_of: std::collections::HashMap<String, (usize, usize)>,
}

impl FusedGroups {
    /// `groups`: (module prefix, part module names in row order); `shapes`: the checkpoint's
    /// weights (HF name, shape), which must list every part.
    pub fn new(groups: &[(String, &[&str])], shapes: &[(String, Vec<usize>)]) -> Result<Self> {
        let shape_of: std::collections::HashMap<&str, &Vec<usize>> =
            shapes.iter().map(|(n, s)| (n.as_str(), s)).collect();
        let mut out = FusedGroups {
            groups: Vec::new(),
            part_of: Default::default(),
        };
        for (gi, (prefix, parts)) in groups.iter().enumerate() {
            let mut named = Vec::new();
            for (pi, p) in parts.iter().enumerate() {
                let name = format!("{prefix}.{p}.weight");
                let shape =
                    shape_of
                        .get(name.as_str())
                        .ok_or_else(|| crate::Error::MissingTensor {
                            name: name.clone(),
                            where_: "the model's weight list".into(),
                        })?;
                out.part_of.insert(name.clone(), (gi, pi));
                named.push((name, (*shape).clone()));
            }
            out.groups.push((fused_name(prefix, parts), named));
        }
        Ok(out)
    }
}

/// Per-row adapter slots of one call ([rows], -1: the base model), on the device; `None` where no
/// row uses an adapter (the GEMMs then skip LoRA entirely).
pub type RowAdapters<B> = Option<<B as Backend>::Buf<i32>>;

/// The device form of rows' adapter slots (`RowAdapters`): the slot, or -1 for the base model.
pub fn slot_ids(rows: &[Option<usize>]) -> Vec<i32> {
    rows.iter().map(|s| s.map_or(-1, |s| s as i32)).collect()
}

impl<'g, B: Backend> DeviceWeights<'g, B> {
    pub fn new(dev: &'g B, what: &'static str) -> Self {
        DeviceWeights {
            dev,
            w: Default::default(),
            q: Default::default(),
            linears: Default::default(),
            fused: Default::default(),
            part_of: Default::default(),
            loras: Default::default(),
            slots: 0,
            int8: dev.int8_weights(),
            what,
        }
    }

    /// A linear layer's weight [n, k] (f32, or bf16 as a checkpoint stores it:
    /// `Checkpoint::stored`): int8 (per-channel, `cpu::quantize_rows_int8`) when this load
    /// stores int8, else bf16. Adapters may target it.
    pub fn insert_linear(&mut self, name: &str, data: WRef, n: usize, k: usize) -> Result<()> {
        self.linears.insert(name.to_string(), (n, k));
        self.store_gemm_weight(name, data, n, k)
    }

    /// Upload a GEMM weight [n, k]: int8 with per-row scales when this load stores int8, else
    /// bf16.
    fn store_gemm_weight(&mut self, name: &str, data: WRef, n: usize, k: usize) -> Result<()> {
        if !self.int8 {
            return self.insert(name, data);
        }
        let (q, s) = crate::cpu::quantize_rows_int8_w(data, n, k);
        let dq = self.dev.upload("load", &q)?;
        let ds = self.dev.upload("load", &s)?;
        self.q.insert(name.to_string(), (dq, ds));
        Ok(())
    }

    /// Several linear layers on the same input stored as one weight `fused` [sum n_i, k], their
    /// rows in the order given, so that one GEMM computes all of them (T5's q|k|v and
    /// wi_0|wi_1, Mistral's q|k|v and gate|up: fewer, wider GEMMs per step, and fewer launches
    /// for the host to enqueue). Each part stays an adapter target under its HF name; an
    /// adapter's pairs on the parts are combined into one pair on the fused weight
    /// (`combine_parts`). Int8 scales are per output row, so quantising the stacked matrix equals
    /// quantising each part.
    fn insert_fused(&mut self, fused: &str, parts: &[(&str, WRef, usize)], k: usize) -> Result<()> {
        // each part's `w` is [n, k] (read from the checkpoint with that shape checked); bf16
        // parts stack as bf16 (a bf16 checkpoint is never widened), anything else as f32
        let all_bf16 = parts.iter().all(|p| matches!(p.1, WRef::Bf16(_)));
        let (mut wide, mut narrow) = (Vec::<f32>::new(), Vec::<Bf16>::new());
        let mut row = 0;
        for &(name, w, n) in parts {
            match w {
                WRef::Bf16(b) if all_bf16 => narrow.extend_from_slice(b),
                _ => wide.extend_from_slice(&w.to_f32_vec()),
            }
            self.linears.insert(name.to_string(), (n, k));
            self.part_of
                .insert(name.to_string(), (fused.to_string(), row));
            row += n;
        }
        self.fused.insert(fused.to_string(), (row, k));
        let data = if all_bf16 {
            WRef::Bf16(&narrow)
        } else {
            WRef::F32(&wide)
        };
        self.store_gemm_weight(fused, data, row, k)
    }

    /// When weight `name` is a part of one of `groups`: on the group's first part, read all its
    /// parts from `ck` and store them fused (`insert_fused`); true either way, so the caller
    /// skips the part. False for any other weight.
    pub fn load_if_fused(
        &mut self,
        ck: &crate::checkpoint::Checkpoint,
        groups: &FusedGroups,
        name: &str,
    ) -> Result<bool> {
        let Some(&(gi, pi)) = groups.part_of.get(name) else {
            return Ok(false);
        };
        if pi == 0 {
            let (fused, parts) = &groups.groups[gi];
            let k = parts.first().map_or(0, |p| p.1[1]);
            let mut loaded = Vec::new();
            for (name, shape) in parts {
                loaded.push((name.as_str(), ck.stored(name, &[shape[0], k])?, shape[0]));
            }
            let refs: Vec<(&str, WRef, usize)> = loaded
                .iter()
                .map(|(n, t, rows)| (*n, t.wref(), *rows))
                .collect();
            self.insert_fused(fused, &refs, k)?;
        }
        Ok(true)
    }

    /// (out, in) of the GEMM weight `name` (a linear layer or a fused one).
    fn dims(&self, name: &str) -> Result<(usize, usize)> {
        self.fused
            .get(name)
            .or_else(|| self.linears.get(name))
            .copied()
            .ok_or_else(|| crate::Error::MissingTensor {
                name: name.to_string(),
                where_: format!("{} linear layers", self.what),
            })
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

    /// Upload values under `name` as bf16: bf16 ones as they are (from the checkpoint's map,
    /// no copy on the host), f32 ones rounded to nearest even.
    pub fn insert(&mut self, name: &str, data: WRef) -> Result<()> {
        let dev = match data {
            WRef::Bf16(b) => self.dev.upload("load", as_half_bf16(b))?,
            WRef::F32(f) => {
                use rayon::prelude::*;
                let b: Vec<bf16> = f
                    .par_iter()
                    .with_min_len(1 << 16)
                    .map(|&x| bf16::from_f32(x))
                    .collect();
                self.dev.upload("load", &b)?
            }
        };
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
        // the pairs by GEMM weight: a fused part's goes to its fused weight, at its first row
        let mut per: std::collections::BTreeMap<String, Vec<(usize, crate::models::linear::Lora)>> =
            Default::default();
        for (i, lora) in pairs {
            let name = format!("{}.weight", layers[i].0);
            let (target, row) = match self.part_of.get(&name) {
                Some((f, row)) => (f.clone(), *row),
                None => (name, 0),
            };
            per.entry(target).or_default().push((row, lora));
        }
        for (target, parts) in per {
            let (n, k) = self.dims(&target)?;
            let h = hosts.entry(target).or_default();
            h.resize(slot, None);
            h.push(Some(combine_parts(parts, n, k)));
        }
        // every layer gets slot + 1 slots (a layer this adapter does not target: a zero slot)
        let mut stacked = std::collections::HashMap::new();
        for (name, mut host) in hosts {
            host.resize(slot + 1, None);
            let (n, k) = self.dims(&name)?;
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
        Ok(Some(self.dev.upload("adapter", &slot_ids(rows))?))
    }

    /// `ad` made to hold `rows`' slots: written in place when it has a buffer and still needs
    /// one, so a recorded step reading it stays valid (Ok(false)); else a new one (an adapter
    /// buffer appears or goes: Ok(true), a recording that read the old one is stale).
    pub fn update_row_adapters(
        &self,
        ad: &mut RowAdapters<B>,
        rows: &[Option<usize>],
    ) -> Result<bool> {
        let any = rows.iter().any(Option::is_some);
        match ad {
            Some(buf) if any && B::len(buf) == rows.len() => {
                if let Some(s) = rows.iter().flatten().find(|&&s| s >= self.slots) {
                    return Err(crate::Error::Input(format!(
                        "adapter slot {s} is not loaded ({} loaded)",
                        self.slots
                    )));
                }
                self.dev.write("adapter", &slot_ids(rows), buf)?;
                Ok(false)
            }
            None if !any => Ok(false),
            _ => {
                *ad = self.row_adapters(rows)?;
                Ok(true)
            }
        }
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
            let (n, k) = self.dims(&name)?;
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

    /// y (+)= rms_norm(x; norm weight, eps) · W(name)ᵀ [+ LoRA]: `Backend::gemm_rms`, which may
    /// fuse the norm into the product and leave `hn` unwritten; with a LoRA update on this
    /// weight the norm goes to `hn` first (the shrink reads it).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_rms(
        &self,
        x: &B::Buf<bf16>,
        norm: (&B::Buf<bf16>, f32),
        hn: &mut B::Buf<bf16>,
        name: &str,
        y: Out<B>,
        shape: &GemmShape,
        rows: &RowAdapters<B>,
    ) -> Result<()> {
        if rows.is_some() && self.loras.contains_key(name) {
            self.dev.rms_norm(x, norm.0, hn, shape.m, shape.k, norm.1)?;
            return self.gemm(hn, name, y, shape, rows);
        }
        let w = self.weight(name)?;
        self.dev.gemm_rms(x, norm, hn, w, y, shape, None)
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

/// One adapter's LoRA pairs on the parts of a GEMM weight [n, k], given with each part's first
/// output row, as one pair on the whole weight: A stacks the parts' A [r_i, k] (rank sum r_i), B
/// [n, r] is block-diagonal (part i's B in its rows and its rank columns, zeros elsewhere), so
/// x·Aᵀ·Bᵀ gives each part's rows exactly their own update and the others' rows nothing. The
/// pair keeps the first nonzero scale; a part with another scale has the ratio folded into its B
/// (PEFT uses one alpha / r for all targets unless alpha_pattern / rank_pattern set others). A
/// single pair covering the whole weight is returned as it is.
fn combine_parts(
    mut parts: Vec<(usize, crate::models::linear::Lora)>,
    n: usize,
    k: usize,
) -> crate::models::linear::Lora {
    if parts.len() == 1 && parts[0].0 == 0 && parts[0].1.b.len() == n * parts[0].1.r {
        return parts.remove(0).1;
    }
    parts.sort_by_key(|p| p.0);
    let r: usize = parts.iter().map(|p| p.1.r).sum();
    let scale = parts
        .iter()
        .map(|p| p.1.scale)
        .find(|&s| s != 0.0)
        .unwrap_or(0.0);
    let mut a = Vec::with_capacity(r * k);
    let mut b = vec![0f32; n * r];
    let mut r0 = 0;
    for (row, l) in &parts {
        a.extend_from_slice(&l.a);
        let ratio = if scale == 0.0 { 0.0 } else { l.scale / scale };
        let rows = l.b.len().checked_div(l.r).unwrap_or(0);
        for j in 0..rows {
            for c in 0..l.r {
                b[(row + j) * r + r0 + c] = l.b[j * l.r + c] * ratio;
            }
        }
        r0 += l.r;
    }
    crate::models::linear::Lora { a, b, r, scale }
}

/// `a.b.weight` -> `a.b` (the module names PEFT adapters use).
fn module_name(weight: &str) -> &str {
    weight.strip_suffix(".weight").unwrap_or(weight)
}

#[cfg(test)]
mod tests {
    use super::combine_parts;
    use crate::models::linear::{tests::lora, Lora};

    /// scale · B·A x of one pair, [n]
    fn delta(l: &Lora, x: &[f32], n: usize, k: usize) -> Vec<f32> {
        let t: Vec<f32> = (0..l.r)
            .map(|j| (0..k).map(|c| l.a[j * k + c] * x[c]).sum())
            .collect();
        (0..n)
            .map(|i| l.scale * (0..l.r).map(|j| l.b[i * l.r + j] * t[j]).sum::<f32>())
            .collect()
    }

    /// A pair combined over a fused weight gives every part's rows its own update and the rows
    /// of parts it does not target nothing, whatever the parts' ranks and scales.
    #[test]
    fn combined_pair_updates_each_part_by_its_own_pair() {
        let k = 7;
        // a fused weight q|k|v of rows 6, 4, 4 with pairs on q (rank 3) and v (rank 2, another
        // scale), none on k
        let (q, v) = (lora(1, 3, 6, k, 2.0), lora(2, 2, 4, k, 0.5));
        let c = combine_parts(vec![(10, v.clone()), (0, q.clone())], 14, k);
        assert_eq!((c.r, c.a.len(), c.b.len()), (5, 5 * k, 14 * 5));
        let x: Vec<f32> = (0..k).map(|i| (i as f32 * 0.37).sin()).collect();
        let got = delta(&c, &x, 14, k);
        let mut want = delta(&q, &x, 6, k);
        want.extend([0.0; 4]);
        want.extend(delta(&v, &x, 4, k));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "row {i}: {g} vs {w}"
            );
        }
        // a single pair over the whole weight is kept as it is
        let whole = combine_parts(vec![(0, q.clone())], 6, k);
        assert_eq!((whole.a, whole.b, whole.scale), (q.a, q.b, q.scale));
    }
}
