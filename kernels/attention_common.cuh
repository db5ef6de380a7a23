// Attention helpers shared by attention.cu and attention_sm90.cu.
#pragma once
#include "common.cuh"

// HF T5Attention._relative_position_bucket for relative_position = key - query, in f32 like
// torch (log of the f32 ratio, truncation toward zero when cast to long).
__device__ __forceinline__ int t5_bucket(long long rel, int bidirectional, int num_buckets,
                                         int max_distance) {
    int ret = 0;
    long long n;
    if (bidirectional) {
        num_buckets /= 2;
        if (rel > 0) ret += num_buckets;
        n = rel < 0 ? -rel : rel;
    } else {
        n = rel < 0 ? -rel : 0;
    }
    const int max_exact = num_buckets / 2;
    if (n < max_exact) return ret + (int)n;
    const float lg = logf((float)n / (float)max_exact) /
                     (float)log((double)max_distance / (double)max_exact) *
                     (float)(num_buckets - max_exact);
    long long large = max_exact + (long long)lg;
    if (large > num_buckets - 1) large = num_buckets - 1;
    return ret + (int)large;
}

// The position of query 0: q_offset, or read on the device (q_offset_at: a CUDA graph's step).
__device__ __forceinline__ long long query_offset(const jobx_attention_params& p) {
    return p.q_offset_at ? (long long)*p.q_offset_at : p.q_offset;
}

#define LOG2E 1.4426950408889634f
// largest T5 max_distance the tensor-core kernels take (its bias table lives in shared memory;
// ops.rs checks, larger ones go to attention_bf16)
#define FA_BIAS_R_MAX 512

// A flash block's (batch, head, query block). Causal: a query block's work grows with its
// position (the last block of a 4096-token prefill scans 64 key blocks, the first one). Blocks
// start in linear index order (x fastest), so with x = query block the longest blocks of the
// last heads started last and ran alone at the end. Longest first instead: linear index ->
// (query block counted from the end, then batch x head), a bijection over the same grid
// (gridDim = (query blocks, heads, batch)). (32-bit block indices: each fits, and 64-bit ones
// cost the d128 kernels registers they lack.)
__device__ __forceinline__ void flash_block(const jobx_attention_params& p, unsigned& b,
                                            unsigned& h, unsigned& qb) {
    b = blockIdx.z;
    h = blockIdx.y;
    qb = blockIdx.x;
    if (p.causal) {
        const unsigned long long hb_all = (unsigned long long)gridDim.y * gridDim.z;
        const unsigned long long lin =
            blockIdx.x + (unsigned long long)gridDim.x * (blockIdx.y + (unsigned long long)gridDim.y * blockIdx.z);
        const unsigned hb = (unsigned)(lin % hb_all);
        qb = gridDim.x - 1 - (unsigned)(lin / hb_all);
        h = hb % gridDim.y;
        b = hb / gridDim.y;
    }
}

__device__ __forceinline__ float ex2_ftz(float x) {
#ifdef JOBX_HOST_EMU
    return jobx_emu::ex2_ftz(x);
#else
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
#endif
}

// One 16-row tile's softmax step in the 128-query flash kernels (attention_fa2, attention_wg).
// s: the tile's scores in the m16 accumulator layout, s[4n + e] = row g (+ 8 for e >= 2), key
// 8n + 2t (+ 1 for odd e); scaled to the exp2 domain (sl2) plus the T5 bias tb[8n + (e & 1) -
// 8 (e >= 2)] (tb null: no bias); where `plain` is false, masked by the key flags kv2 (keys
// 8n + 2t, + 1), causality and the window on dq = query - key = dq0 - 8n - (e & 1) + 8 (e >= 2)
// (a select, not an added -inf: a masked score never reaches the max). The row max is shared
// by the row's 4 lanes; its reference point is the new max, or 0 for a row with nothing
// visible yet (FlashAttention's rule: all its weights and its correction come out 0). Out: m and
// l (l partial over this lane's columns) updated, c = the running output's correction, and P
// as bf16 pairs pk[2n] (row g), pk[2n + 1] (row g + 8), packed as made so the f32 scores need
// not stay live into P V.
template <int FKT>
__device__ __forceinline__ void flash_softmax_tile(float (&s)[FKT / 2], unsigned (&pk)[FKT / 4],
                                                   float (&m)[2], float (&l)[2], float (&c)[2],
                                                   float sl2, const float* tb, bool plain,
                                                   const float2* kv2, int t, int dq0, bool causal,
                                                   int win) {
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int n = 0; n < FKT / 8; n++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const bool hi = e >= 2;
            float x = tb ? fmaf(s[4 * n + e], sl2, tb[n * 8 + (e & 1) - (hi ? 8 : 0)]) : s[4 * n + e] * sl2;
            if (!plain) {
                const float2 vis = kv2[n * 4 + t];
                const int dq = dq0 - n * 8 - (e & 1) + (hi ? 8 : 0);
                bool ok = ((e & 1) ? vis.y : vis.x) != 0.0f;
                if (causal) ok = ok && dq >= 0;
                if (win > 0) ok = ok && dq < win;
                x = ok ? x : -INFINITY;
            }
            s[4 * n + e] = x;
            if (hi) mx1 = fmaxf(mx1, x); else mx0 = fmaxf(mx0, x);
        }
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    const float n0 = fmaxf(m[0], mx0), n1 = fmaxf(m[1], mx1);
    const float u0 = n0 == -INFINITY ? 0.0f : n0, u1 = n1 == -INFINITY ? 0.0f : n1;
    c[0] = ex2_ftz(m[0] - u0);
    c[1] = ex2_ftz(m[1] - u1);
    float ps0 = 0.0f, ps1 = 0.0f;
