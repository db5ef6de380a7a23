//! CUDA kernel benchmarks at model shapes (a lab binary, not criterion: it runs on the GPU
//! machine from tools/gpu-check.sh, which has no Rust toolchain). Each op: 3 warm-up launches,
//! then the median of 20 timed launches, each between CUDA events on the stream (so the time is
//! the kernel's, synchronised). Prints one JSON line per case; tools/gpu_bench_torch.py times the
//! PyTorch equivalents (torch.matmul bf16, torch._int_mm, scaled_dot_product_attention, the RMS
//! norm and gated GELU as HF computes them) on the same shapes and tools/gpu-check.sh puts the
//! two side by side.
use half::bf16;
use jobx_engine::cuda::*;
use std::sync::atomic::Ordering::Relaxed;

fn time<F: FnMut()>(g: &Gpu, mut f: F) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut ts = Vec::new();
    for _ in 0..20 {
        // cudarc's default event flags disable timing; elapsed_ms needs timing events
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let a = g.ctx.new_event(flags).expect("event");
        let b = g.ctx.new_event(flags).expect("event");
        a.record(&g.stream()).expect("record");
        f();
        b.record(&g.stream()).expect("record");
        b.synchronize().expect("sync");
        ts.push(a.elapsed_ms(&b).expect("elapsed") as f64);
    }
    ts.sort_by(|x, y| x.partial_cmp(y).unwrap());
    ts[ts.len() / 2]
}

