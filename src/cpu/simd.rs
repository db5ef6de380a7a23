//! Dot products with runtime CPU-feature dispatch. The crate is built for baseline x86-64 (no
//! `-C target-cpu=native`, so binaries run anywhere); the hot loop is compiled a second time with
//! AVX2+FMA (and AVX-512) enabled and chosen at run time.

pub type DotFn = fn(&[f32], &[f32]) -> f32;

/// Portable version: 16 independent accumulators so LLVM vectorises it and the FMA chains overlap.
#[inline(always)]
fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 16];
    let chunks = n / 16;
    for c in 0..chunks {
        let aa = &a[c * 16..c * 16 + 16];
        let bb = &b[c * 16..c * 16 + 16];
        for l in 0..16 {
            acc[l] = aa[l].mul_add(bb[l], acc[l]);
        }
    }
    let mut tail = 0.0f32;
    for i in chunks * 16..n {
        tail = a[i].mul_add(b[i], tail);
    }
    // pairwise combine (fixed order: deterministic)
    let mut s8 = [0.0f32; 8];
    for l in 0..8 {
        s8[l] = acc[l] + acc[l + 8];
    }
    let s4 = [s8[0] + s8[4], s8[1] + s8[5], s8[2] + s8[6], s8[3] + s8[7]];
    (s4[0] + s4[2]) + (s4[1] + s4[3]) + tail
}

fn dot_generic(a: &[f32], b: &[f32]) -> f32 {
    // Without FMA hardware mul_add is a slow libm call; use plain multiply-add there.
    let n = a.len().min(b.len());
    let mut acc = [0.0f32; 8];
    let chunks = n / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut t = 0.0;
    for i in chunks * 8..n {
        t += a[i] * b[i];
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + t
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2_impl(a: &[f32], b: &[f32]) -> f32 {
    dot_body(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn dot_avx512_impl(a: &[f32], b: &[f32]) -> f32 {
    dot_body(a, b)
}

#[cfg(target_arch = "x86_64")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: only selected by dot_fn() after detecting avx2 and fma.
    unsafe { dot_avx2_impl(a, b) }
}

#[cfg(target_arch = "x86_64")]
fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: only selected by dot_fn() after detecting avx512f.
    unsafe { dot_avx512_impl(a, b) }
}

/// The fastest dot product this CPU supports (detected once).
pub fn dot_fn() -> DotFn {
    use std::sync::OnceLock;
    static F: OnceLock<DotFn> = OnceLock::new();
    *F.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::env::var("JOBX_NO_AVX512").is_err()
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("fma")
            {
                return dot_avx512 as DotFn;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return dot_avx2 as DotFn;
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            return dot_body_fma as DotFn;
        }
        #[allow(unreachable_code)]
        dot_generic
    })
}

#[cfg(target_arch = "aarch64")]
fn dot_body_fma(a: &[f32], b: &[f32]) -> f32 {
    dot_body(a, b)
}

