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
// warpgroup_fence_operand). (Host emulation: the emulated wgmma reads and writes the registers
// through their addresses, inside calls the compiler cannot see into, so no fence is needed.)
#ifdef JOBX_HOST_EMU
template <typename T>
__device__ __forceinline__ void fence_reg(T&) {}
#else
__device__ __forceinline__ void fence_reg(float& v) { asm volatile("" : "+f"(v)::"memory"); }
__device__ __forceinline__ void fence_reg(int& v) { asm volatile("" : "+r"(v)::"memory"); }
__device__ __forceinline__ void fence_reg(unsigned& v) { asm volatile("" : "+r"(v)::"memory"); }
#endif
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

// The warpgroup-MMA sequence (PTX ISA, "Asynchronous Warpgroup Level Matrix Multiply-Accumulate"):
// wgmma.fence before the first wgmma that touches registers written since, commit_group closes
// the wgmma issued so far into a group, wait_group<N> returns once at most N groups are in
// flight. The host emulation (tools/cuda-emu) runs a group's products at the wait that retires
// it, the latest moment the hardware may, so reading an accumulator, or reusing the shared
// memory a product reads, before that wait gives a wrong result there too.
__device__ __forceinline__ void wgmma_fence() {
#ifdef JOBX_HOST_EMU
    jobx_emu::wgmma_fence();
#else
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void wgmma_commit() {
#ifdef JOBX_HOST_EMU
    jobx_emu::wgmma_commit();
#else
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

template <int N>
__device__ __forceinline__ void wgmma_wait() {
#ifdef JOBX_HOST_EMU
    jobx_emu::wgmma_wait(N);
#else
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}

// Generic-proxy writes to shared memory (st.shared, cp.async) made visible to the async proxy
// (wgmma's operand reads, TMA) before a barrier that orders them.
__device__ __forceinline__ void fence_proxy_async() {
#ifdef JOBX_HOST_EMU
    jobx_emu::fence_proxy_async();
#else
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// Named barrier `id` (1..15; 0 is __syncthreads) for COUNT threads, a multiple of 32.
template <int COUNT>
__device__ __forceinline__ void bar_named(int id) {
#ifdef JOBX_HOST_EMU
    jobx_emu::named_barrier(id, COUNT);
#else
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "n"(COUNT) : "memory");
#endif
}

// Arrives at named barrier `id` for COUNT threads without waiting for it (bar.arrive): the
// other side of a bar_named, as a producer that signals and goes on.
template <int COUNT>
__device__ __forceinline__ void bar_arrive_named(int id) {
#ifdef JOBX_HOST_EMU
    jobx_emu::named_arrive(id, COUNT);
#else
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "n"(COUNT) : "memory");
#endif
}

// A warpgroup's register allocation moved to N per thread (setmaxnreg, sm_90a; every warp of
// the warpgroup executes it). Warp-specialised kernels give their producer warpgroup few
// registers and their consumers many: the kernel's __launch_bounds__(threads, 1) fixes the
// count at entry (65536 / threads), which ptxas must know, or it ignores setmaxnreg (build.rs
// fails on its C7508 warning). (Host emulation: registers are the host's, nothing to move.)
template <int N>
__device__ __forceinline__ void regs_dealloc() {
#ifndef JOBX_HOST_EMU
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

template <int N>
__device__ __forceinline__ void regs_alloc() {
#ifndef JOBX_HOST_EMU
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

// mbarriers (gemm_sm90.cu's TMA pipeline, attention_sm90.cu's warp-specialised kernels).
// (host emulation: tools/cuda-emu/emu.cpp keeps each barrier's phase, pending arrivals and
// transaction bytes; a waiting thread yields until the phase it waits for completes)
__device__ __forceinline__ void mbar_init(unsigned bar, unsigned count) {
#ifdef JOBX_HOST_EMU
    jobx_emu::mbar_init(bar, count);
#else
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
#endif
}

__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity) {
#ifdef JOBX_HOST_EMU
    jobx_emu::mbar_wait(bar, parity);
#else
    asm volatile(
        "{\n"
        ".reg .pred P1;\n"
        "WAIT:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
        "@P1 bra.uni DONE;\n"
        "bra.uni WAIT;\n"
        "DONE:\n"
        "}\n" ::"r"(bar),
        "r"(parity)
        : "memory");
#endif
}

__device__ __forceinline__ void mbar_arrive(unsigned bar) {
#ifdef JOBX_HOST_EMU
    jobx_emu::mbar_arrive(bar, 0);
#else
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
#endif
}

// Stamps for the kernels' diagnostic traces (gemm_sm90.cu, attention_sm90.cu): %globaltimer in
// ns (places blocks against each other), %clock64 in the SM's cycles, the SM's id.
__device__ __forceinline__ unsigned long long trace_ns() {
#ifdef JOBX_HOST_EMU
    return jobx_emu::globaltimer();
#else
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
    return t;
#endif
}

__device__ __forceinline__ unsigned long long trace_clock() {
#ifdef JOBX_HOST_EMU
    return jobx_emu::clock64();
#else
    unsigned long long t;
    asm volatile("mov.u64 %0, %%clock64;\n" : "=l"(t));
    return t;
#endif
}

__device__ __forceinline__ unsigned trace_smid() {
#ifdef JOBX_HOST_EMU
    return jobx_emu::smid();
#else
    unsigned id;
    asm volatile("mov.u32 %0, %%smid;\n" : "=r"(id));
    return id;
#endif
}

