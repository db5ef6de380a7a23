//! CPU kernels: the reference implementation of every op the model graphs use, and the backend
//! that CI and GPU-less machines run. All compute is f32.
//!
//! Matrix products follow the PyTorch `nn.Linear` convention: weights are `[out, in]` row-major as
//! stored in HF checkpoints, and `y = x · Wᵀ`. Large products go to our AVX-512 GEMM
//! (`gemm512`, packed, rayon-parallel) or, on CPUs without AVX-512, to the `gemm` crate (AVX2
//! micro-kernels on stable Rust); skinny products (decode steps,
//! m ≤ SKINNY_M) use a dot-product kernel that streams each weight row once for all m inputs,
//! because decode is memory-bound and packing the weight would cost more than the product.

pub mod attention;
pub mod gemm512;
pub mod pool;
pub mod simd;

/// Up to this many rows a product is computed as m dot products per weight row, streaming the
/// weight once. Measured for the decode shapes of a flan-t5-small-sized decoder (all its weight
/// matrices, 146 MB, 2 threads): the streaming GEMV took 19 / 36 / 69 ms at m = 32 / 64 / 128,
/// the packed GEMM 40 / 49 / 76 ms (packing every weight per call dominates until m is in the
/// hundreds). Beam search over batches (4 beams x 16 rows) stays on the GEMV.
pub const SKINNY_M: usize = 64;

/// A raw output pointer handed to rayon tasks that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Runs `f` on this thread's buffer in `key`, grown to at least `len` floats (contents
/// unspecified). A task that rayon starts on this thread while the buffer is in use (work
/// stealing inside a nested parallel call) gets a fresh buffer instead of a borrow panic.
pub(crate) fn with_thread_buf<R>(
    key: &'static std::thread::LocalKey<std::cell::RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    key.with(|cell| {
        let mut fresh = Vec::new();
        let mut guard = cell.try_borrow_mut().ok();
        let buf = match guard.as_deref_mut() {
            Some(v) => v,
            None => &mut fresh,
        };
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        f(&mut buf[..len])
    })
}

/// A weight matrix [n, k] as stored: f32, or bf16 used in place (from a bf16 checkpoint, or
/// rounded at load when asked). The arithmetic is f32 for both.
#[derive(Clone, Copy)]
pub enum WRef<'a> {
    F32(&'a [f32]),
    Bf16(&'a [simd::Bf16]),
}

impl WRef<'_> {
    /// Row r of a [_, d] matrix into `out` (d floats) as f32: an embedding lookup.
    pub fn row_into(&self, r: usize, d: usize, out: &mut [f32]) {
        match self {
            WRef::F32(w) => out.copy_from_slice(&w[r * d..(r + 1) * d]),
            WRef::Bf16(w) => {
                for (v, b) in out.iter_mut().zip(&w[r * d..(r + 1) * d]) {
                    *v = simd::WElem::to_f32(*b);
                }
            }
        }
    }
    /// All values as an owned f32 vector.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self {
            WRef::F32(w) => w.to_vec(),
            WRef::Bf16(w) => simd::WElem::widen(w).into_owned(),
        }
    }
}

/// Weight-only int8 with one scale per output channel (row of W [n, k]), as the CUDA backend
/// stores linear layers with `--gpu-weights int8`: scale = max|row| / 127, q = round-half-even
/// (w / scale) clamped to [-127, 127] (the rule of the `quantize_rows_int8` kernel); an all-zero
/// row gets scale 0. Here so that the CPU can emulate it (tests derive the CUDA tolerance from it).
pub fn quantize_rows_int8(w: &[f32], n: usize, k: usize) -> (Vec<i8>, Vec<f32>) {
    quantize_rows_int8_w(WRef::F32(w), n, k)
}

/// `quantize_rows_int8` of f32 or bf16 values (bf16 widens exactly, so a bf16 checkpoint
/// quantises the same either way), rows in parallel: a model load quantises ~10^9 weights.
pub fn quantize_rows_int8_w(w: WRef, n: usize, k: usize) -> (Vec<i8>, Vec<f32>) {
    match w {
        WRef::F32(w) => quantize_rows::<f32>(w, n, k),
        WRef::Bf16(w) => quantize_rows::<simd::Bf16>(w, n, k),
    }
}

