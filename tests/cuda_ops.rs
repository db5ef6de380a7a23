//! The CUDA op-test table (ggml test-backend-ops style): every kernel against its CPU reference on
//! seeded random inputs, odd sizes, size-1 dimensions and long rows, with a tolerance per output
//! dtype: |gpu - ref| <= atol + rtol·|ref|. Each case prints its seed, max abs/rel error and the
//! share of the error budget used.
//!
//! Without a GPU (or without `--features cuda`) the test prints a visible SKIP line and passes;
//! with JOBX_REQUIRE_GPU=1 it fails instead (tools/gpu-check.sh sets it).
//!
//! Inputs are rounded to bf16 first, and the CPU references compute in f32 (f64 where noted) on
//! those same values, so the tolerances cover only the kernels' own rounding: bf16 outputs round
//! once or twice (2^-8 relative each), f32 outputs differ by summation order only.

mod common;
fn require_gpu() -> bool {
    std::env::var("JOBX_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// Print a SKIP line that `cargo test` shows even for a passing test (libtest captures only the
/// print macros, not direct writes to the stderr handle).
fn skip(msg: &str) {
    use std::io::Write;
    assert!(!require_gpu(), "{msg} but JOBX_REQUIRE_GPU=1");
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// The GPU for test `name`, or None after a visible SKIP line (a failure with
/// JOBX_REQUIRE_GPU=1).
#[cfg(feature = "cuda")]
fn gpu_or_skip(name: &str) -> Option<jobx_engine::cuda::Gpu> {
    match jobx_engine::cuda::Gpu::new(0) {
        Ok(g) => Some(g),
        Err(e) => {
            skip(&format!("SKIP {name}: no usable GPU ({e})"));
            None
        }
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_op_table() {
    skip("SKIP cuda_op_table: built without --features cuda");
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_op_table() {
    let Some(gpu) = gpu_or_skip("cuda_op_table") else {
        return;
    };
    eprintln!("cuda_op_table on {} ({:?})", gpu.name, gpu.loaded_as);
    let failures = table::run(&gpu);
    assert!(
        failures.is_empty(),
        "failed cases:\n{}",
        failures.join("\n")
    );
}

/// The bad-argument table of the device ops (common::backend_rejects_bad_arguments, also run on
/// the host backend in CI) on the GPU: every bad call is refused before any launch.
#[cfg(feature = "cuda")]
#[test]
fn cuda_backend_rejects_bad_arguments() {
    let Some(gpu) = gpu_or_skip("cuda_backend_rejects_bad_arguments") else {
        return;
    };
    let mut bad = common::backend_rejects_bad_arguments(&gpu);
    // the right calls launched kernels: they must also have run without a fault
    if let Err(e) = gpu.stream().synchronize() {
        bad.push(format!("a launch of the right calls faulted: {e}"));
    }
    // out of device memory is an error naming the op and the bytes, never an abort, and the
    // device stays usable afterwards (64 TiB: more than any GPU has)
    let huge = 1usize << 46;
    for (what, r) in [
        ("zeros", gpu.zeros::<u8>("oom test", huge).map(|_| ())),
        ("scratch", gpu.scratch::<u8>("oom test", huge).map(|_| ())),
    ] {
        // (OutOfMemory, not a general backend error: extract retries such a batch in halves)
        match r {
            Err(jobx_engine::Error::OutOfMemory {
                op: "oom test",
                msg,
                ..
            }) if msg.contains(&format!("allocating {huge} bytes")) && msg.contains("free") => {}
            other => bad.push(format!("{what} of {huge} bytes: {other:?}")),
        }
    }
    match gpu
        .upload("after oom", &[1.0f32, 2.0])
        .and_then(|b| gpu.download("after oom", &b))
    {
        Ok(v) if v == [1.0, 2.0] => {}
        other => bad.push(format!("the device after an allocation failure: {other:?}")),
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

/// `verify --device cuda` on every T5 and Mistral fixture (common::verify_device_fixtures):
/// logits within the stated bf16 (int8) tolerance of the HF f32 references, greedy (and beam)
/// ids identical up to an f32 near tie; the LoRA fixtures unmerged and merged.
#[test]
fn cuda_verify_fixtures() {
    match common::verify_device_fixtures(true) {
        Err(msg) => skip(&format!("SKIP cuda_verify_fixtures: {msg}")),
        Ok(failed) => assert!(failed.is_empty(), "{failed:#?}"),
    }
}

/// `--cross-kv int8` on the CUDA T5 graphs (common::t5_cross_kv_int8): every T5 fixture's
/// logits within the int8 weights' budget of the f32 CPU graph, and different from bf16 K/V.
#[cfg(feature = "cuda")]
#[test]
fn cuda_t5_int8_cross_kv() {
    let Some(gpu) = gpu_or_skip("cuda_t5_int8_cross_kv") else {
        return;
    };
    let set = |on: bool| {
        gpu.int8_cross_kv
            .store(on, std::sync::atomic::Ordering::Relaxed)
    };
    let rows = common::t5_cross_kv_int8(&gpu, &set);
    let worst = rows.iter().map(|r| r.0).fold(0f64, f64::max);
    let worst_bf16 = rows.iter().map(|r| r.1).fold(0f64, f64::max);
    eprintln!(
        "CUDA int8 cross K/V: worst relative logits error {worst:.3e} (bf16 K/V {worst_bf16:.3e})"
    );
    let bad: Vec<_> = rows
        .iter()
        .filter(|r| r.0 > jobx_engine::verify::CUDA_INT8_TOLERANCE_REL)
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
}

/// CUDA graphs: T5 and Mistral decode steps recorded once and replayed give the plain steps'
/// logits (up to the decode attention's key split, which follows the cache length: a few bf16
/// roundings) and the same greedy picks through rows reordered and dropped (each a new
/// recording), and are really replayed (a failed recording falls back to plain steps with a
/// note, which must not pass here).
#[cfg(feature = "cuda")]
#[test]
fn cuda_graph_replay_matches_plain_steps() {
    let Some(gpu) = gpu_or_skip("cuda_graph_replay_matches_plain_steps") else {
        return;
    };
    let set = |on: bool| gpu.graphs.store(on, std::sync::atomic::Ordering::Relaxed);
    for (name, worst, same_picks, replayed) in common::recorded_steps(&gpu, &set) {
        eprintln!("{name}: graph vs plain steps, max relative logits difference {worst:.3e}");
        assert!(replayed, "{name}: the step was not replayed as a graph");
        assert!(worst <= 1e-2, "{name}: logits differ by {worst:.3e}");
        assert!(same_picks, "{name}: greedy picks differ");
    }
}

/// Programmatic dependent launch (`Gpu::pdl`, opt-in): the decode steps of every T5 and Mistral
/// fixture (common::recorded_steps' drive, beam search included) give bit for bit the logits and
/// picks of ordinary launches, as plain steps and as replayed CUDA graphs (recordings made of
/// PDL launches replay). Only on a device whose kernels were all
/// loaded from sm_90 cubins (`pdl_capable`); elsewhere a visible SKIP, even with
/// JOBX_REQUIRE_GPU=1, since the feature does not exist there.
#[cfg(feature = "cuda")]
#[test]
fn cuda_pdl_matches_plain_launches() {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(gpu) = gpu_or_skip("cuda_pdl_matches_plain_launches") else {
        return;
    };
    if !gpu.pdl_capable {
        // (straight to the stderr handle, visible without --nocapture, as `skip` does, but
        // without its JOBX_REQUIRE_GPU assertion)
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIP cuda_pdl_matches_plain_launches: {} has no sm_90 kernels ({:?})",
            gpu.name,
            gpu.loaded_as
        );
        return;
    }
    let set = |on: bool| gpu.pdl.store(on, Relaxed);
    let steps = || common::recorded_steps(&gpu, &set);
    same_steps_either_way(&gpu, "PDL vs ordinary launches", 0.0, &steps, &mut |_| {});
}

/// `steps` (common::recorded_steps or recorded_steps_of: decode steps with a switch off and
/// on) run as plain steps and then as replayed CUDA graphs: logits within `tol` of each
/// other (0: bit for bit), the same picks, the graphs really replayed; `after` runs after
/// each of the two.
#[cfg(feature = "cuda")]
fn same_steps_either_way(
    gpu: &jobx_engine::cuda::Gpu,
    what: &str,
    tol: f64,
    steps: &dyn Fn() -> Vec<(String, f64, bool, bool)>,
    after: &mut dyn FnMut(bool),
) {
    use std::sync::atomic::Ordering::Relaxed;
    for graphs in [false, true] {
        gpu.graphs.store(graphs, Relaxed);
        for (name, worst, same_picks, replayed) in steps() {
            eprintln!(
                "{name}: graphs {graphs}: {what}, max relative logits difference {worst:.3e}, \
                 replayed {replayed}"
            );
            // (rel_err counts a NaN as infinite)
            assert!(
                worst <= tol,
                "{name} (graphs {graphs}): logits differ by {worst:.3e}"
            );
            assert!(same_picks, "{name} (graphs {graphs}): picks differ");
            assert_eq!(
                replayed, graphs,
                "{name} (graphs {graphs}): replayed {replayed}"
            );
        }
        after(graphs);
    }
    gpu.graphs.store(false, Relaxed);
}

/// The RMS norms fused into the decode GEMMs (`Gpu::gemm_rms`, opt-in): the decode steps of
/// every T5 and Mistral fixture (common::recorded_steps' drive: rows reordered and dropped,
/// LoRA rows, beam search) give bit for bit the logits and picks of the separate norm
/// launches, as plain steps and as replayed CUDA graphs, and the fused kernels did run.
#[cfg(feature = "cuda")]
#[test]
fn cuda_gemm_rms_matches_separate_norms() {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(gpu) = gpu_or_skip("cuda_gemm_rms_matches_separate_norms") else {
        return;
    };
    let set = |on: bool| gpu.gemm_rms.store(on, Relaxed);
    let steps = || common::recorded_steps(&gpu, &set);
    let mut before = gpu.rms_fused.load(Relaxed);
    same_steps_either_way(
        &gpu,
        "fused vs separate RMS norms",
        0.0,
        &steps,
        &mut |graphs| {
            let now = gpu.rms_fused.load(Relaxed);
            eprintln!("graphs {graphs}: {} fused launches", now - before);
            assert!(
                now > before,
                "graphs {graphs}: no GEMM ran with its norm fused"
            );
            before = now;
        },
    );
    gpu.gemm_rms.store(false, Relaxed);
}

/// The one-pass decode attention (`Gpu::decode_online`, opt-in) in the models' decode steps:
/// common::recorded_steps' drive (rows reordered and dropped, Mistral's sliding window, beam
/// search), plain and as replayed CUDA graphs, on fixtures widened to head dims 64 and 128
/// (common::with_head_dim: the fixtures' own 4-16 wide heads take the general kernel). The
/// logits within a few bf16 roundings of the two-pass kernel's (its weights are
/// exp(s - m) exp(m - M), not exp(s - M)), the same picks, and the kernel did run.
#[cfg(feature = "cuda")]
#[test]
fn cuda_decode_online_matches_two_pass() {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(gpu) = gpu_or_skip("cuda_decode_online_matches_two_pass") else {
        return;
    };
    let models = common::widened_models();
    let dirs: Vec<_> = models
        .iter()
        .map(|(n, t)| (n.clone(), t.path().to_path_buf()))
        .collect();
    let set = |on: bool| gpu.decode_online.store(on, Relaxed);
    let steps = || common::recorded_steps_of(&gpu, &set, &dirs);
    let what = "one-pass vs two-pass decode attention";
    let mut before = gpu.online_decodes.load(Relaxed);
    same_steps_either_way(&gpu, what, 1e-2, &steps, &mut |graphs| {
        let now = gpu.online_decodes.load(Relaxed);
        eprintln!(
            "graphs {graphs}: {} one-pass decode attention launches",
            now - before
        );
        assert!(
            now > before,
            "graphs {graphs}: the one-pass kernel never ran"
        );
        before = now;
    });
    // and against the f32 CPU graph, as cuda_widened_heads_match_cpu with the default kernel
    set(true);
    widened_heads_match_cpu(&gpu, &models, "one-pass decode attention");
    set(false);
}

/// common::widened_vs_cpu on `gpu` as it is set: every row and step within the bf16 tolerance.
#[cfg(feature = "cuda")]
fn widened_heads_match_cpu(
    gpu: &jobx_engine::cuda::Gpu,
    models: &[(String, tempfile::TempDir)],
    what: &str,
) {
    let rows = common::widened_vs_cpu(gpu, models);
    let (worst, at) = rows
        .iter()
        .map(|r| (r.0, r.1.as_str()))
        .fold((0f64, ""), |a, b| if b.0 > a.0 { b } else { a });
    eprintln!(
        "{what}: {} rows/steps, worst relative logits error against the CPU {worst:.3e} ({at})",
        rows.len()
    );
    let bad: Vec<_> = rows
        .iter()
        .filter(|r| r.0 > jobx_engine::verify::CUDA_BF16_TOLERANCE_REL)
        .collect();
    assert!(bad.is_empty(), "{what}: {bad:#?}");
}

/// The device graphs with the specialised attention kernels inside them (fixtures widened to
/// head dims 64 and 128: common::widened_vs_cpu; the fixtures' own heads take the general
/// kernel): a padded T5 batch's encoder and decode steps, a padded Mistral prompt's prefill
/// and decode steps past its window, each row within the bf16 tolerance of the f32 CPU graph
/// (itself checked against HF transformers on the fixtures).
#[cfg(feature = "cuda")]
#[test]
fn cuda_widened_heads_match_cpu() {
    let Some(gpu) = gpu_or_skip("cuda_widened_heads_match_cpu") else {
        return;
    };
    widened_heads_match_cpu(&gpu, &common::widened_models(), "widened heads");
}

/// A recorded decode step's cache append and attention (`copy_rows_at` + `attention_at`) at the
/// T5-Large head shape (d64) over a 3000-position cache with a key mask and a 2000-key window,
/// recorded once with `capture_graph` and replayed at positions 0, 7, 1500 and 2999 (its key
/// split and the merge buffer, allocated inside the recording, included): bit for bit against
/// the same ops run eagerly, and within the bf16 tolerance of plain `attention` over the first
/// position + 1 keys.
#[cfg(feature = "cuda")]
#[test]
fn cuda_graph_replays_a_recorded_decode_attention() {
    use half::bf16;
    use jobx_engine::device::{AttnCall, Backend, Rows, View};
    let Some(gpu) = gpu_or_skip("cuda_graph_replays_a_recorded_decode_attention") else {
        return;
    };
    let (rows, h, dk, cap) = (2usize, 16usize, 64usize, 3000usize);
    let (inner, positions) = (h * dk, [0i32, 7, 1500, 2999]);
    let w = 3 * inner;
    let mut r = common::Rng(5);
    let mut vals = |n: usize| -> Vec<bf16> { (0..n).map(|_| bf16::from_f32(r.f())).collect() };
    let cache0 = vals(rows * cap * w);
    let steps: Vec<Vec<bf16>> = positions.iter().map(|_| vals(rows * w)).collect();
    let bias: Vec<f32> = vals(32 * h).iter().map(|x| x.to_f32()).collect();
    let bias = gpu.upload("t", &bias).unwrap();
    // row 1 masks every 7th key
    let mask: Vec<i32> = (0..rows * cap)
        .map(|i| (i / cap == 0 || i % 7 != 3) as i32)
        .collect();
    let dmask = gpu.upload("t", &mask).unwrap();
    let call = AttnCall {
        batch: rows,
        kv_batch_rows: rows,
        heads: h,
        kv_heads: h,
        tq: 1,
        tk: cap,
        dk,
        q_offset: 0,
        window: 2000,
        scale: 1.0,
        causal: true,
        t5_bias: Some((32, 128, false)),
    };
    let view = |sb, off| View {
        sb,
        sh: dk,
        st: w,
        off,
    };
    let body = |cache: &mut _, step: &_, pos: &_, o: &mut _| -> jobx_engine::Result<()> {
        gpu.copy_rows_at(
            "t",
            (step, Rows { off: 0, ld: w }),
            (
                &mut *cache,
                Rows {
                    off: 0,
                    ld: cap * w,
                },
            ),
            rows,
            w,
            pos,
            w,
            cap - 1,
        )?;
        gpu.attention_at(
            &call,
            pos,
            (step, view(w, 0)),
            (&*cache, view(cap * w, inner)),
            (&*cache, view(cap * w, 2 * inner)),
            o,
            Some(&dmask),
            None,
            Some(&bias),
        )
    };
    let run = |graphs: bool| {
        let mut cache = gpu.upload("t", &cache0).unwrap();
        let mut step = gpu.zeros::<bf16>("t", rows * w).unwrap();
        let mut pos = gpu.zeros::<i32>("t", 1).unwrap();
        let mut o = gpu.zeros::<bf16>("t", rows * inner).unwrap();
        let graph = graphs.then(|| {
            gpu.capture_graph(&mut || body(&mut cache, &step, &pos, &mut o))
                .unwrap()
        });
        let mut outs = Vec::new();
        let mut plain = Vec::new();
        for (p, sv) in positions.iter().zip(&steps) {
            gpu.write("t", sv, &mut step).unwrap();
            gpu.write("t", &[*p], &mut pos).unwrap();
            match &graph {
                Some(g) => gpu.launch_graph(g).unwrap(),
                None => body(&mut cache, &step, &pos, &mut o).unwrap(),
            }
            outs.push(gpu.download("t", &o).unwrap());
            // plain attention at this position over its first p + 1 keys (mask sliced to them)
            let tk = *p as usize + 1;
            let m: Vec<i32> = (0..rows)
                .flat_map(|r| mask[r * cap..r * cap + tk].to_vec())
                .collect();
            let dm = gpu.upload("t", &m).unwrap();
            let mut op = gpu.zeros::<bf16>("t", rows * inner).unwrap();
            gpu.attention(
                &AttnCall {
                    tk,
                    q_offset: *p as usize,
                    ..call
                },
                (&step, view(w, 0)),
                (&cache, view(cap * w, inner)),
                (&cache, view(cap * w, 2 * inner)),
                &mut op,
                Some(&dm),
                None,
                Some(&bias),
            )
            .unwrap();
            plain.push(gpu.download("t", &op).unwrap());
        }
        outs.push(gpu.download("t", &cache).unwrap());
        (outs, plain)
    };
    let ((eager, plain), (replayed, _)) = (run(false), run(true));
    for (i, (a, b)) in eager.iter().zip(&replayed).enumerate() {
        let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "output {i} (position {:?}) differs", positions.get(i));
    }
    // the device position means what q_offset means (the key split differs: bf16 tolerance)
    for (i, (a, b)) in eager.iter().zip(&plain).enumerate() {
        for (x, y) in a.iter().zip(b) {
            let (x, y) = (x.to_f32(), y.to_f32());
            assert!(
                (x - y).abs() <= 1e-3 + 8e-3 * y.abs(),
                "position {}: attention_at {x} vs attention {y}",
                positions[i]
            );
        }
    }
    eprintln!("recorded decode attention: replays at {positions:?} = eager, bit for bit, = plain");

    // A recording that fails (a synchronisation inside it, after a buffer was allocated and
    // dropped there) is an error, leaves the engine usable, and a later recording works.
    let mut bad = || -> jobx_engine::Result<()> {
        drop(gpu.scratch::<f32>("t", 1000)?);
        gpu.synchronize("t")
    };
    assert!(
        gpu.capture_graph(&mut bad).is_err(),
        "a synchronisation was recorded"
    );
    let back = gpu
        .download("t", &gpu.upload("t", &[1i32, 2, 3]).unwrap())
        .unwrap();
    assert_eq!(back, vec![1, 2, 3], "the engine after a failed recording");
    let (replayed2, _) = run(true);
    assert!(
        replayed2
            .iter()
            .zip(&eager)
            .all(|(a, b)| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())),
        "a recording after a failed one differs"
    );
}

/// `extract`/`eval` on CUDA go through `Engine` (padding, masks, beam rows, the CUDA steppers):
/// its outputs must equal those of the CUDA graphs driven directly (the path `verify --device
/// cuda` checks against HF), for T5 (right padding) and Mistral (left padding), greedy and
/// 2-beam, on a padded batch of two rows; on the LoRA fixtures with the adapter loaded through
/// `Engine::load_adapter` (as `--adapter` does), used by both rows and by the first row only
/// (one batch mixing an adapter and the base model, as `extract` batches on CUDA).
#[cfg(feature = "cuda")]
#[test]
fn cuda_engine_matches_direct_cuda_graphs() {
    use jobx_engine::extract::Engine;
    use jobx_engine::generate::{beam_parents, generate, GenOptions};
    use jobx_engine::models::adapter::LoraAdapter;
    use jobx_engine::models::mistral_device::{MistralDevice, MistralDeviceStepper};
    use jobx_engine::models::t5_device::{T5Device, T5DeviceStepper};
    let Some(gpu) = gpu_or_skip("cuda_engine_matches_direct_cuda_graphs") else {
        return;
    };
    let fx = std::env::var_os("JOBX_FIXTURES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"));
    for name in [
        "t5-gated-gelu-untied",
        "mistral-gqa4-window",
        "t5-lora",
        "mistral-lora",
    ] {
        let dir = fx.join(name);
        let mut engine = Engine::load_cuda(dir.to_str().unwrap(), false, false).unwrap();
        assert!(engine.on_gpu() && engine.mixes_adapters());
        let lora = name.ends_with("lora");
        let patterns: Vec<[Option<usize>; 2]> = if lora {
            assert_eq!(engine.load_adapter("a", &dir.join("adapter")).unwrap(), 0);
            vec![[Some(0), Some(0)], [Some(0), None]]
        } else {
            vec![[None, None]]
        };
        let adapter = lora.then(|| LoraAdapter::load(&dir.join("adapter"), "a").unwrap());
        let v = engine.vocab_size() as u32;
        let inputs = common::two_rows(v);
        for slots in patterns {
            for beams in [1usize, 2] {
                let opts = GenOptions {
                    max_new_tokens: 12,
                    min_new_tokens: 12,
                    num_beams: beams,
                    eos: engine.eos.clone(),
                    ..Default::default()
                };
                let got: Vec<Vec<u32>> = engine
                    .generate_ids_rows(&inputs, &opts, &mut [], &slots)
                    .unwrap()
                    .into_iter()
                    .map(|o| o.tokens)
                    .collect();
                let s = 9;
                let want: Vec<Vec<u32>> = if name.starts_with("t5") {
                    let mut m = T5Device::load_dir(&gpu, &dir).unwrap();
                    if let Some(a) = &adapter {
                        assert_eq!(m.attach_adapter(a).unwrap(), 0);
                    }
                    let (mut ids, mut mask) = (Vec::new(), Vec::new());
                    for r in &inputs {
                        let pad = std::iter::repeat_n(engine.pad_id(), s - r.len());
                        ids.extend(r.iter().copied().chain(pad));
                        mask.extend((0..s).map(|j| (j < r.len()) as u8));
                    }
                    let enc = m.encode_with(&ids, &mask, 2, s, &slots).unwrap();
                    let src = beam_parents(2, beams);
                    let mut st =
                        T5DeviceStepper::new(&m, &enc, src, opts.max_new_tokens + 1).unwrap();
                    let start = vec![m.cfg.decoder_start(); 2];
                    generate(&mut st, &start, &opts, &mut []).unwrap()
                } else {
                    let mut m = MistralDevice::load_dir(&gpu, &dir).unwrap();
                    if let Some(a) = &adapter {
                        assert_eq!(m.attach_adapter(a).unwrap(), 0);
                    }
                    let (ids, mask) = common::left_padded(&inputs, s, engine.pad_id());
                    let mut st = MistralDeviceStepper::new(
                        &m,
                        &ids,
                        &mask,
                        (2, s),
                        beams,
                        opts.max_new_tokens + 1,
                        &slots,
                    )
                    .unwrap();
                    generate(&mut st, &[0, 0], &opts, &mut []).unwrap()
                }
                .into_iter()
                .map(|o| o.tokens)
                .collect();
                assert_eq!(got, want, "{name}, adapters {slots:?}, {beams} beam(s)");
                eprintln!("{name}, adapters {slots:?}, {beams} beam(s): Engine on CUDA = direct CUDA graphs");
            }
        }
    }
}

/// LoRA in the CUDA graphs, SGMV style: a batch mixing an adapter row and a base-model row,
/// each row's logits against the f32 CPU graph (common::mixed_adapter_rows).
#[cfg(feature = "cuda")]
#[test]
fn cuda_mixed_adapter_rows_match_cpu() {
    let Some(gpu) = gpu_or_skip("cuda_mixed_adapter_rows_match_cpu") else {
        return;
    };
    let set_int8 = |on: bool| {
        gpu.int8_weights
            .store(on, std::sync::atomic::Ordering::Relaxed)
    };
    let bad = common::mixed_adapter_rows(&gpu, &set_int8);
    assert!(bad.is_empty(), "{bad:#?}");
}

/// Tests that need something only the emulated device (tools/cuda-emu) offers, `need`: the
/// GPU handle's name says whether this is it; elsewhere a visible SKIP line (no GPU at all, or
/// a real GPU, which cannot pretend so) and false.
#[cfg(feature = "cuda")]
fn emulated_or_skip(name: &str, need: &str) -> bool {
    let Some(gpu) = gpu_or_skip(name) else {
        return false;
    };
    if !gpu.name.contains("cuda-emu") {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIP {name}: needs the emulated device's {need} (device {})",
            gpu.name
        );
        return false;
    }
    true
}

/// A GPU older than sm_80 (the emulated device as a Turing T4: JOBX_EMU_SM=75), whose driver
/// cannot run or compile the kernels: `verify --device cuda` fails with the compute capability
/// and the way out before loading anything, and `--device auto` says why and verifies on the CPU.
/// A real GPU cannot pretend to be another: there the test says so and passes.
#[cfg(feature = "cuda")]
#[test]
fn cuda_refuses_gpus_older_than_sm80() {
    if !emulated_or_skip(
        "cuda_refuses_gpus_older_than_sm80",
        "choice of architecture",
    ) {
        return;
    }
    let verify = |device: &str| {
        let o = std::process::Command::new(common::bin())
            .args(["verify", "--device", device])
            .arg(common::fixture("t5-relu-tied"))
            .env("JOBX_EMU_SM", "75")
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (ok, err) = verify("cuda");
    assert!(!ok, "--device cuda on sm_75 succeeded:\n{err}");
    assert!(
        err.contains("compute capability 7.5")
            && err.contains("8.0 or newer")
            && err.contains("--device cpu")
            && !err.contains("panicked"),
        "{err}"
    );
    let (ok, err) = verify("auto");
    assert!(
        ok,
        "--device auto on sm_75 did not fall back to the CPU:\n{err}"
    );
    assert!(
        err.contains("the CPU, as the GPU did not open") && err.contains("compute capability 7.5"),
        "{err}"
    );
}

/// Out of GPU memory, end to end, on the emulated device (tools/cuda-emu; its memory size is
/// JOBX_EMU_MEMORY_BYTES, and JOBX_EMU_PEAK_FILE gets a process's most memory in use at once):
/// `extract --device cuda` with a batch that does not fit runs it again in halves and writes
/// every posting's result; with less memory than a posting needs alone, the posting gets an
/// error record and the run ends with the hint. A recorded decode step whose first launch does
/// not fit (JOBX_EMU_GRAPH_LAUNCH_OOM=1: every graph's first launch fails so) is run as plain
/// steps, with the same records. The limits are placed by the peaks of the same
/// runs with the memory unlimited: one posting, and four in one batch (every posting is cut to
/// the same 128 source tokens, so one posting's peak is any single posting's). A real GPU's
/// memory cannot be shrunk: there the test says so and passes.
#[cfg(feature = "cuda")]
#[test]
fn cuda_extract_survives_running_out_of_memory() {
    if !emulated_or_skip(
        "cuda_extract_survives_running_out_of_memory",
        "memory limit",
    ) {
        return;
    }
    let model = common::tiny_t5_with_tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let four = common::repo().join("examples/hn-postings.jsonl");
    let text = std::fs::read_to_string(&four).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 4, "{}", four.display());
    let one = dir.path().join("one.jsonl");
    std::fs::write(&one, format!("{}\n", lines[0])).unwrap();
    // a small schema keeps the outputs short (the job schema needs ~190 tokens)
    let schema = dir.path().join("schema.json");
    std::fs::write(
        &schema,
        r#"{"type":"object","properties":{"title":{"type":"string","maxLength":20},"remote":{"type":"boolean"}},"required":["title","remote"],"additionalProperties":false}"#,
    )
    .unwrap();
    let id = |l: &str| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].clone();
    let ids4: Vec<serde_json::Value> = lines.iter().map(|l| id(l)).collect();
    let (one, four) = ((one.as_path(), &ids4[..1]), (four.as_path(), &ids4[..]));
    // (records, stderr, peak bytes) of one run, after asserting it exited 0 with one record per
    // posting, in input order
    let run = |(input, want): (&std::path::Path, &[serde_json::Value]),
               batch: usize,
               limit: Option<u64>,
               graph_oom: bool,
               tag: &str| {
        let peak = dir.path().join(format!("peak-{tag}"));
        let mut c = std::process::Command::new(common::bin());
        c.args(["--device", "cuda", "extract", "--model"])
            .arg(model.path())
            .arg(input)
            .args(["--num-beams", "1", "--max-source-tokens", "128"])
            .args(["--max-new-tokens", "60", "--batch-size", &batch.to_string()])
            .arg("--schema")
            .arg(&schema)
            .env("JOBX_EMU_PEAK_FILE", &peak)
            // a fixed GEMM choice: tuning's L2-flush buffer (80 MB) would set the peaks, and
            // the emulated fixed rule's LM-head kernel (4016 blocks) takes 1 s a step
            .env("JOBX_GEMM_TUNE", "skinny_tc");
        match limit {
            Some(l) => c.env("JOBX_EMU_MEMORY_BYTES", l.to_string()),
            None => c.env_remove("JOBX_EMU_MEMORY_BYTES"),
        };
        c.env(
            "JOBX_EMU_GRAPH_LAUNCH_OOM",
            if graph_oom { "1" } else { "0" },
        );
        let o = c.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{tag}: {err}");
        let recs: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let ids: Vec<_> = recs.iter().map(|r| r["id"].clone()).collect();
        assert_eq!(ids, want, "{tag}: one record per posting, in order\n{err}");
        let peak: u64 = std::fs::read_to_string(&peak)
            .unwrap_or_else(|e| panic!("{tag}: no peak file from the emulated device: {e}"))
            .trim()
            .parse()
            .unwrap();
        (recs, err, peak)
    };
    let all_ok = |recs: &[serde_json::Value], err: &str, tag: &str| {
        for r in recs {
            assert!(
                r["output"].is_object() && r["error"].is_null(),
                "{tag}: {r}\n{err}"
            );
        }
    };
    let (recs, err, peak1) = run(one, 1, None, false, "one posting");
    all_ok(&recs, &err, "one posting");
    let (recs4, err, peak4) = run(four, 4, None, false, "batch of 4");
    all_ok(&recs4, &err, "batch of 4");
    assert!(
        peak4 > peak1,
        "a batch of 4 peaked at {peak4} B, one posting at {peak1} B"
    );
    // room for a posting alone, not for the batch of 4: split, every result written
    let (recs, err, _) = run(four, 4, Some((peak1 + peak4) / 2), false, "between");
    all_ok(&recs, &err, "between");
    assert!(
        err.contains(&format!(
            "{}a batch of 4 did not fit",
            jobx_engine::extract::OOM_RETRY_WARNING
        )),
        "no retry said:\n{err}"
    );
    // room for less than the posting alone: an error record for it, and the hint at the end
    let (recs, err, _) = run(one, 1, Some(peak1 - 1), false, "below one posting");
    let e = recs[0]["error"].as_str().unwrap_or_default();
    assert!(e.contains("out of device memory"), "{}\n{err}", recs[0]);
    assert_eq!(recs[0]["error_kind"], "out_of_device_memory", "{}", recs[0]);
    assert!(
        err.contains("did not fit in GPU memory even alone"),
        "no hint:\n{err}"
    );
    // the recorded step's first launch does not fit: plain steps, the same records
    let (recs, err, _) = run(four, 4, None, true, "graph launch out of memory");
    all_ok(&recs, &err, "graph launch out of memory");
    assert!(
        err.contains("did not fit in device memory") && err.contains("goes on without graphs"),
        "no fallback said:\n{err}"
    );
    for (a, b) in recs.iter().zip(&recs4) {
        assert_eq!(
            (&a["output"], &a["raw"]),
            (&b["output"], &b["raw"]),
            "plain steps after the failed launch differ from the replayed ones"
        );
    }
}

/// The op cases written against `device::Backend` (LoRA, greedy pick, top-k, attention, gather), run on the host
/// backend without a GPU: checks the host backend (the semantics the device-graph tests rely
/// on) and the cases themselves against their independent f32/f64 references before a GPU runs
/// them.
#[cfg(feature = "cuda")]
#[test]
fn host_backend_passes_the_generic_op_cases() {
    let host = jobx_engine::device::host::HostBackend::new();
    let mut failed = Vec::new();
    for seed in [1u64, 2] {
        let runs = [
            table::lora(&host, seed, 20, 130, 256, &[16; 3], false, true),
            table::lora(&host, seed, 5, 40, 64, &[8; 3], false, true),
            table::lora(&host, seed, 70, 130, 256, &[3, 8], false, false),
            table::lora(&host, seed, 20, 96, 128, &[3, 8], true, false),
            table::greedy(&host, seed, 3, 50001, false),
            table::greedy(&host, seed, 32, 32128, true),
            table::greedy(&host, seed, 1, 7, true),
            table::gather(&host, seed, 3, 40, 24, &[2, 0, 2, 1], false),
            table::topk(&host, seed, 4, 100, 12, true),
            table::topk(&host, seed, 3, 32128, 8, false),
            table::topk(&host, seed, 1, 7, 1, true),
            table::gather(&host, seed, 2, 37, 13, &[1, 1], false),
            table::recorded_step(&host, seed, 3, 2, 64, 40, 17, Some((32, 128, false))),
            table::recorded_step(&host, seed, 1, 3, 16, 5, 0, None),
            table::gather(&host, seed, 2, 37, 13, &[1, 1, 0], true),
            // attention: beams' K/V row map with operands at offsets in fused buffers (8-aligned
            // and not), causal with several batch rows, heads and query blocks
            table::attention(
                &host,
                seed,
                3,
                2,
                2,
                1,
                1030,
                64,
                false,
                0,
                0,
                None,
                true,
                Some(8),
                true,
                false,
            ),
            table::attention(
                &host,
                seed,
                4,
                2,
                2,
                70,
                90,
                64,
                false,
                0,
                0,
                None,
                true,
                Some(3),
                true,
                false,
            ),
            table::attention(
                &host, seed, 4, 2, 2, 70, 90, 64, false, 0, 0, None, true, None, true, false,
            ),
            // a batch row whose keys are all masked (output 0)
            table::attention(
                &host, seed, 3, 2, 1, 70, 6, 128, false, 0, 0, None, true, None, false, false,
            ),
            table::attention(
                &host,
                seed,
                3,
                3,
                3,
                150,
                150,
                64,
                true,
                0,
                0,
                Some((32, 128, false)),
                true,
                None,
                false,
                false,
            ),
            table::attention(
                &host,
                seed,
                2,
                6,
                2,
                190,
                230,
                128,
                true,
                0,
                40,
                None,
                false,
                Some(8),
                false,
                false,
            ),
            // int8 K/V (the cross-attention's with --cross-kv int8): decode steps with the
            // beams' row map, and a prefill-sized query count (the general kernel on a GPU)
            table::attention(
                &host,
                seed,
                3,
                2,
                2,
                1,
                1030,
                64,
                false,
                0,
                0,
                None,
                true,
                Some(0),
                true,
                true,
            ),
            table::attention(
                &host,
                seed,
                4,
                2,
                2,
                70,
                90,
                64,
                false,
                0,
                0,
                None,
                true,
                Some(64),
                false,
                true,
            ),
        ];
        failed.extend(runs.into_iter().filter_map(|r| r.err()));
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

#[cfg(feature = "cuda")]
mod table {
    use half::bf16;
    use jobx_engine::cpu;
    use jobx_engine::cuda::params::{JOBX_ACT_GELU_TANH, JOBX_ACT_RELU, JOBX_ACT_SILU};
    use jobx_engine::cuda::tune::{GemmKey, GemmMode, SkinnyKernel};
    use jobx_engine::cuda::*;

    use crate::common::Rng;
    use rayon::prelude::*;

    /// Every GEMM kernel choice a case runs under (the skinny ones only for m <= 32).
    const VARIANTS: [Variant; 5] = [
        Variant::Default,
        Variant::Tiled,
        Variant::Skinny,
        Variant::SkinnyTc,
        Variant::SkinnyTcSplit,
    ];

    /// Test data of the op table on top of the shared generator.
    trait Data {
        /// n bf16-representable values in [-scale, scale]
        fn vec(&mut self, n: usize, scale: f32) -> Vec<f32>;
        fn i8s(&mut self, n: usize) -> Vec<i8>;
    }
    impl Data for Rng {
        fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
            (0..n).map(|_| rb(self.f() * scale)).collect()
        }
        fn i8s(&mut self, n: usize) -> Vec<i8> {
            (0..n).map(|_| (self.f() * 127.0).round() as i8).collect()
        }
    }
    fn rb(x: f32) -> f32 {
        bf16::from_f32(x).to_f32()
    }
    fn tob(v: &[f32]) -> Vec<bf16> {
        v.iter().map(|&x| bf16::from_f32(x)).collect()
    }
    fn fromb(v: &[bf16]) -> Vec<f32> {
        v.iter().map(|x| x.to_f32()).collect()
    }

    struct Tol {
        atol: f32,
        rtol: f32,
    }
    /// Integer results and selections (ids, quantised values, exact maxima).
    const EXACT: Tol = Tol {
        atol: 0.0,
        rtol: 0.0,
    };
    const BF16_OUT: Tol = Tol {
        atol: 1e-3,
        rtol: 8e-3,
    };
    const BF16_OUT_2ROUND: Tol = Tol {
        atol: 2e-3,
        rtol: 1.6e-2,
    };
    const F32_OUT: Tol = Tol {
        atol: 1e-4,
        rtol: 1e-4,
    };

    /// Compare, print the case line, return an error line when over budget.
    fn check(name: &str, seed: u64, got: &[f32], want: &[f32], tol: Tol) -> Result<(), String> {
        if got.len() != want.len() {
            return Err(format!(
                "{name}: {} values, expected {}",
                got.len(),
                want.len()
            ));
        }
        let (mut max_abs, mut max_rel, mut budget) = (0f32, 0f32, 0f32);
        for (g, w) in got.iter().zip(want) {
            let d = (g - w).abs();
            if !d.is_finite() && g != w {
                return Err(format!("{name} seed {seed}: non-finite {g} vs {w}"));
            }
            let d = if g == w { 0.0 } else { d };
            max_abs = max_abs.max(d);
            max_rel = max_rel.max(d / w.abs().max(1e-30));
            budget = budget.max(d / (tol.atol + tol.rtol * w.abs()));
        }
        eprintln!(
            "  {name:<44} seed {seed:<4} max_abs {max_abs:.3e} max_rel {max_rel:.3e} budget {:.0}%",
            budget * 100.0
        );
        if budget > 1.0 {
            Err(format!(
                "{name} seed {seed}: {:.0}% of tolerance",
                budget * 100.0
            ))
        } else {
            Ok(())
        }
    }

    type Case<'a> = (String, Box<dyn Fn(&Gpu, u64) -> Result<(), String> + 'a>);

    pub fn run(gpu: &Gpu) -> Vec<String> {
        let mut cases: Vec<Case> = Vec::new();
        // element-wise form: d 1, 37, 4099, and 8200 (a multiple of 8 past the vector form's
        // 8192); vector form: 512, 520 (3 warps, the last partly idle), 1024 (T5-Large), 4096
        // (Mistral), 8192 (its longest row)
        for &(rows, d) in &[
            (1, 1),
            (3, 37),
            (7, 512),
            (5, 520),
            (4, 1024),
            (3, 4096),
            (2, 8192),
            (2, 8200),
            (2, 4099),
        ] {
            cases.push((
                format!("rms_norm bf16 {rows}x{d}"),
                Box::new(move |g, s| rms(g, s, rows, d)),
            ));
        }
        for kind in [JOBX_ACT_RELU, JOBX_ACT_GELU_TANH, JOBX_ACT_SILU] {
            // n a multiple of 8 takes the kernel's vector form (1000, 2048), the rest not
            for &(n, gated) in &[
                (1, false),
                (1000, true),
                (2048, false),
                (4097, true),
                (333, false),
            ] {
                cases.push((
                    format!("act kind {kind} n {n} gated {gated}"),
                    Box::new(move |g, s| act(g, s, kind, n, gated)),
                ));
            }
        }
        // gated activation of a fused gate|up projection [rows, 2*cols]
        for kind in [JOBX_ACT_GELU_TANH, JOBX_ACT_SILU] {
            for &(rows, cols) in &[(1, 1), (3, 2816), (5, 1001)] {
                cases.push((
                    format!("gated act kind {kind} {rows}x{cols}"),
                    Box::new(move |g, s| gated_act(g, s, kind, rows, cols)),
                ));
            }
        }
        // rows of heads*hd, or wider ones (the q and k heads at the start of a fused q|k|v row)
        for &(t, h, hd, extra, theta) in &[
            (1, 1, 2, 0, 10000.0),
            (5, 3, 64, 0, 10000.0),
            (9, 2, 128, 0, 1e6),
            (7, 5, 64, 128, 10000.0),
            (3, 3, 128, 256, 1e6),
        ] {
            cases.push((
                format!("rope t{t} h{h} d{hd} row {}", h * hd + extra),
                Box::new(move |g, s| rope(g, s, t, h, hd, h * hd + extra, theta)),
            ));
        }
        // (rows, cols, src off, src ld, dst off, dst ld): the K|V cache appends, aligned and not
        for &(rows, cols, so, sl, dof, dl) in &[
            (1, 1, 0, 1, 0, 1),
            (32, 2048, 4096, 6144, 3 * 2048, 300 * 2048),
            (5, 256, 384, 640, 0, 256),
            (4, 37, 3, 41, 5, 100),
            (3, 64, 1, 70, 8, 64),
            // rows over several 4096-column chunks of the grid, partial last chunk
            (3, 9000, 5, 9010, 8, 9100),
            (2, 8200, 0, 8200, 16, 8224),
        ] {
            cases.push((
                format!("copy_rows {rows}x{cols} src {so}+{sl} dst {dof}+{dl}"),
                Box::new(move |g, s| copy_rows(g, s, rows, cols, (so, sl), (dof, dl))),
            ));
        }
        // beam reordering of KV caches: (buffers, block, used prefix, parents), rows repeated,
        // dropped and reordered; aligned blocks, odd ones, several column chunks, nothing used
        for (nb, per, used, parents) in [
            (3usize, 40usize, 24usize, vec![2usize, 0, 2, 1]),
            (2, 37, 13, vec![1, 1]),
            (2, 3 * 4096 + 24, 2 * 4096 + 8, vec![0, 2, 1]),
            (1, 16, 0, vec![0, 0]),
            (2, 64, 64, vec![]),
        ] {
            cases.push((
                format!("gather_blocks {nb} x {per} used {used} parents {parents:?}"),
                Box::new({
                    let parents = parents.clone();
                    move |g, s| gather(g, s, nb, per, used, &parents, false)
                }),
            ));
            cases.push((
                format!("gather_blocks_into x{nb} per {per} used {used} parents {parents:?}"),
                Box::new(move |g, s| gather(g, s, nb, per, used, &parents, true)),
            ));
        }
        // a recorded decode step's cache append and attention at a device position: T5 shapes
        // (d64, bias) at the first, a middle and the last position, the decode kernel split into
        // several key chunks (cap 3000: chunks past the position see no key), Mistral-like d128
        // without bias, and the general kernel's head size
        for &(rows, h, dk, cap, pos, t5) in &[
            (1usize, 16usize, 64usize, 256usize, 0usize, true),
            (32, 16, 64, 256, 100, true),
            (3, 16, 64, 256, 255, true),
            (2, 8, 64, 3000, 1500, true),
            (1, 4, 128, 3000, 17, false),
            (4, 2, 16, 40, 9, true),
        ] {
            let bias = t5.then_some((32usize, 128usize, false));
            cases.push((
                format!("recorded step b{rows} h{h} d{dk} cap {cap} pos {pos} t5 {t5}"),
                Box::new(move |g, s| recorded_step(g, s, rows, h, dk, cap, pos, bias)),
            ));
            // the one-pass decode kernel recorded and replayed likewise (its family's)
            if dk == 64 || dk == 128 {
                cases.push((
                    format!("recorded step b{rows} h{h} d{dk} cap {cap} pos {pos} t5 {t5} kernel Online"),
                    Box::new(move |g, s| {
                        with_flash(g, Flash::Online, || recorded_step(g, s, rows, h, dk, cap, pos, bias))
                    }),
                ));
            }
        }
        cases.push((
            "embedding 7x40 vocab 13".into(),
            Box::new(|g, s| embedding(g, s, 7, 40, 13)),
        ));
        cases.push((
            "embedding 3x4099 vocab 5".into(),
            Box::new(|g, s| embedding(g, s, 3, 4099, 5)),
        ));
        // m <= 32 runs the skinny (one warp per column) kernels and, forced, the 64x64 tensor-
        // core tiles; k a multiple of 8 takes the 16-byte-load paths, other k the element-wise
        // ones
        for &(m, n, k) in &[
            (1, 1, 1),
            (1, 384, 512),
            (17, 33, 70),
            (32, 257, 1024),
            (5, 64, 4100),
            (64, 64, 64),
            (130, 97, 4100),
            (8, 1024, 512),
            (33, 130, 1032),
            (300, 200, 264),
            (256, 128, 64),
            // decode-sized: narrow outputs on gemm_skinny32, wide ones (n >= 2048) on the tiles
            (20, 1000, 2816),
            (32, 4099, 264),
            (9, 64, 8),
            (32, 2100, 1032),
        ] {
            for int8 in [false, true] {
                for f32out in [false, true] {
                    // forced variants: the 64x64 mma.sync tiles instead of the skinny kernels
                    // (m <= 32) or the sm_90a wgmma tiles (m > 32 on an H100/H200); each skinny
                    // kernel (m <= 32)
                    for variant in VARIANTS {
                        if matches!(
                            variant,
                            Variant::Skinny | Variant::SkinnyTc | Variant::SkinnyTcSplit
                        ) && m > 32
                        {
                            continue;
                        }
                        cases.push((
                            format!("gemm m{m} n{n} k{k} int8w {int8} f32out {f32out} {variant:?}"),
                            Box::new(move |g, s| gemm(g, s, m, n, k, int8, f32out, false, variant)),
                        ));
                    }
                }
            }
        }
        cases.push((
            "gemm accumulate m33 n65 k31".into(),
            Box::new(|g, s| gemm(g, s, 33, 65, 31, false, true, true, Variant::Default)),
        ));
        cases.push((
            "gemm accumulate m3 n65 k64".into(),
            Box::new(|g, s| gemm(g, s, 3, 65, 64, false, false, true, Variant::Default)),
        ));
        cases.push((
            "gemm skinny accumulate f32 m17 n300 k1024".into(),
            Box::new(|g, s| gemm(g, s, 17, 300, 1024, false, true, true, Variant::Default)),
        ));
        // outputs into rows of a wider buffer (how the decode q|k|v projections write into the
        // caches) on every decode kernel, everything outside the written rows unchanged: at an
        // odd offset (misaligned bf16 pairs) and at 8-aligned strides and offsets (the T5
        // decoder cache's rows); then an n wide enough for the tensor-core skinny kernel's
        // 4-warp blocks
        for variant in VARIANTS {
            for &(m, n, k, int8) in &[
                (1, 64, 512, false),
                (17, 129, 264, true),
                (32, 96, 1024, false),
            ] {
                for f32out in [false, true] {
                    for stride in [Stride::Odd, Stride::Aligned] {
                        cases.push((
                            format!(
                                "gemm {stride:?} m{m} n{n} k{k} int8w {int8} f32out {f32out} {variant:?}"
                            ),
                            Box::new(move |g, s| {
                                with_variant(g, variant, || {
                                    gemm_case(g, s, (m, n, k), int8, f32out, true, stride)
                                })
                            }),
                        ));
                    }
                }
            }
        }
        // the RMS norm fused into the decode GEMMs (Gpu::gemm_rms): every skinny kernel and the
        // tuned choice, bf16 and int8 weights, both outputs, accumulating; one thread of the
        // norm per 8 elements (k <= 2048) and several (k 2056, 4096), k = 8 (one chunk); then
        // products it must leave to the separate norm (k not a multiple of 8, m > 32, m * k
        // over 32768, the tiles)
        for &(m, n, k) in &[
            (1, 64, 512),
            (5, 130, 1024),
            (3, 70, 8),
            (17, 33, 264),
            (32, 96, 1024),
            (32, 1048, 1024),
            (12, 200, 2056),
            (8, 300, 4096),
        ] {
            for (int8, f32out, acc) in [
                (false, false, false),
                (true, true, false),
                (false, true, true),
                (true, false, true),
            ] {
                for variant in [
                    Variant::Default,
                    Variant::Skinny,
                    Variant::SkinnyTc,
                    Variant::SkinnyTcSplit,
                ] {
                    cases.push((
                        format!(
                            "gemm rms m{m} n{n} k{k} int8w {int8} f32out {f32out} acc {acc} {variant:?}"
                        ),
                        Box::new(move |g, s| {
                            gemm_rms_case(g, s, (m, n, k), (int8, f32out, acc), variant, true)
                        }),
                    ));
                }
            }
        }
        for &(m, n, k, variant) in &[
            (5, 64, 100, Variant::SkinnyTc),
            (33, 64, 1024, Variant::Default),
            (32, 64, 2048, Variant::SkinnyTc),
            (16, 64, 1024, Variant::Tiled),
        ] {
            cases.push((
                format!("gemm rms not fused m{m} n{n} k{k} {variant:?}"),
                Box::new(move |g, s| {
                    gemm_rms_case(g, s, (m, n, k), (false, true, true), variant, false)
                }),
            ));
        }
        cases.push((
            "gemm skinny tc 4-warp blocks m20 n5000 k72".into(),
            Box::new(|g, s| gemm(g, s, 20, 5000, 72, false, false, false, Variant::SkinnyTc)),
        ));
        cases.push((
            "gemm skinny tc accumulate bf16 m25 n300 k1000".into(),
            Box::new(|g, s| gemm(g, s, 25, 300, 1000, true, false, true, Variant::SkinnyTc)),
        ));
        cases.push((
            "lora skinny tc m20 n130 k256 r16".into(),
            Box::new(|g, s| {
                with_variant(g, Variant::SkinnyTc, || {
                    lora(g, s, 20, 130, 256, &[16; 3], false, true)
                })
            }),
        ));
        cases.push((
            "lora SkinnyTcSplit m20 n130 k256 r16".into(),
            Box::new(|g, s| {
                with_variant(g, Variant::SkinnyTcSplit, || {
                    lora(g, s, 20, 130, 256, &[16; 3], false, true)
                })
            }),
        ));
        cases.push((
            "lora skinny m20 n130 k256 r16".into(),
            Box::new(|g, s| {
                with_variant(g, Variant::Skinny, || {
                    lora(g, s, 20, 130, 256, &[16; 3], false, true)
                })
            }),
        ));
        cases.push((
            "lora tuned m20 n130 k256 r16".into(),
            Box::new(|g, s| lora(g, s, 20, 130, 256, &[16; 3], false, true)),
        ));
        cases.push((
            "gemm tuned: accumulate, strided, LoRA m24 n2312 k520".into(),
            Box::new(|g, s| tuned_gemm(g, s, (24, 2312, 520), false)),
        ));
        // with the split kernel a candidate: 66 column tiles split on any GPU of more than 33 SMs
        // (fewer tiles than 2 per SM: `Gpu::skinny_splits`)
        cases.push((
            "gemm tuned SkinnyTcSplit: accumulate, strided, LoRA m24 n1048 k520".into(),
            Box::new(|g, s| tuned_gemm(g, s, (24, 1048, 520), true)),
        ));
        for &(m, n, k) in &[(1, 1, 1), (19, 70, 100), (64, 128, 4096)] {
            cases.push((
                format!("w8a8 m{m} n{n} k{k}"),
                Box::new(move |g, s| w8a8(g, s, m, n, k)),
            ));
        }
        for &(m, n, k, r) in &[(5, 40, 64, 8), (70, 130, 257, 16)] {
            cases.push((
                format!("lora m{m} n{n} k{k} r{r}"),
                Box::new(move |g, s| lora(g, s, m, n, k, &[r; 3], false, true)),
            ));
        }
        // weight-only int8 from DEQUANT_MIN_M rows on an sm_90 device: the weight widened to
        // bf16 and the wgmma tiles with the scale in their epilogue (Gpu::gemm_dequant): on
        // both sides of the 256-row line, accumulated into bf16 and f32 (the residual
        // projections), k not a multiple of 8 (no tensor map: the mma.sync tiles after all),
        // and with LoRA on the widened weight's product (the prefill of an int8 base)
        for &(m, n, k, acc, f32out) in &[
            (255, 136, 1032, false, false),
            (256, 136, 1032, true, false),
            (520, 300, 264, true, true),
            (300, 72, 100, false, false),
        ] {
            cases.push((
                format!("gemm int8 widened m{m} n{n} k{k} acc {acc} f32 {f32out}"),
                Box::new(move |g, s| {
                    widened(g, m >= 256 && k % 8 == 0, || {
                        gemm(g, s, m, n, k, true, f32out, acc, Variant::Default)
                    })
                }),
            ));
        }
        cases.push((
            "lora slots int8 widened m300 n130 k256".into(),
            Box::new(|g, s| widened(g, true, || lora(g, s, 300, 130, 256, &[3, 8], true, false))),
        ));
        // LoRA as the graphs use it: slots of different ranks stacked by linear::stack_loras,
        // bf16 output accumulated (residual projections), bf16 or int8 base weights, decode
        // (skinny 8 / 32 rows) and prefill (tiled; TMA on Hopper) row counts
        for &(m, n, k) in &[(3, 72, 64), (20, 96, 128), (70, 130, 256)] {
            for int8 in [false, true] {
                cases.push((
                    format!("lora slots m{m} n{n} k{k} int8 {int8}"),
                    Box::new(move |g, s| lora(g, s, m, n, k, &[3, 8], int8, false)),
                ));
            }
        }
        // (batch, heads, kv_heads, tq, tk, dk, causal, window, q_offset, t5 bias (buckets, maxd, bidir), masked)
        type AttnCase = (
            usize,
            usize,
            usize,
            usize,
            usize,
            usize,
            bool,
            usize,
            usize,
            Option<(usize, usize, bool)>,
            bool,
        );
        let attn: &[AttnCase] = &[
            (
                2,
                3,
                3,
                37,
                37,
                64,
                false,
                0,
                0,
                Some((32, 128, true)),
                true,
            ), // T5 encoder
            (2, 2, 2, 1, 45, 64, true, 0, 44, Some((8, 20, false)), false), // T5 decoder step past buckets
            (1, 4, 2, 70, 70, 128, true, 16, 0, None, false),               // Mistral GQA + window
            (3, 8, 2, 1, 300, 128, true, 64, 299, None, false),             // Mistral decode step
            (2, 1, 1, 5, 1, 16, false, 0, 0, None, false),                  // one key
            // several query and key blocks of the tensor-core kernel (64 x 64), partial last ones
            (
                2,
                4,
                4,
                130,
                130,
                64,
                false,
                0,
                0,
                Some((32, 128, true)),
                true,
            ), // T5 encoder
            (1, 8, 2, 100, 164, 128, true, 40, 64, None, false), // Mistral chunk after a prefix
            (1, 2, 2, 300, 300, 128, true, 0, 0, None, false),   // causal, 3 blocks of 128 queries
            (
                2,
                2,
                2,
                260,
                333,
                64,
                false,
                0,
                0,
                Some((32, 128, true)),
                true,
            ), // T5 encoder, long
            (3, 2, 2, 1, 1030, 64, false, 0, 0, None, true),     // cross-attention decode step
            // keys more than 768 positions past the queries (the 128-query kernels' block-level
            // bias clamp), and windows that move later query blocks' first key block past 0
            (
                1,
                2,
                2,
                130,
                1100,
                64,
                false,
                0,
                0,
                Some((32, 128, true)),
                true,
            ),
            (1, 2, 1, 300, 300, 128, true, 64, 0, None, false),
            (1, 2, 2, 300, 300, 64, true, 50, 0, None, true),
            // the decode kernel with several key chunks merged by attention_combine
            (1, 4, 2, 3, 2100, 128, true, 0, 2097, None, false), // 3 queries, GQA, causal
            (
                2,
                3,
                3,
                1,
                700,
                64,
                true,
                0,
                699,
                Some((32, 128, false)),
                false,
            ), // T5 self-attn step
            (2, 4, 1, 1, 3000, 128, true, 256, 2999, None, false), // window: most chunks empty
            (5, 2, 2, 1, 4099, 64, false, 0, 0, None, true),     // long masked cross-attention
            (
                2,
                2,
                2,
                70,
                70,
                64,
                true,
                0,
                0,
                Some((32, 128, false)),
                false,
            ), // T5 decoder prefill
            // causal blocks run longest first (a remapped block index): batch, heads and three
            // query blocks all above 1, with bias and key mask, and GQA with a cache prefix
            (
                3,
                3,
                3,
                150,
                150,
                64,
                true,
                0,
                0,
                Some((32, 128, false)),
                true,
            ),
            (2, 6, 2, 190, 230, 128, true, 0, 40, None, false),
            (4, 2, 2, 70, 90, 64, false, 0, 0, None, true), // cross-attention, two query blocks
            // the flash kernels' bias table clamps relative positions to +-max_distance: a small
            // one, so most scores of a 64 x 64 block lie beyond it, both directions; and one
            // larger than the table (the general kernel takes it)
            (
                2,
                2,
                2,
                100,
                130,
                64,
                false,
                0,
                0,
                Some((8, 20, true)),
                true,
            ),
            (
                1,
                2,
                2,
                100,
                100,
                128,
                true,
                0,
                0,
                Some((12, 9, false)),
                false,
            ),
            (
                1,
                2,
                2,
                70,
                700,
                64,
                false,
                0,
                0,
                Some((32, 600, true)),
                true,
            ),
            // decode steps with >= 2 (row, head) pairs per multiprocessor (up to 132 of them):
            // one chunk per pair when the keys fit one (no merge), else as few as fit
            (40, 8, 8, 1, 900, 64, false, 0, 0, None, true),
            (36, 8, 4, 1, 1500, 128, true, 0, 1499, None, false),
            // batch row 2 with every key masked (3 x 2 >= 6 keys): its query rows see nothing
            // and must come out 0, not NaN, on every kernel (the flash kernels' -inf handling);
            // (with the beams' row map, 2 K/V rows, none is fully masked)
            (3, 2, 2, 40, 6, 64, false, 0, 0, Some((32, 128, true)), true),
            (3, 2, 1, 70, 6, 128, false, 0, 0, None, true),
            // d128 with at most 64 queries: the wgmma kernel's second warpgroup has no rows
            (2, 2, 2, 40, 300, 128, false, 0, 0, None, true),
            // masked keys in every key block, at another offset in each (odd batch rows), over
            // 6 key steps: a stage's key flags read after the next tile's overwrote them (ws's
            // producer refilling a stage before both consumers' softmax released it) differ
            (2, 2, 2, 130, 700, 128, false, 0, 0, None, true),
        ];
        for &(b, h, kvh, tq, tk, dk, causal, window, q_offset, t5, masked) in attn {
            // dk 64/128 run the tensor-core kernels (16 and 32 query rows per warp; decode
            // steps the decode kernel) and, forced, the general one; the specialised kernels
            // also with the operands at offsets in shared buffers (the graphs' fused layouts:
            // q at 8, k|v in one buffer), and at an offset that is not a multiple of 8 (3),
            // which must take the general kernel
            // cross-attention shapes (masked, no bias, not causal) again with beams' K/V row
            // map, also at offsets in fused buffers
            let maps: &[bool] = if !causal && t5.is_none() && masked {
                &[false, true]
            } else {
                &[false]
            };
            // (the shapes that take a decode kernel: ops.rs DECODE_MAX_TQ, head dim 64 or 128)
            let decode_kernel = tq <= 4 && (dk == 64 || dk == 128);
            for &kv_map in maps {
                use Flash::*;
                for (kernel, fused) in [
                    (Default, None),
                    (Default, Some(8)),
                    (Default, Some(3)),
                    (General, None),
                    (Mma, None),
                    (Mma, Some(8)),
                    (Fa2, None),
                    (Fa2, Some(8)),
                    (Wg, None),
                    (Wg, Some(8)),
                    (Ws, None),
                    (Ws, Some(8)),
                    (Online, None),
                    (Online, Some(8)),
                ] {
                    if (kernel == General || fused == Some(3)) && dk != 64 && dk != 128 {
                        continue;
                    }
                    // mma, fa2, wg and ws are prefill kernels: decode steps take the decode kernel
                    // either way (and wg and ws need an sm_90 device: elsewhere their cases would
                    // repeat the default kernel's)
                    if matches!(kernel, Mma | Fa2 | Wg | Ws) && (tq <= 4 || (dk != 64 && dk != 128))
                    {
                        continue;
                    }
                    // and the one-pass decode kernel only decode steps
                    if kernel == Online && !decode_kernel {
                        continue;
                    }
                    cases.push((
                        format!("attention b{b} h{h}/{kvh} tq{tq} tk{tk} d{dk} causal {causal} win {window} t5 {} kernel {kernel:?} fused {fused:?} kv_map {kv_map}", t5.is_some()),
                        Box::new(move |g, s| {
                            with_flash(g, kernel, || {
                                attention(g, s, b, h, kvh, tq, tk, dk, causal, window, q_offset, t5, masked, fused, kv_map, false)
                            })
                        }),
                    ));
                }
                // int8 K/V (no bias): the decode kernel's q8 variant for decode steps, else
                // (and forced) the general kernel; K|V fused at offset 0 and at one head's
                // offset; decode steps also on the one-pass kernel ("kernel Online", its family)
                if t5.is_some() {
                    continue;
                }
                for (kernel, off) in [
                    (Default, 0),
                    (Default, dk),
                    (General, 0),
                    (Online, 0),
                    (Online, dk),
                ] {
                    if kernel == Online && !decode_kernel {
                        continue;
                    }
                    let general = kernel == General;
                    let online = if kernel == Online {
                        " kernel Online"
                    } else {
                        ""
                    };
                    cases.push((
                        format!("attention q8 b{b} h{h}/{kvh} tq{tq} tk{tk} d{dk} causal {causal} win {window} general {general} off {off} kv_map {kv_map}{online}"),
                        Box::new(move |g, s| {
                            with_flash(g, kernel, || {
                                attention(g, s, b, h, kvh, tq, tk, dk, causal, window, q_offset, None, masked, Some(off), kv_map, true)
                            })
                        }),
                    ));
                }
            }
        }
        // K/V quantisation: one warp per group, exactly the CPU rule (zero groups included)
        // (the last: more groups than a capped 1D grid of 8-warp blocks would reach)
        for &(groups, k) in &[
            (1, 1),
            (37, 64),
            (1000, 128),
            (5, 1024),
            (3, 33),
            (2_200_001, 2),
        ] {
            cases.push((
                format!("quantize_kv groups{groups} k{k}"),
                Box::new(move |g, s| quantize_kv(g, s, groups, k)),
            ));
        }
        for &(rows, vocab, k, masked) in &[
            (1, 5, 1, false),
            (3, 32128, 1, true),
            (4, 32000, 8, true),
            (2, 1000, 64, false),
        ] {
            cases.push((
                format!("logits rows{rows} vocab{vocab} top{k} mask {masked}"),
                Box::new(move |g, s| logits(g, s, rows, vocab, k, masked)),
            ));
        }
        for &(rows, vocab) in &[(1, 7), (32, 32128), (3, 50001)] {
            for masked in [false, true] {
                cases.push((
                    format!("greedy_pick rows{rows} vocab{vocab} mask {masked}"),
                    Box::new(move |g, s| greedy(g, s, rows, vocab, masked)),
                ));
            }
        }
        for &(rows, vocab, k) in &[(1, 7, 1), (32, 32128, 8), (3, 50001, 64), (4, 100, 12)] {
            for masked in [false, true] {
                cases.push((
                    format!("topk_logprobs rows{rows} vocab{vocab} k{k} mask {masked}"),
                    Box::new(move |g, s| topk(g, s, rows, vocab, k, masked)),
                ));
            }
        }
        // the sm_90a wgmma GEMMs (gemm_sm90.cu) where the device has them, each column tile
        // forced: partial 128-byte k slices (k 72, 264), partial row and column tiles, deep k,
        // accumulate, f32 and bf16 output (bf16 is staged through shared memory), the fused
        // LoRA epilogue and W8A8; and the persistent n256 kernels (`p`: where their epilogue
        // applies, bf16 out without accumulate or LoRA; the other cases then check the fallback),
        // also with more tiles than multiprocessors, so that blocks walk several tiles
        if gpu.has_kernel("gemm_tma_bf16_n128") {
            for (tile, persist) in [(128u32, false), (256, false), (256, true)] {
                let v = move |g: &Gpu, f: &dyn Fn() -> Result<(), String>| {
                    let before = g
                        .gemm_persistent
                        .swap(persist, std::sync::atomic::Ordering::Relaxed);
                    let r = sm90_tile(g, tile, f);
                    g.gemm_persistent
                        .store(before, std::sync::atomic::Ordering::Relaxed);
                    r
                };
                let tile = format!("{tile}{}", if persist { "p" } else { "" });
                // (k 64: 16-byte k rows for int8 too, which the wgmma path needs; 144 tiles)
                let many: &[(usize, usize, usize)] =
                    if persist { &[(1500, 3000, 64)] } else { &[] };
                for &(m, n, k) in [
                    (33, 130, 1032),
                    (200, 300, 72),
                    (129, 257, 1000),
                    (513, 520, 1024),
                    (256, 128, 64),
                ]
                .iter()
                .chain(many)
                {
                    for f32out in [false, true] {
                        cases.push((
                            format!("gemm tma n{tile} m{m} n{n} k{k} f32out {f32out}"),
                            Box::new(move |g, s| {
                                v(g, &|| {
                                    gemm(g, s, m, n, k, false, f32out, false, Variant::Default)
                                })
                            }),
                        ));
                    }
                }
                // into rows of a wider buffer (the K/V cache writes at more than 32 rows): 8-aligned
                // (the staged 16-byte epilogue) and odd (the direct one)
                for stride in [Stride::Aligned, Stride::Odd] {
                    // (n 517: the staged epilogue's element-wise tail)
                    for &(m, n, k) in &[(40, 192, 128), (300, 520, 264), (300, 517, 264)] {
                        for acc in [false, true] {
                            cases.push((
                                format!("gemm tma n{tile} {stride:?} m{m} n{n} k{k} acc {acc}"),
                                Box::new(move |g, s| {
                                    v(g, &|| gemm_case(g, s, (m, n, k), false, false, acc, stride))
                                }),
                            ));
                        }
                    }
                }
                // weight-only int8 widened onto these tiles (bf16 output without accumulate:
                // the staged epilogue, and the persistent kernel's), many tiles with `p`
                for &(m, n, k) in [(513, 520, 1024), (300, 136, 264)].iter().chain(many) {
                    for f32out in [false, true] {
                        cases.push((
                            format!("gemm tma n{tile} int8 widened m{m} n{n} k{k} f32out {f32out}"),
                            Box::new(move |g, s| {
                                v(g, &|| {
                                    widened(g, true, || {
                                        gemm(g, s, m, n, k, true, f32out, false, Variant::Default)
                                    })
                                })
                            }),
                        ));
                    }
                }
                cases.push((
                    format!("gemm tma n{tile} accumulate m70 n130 k264"),
                    Box::new(move |g, s| {
                        v(g, &|| {
                            gemm(g, s, 70, 130, 264, false, false, true, Variant::Default)
                        })
                    }),
                ));
                for &(m, n, k) in [(64, 128, 4096), (130, 300, 272), (300, 520, 1040)]
                    .iter()
                    .chain(many)
                {
                    for bf16_out in [false, true] {
                        cases.push((
                            format!("w8a8 tma n{tile} m{m} n{n} k{k} bf16 {bf16_out}"),
                            Box::new(move |g, s| v(g, &|| w8a8_out(g, s, m, n, k, bf16_out))),
                        ));
                    }
                }
                cases.push((
                    format!("lora tma n{tile} m70 n130 k256 r16"),
                    Box::new(move |g, s| v(g, &|| lora(g, s, 70, 130, 256, &[16; 3], false, true))),
                ));
                // 4 blocks for 15 tiles of 16 (bf16) / 8 (int8) slices: every block walks
                // several tiles and the slots' phases wrap many times
                if persist {
                    let few = move |g: &Gpu, f: &dyn Fn() -> Result<(), String>| {
                        use std::sync::atomic::Ordering::Relaxed;
                        g.persistent_blocks.store(4, Relaxed);
                        let r = v(g, f);
                        g.persistent_blocks.store(0, Relaxed);
                        r
                    };
                    cases.push((
                        "gemm tma n256p 4 blocks m513 n520 k1024".into(),
                        Box::new(move |g, s| {
                            few(g, &|| {
                                gemm(g, s, 513, 520, 1024, false, false, false, Variant::Default)
                            })
                        }),
                    ));
                    cases.push((
                        "w8a8 tma n256p 4 blocks m513 n520 k1024".into(),
                        Box::new(move |g, s| few(g, &|| w8a8_out(g, s, 513, 520, 1024, true))),
                    ));
                }
            }
            // the benchmarks' per-block trace (Gpu::set_gemm_trace): results unchanged, and
            // every block's stamps in order
            for int8 in [false, true] {
                cases.push((
                    format!("gemm tma trace int8 {int8} m300 n520 k1040"),
                    Box::new(move |g, s| traced_gemm(g, s, int8)),
                ));
            }
            // the same for the wg and ws attention (Gpu::set_attn_trace, their traced twin
            // kernels)
            for kernel in [Flash::Wg, Flash::Ws] {
                for (dk, causal, t5) in [(64, false, Some((32, 128, true))), (128, true, None)] {
                    let name = format!("{kernel:?}").to_lowercase();
                    cases.push((
                        format!(
                            "attention {name} trace d{dk} causal {causal} t5 {}",
                            t5.is_some()
                        ),
                        Box::new(move |g, s| traced_attention(g, s, kernel, dk, causal, t5)),
                    ));
                }
            }
        } else {
            eprintln!("cuda_op_table: no sm_90a kernels on this device (gemm_sm90 cases skipped)");
        }
        // JOBX_OP_CASES / JOBX_OP_SKIP: comma-separated name fragments of the cases to run / to
        // leave out (tools/gpu-check.sh runs kernels not yet checked on a GPU apart, so that a
        // fault in one cannot take the established table down with it)
        let list = |var: &str| -> Vec<String> {
            std::env::var(var)
                .map(|v| {
                    v.split(',')
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default()
        };
        let (only, skip) = (list("JOBX_OP_CASES"), list("JOBX_OP_SKIP"));
        cases.retain(|(name, _)| {
            (only.is_empty() || only.iter().any(|o| name.contains(o.as_str())))
                && !skip.iter().any(|o| name.contains(o.as_str()))
        });
        // a selection that matches nothing (a renamed case, a typo in a script) must not pass
        if cases.is_empty() && !only.is_empty() {
            return vec![format!("JOBX_OP_CASES={only:?} matched no case")];
        }
        // JOBX_OP_SHARD=i/n: only the selected cases whose index is i modulo n, so that
        // tools/test.sh can run the table in n processes at once on the emulated device (one
        // core each: the emulator runs a kernel's blocks in one thread)
        if let Some(v) = std::env::var("JOBX_OP_SHARD")
            .ok()
            .filter(|v| !v.is_empty())
        {
            let shard = v
                .split_once('/')
                .and_then(|(i, n)| Some((i.parse::<usize>().ok()?, n.parse::<usize>().ok()?)))
                .filter(|&(i, n)| i < n);
            let Some((i, n)) = shard else {
                return vec![format!("JOBX_OP_SHARD={v:?}: expected i/n with i < n")];
            };
            let mut k = 0;
            cases.retain(|_| {
                k += 1;
                (k - 1) % n == i
            });
        }
        eprintln!("cuda_op_table: {} cases", cases.len());
        let mut failures = Vec::new();
        // wall time per case (both seeds, CPU reference included): the table took ~100 s of a
        // lent GPU's minutes in run 5, and nothing said where
        let mut took = Vec::new();
        for (name, f) in &cases {
            let t0 = std::time::Instant::now();
            for seed in [1u64, 2] {
                if let Err(e) = f(gpu, seed) {
                    eprintln!("FAIL [{name}] {e}");
                    failures.push(format!("[{name}] {e}"));
                }
            }
            took.push((t0.elapsed().as_secs_f64(), name.as_str()));
        }
        took.sort_by(|a, b| b.0.total_cmp(&a.0));
        let total: f64 = took.iter().map(|t| t.0).sum();
        eprintln!("cuda_op_table: {total:.1} s in all; the slowest cases:");
        for (s, name) in took.iter().take(12) {
            eprintln!("  took {:8.0} ms  {name}", s * 1e3);
        }
        eprintln!(
            "cuda_op_table: {} cases x 2 seeds, {} failures",
            cases.len(),
            failures.len()
        );
        failures
    }

    fn e(x: jobx_engine::Error) -> String {
        x.to_string()
    }

    fn rms(g: &Gpu, seed: u64, rows: usize, d: usize) -> Result<(), String> {
        let mut r = Rng(seed * 7919 + 1);
        let x = r.vec(rows * d, 3.0);
        let w = r.vec(d, 1.5);
        let (dx, dw) = (
            g.upload("t", &tob(&x)).map_err(e)?,
            g.upload("t", &tob(&w)).map_err(e)?,
        );
        let mut dy = g.zeros::<bf16>("t", rows * d).map_err(e)?;
        g.rms_norm(&dx, &dw, &mut dy, rows, d, 1e-6).map_err(e)?;
        let got = fromb(&g.download("t", &dy).map_err(e)?);
        let mut want = vec![0.0; rows * d];
        cpu::rms_norm(&x, &w, 1e-6, &mut want);
        check(
            &format!("rms_norm {rows}x{d}"),
            seed,
            &got,
            &want,
            BF16_OUT_2ROUND,
        )
    }

    fn act(g: &Gpu, seed: u64, kind: u32, n: usize, gated: bool) -> Result<(), String> {
        let mut r = Rng(seed * 31 + kind as u64);
        let gate = r.vec(n, 6.0);
        let up = r.vec(n, 2.0);
        let dg = g.upload("t", &tob(&gate)).map_err(e)?;
        let du = g.upload("t", &tob(&up)).map_err(e)?;
        let mut dy = g.zeros::<bf16>("t", n).map_err(e)?;
        g.activation(&dg, gated.then_some(&du), &mut dy, n, kind)
            .map_err(e)?;
        let got = fromb(&g.download("t", &dy).map_err(e)?);
        let want: Vec<f32> = (0..n)
            .map(|i| {
                let a = act_ref(kind, gate[i]);
                if gated {
                    a * up[i]
                } else {
                    a
                }
            })
            .collect();
        check(
            &format!("act {kind} n{n}"),
            seed,
            &got,
            &want,
            BF16_OUT_2ROUND,
        )
    }

    /// The f32 activation (`kind`: JOBX_ACT_*).
    fn act_ref(kind: u32, x: f32) -> f32 {
        match kind {
            JOBX_ACT_RELU => x.max(0.0),
            JOBX_ACT_GELU_TANH => cpu::gelu_tanh(x),
            _ => cpu::silu(x),
        }
    }

    fn gated_act(g: &Gpu, seed: u64, kind: u32, rows: usize, cols: usize) -> Result<(), String> {
        let mut r = Rng(seed * 37 + cols as u64);
        let gu = r.vec(rows * 2 * cols, 4.0);
        let dgu = g.upload("t", &tob(&gu)).map_err(e)?;
        let mut dy = g.zeros::<bf16>("t", rows * cols).map_err(e)?;
        let ak = match kind {
            JOBX_ACT_RELU => ActKind::Relu,
            JOBX_ACT_GELU_TANH => ActKind::GeluTanh,
            _ => ActKind::Silu,
        };
        g.gated_activation(&dgu, &mut dy, rows, cols, ak)
            .map_err(e)?;
        let got = fromb(&g.download("t", &dy).map_err(e)?);
        let want: Vec<f32> = (0..rows * cols)
            .map(|i| {
                let (row, c) = (i / cols, i % cols);
                let (gate, up) = (gu[row * 2 * cols + c], gu[row * 2 * cols + cols + c]);
                act_ref(kind, gate) * up
            })
            .collect();
        check(
            &format!("gated act {kind} {rows}x{cols}"),
            seed,
            &got,
            &want,
            BF16_OUT_2ROUND,
        )
    }

    /// Rows of `cols` between buffers at offsets and strides; everything else in the
    /// destination must keep its values.
    fn copy_rows(
        g: &Gpu,
        seed: u64,
        rows: usize,
        cols: usize,
        (so, sl): (usize, usize),
        (dof, dl): (usize, usize),
    ) -> Result<(), String> {
        let mut r = Rng(seed * 11 + cols as u64);
        let src = r.vec(so + (rows - 1) * sl + cols, 2.0);
        let dst = r.vec(dof + (rows - 1) * dl + cols + 3, 2.0);
        let ds = g.upload("t", &tob(&src)).map_err(e)?;
        let mut dd = g.upload("t", &tob(&dst)).map_err(e)?;
        let at = |off, ld| Rows { off, ld };
        g.copy_rows("t", (&ds, at(so, sl)), (&mut dd, at(dof, dl)), rows, cols)
            .map_err(e)?;
        let got = fromb(&g.download("t", &dd).map_err(e)?);
        let mut want = fromb(&tob(&dst));
        let srcb = fromb(&tob(&src));
        for i in 0..rows {
            want[dof + i * dl..][..cols].copy_from_slice(&srcb[so + i * sl..][..cols]);
        }
        check(
            &format!("copy_rows {rows}x{cols}"),
            seed,
            &got,
            &want,
            EXACT,
        )
    }

    /// `gather_blocks` (or, `into`, `gather_blocks_into` existing buffers holding other values)
    /// over `nb` buffers of 3 blocks: the first `used` of each new block are its parent's,
    /// exactly (the rest is unspecified and not compared).
    #[allow(clippy::too_many_arguments)]
    pub fn gather<B: Backend>(
        g: &B,
        seed: u64,
        nb: usize,
        per: usize,
        used: usize,
        parents: &[usize],
        into: bool,
    ) -> Result<(), String> {
        let mut r = Rng(seed * 13 + per as u64);
        let srcs: Vec<Vec<f32>> = (0..nb).map(|_| r.vec(3 * per, 2.0)).collect();
        let up = |v: &Vec<f32>| g.upload("t", &tob(v));
        let mut bufs = srcs
            .iter()
            .map(up)
            .collect::<jobx_engine::Result<Vec<_>>>()
            .map_err(e)?;
        if into {
            let mut dst = (0..nb)
                .map(|_| up(&r.vec(parents.len().max(1) * per, 2.0)))
                .collect::<jobx_engine::Result<Vec<_>>>()
                .map_err(e)?;
            g.gather_blocks_into("t", &bufs, &mut dst, per, used, parents)
                .map_err(e)?;
            bufs = dst;
        } else {
            g.gather_blocks("t", &mut bufs, per, used, parents)
                .map_err(e)?;
        }
        for (src, buf) in srcs.iter().zip(&bufs) {
            let all = fromb(&g.download("t", buf).map_err(e)?);
            if all.len() < parents.len() * per {
                return Err(format!(
                    "gather: {} elements, want {}",
                    all.len(),
                    parents.len() * per
                ));
            }
            let (mut got, mut want) = (Vec::new(), Vec::new());
            for (row, &p) in parents.iter().enumerate() {
                got.extend_from_slice(&all[row * per..][..used]);
                want.extend_from_slice(&src[p * per..][..used]);
            }
            check(
                &format!("gather_blocks into {into} per {per} used {used}"),
                seed,
                &got,
                &want,
                EXACT,
            )?;
        }
        Ok(())
    }

    /// The ops of a recorded decode step (`copy_rows_at`, `attention_at`: a position read on
    /// the device) against their plain forms at that position, bit for bit: `rows` rows of
    /// `cols` appended to a cache of `cap` positions at `pos`, the rest of the cache unchanged;
    /// then a causal decode step (tq 1, T5 bias if `t5`) over the whole cache, where the
    /// positions after `pos` hold NaN (never written: a read of one shows), against `attention`
    /// over the first pos + 1 keys; then a position past `cap - 1` must copy nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn recorded_step<B: Backend>(
        g: &B,
        seed: u64,
        rows: usize,
        h: usize,
        dk: usize,
        cap: usize,
        pos: usize,
        t5: Option<(usize, usize, bool)>,
    ) -> Result<(), String> {
        let mut r = Rng(seed * 7919 + (cap * 31 + pos) as u64);
        let inner = h * dk;
        let w = 3 * inner; // q|k|v rows, as the T5 cache keeps them
        let step = r.vec(rows * w, 1.0);
        // cache: written positions random, the rest NaN
        let mut cache = vec![f32::NAN; rows * cap * w];
        for row in 0..rows {
            for t in 0..pos {
                for c in 0..w {
                    cache[(row * cap + t) * w + c] = r.vec(1, 1.0)[0];
                }
            }
        }
        let dstep = g.upload("t", &tob(&step)).map_err(e)?;
        let dpos = g.upload("t", &[pos as i32]).map_err(e)?;
        let mut a = g.upload("t", &tob(&cache)).map_err(e)?;
        let mut b = g.upload("t", &tob(&cache)).map_err(e)?;
        let at = |off, ld| Rows { off, ld };
        g.copy_rows_at(
            "t",
            (&dstep, at(0, w)),
            (&mut a, at(0, cap * w)),
            rows,
            w,
            &dpos,
            w,
            cap - 1,
        )
        .map_err(e)?;
        g.copy_rows(
            "t",
            (&dstep, at(0, w)),
            (&mut b, at(pos * w, cap * w)),
            rows,
            w,
        )
        .map_err(e)?;
        let (ga, gb) = (
            g.download("t", &a).map_err(e)?,
            g.download("t", &b).map_err(e)?,
        );
        // NaN-aware bitwise comparison (the unwritten positions stay NaN in both)
        let same =
            |x: &[bf16], y: &[bf16]| x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
        if !same(&ga, &gb) {
            return Err(format!(
                "copy_rows_at {rows}x{w} cap {cap} pos {pos}: differs from copy_rows"
            ));
        }
        let nb = t5.map_or(1, |t| t.0);
        let bias = g.upload("t", &r.vec(nb * h, 2.0)).map_err(e)?;
        let call = |tk, q_offset| AttnCall {
            batch: rows,
            kv_batch_rows: rows,
            heads: h,
            kv_heads: h,
            tq: 1,
            tk,
            dk,
            q_offset,
            window: 0,
            scale: if t5.is_some() {
                1.0
            } else {
                1.0 / (dk as f32).sqrt()
            },
            causal: true,
            t5_bias: t5,
        };
        let view = |sb, off| View {
            sb,
            sh: dk,
            st: w,
            off,
        };
        let mut oa = g.zeros::<bf16>("t", rows * inner).map_err(e)?;
        let mut ob = g.zeros::<bf16>("t", rows * inner).map_err(e)?;
        // q_offset in the call is deliberately wrong: the device position must win
        g.attention_at(
            &call(cap, cap / 2 + 1),
            &dpos,
            (&dstep, view(w, 0)),
            (&a, view(cap * w, inner)),
            (&a, view(cap * w, 2 * inner)),
            &mut oa,
            None,
            None,
            t5.is_some().then_some(&bias),
        )
        .map_err(e)?;
        g.attention(
            &call(pos + 1, pos),
            (&dstep, view(w, 0)),
            (&a, view(cap * w, inner)),
            (&a, view(cap * w, 2 * inner)),
            &mut ob,
            None,
            None,
            t5.is_some().then_some(&bias),
        )
        .map_err(e)?;
        let (got, want) = (
            fromb(&g.download("t", &oa).map_err(e)?),
            fromb(&g.download("t", &ob).map_err(e)?),
        );
        let label = format!(
            "attention_at b{rows} h{h} d{dk} cap {cap} pos {pos} t5 {}",
            t5.is_some()
        );
        if got.iter().any(|x| x.is_nan()) {
            return Err(format!("{label}: NaN (a position past pos was read)"));
        }
        // the key split follows tk, so the merge may round differently: bf16 tolerance
        check(&label, seed, &got, &want, BF16_OUT)?;
        // a position past the end copies nothing (an error on the host, a flag on the GPU)
        let bad = g.upload("t", &[cap as i32]).map_err(e)?;
        let before = g.download("t", &a).map_err(e)?;
        let r = g.copy_rows_at(
            "t",
            (&dstep, at(0, w)),
            (&mut a, at(0, cap * w)),
            rows,
            w,
            &bad,
            w,
            cap - 1,
        );
        let after = g.download("t", &a).map_err(e)?;
        if !same(&before, &after) {
            return Err(format!(
                "copy_rows_at pos {cap} of cap {cap}: wrote ({r:?})"
            ));
        }
        Ok(())
    }

    /// Rotary embedding on the first h*hd elements of rows `ld` apart; the rest of each row
    /// must keep its values.
    fn rope(
        g: &Gpu,
        seed: u64,
        t: usize,
        h: usize,
        hd: usize,
        ld: usize,
        theta: f32,
    ) -> Result<(), String> {
        let mut r = Rng(seed * 13 + hd as u64);
        let x = r.vec(t * ld, 2.0);
        let pos: Vec<usize> = (0..t).map(|i| i * 37 % 4000).collect();
        let mut dx = g.upload("t", &tob(&x)).map_err(e)?;
        let dp = g
            .upload("t", &pos.iter().map(|&p| p as i32).collect::<Vec<_>>())
            .map_err(e)?;
        g.rope(&mut dx, &dp, t, h, hd, ld, theta).map_err(e)?;
        let got = fromb(&g.download("t", &dx).map_err(e)?);
        let inv: Vec<f32> = (0..hd / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / hd as f32))
            .collect();
        // the inputs as bf16, so the untouched elements compare exactly
        let mut want = fromb(&tob(&x));
        for (ti, row) in want.chunks_mut(ld).enumerate() {
            jobx_engine::models::mistral::rope(&mut row[..h * hd], &pos[ti..ti + 1], h, hd, &inv);
        }
        // cos/sin rounded to bf16 (as HF does in bf16), then one more rounding: 3 roundings
        check(
            &format!("rope t{t} h{h} d{hd} row {ld}"),
            seed,
            &got,
            &want,
            Tol {
                atol: 1.5e-2,
                rtol: 1.6e-2,
            },
        )
    }

    fn embedding(g: &Gpu, seed: u64, n: usize, d: usize, vocab: usize) -> Result<(), String> {
        let mut r = Rng(seed + 5);
        let table = r.vec(vocab * d, 1.0);
        let ids: Vec<i32> = (0..n)
            .map(|i| ((i * 7 + seed as usize) % vocab) as i32)
            .collect();
        let dt = g.upload("t", &tob(&table)).map_err(e)?;
        let di = g.upload("t", &ids).map_err(e)?;
        let mut dy = g.zeros::<bf16>("t", n * d).map_err(e)?;
        g.embedding_checked(&di, &dt, &mut dy, n, d, vocab)
            .map_err(e)?;
        let got = fromb(&g.download("t", &dy).map_err(e)?);
        let want: Vec<f32> = ids
            .iter()
            .flat_map(|&i| table[i as usize * d..(i as usize + 1) * d].to_vec())
            .collect();
        check(&format!("embedding {n}x{d}"), seed, &got, &want, EXACT)?;
        // a bad id is an error, not an out-of-bounds read
        let bad = g.upload("t", &vec![vocab as i32; n]).map_err(e)?;
        match g.embedding_checked(&bad, &dt, &mut dy, n, d, vocab) {
            Err(_) => Ok(()),
            Ok(()) => Err("embedding accepted an id outside the vocabulary".into()),
        }
    }

    fn quantize_ref(w: &[f32], n: usize, k: usize) -> (Vec<i8>, Vec<f32>) {
        let mut q = vec![0i8; n * k];
        let mut s = vec![0f32; n];
        for i in 0..n {
            let row = &w[i * k..(i + 1) * k];
            let mx = row.iter().fold(0f32, |a, v| a.max(v.abs()));
            s[i] = mx / 127.0;
            let inv = if mx > 0.0 { 127.0 / mx } else { 0.0 };
            for j in 0..k {
                q[i * k + j] = (row[j] * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
            }
        }
        (q, s)
    }

    /// Run `f` with the wgmma GEMMs' column tile forced, then back to the default.
    fn sm90_tile(g: &Gpu, tile: u32, f: &dyn Fn() -> Result<(), String>) -> Result<(), String> {
        use std::sync::atomic::Ordering::Relaxed;
        g.sm90_tile.store(tile, Relaxed);
        let r = f();
        g.sm90_tile.store(0, Relaxed);
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm(
        g: &Gpu,
        seed: u64,
        m: usize,
        n: usize,
        k: usize,
        int8: bool,
        f32out: bool,
        accumulate: bool,
        variant: Variant,
    ) -> Result<(), String> {
        with_variant(g, variant, || {
            gemm_case(g, seed, (m, n, k), int8, f32out, accumulate, Stride::Dense)
        })
    }

    /// Run `f` and check whether it took the widened weight-only int8 path
    /// (`Gpu::widened_gemms`): as `expect` says on a device with the wgmma tiles, never without.
    fn widened(
        g: &Gpu,
        expect: bool,
        f: impl FnOnce() -> Result<(), String>,
    ) -> Result<(), String> {
        use std::sync::atomic::Ordering::Relaxed;
        let before = g.widened_gemms.load(Relaxed);
        f()?;
        let taken = g.widened_gemms.load(Relaxed) > before;
        let expect = expect && g.has_kernel("gemm_tma_bf16_n128");
        if taken != expect {
            return Err(format!(
                "widened int8 path taken: {taken}, expected {expect}"
            ));
        }
        Ok(())
    }

    /// Run `f` with the GEMM kernel `variant` forced, then the wrapper's default choice again.
    fn with_variant(
        g: &Gpu,
        variant: Variant,
        f: impl FnOnce() -> Result<(), String>,
    ) -> Result<(), String> {
        g.general_kernels.store(
            variant == Variant::Tiled,
            std::sync::atomic::Ordering::Relaxed,
        );
        g.set_gemm_mode(match variant {
            Variant::Skinny => GemmMode::Force(SkinnyKernel::Skinny),
            Variant::SkinnyTc => GemmMode::Force(SkinnyKernel::SkinnyTc),
            Variant::SkinnyTcSplit => GemmMode::Force(SkinnyKernel::SkinnyTcSplit),
            Variant::Default | Variant::Tiled => GemmMode::Tune,
        });
        let r = f();
        g.general_kernels
            .store(false, std::sync::atomic::Ordering::Relaxed);
        g.set_gemm_mode(GemmMode::Tune);
        r
    }

    /// Which prefill attention kernel a case forces (dk 64/128; decode steps always take the
    /// decode kernel unless `General`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Flash {
        /// the wrapper's choice
        Default,
        /// the one-key-per-lane kernel (`Gpu::general_kernels`)
        General,
        /// attention_mma_* (`Gpu::flash_fa2` and `flash_wg` both off: the default before the
        /// H100 run of 2026-11-28, still sm_80's without fa2 and every device's with it off)
        Mma,
        /// attention_fa2_* (`Gpu::flash_fa2`)
        Fa2,
        /// attention_wg_* on sm_90 (`Gpu::flash_wg`)
        Wg,
        /// attention_ws_* on sm_90 (`Gpu::flash_ws`)
        Ws,
        /// decode steps on the one-pass attention_decode_online_* (`Gpu::decode_online`)
        Online,
    }

    fn with_flash(
        g: &Gpu,
        kernel: Flash,
        f: impl FnOnce() -> Result<(), String>,
    ) -> Result<(), String> {
        use std::sync::atomic::Ordering::Relaxed;
        let (fa2, wg, ws, online) = (
            g.flash_fa2.load(Relaxed),
            g.flash_wg.load(Relaxed),
            g.flash_ws.load(Relaxed),
            g.decode_online.load(Relaxed),
        );
        g.general_kernels.store(kernel == Flash::General, Relaxed);
        if kernel != Flash::Default {
            g.flash_fa2.store(kernel == Flash::Fa2, Relaxed);
            g.flash_wg.store(kernel == Flash::Wg, Relaxed);
            g.flash_ws.store(kernel == Flash::Ws, Relaxed);
            g.decode_online.store(kernel == Flash::Online, Relaxed);
        }
        let r = f();
        g.general_kernels.store(false, Relaxed);
        g.flash_fa2.store(fa2, Relaxed);
        g.flash_wg.store(wg, Relaxed);
        g.flash_ws.store(ws, Relaxed);
        g.decode_online.store(online, Relaxed);
        r
    }

    /// Which GEMM kernel a case forces.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Variant {
        /// the wrapper's choice (for m <= 32 tuned per shape: the first case of a shape times
        /// every candidate, cuda/tune.rs)
        Default,
        /// the general tiles (`Gpu::general_kernels`)
        Tiled,
        /// gemm_skinny8/32 for m <= 32
        Skinny,
        /// the tensor-core skinny kernel for m <= 32
        SkinnyTc,
        /// the same, split over k where its column tiles are few (`SkinnyKernel::SkinnyTcSplit`)
        SkinnyTcSplit,
    }

    /// The tuned path itself on a shape no other case has, timed afresh before each product:
    /// the timing launches write a scratch output, so the real one (accumulated into at a
    /// strided offset, f32; then with a LoRA update) must still match the reference, and the
    /// shape's choice is recorded with a time for every candidate (with `split`, the split
    /// kernel among them: `Gpu::gemm_splitk` on for the case, the shape one that splits).
    fn tuned_gemm(
        g: &Gpu,
        seed: u64,
        (m, n, k): (usize, usize, usize),
        split: bool,
    ) -> Result<(), String> {
        use std::sync::atomic::Ordering::Relaxed;
        let before = g.gemm_splitk.swap(split, Relaxed);
        let r = tuned_gemm_checks(g, seed, (m, n, k), split);
        g.gemm_splitk.store(before, Relaxed);
        r
    }

    fn tuned_gemm_checks(
        g: &Gpu,
        seed: u64,
        (m, n, k): (usize, usize, usize),
        split: bool,
    ) -> Result<(), String> {
        let key = GemmKey::new(m, n, k, false).unwrap();
        g.clear_gemm_tuning();
        with_variant(g, Variant::Default, || {
            gemm_case(g, seed, (m, n, k), false, true, true, Stride::Aligned)
        })?;
        let timed = |what: &str| {
            let c = g
                .gemm_tune_choice(&key)
                .ok_or_else(|| format!("{what}: no tuning choice for {}", key.label()))?;
            for &kernel in SkinnyKernel::candidates(split) {
                match c.times.iter().find(|(k, _)| *k == kernel) {
                    Some(&(_, t)) if t.is_finite() && t > 0.0 => {}
                    other => {
                        return Err(format!("{what}: {} time {other:?} in {c:?}", kernel.name()))
                    }
                }
            }
            eprintln!("  gemm tune ({what}): {} -> {c:?}", key.label());
            Ok(())
        };
        timed("gemm")?;
        g.clear_gemm_tuning();
        lora(g, seed, m, n, k, &[16; 3], false, true)?;
        timed("lora")
    }

    /// `gemm_rms`, y (+)= rms_norm(x) · wᵀ, under GEMM kernel `variant` with `Gpu::gemm_rms` on:
    /// fused into the kernel exactly when `fused` says (`Gpu::rms_fused` counts it), bit for bit
    /// what the separate norm and the same kernel give (`Gpu::gemm_rms` off), each row's 1 / rms
    /// the same in both and within 1e-6 of the exact value, and the output within the GEMM's
    /// tolerance of the CPU product of HF's normalised x (rounded to bf16 twice).
    fn gemm_rms_case(
        g: &Gpu,
        seed: u64,
        (m, n, k): (usize, usize, usize),
        (int8, f32out, accumulate): (bool, bool, bool),
        variant: Variant,
        fused: bool,
    ) -> Result<(), String> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut r = Rng(seed * 211 + (m * n * k) as u64);
        // every 97th x +-4096: squares of 2^24 among small ones, so that the f32 sum of squares
        // depends on its order by many ulps, and a fused sum in another order than the norm's
        // changes some normalised values' bf16 rounding (with values of one magnitude it
        // would rarely show)
        let mut x = r.vec(m * k, 3.0);
        for (i, v) in x.iter_mut().enumerate() {
            if i % 97 == 3 {
                *v = if i % 2 == 0 { 4096.0 } else { -4096.0 };
            }
        }
        let nw = r.vec(k, 1.5);
        let (wf, wq, ws) = gemm_weights(&mut r, n, k, int8);
        let init = r.vec(m * n, 1.0);
        let shape = GemmShape::new(m, n, k, accumulate);
        let dx = g.upload("t", &tob(&x)).map_err(e)?;
        let dnw = g.upload("t", &tob(&nw)).map_err(e)?;
        let dw = DevWeight::new(g, &wf, &wq, &ws, int8)?;
        // each run's outputs and the rows' 1 / rms (Gpu::set_rms_probe: the norm's, or the
        // fused kernel's)
        let run = |fuse: bool| -> Result<(Vec<f32>, Vec<f32>), String> {
            let w = dw.weight();
            let mut hn = g.zeros::<bf16>("t", m * k).map_err(e)?;
            g.set_rms_probe(m).map_err(e)?;
            let before = g.gemm_rms.swap(fuse, Relaxed);
            // (both outputs uploaded; the one `f32out` names is written and read back)
            let mut y32 = g.upload("t", &init).map_err(e)?;
            let mut y16 = g.upload("t", &tob(&init)).map_err(e)?;
            let r = with_variant(g, variant, || {
                let y = if f32out {
                    Out::F32(&mut y32)
                } else {
                    Out::Bf16(&mut y16)
                };
                g.gemm_rms(&dx, (&dnw, 1e-6), &mut hn, w, y, &shape, None)
                    .map_err(e)
            });
            let out = if f32out {
                g.download("t", &y32).map_err(e)
            } else {
                g.download("t", &y16).map_err(e).map(|v| fromb(&v))
            };
            g.gemm_rms.store(before, Relaxed);
            let inv = g.rms_probe_values().map_err(e);
            g.set_rms_probe(0).map_err(e)?;
            r.and_then(|()| Ok((out?, inv?)))
        };
        let name = format!("gemm rms m{m} n{n} k{k} int8 {int8} f32 {f32out} {variant:?}");
        let c0 = g.rms_fused.load(Relaxed);
        let (plain, inv_plain) = run(false)?;
        let c1 = g.rms_fused.load(Relaxed);
        let (got, inv) = run(true)?;
        let c2 = g.rms_fused.load(Relaxed);
        // the tuned choice may be the tiles, which have no fused form
        let fused = fused
            && (variant != Variant::Default
                || GemmKey::new(m, n, k, int8)
                    .and_then(|key| g.gemm_tune_choice(&key))
                    .is_none_or(|c| c.kernel != SkinnyKernel::Tiles));
        if c1 != c0 || (c2 > c1) != fused {
            return Err(format!(
                "{name}: fused launches {} (norm off) and {} (on), expected 0 and {}",
                c1 - c0,
                c2 - c1,
                fused as u8
            ));
        }
        // the sums of squares in the norm's order: the same 1 / rms (the outputs alone would
        // rarely show another order: it moves 1 / rms by an ulp or so, which changes a
        // normalised value's bf16 rounding about once in 2^15)
        if let Some(i) = (0..m).find(|&i| inv[i].to_bits() != inv_plain[i].to_bits()) {
            return Err(format!(
                "{name} seed {seed}: row {i}'s 1 / rms {:e} fused, {:e} in the norm",
                inv[i], inv_plain[i]
            ));
        }
        if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != plain[i].to_bits()) {
            return Err(format!(
                "{name} seed {seed}: y[{i}] = {} fused, {} with the separate norm",
                got[i], plain[i]
            ));
        }
        // HF's norm: bf16(x * rsqrt(mean(x^2) + eps)) * w, rounded to bf16 again. 1/rms: the
        // device's within 1e-6 of the exact value (rsqrt.approx is good to ~2 ulp); the
        // normalised values are then taken from the device's 1/rms, so that an ulp there,
        // which flips a +-4096 element's bf16 rounding about once in 2^15, cannot move an
        // output past the product's tolerance
        let mut xn = vec![0.0; m * k];
        for i in 0..m {
            let row = &x[i * k..(i + 1) * k];
            let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / k as f64;
            let exact = 1.0 / (ms + 1e-6).sqrt();
            if ((inv[i] as f64 - exact) / exact).abs() > 1e-6 {
                return Err(format!(
                    "{name} seed {seed}: row {i}'s 1 / rms {:e}, exactly {exact:e}",
                    inv[i]
                ));
            }
            for j in 0..k {
                xn[i * k + j] = rb(rb(row[j] * inv[i]) * nw[j]);
            }
        }
        let mut prod = vec![0.0; m * n];
        cpu::matmul_wt(&xn, m, k, &wf, n, &mut prod, false);
        let want: Vec<f32> = (0..m * n)
            .map(|i| {
                let s = if int8 { ws[i % n] } else { 1.0 };
                prod[i] * s + if accumulate { init[i] } else { 0.0 }
            })
            .collect();
        // (as gemm_case: products of k terms, atol scaled with sqrt(k))
        let sk = (k as f32).sqrt();
        let tol = if f32out { F32_OUT } else { BF16_OUT };
        check(
            &name,
            seed,
            &got,
            &want,
            Tol {
                atol: tol.atol * sk,
                rtol: tol.rtol,
            },
        )
    }

    /// A GEMM case's weight [n, k]: bf16 values in [-1, 1], or (int8) int8 values with a scale
    /// per row in [0.01, 0.03]; as (the values as f32, the int8 values, the scales).
    fn gemm_weights(r: &mut Rng, n: usize, k: usize, int8: bool) -> (Vec<f32>, Vec<i8>, Vec<f32>) {
        if int8 {
            let wq = r.i8s(n * k);
            let ws: Vec<f32> = (0..n).map(|_| 0.01 + r.f().abs() * 0.02).collect();
            let wf: Vec<f32> = (0..n * k).map(|i| wq[i] as f32).collect();
            (wf, wq, ws)
        } else {
            (r.vec(n * k, 1.0), vec![], vec![])
        }
    }

    /// A GEMM case's weight on the device: bf16, or int8 with its scales.
    struct DevWeight {
        bf16: cudarc::driver::CudaSlice<bf16>,
        int8: Option<(
            cudarc::driver::CudaSlice<i8>,
            cudarc::driver::CudaSlice<f32>,
        )>,
    }

    impl DevWeight {
        fn new(g: &Gpu, wf: &[f32], wq: &[i8], ws: &[f32], int8: bool) -> Result<Self, String> {
            Ok(DevWeight {
                bf16: g.upload("t", &tob(wf)).map_err(e)?,
                int8: if int8 {
                    Some((g.upload("t", wq).map_err(e)?, g.upload("t", ws).map_err(e)?))
                } else {
                    None
                },
            })
        }

        fn weight(&self) -> Weight<'_> {
            match &self.int8 {
                Some((w, scale)) => Weight::Int8 { w, scale },
                None => Weight::Bf16(&self.bf16),
            }
        }
    }

    /// Where a GEMM case writes its output rows.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Stride {
        /// y [m, n]
        Dense,
        /// rows of a wider buffer at an odd offset (ldy = n + 3, y_off = 1): misaligned pairs
        Odd,
        /// rows 8-aligned, at an 8-aligned offset (ldy = n rounded up to 8, + 8; y_off = 8): the
        /// 16-byte-row epilogues, as for the K/V cache writes
        Aligned,
    }

    /// One GEMM against the CPU product; unless `Stride::Dense`, into rows of a wider buffer,
    /// every element outside them unchanged.
    fn gemm_case(
        g: &Gpu,
        seed: u64,
        (m, n, k): (usize, usize, usize),
        int8: bool,
        f32out: bool,
        accumulate: bool,
        stride: Stride,
    ) -> Result<(), String> {
        let mut r = Rng(seed * 101 + (m * n * k) as u64);
        let x = r.vec(m * k, 1.0);
        let (wf, wq, ws) = gemm_weights(&mut r, n, k, int8);
        let shape = GemmShape {
            ldy: match stride {
                Stride::Dense => n,
                Stride::Odd => n + 3,
                Stride::Aligned => n.div_ceil(8) * 8 + 8,
            },
            y_off: match stride {
                Stride::Dense => 0,
                Stride::Odd => 1,
                Stride::Aligned => 8,
            },
            ..GemmShape::new(m, n, k, accumulate)
        };
        let init = r.vec(shape.y_len().expect("small shape"), 1.0);
        let dx = g.upload("t", &tob(&x)).map_err(e)?;
        // untouched outside the written rows; the product (+ init when accumulating) inside
        let mut want = init.clone();
        let mut prod = vec![0.0; m * n];
        cpu::matmul_wt(&x, m, k, &wf, n, &mut prod, false);
        for i in 0..m {
            for j in 0..n {
                let s = if int8 { ws[j] } else { 1.0 };
                let o = shape.y_off + i * shape.ldy + j;
                want[o] = prod[i * n + j] * s + if accumulate { want[o] } else { 0.0 };
            }
        }
        let dw = DevWeight::new(g, &wf, &wq, &ws, int8)?;
        let w = dw.weight();
        let name =
            format!("gemm m{m} n{n} k{k} int8 {int8} f32 {f32out} acc {accumulate} {stride:?}");
        // products of k terms of magnitude <= 1 (int8: <= 127 * scale): scale atol with sqrt(k)
        let sk = (k as f32).sqrt();
        if f32out {
            let mut dy = g.upload("t", &init).map_err(e)?;
            g.gemm(&dx, w, Out::F32(&mut dy), &shape, None).map_err(e)?;
            let got = g.download("t", &dy).map_err(e)?;
            check(
                &name,
                seed,
                &got,
                &want,
                Tol {
                    atol: F32_OUT.atol * sk,
                    rtol: F32_OUT.rtol,
                },
            )
        } else {
            let mut dy = g.upload("t", &tob(&init)).map_err(e)?;
            g.gemm(&dx, w, Out::Bf16(&mut dy), &shape, None)
                .map_err(e)?;
            let got = fromb(&g.download("t", &dy).map_err(e)?);
            check(
                &name,
                seed,
                &got,
                &want,
                Tol {
                    atol: BF16_OUT.atol * sk,
                    rtol: BF16_OUT.rtol,
                },
            )
        }
    }

    /// A TMA GEMM (n256, 3 x 3 tiles) with the diagnostic trace on: the product still matches
    /// the reference, and each block's record (kernels/gemm_sm90.cu, "trace") is written, has
    /// an SM id of this device, its end time not before its start, and its cycle stamps in
    /// order (entry, first slice, last wgmma, stores; the producer's last copy after entry).
    fn traced_gemm(g: &Gpu, seed: u64, int8: bool) -> Result<(), String> {
        let (m, n, k) = (300usize, 520usize, 1040usize);
        let blocks = n.div_ceil(256) * m.div_ceil(128);
        g.set_gemm_trace(blocks).map_err(e)?;
        let r = sm90_tile(g, 256, &|| {
            if int8 {
                w8a8_out(g, seed, m, n, k, true)
            } else {
                gemm(g, seed, m, n, k, false, false, false, Variant::Default)
            }
        });
        let words = g.gemm_trace_words().map_err(e);
        g.set_gemm_trace(0).map_err(e)?;
        r?;
        let words = words?;
        for (b, w) in words.chunks_exact(8).enumerate() {
            // (globaltimer may tick only every microsecond: end >= start; the SM's cycle count
            // strictly grows over a block's life, which also rules out an unwritten record)
            let ok = w[0] > 0
                && w[6] >= w[0]
                && (w[1] as usize) < g.multiprocessors
                && w[2] < w[5]
                && w[2] <= w[3]
                && w[3] <= w[4]
                && w[4] <= w[5]
                && w[2] <= w[7];
            if !ok {
                return Err(format!("trace of block {b}: {w:?}"));
            }
        }
        if words.len() != 8 * blocks {
            return Err(format!("{} trace words for {blocks} blocks", words.len()));
        }
        Ok(())
    }

    /// The wg prefill attention with the diagnostic trace on (its traced twin kernel): the
    /// output still matches the reference, and each block's record (kernels/attention_sm90.cu)
    /// is written: an SM id of this device, at least one key step, the phases inside the total
    /// and the rest word their difference.
    fn traced_attention(
        g: &Gpu,
        seed: u64,
        kernel: Flash,
        dk: usize,
        causal: bool,
        t5: Option<(usize, usize, bool)>,
    ) -> Result<(), String> {
        let (b, h, tq, tk) = (2usize, 2usize, 300usize, 300usize);
        let blocks = tq.div_ceil(128) * h * b;
        g.set_attn_trace(blocks).map_err(e)?;
        let r = with_flash(g, kernel, || {
            attention(
                g, seed, b, h, h, tq, tk, dk, causal, 0, 0, t5, true, None, false, false,
            )
        });
        let words = g.attn_trace_words().map_err(e);
        g.set_attn_trace(0).map_err(e)?;
        r?;
        let words = words?;
        if words.len() != 8 * blocks {
            return Err(format!("{} trace words for {blocks} blocks", words.len()));
        }
        for (i, w) in words.chunks_exact(8).enumerate() {
            let phases = w[3] + w[4] + w[5] + w[6];
            let ok = (w[0] as usize) < g.multiprocessors
                && w[1] > 0
                && w[2] >= 1
                && phases <= w[1]
                && w[7] == w[1] - phases;
            if !ok {
                return Err(format!("attention trace of block {i}: {w:?}"));
            }
        }
        Ok(())
    }

    fn w8a8(g: &Gpu, seed: u64, m: usize, n: usize, k: usize) -> Result<(), String> {
        w8a8_out(g, seed, m, n, k, false)
    }

    fn w8a8_out(
        g: &Gpu,
        seed: u64,
        m: usize,
        n: usize,
        k: usize,
        bf16_out: bool,
    ) -> Result<(), String> {
        let mut r = Rng(seed * 977 + k as u64);
        let x = r.vec(m * k, 2.0);
        let wq = r.i8s(n * k);
        let ws: Vec<f32> = (0..n).map(|_| 0.01 + r.f().abs() * 0.02).collect();
        // quantise on the GPU, compare q and scales with the CPU reference exactly
        let dx = g.upload("t", &tob(&x)).map_err(e)?;
        let mut dq = g.zeros::<i8>("t", m * k).map_err(e)?;
        let mut dxs = g.zeros::<f32>("t", m).map_err(e)?;
        g.quantize_rows(&dx, &mut dq, &mut dxs, m, k).map_err(e)?;
        let (xq, xs) = quantize_ref(&x, m, k);
        let gq = g.download("t", &dq).map_err(e)?;
        let gs = g.download("t", &dxs).map_err(e)?;
        check(
            "quantize_rows q",
            seed,
            &gq.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            &xq.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            EXACT,
        )?;
        check(
            "quantize_rows scale",
            seed,
            &gs,
            &xs,
            Tol {
                atol: 0.0,
                rtol: 1e-7,
            },
        )?;
        let dw = g.upload("t", &wq).map_err(e)?;
        let dws = g.upload("t", &ws).map_err(e)?;
        let shape = GemmShape::new(m, n, k, false);
        let got = if bf16_out {
            // (the TMA kernels' staged epilogue: scales applied before one bf16 rounding)
            let mut dy = g.zeros::<bf16>("t", m * n).map_err(e)?;
            g.gemm_w8a8(&dq, &dxs, &dw, &dws, Out::Bf16(&mut dy), &shape, None)
                .map_err(e)?;
            fromb(&g.download("t", &dy).map_err(e)?)
        } else {
            let mut dy = g.zeros::<f32>("t", m * n).map_err(e)?;
            g.gemm_w8a8(&dq, &dxs, &dw, &dws, Out::F32(&mut dy), &shape, None)
                .map_err(e)?;
            g.download("t", &dy).map_err(e)?
        };
        // integer dot products are exact on both sides; only the two scale multiplies round
        // (outputs in parallel: up to 288 M products a case)
        let want: Vec<f32> = (0..m * n)
            .into_par_iter()
            .map(|o| {
                let (i, j) = (o / n, o % n);
                let acc: i64 = (0..k)
                    .map(|p| xq[i * k + p] as i64 * wq[j * k + p] as i64)
                    .sum();
                acc as f32 * ws[j] * xs[i]
            })
            .collect();
        // integer products exact; f32 output: two scale roundings, bf16 output: one more
        let tol = if bf16_out {
            Tol {
                atol: 1e-6,
                rtol: 4e-3,
            }
        } else {
            Tol {
                atol: 1e-6,
                rtol: 1e-6,
            }
        };
        check(
            &format!("w8a8 m{m} n{n} k{k} bf16 {bf16_out}"),
            seed,
            &got,
            &want,
            tol,
        )
    }

    /// LoRA through `lora_shrink` + the GEMM's fused expand (SGMV style) against the unfused
    /// f32 composition of each row's own (unpadded) pair: adapter slots of ranks `ranks` stacked
    /// by `linear::stack_loras` (zero-padded to the largest rank, as the graphs stack them), rows
    /// cycling through the base model (-1) and the slots; the f32 output written, or (as the
    /// graphs' residual projections do) the bf16 output accumulated onto its old values; bf16 or
    /// int8 base weights. Generic over the backend: the host backend runs it too
    /// (`host_backend_passes_the_generic_op_cases`).
    #[allow(clippy::too_many_arguments)]
    pub fn lora<B: Backend>(
        g: &B,
        seed: u64,
        m: usize,
        n: usize,
        k: usize,
        ranks: &[usize],
        int8: bool,
        f32out: bool,
    ) -> Result<(), String> {
        use jobx_engine::device::{Lora as DevLora, Out as DevOut, Weight as DevWeight};
        use jobx_engine::models::linear::{stack_loras, Lora as HostLora};
        let mut r = Rng(seed * 57 + (m * n + ranks[0]) as u64);
        let x = r.vec(m * k, 1.0);
        let init = r.vec(m * n, 1.0);
        let scales = [0.5f32, 2.0, 0.25, 1.0];
        let slots: Vec<Option<HostLora>> = ranks
            .iter()
            .zip(scales.iter().cycle())
            .map(|(&rank, &scale)| {
                Some(HostLora {
                    a: r.vec(rank * k, 0.5),
                    b: r.vec(n * rank, 0.5),
                    r: rank,
                    scale,
                })
            })
            .collect();
        let st = stack_loras(&slots, n, k);
        let ids: Vec<i32> = (0..m).map(|i| (i % (slots.len() + 1)) as i32 - 1).collect();
        let (wf, wq, ws) = if int8 {
            let wq = r.i8s(n * k);
            let ws: Vec<f32> = (0..n).map(|_| 0.01 + r.f().abs() * 0.02).collect();
            let wf: Vec<f32> = (0..n * k).map(|i| wq[i] as f32 * ws[i / k]).collect();
            (wf, wq, ws)
        } else {
            (r.vec(n * k, 0.5), vec![], vec![])
        };
        let dx = g.upload("t", &tob(&x)).map_err(e)?;
        let dwb = g.upload("t", &tob(&wf)).map_err(e)?;
        let dwq = g.upload("t", &wq).map_err(e)?;
        let dws = g.upload("t", &ws).map_err(e)?;
        let w: DevWeight<B> = if int8 {
            DevWeight::Int8 {
                w: &dwq,
                scale: &dws,
            }
        } else {
            DevWeight::Bf16(&dwb)
        };
        let da = g.upload("t", &tob(&st.a)).map_err(e)?;
        let db = g.upload("t", &tob(&st.b)).map_err(e)?;
        let di = g.upload("t", &ids).map_err(e)?;
        let dsc = g.upload("t", &st.scale).map_err(e)?;
        let mut dt = g.scratch::<f32>("t", m * st.r).map_err(e)?;
        g.lora_shrink(&dx, &da, &di, &mut dt, m, k, st.r, slots.len())
            .map_err(e)?;
        let lo = DevLora::<'_, B> {
            t: &dt,
            b: &db,
            ids: &di,
            scale: &dsc,
            r: st.r,
            adapters: slots.len(),
        };
        let shape = GemmShape::new(m, n, k, !f32out);
        let got = if f32out {
            let mut dy = g.scratch::<f32>("t", m * n).map_err(e)?;
            g.gemm(&dx, w, DevOut::<'_, B>::F32(&mut dy), &shape, Some(&lo))
                .map_err(e)?;
            g.download("t", &dy).map_err(e)?
        } else {
            let mut dy = g.upload("t", &tob(&init)).map_err(e)?;
            g.gemm(&dx, w, DevOut::<'_, B>::Bf16(&mut dy), &shape, Some(&lo))
                .map_err(e)?;
            fromb(&g.download("t", &dy).map_err(e)?)
        };
        // f32: [old value +] x·Wᵀ + scale·(x·Aᵀ)·Bᵀ with the row's unpadded pair (the inputs are
        // bf16 values already: Rng::vec rounds)
        let mut want = if f32out { vec![0.0; m * n] } else { init };
        let mut prod = vec![0.0; m * n];
        cpu::matmul_wt(&x, m, k, &wf, n, &mut prod, false);
        for i in 0..m {
            for j in 0..n {
                want[i * n + j] += prod[i * n + j];
            }
            let Some(l) = usize::try_from(ids[i]).ok().and_then(|s| slots[s].as_ref()) else {
                continue;
            };
            let mut t = vec![0.0; l.r];
            cpu::matmul_wt(&x[i * k..(i + 1) * k], 1, k, &l.a, l.r, &mut t, false);
            for j in 0..n {
                let s: f32 = (0..l.r).map(|q| t[q] * l.b[j * l.r + q]).sum();
                want[i * n + j] += s * l.scale;
            }
        }
        let sk = (k as f32).sqrt();
        let tol = if f32out {
            Tol {
                atol: 1e-4 * sk,
                rtol: 1e-4,
            }
        } else {
            Tol {
                atol: BF16_OUT.atol * sk,
                rtol: BF16_OUT.rtol,
            }
        };
        let name = format!("lora m{m} n{n} k{k} ranks {ranks:?} int8 {int8} f32 {f32out}");
        check(&name, seed, &got, &want, tol)
    }

    /// `Backend::quantize_kv` against `cpu::quantize_rows_int8` on the same bf16 values: int8
    /// values and scales equal (the same f32 operations), with an all-zero group.
    pub fn quantize_kv<B: Backend>(
        g: &B,
        seed: u64,
        groups: usize,
        k: usize,
    ) -> Result<(), String> {
        let mut r = Rng(seed * 31 + (groups * k) as u64);
        let mut x = r.vec(groups * k, 3.0);
        x[..k].iter_mut().for_each(|v| *v = 0.0);
        let dx = g.upload("t", &tob(&x)).map_err(e)?;
        let mut dq = g.zeros::<i8>("t", groups * k).map_err(e)?;
        let mut ds = g.zeros::<f32>("t", groups).map_err(e)?;
        g.quantize_kv(&dx, groups, k, &mut dq, &mut ds).map_err(e)?;
        let (wq, ws) = cpu::quantize_rows_int8(&x, groups, k);
        let (gq, gs) = (
            g.download("t", &dq).map_err(e)?,
            g.download("t", &ds).map_err(e)?,
        );
        if gq != wq || gs != ws {
            let bad = gq.iter().zip(&wq).position(|(a, b)| a != b);
            return Err(format!(
                "quantize_kv groups{groups} k{k} seed {seed}: first differing value {bad:?}, scales equal {}",
                gs == ws
            ));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn attention<B: Backend>(
        g: &B,
        seed: u64,
        b: usize,
        h: usize,
        kvh: usize,
        tq: usize,
        tk: usize,
        dk: usize,
        causal: bool,
        window: usize,
        q_offset: usize,
        t5: Option<(usize, usize, bool)>,
        masked: bool,
        fused: Option<usize>,
        kv_map: bool,
        q8: bool,
    ) -> Result<(), String> {
        let mut r = Rng(seed * 4099 + (tq * tk) as u64);
        // kv_map: fewer K/V rows than query rows, each query row reading the one the map names
        // (beams sharing their source's cross-attention K/V); rows shared and out of order
        let kvb = if kv_map { b.div_ceil(2) } else { b };
        let map: Vec<i32> = (0..b)
            .map(|i| {
                if kv_map {
                    ((i * 3 + 1) % kvb) as i32
                } else {
                    i as i32
                }
            })
            .collect();
        // layouts: q [b, tq, h, dk] (projection output), k/v [b, kvh, tk, dk] each; fused
        // Some(off): q after `off` other elements, k|v in one time-major buffer
        // [b, tk, 2*kvh*dk] (a K|V cache) starting at the same offset
        let qoff = fused.unwrap_or(0);
        let q = r.vec(qoff + b * tq * h * dk, 1.0);
        let qv = View {
            sb: tq * h * dk,
            sh: dk,
            st: h * dk,
            off: qoff,
        };
        let (mut k, mut v, kv, vv) = if fused.is_some() {
            let w = 2 * kvh * dk;
            let kvbuf = r.vec(qoff + kvb * tk * w, 1.0);
            let kv = View {
                sb: tk * w,
                sh: dk,
                st: w,
                off: qoff,
            };
            (
                kvbuf.clone(),
                kvbuf,
                kv,
                View {
                    off: qoff + kvh * dk,
                    ..kv
                },
            )
        } else {
            let kv = View {
                sb: kvh * tk * dk,
                sh: tk * dk,
                st: dk,
                off: 0,
            };
            let k = r.vec(kvb * kvh * tk * dk, 1.0);
            (k, r.vec(kvb * kvh * tk * dk, 1.0), kv, kv)
        };
        let key_mask: Vec<i32> = (0..kvb * tk)
            .map(|i| {
                // the last 3 keys per row after the first masked (every key of a row r with
                // 3 r >= tk: a query row that sees nothing, whose output is 0), and in odd rows
                // also keys 5, 136, 267, ...: key blocks with and without a masked key alternate
                if masked
                    && (i % tk >= tk.saturating_sub((i / tk) * 3)
                        || (i / tk % 2 == 1 && i % tk % 131 == 5))
                {
                    0
                } else {
                    1
                }
            })
            .collect();
        let nb = t5.map_or(1, |t| t.0);
        let bias = r.vec(nb * h, 2.0);
        let scale = if t5.is_some() {
            1.0
        } else {
            1.0 / (dk as f32).sqrt()
        };
        let call = AttnCall {
            batch: b,
            kv_batch_rows: kvb,
            heads: h,
            kv_heads: kvh,
            tq,
            tk,
            dk,
            q_offset,
            window,
            scale,
            causal,
            t5_bias: t5,
        };
        // q8: the fused K|V buffer (its offset a multiple of dk) quantised per head row with the
        // crate's CPU rule; the reference then reads the dequantised values (int8 x scale, f32)
        let quant = if q8 {
            if fused.is_none_or(|o| o % dk != 0) || t5.is_some() {
                return Err(
                    "attention q8 case: needs a fused K|V at a multiple of dk, no bias".into(),
                );
            }
            let groups = k.len() / dk;
            let (qi, sc) = cpu::quantize_rows_int8(&k[..groups * dk], groups, dk);
            let deq: Vec<f32> = qi
                .iter()
                .enumerate()
                .map(|(i, &x)| x as f32 * sc[i / dk])
                .collect();
            k = deq.clone();
            v = deq;
            Some((qi, sc))
        } else {
            None
        };
        let dq = g.upload("t", &tob(&q)).map_err(e)?;
        let dk_ = g.upload("t", &tob(&k)).map_err(e)?;
        let dv = g.upload("t", &tob(&v)).map_err(e)?;
        let dm = g.upload("t", &key_mask).map_err(e)?;
        let dbias = g.upload("t", &bias).map_err(e)?;
        let dmap = g.upload("t", &map).map_err(e)?;
        let mut dout = g.zeros::<bf16>("t", b * tq * h * dk).map_err(e)?;
        if let Some((qi, sc)) = &quant {
            let dkv = g.upload("t", qi).map_err(e)?;
            let dsc = g.upload("t", sc).map_err(e)?;
            g.attention_q8(
                &call,
                (&dq, qv),
                &dkv,
                kv,
                vv,
                &dsc,
                &mut dout,
                masked.then_some(&dm),
                kv_map.then_some(&dmap),
            )
            .map_err(e)?;
        } else {
            g.attention(
                &call,
                (&dq, qv),
                (&dk_, kv),
                (if fused.is_some() { &dk_ } else { &dv }, vv),
                &mut dout,
                masked.then_some(&dm),
                kv_map.then_some(&dmap),
                t5.is_some().then_some(&dbias),
            )
            .map_err(e)?;
        }
        let got = fromb(&g.download("t", &dout).map_err(e)?);
        // reference: explicit softmax in f64 with the crate's T5 bucket function
        // (query rows in parallel: the op table's CPU references are most of its time on a
        // GPU host, which has the cores)
        let mut want = vec![0.0f32; b * tq * h * dk];
        want.par_chunks_mut(h * dk)
            .enumerate()
            .for_each(|(row, out)| {
                let (bi, i) = (row / tq, row % tq);
                let kb = map[bi] as usize;
                let qp = q_offset + i;
                for hi in 0..h {
                    let kh = hi / (h / kvh);
                    let mut sc = vec![f64::NEG_INFINITY; tk];
                    for (j, s) in sc.iter_mut().enumerate() {
                        if key_mask[kb * tk + j] == 0
                            || (causal && j > qp)
                            || (window > 0 && qp >= j + window)
                        {
                            continue;
                        }
                        let mut d = 0f64;
                        for x in 0..dk {
                            d += q[qv.off + bi * qv.sb + hi * qv.sh + i * qv.st + x] as f64
                                * k[kv.off + kb * kv.sb + kh * kv.sh + j * kv.st + x] as f64;
                        }
                        d *= scale as f64;
                        if let Some((nbk, md, bidir)) = t5 {
                            let bk = jobx_engine::models::t5::relative_position_bucket(
                                j as i64 - qp as i64,
                                bidir,
                                nbk,
                                md,
                            );
                            d += bias[bk * h + hi] as f64;
                        }
                        *s = d;
                    }
                    let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    if mx == f64::NEG_INFINITY {
                        continue;
                    }
                    // (the weights once per query, not once per output element: the same values,
                    // a dk-th of the exp calls)
                    let ex: Vec<f64> = sc.iter().map(|s| (s - mx).exp()).collect();
                    let den: f64 = ex.iter().sum();
                    let pw: Vec<f64> = ex.iter().map(|e| e / den).collect();
                    for x in 0..dk {
                        let mut acc = 0f64;
                        for (j, pj) in pw.iter().enumerate() {
                            acc += pj * v[vv.off + kb * vv.sb + kh * vv.sh + j * vv.st + x] as f64;
                        }
                        out[hi * dk + x] = acc as f32;
                    }
                }
            });
        // The tensor-core flash kernel (CUDA, head dim 64/128, > 4 queries, 16-byte aligned
        // operands, bf16 K/V) rounds the softmax weights to bf16 for the P·V product, as
        // FlashAttention does, and then the output: two roundings. The others keep P in f32.
        // (First GPU run of the fused-offset causal cases, 2026-11-26: 103-114% of the
        // one-rounding budget, while the older cases' errors were unchanged to the digit.)
        let aligned = [qv, kv, vv]
            .iter()
            .all(|w| w.sb % 8 == 0 && w.sh % 8 == 0 && w.st % 8 == 0 && w.off % 8 == 0);
        let mma = B::KIND == "cuda" && (dk == 64 || dk == 128) && tq > 4 && aligned && !q8;
        check(
            &format!("attention b{b} h{h} tq{tq} tk{tk} kv_map {kv_map} q8 {q8}"),
            seed,
            &got,
            &want,
            if mma { BF16_OUT_2ROUND } else { BF16_OUT },
        )
    }

    fn logits(
        g: &Gpu,
        seed: u64,
        rows: usize,
        vocab: usize,
        top_k: usize,
        masked: bool,
    ) -> Result<(), String> {
        let mut r = Rng(seed * 3 + vocab as u64);
        let mut x = r.vec(rows * vocab, 10.0);
        if vocab > 10 {
            x[3] = x[7]; // a tie: the lower id must come first
        }
        let words = vocab.div_ceil(32);
        let mask: Vec<u32> = (0..rows * words)
            .map(|i| {
                if masked {
                    0x9249_2492u32.rotate_left(i as u32 % 7)
                } else {
                    !0
                }
            })
            .collect();
        let mut dl = g.upload("t", &x).map_err(e)?;
        let dm = g.upload("t", &mask).map_err(e)?;
        let mut di = g.zeros::<i32>("t", rows * top_k).map_err(e)?;
        let mut dv = g.zeros::<f32>("t", rows * top_k).map_err(e)?;
        g.logits_topk(
            &mut dl,
            masked.then_some(&dm),
            &mut di,
            &mut dv,
            rows,
            vocab,
            top_k,
        )
        .map_err(e)?;
        let gi = g.download("t", &di).map_err(e)?;
        let gv = g.download("t", &dv).map_err(e)?;
        let mut wi = Vec::new();
        let mut wv = Vec::new();
        for ri in 0..rows {
            let mut idx: Vec<usize> = (0..vocab).collect();
            let val = |j: usize| {
                let ok = (mask[ri * words + j / 32] >> (j % 32)) & 1 == 1;
                if ok {
                    x[ri * vocab + j]
                } else {
                    f32::NEG_INFINITY
                }
            };
            idx.sort_by(|&a, &b| val(b).partial_cmp(&val(a)).unwrap().then(a.cmp(&b)));
            for &j in &idx[..top_k] {
                wi.push(j as f32);
                wv.push(val(j));
            }
        }
        let gi: Vec<f32> = gi.iter().map(|&v| v as f32).collect();
        check(
            &format!("logits ids rows{rows} v{vocab} k{top_k}"),
            seed,
            &gi,
            &wi,
            EXACT,
        )?;
        check(
            &format!("logits vals rows{rows} v{vocab} k{top_k}"),
            seed,
            &gv,
            &wv,
            EXACT,
        )
    }

    /// `greedy_pick` (device greedy: suppressed ids, argmax, log-probability) against an f64
    /// reference; the suppressed ids include the row's true maximum, so suppression must work.
    /// With `masked`, a per-row token bit mask (the grammar's form) disallows about half the
    /// ids, row 0's maximum among them.
    pub fn greedy<B: Backend>(
        g: &B,
        seed: u64,
        rows: usize,
        vocab: usize,
        masked: bool,
    ) -> Result<(), String> {
        let mut r = Rng(seed * 31 + vocab as u64);
        let mut x = r.vec(rows * vocab, 8.0);
        x[2] = x[5]; // a tie: the lower id wins
        let top = (0..vocab)
            .max_by(|&a, &b| x[a].partial_cmp(&x[b]).unwrap().then(b.cmp(&a)))
            .unwrap() as u32;
        let suppress = [top, (vocab - 1) as u32];
        let words = vocab.div_ceil(32);
        let mut mask: Vec<u32> = (0..rows * words)
            .map(|i| 0x9249_2492u32.rotate_left(i as u32 % 7) | 0x0101_0101)
            .collect();
        let second = (0..vocab)
            .filter(|&j| j as u32 != top)
            .max_by(|&a, &b| x[a].partial_cmp(&x[b]).unwrap().then(b.cmp(&a)))
            .unwrap();
        mask[second / 32] &= !(1u32 << (second % 32));
        mask[0] |= 1 << 3; // id 3 allowed in row 0, so it is never all masked
        let allowed =
            |ri: usize, j: usize| !masked || mask[ri * words + j / 32] >> (j % 32) & 1 == 1;
        let mut dl = g.upload("t", &x).map_err(e)?;
        let got = g
            .greedy_pick(&mut dl, rows, vocab, &suppress, masked.then_some(&mask[..]))
            .map_err(e)?;
        let (mut gi, mut gl, mut wi, mut wl) = (vec![], vec![], vec![], vec![]);
        for ri in 0..rows {
            let row: Vec<f64> = (0..vocab)
                .map(|j| {
                    if suppress.contains(&(j as u32)) || !allowed(ri, j) {
                        f64::NEG_INFINITY
                    } else {
                        x[ri * vocab + j] as f64
                    }
                })
                .collect();
            let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let tok = row.iter().position(|&v| v == mx).unwrap();
            let lse = mx + row.iter().map(|&v| (v - mx).exp()).sum::<f64>().ln();
            wi.push(tok as f32);
            wl.push((mx - lse) as f32);
            gi.push(got[ri].0 as f32);
            gl.push(got[ri].1);
        }
        check("greedy_pick ids", seed, &gi, &wi, EXACT)?;
        check(
            "greedy_pick log-prob",
            seed,
            &gl,
            &wl,
            Tol {
                atol: 1e-5,
                rtol: 1e-5,
            },
        )
    }

    /// `topk_logprobs` (beam search's candidates): per row the k best ids after the suppress
    /// list and the row's mask, descending with ties to the lower id (planted: equal values
    /// inside and at the edge of the top k), and log-probabilities over the unmasked row.
    pub fn topk<B: Backend>(
        g: &B,
        seed: u64,
        rows: usize,
        vocab: usize,
        k: usize,
        masked: bool,
    ) -> Result<(), String> {
        let mut r = Rng(seed * 37 + (vocab * k) as u64);
        let mut x = r.vec(rows * vocab, 8.0);
        for ri in 0..rows {
            // ties: a run of equal values at the row's max, longer than k / 2
            let row = &mut x[ri * vocab..(ri + 1) * vocab];
            let mx = row.iter().cloned().fold(f32::MIN, f32::max);
            for j in (1..vocab).step_by(3).take(k / 2 + 1) {
                row[j] = mx;
            }
        }
        let suppress = [0u32, (vocab - 1) as u32];
        let words = vocab.div_ceil(32);
        let mask: Vec<u32> = (0..rows * words)
            .map(|i| 0x9249_2492u32.rotate_left(i as u32 % 7) | 0x0101_0101)
            .collect();
        let allowed =
            |ri: usize, j: usize| !masked || mask[ri * words + j / 32] >> (j % 32) & 1 == 1;
        let mut dl = g.upload("t", &x).map_err(e)?;
        let got = g
            .topk_logprobs(
                &mut dl,
                rows,
                vocab,
                k,
                &suppress,
                masked.then_some(&mask[..]),
            )
            .map_err(e)?;
        if got.len() != rows * k {
            return Err(format!("topk: {} pairs for {rows} rows of {k}", got.len()));
        }
        let (mut gi, mut gl, mut wi, mut wl) = (vec![], vec![], vec![], vec![]);
        for ri in 0..rows {
            let raw = &x[ri * vocab..(ri + 1) * vocab];
            let mx = raw.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = mx + raw.iter().map(|&v| (v as f64 - mx).exp()).sum::<f64>().ln();
            let row: Vec<f64> = (0..vocab)
                .map(|j| {
                    if suppress.contains(&(j as u32)) || !allowed(ri, j) {
                        f64::NEG_INFINITY
                    } else {
                        raw[j] as f64
                    }
                })
                .collect();
            let mut ids: Vec<usize> = (0..vocab).collect();
            ids.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            for (c, &j) in ids[..k].iter().enumerate() {
                wi.push(j as f32);
                wl.push((row[j] - lse) as f32);
                gi.push(got[ri * k + c].0 as f32);
                gl.push(got[ri * k + c].1);
            }
        }
        check("topk ids", seed, &gi, &wi, EXACT)?;
        check(
            "topk log-prob",
            seed,
            &gl,
            &wl,
            Tol {
                atol: 1e-5,
                rtol: 1e-5,
            },
        )
    }
}
