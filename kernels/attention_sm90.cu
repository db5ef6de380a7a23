// Hopper (sm_90a) prefill/encoder attention on the warpgroup MMA: attention_wg_d64 / _d128.
// Same inputs, options and results as attention.cu's flash kernels (T5 relative bias, key mask,
// causal, sliding window, GQA, beams' K/V row map, query offset read on the device), for head
// dims 64 and 128 with 16-byte aligned rows; the Rust wrapper picks it (opt-in: Gpu::flash_wg,
// JOBX_FLASH_WG=1) on an sm_90 device.
//
// Why: the mma.sync flash kernels reached 0.31 (causal d128) and 0.46 (T5 encoder) of SDPA on an
// H100 (docs/PERFORMANCE.md, run 5), as the mma.sync GEMM stopped at ~18-26% of torch.matmul
// before the wgmma GEMM (gemm_sm90.cu). wgmma reads its B operand (and here Q) straight from
// shared memory for a whole warpgroup, so no thread spends issue slots or registers on K and V
// fragments, and a warpgroup's 64 query rows cost each thread only 64 x N / 128 accumulators.
//
// Block: 2 warpgroups x 64 queries; keys 128 per step, double-buffered by cp.async from all 256
// threads into the 128-byte swizzle layout the descriptors describe (16-byte chunk c of a
// 128-byte row r at chunk c ^ (r % 8), 8-row atoms of 1024 bytes; a 128-dim row is two such
// 64-column halves in separate regions). Per step and warpgroup:
//   S = Q K^T    wgmma m64n128k16, Q and K K-major from shared memory, dk / 16 steps;
//   softmax      on the S accumulators, whose per-warp layout is mma.sync's (row g / g + 8 of the
//                warp's 16, columns 8j + 2t, + 1): the same bias table, masks, -inf rule, ex2
//                and skipped rescale as attention_fa2 in attention.cu;
//   O += P V     wgmma m64n{dk}k16 with A = P from registers (the S accumulators of two adjacent
//                8-key tiles, rounded to bf16, are exactly its A fragment) and B = V N-major
//                (transposed read of the same row layout: no transpose pass).
// No producer warpgroup and no ping-pong between warpgroups (FlashAttention-3 has both): the two
// warpgroups overlap only as the scheduler interleaves them. Written 2026-11-26 without a device.
// jobx:archs 90a
#include "attention_common.cuh"
#include "wgmma_ops.cuh"
#include "sm90_common.cuh"

#define WG_THREADS 256
#define WS_THREADS 384

// Both kernels' tiles: 128 queries per block (64 per consumer warpgroup), 128 keys per step;
// the T5 bias table as in attention_fa2 (one row tile per warp): offsets [-15, WG_FKT - 1]
constexpr int WG_FQB = 128, WG_FKT = 128;
constexpr int WG_L = FA_BIAS_R_MAX + WG_FQB + WG_FKT, WG_TC = WG_L + 16, WG_TAB = WG_TC + WG_L + WG_FKT + 8;
constexpr unsigned WG_HALF = WG_FKT * 128;  // bytes of one 64-column half of a K or V tile
constexpr unsigned WG_QHALF = 64 * 128;     // one warpgroup's 64 query rows x 64 columns

// One warpgroup's S = Q K^T for a key step, issued (the caller commits and waits): dk / 16
// wgmma steps of 16 columns, 32 bytes further inside a 64-column half, the next half's region
// every 4 steps; the first overwrites (scale-d 0). qw: the warpgroup's Q, kst: the stage's K.
template <int DK>
__device__ __forceinline__ void wg_issue_scores(float (&s)[WG_FKT / 2], unsigned qw, unsigned kst) {
#pragma unroll
    for (int ks = 0; ks < DK / 16; ks++) {
        const unsigned hq = (ks >> 2) * WG_QHALF + (ks & 3) * 32, hk = (ks >> 2) * WG_HALF + (ks & 3) * 32;
        wgmma_bf16_n128(s, desc_sw128(qw + hq), desc_sw128(kst + hk), ks > 0);
    }
}

