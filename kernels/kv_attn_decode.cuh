/* kv_attn_decode.cuh - paged attention over the quantized pool on tensor
 * cores (mma.sync m16n8k16), used by decode and by extend.
 *
 * Work split.  One CTA of 4 warps handles (query row r, kv head h, group of
 * up to 8 of that kv head's q heads, split s): the keys [s*chunk,
 * (s+1)*chunk) of the row's sequence.  All q heads of a kv head are handled
 * together, so K and V are read once per row and kv head (GQA groups of more
 * than 8 take several head groups and re-read).  Warps take 16-key tiles in
 * turn and keep their own online-softmax state; the CTA merges its 4 warps
 * in shared memory and writes either the output (one split) or a partial
 * (m, l, unnormalized o) that attn_reduce() combines (flash-decoding).
 *
 * Per 16-key tile a warp computes, with g = lane/4, t = lane%4:
 *   S[8 heads x 16 keys] = Q[heads x D] K^T        A = Q (rows g, g+8; the
 *       g+8 rows are zero padding), B = K^T in two n-tiles of 8 keys.  Thread
 *       (g,t) supplies key g (and g+8) over the dims it owns, [t*D/4,
 *       (t+1)*D/4), loaded straight from the pool with 16-byte loads: the dot
 *       product runs over every dim once, so the order of dims inside the
 *       k-chunks is free as long as Q uses the same order (the "pair"
 *       permutation of each dtype below).
 *   O^T[D x 8 heads] += V^T[D x 16 keys] P^T       A = V^T (thread g owns
 *       the dims [g*D/8, (g+1)*D/8), keys 2t, 2t+1, 2t+8, 2t+9), B = P^T,
 *       whose fragment is exactly the C fragment of S: no shuffles.
 * Dequantization happens in registers on the way into the A/B fragments:
 *   bf16, fp16   none (fp16 compute for fp16 pools, bf16 for bf16)
 *   fp8 e4m3     cvt.rn.f16x2.e4m3x2 (exact), fp16 compute; k_scale folds into
 *                the softmax scale, v_scale into the output
 *   fp8 e5m2     a byte permute (e5m2 is the top byte of an f16), fp16 compute
 *   fp4 e2m1     sign and (exp, mantissa) bits shifted into a bf16 (exact,
 *                value * 2^-126), times the block scale 2^(s-65) in one
 *                bf16x2 multiply: the result is value * 2^-64, exact for
 *                every block scale byte <= 192; the 2^64 folds into the
 *                softmax scale and the output.  Bytes above 192 (block amax
 *                beyond 6 * 2^65) clamp.  bf16 compute.
 * Q is converted to the compute type (bf16 q on an fp8 pool: rounded to f16,
 * exact for |q| in [2^-14, 65504]; f16 q on a bf16/fp4 pool: split into two
 * bf16 terms, exact, at the cost of a second Q K^T mma).
 *
 * Addressing: when page_size is a multiple of 16 a 16-key tile sits on one
 * page (tiles start at multiples of 16), so a warp reads one page-table entry
 * per tile; otherwise one per key.  fp8/fp4 warps keep two tiles in flight
 * (their tiles are small); bf16/fp16 one.
 *
 * Page ids are device memory: a key whose page id is outside [0, num_pages)
 * is skipped (score -inf, V zero); lengths are clamped to the page table.
 */
#ifndef KV_ATTN_DECODE_CUH
#define KV_ATTN_DECODE_CUH

#ifdef __CUDACC__
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>
#include "kvclient.h"
#include "kv_attn_extend.cuh"

