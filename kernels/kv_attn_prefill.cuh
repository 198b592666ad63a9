/* kv_attn_prefill.cuh - extend (chunked-prefill) attention over the
 * quantized pool in query tiles: the K/V tile a CTA reads serves 64 query
 * vectors, where the decode kernel (kv_attn_decode.cuh) reads a sequence's
 * keys once per query row.
 *
 * Why a second kernel.  Decode has one query row per sequence and is bound
 * by reading the pool; extend has many rows per sequence, and running the
 * decode kernel per row (what extend did first) reads each key once per row
 * and dequantizes it as often: on the H200 that was 5-9x slower than
 * PyTorch's SDPA over dense bf16 at 128-2048 new tokens (docs/benchmarks.md,
 * "Extend attention").  Here the work is the usual flash-attention tiling
 * with the dequantization moved out of the inner loop: a K/V tile is
 * dequantized once into shared memory and every warp's mma reads it there.
 *
 * Work split.  The query vectors of (sequence b, kv head h) are its rows x
 * the G q heads of h, in (row, head) order; a CTA of 4 warps takes 64
 * consecutive ones (each warp 16, the mma's M), so a tile may hold parts of
 * two rows' heads: every vector has its own row, head and causal horizon.
 * Tile j of the grid belongs to the sequence b with base(b) <= j <
 * base(b+1), base(b) = b + floor(qo_indptr[b] * G / 64): no per-sequence
 * prefix sum is needed, at the cost of at most one empty CTA per sequence
 * (it returns at once).  grid.x = tiles * kv_heads (h = x % kv_heads),
 * grid.y = splits of the keys (flash-decoding), combined by attn_reduce.
 *
 * Per 64-key tile (32 at head_dim 256) the CTA copies the tile's K and V
 * rows of head h with cp.async, one tile ahead: 16-bit pools straight into
 * the compute tiles, quantized pools into a raw stage that all threads then
 * dequantize into the compute tiles (the conversions of kv_attn_deq.cuh,
 * exact; fp4 pairs land as elements (i, i+4) of each group of 8, the order
 * fp4pair produces, and q is stored in the same order so the dot products
 * see matching dims; the output undoes it).  Keys past the split, past the
 * CTA's last horizon or on a page id outside [0, num_pages) are zero-filled
 * and masked.  Each warp then computes, with g = lane/4, t = lane%4:
 *   S[16 vectors x KT keys] = Q K^T   A = Q (ldmatrix, kept in registers
 *                                      up to head_dim 128), B = K rows
 *                                      (ldmatrix: key rows, dims along k)
 *   online softmax per vector row (rows g and g+8 of the warp), the causal
 *   mask per vector's horizon
 *   O[16 x D] += P V                  A = P (the S accumulators repacked),
 *                                      B = V (ldmatrix.trans of key rows)
 * Compute rows are 2 * D + 16 bytes apart in shared memory so that the 8
 * row addresses of an ldmatrix hit 8 different groups of 4 banks.
 *
 * f16 q on a bf16-compute pool (bf16, fp4) is not taken here (the decode
 * kernel's exact two-term q covers it); the launcher decides.
 */
#ifndef KV_ATTN_PREFILL_CUH
#define KV_ATTN_PREFILL_CUH

#ifdef __CUDACC__
#include <cuda_runtime.h>
#include <stdint.h>
#include "kv_attn_decode.cuh"

#ifndef KVA_PREFILL
#define KVA_PREFILL 1   /* 0: extend runs the decode kernel per row (for measuring) */
#endif

