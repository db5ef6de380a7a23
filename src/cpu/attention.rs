//! Scaled-dot-product attention on strided f32 views, the CPU reference for every attention
//! variant the graphs need (T5 encoder with relative bias and padding mask, T5 decoder causal
//! self-attention over a KV cache, cross-attention; Mistral GQA with sliding window later).
//!
//! Element (b, h, t, d) of a view lives at `b*sb + h*sh + t*st + d`. Scores are computed per
//! (batch, head) with the gemm crate (strided, single-threaded per task; tasks run in parallel on
//! rayon), biased and masked, softmaxed in place, then multiplied by V straight into the output
//! layout `[b, tq, h*dk]` that the output projection consumes.

use rayon::prelude::*;

#[derive(Clone, Copy, Debug)]
pub struct View {
    pub sb: usize,
    pub sh: usize,
    pub st: usize,
}

/// Per (head, query index, key index) additive bias and key admission.
pub trait ScoreMod: Sync {
    /// Additive bias for head `h`, query `i` (0-based within this call), key `j` (none by default).
    fn bias(&self, _h: usize, _i: usize, _j: usize) -> f32 {
        0.0
    }
    /// Whether key `j` is visible to query `i` of batch row `b`.
    fn allowed(&self, b: usize, i: usize, j: usize) -> bool;
    /// Add the bias to and mask one score row (query `i` of batch `b`, head `h`). The default
    /// goes element by element; implementations override it with slice arithmetic.
    fn apply_row(&self, b: usize, h: usize, i: usize, row: &mut [f32]) {
        for (j, x) in row.iter_mut().enumerate() {
            if self.allowed(b, i, j) {
                *x += self.bias(h, i, j);
            } else {
                *x = f32::NEG_INFINITY;
            }
        }
    }
    /// Optional scale on q·k (T5: 1, no 1/sqrt(d)).
    fn scale(&self) -> f32 {
        1.0
    }
}

#[derive(Clone, Copy)]
struct P(*mut f32);
unsafe impl Send for P {}
unsafe impl Sync for P {}

pub struct AttnShape {
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub tq: usize,
    pub tk: usize,
    pub dk: usize,
}

