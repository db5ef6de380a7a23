// Hopper (sm_90a) tensor-core GEMMs with wgmma: y[m, n] (+)= x[m, k] · w[n, k]^T, the products
// of prefill/encoder/training shapes (m > 32; decode-sized products use gemm_skinny*).
//   gemm_tma_bf16_n128 / _n256   bf16 x, bf16 w, f32 accumulation (wgmma m64nNk16)
//   gemm_tma_s8_n128 / _n256     int8 x (per-token scale), int8 w (per-channel scale), s32
//                                accumulation (wgmma m64nNk32), the W8A8 path
// Same parameter struct and epilogue (scales, fused LoRA expand, accumulate, bf16/f32 output) as
// gemm.cu; the Rust wrapper picks these on an sm_90 device when k * element size is a multiple
// of 16 bytes and x, w are 16-byte aligned, and gemm.cu's mma.sync kernels otherwise.
//
// Why a second GEMM: mma.sync (gemm.cu) stops at ~130 TFLOP/s on an H100/H200 (measured
// 2026-11-26, 18-26% of torch.matmul); Hopper reaches its matrix rate only through the
// asynchronous warpgroup MMA, which reads both operands straight from shared memory.
//
// Tile 128 x BN; k goes through shared memory in slices of 128 bytes per row (64 bf16 or 128
// int8), laid out by the TMA engine in its 128-byte swizzle (16-byte chunk c of row r at chunk
// c ^ (r % 8) inside 1024-byte atoms of 8 rows), which is the layout the wgmma descriptors below
// describe. Per slice each consumer warpgroup issues 4 wgmma (k16 bf16 / k32 s8, i.e. 32 bytes
// of k each, the descriptor's start address advanced by 32 bytes inside the swizzle atom).
// A variant loading the slices with cp.async by every thread (a block barrier per slice) ran at
// 0.36 ms vs this one's 0.26 ms at 4096^3 on an H100 (2026-11-26) and was removed.
#include "common.cuh"
#include "gemm_common.cuh"
#include "wgmma_ops.cuh"
#include "sm90_common.cuh"

// jobx:archs 90a  (build.rs: compile this file for sm_90a only; other GPUs never load it)

// NVRTC has no <type_traits>: the accumulator type by operand type
template <bool INT8> struct AccT { typedef float type; };
template <> struct AccT<true> { typedef int type; };

#define SM90_BM 128
#define SLICE_BYTES 128  // k bytes per row per stage: one 128-byte swizzle row

// A warpgroup's 64 x BN accumulators (wgmma D fragment: warp w holds rows 16w..16w+15; register
// 4j + e of lane 4g + t is row g (+8 for e >= 2), column 8j + 2t (+1 for odd e)) through the
// shared epilogue; r = this lane's first row, t = lane % 4.
template <int BN, typename T>
__device__ __forceinline__ void store_fragment(const jobx_gemm_params& p, long long r,
                                               long long n0, int t, const T (&acc)[BN / 2]) {
#pragma unroll
    for (int j = 0; j < BN / 8; j++) {
        const long long c = n0 + j * 8 + 2 * t;
        if (c >= p.n) continue;
        store_pair(p, r, c, (float)acc[4 * j], (float)acc[4 * j + 1]);
        store_pair(p, r + 8, c, (float)acc[4 * j + 2], (float)acc[4 * j + 3]);
    }
}

template <int BN, bool INT8>
__device__ __forceinline__ void wgmma_slice(typename AccT<INT8>::type (&d)[BN / 2],
                                            unsigned a, unsigned b) {
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
        const unsigned long long da = desc_sw128(a + kk * 32), db = desc_sw128(b + kk * 32);
        if constexpr (INT8) {
            if constexpr (BN == 128) wgmma_s8_n128(d, da, db, 1);
            else wgmma_s8_n256(d, da, db, 1);
        } else {
            if constexpr (BN == 128) wgmma_bf16_n128(d, da, db, 1);
            else wgmma_bf16_n256(d, da, db, 1);
        }
    }
}

