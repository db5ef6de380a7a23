// The GEMM epilogue shared by gemm.cu (mma.sync tiles) and gemm_sm90.cu (wgmma tiles), so the
// scale, LoRA-expand, accumulate and output-dtype rules of jobx_gemm_params live in one place.
#pragma once
#include "common.cuh"

// Epilogue for one output element: scales, LoRA expand, accumulate, store.
__device__ __forceinline__ void store_out(const jobx_gemm_params& p, long long r, long long c,
                                          float v) {
    if (r >= p.m || c >= p.n) return;
    if (p.w_scale) v *= p.w_scale[c];
    if (p.x_scale) v *= p.x_scale[r];
    if (p.lora_t) {
        const int id = p.lora_ids[r];
        if (id >= 0) {
            const float* t = p.lora_t + r * p.lora_r;
            const bf16* b = (const bf16*)p.lora_b + ((long long)id * p.n + c) * p.lora_r;
            float s = 0.0f;
            for (long long j = 0; j < p.lora_r; j++) s += t[j] * ld_bf16(b, j);
            v += s * p.lora_scale[id];
        }
    }
    const long long o = r * p.ldy + c;
    if (p.y_f32) {
        float* y = (float*)p.y;
        y[o] = p.accumulate ? y[o] + v : v;
    } else {
        bf16* y = (bf16*)p.y;
        st_bf16(y, o, p.accumulate ? ld_bf16(y, o) + v : v);
    }
}

// Two horizontally adjacent outputs (c, c + 1) of one row: one 4-byte store for the common bf16
// case with no LoRA (an accumulator fragment holds such pairs), else two store_out calls.
__device__ __forceinline__ void store_pair(const jobx_gemm_params& p, long long r, long long c,
                                           float v0, float v1) {
    if (r >= p.m) return;
    bf16* y = (bf16*)p.y;
    const long long o = r * p.ldy + c;
    if (!p.y_f32 && !p.lora_t && c + 1 < p.n && (((unsigned long long)(y + o)) & 3) == 0) {
        if (p.w_scale) {
            v0 *= p.w_scale[c];
            v1 *= p.w_scale[c + 1];
        }
        if (p.x_scale) {
            v0 *= p.x_scale[r];
            v1 *= p.x_scale[r];
        }
        __nv_bfloat162* y2 = (__nv_bfloat162*)(y + o);
        if (p.accumulate) {
            const float2 old = __bfloat1622float2(*y2);
            v0 += old.x;
            v1 += old.y;
        }
        *y2 = __floats2bfloat162_rn(v0, v1);  // .x (lower address) = v0
        return;
    }
    store_out(p, r, c, v0);
    store_out(p, r, c + 1, v1);
}

// With programmatic dependent launch (p.pdl): before pdl_enter, this block's weight rows
// [n0, n0 + cols) over k [k0, k1) toward L2, so that the weight stream of a decode-sized product
// starts while the previous kernel finishes (the weights are never written by a kernel).
__device__ __forceinline__ void prefetch_w_rows(const jobx_gemm_params& p, long long n0, long long cols,
                                                long long k0, long long k1) {
    if (!p.pdl || n0 >= p.n || k1 <= k0) return;
    const long long rows = p.n - n0 < cols ? p.n - n0 : cols;
    const long long esz = p.w_kind == JOBX_W_BF16 ? 2 : 1, row_bytes = p.k * esz;
    const char* w = (const char*)p.w;
    if (k0 == 0 && k1 == p.k) {
        prefetch_l2(w + n0 * row_bytes, rows * row_bytes);  // the rows are contiguous
    } else {
        for (long long r = n0; r < n0 + rows; r++) prefetch_l2(w + r * row_bytes + k0 * esz, (k1 - k0) * esz);
    }
}
