/* kv_cuda_common.cuh - what the CUDA kernels of kvpool share: the CUDA error
 * conversion, argument checks of the write and gather launchers, 16-byte
 * memory helpers and the element-type traits.
 *
 * The C part (outside __CUDACC__) may be included from C files too: it only
 * declares functions defined in kv_cuda_common.cu.
 */
#ifndef KV_CUDA_COMMON_CUH
#define KV_CUDA_COMMON_CUH

#include <stddef.h>
#include <stdint.h>
#include "kvclient.h"
#include "kv_ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Converts a cudaError_t (passed as int so C callers need no CUDA header) into
 * a negative errno and, when msg is not NULL, writes "<what>: <CUDA error name>:
 * <description>" into it.  cudaSuccess gives 0 and leaves msg alone.
 *   memory allocation             -> -ENOMEM
 *   invalid value / configuration -> -EINVAL
 *   no device / driver too old    -> -ENODEV
 *   stale or invalid IPC handle   -> -ESTALE
 *   anything else                 -> -EIO */
int kv_cuda_errno(int cuda_err, const char *what, char *msg, size_t msglen);

/* Checks every host-side argument of a write (the same rules and messages as
 * kv_ref_write, plus what the CUDA kernels need: head_dim 64/128/256, a device
 * pool, element pointers aligned to their element size).  Returns 0 or
 * -EINVAL/-ERANGE with the argument named in msg.  Slots are device memory
 * and are not read here: the kernel skips the out-of-range ones. */
int kv_cuda_check_write(const struct kv_pool_view *p, const struct kvc_write_args *a,
                        char *msg, size_t msglen);

/* The same for a gather; page ids are device memory and not read here: the
 * kernel writes zeros for the rows of an out-of-range page. */
int kv_cuda_check_gather(const struct kv_pool_view *p, const struct kvc_gather_args *a,
                         char *msg, size_t msglen);

#ifdef __cplusplus
}
#endif

#ifdef __CUDACC__
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include "kv_codec.h"