#[cfg(test)]
mod tests {
    /// Seeded xorshift values in [-1, 1) for the kernel tests.
    fn uniform(mut seed: u64) -> impl FnMut() -> f32 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
    }

    /// max_lse / first_index_of (greedy decoding's per-row reductions) against f64 and a
    /// scalar scan: every tail length, -inf (masked) and NaN entries, ties (first index wins),
    /// an all-masked row.
    #[test]
    fn max_lse_and_argmax_match_reference() {
        let mut r = uniform(11);
        for len in (1..=40).chain([32128, 32001]) {
            let mut row: Vec<f32> = (0..len).map(|_| r() * 20.0).collect();
            for (i, v) in row.iter_mut().enumerate() {
                if i % 5 == 2 {
                    *v = f32::NEG_INFINITY;
                }
                if i % 11 == 7 {
                    *v = f32::NAN;
                }
            }
            if len > 20 {
                // a tie for the max: the first one must win
                let m = row
                    .iter()
                    .cloned()
                    .filter(|x| !x.is_nan())
                    .fold(f32::MIN, f32::max);
                row[len - 3] = m + 1.0;
                row[len - 1] = m + 1.0;
            }
            let (mx, ls) = super::max_lse(&row);
            let finite: Vec<f64> = row
                .iter()
                .filter(|x| !x.is_nan())
                .map(|&x| x as f64)
                .collect();
            let want_mx = finite.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            assert_eq!(mx as f64, want_mx, "len {len}");
            let want_ls = finite.iter().map(|x| (x - want_mx).exp()).sum::<f64>().ln();
            assert!(
                (ls as f64 - want_ls).abs() < 1e-5,
                "len {len}: {ls} vs {want_ls}"
            );
            let want_i = row.iter().position(|&x| x as f64 == want_mx).unwrap();
            assert_eq!(super::first_index_of(&row, mx), want_i, "len {len}");
        }
        let masked = vec![f32::NEG_INFINITY; 37];
        let (mx, ls) = super::max_lse(&masked);
        assert_eq!((mx, ls), (f32::NEG_INFINITY, f32::NEG_INFINITY));
        assert_eq!(super::first_index_of(&masked, mx), 0);
    }

    /// Attention's decode products (scores = q·K rows, out = P·V rows) against f64 sums, for the
    /// specialised widths (dk = 16, 32, 64, 128), the generic one (48, 80, 256), one without a
    /// vector path (40), and key counts around the 16-key blocks; zero weights (masked keys)
    /// contribute nothing even where V holds non-finite values.
    #[test]
    fn decode_attention_products_match_f64() {
        let mut r = uniform(7);
        for dk in [16usize, 32, 40, 48, 64, 80, 128, 256] {
            for tk in [1usize, 2, 15, 16, 17, 33, 64, 511] {
                let q: Vec<f32> = (0..dk).map(|_| r()).collect();
                let k: Vec<f32> = (0..tk * dk).map(|_| r()).collect();
                let mut v: Vec<f32> = (0..tk * dk).map(|_| r()).collect();
                let mut p: Vec<f32> = (0..tk).map(|_| r().abs()).collect();
                if tk > 2 {
                    p[1] = 0.0;
                    v[dk..2 * dk].iter_mut().for_each(|x| *x = f32::NAN);
                }
                let mut s = vec![0.0f32; tk];
                super::dot_rows(&q, &k, dk, &mut s);
                for j in 0..tk {
                    let want: f64 = (0..dk).map(|d| q[d] as f64 * k[j * dk + d] as f64).sum();
                    let bound: f64 = (0..dk).map(|d| (q[d] * k[j * dk + d]).abs() as f64).sum();
                    assert!(
                        (s[j] as f64 - want).abs() <= 1e-6 * bound + 1e-7,
                        "dot dk {dk} tk {tk} [{j}]: {} vs {want}",
                        s[j]
                    );
                }
                let mut o = vec![f32::NAN; dk];
                super::weighted_rows(&p, &v, dk, &mut o);
                for d in 0..dk {
                    let terms = (0..tk).filter(|&j| p[j] != 0.0);
                    let want: f64 = terms
                        .clone()
                        .map(|j| p[j] as f64 * v[j * dk + d] as f64)
                        .sum();
                    let bound: f64 = terms.map(|j| (p[j] * v[j * dk + d]).abs() as f64).sum();
                    assert!(
                        (o[d] as f64 - want).abs() <= 1e-6 * bound + 1e-7,
                        "pv dk {dk} tk {tk} [{d}]: {} vs {want}",
                        o[d]
                    );
                }
            }
        }
    }

    /// The vectorised softmax (AVX-512 or AVX2, whichever this CPU runs) against the scalar
    /// libm one: every length class (tails of 1..15), masked (-inf) keys exactly 0, an all-masked
    /// row all 0, large score ranges.
    #[test]
    fn softmax_matches_scalar_reference() {
        let mut r = uniform(99);
        for len in (1..=70).chain([512, 513, 1031]) {
            for spread in [1.0f32, 30.0, 200.0] {
                let mut row: Vec<f32> = (0..len).map(|_| r() * spread).collect();
                for (i, v) in row.iter_mut().enumerate() {
                    if i % 7 == 3 {
                        *v = f32::NEG_INFINITY;
                    }
                }
                let mut want = row.clone();
                crate::cpu::softmax_ref(&mut want);
                crate::cpu::softmax_inplace(&mut row);
                for (i, (g, w)) in row.iter().zip(&want).enumerate() {
                    if i % 7 == 3 {
                        assert_eq!(*g, 0.0, "len {len}: masked entry {i}");
                    }
                    assert!(
                        (g - w).abs() <= 2e-6 + 2e-5 * w,
                        "len {len} spread {spread} [{i}]: {g} vs {w}"
                    );
                }
            }
        }
        let mut dead = vec![f32::NEG_INFINITY; 33];
        crate::cpu::softmax_inplace(&mut dead);
        assert!(dead.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn dot_matches_f64_reference() {
        let mut s = 12345u64;
        let mut r = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for n in [0usize, 1, 7, 15, 16, 17, 100, 4099] {
            let a: Vec<f32> = (0..n).map(|_| r()).collect();
            let b: Vec<f32> = (0..n).map(|_| r()).collect();
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            for f in [super::dot_fn(), super::dot_generic as super::DotFn] {
                let got = f(&a, &b) as f64;
                assert!(
                    (got - exact).abs() <= 1e-5 * (1.0 + n as f64).sqrt(),
                    "n={n}: {got} vs {exact}"
                );
            }
        }
    }
}

/// y[j] (+)= Σ_k x[k]·w[j, k] for `rows` consecutive weight rows starting at `w`, for up to
/// `m` input rows: 4 weight rows at a time share each x load and give 4 independent FMA chains,
/// so the loop is limited by load bandwidth rather than FMA latency.
/// Writes out[i * ldo + j] for i < m, j < rows. Returns false if the CPU lacks AVX-512.
///
/// # Safety
/// `x` holds m·k floats, `w` rows·k, and `out` is valid for writes (reads too when
/// `accumulate`) at every out[i * ldo + j], i < m, j < rows, with no other thread touching them.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemv_rows<W: WElem>(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[W],
    rows: usize,
    out: *mut f32,
    ldo: usize,
    accumulate: bool,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() {
            // SAFETY: feature checked; bounds are the caller's contract (see # Safety).
            unsafe { gemv_rows_avx512(x, m, k, w, rows, out, ldo, accumulate) };
            return true;
        }
    }
    let _ = (x, m, k, w, rows, out, ldo, accumulate);
    false
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn has_avx512() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512() -> bool {
    use std::sync::OnceLock;
    static F: OnceLock<bool> = OnceLock::new();
    *F.get_or_init(|| {
        std::env::var("JOBX_NO_AVX512").is_err() && is_x86_feature_detected!("avx512f")
    })
}

/// A weight element the CPU kernels read: f32, or bf16 kept as its raw bits (`Bf16`), widened
/// to f32 in registers (exact) so the arithmetic is f32 either way.
pub trait WElem: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    /// The values as f32: borrowed for f32, widened for bf16 (paths without an AVX-512 kernel).
    fn widen(w: &[Self]) -> std::borrow::Cow<'_, [f32]>;
    /// 16 consecutive elements as f32.
    ///
    /// # Safety
    /// `p` is valid for 16 reads; AVX-512F is available (callers are AVX-512 kernels).
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
}

