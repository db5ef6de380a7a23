//! The device graphs (models::t5_device, models::mistral_device: the code the CUDA backend runs) on
//! the host backend (`device::host`: the kernels' semantics with bf16 rounding, no GPU). CI has
//! no GPU, so this is where every line of the device graphs is checked against the HF fixtures:
//! layouts and strides, KV-cache offsets, beam row selection, the T5 relative bias, GQA and
//! sliding windows, per-row LoRA slots and merges, int8 weights. The kernels themselves are
//! checked against the same semantics by the op table on a GPU (tests/cuda_ops.rs).
mod common;

/// `verify` on every fixture through the device graphs on the host backend, with the CUDA
/// tolerances: bf16 and int8 weights, LoRA unmerged and merged (a merge into int8 refused).
#[test]
fn device_graphs_pass_every_fixture_on_the_host_backend() {
    let failed = common::verify_device_fixtures(false).expect("the host backend always runs");
    assert!(failed.is_empty(), "{failed:#?}");
}

/// One batch mixing an adapter row and a base-model row on the device graphs (host backend):
/// each row matches the f32 CPU graph with that row's adapter.
#[test]
fn device_graphs_apply_a_lora_slot_per_row() {
    let host = jobx_engine::device::host::HostBackend::new();
    let set_int8 = |on: bool| {
        host.int8_weights
            .store(on, std::sync::atomic::Ordering::Relaxed)
    };
    let bad = common::mixed_adapter_rows(&host, &set_int8);
    assert!(bad.is_empty(), "{bad:#?}");
}

/// `--cross-kv int8` (int8 T5 cross-attention K/V, one scale per head row) on the host
/// backend: every T5 fixture's logits within the int8 weights' budget of the f32 CPU graph.
#[test]
fn t5_int8_cross_kv_stays_within_the_int8_budget() {
    let host = jobx_engine::device::host::HostBackend::new();
    let set = |on: bool| {
        host.int8_cross_kv
            .store(on, std::sync::atomic::Ordering::Relaxed)
    };
    let rows = common::t5_cross_kv_int8(&host, &set);
    let worst = rows.iter().map(|r| r.0).fold(0f64, f64::max);
    let worst_bf16 = rows.iter().map(|r| r.1).fold(0f64, f64::max);
    eprintln!(
        "int8 cross K/V: worst relative logits error {worst:.3e} (bf16 K/V {worst_bf16:.3e})"
    );
    let bad: Vec<_> = rows
        .iter()
        .filter(|r| r.0 > jobx_engine::verify::CUDA_INT8_TOLERANCE_REL)
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
}

/// The recorded decode-step layout (what a CUDA graph replays) computes exactly what the plain
/// one does on the host backend, T5 and Mistral: same logits to the bit, same greedy picks,
/// through rows reordered and dropped.
#[test]
fn recorded_step_layout_matches_the_plain_one() {
    let host = jobx_engine::device::host::HostBackend::new();
    let set = |on: bool| host.graphs.store(on, std::sync::atomic::Ordering::Relaxed);
    for (name, worst, same_picks, _) in common::recorded_steps(&host, &set) {
        assert_eq!(worst, 0.0, "{name}: logits differ");
        assert!(same_picks, "{name}: greedy picks differ");
    }
}

/// Every op of the host backend rejects each bad argument with a clear error and accepts the
/// right ones (the checks are `device::check`, the same code that guards the CUDA kernels).
#[test]
fn host_backend_rejects_bad_arguments() {
    let host = jobx_engine::device::host::HostBackend::new();
    let bad = common::backend_rejects_bad_arguments(&host);
    assert!(bad.is_empty(), "{bad:#?}");
}
