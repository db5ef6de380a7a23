// Feed-forward activations, elementwise over bf16 with f32 math:
//   relu (T5 "relu"), gelu_tanh (T5 gated-gelu: HF gelu_new / NewGELUActivation, the tanh form),
//   silu (Mistral MLP and T5 gated-silu); gated variants multiply by `up` (the wi_1 / up_proj
//   output). The product is rounded to bf16 once, like torch's act(gate) * up in bf16 rounds
//   act(gate) first: we round act(gate) to bf16 too so the two agree bit for bit where possible.
#include "common.cuh"

__device__ __forceinline__ float act(float x, int kind) {
    if (kind == JOBX_ACT_RELU) return fmaxf(x, 0.0f);
    if (kind == JOBX_ACT_GELU_TANH) {
        const float c = 0.7978845608028654f;  // sqrt(2/pi)
        return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
    }
    return x / (1.0f + expf(-x));  // silu
}

// Rows x cols with row strides (jobx_act_params; a contiguous array is one row of n): rows over
// blockIdx.y, columns over x, both grid-strided, so no per-element division.
extern "C" __global__ void act_bf16(jobx_act_params p) {
    pdl_enter();
    const long long cstride = (long long)gridDim.x * blockDim.x;
    for (long long r = blockIdx.y; r < p.rows; r += gridDim.y) {
        const bf16* g = (const bf16*)p.gate + r * p.ld_in;
        const bf16* u = p.up ? (const bf16*)p.up + r * p.ld_in : nullptr;
        bf16* y = (bf16*)p.y + r * p.ld_y;
        for (long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x; c < p.cols; c += cstride) {
            float a = __bfloat162float(__float2bfloat16_rn(act(ld_bf16(g, c), p.kind)));
            if (u) a *= ld_bf16(u, c);
            st_bf16(y, c, a);
        }
    }
}
