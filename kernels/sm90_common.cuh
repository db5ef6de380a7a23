// Helpers shared by the sm_90a kernels (gemm_sm90.cu, attention_sm90.cu).
#pragma once

// wgmma shared-memory matrix descriptor (PTX ISA, "Matrix Descriptor Format") for a K-major tile
// in the 128-byte swizzle layout: start address >> 4 (bits 0-13), leading byte offset >> 4
// (16-29; unused for swizzled K-major tiles, conventionally 1), stride byte offset >> 4 (32-45:
// 1024 B from one 8-row group to the next), swizzle mode 1 = 128 B (bits 62-63).
__device__ __forceinline__ unsigned long long desc_sw128(unsigned addr) {
    return (unsigned long long)((addr & 0x3FFFF) >> 4) | (1ull << 16) |
           ((unsigned long long)(1024 >> 4) << 32) | (1ull << 62);
}

// The accumulators are asm outputs the compiler could read (e.g. convert s32 -> f32) before the
// final wgmma.wait_group: tie each to an empty asm placed after it (CUTLASS's
// warpgroup_fence_operand).
__device__ __forceinline__ void fence_reg(float& v) { asm volatile("" : "+f"(v)::"memory"); }
__device__ __forceinline__ void fence_reg(int& v) { asm volatile("" : "+r"(v)::"memory"); }
__device__ __forceinline__ void fence_reg(unsigned& v) { asm volatile("" : "+r"(v)::"memory"); }
template <typename T, int N>
__device__ __forceinline__ void fence_acc(T (&acc)[N]) {
#pragma unroll
    for (int i = 0; i < N; i++) fence_reg(acc[i]);
}

// The same 128-byte-swizzle tiles read as an N-major (transposed) B operand: rows of 128 bytes
// along k (8 rows to a 1024-byte atom), each row 64 bf16 of n. PTX/CUTLASS canonical MN-major
// layout ((8, n), (8, k)) : ((1, LBO), (8, SBO)) in 16-byte units: the next 64 columns of n lie
// LBO bytes on, the next 8 rows of k SBO = 1024 bytes on.
__device__ __forceinline__ unsigned long long desc_sw128_mn(unsigned addr, unsigned lbo) {
    return (unsigned long long)((addr & 0x3FFFF) >> 4) | ((unsigned long long)((lbo >> 4) & 0x3FFF) << 16) |
           ((unsigned long long)(1024 >> 4) << 32) | (1ull << 62);
}
