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
            if std::env::var("JOBX_NO_AVX512").is_err() && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
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
                assert!((got - exact).abs() <= 1e-5 * (1.0 + n as f64).sqrt(), "n={n}: {got} vs {exact}");
            }
        }
    }
}

/// y[j] (+)= Σ_k x[k]·w[j, k] for `rows` consecutive weight rows starting at `w`, for up to
/// `m` input rows: 4 weight rows at a time share each x load and give 4 independent FMA chains,
/// so the loop is limited by load bandwidth rather than FMA latency.
/// Writes out[i * ldo + j] for i < m, j < rows. Returns false if the CPU lacks AVX-512.
pub fn gemv_rows(x: &[f32], m: usize, k: usize, w: &[f32], rows: usize, out: *mut f32, ldo: usize, accumulate: bool) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() {
            // SAFETY: feature checked; bounds asserted by the caller (x: m*k, w: rows*k, out rows).
            unsafe { gemv_rows_avx512(x, m, k, w, rows, out, ldo, accumulate) };
            return true;
        }
    }
    let _ = (x, m, k, w, rows, out, ldo, accumulate);
    false
}

#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    use std::sync::OnceLock;
    static F: OnceLock<bool> = OnceLock::new();
    *F.get_or_init(|| std::env::var("JOBX_NO_AVX512").is_err() && is_x86_feature_detected!("avx512f"))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gemv_rows_avx512(x: &[f32], m: usize, k: usize, w: &[f32], rows: usize, out: *mut f32, ldo: usize, accumulate: bool) {
    use std::arch::x86_64::*;
    let kk = k / 16 * 16;
    let tail = k - kk;
    let tmask: __mmask16 = if tail == 0 { 0 } else { ((1u32 << tail) - 1) as __mmask16 };
    let wp = w.as_ptr();
    let mut j = 0;
    while j + 4 <= rows {
        let (w0, w1, w2, w3) = (wp.add(j * k), wp.add((j + 1) * k), wp.add((j + 2) * k), wp.add((j + 3) * k));
        for i in 0..m {
            let xp = x.as_ptr().add(i * k);
            let (mut a0, mut a1, mut a2, mut a3) = (_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps());
            let mut p = 0;
            while p < kk {
                let xv = _mm512_loadu_ps(xp.add(p));
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w0.add(p)), xv, a0);
                a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w1.add(p)), xv, a1);
                a2 = _mm512_fmadd_ps(_mm512_loadu_ps(w2.add(p)), xv, a2);
                a3 = _mm512_fmadd_ps(_mm512_loadu_ps(w3.add(p)), xv, a3);
                p += 16;
            }
            if tail != 0 {
                let xv = _mm512_maskz_loadu_ps(tmask, xp.add(kk));
                a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tmask, w0.add(kk)), xv, a0);
                a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tmask, w1.add(kk)), xv, a1);
                a2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tmask, w2.add(kk)), xv, a2);
                a3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tmask, w3.add(kk)), xv, a3);
            }
            let o = out.add(i * ldo + j);
            let s = [_mm512_reduce_add_ps(a0), _mm512_reduce_add_ps(a1), _mm512_reduce_add_ps(a2), _mm512_reduce_add_ps(a3)];
            for (r, v) in s.iter().enumerate() {
                *o.add(r) = if accumulate { *o.add(r) + v } else { *v };
            }
        }
        j += 4;
    }
    while j < rows {
        let wr = std::slice::from_raw_parts(wp.add(j * k), k);
        for i in 0..m {
            let d = dot_avx512_impl(&x[i * k..(i + 1) * k], wr);
            let o = out.add(i * ldo + j);
            *o = if accumulate { *o + d } else { d };
        }
        j += 1;
    }
}
