/* kv_attn_prefill.cuh - extend (chunked-prefill) attention over the
 * quantized pool in query tiles: the K/V tile a CTA reads serves 64 to 256
 * query vectors, where the decode kernel (kv_attn_decode.cuh) reads a sequence's
 * keys once per query row.
 *
 * Why a second kernel.  Decode has one query row per sequence and is bound
 * by reading the pool; extend has many rows per sequence, and running the
 * decode kernel per row (what extend did first) reads each key once per row
 * and dequantizes it as often: on the H200 that was 4-11x slower than
 * PyTorch's SDPA over dense bf16 at 128-2048 new tokens (docs/benchmarks.md,
 * "Extend attention").  Here the work is the usual flash-attention tiling
 * with the dequantization moved out of the inner loop: a K/V tile is
 * dequantized once into shared memory and every warp's mma reads it there.
 *
 * Work split.  The query vectors of (sequence b, kv head h) are its rows x
 * the G q heads of h, in (row, head) order; a CTA of 4 or 8 warps
 * (pwide) takes QV consecutive ones (each warp MT m-tiles of 16, the
 * mma's M: MT = 2 up to head_dim 128, so that every K and V fragment read
 * from shared memory feeds two mmas; 1 at 256), so a tile may hold parts
 * of two rows' heads: every vector has its own row, head and causal
 * horizon.  Tile j of the
 * grid belongs to the sequence b with base(b) <= j < base(b+1), base(b) = b
 * + floor(qo_indptr[b] * G / QV) (ptile, kv_attn_extend.cuh): no
 * per-sequence prefix sum is needed, at the cost of at most one empty CTA
 * per sequence (it returns at once).
 * grid.x = tiles * kv_heads (h = x % kv_heads), grid.y = splits of the keys
 * (flash-decoding), combined by attn_reduce.
 *
 * Per key tile (KT = 64 or 32 keys: pgeo says which, and why) the CTA copies
 * the tile's K and V rows of head h with cp.async, two tiles ahead (one
 * where shared memory would not hold three stages twice per SM; one or two
 * threads per row, one page lookup each): 16-bit pools straight into
 * the compute tiles, quantized pools into a raw stage that all threads then
 * dequantize into the compute tiles (the conversions of kv_attn_deq.cuh,
 * exact; fp4 pairs land as elements (i, i+4) of each group of 8, the order
 * fp4quad produces, and q is stored in the same order so the dot products
 * see matching dims; the output undoes it).  Keys past the split, past the
 * CTA's last horizon or on a page id outside [0, num_pages) are zero-filled
 * and masked.  Each warp then computes, per m-tile, with g = lane/4, t =
 * lane%4:
 *   S[16 vectors x KT keys] = Q K^T   A = Q (ldmatrix; kept in registers
 *                                      when MT = 1 and head_dim <= 128), B =
 *                                      K rows (ldmatrix: keys along n)
 *   online softmax per vector row (rows g and g+8 of the m-tile), the causal
 *   mask per vector's horizon (skipped for tiles every row sees whole)
 *   O[16 x D] += P V                  A = P (the S accumulators repacked),
 *                                      B = V (ldmatrix.trans of key rows)
 * Compute rows are 2 * D + 16 bytes apart in shared memory so that the 8
 * row addresses of an ldmatrix hit 8 different groups of 4 banks.
 *
 * f16 q on a bf16-compute pool (bf16, fp4) takes the QLO kernels: q = hi +
 * lo in two shared-memory tiles and two K Q^T mmas, exact as in decode.
 */
#ifndef KV_ATTN_PREFILL_CUH
#define KV_ATTN_PREFILL_CUH

#ifdef __CUDACC__
#include <cuda_runtime.h>
#include <float.h>
#include <stdint.h>
#include "kv_attn_decode.cuh"

#ifndef KVA_PREFILL
#define KVA_PREFILL 1   /* 0: extend runs the decode kernel per row (for measuring) */
#endif
#ifndef KVA_PLAT
#define KVA_PLAT 0      /* 1: one-m-tile kernels with 32-key tiles, q from shared memory, 3 CTAs per SM */
#endif
#ifndef KVA_KT64
#define KVA_KT64 1      /* two m-tiles at head_dim 128 take 64-key tiles: 0 never, 1 fp4 pools but not their two-term q kernels, 2 every kernel (for measuring) */
#endif
#ifndef KVA_QLO2
#define KVA_QLO2 1      /* 0: the two-term q kernels keep one m-tile (for measuring) */
#endif
#ifndef KVA_PW
#define KVA_PW 0        /* warps a CTA: 0 by the launcher's rule (pwide, plan_tiles), 4 or 8 for every launch (for measuring) */
#endif
#ifndef KVA_PPF
#define KVA_PPF 1       /* page ids a tile ahead: 1 in the 8-warp and quantized-pool kernels (pgeo::PPF), 0 in none, 2 in every kernel (for measuring) */
#endif
#ifndef KVA_SMX
#define KVA_SMX 1       /* 0: the softmax scales each score before the max and subtracts after (for measuring) */
#endif
#ifndef KVA_TLS
#define KVA_TLS 1       /* 0: the tile's sequence and vector range stay in registers through the key loop (for measuring) */
#endif
#ifndef KVA_PFORCE_MT
#define KVA_PFORCE_MT 0 /* 1 or 2: every tiled launch takes that many m-tiles where it can (for measuring) */
#endif

