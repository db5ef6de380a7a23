// RMS layer norm, the T5LayerNorm / MistralRMSNorm forward:
//   variance = mean(x^2) in f32; y = w * (x * rsqrt(variance + eps)), rounded to bf16 once.
// HF computes the statistics in f32 from the bf16 input and multiplies by the bf16 weight after
// casting back (T5) or before (Mistral: weight * x.to(bf16)); with bf16 storage both round the
// normalised value to bf16 and then multiply, which is what this kernel does (two roundings).
// One block per row; the row is read twice (statistics, then output) from L2.
#include "common.cuh"

extern "C" __global__ void rms_norm_bf16(jobx_rms_norm_params p) {
    pdl_enter();
    __shared__ float scratch[32];
    const long long row = blockIdx.x;
    if (row >= p.rows) return;
    const bf16* x = (const bf16*)p.x + row * p.d;
    const bf16* w = (const bf16*)p.w;
    bf16* y = (bf16*)p.y + row * p.d;
    float ss = 0.0f;
    for (long long i = threadIdx.x; i < p.d; i += blockDim.x) {
        float v = ld_bf16(x, i);
        ss += v * v;
    }
    ss = block_sum(ss, scratch);
    const float r = rsqrtf(ss / (float)p.d + p.eps);
    for (long long i = threadIdx.x; i < p.d; i += blockDim.x) {
        // normalised value rounded to bf16 (HF: hidden_states.to(weight dtype)), then * weight
        float n = __bfloat162float(__float2bfloat16_rn(ld_bf16(x, i) * r));
        st_bf16(y, i, n * ld_bf16(w, i));
    }
}
