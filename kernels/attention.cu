// Attention for every variant the graphs use, flash-style (one pass over the keys with an online
// softmax, scores never written to memory):
//   T5 encoder: bidirectional relative position bias + key padding mask, no 1/sqrt(d) scale;
//   T5 decoder self-attention over the KV cache: unidirectional bias, causal;
//   cross-attention: padding mask, K/V rows shared by beams (kv_batch);
//   Mistral: GQA (kv_heads < heads), 1/sqrt(d) scale, causal, sliding window, KV cache offset.
// Work split: a block of WARPS warps handles WARPS consecutive queries of one (batch, head); keys
// are staged 32 at a time in shared memory (bf16, rows padded to an odd number of 32-bit words so
// that "one lane per key" reads are bank-conflict free). Per 32-key chunk each lane scores one key
// (full dot product against the warp's query held in shared memory as f32), the warp takes the
// chunk max and sum by shuffles, rescales its running output, and accumulates p·V with each lane
// owning dk/32 output dimensions. Softmax statistics and accumulation are f32.
// Requires dk <= 128 (the launcher checks); fully masked query rows output zeros.
#include "attention_common.cuh"

#define WARPS 4
#define KT 32
#define DMAX 128
#define KPAD 2  // bf16 elements of padding per staged row


extern "C" __global__ void __launch_bounds__(WARPS * 32) attention_bf16(jobx_attention_params p) {
    pdl_enter();
    __shared__ float qs[WARPS][DMAX];
    __shared__ __align__(4) bf16 ks[KT][DMAX + KPAD];
    __shared__ __align__(4) bf16 vs[KT][DMAX + KPAD];
    __shared__ float kscl[KT], vscl[KT];  // int8 K/V: the staged keys' scales (else 1)
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const long long b = blockIdx.z, h = blockIdx.y;
    const long long i0 = (long long)blockIdx.x * WARPS;
    const long long i = i0 + warp;
    const bool live = i < p.tq;
    const long long kb = p.kv_batch ? p.kv_batch[b] : b;
    const long long kh = h / (p.heads / p.kv_heads);
    const bool q8 = p.k_scale != nullptr;
    const long long kofs = kb * p.k_sb + kh * p.k_sh, vofs = kb * p.v_sb + kh * p.v_sh;
    const bf16* q = (const bf16*)p.q + b * p.q_sb + h * p.q_sh;
    const bf16* k = (const bf16*)p.k + kofs;
    const bf16* v = (const bf16*)p.v + vofs;
    const signed char* k8 = (const signed char*)p.k + kofs;
    const signed char* v8 = (const signed char*)p.v + vofs;
    const long long dk = p.dk;
    if (live)
        for (long long d = lane; d < dk; d += 32) qs[warp][d] = ld_bf16(q, i * p.q_st + d);
    // Keys this block can see at all: causal limits the end, a window the start.
    const long long q_off = query_offset(p);
    long long last_q = i0 + WARPS - 1 < p.tq - 1 ? i0 + WARPS - 1 : p.tq - 1;
    long long kend = p.tk;
    if (p.causal && q_off + last_q + 1 < kend) kend = q_off + last_q + 1;
    long long kstart = 0;
    if (p.window > 0 && q_off + i0 - p.window + 1 > 0) kstart = q_off + i0 - p.window + 1;
    kstart = kstart / KT * KT;

    float m = -INFINITY, l = 0.0f, acc[DMAX / 32];
#pragma unroll
    for (int e = 0; e < DMAX / 32; e++) acc[e] = 0.0f;
    const long long qpos = q_off + i;

    for (long long j0 = kstart; j0 < kend; j0 += KT) {
        __syncthreads();  // previous chunk fully consumed (and qs written, first time)
        for (long long e = threadIdx.x; e < KT * dk; e += WARPS * 32) {
            const long long r = e / dk, d = e % dk, j = j0 + r;
            const bf16 z = __float2bfloat16_rn(0.0f);
            if (q8) {  // the int8 values (exact in bf16); scales applied to scores and weights
                ks[r][d] = j < p.tk ? __float2bfloat16_rn((float)k8[j * p.k_st + d]) : z;
                vs[r][d] = j < p.tk ? __float2bfloat16_rn((float)v8[j * p.v_st + d]) : z;
            } else {
                ks[r][d] = j < p.tk ? k[j * p.k_st + d] : z;
                vs[r][d] = j < p.tk ? v[j * p.v_st + d] : z;
            }
        }
        if (threadIdx.x < KT) {
            const long long j = j0 + threadIdx.x;
            kscl[threadIdx.x] = q8 && j < p.tk ? p.k_scale[(kofs + j * p.k_st) / dk] : 1.0f;
            vscl[threadIdx.x] = q8 && j < p.tk ? p.v_scale[(vofs + j * p.v_st) / dk] : 1.0f;
        }
        __syncthreads();
        if (!live) continue;
        const long long j = j0 + lane;
        bool ok = j < kend;
        if (ok && p.key_mask) ok = p.key_mask[kb * p.tk + j] != 0;
        if (ok && p.causal) ok = j <= qpos;
        if (ok && p.window > 0) ok = qpos - j < p.window;
        float s = -INFINITY;
        if (ok) {
            float dot = 0.0f;
            for (long long d = 0; d < dk; d += 2) {
                const __nv_bfloat162 kv2 = *(const __nv_bfloat162*)&ks[lane][d];
                dot += qs[warp][d] * __low2float(kv2);
                if (d + 1 < dk) dot += qs[warp][d + 1] * __high2float(kv2);
            }
            s = dot * kscl[lane] * p.scale;
            if (p.rel_bias)
                s += p.rel_bias[(long long)t5_bucket(j - qpos, p.bidirectional, p.num_buckets,
                                                     p.max_distance) * p.heads + h];
        }
        const float cmax = warp_max(s);
        if (cmax == -INFINITY) continue;  // nothing visible in this chunk
        const float mnew = fmaxf(m, cmax);
        const float corr = expf(m - mnew);  // m = -inf the first time: corr = 0
        const float pj = expf(s - mnew);    // masked: exp(-inf) = 0
        l = l * corr + warp_sum(pj);
#pragma unroll
        for (int e = 0; e < DMAX / 32; e++) acc[e] *= corr;
        for (int jj = 0; jj < KT; jj++) {
            const float pw = __shfl_sync(0xffffffffu, pj, jj) * vscl[jj];
            if (pw == 0.0f) continue;  // uniform across the warp: no divergence
#pragma unroll
            for (int e = 0; e < DMAX / 32; e++) {
                const long long d = lane + 32 * e;
                if (d < dk) acc[e] += pw * __bfloat162float(vs[jj][d]);
            }
        }
        m = mnew;
    }
    if (!live) return;
    bf16* o = (bf16*)p.o + (b * p.tq + i) * (p.heads * dk) + h * dk;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
    for (int e = 0; e < DMAX / 32; e++) {
        const long long d = lane + 32 * e;
        if (d < dk) st_bf16(o, d, acc[e] * inv);
    }
}

