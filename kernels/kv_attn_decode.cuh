/* kv_attn_decode.cuh - paged attention over the quantized pool on tensor
 * cores (mma.sync m16n8k16), used by decode and by extend.
 *
 * Work split.  One CTA of 4 warps handles (query row r, kv head h, group of
 * up to 8 of that kv head's q heads, split s): the keys [s*chunk,
 * (s+1)*chunk) of the row's sequence.  All q heads of a kv head are handled
 * together, so K and V are read once per row and kv head (GQA groups of more
 * than 8 take several head groups and re-read).  Extend rows with at most 4
 * q heads a kv head fill the 8 columns with the heads of 8 / G consecutive
 * rows of one sequence instead (PACK, kv_attn_extend.cuh), each column with
 * its own causal horizon.  Warps take 16-key tiles in
 * turn and keep their own online-softmax state; the CTA merges its 4 warps
 * in shared memory and writes either the output (one split) or a partial
 * (m, l, unnormalized o) that attn_reduce() combines (flash-decoding).  The
 * CTAs of one row's kv heads are adjacent in launch order (grid.x = row *
 * heads + head), so the CTAs that run together read whole token rows.
 * Decode launches of several waves may instead give each warp a head (and
 * group) of its own and every tile of the split (params.hw: a CTA takes 4
 * kv heads of a row, no merge, 4 times fewer and longer CTAs; the launcher
 * weighs the two with kva::take_heads).
 *
 * Memory path.  Each warp owns a ring of S stages in shared memory (tgeo),
 * one 16-key tile each, and keeps S-1 tiles in flight: it issues cp.async
 * copies (16 bytes per lane, no registers held, keys that do not exist
 * zero-filled) for tile k+S-1 before it computes tile k.  A stage holds the
 * tile's K and V rows of this head as the pool stores them (and for fp4
 * their scale rows), with the 16-byte chunks of each row permuted (phys) so
 * that the fragment reads below are free of bank conflicts.
 *
 * Per 16-key tile a warp computes, with g = lane/4, t = lane%4:
 *   S^T[16 keys x 8 heads] = K[16 keys x D] Q^T     A = K (rows g and g+8:
 *       keys g, g+8), B = Q^T (column g: head g of the group), one mma per
 *       k-chunk of 16 dims.  Thread (g,t) supplies keys g and g+8 over the
 *       D/4 dims it owns: chunks t, t+4, ... of the row (kdim): the dot
 *       product runs over every dim once, so the order of dims inside the
 *       k-chunks is free as long as Q uses the same order (and the "pair"
 *       permutation of each dtype below).  C: keys g, g+8 x heads 2t, 2t+1,
 *       so the softmax max and sum of a head run over the 8 lanes of one t.
 *       (With Q as A its 16 rows would be 8 heads and 8 rows of zero
 *       padding, and the tile two mmas per k-chunk.)
 *   O^T[D x 8 heads] += V^T[D x 16 keys] P^T       A = V^T (thread g owns
 *       the D/8 dims of chunks g, g+8, ... (vdim), keys 2t, 2t+1, 2t+8,
 *       2t+9), B = P^T: the thread's (key, heads 2t, 2t+1) pairs of P^T are
 *       rows of two 8x8 matrices whose transposes (movmatrix) are exactly
 *       the B fragment.
 * Dequantization happens in registers on the way into the A/B fragments
 * (kv_attn_deq.cuh):
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
 * bf16 terms, exact, at the cost of a second K Q^T mma).
 *
 * Addressing: when page_size is a multiple of 16 a 16-key tile is 16
 * consecutive slots of one page (tiles start at multiples of 16), so a tile
 * needs one page-table entry: a warp loads the entries of its next 32 tiles
 * at once, a window ahead (page_window), and copies with per-lane offsets
 * computed once (lane_plan); otherwise each key's slot is looked up by one
 * lane and shuffled to the lanes that copy its chunks.
 *
 * Page ids are device memory: a key whose page id is outside [0, num_pages)
 * is skipped (score -inf, V zero-filled); lengths are clamped to the page
 * table.
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
#include "kv_cuda_common.cuh"
#include "kv_attn_extend.cuh"
#include "kv_attn_deq.cuh"
#include "kv_attn_ring.cuh"

namespace kva {

/* out[i] = v rounded to the output type (p.elem: bf16 or f16). */
__device__ __forceinline__ void store_out(const params &p, uint64_t i, float v)
{
        ((uint16_t *)p.out)[i] = p.elem == KVC_ELEM_BF16 ? __bfloat16_as_ushort(__float2bfloat16_rn(v))
                                                         : __half_as_ushort(__float2half_rn(v));
}