// ---- TMA + mbarrier, warp-specialised ------------------------------------------------------------
// gemm_tma_{bf16,s8}_n{128,256}: 3 warpgroups. Warpgroup 0 is the producer: one thread issues,
// per k slice, two bulk tensor copies (TMA: x rows m0.., w rows n0.., 128 bytes of k each, in
// the 128-byte swizzle layout, out-of-bounds zero-filled by the copy engine) that complete on the
// slot's `full` mbarrier. Warpgroups 1 and 2 are consumers, 64 rows each: wait on `full`, issue
// the slice's 4 wgmma, wait for them, and arrive on the slot's `empty` mbarrier, which the
// producer waits on before refilling that slot. No block-wide barrier in the main loop, and
// no thread spends issue slots on address arithmetic for the copies. Parity: the n-th fill of a slot completes phase n of its `full`
// barrier (consumers wait for parity n & 1); the producer's n-th refill (n >= 1) waits for
// phase n - 1 of `empty`.
#define TMA_THREADS 384

// (mbar_init, mbar_wait, mbar_arrive: sm90_common.cuh)
__device__ __forceinline__ void mbar_expect_tx(unsigned bar, unsigned bytes) {
#ifdef JOBX_HOST_EMU
    jobx_emu::mbar_arrive(bar, bytes);
#else
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
                 : "memory");
#endif
}

// 2-D bulk tensor copy of one box at coordinates (c0 = byte-or-element offset along k, c1 = row)
__device__ __forceinline__ void tma_load_2d(unsigned dst, const void* map, int c0, int c1,
                                            unsigned bar) {
#ifdef JOBX_HOST_EMU
    jobx_emu::tma_load_2d(dst, map, c0, c1, bar);
#else
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes "
        "[%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
        "l"(map), "r"(c0), "r"(c1), "r"(bar)
        : "memory");
#endif
}

// The slots' barriers (thread 0), visible to the whole block and to the copy engine: `full`
// completes on the producer's expect_tx arrival plus the bytes, `empty` on one arrival per
// consumer warpgroup.
template <int STAGES>
__device__ __forceinline__ void init_slots(unsigned long long (&full)[STAGES],
                                           unsigned long long (&empty)[STAGES]) {
    if (threadIdx.x == 0) {
#pragma unroll
        for (int s = 0; s < STAGES; s++) {
            mbar_init(smem_addr(&full[s]), 1);
            mbar_init(smem_addr(&empty[s]), 2);
        }
        // make the initialised barriers visible to the copy engine (async proxy)
#ifdef JOBX_HOST_EMU
        jobx_emu::fence_mbarrier_init();
#else
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
    }
    __syncthreads();
}

// The epilogue's weight scale of column col (int8 weights; 0 past n), 1 without.
__device__ __forceinline__ float w_scale_at(const jobx_gemm_params& p, long long col) {
    if (!p.w_scale) return 1.0f;
    return col < p.n ? p.w_scale[col] : 0.0f;
}

// The epilogue's activation scale of row r (W8A8; 1 past m), 1 without.
__device__ __forceinline__ float x_scale_at(const jobx_gemm_params& p, long long r) {
    return p.x_scale && r < p.m ? p.x_scale[r] : 1.0f;
}

// The weight scales of columns col, col + 1.
__device__ __forceinline__ void w_scales(const jobx_gemm_params& p, long long col, float& w0, float& w1) {
    w0 = 1.0f;
    w1 = 1.0f;
    if (p.w_scale) {
        w0 = w_scale_at(p, col);
        w1 = w_scale_at(p, col + 1);
    }
}

// The activation scales of rows r, r + 8.
__device__ __forceinline__ void x_scales(const jobx_gemm_params& p, long long r, float& xs0, float& xs1) {
    xs0 = x_scale_at(p, r);
    xs1 = x_scale_at(p, r + 8);
}

