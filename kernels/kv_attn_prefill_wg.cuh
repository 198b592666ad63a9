/* kv_attn_prefill_wg.cuh - the tiled extend kernel on Hopper's warpgroup
 * MMA (wgmma): the work split, copies, dequantization, softmax and output
 * of kv_attn_prefill.cuh, with the two products of each key tile done by
 * the whole CTA as one warpgroup instead of per warp with mma.sync.
 *
 * Why.  The mma.sync kernel is latency-bound on the H200 (docs/benchmarks.md
 * "Extend attention": tensor pipe busy a quarter of the time, each warp
 * waiting on its chain of mma and ldmatrix results at two warps per
 * scheduler).  A wgmma takes its B operand (and here A of S = Q K^T too)
 * straight from shared memory, a 64 x 64 x 16 or 64 x 128 x 16 product per
 * instruction, runs asynchronously and needs no ldmatrix: the registers
 * that held fragments go, and the warps issue a few instructions per tile
 * where they issued hundreds.
 *
 * Shape.  A CTA of two warpgroups (8 warps) takes QV = 128 query vectors,
 * 64 per warpgroup (its warp w rows 16 w .. 16 w + 15, the wgmma M), and
 * KT = 64 keys a tile, which both warpgroups read: a tile copied and
 * dequantized for 128 vectors, not 64 (with one warpgroup of 64 the
 * copies per flop doubled and the kernel ran 0.9-1.2x the mma.sync one's
 * time, docs/benchmarks.md).  Per warpgroup and tile:
 *   S[64 x 64] = Q K^T       A = Q, B = K: both K-major tiles in shared
 *                             memory (kv_attn_wgmma.cuh), D / 16 wgmma
 *   softmax per vector row, as the mma.sync kernel (tile_softmax: the
 *   accumulator layout of a wgmma is that of m16n8 mma fragments)
 *   O[64 x D] += P V         A = P from registers (the S accumulators
 *                             packed to 16 bits: the mma A fragment), B = V
 *                             read transposed (MN-major), KT / 16 wgmma
 * Tiles are 128-byte swizzled (kv_attn_wgmma.cuh): 16-bit pools are copied
 * into them chunk by chunk with cp.async; quantized pools are copied raw
 * and dequantized into one pair of compute tiles as in kv_attn_prefill.cuh.
 * Writes of the generic proxy (stores, cp.async) are fenced for the async
 * proxy wgmma reads through before the barrier that publishes them.
 *
 * head_dim 64 and 128 (256 keeps the mma.sync kernel: the O accumulators
 * of 64 x 256 would not fit beside S); f16 q over a bf16-compute pool
 * (QLO) runs the score wgmma twice, over q's hi and lo tiles.  Only in
 * sm_90a code (KVA_WG_DEVICE); the launcher takes it where the build has
 * it (KVA_WG_HOST) and the device is sm_90.
 */
#ifndef KV_ATTN_PREFILL_WG_CUH
#define KV_ATTN_PREFILL_WG_CUH

#ifdef __CUDACC__
#include <type_traits>
#include "kv_attn_prefill.cuh"
#include "kv_attn_wgmma.cuh"

#ifndef KVA_WG
#define KVA_WG 1 /* 0: the mma.sync tiled kernel even where wgmma runs (for measuring) */
#endif
/* plan_tiles's m-tile count for "the wgmma kernel" */
#define KVA_MT_WG 64

