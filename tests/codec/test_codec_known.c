/* test_codec_known.c - kernels/kv_codec.h on the host: known bit patterns,
 * exhaustive decode/encode round trips, the FP4 block rules, the vector
 * helpers, and the CUDA stub of a build without CUDA.  The independent
 * oracle (ml_dtypes) is test_codec.py. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <string.h>

#include "kv_codec.h"
#include "kv_config.h"
#include "kv_ops.h"

static float f32(uint32_t u) { return kv_bits_f32(u); }

Test(codec_known, e4m3_patterns)
{
        cr_expect_eq(kv_f32_to_e4m3(448.0f), 0x7E);
        cr_expect_eq(kv_f32_to_e4m3(500.0f), 0x7E, "beyond max saturates");
        cr_expect_eq(kv_f32_to_e4m3(-500.0f), 0xFE);
        cr_expect_eq(kv_f32_to_e4m3(464.0f), 0x7E, "tie 448/480 goes to even 448");
        cr_expect_eq(kv_f32_to_e4m3(1e-9f), 0x00);
        cr_expect_eq(kv_f32_to_e4m3(-1e-9f), 0x80, "sign of a zero result kept");
        cr_expect_eq(kv_f32_to_e4m3(NAN), 0x7F);
        cr_expect_eq(kv_f32_to_e4m3(-NAN), 0xFF);
        cr_expect_eq(kv_f32_to_e4m3(INFINITY), 0x7E, "Inf saturates");
        cr_expect_eq(kv_f32_to_e4m3(-INFINITY), 0xFE);
        cr_expect_eq(kv_f32_to_e4m3(1.0f), 0x38);
        cr_expect_eq(kv_f32_to_e4m3(0.001953125f), 0x01, "2^-9, smallest subnormal");
        cr_expect_eq(kv_f32_to_e4m3(0.0009765625f), 0x00, "2^-10 ties to even 0");
        cr_expect_eq(kv_f32_to_e4m3(0.0029296875f), 0x02, "1.5 * 2^-9 ties to even 2");
        cr_expect_eq(kv_f32_to_e4m3(17.0f), 0x58, "tie 16/18 goes to 16");
        cr_expect_eq(kv_f32_to_e4m3(19.0f), 0x5A, "tie 18/20 goes to 20");
        cr_expect_eq(kv_f32_to_e4m3(0.0146484375f), 0x08, "15 * 2^-10: rounds up into the first normal");
        cr_expect(isnan(kv_e4m3_to_f32(0x7F)) && isnan(kv_e4m3_to_f32(0xFF)));
        cr_expect(signbit(kv_e4m3_to_f32(0xFF)));
        cr_expect_eq(kv_e4m3_to_f32(0x7E), 448.0f);
        cr_expect_eq(kv_e4m3_to_f32(0x01), 0.001953125f);
        cr_expect_eq(kv_f32_bits(kv_e4m3_to_f32(0x80)), 0x80000000u, "-0");
}

Test(codec_known, e5m2_patterns)
{
        cr_expect_eq(kv_f32_to_e5m2(57344.0f), 0x7B);
        cr_expect_eq(kv_f32_to_e5m2(61440.0f), 0x7B, "tie 57344/65536 would be Inf: saturates");
        cr_expect_eq(kv_f32_to_e5m2(1e30f), 0x7B);
        cr_expect_eq(kv_f32_to_e5m2(-INFINITY), 0xFB);
        cr_expect_eq(kv_f32_to_e5m2(NAN), 0x7E);
        cr_expect_eq(kv_f32_to_e5m2(-NAN), 0xFE);
        cr_expect_eq(kv_f32_to_e5m2(1.0f), 0x3C);
        cr_expect_eq(kv_f32_to_e5m2(1.375f), 0x3E, "tie 1.25/1.5 goes to 1.5");
        cr_expect_eq(kv_f32_to_e5m2(1.52587890625e-05f), 0x01, "2^-16");
        cr_expect(isinf(kv_e5m2_to_f32(0x7C)) && isnan(kv_e5m2_to_f32(0x7D)));
        cr_expect_eq(kv_e5m2_to_f32(0xFB), -57344.0f);
}

Test(codec_known, e2m1_patterns)
{
        static const float v[8] = { 0, 0.5f, 1, 1.5f, 2, 3, 4, 6 };
        for (uint8_t c = 0; c < 16; c++) {
                float want = (c & 8) ? -v[c & 7] : v[c & 7];
                cr_expect_eq(kv_f32_bits(kv_e2m1_to_f32(c)), kv_f32_bits(want), "code %u", c);
                cr_expect_eq(kv_f32_to_e2m1(want), c, "code %u round trip", c);
        }
        cr_expect_eq(kv_f32_to_e2m1(5.0f), 0x6, "tie 4/6 goes to 4");
        cr_expect_eq(kv_f32_to_e2m1(2.5f), 0x4, "tie 2/3 goes to 2");
        cr_expect_eq(kv_f32_to_e2m1(3.5f), 0x6, "tie 3/4 goes to 4");
        cr_expect_eq(kv_f32_to_e2m1(0.25f), 0x0, "tie 0/0.5 goes to 0");
        cr_expect_eq(kv_f32_to_e2m1(0.75f), 0x2, "tie 0.5/1 goes to 1");
        cr_expect_eq(kv_f32_to_e2m1(7.0f), 0x7, "beyond 6 saturates");
        cr_expect_eq(kv_f32_to_e2m1(-INFINITY), 0xF);
        cr_expect_eq(kv_f32_to_e2m1(NAN), 0x0, "NaN stores +0");
        cr_expect_eq(kv_f32_to_e2m1(-NAN), 0x0);
}

Test(codec_known, e8m0_and_block_scale)
{
        cr_expect_eq(kv_e8m0_to_f32(127), 1.0f);
        cr_expect_eq(kv_e8m0_to_f32(128), 2.0f);
        cr_expect_eq(kv_e8m0_to_f32(0), ldexpf(1.0f, -127));
        cr_expect(isnan(kv_e8m0_to_f32(255)));
        for (int s = 0; s < 254; s++)
                cr_expect_eq(kv_e8m0_to_f32((uint8_t)s) * kv_e8m0_inv_f32((uint8_t)s), 1.0f, "s=%d", s);
        cr_expect_eq(kv_fp4_block_scale(6.0f), 127);
        cr_expect_eq(kv_fp4_block_scale(nextafterf(6.0f, 7.0f)), 128);
        cr_expect_eq(kv_fp4_block_scale(0.0f), 127);
        cr_expect_eq(kv_fp4_block_scale(INFINITY), 127);
        cr_expect_eq(kv_fp4_block_scale(1e-40f), 0, "subnormal amax clamps to 2^-127");
        cr_expect_eq(kv_fp4_block_scale(f32(0x7F7FFFFFu)), 253);
        /* exhaustive over binades: 6 * 2^e is the smallest that holds amax */
        for (int E = -120; E < 120; E++) {
                float a = ldexpf(1.0f, E) * 1.3f;
                int e = kv_fp4_block_scale(a) - 127;
                cr_expect(ldexpf(6.0f, e) >= a && ldexpf(6.0f, e - 1) < a, "amax=%g e=%d", a, e);
        }
}

