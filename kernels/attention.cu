// Attention for every variant the graphs use, flash-style (one pass over the keys with an online
// softmax, scores never written to memory):
//   T5 encoder: bidirectional relative position bias + key padding mask, no 1/sqrt(d) scale;
//   T5 decoder self-attention over the KV cache: unidirectional bias, causal;
//   cross-attention: padding mask, K/V rows shared by beams (kv_batch);
//   Mistral: GQA (kv_heads < heads), 1/sqrt(d) scale, causal, sliding window, KV cache offset.
// Work split: a block of WARPS warps handles WARPS consecutive queries of one (batch, head); keys
// are staged 32 at a time in shared memory (bf16, rows padded to an odd number of 32-bit words so
// that "one lane per key" reads are bank-conflict free). Per 32-key chunk each lane scores one key
// (full dot product against the warp's query held in shared memory as f32), the warp takes the
// chunk max and sum by shuffles, rescales its running output, and accumulates p·V with each lane
// owning dk/32 output dimensions. Softmax statistics and accumulation are f32.
// Requires dk <= 128 (the launcher checks); fully masked query rows output zeros.
#include "common.cuh"

#define WARPS 4
#define KT 32
#define DMAX 128
#define KPAD 2  // bf16 elements of padding per staged row

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

extern "C" __global__ void __launch_bounds__(WARPS * 32) attention_bf16(jobx_attention_params p) {
    __shared__ float qs[WARPS][DMAX];
    __shared__ __align__(4) bf16 ks[KT][DMAX + KPAD];
    __shared__ __align__(4) bf16 vs[KT][DMAX + KPAD];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const long long b = blockIdx.z, h = blockIdx.y;
    const long long i0 = (long long)blockIdx.x * WARPS;
    const long long i = i0 + warp;
    const bool live = i < p.tq;
    const long long kb = p.kv_batch ? p.kv_batch[b] : b;
    const long long kh = h / (p.heads / p.kv_heads);
    const bf16* q = (const bf16*)p.q + b * p.q_sb + h * p.q_sh;
    const bf16* k = (const bf16*)p.k + kb * p.k_sb + kh * p.k_sh;
    const bf16* v = (const bf16*)p.v + kb * p.v_sb + kh * p.v_sh;
    const long long dk = p.dk;
    if (live)
        for (long long d = lane; d < dk; d += 32) qs[warp][d] = ld_bf16(q, i * p.q_st + d);
    // Keys this block can see at all: causal limits the end, a window the start.
    long long last_q = i0 + WARPS - 1 < p.tq - 1 ? i0 + WARPS - 1 : p.tq - 1;
    long long kend = p.tk;
    if (p.causal && p.q_offset + last_q + 1 < kend) kend = p.q_offset + last_q + 1;
    long long kstart = 0;
    if (p.window > 0 && p.q_offset + i0 - p.window + 1 > 0) kstart = p.q_offset + i0 - p.window + 1;
    kstart = kstart / KT * KT;

    float m = -INFINITY, l = 0.0f, acc[DMAX / 32];
#pragma unroll
    for (int e = 0; e < DMAX / 32; e++) acc[e] = 0.0f;
    const long long qpos = p.q_offset + i;

    for (long long j0 = kstart; j0 < kend; j0 += KT) {
        __syncthreads();  // previous chunk fully consumed (and qs written, first time)
        for (long long e = threadIdx.x; e < KT * dk; e += WARPS * 32) {
            const long long r = e / dk, d = e % dk, j = j0 + r;
            const bf16 z = __float2bfloat16_rn(0.0f);
            ks[r][d] = j < p.tk ? k[j * p.k_st + d] : z;
            vs[r][d] = j < p.tk ? v[j * p.v_st + d] : z;
        }
        __syncthreads();
        if (!live) continue;
        const long long j = j0 + lane;
        bool ok = j < kend;
        if (ok && p.key_mask) ok = p.key_mask[kb * p.tk + j] != 0;
        if (ok && p.causal) ok = j <= qpos;
        if (ok && p.window > 0) ok = qpos - j < p.window;
        float s = -INFINITY;
        if (ok) {
            float dot = 0.0f;
            for (long long d = 0; d < dk; d += 2) {
                const __nv_bfloat162 kv2 = *(const __nv_bfloat162*)&ks[lane][d];
                dot += qs[warp][d] * __low2float(kv2);
                if (d + 1 < dk) dot += qs[warp][d + 1] * __high2float(kv2);
            }
            s = dot * p.scale;
            if (p.rel_bias)
                s += p.rel_bias[(long long)t5_bucket(j - qpos, p.bidirectional, p.num_buckets,
                                                     p.max_distance) * p.heads + h];
        }
        const float cmax = warp_max(s);
        if (cmax == -INFINITY) continue;  // nothing visible in this chunk
        const float mnew = fmaxf(m, cmax);
        const float corr = expf(m - mnew);  // m = -inf the first time: corr = 0
        const float pj = expf(s - mnew);    // masked: exp(-inf) = 0
        l = l * corr + warp_sum(pj);
#pragma unroll
        for (int e = 0; e < DMAX / 32; e++) acc[e] *= corr;
        for (int jj = 0; jj < KT; jj++) {
            const float pw = __shfl_sync(0xffffffffu, pj, jj);
            if (pw == 0.0f) continue;  // uniform across the warp: no divergence
#pragma unroll
            for (int e = 0; e < DMAX / 32; e++) {
                const long long d = lane + 32 * e;
                if (d < dk) acc[e] += pw * __bfloat162float(vs[jj][d]);
            }
        }
        m = mnew;
    }
    if (!live) return;
    bf16* o = (bf16*)p.o + (b * p.tq + i) * (p.heads * dk) + h * dk;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
    for (int e = 0; e < DMAX / 32; e++) {
        const long long d = lane + 32 * e;
        if (d < dk) st_bf16(o, d, acc[e] * inv);
    }
}