/// bf16 as stored in safetensors (the high 16 bits of an f32).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(transparent)]
pub struct Bf16(pub u16);

impl WElem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    fn widen(w: &[Self]) -> std::borrow::Cow<'_, [f32]> {
        std::borrow::Cow::Borrowed(w)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }
}

impl WElem for Bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }
    fn widen(w: &[Self]) -> std::borrow::Cow<'_, [f32]> {
        std::borrow::Cow::Owned(w.iter().map(|b| b.to_f32()).collect())
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // zero-extend 16 x u16 to 32 bits, shift into the high half: the f32 with those bits
        unsafe {
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                _mm256_loadu_si256(p as *const __m256i),
            )))
        }
    }
}

/// The first `n` (< 16) elements at `p` as f32, zeros after (tails of rows).
///
/// # Safety
/// `p` is valid for `n` reads; AVX-512F is available.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn load_tail<W: WElem>(p: *const W, n: usize) -> std::arch::x86_64::__m512 {
    let mut buf = [0.0f32; 16];
    for (i, b) in buf.iter_mut().enumerate().take(n) {
        *b = unsafe { *p.add(i) }.to_f32();
    }
    unsafe { std::arch::x86_64::_mm512_loadu_ps(buf.as_ptr()) }
}

/// Four weight rows against four input rows: the 16 dot products as accumulators
/// [x0·w0, x0·w1, x0·w2, x0·w3, x1·w0, ...] (sum each with `hsum16`); named accumulators for
/// the same reason as `gemv_2x8`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gemv_4x4<W: WElem>(
    xs: [*const f32; 4],
    w: [*const W; 4],
    pf: [*const W; 4],
    kk: usize,
    tail: usize,
    tmask: std::arch::x86_64::__mmask16,
) -> [std::arch::x86_64::__m512; 16] {
    use std::arch::x86_64::*;
    let z = _mm512_setzero_ps();
    let (mut c00, mut c01, mut c02, mut c03) = (z, z, z, z);
    let (mut c10, mut c11, mut c12, mut c13) = (z, z, z, z);
    let (mut c20, mut c21, mut c22, mut c23) = (z, z, z, z);
    let (mut c30, mut c31, mut c32, mut c33) = (z, z, z, z);
    let mut p = 0;
    while p < kk {
        for q in pf {
            _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(p) as *const i8);
        }
        let (a, b, c, d) = (
            W::load16(w[0].add(p)),
            W::load16(w[1].add(p)),
            W::load16(w[2].add(p)),
            W::load16(w[3].add(p)),
        );
        // one input row: the four weight rows' FMAs into that row's four accumulators
        macro_rules! row {
            ($i:expr, $e:ident, $f:ident, $g:ident, $h:ident) => {{
                let v = _mm512_loadu_ps(xs[$i].add(p));
                $e = _mm512_fmadd_ps(a, v, $e);
                $f = _mm512_fmadd_ps(b, v, $f);
                $g = _mm512_fmadd_ps(c, v, $g);
                $h = _mm512_fmadd_ps(d, v, $h);
            }};
        }
        row!(0, c00, c01, c02, c03);
        row!(1, c10, c11, c12, c13);
        row!(2, c20, c21, c22, c23);
        row!(3, c30, c31, c32, c33);
        p += 16;
    }
    let mut acc = [
        c00, c01, c02, c03, c10, c11, c12, c13, c20, c21, c22, c23, c30, c31, c32, c33,
    ];
    if tail != 0 {
        let wv: [__m512; 4] = [
            load_tail(w[0].add(kk), tail),
            load_tail(w[1].add(kk), tail),
            load_tail(w[2].add(kk), tail),
            load_tail(w[3].add(kk), tail),
        ];
        for (ii, xp) in xs.iter().enumerate() {
            let v = _mm512_maskz_loadu_ps(tmask, xp.add(kk));
            for (r, wr) in wv.iter().enumerate() {
                acc[4 * ii + r] = _mm512_fmadd_ps(*wr, v, acc[4 * ii + r]);
            }
        }
    }
    acc
}

