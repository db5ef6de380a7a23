// LoRA "shrink" for batched multi-adapter requests (SGMV style): t[m, :] = x[m, :] · A[id_m]^T,
// one adapter per row (-1: no adapter, t = 0). The "expand" (t · B^T · scale) is fused into the
// GEMM epilogue (gemm.cu), so a LoRA projection is this small kernel plus one GEMM pass.
// One warp per (row, rank index): ranks are small (8-64), rows long (k = d_model).
#include "common.cuh"

extern "C" __global__ void lora_shrink_bf16(jobx_lora_shrink_params p) {
    pdl_enter();
    const long long warps = ((long long)gridDim.x * blockDim.x) >> 5;
    const int lane = threadIdx.x & 31;
    for (long long wi = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5; wi < p.m * p.r;
         wi += warps) {
        const long long row = wi / p.r, j = wi % p.r;
        const int id = p.ids[row];
        float s = 0.0f;
        if (id >= 0) {
            const bf16* x = (const bf16*)p.x + row * p.k;
            const bf16* a = (const bf16*)p.a + ((long long)id * p.r + j) * p.k;
            for (long long i = lane; i < p.k; i += 32) s += ld_bf16(x, i) * ld_bf16(a, i);
            s = warp_sum(s);
        }
        if (lane == 0) p.t[row * p.r + j] = s;
    }
}
