//! AVX-512 f32 GEMM for the `y = x · Wᵀ` products of encoders and prefills (m > SKINNY_M).
//!
//! Why our own: the `gemm` crate only ships AVX2 micro-kernels on stable Rust (its AVX-512 ones
//! sit behind a nightly feature), which leaves half of the machine's FMA width unused; the T5
//! encoder spends most of its time here.
//!
//! Layout follows the BLIS/Goto scheme:
//! - W (`[n, k]` row-major, the HF `nn.Linear` layout; f32, or bf16 widened while packing) is
//!   packed once per call into panels of `NR` = 32 output features: `pb[panel][p][0..32] = W[panel*32 + j, p]`, zero-padded past `n`.
//! - Each task owns a block of `MC` rows of x and a range of panels; for each `KC` slice of k it
//!   packs its rows as `pa[micro][p][0..MR] = x[row, p]` (zero-padded past `m`), so the micro-kernel
//!   reads A as consecutive broadcasts and B as two aligned-size vector loads per k step.
//! - The micro-kernel keeps an `MR × 32` tile in 28 zmm registers (MR = 14): per k step 2 loads,
//!   14 broadcasts and 28 FMAs, so it is FMA-bound while the B slice (`KC × 32` floats = 32 KiB)
//!   stays in L1 across the MR-row blocks and the A block (`MC × KC`) stays in L2.
//!
//! Summation order: each output is Σ over k in order within a KC slice, slices added in order;
//! results differ from the `gemm` crate only by f32 rounding.

use rayon::prelude::*;
use std::cell::RefCell;

const MR: usize = 14;
const NR: usize = 32;
const KC: usize = 256;
const MC: usize = MR * 8;
/// Panels per task along n (4 panels = 128 output features).
const NC_PANELS: usize = 4;