namespace kva {

static_assert(KVA_PW == 0 || KVA_PW == 4 || KVA_PW == 8, "KVA_PW: 0, 4 or 8");

/* Whether prefill_kernel<DT, D, MT, QLO> has an 8-warp build beside the
 * 4-warp one.  With 8 warps a CTA (one an SM) its 128 or 256 query vectors
 * share each K/V tile, with room for 64-key tiles and three copy stages.
 * On the H200 that took 2-13% (bf16) and 0.5-12.5% (fp8) less time at
 * head_dim 128 where the grid fills the GPU, and fp4 3-4% more; but bf16
 * and fp8 14-15% more at 128 new rows of one sequence over 4k keys, where
 * 8 warps make 24 CTAs, 120 once the keys are split, for 132 SMs
 * (docs/benchmarks.md, "Extend attention").  So 16-bit and fp8 pools at
 * head_dim 128 without two-term q have both, and the launcher (plan_tiles
 * in kv_attn_decode.cu) takes 8 warps only where their CTAs fill a wave
 * without a split.  KVA_PW=4 or 8 builds one warp count for every kernel. */
__host__ __device__ constexpr bool pwide(int DT, int D, bool QLO)
{
        return KVA_PW == 8 || (KVA_PW == 0 && D == 128 && DT != KVC_DTYPE_FP4_E2M1 && !QLO);
}

/* Query vectors per CTA: PW warps x MT m-tiles of 16 mma rows. */
__host__ __device__ constexpr int pqv(int PW, int MT)
{
        return PW * 16 * MT;
}

/* Shared-memory geometry of prefill_kernel<DT, D, MT, QLO, PW>. */
template <int DT, int D, int MT_, bool QLO = false, int PW_ = 4>
struct pgeo {
        static constexpr int bits = dtraits<DT>::bits;
        static constexpr bool Q8 = bits < 16;            /* raw stage + dequantization pass */
        static constexpr bool FP4 = DT == KVC_DTYPE_FP4_E2M1;
        static constexpr int PW = PW_, THR = PW * 32;    /* warps, threads */
        static constexpr int MT = MT_, QV = pqv(PW_, MT_);
        /* keys per tile: 32 where 64 would not fit the registers next to
         * the accumulators (S and O of MT m-tiles), except that fp4 pools
         * take 64 with two m-tiles at head_dim 128 (a few bytes spilled):
         * on the H200 that is 7% faster there, where 64 made fp8 1-2%
         * slower and bf16 moved within the noise (docs/benchmarks.md,
         * "Extend attention").  Not for fp4's two-term q kernels: with q's
         * second tile, 64-key tiles would need 120 KiB of shared memory,
         * one CTA per SM. */
        static constexpr bool KT64 = KVA_KT64 == 2 || (KVA_KT64 == 1 && (FP4 || PW == 8) && !QLO);
        static constexpr int KT = D == 256 || (D == 128 && ((MT == 2 && !KT64) || KVA_PLAT)) ? 32 : 64;
        static constexpr int RS = 2 * D + 16;            /* compute row stride, bytes */
        static constexpr int RB = D * bits / 8;          /* raw row bytes (one head) */
        static constexpr int CPR = RB / 16;              /* 16-byte chunks per raw row */
        static constexpr int TPR = THR / (2 * KT);       /* threads copying one K or V row */
        static constexpr int SB = FP4 ? D / 16 : 0;      /* fp4 scale bytes per row */
        static constexpr int CT = KT * RS;               /* one compute tile (K or V) */
        static constexpr int QBYTES = QV * RS * (QLO ? 2 : 1); /* q (hi, then lo with QLO) */
        static constexpr int RAWST = Q8 ? 2 * KT * (RB + SB) : 0; /* one raw stage: K, V rows, K, V scales */
        static constexpr int smem_for(int ns) { return QBYTES + (Q8 ? 2 : 2 * ns) * CT + ns * RAWST; }
        /* stages of the copy pipeline: 3 (two tiles in flight while one is
         * computed) where two CTAs still fit an SM's 228 KiB, else 2 */
        static constexpr int BUDGET = (PW == 8 ? 227 : 112) * 1024; /* one CTA an SM, or two */
        static constexpr int NS = smem_for(3) <= BUDGET ? 3 : 2;
        static constexpr int KVOFF = QBYTES;             /* compute tiles: K V (one pair per stage for 16-bit) */
        static constexpr int RAWOFF = KVOFF + (Q8 ? 2 : 2 * NS) * CT;
        static constexpr int SMEM = smem_for(NS);
        static constexpr bool QREG = MT == 1 && D <= 128 && !KVA_PLAT && !QLO; /* Q fragments held in registers */
        static constexpr int MINB = PW == 8 ? 1 : MT == 1 && D <= 128 && KVA_PLAT ? 3 : 2; /* CTAs per SM asked of ptxas */
        /* the page ids of the next tile loaded a tile ahead (key_page): on
         * the H200 that took 2-3% off the 8-warp 16-bit kernels and up to
         * 3.4% off fp8 (fp4 within 0.5%), but made the 4-warp 16-bit ones
         * 3-5% slower (docs/benchmarks.md, "Extend attention") */
        static constexpr bool PPF = KVA_PPF == 2 || (KVA_PPF == 1 && (Q8 || PW == 8));
};

__device__ __forceinline__ uint32_t smem_u32(const void *p)
{
        return (uint32_t)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void ldsm4(uint32_t (&r)[4], uint32_t addr)
{
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(addr));
}

__device__ __forceinline__ void ldsm4t(uint32_t (&r)[4], uint32_t addr)
{
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(addr));
}

