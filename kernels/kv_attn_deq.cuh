/* kv_attn_deq.cuh - the register-level pieces of the attention kernel
 * (kv_attn_decode.cuh): per-dtype traits, the tensor-core mma, and the
 * conversions that turn pool codes into mma fragments (see the table of
 * dequantizations in kv_attn_decode.cuh's header comment).  Every function
 * here is exact: the codes become f16/bf16 values (times a power of two
 * that the caller folds into its scales), no rounding.
 */
#ifndef KV_ATTN_DEQ_CUH
#define KV_ATTN_DEQ_CUH

#ifdef __CUDACC__
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>
#include "kvclient.h"
#include "kv_cuda_common.cuh"

namespace kva {

using kvk::prmt;

template <int DT> struct dtraits;
template <> struct dtraits<KVC_DTYPE_BF16>     { static constexpr int bits = 16; static constexpr bool bf = true; };
template <> struct dtraits<KVC_DTYPE_FP16>     { static constexpr int bits = 16; static constexpr bool bf = false; };
template <> struct dtraits<KVC_DTYPE_FP8_E4M3> { static constexpr int bits = 8;  static constexpr bool bf = false; };
template <> struct dtraits<KVC_DTYPE_FP8_E5M2> { static constexpr int bits = 8;  static constexpr bool bf = false; };
template <> struct dtraits<KVC_DTYPE_FP4_E2M1> { static constexpr int bits = 4;  static constexpr bool bf = true; };

/* 2^x on the SFU (ex2.approx.ftz: relative error ~2^-22, -inf -> 0) */
__device__ __forceinline__ float ex2(float x)
{
        float r;
        asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
        return r;
}

template <bool BF>
__device__ __forceinline__ void mma(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                    uint32_t b0, uint32_t b1)
{
        if (BF)
                asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                    "{%8,%9}, {%0,%1,%2,%3};"
                    : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                    : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
        else
                asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                    "{%8,%9}, {%0,%1,%2,%3};"
                    : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                    : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* The transpose of an 8x8 matrix of 16-bit values held as an mma
 * fragment (thread 4r + c holds row r, columns 2c and 2c+1): the thread
 * gets row r of the transpose (movmatrix). */
__device__ __forceinline__ uint32_t movt(uint32_t x)
{
        uint32_t r;
        asm("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(r) : "r"(x));
        return r;
}

/* two e4m3 bytes (low 16 bits of x, element 0 in the low byte) -> f16x2, exact */
__device__ __forceinline__ uint32_t e4m3x2_f16x2(uint32_t x)
{
        __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(x & 0xFFFFu), __NV_E4M3);
        return (uint32_t)h.x | ((uint32_t)h.y << 16);
}

#ifndef KVA_E4H1
#define KVA_E4H1 1 /* e4m3x2_f16x2_hi reads the high half in place (0: shifts it down first) */
#endif
/* The same for the high 16 bits of x, as the 16-bit half of x that cvt
 * takes, so that the conversion can read it in place (KVA_E4H1 0: x >> 16
 * first, a shift per pair).  cvt from e4m3 needs sm_89; older targets take
 * the shift and the intrinsic's emulation. */
__device__ __forceinline__ uint32_t e4m3x2_f16x2_hi(uint32_t x)
{
#if KVA_E4H1 && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
        uint32_t r;
        asm("{\n\t.reg .b16 lo, hi;\n\tmov.b32 {lo, hi}, %1;\n\tcvt.rn.f16x2.e4m3x2 %0, hi;\n\t}"
            : "=r"(r)
            : "r"(x));
        return r;
#else
        return e4m3x2_f16x2(x >> 16);
#endif
}

/* FP4: the four pairs of a word x of 8 codes -> bf16x2 of value * 2^-126
 * (the e=0 code 0.5 becomes the bf16 subnormal 2^-127): pair P holds
 * nibbles P and P+4, the code at bits [4P, 4P+4) in the low half and the
 * one at [16+4P, 20+4P) in the high half, each with its sign at bit 15
 * (31) and its exponent and mantissa bits at 8..6 (24..22).
 *
 * In x a sign sits 3 bits above its magnitude; bf16 wants it 9 bits above.
 * So two words are built where every sign already sits 9 bits above its
 * own magnitude, by one bit-select (LOP3, kvk::bitsel) each: w23 takes the
 * magnitudes of nibbles 2, 3, 6, 7 from x >> 6 and their signs from x,
 * w01 those of nibbles 0, 1, 4, 5 from x and their signs from x << 6.  The
 * bits between are left as they fall: the shift that places a pair (none
 * for pair 3, 4 for pair 2, 2 and 6 for pairs 1 and 0) never brings them
 * under the mask.  11 operations for 4 pairs, and the unpack is what
 * limits the fp4 kernel (the integer ALU pipe the busiest): 7 of them
 * logic ops or one right shift on that pipe, 4 left shifts that the
 * compiler issues as IMAD.SHL on the FMA pipe.  The form that isolated
 * each pair and placed its sign and magnitude with one multiply took 13
 * (9 on the ALU pipe); this one runs the fp4 kernel 3.3-4.7% faster at 8
 * of issue 5's 9 shapes (H200, docs/benchmarks.md "fp4: the unpack on two
 * pipes").  Host-callable so that tests/attn/test_fp4_unpack.cu checks it
 * against the codec in CI (test_conv_exhaustive checks the device code on
 * all 2^32 words). */
__host__ __device__ __forceinline__ void fp4quad(uint32_t x, uint32_t (&o)[4])
{
        constexpr uint32_t M = 0x81C081C0u; /* sign, exponent low bits, mantissa top bit of each half */
        const uint32_t w23 = kvk::bitsel(0x01DC01DCu, x >> 6, x);
        o[3] = w23 & M;
        o[2] = (w23 << 4) & M;
        const uint32_t w01 = kvk::bitsel(0x00770077u, x, x << 6);
        o[1] = (w01 << 2) & M;
        o[0] = (w01 << 6) & M;
}

/* E8M0 byte s -> the bf16 exponent field of 2^(s-65) (normal for every s;
 * clamped above 192). */
__host__ __device__ __forceinline__ uint32_t fp4exp(uint32_t s)
{
        uint32_t e = s + 62u;
        return e > 254u ? 254u : e;
}

/* E8M0 byte s -> bf16 bits of 2^(s-65). */
__host__ __device__ __forceinline__ uint32_t fp4mul(uint32_t s)
{
        return fp4exp(s) << 7;
}

/* The bf16x2 multiplier (2^(a-65), 2^(b-65)), low half from a: one
 * multiply places each exponent field (fp4mul(a) | fp4mul(b) << 16, which
 * tests/attn/test_fp4_unpack.cu checks for every pair). */
__host__ __device__ __forceinline__ uint32_t fp4mul2(uint32_t a, uint32_t b)
{
        return fp4exp(a) * 0x80u + fp4exp(b) * 0x00800000u;
}

/* The same with one scale in both halves. */
__host__ __device__ __forceinline__ uint32_t fp4mul2(uint32_t s)
{
        return fp4exp(s) * 0x00800080u;
}

__device__ __forceinline__ uint32_t bmul2(uint32_t a, uint32_t b)
{
        __nv_bfloat162 r = __hmul2(*(__nv_bfloat162 *)&a, *(__nv_bfloat162 *)&b);
        return *(uint32_t *)&r;
}

/* Local K element order: pair j of the thread's D/4 dims holds elements
 * (kel<DT>(2j), kel<DT>(2j+1)).  Identity except fp4 (see fp4quad). */
template <int DT>
__device__ __forceinline__ constexpr int kel(int i)
{
        if (DT != KVC_DTYPE_FP4_E2M1)
                return i;
        const int j = i / 2, q = j / 4, p = j % 4;
        return 8 * q + p + (i & 1) * 4;
}

/* K words of one key (the thread's D/4 dims) -> D/8 compute pairs. */
template <int DT, int D>
__device__ __forceinline__ void deq_k(const uint32_t (&w)[D / 4 * dtraits<DT>::bits / 32], uint32_t sc,
                                      uint32_t (&kp)[D / 8])
{
        if constexpr (dtraits<DT>::bits == 16) {
#pragma unroll
                for (int j = 0; j < D / 8; j++)
                        kp[j] = w[j];
        } else if constexpr (DT == KVC_DTYPE_FP8_E4M3) {
#pragma unroll
                for (int i = 0; i < D / 16; i++) {
                        kp[2 * i] = e4m3x2_f16x2(w[i]);
                        kp[2 * i + 1] = e4m3x2_f16x2_hi(w[i]);
                }
        } else if constexpr (DT == KVC_DTYPE_FP8_E5M2) {
#pragma unroll
                for (int i = 0; i < D / 16; i++) {
                        kp[2 * i] = prmt(w[i], 0u, 0x1404u);
                        kp[2 * i + 1] = prmt(w[i], 0u, 0x3424u);
                }
        } else {
                /* word i = elements 8i..8i+7, block i/2 (sc holds D/64 scale bytes) */
#pragma unroll
                for (int i = 0; i < D / 32; i++) {
                        const uint32_t m2 = fp4mul2((sc >> (8 * (i / 2))) & 0xFFu);
                        uint32_t q[4];
                        fp4quad(w[i], q);
#pragma unroll
                        for (int P = 0; P < 4; P++)
                                kp[4 * i + P] = bmul2(q[P], m2);
                }
        }
}

/* V words of keys a and b (the thread's D/8 dims each) -> D/8 pairs
 * (a_d, b_d), one per local dim d.  sa/sb: fp4 scale bytes of a and b for
 * the thread's dims (D <= 128: one byte; 256: two, low byte first). */
template <int DT, int D>
__device__ __forceinline__ void deq_v(const uint32_t (&a)[D / 8 * dtraits<DT>::bits / 32],
                                      const uint32_t (&b)[D / 8 * dtraits<DT>::bits / 32],
                                      uint32_t sa, uint32_t sb, uint32_t (&vp)[D / 8])
{
        if constexpr (dtraits<DT>::bits == 16) {
#pragma unroll
                for (int i = 0; i < D / 16; i++) {
                        vp[2 * i] = prmt(a[i], b[i], 0x5410u);
                        vp[2 * i + 1] = prmt(a[i], b[i], 0x7632u);
                }
        } else if constexpr (dtraits<DT>::bits == 8) {
#pragma unroll
                for (int i = 0; i < D / 32; i++) {
                        const uint32_t x0 = prmt(a[i], b[i], 0x5140u); /* a0 b0 a1 b1 */
                        const uint32_t x1 = prmt(a[i], b[i], 0x7362u); /* a2 b2 a3 b3 */
                        if constexpr (DT == KVC_DTYPE_FP8_E4M3) {
                                vp[4 * i + 0] = e4m3x2_f16x2(x0);
                                vp[4 * i + 1] = e4m3x2_f16x2_hi(x0);
                                vp[4 * i + 2] = e4m3x2_f16x2(x1);
                                vp[4 * i + 3] = e4m3x2_f16x2_hi(x1);
                        } else {
                                vp[4 * i + 0] = prmt(x0, 0u, 0x1404u);
                                vp[4 * i + 1] = prmt(x0, 0u, 0x3424u);
                                vp[4 * i + 2] = prmt(x1, 0u, 0x1404u);
                                vp[4 * i + 3] = prmt(x1, 0u, 0x3424u);
                        }
                }
        } else {
                constexpr int NW = D / 64 > 0 ? D / 64 : 1;
#pragma unroll
                for (int i = 0; i < NW; i++) {
                        const int blk = (D == 256) ? i / 2 : 0;
                        const uint32_t m = fp4mul2((sa >> (8 * blk)) & 0xFFu, (sb >> (8 * blk)) & 0xFFu);
                        const uint32_t xl = prmt(a[i], b[i], 0x5410u); /* dims 8i..8i+3 of a | of b */
                        const uint32_t xh = prmt(a[i], b[i], 0x7632u); /* dims 8i+4..8i+7 */
                        uint32_t ql[4], qh[4];
                        fp4quad(xl, ql);
                        fp4quad(xh, qh);
#pragma unroll
                        for (int P = 0; P < 4; P++) {
                                vp[8 * i + P] = bmul2(ql[P], m);
                                vp[8 * i + 4 + P] = bmul2(qh[P], m);
                        }
                }
        }
}

template <bool BF>
__device__ __forceinline__ uint32_t pack2(float x, float y)
{
        if (BF) {
                __nv_bfloat162 r = __floats2bfloat162_rn(x, y);
                return *(uint32_t *)&r;
        }
        __half2 r = __floats2half2_rn(x, y);
        return *(uint32_t *)&r;
}

} // namespace kva
#endif /* __CUDACC__ */
#endif