// One warpgroup's O += P V for a key step, issued: 16 keys per wgmma = two 8-row atoms of V
// (2048 bytes), read N-major; A = P from the registers pa.
template <int DK>
__device__ __forceinline__ void wg_issue_pv(float (&o)[DK / 2], unsigned (&pa)[WG_FKT / 16][4], unsigned vst) {
#pragma unroll
    for (int kk = 0; kk < WG_FKT / 16; kk++) {
        const unsigned long long dv = desc_sw128_mn(vst + kk * 2048, WG_HALF);
        if constexpr (DK == 64) wgmma_bf16_rs_n64_tb(o, pa[kk], dv, 1);
        else wgmma_bf16_rs_n128_tb(o, pa[kk], dv, 1);
    }
}

// The fences around a wgmma group that reads P from registers and accumulates into O (and S):
// every register write the compiler might sink past wgmma.fence stays ahead of it, and the
// registers stay allocated until the wait (CUTLASS's warpgroup_fence_operand).
template <int DK>
__device__ __forceinline__ void wg_fence_pv(float (&o)[DK / 2], unsigned (&pa)[WG_FKT / 16][4]) {
    fence_acc(o);
#pragma unroll
    for (int kk = 0; kk < WG_FKT / 16; kk++)
#pragma unroll
        for (int i = 0; i < 4; i++) fence_reg(pa[kk][i]);
}

// One warp's softmax of a key step on its S accumulators, whose per-warp layout is mma.sync's
// (s[4n + e] = row g (+ 8 for e >= 2), key j0 + 8n + 2t (+ 1 for odd e)), then the running
// output rescaled unless no row's max moved (c == 1 exactly). Out: P as bf16 pairs in
// A-fragment order, pa[kk] = (row g, keys 16kk + 2t, + 1), (row g + 8, same keys), (row g,
// keys + 8), (row g + 8, keys + 8): the wgmma of P V reads these registers themselves.
// iw: the warp's first query; all_vis: every key of the step visible (kvis all 1).
template <int DK>
__device__ __forceinline__ void wg_softmax(const jobx_attention_params& p, float (&s)[WG_FKT / 2],
                                           unsigned (&pa)[WG_FKT / 16][4], float (&o)[DK / 2], float (&m)[2],
                                           float (&l)[2], const float* btab, const float* kvis, bool all_vis,
                                           int j0, int q_off, int iw, int win, float sl2, int g, int t) {
    const bool plain = all_vis && (!p.causal || j0 + WG_FKT - 1 <= q_off + iw) &&
                       (win <= 0 || q_off + iw + 15 - j0 < win);
    const float* tb = btab;
    if (p.rel_bias) {
        int r = j0 - (q_off + iw);
        r = r < -WG_L ? -WG_L : (r > WG_L ? WG_L : r);
        tb = btab + (r + 2 * t - g + WG_TC);
    }
    float c[2];
    flash_softmax_tile<WG_FKT>(s, reinterpret_cast<unsigned(&)[WG_FKT / 4]>(pa), m, l, c, sl2,
                               p.rel_bias ? tb : nullptr, plain, (const float2*)kvis, t,
                               q_off + iw + g - j0 - 2 * t, p.causal, win);
    if (__any_sync(0xffffffffu, c[0] != 1.0f || c[1] != 1.0f)) {
#pragma unroll
        for (int j = 0; j < DK / 8; j++) {
            o[4 * j] *= c[0];
            o[4 * j + 1] *= c[0];
            o[4 * j + 2] *= c[1];
            o[4 * j + 3] *= c[1];
        }
    }
}

// byte offset of 16-byte chunk c (0..7) of row r in a 128-byte-swizzled region of 128-byte rows
__device__ __forceinline__ unsigned wg_sw(int r, int c) { return (unsigned)(r * 128 + ((c ^ (r & 7)) << 4)); }