/// Two weight rows against 8 input rows (x: 8 rows of k floats): the 16 dot products as
/// accumulators [x0·w0, x0·w1, x1·w0, ...] (sum each with `hsum16`). Written with named
/// accumulators and no branch in the loop: the loop-with-arrays version had LLVM spill four
/// accumulators to the stack (a load-FMA-store chain per step; perf annotate).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemv_2x8<W: WElem>(
    x: *const f32,
    k: usize,
    kk: usize,
    tail: usize,
    tmask: std::arch::x86_64::__mmask16,
    w0: *const W,
    w1: *const W,
    pf0: *const W,
    pf1: *const W,
) -> [std::arch::x86_64::__m512; 16] {
    use std::arch::x86_64::*;
    let z = _mm512_setzero_ps();
    let (mut c0, mut c1, mut c2, mut c3, mut c4, mut c5, mut c6, mut c7) = (z, z, z, z, z, z, z, z);
    let (mut d0, mut d1, mut d2, mut d3, mut d4, mut d5, mut d6, mut d7) = (z, z, z, z, z, z, z, z);
    let xr: [*const f32; 8] = std::array::from_fn(|i| x.add(i * k));
    let mut p = 0;
    while p < kk {
        _mm_prefetch::<_MM_HINT_T0>(pf0.wrapping_add(p) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(pf1.wrapping_add(p) as *const i8);
        let (a, b) = (W::load16(w0.add(p)), W::load16(w1.add(p)));
        // one input row: both weight rows' FMAs into that row's two accumulators
        macro_rules! row {
            ($i:expr, $c:ident, $d:ident) => {{
                let v = _mm512_loadu_ps(xr[$i].add(p));
                $c = _mm512_fmadd_ps(a, v, $c);
                $d = _mm512_fmadd_ps(b, v, $d);
            }};
        }
        row!(0, c0, d0);
        row!(1, c1, d1);
        row!(2, c2, d2);
        row!(3, c3, d3);
        row!(4, c4, d4);
        row!(5, c5, d5);
        row!(6, c6, d6);
        row!(7, c7, d7);
        p += 16;
    }
    let mut acc = [
        c0, d0, c1, d1, c2, d2, c3, d3, c4, d4, c5, d5, c6, d6, c7, d7,
    ];
    if tail != 0 {
        let (a, b) = (load_tail(w0.add(kk), tail), load_tail(w1.add(kk), tail));
        for (ii, xp) in xr.iter().enumerate() {
            let v = _mm512_maskz_loadu_ps(tmask, xp.add(kk));
            acc[2 * ii] = _mm512_fmadd_ps(a, v, acc[2 * ii]);
            acc[2 * ii + 1] = _mm512_fmadd_ps(b, v, acc[2 * ii + 1]);
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)] // the raw output pointer and its layout, as the callers hold them
unsafe fn gemv_rows_avx512<W: WElem>(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[W],
    rows: usize,
    out: *mut f32,
    ldo: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let kk = k / 16 * 16;
    let tail = k - kk;
    let tmask: __mmask16 = if tail == 0 {
        0
    } else {
        ((1u32 << tail) - 1) as __mmask16
    };
    let wp = w.as_ptr();
    // Prefetch distance in rows: about 8 KiB ahead of the rows being read, whole quads.
    let ahead = (8192 / (std::mem::size_of::<W>() * k.max(1)))
        .max(4)
        .div_ceil(4)
        * 4;
    let mut j = 0;
    if m == 8 {
        // Eight input rows (batch-8 decode): 2 weight rows x 8 inputs = 16 accumulators, so each
        // weight vector is loaded (and, for bf16, widened) once instead of once per group of 4
        // inputs; the remaining odd row goes to the single-row loop at the end.
        while j + 2 <= rows {
            let (w0, w1) = (wp.add(j * k), wp.add((j + 1) * k));
            // prefetch `ahead` rows on (past the block's end it is a harmless no-op)
            let (pf0, pf1) = (
                wp.wrapping_add((j + ahead) * k),
                wp.wrapping_add((j + ahead + 1) * k),
            );
            let acc = gemv_2x8(x.as_ptr(), k, kk, tail, tmask, w0, w1, pf0, pf1);
            let mut s = [0.0f32; 16];
            _mm512_storeu_ps(s.as_mut_ptr(), hsum16(&acc));
            for ii in 0..8 {
                let o = out.add(ii * ldo + j);
                for r in 0..2 {
                    let v = s[2 * ii + r];
                    *o.add(r) = if accumulate { *o.add(r) + v } else { v };
                }
            }
            j += 2;
        }
    }
    while j + 4 <= rows {
        let (w0, w1, w2, w3) = (
            wp.add(j * k),
            wp.add((j + 1) * k),
            wp.add((j + 2) * k),
            wp.add((j + 3) * k),
        );
        // 4 weight rows × 4 input rows: 16 accumulators, 8 loads per 16 FMAs.
        let m4 = m / 4 * 4;
        let mut i = 0;
        while i < m4 {
            let xs = [
                x.as_ptr().add(i * k),
                x.as_ptr().add((i + 1) * k),
                x.as_ptr().add((i + 2) * k),
                x.as_ptr().add((i + 3) * k),
            ];
            // While the first pass streams these 4 rows, prefetch the next 4 (one row-quad ahead):
            // with 16 FMAs per 4 loads the loop issues too few loads for the hardware prefetcher
            // alone to keep memory busy (m = 8 ran at half the bandwidth of m = 1). Later passes
            // prefetch their own (cached) rows, a no-op, so the kernel loop has no branch.
            let pf: [*const W; 4] = if i == 0 {
                std::array::from_fn(|r| wp.wrapping_add((j + ahead + r) * k))
            } else {
                [w0, w1, w2, w3]
            };
            let acc = gemv_4x4(xs, [w0, w1, w2, w3], pf, kk, tail, tmask);
            let mut s = [0.0f32; 16];
            _mm512_storeu_ps(s.as_mut_ptr(), hsum16(&acc));
            for ii in 0..4 {
                let o = out.add((i + ii) * ldo + j);
                for r in 0..4 {
                    let v = s[4 * ii + r];
                    *o.add(r) = if accumulate { *o.add(r) + v } else { v };
                }
            }
            i += 4;
        }
        for i in m4..m {
            let xp = x.as_ptr().add(i * k);
            let (mut a0, mut a1, mut a2, mut a3) = (
                _mm512_setzero_ps(),
                _mm512_setzero_ps(),
                _mm512_setzero_ps(),
                _mm512_setzero_ps(),
            );
            let pf = m4 == 0 && i == 0 && j + ahead + 4 <= rows;
            let mut p = 0;
            while p < kk {
                if pf {
                    for r in ahead..ahead + 4 {
                        _mm_prefetch::<_MM_HINT_T0>(wp.add((j + r) * k + p) as *const i8);
                    }
                }
                let xv = _mm512_loadu_ps(xp.add(p));
                a0 = _mm512_fmadd_ps(W::load16(w0.add(p)), xv, a0);
                a1 = _mm512_fmadd_ps(W::load16(w1.add(p)), xv, a1);
                a2 = _mm512_fmadd_ps(W::load16(w2.add(p)), xv, a2);
                a3 = _mm512_fmadd_ps(W::load16(w3.add(p)), xv, a3);
                p += 16;
            }
            if tail != 0 {
                let xv = _mm512_maskz_loadu_ps(tmask, xp.add(kk));
                a0 = _mm512_fmadd_ps(load_tail(w0.add(kk), tail), xv, a0);
                a1 = _mm512_fmadd_ps(load_tail(w1.add(kk), tail), xv, a1);
                a2 = _mm512_fmadd_ps(load_tail(w2.add(kk), tail), xv, a2);
                a3 = _mm512_fmadd_ps(load_tail(w3.add(kk), tail), xv, a3);
            }
            let o = out.add(i * ldo + j);
            let s = [
                _mm512_reduce_add_ps(a0),
                _mm512_reduce_add_ps(a1),
                _mm512_reduce_add_ps(a2),
                _mm512_reduce_add_ps(a3),
            ];
            for (r, v) in s.iter().enumerate() {
                *o.add(r) = if accumulate { *o.add(r) + v } else { *v };
            }
        }
        j += 4;
    }
    while j < rows {
        let wr = wp.add(j * k);
        for i in 0..m {
            let xp = x.as_ptr().add(i * k);
            let mut a = _mm512_setzero_ps();
            let mut p = 0;
            while p < kk {
                a = _mm512_fmadd_ps(W::load16(wr.add(p)), _mm512_loadu_ps(xp.add(p)), a);
                p += 16;
            }
            if tail != 0 {
                a = _mm512_fmadd_ps(
                    load_tail(wr.add(kk), tail),
                    _mm512_maskz_loadu_ps(tmask, xp.add(kk)),
                    a,
                );
            }
            let d = _mm512_reduce_add_ps(a);
            let o = out.add(i * ldo + j);
            *o = if accumulate { *o + d } else { d };
        }
        j += 1;
    }
}

/// exp(x) for f32 with Cephes' range reduction and degree-6 polynomial (max rel. error ~2 ulp),
/// written so LLVM vectorises it; x < -87.3 (including -inf from masks) gives exactly 0.
#[inline(always)]
fn exp_poly(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-87.3, 88.3);
    // round-half-even maps to one vector instruction; `round()` would be a libm call per lane
    let n = (xc * LOG2E).round_ties_even();
    let r = xc - n * C1 - n * C2;
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 5e-1);
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.3 {
        0.0
    } else {
        y * scale
    }
}