namespace kva {

constexpr int WARPS = 4;
constexpr int THREADS = WARPS * 32;
constexpr int TILE = 16;        /* keys per warp iteration */
constexpr int HG = 8;           /* q heads per CTA (mma n = 8) */

struct params {
        const uint8_t *k, *v;           /* layer's K/V arrays: [num_pages][page_size][H][D] codes */
        const uint8_t *ks, *vs;         /* fp4 scales: [num_pages][page_size][H][D/16] bytes */
        const void *q;                  /* [rows, Hq, D] elem */
        void *out;                      /* [rows, Hq, D] elem */
        float *part_o;                  /* [rows, Hq, splits, D] (splits > 1) */
        float *part_ml;                 /* [rows, Hq, splits, 2] (splits > 1) */
        const int32_t *page_table;      /* [B, max_pages] */
        const int32_t *seq_lens;        /* [B] */
        const int32_t *qo_indptr;       /* [B+1], NULL for decode */
        uint32_t batch, max_pages, num_pages, page_size;
        int32_t page_shift;             /* log2(page_size) or -1 */
        int32_t page16;                 /* page_size % 16 == 0: a tile is on one page */
        uint32_t H, Hq, G, head_groups;
        uint64_t page_bytes, token_bytes, head_bytes;
        uint64_t spage_bytes, stoken_bytes, shead_bytes;
        uint32_t chunk, splits;
        float qk_scale_log2;            /* sm_scale * k fold * log2(e) */
        float out_scale;                /* v fold */
        int elem;                       /* KVC_ELEM_BF16 / F16 */
};

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

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel)
{
        uint32_t r;
        asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
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

/* S += Q K^T on fp8 tensor cores: A = q (e4m3, rows g; the g+8 rows are
 * zero), B = K codes as stored (e4m3 or e5m2). */
template <int DT>
__device__ __forceinline__ void mma8(float (&c)[4], uint32_t a0, uint32_t a2, uint32_t b0, uint32_t b1)
{
        const uint32_t z = 0;
        if (DT == KVC_DTYPE_FP8_E4M3)
                asm("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                    "{%8,%9}, {%0,%1,%2,%3};"
                    : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                    : "r"(a0), "r"(z), "r"(a2), "r"(z), "r"(b0), "r"(b1));
        else
                asm("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e5m2.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                    "{%8,%9}, {%0,%1,%2,%3};"
                    : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                    : "r"(a0), "r"(z), "r"(a2), "r"(z), "r"(b0), "r"(b1));
}

/* NW 32-bit words from p (16-, 8- or 4-byte aligned as NW allows). */
template <int NW>
__device__ __forceinline__ void ldw(const uint8_t *p, uint32_t (&w)[NW])
{
        if constexpr (NW % 4 == 0) {
#pragma unroll
                for (int i = 0; i < NW / 4; i++) {
                        uint4 x = __ldg((const uint4 *)p + i);
                        w[4 * i] = x.x;
                        w[4 * i + 1] = x.y;
                        w[4 * i + 2] = x.z;
                        w[4 * i + 3] = x.w;
                }
        } else if constexpr (NW % 2 == 0) {
#pragma unroll
                for (int i = 0; i < NW / 2; i++) {
                        uint2 x = __ldg((const uint2 *)p + i);
                        w[2 * i] = x.x;
                        w[2 * i + 1] = x.y;
                }
        } else {
#pragma unroll
                for (int i = 0; i < NW; i++)
                        w[i] = __ldg((const uint32_t *)p + i);
        }
}

/* two e4m3 bytes (low 16 bits of x, element 0 in the low byte) -> f16x2, exact */
__device__ __forceinline__ uint32_t e4m3x2_f16x2(uint32_t x)
{
        __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(x & 0xFFFFu), __NV_E4M3);
        return (uint32_t)h.x | ((uint32_t)h.y << 16);
}

/* FP4: nibbles at bits [4p, 4p+4) and [16+4p, 20+4p) of x -> bf16x2 of
 * value * 2^-126 (the e=0 code 0.5 becomes the bf16 subnormal 2^-127). */