/* c0 += a b0, c1 += a b1 with (b0, b1) the two n-tiles of an ldmatrix.x4
 * load b of B fragments. */
template <bool BF>
__device__ __forceinline__ void mma2(float (&c0)[4], float (&c1)[4], const uint32_t (&a)[4], const uint32_t (&b)[4])
{
        mma<BF>(c0, a[0], a[1], a[2], a[3], b[0], b[1]);
        mma<BF>(c1, a[0], a[1], a[2], a[3], b[2], b[3]);
}

/* The pool dim at compute position pos (fp4: groups of 8 hold elements
 * 0 4 1 5 2 6 3 7; identity otherwise). */
template <int DT>
__device__ __forceinline__ int pdim(int pos)
{
        if (DT != KVC_DTYPE_FP4_E2M1)
                return pos;
        return (pos & ~7) + ((pos & 7) >> 1) + ((pos & 1) << 2);
}

/* One 16-byte raw chunk (16 fp8 or 32 fp4 codes; sc: the fp4 chunk's two
 * block-scale bytes, low byte first) -> its compute values, 16 bytes at
 * each of dst(0), dst(1) (fp8), .. dst(3) (fp4).  The conversion is the
 * decode kernel's deq_k for a thread that owns as many codes of a K row (a
 * quarter of a 64-dim fp8 row, of a 128-dim fp4 row with its two scale
 * bytes), its pairs stored four to a chunk. */
template <int DT, typename Dst>
__device__ __forceinline__ void deq_chunk(uint4 x, uint32_t sc, Dst dst)
{
        static_assert(dtraits<DT>::bits < 16, "16-bit pools are copied, not converted");
        constexpr int CODES = 128 / dtraits<DT>::bits; /* deq_k's D / 4 dims of one thread */
        const uint32_t w[4] = { x.x, x.y, x.z, x.w };
        uint32_t o[CODES / 2];
        deq_k<DT, 4 * CODES>(w, sc, o);
#pragma unroll
        for (int i = 0; i < CODES / 8; i++)
                *(uint4 *)dst(i) = make_uint4(o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]);
}

/* The page-table entry of the key row this thread copies in the tile at
 * kt (issue_keys' thread layout), or -1 for a key at k_hi or past it.
 * Kernels with pgeo::PPF load it one tile ahead of the copies, so that
 * the copies do not wait for the table: on the H200 an eighth of the stall
 * samples of the 8-warp bf16 kernel sat on that wait (docs/benchmarks.md,
 * "Extend attention"). */
template <int KT, int TPR>
__device__ __forceinline__ int32_t key_page(const params &p, const int32_t *pt, uint32_t kt, uint32_t k_hi)
{
        const uint32_t tok = kt + threadIdx.x % (KT * TPR) / TPR;
        if (tok >= k_hi)
                return -1;
        return __ldg(pt + (p.page_shift >= 0 ? tok >> p.page_shift : tok / p.page_size));
}

/* The pool slot of key tok on page-table entry pg, or -1 if pg is not a
 * page of the pool. */
__device__ __forceinline__ int64_t key_slot(const params &p, int32_t pg, uint32_t tok)
{
        if ((uint32_t)pg >= p.num_pages)
                return -1;
        const uint32_t off = p.page_shift >= 0 ? tok & (p.page_size - 1) : tok % p.page_size;
        return (int64_t)pg * p.page_size + off;
}

/* Issues the copies of the key tile at kt (KT keys of kv head h) with
 * cp.async: thread i takes K row i / TPR (V rows from KT * TPR on), part
 * i % TPR of its CPR 16-byte chunks; pg is its row's page-table entry
 * (key_page: -1 past the keys), and a key on a page id outside [0,
 * num_pages) is zero-filled like one past them.  dst(which,
 * key, chunk) is the shared address of a chunk (which: 0 K, 1 V), sdst(which,
 * key) that of an fp4 scale row (SB > 0 bytes).  The K-row threads are the
 * first KT * TPR: each of their warps stores its keys' validity bits in
 * km[warp] (32 with TPR 1, 16 with TPR 2, where lanes 2k and 2k+1 hold key
 * k; tile_mask puts them together).  (One thread, or two, per row: copying
 * whole rows per warp instruction instead, with the rows' slots shuffled
 * from the lanes that looked them up, measured up to 9% slower on the H200
 * where the grid makes waves, docs/benchmarks.md "Extend attention".) */
