/* kv_cuda_fp4.cuh - the write kernel's FP4 block encoders for 16-bit input
 * (kv_write.cuh): bf16 blocks in bf16x2 arithmetic (fp4_block16_bf), f16
 * blocks in f16 pairs (fp4_block16_f16), and the two-elements-per-instruction
 * helpers they are built from, each with an exact host emulation so the
 * encoders also run on the CPU.  Every one equals the codec's
 * kv_fp4_encode_block16 (tests/gpu/test_conv_exhaustive.cu); blocks they do
 * not handle go to fp4_block16_codec (kv_cuda_common.cuh).
 */
#ifndef KV_CUDA_FP4_CUH
#define KV_CUDA_FP4_CUH

#ifdef __CUDACC__
#include <stdint.h>
#include "kv_cuda_common.cuh"

namespace kvk {

/* ---- the fp4 block encoder for 16-bit inputs, two elements at a time -------
 * Helpers on words holding two f16 values (lane 0 in the low half).  On the
 * device each is one instruction; on the host each is an exact emulation,
 * so that the encoder below can also be run on the CPU next to the codec. */

/* #pragma unroll for the device pass only (the host compiler warns) */
#ifdef __CUDA_ARCH__
#define KV_UNROLL _Pragma("unroll")
#else
#define KV_UNROLL
#endif

/* {RN_f16(lo), RN_f16(hi)}: cvt.rn.f16x2.f32 (equal to kv_f32_to_f16 on
 * every non-NaN float, tests/gpu/test_conv_exhaustive.cu). */
__host__ __device__ __forceinline__ uint32_t h2_cvt(float lo, float hi)
{
#ifdef __CUDA_ARCH__
        __half2 h = __floats2half2_rn(lo, hi);
        return *(uint32_t *)&h;
#else
        return (uint32_t)kv_f32_to_f16(lo) | (uint32_t)kv_f32_to_f16(hi) << 16;
#endif
}

/* Per-lane unsigned 16-bit maximum (max.u16x2, sm_90). */
__host__ __device__ __forceinline__ uint32_t u16x2_max(uint32_t a, uint32_t b)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        uint32_t r;
        asm("max.u16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
        return r;
#elif defined(__CUDA_ARCH__)
        return __vmaxu2(a, b);
#else
        const uint32_t lo = (a & 0xFFFFu) > (b & 0xFFFFu) ? a & 0xFFFFu : b & 0xFFFFu;
        const uint32_t hi = (a >> 16) > (b >> 16) ? a >> 16 : b >> 16;
        return lo | hi << 16;
#endif
}

#ifndef __CUDA_ARCH__
/* A magnitude m > 0 rounded to nearest even on the grid of a binary format
 * with mant stored mantissa bits and smallest normal exponent emin (its
 * subnormals share emin's step); exact for m held exactly in a double. */
static inline double rn_host(double m, int mant, int emin)
{
        int q;
        frexp(m, &q); /* m in [2^(q-1), 2^q) */
        const double ulp = ldexp(1.0, (q - 1 < emin ? emin : q - 1) - mant);
        return nearbyint(m / ulp) * ulp; /* ties to even in the default rounding mode */
}

/* RN_f16(a * b + c) of three finite f16 values, one rounding; exact as long
 * as a * b + c needs at most 53 significant bits (the encoder's operands
 * need 35) and the result is below 65520. */
static inline uint16_t h_fma_host(uint16_t a, uint16_t b, uint16_t c)
{
        const double z = (double)kv_f16_to_f32(a) * kv_f16_to_f32(b) + kv_f16_to_f32(c);
        if (z == 0)
                return 0; /* +0: the encoder's sums are never 0 */
        return (uint16_t)(kv_f32_to_f16((float)rn_host(fabs(z), 10, -14)) | (z < 0 ? 0x8000u : 0u));
}
#endif

/* {RN_f16(a.lo * b.lo + |c.lo|), RN_f16(a.hi * b.hi + |c.hi|)}: fma.rn.f16x2
 * with abs.f16x2 on c, which ptxas folds into the FMA as an operand
 * modifier (c must not hold NaN). */
__host__ __device__ __forceinline__ uint32_t h2_fma_abs(uint32_t a, uint32_t b, uint32_t c)
{
#ifdef __CUDA_ARCH__
        uint32_t r;
        asm("{\n\t.reg .b32 ac;\n\tabs.f16x2 ac, %3;\n\tfma.rn.f16x2 %0, %1, %2, ac;\n\t}"
            : "=r"(r) : "r"(a), "r"(b), "r"(c));
        return r;
#else
        c &= 0x7FFF7FFFu;
        return (uint32_t)h_fma_host((uint16_t)a, (uint16_t)b, (uint16_t)c) |
               (uint32_t)h_fma_host((uint16_t)(a >> 16), (uint16_t)(b >> 16), (uint16_t)(c >> 16)) << 16;
#endif
}

/* Element i (0..15) of a block of 16-bit values held as 8 raw words. */
template <int E>
__host__ __device__ __forceinline__ float h_elem(const uint32_t (&w)[8], int i)
{
        const uint32_t h = (i & 1) ? w[i / 2] >> 16 : w[i / 2] & 0xFFFFu;
#ifdef __CUDA_ARCH__
        if constexpr (E == KVC_ELEM_BF16)
                return __uint_as_float(h << 16);
        else
                return __half2float(__ushort_as_half((unsigned short)h));
#else
        if constexpr (E == KVC_ELEM_BF16)
                return kv_bf16_to_f32((uint16_t)h);
        else
                return kv_f16_to_f32((uint16_t)h);
#endif
}

/* ---- the fp4 block encoder for bf16 input, in bf16x2 arithmetic ------------
 * Helpers on words holding two bf16 values (lane 0 in the low half): one
 * instruction each on the device, an exact emulation on the host. */

#ifndef __CUDA_ARCH__
/* RN_bf16(z) of a double that holds an exact sum (the encoder's sums need at
 * most 17 significant bits), for |z| in the normal bf16 range. */
static inline uint32_t bf_round_host(double z)
{
        if (z == 0)
                return signbit(z) ? 0x8000u : 0u;
        return (uint32_t)(kv_f32_bits((float)rn_host(fabs(z), 7, -126)) >> 16) | (z < 0 ? 0x8000u : 0u);
}

/* one lane of max{.NaN}.xorsign.abs.bf16: max(|a|, |b|) with the sign
 * sign(a) ^ sign(b); with nan_wins, a NaN operand gives a NaN (0x7FFF). */
static inline uint32_t bf_max_xs_host(uint32_t a, uint32_t b, bool nan_wins)
{
        const uint32_t ma = a & 0x7FFFu, mb = b & 0x7FFFu;
        if (nan_wins && (ma > 0x7F80u || mb > 0x7F80u))
                return 0x7FFFu;
        if (ma > 0x7F80u)
                return mb | ((a ^ b) & 0x8000u);
        if (mb > 0x7F80u)
                return ma | ((a ^ b) & 0x8000u);
        return (ma > mb ? ma : mb) | ((a ^ b) & 0x8000u);
}
#endif

/* max{.NaN}.xorsign.abs.bf16x2: per lane the larger of |a| and |b| with the
 * sign sign(a) ^ sign(b); NANW: a NaN operand gives a NaN (without it neither
 * operand may be NaN). */
template <bool NANW>
__host__ __device__ __forceinline__ uint32_t bf2_max_xs(uint32_t a, uint32_t b)
{
#ifdef __CUDA_ARCH__
        uint32_t r;
        if constexpr (NANW)
                asm("max.NaN.xorsign.abs.bf16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
        else
                asm("max.xorsign.abs.bf16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
        return r;
#else
        return bf_max_xs_host(a & 0xFFFFu, b & 0xFFFFu, NANW) | bf_max_xs_host(a >> 16, b >> 16, NANW) << 16;
#endif
}

/* the block amax step: per lane max(|a|, |b|), NaN if either is NaN (callers
 * use the magnitude only) */
__host__ __device__ __forceinline__ uint32_t bf2_amax(uint32_t a, uint32_t b)
{
        return bf2_max_xs<true>(a, b);
}

/* a (any sign) against a positive b: per lane the larger magnitude with a's
 * sign */
__host__ __device__ __forceinline__ uint32_t bf2_max_signed(uint32_t a, uint32_t b)
{
        return bf2_max_xs<false>(a, b);
}

/* fma.rn.bf16x2: per lane RN_bf16(a * b + c), one rounding. */
__host__ __device__ __forceinline__ uint32_t bf2_fma(uint32_t a, uint32_t b, uint32_t c)
{
#ifdef __CUDA_ARCH__
        uint32_t r;
        asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
        return r;
#else
        uint32_t r = 0;
        for (int l = 0; l < 2; l++) {
                const double z = (double)kv_bf16_to_f32((uint16_t)(a >> 16 * l)) *
                                         kv_bf16_to_f32((uint16_t)(b >> 16 * l)) +
                                 kv_bf16_to_f32((uint16_t)(c >> 16 * l));
                r |= bf_round_host(z) << 16 * l;
        }
        return r;
#endif
}

/* A block of 16-bit values (raw words) the fast paths do not handle, through
 * the codec's own encoder. */
template <int E>
__host__ __device__ __forceinline__ void fp4_block16_raw_codec(const uint32_t (&w)[8], uint32_t &w0, uint32_t &w1,
                                                               uint32_t &scale)
{
        float x[16];
KV_UNROLL
        for (int i = 0; i < 16; i++)
                x[i] = h_elem<E>(w, i);
        fp4_block16_codec(x, w0, w1, scale);
}

/* The 8 nibbles of a word from the 4 pair results of a group of 8 (nibble
 * pairs (x_j, x_{j+4}) in bits 12..15 and 28..31 of q[j]): bytes 1 and 3 of
 * za are (x1 x0), (x5 x4); of zb (x3 x2), (x7 x6) (the other bytes are not
 * used: one LOP3 each). */
__host__ __device__ __forceinline__ uint32_t fp4_pack_pairs(const uint32_t (&q)[4])
{
        const uint32_t za = bitsel(0xF000F000u, q[1], q[0] >> 4);
        const uint32_t zb = bitsel(0xF000F000u, q[3], q[2] >> 4);
        return prmt(za, zb, 0x7351);
}

/* == kv_fp4_encode_block16 on a block of 16 bf16 values given as raw words
 * (element i in half i % 2 of w[i / 2]); nibbles and scale byte as
 * fp4_block16 returns them.  Nothing is widened to f32: every step works on
 * two elements per instruction, and the float steps (amax, magic, rounding)
 * are bf16x2 instructions, which issue at twice the rate of the integer and
 * logic ones on sm_90.
 *
 * Why it is equal, with m the block's largest magnitude (15 bits), e the
 * codec's scale exponent and S = 2^e:
 * - amax: max.NaN.xorsign.abs over the 8 words and then the two lanes; a
 *   NaN anywhere makes it NaN, an Inf makes it Inf.  The fast path takes
 *   0x0400 <= m < 0x7C00 (2^-119 <= amax < 2^121: no NaN, no Inf, e in
 *   [-121, 119]); any other block (NaN, Inf, all zero, tiny or huge) goes
 *   through the codec's own encoder.
 * - scale: amax = 2^E * 1.f with biased exponent B = m >> 7; the codec's
 *   e = E - 2 if f <= 0.5 else E - 1, i.e. its byte s = e + 127 =
 *   ((m + 0x3F) >> 7) - 2, with no clamp in this range.
 * - rounding, in the input's own scale (x = y * S exactly, so rounding x on
 *   the grid scaled by S is rounding y): with M = max(2^floor(log2|x|), S),
 *   t = RN_bf16(64 * M + |x|) = 64 * M + k * M / 2, since bf16's ulp at 64 M
 *   is M / 2, the E2M1 grid step of |y|'s binade (0.5 below 2, 1 in [2, 4),
 *   2 in [4, 6]); k = round-half-even(2|x| / M) <= 4 keeps t in 64 M's
 *   binade, and the code is k + 2j with M = 2^(e+j), j in 0..2.  Both
 *   64 M <= 2^127 and 64 M >= 2^-115 are normal bf16 in the fast path, and a
 *   subnormal x is far below half a grid step (2^-126 against >= 2^-123), so
 *   its k is 0 however the hardware treats it.  The sign comes for free:
 *   with Ms = max.xorsign.abs(x & 0xFF80, S) = M with x's sign (x & 0xFF80
 *   is +-2^floor(log2|x|), or +-0 for a subnormal), fma.rn(Ms, 64, x) =
 *   -t for negative x (round to nearest is symmetric), and -0 or a negative
 *   x rounding to zero keeps the sign, as the codec's nibble 0x8.
 * - the nibble: t's bits are sign << 15 | (s + 6 + j) << 7 | k per lane.
 *   With V the variable part (sign << 15 | j << 7 | k, both lanes),
 *   T = V + (s + 6) * 0x00800080 and one IMAD T * 0x1041 - (s + 6) *
 *   0x00800080 * 0x1041 = V * (1 + 2^6 + 2^12) leaves k + 2j in bits 12..14
 *   and the sign in bit 15 for lane 0, the same in bits 28..31 for lane 1,
 *   and the rest of the product below bit 12 (<= 0x204) and in bits 16..27
 *   (< 2^28), without carries into either nibble.
 * - the pairs are (x_j, x_{j+4}) of each group of 8 (one PRMT each), so the
 *   8 nibbles of a word come from 4 pair results with two shifts, two LOP3
 *   merges and one byte permutation, as in fp4_block16_f16.
 * tests/gpu/test_conv_exhaustive.cu compares it with the codec for every
 * bf16 value at every position of a block, against every block scale that
 * leaves it a non-zero code (and a few that do not). */
__host__ __device__ __forceinline__ void fp4_block16_bf(const uint32_t (&w)[8], uint32_t &w0, uint32_t &w1,
                                                        uint32_t &scale)
{
        const uint32_t a01 = bf2_amax(w[0], w[1]), a23 = bf2_amax(w[2], w[3]);
        const uint32_t a45 = bf2_amax(w[4], w[5]), a67 = bf2_amax(w[6], w[7]);
        const uint32_t a2 = bf2_amax(bf2_amax(a01, a23), bf2_amax(a45, a67));
        /* both lanes: the block's amax (sign bits meaningless); u = m << 17
         * plus bits below 17 that never carry into m's */
        const uint32_t u = bf2_amax(a2, prmt(a2, a2, 0x1032)) << 1;
        if (__builtin_expect(u - 0x08000000u >= 0xF0000000u, 0)) { /* m outside [0x0400, 0x7C00) */
                fp4_block16_raw_codec<KVC_ELEM_BF16>(w, w0, w1, scale);
                return;
        }
        const uint32_t s = (u - 0x01820000u) >> 24;           /* ((m + 0x3F) >> 7) - 2 */
        const uint32_t S2 = s * 0x00800080u;                  /* 2^e in both lanes */
        const uint32_t C = (s + 6u) * (0u - 0x00800080u * 0x1041u); /* cancels the exponent's part */
        uint32_t r[2];
KV_UNROLL
        for (int g = 0; g < 2; g++) {
                uint32_t q[4];
KV_UNROLL
                for (int j = 0; j < 4; j++) {
                        /* (x_j, x_{j+4}) of group g */
                        const uint32_t x = prmt(w[4 * g + j / 2], w[4 * g + j / 2 + 2], (j & 1) ? 0x7632u : 0x5410u);
                        const uint32_t ms = bf2_max_signed(x & 0xFF80FF80u, S2); /* +-M */
                        const uint32_t t = bf2_fma(ms, 0x42804280u, x);          /* +-(64 M + k M / 2) */
                        q[j] = t * 0x1041u + C; /* nibbles (sign and code) in bits 12..15, 28..31 */
                }
                r[g] = fp4_pack_pairs(q);
        }
        w0 = r[0];
        w1 = r[1];
        scale = s;
}

/* == kv_fp4_encode_block16 on a block of 16 f16 values given as raw words
 * (element i in half i % 2 of w[i / 2]); the nibbles and the scale byte as
 * fp4_block16 returns them.  (bf16 blocks have fp4_block16_bf; this f16-pair
 * path also served bf16 up to commit 63fc4fa.)
 *
 * Why it is equal, with e the block's scale exponent and y = x * 2^-e
 * (exact in f32: a power of two, and |y| <= 6 for finite blocks):
 * - y converted to f16 is exact when |y| >= 2^-14 (x has at most 11
 *   significant bits); a smaller y (or one that underflowed in f32) becomes
 *   an f16 of magnitude <= 2^-14 with x's sign, and both it and the exact y
 *   encode as a signed zero (anything below 0.25 does).
 * - E2M1 rounding of |y| is a magic addition in f16: with E = max(biased
 *   f16 exponent of |y|, 15) and magic = 2^(E-6), whose ulp 2^(E-16) is the
 *   grid step of |y|'s binade (0.5 below 2, 1 in [2, 4), 2 in [4, 6]),
 *   t = RN(magic + |y|) = magic + k * ulp with k = round-half-even(|y| / ulp)
 *   in 0..4 (the step parity is k's, so ties go to the even code).  One
 *   fma.rn.f16x2 does it for two elements: magic = M * 2^9 with
 *   M = max(|y| & exponent mask, 1.0) = 2^(E-15), exact.
 * - t's bits are then (E+9) << 10 | k: bits 12..14 are always 110, bits
 *   10..11 hold E-15 (0..2), bits 0..2 hold k, and the E2M1 magnitude code
 *   is k + 2(E-15) <= 7.  t * (2^12 + 2^3) (one IMAD for both lanes) puts
 *   lane 0's code in bits 12..14 and lane 1's in bits 28..30; every other
 *   product term lands in bits 0..5, 16..17, 19..27 or above bit 31, without
 *   carries into the codes, so bits 15 and 31 stay 0 and take the signs of
 *   y (bits 15 and 31 of the f16 pair) with one LOP3.
 * - the pairs are (x_j, x_{j+4}) of each group of 8, so the 8 nibbles of a
 *   word come from 4 pair results with two shifts, two LOP3 merges and one
 *   byte permutation.
 * amax is an integer max over the 16-bit magnitudes (max.u16x2), which also
 * finds NaN and Inf (magnitudes at or above the format's Inf pattern): such
 * a block goes through the codec's own encoder.
 * tests/gpu/test_conv_exhaustive.cu compares it with the codec for every
 * bf16 and every f16 value at every position of a block, against every
 * block scale that leaves it a non-zero code (and a few that do not). */
__host__ __device__ __forceinline__ void fp4_block16_f16(const uint32_t (&w)[8], uint32_t &w0, uint32_t &w1,
                                                         uint32_t &scale)
{
        constexpr int E = KVC_ELEM_F16;
        constexpr uint32_t inf = 0x7C00u;
        uint32_t m2 = w[0] & 0x7FFF7FFFu;
KV_UNROLL
        for (int i = 1; i < 8; i++)
                m2 = u16x2_max(m2, w[i] & 0x7FFF7FFFu);
        const uint32_t m = (m2 & 0xFFFFu) > (m2 >> 16) ? m2 & 0xFFFFu : m2 >> 16;
        if (__builtin_expect(m >= inf, 0)) {
                fp4_block16_raw_codec<E>(w, w0, w1, scale);
                return;
        }
#ifdef __CUDA_ARCH__
        const float amax = __half2float(__ushort_as_half((unsigned short)m));
#else
        const float amax = kv_f16_to_f32((uint16_t)m);
#endif
        const uint8_t s = kv_fp4_block_scale(amax);
        const float inv = kv_e8m0_inv_f32(s); /* a power of two: x * inv is exact */
        uint32_t r[2];
KV_UNROLL
        for (int g = 0; g < 2; g++) {
                uint32_t q[4];
KV_UNROLL
                for (int j = 0; j < 4; j++) {
                        const float a = h_elem<E>(w, 8 * g + j), b = h_elem<E>(w, 8 * g + j + 4);
#ifdef __CUDA_ARCH__
                        const uint32_t y = h2_cvt(__fmul_rn(a, inv), __fmul_rn(b, inv));
#else
                        const uint32_t y = h2_cvt(a * inv, b * inv);
#endif
                        const uint32_t M = u16x2_max(y & 0x7C007C00u, 0x3C003C00u);      /* 2^(E-15) */
                        const uint32_t t = h2_fma_abs(M, 0x60006000u, y);                /* M * 512 + |y| */
                        q[j] = t * 0x1008u | (y & 0x80008000u); /* nibbles in bits 12..15, 28..31 */
                }
                r[g] = fp4_pack_pairs(q);
        }
        w0 = r[0];
        w1 = r[1];
        scale = s;
}

/* The encoder for 16-bit input E: bf16 in bf16x2 arithmetic, f16 in f16 pairs. */
template <int E>
__host__ __device__ __forceinline__ void fp4_block16_h(const uint32_t (&w)[8], uint32_t &w0, uint32_t &w1,
                                                       uint32_t &scale)
{
        static_assert(E == KVC_ELEM_BF16 || E == KVC_ELEM_F16, "16-bit input");
        if constexpr (E == KVC_ELEM_BF16)
                fp4_block16_bf(w, w0, w1, scale);
        else
                fp4_block16_f16(w, w0, w1, scale);
}

} // namespace kvk
#endif /* __CUDACC__ */
#endif
