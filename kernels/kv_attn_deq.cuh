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

/* FP4: nibbles at bits [4p, 4p+4) and [16+4p, 20+4p) of x -> bf16x2 of
 * value * 2^-126 (the e=0 code 0.5 becomes the bf16 subnormal 2^-127): the
 * sign goes to bit 15 (31), the exponent and mantissa bits to bits 8..6
 * (24..22).  The sign has to move 6 bits further than the rest, so one
 * multiply by 2^a + 2^b moves the isolated nibbles both ways at once (the
 * two copies do not overlap: no carries) and a mask keeps the wanted bits:
 * two logic ops and one IMAD per pair instead of two shifts and two logic
 * ops, and the IMAD runs on the FMA pipe, not on the integer ALU that the
 * unpack saturates.  p = 2, 3 are p = 0, 1 of x >> 8 (one shift shared by
 * both).  Equal to the shift-and-mask form for all 2^32 words (checked
 * once on the CPU); host-callable so that tests/attn/test_fp4_unpack.cu
 * checks it against the codec's decode in CI. */
template <int P>
__host__ __device__ __forceinline__ uint32_t fp4pair(uint32_t x)
{
        if constexpr (P >= 2) {
                return fp4pair<P - 2>(x >> 8);
        } else {
                const uint32_t u = x & (0x000F000Fu << (4 * P));
                return (u * ((1u << (12 - 4 * P)) + (1u << (6 - 4 * P)))) & 0x81C081C0u;
        }
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
 * (kel<DT>(2j), kel<DT>(2j+1)).  Identity except fp4 (see fp4pair). */
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
                        kp[4 * i + 0] = bmul2(fp4pair<0>(w[i]), m2);
                        kp[4 * i + 1] = bmul2(fp4pair<1>(w[i]), m2);
                        kp[4 * i + 2] = bmul2(fp4pair<2>(w[i]), m2);
                        kp[4 * i + 3] = bmul2(fp4pair<3>(w[i]), m2);
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
                        vp[8 * i + 0] = bmul2(fp4pair<0>(xl), m);
                        vp[8 * i + 1] = bmul2(fp4pair<1>(xl), m);
                        vp[8 * i + 2] = bmul2(fp4pair<2>(xl), m);
                        vp[8 * i + 3] = bmul2(fp4pair<3>(xl), m);
                        vp[8 * i + 4] = bmul2(fp4pair<0>(xh), m);
                        vp[8 * i + 5] = bmul2(fp4pair<1>(xh), m);
                        vp[8 * i + 6] = bmul2(fp4pair<2>(xh), m);
                        vp[8 * i + 7] = bmul2(fp4pair<3>(xh), m);
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
