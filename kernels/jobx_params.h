// Kernel parameter structs: the one definition shared by the CUDA kernels (kernels/*.cu include
// this header) and the Rust launch wrappers (build.rs runs bindgen on it into OUT_DIR/params.rs).
// Every kernel takes exactly one of these structs by value, so an argument added, removed or
// retyped on one side cannot silently disagree with the other.
//
// Conventions:
// - Device pointers are `void*` / `const void*`; each field's comment gives the element type and
//   shape. bf16 = __nv_bfloat16, row-major unless stated.
// - Sizes and strides are `long long` (64-bit index math everywhere, PRACTICES.md).
// - Plain C: no <stdint.h> (NVRTC has no libc headers), no C++ in this file.
#ifndef JOBX_PARAMS_H
#define JOBX_PARAMS_H

// y = rms_norm(x) * w: T5LayerNorm and MistralRMSNorm (f32 statistics, no mean subtraction).
typedef struct {
    const void* x;  // bf16 [rows, d]
    const void* w;  // bf16 [d]
    void* y;        // bf16 [rows, d] (may alias x)
    long long rows;
    long long d;
    float eps;
    // Diagnostics, NULL normally (tests, Gpu::set_rms_probe): row r's 1 / rms at inv[r].
    float* inv;
} jobx_rms_norm_params;

// Activation kinds for jobx_act_params.kind.
#define JOBX_ACT_RELU 0       // y = relu(gate)
#define JOBX_ACT_GELU_TANH 1  // y = gelu_tanh(gate) [* up]
#define JOBX_ACT_SILU 2       // y = silu(gate) [* up]

// y[r, c] = act(gate[r, c]) * (up ? up[r, c] : 1) over rows x cols: T5 relu / gated-gelu,
// Mistral SiLU-gated MLP. Rows are strided so that gate and up can be the two halves of one
// fused gate|up projection [rows, 2*cols] (up = gate + cols, ld_in = 2*cols).
typedef struct {
    const void* gate;  // bf16, row r at gate + r*ld_in
    const void* up;    // bf16, row r at up + r*ld_in, or NULL (not gated)
    void* y;           // bf16, row r at y + r*ld_y (may alias gate when ld_y == ld_in)
    long long rows;
    long long cols;
    long long ld_in;   // >= cols
    long long ld_y;    // >= cols
    int kind;
} jobx_act_params;

// Rotary position embedding, HF Llama/Mistral "rotate_half" form, in place on one projection:
// for i < head_dim/2, (x_i, x_{i+d/2}) rotated by pos * theta^(-2i/d), computed in f32.
// Token t's heads are the first heads*head_dim elements of row t (row stride ld), so one call
// can rotate the q and k heads at the start of a fused q|k|v projection.
typedef struct {
    void* x;              // bf16, head h of token t at x + t*ld + h*head_dim
    const int* pos;       // [tokens] absolute positions
    long long tokens;
    long long heads;
    long long head_dim;   // even
    long long ld;         // >= heads*head_dim
    float theta;          // rope_theta
} jobx_rope_params;

// dst[r*dst_ld + c] = src[s*src_ld + c] for r < rows, c < cols (bf16), s = src_rows[r] or r:
// rows of one buffer into rows of another, e.g. a step's K|V projections into the KV cache in
// one launch, or (with src_rows) beam search's reordering of a KV cache.
typedef struct {
    const void* src;
    void* dst;
    const int* src_rows;  // [rows] or null; the wrapper checks each against the source
    long long rows;
    long long cols;
    long long src_ld;  // >= cols
    long long dst_ld;  // >= cols
    // When set, dst is moved by (*dst_pos) * pos_stride elements, read on the device (a decode
    // step's K|V rows into the cache at the current position, in a CUDA graph replayed at every
    // position: `Backend::copy_rows_at`); a position outside [0, pos_max] copies nothing and
    // sets *err = 1 (the wrapper checked the copy at pos_max).
    const int* dst_pos;
    long long pos_stride;
    long long pos_max;
    int* err;
} jobx_copy_rows_params;

// y[t, :] = table[ids[t], :]; an id outside [0, vocab) writes zeros and sets *err = 1.
typedef struct {
    const int* ids;     // [n]
    const void* table;  // bf16 [vocab, d]
    void* y;            // bf16 [n, d]
    int* err;           // [1], set to 1 on a bad id (never cleared by the kernel)
    long long n;
    long long d;
    long long vocab;
} jobx_embedding_params;

// Weight formats for jobx_gemm_params.w_kind.
#define JOBX_W_BF16 0   // w: bf16 [n, k]
#define JOBX_W_INT8 1   // w: int8 [n, k], w_scale: f32 [n] (weight-only; x is bf16)
#define JOBX_W8A8 2     // w: int8 [n, k] + w_scale [n]; x: int8 [m, k] + x_scale f32 [m]

