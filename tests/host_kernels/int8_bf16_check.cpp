// Host check of kernels/int8_bf16.cuh (compiled and run by tests/kernel_host.rs): the bit
// arithmetic against the definition, bf16 of (float)(signed char)b, for every byte value in
// every position of a word (the other bytes all values too, for each pair of positions) and
// for random words. Prints "ok N" or the first mismatches; exit status 1 on any.
#include <cstdio>
#include <cstdint>
#include <cstring>
#include "int8_bf16.cuh"

static unsigned ref_bf16(unsigned byte) {
    const float f = (float)(signed char)(byte & 0xff);
    unsigned u;
    std::memcpy(&u, &f, 4);
    if (u & 0xffff) { std::printf("reference not exact for %u\n", byte); }
    return u >> 16;
}

static long bad = 0, checked = 0;

static void check(unsigned w) {
    unsigned lo, hi;
    i8x4_to_bf16x4(w, lo, hi);
    const unsigned got[4] = {lo & 0xffff, lo >> 16, hi & 0xffff, hi >> 16};
    for (int i = 0; i < 4; i++) {
        const unsigned want = ref_bf16(w >> (8 * i));
        checked++;
        if (got[i] != want && bad++ < 10)
            std::printf("word %08x byte %d: got %04x want %04x\n", w, i, got[i], want);
    }
}

int main() {
    // every value of each pair of bytes, the other two fixed at a few patterns
    const unsigned fill[] = {0x00u, 0x7fu, 0x80u, 0xffu, 0x5au};
    for (int a = 0; a < 4; a++)
        for (int b = a + 1; b < 4; b++)
            for (unsigned f : fill)
                for (unsigned v = 0; v < 65536; v++) {
                    unsigned w = 0;
                    for (int i = 0; i < 4; i++) w |= f << (8 * i);
                    w &= ~((0xffu << (8 * a)) | (0xffu << (8 * b)));
                    w |= (v & 0xff) << (8 * a) | (v >> 8) << (8 * b);
                    check(w);
                }
    // random words (xorshift)
    uint32_t x = 2463534242u;
    for (int n = 0; n < 1000000; n++) {
        x ^= x << 13; x ^= x >> 17; x ^= x << 5;
        check(x);
    }
    if (bad) { std::printf("FAILED %ld of %ld\n", bad, checked); return 1; }
    std::printf("ok %ld\n", checked);
    return 0;
}
