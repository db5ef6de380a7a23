// int8 -> bf16 conversion without the integer-to-float unit, shared by every kernel that widens
// int8 weights or K/V (i8x8_to_bf16x8 in common.cuh).
//
// Why: `(float)(signed char)b` compiles to a sign extension plus cvt.rn.f32.s16 (I2F), which
// Hopper and Ampere run at a quarter of the rate of an FADD; run 5 (H100, 2026-11-26) found the
// weight-only int8 decode GEMMs and the int8 decode attention slower than their bf16 forms
// although they read half the bytes, and per weight the conversion sat between the load and
// the mma. Here a byte becomes a float by bit arithmetic on full-rate units (the trick of
// FasterTransformer's and Marlin's dequantisers): with b' = b + 128 (b ^ 0x80, as unsigned) in
// the low mantissa byte of 2^23, the f32 bit pattern 0x4B0000b' is exactly 2^23 + b'; one FADD
// of -(2^23 + 128) leaves b exactly. Its bf16 is then the f32's upper 16 bits, exactly, since
// |b| <= 128 needs at most 8 significant bits and bf16 has 8. Per 4 weights: 1 LOP3, 4 PRMT,
// 4 FADD, 2 PRMT, against 4 sign extensions, 4 I2F and 2 F2F.
//
// The same bits as __floats2bfloat162_rn((float)b0, (float)b1) (exact conversions, .x = low
// half = the first). Compiles as host C++ too (the shims below), so tests/kernel_host.rs checks
// it against that definition for every byte value in every position, without a GPU.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define JOBX_HD __device__ __forceinline__
#else
// host shims: __byte_perm as the PTX ISA defines prmt (result byte i = byte s[4i+2:4i] of the
// 8 bytes {x.b0..x.b3, y.b0..y.b3}), and the bit casts
#include <cstring>
#define JOBX_HD inline
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const unsigned long long v = ((unsigned long long)y << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; i++) r |= (unsigned)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return r;
}
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
#endif

// The four int8 of `w` (byte 0 first) as bf16: `lo` holds bytes 0, 1 (byte 0 in the low half),
// `hi` bytes 2, 3.
JOBX_HD void i8x4_to_bf16x4(unsigned w, unsigned& lo, unsigned& hi) {
    const unsigned u = w ^ 0x80808080u;  // b + 128 per byte
    const unsigned m = 0x4B000000u;      // 2^23: y.b0..b2 = 0, y.b3 = 0x4B
    const float bias = 8388736.0f;       // 2^23 + 128
    // f32 words 0x4B0000 u.bi: bytes (u.bi, y.b0, y.b1, y.b3) = selectors i, 4, 5, 7
    const unsigned f0 = __float_as_uint(__uint_as_float(__byte_perm(u, m, 0x7540)) - bias);
    const unsigned f1 = __float_as_uint(__uint_as_float(__byte_perm(u, m, 0x7541)) - bias);
    const unsigned f2 = __float_as_uint(__uint_as_float(__byte_perm(u, m, 0x7542)) - bias);
    const unsigned f3 = __float_as_uint(__uint_as_float(__byte_perm(u, m, 0x7543)) - bias);
    // upper halves: (x.b2, x.b3, y.b2, y.b3) = selectors 2, 3, 6, 7
    lo = __byte_perm(f0, f1, 0x7632);
    hi = __byte_perm(f2, f3, 0x7632);
}