template <int KT, int TPR, int CPR, int SB, typename Dst, typename SDst>
__device__ __forceinline__ void issue_keys(const params &p, int32_t pg, uint32_t kt, uint32_t h, Dst dst, SDst sdst,
                                           uint32_t *km)
{
        static_assert(TPR == 1 || TPR == 2 || TPR == 4, "one, two or four threads copy a K or V row (the key mask)");
        static_assert(CPR % TPR == 0, "a row's chunks split evenly over its threads");
        constexpr int PER = CPR / TPR;
        const int which = threadIdx.x / (KT * TPR), key = threadIdx.x % (KT * TPR) / TPR, part = threadIdx.x % TPR;
        const int64_t slot = key_slot(p, pg, kt + key);
        const bool ok = slot >= 0;
        const uint8_t *src = (which ? p.v : p.k) + (uint64_t)(ok ? slot : 0) * p.token_bytes + h * p.head_bytes +
                             part * PER * 16;
#pragma unroll
        for (int c = 0; c < PER; c++)
                cp16<false>(dst(which, key, part * PER + c), src + c * 16, ok, 0);
        if constexpr (SB > 0) {
                if (part == 0) {
                        const uint8_t *ssrc = (which ? p.vs : p.ks) + (uint64_t)(ok ? slot : 0) * p.stoken_bytes +
                                              h * p.shead_bytes;
                        cpn<SB, false>(sdst(which, key), ssrc, ok, 0);
                }
        }
        if (which == 0) {
                uint32_t m = __ballot_sync(0xFFFFFFFFu, ok);
                if constexpr (TPR > 1) {
                        uint32_t e = 0;
#pragma unroll
                        for (int k = 0; k < 32 / TPR; k++)
                                e |= ((m >> (TPR * k)) & 1u) << k;
                        m = e;
                }
                if (threadIdx.x % 32 == 0)
                        km[threadIdx.x / 32] = m;
        }
}

/* The validity bits of a KT-key tile from the words issue_keys stored. */
template <int KT, int TPR>
__device__ __forceinline__ uint64_t tile_mask(const uint32_t *km)
{
        uint64_t m = 0;
#pragma unroll
        for (int w = 0; w < KT * TPR / 32; w++)
                m |= (uint64_t)km[w] << (w * 32 / TPR);
        return m;
}

/* Loads the tile's QV query vectors v0 .. (zero past nv) into shared
 * memory in the compute type and dim order, 8 values to a 16-byte chunk:
 * chunk c of vector vi at qs + qoff(vi, c); with QLO (f16 q, bf16 compute)
 * q's bf16 hi there and lo = q - hi at qs + lo + qoff(vi, c). */
template <int DT, int D, bool QLO, int THR, typename QOff>
__device__ __forceinline__ void load_q(const params &p, uint8_t *qs, uint32_t lo, int QV, const ptile &tl, uint32_t h,
                                       QOff qoff)
{
        constexpr bool BF = dtraits<DT>::bf, FP4 = DT == KVC_DTYPE_FP4_E2M1;
        const uint16_t *q = (const uint16_t *)p.q;
        const bool conv = !BF && p.elem == KVC_ELEM_BF16; /* bf16 q, f16 compute */
        for (int i = threadIdx.x; i < QV * (D / 8); i += THR) {
                const int vi = i / (D / 8), c = i % (D / 8);
                const uint64_t v = tl.v0 + vi;
                uint32_t w[4] = { 0u, 0u, 0u, 0u }, wl[4] = { 0u, 0u, 0u, 0u };
                if (v < tl.nv) {
                        const uint64_t row = (uint64_t)tl.i0 + v / p.G, head = (uint64_t)h * p.G + v % p.G;
                        const uint16_t *qp = q + (row * p.Hq + head) * D + c * 8;
                        uint16_t e[8];
                        if (p.q16) {
                                const uint4 x = __ldg((const uint4 *)qp);
                                const uint32_t xw[4] = { x.x, x.y, x.z, x.w };
#pragma unroll
                                for (int k = 0; k < 4; k++) {
                                        e[2 * k] = (uint16_t)(xw[k] & 0xFFFFu);
                                        e[2 * k + 1] = (uint16_t)(xw[k] >> 16);
                                }
                        } else {
#pragma unroll
                                for (int k = 0; k < 8; k++)
                                        e[k] = __ldg(qp + k);
                        }
                        if (conv) {
#pragma unroll
                                for (int k = 0; k < 8; k++)
                                        e[k] = __half_as_ushort(__float2half_rn(__uint_as_float((uint32_t)e[k] << 16)));
                        }
                        if constexpr (QLO) {
                                /* f16 q -> bf16 hi here, bf16 lo = q - hi in the second tile */
                                uint16_t el[8];
#pragma unroll
                                for (int k = 0; k < 8; k++) {
                                        const float x = __half2float(__ushort_as_half(e[k]));
                                        const __nv_bfloat16 hb = __float2bfloat16_rn(x);
                                        e[k] = __bfloat16_as_ushort(hb);
                                        el[k] = __bfloat16_as_ushort(__float2bfloat16_rn(x - __bfloat162float(hb)));
                                }
#pragma unroll
                                for (int k = 0; k < 4; k++) {
                                        const int a = FP4 ? k : 2 * k, bb = FP4 ? k + 4 : 2 * k + 1;
                                        wl[k] = (uint32_t)el[a] | (uint32_t)el[bb] << 16;
                                }
                        }
#pragma unroll
                        for (int k = 0; k < 4; k++) {
                                const int a = FP4 ? k : 2 * k, bb = FP4 ? k + 4 : 2 * k + 1;
                                w[k] = (uint32_t)e[a] | (uint32_t)e[bb] << 16;
                        }
                }
                /* a negative softmax scale: -q, so that the kernel's scale
                 * is >= 0 (tile_softmax); exact, a sign bit */
                const uint32_t sg = KVA_SMX && p.qk_scale_log2 < 0.0f ? 0x80008000u : 0u;
                *(uint4 *)(qs + qoff(vi, c)) = make_uint4(w[0] ^ sg, w[1] ^ sg, w[2] ^ sg, w[3] ^ sg);
                if constexpr (QLO)
                        *(uint4 *)(qs + lo + qoff(vi, c)) = make_uint4(wl[0] ^ sg, wl[1] ^ sg, wl[2] ^ sg, wl[3] ^ sg);
        }
}