// ---- tensor-core flash attention (FlashAttention-2 style) for head dims 64 and 128 ----
// A block of 4 warps takes 64 queries of one (batch, head), 16 per warp; keys go through shared
// memory 64 at a time, K and V both as rows (padded by 16 bytes, so the 8 row addresses of an
// ldmatrix hit distinct banks), two buffers deep: cp.async fills the next block's K/V (zeros
// past the visible range) while the current one is multiplied. Per key block a warp computes its
// 16 x 64 scores with mma.m16n8k16 (Q fragments stay in registers for the whole pass; K
// fragments by ldmatrix), applies scale, T5 bias (looked up in a table of relative positions
// -max_distance..max_distance built once per block, longer distances clamped, so the log in the
// bucket function runs 2 max_distance + 1 times per block rather than per score or per key
// block), the key mask and end of range (per-key flags loaded one key block ahead) and the
// causal/window masks (only in blocks where they can mask a score of the warp), updates the
// online softmax in the accumulator layout (a row's 4 lanes agree through two shuffles), and
// multiplies P (rounded to bf16, as FlashAttention does) by V, again with
// mma.m16n8k16: the score accumulators of two adjacent 8-key tiles are exactly the A fragment
// of a 16-key step, and ldmatrix.trans reads V's B fragments from the row layout. Exponentials
// are exp2 of log2(e)-scaled differences. Chosen by the Rust wrapper when dk is 64 or 128 and
// every stride is a multiple of 8 elements (16-byte copies); dynamic shared memory
// 2 x 2 x 64 x (dk + 8) x 2 bytes (36 KB / 68 KB).

__device__ __forceinline__ void ldsm_x4(unsigned* r, unsigned addr) {
#ifdef JOBX_HOST_EMU
    jobx_emu::ldmatrix_x4(r, addr, false);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
#endif
}

__device__ __forceinline__ void ldsm_x4_t(unsigned* r, unsigned addr) {
#ifdef JOBX_HOST_EMU
    jobx_emu::ldmatrix_x4(r, addr, true);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
#endif
}



// The Q fragments (mma A operand, rows iw + 16 rt + g and + 8, dims 16 s + 2t, + 1, + 8, + 9)
// of a warp's RT row tiles, read once for the whole key loop; rows from tq on read as 0.
template <int DK, int RT, typename I>
__device__ __forceinline__ void flash_q_frags(unsigned (&qa)[RT][DK / 16][4], const bf16* q, long long q_st,
                                              I iw, I tq, int g, int t) {
#pragma unroll
    for (int rt = 0; rt < RT; rt++) {
        const I r0 = iw + 16 * rt + g, r1 = r0 + 8;
#pragma unroll
        for (int s = 0; s < DK / 16; s++) {
            const I c = s * 16 + 2 * t;
            qa[rt][s][0] = r0 < tq ? *(const unsigned*)(q + r0 * q_st + c) : 0u;
            qa[rt][s][1] = r1 < tq ? *(const unsigned*)(q + r1 * q_st + c) : 0u;
            qa[rt][s][2] = r0 < tq ? *(const unsigned*)(q + r0 * q_st + c + 8) : 0u;
            qa[rt][s][3] = r1 < tq ? *(const unsigned*)(q + r1 * q_st + c + 8) : 0u;
        }
    }
}

// Issue this thread's cp.async copies of keys j0..j0 + FKT - 1 into buffer `buf` (K tile, then V
// tile, FKT rows of DK + 8 bf16 each, at sbase + buf x 2 tiles); rows from kend on are
// zero-filled. The 128 threads each copy 16-byte pieces: rows tid / (DK / 8) + RSTEP u, columns
// 8 (tid % (DK / 8)).
template <int DK, int FKT, typename I>
__device__ __forceinline__ void flash_stage_kv(const jobx_attention_params& p, const bf16* k, const bf16* v,
                                               unsigned sbase, I j0, int buf, I kend) {
    constexpr int LD = DK + 8;
    constexpr unsigned TILE = FKT * LD * 2;
    constexpr int PER = FKT * DK / 8 / 128;  // 16-byte chunks per thread per tile
    constexpr int RSTEP = 128 / (DK / 8);
    const int tid = threadIdx.x;
    const int cr0 = tid / (DK / 8), cc0 = (tid % (DK / 8)) * 8;
    const bf16* kj = k + (long long)cr0 * p.k_st + cc0 + (long long)j0 * p.k_st;
    const bf16* vj = v + (long long)cr0 * p.v_st + cc0 + (long long)j0 * p.v_st;
    const unsigned kt = sbase + buf * 2 * TILE + (cr0 * LD + cc0) * 2, vt = kt + TILE;
#pragma unroll
    for (int u = 0; u < PER; u++) {
        const bool ok = j0 + cr0 + RSTEP * u < kend;
        cp_async16(kt + u * RSTEP * LD * 2, ok ? (const void*)(kj + (long long)RSTEP * u * p.k_st) : (const void*)k,
                   ok ? 16 : 0);
        cp_async16(vt + u * RSTEP * LD * 2, ok ? (const void*)(vj + (long long)RSTEP * u * p.v_st) : (const void*)v,
                   ok ? 16 : 0);
    }
}

