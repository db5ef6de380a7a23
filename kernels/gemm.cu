// Matrix products y[m, n] (+)= x[m, k] · w[n, k]^T on tensor cores (mma.sync, sm_80+), for every
// nn.Linear of the graphs, with the weight formats of jobx_gemm_params:
//   gemm_bf16   bf16 x, bf16 or int8 weights (weight-only int8: the int8 values are converted to
//               bf16 exactly while staging to shared memory; the per-channel scale is applied in
//               the epilogue), mma.m16n8k16 bf16 -> f32.
//   gemm_w8a8   int8 x (per-token scale) and int8 w (per-channel scale), mma.m16n8k32 s8 -> s32,
//               dequantised in the epilogue: y = acc * x_scale[m] * w_scale[n].
//   quantize_rows_int8  per-token absmax quantisation of bf16 activations for gemm_w8a8.
//   dequant_int8_bf16   weight-only int8 widened to bf16, for large products on the sm_90
//               wgmma tiles (end of file).
// Both GEMMs fuse the LoRA "expand" into the epilogue (SGMV style: one adapter per row).
//
// Tiling: 64x64 output tile per 128-thread block (4 warps, 2x2, 32x32 per warp), k staged through
// shared memory in slices of 32 (bf16) or 64 (int8), with 16-byte loads and the next slice held
// in registers when k and the pointers allow it. Rows of the shared tiles are padded by 16 bytes
// so the 8 rows a warp's fragment loads touch fall in different banks. Out-of-range rows and
// columns are staged as zeros, so any m, n, k works (k need not be a multiple of 8).
//   gemm_skinny8/32  the same product for m <= 8 / 32 rows (decode), one warp per output column
//               streaming the weight; chosen by the Rust wrapper.
//   gemm_skinny_tc  m <= 32 rows on tensor cores, warps splitting k.
//   gemm_skinny8_rms / gemm_skinny32_rms / gemm_skinny_tc_rms  the same kernels with the RMS norm
//               that precedes the product fused in (jobx_gemm_rms_params): each block computes
//               the x rows' inverse rms (rms_common.cuh: rms_norm_bf16's values exactly) and
//               normalises x as it loads it; a decode step saves the norm's launch. Opt-in
//               (Gpu::gemm_rms) until a GPU has timed it.
// Fragment layouts follow the PTX ISA "Matrix Fragments for mma.m16n8k16 / m16n8k32" tables:
//   lane = 4*g + t; A regs: (row g | g+8) x (k 2t.. | 2t+8..), B regs: k 2t.. | 2t+8.., column g;
//   C: rows g, g+8, columns 2t, 2t+1 (int8: k runs of 4 instead of 2, second half at +16).
#include "common.cuh"
#include "gemm_common.cuh"
#include "rms_common.cuh"

#define BM 64
#define BN 64
#define THREADS 128

__device__ __forceinline__ void mma_s8(int* c, const unsigned* a, const unsigned* b) {
#ifdef JOBX_HOST_EMU
    jobx_emu::mma_s8_16832(c, a, b);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// Stores one warp's 32x32 tile (2 x 4 mma tiles, C fragment layout) through store_out.
template <typename T>
__device__ __forceinline__ void store_tile(const jobx_gemm_params& p, long long m0, long long n0,
                                           int wm, int wn, int g, int t, T (&acc)[2][4][4]) {
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const long long r = m0 + wm + i * 16 + g, c = n0 + wn + j * 8 + 2 * t;
            store_out(p, r, c, (float)acc[i][j][0]);
            store_out(p, r, c + 1, (float)acc[i][j][1]);
            store_out(p, r + 8, c, (float)acc[i][j][2]);
            store_out(p, r + 8, c + 1, (float)acc[i][j][3]);
        }
}

template <typename T, int A, int B, int C>
__device__ __forceinline__ void zero_tile(T (&acc)[A][B][C]) {
#pragma unroll
    for (int i = 0; i < A; i++)
#pragma unroll
        for (int j = 0; j < B; j++)
#pragma unroll
            for (int e = 0; e < C; e++) acc[i][j][e] = 0;
}

#define BK 32
#define LDS (BK + 8)  // bf16 elements per shared row (80 bytes: conflict-free fragment loads)

// One BK-wide slice of the block's tile product from shared memory (both operands k-major).
__device__ __forceinline__ void mma_slice_bf16(const bf16 (&As)[BM][LDS], const bf16 (&Bs)[BN][LDS],
                                               int wm, int wn, int g, int t, float (&acc)[2][4][4]) {
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
        unsigned a[2][4], b[4][2];
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int r = wm + i * 16 + g;
            a[i][0] = *(const unsigned*)&As[r][kk + 2 * t];
            a[i][1] = *(const unsigned*)&As[r + 8][kk + 2 * t];
            a[i][2] = *(const unsigned*)&As[r][kk + 2 * t + 8];
            a[i][3] = *(const unsigned*)&As[r + 8][kk + 2 * t + 8];
        }
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int c = wn + j * 8 + g;
            b[j][0] = *(const unsigned*)&Bs[c][kk + 2 * t];
            b[j][1] = *(const unsigned*)&Bs[c][kk + 2 * t + 8];
        }