// y[m, n] (+)= (x[m, k] · w[n, k]^T) [* scales] + Σ_r lora_t[m, r] · lora_b[id, n, r] · s[id]
// The nn.Linear product of every projection. Accumulation in f32; y in bf16 or f32.
// LoRA (optional, lora_t != NULL): the low-rank "expand" is fused into the epilogue, one adapter
// per row (lora_ids[m], -1 = none) as in SGMV, with lora_t = x · A^T from jobx_lora_shrink.
typedef struct {
    const void* x;         // bf16 [m, k] (JOBX_W8A8: int8 [m, k])
    const void* w;         // see w_kind
    const float* w_scale;  // [n] (int8 kinds) or NULL
    const float* x_scale;  // [m] (JOBX_W8A8) or NULL
    void* y;               // bf16 or f32 [m, ldy]
    long long m;
    long long n;
    long long k;
    long long ldy;
    int w_kind;
    int y_f32;             // 1: y is f32, 0: bf16
    int accumulate;        // 1: y += result (read y first)
    const float* lora_t;   // f32 [m, lora_r] or NULL
    const void* lora_b;    // bf16 [adapters, n, lora_r]
    const int* lora_ids;   // [m]
    const float* lora_scale;  // [adapters]: alpha / r
    long long lora_r;
    // gemm_skinny_tc split over k (gridDim.y > 1 blocks per column tile, opt-in): each block's
    // partial tile, [column tile][k split][16 registers][32 lanes], and one arrival counter per
    // column tile (0 between launches: the last block to arrive resets it)
    float* split_ws;
    unsigned* split_cnt;
    // Diagnostics, NULL normally (benches/cuda_kernels.rs sets it through Gpu::set_gemm_trace):
    // the sm_90a TMA GEMMs (gemm_tma_*, not the persistent ones) write 8 timestamps per block at
    // trace[8 * (blockIdx.y * gridDim.x + blockIdx.x)]: see gemm_sm90.cu, "trace".
    unsigned long long* trace;
    // 1 when launched with programmatic dependent launch (Gpu::pdl): the decode-sized kernels
    // (gemm_skinny8/32, gemm_skinny_tc) prefetch their weight rows into L2 before waiting for
    // the previous kernel (kernels/common.cuh, pdl_enter)
    int pdl;
} jobx_gemm_params;

// A decode-sized GEMM (m <= 32: gemm_skinny8/32_rms, gemm_skinny_tc_rms) whose x is the input of
// an RMS norm: the kernel normalises each x row as it loads it, y (+)= (rms_norm(x) * norm_w) ·
// w^T, with exactly rms_norm_bf16's values (the same sum of squares in the same order: the
// norm's block size for rows of k is `threads`), so that a decode step skips the norm's launch
// and its output buffer. g.x is the norm's input; k is the norm's d (a multiple of 8, x and
// norm_w 16-byte aligned: the norm's vector form).
typedef struct {
    jobx_gemm_params g;
    const void* norm_w;  // bf16 [k]
    float eps;
    int threads;         // rms_norm_bf16's block size for rows of k (32..256, a multiple of 32)
    // Diagnostics, NULL normally (tests, Gpu::set_rms_probe): block 0 writes x row r's 1 / rms
    // at inv[r], to be compared with rms_norm_bf16's bit for bit.
    float* inv;
} jobx_gemm_rms_params;

// The sm_90a TMA GEMMs (gemm_sm90.cu, gemm_tma_*): the same product and epilogue as
// jobx_gemm_params, plus the two tensor maps (CUtensorMap, 128 opaque bytes, 64-byte aligned)
// the host encodes with cuTensorMapEncodeTiled: x as [m, k] and w as [n, k], 128-byte boxes of k,
// 128-byte swizzle, zero fill out of bounds. Passed by value as a __grid_constant__ parameter
// so the copy engine can read the maps from parameter space.
typedef struct {
    jobx_gemm_params g;
    __attribute__((aligned(64))) unsigned long long x_map[16];
    __attribute__((aligned(64))) unsigned long long w_map[16];
} jobx_gemm_tma_params;

// lora_t[m, r] = x[m, :] · a[ids[m], r, :] (f32 accumulation); rows with id -1 get zeros.
typedef struct {
    const void* x;      // bf16 [m, k]
    const void* a;      // bf16 [adapters, r, k]
    const int* ids;     // [m]
    float* t;           // f32 [m, r]
    long long m;
    long long k;
    long long r;
} jobx_lora_shrink_params;