namespace kvk {

/* Element types of caller tensors, as compile-time tags. */
template <int E> struct elem_traits;
template <> struct elem_traits<KVC_ELEM_F32> {
        typedef float t;
        static constexpr int bytes = 4;
        static __device__ __forceinline__ float to_f32(uint32_t bits) { return __uint_as_float(bits); }
};
template <> struct elem_traits<KVC_ELEM_BF16> {
        typedef uint16_t t;
        static constexpr int bytes = 2;
        static __device__ __forceinline__ float to_f32(uint32_t bits) { return __uint_as_float(bits << 16); }
};
/* ---- device conversions proven equal to the codec -------------------------
 * Each of these equals the kv_codec.h function named beside it on EVERY
 * input (tests/gpu/test_conv_exhaustive.cu runs all 2^32 float patterns, or
 * all 2^16 halves, through both on the device).  They exist because the
 * codec's integer code costs 15-25 instructions an element, which would make
 * the write kernel compute-bound on an H200.  Define KV_CUDA_CODEC_ONLY to
 * compile the codec functions instead. */

/* == kv_f16_to_f32: the hardware widening is exact; NaN keeps sign and
 * payload in the codec, which the hardware does not promise. */
__device__ __forceinline__ float f16_to_f32(uint32_t h)
{
#ifdef KV_CUDA_CODEC_ONLY
        return kv_f16_to_f32((uint16_t)h);
#else
        if (__builtin_expect((h & 0x7C00u) == 0x7C00u && (h & 0x3FFu), 0))
                return kv_f16_to_f32((uint16_t)h);
        return __half2float(__ushort_as_half((unsigned short)h));
#endif
}

/* == kv_f32_to_f16 for both values (x0 in the low half): cvt.rn.f16x2.f32
 * rounds to nearest even with IEEE overflow to Inf; NaN goes to the codec. */
__device__ __forceinline__ uint32_t f32x2_to_f16x2(float x0, float x1)
{
#ifdef KV_CUDA_CODEC_ONLY
        return (uint32_t)kv_f32_to_f16(x0) | (uint32_t)kv_f32_to_f16(x1) << 16;
#else
        __half2 h = __floats2half2_rn(x0, x1);
        uint32_t r = *(uint32_t *)&h;
        if (__builtin_expect(isnan(x0) || isnan(x1), 0))
                r = (uint32_t)kv_f32_to_f16(x0) | (uint32_t)kv_f32_to_f16(x1) << 16;
        return r;
#endif
}

/* Two fp32 values to two fp8 codes (x0 in the low byte) with the hardware
 * conversion cvt.rn.satfinite (sm_89+): round to nearest even, finite values
 * and infinities beyond the range saturate to +-max, as in the codec.  Only
 * NaN differs (the hardware drops its sign): callers handle NaN. */
template <int D>
__device__ __forceinline__ uint32_t fp8x2_hw(float x0, float x1)
{
        static_assert(D == KVC_DTYPE_FP8_E4M3 || D == KVC_DTYPE_FP8_E5M2, "fp8 dtype");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890 && !defined(KV_CUDA_CODEC_ONLY)
        const __nv_fp8_interpretation_t kind = D == KVC_DTYPE_FP8_E4M3 ? __NV_E4M3 : __NV_E5M2;
        return __nv_cvt_float2_to_fp8x2(make_float2(x0, x1), __NV_SATFINITE, kind);
#else
        uint32_t a = D == KVC_DTYPE_FP8_E4M3 ? kv_f32_to_e4m3(x0) : kv_f32_to_e5m2(x0);
        uint32_t b = D == KVC_DTYPE_FP8_E4M3 ? kv_f32_to_e4m3(x1) : kv_f32_to_e5m2(x1);
        return a | b << 8;
#endif
}

template <int D>
__device__ __forceinline__ uint32_t fp8_codec(float x)
{
        return D == KVC_DTYPE_FP8_E4M3 ? kv_f32_to_e4m3(x) : kv_f32_to_e5m2(x);
}

/* == kv_f32_to_e4m3 / kv_f32_to_e5m2 for both values (x0 in the low byte),
 * every input: the hardware conversion, NaN through the codec. */
template <int D>
__device__ __forceinline__ uint32_t f32x2_to_fp8x2(float x0, float x1)
{
        uint32_t r = fp8x2_hw<D>(x0, x1);
        if (__builtin_expect(isnan(x0) || isnan(x1), 0))
                r = fp8_codec<D>(x0) | fp8_codec<D>(x1) << 8;
        return r;
}

/* == kv_f32_to_fp8(x0 / s) | kv_f32_to_fp8(x1 / s) << 8 as the host computes
 * it: an IEEE division (a reciprocal would round differently), then the
 * conversion.  A NaN quotient comes only from a NaN x, which the host's
 * division passes through with its sign and the GPU's does not: the codec
 * then gets x itself. */
template <int D>
__device__ __forceinline__ uint32_t fp8x2_div(float x0, float x1, float s)
{
        const float q0 = __fdiv_rn(x0, s), q1 = __fdiv_rn(x1, s);
        uint32_t r = fp8x2_hw<D>(q0, q1);
        if (__builtin_expect(isnan(q0) || isnan(q1), 0))
                r = fp8_codec<D>(isnan(x0) ? x0 : q0) | fp8_codec<D>(isnan(x1) ? x1 : q1) << 8;
        return r;
}

/* The same as fp8x2_div without a division, for scales s in [2^-60, 2^60]
 * with r = RN(1/s) (the host's 1.0f / s).  q = x*r corrected once with the
 * exact FMA residual, q' = q + (x - q*s)*r, is within one ulp of RN(x/s)
 * whenever x/s is a normal float (the residual term is exact there and the
 * error left is ~2^-47 relative, so q' is RN(x/s) or one of its two
 * neighbours).  fp8 rounding is monotone, so when the fp8 codes of q''s two
 * neighbours (bit patterns q'-1 and q'+1) agree, every value between them,
 * RN(x/s) included, has that code.  When they differ (q' within an ulp of
 * an fp8 rounding midpoint: about 2^-19 of inputs) or q' is 0, Inf or NaN
 * (x zero, non-finite, or a quotient out of range), *hard is set and the
 * caller redoes the chunk with fp8x2_div.  Range: a quotient with a
 * non-zero, non-saturated fp8 code has 2^-18 <= |x/s| <= 2^17, so with s in
 * [2^-60, 2^60] x and the residual are normal floats and the argument above
 * holds; smaller quotients are fp8 zeros with x's sign in every candidate,
 * larger ones saturate in every candidate.
 * tests/gpu/test_conv_exhaustive.cu checks it against the codec over all
 * 2^32 x for several scales, the range ends included. */
template <int D>
__device__ __forceinline__ uint32_t fp8x2_div_fast(float x0, float x1, float s, float r, bool &hard)
{
        float q0 = __fmul_rn(x0, r), q1 = __fmul_rn(x1, r);
        q0 = __fmaf_rn(__fmaf_rn(-q0, s, x0), r, q0);
        q1 = __fmaf_rn(__fmaf_rn(-q1, s, x1), r, q1);
        const uint32_t b0 = __float_as_uint(q0), b1 = __float_as_uint(q1);
        /* Inf or NaN (x not finite, or x/s overflowed): the IEEE path */
        hard |= ((b0 & 0x7F800000u) == 0x7F800000u) | ((b1 & 0x7F800000u) == 0x7F800000u);
        const uint32_t lo = fp8x2_hw<D>(__uint_as_float(b0 - 1u), __uint_as_float(b1 - 1u));
        const uint32_t hi = fp8x2_hw<D>(__uint_as_float(b0 + 1u), __uint_as_float(b1 + 1u));
        hard |= lo != hi;
        return lo;
}

/* == kv_f32_to_e2m1(y) for 0 <= y <= 6 (the range of |x| / block scale in
 * a block without NaN or Inf; the sign is added by the caller).  Round half
 * even onto {0, .5, 1, 1.5, 2, 3, 4, 6} is a float addition of a magic
 * number whose ulp is the grid spacing of y's binade: 2^22 (ulp 0.5) below
 * 2, 2^23 (ulp 1) in [2, 4), 2^24 (ulp 2) in [4, 6]; the sum's low mantissa
 * bits then count grid steps, and 2E shifts them to the code. */
__device__ __forceinline__ uint32_t e2m1_mag(float y)
{
#ifdef KV_CUDA_CODEC_ONLY
        return kv_f32_to_e2m1(y);
#else
        const uint32_t e = max(__float_as_uint(y) >> 23, 127u) - 127u; /* 0, 1, 2 */
        const float magic = __uint_as_float((149u + e) << 23);          /* 2^(22+e) */
        return (__float_as_uint(__fadd_rn(y, magic)) & 7u) + 2u * e;
#endif
}

/* == kv_fp4_encode_block16 on x[0..16), nibbles packed into two words
 * (element i of the block in bits [4i, 4i+4) of w[i/8]).  The usual block
 * (all finite) takes the short path; a block holding NaN or Inf goes
 * through the codec's own encoder. */
/* The codec's own block encoder, nibbles and scale as fp4_block16 returns
 * them: the path for blocks holding NaN or Inf. */
__host__ __device__ __forceinline__ void fp4_block16_codec(const float *x, uint32_t &w0, uint32_t &w1,
                                                           uint32_t &scale)
{
        uint8_t p[8], s;
        kv_fp4_encode_block16(x, p, &s);
        w0 = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
        w1 = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
        scale = s;
}

__device__ __forceinline__ void fp4_block16(const float *x, uint32_t &w0, uint32_t &w1, uint32_t &scale)
{
        uint32_t m = 0;
#pragma unroll
        for (int i = 0; i < 16; i++)
                m = max(m, __float_as_uint(x[i]) & 0x7FFFFFFFu);
        if (__builtin_expect(m >= 0x7F800000u, 0)) {
                fp4_block16_codec(x, w0, w1, scale);
                return;
        }
        /* all finite: amax is the largest magnitude, as in the codec, and
         * |x| / 2^e <= 6 for every element */
        const uint8_t s = kv_fp4_block_scale(__uint_as_float(m));
        const float inv = kv_e8m0_inv_f32(s); /* a power of two: |x| * inv is exact */
        uint32_t r[2] = { 0, 0 };
#pragma unroll
        for (int i = 0; i < 16; i++) {
                const uint32_t u = __float_as_uint(x[i]);
#ifdef KV_CUDA_CODEC_ONLY
                const uint32_t nib = e2m1_mag(__fmul_rn(__uint_as_float(u & 0x7FFFFFFFu), inv)) | (u >> 31) << 3;
                r[i / 8] |= nib << (4 * (i % 8));
#else
                /* e2m1_mag inlined with its constant moved out: with
                 * m = max(exponent, 127) the code is (sum & 7) + 2m - 254;
                 * the nibbles are added (the sign as +8, -0 and negative
                 * values that round to zero keep it, as in the codec) and
                 * the -254 of every nibble is subtracted once per word,
                 * which modulo 2^32 leaves exactly the packed nibbles. */
                const uint32_t y = __float_as_uint(__fmul_rn(__uint_as_float(u & 0x7FFFFFFFu), inv));
                const uint32_t m2 = max(y >> 23, 127u);
                const uint32_t t = __float_as_uint(__fadd_rn(__uint_as_float(y), __uint_as_float((m2 + 22u) << 23)));
                r[i / 8] += ((t & 7u) + 2u * m2 + ((u >> 31) << 3)) << (4 * (i % 8));
#endif
        }
#ifndef KV_CUDA_CODEC_ONLY
        r[0] -= 254u * 0x11111111u;
        r[1] -= 254u * 0x11111111u;
#endif
        w0 = r[0];
        w1 = r[1];
        scale = s;
}

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
/* RN_f16(a * b + c) of three finite f16 values, one rounding; exact as long
 * as a * b + c needs at most 53 significant bits (the encoder's operands
 * need 35) and the result is below 65520. */
static inline uint16_t h_fma_host(uint16_t a, uint16_t b, uint16_t c)
{
        const double z = (double)kv_f16_to_f32(a) * kv_f16_to_f32(b) + kv_f16_to_f32(c);
        const double m = z < 0 ? -z : z;
        int q;
        if (m == 0)
                return 0; /* +0: the encoder's sums are never 0 */
        frexp(m, &q); /* m in [2^(q-1), 2^q) */
        const double ulp = ldexp(1.0, (q - 1 < -14 ? -14 : q - 1) - 10);
        const double r = nearbyint(m / ulp) * ulp; /* ties to even in the default rounding mode */
        return (uint16_t)(kv_f32_to_f16((float)r) | (z < 0 ? 0x8000u : 0u));
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
        const double m = z < 0 ? -z : z;
        int q;
        if (m == 0)
                return z < 0 || (z == 0 && signbit(z)) ? 0x8000u : 0u;
        frexp(m, &q); /* m in [2^(q-1), 2^q) */
        const double ulp = ldexp(1.0, q - 1 - 7);
        const double r = nearbyint(m / ulp) * ulp; /* ties to even in the default rounding mode */
        return (uint32_t)(kv_f32_bits((float)r) >> 16) | (z < 0 ? 0x8000u : 0u);
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

/* (a & m) | (b & ~m): one LOP3 (ptxas does not always find it). */
__host__ __device__ __forceinline__ uint32_t bitsel(uint32_t m, uint32_t a, uint32_t b)
{
#ifdef __CUDA_ARCH__
        uint32_t r;
        asm("lop3.b32 %0, %1, %2, %3, 0xE4;" : "=r"(r) : "r"(a), "r"(b), "r"(m));
        return r;
#else
        return (a & m) | (b & ~m);
#endif
}

/* __byte_perm (prmt.b32) for the selectors without sign replication. */
__host__ __device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel)
{
#ifdef __CUDA_ARCH__
        return __byte_perm(a, b, sel);
#else
        const uint64_t x = (uint64_t)b << 32 | a;
        uint32_t r = 0;
        for (int i = 0; i < 4; i++)
                r |= (uint32_t)(x >> 8 * ((sel >> 4 * i) & 7) & 0xFFu) << 8 * i;
        return r;
#endif
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
 *   merges and one byte permutation, as in fp4_block16_h.
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
                float x[16];
KV_UNROLL
                for (int i = 0; i < 16; i++)
                        x[i] = h_elem<KVC_ELEM_BF16>(w, i);
                fp4_block16_codec(x, w0, w1, scale);
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
                /* bytes 1 and 3 of za: (x1 x0), (x5 x4); of zb: (x3 x2), (x7 x6)
                 * (the other bytes are not used: one LOP3 each) */
                const uint32_t za = bitsel(0xF000F000u, q[1], q[0] >> 4);
                const uint32_t zb = bitsel(0xF000F000u, q[3], q[2] >> 4);
                r[g] = prmt(za, zb, 0x7351);
        }
        w0 = r[0];
        w1 = r[1];
        scale = s;
}

