// The RMS norm's arithmetic, shared by rms_norm_bf16 (norm.cu) and the decode GEMMs that
// normalise their x rows as they load them (gemm.cu, the `_rms` entry points), which must give
// exactly the norm's values. Both therefore take the sum of squares, the inverse and the output
// roundings from here, with explicit roundings (`__fmaf_rn` and friends cannot be contracted
// differently in the two contexts), and the GEMMs repeat rms_norm_bf16's summation order
// (rms_rows_inv below).
#pragma once
#include "common.cuh"

#define RMS_VEC 4  // chunks of 8 per thread in rms_norm_bf16's vector form: 256 threads, d <= 8192

// ss plus the squares of 8 bf16 (one 16-byte chunk), pair by pair: ss + (a*a + b*b), the a*a
// fused with the sum of the pair (what NVRTC made of the plain expression before).
__device__ __forceinline__ float rms_ss8(uint4 v, float ss) {
    const unsigned u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float a = bf16x2_lo(u[i]), b = bf16x2_hi(u[i]);
        ss = __fadd_rn(ss, __fmaf_rn(a, a, __fmul_rn(b, b)));
    }
    return ss;
}

// 1 / rms from a row's sum of squares.
__device__ __forceinline__ float rms_inv(float ss, long long d, float eps) {
    return rsqrtf(ss / (float)d + eps);
}

// The normalised value rounded to bf16 (HF: hidden_states.to(weight dtype)), then * weight (the
// caller rounds the product to bf16).
__device__ __forceinline__ float rms_out(float x, float r, float w) {
    return __bfloat162float(__float2bfloat16_rn(__fmul_rn(x, r))) * w;
}

// 8 bf16 of a row normalised: bf16(rms_out(x_i, r, w_i)).
__device__ __forceinline__ uint4 rms_apply8(uint4 x, float r, uint4 w) {
    const unsigned u[4] = {x.x, x.y, x.z, x.w};
    const unsigned wu[4] = {w.x, w.y, w.z, w.w};
    unsigned o[4];
#pragma unroll
    for (int i = 0; i < 4; i++)
        o[i] = pack_bf16x2(rms_out(bf16x2_lo(u[i]), r, bf16x2_lo(wu[i])),
                           rms_out(bf16x2_hi(u[i]), r, bf16x2_hi(wu[i])));
    return make_uint4(o[0], o[1], o[2], o[3]);
}

// rr[r] = rms_inv of x row r < m (rows of k, a multiple of 8, k / 8 <= RMS_VEC * threads; x
// 16-byte aligned) as rms_norm_bf16's vector form computes it with a block of `threads` threads
// (its thread c sums chunks c, c + threads, ... in order; block_sum adds each warp's partials by
// warp_sum's butterfly, then the warps' sums by a second butterfly with zeros past the last
// warp). Here a warp takes a (row, norm warp) unit at a time, its lane l standing in for the
// norm's thread 32 * (norm warp) + l, so the first butterfly is the norm's; its result goes to
// `part`, and a second pass runs the norm's second butterfly per row. UNITS units a warp at a
// time with all their loads issued before any sum: the rows come from L2, so the cost is its
// latency, paid once when every thread has one chunk (k <= 8 * threads, d_model <= 2048) and
// the units fit one pass. `part` holds 32 x 8 floats of shared memory, `rr` 32; m <= 32. Ends
// at a barrier.
template <int JV, int UNITS>
__device__ __forceinline__ void rms_rows_units(const bf16* x, long long m, long long k, int threads,
                                               float (*part)[8]) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const long long chunks = k / 8;
    const int tw = threads >> 5;  // the norm's warps, 1..8
    const long long units = m * tw;
    for (long long u0 = (long long)warp * UNITS; u0 < units; u0 += (long long)warps * UNITS) {
        uint4 v[UNITS][JV];
#pragma unroll
        for (int i = 0; i < UNITS; i++) {
            const long long u = u0 + i, row = u / tw, c0 = (u % tw) * 32 + lane;
#pragma unroll
            for (int j = 0; j < JV; j++) {
                const long long c = c0 + (long long)j * threads;
                v[i][j] = u < units && c < chunks ? ((const uint4*)(x + row * k))[c] : make_uint4(0, 0, 0, 0);
            }
        }
#pragma unroll
        for (int i = 0; i < UNITS; i++) {
            const long long u = u0 + i, c0 = (u % tw) * 32 + lane;
            float ss = 0.0f;
#pragma unroll
            for (int j = 0; j < JV; j++)
                if (c0 + (long long)j * threads < chunks) ss = rms_ss8(v[i][j], ss);
            ss = warp_sum(ss);
            if (u < units && lane == 0) part[u / tw][u % tw] = ss;
        }
    }
}

// UNITS: units a warp loads at once where every thread of the norm has one chunk (16 for 32
// rows on 8 warps at d_model <= 1024: one pass; gemm_skinny8_rms, at most 8 rows, takes 4, so
// that the registers of the loads do not cost the weight stream its occupancy).
// `inv` (jobx_gemm_rms_params.inv, the tests' probe, normally NULL): block 0 also writes each
// row's 1 / rms there.
template <int UNITS>
__device__ __forceinline__ void rms_rows_inv(const bf16* x, long long m, long long k, int threads, float eps,
                                             float (*part)[8], float* rr, float* inv) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int tw = threads >> 5;
    if (k / 8 <= threads) rms_rows_units<1, UNITS>(x, m, k, threads, part);  // block-uniform
    else rms_rows_units<RMS_VEC, (UNITS >= 4 ? UNITS / 4 : 1)>(x, m, k, threads, part);
    __syncthreads();
    for (long long row = warp; row < m; row += warps) {
        const float s = warp_sum(lane < tw ? part[row][lane] : 0.0f);
        if (lane == 0) {
            const float r = rms_inv(s, k, eps);
            rr[row] = r;
            if (inv && blockIdx.x == 0 && blockIdx.y == 0) inv[row] = r;
        }
    }
    __syncthreads();
}