/* The output of a warp that took every tile of its head slot (p.hw): the
 * thread's acc (dims vdim(g, 2i) and vdim(g, 2i+1) of columns 2t and 2t+1,
 * see attn_kernel) normalized by the columns' sums, or with splits the
 * partial (m, l, unnormalized o) as the CTA merge writes it: a column
 * without keys gives m = -1e30, l = 0 and o = 0, or an output of exactly 0.
 * Columns c >= ncol are padding. */
template <int DT, int D, typename HQ>
__device__ __forceinline__ void warp_out(const params &p, const float (&acc)[D / 16][4], float m0, float m1,
                                         float l0, float l1, uint32_t ncol, int g, int t, uint32_t split,
                                         const HQ &hq_of)
{
        const uint32_t c0 = 2 * t, c1 = 2 * t + 1;
        const bool ok0 = c0 < ncol, ok1 = c1 < ncol;
        const uint64_t hq0 = ok0 ? hq_of(c0) : 0, hq1 = ok1 ? hq_of(c1) : 0;
        if (p.splits == 1) {
                const float n0 = l0 > 0.0f ? p.out_scale / l0 : 0.0f, n1 = l1 > 0.0f ? p.out_scale / l1 : 0.0f;
#pragma unroll
                for (int i = 0; i < D / 16; i++) {
                        const int d0 = vdim<DT, D>(g, 2 * i), d1 = vdim<DT, D>(g, 2 * i + 1);
                        if (ok0) {
                                store_out(p, hq0 * D + d0, acc[i][0] * n0);
                                store_out(p, hq0 * D + d1, acc[i][2] * n0);
                        }
                        if (ok1) {
                                store_out(p, hq1 * D + d0, acc[i][1] * n1);
                                store_out(p, hq1 * D + d1, acc[i][3] * n1);
                        }
                }
                return;
        }
        if (g == 0) {
                if (ok0) {
                        p.part_ml[(hq0 * p.splits + split) * 2] = l0 > 0.0f ? m0 : -1e30f;
                        p.part_ml[(hq0 * p.splits + split) * 2 + 1] = l0;
                }
                if (ok1) {
                        p.part_ml[(hq1 * p.splits + split) * 2] = l1 > 0.0f ? m1 : -1e30f;
                        p.part_ml[(hq1 * p.splits + split) * 2 + 1] = l1;
                }
        }
        float *o0 = p.part_o + (hq0 * p.splits + split) * D, *o1 = p.part_o + (hq1 * p.splits + split) * D;
#pragma unroll
        for (int i = 0; i < D / 16; i++) {
                const int d0 = vdim<DT, D>(g, 2 * i), d1 = vdim<DT, D>(g, 2 * i + 1);
                if (ok0) {
                        o0[d0] = acc[i][0];
                        o0[d1] = acc[i][2];
                }
                if (ok1) {
                        o1[d0] = acc[i][1];
                        o1[d1] = acc[i][3];
                }
        }
}

/* QLO: q is f16 on a bf16-compute pool (see qb below); a template argument
 * so that the common bf16-q case does not pay its registers.  PACK: p.pack
 * rows a CTA (extend, see below); a template argument so that decode's loop
 * carries no horizon per column (measured on the H200: the fp4 kernel 5-10%
 * slower with them, at 128 registers instead of 124;
 * bench/attn/experiments/pack-runtime.patch).
 *
 * Dynamic shared memory: tgeo<DT, D>::SMEM bytes (the four warps' rings). */