#[inline(always)]
fn softmax_body(row: &mut [f32]) {
    // Reductions use 16 explicit lanes: LLVM will not reorder a float reduction on its own, and
    // a single accumulator would keep the whole loop scalar.
    let mut m16 = [f32::NEG_INFINITY; 16];
    let chunks = row.len() / 16;
    for c in 0..chunks {
        for l in 0..16 {
            m16[l] = m16[l].max(row[c * 16 + l]);
        }
    }
    let mut mx = m16.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    for &v in &row[chunks * 16..] {
        mx = mx.max(v);
    }
    if mx == f32::NEG_INFINITY {
        row.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    for v in row.iter_mut() {
        *v = exp_poly(*v - mx);
    }
    let mut s16 = [0.0f32; 16];
    for c in 0..chunks {
        for l in 0..16 {
            s16[l] += row[c * 16 + l];
        }
    }
    let mut s: f32 = s16.iter().sum();
    for &v in &row[chunks * 16..] {
        s += v;
    }
    let inv = 1.0 / s;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// gelu_new(x) = 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))), tanh(u) = 1 − 2/(1 + e^{2u}).
#[inline(always)]
fn gelu_tanh_body(x: &mut [f32]) {
    const C: f32 = 0.797_884_6;
    for v in x.iter_mut() {
        let u = C * (*v + 0.044715 * *v * *v * *v);
        let e = exp_poly((2.0 * u).min(80.0));
        let t = 1.0 - 2.0 / (1.0 + e);
        *v = 0.5 * *v * (1.0 + t);
    }
}

/// `exp_poly` on 16 lanes with explicit AVX-512 (same range reduction and polynomial): the
/// auto-vectorised version turned the f32 -> i32 exponent cast and the sum into scalar code.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn exp16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    unsafe {
        let dead = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(-87.3));
        let xc = _mm512_min_ps(
            _mm512_max_ps(x, _mm512_set1_ps(-87.3)),
            _mm512_set1_ps(88.3),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(xc, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), xc);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            5e-1,
        ] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let y = _mm512_fmadd_ps(
            _mm512_mul_ps(p, r),
            r,
            _mm512_add_ps(r, _mm512_set1_ps(1.0)),
        );
        // y * 2^n (exact scaling), then exp(x) = 0 below -87.3 (masked -inf scores included)
        _mm512_maskz_mov_ps(!dead, _mm512_scalef_ps(y, n))
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn softmax_avx512(row: &mut [f32]) {
    use std::arch::x86_64::*;
    let len = row.len();
    let p = row.as_mut_ptr();
    let full = len / 16 * 16;
    let tail = len - full;
    let tm: __mmask16 = ((1u32 << tail) - 1) as __mmask16;
    let mut vm = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut i = 0;
    while i < full {
        vm = _mm512_max_ps(vm, _mm512_loadu_ps(p.add(i)));
        i += 16;
    }
    if tail > 0 {
        let t = _mm512_mask_loadu_ps(_mm512_set1_ps(f32::NEG_INFINITY), tm, p.add(full));
        vm = _mm512_max_ps(vm, t);
    }
    let mx = _mm512_reduce_max_ps(vm);
    if mx == f32::NEG_INFINITY {
        row.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    let vmx = _mm512_set1_ps(mx);
    let mut vs = _mm512_setzero_ps();
    let mut i = 0;
    while i < full {
        let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(p.add(i)), vmx));
        _mm512_storeu_ps(p.add(i), e);
        vs = _mm512_add_ps(vs, e);
        i += 16;
    }
    if tail > 0 {
        let x = _mm512_mask_loadu_ps(_mm512_set1_ps(f32::NEG_INFINITY), tm, p.add(full));
        let e = exp16(_mm512_sub_ps(x, vmx));
        _mm512_mask_storeu_ps(p.add(full), tm, e);
        vs = _mm512_add_ps(vs, e); // lanes past the row are exp(-inf) = 0
    }
    let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(vs));
    let mut i = 0;
    while i < full {
        _mm512_storeu_ps(p.add(i), _mm512_mul_ps(_mm512_loadu_ps(p.add(i)), inv));
        i += 16;
    }
    if tail > 0 {
        let x = _mm512_maskz_loadu_ps(tm, p.add(full));
        _mm512_mask_storeu_ps(p.add(full), tm, _mm512_mul_ps(x, inv));
    }
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_avx2(row: &mut [f32]) {
    softmax_body(row)
}
/// gelu_tanh_body's formula on 16 lanes with the explicit exp (inlined into AVX-512 callers).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn gelu16(v: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    unsafe {
        let one = _mm512_set1_ps(1.0);
        let cube = _mm512_mul_ps(
            _mm512_mul_ps(_mm512_set1_ps(0.044715), v),
            _mm512_mul_ps(v, v),
        );
        let u = _mm512_mul_ps(_mm512_set1_ps(0.797_884_6), _mm512_add_ps(v, cube));
        let e = exp16(_mm512_min_ps(_mm512_add_ps(u, u), _mm512_set1_ps(80.0)));
        let t = _mm512_sub_ps(
            one,
            _mm512_div_ps(_mm512_set1_ps(2.0), _mm512_add_ps(one, e)),
        );
        _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5), v), _mm512_add_ps(one, t))
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn gelu_avx512(x: &mut [f32]) {
    use std::arch::x86_64::*;
    let len = x.len();
    let p = x.as_mut_ptr();
    let full = len / 16 * 16;
    let mut i = 0;
    while i < full {
        _mm512_storeu_ps(p.add(i), gelu16(_mm512_loadu_ps(p.add(i))));
        i += 16;
    }
    if full < len {
        gelu_tanh_body(&mut x[full..]);
    }
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_avx2(x: &mut [f32]) {
    gelu_tanh_body(x)
}

fn level() -> u8 {
    use std::sync::OnceLock;
    static L: OnceLock<u8> = OnceLock::new();
    *L.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::env::var("JOBX_NO_AVX512").is_err()
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("fma")
            {
                return 2;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return 1;
            }
        }
        0
    })
}