// Zeroed output accumulators and softmax state (m = -inf, l = 0) of RT row tiles.
template <int DK, int RT>
__device__ __forceinline__ void flash_init(float (&acc)[RT][DK / 8][4], float (&m)[RT][2], float (&l)[RT][2]) {
#pragma unroll
    for (int rt = 0; rt < RT; rt++) {
#pragma unroll
        for (int d = 0; d < DK / 8; d++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[rt][d][e] = 0.0f;
        m[rt][0] = m[rt][1] = -INFINITY;
        l[rt][0] = l[rt][1] = 0.0f;
    }
}

// RT row tiles of 16 queries per warp (64 * RT queries per block of 4 warps) and FKT keys per
// staged block. RT = 2 (each K/V fragment read from shared memory feeding two mma, as
// FlashAttention-2 gives a warp more than 16 rows) was measured slower on an H100 (2026-11-26:
// T5 encoder shape 0.493 vs 0.372 ms, causal d128 1.587 vs 1.070 ms with 32 keys per block to
// fit 255 registers), so the kernels below use RT = 1; the parameter stays for that experiment.
template <int DK, int RT, int FKT>
__device__ __forceinline__ void attention_mma(const jobx_attention_params& p) {
    constexpr int FQB = 64 * RT;                    // queries per block
    constexpr int LD = DK + 8;                      // bf16 per shared row
    constexpr unsigned TILE = FKT * LD * 2;         // bytes of one K or V tile
#ifdef JOBX_HOST_EMU
    JOBX_EMU_DYNAMIC_SHARED(unsigned char, fa_smem);
#else
    extern __shared__ __align__(16) unsigned char fa_smem[];
#endif
    // T5 bias by relative position (key - query) clamped to [-R, R], R = max_distance: every
    // distance >= max_distance falls in its direction's last bucket (the launcher admits only
    // configurations where that holds, `t5::bucket_saturation`), so one table per block, built
    // before the key loop, serves every key block; entries are bias * log2(e)
    __shared__ float btab[2 * FA_BIAS_R_MAX + 1];
    // per staged key: 1 if visible (inside the block's key range and not masked), else 0
    __shared__ __align__(8) float kvis[2][FKT];
    const unsigned sbase = smem_addr(fa_smem);      // K0, V0, K1, V1
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    unsigned b, h, qb;
    flash_block(p, b, h, qb);
    const long long i0 = (long long)qb * FQB;
    long long kb;
    const bf16 *q, *k, *v;
    flash_operands(p, b, h, kb, q, k, v);
    const long long iw = i0 + warp * 16 * RT;       // the warp's first query
    const bool active = iw < p.tq;                  // warp-uniform
    unsigned qa[RT][DK / 16][4];
    flash_q_frags<DK, RT>(qa, q, p.q_st, iw, p.tq, g, t);
    // keys any query of the block can see: causal limits the end, a window the start
    const long long q_off = query_offset(p);
    const long long last_q = i0 + FQB - 1 < p.tq - 1 ? i0 + FQB - 1 : p.tq - 1;
    long long kend = p.tk;
    if (p.causal && q_off + last_q + 1 < kend) kend = q_off + last_q + 1;
    long long kstart = 0;
    if (p.window > 0 && q_off + i0 - p.window + 1 > 0) kstart = q_off + i0 - p.window + 1;
    kstart = kstart / FKT * FKT;
    // exp2 domain: scores scaled by scale * log2(e), the bias by log2(e)
    const float sl2 = p.scale * LOG2E;

    auto issue = [&](long long j0, int buf) { flash_stage_kv<DK, FKT>(p, k, v, sbase, j0, buf, kend); };
    // visibility of key j0 + tid (threads tid < FKT): read from global memory one key block
    // ahead, kept in a register and stored to shared memory after the current block's math, so
    // the load's latency is not exposed before the barrier
    auto key_flag = [&](long long j0) -> float { return flash_key_flag(p, kb, j0 + tid, kend); };
    const int R = p.max_distance;
    if (p.rel_bias)  // visible to every warp after the first barrier of the key loop
        for (int x = tid; x <= 2 * R; x += 128)
            btab[x] = LOG2E * p.rel_bias[(long long)t5_bucket(x - R, p.bidirectional, p.num_buckets,
                                                              p.max_distance) * p.heads + h];

    float acc[RT][DK / 8][4], m[RT][2], l[RT][2];
    flash_init<DK, RT>(acc, m, l);

    if (kstart < kend) {
        issue(kstart, 0);
        if (tid < FKT) kvis[0][tid] = key_flag(kstart);
    }
    cp_async_commit();
    int buf = 0;
    for (long long j0 = kstart; j0 < kend; j0 += FKT, buf ^= 1) {
        const bool more = j0 + FKT < kend;
        float flag_next = 0.0f;
        if (more) {  // that buffer was released by the last barrier
            issue(j0 + FKT, buf ^ 1);
            if (tid < FKT) flag_next = key_flag(j0 + FKT);
        }
        cp_async_commit();
        cp_async_wait<1>();  // this block's copies (all but the group just committed) landed
        __syncthreads();
        if (active) {
            const unsigned kt = sbase + buf * 2 * TILE, vt = kt + TILE;
            float s[RT][FKT / 8][4];
#pragma unroll
            for (int rt = 0; rt < RT; rt++)
#pragma unroll
                for (int n = 0; n < FKT / 8; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++) s[rt][n][e] = 0.0f;
            // K fragments: ldmatrix x4 = (keys n..n+7 | n+8..n+15) x (dims d..d+7 | d+8..d+15);
            // lane -> row address: matrix lane/8, row lane%8; each feeds all RT row tiles
            const int mi = lane >> 3, rr = lane & 7;
#pragma unroll
            for (int n = 0; n < FKT / 8; n += 2) {
#pragma unroll
                for (int d = 0; d < DK / 16; d++) {
                    unsigned bk[4];
                    ldsm_x4(bk, kt + ((n * 8 + (mi >> 1) * 8 + rr) * LD + d * 16 + (mi & 1) * 8) * 2);
#pragma unroll
                    for (int rt = 0; rt < RT; rt++) {
                        mma_16816(s[rt][n], qa[rt][d], bk[0], bk[1]);
                        mma_16816(s[rt][n + 1], qa[rt][d], bk[2], bk[3]);
                    }
                }
            }
            // can causality or the window mask a score of this warp here? (warp-uniform; key
            // masks and the end of the range are in kvis)
            const bool plain = (!p.causal || j0 + FKT - 1 <= q_off + iw) &&
                               (p.window <= 0 || q_off + iw + 16 * RT - 1 - j0 < p.window);
            // relative position (key - query) of this lane's first score (key j0 + 2t, query
            // iw + g); the others differ by small constants. Clamped first to a range whose
            // every offset still clamps to the same table entry, so it fits an int.
            int rel0 = 0;
            if (p.rel_bias) {
                const long long lim = (long long)R + FQB + FKT;
                long long r = j0 - (q_off + iw);
                r = r < -lim ? -lim : (r > lim ? lim : r);
                rel0 = (int)r + 2 * t - g;
            }
            const float2* kv2 = (const float2*)kvis[buf];
#pragma unroll
            for (int rt = 0; rt < RT; rt++) {
                const long long r0 = iw + 16 * rt + g;  // rows r0 (e < 2) and r0 + 8 (e >= 2)
                float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
                for (int n = 0; n < FKT / 8; n++) {
                    const float2 vis = kv2[n * 4 + t];  // keys j0 + 8n + 2t, + 1
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int col = n * 8 + 2 * t + (e & 1);
                        const bool hi = e >= 2;
                        float x = s[rt][n][e] * sl2;
                        if (p.rel_bias) {
                            int rel = rel0 + n * 8 + (e & 1) - 16 * rt - (hi ? 8 : 0);
                            rel = rel < -R ? -R : (rel > R ? R : rel);
                            x += btab[rel + R];
                        }
                        // a select, not an added -inf: a masked key's score never reaches the max
                        bool ok = ((e & 1) ? vis.y : vis.x) != 0.0f;
                        if (!plain) {
                            const long long j = j0 + col;
                            const long long qp = q_off + (hi ? r0 + 8 : r0);
                            if (p.causal) ok = ok && j <= qp;
                            if (p.window > 0) ok = ok && qp - j < p.window;
                        }
                        x = ok ? x : -INFINITY;
                        s[rt][n][e] = x;
                        if (hi) mx1 = fmaxf(mx1, x); else mx0 = fmaxf(mx0, x);
                    }
                }
                // the 4 lanes of a row (t = 0..3) share its max
                mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
                mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
                mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
                mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
                const float n0 = fmaxf(m[rt][0], mx0), n1 = fmaxf(m[rt][1], mx1);
                // a row with nothing visible yet keeps m = -inf, acc = l = 0 (corr 0, p 0)
                const float c0 = n0 == -INFINITY ? 0.0f : exp2f(m[rt][0] - n0);
                const float c1 = n1 == -INFINITY ? 0.0f : exp2f(m[rt][1] - n1);
                float ps0 = 0.0f, ps1 = 0.0f;
#pragma unroll
                for (int n = 0; n < FKT / 8; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const bool hi = e >= 2;
                        const float x = s[rt][n][e];
                        const float pe = x == -INFINITY ? 0.0f : exp2f(x - (hi ? n1 : n0));
                        s[rt][n][e] = pe;
                        if (hi) ps1 += pe; else ps0 += pe;
                    }
                // partial over this lane's columns; summed across the row at the end
                l[rt][0] = l[rt][0] * c0 + ps0;
                l[rt][1] = l[rt][1] * c1 + ps1;
                m[rt][0] = n0;
                m[rt][1] = n1;
#pragma unroll
                for (int d = 0; d < DK / 8; d++) {
                    acc[rt][d][0] *= c0;
                    acc[rt][d][1] *= c0;
                    acc[rt][d][2] *= c1;
                    acc[rt][d][3] *= c1;
                }
            }
#pragma unroll
            for (int kk = 0; kk < FKT / 16; kk++) {
                unsigned a[RT][4];
#pragma unroll
                for (int rt = 0; rt < RT; rt++) {
                    a[rt][0] = pack_bf16x2(s[rt][2 * kk][0], s[rt][2 * kk][1]);
                    a[rt][1] = pack_bf16x2(s[rt][2 * kk][2], s[rt][2 * kk][3]);
                    a[rt][2] = pack_bf16x2(s[rt][2 * kk + 1][0], s[rt][2 * kk + 1][1]);
                    a[rt][3] = pack_bf16x2(s[rt][2 * kk + 1][2], s[rt][2 * kk + 1][3]);
                }
                // V fragments: ldmatrix.trans x4 = (keys kk*16 + 0..7 | 8..15) x (dims d..d+7 |
                // d+8..d+15): b0, b1 of dim tile d, then of tile d + 8
#pragma unroll
                for (int d = 0; d < DK / 8; d += 2) {
                    unsigned bv[4];
                    ldsm_x4_t(bv, vt + ((kk * 16 + (mi & 1) * 8 + rr) * LD + d * 8 + (mi >> 1) * 8) * 2);
#pragma unroll
                    for (int rt = 0; rt < RT; rt++) {
                        mma_16816(acc[rt][d], a[rt], bv[0], bv[1]);
                        mma_16816(acc[rt][d + 1], a[rt], bv[2], bv[3]);
                    }
                }
            }
        }
        if (more && tid < FKT) kvis[buf ^ 1][tid] = flag_next;  // read after the next barrier
        __syncthreads();  // this buffer is consumed before the next iteration refills it
    }
    cp_async_wait<0>();
    if (!active) return;
#pragma unroll
    for (int rt = 0; rt < RT; rt++)
        flash_store<DK>(p, b, h, iw + 16 * rt + g, p.tq, reinterpret_cast<const float(&)[DK / 2]>(acc[rt]), l[rt], t);
}