// Accumulator group j of a warpgroup's fragment (see store_fragment) scaled as the epilogue
// stores it: v[0], v[1] row r, v[2], v[3] row r + 8, columns n0 + 8j + 2t and the next.
template <int BN, typename T>
__device__ __forceinline__ void scaled_group(const jobx_gemm_params& p, const T (&acc)[BN / 2], int j,
                                             long long col, float xs0, float xs1, float (&v)[4]) {
    float w0, w1;
    w_scales(p, col, w0, w1);
    v[0] = (float)acc[4 * j] * w0 * xs0;
    v[1] = (float)acc[4 * j + 1] * w1 * xs0;
    v[2] = (float)acc[4 * j + 2] * w0 * xs1;
    v[3] = (float)acc[4 * j + 3] * w1 * xs1;
}

// The producer's fill number `use` of slot `slot` (the use-th time round the ring): after the
// consumers released fill use - 1, slice kt of x rows m0.. and w rows n0.. by two bulk copies
// that complete on the slot's `full` barrier. I: the caller's counter type (int per tile,
// long long across a persistent block's tiles).
template <int BN, int STAGES, bool INT8, typename I>
__device__ __forceinline__ void fill_slot(const jobx_gemm_tma_params& tp, unsigned long long (&full)[STAGES],
                                          unsigned long long (&empty)[STAGES], unsigned a_base,
                                          unsigned b_base, int slot, I use, int kt, int m0, int n0) {
    constexpr unsigned A_BYTES = SM90_BM * SLICE_BYTES, B_BYTES = BN * SLICE_BYTES;
    constexpr int KS = SLICE_BYTES / (INT8 ? 1 : 2);
    if (use > 0) mbar_wait(smem_addr(&empty[slot]), (unsigned)((use - 1) & 1));
    const unsigned bar = smem_addr(&full[slot]);
    mbar_expect_tx(bar, A_BYTES + B_BYTES);
    tma_load_2d(a_base + slot * A_BYTES, &tp.x_map, kt * KS, m0, bar);
    tma_load_2d(b_base + slot * B_BYTES, &tp.w_map, kt * KS, n0, bar);
}

// A consumer warpgroup's (c) step on slot `slot`: wait for its fill (phase `parity`), run
// `waited` (the trace's hook), issue the slice's wgmma group and, with that group in flight,
// wait for the previous one and release its slot (`release`, when `release_ok`).
template <int BN, int STAGES, bool INT8, typename F>
__device__ __forceinline__ void consume_slot(typename AccT<INT8>::type (&acc)[BN / 2],
                                             unsigned long long (&full)[STAGES],
                                             unsigned long long (&empty)[STAGES], unsigned a_base,
                                             unsigned b_base, int c, int slot, unsigned parity,
                                             bool release_ok, int release, F waited) {
    constexpr unsigned A_BYTES = SM90_BM * SLICE_BYTES, B_BYTES = BN * SLICE_BYTES;
    mbar_wait(smem_addr(&full[slot]), parity);
    waited();
    wgmma_fence();
    wgmma_slice<BN, INT8>(acc, a_base + slot * A_BYTES + c * 64 * SLICE_BYTES, b_base + slot * B_BYTES);
    wgmma_commit();
    wgmma_wait<1>();
    if (release_ok && (threadIdx.x & 127) == 0) mbar_arrive(smem_addr(&empty[release]));
}

// ---- trace (diagnostics) -------------------------------------------------------------------------
// With p.trace set, each block of gemm_tma writes 8 words where a tile's time goes, for a GPU run
// to read (benches/cuda_kernels.rs, "gemm_trace" rows): why the H100 runs put a ~10 us cost per
// 128 x 256 tile outside the main loop that no estimate explains (block start, the first copies'
// latency, the main loop below its rate, or the epilogue). %clock64 counts the SM's cycles (all
// of a block's stamps are on one SM); %globaltimer (ns) places blocks against each other.
//   [0] globaltimer at entry (thread 0)           [1] the SM's id
//   [2] clock64 at entry (thread 0)                [3] clock64: consumer 0 has its first slice
//   [4] clock64: consumer 0's last wgmma done      [5] clock64: consumer 0's rows written
//   [6] globaltimer at [5]                         [7] clock64: the producer issued its last copy
// (trace_ns, trace_clock, trace_smid: sm90_common.cuh)