template <int P>
__device__ __forceinline__ uint32_t fp4pair(uint32_t x)
{
        uint32_t sgn = (P == 3 ? x : x << (12 - 4 * P)) & 0x80008000u;
        uint32_t mag = (P < 2 ? x << (6 - 4 * P) : x >> (4 * P - 6)) & 0x01C001C0u;
        return sgn | mag;
}

/* E8M0 byte s -> bf16 bits of 2^(s-65) (normal for every s; clamped above 192). */
__device__ __forceinline__ uint32_t fp4mul(uint32_t s)
{
        uint32_t e = s + 62u;
        return (e > 254u ? 254u : e) << 7;
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
                        kp[2 * i + 1] = e4m3x2_f16x2(w[i] >> 16);
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
                        const uint32_t m = fp4mul((sc >> (8 * (i / 2))) & 0xFFu);
                        const uint32_t m2 = m | (m << 16);
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
                                vp[4 * i + 1] = e4m3x2_f16x2(x0 >> 16);
                                vp[4 * i + 2] = e4m3x2_f16x2(x1);
                                vp[4 * i + 3] = e4m3x2_f16x2(x1 >> 16);
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
                        const uint32_t m = fp4mul((sa >> (8 * blk)) & 0xFFu) | (fp4mul((sb >> (8 * blk)) & 0xFFu) << 16);
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

__device__ __forceinline__ float elem_to_f32(const void *p, uint64_t i, int elem)
{
        const uint16_t x = ((const uint16_t *)p)[i];
        return elem == KVC_ELEM_BF16 ? __bfloat162float(__ushort_as_bfloat16(x))
                                     : __half2float(__ushort_as_half(x));
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

/* Byte offset of key tok's page slot from the array start, or -1 if the key
 * is past t_end or its page id is out of range. */
__device__ __forceinline__ int64_t slot_of(const params &p, const int32_t *__restrict__ pt, uint32_t tok,
                                           uint32_t t_end)
{
        if (tok >= t_end)
                return -1;
        uint32_t pi, off;
        if (p.page_shift >= 0) {
                pi = tok >> p.page_shift;
                off = tok & (p.page_size - 1);
        } else {
                pi = tok / p.page_size;
                off = tok - pi * p.page_size;
        }
        const int32_t pg = __ldg(pt + pi);
        if ((uint32_t)pg >= p.num_pages)
                return -1;
        return (int64_t)pg * p.page_size + off;
}

/* One 16-key tile of a warp as loaded from the pool: K of keys g and g+8
 * (the thread's D/4 dims), V of keys 2t, 2t+1, 2t+8, 2t+9 (its D/8 dims),
 * fp4 scale bytes, and which of the four V keys exist (bit n). */
template <int DT, int D>
struct tregs {
        static constexpr int NWK = D / 4 * dtraits<DT>::bits / 32;
        static constexpr int NWV = D / 8 * dtraits<DT>::bits / 32;
        static_assert(D / 8 * dtraits<DT>::bits % 32 == 0, "V words");
        uint32_t kw[2][NWK], vw[4][NWV];
        uint32_t ksc[2], vsc[4];
        uint32_t vok;
};

template <int DT, int D>
__device__ __forceinline__ void load_tile(const params &p, const int32_t *__restrict__ pt, uint32_t tile,
                                          uint32_t t_end, uint64_t hoff, uint64_t shoff, int g, int t,
                                          tregs<DT, D> &r)
{
        constexpr int bits = dtraits<DT>::bits;
        constexpr bool FP4 = DT == KVC_DTYPE_FP4_E2M1;
        const uint32_t kbyte = t * (D / 4) * bits / 8; /* thread's K bytes in a head */
        const uint32_t vbyte = g * (D / 8) * bits / 8; /* thread's V bytes in a head */
        const uint32_t kk[6] = { (uint32_t)g, (uint32_t)g + 8, 2u * t, 2u * t + 1, 2u * t + 8, 2u * t + 9 };
        int64_t sl[6];

        if (p.page16) {
                /* page_size is a multiple of 16 and tiles start at multiples
                 * of 16: the whole tile sits on one page, one lookup */
                uint32_t pi, off0;
                if (p.page_shift >= 0) {
                        pi = tile >> p.page_shift;
                        off0 = tile & (p.page_size - 1);
                } else {
                        pi = tile / p.page_size;
                        off0 = tile - pi * p.page_size;
                }
                const int32_t pg = __ldg(pt + pi);
                const bool pok = (uint32_t)pg < p.num_pages;
                const int64_t base = (int64_t)pg * p.page_size + off0;
#pragma unroll
                for (int i = 0; i < 6; i++)
                        sl[i] = (pok && tile + kk[i] < t_end) ? base + kk[i] : -1;
        } else {
#pragma unroll
                for (int i = 0; i < 6; i++)
                        sl[i] = slot_of(p, pt, tile + kk[i], t_end);
        }
#pragma unroll
        for (int n = 0; n < 2; n++) {
                const int64_t s = sl[n];
                const uint64_t o = s < 0 ? 0 : (uint64_t)s * p.token_bytes + hoff + kbyte;
                ldw<tregs<DT, D>::NWK>(p.k + o, r.kw[n]);
                r.ksc[n] = 0;
                if constexpr (FP4) {
                        const uint8_t *sp = p.ks + (s < 0 ? 0 : (uint64_t)s * p.stoken_bytes + shoff) + t * (D / 64);
                        r.ksc[n] = D == 64 ? sp[0] : D == 128 ? *(const uint16_t *)sp : *(const uint32_t *)sp;
                }
        }
        r.vok = 0;
#pragma unroll
        for (int n = 0; n < 4; n++) {
                const int64_t s = sl[2 + n];
                const uint64_t o = s < 0 ? 0 : (uint64_t)s * p.token_bytes + hoff;
                ldw<tregs<DT, D>::NWV>(p.v + o + vbyte, r.vw[n]);
                r.vsc[n] = 0;
                if constexpr (FP4) {
                        const uint8_t *sp = p.vs + (s < 0 ? 0 : (uint64_t)s * p.stoken_bytes + shoff);
                        r.vsc[n] = D == 64 ? sp[g / 2] : D == 128 ? sp[g] : *(const uint16_t *)(sp + 2 * g);
                }
                if (s >= 0) {
                        r.vok |= 1u << n;
                } else {
#pragma unroll
                        for (int i = 0; i < tregs<DT, D>::NWV; i++)
                                r.vw[n][i] = 0;
                }
        }
}

/* QLO: q is f16 on a bf16-compute pool (see qb below); a template argument
 * so that the common bf16-q case does not pay its registers.
 *
 * Variants measured on the H200 (docs/benchmarks.md, "Decode attention"),
 * kept as compile-time switches because each is correct (the GPU test and
 * the SDPA check pass with every one) and the trade-off may move with the
 * shape:
 *   KVA_MINB8=4   fp8/fp4 kernels squeezed to 128 registers for 4 CTAs per
 *                 SM: 80-120 bytes of spill; slower at large B*L (fp8 e5m2
 *                 924 vs 602 us at B=32, L=32k), so the default is 1 (about
 *                 150 registers, 3 CTAs per SM).
 *   KVA_FP8MMA=1  fp8 K fed to mma.sync m16n8k32 as stored (no conversion),
 *                 q as three e4m3 terms: 248 registers, 2 CTAs per SM,
 *                 slower (fp8 e4m3 829 vs 675 us at B=32, L=32k).
 *   KVA_PIPE8=0   fp8/fp4 with one tile in flight per warp (not measured
 *                 alone; the first version, which also lacked the
 *                 page-uniform addressing, ran fp8 e5m2 at 880 us there). */
#ifndef KVA_FP8MMA
#define KVA_FP8MMA 0    /* 1: fp8 K straight into fp8 mma (q as 3 e4m3 terms) */
#endif
#ifndef KVA_PIPE8
#define KVA_PIPE8 1     /* fp8/fp4 kernels keep two tiles in flight */
#endif
#ifndef KVA_PIPE16
#define KVA_PIPE16 0    /* 1: bf16/fp16 kernels keep two tiles in flight too */
#endif
#ifndef KVA_MINB8
#define KVA_MINB8 1     /* CTAs per SM asked of fp8/fp4 kernels at D <= 128 */
#endif
template <int DT, int D, bool QLO>
__global__ void __launch_bounds__(THREADS, (DT >= KVC_DTYPE_FP8_E4M3 && D <= 128 && !QLO) ? KVA_MINB8 : 1)
attn_kernel(const params p)
{
        typedef dtraits<DT> tr;
        constexpr bool BF = tr::bf;
        constexpr int NWK = tregs<DT, D>::NWK;
        constexpr int NWV = tregs<DT, D>::NWV;
        constexpr int KC = D / 16;                      /* k-chunks of QK, m-tiles of PV */

        __shared__ float sm_o[WARPS][HG][D];
        __shared__ float sm_m[WARPS][HG], sm_l[WARPS][HG];

        const uint32_t row = blockIdx.x;
        const uint32_t h = blockIdx.y / p.head_groups, hg = blockIdx.y % p.head_groups;
        const uint32_t split = blockIdx.z;
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        const int g = lane / 4, t = lane % 4;

        uint32_t b, len;
        row_to_seq(p.seq_lens, p.qo_indptr, p.batch, row, p.max_pages * p.page_size, b, len);
        const uint32_t t_begin = split * p.chunk;
        const uint32_t t_end = min(len, t_begin + p.chunk);
        const int32_t *pt = p.page_table + (uint64_t)b * p.max_pages;

        /* Q fragment: head g of the group, the thread's dims [t*D/4, ...) in
         * the dtype's pair order; rows g+8 are zero. */
        const uint32_t gi = hg * HG + g;
        /* f16 q on a bf16-compute pool: q = hi + lo, both bf16, exact (11
         * significant bits fit in two 8-bit ones), so the scores do not carry
         * the rounding of q to bf16 (outlier K channels amplify it) */
        constexpr bool qlo = BF && QLO;
        constexpr bool F8 = KVA_FP8MMA && tr::bits == 8;
        uint32_t qa[F8 ? 1 : D / 8], qb[qlo ? D / 8 : 1];
        uint32_t q8[F8 ? 3 : 1][F8 ? D / 16 : 1];
        float qinv = 1.0f;
        {
                const bool ok = gi < p.G;
                const uint64_t q0 = ((uint64_t)row * p.Hq + h * p.G + gi) * D + t * (D / 4);
                if constexpr (!F8) {
#pragma unroll
                        for (int j = 0; j < D / 8; j++) {
                                float x0 = ok ? elem_to_f32(p.q, q0 + kel<DT>(2 * j), p.elem) : 0.0f;
                                float x1 = ok ? elem_to_f32(p.q, q0 + kel<DT>(2 * j + 1), p.elem) : 0.0f;
                                qa[j] = pack2<BF>(x0, x1);
                                if constexpr (qlo) {
                                        const float h0 = __uint_as_float(qa[j] << 16);
                                        const float h1 = __uint_as_float(qa[j] & 0xFFFF0000u);
                                        qb[j] = pack2<BF>(x0 - h0, x1 - h1);
                                }
                        }
                } else {
                        /* fp8 K goes into the tensor cores as it is (mma
                         * m16n8k32 e4m3 x e4m3/e5m2): q becomes three e4m3
                         * terms of q * 2^k (k per head: |q| * 2^k in (64, 128]),
                         * q*2^k = q1 + q2 + q3 + r with |r| <= max(2^-12 |q*2^k|,
                         * 2^-10), finer than bf16's rounding of q */
                        float r[D / 4];
                        float am = 0.0f;
#pragma unroll
                        for (int j = 0; j < D / 4; j++) {
                                r[j] = ok ? elem_to_f32(p.q, q0 + j, p.elem) : 0.0f;
                                am = fmaxf(am, fabsf(r[j]));
                        }
                        am = fmaxf(am, __shfl_xor_sync(0xFFFFFFFFu, am, 1));
                        am = fmaxf(am, __shfl_xor_sync(0xFFFFFFFFu, am, 2));
                        int E = 0;
                        if (am > 0.0f && isfinite(am))
                                frexpf(am, &E);
                        E = max(-100, min(E, 100));
                        const float sq = ldexpf(1.0f, 7 - E);
                        qinv = ldexpf(1.0f, E - 7);
#pragma unroll
                        for (int j = 0; j < D / 4; j++)
                                r[j] *= sq;
#pragma unroll
                        for (int term = 0; term < 3; term++) {
#pragma unroll
                                for (int w = 0; w < D / 16; w++) {
                                        const uint32_t lo = __nv_cvt_float2_to_fp8x2(
                                                make_float2(r[4 * w], r[4 * w + 1]), __NV_SATFINITE, __NV_E4M3);
                                        const uint32_t hi = __nv_cvt_float2_to_fp8x2(
                                                make_float2(r[4 * w + 2], r[4 * w + 3]), __NV_SATFINITE, __NV_E4M3);
                                        q8[term][w] = (lo & 0xFFFFu) | (hi << 16);
                                        const uint32_t f0 = e4m3x2_f16x2(lo), f1 = e4m3x2_f16x2(hi);
                                        r[4 * w] -= __half2float(__ushort_as_half((unsigned short)(f0 & 0xFFFFu)));
                                        r[4 * w + 1] -= __half2float(__ushort_as_half((unsigned short)(f0 >> 16)));
                                        r[4 * w + 2] -= __half2float(__ushort_as_half((unsigned short)(f1 & 0xFFFFu)));
                                        r[4 * w + 3] -= __half2float(__ushort_as_half((unsigned short)(f1 >> 16)));
                                }
                        }
                }
        }
        const float qk_scale = p.qk_scale_log2 * qinv;

        float acc[KC][4];
#pragma unroll
        for (int i = 0; i < KC; i++)
                acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
        float m = -1e30f, l = 0.0f;

        const uint64_t hoff = (uint64_t)h * p.head_bytes;
        const uint64_t shoff = (uint64_t)h * p.shead_bytes;
        /* fp8/fp4 keep two tiles in flight (their tiles are few bytes, so one
         * per warp leaves HBM idle); bf16/fp16 tiles are big enough and the
         * extra 64 registers would cost a CTA per SM */
        constexpr bool PIPE = (tr::bits < 16 && KVA_PIPE8) || KVA_PIPE16;

        tregs<DT, D> cur, nxt;
        nxt.vok = cur.vok = 0;
        if (t_begin + warp * TILE < t_end)
                load_tile<DT, D>(p, pt, t_begin + warp * TILE, t_end, hoff, shoff, g, t, cur);
        for (uint32_t tile = t_begin + warp * TILE; tile < t_end; tile += WARPS * TILE) {
                const uint32_t tn = tile + WARPS * TILE;
                if constexpr (PIPE) {
                        /* the next tile's loads go out before this tile's math */
                        if (tn < t_end)
                                load_tile<DT, D>(p, pt, tn, t_end, hoff, shoff, g, t, nxt);
                }
                const uint32_t(&kw)[2][NWK] = cur.kw;
                const uint32_t(&vw)[4][NWV] = cur.vw;
                const uint32_t(&ksc)[2] = cur.ksc;
                const uint32_t(&vsc)[4] = cur.vsc;
                const bool vok[4] = { (cur.vok & 1u) != 0, (cur.vok & 2u) != 0, (cur.vok & 4u) != 0,
                                      (cur.vok & 8u) != 0 };

                /* ---- S = Q K^T, two n-tiles of 8 keys */
                float s[2][4];
#pragma unroll
                for (int n = 0; n < 2; n++) {
                        s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
                        if constexpr (F8) {
#pragma unroll
                                for (int kc = 0; kc < D / 32; kc++)
#pragma unroll
                                        for (int term = 0; term < 3; term++)
                                                mma8<DT>(s[n], q8[term][2 * kc], q8[term][2 * kc + 1],
                                                         kw[n][2 * kc], kw[n][2 * kc + 1]);
                        } else {
                                uint32_t kp[D / 8];
                                deq_k<DT, D>(kw[n], ksc[n], kp);
#pragma unroll
                                for (int kc = 0; kc < KC; kc++)
                                        mma<BF>(s[n], qa[2 * kc], 0u, qa[2 * kc + 1], 0u, kp[2 * kc], kp[2 * kc + 1]);
                                if constexpr (qlo) {
#pragma unroll
                                        for (int kc = 0; kc < KC; kc++)
                                                mma<BF>(s[n], qb[2 * kc], 0u, qb[2 * kc + 1], 0u, kp[2 * kc],
                                                        kp[2 * kc + 1]);
                                }
                        }
                }

                /* ---- online softmax for head g over keys 2t, 2t+1 (n-tile 0) and 8+2t, 9+2t */
                float x[4];
                x[0] = vok[0] ? s[0][0] * qk_scale : -INFINITY;
                x[1] = vok[1] ? s[0][1] * qk_scale : -INFINITY;
                x[2] = vok[2] ? s[1][0] * qk_scale : -INFINITY;
                x[3] = vok[3] ? s[1][1] * qk_scale : -INFINITY;
                float mt = fmaxf(fmaxf(x[0], x[1]), fmaxf(x[2], x[3]));
                mt = fmaxf(mt, __shfl_xor_sync(0xFFFFFFFFu, mt, 1));
                mt = fmaxf(mt, __shfl_xor_sync(0xFFFFFFFFu, mt, 2));
                const float mn = fmaxf(m, mt);
                const float alpha = ex2(m - mn);
                m = mn;
                float pr[4];
#pragma unroll
                for (int i = 0; i < 4; i++)
                        pr[i] = ex2(x[i] - mn);
                l = l * alpha + (pr[0] + pr[1]) + (pr[2] + pr[3]);
                const uint32_t pb0 = pack2<BF>(pr[0], pr[1]);
                const uint32_t pb1 = pack2<BF>(pr[2], pr[3]);

                /* rescale the accumulators only when some head's max moved
                 * (after the first tiles it rarely does); acc columns are
                 * heads 2t and 2t+1, whose alphas live in lanes 8t and 8t+4 */
                if (__any_sync(0xFFFFFFFFu, alpha != 1.0f)) {
                        const float a0 = __shfl_sync(0xFFFFFFFFu, alpha, 8 * t);
                        const float a1 = __shfl_sync(0xFFFFFFFFu, alpha, 8 * t + 4);
#pragma unroll
                        for (int mt2 = 0; mt2 < KC; mt2++) {
                                acc[mt2][0] *= a0;
                                acc[mt2][1] *= a1;
                                acc[mt2][2] *= a0;
                                acc[mt2][3] *= a1;
                        }
                }

                /* ---- O^T += V^T P^T */
                uint32_t vp0[D / 8], vp1[D / 8];
                deq_v<DT, D>(vw[0], vw[1], vsc[0], vsc[1], vp0);
                deq_v<DT, D>(vw[2], vw[3], vsc[2], vsc[3], vp1);
#pragma unroll
                for (int mt2 = 0; mt2 < KC; mt2++) {
                        mma<BF>(acc[mt2], vp0[2 * mt2], vp0[2 * mt2 + 1], vp1[2 * mt2], vp1[2 * mt2 + 1], pb0, pb1);
                }
                if constexpr (PIPE) {
                        cur = nxt;
                } else {
                        if (tn < t_end)
                                load_tile<DT, D>(p, pt, tn, t_end, hoff, shoff, g, t, cur);
                }
        }

        /* ---- merge the warps: l over t, then through shared memory */
        l += __shfl_xor_sync(0xFFFFFFFFu, l, 1);
        l += __shfl_xor_sync(0xFFFFFFFFu, l, 2);
        if (t == 0) {
                sm_m[warp][g] = m;
                sm_l[warp][g] = l;
        }
#pragma unroll
        for (int mt2 = 0; mt2 < KC; mt2++) {
                const int d0 = g * (D / 8) + 2 * mt2;
                sm_o[warp][2 * t][d0] = acc[mt2][0];
                sm_o[warp][2 * t + 1][d0] = acc[mt2][1];
                sm_o[warp][2 * t][d0 + 1] = acc[mt2][2];
                sm_o[warp][2 * t + 1][d0 + 1] = acc[mt2][3];
        }
        __syncthreads();

        for (int i = threadIdx.x; i < HG * D; i += THREADS) {
                const int hh = i / D, d = i % D;
                const uint32_t gg = hg * HG + hh;
                if (gg >= p.G)
                        break; /* heads are in order: the rest are padding too */
                float M = sm_m[0][hh];
#pragma unroll
                for (int w = 1; w < WARPS; w++)
                        M = fmaxf(M, sm_m[w][hh]);
                float L = 0.0f, O = 0.0f;
#pragma unroll
                for (int w = 0; w < WARPS; w++) {
                        const float f = exp2f(sm_m[w][hh] - M);
                        L += sm_l[w][hh] * f;
                        O += sm_o[w][hh][d] * f;
                }
                const uint64_t hq = (uint64_t)row * p.Hq + h * p.G + gg;
                if (p.splits == 1) {
                        const float v = L > 0.0f ? O / L * p.out_scale : 0.0f;
                        uint16_t *o = (uint16_t *)p.out + hq * D + d;
                        *o = p.elem == KVC_ELEM_BF16 ? __bfloat16_as_ushort(__float2bfloat16_rn(v))
                                                     : __half_as_ushort(__float2half_rn(v));
                } else {
                        p.part_o[(hq * p.splits + split) * D + d] = O;
                        if (d == 0) {
                                p.part_ml[(hq * p.splits + split) * 2] = L > 0.0f ? M : -1e30f;
                                p.part_ml[(hq * p.splits + split) * 2 + 1] = L;
                        }
                }
        }
}

/* Combines the splits of each (row, q head): one CTA of 128 threads each. */
template <int D>
__global__ void __launch_bounds__(128) attn_reduce(const params p)
{
        const uint64_t hq = blockIdx.x;         /* row * Hq + q head */
        const float *ml = p.part_ml + hq * p.splits * 2;
        float M = -1e30f;
        for (uint32_t s = 0; s < p.splits; s++)
                M = fmaxf(M, ml[2 * s]);
        float L = 0.0f;
        for (uint32_t s = 0; s < p.splits; s++)
                L += ml[2 * s + 1] * exp2f(ml[2 * s] - M);
        const float inv = L > 0.0f ? p.out_scale / L : 0.0f;
        for (int d = threadIdx.x; d < D; d += 128) {
                float O = 0.0f;
                for (uint32_t s = 0; s < p.splits; s++)
                        O += p.part_o[(hq * p.splits + s) * D + d] * exp2f(ml[2 * s] - M);
                const float v = O * inv;
                uint16_t *o = (uint16_t *)p.out + hq * D + d;
                *o = p.elem == KVC_ELEM_BF16 ? __bfloat16_as_ushort(__float2bfloat16_rn(v))
                                             : __half_as_ushort(__float2half_rn(v));
        }
}

} // namespace kva
#endif /* __CUDACC__ */
#endif
