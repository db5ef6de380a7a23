// Shared device helpers for kernels/*.cu: bf16 <-> f32, warp and block reductions.
// Every kernel in this project accumulates in f32 and indexes with 64-bit integers.
#pragma once
#include <cuda_bf16.h>
#include "jobx_params.h"

typedef __nv_bfloat16 bf16;

// NVRTC has no <math.h>: INFINITY from its bit pattern.
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

__device__ __forceinline__ float ld_bf16(const bf16* p, long long i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void st_bf16(bf16* p, long long i, float v) { p[i] = __float2bfloat16_rn(v); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
// `scratch` holds 32 floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

__device__ __forceinline__ unsigned smem_addr(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}

// 16-byte asynchronous global -> shared copy (sm_80+); bytes = 0 zero-fills the destination
// without reading the source (out-of-range rows).
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes)
                 : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ uint4 i8x8_to_bf16x8(uint2 raw) {
    unsigned o[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const unsigned word = i < 2 ? raw.x : raw.y;
        const int sh = (i & 1) * 16;
        const float f0 = (float)(signed char)((word >> sh) & 0xff);
        const float f1 = (float)(signed char)((word >> (sh + 8)) & 0xff);
        __nv_bfloat162 h = __floats2bfloat162_rn(f0, f1);  // .x (low half) = f0
        o[i] = *(unsigned*)&h;
    }
    return make_uint4(o[0], o[1], o[2], o[3]);
}