/// out[b, i, h*dk + d] = Σ_j softmax_j(q·k + bias) v[b, h, j, d].
/// `kv_b(b)` maps a query batch row to its K/V batch row (beams sharing one encoder output).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    s: &AttnShape,
    q: &[f32],
    qv: View,
    k: &[f32],
    kv: View,
    v: &[f32],
    vv: View,
    kv_b: &(dyn Fn(usize) -> usize + Sync),
    m: &dyn ScoreMod,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let (bsz, heads, tq, tk, dk) = (s.batch, s.heads, s.tq, s.tk, s.dk);
    let group = heads / s.kv_heads.max(1);
    let per = tq * tk;
    let tasks = bsz * heads;
    // Decode steps keep one score block per task in `scratch` (small). Prefill/encoder blocks
    // are tq·tk each (1 MiB at 512×512): there each worker reuses one thread-local block, which
    // stays in its L2 cache, instead of every task writing a fresh one (48 MiB for a batch-8
    // encoder layer, page-faulted per call and written back to memory).
    let decode = tq <= 4;
    if decode && scratch.len() < tasks * per {
        scratch.resize(tasks * per, 0.0);
    }
    let out_row = heads * dk;
    assert!(out.len() >= bsz * tq * out_row);
    let op = P(out.as_mut_ptr());
    let scale = m.scale();
    let body = |(task, sc): (usize, &mut [f32])| {
        #[allow(clippy::redundant_locals)] // capture the Send wrapper whole, not its pointer field
        let op = op;
        let b = task / heads;
        let h = task % heads;
        let kb = kv_b(b);
        let kh = h / group;
        let qbase = b * qv.sb + h * qv.sh;
        let kbase = kb * kv.sb + kh * kv.sh;
        let vbase = kb * vv.sb + kh * vv.sh;
        if tq <= 4 {
            // Decode steps: a handful of queries. Direct dot products and axpy avoid ~1.5k tiny
            // gemm calls per step (their dispatch cost dominated batched decoding).
            let dot = super::simd::dot_fn();
            let contiguous = kv.st == dk && vv.st == dk;
            for i in 0..tq {
                let qi =
                    unsafe { std::slice::from_raw_parts(q.as_ptr().add(qbase + i * qv.st), dk) };
                let row = &mut sc[i * tk..(i + 1) * tk];
                // K rows of one head contiguous (cache and cross-attention layouts): one pass
                // of 16-key dot products
                if contiguous {
                    super::simd::dot_rows(qi, &k[kbase..kbase + tk * dk], dk, row);
                } else {
                    for (j, x) in row.iter_mut().enumerate() {
                        *x = dot(qi, &k[kbase + j * kv.st..kbase + j * kv.st + dk]);
                    }
                }
                if scale != 1.0 {
                    row.iter_mut().for_each(|x| *x *= scale);
                }
                m.apply_row(b, h, i, row);
                super::softmax_inplace(row);
                // SAFETY: this task owns out[b, i, h*dk .. h*dk+dk].
                let o = unsafe {
                    std::slice::from_raw_parts_mut(
                        op.0.add(b * tq * out_row + i * out_row + h * dk),
                        dk,
                    )
                };
                if contiguous {
                    super::simd::weighted_rows(row, &v[vbase..vbase + tk * dk], dk, o);
                } else {
                    o.iter_mut().for_each(|v| *v = 0.0);
                    for (j, &p) in row.iter().enumerate() {
                        if p == 0.0 {
                            continue;
                        }
                        let vj = &v[vbase + j * vv.st..vbase + j * vv.st + dk];
                        for (ov, &vv_) in o.iter_mut().zip(vj) {
                            *ov += p * vv_;
                        }
                    }
                }
            }
            return;
        }
        // Prefill / encoder: both products on the AVX-512 packed GEMM over the strided head views
        // (single-threaded: the heads are the parallel tasks); the gemm crate otherwise.
        if super::gemm512::available() && dk > 0 && tk > 0 {
            use super::gemm512::{matmul_strided, Views};
            // SAFETY: AVX-512 checked; the views address valid elements for i < tq, j < tk,
            // d < dk (callers size them); this task alone writes its score rows and its
            // out[b, i, h*dk..h*dk+dk] block.
            unsafe {
                let qk = Views {
                    x: q.as_ptr().add(qbase),
                    lda: qv.st,
                    w: k.as_ptr().add(kbase),
                    ldw: kv.st,
                    w_trans: false,
                    out: sc.as_mut_ptr(),
                    ldc: tk,
                };
                matmul_strided(&qk, tq, dk, tk, false, false);
            }
            if scale != 1.0 {
                sc[..tq * tk].iter_mut().for_each(|x| *x *= scale);
            }
            for i in 0..tq {
                let row = &mut sc[i * tk..(i + 1) * tk];
                m.apply_row(b, h, i, row);
                super::softmax_inplace(row);
            }
            unsafe {
                let pv = Views {
                    x: sc.as_ptr(),
                    lda: tk,
                    w: v.as_ptr().add(vbase),
                    ldw: vv.st,
                    w_trans: true,
                    out: op.0.add(b * tq * out_row + h * dk),
                    ldc: out_row,
                };
                matmul_strided(&pv, tq, tk, dk, false, false);
            }
            return;
        }
        // scores[i, j] = q[i]·k[j]
        // SAFETY: the views address valid elements for i<tq, j<tk, d<dk (callers size them).
        unsafe {
            gemm::gemm(
                tq,
                tk,
                dk,
                sc.as_mut_ptr(),
                1,
                tk as isize,
                false,
                q.as_ptr().add(qbase),
                1,
                qv.st as isize,
                k.as_ptr().add(kbase),
                kv.st as isize,
                1,
                0.0,
                scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        for i in 0..tq {
            let row = &mut sc[i * tk..(i + 1) * tk];
            m.apply_row(b, h, i, row);
            super::softmax_inplace(row);
        }
        // out[b, i, h*dk..] = P[i, :] · V[j, :]
        unsafe {
            gemm::gemm(
                tq,
                dk,
                tk,
                op.0.add(b * tq * out_row + h * dk),
                1,
                out_row as isize,
                false,
                sc.as_ptr(),
                1,
                tk as isize,
                v.as_ptr().add(vbase),
                1,
                vv.st as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    };
    let parallel = tasks > 1 && tasks * per * dk > 1 << 14;
    if decode {
        let sc = &mut scratch[..tasks * per];
        if parallel {
            // decode steps: short regions, on the spinning pool (see `pool`)
            let scp = P(sc.as_mut_ptr());
            let per = per.max(1);
            super::pool::for_each(tasks, &|t| {
                #[allow(clippy::redundant_locals)] // the Send wrapper whole, not its field
                let scp = scp;
                // SAFETY: task t alone uses scores [t·per, (t+1)·per) of the tasks·per buffer.
                let chunk = unsafe { std::slice::from_raw_parts_mut(scp.0.add(t * per), per) };
                body((t, chunk))
            });
        } else {
            sc.chunks_mut(per.max(1)).enumerate().for_each(body);
        }
        return;
    }
    thread_local! {
        static BLOCK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let run = |t: usize| super::with_thread_buf(&BLOCK, per, |blk| body((t, blk)));
    if parallel {
        (0..tasks).into_par_iter().for_each(run);
    } else {
        (0..tasks).for_each(run);
    }
}