// dynamic shared memory: 2 buffers x (K + V) x FKT keys x (dk + 8) bf16 (runtime.rs DYNAMIC_SMEM)
extern "C" __global__ void __launch_bounds__(128) attention_mma_d64(jobx_attention_params p) {
    pdl_enter();
    attention_mma<64, 1, 64>(p);
}

extern "C" __global__ void __launch_bounds__(128) attention_mma_d128(jobx_attention_params p) {
    pdl_enter();
    attention_mma<128, 1, 64>(p);
}

// ---- attention_fa2_d64 / _d128: 32 query rows per warp ----------------------------------------
// The attention_mma kernels above give each warp 16 query rows, so every K and V fragment a warp
// reads from shared memory (ldmatrix) feeds one row tile: at d128 a 64-key step reads 32 KB per
// warp for 128 mma, and on an H100 ldmatrix plus the cp.async stores then cost more shared-memory
// cycles than the tensor cores need for the mma (causal d128 ran at 0.31 of SDPA, the T5 encoder
// shape at 0.46; docs/PERFORMANCE.md run 5). This variant follows FlashAttention-2's split:
//   - 128 queries per block of 4 warps, 32 rows per warp (two row tiles): each K/V fragment
//     feeds two mma (a step reads 40 KB per warp, Q included, for 256 mma: 160 bytes per mma
//     instead of 256);
//   - d128: Q staged in shared memory with the first key block and read back as A fragments
//     (ldmatrix) in each step, since Q fragments in registers (64 per thread) plus 32 rows of
//     accumulators do not fit 255 registers; and 32 keys per step (64 spilled: 128
//     accumulators + 64 scores); d64 keeps Q in registers (32) and takes 64 keys per step;
//   - less work per score: the T5 bias table is padded so a lane's 32 bias reads are one
//     shared-memory base plus constant offsets (no clamp per score); key-mask, end-of-range,
//     causal and window tests run only in blocks where one can apply (whether every staged key
//     is visible comes with the barrier, __syncthreads_and); a row whose max is still -inf
//     uses 0 as its reference (FlashAttention's rule) instead of a test per score; exponentials
//     are ex2.approx.ftz (what exp2f compiles to, without its denormal handling: a weight below
//     2^-126 becomes 0); the running output is rescaled only when some row's max moved.
// Same arithmetic order as attention_mma otherwise (P rounded to bf16 for P·V, f32 sums).
// Dynamic shared memory: K/V 2 x 2 x keys x (dk + 8) bf16, then (d128) Q 128 x (dk + 8) bf16
// (runtime.rs). Positions are 32-bit: the launcher takes it only below 2^30.
#define FA2_RT 2
#define FA2_FQB (64 * FA2_RT)


