//! Criterion benchmark of one T5 decode step (batch 1 and 8) and the encoder on a random
//! flan-t5-small-shaped checkpoint (written to a temp folder, memory-mapped like a real one).
use criterion::{criterion_group, criterion_main, Criterion};
use jobx_engine::models::t5::{flan_t5_small_config, write_random_checkpoint, T5Model};

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("jobx-bench-t5small-{}", std::process::id()));
    write_random_checkpoint(&dir, &flan_t5_small_config(), 1).expect("write checkpoint");
    let model = T5Model::load_dir(&dir).expect("load");
    let src = 512;
    let mut g = c.benchmark_group("t5_small");
    g.sample_size(10);
    for &batch in &[1usize, 8] {
        let ids: Vec<u32> = (0..batch * src)
            .map(|i| (i * 7919 % 32000) as u32 + 3)
            .collect();
        let mask = vec![1u8; batch * src];
        let enc = model.encode(&ids, &mask, batch, src).expect("encode");
        // decode step at position 64 (cache pre-filled by 64 steps)
        let mut st = model.new_decoder_state(&enc, (0..batch).collect(), 200);
        let mut logits = Vec::new();
        for _ in 0..64 {
            model
                .decode(&enc, &mut st, &vec![5u32; batch], 1, false, &mut logits)
                .expect("decode");
        }
        g.bench_function(format!("decode_step_b{batch}_pos64"), |b| {
            b.iter_batched(
                || (),
                |_| {
                    // keep the cache length fixed: step, then roll back
                    let len = st.len;
                    model
                        .decode(&enc, &mut st, &vec![5u32; batch], 1, false, &mut logits)
                        .expect("decode");
                    st.len = len;
                },
                criterion::BatchSize::SmallInput,
            )
        });
        if batch == 1 {
            g.bench_function("encoder_b1_src512", |b| {
                b.iter(|| model.encode(&ids, &mask, batch, src).expect("encode"))
            });
        }
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