/// (max m, log Σ exp(x - m)) of a row in two read-only vector passes: log-probabilities are
/// `(x - m) - ls`, for every entry or just the chosen token's (torch's order of operations).
/// NaN entries are ignored (the AVX-512 exp maps them to exp(-87.3) ~ 1e-38, i.e. nothing);
/// an all -inf (or empty) row gives (-inf, -inf).
pub fn max_lse(row: &[f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if level() == 2 {
            // SAFETY: features detected in level()
            return unsafe { max_lse_avx512(row) };
        }
    }
    let mx = row
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    if mx == f32::NEG_INFINITY {
        return (mx, mx);
    }
    let mut s16 = [0.0f32; 16];
    for (i, &x) in row.iter().enumerate() {
        if !x.is_nan() {
            s16[i % 16] += exp_poly(x - mx);
        }
    }
    (mx, s16.iter().sum::<f32>().ln())
}

/// Index of the first entry equal to `mx` (the row's max from `max_lse`), like torch.argmax's
/// first maximum; 0 when there is none (an all -inf row).
pub fn first_index_of(row: &[f32], mx: f32) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        if level() == 2 {
            // SAFETY: features detected in level()
            return unsafe { first_index_avx512(row, mx) };
        }
    }
    row.iter().position(|&x| x == mx).unwrap_or(0)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn max_lse_avx512(row: &[f32]) -> (f32, f32) {
    use std::arch::x86_64::*;
    let len = row.len();
    let p = row.as_ptr();
    let full = len / 16 * 16;
    let tail = len - full;
    let tm: __mmask16 = ((1u32 << tail) - 1) as __mmask16;
    let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
    // max(x, m) returns m when x is NaN: NaN entries never become the max
    let (mut m0, mut m1) = (ninf, ninf);
    let mut i = 0;
    while i + 32 <= full {
        m0 = _mm512_max_ps(_mm512_loadu_ps(p.add(i)), m0);
        m1 = _mm512_max_ps(_mm512_loadu_ps(p.add(i + 16)), m1);
        i += 32;
    }
    if i < full {
        m0 = _mm512_max_ps(_mm512_loadu_ps(p.add(i)), m0);
    }
    if tail > 0 {
        m1 = _mm512_max_ps(_mm512_mask_loadu_ps(ninf, tm, p.add(full)), m1);
    }
    let mx = _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
    if mx == f32::NEG_INFINITY {
        return (mx, mx);
    }
    let vmx = _mm512_set1_ps(mx);
    let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut i = 0;
    while i + 32 <= full {
        s0 = _mm512_add_ps(s0, exp16(_mm512_sub_ps(_mm512_loadu_ps(p.add(i)), vmx)));
        s1 = _mm512_add_ps(
            s1,
            exp16(_mm512_sub_ps(_mm512_loadu_ps(p.add(i + 16)), vmx)),
        );
        i += 32;
    }
    if i < full {
        s0 = _mm512_add_ps(s0, exp16(_mm512_sub_ps(_mm512_loadu_ps(p.add(i)), vmx)));
    }
    if tail > 0 {
        let x = _mm512_mask_loadu_ps(ninf, tm, p.add(full));
        s1 = _mm512_add_ps(s1, exp16(_mm512_sub_ps(x, vmx))); // exp(-inf) = 0 past the row
    }
    (mx, _mm512_reduce_add_ps(_mm512_add_ps(s0, s1)).ln())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn first_index_avx512(row: &[f32], mx: f32) -> usize {
    use std::arch::x86_64::*;
    let full = row.len() / 16 * 16;
    let v = _mm512_set1_ps(mx);
    let mut i = 0;
    while i < full {
        let k = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(_mm512_loadu_ps(row.as_ptr().add(i)), v);
        if k != 0 {
            return i + k.trailing_zeros() as usize;
        }
        i += 16;
    }
    row[full..]
        .iter()
        .position(|&x| x == mx)
        .map_or(0, |j| full + j)
}

/// In-place softmax with the vectorised exp; masked (-inf) entries become exactly 0.
pub fn softmax(row: &mut [f32]) {
    match level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: features detected in level()
        2 => unsafe { softmax_avx512(row) },
        #[cfg(target_arch = "x86_64")]
        1 => unsafe { softmax_avx2(row) },
        _ => softmax_body(row),
    }
}

