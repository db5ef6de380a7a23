// Rotary position embedding (HF LlamaRotaryEmbedding + apply_rotary_pos_emb, "rotate_half"):
//   inv_freq[i] = 1 / theta^(2i/d)          (f32, i < d/2)
//   angle = pos * inv_freq[i]; cos/sin in f32, rounded to bf16 like HF's cos.to(dtype)
//   x1 = x[i], x2 = x[i + d/2]:  out[i] = x1*cos - x2*sin;  out[i + d/2] = x2*cos + x1*sin
// In place on the first heads*head_dim elements of each token's row (row stride ld: the q and k
// heads of a fused q|k|v projection in one call); one thread per (token, head, i).
#include "common.cuh"

extern "C" __global__ void rope_bf16(jobx_rope_params p) {
    pdl_enter();
    const long long half = p.head_dim / 2;
    const long long total = p.tokens * p.heads * half;
    const long long stride = (long long)gridDim.x * blockDim.x;
    bf16* x = (bf16*)p.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        const long long i = idx % half;
        const long long th = idx / half;  // token * heads + head
        const long long t = th / p.heads;
        // HF: inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))
        const float inv_freq = 1.0f / powf(p.theta, (float)(2 * i) / (float)p.head_dim);
        const float ang = (float)p.pos[t] * inv_freq;
        const float c = __bfloat162float(__float2bfloat16_rn(cosf(ang)));
        const float s = __bfloat162float(__float2bfloat16_rn(sinf(ang)));
        bf16* row = x + t * p.ld + (th - t * p.heads) * p.head_dim;
        const float x1 = ld_bf16(row, i), x2 = ld_bf16(row, i + half);
        st_bf16(row, i, x1 * c - x2 * s);
        st_bf16(row, i + half, x2 * c + x1 * s);
    }
}