template <int DK, bool QREG, int FKT>
__device__ __forceinline__ void attention_fa2(const jobx_attention_params& p) {
    constexpr int RT = FA2_RT, FQB = FA2_FQB;
    // T5 bias table: a warp's block-level relative position r = j0 - first query is clamped to
    // +-L (beyond that every score of the block falls in its direction's last bucket); a score
    // adds a lane offset in [-7, 6] and a constant in [-(16 RT - 8), FKT - 1]; entry i holds the
    // bias of relative position clamp(i - TC, -R, R) times log2(e)
    constexpr int L = FA_BIAS_R_MAX + FQB + FKT, TC = L + 16 * RT + 8, TAB = TC + L + FKT + 8;
    constexpr int LD = DK + 8;                      // bf16 per shared row
    constexpr unsigned TILE = FKT * LD * 2;         // bytes of one K or V tile
#ifdef JOBX_HOST_EMU
    JOBX_EMU_DYNAMIC_SHARED(unsigned char, fa_smem);
#else
    extern __shared__ __align__(16) unsigned char fa_smem[];
#endif
    __shared__ float btab[TAB];
    __shared__ __align__(8) float kvis[2][FKT];     // per staged key: 1 visible, 0 not
    const unsigned sbase = smem_addr(fa_smem);      // K0, V0, K1, V1, Q
    const unsigned qs = sbase + 4 * TILE;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3, mi = lane >> 3, rr = lane & 7;
    unsigned b, h, qb;
    flash_block(p, b, h, qb);
    // positions in 32-bit ints: the launcher takes this kernel only when q_offset + tq and tk
    // are below 2^30 (registers: 64-bit positions made the d128 kernel spill); addresses are
    // still formed in 64 bits
    const int tq = (int)p.tq, i0 = (int)qb * FQB;
    long long kb;
    const bf16 *q, *k, *v;
    flash_operands(p, b, h, kb, q, k, v);
    const int wr = warp * 16 * RT;                  // the warp's first row in the block
    const int iw = i0 + wr;                         // the warp's first query
    const bool active = iw < tq;                    // warp-uniform
    // d64: Q fragments in registers for the whole key loop (rows beyond tq read as 0)
    unsigned qa[RT][QREG ? DK / 16 : 1][4];
    if constexpr (QREG) flash_q_frags<DK, RT>(qa, q, p.q_st, iw, tq, g, t);
    // keys any query of the block can see: causal limits the end, a window the start
    int q_off, win, kstart, kend;
    flash_range(p, i0, FQB, FKT, q_off, win, kstart, kend);
    const float sl2 = p.scale * LOG2E;  // exp2 domain

    auto issue = [&](int j0, int buf) { flash_stage_kv<DK, FKT>(p, k, v, sbase, j0, buf, kend); };
    auto key_flag = [&](int j0) -> float { return flash_key_flag(p, kb, j0 + tid, kend); };
    // (published by the barrier before the key loop)
    if (p.rel_bias) flash_bias_table(p, btab, TAB, TC, h, 128);

    float acc[RT][DK / 8][4], m[RT][2], l[RT][2];
    flash_init<DK, RT>(acc, m, l);

    float flag0 = 0.0f;
    if (kstart < kend) {
        issue(kstart, 0);
        if constexpr (!QREG) {  // Q rows i0.. with the first key block (rows past tq zero-filled)
            for (int c = tid; c < FQB * DK / 8; c += 128) {
                const int row = c / (DK / 8), col = (c % (DK / 8)) * 8;
                const bool ok = i0 + row < tq;
                cp_async16(qs + (row * LD + col) * 2, ok ? (const void*)(q + (long long)(i0 + row) * p.q_st + col) : (const void*)q,
                           ok ? 16 : 0);
            }
        }
        if (tid < FKT) {
            flag0 = key_flag(kstart);
            kvis[0][tid] = flag0;
        }
    }
    cp_async_commit();
    // every key of the staged block visible (no key mask or end of range inside it)?
    int all_vis = __syncthreads_and(tid >= FKT || flag0 != 0.0f);
    int buf = 0;
    for (int j0 = kstart; j0 < kend; j0 += FKT, buf ^= 1) {
        const bool more = j0 + FKT < kend;
        float flag_next = 0.0f;
        if (more) {  // that buffer was released by the last barrier
            issue(j0 + FKT, buf ^ 1);
            if (tid < FKT) flag_next = key_flag(j0 + FKT);
        }
        cp_async_commit();
        cp_async_wait<1>();  // this block's copies (all but the group just committed) landed
        __syncthreads();
        if (active) {
            const unsigned kt = sbase + buf * 2 * TILE, vt = kt + TILE;
            float s[RT][FKT / 8][4];
#pragma unroll
            for (int rt = 0; rt < RT; rt++)
#pragma unroll
                for (int n = 0; n < FKT / 8; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++) s[rt][n][e] = 0.0f;
            // S = Q K^T, 16 dims at a time: the Q fragments of both row tiles (ldmatrix x4 =
            // rows 0-7 | 8-15 x dims 0-7 | 8-15 of the tile: lane -> row lane % 16, dims
            // 8 (lane / 16)), then K fragments (x4 = keys n..n+7 | n+8..n+15 x the same dims)
            // each feeding both row tiles
#pragma unroll
            for (int d = 0; d < DK / 16; d++) {
                unsigned qf[RT][4];
#pragma unroll
                for (int rt = 0; rt < RT; rt++) {
                    if constexpr (QREG) {
#pragma unroll
                        for (int e = 0; e < 4; e++) qf[rt][e] = qa[rt][d][e];
                    } else {
                        ldsm_x4(qf[rt], qs + ((wr + 16 * rt + (lane & 15)) * LD + d * 16 + (lane >> 4) * 8) * 2);
                    }
                }
#pragma unroll
                for (int n = 0; n < FKT / 8; n += 2) {
                    unsigned bk[4];
                    ldsm_x4(bk, kt + ((n * 8 + (mi >> 1) * 8 + rr) * LD + d * 16 + (mi & 1) * 8) * 2);
#pragma unroll
                    for (int rt = 0; rt < RT; rt++) {
                        mma_16816(s[rt][n], qf[rt], bk[0], bk[1]);
                        mma_16816(s[rt][n + 1], qf[rt], bk[2], bk[3]);
                    }
                }
            }
            // can a mask apply to a score of this warp here? (warp-uniform)
            const bool plain = all_vis && (!p.causal || j0 + FKT - 1 <= q_off + iw) &&
                               (win <= 0 || q_off + iw + 16 * RT - 1 - j0 < win);
            // this lane's bias row: the score (row 16 rt + g (+8), key 8n + 2t (+1)) reads
            // tb[8n + (e & 1) - 16 rt - 8 (e >= 2)]
            const float* tb = btab;
            if (p.rel_bias) {
                int r = j0 - (q_off + iw);
                r = r < -L ? -L : (r > L ? L : r);
                tb = btab + (r + 2 * t - g + TC);
            }
            const float2* kv2 = (const float2*)kvis[buf];
            float c[RT][2];
            // P in bf16 pairs, the A fragments of P V: pk[rt][2n] = row g, keys 8n + 2t, + 1;
            // pk[rt][2n + 1] = row g + 8
            unsigned pk[RT][FKT / 4];
#pragma unroll
            for (int rt = 0; rt < RT; rt++)
                flash_softmax_tile<FKT>(reinterpret_cast<float(&)[FKT / 2]>(s[rt]), pk[rt], m[rt], l[rt], c[rt],
                                        sl2, p.rel_bias ? tb - 16 * rt : nullptr, plain, kv2, t,
                                        q_off + iw + 16 * rt + g - j0 - 2 * t, p.causal, win);
            // rescale the running output unless no row's max moved (c == 1 exactly: skipping
            // the multiply changes nothing)
            bool moved = false;
#pragma unroll
            for (int rt = 0; rt < RT; rt++) moved = moved || c[rt][0] != 1.0f || c[rt][1] != 1.0f;
            if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
                for (int rt = 0; rt < RT; rt++)
#pragma unroll
                    for (int d = 0; d < DK / 8; d++) {
                        acc[rt][d][0] *= c[rt][0];
                        acc[rt][d][1] *= c[rt][0];
                        acc[rt][d][2] *= c[rt][1];
                        acc[rt][d][3] *= c[rt][1];
                    }
            }
            // O += P V: two adjacent 8-key score tiles are the A fragment of a 16-key step;
            // V fragments by ldmatrix.trans (keys kk*16 + 0..7 | 8..15 x dims d..d+7 | d+8..d+15)
#pragma unroll
            for (int kk = 0; kk < FKT / 16; kk++) {
                unsigned a[RT][4];
#pragma unroll
                for (int rt = 0; rt < RT; rt++) {
                    a[rt][0] = pk[rt][4 * kk];
                    a[rt][1] = pk[rt][4 * kk + 1];
                    a[rt][2] = pk[rt][4 * kk + 2];
                    a[rt][3] = pk[rt][4 * kk + 3];
                }
#pragma unroll
                for (int d = 0; d < DK / 8; d += 2) {
                    unsigned bv[4];
                    ldsm_x4_t(bv, vt + ((kk * 16 + (mi & 1) * 8 + rr) * LD + d * 8 + (mi >> 1) * 8) * 2);
#pragma unroll
                    for (int rt = 0; rt < RT; rt++) {
                        mma_16816(acc[rt][d], a[rt], bv[0], bv[1]);
                        mma_16816(acc[rt][d + 1], a[rt], bv[2], bv[3]);
                    }
                }
            }
        }
        if (more && tid < FKT) kvis[buf ^ 1][tid] = flag_next;  // read after the next barrier
        // this buffer is consumed before the next iteration refills it; and whether every key
        // of the next block is visible
        all_vis = __syncthreads_and(tid >= FKT || flag_next != 0.0f);
    }
    cp_async_wait<0>();
    if (!active) return;
#pragma unroll
    for (int rt = 0; rt < RT; rt++)
        flash_store<DK>(p, b, h, iw + 16 * rt + g, tq, reinterpret_cast<const float(&)[DK / 2]>(acc[rt]), l[rt], t);
}

extern "C" __global__ void __launch_bounds__(128) attention_fa2_d64(jobx_attention_params p) {
    pdl_enter();
    attention_fa2<64, true, 64>(p);
}

extern "C" __global__ void __launch_bounds__(128) attention_fa2_d128(jobx_attention_params p) {
    pdl_enter();
    attention_fa2<128, false, 32>(p);
}

