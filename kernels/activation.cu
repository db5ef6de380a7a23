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

// act(gate) rounded to bf16, times up (1 when not gated); the caller rounds the product.
__device__ __forceinline__ float act_out(float gate, float up, int kind) {
    return __bfloat162float(__float2bfloat16_rn(act(gate, kind))) * up;
}

// Rows x cols with row strides (jobx_act_params; a contiguous array is one row of n): rows over
// blockIdx.y, columns over x, both grid-strided, so no per-element division and any grid is
// correct. When cols and both strides are multiples of 8 and every pointer is 16-byte aligned
// (every model's MLP width), a thread takes 8 columns with 16-byte loads and stores; ops.rs then
// sizes the grid's x to cols / 8.
extern "C" __global__ void act_bf16(jobx_act_params p) {
    pdl_enter();
    const long long cstride = (long long)gridDim.x * blockDim.x;
    const long long c0 = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const bool vec = p.cols % 8 == 0 && p.ld_in % 8 == 0 && p.ld_y % 8 == 0 && aligned16(p.gate) &&
                     aligned16(p.up) && aligned16(p.y);
    for (long long r = blockIdx.y; r < p.rows; r += gridDim.y) {
        const bf16* g = (const bf16*)p.gate + r * p.ld_in;
        const bf16* u = p.up ? (const bf16*)p.up + r * p.ld_in : nullptr;
        bf16* y = (bf16*)p.y + r * p.ld_y;
        if (vec) {
            for (long long c = c0; c < p.cols / 8; c += cstride) {
                const uint4 gv = ((const uint4*)g)[c];
                // not gated: multiply by 1 (exact), so one code path
                const unsigned one2 = 0x3f803f80u;  // bf16 1.0, twice
                const uint4 uv = u ? ((const uint4*)u)[c] : make_uint4(one2, one2, one2, one2);
                const unsigned gs[4] = {gv.x, gv.y, gv.z, gv.w}, us[4] = {uv.x, uv.y, uv.z, uv.w};
                unsigned o[4];
#pragma unroll
                for (int i = 0; i < 4; i++)
                    o[i] = pack_bf16x2(act_out(bf16x2_lo(gs[i]), bf16x2_lo(us[i]), p.kind),
                                       act_out(bf16x2_hi(gs[i]), bf16x2_hi(us[i]), p.kind));
                ((uint4*)y)[c] = make_uint4(o[0], o[1], o[2], o[3]);
            }
            continue;
        }
        for (long long c = c0; c < p.cols; c += cstride) st_bf16(y, c, act_out(ld_bf16(g, c), u ? ld_bf16(u, c) : 1.0f, p.kind));
    }
}
