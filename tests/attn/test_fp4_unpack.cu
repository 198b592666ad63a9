/* test_fp4_unpack.cu - the attention kernel's FP4 bit placement
 * (kv_attn_deq.cuh: fp4quad, fp4mul, fp4mul2) on the CPU, against the codec.
 *
 * fp4quad(x) turns nibbles P and P+4 of a packed word into pair P, a bf16x2 of
 * value * 2^-126 (low half from nibble P); the nibbles around them must not
 * leak in.  The reference is kv_e2m1_to_f32 (kv_codec.h) times 2^-126 as a
 * float, whose top 16 bits are that bf16 exactly (the values have at most
 * two significant bits).  Checked: every word whose other six nibbles are
 * all 0 or all F (each nibble pair, 2^8 x 4 x 4), 2^24 random words, and,
 * with KVPOOL_EXHAUSTIVE=1 in the environment, all 2^32 words (~45 s).
 * fp4mul(s) must be the bf16 bits of 2^(s-65) for every scale byte up to
 * 192 and clamp to 2^127 above, and the kernel's bf16x2 multipliers
 * (fp4mul2) must equal two fp4mul halves.
 *
 * Runs without a GPU (suite unit); exit status 0 when everything matches.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_codec.h"
#include "kv_attn_deq.cuh"

static uint32_t want_half(uint32_t nibble)
{
        const float f = ldexpf(kv_e2m1_to_f32((uint8_t)nibble), -126);
        uint32_t u;
        memcpy(&u, &f, sizeof u);
        return u >> 16;
}

static uint32_t half_of[16]; /* want_half of every nibble, filled in main */

static uint32_t want_pair(uint32_t x, int p)
{
        return half_of[(x >> (4 * p)) & 0xFu] | half_of[(x >> (16 + 4 * p)) & 0xFu] << 16;
}

static unsigned long long failures;

static void check_word(uint32_t x)
{
        uint32_t q[4];
        kva::fp4quad(x, q);
        for (int p = 0; p < 4; p++) {
                const uint32_t w = want_pair(x, p);
                if (q[p] != w && failures++ < 10)
                        fprintf(stderr, "fp4quad(0x%08x)[%d] = 0x%08x, want 0x%08x\n", x, p, q[p], w);
        }
}

int main(void)
{
        for (uint32_t n = 0; n < 16; n++)
                half_of[n] = want_half(n);
        /* the two nibbles of each pair over all 256 combinations, the rest
         * all clear or all set (the neighbours' bits are what a wrong shift
         * or mask would let in) */
        for (int p = 0; p < 4; p++)
                for (uint32_t ab = 0; ab < 256; ab++)
                        for (int fill = 0; fill < 2; fill++) {
                                const uint32_t mask = 0xFu << (4 * p) | 0xFu << (16 + 4 * p);
                                const uint32_t x = (fill ? ~mask : 0u) | (ab & 0xFu) << (4 * p) |
                                                   (ab >> 4) << (16 + 4 * p);
                                check_word(x);
                        }
        uint64_t r = 0x9E3779B97F4A7C15ull;
        for (int i = 0; i < (1 << 24); i++) {
                r ^= r << 13;
                r ^= r >> 7;
                r ^= r << 17;
                check_word((uint32_t)(r >> 16));
        }
        const char *ex = getenv("KVPOOL_EXHAUSTIVE");
        if (ex && !strcmp(ex, "1"))
                for (uint64_t x = 0; x < (1ull << 32); x++)
                        check_word((uint32_t)x);

        for (uint32_t s = 0; s < 256; s++) {
                const float f = ldexpf(1.0f, (int)(s <= 192 ? s : 192) - 65);
                uint32_t u;
                memcpy(&u, &f, sizeof u);
                if (kva::fp4mul(s) != u >> 16 && failures++ < 10)
                        fprintf(stderr, "fp4mul(%u) = 0x%04x, want 0x%04x\n", s, kva::fp4mul(s), u >> 16);
        }
        /* the kernel's bf16x2 multipliers, built by one multiply each */
        for (uint32_t a = 0; a < 256; a++)
                for (uint32_t b = 0; b < 256; b++) {
                        const uint32_t want = kva::fp4mul(a) | kva::fp4mul(b) << 16;
                        if (kva::fp4mul2(a, b) != want && failures++ < 10)
                                fprintf(stderr, "fp4mul2(%u, %u) = 0x%08x, want 0x%08x\n", a, b, kva::fp4mul2(a, b),
                                        want);
                        if (a == b && kva::fp4mul2(a) != want && failures++ < 10)
                                fprintf(stderr, "fp4mul2(%u) = 0x%08x, want 0x%08x\n", a, kva::fp4mul2(a), want);
                }
        printf("test_fp4_unpack: %s, %llu failures\n",
               ex && !strcmp(ex, "1") ? "all 2^32 words" : "2^24 random words and the edge patterns", failures);
        return failures ? 1 : 0;
}