// Per-token symmetric int8 quantisation for W8A8: scale[m] = max|x[m,:]| / 127,
// q = round_half_even(x / scale) clamped to [-127, 127]; an all-zero row gets scale 0, q 0.
typedef struct {
    const void* x;  // bf16 [m, k]
    void* q;        // int8 [m, k]
    float* scale;   // [m]
    long long m;
    long long k;
} jobx_quantize_params;

// out[i] = (bf16) w[i]: weight-only int8 values widened exactly (|w| <= 127 needs 7 significant
// bits of bf16's 8), so that a large product can run on the bf16 tensor-core tiles with the
// per-channel scale still applied in f32 in their epilogue (gemm.cu, dequant_int8_bf16).
typedef struct {
    const void* w;  // int8 [len]
    void* out;      // bf16 [len]
    long long len;
} jobx_dequant_params;

// Attention over strided views (element (b, h, t, d) at b*sb + h*sh + t*st + d), output
// o[b, i, h*dk + d] (the layout the output projection reads). Online softmax in f32.
// Score(i, j) = scale * q_i·k_j + bias(h, i, j), where the bias is the T5 relative position
// bias when rel_bias != NULL. Key j is visible to query i when key_mask[b, j] != 0 (if given),
// j <= q_pos(i) if causal, and q_pos(i) - j < window if window > 0, with q_pos(i) = q_offset + i.
// key_mask and K/V are indexed by the K/V batch row kb = kv_batch ? kv_batch[b] : b.
typedef struct {
    const void* q;   // bf16
    const void* k;   // bf16 (int8 with k_scale)
    const void* v;   // bf16 (int8 with v_scale)
    void* o;         // bf16 [batch, tq, heads*dk]
    long long q_sb, q_sh, q_st;
    long long k_sb, k_sh, k_st;
    long long v_sb, v_sh, v_st;
    long long batch;
    long long heads;
    long long kv_heads;     // GQA: query head h reads kv head h / (heads / kv_heads)
    long long tq;
    long long tk;
    long long dk;           // <= 128
    long long q_offset;     // absolute position of query 0 (KV-cache decode)
    long long window;       // sliding window (0 = none)
    float scale;            // 1 for T5, 1/sqrt(dk) for Mistral
    int causal;
    const int* key_mask;    // [kv batch rows, tk] or NULL
    const int* kv_batch;    // [batch]: K/V batch row per query row (beams) or NULL (identity)
    const float* rel_bias;  // f32 [num_buckets, heads] (T5 relative_attention_bias) or NULL
    int num_buckets;
    int max_distance;
    int bidirectional;      // T5 encoder 1, decoder self-attention 0
    // decode kernel (attention_decode_d*, few queries over many keys) only: the keys are cut
    // into `splits` chunks of `chunk` keys, one block each; with splits > 1 each block writes
    // (max, sum, unnormalised output[dk]) in f32 to `partial` [batch*tq, heads, splits, dk + 2]
    // and attention_combine merges them.
    float* partial;
    long long splits;
    long long chunk;        // <= 1024
    // int8 K and V (`Backend::attention_q8`; decode and general kernels only): k and v point at
    // int8 elements, and the element group of dk starting at element e (of the buffer the views
    // index, offsets included) has scale k_scale[e / dk] (v_scale for v); every stride and
    // offset is a multiple of dk. NULL for bf16 K/V.
    const float* k_scale;
    const float* v_scale;
    // When set, the position of query 0 is read from here on the device instead of q_offset:
    // a decode step recorded once in a CUDA graph and replayed at every position
    // (`Backend::attention_at`). Any value is memory-safe (keys stay within tk).
    const int* q_offset_at;
    // Diagnostics (attention_wg_*_trace only, for benchmarks): 8 words per block, else NULL.
    unsigned long long* trace;
} jobx_attention_params;

// Logits processing for one decode step, f32 logits [rows, vocab]:
// masked (bit v of mask row clear) and suppressed entries become -inf; then per row the top_k largest
// (value, id) pairs in descending order (ties: lower id first), so top_k = 1 is greedy argmax.
typedef struct {
    float* logits;             // f32 [rows, vocab] (masked in place)
    const unsigned int* mask;  // [rows, ceil(vocab/32)] bitmask, bit set = allowed; or NULL
    int* out_ids;              // [rows, top_k]
    float* out_vals;           // [rows, top_k]
    long long rows;
    long long vocab;
    int top_k;                 // 1..=64
    const int* suppress;       // [n_suppress] ids set to -inf before the top-k (EOS before the
    int n_suppress;            //   minimum length), or NULL / 0
    float* out_lse;            // [rows]: log-sum-exp of the processed row (-inf if all masked),
                               //   or NULL; with it, log p(id) = value - lse (greedy on device)
} jobx_logits_params;

#endif  // JOBX_PARAMS_H
