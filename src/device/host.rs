//! The device ops on the host: f32 arithmetic with bf16 rounding exactly where the kernels round
//! (norm and activation intermediates, every bf16 store), buffers as plain vectors. Fresh
//! scratch buffers are filled with NaN (`Elem::poison`), so a graph that reads an element
//! nothing wrote gets NaN logits and fails its checks, as the GPU checks do with
//! `JOBX_CUDA_POISON=1`. Written for checking the device graphs on machines without a GPU, not
//! for speed (single-threaded loops, fine for the tiny fixture models).

use super::{check, ActKind, AttnCall, Backend, Elem, GemmShape, Lora, Out, Rows, View, Weight};
use crate::{Error, Result};
use half::bf16;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Default)]
pub struct HostBackend {
    /// store linear layers as weight-only int8 in graphs loaded from now on
    pub int8_weights: AtomicBool,
    /// keep T5 cross-attention K/V in int8 in encodings made from now on
    pub int8_cross_kv: AtomicBool,
    /// decode steppers take the layout of recorded steps (`Backend::graphs`; nothing is
    /// recorded here: `capture` runs the ops at once), so tests check that layout on the host
    pub graphs: AtomicBool,
}

impl HostBackend {
    pub fn new() -> Self {
        Self::default()
    }
}

fn err(op: &'static str, msg: impl Into<String>) -> Error {
    check::err::<HostBackend>(op, msg)
}

/// Round to bf16 and back (round to nearest even, like __float2bfloat16_rn).
fn rb(x: f32) -> f32 {
    bf16::from_f32(x).to_f32()
}

impl Backend for HostBackend {
    type Buf<T: Elem> = Vec<T>;
    const KIND: &'static str = "host";

    fn len<T: Elem>(buf: &Vec<T>) -> usize {
        buf.len()
    }

    fn name(&self) -> String {
        "host (bf16 emulation of the CUDA kernels)".into()
    }
    fn int8_weights(&self) -> bool {
        self.int8_weights.load(Ordering::Relaxed)
    }
    fn int8_cross_kv(&self) -> bool {
        self.int8_cross_kv.load(Ordering::Relaxed)
    }
    fn scratch<T: Elem>(&self, _op: &'static str, n: usize) -> Result<Vec<T>> {
        Ok(vec![T::poison(); n.max(1)])
    }
    fn zeros<T: Elem>(&self, _op: &'static str, n: usize) -> Result<Vec<T>> {
        Ok(vec![T::default(); n.max(1)])
    }
    fn upload<T: Elem>(&self, _op: &'static str, host: &[T]) -> Result<Vec<T>> {
        Ok(host.to_vec())
    }
    fn download<T: Elem>(&self, _op: &'static str, buf: &Vec<T>) -> Result<Vec<T>> {
        Ok(buf.clone())
    }
    fn write<T: Elem>(&self, op: &'static str, host: &[T], dst: &mut Vec<T>) -> Result<()> {
        check::need::<Self, T>(op, "destination", dst, Some(host.len()))?;
        dst[..host.len()].copy_from_slice(host);
        Ok(())
    }