Test(codec_known, fp4_block_rules)
{
        float x[16] = { 0 };
        uint8_t p[8], s;

        kv_fp4_encode_block16(x, p, &s);
        cr_expect_eq(s, 127, "all-zero block: scale 2^0");
        for (int i = 0; i < 8; i++)
                cr_expect_eq(p[i], 0);

        x[0] = NAN; x[1] = 3.0f; x[2] = -INFINITY; x[3] = 0.75f;
        kv_fp4_encode_block16(x, p, &s);
        cr_expect_eq(s, 126, "scale from finite values only: 3 -> 2^-1");
        cr_expect_eq(p[0], 0x70, "NaN -> 0 (low), 3/0.5 = 6 -> 7 (high)");
        cr_expect_eq(p[1], 0x3F, "-Inf -> -6 = 0xF (low), 0.75/0.5 = 1.5 -> 3 (high)");

        for (int i = 0; i < 16; i++)
                x[i] = (float)(i - 8) * 0.37f;
        kv_fp4_encode_block16(x, p, &s);
        float sc = kv_e8m0_to_f32(s), y[8];
        for (int w = 0; w < 2; w++) {
                uint32_t u;
                memcpy(&u, p + 4 * w, 4);       /* little-endian host */
                kv_e2m1x8_to_f32(u, sc, y);
                cr_expect_eq(kv_f32x8_to_e2m1(x + 8 * w, kv_e8m0_inv_f32(s)), u);
                for (int i = 0; i < 8; i++) {
                        float xi = x[8 * w + i];
                        cr_expect(fabsf(y[i] - xi) <= 0.25f * fmaxf(sc, fabsf(xi)) + 1e-6f,
                                  "x=%g y=%g scale=%g", xi, y[i], sc);
                }
        }
}

