/* kv_codec.h - the number formats of a pool, one source for gcc and nvcc.
 *
 * Every conversion here is integer and bit arithmetic on IEEE-754 binary32
 * patterns (plus exact power-of-two or small-integer products), so the host
 * and the device produce the same bits.  CUDA code may swap in faster
 * intrinsics only where a test proves them equal to these functions.
 *
 * Formats (docs/dtypes.md has the long version):
 *   e4m3   OCP E4M3FN: bias 7, 3 mantissa bits, max +-448, subnormals down
 *          to 2^-9, no infinities, NaN = S.1111.111 (0x7F / 0xFF).
 *   e5m2   OCP E5M2: bias 15, 2 mantissa bits, max +-57344, subnormals down
 *          to 2^-16, Inf = S.11111.00, NaN = S.11111.xx (xx != 0).
 *   e2m1   OCP FP4 E2M1: values {0, 0.5, 1, 1.5, 2, 3, 4, 6} x sign, one
 *          nibble S.EE.M; no Inf, no NaN.
 *   e8m0   OCP E8M0 scale byte s: 2^(s-127); 0xFF is NaN (never produced).
 *   bf16, f16: IEEE-style 16-bit formats with Inf and NaN.
 *
 * Rounding: every encoder rounds to nearest, ties to even.
 * Saturation: e4m3 and e5m2 encoders saturate every value beyond the range,
 *   including +-Inf, to +-max: a pool never stores an infinity.  NaN stays
 *   NaN with its sign (e4m3: 0x7F|s, e5m2: 0x7E|s, the canonical quiet NaN).
 *   bf16 and f16 behave as IEEE: overflow gives +-Inf, NaN stays a quiet NaN
 *   with its sign and top payload bits.
 * FP4 (e2m1) element encoder: the input is already divided by the block
 *   scale; beyond +-6 (including +-Inf) saturates to +-6; NaN gives +0
 *   (nibble 0x0); -0 and negative values that round to zero give -0 (0x8).
 * FP4 blocks of 16: amax = max |x| over the block's FINITE elements;
 *   the scale is 2^e with e = ceil(log2(amax / 6)), computed exactly, clamped
 *   to [-127, 127], stored as the E8M0 byte e + 127.  Hence no finite element
 *   clips (|x| / 2^e <= 6).  amax == 0 (all zero, or nothing finite) gives
 *   byte 127 (scale 1).  amax below 6 * 2^-127 (tiny: f32 subnormals and the
 *   smallest normals) clamps to e = -127: byte 0, scale 2^-127, and the
 *   elements are encoded against that scale (they may round to zero, never
 *   clip).  NaN elements store +0, +-Inf store +-6 (i.e. +-6 x scale).
 *
 * Quantized element order: four FP8 values in a uint32 are bytes 0..3, i.e.
 * element i in bits [8i, 8i+8); eight FP4 values in a uint32 are nibbles
 * 0..7, element i in bits [4i, 4i+4), so in memory each byte holds the even
 * element in its low nibble (design §3).
 */
#ifndef KV_CODEC_H
#define KV_CODEC_H

#include <stdint.h>

#ifdef __CUDACC__
#define KV_HD __host__ __device__ __forceinline__
#else
#define KV_HD static inline
#endif

#define KV_E4M3_MAX     448.0f
#define KV_E5M2_MAX     57344.0f
#define KV_E2M1_MAX     6.0f
#define KV_E4M3_MAXCODE 0x7Eu   /* +448 */
#define KV_E5M2_MAXCODE 0x7Bu   /* +57344 */
#define KV_E4M3_NAN     0x7Fu
#define KV_E5M2_NAN     0x7Eu
#define KV_E8M0_ONE     127u    /* 2^0 */

/* ---- binary32 bit access ---------------------------------------------------
 * A union would do on the host, but memcpy-free punning through a union is
 * the form both gcc and nvcc compile to a plain register move. */
KV_HD uint32_t kv_f32_bits(float x)
{
        union { float f; uint32_t u; } v;
        v.f = x;
        return v.u;
}

KV_HD float kv_bits_f32(uint32_t u)
{
        union { float f; uint32_t u; } v;
        v.u = u;
        return v.f;
}

/* |x| if x is finite, else 0: the term of a block's amax (NaN and Inf do not
 * set an FP4 block's scale; see the header comment). */
KV_HD float kv_abs_finite(float x)
{
        uint32_t a = kv_f32_bits(x) & 0x7FFFFFFFu;
        return a >= 0x7F800000u ? 0.0f : kv_bits_f32(a);
}