#pragma unroll
        for (int i = 0; i < 2; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) mma_16816(acc[i][j], a[i], b[j][0], b[j][1]);
    }
}

extern "C" __global__ void __launch_bounds__(THREADS) gemm_bf16(jobx_gemm_params p) {
    pdl_enter();
    __shared__ __align__(16) bf16 As[BM][LDS];
    __shared__ __align__(16) bf16 Bs[BN][LDS];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    const long long m0 = (long long)blockIdx.y * BM, n0 = (long long)blockIdx.x * BN;
    const bf16* x = (const bf16*)p.x;
    const bool int8w = p.w_kind == JOBX_W_INT8;
    float acc[2][4][4];
    zero_tile(acc);

    // Fast path (every model shape: k a multiple of 8, buffers from the allocator are 256-byte
    // aligned): each thread moves two 16-byte chunks of x and of w per slice (a 64x32 slice is
    // 256 chunks: row e / 4, columns 8 (e % 4)..), and the next slice's loads are issued before
    // the current slice's mma, so global latency overlaps the tensor-core work.
    const bool vec = (p.k & 7) == 0 && ((unsigned long long)p.x & 15) == 0 &&
                     ((unsigned long long)p.w & (int8w ? 7 : 15)) == 0;
    if (vec) {
        uint4 ra[2], rb[2];
        auto load = [&](long long k0) {
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const int e = tid + i * THREADS, r = e >> 2, c = (e & 3) * 8;
                const long long gr = m0 + r, gn = n0 + r, gk = k0 + c;
                ra[i] = (gr < p.m && gk < p.k) ? *(const uint4*)(x + gr * p.k + gk) : make_uint4(0, 0, 0, 0);
                if (gn < p.n && gk < p.k)
                    rb[i] = int8w ? i8x8_to_bf16x8(*(const uint2*)((const signed char*)p.w + gn * p.k + gk))
                                  : *(const uint4*)((const bf16*)p.w + gn * p.k + gk);
                else
                    rb[i] = make_uint4(0, 0, 0, 0);
            }
        };
        load(0);
        for (long long k0 = 0; k0 < p.k; k0 += BK) {
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const int e = tid + i * THREADS, r = e >> 2, c = (e & 3) * 8;
                *(uint4*)&As[r][c] = ra[i];
                *(uint4*)&Bs[r][c] = rb[i];
            }
            __syncthreads();
            if (k0 + BK < p.k) load(k0 + BK);
            mma_slice_bf16(As, Bs, wm, wn, g, t, acc);
            __syncthreads();
        }
        store_tile(p, m0, n0, wm, wn, g, t, acc);
        return;
    }

    // General path (odd k or unaligned views): element-wise staging, zero-filled outside.
    for (long long k0 = 0; k0 < p.k; k0 += BK) {
#pragma unroll 4
        for (int e = tid; e < BM * BK; e += THREADS) {
            const int r = e / BK, c = e % BK;
            const long long gr = m0 + r, gk = k0 + c;
            As[r][c] = (gr < p.m && gk < p.k) ? x[gr * p.k + gk] : __float2bfloat16_rn(0.0f);
            const long long gn = n0 + r;
            bf16 wv = __float2bfloat16_rn(0.0f);
            if (gn < p.n && gk < p.k) {
                if (int8w)
                    wv = __float2bfloat16_rn((float)((const signed char*)p.w)[gn * p.k + gk]);
                else
                    wv = ((const bf16*)p.w)[gn * p.k + gk];
            }
            Bs[r][c] = wv;
        }
        __syncthreads();
        mma_slice_bf16(As, Bs, wm, wn, g, t, acc);
        __syncthreads();
    }
    store_tile(p, m0, n0, wm, wn, g, t, acc);
}

// Skinny products (m <= MR rows: decode steps, a few beams or sequences). Tensor-core tiles of
// 64 rows would be almost all padding and leave most SMs idle (n / 64 blocks), so the time went
// to latency-bound k loops. Here the product is what it is, a stream over the weight: one warp
// per output column reads w[n, :] with 16-byte loads (8-byte for int8), and each lane keeps MR
// row sums in registers; x (m x k bf16, a few hundred KB at most) is re-read by every warp from
// L1/L2. Then warp reductions, and lane r runs the shared epilogue (scales, LoRA, accumulate)
// for row r.
#define SKINNY_WARPS 8

// The `_rms` kernels' x normalisation: the norm weight [k] and each x row's inverse rms
// (shared memory, from rms_rows_inv); unused (NORM false) in the plain kernels.
struct RmsX {
    const bf16* w;
    const float* rr;
};