template <int DT, int D, bool QLO, bool PACK>
__global__ void __launch_bounds__(THREADS, QLO && tgeo<DT, D>::MINB > 3 ? 3 : tgeo<DT, D>::MINB)
attn_kernel(const params p)
{
        typedef dtraits<DT> tr;
        typedef tgeo<DT, D> G;
        constexpr bool BF = tr::bf;
        constexpr int NWK = D / 4 * tr::bits / 32;
        constexpr int NWV = D / 8 * tr::bits / 32;
        constexpr int KC = D / 16;                      /* k-chunks of QK, m-tiles of PV */

        extern __shared__ __align__(128) uint8_t dsm[];
        __shared__ float sm_m[WARPS][HG], sm_l[WARPS][HG], sm_w[WARPS][HG];
        __shared__ uint32_t sm_valid[WARPS][G::S];
        __shared__ uint64_t sm_hq[HG];

        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        /* p.hw (a row a CTA only): warp w takes head slot 4 * (x % nq) + w
         * of row x / nq (nq = the row's CTAs, ceil(hgt / 4)) and every tile
         * of the split itself; a warp past the last slot has nothing to do.
         * Otherwise the CTA's 4 warps take turns over one slot's tiles. */
        const bool hw = !PACK && p.hw;
        const uint32_t nq = (p.hgt + WARPS - 1) / WARPS;
        const uint32_t cta = hw ? blockIdx.x / nq : blockIdx.x / p.hgt;
        const uint32_t hy = hw ? blockIdx.x % nq * WARPS + warp : blockIdx.x % p.hgt;
        if (hw && hy >= p.hgt)
                return; /* no barrier follows on this path (the warp epilogue) */
        const uint32_t h = hy / p.head_groups, hg = hy % p.head_groups;
        const uint32_t split = blockIdx.y;
        const int g = lane / 4, t = lane % 4;
        uint8_t *ring = dsm + warp * G::S * G::STAGE;

        /* the reduction (launched as a programmatic dependent when there
         * are splits) may be scheduled now; it waits for this grid to end */
        kvk::grid_dep_launch();

        /* The CTA's query vectors, the mma's columns c < ncol: row r0 + c /
         * cg, q head h * G + hoff + c % cg, seeing keys [0, lim(c)).  One
         * row: its group's heads (cg = HG).  Packed rows (p.pack, extend
         * with G <= 4): the G heads of each of pack / G consecutive rows of
         * one sequence (cg = G), whose horizons grow by one key a row. */
        const uint32_t cap = p.max_pages * p.page_size;
        uint64_t r0;
        uint32_t cg, hoff, ncol, b, len, lmin;
        int32_t hs = 0; /* packed rows: see below */
        if constexpr (PACK) {
                const ptile tl(p, cta, (int)p.pack);
                if (tl.v0 >= tl.nv)
                        return; /* an empty tile (at most one a sequence) */
                r0 = (uint64_t)tl.i0 + tl.v0 / p.G;
                cg = p.G;
                hoff = 0;
                ncol = (uint32_t)min((uint64_t)p.pack, tl.nv - tl.v0);
                b = tl.b;
                /* the first row's horizon unclamped (but kept in 32 bits):
                 * the later rows' are hs + 1, hs + 2, ..., each clamped to
                 * [0, cap] on its own as row_to_seq does (hs < 0 when
                 * seq_lens[b] is below the sequence's rows, which a graph
                 * replay does not check) */
                hs = (int32_t)max(min(tl.hbase + (int64_t)(tl.v0 / p.G), (int64_t)cap), (int64_t)-HG);
                lmin = tl.horizon(p, tl.v0);
                len = tl.horizon(p, tl.v0 + ncol - 1);
        } else {
                r0 = cta;
                cg = HG;
                hoff = hg * HG;
                ncol = min((uint32_t)HG, p.G - hoff);
                b = 0;
                len = lmin = 0; /* row_to_seq below */
        }
        const auto hq_of = [&](uint32_t c) { return (r0 + c / cg) * p.Hq + h * p.G + hoff + c % cg; };

        /* Keys a split: the plan's chunk, or with p.row_chunk (a captured
         * launch, planned for the table's capacity) this row's own length
         * spread over the splits, so that a replay's short rows are not
         * left to their first split alone.  That needs the length first. */
        uint32_t chunk = p.chunk;
        if (p.row_chunk) {
                if constexpr (!PACK) {
                        row_to_seq(p.seq_lens, p.qo_indptr, p.batch, (uint32_t)r0, cap, b, len);
                        lmin = len;
                }
                chunk = row_chunk_of(len, p.splits);
        }

        /* this warp's tiles: t_begin + (warp + 4k) * 16, or with hw
         * t_begin + 16k; the first S-1 go out before Q is even loaded */
        const uint32_t t_begin = split * chunk;
        const uint32_t first = hw ? t_begin : t_begin + warp * TILE, step = hw ? TILE : WARPS * TILE;

        /* A decode row is its own sequence, so its page-table row is known
         * before its length: the window's load goes out together with the
         * length's instead of one memory round trip after it (bounded by
         * the table's row, cap, rather than the length: entries past the
         * length are read but never used).  Extend rows find their sequence
         * through qo_indptr first.  (Not in the QLO kernels, whose
         * registers are already full.) */
        const bool early = KVA_PWEARLY && !QLO && !p.qo_indptr && !p.row_chunk;
        const uint32_t cap_end = min(cap, t_begin + chunk);
        const uint32_t ncap = !early || first >= cap_end ? 0u : (cap_end - first + step - 1) / step;
        page_window pw(p, p.page_table + r0 * p.max_pages, first, step, ncap, lane);

        if constexpr (!PACK) {
                if (!p.row_chunk) {
                        row_to_seq(p.seq_lens, p.qo_indptr, p.batch, (uint32_t)r0, cap, b, len);
                        lmin = len;
                }
        }
        const uint32_t t_end = min(len, t_begin + chunk);
        const int32_t *pt = p.page_table + (uint64_t)b * p.max_pages;
        const lane_plan<DT, D> plan(p, h, lane);
        const uint32_t ntiles = first < t_end ? (t_end - first + step - 1) / step : 0;
        if (!early)
                pw = page_window(p, pt, first, step, ntiles, lane);
#pragma unroll
        for (int s = 0; s < G::S - 1; s++) {
                if ((uint32_t)s < ntiles) {
                        const uint32_t s0 = p.page16 ? pw.get(p, pt, first, step, ntiles, s, lane) : NOSLOT;
                        issue_tile<DT, D>(p, pt, first + s * step, t_end, h, lane, ring + s * G::STAGE,
                                          &sm_valid[warp][s], plan, s0);
                }
                cp_commit();
        }

        /* Q fragment: head g of the group, the thread's K dims in kdim
         * order (the B fragment of K Q^T).  f16 q on a bf16-compute pool: q = hi +
         * lo, both bf16, exact (11 significant bits fit in two 8-bit ones),
         * so the scores do not carry the rounding of q to bf16 (outlier K
         * channels amplify it) */
        constexpr bool qlo = BF && QLO;
        uint32_t qa[D / 8], qb[qlo ? D / 8 : 1];
        {
                const bool ok = (uint32_t)g < ncol;
                const uint16_t *qp = (const uint16_t *)p.q + (ok ? hq_of(g) : 0) * D;
                /* the thread's D/4 q elements in kpos order: 8 consecutive
                 * positions are 8 consecutive dims, one 16-byte load when q
                 * is 16-byte aligned */
                uint32_t raw[D / 8];
                if (ok && p.q16) {
#pragma unroll
                        for (int i = 0; i < D / 32; i++) {
                                const uint4 x = __ldg((const uint4 *)(qp + kpos<DT, D>(t, 8 * i)));
                                raw[4 * i] = x.x;
                                raw[4 * i + 1] = x.y;
                                raw[4 * i + 2] = x.z;
                                raw[4 * i + 3] = x.w;
                        }
                } else {
#pragma unroll
                        for (int i = 0; i < D / 8; i++)
                                raw[i] = ok ? (uint32_t)qp[kpos<DT, D>(t, 2 * i)] |
                                                      (uint32_t)qp[kpos<DT, D>(t, 2 * i + 1)] << 16
                                            : 0u;
                }
                const bool qbf = p.elem == KVC_ELEM_BF16;
#pragma unroll
                for (int j = 0; j < D / 8; j++) {
                        const int i0 = kel<DT>(2 * j), i1 = kel<DT>(2 * j + 1);
                        const uint32_t u0 = (raw[i0 / 2] >> (16 * (i0 % 2))) & 0xFFFFu;
                        const uint32_t u1 = (raw[i1 / 2] >> (16 * (i1 % 2))) & 0xFFFFu;
                        const float x0 = qbf ? __uint_as_float(u0 << 16) : __half2float(__ushort_as_half((unsigned short)u0));
                        const float x1 = qbf ? __uint_as_float(u1 << 16) : __half2float(__ushort_as_half((unsigned short)u1));
                        qa[j] = pack2<BF>(x0, x1);
                        if constexpr (qlo) {
                                const float h0 = __uint_as_float(qa[j] << 16);
                                const float h1 = __uint_as_float(qa[j] & 0xFFFF0000u);
                                qb[j] = pack2<BF>(x0 - h0, x1 - h1);
                        }
                }
        }
        const float qk_scale = p.qk_scale_log2;

        float acc[KC][4];
#pragma unroll
        for (int i = 0; i < KC; i++)
                acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
        /* running max and sum of heads 2t and 2t+1 (the sum over this
         * thread's keys only, summed over the lanes at the end) */
        float m0 = -1e30f, m1 = -1e30f, l0 = 0.0f, l1 = 0.0f;
        /* packed rows: the horizons of this thread's columns 2t, 2t+1 */
        uint32_t lim0 = len, lim1 = len;
        if constexpr (PACK) {
                lim0 = min((uint32_t)max(hs + (int32_t)((2 * t) / cg), 0), len);
                lim1 = min((uint32_t)max(hs + (int32_t)((2 * t + 1) / cg), 0), len);
        }

        uint32_t si = G::S - 1, sc = 0; /* stage to issue into, stage to compute */
        for (uint32_t k = 0; k < ntiles; k++) {
                /* every lane is done with the stage computed last round,
                 * which is the one the next tile goes into */
                __syncwarp();
                if (k + G::S - 1 < ntiles) {
                        const uint32_t ki = k + G::S - 1;
                        const uint32_t s0 = p.page16 ? pw.get(p, pt, first, step, ntiles, ki, lane) : NOSLOT;
                        issue_tile<DT, D>(p, pt, first + ki * step, t_end, h, lane, ring + si * G::STAGE,
                                          &sm_valid[warp][si], plan, s0);
                }
                cp_commit();
                si = si + 1 == G::S ? 0 : si + 1;
                cp_wait<G::S - 1>();    /* this thread's copies of tile k are done */
                __syncwarp();           /* ... and every lane's are visible */

                const uint8_t *st = ring + sc * G::STAGE;
                const uint32_t vm = sm_valid[warp][sc];
                sc = sc + 1 == G::S ? 0 : sc + 1;

                /* ---- S^T = K Q^T: A = the tile's K (keys g and g+8), B =
                 * Q^T; C holds keys g, g+8 x heads 2t, 2t+1 */
                float s[4] = { 0.0f, 0.0f, 0.0f, 0.0f };
                {
                        uint32_t kw0[NWK], kw1[NWK], k0[D / 8], k1[D / 8];
                        lds_k<DT, D>(st + G::KOFF, g, t, kw0);
                        lds_k<DT, D>(st + G::KOFF, g + 8, t, kw1);
                        const uint32_t ks0 = G::FP4 ? ksc_of<D>(st + G::KSOFF + g * G::SB, t) : 0u;
                        const uint32_t ks1 = G::FP4 ? ksc_of<D>(st + G::KSOFF + (g + 8) * G::SB, t) : 0u;
                        deq_k<DT, D>(kw0, ks0, k0);
                        deq_k<DT, D>(kw1, ks1, k1);
#pragma unroll
                        for (int kc = 0; kc < KC; kc++)
                                mma<BF>(s, k0[2 * kc], k1[2 * kc], k0[2 * kc + 1], k1[2 * kc + 1], qa[2 * kc],
                                        qa[2 * kc + 1]);
                        if constexpr (qlo) {
#pragma unroll
                                for (int kc = 0; kc < KC; kc++)
                                        mma<BF>(s, k0[2 * kc], k1[2 * kc], k0[2 * kc + 1], k1[2 * kc + 1],
                                                qb[2 * kc], qb[2 * kc + 1]);
                        }
                }

                /* ---- online softmax of heads 2t, 2t+1 over the tile: the
                 * thread's keys g and g+8, then the 8 lanes of the same t */
                const bool v0 = (vm >> g) & 1u, v1 = (vm >> (g + 8)) & 1u;
                float x[4];
                x[0] = v0 ? s[0] * qk_scale : -INFINITY; /* key g, head 2t */
                x[1] = v0 ? s[1] * qk_scale : -INFINITY; /* key g, head 2t+1 */
                x[2] = v1 ? s[2] * qk_scale : -INFINITY; /* key g+8, head 2t */
                x[3] = v1 ? s[3] * qk_scale : -INFINITY; /* key g+8, head 2t+1 */
                /* packed rows: a key past a column's horizon (a later row's
                 * own new token) is not seen by it; only tiles past the first
                 * row's horizon hold such keys */
                const uint32_t kb = first + k * step;
                if (PACK && kb + TILE > lmin) {
                        x[0] = kb + g < lim0 ? x[0] : -INFINITY;
                        x[1] = kb + g < lim1 ? x[1] : -INFINITY;
                        x[2] = kb + g + 8 < lim0 ? x[2] : -INFINITY;
                        x[3] = kb + g + 8 < lim1 ? x[3] : -INFINITY;
                }
                float mt0 = fmaxf(x[0], x[2]), mt1 = fmaxf(x[1], x[3]);
#pragma unroll
                for (int o = 4; o < 32; o *= 2) {
                        mt0 = fmaxf(mt0, __shfl_xor_sync(0xFFFFFFFFu, mt0, o));
                        mt1 = fmaxf(mt1, __shfl_xor_sync(0xFFFFFFFFu, mt1, o));
                }
                const float mn0 = fmaxf(m0, mt0), mn1 = fmaxf(m1, mt1);
                const float alpha0 = ex2(m0 - mn0), alpha1 = ex2(m1 - mn1);
                m0 = mn0;
                m1 = mn1;
                float pr[4];
                pr[0] = ex2(x[0] - mn0);
                pr[1] = ex2(x[1] - mn1);
                pr[2] = ex2(x[2] - mn0);
                pr[3] = ex2(x[3] - mn1);
                l0 = l0 * alpha0 + (pr[0] + pr[2]);
                l1 = l1 * alpha1 + (pr[1] + pr[3]);
                /* P^T for the P V mma: this thread's (key g | g+8, heads
                 * 2t, 2t+1) pairs are rows of two 8x8 matrices [key][head];
                 * the B fragment wants (keys 2t, 2t+1 | 2t+8, 2t+9, head g):
                 * their transposes */
                const uint32_t pb0 = movt(pack2<BF>(pr[0], pr[1]));
                const uint32_t pb1 = movt(pack2<BF>(pr[2], pr[3]));

                /* rescale the accumulators only when some head's max moved
                 * (after the first tiles it rarely does); acc columns are
                 * heads 2t and 2t+1, this thread's */
                if (__any_sync(0xFFFFFFFFu, alpha0 != 1.0f || alpha1 != 1.0f)) {
#pragma unroll
                        for (int mt2 = 0; mt2 < KC; mt2++) {
                                acc[mt2][0] *= alpha0;
                                acc[mt2][1] *= alpha1;
                                acc[mt2][2] *= alpha0;
                                acc[mt2][3] *= alpha1;
                        }
                }

                /* ---- O^T += V^T P^T; keys that do not exist were
                 * zero-filled, so their V is 0 and their p is 0 */
                const uint32_t kk[4] = { 2u * t, 2u * t + 1, 2u * t + 8, 2u * t + 9 };
                uint32_t vp[2][D / 8]; /* keys (2t, 2t+1), (2t+8, 2t+9) */
#pragma unroll
                for (int n = 0; n < 2; n++) {
                        uint32_t va[NWV], vb[NWV];
                        lds_v<DT, D>(st + G::VOFF, kk[2 * n], g, va);
                        lds_v<DT, D>(st + G::VOFF, kk[2 * n + 1], g, vb);
                        const uint32_t sa = G::FP4 ? vsc_of<D>(st + G::VSOFF + kk[2 * n] * G::SB, g) : 0u;
                        const uint32_t sb2 = G::FP4 ? vsc_of<D>(st + G::VSOFF + kk[2 * n + 1] * G::SB, g) : 0u;
                        deq_v<DT, D>(va, vb, sa, sb2, vp[n]);
                }
#pragma unroll
                for (int mt2 = 0; mt2 < KC; mt2++)
                        mma<BF>(acc[mt2], vp[0][2 * mt2], vp[0][2 * mt2 + 1], vp[1][2 * mt2], vp[1][2 * mt2 + 1], pb0, pb1);
        }
        cp_wait<0>();

        /* ---- l over g; then a warp that took its slot's every tile (hw)
         * writes its heads itself, else the warps merge through shared
         * memory (each warp's partial o goes into its own ring, which it no
         * longer needs) */
#pragma unroll
        for (int o = 4; o < 32; o *= 2) {
                l0 += __shfl_xor_sync(0xFFFFFFFFu, l0, o);
                l1 += __shfl_xor_sync(0xFFFFFFFFu, l1, o);
        }
        if (hw) {
                warp_out<DT, D>(p, acc, m0, m1, l0, l1, ncol, g, t, split, hq_of);
                return;
        }
        __syncwarp();
        static_assert(HG * D * sizeof(float) <= G::S * G::STAGE, "partial o fits the ring");
        float(*my_o)[D] = (float(*)[D])ring;
        if (g == 0) {
                sm_m[warp][2 * t] = m0;
                sm_m[warp][2 * t + 1] = m1;
                sm_l[warp][2 * t] = l0;
                sm_l[warp][2 * t + 1] = l1;
        }
#pragma unroll
        for (int mt2 = 0; mt2 < KC; mt2++) {
                const int d0 = vdim<DT, D>(g, 2 * mt2), d1 = vdim<DT, D>(g, 2 * mt2 + 1);
                my_o[2 * t][d0] = acc[mt2][0];
                my_o[2 * t + 1][d0] = acc[mt2][1];
                my_o[2 * t][d1] = acc[mt2][2];
                my_o[2 * t + 1][d1] = acc[mt2][3];
        }
        __syncthreads();

        /* per head, once: the merged max and sum and each warp's weight
         * (its rescale, and with one split the normalization and the v
         * fold), so that the per-dim loop below is four loads and FMAs */
        if (threadIdx.x < HG) {
                const int hh = threadIdx.x;
                const uint64_t hq = hh < (int)ncol ? hq_of(hh) : 0;
                sm_hq[hh] = hq;
                float M = sm_m[0][hh];
#pragma unroll
                for (int w = 1; w < WARPS; w++)
                        M = fmaxf(M, sm_m[w][hh]);
                float f[WARPS], L = 0.0f;
#pragma unroll
                for (int w = 0; w < WARPS; w++) {
                        f[w] = exp2f(sm_m[w][hh] - M);
                        L += sm_l[w][hh] * f[w];
                }
                const float norm = p.splits > 1 ? 1.0f : L > 0.0f ? p.out_scale / L : 0.0f;
#pragma unroll
                for (int w = 0; w < WARPS; w++)
                        sm_w[w][hh] = f[w] * norm;
                if (p.splits > 1 && hh < (int)ncol) {
                        p.part_ml[(hq * p.splits + split) * 2] = L > 0.0f ? M : -1e30f;
                        p.part_ml[(hq * p.splits + split) * 2 + 1] = L;
                }
        }
        __syncthreads();

        for (int i = threadIdx.x; i < HG * D; i += THREADS) {
                const int hh = i / D, d = i % D;
                if (hh >= (int)ncol)
                        break; /* columns are in order: the rest are padding too */
                float O = 0.0f;
#pragma unroll
                for (int w = 0; w < WARPS; w++)
                        O += ((const float(*)[D])(dsm + w * G::S * G::STAGE))[hh][d] * sm_w[w][hh];
                const uint64_t hq = sm_hq[hh];
                if (p.splits == 1)
                        store_out(p, hq * D + d, O);
                else
                        p.part_o[(hq * p.splits + split) * D + d] = O;
        }
}