/// `x.round_ties_even()` for |x| < 2^22, in two additions: adding 1.5 * 2^23 leaves no
/// fraction bits, so the sum is rounded to an integer by the FPU's round-to-nearest-even, and
/// subtracting it back is exact. The library call that `round_ties_even` becomes without
/// SSE4.1 (this crate is built for baseline x86-64) is most of a load's quantisation time,
/// and this form vectorises. (Rust never reassociates float arithmetic, so it is not folded.)
#[inline(always)]
fn round_even_small(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    (x + MAGIC) - MAGIC
}

fn quantize_rows<W: simd::WElem>(w: &[W], n: usize, k: usize) -> (Vec<i8>, Vec<f32>) {
    use rayon::prelude::*;
    let mut q = vec![0i8; n * k];
    let mut scales = vec![0f32; n];
    if k == 0 {
        return (q, scales);
    }
    assert_eq!(
        w.len(),
        n * k,
        "quantize_rows_int8: {} values for {n} x {k}",
        w.len()
    );
    q.par_chunks_mut(k)
        .zip(scales.par_iter_mut())
        .zip(w.par_chunks(k))
        // tasks of at least ~64K weights: small matrices (and the tests' KV rows) stay serial
        .with_min_len((1 << 16) / k + 1)
        .for_each(|((qr, sr), row)| {
            let mx = row.iter().fold(0f32, |m, v| m.max(v.to_f32().abs()));
            *sr = mx / 127.0;
            if mx > 0.0 {
                let inv = 127.0 / mx;
                for (d, &v) in qr.iter_mut().zip(row) {
                    *d = round_even_small((v.to_f32() * inv).clamp(-127.0, 127.0)) as i8;
                }
            }
        });
    (q, scales)
}

/// out[m, n] = x[m, k] · w[n, k]ᵀ (+ out if `accumulate`) for a weight of either storage dtype.
pub fn matmul_w(
    x: &[f32],
    m: usize,
    k: usize,
    w: WRef,
    n: usize,
    out: &mut [f32],
    accumulate: bool,
) {
    match w {
        WRef::F32(w) => matmul_wt(x, m, k, w, n, out, accumulate),
        WRef::Bf16(w) => matmul_wt(x, m, k, w, n, out, accumulate),
    }
}

/// out[m, n] = x[m, k] · w[n, k]ᵀ  (+ out if `accumulate`); `w` f32 or bf16 (see `WRef`).
pub fn matmul_wt<W: simd::WElem>(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[W],
    n: usize,
    out: &mut [f32],
    accumulate: bool,
) {
    assert!(
        x.len() >= m * k && w.len() >= n * k && out.len() >= m * n,
        "matmul_wt: buffer too small"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            out[..m * n].iter_mut().for_each(|v| *v = 0.0);
        }
        return;
    }
    if m <= SKINNY_M {
        skinny(x, m, k, w, n, out, accumulate);
        return;
    }
    if gemm512::matmul_wt(x, m, k, w, n, out, accumulate) {
        return;
    }
    // Without AVX-512 the `gemm` crate runs the product on f32: widen a bf16 weight first.
    let widened = W::widen(&w[..n * k]);
    let w: &[f32] = &widened;
    let threads = rayon::current_num_threads();
    let par = if threads > 1 && m * n * k > 64 * 64 * 64 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: strides describe the row-major buffers whose sizes were asserted above.
    // dst = alpha·dst + beta·lhs·rhs with lhs = x [m,k] (rs k, cs 1), rhs = wᵀ [k,n] (rs 1, cs k).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