// The 16-byte paths only (the `_rms` launches require them: Gpu::gemm_rms).
template <int MR, bool NORM>
__device__ __forceinline__ void gemm_skinny(const jobx_gemm_params& p, const RmsX& nx) {
    const int lane = threadIdx.x & 31;
    const long long n = (long long)blockIdx.x * SKINNY_WARPS + (threadIdx.x >> 5);
    if (n >= p.n) return;  // the whole warp leaves together
    const bf16* x = (const bf16*)p.x;
    const bool int8w = p.w_kind == JOBX_W_INT8;
    const bool vec = (p.k & 7) == 0 && ((unsigned long long)p.x & 15) == 0 &&
                     ((unsigned long long)p.w & (int8w ? 7 : 15)) == 0;
    float acc[MR], rrow[MR];
#pragma unroll
    for (int r = 0; r < MR; r++) {
        acc[r] = 0.0f;
        rrow[r] = NORM && r < p.m ? nx.rr[r] : 0.0f;
    }
    const long long kv = vec ? p.k : 0;
    for (long long k0 = (long long)lane * 8; k0 < kv; k0 += 256) {
        const uint4 gv = NORM ? *(const uint4*)(nx.w + k0) : make_uint4(0, 0, 0, 0);
        const uint4 wr = int8w ? i8x8_to_bf16x8(*(const uint2*)((const signed char*)p.w + n * p.k + k0))
                               : *(const uint4*)((const bf16*)p.w + n * p.k + k0);
        const unsigned wu[4] = {wr.x, wr.y, wr.z, wr.w};
        float wf[8];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            wf[2 * i] = __uint_as_float(wu[i] << 16);
            wf[2 * i + 1] = __uint_as_float(wu[i] & 0xffff0000u);
        }
#pragma unroll
        for (int r = 0; r < MR; r++) {
            if (r < p.m) {
                uint4 xr = *(const uint4*)(x + r * p.k + k0);
                if (NORM) xr = rms_apply8(xr, rrow[r], gv);
                const unsigned xu[4] = {xr.x, xr.y, xr.z, xr.w};
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    acc[r] += __uint_as_float(xu[i] << 16) * wf[2 * i];
                    acc[r] += __uint_as_float(xu[i] & 0xffff0000u) * wf[2 * i + 1];
                }
            }
        }
    }
    // element-wise (all of k when the fast path does not apply)
    for (long long kk = kv + lane; kk < p.k; kk += 32) {
        const float wv = int8w ? (float)((const signed char*)p.w)[n * p.k + kk]
                               : ld_bf16((const bf16*)p.w, n * p.k + kk);
#pragma unroll
        for (int r = 0; r < MR; r++)
            if (r < p.m) acc[r] += ld_bf16(x, r * p.k + kk) * wv;
    }
    // every lane gets every row's sum; lane r stores row r (one inlined epilogue, not MR)
    float mine = 0.0f;
#pragma unroll
    for (int r = 0; r < MR; r++) {
        const float v = warp_sum(acc[r]);
        if (lane == r) mine = v;
    }
    if (lane < p.m && lane < MR) store_out(p, lane, n, mine);
}

extern "C" __global__ void __launch_bounds__(SKINNY_WARPS * 32) gemm_skinny8(jobx_gemm_params p) {
    prefetch_w_rows(p, (long long)blockIdx.x * SKINNY_WARPS, SKINNY_WARPS, 0, p.k);
    pdl_enter();
    gemm_skinny<8, false>(p, RmsX{nullptr, nullptr});
}

// gemm_skinny8 on rms_norm(x) (jobx_gemm_rms_params).
extern "C" __global__ void __launch_bounds__(SKINNY_WARPS * 32) gemm_skinny8_rms(jobx_gemm_rms_params p) {
    prefetch_w_rows(p.g, (long long)blockIdx.x * SKINNY_WARPS, SKINNY_WARPS, 0, p.g.k);
    pdl_enter();
    __shared__ float part[32][8], rr[32];
    rms_rows_inv<4>((const bf16*)p.g.x, p.g.m, p.g.k, p.threads, p.eps, part, rr, p.inv);
    gemm_skinny<8, true>(p.g, RmsX{(const bf16*)p.norm_w, rr});
}

// Up to 32 rows: re-reading x from L1/L2 per warp became the bottleneck (a warp per column reads
// all of x: 180 KB at k = 2816), so the 8 warps of a block share x through shared memory, 256 k
// at a time, and each lane's next weight chunk is loaded before the block waits at the barrier.
#define SKX 256
__device__ __forceinline__ uint4 ld_w8(const jobx_gemm_params& p, bool int8w, long long n, long long kk) {
    if (n >= p.n || kk >= p.k) return make_uint4(0, 0, 0, 0);
    return int8w ? i8x8_to_bf16x8(*(const uint2*)((const signed char*)p.w + n * p.k + kk))
                 : *(const uint4*)((const bf16*)p.w + n * p.k + kk);
}