/* Most splits the planner makes (kv_attn_decode.cu clamps to it): the
 * reduction keeps one weight per split in shared memory. */
constexpr int MAX_SPLITS = 1024;

/* Up to this many splits attn_reduce reads everything in one round. */
constexpr int FEW_SPLITS = 8;

/* Combines the splits of each (row, q head): one CTA of 128 threads each.
 * Up to FEW_SPLITS splits, every thread loads the (m, l) of all splits and
 * its dims' partials of all splits at once, so the whole reduction waits
 * for one L2 round trip after the split kernel ends.  Beyond, the splits'
 * (m, l) are read once, in parallel, into one weight per split (2^(m_s -
 * M)); then each thread sums its dims over the splits with independent
 * loads (a serial walk would pay one L2 round trip per split). */
template <int D>
__global__ void __launch_bounds__(128) attn_reduce(const params p)
{
        /* launched as a programmatic dependent of attn_kernel: wait until it
         * has completed and its partials are visible */
        kvk::grid_dep_wait();
        __shared__ float sw[MAX_SPLITS];
        __shared__ float red[2][4];
        const uint64_t hq = blockIdx.x;         /* row * Hq + q head */
        const uint32_t S = p.splits;

        if (KVA_RFAST && S <= (uint32_t)FEW_SPLITS) {
                constexpr int ND = (D + 127) / 128; /* dims per thread */
                const float *ml = p.part_ml + hq * S * 2;
                const float *po = p.part_o + hq * S * D;
                float mv[FEW_SPLITS], lv[FEW_SPLITS], ov[FEW_SPLITS][ND];
#pragma unroll
                for (int s = 0; s < FEW_SPLITS; s++) {
                        const bool ok = (uint32_t)s < S;
                        mv[s] = ok ? ml[2 * s] : -1e30f;
                        lv[s] = ok ? ml[2 * s + 1] : 0.0f;
#pragma unroll
                        for (int j = 0; j < ND; j++) {
                                const int d = (int)threadIdx.x + 128 * j;
                                ov[s][j] = ok && d < D ? po[(uint64_t)s * D + d] : 0.0f;
                        }
                }
                float M = mv[0];
#pragma unroll
                for (int s = 1; s < FEW_SPLITS; s++)
                        M = fmaxf(M, mv[s]);
                float L = 0.0f, O[ND] = {};
#pragma unroll
                for (int s = 0; s < FEW_SPLITS; s++) {
                        const float w = exp2f(mv[s] - M); /* absent splits: l = o = 0 */
                        L += lv[s] * w;
#pragma unroll
                        for (int j = 0; j < ND; j++)
                                O[j] += ov[s][j] * w;
                }
                const float inv = L > 0.0f ? p.out_scale / L : 0.0f;
#pragma unroll
                for (int j = 0; j < ND; j++) {
                        const int d = (int)threadIdx.x + 128 * j;
                        if (d < D) {
                                const float v = O[j] * inv;
                                store_out(p, hq * D + d, v);
                        }
                }
                return;
        }
        const float *ml = p.part_ml + hq * S * 2;
        const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;

        float M = -1e30f;
        for (uint32_t s = tid; s < S; s += 128)
                M = fmaxf(M, ml[2 * s]);
#pragma unroll
        for (int o = 16; o > 0; o /= 2)
                M = fmaxf(M, __shfl_xor_sync(0xFFFFFFFFu, M, o));
        if (lane == 0)
                red[0][warp] = M;
        __syncthreads();
        M = fmaxf(fmaxf(red[0][0], red[0][1]), fmaxf(red[0][2], red[0][3]));
        float L = 0.0f;
        for (uint32_t s = tid; s < S; s += 128) {
                const float w = exp2f(ml[2 * s] - M);
                sw[s] = w;
                L += ml[2 * s + 1] * w;
        }
#pragma unroll
        for (int o = 16; o > 0; o /= 2)
                L += __shfl_xor_sync(0xFFFFFFFFu, L, o);
        if (lane == 0)
                red[1][warp] = L;
        __syncthreads();
        L = (red[1][0] + red[1][1]) + (red[1][2] + red[1][3]);

        const float inv = L > 0.0f ? p.out_scale / L : 0.0f;
        const float *po = p.part_o + hq * S * D;
        for (int d = tid; d < D; d += 128) {
                float O = 0.0f;
#pragma unroll 8
                for (uint32_t s = 0; s < S; s++)
                        O += po[(uint64_t)s * D + d] * sw[s];
                const float v = O * inv;
                store_out(p, hq * D + d, v);
        }
}