thread_local! {
    static PACK_A: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static PACK_B: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

use super::SendPtr as Ptr;

/// Whether this CPU can run the kernel (AVX-512F; `JOBX_NO_AVX512` forces the fallback).
pub fn available() -> bool {
    super::simd::has_avx512()
}

/// out[m, n] = x[m, k] · w[n, k]ᵀ (+ out if `accumulate`). Returns false (doing nothing) when the
/// CPU lacks AVX-512, so the caller can fall back. Buffers must hold m·k, n·k and m·n floats.
pub fn matmul_wt<W: super::simd::WElem>(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[W],
    n: usize,
    out: &mut [f32],
    accumulate: bool,
) -> bool {
    if !available() {
        return false;
    }
    assert!(x.len() >= m * k && w.len() >= n * k && out.len() >= m * n);
    if m == 0 || n == 0 || k == 0 {
        return false; // the caller's generic path handles the degenerate shapes
    }
    let v = Views {
        x: x.as_ptr(),
        lda: k,
        w: w.as_ptr(),
        ldw: k,
        w_trans: false,
        out: out.as_mut_ptr(),
        ldc: n,
    };
    // SAFETY: the views describe the three buffers, whose lengths were asserted above.
    unsafe { matmul_strided(&v, m, k, n, accumulate, true) };
    true
}

/// Strided operands of `matmul_strided`: x [m, k] with row stride `lda`; W [n, k] with row
/// stride `ldw`, or (`w_trans`) W given as [k, n] with row stride `ldw` (so the product is x·W,
/// e.g. attention probabilities times V); out [m, n] with row stride `ldc`.
pub(crate) struct Views<W> {
    pub x: *const f32,
    pub lda: usize,
    pub w: *const W,
    pub ldw: usize,
    pub w_trans: bool,
    pub out: *mut f32,
    pub ldc: usize,
}

/// out (+)= x · Wᵀ over strided views (see `Views`); `parallel` = false runs on the calling
/// thread only (callers that are themselves parallel tasks, e.g. attention heads).
///
/// # Safety
/// AVX-512F is available (`available()`); m, k, n > 0; every element the views address for
/// i < m, j < n, p < k is valid (out for reads and writes), and no other thread touches the
/// addressed out elements during the call.
pub(crate) unsafe fn matmul_strided<W: super::simd::WElem>(
    v: &Views<W>,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
    parallel: bool,
) {
    let (wa, ldw, w_trans) = (v.w as usize, v.ldw, v.w_trans);
    let (xa, lda) = (v.x as usize, v.lda);
    let (out, ldc) = (v.out, v.ldc);
    let panels = n.div_ceil(NR);
    super::with_thread_buf(&PACK_B, panels * NR * k, |pb| {
        // Pack W into k-major 32-wide panels (parallel over panels).
        let pack = |(pi, dst): (usize, &mut [f32])| {
            let w = wa as *const W;
            let j0 = pi * NR;
            let cols = NR.min(n - j0);
            // SAFETY (both branches): the caller's contract covers W[j, p] for j < n, p < k.
            if w_trans {
                for p in 0..k {
                    let row = unsafe { w.add(p * ldw + j0) };
                    for j in 0..cols {
                        dst[p * NR + j] = unsafe { *row.add(j) }.to_f32();
                    }
                    dst[p * NR + cols..(p + 1) * NR].fill(0.0);
                }
            } else {
                // p outer: the destination is written sequentially and the `cols` source rows
                // are read side by side (each row's cache line serves 16 consecutive p). The
                // j-outer order wrote with a 128-byte stride and ran at ~2.5 GB/s, which made
                // packing cost more than the product for decode-sized m.
                let src: [*const W; NR] =
                    std::array::from_fn(|j| w.wrapping_add((j0 + j.min(cols - 1)) * ldw));
                // Full panels: 16 x 16 blocks transposed in registers (AVX-512 is available:
                // this GEMM only runs where it is); the k tail and partial panels go on below.
                let p_vec = if cols == NR { k / 16 * 16 } else { 0 };
                let mut pc = 0;
                while pc < p_vec {
                    for half in 0..2 {
                        // SAFETY: rows j0+16·half.. (< n) hold columns pc..pc+16 (<= k); the
                        // destination block is inside this panel's k·32 floats.
                        unsafe {
                            pack_block16(
                                &src[16 * half..16 * half + 16],
                                pc,
                                dst.as_mut_ptr().add(pc * NR + 16 * half),
                            )
                        };
                    }
                    pc += 16;
                }
                for (p, d) in dst.chunks_exact_mut(NR).enumerate().take(k).skip(p_vec) {
                    for j in 0..cols {
                        // bf16 weights are widened here, exactly
                        d[j] = unsafe { *src[j].add(p) }.to_f32();
                    }
                    d[cols..].fill(0.0);
                }
            }
        };
        if parallel {
            pb.par_chunks_mut(NR * k).enumerate().for_each(pack);
        } else {
            pb.chunks_mut(NR * k).enumerate().for_each(pack);
        }
        let pb: &[f32] = pb;
        let mblocks = m.div_ceil(MC);
        // Split n only when there are too few row blocks to keep every thread busy: each split
        // packs the task's rows of x again.
        let threads = rayon::current_num_threads().max(1);
        let nc_panels = if mblocks >= 4 * threads {
            panels
        } else {
            NC_PANELS
        };
        let nblocks = panels.div_ceil(nc_panels);
        // With at most 2 panels (n <= 64, e.g. attention's P·V with dk = 64) each packed A
        // element would be used for one or two tiles only, and the transposing pack cost more
        // than the product: the kernel then reads A in place.
        let direct_a = panels <= 2;
        let optr = Ptr(out);
        let task = |t: usize| {
            #[allow(clippy::redundant_locals)] // the Send wrapper whole, not its field
            let optr = optr;
            let (mb, nb) = (t / nblocks, t % nblocks);
            let i0 = mb * MC;
            let rows = MC.min(m - i0);
            let micro = rows.div_ceil(MR);
            let p0 = nb * nc_panels;
            let p1 = (p0 + nc_panels).min(panels);
            super::with_thread_buf(&PACK_A, if direct_a { 0 } else { MC * KC }, |pa| {
                let mut k0 = 0;
                while k0 < k {
                    let kc = KC.min(k - k0);
                    let load_c = accumulate || k0 > 0;
                    if !direct_a {
                        // SAFETY: rows i0..i0+rows (< m), columns k0..k0+kc (<= k) of x are valid
                        unsafe {
                            pack_a(
                                xa as *const f32,
                                lda,
                                i0,
                                rows,
                                k0,
                                kc,
                                &mut pa[..micro * MR * kc],
                            )
                        };
                    }
                    for pi in p0..p1 {
                        let j0 = pi * NR;
                        let cols = NR.min(n - j0);
                        let b = &pb[pi * NR * k + k0 * NR..pi * NR * k + (k0 + kc) * NR];
                        for u in 0..micro {
                            let r0 = u * MR;
                            let c = optr.0.wrapping_add((i0 + r0) * ldc + j0);
                            let live = MR.min(rows - r0);
                            // SAFETY (both): AVX-512 checked above; rows i0+r0.. (< m) of x are
                            // valid for columns k0..k0+kc; this task alone writes rows i0+r0..
                            // and columns j0..j0+cols (< n) of `out`.
                            if direct_a {
                                let a = (xa as *const f32).wrapping_add((i0 + r0) * lda + k0);
                                unsafe {
                                    kernel_direct(
                                        kc,
                                        a,
                                        lda,
                                        b.as_ptr(),
                                        c,
                                        ldc,
                                        live,
                                        cols,
                                        load_c,
                                    )
                                };
                            } else {
                                let a = &pa[u * MR * kc..(u + 1) * MR * kc];
                                unsafe {
                                    kernel(kc, a.as_ptr(), b.as_ptr(), c, ldc, live, cols, load_c)
                                };
                            }
                        }
                    }
                    k0 += kc;
                }
            });
        };
        let tasks = mblocks * nblocks;
        if parallel && threads > 1 && tasks > 1 && m * n * k > 1 << 18 {
            (0..tasks).into_par_iter().for_each(task);
        } else {
            (0..tasks).for_each(task);
        }
    });
}

/// dst[p·32 + r] = src[r][p0 + p] for r, p < 16: one 16 × 16 block of a weight panel,
/// transposed in registers (16 row loads, 64 shuffles, 16 stores).
///
/// # Safety
/// AVX-512F is available; each src[r] is valid for 16 reads at p0; dst for p·32 + r writes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack_block16<W: super::simd::WElem>(src: &[*const W], p0: usize, dst: *mut f32) {
    use std::arch::x86_64::*;
    let mut r = [_mm512_setzero_ps(); 16];
    for (i, ri) in r.iter_mut().enumerate() {
        *ri = W::load16(src[i].add(p0));
    }
    // 4 x 4 blocks of 32-bit lanes within 128-bit chunks
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for i in 0..4 {
        let (a, b, c, d) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
        r[4 * i] = _mm512_shuffle_ps::<0x44>(a, c);
        r[4 * i + 1] = _mm512_shuffle_ps::<0xEE>(a, c);
        r[4 * i + 2] = _mm512_shuffle_ps::<0x44>(b, d);
        r[4 * i + 3] = _mm512_shuffle_ps::<0xEE>(b, d);
    }
    // now r[4i + q] holds, in 128-bit chunk c, column 4c + q of rows 4i..4i+4: gather chunks
    for q in 0..4 {
        let (a, b, c, d) = (r[q], r[4 + q], r[8 + q], r[12 + q]);
        let ab_lo = _mm512_shuffle_f32x4::<0x88>(a, b); // chunks a0 a2 b0 b2
        let ab_hi = _mm512_shuffle_f32x4::<0xDD>(a, b); // a1 a3 b1 b3
        let cd_lo = _mm512_shuffle_f32x4::<0x88>(c, d);
        let cd_hi = _mm512_shuffle_f32x4::<0xDD>(c, d);
        // column 4c + q = [a_c, b_c, c_c, d_c]
        t[q] = _mm512_shuffle_f32x4::<0x88>(ab_lo, cd_lo); // a0 b0 c0 d0
        t[8 + q] = _mm512_shuffle_f32x4::<0xDD>(ab_lo, cd_lo); // a2 b2 c2 d2
        t[4 + q] = _mm512_shuffle_f32x4::<0x88>(ab_hi, cd_hi); // a1 b1 c1 d1
        t[12 + q] = _mm512_shuffle_f32x4::<0xDD>(ab_hi, cd_hi); // a3 b3 c3 d3
    }
    for (p, tp) in t.iter().enumerate() {
        _mm512_storeu_ps(dst.add(p * NR), *tp);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn pack_block16<W: super::simd::WElem>(_: &[*const W], _: usize, _: *mut f32) {
    unreachable!("available() is false off x86_64")
}

/// pa[u][p][r] = x[i0 + u*MR + r, k0 + p] for r < rows (zero beyond), x with row stride `lda`.
/// Written sequentially (p outer, r inner), reading MR rows side by side.
///
/// # Safety
/// x[i, k0..k0+kc] is valid for i0 <= i < i0 + rows.
unsafe fn pack_a(
    x: *const f32,
    lda: usize,
    i0: usize,
    rows: usize,
    k0: usize,
    kc: usize,
    pa: &mut [f32],
) {
    for (u, dst) in pa.chunks_exact_mut(MR * kc).enumerate() {
        let live = MR.min(rows.saturating_sub(u * MR));
        let base = (i0 + u * MR) * lda + k0;
        if live == MR {
            let src: [&[f32]; MR] = std::array::from_fn(|r| unsafe {
                std::slice::from_raw_parts(x.add(base + r * lda), kc)
            });
            for (p, d) in dst.chunks_exact_mut(MR).enumerate() {
                for r in 0..MR {
                    d[r] = src[r][p];
                }
            }
        } else {
            for (p, d) in dst.chunks_exact_mut(MR).enumerate() {
                for (r, v) in d.iter_mut().enumerate() {
                    *v = if r < live {
                        unsafe { *x.add(base + r * lda + p) }
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// C[0..rows, 0..cols] (+)= A·B for one MR × 32 tile; `a` is [kc][MR], `b` is [kc][32].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    load_c: bool,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for p in 0..kc {
        let b0 = _mm512_loadu_ps(b.add(p * NR));
        let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
        let ap = a.add(p * MR);
        for (r, accr) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*ap.add(r));
            accr[0] = _mm512_fmadd_ps(av, b0, accr[0]);
            accr[1] = _mm512_fmadd_ps(av, b1, accr[1]);
        }
    }
    unsafe { store_tile(&acc, c, ldc, rows, cols, load_c) };
}

/// C[0..rows, 0..cols] (+)= the MR × 32 accumulator tile. `inline(always)` without its own
/// target feature (it is only called from AVX-512 kernels): as a separate function the tile
/// went through memory on every call (perf: ~5% of encoder time in the call alone).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store_tile(
    acc: &[[std::arch::x86_64::__m512; 2]; MR],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    load_c: bool,
) {
    use std::arch::x86_64::*;
    let m0: __mmask16 = if cols >= 16 {
        0xffff
    } else {
        ((1u32 << cols) - 1) as __mmask16
    };
    let m1: __mmask16 = if cols >= 32 {
        0xffff
    } else if cols > 16 {
        ((1u32 << (cols - 16)) - 1) as __mmask16
    } else {
        0
    };
    for (r, accr) in acc.iter().enumerate() {
        // constant-index loop (unrolled) so the accumulators stay in registers
        if r < rows {
            let cp = c.add(r * ldc);
            let (mut v0, mut v1) = (accr[0], accr[1]);
            if load_c {
                v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, cp), v0);
                v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, cp.add(16)), v1);
            }
            _mm512_mask_storeu_ps(cp, m0, v0);
            _mm512_mask_storeu_ps(cp.add(16), m1, v1);
        }
    }
}