/* == kv_fp4_encode_block16 on a block of 16 bf16 (E = KVC_ELEM_BF16) or f16
 * values given as raw words (element i in half i % 2 of w[i / 2]); the
 * nibbles and the scale byte as fp4_block16 returns them.  bf16 blocks go to
 * fp4_block16_bf; the f16-pair path below takes them only when
 * KV_FP4_BF16_VIA_F16 is defined (bench-write's comparison build).
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
template <int E>
__host__ __device__ __forceinline__ void fp4_block16_h(const uint32_t (&w)[8], uint32_t &w0, uint32_t &w1,
                                                       uint32_t &scale)
{
        static_assert(E == KVC_ELEM_BF16 || E == KVC_ELEM_F16, "16-bit input");
#ifndef KV_FP4_BF16_VIA_F16
        if constexpr (E == KVC_ELEM_BF16) {
                /* bf16 has its own encoder, in bf16x2 arithmetic: about half
                 * the instructions of the path below */
                fp4_block16_bf(w, w0, w1, scale);
                return;
        }
#endif
        constexpr uint32_t inf = E == KVC_ELEM_BF16 ? 0x7F80u : 0x7C00u;
        uint32_t m2 = w[0] & 0x7FFF7FFFu;
KV_UNROLL
        for (int i = 1; i < 8; i++)
                m2 = u16x2_max(m2, w[i] & 0x7FFF7FFFu);
        const uint32_t m = (m2 & 0xFFFFu) > (m2 >> 16) ? m2 & 0xFFFFu : m2 >> 16;
        if (__builtin_expect(m >= inf, 0)) {
                float x[16];
KV_UNROLL
                for (int i = 0; i < 16; i++)
                        x[i] = h_elem<E>(w, i);
                fp4_block16_codec(x, w0, w1, scale);
                return;
        }
        float amax;
        if constexpr (E == KVC_ELEM_BF16) {
                amax = kv_bits_f32(m << 16);
        } else {
#ifdef __CUDA_ARCH__
                amax = __half2float(__ushort_as_half((unsigned short)m));
#else
                amax = kv_f16_to_f32((uint16_t)m);
#endif
        }
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
                /* bytes 1 and 3 of za: (x1 x0), (x5 x4); of zb: (x3 x2), (x7 x6)
                 * (the other bytes are not used: one LOP3 each) */
                const uint32_t za = bitsel(0xF000F000u, q[1], q[0] >> 4);
                const uint32_t zb = bitsel(0xF000F000u, q[3], q[2] >> 4);