// cp.async of one K or V tile, keys j0..j0 + 127 of `src` (row stride st), into a stage's
// halves at dst by NT threads (thread `lane` of them); rows from rend on are zero-filled.
template <int DK, int NT>
__device__ __forceinline__ void wg_copy_tile(unsigned dst, const bf16* src, long long st, int j0, int rend,
                                             int lane) {
    constexpr int CH = DK / 8;  // 16-byte chunks per row
#pragma unroll
    for (int u = 0; u < WG_FKT * CH / NT; u++) {
        const int idx = lane + NT * u;
        const int r = idx / CH, c = idx % CH;
        const bool ok = j0 + r < rend;
        cp_async16(dst + (c >> 3) * WG_HALF + wg_sw(r, c & 7),
                   ok ? (const void*)(src + (long long)(j0 + r) * st + c * 8) : (const void*)src, ok ? 16 : 0);
    }
}

// cp.async of the block's Q rows i0..i0 + 127 (rows past tq zero-filled) by NT threads: each
// warpgroup's 64 rows as H halves of QHALF bytes at qbase.
template <int DK, int NT>
__device__ __forceinline__ void wg_copy_q(unsigned qbase, const bf16* q, long long st, int i0, int tq, int lane) {
    constexpr int CH = DK / 8, H = DK / 64;
    for (int idx = lane; idx < WG_FQB * CH; idx += NT) {
        const int row = idx / CH, c = idx % CH;
        const bool ok = i0 + row < tq;
        cp_async16(qbase + ((row >> 6) * H + (c >> 3)) * WG_QHALF + wg_sw(row & 63, c & 7),
                   ok ? (const void*)(q + (long long)(i0 + row) * st + c * 8) : (const void*)q, ok ? 16 : 0);
    }
}

// A trace record's 8 words (attention_wg / _ws with TRACE; thread 0 of the first consumer
// warpgroup): the SM, cycles from entry to the end, key steps, four phase sums, and the rest.
__device__ __forceinline__ void wg_trace_store(const jobx_attention_params& p, unsigned long long total, int steps,
                                               const unsigned long long (&ph)[4]) {
    if (!p.trace) return;
    unsigned long long* w = p.trace + 8ull * (blockIdx.x + (unsigned long long)gridDim.x *
                                              (blockIdx.y + (unsigned long long)gridDim.y * blockIdx.z));
    w[0] = trace_smid();
    w[1] = total;
    w[2] = (unsigned long long)steps;
    for (int i = 0; i < 4; i++) w[3 + i] = ph[i];
    w[7] = total - ph[0] - ph[1] - ph[2] - ph[3];
}

