// Logits processing for a decode step, f32 logits [rows, vocab]:
//   1. grammar mask: entries whose bit is clear in the row's bitmask become -inf (in place), and
//      so do the `suppress` ids;
//   2. the top_k largest (value, id) per row, descending, ties to the lower id (top_k = 1 is the
//      greedy argmax; beam search asks for 2 * num_beams candidates per row);
//   3. optionally the row's log-sum-exp, so greedy decoding gets its token's log-probability
//      without copying the logits to the host.
// One block per row; top_k rounds of a block-wide argmax that skips ids already chosen
// (top_k <= 64, vocab scanned top_k times: cheap next to the LM-head GEMM that made the row).
#include "common.cuh"

#define LT 256

__device__ __forceinline__ bool better(float v1, int i1, float v2, int i2) {
    return v1 > v2 || (v1 == v2 && i1 < i2) || (i2 < 0 && i1 >= 0);
}

extern "C" __global__ void __launch_bounds__(LT) logits_topk(jobx_logits_params p) {
    pdl_enter();
    __shared__ int chosen[64];
    __shared__ float sv[LT / 32];
    __shared__ int si[LT / 32];
    __shared__ float row_max;
    const long long row = blockIdx.x;
    if (row >= p.rows) return;
    float* x = p.logits + row * p.vocab;
    if (p.mask) {
        const unsigned* mk = p.mask + row * ((p.vocab + 31) / 32);
        for (long long j = threadIdx.x; j < p.vocab; j += LT)
            if (!((mk[j >> 5] >> (j & 31)) & 1u)) x[j] = -INFINITY;
        __syncthreads();
    }
    if (p.suppress) {
        for (int j = threadIdx.x; j < p.n_suppress; j += LT) {
            const long long id = p.suppress[j];
            if (id >= 0 && id < p.vocab) x[id] = -INFINITY;
        }
        __syncthreads();
    }
    for (int r = 0; r < p.top_k; r++) {
        float bv = -INFINITY;
        int bi = -1;
        for (long long j = threadIdx.x; j < p.vocab; j += LT) {
            bool taken = false;
            for (int c = 0; c < r; c++) taken |= chosen[c] == (int)j;
            if (!taken && better(x[j], (int)j, bv, bi)) { bv = x[j]; bi = (int)j; }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (better(ov, oi, bv, bi)) { bv = ov; bi = oi; }
        }
        if ((threadIdx.x & 31) == 0) { sv[threadIdx.x >> 5] = bv; si[threadIdx.x >> 5] = bi; }
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int w = 1; w < LT / 32; w++)
                if (better(sv[w], si[w], bv, bi)) { bv = sv[w]; bi = si[w]; }
            chosen[r] = bi;
            if (r == 0) row_max = bv;  // for the log-sum-exp below
            p.out_ids[row * p.top_k + r] = bi;
            p.out_vals[row * p.top_k + r] = bv;
        }
        __syncthreads();
    }
    if (p.out_lse) {
        // lse = max + log(sum exp(x - max)), f32 like the host path (cpu::simd::max_lse)
        __shared__ float red[32];
        const float mx = row_max;
        float s = 0.0f;
        if (mx != -INFINITY)
            for (long long j = threadIdx.x; j < p.vocab; j += LT) s += expf(x[j] - mx);
        s = block_sum(s, red);
        if (threadIdx.x == 0) p.out_lse[row] = mx == -INFINITY ? -INFINITY : mx + logf(s);
    }
}