/// `kernel` reading A in place: rows of x with stride `lda` (the first `rows` of MR valid;
/// the others read row 0 again and are never stored), `b` packed [kc][32].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_direct(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    load_c: bool,
) {
    use std::arch::x86_64::*;
    let ar: [*const f32; MR] =
        std::array::from_fn(|r| a.wrapping_add(if r < rows { r * lda } else { 0 }));
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for p in 0..kc {
        let b0 = _mm512_loadu_ps(b.add(p * NR));
        let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
        for (r, accr) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*ar[r].add(p));
            accr[0] = _mm512_fmadd_ps(av, b0, accr[0]);
            accr[1] = _mm512_fmadd_ps(av, b1, accr[1]);
        }
    }
    unsafe { store_tile(&acc, c, ldc, rows, cols, load_c) };
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_direct(
    _: usize,
    _: *const f32,
    _: usize,
    _: *const f32,
    _: *mut f32,
    _: usize,
    _: usize,
    _: usize,
    _: bool,
) {
    unreachable!("available() is false off x86_64")
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(
    _: usize,
    _: *const f32,
    _: *const f32,
    _: *mut f32,
    _: usize,
    _: usize,
    _: usize,
    _: bool,
) {
    unreachable!("available() is false off x86_64")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rnd(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// Strided views (row strides larger than the rows, as attention heads inside [t, heads*d]
    /// buffers) and W given transposed ([k, n], as V in P·V), single-threaded, against f64.
    #[test]
    fn strided_and_transposed_views_match_f64() {
        if !available() {
            eprintln!("SKIP gemm512: CPU without AVX-512");
            return;
        }
        // n <= 64 reads A in place (kernel_direct), wider n packs it
        for &(m, k, n, trans) in &[
            (37, 64, 45, false),
            (70, 130, 64, true),
            (5, 16, 1, true),
            (37, 64, 130, false),
            (70, 300, 100, true),
        ] {
            let (lda, ldw, ldc) = (k + 7, if trans { n + 3 } else { k + 5 }, n + 11);
            let x = rnd(m * lda, 11);
            let w = rnd(if trans { k * ldw } else { n * ldw }, 12);
            let mut out = rnd(m * ldc, 13);
            let before = out.clone();
            let v = Views {
                x: x.as_ptr(),
                lda,
                w: w.as_ptr(),
                ldw,
                w_trans: trans,
                out: out.as_mut_ptr(),
                ldc,
            };
            // SAFETY: AVX-512 checked; the buffers hold every addressed element.
            unsafe { matmul_strided(&v, m, k, n, false, false) };
            for i in 0..m {
                for j in 0..ldc {
                    let got = out[i * ldc + j] as f64;
                    if j >= n {
                        assert_eq!(got, before[i * ldc + j] as f64, "padding column written");
                        continue;
                    }
                    let mut s = 0f64;
                    for p in 0..k {
                        let wv = if trans {
                            w[p * ldw + j]
                        } else {
                            w[j * ldw + p]
                        };
                        s += x[i * lda + p] as f64 * wv as f64;
                    }
                    assert!(
                        (got - s).abs() <= 1e-4 * (1.0 + s.abs()),
                        "({i},{j}): {got} vs {s}"
                    );
                }
            }
        }
    }

    /// Seeded random shapes with odd tails in every dimension, against an f64 reference.
    #[test]
    fn matches_f64_reference_on_odd_shapes() {
        if !available() {
            eprintln!("SKIP gemm512: CPU without AVX-512");
            return;
        }
        for &(m, k, n) in &[
            (17, 5, 3),
            (29, 300, 45),
            (113, 257, 97),
            (250, 512, 384),
            (15, 1030, 33),
        ] {
            for accumulate in [false, true] {
                let x = rnd(m * k, 1 + m as u64);
                let w = rnd(n * k, 2 + n as u64);
                let init = rnd(m * n, 3);
                let mut out = init.clone();
                assert!(matmul_wt(&x, m, k, &w, n, &mut out, accumulate));
                for i in 0..m {
                    for j in 0..n {
                        let mut s = if accumulate {
                            init[i * n + j] as f64
                        } else {
                            0.0
                        };
                        for p in 0..k {
                            s += x[i * k + p] as f64 * w[j * k + p] as f64;
                        }
                        let got = out[i * n + j] as f64;
                        // f32 accumulation of k products of magnitude ≤ 0.25
                        let tol = 1e-6 * (k as f64).sqrt() * 4.0 + 1e-6;
                        assert!(
                            (got - s).abs() <= tol,
                            "m{m} k{k} n{n} acc{accumulate} ({i},{j}): {got} vs {s}"
                        );
                    }
                }
            }
        }
    }
}