fn skinny<W: simd::WElem>(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[W],
    n: usize,
    out: &mut [f32],
    accumulate: bool,
) {
    // Blocks of weight rows; each block is read once and dotted with every input row. The
    // blocks run on the spinning decode pool (`pool`): these products are decode steps' many
    // short parallel regions.
    let threads = pool::threads();
    let block = if threads == 1 {
        n
    } else {
        n.div_ceil(threads * 4).max(16)
    };
    let optr = SendPtr(out.as_mut_ptr());
    let work = |bi: usize| {
        let p = optr;
        let j0 = bi * block;
        let rows = &w[j0 * k..(j0 + block).min(n) * k];
        // SAFETY: x holds m·k and rows (rows.len()/k)·k floats (asserted by matmul_wt); this task
        // alone writes output columns j0..j0+rows.len()/k of every row i < m of out [m, n].
        if unsafe { simd::gemv_rows(x, m, k, rows, rows.len() / k, p.0.add(j0), n, accumulate) } {
            return;
        }
        // no AVX-512: the SIMD dot product over this block's rows, widened to f32 if bf16
        let dot = simd::dot_fn();
        let rows = W::widen(rows);
        for (jj, wr) in rows.chunks_exact(k).enumerate() {
            let j = j0 + jj;
            for i in 0..m {
                let d = dot(&x[i * k..(i + 1) * k], wr);
                // SAFETY: (i, j) is written by exactly one task (j is in this task's block) and
                // i*n+j < m*n, the asserted output length.
                unsafe {
                    let o = p.0.add(i * n + j);
                    *o = if accumulate { *o + d } else { d };
                }
            }
        }
    };
    let blocks = n.div_ceil(block);
    if threads == 1 || n * k < 1 << 15 {
        (0..blocks).for_each(work);
    } else {
        pool::for_each(blocks, &work);
    }
}

/// T5LayerNorm / Mistral RMSNorm: y = x / sqrt(mean(x²) + eps) · w, rows of length d.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    let row = |(xr, or): (&[f32], &mut [f32])| {
        // f32 accumulation like `hidden_states.to(torch.float32).pow(2).mean(-1)`, in 16
        // lanes so it vectorises (a single running sum kept the loop scalar)
        let mut l = [0.0f32; 16];
        let mut ch = xr.chunks_exact(16);
        for c in &mut ch {
            for (a, v) in l.iter_mut().zip(c) {
                *a += v * v;
            }
        }
        let tail: f32 = ch.remainder().iter().map(|v| v * v).sum();
        let ss = (l.iter().sum::<f32>() + tail) / d as f32;
        let r = 1.0 / (ss + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = g * (v * r);
        }
    };
    let rows = x.len() / d.max(1);
    if rows >= 256 {
        // encoder / prefill: hundreds of rows; decode steps (a few rows) stay serial
        use rayon::prelude::*;
        x.par_chunks_exact(d)
            .zip(out.par_chunks_exact_mut(d))
            .with_min_len(64)
            .for_each(row);
    } else {
        x.chunks_exact(d).zip(out.chunks_exact_mut(d)).for_each(row);
    }
}

/// HF `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // sqrt(2/pi)
    0.5 * x * (1.0 + (C * (x + 0.044715 * x * x * x)).tanh())
}

/// Exact GELU, x·Φ(x), with erf from a rational approximation (|err| < 1.2e-7).
#[inline]
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x as f64 / std::f64::consts::SQRT_2) as f32)
}