// The shared-x loop of gemm_skinny32 (16-byte paths), x rows normalised as they are staged
// with NORM.
template <bool NORM>
__device__ __forceinline__ void skinny32_shared_x(const jobx_gemm_params& p, bool int8w, const RmsX& nx) {
    __shared__ __align__(16) bf16 xs[32][SKX + 8];
    const int tid = threadIdx.x, lane = tid & 31;
    const long long n = (long long)blockIdx.x * SKINNY_WARPS + (tid >> 5);
    const bf16* x = (const bf16*)p.x;
    float acc[32];
#pragma unroll
    for (int r = 0; r < 32; r++) acc[r] = 0.0f;
    uint4 wnext = ld_w8(p, int8w, n, (long long)lane * 8);
    for (long long k0 = 0; k0 < p.k; k0 += SKX) {
        __syncthreads();  // the previous chunk of x is consumed
        for (int e = tid; e < 32 * (SKX / 8); e += SKINNY_WARPS * 32) {
            const int r = e / (SKX / 8), c = (e % (SKX / 8)) * 8;
            const long long kk = k0 + c;
            uint4 xv = (r < p.m && kk < p.k) ? *(const uint4*)(x + r * p.k + kk) : make_uint4(0, 0, 0, 0);
            if (NORM && r < p.m && kk < p.k) xv = rms_apply8(xv, nx.rr[r], *(const uint4*)(nx.w + kk));
            *(uint4*)&xs[r][c] = xv;
        }
        const uint4 wr = wnext;
        wnext = ld_w8(p, int8w, n, k0 + SKX + (long long)lane * 8);
        __syncthreads();
        const unsigned wu[4] = {wr.x, wr.y, wr.z, wr.w};
        float wf[8];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            wf[2 * i] = __uint_as_float(wu[i] << 16);
            wf[2 * i + 1] = __uint_as_float(wu[i] & 0xffff0000u);
        }
#pragma unroll
        for (int r = 0; r < 32; r++) {
            if (r < p.m) {
                const uint4 xr = *(const uint4*)&xs[r][lane * 8];
                const unsigned xu[4] = {xr.x, xr.y, xr.z, xr.w};
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    acc[r] += __uint_as_float(xu[i] << 16) * wf[2 * i];
                    acc[r] += __uint_as_float(xu[i] & 0xffff0000u) * wf[2 * i + 1];
                }
            }
        }
    }
    if (n >= p.n) return;  // after the last barrier: the whole warp
    float mine = 0.0f;
#pragma unroll
    for (int r = 0; r < 32; r++) {
        const float v = warp_sum(acc[r]);
        if (lane == r) mine = v;
    }
    if (lane < p.m) store_out(p, lane, n, mine);
}

extern "C" __global__ void __launch_bounds__(SKINNY_WARPS * 32) gemm_skinny32(jobx_gemm_params p) {
    prefetch_w_rows(p, (long long)blockIdx.x * SKINNY_WARPS, SKINNY_WARPS, 0, p.k);
    pdl_enter();
    const bool int8w = p.w_kind == JOBX_W_INT8;
    const bool vec = (p.k & 7) == 0 && ((unsigned long long)p.x & 15) == 0 &&
                     ((unsigned long long)p.w & (int8w ? 7 : 15)) == 0;
    if (!vec) {  // block-uniform
        gemm_skinny<32, false>(p, RmsX{nullptr, nullptr});
        return;
    }
    skinny32_shared_x<false>(p, int8w, RmsX{nullptr, nullptr});
}

// gemm_skinny32 on rms_norm(x) (jobx_gemm_rms_params; the 16-byte paths, which the launch
// guarantees).
extern "C" __global__ void __launch_bounds__(SKINNY_WARPS * 32) gemm_skinny32_rms(jobx_gemm_rms_params p) {
    prefetch_w_rows(p.g, (long long)blockIdx.x * SKINNY_WARPS, SKINNY_WARPS, 0, p.g.k);
    pdl_enter();
    __shared__ float part[32][8], rr[32];
    rms_rows_inv<16>((const bf16*)p.g.x, p.g.m, p.g.k, p.threads, p.eps, part, rr, p.inv);
    skinny32_shared_x<true>(p.g, p.g.w_kind == JOBX_W_INT8, RmsX{(const bf16*)p.norm_w, rr});
}