// Diagnostics: the _trace kernels (TRACE; the same code otherwise, so the production kernels'
// registers and schedule are untouched) write 8 words per block to p.trace for the benchmarks
// (benches/cuda_kernels.rs, "attention_trace" rows): where a key step's time goes, in SM cycles
// (%clock64) as thread 0 of warpgroup 0 sees them:
//   [0] the SM's id   [1] cycles from entry to the last store   [2] key steps
//   [3] issuing the next copies, waiting for this step's, and the barrier after them
//   [4] S = Q K^T (issue to wait)   [5] softmax and rescale   [6] O += P V (issue to wait)
//   [7] the rest: prologue (Q, bias table, first copies), end-of-step barriers, the output
// Why: on the H100 (2026-11-28) the causal d128 case ran ~7600 cycles per 128 x 128 key step
// and block against ~2000 of tensor-core work, and no estimate says where the rest goes.
template <int DK, bool TRACE>
__device__ __forceinline__ void attention_wg(const jobx_attention_params& p) {
    constexpr int FQB = WG_FQB, FKT = WG_FKT;
    constexpr int H = DK / 64;                       // 64-column halves of a row
    constexpr unsigned HALF = WG_HALF;
    constexpr unsigned KV_STAGE = 2 * H * HALF;      // K halves, then V halves
    constexpr unsigned QHALF = WG_QHALF;
#ifdef JOBX_HOST_EMU
    JOBX_EMU_DYNAMIC_SHARED(unsigned char, dyn_smem);
#else
    extern __shared__ unsigned char dyn_smem[];
#endif
    __shared__ float btab[WG_TAB];
    __shared__ __align__(8) float kvis[2][FKT];      // per staged key: 1 visible, 0 not
    // stage 0, stage 1, then Q (warpgroup 0 halves, warpgroup 1 halves); swizzle atoms need
    // 1024-byte alignment
    const unsigned base = (smem_addr(dyn_smem) + 1023u) & ~1023u;
    const unsigned qbase = base + 2 * KV_STAGE;
    const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31;
    const int g = lane >> 2, t = lane & 3;
    unsigned b, h, qb;
    flash_block(p, b, h, qb);
    // 32-bit positions (the launcher admits this kernel only below 2^30); 64-bit addresses
    const int tq = (int)p.tq, i0 = (int)qb * FQB;
    long long kb;
    const bf16 *q, *k, *v;
    flash_operands(p, b, h, kb, q, k, v);
    const bool active = i0 + 64 * wg < tq;           // warpgroup-uniform
    const int iw = i0 + 64 * wg + 16 * warp;         // this warp's first query
    int q_off, win, kstart, kend;
    flash_range(p, i0, FQB, FKT, q_off, win, kstart, kend);
    const float sl2 = p.scale * LOG2E;
    // (TRACE only: thread 0's phase sums, see above)
    unsigned long long t_entry = 0, t_last = 0, t_ph[4] = {0, 0, 0, 0};
    int t_steps = 0;
    auto stamp = [&](int phase) {
        if constexpr (TRACE) {
            if (tid == 0) {
                const unsigned long long now = trace_clock();
                if (phase >= 0) t_ph[phase] += now - t_last;
                t_last = now;
            }
        }
    };
    if constexpr (TRACE) {
        if (tid == 0) t_entry = t_last = trace_clock();
    }

    // (K and V chunks interleaved, as the kernel the H100 timed; attention_ws copies each
    // tile on its own, wg_copy_tile)
    constexpr int CH = DK / 8;                       // 16-byte chunks per row
    constexpr int PER = FKT * CH / WG_THREADS;       // per thread, per tensor
    auto issue = [&](int j0, int st) {
        const unsigned kst = base + st * KV_STAGE, vst = kst + H * HALF;
#pragma unroll
        for (int u = 0; u < PER; u++) {
            const int idx = tid + WG_THREADS * u;
            const int r = idx / CH, c = idx % CH;
            const bool ok = j0 + r < kend;           // rows past the range are zero-filled
            const unsigned off = (c >> 3) * HALF + wg_sw(r, c & 7);
            cp_async16(kst + off, ok ? (const void*)(k + (long long)(j0 + r) * p.k_st + c * 8) : (const void*)k,
                       ok ? 16 : 0);
            cp_async16(vst + off, ok ? (const void*)(v + (long long)(j0 + r) * p.v_st + c * 8) : (const void*)v,
                       ok ? 16 : 0);
        }
    };
    auto key_flag = [&](int j0) -> float { return flash_key_flag(p, kb, j0 + tid, kend); };
    // (published by the barrier before the key loop)
    if (p.rel_bias) flash_bias_table(p, btab, WG_TAB, WG_TC, h, WG_THREADS);

    float o[DK / 2];  // O: the m64n{dk} accumulator fragment
#pragma unroll
    for (int i = 0; i < DK / 2; i++) o[i] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // rows g, g + 8 of the warp

    float flag0 = 0.0f;
    if (kstart < kend) {
        issue(kstart, 0);
        wg_copy_q<DK, WG_THREADS>(qbase, q, p.q_st, i0, tq, tid);  // with the first key block
        if (tid < FKT) {
            flag0 = key_flag(kstart);
            kvis[0][tid] = flag0;
        }
    }
    cp_async_commit();
    int all_vis = __syncthreads_and(tid >= FKT || flag0 != 0.0f);
    int st = 0;
    for (int j0 = kstart; j0 < kend; j0 += FKT, st ^= 1) {
        stamp(-1);
        if constexpr (TRACE) t_steps++;
        const bool more = j0 + FKT < kend;
        float flag_next = 0.0f;
        if (more) {  // that stage was released by the last barrier
            issue(j0 + FKT, st ^ 1);
            if (tid < FKT) flag_next = key_flag(j0 + FKT);
        }
        cp_async_commit();
        cp_async_wait<1>();  // this block's copies landed
        // cp.async writes are generic-proxy writes: make them visible to wgmma's (async proxy)
        // reads before the barrier
        fence_proxy_async();
        __syncthreads();
        stamp(0);
        if (active) {
            const unsigned kst = base + st * KV_STAGE, vst = kst + H * HALF;
            const unsigned qw = qbase + wg * H * QHALF;
            // (zeroed: the fence reads them, and reading uninitialised registers in asm is
            // undefined; the first wgmma overwrites them, scale-d 0)
            float s[FKT / 2];
#pragma unroll
            for (int i = 0; i < FKT / 2; i++) s[i] = 0.f;
            fence_acc(s);
            wgmma_fence();
            wg_issue_scores<DK>(s, qw, kst);
            wgmma_commit();
            wgmma_wait<0>();
            fence_acc(s);
            stamp(1);
            unsigned pa[FKT / 16][4];
            // (the softmax written out here, not through wg_softmax: the same source through the
            // helper compiled to another schedule, 238 registers instead of 254, and this kernel's
            // timings are the H100's of 2026-11-28)
            const bool plain = all_vis && (!p.causal || j0 + FKT - 1 <= q_off + iw) &&
                               (win <= 0 || q_off + iw + 15 - j0 < win);
            const float* tb = btab;
            if (p.rel_bias) {
                int r = j0 - (q_off + iw);
                r = r < -WG_L ? -WG_L : (r > WG_L ? WG_L : r);
                tb = btab + (r + 2 * t - g + WG_TC);
            }
            float c[2];
            flash_softmax_tile<FKT>(s, reinterpret_cast<unsigned(&)[FKT / 4]>(pa), m, l, c, sl2,
                                    p.rel_bias ? tb : nullptr, plain, (const float2*)kvis[st], t,
                                    q_off + iw + g - j0 - 2 * t, p.causal, win);
            // rescale the running output unless no row's max moved (c == 1 exactly)
            if (__any_sync(0xffffffffu, c[0] != 1.0f || c[1] != 1.0f)) {
#pragma unroll
                for (int j = 0; j < DK / 8; j++) {
                    o[4 * j] *= c[0];
                    o[4 * j + 1] *= c[0];
                    o[4 * j + 2] *= c[1];
                    o[4 * j + 3] *= c[1];
                }
            }
            stamp(2);
            wg_fence_pv<DK>(o, pa);
            wgmma_fence();
            wg_issue_pv<DK>(o, pa, vst);
            wgmma_commit();
            wgmma_wait<0>();
            // (the A registers are read by the tensor cores until the wait: the fence keeps
            // them allocated)
            wg_fence_pv<DK>(o, pa);
            stamp(3);
        }
        if (more && tid < FKT) kvis[st ^ 1][tid] = flag_next;
        all_vis = __syncthreads_and(tid >= FKT || flag_next != 0.0f);
    }
    cp_async_wait<0>();
    if (!active) return;
    flash_store<DK>(p, b, h, iw + g, tq, o, l, t);
    if constexpr (TRACE) {
        if (tid == 0) wg_trace_store(p, trace_clock() - t_entry, t_steps, t_ph);
    }
}