// ---- decode attention (flash-decoding): a few queries over many keys ----
// The decode steps' shape (one query per row over a KV cache or the encoder output): the
// 64-query tensor-core tiles above would waste 63 of 64 rows and walk all keys in one block
// per (batch, head). Here a block takes one query of one (batch, head) and one chunk of at most
// 1024 keys, so a T5-Large cross-attention step at batch 32 (512 query rows, 1024 keys) runs as
// 1024 blocks. Memory-bound: K and V rows are read once, 16 bytes per thread, DK/8 threads per
// row, eight rows' loads (and their key-mask flags) issued before the first is used. Pass 1
// writes the chunk's scores to
// shared memory (scale, T5 bias, masks as in the kernels above); the block takes their max and
// sum; pass 2 accumulates p·V (rows with p = 0, i.e. masked, are not read) and the key groups'
// partial outputs are summed through shared memory. One chunk: the normalised output is stored;
// several: (max, sum, output) per chunk go to p.partial for attention_combine.
#define DEC_THREADS 128
#define DEC_CHUNK_MAX 1024
// Rows in flight per thread. 4 with the key-mask flag read after the dot product (a second,
// dependent round trip per group of rows) measured 0.059 ms (2.2 TB/s) on an H100 at batch 32,
// 16 heads, 1024 keys, d64, against SDPA's 0.042 ms; the flags now load with the rows, and 8
// rows double the bytes in flight (not measured yet).
#define DEC_UNROLL 8

__device__ __forceinline__ float dot8(const float* q, uint4 r) {
    const __nv_bfloat162* h = (const __nv_bfloat162*)&r;
    float s = 0.0f;
#pragma unroll
    for (int e = 0; e < 4; e++) {
        const float2 f = __bfloat1622float2(h[e]);
        s += q[2 * e] * f.x + q[2 * e + 1] * f.y;
    }
    return s;
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : -INFINITY;
    return warp_max(v);
}

// One thread's 16-byte piece of a K or V row: 8 bf16, or (Q8) 16 int8 elements
template <bool Q8>
__device__ __forceinline__ uint4 ld_kv16b(const void* row, long long e) {
    return Q8 ? *(const uint4*)((const signed char*)row + e) : *(const uint4*)((const bf16*)row + e);
}

// q · (a thread's piece of a key row): 8 bf16, or (Q8) 16 int8 converted exactly
template <bool Q8>
__device__ __forceinline__ float dot_piece(const float* q, uint4 r) {
    if (!Q8) return dot8(q, r);
    return dot8(q, i8x8_to_bf16x8(make_uint2(r.x, r.y))) + dot8(q + 8, i8x8_to_bf16x8(make_uint2(r.z, r.w)));
}

// acc += w * (a thread's piece of a V row)
template <bool Q8>
__device__ __forceinline__ void axpy_piece(float* acc, float w, uint4 r) {
#pragma unroll
    for (int half = 0; half < (Q8 ? 2 : 1); half++) {
        const uint4 b = Q8 ? i8x8_to_bf16x8(half ? make_uint2(r.z, r.w) : make_uint2(r.x, r.y)) : r;
        const __nv_bfloat162* h2 = (const __nv_bfloat162*)&b;
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const float2 f = __bfloat1622float2(h2[e]);
            acc[8 * half + 2 * e] += w * f.x;
            acc[8 * half + 2 * e + 1] += w * f.y;
        }
    }
}

// What a decode block (key chunk blockIdx.x, head blockIdx.y, query row blockIdx.z) works on,
// shared by the two-pass and one-pass kernels: its operands, the query's position, and the
// chunk's keys up to the last visible one.
struct DecodeRow {
    const bf16* q;
    const void* k;
    const void* v;
    long long split, h, bi, kb, kofs, vofs, qpos, j0, lo, hi, n;
};

template <bool Q8>
__device__ __forceinline__ DecodeRow decode_row(const jobx_attention_params& p) {
    DecodeRow r;
    r.split = blockIdx.x, r.h = blockIdx.y, r.bi = blockIdx.z;
    const long long b = r.bi / p.tq, i = r.bi % p.tq;
    r.kb = p.kv_batch ? p.kv_batch[b] : b;
    const long long kh = r.h / (p.heads / p.kv_heads);
    r.q = (const bf16*)p.q + b * p.q_sb + r.h * p.q_sh + i * p.q_st;
    r.kofs = r.kb * p.k_sb + kh * p.k_sh, r.vofs = r.kb * p.v_sb + kh * p.v_sh;
    r.k = Q8 ? (const void*)((const signed char*)p.k + r.kofs) : (const void*)((const bf16*)p.k + r.kofs);
    r.v = Q8 ? (const void*)((const signed char*)p.v + r.vofs) : (const void*)((const bf16*)p.v + r.vofs);
    r.qpos = query_offset(p) + i;
    r.j0 = r.split * p.chunk;
    // visible key range [lo, hi): causal limits the end, a window the start
    r.lo = 0, r.hi = p.tk;
    if (p.causal && r.qpos + 1 < r.hi) r.hi = r.qpos + 1;
    if (p.window > 0 && r.qpos - p.window + 1 > r.lo) r.lo = r.qpos - p.window + 1;
    // keys of this chunk up to the last visible one (none when the chunk starts past it: a
    // graph-recorded step reads a cache of tk positions of which the first qpos + 1 are filled)
    r.n = (r.j0 + p.chunk < r.hi ? r.j0 + p.chunk : r.hi) - r.j0;
    if (r.n < 0) r.n = 0;
    return r;
}

// A thread's EPT query elements (from its 16-byte pieces) in f32
template <int EPT>
__device__ __forceinline__ void decode_load_q(float* qf, const bf16* q, int sub) {
#pragma unroll
    for (int half = 0; half < EPT / 8; half++) {
        const uint4 r = *(const uint4*)(q + sub * EPT + 8 * half);
        const __nv_bfloat162* h2 = (const __nv_bfloat162*)&r;
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const float2 f = __bfloat1622float2(h2[e]);
            qf[8 * half + 2 * e] = f.x;
            qf[8 * half + 2 * e + 1] = f.y;
        }
    }
}

// Output dimension d of a decode block: normalised into o (one chunk), or the chunk's
// (max, sum, unnormalised output) into p.partial for attention_combine
template <int DK>
__device__ __forceinline__ void decode_store(const jobx_attention_params& p, const DecodeRow& r, int d, float o,
                                             float mx, float sum) {
    if (p.splits == 1) {
        bf16* out = (bf16*)p.o + r.bi * (p.heads * DK) + r.h * DK;
        st_bf16(out, d, sum > 0.0f ? o / sum : 0.0f);
    } else {
        float* part = p.partial + ((r.bi * p.heads + r.h) * p.splits + r.split) * (DK + 2);
        if (d == 0) {
            part[0] = mx;
            part[1] = sum;
        }
        part[2 + d] = o;
    }
}

