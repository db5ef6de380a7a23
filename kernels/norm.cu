// RMS layer norm, the T5LayerNorm / MistralRMSNorm forward:
//   variance = mean(x^2) in f32; y = w * (x * rsqrt(variance + eps)), rounded to bf16 once.
// HF computes the statistics in f32 from the bf16 input and multiplies by the bf16 weight after
// casting back (T5) or before (Mistral: weight * x.to(bf16)); with bf16 storage both round the
// normalised value to bf16 and then multiply, which is what this kernel does (two roundings).
// One block per row.
//   - Vector form, when d is a multiple of 8 and x, w, y are 16-byte aligned (every row then is)
//     and the row fits RMS_VEC chunks of 8 per thread: each thread loads its chunks with 16-byte
//     loads into registers, so the row is read from memory once. This is every model's case
//     (d_model 512-4096); ops.rs sizes the block to the row (d / 8 threads, 32-256).
//   - Otherwise element by element, reading the row twice (statistics, then output).
// The arithmetic lives in rms_common.cuh: the decode GEMMs' `_rms` entry points (gemm.cu)
// repeat it, and this kernel's summation order, to give the same values without this launch.
#include "rms_common.cuh"

extern "C" __global__ void rms_norm_bf16(jobx_rms_norm_params p) {
    pdl_enter();
    __shared__ float scratch[32];
    const long long row = blockIdx.x;
    if (row >= p.rows) return;
    const bf16* x = (const bf16*)p.x + row * p.d;
    const bf16* w = (const bf16*)p.w;
    bf16* y = (bf16*)p.y + row * p.d;
    const long long chunks = p.d / 8;
    // the same for every thread of the block, so both branches' block_sum are reached by all
    const bool vec = p.d % 8 == 0 && chunks <= (long long)RMS_VEC * blockDim.x && aligned16(p.x) &&
                     aligned16(p.w) && aligned16(p.y);
    if (vec) {
        uint4 v[RMS_VEC];
        float ss = 0.0f;
#pragma unroll
        for (int j = 0; j < RMS_VEC; j++) {
            const long long c = threadIdx.x + (long long)j * blockDim.x;
            if (c < chunks) {
                v[j] = ((const uint4*)x)[c];
                ss = rms_ss8(v[j], ss);
            }
        }
        ss = block_sum(ss, scratch);
        const float r = rms_inv(ss, p.d, p.eps);
        if (p.inv && threadIdx.x == 0) p.inv[row] = r;
#pragma unroll
        for (int j = 0; j < RMS_VEC; j++) {
            const long long c = threadIdx.x + (long long)j * blockDim.x;
            if (c < chunks) {
                ((uint4*)y)[c] = rms_apply8(v[j], r, ((const uint4*)w)[c]);
            }
        }
        return;
    }
    float ss = 0.0f;
    for (long long i = threadIdx.x; i < p.d; i += blockDim.x) {
        float v = ld_bf16(x, i);
        ss += v * v;
    }
    ss = block_sum(ss, scratch);
    const float r = rms_inv(ss, p.d, p.eps);
    if (p.inv && threadIdx.x == 0) p.inv[row] = r;
    for (long long i = threadIdx.x; i < p.d; i += blockDim.x) st_bf16(y, i, rms_out(ld_bf16(x, i), r, ld_bf16(w, i)));
}
