//! Load time of a device graph: a FLAN-T5-Large-shaped random bf16 checkpoint (d_model 1024,
//! 24+24 layers, d_ff 2816, vocab 32128, untied head: the shape of tools/gpu_bench_e2e.py,
//! 1.6 GB) put into a `T5Device` on the host backend, bf16 and weight-only int8. The host
//! backend's `upload` is one memcpy, so this times what the CUDA load does on the host before
//! its copies: reading the map, converting, fusing, quantising. Every `jobx-engine` command on
//! CUDA pays it once per process (gpu-check's end-to-end step ~20 times).
//!
//! In the same run, the baseline: every tensor read as f32 (`Checkpoint::f32`), the first step
//! of the load before 2026-11-27, which then rounded the f32 values back to bf16.
//!
//!   cargo bench --bench device_load            (JOBX_LOAD_DIR=folder to keep the checkpoint)
//!
//! One JSON line per measurement (median of 3 after a warm-up that pages the file in).
use jobx_engine::checkpoint::Checkpoint;
use jobx_engine::device::host::HostBackend;
use jobx_engine::models::t5::{
    flan_t5_large_config, weight_shapes, write_random_checkpoint_as, T5Config,
};
use jobx_engine::models::t5_device::T5Device;
use std::sync::atomic::Ordering;
use std::time::Instant;

fn median_ms(mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..3)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[1]
}

fn main() {
    // `cargo bench` passes --bench; a filter argument is accepted and ignored
    let keep = std::env::var_os("JOBX_LOAD_DIR");
    let dir = keep
        .clone()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("jobx-bench-t5large-{}", std::process::id()))
        });
    let cfg_json = flan_t5_large_config();
    if !dir.join("model.safetensors").exists() {
        eprintln!(
            "writing a T5-Large-shaped bf16 checkpoint to {}",
            dir.display()
        );
        write_random_checkpoint_as(&dir, &cfg_json, 1, safetensors::Dtype::BF16)
            .expect("write checkpoint");
    }
    let cfg: T5Config = serde_json::from_value(cfg_json).expect("config");
    let ck = Checkpoint::open_dir(&dir).expect("open");
    let shapes = weight_shapes(&cfg);
    let params: usize = shapes
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    let read_f32 = || {
        for (name, shape) in &shapes {
            std::hint::black_box(ck.f32(name, shape).expect("read"));
        }
    };
    read_f32(); // page the file in
    let host = HostBackend::new();
    let load = |int8: bool| {
        host.int8_weights.store(int8, Ordering::Relaxed);
        std::hint::black_box(T5Device::load(&host, cfg.clone(), &ck).expect("load"));
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let row = |what: &str, ms: f64| {
        println!(
            "{}",
            serde_json::json!({"bench": "device_load", "model": "t5-large-shape bf16",
                "params": params, "what": what, "ms": (ms * 10.0).round() / 10.0,
                "threads": threads})
        );
    };
    row("baseline: every tensor read as f32", median_ms(read_f32));
    row(
        "T5Device::load bf16 (host backend)",
        median_ms(|| load(false)),
    );
    row(
        "T5Device::load int8 (host backend)",
        median_ms(|| load(true)),
    );
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
