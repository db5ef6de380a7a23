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
