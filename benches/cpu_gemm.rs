//! Criterion benchmarks of the CPU matrix products at T5/Mistral shapes: the skinny (decode)
//! path and the gemm-crate (encoder/prefill) path. Reports GFLOP/s via throughput in elements.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use jobx_engine::cpu::matmul_wt;

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

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("matmul_wt");
    g.sample_size(10);
    // (m, k, n): decode rows × d_model × out features
    for &(m, k, n) in &[
        (1, 512, 1024),
        (1, 512, 32128),
        (8, 512, 1024),
        (8, 512, 32128),
        (512, 512, 1024),
        (4096, 512, 384),
    ] {
        let x = rnd(m * k, 1);
        let w = rnd(n * k, 2);
        let mut out = vec![0.0f32; m * n];
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("{m}x{k}x{n}")),
            &(),
            |b, _| b.iter(|| matmul_wt(&x, m, k, &w, n, &mut out, false)),
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