#ifdef __CUDA_ARCH__
                r[g] = __byte_perm(za, zb, 0x7351);
#else
                r[g] = (za >> 8 & 0xFFu) | (zb >> 8 & 0xFFu) << 8 | (za >> 24) << 16 | (zb >> 24) << 24;
#endif
        }
        w0 = r[0];
        w1 = r[1];
        scale = s;
}

template <> struct elem_traits<KVC_ELEM_F16> {
        typedef uint16_t t;
        static constexpr int bytes = 2;
        static __device__ __forceinline__ float to_f32(uint32_t bits) { return f16_to_f32(bits); }
};

/* Reads N elements of element type E at p as raw 16-byte words w[] (N *
 * bytes / 16 of them).  vec says p is 16-byte aligned (the launcher checked
 * the base and the row stride): then each word is one 16-byte load;
 * otherwise the words are assembled element by element.  Split from the
 * conversion so that a thread issues all its loads before it waits. */
template <int E, int N>
__device__ __forceinline__ void load_raw(const void *p, bool vec, uint4 (&w)[N * elem_traits<E>::bytes / 16])
{
        typedef elem_traits<E> tr;
        constexpr int NW = N * tr::bytes / 16;
        if (vec) {
                const uint4 *q = (const uint4 *)p;
#pragma unroll
                for (int i = 0; i < NW; i++)
                        w[i] = __ldcs(q + i); /* read once: stream past the caches */
        } else {
                const uint8_t *b = (const uint8_t *)p;
#pragma unroll
                for (int i = 0; i < NW; i++) {
                        uint32_t u[4];
#pragma unroll
                        for (int j = 0; j < 4; j++) {
                                if constexpr (tr::bytes == 4)
                                        u[j] = *(const uint32_t *)(b + 16 * i + 4 * j);
                                else
                                        u[j] = (uint32_t) * (const uint16_t *)(b + 16 * i + 4 * j) |
                                               (uint32_t) * (const uint16_t *)(b + 16 * i + 4 * j + 2) << 16;
                        }
                        w[i] = make_uint4(u[0], u[1], u[2], u[3]);
                }
        }
}