/// Seeded uniform values in [-1, 1) (an xorshift generator): kernels are never timed on zeros,
/// which hide unwritten outputs and can run faster than real data.
fn rand_f32(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn rand_bf16(g: &Gpu, n: usize, seed: u64) -> cudarc::driver::CudaSlice<bf16> {
    let v: Vec<bf16> = rand_f32(n, seed).into_iter().map(bf16::from_f32).collect();
    g.upload("bench", &v).unwrap()
}

fn rand_i8(g: &Gpu, n: usize, seed: u64) -> cudarc::driver::CudaSlice<i8> {
    let v: Vec<i8> = rand_f32(n, seed)
        .into_iter()
        .map(|x| (x * 127.0) as i8)
        .collect();
    g.upload("bench", &v).unwrap()
}

/// One JSON line from a TMA GEMM trace (8 words per block, kernels/gemm_sm90.cu): medians over
/// the blocks of each phase in SM cycles, the blocks' start times against the first (us), and the
/// main loop's cycles per 128-byte k slice next to an ideal of 1024 (a 128 x 256 tile's slice at
/// an H100 SM's dense rate: 4096 bf16 or 8192 int8 flop per cycle).
fn trace_summary(kernel: &str, (m, n, k): (usize, usize, usize), int8: bool, w: &[u64]) -> String {
    // (written records: globaltimer may tick only every microsecond, so end >= start)
    let recs: Vec<&[u64]> = w
        .chunks_exact(8)
        .filter(|r| r[0] > 0 && r[6] >= r[0])
        .collect();
    let med = |mut v: Vec<f64>| {
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let cyc = |a: usize, b: usize| {
        med(recs
            .iter()
            .map(|r| r[b].wrapping_sub(r[a]) as f64)
            .collect())
    };
    let t0 = recs.iter().map(|r| r[0]).min().unwrap_or(0);
    let t1 = recs.iter().map(|r| r[6]).max().unwrap_or(0);
    let mut starts: Vec<f64> = recs.iter().map(|r| (r[0] - t0) as f64 / 1e3).collect();
    starts.sort_by(f64::total_cmp);
    let q = |p: f64| {
        starts
            .get(((starts.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let mhz = med(recs
        .iter()
        .filter(|r| r[6] - r[0] > 5_000)
        .map(|r| r[5].wrapping_sub(r[2]) as f64 / (r[6] - r[0]) as f64 * 1e3)
        .collect());
    let slices = k.div_ceil(if int8 { 128 } else { 64 });
    let main = cyc(3, 4);
    let sms = {
        let mut ids: Vec<u64> = recs.iter().map(|r| r[1]).collect();
        ids.sort();
        ids.dedup();
        ids.len()
    };
    format!(
        "{{\"op\":\"gemm_trace\",\"kernel\":\"{kernel}\",\"m\":{m},\"n\":{n},\"k\":{k},\"blocks\":{},\"sms\":{sms},\"span_us\":{:.2},\"start_us_p50\":{:.2},\"start_us_p90\":{:.2},\"start_us_max\":{:.2},\"fill_cyc\":{:.0},\"main_cyc\":{main:.0},\"epi_cyc\":{:.0},\"block_cyc\":{:.0},\"producer_cyc\":{:.0},\"slices\":{slices},\"main_cyc_per_slice\":{:.1},\"ideal_cyc_per_slice\":1024,\"mhz\":{mhz:.0}}}",
        recs.len(),
        (t1 - t0) as f64 / 1e3,
        q(0.5),
        q(0.9),
        q(1.0),
        cyc(2, 3),
        cyc(4, 5),
        cyc(2, 5),
        cyc(2, 7),
        main / slices.max(1) as f64,
    )
}

fn main() {
    let g = match Gpu::new(0) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("SKIP cuda_kernels bench: {e}");
            // (gpu-check.sh sets it: a bench that timed nothing must not read as a success)
            if std::env::var("JOBX_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                std::process::exit(1);
            }
            return;
        }
    };
    eprintln!("cuda_kernels on {}", g.name);
    // JOBX_BENCH_SKIP: comma list of the opt-in kernels not to time ("fa2", "wg",
    // "persistent", "splitk", "online", ...): tools/gpu-check.sh leaves out those whose op cases failed on this
    // card
    let skip = std::env::var("JOBX_BENCH_SKIP").unwrap_or_default();
    let skip: Vec<&str> = skip.split(',').collect();
    // the unsuffixed GEMM rows use the fixed rule for m <= 32 (what earlier runs measured as the
    // default); the tuned choice has its own rows
    g.set_gemm_mode(tune::GemmMode::Fixed);
    // (m, n, k): T5-large projections (d_model 1024, d_ff 2816) at 8 x 1024 tokens, a decode
    // step at batch 32 (with the fused q|k|v and wi_0|wi_1 projections of the device graph: n
    // 3072 and 5632), a square 4096 product, and Mistral-7B prefill at 8 x 1024 tokens (the
    // fused q|k|v projection, n 4096 + 2 x 1024, and the FFN's down projection, k 14336): the
    // large-batch products where the W8A8 target (>= 1.6x our bf16) is judged; and 256 and 512
    // rows, either side of where weight-only int8 starts widening its weight for the wgmma
    // tiles (DEQUANT_MIN_M; `gemm_int8_weight_only_mma` is the other path at each shape).
    for &(m, n, k) in &[
        (256, 1024, 1024),
        (512, 2816, 1024),
        (8192, 1024, 1024),
        (8192, 2816, 1024),
        (32, 1024, 2816),
        (32, 2816, 1024),
        (32, 3072, 1024),
        (32, 5632, 1024),
        (32, 1024, 1024),
        (32, 32128, 1024),
        (8, 1024, 2816),
        (4096, 4096, 4096),
        (8192, 6144, 4096),
        (8192, 4096, 14336),
    ] {
        let x = rand_bf16(&g, m * k, 1);
        let w = rand_bf16(&g, n * k, 2);
        let wq = rand_i8(&g, n * k, 3);
        let xq = rand_i8(&g, m * k, 4);
        let s_n = g.upload("bench", &vec![0.01f32; n]).unwrap();
        let s_m = g.upload("bench", &vec![0.01f32; m]).unwrap();
        let mut y = g.zeros::<bf16>("bench", m * n).unwrap();
        let sh = GemmShape::new(m, n, k, false);
        let flop = 2.0 * (m * n * k) as f64;
        // the bf16 and the weight-only int8 product, timed with whichever kernel is chosen now
        let time_bf16 = |y: &mut cudarc::driver::CudaSlice<bf16>| {
            time(&g, || {
                g.gemm(&x, Weight::Bf16(&w), Out::Bf16(y), &sh, None)
                    .unwrap()
            })
        };
        let time_int8 = |y: &mut cudarc::driver::CudaSlice<bf16>| {
            time(&g, || {
                let w = Weight::Int8 {
                    w: &wq,
                    scale: &s_n,
                };
                g.gemm(&x, w, Out::Bf16(y), &sh, None).unwrap()
            })
        };
        for (name, ms) in [
            ("gemm_bf16", time_bf16(&mut y)),
            ("gemm_int8_weight_only", time_int8(&mut y)),
            (
                "gemm_w8a8",
                time(&g, || {
                    g.gemm_w8a8(&xq, &s_m, &wq, &s_n, Out::Bf16(&mut y), &sh, None)
                        .unwrap()
                }),
            ),
        ] {
            println!(
                "{{\"op\":\"{name}\",\"m\":{m},\"n\":{n},\"k\":{k},\"ms\":{ms:.4},\"tflops\":{:.2}}}",
                flop / ms / 1e9
            );
        }
        if m > 32 && g.has_kernel("gemm_tma_bf16_n128") {
            // each wgmma column tile forced, and (baseline) the mma.sync tiles of gemm.cu
            // (and the persistent n256 kernels, opt-in until measured)
            for (tile, suffix) in [
                (128u32, "tma_n128"),
                (256, "tma_n256"),
                (256, "tma_n256_p"),
                (1, "mma"),
            ] {
                if suffix.ends_with("_p") && skip.contains(&"persistent") {
                    continue;
                }
                g.sm90_tile.store(tile, Relaxed);
                let persistent = g.gemm_persistent.swap(suffix.ends_with("_p"), Relaxed);
                let bf = time_bf16(&mut y);
                let i8 = time(&g, || {
                    g.gemm_w8a8(&xq, &s_m, &wq, &s_n, Out::Bf16(&mut y), &sh, None)
                        .unwrap()
                });
                // weight-only int8 on the mma.sync tiles (the path before the widening, as
                // JOBX_GEMM_DEQUANT=0 takes it: the tile is forced back to the default first)
                let i8w = (suffix == "mma").then(|| {
                    g.sm90_tile.store(0, Relaxed);
                    let widen = g.gemm_dequant.swap(false, Relaxed);
                    let ms = time_int8(&mut y);
                    g.gemm_dequant.store(widen, Relaxed);
                    ms
                });
                g.sm90_tile.store(0, Relaxed);
                g.gemm_persistent.store(persistent, Relaxed);
                let rows = [
                    ("gemm_bf16", Some(bf)),
                    ("gemm_w8a8", Some(i8)),
                    ("gemm_int8_weight_only", i8w),
                ];
                for (name, ms) in rows.into_iter().filter_map(|(n, t)| Some((n, t?))) {
                    println!(
                        "{{\"op\":\"{name}_{suffix}\",\"m\":{m},\"n\":{n},\"k\":{k},\"ms\":{ms:.4},\"tflops\":{:.2}}}",
                        flop / ms / 1e9
                    );
                }
            }
        }
        if m > 32 && g.has_kernel("gemm_tma_bf16_n256") {
            // where the default wgmma kernel's time goes, per block (kernels/gemm_sm90.cu,
            // "trace"), bf16 and W8A8
            let blocks = n.div_ceil(256) * m.div_ceil(128);
            g.sm90_tile.store(256, Relaxed);
            for (kernel, int8) in [("gemm_tma_bf16_n256", false), ("gemm_tma_s8_n256", true)] {
                let mut run = || {
                    if int8 {
                        g.gemm_w8a8(&xq, &s_m, &wq, &s_n, Out::Bf16(&mut y), &sh, None)
                    } else {
                        g.gemm(&x, Weight::Bf16(&w), Out::Bf16(&mut y), &sh, None)
                    }
                };
                let words = g
                    .set_gemm_trace(blocks)
                    .and_then(|_| run())
                    .and_then(|_| g.gemm_trace_words());
                g.set_gemm_trace(0).unwrap();
                match words {
                    Ok(w) => println!("{}", trace_summary(kernel, (m, n, k), int8, &w)),
                    Err(e) => eprintln!("gemm trace {kernel}: {e}"),
                }
            }
            g.sm90_tile.store(0, Relaxed);
        }
        if m <= 32 {
            // the same product on the general 64x64 tensor-core tiles: the baseline the skinny
            // kernels replace
            g.general_kernels.store(true, Relaxed);
            let ms = time_bf16(&mut y);
            g.general_kernels.store(false, Relaxed);
            println!(
                "{{\"op\":\"gemm_bf16_general\",\"m\":{m},\"n\":{n},\"k\":{k},\"ms\":{ms:.4},\"tflops\":{:.2}}}",
                flop / ms / 1e9
            );
            // each kernel for m <= 32 forced (bf16 and int8 weights), then the tuned choice
            // (the first call of the shape times the candidates with L2 flushed, then the
            // timing below runs the kernel it picked with the weight in L2, as every row here)
            use tune::{GemmMode::*, SkinnyKernel};
            // (skinny_tc_split: split over k, opt-in until measured)
            for (mode, suffix) in [
                (Force(SkinnyKernel::Skinny), "skinny"),
                (Force(SkinnyKernel::SkinnyTc), "skinny_tc"),
                (Force(SkinnyKernel::SkinnyTcSplit), "skinny_tc_split"),
                (Tune, "tuned"),
            ] {
                if suffix == "skinny_tc_split" && skip.contains(&"splitk") {
                    continue;
                }
                g.set_gemm_mode(mode);
                let bf = time_bf16(&mut y);
                let i8w = time_int8(&mut y);
                g.set_gemm_mode(tune::GemmMode::Fixed);
                for (name, ms) in [
                    (format!("gemm_bf16_{suffix}"), bf),
                    (format!("gemm_int8_weight_only_{suffix}"), i8w),
                ] {
                    println!(
                        "{{\"op\":\"{name}\",\"m\":{m},\"n\":{n},\"k\":{k},\"ms\":{ms:.4},\"tflops\":{:.2}}}",
                        flop / ms / 1e9
                    );
                }
            }
        }
    }
    // attention: T5-large encoder (16 heads x 64, 1024 tokens, relative bias) at batch 8
    // and a T5-large cross-attention decode step at batch 32 (one query over 1024 keys)
    for &(b, h, tq, t, dk) in &[
        (8usize, 16usize, 1024usize, 1024usize, 64usize),
        (1, 32, 4096, 4096, 128),
        (32, 16, 1, 1024, 64),
        (8, 16, 1, 1024, 64),
    ] {
        // distinct K and V (the same buffer for both would let V's reads hit in L2)
        let q = rand_bf16(&g, b * t * h * dk, 5);
        let kb = rand_bf16(&g, b * t * h * dk, 7);
        let vb = rand_bf16(&g, b * t * h * dk, 8);
        let mut o = g.zeros::<bf16>("bench", b * tq * h * dk).unwrap();
        let v = View {
            sb: t * h * dk,
            sh: dk,
            st: h * dk,
            off: 0,
        };
        let bias = g.upload("bench", &rand_f32(32 * h, 6)).unwrap();
        let t5 = dk == 64 && tq > 1;
        let qv = View {
            sb: tq * h * dk,
            sh: dk,
            st: h * dk,
            off: 0,
        };
        let call = AttnCall {
            batch: b,
            kv_batch_rows: b,
            heads: h,
            kv_heads: h,
            tq,
            tk: t,
            dk,
            q_offset: 0,
            window: 0,
            scale: if dk == 64 {
                1.0
            } else {
                1.0 / (dk as f32).sqrt()
            },
            causal: dk == 128,
            t5_bias: t5.then_some((32, 128, true)),
        };
        // the wrapper's choice (since 2026-11-28 wg at dk 128, fa2 at 64 on an H100), each
        // prefill kernel forced: mma.sync 16 rows per warp (the default before), 32 rows per
        // warp, wgmma; then (baseline) the general one-key-per-lane kernel
        let (fa2_default, wg_default, ws_default) = (
            g.flash_fa2.load(Relaxed),
            g.flash_wg.load(Relaxed),
            g.flash_ws.load(Relaxed),
        );
        let attn = |o: &mut _| {
            g.attention(
                &call,
                (&q, qv),
                (&kb, v),
                (&vb, v),
                o,
                None,
                None,
                t5.then_some(&bias),
            )
        };
        // (general, fa2, wg, ws): force a kernel, or put the defaults back
        let set_flags = |general, fa2, wg, ws| {
            g.general_kernels.store(general, Relaxed);
            g.flash_fa2.store(fa2, Relaxed);
            g.flash_wg.store(wg, Relaxed);
            g.flash_ws.store(ws, Relaxed);
        };
        // (the warp-specialised ws kernels are opt-in: their gpu-check family decides)
        for (name, general, fa2, wg, ws) in [
            ("attention", false, fa2_default, wg_default, ws_default),
            ("attention_mma", false, false, false, false),
            ("attention_fa2", false, true, false, false),
            ("attention_wg", false, false, true, false),
            ("attention_ws", false, false, false, true),
            (
                "attention_general",
                true,
                fa2_default,
                wg_default,
                ws_default,
            ),
        ] {
            if (fa2 != fa2_default || wg != wg_default || ws != ws_default) && tq <= 4
                || wg && !g.has_kernel("attention_wg_d64")
                || ws && !g.has_kernel("attention_ws_d64")
                || name == "attention_fa2" && skip.contains(&"fa2")
                || name == "attention_wg" && skip.contains(&"wg")
                || name == "attention_ws" && skip.contains(&"ws")
            {
                continue;
            }
            set_flags(general, fa2, wg, ws);
            let ms = time(&g, || attn(&mut o).unwrap());
            set_flags(false, fa2_default, wg_default, ws_default);
            let causal = dk == 128;
            let flop = 4.0 * (b * h * tq * t * dk) as f64 / if causal { 2.0 } else { 1.0 };
            println!(
            "{{\"op\":\"{name}\",\"batch\":{b},\"heads\":{h},\"tq\":{tq},\"t\":{t},\"dk\":{dk},\"causal\":{causal},\"ms\":{ms:.4},\"tflops\":{:.2}}}",
            flop / ms / 1e9
        );
        }
        // prefill shapes: where the wg and ws kernels' time goes, per block and key step
        // (kernels/attention_sm90.cu, their traced twins; once, outside the timings)
        for (fam, wg, ws) in [("wg", true, false), ("ws", false, true)] {
            if tq <= 4 || !g.has_kernel(&format!("attention_{fam}_d64")) || skip.contains(&fam) {
                continue;
            }
            let blocks = tq.div_ceil(128) * h * b;
            set_flags(false, false, wg, ws);
            let words = g
                .set_attn_trace(blocks)
                .and_then(|_| attn(&mut o))
                .and_then(|_| g.attn_trace_words());
            g.set_attn_trace(0).unwrap();
            set_flags(false, fa2_default, wg_default, ws_default);
            match words {
                Ok(w) => println!("{}", attn_trace_summary(fam, (b, h, tq, t, dk), &w)),
                Err(e) => eprintln!("attention trace ({fam}): {e}"),
            }
        }
        // decode steps: the key-chunk count forced (the rule's choice, 0, is the row above), and
        // K/V read in GB/s, the bound at these shapes; then the one-pass kernel (opt-in,
        // Gpu::decode_online, its gpu-check family "online") at the rule's count and forced
        let online_default = g.decode_online.load(Relaxed);
        for online in [false, true] {
            if tq != 1 || online && skip.contains(&"online") {
                continue;
            }
            g.decode_online.store(online, Relaxed);
            for splits in [0usize, 1, 2, 4, 8] {
                // (the two-pass kernel at the rule's count is the `attention` row above)
                if splits == 0 && !online {
                    continue;
                }
                g.decode_splits.store(splits, Relaxed);
                let ms = time(&g, || {
                    g.attention(
                        &call,
                        (&q, qv),
                        (&kb, v),
                        (&vb, v),
                        &mut o,
                        None,
                        None,
                        None,
                    )
                    .unwrap()
                });
                g.decode_splits.store(0, Relaxed);
                let gbs = (2 * b * h * t * dk * 2) as f64 / ms / 1e6;
                let op = match (online, splits) {
                    (false, s) => format!("attention_splits{s}"),
                    (true, 0) => "attention_online".to_string(),
                    (true, s) => format!("attention_online_splits{s}"),
                };
                println!(
                    "{{\"op\":\"{op}\",\"batch\":{b},\"heads\":{h},\"tq\":{tq},\"t\":{t},\"dk\":{dk},\"causal\":false,\"ms\":{ms:.4},\"kv_gb_s\":{gbs:.0}}}"
                );
            }
        }
        g.decode_online.store(online_default, Relaxed);
    }
    decode_chain(&g, &skip);
    // what tuning chose per decode shape, with every candidate's time (L2 flushed)
    for line in g.gemm_tune_report() {
        eprintln!("gemm tune: {line}");
    }
    // last, so that a failure here loses no earlier row
    elementwise(&g);
}

/// RMS norm and the gated GELU at a T5-Large decode step (32 rows), the T5-Large encoder at
/// batch 8 (8192 rows) and Mistral-7B prefill (8192 rows, d 4096, d_ff 14336), in GB/s of
/// memory moved (both read and written once): bandwidth-bound kernels, against the HBM peak and
/// tools/gpu_bench_torch.py's rows for the same shapes.
fn elementwise(g: &Gpu) {
    use jobx_engine::device::{ActKind, Backend};
    for &(rows, d) in &[(32, 1024), (8192, 1024), (8192, 4096)] {
        let x = rand_bf16(g, rows * d, 60);
        let w = rand_bf16(g, d, 61);
        let mut y = g.zeros::<bf16>("bench", rows * d).unwrap();
        let ms = time(g, || g.rms_norm(&x, &w, &mut y, rows, d, 1e-6).unwrap());
        let gbs = (2 * rows * d * 2 + d * 2) as f64 / ms / 1e6;
        println!(
            "{{\"op\":\"rms_norm\",\"rows\":{rows},\"d\":{d},\"ms\":{ms:.4},\"gb_s\":{gbs:.0}}}"
        );
    }
    for &(rows, cols) in &[(32, 2816), (8192, 2816), (8192, 14336)] {
        // the fused wi_0|wi_1 (gate_proj|up_proj) output [rows, 2 * cols], as the graphs have it
        let gu = rand_bf16(g, rows * 2 * cols, 62);
        let mut y = g.zeros::<bf16>("bench", rows * cols).unwrap();
        let ms = time(g, || {
            g.gated_activation(&gu, &mut y, rows, cols, ActKind::GeluTanh)
                .unwrap()
        });
        let gbs = (3 * rows * cols * 2) as f64 / ms / 1e6;
        println!("{{\"op\":\"gated_gelu\",\"rows\":{rows},\"d\":{cols},\"ms\":{ms:.4},\"gb_s\":{gbs:.0}}}");
    }
}

/// One JSON row from the wg or ws attention's per-block trace (kernels/attention_sm90.cu):
/// medians over blocks of each phase's cycles per key step, the blocks' key steps, and their
/// spread. The four phases: wg's copy wait, S, softmax, P V; ws's K/V wait (full barriers), turn
/// wait (the other consumer's issue), its wgmma group, softmax.
fn attn_trace_summary(
    fam: &str,
    (b, h, tq, t, dk): (usize, usize, usize, usize, usize),
    w: &[u64],
) -> String {
    let recs: Vec<&[u64]> = w.chunks_exact(8).filter(|r| r[2] > 0).collect();
    let med = |mut v: Vec<f64>| -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let per_step = |i: usize| med(recs.iter().map(|r| r[i] as f64 / r[2] as f64).collect());
    let steps: Vec<f64> = recs.iter().map(|r| r[2] as f64).collect();
    let max_steps = steps.iter().copied().fold(0.0, f64::max);
    let [p0, p1, p2, p3] = if fam == "ws" {
        ["kv_wait_cyc", "turn_wait_cyc", "mma_cyc", "softmax_cyc"]
    } else {
        ["wait_cyc", "s_cyc", "softmax_cyc", "pv_cyc"]
    };
    format!(
        "{{\"op\":\"attention_trace\",\"kernel\":\"attention_{fam}_d{dk}\",\"batch\":{b},\"heads\":{h},\"tq\":{tq},\"t\":{t},\"dk\":{dk},\"blocks\":{},\"steps_p50\":{:.0},\"steps_max\":{max_steps:.0},\"cyc_per_step\":{:.0},\"{p0}\":{:.0},\"{p1}\":{:.0},\"{p2}\":{:.0},\"{p3}\":{:.0},\"rest_cyc\":{:.0},\"ideal_mma_cyc\":{}}}",
        recs.len(),
        med(steps),
        per_step(1),
        per_step(3),
        per_step(4),
        per_step(5),
        per_step(6),
        per_step(7),
        // both warpgroups' S and P V at the tensor cores' dense bf16 rate (~4096 flop/cycle)
        2 * 2 * 2 * 64 * 128 * dk / 4096,
    )
}

/// A T5-Large decode step's chain of dependent kernels without attention (24 layers of: norm,
/// q|k|v, o (+=), norm, cross q, o (+=), norm, wi_0|wi_1, gated GELU, wo (+=); 241 launches) at
/// batch 32, each layer with weights of its own (the same random values uploaded per layer, so
/// L2 holds no more of them than in a model), tuned as the engine tunes. Timed as plain
/// launches and as a replayed CUDA graph, each without and (where capable and its gpu-check
/// family passed) with programmatic dependent launch: the per-kernel cost PDL is meant to cut,
/// apart from the end-to-end noise. Then (where its family passed) with the three norms before
/// q|k|v, cross q and wi_0|wi_1 fused into those GEMMs (`Gpu::gemm_rms`: 72 launches fewer
/// where every one fuses; `kernels` counts what ran), PDL as the default has it.
fn decode_chain(g: &Gpu, skip: &[&str]) {
    use jobx_engine::device::{ActKind, Backend};
    const ROWS: usize = 32;
    const D: usize = 1024;
    const FF: usize = 2816;
    const LAYERS: usize = 24;
    // (n, k): q|k|v, self o, cross q, cross o, wi_0|wi_1, wo
    let shapes = [(3 * D, D), (D, D), (D, D), (D, D), (2 * FF, D), (D, FF)];
    let host: Vec<Vec<bf16>> = shapes
        .iter()
        .enumerate()
        .map(|(i, &(n, k))| {
            rand_f32(n * k, 40 + i as u64)
                .into_iter()
                .map(|v| bf16::from_f32(0.03 * v))
                .collect()
        })
        .collect();
    let layers: Vec<Vec<cudarc::driver::CudaSlice<bf16>>> = (0..LAYERS)
        .map(|_| host.iter().map(|h| g.upload("bench", h).unwrap()).collect())
        .collect();
    let ln: Vec<bf16> = rand_f32(D, 50)
        .into_iter()
        .map(|v| bf16::from_f32(1.0 + 0.1 * v))
        .collect();
    let lnw = g.upload("bench", &ln).unwrap();
    let mut x = rand_bf16(g, ROWS * D, 51);
    let o_in = rand_bf16(g, ROWS * D, 52);
    let mut hn = g.zeros::<bf16>("bench", ROWS * D).unwrap();
    let mut big = g.zeros::<bf16>("bench", ROWS * 2 * FF).unwrap();
    let mut act = g.zeros::<bf16>("bench", ROWS * FF).unwrap();
    let mut step = || -> jobx_engine::Result<()> {
        for w in &layers {
            let gemm = |x: &cudarc::driver::CudaSlice<bf16>,
                        w: &cudarc::driver::CudaSlice<bf16>,
                        y: &mut cudarc::driver::CudaSlice<bf16>,
                        (n, k): (usize, usize),
                        acc: bool| {
                g.gemm(
                    x,
                    Weight::Bf16(w),
                    Out::Bf16(y),
                    &GemmShape::new(ROWS, n, k, acc),
                    None,
                )
            };
            // the norm into hn, then the GEMM on it (fused where Gpu::gemm_rms is on)
            let normed = |x: &cudarc::driver::CudaSlice<bf16>,
                          hn: &mut cudarc::driver::CudaSlice<bf16>,
                          w: &cudarc::driver::CudaSlice<bf16>,
                          y: &mut cudarc::driver::CudaSlice<bf16>,
                          (n, k): (usize, usize)| {
                g.gemm_rms(
                    x,
                    (&lnw, 1e-6),
                    hn,
                    Weight::Bf16(w),
                    Out::Bf16(y),
                    &GemmShape::new(ROWS, n, k, false),
                    None,
                )
            };
            normed(&x, &mut hn, &w[0], &mut big, shapes[0])?;
            gemm(&o_in, &w[1], &mut x, shapes[1], true)?;
            normed(&x, &mut hn, &w[2], &mut act, shapes[2])?;
            gemm(&o_in, &w[3], &mut x, shapes[3], true)?;
            normed(&x, &mut hn, &w[4], &mut big, shapes[4])?;
            g.gated_activation(&big, &mut act, ROWS, FF, ActKind::GeluTanh)?;
            gemm(&act, &w[5], &mut x, shapes[5], true)?;
        }
        g.rms_norm(&x, &lnw, &mut hn, ROWS, D, 1e-6)
    };
    let mode = g.gemm_mode();
    g.set_gemm_mode(tune::GemmMode::Tune);
    let (pdl_before, rms_before) = (g.pdl.load(Relaxed), g.gemm_rms.load(Relaxed));
    let pdls: &[bool] = if g.pdl_capable && !skip.contains(&"pdl") {
        &[false, true]
    } else {
        &[false]
    };
    // (pdl, rms): without and with PDL, then the fused norms under the default PDL, with a
    // baseline at that setting if the first runs had none (PDL left out by JOBX_BENCH_SKIP
    // while on by default)
    let mut runs: Vec<(bool, bool)> = pdls.iter().map(|&p| (p, false)).collect();
    if !skip.contains(&"rms") && g.has_kernel("gemm_skinny_tc_rms") {
        let pdl = pdl_before && g.pdl_capable;
        if !pdls.contains(&pdl) {
            runs.push((pdl, false));
        }
        runs.push((pdl, true));
    }
    g.gemm_rms.store(false, Relaxed);
    for (pdl, rms) in runs {
        g.pdl.store(pdl, Relaxed);
        g.gemm_rms.store(rms, Relaxed);
        // plain launches (the first warm-up run tunes the shapes), then the same as a graph
        let plain = time(g, || step().unwrap());
        // launches a step: 10 a layer and the last norm, less the norms fused
        let before = g.rms_fused.load(Relaxed);
        step().unwrap();
        let kernels = LAYERS * 10 + 1 - (g.rms_fused.load(Relaxed) - before) as usize;
        let graph = g.capture(&mut step).ok().flatten();
        let replay = graph
            .as_ref()
            .map(|gr| time(g, || g.launch_graph(gr).unwrap()));
        for (graphs, ms) in [(false, Some(plain)), (true, replay)] {
            let Some(ms) = ms else {
                eprintln!("decode_chain: recording failed (pdl {pdl}, rms {rms})");
                continue;
            };
            println!(
                "{{\"op\":\"decode_chain\",\"rows\":{ROWS},\"layers\":{LAYERS},\"kernels\":{kernels},\"graph\":{graphs},\"pdl\":{pdl},\"rms\":{rms},\"ms\":{ms:.4},\"us_per_kernel\":{:.2}}}",
                ms * 1e3 / kernels as f64
            );
        }
    }
    g.pdl.store(pdl_before, Relaxed);
    g.gemm_rms.store(rms_before, Relaxed);
    g.set_gemm_mode(mode);
}