#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// erf via W. J. Cody's rational Chebyshev approximation, evaluated in f64 (accurate far beyond
/// what f32 activations need).
pub fn erf(x: f64) -> f64 {
    // Numerical Recipes erfc (Chebyshev), fractional error < 1.2e-7.
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.26551223
            + t * (1.00002368
                + t * (0.37409196
                    + t * (0.09678418
                        + t * (-0.18628806
                            + t * (0.27886807
                                + t * (-1.13520398
                                    + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))))
            .exp();
    if x >= 0.0 {
        1.0 - r
    } else {
        r - 1.0
    }
}

/// In-place softmax over a row; masked entries (−inf) get exactly 0. Vectorised exp.
pub fn softmax_inplace(row: &mut [f32]) {
    simd::softmax(row)
}

/// Scalar reference softmax (libm exp), kept for tests.
pub fn softmax_ref(row: &mut [f32]) {
    let mut mx = f32::NEG_INFINITY;
    for &v in row.iter() {
        if v > mx {
            mx = v;
        }
    }
    if mx == f32::NEG_INFINITY {
        row.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    let mut s = 0.0f32;
    for v in row.iter_mut() {
        *v = (*v - mx).exp();
        s += *v;
    }
    let inv = 1.0 / s;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// log_softmax of a row into `out` (f32, max-subtracted like torch's: (x - max) - log Σ).
pub fn log_softmax(row: &[f32], out: &mut [f32]) {
    let (mx, ls) = simd::max_lse(row);
    if mx == f32::NEG_INFINITY {
        out.iter_mut().for_each(|v| *v = f32::NEG_INFINITY);
        return;
    }
    for (o, &v) in out.iter_mut().zip(row) {
        *o = (v - mx) - ls;
    }
}

/// Beam reordering of a KV cache laid out [rows, heads, cap, dk]: row r becomes old row
/// `parents[r]` (its first `used` positions; later positions are rewritten before they are
/// read). Gathers into `spare` and swaps the two, so a reordering step reuses the memory of the
/// previous one instead of allocating a new cache (the old buffer becomes the next spare).
pub fn gather_cache_rows(
    buf: &mut Vec<f32>,
    spare: &mut Vec<f32>,
    parents: &[usize],
    (heads, cap, dk): (usize, usize, usize),
    used: usize,
) {
    let row = heads * cap * dk;
    spare.resize(parents.len() * row, 0.0);
    for (r, &p) in parents.iter().enumerate() {
        for h in 0..heads {
            let (o, n) = (p * row + h * cap * dk, r * row + h * cap * dk);
            spare[n..n + used * dk].copy_from_slice(&buf[o..o + used * dk]);
        }
    }
    std::mem::swap(buf, spare);
}

/// The rows an LM head needs: every position (`all`, or one token per sequence), or only the last
/// of each sequence's `t_new` positions, gathered into `buf`. `x` is [rows·t_new, d].
pub fn head_rows<'a>(
    x: &'a [f32],
    rows: usize,
    t_new: usize,
    d: usize,
    all: bool,
    buf: &'a mut Vec<f32>,
) -> (usize, &'a [f32]) {
    if all || t_new == 1 {
        return (rows * t_new, &x[..rows * t_new * d]);
    }
    buf.resize(rows * d, 0.0);
    for r in 0..rows {
        let from = (r * t_new + t_new - 1) * d;
        buf[r * d..(r + 1) * d].copy_from_slice(&x[from..from + d]);
    }
    (rows, &buf[..])
}

#[cfg(test)]
mod quantize_tests {
    use super::*;

    /// The two-addition rounding equals `round_ties_even` on the ties, their neighbours and
    /// random values over the range int8 quantisation feeds it (after the clamp to +-127).
    #[test]
    fn round_even_small_matches_round_ties_even() {
        let mut xs = Vec::new();
        for i in -260..=260 {
            let t = i as f32 * 0.5;
            xs.extend([t, t.next_up(), t.next_down()]);
        }
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..1_000_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            xs.push((s >> 40) as f32 / (1u64 << 24) as f32 * 260.0 - 130.0);
        }
        xs.extend([0.0, -0.0, 4_194_303.5, -4_194_302.5, f32::MIN_POSITIVE]);
        for x in xs {
            assert_eq!(round_even_small(x), x.round_ties_even(), "{x:e}");
        }
    }

    /// Rows quantised in parallel (a matrix big enough to split into tasks), from f32 or from
    /// bf16, equal a plain row-by-row quantisation with `round_ties_even`; an all-zero row gets
    /// scale 0, and k = 0 is empty.
    #[test]
    fn parallel_quantisation_matches_the_rule() {
        let (n, k) = (300, 1001);
        let mut s = 7u64;
        let mut w: Vec<f32> = (0..n * k)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * (1 + (s % 5)) as f32
            })
            .collect();
        w[5 * k..6 * k].fill(0.0);
        let b: Vec<simd::Bf16> = w
            .iter()
            .map(|&x| simd::Bf16(half::bf16::from_f32(x).to_bits()))
            .collect();
        let wb: Vec<f32> = b.iter().map(|&x| simd::WElem::to_f32(x)).collect();
        for (vals, got) in [
            (&w, quantize_rows_int8(&w, n, k)),
            (&wb, quantize_rows_int8_w(WRef::Bf16(&b), n, k)),
        ] {
            for r in 0..n {
                let row = &vals[r * k..(r + 1) * k];
                let mx = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert_eq!(got.1[r], mx / 127.0, "scale of row {r}");
                for (j, &v) in row.iter().enumerate() {
                    let want = if mx > 0.0 {
                        (v * (127.0 / mx)).round_ties_even().clamp(-127.0, 127.0) as i8
                    } else {
                        0
                    };
                    assert_eq!(got.0[r * k + j], want, "row {r} col {j}");
                }
            }
        }
        assert_eq!(quantize_rows_int8(&w, n, k).1[5], 0.0);
        assert_eq!(quantize_rows_int8(&[], 3, 0), (vec![], vec![0.0; 3]));
    }
}