/* Widens the raw words of load_raw to fp32 (exact for every input type). */
template <int E, int N>
__device__ __forceinline__ void unpack_f32(const uint4 (&w)[N * elem_traits<E>::bytes / 16], float (&f)[N])
{
        typedef elem_traits<E> tr;
        constexpr int per16 = 16 / tr::bytes;
#pragma unroll
        for (int i = 0; i < N / per16; i++) {
                const uint32_t u[4] = { w[i].x, w[i].y, w[i].z, w[i].w };
#pragma unroll
                for (int j = 0; j < 4; j++) {
                        if constexpr (tr::bytes == 4) {
                                f[i * per16 + j] = tr::to_f32(u[j]);
                        } else {
                                f[i * per16 + 2 * j] = tr::to_f32(u[j] & 0xFFFFu);
                                f[i * per16 + 2 * j + 1] = tr::to_f32(u[j] >> 16);
                        }
                }
        }
}

/* Pool dtypes as compile-time tags, for the launchers' dispatch:
 * with_dtype(d, f) calls f(dtype_tag<D>()) with D the pool dtype d, so the
 * callee can instantiate its kernel for D (decltype(tag)::value).  Returns
 * false without calling f for a dtype that has no kernels. */
template <int D> struct dtype_tag {
        static constexpr int value = D;
};