    type Graph = std::convert::Infallible;
    fn graphs(&self) -> bool {
        self.graphs.load(Ordering::Relaxed)
    }
    fn capture(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Option<Self::Graph>> {
        f().map(|()| None)
    }
    fn launch_graph(&self, g: &Self::Graph) -> Result<()> {
        match *g {}
    }
    fn copy<T: Elem>(
        &self,
        op: &'static str,
        src: &Vec<T>,
        src_off: usize,
        dst: &mut Vec<T>,
        dst_off: usize,
        len: usize,
    ) -> Result<()> {
        check::copy::<Self, T>(op, src, src_off, dst, dst_off, len)?;
        dst[dst_off..dst_off + len].copy_from_slice(&src[src_off..src_off + len]);
        Ok(())
    }

    fn copy_rows(
        &self,
        op: &'static str,
        src: (&Vec<bf16>, Rows),
        dst: (&mut Vec<bf16>, Rows),
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        check::copy_rows::<Self>(op, src, (&*dst.0, dst.1), rows, cols)?;
        for r in 0..rows {
            let (s, d) = (src.1.off + r * src.1.ld, dst.1.off + r * dst.1.ld);
            dst.0[d..d + cols].copy_from_slice(&src.0[s..s + cols]);
        }
        Ok(())
    }

    fn copy_rows_at(
        &self,
        op: &'static str,
        src: (&Vec<bf16>, Rows),
        dst: (&mut Vec<bf16>, Rows),
        rows: usize,
        cols: usize,
        pos: &Vec<i32>,
        pos_stride: usize,
        pos_max: usize,
    ) -> Result<()> {
        check::copy_rows_at::<Self>(
            op,
            src,
            (&*dst.0, dst.1),
            rows,
            cols,
            pos,
            pos_stride,
            pos_max,
        )?;
        let p = pos[0];
        if p < 0 || p as usize > pos_max {
            return Err(err(op, format!("position {p} outside 0..={pos_max}")));
        }
        let off = dst.1.off + p as usize * pos_stride;
        self.copy_rows(op, src, (dst.0, Rows { off, ..dst.1 }), rows, cols)
    }

    fn rms_norm(
        &self,
        x: &Vec<bf16>,
        w: &Vec<bf16>,
        y: &mut Vec<bf16>,
        rows: usize,
        d: usize,
        eps: f32,
    ) -> Result<()> {
        check::rms_norm::<Self>(x, w, y, rows, d)?;
        for r in 0..rows {
            let xr = &x[r * d..(r + 1) * d];
            let ss: f32 = xr.iter().map(|v| v.to_f32() * v.to_f32()).sum();
            let inv = 1.0 / (ss / d as f32 + eps).sqrt();
            for i in 0..d {
                let n = rb(xr[i].to_f32() * inv);
                y[r * d + i] = bf16::from_f32(n * w[i].to_f32());
            }
        }
        Ok(())
    }

    fn activation_inplace(&self, x: &mut Vec<bf16>, n: usize, kind: ActKind) -> Result<()> {
        check::activation::<Self>(x, n)?;
        for v in &mut x[..n] {
            *v = bf16::from_f32(rb(kind.apply(v.to_f32())));
        }
        Ok(())
    }

    fn gated_activation(
        &self,
        gu: &Vec<bf16>,
        y: &mut Vec<bf16>,
        rows: usize,
        cols: usize,
        kind: ActKind,
    ) -> Result<()> {
        check::gated_activation::<Self>(gu, y, rows, cols)?;
        for r in 0..rows {
            let (g, u) = gu[r * 2 * cols..(r + 1) * 2 * cols].split_at(cols);
            for ((o, g), u) in y[r * cols..(r + 1) * cols].iter_mut().zip(g).zip(u) {
                *o = bf16::from_f32(rb(kind.apply(g.to_f32())) * u.to_f32());
            }
        }
        Ok(())
    }

    fn rope(
        &self,
        x: &mut Vec<bf16>,
        pos: &Vec<i32>,
        tokens: usize,
        heads: usize,
        head_dim: usize,
        ld: usize,
        theta: f32,
    ) -> Result<()> {
        check::rope::<Self>(x, pos, tokens, heads, head_dim, ld)?;
        let half = head_dim / 2;
        for (t, &p) in pos.iter().enumerate().take(tokens) {
            for h in 0..heads {
                let row = t * ld + h * head_dim;
                for i in 0..half {
                    let inv_freq = 1.0 / theta.powf((2 * i) as f32 / head_dim as f32);
                    let ang = p as f32 * inv_freq;
                    let (c, s) = (rb(ang.cos()), rb(ang.sin()));
                    let (x1, x2) = (x[row + i].to_f32(), x[row + i + half].to_f32());
                    x[row + i] = bf16::from_f32(x1 * c - x2 * s);
                    x[row + i + half] = bf16::from_f32(x2 * c + x1 * s);
                }
            }
        }
        Ok(())
    }

    fn embedding_ids(
        &self,
        ids: &[u32],
        table: &Vec<bf16>,
        y: &mut Vec<bf16>,
        d: usize,
        vocab: usize,
    ) -> Result<()> {
        check::embedding_ids::<Self>(ids, table, y, d, vocab)?;
        for (t, &id) in ids.iter().enumerate() {
            let id = id as usize;
            y[t * d..(t + 1) * d].copy_from_slice(&table[id * d..(id + 1) * d]);
        }
        Ok(())
    }

    fn embedding(
        &self,
        ids: &Vec<i32>,
        n: usize,
        table: &Vec<bf16>,
        y: &mut Vec<bf16>,
        d: usize,
        vocab: usize,
    ) -> Result<()> {
        check::embedding::<Self>(ids, n, table, y, d, vocab)?;
        let host: Vec<u32> = ids[..n]
            .iter()
            .map(|&i| u32::try_from(i).unwrap_or(u32::MAX))
            .collect();
        self.embedding_ids(&host, table, y, d, vocab)
    }

    fn gemm(
        &self,
        x: &Vec<bf16>,
        w: Weight<Self>,
        y: Out<Self>,
        s: &GemmShape,
        lora: Option<&Lora<Self>>,
    ) -> Result<()> {
        const OP: &str = "gemm";
        check::gemm::<Self>(x, &w, &y, s, lora)?;
        let (m, n, k) = (s.m, s.n, s.k);
        // W as f32 [n, k] and the per-channel scale (int8)
        let (wf, scale): (Vec<f32>, Option<&Vec<f32>>) = match w {
            Weight::Bf16(b) => (b[..n * k].iter().map(|v| v.to_f32()).collect(), None),
            Weight::Int8 { w, scale } => {
                (w[..n * k].iter().map(|&v| v as f32).collect(), Some(scale))
            }
        };
        let xf: Vec<f32> = x[..m * k].iter().map(|v| v.to_f32()).collect();
        let mut acc = vec![0f32; m * n];
        crate::cpu::matmul_wt(&xf, m, k, &wf[..], n, &mut acc, false);
        // the epilogue of kernels/gemm_common.cuh: scales, LoRA expand, accumulate, store
        let value = |r: usize, c: usize| -> Result<f32> {
            let mut v = acc[r * n + c];
            if let Some(sc) = scale {
                v *= sc[c];
            }
            if let Some(lo) = lora {
                let id = lo.ids[r];
                if id >= lo.adapters as i32 {
                    return Err(err(OP, format!("LoRA slot {id} of {}", lo.adapters)));
                }
                if id >= 0 {
                    let id = id as usize;
                    let t = &lo.t[r * lo.r..(r + 1) * lo.r];
                    let b = &lo.b[(id * n + c) * lo.r..(id * n + c + 1) * lo.r];
                    let s: f32 = t.iter().zip(b).map(|(p, q)| p * q.to_f32()).sum();
                    v += s * lo.scale[id];
                }
            }
            Ok(v)
        };
        match y {
            Out::Bf16(y) => {
                for r in 0..m {
                    for c in 0..n {
                        let o = s.y_off + r * s.ldy + c;
                        let v = value(r, c)?;
                        let v = if s.accumulate { y[o].to_f32() + v } else { v };
                        y[o] = bf16::from_f32(v);
                    }
                }
            }
            Out::F32(y) => {
                for r in 0..m {
                    for c in 0..n {
                        let o = s.y_off + r * s.ldy + c;
                        let v = value(r, c)?;
                        y[o] = if s.accumulate { y[o] + v } else { v };
                    }
                }
            }
        }
        Ok(())
    }

    fn lora_shrink(
        &self,
        x: &Vec<bf16>,
        a: &Vec<bf16>,
        ids: &Vec<i32>,
        t: &mut Vec<f32>,
        m: usize,
        k: usize,
        r: usize,
        adapters: usize,
    ) -> Result<()> {
        check::lora_shrink::<Self>(x, a, ids, t, m, k, r, adapters)?;
        for row in 0..m {
            let id = ids[row];
            for j in 0..r {
                t[row * r + j] = if id < 0 || id as usize >= adapters {
                    0.0
                } else {
                    let ar = &a[(id as usize * r + j) * k..(id as usize * r + j + 1) * k];
                    let xr = &x[row * k..(row + 1) * k];
                    xr.iter()
                        .zip(ar)
                        .map(|(p, q)| p.to_f32() * q.to_f32())
                        .sum()
                };
            }
        }
        Ok(())
    }

    fn attention(
        &self,
        c: &AttnCall,
        q: (&Vec<bf16>, View),
        k: (&Vec<bf16>, View),
        v: (&Vec<bf16>, View),
        o: &mut Vec<bf16>,
        key_mask: Option<&Vec<i32>>,
        kv_batch: Option<&Vec<i32>>,
        rel_bias: Option<&Vec<f32>>,
    ) -> Result<()> {
        check::attention::<Self, bf16>(c, q, k, v, o, key_mask, kv_batch, rel_bias)?;
        let (kv, vv) = (k.0, v.0);
        attend(
            c,
            q,
            (k.1, |e| kv[e].to_f32()),
            (v.1, |e| vv[e].to_f32()),
            o,
            key_mask,
            kv_batch,
            rel_bias,
        )
    }

    fn attention_at(
        &self,
        c: &AttnCall,
        pos: &Vec<i32>,
        q: (&Vec<bf16>, View),
        k: (&Vec<bf16>, View),
        v: (&Vec<bf16>, View),
        o: &mut Vec<bf16>,
        key_mask: Option<&Vec<i32>>,
        kv_batch: Option<&Vec<i32>>,
        rel_bias: Option<&Vec<f32>>,
    ) -> Result<()> {
        check::need::<Self, i32>("attention", "position", pos, Some(1))?;
        // the caller keeps the position valid (the GPU reads it without a check)
        let p = usize::try_from(pos[0])
            .map_err(|_| err("attention", format!("query position {}", pos[0])))?;
        let c = AttnCall { q_offset: p, ..*c };
        self.attention(&c, q, k, v, o, key_mask, kv_batch, rel_bias)
    }

    fn attention_q8(
        &self,
        c: &AttnCall,
        q: (&Vec<bf16>, View),
        kv: &Vec<i8>,
        k: View,
        v: View,
        scales: &Vec<f32>,
        o: &mut Vec<bf16>,
        key_mask: Option<&Vec<i32>>,
        kv_batch: Option<&Vec<i32>>,
    ) -> Result<()> {
        check::attention_q8::<Self>(c, q, kv, k, v, scales, o, key_mask, kv_batch)?;
        // int8 value times its group's scale in f32, as the kernels apply it
        let at = |e: usize| kv[e] as f32 * scales[e / c.dk];
        attend(c, q, (k, at), (v, at), o, key_mask, kv_batch, None)
    }

    fn quantize_kv(
        &self,
        x: &Vec<bf16>,
        groups: usize,
        k: usize,
        q: &mut Vec<i8>,
        scales: &mut Vec<f32>,
    ) -> Result<()> {
        check::quantize_kv::<Self>(x, groups, k, q, scales)?;
        let xf: Vec<f32> = x[..groups * k].iter().map(|v| v.to_f32()).collect();
        let (qq, ss) = crate::cpu::quantize_rows_int8(&xf, groups, k);
        q[..groups * k].copy_from_slice(&qq);
        scales[..groups].copy_from_slice(&ss);
        Ok(())
    }

    fn greedy_pick(
        &self,
        logits: &mut Vec<f32>,
        rows: usize,
        vocab: usize,
        suppress: &[u32],
        masks: Option<&[u32]>,
    ) -> Result<Vec<(u32, f32)>> {
        check::greedy_pick::<Self>(logits, rows, vocab, masks)?;
        let words = crate::generate::mask_words_len(vocab);
        let mut out = Vec::with_capacity(rows);
        for r in 0..rows {
            let x = &mut logits[r * vocab..(r + 1) * vocab];
            mask_row(x, masks.map(|m| &m[r * words..(r + 1) * words]), suppress);
            // argmax, the lowest id on ties (the kernel's `better`)
            let (mut bi, mut bv) = (0usize, f32::NEG_INFINITY);
            for (j, &v) in x.iter().enumerate() {
                if v > bv {
                    (bi, bv) = (j, v);
                }
            }
            let lse = if bv == f32::NEG_INFINITY {
                f32::NEG_INFINITY
            } else {
                bv + x.iter().map(|&v| (v - bv).exp()).sum::<f32>().ln()
            };
            out.push((bi as u32, bv - lse));
        }
        Ok(out)
    }

    fn topk_logprobs(
        &self,
        logits: &mut Vec<f32>,
        rows: usize,
        vocab: usize,
        k: usize,
        suppress: &[u32],
        masks: Option<&[u32]>,
    ) -> Result<Vec<(u32, f32)>> {
        check::topk_logprobs::<Self>(logits, rows, vocab, k, masks)?;
        let words = crate::generate::mask_words_len(vocab);
        let mut out = Vec::with_capacity(rows * k);
        for r in 0..rows {
            let x = &mut logits[r * vocab..(r + 1) * vocab];
            // log-sum-exp of the row as it came (f32, max first, like the kernel's first pass)
            let mx = x.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
            let lse = if mx == f32::NEG_INFINITY {
                f32::NEG_INFINITY
            } else {
                mx + x.iter().map(|&v| (v - mx).exp()).sum::<f32>().ln()
            };
            mask_row(x, masks.map(|m| &m[r * words..(r + 1) * words]), suppress);
            // descending, the lowest id on ties (the kernel's `better`)
            let mut ids: Vec<usize> = (0..vocab).collect();
            let by = |a: &usize, b: &usize| x[*b].total_cmp(&x[*a]).then(a.cmp(b));
            ids.select_nth_unstable_by(k - 1, by);
            ids.truncate(k);
            ids.sort_by(by);
            out.extend(ids.into_iter().map(|j| (j as u32, x[j] - lse)));
        }
        Ok(out)
    }
}

/// The logits-pick kernel's first step on one row: ids whose mask bit is clear, and the
/// suppressed ids, become -inf.
fn mask_row(x: &mut [f32], mask: Option<&[u32]>, suppress: &[u32]) {
    if let Some(m) = mask {
        for (j, v) in x.iter_mut().enumerate() {
            if m[j / 32] >> (j % 32) & 1 == 0 {
                *v = f32::NEG_INFINITY;
            }
        }
    }
    for &t in suppress {
        if let Some(v) = x.get_mut(t as usize) {
            *v = f32::NEG_INFINITY;
        }
    }
}

/// The host backend's attention in f32: K and V elements come through accessors by element
/// index (bf16 widened, or int8 times its group's scale).
#[allow(clippy::too_many_arguments)]
fn attend(
    c: &AttnCall,
    q: (&Vec<bf16>, View),
    k: (View, impl Fn(usize) -> f32),
    v: (View, impl Fn(usize) -> f32),
    o: &mut [bf16],
    key_mask: Option<&Vec<i32>>,
    kv_batch: Option<&Vec<i32>>,
    rel_bias: Option<&Vec<f32>>,
) -> Result<()> {
    const OP: &str = "attention";
    let (nb, md, bidir) = c.t5_bias.unwrap_or((0, 0, false));
    let group = c.heads / c.kv_heads;
    let dk = c.dk;
    let mut s = vec![0f32; c.tk];
    for b in 0..c.batch {
        let kb = match kv_batch {
            Some(m) => {
                let r = m[b];
                if r < 0 || r as usize >= c.kv_batch_rows {
                    return Err(err(OP, format!("kv_batch[{b}] = {r}")));
                }
                r as usize
            }
            None => b,
        };
        for h in 0..c.heads {
            let kh = h / group;
            for i in 0..c.tq {
                let qpos = c.q_offset + i;
                let qrow = &q.0[q.1.off + b * q.1.sb + h * q.1.sh + i * q.1.st..][..dk];
                let mut mx = f32::NEG_INFINITY;
                for (j, sj) in s.iter_mut().enumerate() {
                    let visible = key_mask.is_none_or(|m| m[kb * c.tk + j] != 0)
                        && (!c.causal || j <= qpos)
                        && (c.window == 0 || qpos < j + c.window);
                    *sj = f32::NEG_INFINITY;
                    if !visible {
                        continue;
                    }
                    let k0 = k.0.off + kb * k.0.sb + kh * k.0.sh + j * k.0.st;
                    let dot: f32 = qrow
                        .iter()
                        .enumerate()
                        .map(|(d, a)| a.to_f32() * (k.1)(k0 + d))
                        .sum();
                    let mut sc = dot * c.scale;
                    if let Some(rb) = rel_bias {
                        let rel = j as i64 - qpos as i64;
                        let bucket =
                            crate::models::t5::relative_position_bucket(rel, bidir, nb, md);
                        sc += rb[bucket * c.heads + h];
                    }
                    *sj = sc;
                    mx = mx.max(sc);
                }
                let out = &mut o[((b * c.tq + i) * c.heads + h) * dk..][..dk];
                if mx == f32::NEG_INFINITY {
                    out.iter_mut().for_each(|v| *v = bf16::ZERO);
                    continue;
                }
                let mut l = 0f32;
                let mut acc = vec![0f32; dk];
                for (j, &sj) in s.iter().enumerate() {
                    if sj == f32::NEG_INFINITY {
                        continue;
                    }
                    let p = (sj - mx).exp();
                    l += p;
                    let v0 = v.0.off + kb * v.0.sb + kh * v.0.sh + j * v.0.st;
                    for (d, a) in acc.iter_mut().enumerate() {
                        *a += p * (v.1)(v0 + d);
                    }
                }
                for (d, a) in out.iter_mut().zip(&acc) {
                    *d = bf16::from_f32(a / l);
                }
            }
        }
    }
    Ok(())
}
