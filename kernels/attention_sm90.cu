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
    constexpr int FQB = 128, FKT = 128;
    constexpr int H = DK / 64;                       // 64-column halves of a row
    constexpr unsigned HALF = FKT * 128;             // bytes of one half of a K or V tile
    constexpr unsigned KV_STAGE = 2 * H * HALF;      // K halves, then V halves
    constexpr unsigned QHALF = 64 * 128;             // one warpgroup's 64 rows x 64 columns
    // T5 bias table as in attention_fa2 (one row tile per warp): offsets [-15, FKT - 1]
    constexpr int L = FA_BIAS_R_MAX + FQB + FKT, TC = L + 16, TAB = TC + L + FKT + 8;
#ifdef JOBX_HOST_EMU
    JOBX_EMU_DYNAMIC_SHARED(unsigned char, dyn_smem);
#else
    extern __shared__ unsigned char dyn_smem[];
#endif
    __shared__ float btab[TAB];
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

    // byte offset of 16-byte chunk c (0..7) of row r in a swizzled region of 128-byte rows
    auto sw = [](int r, int c) -> unsigned { return (unsigned)(r * 128 + ((c ^ (r & 7)) << 4)); };
    constexpr int CH = DK / 8;                       // 16-byte chunks per row
    constexpr int PER = FKT * CH / WG_THREADS;       // per thread, per tensor
    auto issue = [&](int j0, int st) {
        const unsigned kst = base + st * KV_STAGE, vst = kst + H * HALF;
#pragma unroll
        for (int u = 0; u < PER; u++) {
            const int idx = tid + WG_THREADS * u;
            const int r = idx / CH, c = idx % CH;
            const bool ok = j0 + r < kend;           // rows past the range are zero-filled
            const unsigned off = (c >> 3) * HALF + sw(r, c & 7);
            cp_async16(kst + off, ok ? (const void*)(k + (long long)(j0 + r) * p.k_st + c * 8) : (const void*)k,
                       ok ? 16 : 0);
            cp_async16(vst + off, ok ? (const void*)(v + (long long)(j0 + r) * p.v_st + c * 8) : (const void*)v,
                       ok ? 16 : 0);
        }
    };
    auto key_flag = [&](int j0) -> float { return flash_key_flag(p, kb, j0 + tid, kend); };
    // (published by the barrier before the key loop)
    if (p.rel_bias) flash_bias_table(p, btab, TAB, TC, h, WG_THREADS);

    float o[DK / 2];  // O: the m64n{dk} accumulator fragment
#pragma unroll
    for (int i = 0; i < DK / 2; i++) o[i] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // rows g, g + 8 of the warp

    float flag0 = 0.0f;
    if (kstart < kend) {
        issue(kstart, 0);
        // Q rows i0..i0+127 (rows past tq zero-filled), with the first key block
        for (int idx = tid; idx < FQB * CH; idx += WG_THREADS) {
            const int row = idx / CH, c = idx % CH;
            const bool ok = i0 + row < tq;
            const unsigned off = ((row >> 6) * H + (c >> 3)) * QHALF + sw(row & 63, c & 7);
            cp_async16(qbase + off, ok ? (const void*)(q + (long long)(i0 + row) * p.q_st + c * 8) : (const void*)q,
                       ok ? 16 : 0);
        }
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
            // S = Q K^T over dk in 16-column steps: 32 bytes further inside a 64-column half,
            // the next half's region every 4 steps
            // (the first step overwrites: scale_d = 0; the operand fences keep every register
            // write the compiler might otherwise sink past wgmma.fence ahead of it, as CUTLASS's
            // warpgroup_fence_operand does)
            // (zeroed: the fence reads them, and reading uninitialised registers in asm is
            // undefined; the first wgmma overwrites them, scale-d 0)
            float s[FKT / 2];
#pragma unroll
            for (int i = 0; i < FKT / 2; i++) s[i] = 0.f;
            fence_acc(s);
            wgmma_fence();
#pragma unroll
            for (int ks = 0; ks < DK / 16; ks++) {
                const unsigned hq = (ks >> 2) * QHALF + (ks & 3) * 32, hk = (ks >> 2) * HALF + (ks & 3) * 32;
                wgmma_bf16_n128(s, desc_sw128(qw + hq), desc_sw128(kst + hk), ks > 0);
            }
            wgmma_commit();
            wgmma_wait<0>();
            fence_acc(s);
            stamp(1);
            // scores: s[4n + e] = row g (+ 8 for e >= 2), key j0 + 8n + 2t (+ 1 for odd e)
            const bool plain = all_vis && (!p.causal || j0 + FKT - 1 <= q_off + iw) &&
                               (win <= 0 || q_off + iw + 15 - j0 < win);
            const float* tb = btab;
            if (p.rel_bias) {
                int r = j0 - (q_off + iw);
                r = r < -L ? -L : (r > L ? L : r);
                tb = btab + (r + 2 * t - g + TC);
            }
            const float2* kv2 = (const float2*)kvis[st];
            // P as bf16 pairs in A-fragment order: pa[kk] = (row g, keys 16kk + 2t, + 1),
            // (row g + 8, same keys), (row g, keys + 8), (row g + 8, keys + 8). The wgmma reads
            // these registers themselves, so they are the operands (no copies)
            unsigned pa[FKT / 16][4];
            float c[2];
            flash_softmax_tile<FKT>(s, reinterpret_cast<unsigned(&)[FKT / 4]>(pa), m, l, c, sl2,
                                    p.rel_bias ? tb : nullptr, plain, kv2, t,
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
            // O += P V: 16 keys per step = two 8-row atoms of V (2048 bytes), read N-major
            fence_acc(o);
#pragma unroll
            for (int kk = 0; kk < FKT / 16; kk++)
#pragma unroll
                for (int i = 0; i < 4; i++) fence_reg(pa[kk][i]);
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < FKT / 16; kk++) {
                const unsigned long long dv = desc_sw128_mn(vst + kk * 2048, HALF);
                if constexpr (DK == 64) wgmma_bf16_rs_n64_tb(o, pa[kk], dv, 1);
                else wgmma_bf16_rs_n128_tb(o, pa[kk], dv, 1);
            }
            wgmma_commit();
            wgmma_wait<0>();
            fence_acc(o);
            // the A registers are read by the tensor cores until the wait: keep them allocated
#pragma unroll
            for (int kk = 0; kk < FKT / 16; kk++)
#pragma unroll
                for (int i = 0; i < 4; i++) fence_reg(pa[kk][i]);
            stamp(3);
        }
        if (more && tid < FKT) kvis[st ^ 1][tid] = flag_next;
        all_vis = __syncthreads_and(tid >= FKT || flag_next != 0.0f);
    }
    cp_async_wait<0>();
    if (!active) return;
    flash_store<DK>(p, b, h, iw + g, tq, o, l, t);
    if constexpr (TRACE) {
        if (tid == 0 && p.trace) {
            const unsigned long long total = trace_clock() - t_entry;
            unsigned long long* w = p.trace + 8ull * (blockIdx.x + (unsigned long long)gridDim.x *
                                                      (blockIdx.y + (unsigned long long)gridDim.y * blockIdx.z));
            w[0] = trace_smid();
            w[1] = total;
            w[2] = (unsigned long long)t_steps;
            for (int i = 0; i < 4; i++) w[3 + i] = t_ph[i];
            w[7] = total - t_ph[0] - t_ph[1] - t_ph[2] - t_ph[3];
        }
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