namespace kva {

/* Shared-memory geometry of wg_prefill_kernel<DT, D, QLO>. */
template <int DT, int D, bool QLO = false>
struct wgeo {
        static constexpr int bits = dtraits<DT>::bits;
        static constexpr bool Q8 = bits < 16;            /* raw stage + dequantization pass */
        static constexpr int WGS = 2, NTH = 128 * WGS;   /* warpgroups, threads */
        static constexpr int QV = 64 * WGS, KT = 64;
        static constexpr int RB = D * bits / 8;          /* raw row bytes (one head) */
        static constexpr int CPR = RB / 16;              /* 16-byte chunks per raw row */
        static constexpr int SB = DT == KVC_DTYPE_FP4_E2M1 ? D / 16 : 0; /* fp4 scale bytes per row */
        static constexpr int TB = 64 * D * 2;            /* one tile of 64 rows: a warpgroup's q, K or V */
        static constexpr int QBYTES = WGS * TB * (QLO ? 2 : 1);
        static constexpr int RAWST = Q8 ? 2 * KT * (RB + SB) : 0;
        /* the base is aligned to 1024 bytes at run time (up to 1008 bytes
         * of slack); key masks at the end */
        static constexpr int smem_for(int ns) { return 1024 + QBYTES + (Q8 ? 4 : 2 * ns) * TB + ns * RAWST + ns * KT; }
        /* stages of the copy pipeline (one CTA an SM: the registers of 8
         * warps with S and O accumulators): 4, or fewer where 227 KiB
         * would not hold them */
        static constexpr int NS = smem_for(4) <= 227 * 1024 ? 4 : 3;
        static constexpr int KVOFF = QBYTES;
        static constexpr int RAWOFF = KVOFF + (Q8 ? 4 : 2 * NS) * TB;
        static constexpr int KMOFF = RAWOFF + NS * RAWST;
        static constexpr int SMEM = smem_for(NS);
        static_assert(smem_for(NS) <= 227 * 1024, "three stages fit");
};

template <int DT, int D, bool QLO>
__global__ void __launch_bounds__(wgeo<DT, D, QLO>::NTH, 1) wg_prefill_kernel(const params p)
{
#if KVA_WG_DEVICE
        typedef wgeo<DT, D, QLO> WG;
        constexpr bool BF = dtraits<DT>::bf;
        constexpr int KT = WG::KT, QV = WG::QV, NT = KT / 8, ND = D / 8, KS = D / 16, TB = WG::TB, NTH = WG::NTH;

        extern __shared__ __align__(1024) uint8_t wsm[];
        uint8_t *const dsm = wsm + ((1024u - (smem_u32(wsm) & 1023u)) & 1023u);
        uint8_t *const okb = dsm + WG::KMOFF; /* [NS][KT]: valid keys of each stage's tile (issue_keys) */

        kvk::grid_dep_launch();

        const uint32_t H = p.Hq / p.G;
        const uint32_t h = blockIdx.x % H, j = blockIdx.x / H, split = blockIdx.y;
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
        const int wgi = warp / 4, wq = warp % 4; /* warpgroup, warp in it */

        const ptile tl(p, j, QV);
        if (tl.v0 >= tl.nv)
                return; /* an empty tile: no vector, nothing to write */
        const uint64_t vlast = min(tl.v0 + QV, tl.nv) - 1;
        const uint32_t k_lo = split * p.chunk;
        const uint32_t k_hi = min(tl.horizon(p, vlast), k_lo + p.chunk);
        const uint32_t ntiles = k_lo < k_hi ? (k_hi - k_lo + KT - 1) / KT : 0;
        const int32_t *pt = p.page_table + (uint64_t)tl.b * p.max_pages;

        uint8_t *const qs = dsm;
        uint8_t *const raw = dsm + WG::RAWOFF;

        /* Copies of the tile starting at key kt into stage st: 16-bit pools
         * into the stage's swizzled compute tiles, quantized ones into its
         * raw stage (rows as in the pool) */
        auto issue = [&](uint32_t kt, int st) {
                uint8_t *dk = dsm + WG::KVOFF + st * 2 * TB;
                uint8_t *dr = raw + st * WG::RAWST;
                uint8_t *ds = dr + 2 * KT * WG::RB;
                issue_keys<KT, WG::CPR, WG::SB, NTH>(
                        p, pt, kt, k_hi, h,
                        [&](int w, int key, int c) {
                                return WG::Q8 ? smem_u32(dr + (w * KT + key) * WG::RB + c * 16)
                                              : smem_u32(dk + w * TB + sw_off(KT, key, c));
                        },
                        [&](int w, int key) { return smem_u32(ds + (w * KT + key) * WG::SB); }, okb + KT * st);
        };

#pragma unroll
        for (int s0 = 0; s0 < WG::NS - 1; s0++) {
                if ((uint32_t)s0 < ntiles)
                        issue(k_lo + s0 * KT, s0);
                cp_commit();
        }

        /* warpgroup w's 64 vectors are the w-th q tile (and, with QLO, the
         * (WGS + w)-th the lo parts) */
        load_q<DT, D, QLO, NTH>(p, qs, WG::WGS * TB, QV, tl, h,
                                [](int vi, int c) { return (vi / 64) * TB + sw_off(64, vi % 64, c); });
        proxy_fence();
        __syncthreads();

        /* this thread's vectors: rows g and g+8 of the warp's 16 */
        const uint64_t vw = tl.v0 + wgi * 64 + wq * 16;
        uint64_t vr[2];
        uint32_t hz[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
                vr[r] = vw + g + 8 * r;
                hz[r] = vr[r] < tl.nv ? tl.horizon(p, vr[r]) : 0u;
        }
        const uint32_t hzmin = vw + 15 < tl.nv ? tl.horizon(p, vw) : 0u; /* every key below is seen by all the warp's rows */
        const float qk = p.qk_scale_log2;
        const uint32_t qa = smem_u32(qs) + wgi * TB;

        float o[ND][4];
#pragma unroll
        for (int i = 0; i < ND; i++)
                o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
        float m[2] = { -1e30f, -1e30f }, l[2] = { 0.0f, 0.0f };
        float(&of)[D / 2] = *reinterpret_cast<float(*)[D / 2]>(&o[0][0]);
        float s[2][NT][4]; /* the scores of tiles it (s[it % 2]) and it + 1 */

        /* Tile it's K and V in their compute tiles (16-bit pools: its
         * stage; quantized: compute buffer it % 2, dequantized here) once
         * the copies of tiles up to it have landed (at most `pending`
         * copy groups of later tiles outstanding) and every thread is past
         * the wgmma that read what is overwritten; returns K's address. */
        auto ready = [&](uint32_t it) -> uint32_t {
                if constexpr (!WG::Q8) {
                        proxy_fence();
                        __syncthreads();
                        return smem_u32(dsm + WG::KVOFF + (it % WG::NS) * 2 * TB);
                } else {
                        __syncthreads();
                        const uint8_t *rs = raw + (it % WG::NS) * WG::RAWST;
                        uint8_t *kc0 = dsm + WG::KVOFF + (it % 2) * 2 * TB;
                        for (int i = threadIdx.x; i < 2 * KT * WG::CPR; i += NTH) {
                                const int which = i / (KT * WG::CPR), rem = i % (KT * WG::CPR);
                                const int key = rem / WG::CPR, c = rem % WG::CPR;
                                const uint4 x = *(const uint4 *)(rs + which * KT * WG::RB + key * WG::RB + c * 16);
                                uint32_t sc = 0;
                                if constexpr (WG::SB > 0)
                                        sc = *(const uint16_t *)(rs + 2 * KT * WG::RB + (which * KT + key) * WG::SB + 2 * c);
                                /* a raw chunk is 16 / bits compute chunks */
                                uint8_t *d0 = kc0 + which * TB;
                                deq_chunk<DT>(x, sc, [&](int k) { return d0 + sw_off(KT, key, c * (16 / WG::bits) + k); });
                        }
                        proxy_fence();
                        __syncthreads();
                        return smem_u32(kc0);
                }
        };
        /* S = Q K^T (with QLO: + Q_lo K^T) of the tile whose K is at ka,
         * into sc, issued and committed as one wgmma group */
        auto scores = [&](uint32_t ka, float (&sc)[NT][4]) {
                float(&sf)[KT / 2] = *reinterpret_cast<float(*)[KT / 2]>(&sc[0][0]);
                /* every descriptor before the first wgmma (wg_hold) */
                uint64_t dq[KS * (QLO ? 2 : 1)], dk[KS];
#pragma unroll
                for (int ks = 0; ks < KS; ks++) {
                        const uint32_t off = (ks / 4) * 64 * 128 + (ks % 4) * 32;
                        dq[ks] = wg_desc(qa + off, 16, 1024);
                        dk[ks] = wg_desc(ka + off, 16, 1024);
                        if constexpr (QLO)
                                dq[KS + ks] = wg_desc(qa + WG::WGS * TB + off, 16, 1024);
                }
#pragma unroll
                for (int i = 0; i < KS * (QLO ? 2 : 1); i++)
                        wg_hold(dq[i]);
#pragma unroll
                for (int i = 0; i < KS; i++)
                        wg_hold(dk[i]);
                wg_fence();
#pragma unroll
                for (int ks = 0; ks < KS * (QLO ? 2 : 1); ks++)
                        wg_ss<KT, BF>(sf, dq[ks], dk[ks % KS], ks > 0);
                wg_commit();
        };

        /* The loop keeps the tensor cores busy while the warps run the
         * softmax: tile it's softmax overlaps its predecessor's P V, and the
         * scores of tile it + 1 are issued with tile it's P V, so each
         * iteration waits only for the scores it needs next.  Copies run
         * NS - 1 tiles ahead; tile it + NS - 1 goes into the stage of tile
         * it - 1, whose P V every warpgroup has finished (the barrier in
         * ready). */
        uint32_t ka = 0;
        if (ntiles > 0) {
                cp_wait<WG::NS - 2>(); /* tile 0 */
                ka = ready(0);
                scores(ka, s[0]);
                wg_wait<0>();
        }
        auto step = [&](auto par, uint32_t it) {
                constexpr int P = decltype(par)::value;
                /* the scores are copied out of the accumulators, which the
                 * scores of tile it + 2 overwrite: ptxas serializes wgmma
                 * whose input registers other instructions write while a
                 * wgmma is in flight, as the softmax would in place */
                float sc[NT][4];
                wg_take(*reinterpret_cast<float(*)[KT / 2]>(&sc[0][0]), *reinterpret_cast<float(*)[KT / 2]>(&s[P][0][0]));

                /* ---- mask, online softmax of rows g and g+8, P packed */
                const uint32_t kt = k_lo + it * KT;
                const uint64_t km = tile_mask<KT>(okb + KT * (it % WG::NS));
                const bool full = km == ~0ull && kt + KT <= hzmin;
                float al[2];
                const bool moved = tile_softmax<NT>(sc, m, l, al, full, km, kt, hz, qk, t);
                /* ---- the previous tile's P V is done: rescale O, pack P
                 * (the A registers of a wgmma are written only once none is
                 * in flight, or ptxas serializes them) */
                wg_wait<0>();
                wg_pin(of);
                uint32_t a[KT / 16][4];
#pragma unroll
                for (int kk = 0; kk < KT / 16; kk++) {
                        a[kk][0] = pack2<BF>(sc[2 * kk][0], sc[2 * kk][1]);
                        a[kk][1] = pack2<BF>(sc[2 * kk][2], sc[2 * kk][3]);
                        a[kk][2] = pack2<BF>(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
                        a[kk][3] = pack2<BF>(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
                }
                if (__any_sync(0xFFFFFFFFu, moved)) {
#pragma unroll
                        for (int i = 0; i < ND; i++) {
                                o[i][0] *= al[0];
                                o[i][1] *= al[0];
                                o[i][2] *= al[1];
                                o[i][3] *= al[1];
                        }
                }
                /* P V's descriptors before the next scores' wgmma are in
                 * flight (wg_hold) */
                uint64_t dv[KT / 16];
#pragma unroll
                for (int kk = 0; kk < KT / 16; kk++) {
                        dv[kk] = wg_desc(ka + TB + kk * 16 * 128, KT * 128, 1024);
                        wg_hold(dv[kk]);
                }
                /* ---- the next tile's scores (after the last tile, this
                 * tile's again, unused: a wgmma issued on only some paths
                 * makes ptxas serialize them all) */
                uint32_t kn = ka;
                if (it + 1 < ntiles) {
                        cp_wait<WG::NS - 3>(); /* tile it + 1 */
                        kn = ready(it + 1);
                        if (it + WG::NS - 1 < ntiles)
                                issue(k_lo + (it + WG::NS - 1) * KT, (it + WG::NS - 1) % WG::NS);
                        cp_commit();
                }
                scores(kn, s[1 - P]);
                ka = kn;
                /* ---- O += P V of this tile */
                wg_fence();
#pragma unroll
                for (int kk = 0; kk < KT / 16; kk++)
                        wg_rs<D, BF>(of, a[kk], dv[kk], 1);
                wg_commit();
                wg_wait<1>(); /* the scores; this P V may still run */
        };
        for (uint32_t it = 0; it < ntiles; it += 2) {
                step(std::integral_constant<int, 0>(), it);
                if (it + 1 < ntiles)
                        step(std::integral_constant<int, 1>(), it + 1);
        }
        wg_wait<0>();
        wg_pin(of);
        cp_wait<0>();

        store_vectors<DT, D>(p, o, m, l, vr, tl, h, split, t);
#else
        (void)p; /* never launched: the launcher takes it only where the build has sm_90a code */
#endif
}

} // namespace kva

/* The wgmma extend kernel for a pool dtype and head_dim (64, 128), with
 * qlo the two-term q kernel (bf16-compute pools), plus attn_reduce when
 * p.splits > 1 (kv_attn_prefill_wg.cu), or with ret_occ only the CTAs of
 * it that fit on one SM of device dev (the current one).  Returns 0, a
 * cudaError_t (> 0), or -EINVAL for a combination without a kernel. */
int kv_prefill_wg_launch(int dtype, uint32_t D, bool qlo, const kva::params &p, dim3 grid, cudaStream_t st, int dev,
                         int *ret_occ);

#endif /* __CUDACC__ */
#endif