template <class F>
static inline bool with_dtype(enum kvc_dtype d, F &&f)
{
        switch (d) {
        case KVC_DTYPE_BF16: f(dtype_tag<KVC_DTYPE_BF16>()); return true;
        case KVC_DTYPE_FP16: f(dtype_tag<KVC_DTYPE_FP16>()); return true;
        case KVC_DTYPE_FP8_E4M3: f(dtype_tag<KVC_DTYPE_FP8_E4M3>()); return true;
        case KVC_DTYPE_FP8_E5M2: f(dtype_tag<KVC_DTYPE_FP8_E5M2>()); return true;
        case KVC_DTYPE_FP4_E2M1: f(dtype_tag<KVC_DTYPE_FP4_E2M1>()); return true;
        default: return false;
        }
}

/* Grid-stride helper: a 1-D launch of enough blocks to cover n items, capped
 * so that very large calls loop instead of launching millions of blocks. */
static inline unsigned grid_for(uint64_t n, unsigned threads)
{
        uint64_t b = (n + threads - 1) / threads;
        if (b > (1u << 20))
                b = 1u << 20;
        return b ? (unsigned)b : 1u;
}

/* Programmatic dependent launch (sm_90).  A grid launched with
 * programmatic stream serialization (launch_cfg with pdl) may be scheduled
 * before the previous kernel on its stream has finished: it must call
 * grid_dep_wait() before it touches memory that kernel may write or read
 * (the wait returns once that kernel has completed and its memory is
 * visible; launched normally, it returns at once).  grid_dep_launch() lets
 * the next such grid be scheduled; it waits all the same. */
__device__ __forceinline__ void grid_dep_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void grid_dep_launch()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* The configuration of one cudaLaunchKernelEx: grid, block, stream, and
 * with pdl the programmatic stream serialization attribute (see
 * grid_dep_wait).  Build it where it is launched: cfg.attrs points into it,
 * so it is not copied. */
struct launch_cfg {
        cudaLaunchConfig_t cfg = {};
        cudaLaunchAttribute at[1] = {};

        launch_cfg(dim3 grid, dim3 block, cudaStream_t s, bool pdl)
        {
                at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
                at[0].val.programmaticStreamSerializationAllowed = 1;
                cfg.gridDim = grid;
                cfg.blockDim = block;
                cfg.stream = s;
                cfg.attrs = at;
                cfg.numAttrs = pdl ? 1 : 0;
        }
        launch_cfg(const launch_cfg &) = delete;
        launch_cfg &operator=(const launch_cfg &) = delete;
};

} // namespace kvk
#endif /* __CUDACC__ */

#endif