namespace kva {

constexpr int PQV = 64; /* query vectors per CTA: 4 warps x 16 mma rows */

/* Shared-memory geometry of prefill_kernel<DT, D>. */
template <int DT, int D>
struct pgeo {
        static constexpr int bits = dtraits<DT>::bits;
        static constexpr bool Q8 = bits < 16;            /* raw stage + dequantization pass */
        static constexpr bool FP4 = DT == KVC_DTYPE_FP4_E2M1;
        static constexpr int KT = D == 256 ? 32 : 64;    /* keys per tile */
        static constexpr int RS = 2 * D + 16;            /* compute row stride, bytes */
        static constexpr int RB = D * bits / 8;          /* raw row bytes (one head) */
        static constexpr int CPR = RB / 16;              /* 16-byte chunks per raw row */
        static constexpr int SB = FP4 ? D / 16 : 0;      /* fp4 scale bytes per row */
        static constexpr int CT = KT * RS;               /* one compute tile (K or V) */
        static constexpr int QBYTES = PQV * RS;
        static constexpr int KVOFF = QBYTES;             /* compute tiles: K0 V0 (K1 V1 for 16-bit) */
        static constexpr int RAWOFF = KVOFF + (Q8 ? 2 : 4) * CT;
        static constexpr int RAWST = Q8 ? 2 * KT * (RB + SB) : 0; /* one raw stage: K, V rows, K, V scales */
        static constexpr int SMEM = RAWOFF + 2 * RAWST;
        static constexpr bool QREG = D <= 128;           /* Q fragments held in registers */
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

/* First grid tile of sequence b (see the file comment). */
__device__ __forceinline__ uint64_t ptile_base(const params &p, uint32_t b)
{
        return b + (uint64_t)(uint32_t)__ldg(p.qo_indptr + b) * p.G / PQV;
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
 * block-scale bytes, low byte first) -> its compute values at dst. */
template <int DT>
__device__ __forceinline__ void deq_chunk(uint4 x, uint32_t sc, uint8_t *dst)
{
        const uint32_t w[4] = { x.x, x.y, x.z, x.w };
        if constexpr (DT == KVC_DTYPE_FP8_E4M3 || DT == KVC_DTYPE_FP8_E5M2) {
                uint32_t o[8];
#pragma unroll
                for (int i = 0; i < 4; i++) {
                        if constexpr (DT == KVC_DTYPE_FP8_E4M3) {
                                o[2 * i] = e4m3x2_f16x2(w[i]);
                                o[2 * i + 1] = e4m3x2_f16x2(w[i] >> 16);
                        } else {
                                o[2 * i] = prmt(w[i], 0u, 0x1404u);
                                o[2 * i + 1] = prmt(w[i], 0u, 0x3424u);
                        }
                }
                ((uint4 *)dst)[0] = make_uint4(o[0], o[1], o[2], o[3]);
                ((uint4 *)dst)[1] = make_uint4(o[4], o[5], o[6], o[7]);
        } else if constexpr (DT == KVC_DTYPE_FP4_E2M1) {
#pragma unroll
                for (int i = 0; i < 4; i++) {
                        const uint32_t m = fp4mul2((sc >> (8 * (i / 2))) & 0xFFu);
                        ((uint4 *)dst)[i] = make_uint4(bmul2(fp4pair<0>(w[i]), m), bmul2(fp4pair<1>(w[i]), m),
                                                       bmul2(fp4pair<2>(w[i]), m), bmul2(fp4pair<3>(w[i]), m));
                }
        }
}

/* Dynamic shared memory: pgeo<DT, D>::SMEM bytes. */
template <int DT, int D>
__global__ void __launch_bounds__(THREADS, 2) prefill_kernel(const params p)
{
        typedef pgeo<DT, D> PG;
        constexpr bool BF = dtraits<DT>::bf;
        constexpr int KT = PG::KT, NT = KT / 8, KC = D / 16, ND = D / 8, RS = PG::RS;

        extern __shared__ __align__(128) uint8_t dsm[];
        __shared__ uint32_t kmask[2][2]; /* valid keys of each stage's tile, bit per key */

        kvk::grid_dep_launch();

        const uint32_t H = p.Hq / p.G;
        const uint32_t h = blockIdx.x % H, j = blockIdx.x / H, split = blockIdx.y;
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;

        /* the sequence of tile j: largest b with base(b) <= j */
        uint32_t lo = 0, hi = p.batch;
        while (hi - lo > 1) {
                const uint32_t mid = (lo + hi) / 2;
                if (ptile_base(p, mid) <= j)
                        lo = mid;
                else
                        hi = mid;
        }
        const uint32_t b = lo;
        const int64_t i0 = __ldg(p.qo_indptr + b), i1 = __ldg(p.qo_indptr + b + 1);
        const int64_t nb = i1 > i0 ? i1 - i0 : 0;
        const uint64_t nv = (uint64_t)nb * p.G;
        const uint64_t v0 = (j - ptile_base(p, b)) * (uint64_t)PQV;
        if (v0 >= nv)
                return; /* an empty tile: no vector, nothing to write */

        /* row i of the sequence sees keys [0, hbase + i), clamped to [0,
         * cap] as row_to_seq does for the decode kernel */
        const uint32_t cap = p.max_pages * p.page_size;
        const int64_t hbase = (int64_t)__ldg(p.seq_lens + b) - nb + 1;
        auto horizon = [&](uint64_t v) -> uint32_t {
                const int64_t x = hbase + (int64_t)(v / p.G);
                return x < 0 ? 0u : x > (int64_t)cap ? cap : (uint32_t)x;
        };
        const uint64_t vlast = min(v0 + PQV, nv) - 1;
        const uint32_t k_lo = split * p.chunk;
        const uint32_t k_hi = min(horizon(vlast), k_lo + p.chunk);
        const uint32_t ntiles = k_lo < k_hi ? (k_hi - k_lo + KT - 1) / KT : 0;
        const int32_t *pt = p.page_table + (uint64_t)b * p.max_pages;

        uint8_t *const qs = dsm;
        uint8_t *const raw = dsm + PG::RAWOFF;

        /* copies of the tile starting at key kt into stage st */
        auto issue = [&](uint32_t kt, int st) {
                uint8_t *dk = PG::Q8 ? raw + st * PG::RAWST : dsm + PG::KVOFF + st * 2 * PG::CT;
                constexpr int ROW = PG::Q8 ? PG::RB : RS, HALF = PG::Q8 ? KT * PG::RB : PG::CT;
                for (int i = threadIdx.x; i < 2 * KT * PG::CPR; i += THREADS) {
                        const int which = i / (KT * PG::CPR), rem = i % (KT * PG::CPR);
                        const int key = rem / PG::CPR, c = rem % PG::CPR;
                        const int64_t slot = slot_of(p, pt, kt + key, k_hi);
                        const uint8_t *src = (which ? p.v : p.k) + (uint64_t)(slot < 0 ? 0 : slot) * p.token_bytes +
                                             h * p.head_bytes + c * 16;
                        cp16<false>(smem_u32(dk + which * HALF + key * ROW + c * 16), src, slot >= 0, 0);
                }
                if constexpr (PG::FP4) {
                        uint8_t *ds = raw + st * PG::RAWST + 2 * KT * PG::RB;
                        for (int i = threadIdx.x; i < 2 * KT; i += THREADS) {
                                const int which = i / KT, key = i % KT;
                                const int64_t slot = slot_of(p, pt, kt + key, k_hi);
                                const uint8_t *src = (which ? p.vs : p.ks) +
                                                     (uint64_t)(slot < 0 ? 0 : slot) * p.stoken_bytes + h * p.shead_bytes;
                                cpn<PG::SB, false>(smem_u32(ds + (which * KT + key) * PG::SB), src, slot >= 0, 0);
                        }
                }
                if (warp == 0) {
#pragma unroll
                        for (int k = 0; k < KT; k += 32) {
                                const uint32_t m = __ballot_sync(0xFFFFFFFFu, slot_of(p, pt, kt + k + lane, k_hi) >= 0);
                                if (lane == 0)
                                        kmask[st][k / 32] = m;
                        }
                        if (KT == 32 && lane == 0)
                                kmask[st][1] = 0;
                }
        };

        if (ntiles > 0)
                issue(k_lo, 0);
        cp_commit();

        /* Q: the CTA's 64 vectors in the compute type and the compute dim
         * order, zero for vectors past the sequence's rows */
        {
                const uint16_t *q = (const uint16_t *)p.q;
                const bool conv = !BF && p.elem == KVC_ELEM_BF16; /* bf16 q, f16 compute */
                for (int i = threadIdx.x; i < PQV * (D / 8); i += THREADS) {
                        const int vi = i / (D / 8), c = i % (D / 8);
                        const uint64_t v = v0 + vi;
                        uint32_t w[4] = { 0u, 0u, 0u, 0u };
                        if (v < nv) {
                                const uint64_t row = (uint64_t)i0 + v / p.G, head = (uint64_t)h * p.G + v % p.G;
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
#pragma unroll
                                for (int k = 0; k < 4; k++) {
                                        const int a = PG::FP4 ? k : 2 * k, bb = PG::FP4 ? k + 4 : 2 * k + 1;
                                        w[k] = (uint32_t)e[a] | (uint32_t)e[bb] << 16;
                                }
                        }
                        *(uint4 *)(qs + vi * RS + c * 16) = make_uint4(w[0], w[1], w[2], w[3]);
                }
        }
        __syncthreads();

        /* this warp's vectors: rows g and g+8 of its 16 */
        const uint64_t va = v0 + warp * 16 + g, vb = va + 8;
        const uint32_t hza = va < nv ? horizon(va) : 0u, hzb = vb < nv ? horizon(vb) : 0u;
        const uint64_t vw = v0 + warp * 16;
        const uint32_t hzmin = vw < nv && vw + 15 < nv ? horizon(vw) : 0u; /* every key below is seen by all 16 */
        const uint32_t qrow = smem_u32(qs + (warp * 16 + (lane % 16)) * RS + (lane / 16) * 16);
        uint32_t qf[PG::QREG ? KC : 1][4];
        if constexpr (PG::QREG) {
#pragma unroll
                for (int kc = 0; kc < KC; kc++)
                        ldsm4(qf[kc], qrow + kc * 32);
        }
        const float qk = p.qk_scale_log2;

        float o[ND][4];
#pragma unroll
        for (int i = 0; i < ND; i++)
                o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
        float ma = -1e30f, mb = -1e30f, la = 0.0f, lb = 0.0f;

        /* ldmatrix lane offsets: K as B of Q K^T (keys along n), V as B of
         * P V (keys along k, transposed) */
        const int krow = (lane % 8) + (lane / 16) * 8, kcol = ((lane / 8) % 2) * 16;
        const int vrow = (lane % 8) + ((lane / 8) % 2) * 8, vcol = (lane / 16) * 16;

        for (uint32_t it = 0; it < ntiles; it++) {
                const int st = it & 1;
                if (it + 1 < ntiles)
                        issue(k_lo + (it + 1) * KT, st ^ 1);
                cp_commit();
                cp_wait<1>();
                __syncthreads();

                const uint8_t *kt_s, *vt_s;
                if constexpr (PG::Q8) {
                        const uint8_t *rs = raw + st * PG::RAWST;
                        uint8_t *kc0 = dsm + PG::KVOFF;
                        for (int i = threadIdx.x; i < 2 * KT * PG::CPR; i += THREADS) {
                                const int which = i / (KT * PG::CPR), rem = i % (KT * PG::CPR);
                                const int key = rem / PG::CPR, c = rem % PG::CPR;
                                const uint4 x = *(const uint4 *)(rs + which * KT * PG::RB + key * PG::RB + c * 16);
                                uint32_t sc = 0;
                                if constexpr (PG::FP4)
                                        sc = *(const uint16_t *)(rs + 2 * KT * PG::RB + (which * KT + key) * PG::SB + 2 * c);
                                deq_chunk<DT>(x, sc, kc0 + which * PG::CT + key * RS + c * (16 * 16 / PG::bits));
                        }
                        __syncthreads();
                        kt_s = kc0;
                        vt_s = kc0 + PG::CT;
                } else {
                        kt_s = dsm + PG::KVOFF + st * 2 * PG::CT;
                        vt_s = kt_s + PG::CT;
                }

                /* ---- S = Q K^T */
                float s[NT][4];
#pragma unroll
                for (int i = 0; i < NT; i++)
                        s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
                const uint32_t kbase = smem_u32(kt_s) + krow * RS + kcol;
#pragma unroll
                for (int kc = 0; kc < KC; kc++) {
                        uint32_t a[4];
                        if constexpr (PG::QREG) {
                                a[0] = qf[kc][0];
                                a[1] = qf[kc][1];
                                a[2] = qf[kc][2];
                                a[3] = qf[kc][3];
                        } else {
                                ldsm4(a, qrow + kc * 32);
                        }
#pragma unroll
                        for (int nt = 0; nt < NT; nt += 2) {
                                uint32_t bf[4];
                                ldsm4(bf, kbase + nt * 8 * RS + kc * 32);
                                mma<BF>(s[nt], a[0], a[1], a[2], a[3], bf[0], bf[1]);
                                mma<BF>(s[nt + 1], a[0], a[1], a[2], a[3], bf[2], bf[3]);
                        }
                }

                /* ---- mask, online softmax of rows g (a) and g+8 (b) */
                const uint32_t kt = k_lo + it * KT;
                const uint64_t km = (uint64_t)kmask[st][0] | (uint64_t)kmask[st][1] << 32;
                const uint64_t kall = KT == 64 ? ~0ull : 0xFFFFFFFFull;
                const bool full = km == kall && kt + KT <= hzmin;
                float mxa = -INFINITY, mxb = -INFINITY;
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
#pragma unroll
                        for (int e = 0; e < 2; e++) {
                                const int kk = nt * 8 + 2 * t + e;
                                const bool ok = (km >> kk) & 1u;
                                const uint32_t key = kt + kk;
                                s[nt][e] = full || (ok && key < hza) ? s[nt][e] * qk : -INFINITY;
                                s[nt][2 + e] = full || (ok && key < hzb) ? s[nt][2 + e] * qk : -INFINITY;
                                mxa = fmaxf(mxa, s[nt][e]);
                                mxb = fmaxf(mxb, s[nt][2 + e]);
                        }
                }
#pragma unroll
                for (int x = 1; x < 4; x *= 2) {
                        mxa = fmaxf(mxa, __shfl_xor_sync(0xFFFFFFFFu, mxa, x));
                        mxb = fmaxf(mxb, __shfl_xor_sync(0xFFFFFFFFu, mxb, x));
                }
                const float mna = fmaxf(ma, mxa), mnb = fmaxf(mb, mxb);
                const float aa = ex2(ma - mna), ab = ex2(mb - mnb);
                ma = mna;
                mb = mnb;
                float sa = 0.0f, sb = 0.0f;
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                        s[nt][0] = ex2(s[nt][0] - mna);
                        s[nt][1] = ex2(s[nt][1] - mna);
                        s[nt][2] = ex2(s[nt][2] - mnb);
                        s[nt][3] = ex2(s[nt][3] - mnb);
                        sa += s[nt][0] + s[nt][1];
                        sb += s[nt][2] + s[nt][3];
                }
                la = la * aa + sa;
                lb = lb * ab + sb;
                if (__any_sync(0xFFFFFFFFu, aa != 1.0f || ab != 1.0f)) {
#pragma unroll
                        for (int i = 0; i < ND; i++) {
                                o[i][0] *= aa;
                                o[i][1] *= aa;
                                o[i][2] *= ab;
                                o[i][3] *= ab;
                        }
                }