// ---- warp-specialised: attention_ws_d64 / _d128 ------------------------------------------------
// The same results from the same shared-memory layout, with FlashAttention-3's schedule:
//   warpgroup 0 (producer, 88 registers a thread): warps 0-1 copy the K tiles, warps 2-3 the
//     V tiles, by cp.async into their stage, each signalling a tile on its `full` mbarrier as
//     soon as its own share landed (wait_group 0, proxy fence, arrive), then waiting on the
//     next stage's `empty` mbarrier until the consumers release it. K and V have their own
//     barriers and producers: a K tile is needed a whole softmax before its V tile, and its
//     stage is free as soon as S has been computed from it (the step's key flags live in a
//     ring of 4 of their own, which the softmax reads later).
//   warpgroups 1 and 2 (consumers, 208 registers, 64 queries each) never meet at a block
//     barrier. Per key step n each issues, in one wgmma group, O += P_n V_n and S_{n+1} =
//     Q K_{n+1}^T, waits, and runs the softmax of step n + 1 on S_{n+1} while the other
//     consumer's group runs: two named barriers pass the turn to issue between them
//     (ping-pong), so one warpgroup's softmax hides behind the other's tensor-core work.
// Why: attention_wg's two warpgroups met at two block barriers a key step, with every thread
// copying, so both did S, then both the softmax, then both P V: on the H100 (2026-11-28) the
// causal d128 case took ~7600 cycles per 128 x 128 step and block against ~2000 of tensor-core
// work (0.52 of SDPA). Written 2026-11-28 without a device: opt-in (Gpu::flash_ws,
// JOBX_FLASH_WS=1) until a GPU run has checked and timed it.
// Trace (TRACE, thread 0 of warpgroup 1): [3] waiting for K/V tiles (full barriers), [4] waiting
// for the turn to issue (named barrier), [5] the wgmma group (issue to wait), [6] softmax and
// rescale; [7] the rest.
template <int DK, bool TRACE>
__device__ __forceinline__ void attention_ws(const jobx_attention_params& p) {
    constexpr int H = DK / 64;
    constexpr unsigned KV_STAGE = 2 * H * WG_HALF;  // K halves, then V halves
#ifdef JOBX_HOST_EMU
    JOBX_EMU_DYNAMIC_SHARED(unsigned char, dyn_smem);
#else
    extern __shared__ unsigned char dyn_smem[];
#endif
    __shared__ float btab[WG_TAB];
    // per key of step n, in ring entry n % 4: 1 visible, 0 not; per K producer warp: all of its
    // 64 keys visible. (Entry n % 4 is rewritten for step n + 4 once K_{n+2}'s stage is free,
    // which comes after S_{n+2}, and so after each consumer warp's softmax of step n.)
    __shared__ __align__(8) float kvis[4][WG_FKT];
    __shared__ int wvis[4][2];
    // per stage: K landed, V landed (64 producer arrivals each); K released (after the S that
    // reads it), V released (after the P V): one arrival per consumer warp, 8
    __shared__ __align__(8) unsigned long long full_k[2], full_v[2], empty_k[2], empty_v[2];
    const unsigned base = (smem_addr(dyn_smem) + 1023u) & ~1023u;
    const unsigned qbase = base + 2 * KV_STAGE;
    const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31, ltid = tid & 127;
    unsigned b, h, qb;
    flash_block(p, b, h, qb);
    const int tq = (int)p.tq, i0 = (int)qb * WG_FQB;
    long long kb;
    const bf16 *q, *k, *v;
    flash_operands(p, b, h, kb, q, k, v);
    int q_off, win, kstart, kend;
    flash_range(p, i0, WG_FQB, WG_FKT, q_off, win, kstart, kend);
    const int steps = kstart < kend ? (kend - kstart + WG_FKT - 1) / WG_FKT : 0;  // block-uniform
    if (p.rel_bias) flash_bias_table(p, btab, WG_TAB, WG_TC, h, WS_THREADS);
    if (tid == 0) {
        for (int i = 0; i < 2; i++) {
            mbar_init(smem_addr(&full_k[i]), 64);
            mbar_init(smem_addr(&full_v[i]), 64);
            mbar_init(smem_addr(&empty_k[i]), 8);
            mbar_init(smem_addr(&empty_v[i]), 8);
        }
    }
    __syncthreads();  // the bias table and the barriers' initialisation

    if (wg == 0) {
        // Producer: 64 threads per tensor (warps 0-1 K, with Q and the key flags; 2-3 V), one
        // tile in flight each (with 2 stages the other is being read), signalled as soon as it
        // landed, so no signal waits behind a release
        // (88 + 2 x 208 warpgroup shares = 64512 of the 65536 registers; at d128 the copy loop
        // (32 copies a thread a tile) spills below 88, and the consumers fit 208 without
        // spilling, ptxas 12.9)
        regs_dealloc<88>();
        const bool is_v = warp >= 2;
        const int pt = ltid & 63;  // this thread's index among its tensor's 64
        unsigned long long* full = is_v ? full_v : full_k;
        unsigned long long* empty = is_v ? empty_v : empty_k;
        for (int n = 0; n < steps; n++) {
            const int st = n & 1, j0 = kstart + n * WG_FKT;
            // the stage's previous tile (step n - 2) released by every consumer warp
            if (n >= 2) mbar_wait(smem_addr(&empty[st]), (unsigned)((n - 2) >> 1) & 1);
            const unsigned kst = base + st * KV_STAGE;
            if (!is_v) {
                wg_copy_tile<DK, 64>(kst, k, p.k_st, j0, kend, pt);  // rows past the range: zeros
                if (n == 0) wg_copy_q<DK, 64>(qbase, q, p.q_st, i0, tq, pt);
                const float f0 = flash_key_flag(p, kb, j0 + pt, kend);
                const float f1 = flash_key_flag(p, kb, j0 + 64 + pt, kend);
                kvis[n & 3][pt] = f0;
                kvis[n & 3][64 + pt] = f1;
                const int all = __all_sync(0xffffffffu, f0 != 0.0f && f1 != 0.0f);
                if (lane == 0) wvis[n & 3][warp] = all;
            } else {
                wg_copy_tile<DK, 64>(kst + H * WG_HALF, v, p.v_st, j0, kend, pt);
            }
            cp_async_commit();
            cp_async_wait<0>();  // landed: visible to wgmma, then signalled
            fence_proxy_async();
            mbar_arrive(smem_addr(&full[st]));
        }
        return;
    }

    // Consumers: warpgroup cw's 64 queries (rows past tq are computed from zero rows of Q and
    // not stored: both consumers keep the same barrier schedule)
    regs_alloc<208>();
    const int cw = wg - 1, g = lane >> 2, t = lane & 3;
    const int iw = i0 + 64 * cw + 16 * warp;  // this warp's first query
    const unsigned qw = qbase + cw * H * WG_QHALF;
    const float sl2 = p.scale * LOG2E;
    const int turn = 1 + cw, other = 2 - cw;  // named barriers: this consumer's turn, the other's
    unsigned long long t_entry = 0, t_last = 0, t_ph[4] = {0, 0, 0, 0};
    auto stamp = [&](int phase) {
        if constexpr (TRACE) {
            if (tid == 128) {
                const unsigned long long now = trace_clock();
                if (phase >= 0) t_ph[phase] += now - t_last;
                t_last = now;
            }
        }
    };
    if constexpr (TRACE) {
        if (tid == 128) t_entry = t_last = trace_clock();
    }
    float o[DK / 2];  // O: the m64n{dk} accumulator fragment
#pragma unroll
    for (int i = 0; i < DK / 2; i++) o[i] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // rows g, g + 8 of the warp
    float s[WG_FKT / 2];
    unsigned pa[WG_FKT / 16][4];
    // the softmax of step n on s (its key flags)
    auto softmax = [&](int n) {
        const int r = n & 3;
        wg_softmax<DK>(p, s, pa, o, m, l, btab, kvis[r], wvis[r][0] && wvis[r][1], kstart + n * WG_FKT, q_off, iw,
                       win, sl2, g, t);
        stamp(3);
    };
    // a stage released by this warp (each warp its own arrival, after its own wgmma wait and
    // its lanes' last reads: the warpgroup's warps need not be in step)
    auto release = [&](unsigned long long& bar) {
        __syncwarp();
        if (lane == 0) mbar_arrive(smem_addr(&bar));
    };
    auto zero_s = [&]() {
        // (zeroed: the fence reads them, and reading uninitialised registers in asm is
        // undefined; the first wgmma overwrites them, scale-d 0)
#pragma unroll
        for (int i = 0; i < WG_FKT / 2; i++) s[i] = 0.f;
        fence_acc(s);
    };
    if (steps > 0) {
        if (cw == 1) bar_arrive_named<256>(other);  // consumer 0 issues first
        stamp(-1);
        mbar_wait(smem_addr(&full_k[0]), 0);
        stamp(0);
        bar_named<256>(turn);
        stamp(1);
        zero_s();
        wgmma_fence();
        wg_issue_scores<DK>(s, qw, base);
        wgmma_commit();
        bar_arrive_named<256>(other);
        wgmma_wait<0>();
        fence_acc(s);
        release(empty_k[0]);
        stamp(2);
        softmax(0);
    }
    // key step n: O += P_n V_n and, but for the last step (MORE false), S_{n+1} = Q K_{n+1}^T
    // in one wgmma group, then the softmax of step n + 1 (called with MORE a constant, so that
    // no wgmma stays under a runtime condition: ptxas would serialise the function's wgmma)
    auto step = [&](int n, const bool MORE) {
        const unsigned vst = base + (n & 1) * KV_STAGE + H * WG_HALF, kst = base + ((n + 1) & 1) * KV_STAGE;
        mbar_wait(smem_addr(&full_v[n & 1]), (unsigned)(n >> 1) & 1);
        if (MORE) mbar_wait(smem_addr(&full_k[(n + 1) & 1]), (unsigned)((n + 1) >> 1) & 1);
        stamp(0);
        bar_named<256>(turn);
        stamp(1);
        wg_fence_pv<DK>(o, pa);
        if (MORE) zero_s();
        wgmma_fence();
        wg_issue_pv<DK>(o, pa, vst);
        if (MORE) wg_issue_scores<DK>(s, qw, kst);
        wgmma_commit();
        // the other consumer's turn (consumer 1's arrival after its last step would find no one)
        if (MORE || cw == 0) bar_arrive_named<256>(other);
        wgmma_wait<0>();
        wg_fence_pv<DK>(o, pa);
        if (MORE) fence_acc(s);
        release(empty_v[n & 1]);
        if (MORE) release(empty_k[(n + 1) & 1]);
        stamp(2);
        if (MORE) softmax(n + 1);
    };
    for (int n = 0; n + 1 < steps; n++) step(n, true);
    if (steps > 0) step(steps - 1, false);
    if (i0 + 64 * cw < tq) flash_store<DK>(p, b, h, iw + g, tq, o, l, t);
    if constexpr (TRACE) {
        if (tid == 128) wg_trace_store(p, trace_clock() - t_entry, steps, t_ph);
    }
}