// Q8: int8 K/V with per-(key, head) scales (k_scale/v_scale), applied to the score and to the
// softmax weight, so the int8 values meet q and the weights in f32 unrounded. Every thread
// loads 16 bytes of a row: 8 bf16 elements, or 16 int8 ones (with 8 int8 per thread, 8-byte
// loads, the int8 kernel held half the bytes in flight and ran slower than bf16 end to end:
// T5-Large batch 32, 1.355 vs 1.124 s, H100 run 5; the launcher needs 16-element aligned
// int8 rows for it).
template <int DK, bool Q8>
__device__ __forceinline__ void attention_decode(const jobx_attention_params& p) {
    constexpr int EPT = Q8 ? 16 : 8;        // elements per thread: 16 bytes either way
    constexpr int TPK = DK / EPT;           // threads per key row
    constexpr int KPP = DEC_THREADS / TPK;  // key rows per pass of the block
    __shared__ float sc[DEC_CHUNK_MAX];
    __shared__ float red[KPP * DK];
    __shared__ float scratch[32];
    const int tid = threadIdx.x, sub = tid % TPK, kg = tid / TPK;
    const DecodeRow r = decode_row<Q8>(p);
    const long long h = r.h, kb = r.kb, kofs = r.kofs, vofs = r.vofs, qpos = r.qpos, j0 = r.j0;
    const long long lo = r.lo, hi = r.hi, n = r.n;
    const void* k = r.k;
    const void* v = r.v;
    float qf[EPT];
    decode_load_q<EPT>(qf, r.q, sub);
    // pass 1: scores
    for (long long base = 0; base < n; base += KPP * DEC_UNROLL) {
        uint4 kr[DEC_UNROLL];
        bool vis[DEC_UNROLL];
        float ks[DEC_UNROLL];
#pragma unroll
        for (int u = 0; u < DEC_UNROLL; u++) {
            const long long jl = base + u * KPP + kg, j = j0 + jl;
            kr[u] = make_uint4(0, 0, 0, 0);
            ks[u] = 1.0f;
            vis[u] = jl < n && j >= lo && j < hi;
            if (vis[u]) {
                kr[u] = ld_kv16b<Q8>(k, j * p.k_st + sub * EPT);
                if (Q8) ks[u] = p.k_scale[(kofs + j * p.k_st) / DK];
            }
        }
        // the mask flags in the same round trip as the rows (the TPK lanes of a key read the
        // same word)
        if (p.key_mask) {
#pragma unroll
            for (int u = 0; u < DEC_UNROLL; u++) {
                const long long j = j0 + base + u * KPP + kg;
                if (vis[u]) vis[u] = p.key_mask[kb * p.tk + j] != 0;
            }
        }
#pragma unroll
        for (int u = 0; u < DEC_UNROLL; u++) {
            const long long jl = base + u * KPP + kg, j = j0 + jl;
            float d = dot_piece<Q8>(qf, kr[u]);
            // the TPK lanes of one key are consecutive and aligned: reduce among them
#pragma unroll
            for (int o = TPK / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
            if (sub == 0 && jl < n) {
                const bool ok = vis[u];
                float s = -INFINITY;
                if (ok) {
                    s = d * ks[u] * p.scale;
                    if (p.rel_bias)
                        s += p.rel_bias[(long long)t5_bucket(j - qpos, p.bidirectional,
                                                             p.num_buckets, p.max_distance) *
                                            p.heads + h];
                }
                sc[jl] = s;
            }
        }
    }
    __syncthreads();
    float mx = -INFINITY;
    for (long long jl = tid; jl < n; jl += DEC_THREADS) mx = fmaxf(mx, sc[jl]);
    mx = block_max(mx, scratch);
    float sum = 0.0f;
    for (long long jl = tid; jl < n; jl += DEC_THREADS) {
        const float s = sc[jl];
        const float e = s == -INFINITY ? 0.0f : expf(s - mx);
        sc[jl] = e;
        sum += e;
    }
    sum = block_sum(sum, scratch);  // its barriers also publish sc
    // pass 2: p·V, this thread's 8 dimensions over its key group's rows
    float acc[EPT];
#pragma unroll
    for (int e = 0; e < EPT; e++) acc[e] = 0.0f;
    for (long long base = 0; base < n; base += KPP * DEC_UNROLL) {
        uint4 vr[DEC_UNROLL];
        float pw[DEC_UNROLL];
#pragma unroll
        for (int u = 0; u < DEC_UNROLL; u++) {
            const long long jl = base + u * KPP + kg;
            pw[u] = jl < n ? sc[jl] : 0.0f;
            vr[u] = make_uint4(0, 0, 0, 0);
            if (pw[u] != 0.0f) {
                vr[u] = ld_kv16b<Q8>(v, (j0 + jl) * p.v_st + sub * EPT);
                if (Q8) pw[u] *= p.v_scale[(vofs + (j0 + jl) * p.v_st) / DK];
            }
        }
#pragma unroll
        for (int u = 0; u < DEC_UNROLL; u++) axpy_piece<Q8>(acc, pw[u], vr[u]);
    }
#pragma unroll
    for (int e = 0; e < EPT; e++) red[kg * DK + sub * EPT + e] = acc[e];
    __syncthreads();
    for (int d = tid; d < DK; d += DEC_THREADS) {
        float o = 0.0f;
#pragma unroll
        for (int g = 0; g < KPP; g++) o += red[g * DK + d];
        decode_store<DK>(p, r, d, o, mx, sum);
    }
}

extern "C" __global__ void __launch_bounds__(DEC_THREADS) attention_decode_d64(jobx_attention_params p) {
    pdl_enter();
    attention_decode<64, false>(p);
}

extern "C" __global__ void __launch_bounds__(DEC_THREADS) attention_decode_d128(jobx_attention_params p) {
    pdl_enter();
    attention_decode<128, false>(p);
}

extern "C" __global__ void __launch_bounds__(DEC_THREADS) attention_decode_q8_d64(jobx_attention_params p) {
    pdl_enter();
    attention_decode<64, true>(p);
}

extern "C" __global__ void __launch_bounds__(DEC_THREADS) attention_decode_q8_d128(jobx_attention_params p) {
    pdl_enter();
    attention_decode<128, true>(p);
}

// One-pass form of attention_decode (opt-in: JOBX_DECODE_ONLINE=1, Gpu::decode_online; same
// grid, chunks and partial-output layout, so attention_combine merges it unchanged). Why: the
// two-pass kernel reads K, waits at the block's max and sum, then reads V, so each thread has
// at most DEC_UNROLL rows of one operand in flight and none across the pause; at batch 32 it
// streamed a T5-Large cross-attention step's K/V at ~2.45 TB/s of the H100's ~3.35 (run 8:
// 41% of decode device time). Here a thread issues its U key rows' K and V pieces
// together (twice the bytes in flight, half the round trips, no block barrier until the end),
// and each key group keeps a running max, sum and p·V (online softmax, rescaled once per group
// of U keys). The groups' states merge through shared memory at the end.
// Differences from the two-pass kernel: each weight is exp(s - m) * exp(m - M) instead of
// exp(s - M) (a few f32 roundings, not bit-identical), and V rows of visible but key-masked
// positions are read (their flags arrive with K, too late to skip the load without a second
// round trip); T5-Large's 1024-token sources at batch 32 have none.
template <int DK, bool Q8>
__device__ __forceinline__ void attention_decode_online(const jobx_attention_params& p) {
    constexpr int EPT = Q8 ? 16 : 8;        // elements per thread: 16 bytes either way
    constexpr int TPK = DK / EPT;           // threads per key row
    constexpr int KPP = DEC_THREADS / TPK;  // key groups of the block
    // rows of K and of V in flight per thread: 8 + 8, (Q8, twice the elements per row) 4 + 4,
    // which keeps it within 128 registers (4 blocks of 128 threads per multiprocessor; 8 + 8
    // took 168)
    constexpr int U = Q8 ? DEC_UNROLL / 2 : DEC_UNROLL;
    __shared__ float red[KPP * DK];
    __shared__ float gmax[KPP], gsum[KPP];
    const int tid = threadIdx.x, sub = tid % TPK, kg = tid / TPK;
    const DecodeRow r = decode_row<Q8>(p);
    const long long h = r.h, kb = r.kb, kofs = r.kofs, vofs = r.vofs, qpos = r.qpos, j0 = r.j0;
    const long long lo = r.lo, hi = r.hi, n = r.n;
    const void* k = r.k;
    const void* v = r.v;
    float qf[EPT];
    decode_load_q<EPT>(qf, r.q, sub);
    // this key group's running state (the same on its TPK lanes): max, sum, p·V over its rows
    float m = -INFINITY, l = 0.0f, acc[EPT];
#pragma unroll
    for (int e = 0; e < EPT; e++) acc[e] = 0.0f;
    // (every lane runs every iteration: the shuffles below name the whole warp)
    for (long long base = 0; base < n; base += KPP * U) {
        uint4 kr[U], vr[U];
        bool vis[U];
        float ks[U], vs[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const long long jl = base + u * KPP + kg, j = j0 + jl;
            kr[u] = make_uint4(0, 0, 0, 0);
            vr[u] = make_uint4(0, 0, 0, 0);
            ks[u] = 1.0f;
            vs[u] = 1.0f;
            vis[u] = jl < n && j >= lo && j < hi;
            if (vis[u]) {
                kr[u] = ld_kv16b<Q8>(k, j * p.k_st + sub * EPT);
                vr[u] = ld_kv16b<Q8>(v, j * p.v_st + sub * EPT);
                if (Q8) {
                    ks[u] = p.k_scale[(kofs + j * p.k_st) / DK];
                    vs[u] = p.v_scale[(vofs + j * p.v_st) / DK];
                }
            }
        }
        if (p.key_mask) {
#pragma unroll
            for (int u = 0; u < U; u++) {
                const long long j = j0 + base + u * KPP + kg;
                if (vis[u]) vis[u] = p.key_mask[kb * p.tk + j] != 0;
            }
        }
        float s[U];
        float mu = -INFINITY;
#pragma unroll
        for (int u = 0; u < U; u++) {
            const long long j = j0 + base + u * KPP + kg;
            float d = dot_piece<Q8>(qf, kr[u]);
            // the TPK lanes of one key are consecutive and aligned: a butterfly leaves the
            // whole dot product on each of them
#pragma unroll
            for (int o = TPK / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
            s[u] = -INFINITY;
            if (vis[u]) {
                s[u] = d * ks[u] * p.scale;
                if (p.rel_bias)
                    s[u] += p.rel_bias[(long long)t5_bucket(j - qpos, p.bidirectional, p.num_buckets,
                                                            p.max_distance) *
                                           p.heads + h];
            }
            mu = fmaxf(mu, s[u]);
        }
        // rescale the state to the new max (m == mn: unchanged, also while both are -inf)
        const float mn = fmaxf(m, mu);
        const float corr = m == mn ? 1.0f : expf(m - mn);
        l *= corr;
#pragma unroll
        for (int e = 0; e < EPT; e++) acc[e] *= corr;
#pragma unroll
        for (int u = 0; u < U; u++) {
            const float w = s[u] == -INFINITY ? 0.0f : expf(s[u] - mn);
            l += w;
            axpy_piece<Q8>(acc, w * vs[u], vr[u]);
        }
        m = mn;
    }
    // merge the key groups: M = their largest max, each group's sum and p·V scaled to it
    if (sub == 0) {
        gmax[kg] = m;
        gsum[kg] = l;
    }
    __syncthreads();
    float mx = -INFINITY;
#pragma unroll
    for (int g = 0; g < KPP; g++) mx = fmaxf(mx, gmax[g]);
    const float f = m == -INFINITY ? 0.0f : expf(m - mx);
#pragma unroll
    for (int e = 0; e < EPT; e++) red[kg * DK + sub * EPT + e] = acc[e] * f;
    __syncthreads();
    for (int d = tid; d < DK; d += DEC_THREADS) {
        float o = 0.0f, sum = 0.0f;
#pragma unroll
        for (int g = 0; g < KPP; g++) {
            o += red[g * DK + d];
            sum += gmax[g] == -INFINITY ? 0.0f : gsum[g] * expf(gmax[g] - mx);
        }
        decode_store<DK>(p, r, d, o, mx, sum);
    }
}

extern "C" __global__ void __launch_bounds__(DEC_THREADS) attention_decode_online_d64(jobx_attention_params p) {
    pdl_enter();
    attention_decode_online<64, false>(p);
}

extern "C" __global__ void __launch_bounds__(DEC_THREADS) attention_decode_online_d128(jobx_attention_params p) {
    pdl_enter();
    attention_decode_online<128, false>(p);
}

extern "C" __global__ void __launch_bounds__(DEC_THREADS) attention_decode_online_q8_d64(jobx_attention_params p) {
    pdl_enter();
    attention_decode_online<64, true>(p);
}

extern "C" __global__ void __launch_bounds__(DEC_THREADS) attention_decode_online_q8_d128(jobx_attention_params p) {
    pdl_enter();
    attention_decode_online<128, true>(p);
}

// Per-group int8 quantisation of K/V rows (jobx_quantize_params: m groups of k <= 1024 bf16
// elements, contiguous): one warp per group (the launcher's grid has a warp for every group),
// cpu::quantize_rows_int8's rule (scale = absmax / 127, q = rint(x * (127 / absmax)) clamped to
// [-127, 127], an all-zero group gets scale 0, a NaN element 0 as Rust's cast gives). A whole-block
// row kernel would run a 256-thread block per 64-element head row: millions of blocks for a
// batch of 1024-token sources.
extern "C" __global__ void __launch_bounds__(256) quantize_kv_int8(jobx_quantize_params p) {
    pdl_enter();
    const long long g = (long long)blockIdx.x * 8 + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (g >= p.m) return;  // the whole warp
    const bf16* x = (const bf16*)p.x + g * p.k;
    signed char* q = (signed char*)p.q + g * p.k;
    float mx = 0.0f;
    for (long long i = lane; i < p.k; i += 32) mx = fmaxf(mx, fabsf(ld_bf16(x, i)));
    mx = warp_max(mx);
    const float inv = mx > 0.0f ? 127.0f / mx : 0.0f;
    for (long long i = lane; i < p.k; i += 32) {
        const float v = rintf(ld_bf16(x, i) * inv);
        q[i] = v != v ? (signed char)0 : (signed char)fminf(fmaxf(v, -127.0f), 127.0f);
    }
    if (lane == 0) p.scale[g] = mx / 127.0f;
}

// Merges the chunks of attention_decode: o = sum_s out_s e^(m_s - M) / sum_s l_s e^(m_s - M),
// M = max_s m_s; a query with no visible key (every m_s = -inf) gets zeros. Block per (query
// row, head), one thread per output dimension.
extern "C" __global__ void attention_combine(jobx_attention_params p) {
    pdl_enter();
    const long long h = blockIdx.x, bi = blockIdx.y;
    const long long dk = p.dk;
    const float* part = p.partial + (bi * p.heads + h) * p.splits * (dk + 2);
    float M = -INFINITY;
    for (long long s = 0; s < p.splits; s++) M = fmaxf(M, part[s * (dk + 2)]);
    for (long long d = threadIdx.x; d < dk; d += blockDim.x) {
        float l = 0.0f, o = 0.0f;
        if (M != -INFINITY)
            for (long long s = 0; s < p.splits; s++) {
                const float* ps = part + s * (dk + 2);
                const float w = ps[0] == -INFINITY ? 0.0f : expf(ps[0] - M);
                l += ps[1] * w;
                o += ps[2 + d] * w;
            }
        bf16* out = (bf16*)p.o + bi * (p.heads * dk) + h * dk;
        st_bf16(out, d, l > 0.0f ? o / l : 0.0f);
    }
}