// gemm_skinny_tc: the skinny product (m <= 32 rows) on tensor cores (mma.m16n8k16, f32
// accumulation) instead of gemm_skinny32's CUDA-core FMAs, which also read every x element from
// shared memory once per column (estimated to bound it well above the weight-streaming time at
// 32 rows). Chosen only when `Gpu::skinny_tc` is set (JOBX_SKINNY_TC=1) until a GPU run has
// checked and timed it against gemm_skinny32 and the 64x64 tiles.
// Block: 4 or 8 warps (blockDim.x / 32, the wrapper's choice: 8 when 16-column blocks would not
// fill the SMs, e.g. n = 1024), 16 output columns (two n8 tiles) and all m rows (two m16 tiles,
// the second skipped when m <= 16); the warps split k in 32-wide chunks (chunk c to warp
// c % warps, TC_UNROLL chunks' loads in flight per warp) and add their partial tiles through
// shared memory at the end. Split over k (gridDim.y > 1, opt-in `Gpu::gemm_splitk`): each of a
// column tile's gridDim.y blocks takes a share of the chunks, and the last to finish adds the
// partial tiles (split_ws, in split order: deterministic) and stores. Why: at n = 1024 the
// 64 column tiles leave half the SMs of an H100 idle; the run-5 profile put these products
// (T5-Large's o, cross q/o and wo projections at batch 32) at 13 us each for 2-6 MB of weight,
// 28% of a decode step's device time.
// The sum over k does not care about order, so each lane loads 8 consecutive k (16 bytes) of one
// weight row and of its x rows and spends them on two mmas: for the chunk at k0, lane (g, t)
// holds k0 + 8t .. k0 + 8t + 7; the first mma takes k0 + 8t + {0,1} as its fragment's pair
// (2t, 2t+1) and k0 + 8t + {2,3} as (2t+8, 2t+9), the second mma k0 + 8t + {4..7} likewise.
// A and B use the same mapping, so every product still pairs x and w at the same k. Rows past m,
// columns past n and k past the end load as zeros; element-wise loads when k or the pointers do
// not allow 16-byte (int8: 8-byte) loads.
#define TC_WARPS 8  // at most
#define TC_BN 16
#define TC_UNROLL 4

__device__ __forceinline__ unsigned pack_u16x2(unsigned short lo, unsigned short hi) {
    return (unsigned)lo | ((unsigned)hi << 16);
}

// 8 bf16 from `row` + kk of a row of k elements, packed in k order (zeros past k): one 16-byte
// load with VEC, else element-wise.
template <bool VEC>
__device__ __forceinline__ uint4 tc_ld8(const bf16* row, long long kk, long long k) {
    if (VEC) return *(const uint4*)(row + kk);
    unsigned short h[8];
#pragma unroll
    for (int i = 0; i < 8; i++) h[i] = kk + i < k ? __bfloat16_as_ushort(row[kk + i]) : (unsigned short)0;
    return make_uint4(pack_u16x2(h[0], h[1]), pack_u16x2(h[2], h[3]), pack_u16x2(h[4], h[5]),
                      pack_u16x2(h[6], h[7]));
}

// 8 bf16 of x row r from k index kk (zeros past m or k).
template <bool VEC>
__device__ __forceinline__ uint4 tc_x8(const jobx_gemm_params& p, long long r, long long kk) {
    if (r >= p.m || kk >= p.k) return make_uint4(0, 0, 0, 0);
    return tc_ld8<VEC>((const bf16*)p.x + r * p.k, kk, p.k);
}

// 8 weights of column n from k index kk as bf16 (int8 converted exactly; scale in the epilogue).
template <bool INT8, bool VEC>
__device__ __forceinline__ uint4 tc_w8(const jobx_gemm_params& p, long long n, long long kk) {
    if (n >= p.n || kk >= p.k) return make_uint4(0, 0, 0, 0);
    if (INT8) {
        const signed char* w = (const signed char*)p.w + n * p.k + kk;
        if (VEC) return i8x8_to_bf16x8(*(const uint2*)w);
        unsigned b[2] = {0u, 0u};
#pragma unroll
        for (int i = 0; i < 8; i++)
            if (kk + i < p.k) b[i >> 2] |= (unsigned)(unsigned char)w[i] << (8 * (i & 3));
        return i8x8_to_bf16x8(make_uint2(b[0], b[1]));
    }
    return tc_ld8<VEC>((const bf16*)p.w + n * p.k, kk, p.k);
}

// This block's 32-wide k chunks [c_begin, c_end): all of them, or (split, gridDim.y > 1) its
// share (balanced: shares differ by at most one chunk, none empty when chunks >= splits).
__device__ __forceinline__ void tc_chunk_share(const jobx_gemm_params& p, long long& c_begin, long long& c_end) {
    const long long chunks = (p.k + 31) / 32;
    c_begin = blockIdx.y * chunks / gridDim.y;
    c_end = (blockIdx.y + 1) * chunks / gridDim.y;
}

// The weight kind and the load width are template parameters, so the unrolled load loop is
// straight-line code (one copy per combination, chosen once per block).
// NORM (the `_rms` kernel, VEC only): each x chunk normalised once loaded.
template <bool INT8, bool VEC, bool NORM>
__device__ __forceinline__ void skinny_tc(const jobx_gemm_params& p, float (&red)[TC_WARPS - 1][16][32],
                                          const RmsX& nx) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, warps = blockDim.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const long long n0 = (long long)blockIdx.x * TC_BN;
    const bool two_m = p.m > 16;  // block-uniform
    float acc[2][2][4], rrow[4];
    zero_tile(acc);