template <int BN, int STAGES, bool INT8>
__device__ __forceinline__ void gemm_tma(const jobx_gemm_tma_params& tp) {
    using Acc = typename AccT<INT8>::type;
    const jobx_gemm_params& p = tp.g;
    constexpr unsigned A_BYTES = SM90_BM * SLICE_BYTES, B_BYTES = BN * SLICE_BYTES;
    constexpr int KS = SLICE_BYTES / (INT8 ? 1 : 2);  // k elements per slice
#ifdef JOBX_HOST_EMU
    JOBX_EMU_DYNAMIC_SHARED(unsigned char, dyn_smem);
#else
    extern __shared__ unsigned char dyn_smem[];
#endif
    __shared__ __align__(8) unsigned long long full[STAGES], empty[STAGES];
    // the staged epilogue's scales of this tile's columns (0 past n) and rows (1 past m), 1
    // without: filled by the consumers before their main loop, published by the epilogue's
    // barrier of both consumers
    __shared__ __align__(16) float wsc[BN];
    __shared__ __align__(16) float xsc[SM90_BM];
    const unsigned base = (smem_addr(dyn_smem) + 1023u) & ~1023u;
    const unsigned a_base = base, b_base = base + STAGES * A_BYTES;
    const int tid = threadIdx.x, wg = tid >> 7;
    const long long m0 = (long long)blockIdx.y * SM90_BM, n0 = (long long)blockIdx.x * BN;
    const int kt_n = (int)((p.k + KS - 1) / KS);
    // (block-uniform: the trace's extra barrier below is taken by all or none)
    unsigned long long* const tr =
        p.trace ? p.trace + 8ull * ((unsigned long long)blockIdx.y * gridDim.x + blockIdx.x) : nullptr;
    if (tr && tid == 0) {
        tr[0] = trace_ns();
        tr[1] = trace_smid();
        tr[2] = trace_clock();
    }
    init_slots<STAGES>(full, empty);
    if (wg == 0) {
        if (tid == 0) {
            for (int kt = 0; kt < kt_n; kt++)
                fill_slot<BN, STAGES, INT8>(tp, full, empty, a_base, b_base, kt % STAGES, kt / STAGES, kt,
                                            (int)m0, (int)n0);
            if (tr) tr[7] = trace_clock();
        }
        return;
    }
    const int c = wg - 1, warp = (tid >> 5) & 3, lane = tid & 31;
    // Why staged scales: the epilogue used to load two weight scales from global memory per
    // fragment group (64 loads a thread, each waited for between conversions and stores, with
    // 128 accumulators leaving no registers to hoist them). The H100 trace of 2026-11-28 put
    // the W8A8 epilogue at ~18K cycles per 128 x 256 tile against bf16's 6.5K (the main loop
    // 36K at 4096^3): a third of the int8 tile. Loaded here, their latency hides behind the
    // pipeline's first copies. (Consumer 0 the columns, consumer 1 the rows.)
    if (c == 0) {
        for (int i = tid & 127; i < BN; i += 128) wsc[i] = w_scale_at(p, n0 + i);
    } else {
        xsc[tid & 127] = x_scale_at(p, m0 + (tid & 127));
    }
    Acc acc[BN / 2];
#pragma unroll
    for (int i = 0; i < BN / 2; i++) acc[i] = 0;
    // one slice's wgmma group stays in flight while the next is issued: after issuing slice kt,
    // wait for slice kt - 1 and release its slot
    for (int kt = 0; kt < kt_n; kt++)
        consume_slot<BN, STAGES, INT8>(acc, full, empty, a_base, b_base, c, kt % STAGES, (kt / STAGES) & 1,
                                       kt > 0, (kt - 1) % STAGES, [&] {
                                           if (tr && kt == 0 && tid == 128) tr[3] = trace_clock();
                                       });
    wgmma_wait<0>();
    if (tr && tid == 128) tr[4] = trace_clock();
    // (the last slot's release is not needed: the producer issues no more copies)
    fence_acc(acc);
    const int g = lane >> 2, t = lane & 3;
    const long long r = m0 + c * 64 + warp * 16 + g;
    // bf16 output without LoRA, 16-byte aligned rows: stage the scaled f32 tile in shared memory
    // (the pipeline's buffers, free once both consumers are past their last wgmma) and write
    // whole 16-byte row pieces. A fragment holds 2 adjacent columns of 8 rows, so direct
    // stores write 8 scattered 4-byte pieces per instruction; at k = 1024 that epilogue was a
    // large part of the kernel (H100, 2026-11-26: 56-64% of torch.matmul vs 71% at k = 4096).
    // Same arithmetic as store_out: scales in f32, accumulate in f32, one rounding.
    const bool staged = !p.y_f32 && !p.lora_t && (p.ldy & 7) == 0 &&
                        (((unsigned long long)p.y) & 15) == 0;
    if (staged) {
        constexpr int LDE = BN + 4;  // f32 per staged row (16 bytes of padding)
        bar_named<256>(1);  // both consumers done with the stages
        float* et = (float*)(dyn_smem + (base - smem_addr(dyn_smem))) + c * 64 * LDE;
        const int rl = warp * 16 + g;
        // the accumulators in f32 (s32 rounded to nearest, as before), scaled in the row pass
#pragma unroll
        for (int j = 0; j < BN / 8; j++) {
            const int cl = j * 8 + 2 * t;
            *(float2*)&et[rl * LDE + cl] = make_float2((float)acc[4 * j], (float)acc[4 * j + 1]);
            *(float2*)&et[(rl + 8) * LDE + cl] = make_float2((float)acc[4 * j + 2], (float)acc[4 * j + 3]);
        }
        bar_named<128>(2 + c);  // this warpgroup's tile
        bf16* y = (bf16*)p.y;
        const int lt = tid & 127;
        for (int e = lt; e < 64 * (BN / 8); e += 128) {
            const int rr = e / (BN / 8), cc = (e % (BN / 8)) * 8;
            const long long row = m0 + c * 64 + rr, col = n0 + cc;
            if (row >= p.m || col >= p.n) continue;
            const float* src = &et[rr * LDE + cc];
            bf16* dst = y + row * p.ldy + col;
            // scaled as store_out does: (acc x weight scale) x activation scale, in f32
            const float xs = xsc[c * 64 + rr];
            if (col + 8 <= p.n) {
                float v[8], w[8];
                *(float4*)&v[0] = *(const float4*)&src[0];
                *(float4*)&v[4] = *(const float4*)&src[4];
                *(float4*)&w[0] = *(const float4*)&wsc[cc];
                *(float4*)&w[4] = *(const float4*)&wsc[cc + 4];
#pragma unroll
                for (int i = 0; i < 8; i++) v[i] = v[i] * w[i] * xs;
                if (p.accumulate) {
                    const uint4 old = *(const uint4*)dst;
                    const __nv_bfloat162* o2 = (const __nv_bfloat162*)&old;
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        const float2 f = __bfloat1622float2(o2[i]);
                        v[2 * i] += f.x;
                        v[2 * i + 1] += f.y;
                    }
                }
                uint4 out;
                __nv_bfloat162* w2 = (__nv_bfloat162*)&out;
#pragma unroll
                for (int i = 0; i < 4; i++) w2[i] = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
                *(uint4*)dst = out;
            } else {
                for (int i = 0; col + i < p.n; i++) {
                    const float v = src[i] * wsc[cc + i] * xs;
                    st_bf16(dst, i, p.accumulate ? ld_bf16(dst, i) + v : v);
                }
            }
        }
    } else {
        store_fragment<BN>(p, r, n0, t, acc);
    }
    if (tr) {
        // every thread of this consumer past its stores (issued, not necessarily landed)
        bar_named<128>(2 + c);
        if (tid == 128) {
            tr[5] = trace_clock();
            tr[6] = trace_ns();
        }
    }
}

