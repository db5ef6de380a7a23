// Shared device helpers for kernels/*.cu: bf16 <-> f32, warp and block reductions.
// Every kernel in this project accumulates in f32 and indexes with 64-bit integers.
#pragma once
#include <cuda_bf16.h>
#include "jobx_params.h"
#include "int8_bf16.cuh"

typedef __nv_bfloat16 bf16;

// NVRTC has no <math.h>: INFINITY from its bit pattern.
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

// Programmatic dependent launch (Hopper; opt-in, JOBX_PDL=1): the runtime may launch a kernel
// with CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION, so that its blocks start while the
// previous kernel on the stream finishes. Every kernel therefore begins with pdl_enter():
// griddepcontrol.wait holds it until the previous grid has completed and its writes are visible
// (which also orders it after every earlier kernel: each waited for its own predecessor), then
// launch_dependents lets the next kernel's blocks be scheduled as ours finish. Only reads of
// what no kernel writes (weights) may come before it. Both are no-ops in a kernel launched
// without the attribute, and are left out below sm_90 (no such instructions). build.rs fails
// a kernel whose body does not begin with pdl_enter(), or with one call of a prefetch_*
// function (weights only) and then pdl_enter(), and an sm_90 kernel whose PTX lacks the wait.
__device__ __forceinline__ void pdl_enter() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;\n" :::);
#endif
}

// Before pdl_enter: ask L2 for the bytes [s, s + n) of a buffer no kernel writes (weights), one
// 128-byte line per thread a pass (the first line's address clamped to s, so every address
// lies in the range).
__device__ __forceinline__ void prefetch_l2(const void* s, long long n) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (n <= 0) return;
    const unsigned long long a0 = (unsigned long long)s, a1 = a0 + (unsigned long long)n;
    for (unsigned long long l = (a0 >> 7) + threadIdx.x; l <= ((a1 - 1) >> 7); l += blockDim.x) {
        const unsigned long long a = (l << 7) < a0 ? a0 : (l << 7);
        asm volatile("prefetch.L2 [%0];\n" ::"l"(a));  // generic address
    }
#endif
}

__device__ __forceinline__ float ld_bf16(const bf16* p, long long i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void st_bf16(bf16* p, long long i, float v) { p[i] = __float2bfloat16_rn(v); }

// Two bf16 in one 32-bit word (the low half first, as in memory): packing rounds each value once;
// unpacking is exact (a bf16 is the upper half of its f32).
__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
    return *(unsigned*)&v;
}
__device__ __forceinline__ float bf16x2_lo(unsigned u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float bf16x2_hi(unsigned u) { return __uint_as_float(u & 0xffff0000u); }

// 16-byte vector access to 8 bf16 is possible when every pointer involved is 16-byte aligned.
__device__ __forceinline__ bool aligned16(const void* p) { return ((unsigned long long)p & 15) == 0; }

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
#ifdef JOBX_HOST_EMU
    jobx_emu::cp_async16(dst, src, bytes);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes)
                 : "memory");
#endif
}

// (host emulation: a thread's copies land at the wait that retires their group, the latest
// moment the hardware may, so a missing wait reads what was there before)
#ifdef JOBX_HOST_EMU
__device__ __forceinline__ void cp_async_commit() { jobx_emu::cp_async_commit(); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    jobx_emu::cp_async_wait(N);
}
#else
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
#endif

// D += A B on tensor cores, bf16 in, f32 accumulate: mma.sync m16n8k16, A row-major (4
// registers of bf16 pairs), B column-major (b0, b1), C/D 4 floats in the PTX ISA's fragment
// layout (the mma.sync GEMM tiles and flash attention).
__device__ __forceinline__ void mma_16816(float* c, const unsigned* a, unsigned b0, unsigned b1) {
#ifdef JOBX_HOST_EMU
    jobx_emu::mma_bf16_16816(c, a, b0, b1);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// 8 int8 (byte 0 of raw.x first) as 8 bf16 in k order, exactly (int8_bf16.cuh: bit arithmetic,
// no integer-to-float conversions).
__device__ __forceinline__ uint4 i8x8_to_bf16x8(uint2 raw) {
    uint4 o;
    i8x4_to_bf16x4(raw.x, o.x, o.y);
    i8x4_to_bf16x4(raw.y, o.z, o.w);
    return o;
}