/* Rounds a non-NaN magnitude (binary32 bits a, sign cleared) to a format with
 * `man` mantissa bits and exponent bias `bias`, ties to even, and returns the
 * unsigned code.  The caller must have handled magnitudes whose binary32
 * exponent exceeds the format's largest exponent; the result may still be
 * one code past the largest finite one (rounding carried), which the caller
 * saturates or keeps as Inf. */
KV_HD uint32_t kv_round_small_(uint32_t a, uint32_t man, int32_t bias)
{
        int32_t e32 = (int32_t)(a >> 23);

        if (e32 - 127 >= 1 - bias) {
                /* Normal in the target: rebias the exponent in place, then
                 * drop 23-man mantissa bits with round-half-even.  A carry out
                 * of the mantissa bumps the exponent, which is right. */
                uint32_t r = a - ((uint32_t)(127 - bias) << 23);
                uint32_t sh = 23u - man;
                r += ((1u << (sh - 1u)) - 1u) + ((r >> sh) & 1u);
                return r >> sh;
        }
        /* Subnormal (or zero) in the target: the code is the magnitude in
         * units of the smallest subnormal 2^(1-bias-man), rounded.  The
         * magnitude is mant * 2^(max(e32,1) - 150). */
        uint32_t mant = (a & 0x7FFFFFu) | (e32 ? 0x800000u : 0u);
        int32_t s = 151 - bias - (int32_t)man - (e32 ? e32 : 1);
        if (s >= 25)    /* mant < 2^24, so below half a unit: rounds to 0 */
                return 0;
        uint32_t q = mant >> s;
        uint32_t rem = mant & ((1u << s) - 1u);
        uint32_t half = 1u << (s - 1);
        if (rem > half || (rem == half && (q & 1u)))
                q++;    /* may reach 1 << man: the smallest normal, correct */
        return q;
}

/* ---- FP8 E4M3FN ------------------------------------------------------------ */

/* float -> E4M3FN, round half even, saturating (+-Inf -> +-448), NaN -> 0x7F|s. */
KV_HD uint8_t kv_f32_to_e4m3(float x)
{
        uint32_t u = kv_f32_bits(x);
        uint32_t sign = (u >> 24) & 0x80u;
        uint32_t a = u & 0x7FFFFFFFu;

        if (a > 0x7F800000u)
                return (uint8_t)(sign | KV_E4M3_NAN);
        if ((a >> 23) > 127u + 8u)      /* >= 512, or Inf */
                return (uint8_t)(sign | KV_E4M3_MAXCODE);
        uint32_t c = kv_round_small_(a, 3, 7);
        if (c > KV_E4M3_MAXCODE)        /* rounded past 448 (into the NaN code) */
                c = KV_E4M3_MAXCODE;
        return (uint8_t)(sign | c);
}

/* E4M3FN -> float, exact.  0x7F/0xFF -> NaN (sign kept). */
KV_HD float kv_e4m3_to_f32(uint8_t c)
{
        uint32_t sign = (uint32_t)(c & 0x80u) << 24;
        uint32_t e = (c >> 3) & 0xFu, m = c & 7u;

        if (e == 15u && m == 7u)
                return kv_bits_f32(sign | 0x7FC00000u);
        if (e == 0u) {
                /* m * 2^-9: a small integer times a power of two, exact */
                float v = (float)m * 0.001953125f;
                return kv_bits_f32(sign | kv_f32_bits(v));
        }
        return kv_bits_f32(sign | ((e + 120u) << 23) | (m << 20));
}

/* ---- FP8 E5M2 -------------------------------------------------------------- */

/* float -> E5M2, round half even, saturating (+-Inf -> +-57344), NaN -> 0x7E|s. */
KV_HD uint8_t kv_f32_to_e5m2(float x)
{
        uint32_t u = kv_f32_bits(x);
        uint32_t sign = (u >> 24) & 0x80u;
        uint32_t a = u & 0x7FFFFFFFu;

        if (a > 0x7F800000u)
                return (uint8_t)(sign | KV_E5M2_NAN);
        if ((a >> 23) > 127u + 15u)     /* >= 65536, or Inf */
                return (uint8_t)(sign | KV_E5M2_MAXCODE);
        uint32_t c = kv_round_small_(a, 2, 15);
        if (c > KV_E5M2_MAXCODE)        /* rounded past 57344 (into Inf) */
                c = KV_E5M2_MAXCODE;
        return (uint8_t)(sign | c);
}

/* E5M2 -> float, exact (Inf and NaN included). */
KV_HD float kv_e5m2_to_f32(uint8_t c)
{
        uint32_t sign = (uint32_t)(c & 0x80u) << 24;
        uint32_t e = (c >> 2) & 0x1Fu, m = c & 3u;

        if (e == 31u)
                return kv_bits_f32(sign | 0x7F800000u | (m ? 0x400000u | (m << 21) : 0u));
        if (e == 0u) {
                float v = (float)m * 1.52587890625e-05f;        /* m * 2^-16, exact */
                return kv_bits_f32(sign | kv_f32_bits(v));
        }
        return kv_bits_f32(sign | ((e + 112u) << 23) | (m << 21));
}