#pragma unroll
    for (int n = 0; n < FKT / 8; n++) {
        const float p0 = ex2_ftz(s[4 * n] - u0), p1 = ex2_ftz(s[4 * n + 1] - u0);
        const float p2 = ex2_ftz(s[4 * n + 2] - u1), p3 = ex2_ftz(s[4 * n + 3] - u1);
        ps0 += p0 + p1;
        ps1 += p2 + p3;
        pk[2 * n] = pack_bf16x2(p0, p1);
        pk[2 * n + 1] = pack_bf16x2(p2, p3);
    }
    l[0] = l[0] * c[0] + ps0;
    l[1] = l[1] * c[1] + ps1;
    m[0] = n0;
    m[1] = n1;
}

// The 128-query flash kernels' key range for queries i0..i0 + fqb - 1 (32-bit positions: the
// launcher admits them only below 2^30): causal limits the end, a window the start (rounded
// down to a key block of fkt); a window of 2^30 or more covers every distance (win 0).
__device__ __forceinline__ void flash_range(const jobx_attention_params& p, int i0, int fqb, int fkt,
                                            int& q_off, int& win, int& kstart, int& kend) {
    const int tq = (int)p.tq;
    q_off = (int)query_offset(p);
    win = p.window >= (1 << 30) ? 0 : (int)p.window;
    const int last_q = i0 + fqb - 1 < tq - 1 ? i0 + fqb - 1 : tq - 1;
    kend = (int)p.tk;
    if (p.causal && q_off + last_q + 1 < kend) kend = q_off + last_q + 1;
    kstart = 0;
    if (win > 0 && q_off + i0 - win + 1 > 0) kstart = q_off + i0 - win + 1;
    kstart = kstart / fkt * fkt;
}

// The padded T5 bias table of the 128-query flash kernels, built by `threads` threads: entry x
// holds log2(e) x the bias of relative position clamp(x - tc, -max_distance, max_distance).
__device__ __forceinline__ void flash_bias_table(const jobx_attention_params& p, float* btab, int tab,
                                                 int tc, long long h, int threads) {
    const int R = p.max_distance;
    for (int x = threadIdx.x; x < tab; x += threads) {
        int rel = x - tc;
        rel = rel < -R ? -R : (rel > R ? R : rel);
        btab[x] = LOG2E * p.rel_bias[(long long)t5_bucket(rel, p.bidirectional, p.num_buckets,
                                                          p.max_distance) * p.heads + h];
    }
}

// A flash block's operands for (batch b, head h): its K/V row group kb (beams share the rows of
// their source through kv_batch) and the head's Q, K and V (GQA: heads / kv_heads query heads
// share a KV head).
__device__ __forceinline__ void flash_operands(const jobx_attention_params& p, unsigned b, unsigned h,
                                               long long& kb, const bf16*& q, const bf16*& k,
                                               const bf16*& v) {
    kb = p.kv_batch ? p.kv_batch[b] : b;
    const long long kh = h / (p.heads / p.kv_heads);
    q = (const bf16*)p.q + b * p.q_sb + h * p.q_sh;
    k = (const bf16*)p.k + kb * p.k_sb + kh * p.k_sh;
    v = (const bf16*)p.v + kb * p.v_sb + kh * p.v_sh;
}

// Whether key j of row group kb is visible to the block: inside its range (j < kend) and not
// masked. I: the kernel's position type.
template <typename I>
__device__ __forceinline__ float flash_key_flag(const jobx_attention_params& p, long long kb, I j, I kend) {
    return j < kend && (!p.key_mask || p.key_mask[kb * p.tk + j] != 0) ? 1.0f : 0.0f;
}

// A 16-row tile's output: rows r0 (acc[4d], acc[4d + 1]) and r0 + 8 (acc[4d + 2], acc[4d + 3]) at
// columns 8d + 2t, + 1, divided by the row sums (l: this lane's partial sums, completed across
// the row's 4 lanes here; a row with nothing visible outputs zeros). Rows from tq on are not
// written.
template <int DK, typename I>
__device__ __forceinline__ void flash_store(const jobx_attention_params& p, unsigned b, unsigned h, I r0,
                                            I tq, const float (&acc)[DK / 2], const float (&l)[2], int t) {
    float l0 = l[0], l1 = l[1];
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
    bf16* o = (bf16*)p.o + (long long)h * DK;
    const long long ld = p.heads * DK;
    const I r1 = r0 + 8;
#pragma unroll
    for (int d = 0; d < DK / 8; d++) {
        const I c = d * 8 + 2 * t;
        if (r0 < tq)
            *(unsigned*)(o + (b * p.tq + r0) * ld + c) = pack_bf16x2(acc[4 * d] * inv0, acc[4 * d + 1] * inv0);
        if (r1 < tq)
            *(unsigned*)(o + (b * p.tq + r1) * ld + c) = pack_bf16x2(acc[4 * d + 2] * inv1, acc[4 * d + 3] * inv1);
    }
}