/* The online softmax of one m-tile's scores s (the mma C fragments of 16
 * vectors x 8 NT keys of the tile at key kt; this thread's rows g and g+8,
 * keys 8 nt + 2 t (+1)): keys outside the tile's mask km or at or past a
 * row's horizon hz[r] get -inf (all pass when full), the rest are scaled by
 * qk > 0 (log2 units) and exponentiated against the running max m, which
 * moves; l gets the rows' sums (this thread's keys only) and al the
 * factors the rows' accumulators must be multiplied with.  Returns whether
 * any al is not 1.  The max is taken of the raw scores (qk > 0 keeps their
 * order: the kernel folds the sign of the softmax scale into q, and a
 * scale of 0 becomes FLT_MIN, under which every exponent rounds to 2^0 as
 * with 0) and the scale goes into the exponent's FMA: one instruction a
 * score less than scaling each score first (KVA_SMX=0, for measuring). */
template <int NT>
__device__ __forceinline__ bool tile_softmax(float (&s)[NT][4], float (&m)[2], float (&l)[2], float (&al)[2], bool full,
                                             uint64_t km, uint32_t kt, const uint32_t (&hz)[2], float qk, int t)
{
        bool moved = false;
        float mx[2] = { -INFINITY, -INFINITY };
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                        const int kk = nt * 8 + 2 * t + (e & 1), r = e / 2;
                        const bool ok = full || (((km >> kk) & 1u) && kt + kk < hz[r]);
                        s[nt][e] = ok ? (KVA_SMX ? s[nt][e] : s[nt][e] * qk) : -INFINITY;
                        mx[r] = fmaxf(mx[r], s[nt][e]);
                }
        }
#pragma unroll
        for (int r = 0; r < 2; r++) {
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xFFFFFFFFu, mx[r], 1));
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xFFFFFFFFu, mx[r], 2));
                const float mn = fmaxf(m[r], KVA_SMX ? mx[r] * qk : mx[r]);
                al[r] = ex2(m[r] - mn);
                moved |= al[r] != 1.0f;
                m[r] = mn;
        }
        float sum[2] = { 0.0f, 0.0f };
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                        s[nt][e] = ex2(KVA_SMX ? fmaf(s[nt][e], qk, -m[e / 2]) : s[nt][e] - m[e / 2]);
                        sum[e / 2] += s[nt][e];
                }
        }
        l[0] = l[0] * al[0] + sum[0];
        l[1] = l[1] * al[1] + sum[1];
        return moved;
}

/* The end of one m-tile: the row sums over the 4 lanes of a row, then for
 * each of this thread's rows r (vector vr[r], if below nv) the output (one
 * split) or the partial (m, l, unnormalized o) for attn_reduce. */
template <int DT, int D>
__device__ __forceinline__ void store_vectors(const params &p, const float (&o)[D / 8][4], const float (&m)[2],
                                              const float (&l)[2], const uint64_t (&vr)[2], const ptile &tl, uint32_t h,
                                              uint32_t split, int t)
{
#pragma unroll
        for (int r = 0; r < 2; r++) {
                float lr = l[r];
                lr += __shfl_xor_sync(0xFFFFFFFFu, lr, 1);
                lr += __shfl_xor_sync(0xFFFFFFFFu, lr, 2);
                const uint64_t v = vr[r];
                if (v >= tl.nv)
                        continue;
                const uint64_t hq = ((uint64_t)tl.i0 + v / p.G) * p.Hq + (uint64_t)h * p.G + v % p.G;
                if (p.splits == 1) {
                        const float norm = lr > 0.0f ? p.out_scale / lr : 0.0f;
#pragma unroll
                        for (int nd = 0; nd < D / 8; nd++) {
                                store_out(p, hq * D + pdim<DT>(nd * 8 + 2 * t), o[nd][2 * r] * norm);
                                store_out(p, hq * D + pdim<DT>(nd * 8 + 2 * t + 1), o[nd][2 * r + 1] * norm);
                        }
                } else {
                        float *po = p.part_o + (hq * p.splits + split) * D;
#pragma unroll
                        for (int nd = 0; nd < D / 8; nd++) {
                                po[pdim<DT>(nd * 8 + 2 * t)] = o[nd][2 * r];
                                po[pdim<DT>(nd * 8 + 2 * t + 1)] = o[nd][2 * r + 1];
                        }
                        if (t == 0) {
                                p.part_ml[(hq * p.splits + split) * 2] = lr > 0.0f ? m[r] : -1e30f;
                                p.part_ml[(hq * p.splits + split) * 2 + 1] = lr;
                        }
                }
        }
}