/* ---- FP4 E2M1 and the E8M0 block scale --------------------------------------- */

/* float (already divided by the block scale) -> E2M1 nibble, round half
 * even, saturating beyond +-6 (+-Inf too); NaN -> 0x0 (+0). */
KV_HD uint8_t kv_f32_to_e2m1(float x)
{
        uint32_t u = kv_f32_bits(x);
        uint32_t sign = (u >> 28) & 0x8u;
        uint32_t a = u & 0x7FFFFFFFu;

        if (a > 0x7F800000u)
                return 0;
        if ((a >> 23) > 127u + 2u)      /* >= 8, or Inf */
                return (uint8_t)(sign | 0x7u);
        uint32_t c = kv_round_small_(a, 1, 1);
        if (c > 0x7u)                   /* 7 rounds to 8: past 6 */
                c = 0x7u;
        return (uint8_t)(sign | c);
}

/* E2M1 nibble (low 4 bits used) -> float, exact. */
KV_HD float kv_e2m1_to_f32(uint8_t nibble)
{
        /* magnitudes of codes 0..7 packed as halves: 0,1,2,3,4,6,8,12 */
        uint32_t c = nibble & 7u;
        uint32_t halves = (c < 4u) ? c : (c == 4u ? 4u : c == 5u ? 6u : c == 6u ? 8u : 12u);
        float v = (float)halves * 0.5f;
        return kv_bits_f32(kv_f32_bits(v) | ((uint32_t)(nibble & 8u) << 28));
}

/* E8M0 scale byte for a block whose largest finite magnitude is amax:
 * e = ceil(log2(amax / 6)) computed exactly from amax's bits, clamped to
 * [-127, 127], returned as e + 127.  amax that is zero, negative, NaN or Inf
 * gives 127 (scale 1); callers pass the max of kv_abs_finite() terms.
 * Any amax below 6 * 2^-127 (including every f32 subnormal) gives 0. */
KV_HD uint8_t kv_fp4_block_scale(float amax)
{
        uint32_t a = kv_f32_bits(amax);

        if (a == 0u || a >= 0x7F800000u)       /* 0, negative, Inf, NaN */
                return (uint8_t)KV_E8M0_ONE;
        int32_t E = (int32_t)(a >> 23) - 127;   /* amax in [2^E, 2^(E+1)) */
        if (E < -126)                           /* subnormal: amax < 2^-126 */
                return 0;
        /* 6 * 2^(E-2) = 1.5 * 2^E: enough iff amax <= 1.5 * 2^E, i.e. the
         * mantissa is at most .1000...; 6 * 2^(E-3) < 2^E <= amax never is. */
        int32_t e = ((a & 0x7FFFFFu) <= 0x400000u) ? E - 2 : E - 1;
        if (e < -127)
                e = -127;
        if (e > 127)
                e = 127;
        return (uint8_t)(e + 127);
}

/* E8M0 byte -> 2^(s-127), exact (s = 0 gives the f32 subnormal 2^-127);
 * 0xFF -> NaN. */
KV_HD float kv_e8m0_to_f32(uint8_t s)
{
        if (s == 0xFFu)
                return kv_bits_f32(0x7FC00000u);
        if (s == 0u)
                return kv_bits_f32(0x00400000u);
        return kv_bits_f32((uint32_t)s << 23);
}

/* 2^(127-s): the reciprocal of an E8M0 scale.  It is a normal float for
 * every byte kv_fp4_block_scale() produces (0..253), so x * kv_e8m0_inv_f32(s)
 * equals x / scale exactly (up to underflow of values that round to zero in
 * E2M1 anyway).  254 gives the subnormal 2^-127, 255 NaN. */
KV_HD float kv_e8m0_inv_f32(uint8_t s)
{
        if (s == 0xFFu)
                return kv_bits_f32(0x7FC00000u);
        if (s == 0xFEu)
                return kv_bits_f32(0x00400000u);
        return kv_bits_f32((uint32_t)(254u - s) << 23);
}

/* ---- bf16 / f16 -------------------------------------------------------------- */

/* float -> bf16, round half even; overflow -> +-Inf; NaN -> quiet NaN (sign
 * and top payload bits kept). */
KV_HD uint16_t kv_f32_to_bf16(float x)
{
        uint32_t u = kv_f32_bits(x);

        if ((u & 0x7FFFFFFFu) > 0x7F800000u)
                return (uint16_t)((u >> 16) | 0x40u);
        u += 0x7FFFu + ((u >> 16) & 1u);
        return (uint16_t)(u >> 16);
}