                /* ---- O += P V */
                const uint32_t vbase = smem_u32(vt_s) + vrow * RS + vcol;
#pragma unroll
                for (int kk = 0; kk < KT / 16; kk++) {
                        const uint32_t a0 = pack2<BF>(s[2 * kk][0], s[2 * kk][1]);
                        const uint32_t a1 = pack2<BF>(s[2 * kk][2], s[2 * kk][3]);
                        const uint32_t a2 = pack2<BF>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
                        const uint32_t a3 = pack2<BF>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
                        for (int nd = 0; nd < ND; nd += 2) {
                                uint32_t bf[4];
                                ldsm4t(bf, vbase + kk * 16 * RS + nd * 16);
                                mma<BF>(o[nd], a0, a1, a2, a3, bf[0], bf[1]);
                                mma<BF>(o[nd + 1], a0, a1, a2, a3, bf[2], bf[3]);
                        }
                }
                __syncthreads(); /* the stage and the compute tiles are free again */
        }
        cp_wait<0>();

        /* ---- the row sums over the 4 lanes of a row, then the output (one
         * split) or the partial (m, l, unnormalized o) for attn_reduce */
#pragma unroll
        for (int x = 1; x < 4; x *= 2) {
                la += __shfl_xor_sync(0xFFFFFFFFu, la, x);
                lb += __shfl_xor_sync(0xFFFFFFFFu, lb, x);
        }
#pragma unroll
        for (int r = 0; r < 2; r++) {
                const uint64_t v = r ? vb : va;
                if (v >= nv)
                        continue;
                const float m = r ? mb : ma, l = r ? lb : la;
                const uint64_t hq = ((uint64_t)i0 + v / p.G) * p.Hq + (uint64_t)h * p.G + v % p.G;
                if (p.splits == 1) {
                        const float norm = l > 0.0f ? p.out_scale / l : 0.0f;
#pragma unroll
                        for (int nd = 0; nd < ND; nd++) {
                                store_out(p, hq * D + pdim<DT>(nd * 8 + 2 * t), o[nd][2 * r] * norm);
                                store_out(p, hq * D + pdim<DT>(nd * 8 + 2 * t + 1), o[nd][2 * r + 1] * norm);
                        }
                } else {
                        float *po = p.part_o + (hq * p.splits + split) * D;
#pragma unroll
                        for (int nd = 0; nd < ND; nd++) {
                                po[pdim<DT>(nd * 8 + 2 * t)] = o[nd][2 * r];
                                po[pdim<DT>(nd * 8 + 2 * t + 1)] = o[nd][2 * r + 1];
                        }
                        if (t == 0) {
                                p.part_ml[(hq * p.splits + split) * 2] = l > 0.0f ? m : -1e30f;
                                p.part_ml[(hq * p.splits + split) * 2 + 1] = l;
                        }
                }
        }
}

} // namespace kva

/* The prefill kernel for a pool dtype and head_dim, plus attn_reduce when
 * p.splits > 1 (kv_attn_prefill.cu), or with ret_occ only the CTAs of it
 * that fit on one SM of device dev (the current one).  Returns 0, a
 * cudaError_t (> 0), or -EINVAL for a dtype / head_dim without a kernel. */
int kv_prefill_launch(int dtype, uint32_t D, const kva::params &p, dim3 grid, cudaStream_t st, int dev,
                      int *ret_occ);

#endif /* __CUDACC__ */
#endif