/* The launch or occupancy query shared by the attention launchers: raises
 * kernel k's dynamic shared memory limit to smem bytes on device dev (the
 * current one; done: the caller's per-kernel set of devices already
 * raised), then with ret_occ stores how many of its CTAs fit on one SM
 * (cached per device in the caller's occ_cache[64]), else launches it on
 * grid with p.  Returns a cudaError_t. */
template <typename K>
static inline int occupancy_or_launch(K k, int smem, const params &p, dim3 grid, cudaStream_t st, int dev,
                                      int *ret_occ, std::atomic<uint64_t> &done, std::atomic<int> *occ_cache,
                                      int threads = THREADS)
{
        int e = kvk::smem_limit(k, smem, dev, done);
        if (e != 0)
                return e;
        if (ret_occ) {
                int n = 0;
                if (dev >= 0 && dev < 64 && (n = occ_cache[dev].load(std::memory_order_relaxed)) > 0) {
                        *ret_occ = n;
                        return 0;
                }
                {
                        const kvk::relaxed_capture relaxed;
                        e = (int)cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k, threads, smem);
                }
                if (e != 0)
                        return e;
                if (dev >= 0 && dev < 64)
                        occ_cache[dev].store(n, std::memory_order_relaxed);
                *ret_occ = n;
                return 0;
        }
        k<<<grid, threads, smem, st>>>(p);
        return 0;
}

/* Launches attn_reduce<D> for p (p.splits > 1) on st as a programmatic
 * dependent of the split kernel just launched there: its CTAs are
 * scheduled while that kernel runs (it triggers at its start) and wait in
 * griddepcontrol.wait until it has completed and its partials are
 * visible, which hides the launch gap between the two.  Returns a
 * cudaError_t. */
template <int D>
static inline int launch_reduce(const params &p, cudaStream_t st)
{
        const kvk::launch_cfg lc(dim3((unsigned)((uint64_t)p.rows * p.Hq)), dim3(128), st, true);
        return (int)cudaLaunchKernelEx(&lc.cfg, attn_reduce<D>, p);
}

} // namespace kva
#endif /* __CUDACC__ */
#endif