/* Every finite code decodes to a value that encodes back to the same code. */
Test(codec_known, exhaustive_round_trips)
{
        for (int c = 0; c < 256; c++) {
                if ((c & 0x7F) != 0x7F)
                        cr_expect_eq(kv_f32_to_e4m3(kv_e4m3_to_f32((uint8_t)c)), c, "e4m3 %#x", c);
                if ((c & 0x7C) != 0x7C)
                        cr_expect_eq(kv_f32_to_e5m2(kv_e5m2_to_f32((uint8_t)c)), c, "e5m2 %#x", c);
        }
        for (uint32_t c = 0; c < 65536; c++) {
                if ((c & 0x7C00) != 0x7C00)
                        cr_expect_eq(kv_f32_to_f16(kv_f16_to_f32((uint16_t)c)), c, "f16 %#x", c);
                if ((c & 0x7F80) != 0x7F80)
                        cr_expect_eq(kv_f32_to_bf16(kv_bf16_to_f32((uint16_t)c)), c, "bf16 %#x", c);
        }
}

Test(codec_known, sixteen_bit_patterns)
{
        cr_expect_eq(kv_f32_to_bf16(1.0f), 0x3F80);
        cr_expect_eq(kv_f32_to_bf16(1.0f + 0x1p-8f), 0x3F80, "tie to even");
        cr_expect_eq(kv_f32_to_bf16(1.0f + 0x3p-8f), 0x3F82, "tie to even (up)");
        cr_expect_eq(kv_f32_to_bf16(f32(0x7F7FFFFFu)), 0x7F80, "overflow to Inf");
        cr_expect_eq(kv_f32_to_bf16(NAN) & 0x7FC0, 0x7FC0);
        cr_expect_eq(kv_f32_to_bf16(f32(0x7F800001u)) & 0x7FC0, 0x7FC0, "signalling NaN quieted");
        cr_expect_eq(kv_f32_to_f16(65504.0f), 0x7BFF);
        cr_expect_eq(kv_f32_to_f16(65519.0f), 0x7BFF);
        cr_expect_eq(kv_f32_to_f16(65520.0f), 0x7C00, "tie past max goes to Inf");
        cr_expect_eq(kv_f32_to_f16(0x1p-24f), 0x0001);
        cr_expect_eq(kv_f32_to_f16(0x1p-25f), 0x0000, "tie to even 0");
        cr_expect_eq(kv_f32_to_f16(-NAN) & 0xFE00, 0xFE00);
}

Test(codec_known, fp8_vector_helpers)
{
        const float in[4] = { 1.0f, -448.0f, NAN, 0.001953125f };
        float out[4];
        uint32_t u = kv_f32x4_to_e4m3(in);
        cr_expect_eq(u, 0x017FFE38u);
        kv_e4m3x4_to_f32(u, out);
        cr_expect(out[0] == 1.0f && out[1] == -448.0f && isnan(out[2]) && out[3] == 0.001953125f);
        u = kv_f32x4_to_e5m2(in);
        cr_expect_eq(u, (uint32_t)kv_f32_to_e5m2(in[3]) << 24 | 0x7EDF3Cu);
        kv_e5m2x4_to_f32(u, out);
        cr_expect(out[0] == 1.0f && out[1] == -448.0f && isnan(out[2]));
}

#if !KV_HAVE_CUDA
Test(codec_known, cuda_stub_says_built_without_cuda)
{
        char msg[128] = "";
        cr_expect_eq(kv_cuda_available(), 0);
        cr_expect_eq(kv_cuda_write(NULL, NULL, NULL, msg, sizeof(msg)), -ENOSYS);
        cr_expect(strstr(msg, "built without CUDA"), "msg: %s", msg);
        cr_expect_eq(kv_cuda_gather(NULL, NULL, NULL, msg, sizeof(msg)), -ENOSYS);
        cr_expect_eq(kv_cuda_decode(NULL, NULL, NULL, NULL, 0), -ENOSYS);
        cr_expect_eq(kv_cuda_extend(NULL, NULL, NULL, msg, sizeof(msg)), -ENOSYS);
}
#endif