#pragma unroll
    for (int i = 0; i < 4; i++) rrow[i] = NORM && g + 8 * i < p.m ? nx.rr[g + 8 * i] : 0.0f;
    long long c_begin, c_end;
    tc_chunk_share(p, c_begin, c_end);
    for (long long c0 = c_begin + warp; c0 < c_end; c0 += (long long)warps * TC_UNROLL) {
        // issue every load of TC_UNROLL chunks first (memory-level parallelism), then the mmas
        uint4 wv[TC_UNROLL][2], xv[TC_UNROLL][4], gv[TC_UNROLL];
#pragma unroll
        for (int u = 0; u < TC_UNROLL; u++) {
            const long long kk = (c0 + (long long)u * warps) * 32 + 8 * t;
            const bool live = c0 + (long long)u * warps < c_end;
#pragma unroll
            for (int j = 0; j < 2; j++)
                wv[u][j] = live ? tc_w8<INT8, VEC>(p, n0 + 8 * j + g, kk) : make_uint4(0, 0, 0, 0);
#pragma unroll
            for (int i = 0; i < 4; i++)
                xv[u][i] = live && (i < 2 || two_m) ? tc_x8<VEC>(p, g + 8 * i, kk) : make_uint4(0, 0, 0, 0);
            if (NORM) gv[u] = live && kk < p.k ? *(const uint4*)(nx.w + kk) : make_uint4(0, 0, 0, 0);
        }
        if (NORM) {
            // rows past m and k past the end were loaded as zeros and stay zeros
#pragma unroll
            for (int u = 0; u < TC_UNROLL; u++)
#pragma unroll
                for (int i = 0; i < 4; i++) xv[u][i] = rms_apply8(xv[u][i], rrow[i], gv[u]);
        }
#pragma unroll
        for (int u = 0; u < TC_UNROLL; u++) {
#pragma unroll
            for (int h = 0; h < 2; h++) {  // the two mmas of a chunk: k0 + 8t + 4h .. + 3
                unsigned b[2][2];
#pragma unroll
                for (int j = 0; j < 2; j++) {
                    const unsigned wu[4] = {wv[u][j].x, wv[u][j].y, wv[u][j].z, wv[u][j].w};
                    b[j][0] = wu[2 * h];
                    b[j][1] = wu[2 * h + 1];
                }
#pragma unroll
                for (int i = 0; i < 2; i++) {
                    if (i == 1 && !two_m) break;
                    // rows g and g + 8 of m tile i: x rows 16i + g and 16i + g + 8
                    const uint4 lo = xv[u][2 * i], hi = xv[u][2 * i + 1];
                    const unsigned lu[4] = {lo.x, lo.y, lo.z, lo.w};
                    const unsigned hu[4] = {hi.x, hi.y, hi.z, hi.w};
                    const unsigned a[4] = {lu[2 * h], hu[2 * h], lu[2 * h + 1], hu[2 * h + 1]};
#pragma unroll
                    for (int j = 0; j < 2; j++) mma_16816(acc[i][j], a, b[j][0], b[j][1]);
                }
            }
        }
    }
    // add the warps' partial tiles; warp 0 runs the epilogue
    if (warp > 0) {
#pragma unroll
        for (int i = 0; i < 2; i++)
#pragma unroll
            for (int j = 0; j < 2; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) red[warp - 1][(i * 2 + j) * 4 + e][lane] = acc[i][j][e];
    }
    __syncthreads();
    if (warp != 0) return;
#pragma unroll
    for (int w = 0; w < TC_WARPS - 1; w++) {
        if (w + 1 >= warps) break;
#pragma unroll
        for (int i = 0; i < 2; i++)
#pragma unroll
            for (int j = 0; j < 2; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) acc[i][j][e] += red[w][(i * 2 + j) * 4 + e][lane];
    }
    if (gridDim.y > 1) {
        // split over k: publish this block's partial tile; the last block of the column tile to
        // arrive adds all of them in split order (the same sum whichever block is last) and runs
        // the epilogue (CUDA's threadFenceReduction pattern: store, fence, count)
        const long long tile_ws = (long long)blockIdx.x * gridDim.y * 512;
        float* mine = p.split_ws + tile_ws + (long long)blockIdx.y * 512;
#pragma unroll
        for (int i = 0; i < 2; i++)
#pragma unroll
            for (int j = 0; j < 2; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) __stcg(&mine[((i * 2 + j) * 4 + e) * 32 + lane], acc[i][j][e]);
        __threadfence();
        __syncwarp();  // every lane's fenced stores before lane 0 counts the block in
        // lane 0 counts in and fences after seeing the count (the acquire side), then the warp
        // meets it before reading the others' partial tiles from L2
        unsigned arrived = 0;
        if (lane == 0) {
            arrived = atomicAdd(&p.split_cnt[blockIdx.x], 1u);
            __threadfence();
        }
        __syncwarp();
        arrived = __shfl_sync(0xffffffffu, arrived, 0);
        if (arrived != gridDim.y - 1) return;
        __threadfence();
        zero_tile(acc);
        for (unsigned sp = 0; sp < gridDim.y; sp++) {
            const float* part = p.split_ws + tile_ws + (long long)sp * 512;
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int j = 0; j < 2; j++)
#pragma unroll
                    for (int e = 0; e < 4; e++) acc[i][j][e] += __ldcg(&part[((i * 2 + j) * 4 + e) * 32 + lane]);
        }
        if (lane == 0) p.split_cnt[blockIdx.x] = 0;  // ready for the next launch
    }
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const long long r = 16 * i + g, c = n0 + 8 * j + 2 * t;
            if (c < p.n) {
                store_pair(p, r, c, acc[i][j][0], acc[i][j][1]);
                store_pair(p, r + 8, c, acc[i][j][2], acc[i][j][3]);
            }
        }
}