// Dynamic shared memory (runtime.rs): 2 stages x (K + V) x 128 keys x dk bf16, Q 128 x dk bf16,
// + 1 KB for the 1024-byte alignment: d64 81 KB, d128 161 KB.
extern "C" __global__ void __launch_bounds__(WG_THREADS, 1) attention_wg_d64(jobx_attention_params p) {
    pdl_enter();
    attention_wg<64, false>(p);
}

extern "C" __global__ void __launch_bounds__(WG_THREADS, 1) attention_wg_d128(jobx_attention_params p) {
    pdl_enter();
    attention_wg<128, false>(p);
}

// The same with the trace (benchmarks only: Gpu::set_attn_trace)
extern "C" __global__ void __launch_bounds__(WG_THREADS, 1) attention_wg_d64_trace(jobx_attention_params p) {
    pdl_enter();
    attention_wg<64, true>(p);
}

extern "C" __global__ void __launch_bounds__(WG_THREADS, 1) attention_wg_d128_trace(jobx_attention_params p) {
    pdl_enter();
    attention_wg<128, true>(p);
}

// Dynamic shared memory: as attention_wg's (runtime.rs)
extern "C" __global__ void __launch_bounds__(WS_THREADS, 1) attention_ws_d64(jobx_attention_params p) {
    pdl_enter();
    attention_ws<64, false>(p);
}

extern "C" __global__ void __launch_bounds__(WS_THREADS, 1) attention_ws_d128(jobx_attention_params p) {
    pdl_enter();
    attention_ws<128, false>(p);
}

extern "C" __global__ void __launch_bounds__(WS_THREADS, 1) attention_ws_d64_trace(jobx_attention_params p) {
    pdl_enter();
    attention_ws<64, true>(p);
}

extern "C" __global__ void __launch_bounds__(WS_THREADS, 1) attention_ws_d128_trace(jobx_attention_params p) {
    pdl_enter();
    attention_ws<128, true>(p);
}
