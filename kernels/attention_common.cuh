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

__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
    return *(unsigned*)&v;
}

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
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}