// gemm_skinny_tc's weight rows toward L2 before pdl_enter (p.pdl): this block's 16 columns
// over its k chunks (tc_chunk_share, as skinny_tc reads them).
__device__ __forceinline__ void prefetch_skinny_tc(const jobx_gemm_params& p) {
    long long c0, c1;
    tc_chunk_share(p, c0, c1);
    prefetch_w_rows(p, (long long)blockIdx.x * TC_BN, TC_BN, c0 * 32, c1 * 32 < p.k ? c1 * 32 : p.k);
}

extern "C" __global__ void __launch_bounds__(TC_WARPS * 32) gemm_skinny_tc(jobx_gemm_params p) {
    prefetch_skinny_tc(p);
    pdl_enter();
    // partial tiles of warps 1..: [warp][(m tile * 2 + n tile) * 4 + c reg][lane] (lane fastest:
    // no bank conflicts)
    __shared__ float red[TC_WARPS - 1][16][32];
    const bool int8w = p.w_kind == JOBX_W_INT8;
    const bool vec = (p.k & 7) == 0 && ((unsigned long long)p.x & 15) == 0 &&
                     ((unsigned long long)p.w & (int8w ? 7 : 15)) == 0;
    const RmsX none{nullptr, nullptr};
    if (int8w) {
        if (vec) skinny_tc<true, true, false>(p, red, none);
        else skinny_tc<true, false, false>(p, red, none);
    } else {
        if (vec) skinny_tc<false, true, false>(p, red, none);
        else skinny_tc<false, false, false>(p, red, none);
    }
}

// __maxnreg__ came with CUDA 12.4; an older nvcc builds the kernel without the cap (172
// registers: 2 blocks of 4 warps per SM instead of 3)
#if defined(__CUDACC_VER_MAJOR__) && !defined(JOBX_HOST_EMU) && \
    (__CUDACC_VER_MAJOR__ * 100 + __CUDACC_VER_MINOR__ < 1204)
#define __maxnreg__(n) __launch_bounds__(TC_WARPS * 32)
#endif

// gemm_skinny_tc on rms_norm(x) (jobx_gemm_rms_params; the 16-byte paths, which the launch
// guarantees). Held to 160 registers, so that its 4-warp blocks fit 3 to an SM as
// gemm_skinny_tc's do (172 without).
extern "C" __global__ void __maxnreg__(160) gemm_skinny_tc_rms(jobx_gemm_rms_params p) {
    prefetch_skinny_tc(p.g);
    pdl_enter();
    __shared__ float red[TC_WARPS - 1][16][32];
    __shared__ float part[32][8], rr[32];
    rms_rows_inv<16>((const bf16*)p.g.x, p.g.m, p.g.k, p.threads, p.eps, part, rr, p.inv);
    const RmsX nx{(const bf16*)p.norm_w, rr};
    if (p.g.w_kind == JOBX_W_INT8) skinny_tc<true, true, true>(p.g, red, nx);
    else skinny_tc<false, true, true>(p.g, red, nx);
}

#undef BK
#undef LDS

#define BK8 64
#define LDS8 (BK8 + 16)  // int8 elements per shared row (80 bytes)

