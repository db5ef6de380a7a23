// Row gathers and copies. Token embedding gather: y[t, :] = table[ids[t], :]. A bad id (outside the vocabulary) must not
// read out of bounds: its row is zeroed and *err set, which the Rust wrapper turns into an error
// naming the op. One block per token, 16-byte copies when the row allows.
#include "common.cuh"

// dst[0..n) = src[0..n) by the block's threads: 16-byte copies when n and both addresses allow.
__device__ __forceinline__ void copy_row(bf16* dst, const bf16* src, long long n) {
    if (n % 8 == 0 && ((unsigned long long)src % 16 == 0) && ((unsigned long long)dst % 16 == 0)) {
        const uint4* s4 = (const uint4*)src;
        uint4* d4 = (uint4*)dst;
        for (long long i = threadIdx.x; i < n / 8; i += blockDim.x) d4[i] = s4[i];
    } else {
        for (long long i = threadIdx.x; i < n; i += blockDim.x) dst[i] = src[i];
    }
}

extern "C" __global__ void embedding_bf16(jobx_embedding_params p) {
    pdl_enter();
    const long long t = blockIdx.x;
    if (t >= p.n) return;
    const long long id = p.ids[t];
    bf16* y = (bf16*)p.y + t * p.d;
    if (id < 0 || id >= p.vocab) {
        for (long long i = threadIdx.x; i < p.d; i += blockDim.x) y[i] = __float2bfloat16_rn(0.0f);
        if (threadIdx.x == 0) *p.err = 1;
        return;
    }
    copy_row(y, (const bf16*)p.table + id * p.d, p.d);
}

// Strided row copy or gather (jobx_copy_rows_params): blockIdx.x = row, blockIdx.y = a chunk of
// COPY_CHUNK columns (a beam reorder moves rows of up to millions of elements: spread over the
// SMs rather than one block per row), 16-byte copies when both rows allow (the chunk start is a
// multiple of 8, so it keeps the rows' alignment).
#define COPY_CHUNK 4096  // the wrapper's grid uses the same
extern "C" __global__ void copy_rows_bf16(jobx_copy_rows_params p) {
    pdl_enter();
    const long long r = blockIdx.x, c0 = (long long)blockIdx.y * COPY_CHUNK;
    if (r >= p.rows || c0 >= p.cols) return;
    const long long s = p.src_rows ? (long long)p.src_rows[r] : r;
    const long long n = p.cols - c0 < COPY_CHUNK ? p.cols - c0 : COPY_CHUNK;
    long long shift = 0;
    if (p.dst_pos) {
        const long long pos = *p.dst_pos;
        if (pos < 0 || pos > p.pos_max) {
            if (threadIdx.x == 0) *p.err = 1;
            return;
        }
        shift = pos * p.pos_stride;
    }
    copy_row((bf16*)p.dst + shift + r * p.dst_ld + c0, (const bf16*)p.src + s * p.src_ld + c0, n);
}