// ---- persistent variant (opt-in until a GPU run times it) ---------------------------------------
// gemm_tma_{bf16,s8}_n256_p: gridDim.x = min(tiles, multiprocessors) blocks, each walking tiles
// blockIdx.x, + gridDim.x, ... (column tile fastest, as the grid above). Why: at H100 shapes
// each 128 x 256 tile pays a fixed ~10 us outside its main loop (block start, the pipeline's
// first copies, the epilogue), the same for bf16 and int8, so W8A8 came to only 1.0-1.45x our
// bf16 GEMM where its main loop is 2x (docs/PERFORMANCE.md, run 5). Here the producer runs
// ahead across tile boundaries (its slot and phase counters continue), so the next tile's first
// slices load while the consumers finish the last one; each consumer stages its 64 x 256
// output in bf16 in a region of its own (the slots are being refilled meanwhile) and writes
// 16-byte row pieces. Only for bf16 output without accumulate or LoRA and 16-byte aligned
// rows (the launcher checks): the same single rounding of the same f32 value as the staged
// epilogue above. 3 slots of 48 KB + 2 x 33 KB of staging.
template <int BN, int STAGES, bool INT8>
__device__ __forceinline__ void gemm_tma_persistent(const jobx_gemm_tma_params& tp) {
    using Acc = typename AccT<INT8>::type;
    const jobx_gemm_params& p = tp.g;
    constexpr unsigned A_BYTES = SM90_BM * SLICE_BYTES, B_BYTES = BN * SLICE_BYTES;
    constexpr int KS = SLICE_BYTES / (INT8 ? 1 : 2);  // k elements per slice
    constexpr int LDE = BN + 8;                        // bf16 per staged row (16 bytes of padding)
#ifdef JOBX_HOST_EMU
    JOBX_EMU_DYNAMIC_SHARED(unsigned char, dyn_smem);
#else
    extern __shared__ unsigned char dyn_smem[];
#endif
    __shared__ __align__(8) unsigned long long full[STAGES], empty[STAGES];
    const unsigned base = (smem_addr(dyn_smem) + 1023u) & ~1023u;
    const unsigned a_base = base, b_base = base + STAGES * A_BYTES;
    bf16* staging = (bf16*)(dyn_smem + (base - smem_addr(dyn_smem)) + STAGES * (A_BYTES + B_BYTES));
    const int tid = threadIdx.x, wg = tid >> 7;
    const int kt_n = (int)((p.k + KS - 1) / KS);
    const long long tiles_n = (p.n + BN - 1) / BN;
    const long long tiles = tiles_n * ((p.m + SM90_BM - 1) / SM90_BM);
    init_slots<STAGES>(full, empty);
    if (wg == 0) {
        if (tid == 0) {
            long long it = 0;  // slices issued by this block, over all its tiles
            for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
                const int m0 = (int)(tile / tiles_n) * SM90_BM, n0 = (int)(tile % tiles_n) * BN;
                for (int kt = 0; kt < kt_n; kt++, it++)
                    fill_slot<BN, STAGES, INT8>(tp, full, empty, a_base, b_base, (int)(it % STAGES), it / STAGES,
                                                kt, m0, n0);
            }
        }
        return;
    }
    const int c = wg - 1, warp = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, t = lane & 3;
    bf16* et = staging + c * 64 * LDE;
    bf16* y = (bf16*)p.y;
    const int rl = warp * 16 + g;  // this lane's first staged row
    long long it = 0;              // slices consumed, over all tiles
    for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const long long m0 = (tile / tiles_n) * SM90_BM, n0 = (tile % tiles_n) * BN;
        Acc acc[BN / 2];