extern "C" __global__ void __launch_bounds__(THREADS) gemm_w8a8(jobx_gemm_params p) {
    pdl_enter();
    __shared__ __align__(16) signed char As[BM][LDS8];
    __shared__ __align__(16) signed char Bs[BN][LDS8];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    const long long m0 = (long long)blockIdx.y * BM, n0 = (long long)blockIdx.x * BN;
    const signed char* x = (const signed char*)p.x;
    const signed char* w = (const signed char*)p.w;
    int acc[2][4][4];
    zero_tile(acc);
    // Fast path as in gemm_bf16: 16-byte chunks (a 64x64 int8 slice is 256 of them, two per
    // thread), next slice loaded into registers while the current one is multiplied.
    const bool vec = (p.k & 15) == 0 && ((unsigned long long)p.x & 15) == 0 &&
                     ((unsigned long long)p.w & 15) == 0;
    uint4 ra[2], rb[2];
    auto load = [&](long long k0) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int e = tid + i * THREADS, r = e >> 2, c = (e & 3) * 16;
            const long long gr = m0 + r, gn = n0 + r, gk = k0 + c;
            ra[i] = (gr < p.m && gk < p.k) ? *(const uint4*)(x + gr * p.k + gk) : make_uint4(0, 0, 0, 0);
            rb[i] = (gn < p.n && gk < p.k) ? *(const uint4*)(w + gn * p.k + gk) : make_uint4(0, 0, 0, 0);
        }
    };
    if (vec) load(0);

    for (long long k0 = 0; k0 < p.k; k0 += BK8) {
        if (vec) {
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const int e = tid + i * THREADS, r = e >> 2, c = (e & 3) * 16;
                *(uint4*)&As[r][c] = ra[i];
                *(uint4*)&Bs[r][c] = rb[i];
            }
        } else {
#pragma unroll 4
            for (int e = tid; e < BM * BK8; e += THREADS) {
                const int r = e / BK8, c = e % BK8;
                const long long gr = m0 + r, gn = n0 + r, gk = k0 + c;
                As[r][c] = (gr < p.m && gk < p.k) ? x[gr * p.k + gk] : (signed char)0;
                Bs[r][c] = (gn < p.n && gk < p.k) ? w[gn * p.k + gk] : (signed char)0;
            }
        }
        __syncthreads();
        if (vec && k0 + BK8 < p.k) load(k0 + BK8);
#pragma unroll
        for (int kk = 0; kk < BK8; kk += 32) {
            unsigned a[2][4], b[4][2];
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const int r = wm + i * 16 + g;
                a[i][0] = *(const unsigned*)&As[r][kk + 4 * t];
                a[i][1] = *(const unsigned*)&As[r + 8][kk + 4 * t];
                a[i][2] = *(const unsigned*)&As[r][kk + 4 * t + 16];
                a[i][3] = *(const unsigned*)&As[r + 8][kk + 4 * t + 16];
            }
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int c = wn + j * 8 + g;
                b[j][0] = *(const unsigned*)&Bs[c][kk + 4 * t];
                b[j][1] = *(const unsigned*)&Bs[c][kk + 4 * t + 16];
            }
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) mma_s8(acc[i][j], a[i], b[j]);
        }
        __syncthreads();
    }
    // int32 accumulation is exact (|acc| <= 127*127*k < 2^31 for k < 133k)
    store_tile(p, m0, n0, wm, wn, g, t, acc);
}

// One block per row: absmax (f32), scale = absmax / 127, q = rint(x / scale) (round half to even,
// like torch.round), clamped to [-127, 127].
extern "C" __global__ void quantize_rows_int8(jobx_quantize_params p) {
    pdl_enter();
    __shared__ float scratch[32];
    const long long row = blockIdx.x;
    if (row >= p.m) return;
    const bf16* x = (const bf16*)p.x + row * p.k;
    signed char* q = (signed char*)p.q + row * p.k;
    float mx = 0.0f;
    for (long long i = threadIdx.x; i < p.k; i += blockDim.x) mx = fmaxf(mx, fabsf(ld_bf16(x, i)));
    // block max through the sum helper's scratch: reduce per warp, then across warps
    mx = warp_max(mx);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = mx;
    __syncthreads();
    mx = (threadIdx.x & 31) < (blockDim.x >> 5) ? scratch[threadIdx.x & 31] : 0.0f;
    mx = warp_max(mx);
    const float scale = mx / 127.0f;
    const float inv = mx > 0.0f ? 127.0f / mx : 0.0f;
    for (long long i = threadIdx.x; i < p.k; i += blockDim.x) {
        float v = rintf(ld_bf16(x, i) * inv);
        q[i] = (signed char)fminf(fmaxf(v, -127.0f), 127.0f);
    }
    if (threadIdx.x == 0) p.scale[row] = scale;
}

// The weight-only int8 path for large products on sm_90 (ops.rs, Gpu::gemm): the int8 values
// widened to bf16 once per call, so that the product runs on the wgmma tiles (gemm_tma_bf16_*)
// with w_scale applied in their epilogue: the same arithmetic as gemm_bf16 with int8 weights
// (exact bf16 weights, f32 accumulation, scale in f32, one rounding), at the tiles' speed.
// 8 elements a thread with an 8-byte load and a 16-byte store where out and w are aligned, one
// element at a time otherwise and for the tail; grid-stride.
extern "C" __global__ void dequant_int8_bf16(jobx_dequant_params p) {
    pdl_enter();
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const bool vec = (((unsigned long long)p.w) & 7) == 0 && (((unsigned long long)p.out) & 15) == 0;
    const long long groups = vec ? p.len / 8 : 0;
    for (long long gi = tid; gi < groups; gi += stride)
        ((uint4*)p.out)[gi] = i8x8_to_bf16x8(((const uint2*)p.w)[gi]);
    const signed char* w = (const signed char*)p.w;
    bf16* out = (bf16*)p.out;
    for (long long i = groups * 8 + tid; i < p.len; i += stride) out[i] = __float2bfloat16_rn((float)w[i]);
}