/* bf16 -> float, exact. */
KV_HD float kv_bf16_to_f32(uint16_t h)
{
        return kv_bits_f32((uint32_t)h << 16);
}

/* float -> IEEE binary16, round half even; overflow -> +-Inf; NaN -> quiet
 * NaN (sign and top payload bits kept). */
KV_HD uint16_t kv_f32_to_f16(float x)
{
        uint32_t u = kv_f32_bits(x);
        uint32_t sign = (u >> 16) & 0x8000u;
        uint32_t a = u & 0x7FFFFFFFu;

        if (a > 0x7F800000u)
                return (uint16_t)(sign | 0x7E00u | ((a >> 13) & 0x3FFu));
        if ((a >> 23) > 127u + 15u)     /* >= 65536, or Inf */
                return (uint16_t)(sign | 0x7C00u);
        /* a carry past 65504 lands exactly on 0x7C00 = Inf, as IEEE wants */
        return (uint16_t)(sign | kv_round_small_(a, 10, 15));
}

/* binary16 -> float, exact (subnormals, Inf, NaN included). */
KV_HD float kv_f16_to_f32(uint16_t h)
{
        uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
        uint32_t e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;

        if (e == 31u)
                return kv_bits_f32(sign | 0x7F800000u | (m << 13));
        if (e == 0u) {
                float v = (float)m * 5.9604644775390625e-08f;   /* m * 2^-24, exact */
                return kv_bits_f32(sign | kv_f32_bits(v));
        }
        return kv_bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

/* ---- vector helpers ------------------------------------------------------------ */

/* Four E4M3 bytes (element i in bits [8i, 8i+8)) -> out[4]. */
KV_HD void kv_e4m3x4_to_f32(uint32_t packed, float out[4])
{
        for (int i = 0; i < 4; i++)
                out[i] = kv_e4m3_to_f32((uint8_t)(packed >> (8 * i)));
}

/* Four E5M2 bytes -> out[4]. */
KV_HD void kv_e5m2x4_to_f32(uint32_t packed, float out[4])
{
        for (int i = 0; i < 4; i++)
                out[i] = kv_e5m2_to_f32((uint8_t)(packed >> (8 * i)));
}

/* in[4] -> four E4M3 bytes, element i in bits [8i, 8i+8). */
KV_HD uint32_t kv_f32x4_to_e4m3(const float in[4])
{
        uint32_t r = 0;
        for (int i = 0; i < 4; i++)
                r |= (uint32_t)kv_f32_to_e4m3(in[i]) << (8 * i);
        return r;
}

/* in[4] -> four E5M2 bytes. */
KV_HD uint32_t kv_f32x4_to_e5m2(const float in[4])
{
        uint32_t r = 0;
        for (int i = 0; i < 4; i++)
                r |= (uint32_t)kv_f32_to_e5m2(in[i]) << (8 * i);
        return r;
}

/* Eight E2M1 nibbles (element i in bits [4i, 4i+4)) times scale -> out[8]. */
KV_HD void kv_e2m1x8_to_f32(uint32_t packed, float scale, float out[8])
{
        for (int i = 0; i < 8; i++)
                out[i] = kv_e2m1_to_f32((uint8_t)((packed >> (4 * i)) & 0xFu)) * scale;
}

/* in[8] times inv_scale -> eight E2M1 nibbles, element i in bits [4i, 4i+4).
 * Pass inv_scale = kv_e8m0_inv_f32(s) so the product is exact. */
KV_HD uint32_t kv_f32x8_to_e2m1(const float in[8], float inv_scale)
{
        uint32_t r = 0;
        for (int i = 0; i < 8; i++)
                r |= (uint32_t)kv_f32_to_e2m1(in[i] * inv_scale) << (4 * i);
        return r;
}

/* Encodes one FP4 block of 16 consecutive elements: *scale gets the E8M0
 * byte (rule in the header comment), packed[8] the nibbles, byte j holding
 * element 2j in its low nibble and 2j+1 in its high nibble. */
KV_HD void kv_fp4_encode_block16(const float x[16], uint8_t packed[8], uint8_t *scale)
{
        float amax = 0.0f;
        for (int i = 0; i < 16; i++) {
                float t = kv_abs_finite(x[i]);
                amax = t > amax ? t : amax;
        }
        uint8_t s = kv_fp4_block_scale(amax);
        float inv = kv_e8m0_inv_f32(s);
        for (int j = 0; j < 8; j++)
                packed[j] = (uint8_t)(kv_f32_to_e2m1(x[2 * j] * inv) |
                                      (kv_f32_to_e2m1(x[2 * j + 1] * inv) << 4));
        *scale = s;
}

#endif