/// In-place gelu_new (tanh form) with the vectorised exp.
pub fn gelu_tanh_inplace(x: &mut [f32]) {
    match level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: features detected in level()
        2 => unsafe { gelu_avx512(x) },
        #[cfg(target_arch = "x86_64")]
        1 => unsafe { gelu_avx2(x) },
        _ => gelu_tanh_body(x),
    }
}

#[cfg(test)]
mod exp_tests {
    #[test]
    fn exp_poly_is_accurate_and_masks_to_zero() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let got = super::exp_poly(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 5e-7, "max rel err {worst}");
        assert_eq!(super::exp_poly(f32::NEG_INFINITY), 0.0);
        // 7 hand-picked values plus 100 spread over [-12, 12): the 16-lane path and the tail
        let mut g = vec![-10.0f32, -1.0, -0.1, 0.0, 0.3, 2.0, 10.0];
        g.extend((0..100).map(|i| -12.0 + 0.24 * i as f32));
        let want: Vec<f32> = g.iter().map(|&v| super::super::gelu_tanh(v)).collect();
        super::gelu_tanh_inplace(&mut g);
        for (a, b) in g.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
        }
        let mut r = vec![1.0f32, f32::NEG_INFINITY, 3.0];
        super::softmax(&mut r);
        assert_eq!(r[1], 0.0);
        assert!((r[0] + r[2] - 1.0).abs() < 1e-6);
    }
}

/// out[d] = Σ_j p[j] · v[j·dk + d] for `p.len()` contiguous rows of width `dk` (attention's P·V for
/// one query). Zero weights (masked keys) are skipped.
pub fn weighted_rows(p: &[f32], v: &[f32], dk: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() && dk.is_multiple_of(16) && dk <= 256 {
            // SAFETY: feature checked; v holds p.len() rows of dk floats (asserted below).
            assert!(v.len() >= p.len() * dk && out.len() >= dk);
            unsafe { weighted_rows_avx512(p, v, dk, out) };
            return;
        }
    }
    out[..dk].iter_mut().for_each(|o| *o = 0.0);
    for (j, &pj) in p.iter().enumerate() {
        if pj == 0.0 {
            continue;
        }
        for (o, &x) in out[..dk].iter_mut().zip(&v[j * dk..(j + 1) * dk]) {
            *o += pj * x;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn weighted_rows_avx512(p: &[f32], v: &[f32], dk: usize, out: &mut [f32]) {
    // The accumulator count must be a constant: with a runtime count LLVM kept them on the
    // stack, so every FMA was a load-FMA-store chain through memory (perf: 40% of the kernel on
    // one instruction).
    match dk / 16 {
        4 => unsafe { weighted_rows_n::<4>(p, v, out) },
        8 => unsafe { weighted_rows_n::<8>(p, v, out) },
        1 => unsafe { weighted_rows_n::<1>(p, v, out) },
        2 => unsafe { weighted_rows_n::<2>(p, v, out) },
        nv => {
            // other widths: one 16-float column block at a time, each in registers
            for c in 0..nv {
                // SAFETY: column block c of every row lies inside v / out (dk = 16·nv)
                unsafe {
                    weighted_rows_col(p, v.as_ptr().add(c * 16), dk, out.as_mut_ptr().add(c * 16))
                };
            }
        }
    }
}

/// P·V for rows of NV·16 floats. Two keys per iteration into two accumulator sets, so the FMA
/// chains are 2·NV long instead of NV (NV = 4 alone would leave the FMA units half idle).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn weighted_rows_n<const NV: usize>(p: &[f32], v: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let dk = NV * 16;
    let mut a0 = [_mm512_setzero_ps(); NV];
    let mut a1 = [_mm512_setzero_ps(); NV];
    let vp = v.as_ptr();
    let pairs = p.len() / 2;
    for jj in 0..pairs {
        let (p0, p1) = (p[2 * jj], p[2 * jj + 1]);
        let (r0, r1) = (vp.add(2 * jj * dk), vp.add((2 * jj + 1) * dk));
        if p0 != 0.0 && p1 != 0.0 {
            let (b0, b1) = (_mm512_set1_ps(p0), _mm512_set1_ps(p1));
            for c in 0..NV {
                a0[c] = _mm512_fmadd_ps(b0, _mm512_loadu_ps(r0.add(c * 16)), a0[c]);
                a1[c] = _mm512_fmadd_ps(b1, _mm512_loadu_ps(r1.add(c * 16)), a1[c]);
            }
        } else if p0 != 0.0 || p1 != 0.0 {
            // masked keys (padding) carry exactly zero weight: skipped, not multiplied
            let (b, row) = if p0 != 0.0 { (p0, r0) } else { (p1, r1) };
            let b = _mm512_set1_ps(b);
            for (c, a) in a0.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(b, _mm512_loadu_ps(row.add(c * 16)), *a);
            }
        }
    }
    if p.len() % 2 == 1 && p[p.len() - 1] != 0.0 {
        let j = p.len() - 1;
        let b = _mm512_set1_ps(p[j]);
        for (c, a) in a0.iter_mut().enumerate() {
            *a = _mm512_fmadd_ps(b, _mm512_loadu_ps(vp.add(j * dk + c * 16)), *a);
        }
    }
    for c in 0..NV {
        _mm512_storeu_ps(out.as_mut_ptr().add(c * 16), _mm512_add_ps(a0[c], a1[c]));
    }
}