/* MT: m-tiles per warp (1 or 2; 2 only up to head_dim 128, where the
 * accumulators of two fit the registers).  QLO: f16 q on a bf16-compute
 * pool (bf16, fp4), taken as q = hi + lo, both bf16 (exact: 11 significant
 * bits fit in two 8-bit ones), each with its own K Q^T mma, as the decode
 * kernel does (q's two tiles take twice the shared memory: with two
 * m-tiles at head_dim 128, 16-bit pools keep two copy stages and fp4
 * pools 32-key tiles).  PW: warps a CTA, 4 or 8 (pwide).  Dynamic shared memory:
 * pgeo<DT, D, MT, QLO, PW>::SMEM bytes. */
template <int DT, int D, int MT_, bool QLO, int PW>
__global__ void __launch_bounds__(pgeo<DT, D, MT_, QLO, PW>::THR, pgeo<DT, D, MT_, QLO, PW>::MINB) prefill_kernel(const params p)
{
        static_assert(PW == 4 || PW == 8, "4 or 8 warps");
        typedef pgeo<DT, D, MT_, QLO, PW> PG;
        static_assert(!QLO || dtraits<DT>::bf, "two-term q: bf16-compute pools");
        constexpr bool BF = dtraits<DT>::bf;
        constexpr int KT = PG::KT, NT = KT / 8, KC = D / 16, ND = D / 8, RS = PG::RS, MT = PG::MT, QV = PG::QV;

        extern __shared__ __align__(128) uint8_t dsm[];
        __shared__ uint32_t kmask[PG::NS][PG::THR / 64]; /* valid keys of each stage's tile, bit per key */

        kvk::grid_dep_launch();

        const uint32_t H = p.Hq / p.G;
        const uint32_t h = blockIdx.x % H, j = blockIdx.x / H, split = blockIdx.y;
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;

        const ptile tl(p, j, QV);
        if (tl.v0 >= tl.nv)
                return; /* an empty tile: no vector, nothing to write */
        const uint64_t vlast = min(tl.v0 + QV, tl.nv) - 1;
        const uint32_t k_lo = split * p.chunk;
        const uint32_t k_hi = min(tl.horizon(p, vlast), k_lo + p.chunk);
        const uint32_t ntiles = k_lo < k_hi ? (k_hi - k_lo + KT - 1) / KT : 0;
        const int32_t *pt = p.page_table + (uint64_t)tl.b * p.max_pages;

        uint8_t *const qs = dsm;
        uint8_t *const raw = dsm + PG::RAWOFF;

        /* Copies of the tile starting at key kt into stage st: 16-bit pools
         * straight into the stage's compute tiles, quantized ones into its
         * raw stage */
        auto issue = [&](uint32_t kt, int st, int32_t pg) {
                uint8_t *dk = PG::Q8 ? raw + st * PG::RAWST : dsm + PG::KVOFF + st * 2 * PG::CT;
                constexpr int ROW = PG::Q8 ? PG::RB : RS, HALF = PG::Q8 ? KT * PG::RB : PG::CT;
                uint8_t *ds = raw + st * PG::RAWST + 2 * KT * PG::RB;
                issue_keys<KT, PG::TPR, PG::CPR, PG::SB>(
                        p, pg, kt, h, [&](int w, int key, int c) { return smem_u32(dk + w * HALF + key * ROW + c * 16); },
                        [&](int w, int key) { return smem_u32(ds + (w * KT + key) * PG::SB); }, kmask[st]);
        };

#pragma unroll
        for (int s0 = 0; s0 < PG::NS - 1; s0++) {
                if ((uint32_t)s0 < ntiles)
                        issue(k_lo + s0 * KT, s0, key_page<KT, PG::TPR>(p, pt, k_lo + s0 * KT, k_hi));
                cp_commit();
        }
        /* with PPF: the page-table entry of the next tile to issue (NS - 1,
         * then one more each iteration), loaded a tile ahead of its copies */
        int32_t npg = PG::PPF && PG::NS - 1 < ntiles ? key_page<KT, PG::TPR>(p, pt, k_lo + (PG::NS - 1) * KT, k_hi) : -1;

        /* Q: the CTA's vectors in the compute type and the compute dim
         * order, zero for vectors past the sequence's rows */
        load_q<DT, D, QLO, PG::THR>(p, qs, QV * RS, QV, tl, h, [](int vi, int c) { return vi * RS + c * 16; });
        /* the tile itself (tl) waits for the epilogue in shared memory,
         * which frees its registers for the key loop (the two-m-tile
         * kernels are at ptxas' 255); the barrier below publishes it */
        __shared__ __align__(8) uint8_t tl_keep[sizeof(ptile)];
        if (KVA_TLS && threadIdx.x == 0)
                memcpy(tl_keep, &tl, sizeof tl);
        __syncthreads();

        /* this warp's vectors: m-tile mt holds vectors v0 + (warp * MT + mt)
         * * 16 + 0..15; the thread's rows are g and g+8 of each.  Only their
         * horizons are needed in the key loop (tl waits in tl_keep) */
        uint64_t vr[MT][2];
        uint32_t hz[MT][2];
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
#pragma unroll
                for (int r = 0; r < 2; r++) {
                        vr[mt][r] = tl.v0 + (warp * MT + mt) * 16 + g + 8 * r;
                        hz[mt][r] = vr[mt][r] < tl.nv ? tl.horizon(p, vr[mt][r]) : 0u;
                }
        }
        const uint64_t vw = tl.v0 + warp * MT * 16, vwl = vw + MT * 16 - 1;
        const uint32_t hzmin = vwl < tl.nv ? tl.horizon(p, vw) : 0u; /* every key below is seen by all the warp's rows */
        const uint32_t qrow = smem_u32(qs + (warp * MT * 16 + (lane % 16)) * RS + (lane / 16) * 16);
        uint32_t qf[PG::QREG ? KC : 1][4];
        if constexpr (PG::QREG) {
#pragma unroll
                for (int kc = 0; kc < KC; kc++)
                        ldsm4(qf[kc], qrow + kc * 32);
        }
        /* q took the sign (load_q); tile_softmax needs qk > 0 */
        const float qk = KVA_SMX ? fmaxf(fabsf(p.qk_scale_log2), FLT_MIN) : p.qk_scale_log2;

        float o[MT][ND][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int i = 0; i < ND; i++)
                        o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.0f;
        float m[MT][2], l[MT][2];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
                m[mt][0] = m[mt][1] = -1e30f, l[mt][0] = l[mt][1] = 0.0f;

        /* ldmatrix lane offsets: K as B of Q K^T (keys along n), V as B of
         * P V (keys along k, transposed) */
        const int krow = (lane % 8) + (lane / 16) * 8, kcol = ((lane / 8) % 2) * 16;
        const int vrow = (lane % 8) + ((lane / 8) % 2) * 8, vcol = (lane / 16) * 16;

        for (uint32_t it = 0; it < ntiles; it++) {
                const int st = it % PG::NS;
                cp_wait<PG::NS - 2>(); /* this thread's copies of tile it are done */
                __syncthreads();
                /* everyone's copies of tile it have landed, and every thread
                 * is done with tile it - 1 (its compute and, for quantized
                 * pools, its dequantization): tile it + NS - 1 goes into the
                 * stage tile it - 1 used.  (Issued before this barrier, as
                 * it was, it needed a third one at the loop's end: 2-4%
                 * slower for bf16.)  Every iteration commits a group, empty
                 * past the last tile, so that tile k is always group k and
                 * cp_wait<NS - 2> above means tile it. */
                if (it + PG::NS - 1 < ntiles) {
                        const uint32_t kn = k_lo + (it + PG::NS - 1) * KT;
                        issue(kn, (it + PG::NS - 1) % PG::NS, PG::PPF ? npg : key_page<KT, PG::TPR>(p, pt, kn, k_hi));
                        if (PG::PPF && it + PG::NS < ntiles)
                                npg = key_page<KT, PG::TPR>(p, pt, kn + KT, k_hi);
                }
                cp_commit();

                const uint8_t *kt_s, *vt_s;
                if constexpr (PG::Q8) {
                        const uint8_t *rs = raw + st * PG::RAWST;
                        uint8_t *kc0 = dsm + PG::KVOFF;
                        for (int i = threadIdx.x; i < 2 * KT * PG::CPR; i += PG::THR) {
                                const int which = i / (KT * PG::CPR), rem = i % (KT * PG::CPR);
                                const int key = rem / PG::CPR, c = rem % PG::CPR;
                                const uint4 x = *(const uint4 *)(rs + which * KT * PG::RB + key * PG::RB + c * 16);
                                uint32_t sc = 0;
                                if constexpr (PG::FP4)
                                        sc = *(const uint16_t *)(rs + 2 * KT * PG::RB + (which * KT + key) * PG::SB + 2 * c);
                                uint8_t *d0 = kc0 + which * PG::CT + key * RS + c * (16 * 16 / PG::bits);
                                deq_chunk<DT>(x, sc, [&](int k) { return d0 + 16 * k; });
                        }
                        __syncthreads();
                        kt_s = kc0;
                        vt_s = kc0 + PG::CT;
                } else {
                        kt_s = dsm + PG::KVOFF + st * 2 * PG::CT;
                        vt_s = kt_s + PG::CT;
                }

                /* ---- S = Q K^T */
                float s[MT][NT][4];
#pragma unroll
                for (int mt = 0; mt < MT; mt++)
#pragma unroll
                        for (int i = 0; i < NT; i++)
                                s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.0f;
                const uint32_t kbase = smem_u32(kt_s) + krow * RS + kcol;
#pragma unroll
                for (int kc = 0; kc < KC; kc++) {
                        uint32_t a[MT][4];
#pragma unroll
                        for (int mt = 0; mt < MT; mt++) {
                                if constexpr (PG::QREG) {
                                        a[mt][0] = qf[kc][0];
                                        a[mt][1] = qf[kc][1];
                                        a[mt][2] = qf[kc][2];
                                        a[mt][3] = qf[kc][3];
                                } else {
                                        ldsm4(a[mt], qrow + mt * 16 * RS + kc * 32);
                                }
                        }
                        uint32_t ql[QLO ? MT : 1][4]; /* q's lo fragments */
                        if constexpr (QLO) {
#pragma unroll
                                for (int mt = 0; mt < MT; mt++)
                                        ldsm4(ql[mt], qrow + QV * RS + mt * 16 * RS + kc * 32);
                        }
#pragma unroll
                        for (int nt = 0; nt < NT; nt += 2) {
                                uint32_t bf[4];
                                ldsm4(bf, kbase + nt * 8 * RS + kc * 32);
#pragma unroll
                                for (int mt = 0; mt < MT; mt++)
                                        mma2<BF>(s[mt][nt], s[mt][nt + 1], a[mt], bf);
                                if constexpr (QLO) {
#pragma unroll
                                        for (int mt = 0; mt < MT; mt++)
                                                mma2<BF>(s[mt][nt], s[mt][nt + 1], ql[mt], bf);
                                }
                        }
                }

                /* ---- mask, online softmax of each m-tile's rows g and g+8 */
                const uint32_t kt = k_lo + it * KT;
                const uint64_t km = tile_mask<KT, PG::TPR>(kmask[st]);
                const uint64_t kall = KT == 64 ? ~0ull : 0xFFFFFFFFull;
                const bool full = km == kall && kt + KT <= hzmin;
                bool moved = false;
                float al[MT][2];
#pragma unroll
                for (int mt = 0; mt < MT; mt++)
                        moved |= tile_softmax<NT>(s[mt], m[mt], l[mt], al[mt], full, km, kt, hz[mt], qk, t);
                if (__any_sync(0xFFFFFFFFu, moved)) {
#pragma unroll
                        for (int mt = 0; mt < MT; mt++)
#pragma unroll
                                for (int i = 0; i < ND; i++) {
                                        o[mt][i][0] *= al[mt][0];
                                        o[mt][i][1] *= al[mt][0];
                                        o[mt][i][2] *= al[mt][1];
                                        o[mt][i][3] *= al[mt][1];
                                }
                }

                /* ---- O += P V */
                const uint32_t vbase = smem_u32(vt_s) + vrow * RS + vcol;
#pragma unroll
                for (int kk = 0; kk < KT / 16; kk++) {
                        uint32_t a[MT][4];
#pragma unroll
                        for (int mt = 0; mt < MT; mt++) {
                                a[mt][0] = pack2<BF>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
                                a[mt][1] = pack2<BF>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
                                a[mt][2] = pack2<BF>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
                                a[mt][3] = pack2<BF>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
                        }
#pragma unroll
                        for (int nd = 0; nd < ND; nd += 2) {
                                uint32_t bf[4];
                                ldsm4t(bf, vbase + kk * 16 * RS + nd * 16);
#pragma unroll
                                for (int mt = 0; mt < MT; mt++)
                                        mma2<BF>(o[mt][nd], o[mt][nd + 1], a[mt], bf);
                        }
                }
        }
        cp_wait<0>();

        const ptile &te = KVA_TLS ? *(const ptile *)tl_keep : tl;
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
#pragma unroll
                for (int r = 0; r < 2; r++)
                        vr[mt][r] = te.v0 + (warp * MT + mt) * 16 + g + 8 * r;
                store_vectors<DT, D>(p, o[mt], m[mt], l[mt], vr[mt], te, h, split, t);
        }
}

} // namespace kva

/* The prefill kernel for a pool dtype, head_dim, m-tile count (1, or 2
 * up to head_dim 128) and warp count (4, or 8 where kva::pwide), with qlo
 * the two-term q kernel (f16 q on a bf16 or fp4 pool), plus attn_reduce
 * when p.splits > 1 (kv_attn_prefill.cu), or with ret_occ only the CTAs of
 * it that fit on one SM of device dev (the current one).  Returns 0, a cudaError_t (> 0), or
 * -EINVAL for a combination without a kernel. */
int kv_prefill_launch(int dtype, uint32_t D, int mt, int pw, bool qlo, const kva::params &p, dim3 grid,
                      cudaStream_t st, int dev, int *ret_occ);

#endif /* __CUDACC__ */
#endif
