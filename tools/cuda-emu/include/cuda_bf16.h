// Host stand-in for <cuda_bf16.h> and the CUDA built-ins, used only when tools/cuda-emu/build.sh
// compiles kernels/*.cu as host C++ (-DJOBX_HOST_EMU) for the emulated device (tools/cuda-emu/
// README.md). Each CUDA thread of a block runs as a fiber on one host thread, so __syncthreads
// and the warp collectives are fiber barriers (emu.cpp); shared memory is function-static
// storage, valid because one block runs at a time.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#define __device__
#define __global__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __maxnreg__(...)
#define __grid_constant__
#define __align__(n) __attribute__((aligned(n)))
// one block at a time: a block's shared arrays are the kernel's static storage
#define __shared__ static

struct jobx_dim3 {
    unsigned x, y, z;
};
namespace jobx_emu {
// the running fiber's thread index, and the launch's block index and shapes (emu.cpp)
const jobx_dim3& thread_idx();
extern jobx_dim3 block_idx, block_dim, grid_dim;
// warp collectives: every live lane of the caller's warp deposits `v`; the call returns when
// all have, with the 32 deposits (lane order; read them before the caller's next collective)
struct WarpDeposits {
    const uint64_t (*slab)[4];
    uint64_t operator[](int lane) const { return slab[lane][0]; }
};
WarpDeposits warp_exchange(uint64_t v);
void warp_sync();
// block barrier; returns the AND of every live thread's `pred`
bool block_sync_and(bool pred);
// shared-window offsets (what __cvta_generic_to_shared gives and ldmatrix / cp.async take)
unsigned shared_offset(const void* p);
unsigned char* shared_ptr(unsigned off);
unsigned char* dynamic_shared();
// the running fiber's lane (linear thread index mod 32)
int lane();
}  // namespace jobx_emu
#define threadIdx (jobx_emu::thread_idx())
#define blockIdx (jobx_emu::block_idx)
#define blockDim (jobx_emu::block_dim)
#define gridDim (jobx_emu::grid_dim)
// `extern __shared__ T name[]` cannot be a static; the two flash kernels that use dynamic shared
// memory name it through this macro in host builds
#define JOBX_EMU_DYNAMIC_SHARED(T, name) T* name = (T*)jobx_emu::dynamic_shared()

// (only what kernels/*.cu use: a kernel that needs more fails to compile here, not silently)
struct __attribute__((aligned(8))) uint2 { unsigned x, y; };
struct __attribute__((aligned(16))) uint4 { unsigned x, y, z, w; };
struct __attribute__((aligned(8))) float2 { float x, y; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
// (__uint_as_float, __float_as_uint and __byte_perm: the host shims of kernels/int8_bf16.cuh)

// bf16 as the device rounds it: f32 to bf16 round-to-nearest-even, NaN kept quiet
struct __attribute__((aligned(2))) __nv_bfloat16 {
    unsigned short x;
    __nv_bfloat16() = default;
    static unsigned short round(float f) {
        uint32_t u;
        std::memcpy(&u, &f, 4);
        if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40);
        u += 0x7fffu + ((u >> 16) & 1u);
        return (unsigned short)(u >> 16);
    }
    __nv_bfloat16(float f) : x(round(f)) {}
    operator float() const {
        const uint32_t u = (uint32_t)x << 16;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    }
};
struct __attribute__((aligned(4))) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return (float)b; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.x; }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__nv_bfloat16(a), __nv_bfloat16(b)}; }
inline float2 __bfloat1622float2(__nv_bfloat162 v) { return {(float)v.x, (float)v.y}; }
inline float __low2float(__nv_bfloat162 v) { return (float)v.x; }
inline float __high2float(__nv_bfloat162 v) { return (float)v.y; }

// warp collectives over 32-bit values (every kernel passes the full mask)
template <typename T>
inline T jobx_emu_shfl(T v, int src) {
    static_assert(sizeof(T) <= 8, "shuffle of a value over 8 bytes");
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    const uint64_t got = jobx_emu::warp_exchange(bits)[src & 31];
    T out;
    std::memcpy(&out, &got, sizeof(T));
    return out;
}
template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int mask) {
    return jobx_emu_shfl(v, jobx_emu::lane() ^ mask);
}
template <typename T>
inline T __shfl_sync(unsigned, T v, int src) {
    return jobx_emu_shfl(v, src);
}
inline int __any_sync(unsigned, int pred) {
    const jobx_emu::WarpDeposits all = jobx_emu::warp_exchange(pred != 0);
    for (int l = 0; l < 32; l++) if (all[l]) return 1;
    return 0;
}
inline int __all_sync(unsigned, int pred) {
    const jobx_emu::WarpDeposits all = jobx_emu::warp_exchange(pred != 0);
    for (int l = 0; l < 32; l++) if (!all[l]) return 0;
    return 1;
}
inline void __syncwarp(unsigned = 0xffffffffu) { jobx_emu::warp_sync(); }
inline void __syncthreads() { (void)jobx_emu::block_sync_and(true); }
inline int __syncthreads_and(int pred) { return jobx_emu::block_sync_and(pred != 0); }
// one fiber runs at a time, and it switches only at a barrier: plain memory operations are
// atomic and ordered
inline void __threadfence() {}
template <typename T>
inline T atomicAdd(T* p, T v) { const T old = *p; *p = old + v; return old; }
template <typename T>
inline T __ldcg(const T* p) { return *p; }
template <typename T>
inline void __stcg(T* p, T v) { *p = v; }
inline size_t __cvta_generic_to_shared(const void* p) { return jobx_emu::shared_offset(p); }

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
// rounded float arithmetic that the compiler may not contract (no -mfma here: nothing is
// contracted anyway); fmaf is the single-rounding fused form
inline float __fmaf_rn(float a, float b, float c) { return std::fmaf(a, b, c); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }

// The PTX the kernels issue through inline asm, on the same fragment layouts (PTX ISA,
// "Matrix fragments for mma.m16n8k16" / "m16n8k32", "ldmatrix"): emu.cpp.
namespace jobx_emu {
void mma_bf16_16816(float* c, const unsigned* a, unsigned b0, unsigned b1);
void mma_s8_16832(int* c, const unsigned* a, const unsigned* b);
void ldmatrix_x4(unsigned* r, unsigned addr, bool trans);
void cp_async16(unsigned dst, const void* src, int bytes);
void cp_async_commit();
void cp_async_wait(int n);
float ex2_ftz(float x);
// sm_90a (kernels/*_sm90.cu, sm90_common.cuh, wgmma_ops.cuh): wgmma.mma_async m64nNk16 bf16 /
// m64nNk32 s8 from shared-memory descriptors (A from the registers `a` when not null; B N-major
// with trans_b), its commit, wait and fence; the proxy fences; named barriers; mbarriers; 2-D
// TMA loads; special registers for the GEMM trace.
void wgmma(bool int8, int n, void* d, const unsigned* a, unsigned long long da, unsigned long long db,
           bool trans_b, int scale_d);
void wgmma_commit();
void wgmma_wait(int n);
void wgmma_fence();
void fence_proxy_async();
void fence_mbarrier_init();
void named_barrier(int id, int count);
void named_arrive(int id, int count);
void mbar_init(unsigned bar, unsigned count);
void mbar_arrive(unsigned bar, unsigned expect_tx);
void mbar_wait(unsigned bar, unsigned parity);
void tma_load_2d(unsigned dst, const void* map, int c0, int c1, unsigned bar);
unsigned long long globaltimer();
unsigned long long clock64();
unsigned smid();
}  // namespace jobx_emu