/// One 16-float column block of P·V (row stride `dk`) for the widths without a specialisation.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn weighted_rows_col(p: &[f32], v: *const f32, dk: usize, out: *mut f32) {
    use std::arch::x86_64::*;
    let mut a = _mm512_setzero_ps();
    for (j, &pj) in p.iter().enumerate() {
        if pj != 0.0 {
            a = _mm512_fmadd_ps(_mm512_set1_ps(pj), _mm512_loadu_ps(v.add(j * dk)), a);
        }
    }
    _mm512_storeu_ps(out, a);
}

/// out[j] = q · k[j·dk .. (j+1)·dk] for `out.len()` contiguous key rows (attention scores of one
/// decode query against a head's K rows).
pub fn dot_rows(q: &[f32], k: &[f32], dk: usize, out: &mut [f32]) {
    assert!(q.len() >= dk && k.len() >= out.len() * dk);
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() && dk.is_multiple_of(16) && dk > 0 && dk <= 256 {
            // SAFETY: feature checked; lengths asserted above.
            unsafe { dot_rows_avx512(q, k, dk, out) };
            return;
        }
    }
    let dot = dot_fn();
    for (j, o) in out.iter_mut().enumerate() {
        *o = dot(&q[..dk], &k[j * dk..(j + 1) * dk]);
    }
}

/// 16 keys per block, one accumulator each, then one transposing reduction tree turns the 16
/// accumulators into the 16 scores (about 3 instructions per key instead of a full horizontal
/// sum each: with dk = 64 that sum cost more than the 4 FMAs).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_rows_avx512(q: &[f32], k: &[f32], dk: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let nv = dk / 16;
    let (qp, kp) = (q.as_ptr(), k.as_ptr());
    let n = out.len();
    let mut j = 0;
    while j + 16 <= n {
        let mut a = [_mm512_setzero_ps(); 16];
        for c in 0..nv {
            let qv = _mm512_loadu_ps(qp.add(c * 16));
            for (r, ar) in a.iter_mut().enumerate() {
                *ar = _mm512_fmadd_ps(_mm512_loadu_ps(kp.add((j + r) * dk + c * 16)), qv, *ar);
            }
        }
        _mm512_storeu_ps(out.as_mut_ptr().add(j), unsafe { hsum16(&a) });
        j += 16;
    }
    while j < n {
        let mut a = _mm512_setzero_ps();
        for c in 0..nv {
            a = _mm512_fmadd_ps(
                _mm512_loadu_ps(kp.add(j * dk + c * 16)),
                _mm512_loadu_ps(qp.add(c * 16)),
                a,
            );
        }
        out[j] = _mm512_reduce_add_ps(a);
        j += 1;
    }
}

/// Lane r of the result = the sum of the 16 lanes of a[r].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn hsum16(a: &[std::arch::x86_64::__m512; 16]) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // 1. pairs: per 128-bit chunk [x0+x2, y0+y2, x1+x3, y1+y3] for (x, y) = (a[2i], a[2i+1])
    // (plain loops, not closures: the intrinsics must inline into this AVX-512 function)
    let mut t = [_mm512_setzero_ps(); 8];
    for (i, ti) in t.iter_mut().enumerate() {
        let (x, y) = (a[2 * i], a[2 * i + 1]);
        *ti = _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y));
    }
    // 2. quads (pairs of f32 moved as f64): per 128-bit chunk the partial sums of a[4i..4i+4]
    let mut u = [_mm512_setzero_ps(); 4];
    for (i, ui) in u.iter_mut().enumerate() {
        let (x, y) = (_mm512_castps_pd(t[2 * i]), _mm512_castps_pd(t[2 * i + 1]));
        *ui = _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)),
        );
    }
    // 3. the four 128-bit chunks: [u0 c0+c1, u0 c2+c3, u1 c0+c1, u1 c2+c3], then once more
    let v = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b10_00_10_00>(u[0], u[1]),
        _mm512_shuffle_f32x4::<0b11_01_11_01>(u[0], u[1]),
    );
    let w = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b10_00_10_00>(u[2], u[3]),
        _mm512_shuffle_f32x4::<0b11_01_11_01>(u[2], u[3]),
    );
    _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b10_00_10_00>(v, w),
        _mm512_shuffle_f32x4::<0b11_01_11_01>(v, w),
    )
}