#pragma unroll
        for (int i = 0; i < BN / 2; i++) acc[i] = 0;
        // slice it - 1 is released only within this tile (the previous tile's last was, below)
        for (int kt = 0; kt < kt_n; kt++, it++)
            consume_slot<BN, STAGES, INT8>(acc, full, empty, a_base, b_base, c, (int)(it % STAGES),
                                           (unsigned)((it / STAGES) & 1), kt > 0, (int)((it - 1) % STAGES), [] {});
        wgmma_wait<0>();
        if ((tid & 127) == 0 && kt_n > 0) mbar_arrive(smem_addr(&empty[(it - 1) % STAGES]));  // the last slice
        fence_acc(acc);
        // epilogue: scaled f32 -> bf16 (one rounding) into the staging rows, then rows out
        bar_named<128>(2 + c);  // last tile's reads done
        const long long r = m0 + c * 64 + rl;
        float xs0, xs1;
        x_scales(p, r, xs0, xs1);
#pragma unroll
        for (int j = 0; j < BN / 8; j++) {
            const int cl = j * 8 + 2 * t;
            float v[4];
            scaled_group<BN>(p, acc, j, n0 + cl, xs0, xs1, v);
            *(__nv_bfloat162*)&et[rl * LDE + cl] = __floats2bfloat162_rn(v[0], v[1]);
            *(__nv_bfloat162*)&et[(rl + 8) * LDE + cl] = __floats2bfloat162_rn(v[2], v[3]);
        }
        bar_named<128>(2 + c);
        for (int e = tid & 127; e < 64 * (BN / 8); e += 128) {
            const int rr = e / (BN / 8), cc = (e % (BN / 8)) * 8;
            const long long row = m0 + c * 64 + rr, col = n0 + cc;
            if (row >= p.m || col >= p.n) continue;
            bf16* dst = y + row * p.ldy + col;
            const bf16* src = &et[rr * LDE + cc];
            if (col + 8 <= p.n) *(uint4*)dst = *(const uint4*)src;
            else
                for (int i = 0; col + i < p.n; i++) dst[i] = src[i];
        }
    }
}

// Dynamic shared memory: n128 6 x 32 KB, n256 4 x 48 KB (+1 KB alignment slack).
extern "C" __global__ void __launch_bounds__(TMA_THREADS, 1)
    gemm_tma_bf16_n128(const __grid_constant__ jobx_gemm_tma_params p) {
    pdl_enter();
    gemm_tma<128, 6, false>(p);
}
extern "C" __global__ void __launch_bounds__(TMA_THREADS, 1)
    gemm_tma_bf16_n256(const __grid_constant__ jobx_gemm_tma_params p) {
    pdl_enter();
    gemm_tma<256, 4, false>(p);
}
extern "C" __global__ void __launch_bounds__(TMA_THREADS, 1)
    gemm_tma_s8_n128(const __grid_constant__ jobx_gemm_tma_params p) {
    pdl_enter();
    gemm_tma<128, 6, true>(p);
}
extern "C" __global__ void __launch_bounds__(TMA_THREADS, 1)
    gemm_tma_s8_n256(const __grid_constant__ jobx_gemm_tma_params p) {
    pdl_enter();
    gemm_tma<256, 4, true>(p);
}
// Persistent: 3 x 48 KB slots + 2 x 64 x 264 bf16 staging (+1 KB alignment slack).
extern "C" __global__ void __launch_bounds__(TMA_THREADS, 1)
    gemm_tma_bf16_n256_p(const __grid_constant__ jobx_gemm_tma_params p) {
    pdl_enter();
    gemm_tma_persistent<256, 3, false>(p);
}
extern "C" __global__ void __launch_bounds__(TMA_THREADS, 1)
    gemm_tma_s8_n256_p(const __grid_constant__ jobx_gemm_tma_params p) {
    pdl_enter();
    gemm_tma_persistent<256, 3, true>(p);
}
