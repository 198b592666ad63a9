/* kv_attn_ring.cuh - the memory path of the attention kernel
 * (kv_attn_decode.cuh): its parameters, and each warp's ring of 16-key
 * tiles in shared memory: the tile geometry per dtype, the swizzled chunk
 * layout, the cp.async copies that fill a stage (with the per-lane plan and
 * the slot window of the page16 path), and the fragment reads back out of
 * a stage.  The kernel's header comment describes how they fit together.
 */
#ifndef KV_ATTN_RING_CUH
#define KV_ATTN_RING_CUH

#ifdef __CUDACC__
#include <cuda_runtime.h>
#include <stdint.h>
#include "kvclient.h"
#include "kv_attn_deq.cuh"

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
        int32_t page16;                 /* page_size % 16 == 0 (a tile is on one page), token_bytes < 2^27
                                         * and every slot below NOSLOT: the slot-window path */
        uint32_t Hq, G, head_groups;
        uint64_t token_bytes, head_bytes;       /* a key's slot * token_bytes + h * head_bytes */
        uint64_t stoken_bytes, shead_bytes;     /* the same for fp4 scale rows */
        uint32_t chunk, splits;
        uint32_t row_chunk;             /* decode kernel: each row spreads its own length over the
                                         * splits (row_chunk_of) instead of taking chunk keys a split:
                                         * set under stream capture, where the splits were planned for
                                         * the table's capacity and a replay's lengths are unknown */
        uint32_t rows, hgt;             /* grid.x = rows * hgt (packed: tiles * hgt; hgt = H * head_groups), grid.y = splits */
        uint32_t hw;                    /* decode kernel, a row a CTA: each warp takes a head slot (kv head,
                                         * head group) and all its tiles, grid.x = rows * ceil(hgt / 4)
                                         * (kva::take_heads); 0: the 4 warps share one slot's tiles */
        float qk_scale_log2;            /* sm_scale * k fold * log2(e) */
        float out_scale;                /* v fold */
        int elem;                       /* KVC_ELEM_BF16 / F16 */
        int q16;                        /* q is 16-byte aligned */
        uint32_t pack;                  /* decode kernel on extend: 0, a row a CTA, or the query vectors
                                         * of a CTA that takes pack / G rows of one sequence (G <= 4,
                                         * grid.x = tiles * hgt, kv_attn_extend.cuh ptile) */
};

/* Keys a split for a row of len keys when the row spreads its own length
 * over the launch's splits (params.row_chunk): a multiple of 64 (4 warps x
 * 16 keys), at least 128 (plan_splits' least), and splits * chunk >= len. */
__host__ __device__ __forceinline__ uint32_t row_chunk_of(uint32_t len, uint32_t splits)
{
        uint32_t c = (uint32_t)(((uint64_t)len + splits - 1) / (splits ? splits : 1));
        c = (c + 63) / 64 * 64; /* len <= 2^31-1: no wrap */
        return c < 128 ? 128 : c;
}

/* Slot of key tok (page * page_size + offset), or -1 if the key is past
 * t_end or its page id is out of range. */
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

/* ---- one warp's ring of 16-key tiles in shared memory ------------------
 *
 * A stage holds one tile as the pool stores it, restricted to the kv head:
 * 16 K rows, 16 V rows (RB bytes each) and, for fp4, 16 K and 16 V scale
 * rows (SB bytes).  The warp fills stages with cp.async (16-byte copies that
 * need no registers; keys that do not exist are zero-filled) S-1 tiles
 * ahead of the one it computes, so about (S-1) tiles per warp are always in
 * flight from HBM while the tensor cores work.  Rows are stored with their
 * 16-byte chunks permuted (phys) so that the fragment reads below hit 8
 * different bank groups per quarter warp. */
/* Ring depth per dtype width at D <= 128 (compile-time switches for
 * measuring; docs/benchmarks.md has the measured choice). */
#ifndef KVA_S16
#define KVA_S16 3
#endif
#ifndef KVA_S8
#define KVA_S8 5        /* 20 KB per warp: shared memory for 2 CTAs per SM; 4 (3 CTAs) was 3-4% slower at B = 128 */
#endif
#ifndef KVA_S4
#define KVA_S4 3        /* 4 was 1-2% slower at most shapes once the K Q^T mma took K as A */
#endif
#ifndef KVA_MINB4
#define KVA_MINB4 4     /* CTAs per SM the fp4 kernels ask for at D <= 128 */
#endif
#ifndef KVA_MINB8
#define KVA_MINB8 3     /* the same for fp8 */
#endif
#ifndef KVA_RFAST
#define KVA_RFAST 1     /* attn_reduce: up to 8 splits in one round of loads (0: the general path) */
#endif
#ifndef KVA_L2HINT
#define KVA_L2HINT 1    /* fp4: L2 hints on the copies (see cp16) */
#endif
#ifndef KVA_SKEEP
#define KVA_SKEEP 0     /* fp4 scale rows under evict_last (1) or without a hint (0); see cp16 */
#endif
#ifndef KVA_DPACK
#define KVA_DPACK 1     /* extend on the decode kernel: 8 / G rows a CTA where G <= 4 (0: a row a CTA) */
#endif
#ifndef KVA_PWEARLY
#define KVA_PWEARLY 1   /* decode: the page window's load goes out with the length's (0: after it) */
#endif
template <int DT, int D>
struct tgeo {
        static constexpr int bits = dtraits<DT>::bits;
        static constexpr bool FP4 = DT == KVC_DTYPE_FP4_E2M1;
        static constexpr bool HINT = FP4 && KVA_L2HINT; /* L2 hints on the K/V copies (see cp16) */
        static constexpr bool SHINT = HINT && KVA_SKEEP; /* and on the scale rows' */
        static constexpr int RB = D * bits / 8;         /* bytes of one key's head row */
        static constexpr int CPR = RB / 16;             /* 16-byte chunks per row */
        static constexpr int EPC = 128 / bits;          /* elements per chunk */
        static constexpr int KB = D / 4 * bits / 8;     /* K bytes of a key one thread reads */
        static constexpr int VB = D / 8 * bits / 8;     /* V bytes of a key one thread reads */
        static constexpr int SB = FP4 ? D / 16 : 0;     /* scale bytes per row */
        static constexpr int KOFF = 0, VOFF = 16 * RB, KSOFF = 32 * RB, VSOFF = 32 * RB + 16 * SB;
        static constexpr int STAGE = 32 * RB + 32 * SB;
        /* stages per warp (the KVA_S* switches above; at D = 128 24 KB of ring per warp for 16-bit
         * pools, 20 KB for fp8, 7 KB for fp4) */
        static constexpr int S = bits == 16 ? (D <= 128 ? KVA_S16 : 2) : bits == 8 ? (D <= 128 ? KVA_S8 : 3)
                                                                                 : (D <= 128 ? KVA_S4 : 4);
        /* CTAs per SM the launch bounds ask for (registers <= 65536 / (128 * MINB)) */
        static constexpr int MINB = D > 128 ? 1 : bits == 16 ? 2 : bits == 8 ? KVA_MINB8 : KVA_MINB4;
        static constexpr int SMEM = 4 * S * STAGE;      /* bytes of dynamic shared memory per CTA */
        static_assert(STAGE % 16 == 0 && CPR >= 2, "tile geometry");
};

/* Physical 16-byte chunk of (row, chunk c) in a K or V region.  Reads are
 * LDS.128 by quarter warps (8 lanes) or LDS.64 by half warps; K reads take
 * rows (g, g+1) x chunks (t + 4i) per quarter warp, V reads rows 2t (or 2t+1,
 * 2t+8, 2t+9) x chunks (g + 8j): XOR-ing the low chunk bits with
 * f(row) = (row & 6) ^ 4 * (row & 1) spreads both over the 8 bank groups.
 * Rows of 4 chunks share a 128-byte line two by two: lines are XOR-ed with
 * 2 * (line & 3).  Rows of 2 chunks (fp4, D = 64) are left as they are. */
template <int CPR>
__device__ __forceinline__ uint32_t phys(uint32_t row, uint32_t c)
{
        if constexpr (CPR >= 8) {
                const uint32_t r = row & 7u;
                return row * CPR + (c ^ ((r & 6u) ^ ((r & 1u) << 2)));
        } else if constexpr (CPR == 4) {
                const uint32_t L = row * 4u + c;
                return (L & ~7u) | ((L & 7u) ^ (((L >> 3) & 3u) << 1));
        } else {
                return row * CPR + c;
        }
}

/* The fp4 pool's copies carry L2 hints (KVA_L2HINT 1): its K/V codes are
 * read once, so they go first when L2 needs room (evict_first), which
 * leaves room for its scale rows: 8 bytes per head of a token, four heads
 * to a 32-byte sector, read by the CTAs of four kv heads that need not run
 * in step (a multi-wave launch starts them as slots free up), which would
 * otherwise fetch a sector from HBM again.  The scale rows themselves take
 * no hint (KVA_SKEEP 0): evict_last would outlive the call, an L2 that the
 * next kernels' lines are evicted from first.  And its K/V copies ask L2
 * for whole 128-byte lines (KVA_PF 128): a 64-byte fp4 head row shares its
 * line with the next head's.  Measured on the H200 (docs/benchmarks.md):
 * fp4 B = 128 L = 32k 1903 -> 1861 us with the policies, B = 128 L = 16k
 * 903 -> 843 us with the prefetch; on the 8- and 16-bit pools the same
 * hints were within noise with the read flush and cost up to 8% (fp8) with
 * the memset flush's dirty L2, so they have none. */
#ifndef KVA_PF
#define KVA_PF 128
#endif
#if KVA_PF == 256
#define KVA_PFQ ".L2::256B"
#elif KVA_PF == 128
#define KVA_PFQ ".L2::128B"
#else
#define KVA_PFQ ""
#endif

/* An L2 policy for the hinted copies: keep (evict_last) or stream
 * (evict_first); 0 when HINT is false (no instruction). */
template <bool HINT>
__device__ __forceinline__ uint64_t l2_policy(bool keep)
{
        uint64_t pol = 0;
        if constexpr (HINT) {
                if (keep)
                        asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(pol));
                else
                        asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
        }
        return pol;
}

/* 16 bytes from src to shared dst, or zeros when !ok; with HINT under
 * policy pol and the KVA_PF prefetch size. */
template <bool HINT>
__device__ __forceinline__ void cp16(uint32_t dst, const void *src, bool ok, uint64_t pol)
{
        if constexpr (HINT)
                asm volatile("cp.async.cg.shared.global.L2::cache_hint" KVA_PFQ " [%0], [%1], 16, %2, %3;\n" ::"r"(dst),
                             "l"(src), "r"(ok ? 16 : 0), "l"(pol)
                             : "memory");
        else
                asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(ok ? 16 : 0)
                             : "memory");
}

/* N bytes (an fp4 scale row) from src to shared dst, or zeros when !ok. */
template <int N, bool HINT>
__device__ __forceinline__ void cpn(uint32_t dst, const void *src, bool ok, uint64_t pol)
{
        if constexpr (HINT)
                asm volatile("cp.async.ca.shared.global.L2::cache_hint [%0], [%1], %2, %3, %4;\n" ::"r"(dst),
                             "l"(src), "n"(N), "r"(ok ? N : 0), "l"(pol)
                             : "memory");
        else
                asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(dst), "l"(src), "n"(N),
                             "r"(ok ? N : 0)
                             : "memory");
}

__device__ __forceinline__ void cp_commit()
{
        asm volatile("cp.async.commit_group;\n" ::: "memory");
}

template <int N>
__device__ __forceinline__ void cp_wait()
{
        asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* Dim of position p of the NB bytes (N = PER elements) a lane with index i
 * reads from a row: from 32 bytes up, the 16-byte chunks i, i + STEP, ...
 * of EPC elements each; below, the N elements from i * N on. */
template <int EPC, int NB, int STEP, int PER>
__device__ __forceinline__ int chunk_dim(int i, int p)
{
        if constexpr (NB >= 32)
                return (i + STEP * (p / EPC)) * EPC + p % EPC;
        return i * PER + p;
}

/* The dim of position p of thread t's K (t = lane % 4): chunks t, t+4, ...
 * of a row (the whole D/4 dims at once when they fit in 16 bytes or less);
 * kdim: of its i-th K element, in the dtype's pair order (kel). */
template <int DT, int D>
__device__ __forceinline__ int kpos(int t, int p)
{
        return chunk_dim<tgeo<DT, D>::EPC, tgeo<DT, D>::KB, 4, D / 4>(t, p);
}

template <int DT, int D>
__device__ __forceinline__ int kdim(int t, int i)
{
        return kpos<DT, D>(t, kel<DT>(i));
}

/* The dim of the thread's local V dim l (g = lane / 4): chunks g, g+8, ... */
template <int DT, int D>
__device__ __forceinline__ int vdim(int g, int l)
{
        return chunk_dim<tgeo<DT, D>::EPC, tgeo<DT, D>::VB, 8, D / 8>(g, l);
}

/* NB bytes of row r of a K or V region for lane index i: from 16 bytes up,
 * the chunks i, i + STEP, ...; below, byte NB * i of the row. */
template <int CPR, int NB, int STEP>
__device__ __forceinline__ void lds_row(const uint8_t *reg, uint32_t r, int i, uint32_t (&w)[NB / 4])
{
        if constexpr (NB >= 16) {
#pragma unroll
                for (int j = 0; j < NB / 16; j++) {
                        const uint4 x = *(const uint4 *)(reg + phys<CPR>(r, i + STEP * j) * 16);
                        w[4 * j] = x.x;
                        w[4 * j + 1] = x.y;
                        w[4 * j + 2] = x.z;
                        w[4 * j + 3] = x.w;
                }
        } else if constexpr (NB == 8) {
                const uint2 x = *(const uint2 *)(reg + phys<CPR>(r, i >> 1) * 16 + (i & 1) * 8);
                w[0] = x.x;
                w[1] = x.y;
        } else {
                static_assert(NB == 4, "bytes per thread");
                w[0] = *(const uint32_t *)(reg + phys<CPR>(r, i >> 2) * 16 + (i & 3) * 4);
        }
}

/* K words of key row r for thread t (its D/4 dims, kdim order: chunks t, t+4, ...). */
template <int DT, int D>
__device__ __forceinline__ void lds_k(const uint8_t *reg, uint32_t r, int t, uint32_t (&w)[D / 4 * dtraits<DT>::bits / 32])
{
        lds_row<tgeo<DT, D>::CPR, tgeo<DT, D>::KB, 4>(reg, r, t, w);
}

/* V words of key row r for thread g (its D/8 dims, vdim order: chunks g, g+8, ...). */
template <int DT, int D>
__device__ __forceinline__ void lds_v(const uint8_t *reg, uint32_t r, int g, uint32_t (&w)[D / 8 * dtraits<DT>::bits / 32])
{
        lds_row<tgeo<DT, D>::CPR, tgeo<DT, D>::VB, 8>(reg, r, g, w);
}

/* An opaque copy: the compiler has to keep x in a register instead of
 * rematerializing the computation that produced it. */
__device__ __forceinline__ void pin(uint32_t &x)
{
        asm volatile("" : "+r"(x));
}

__device__ __forceinline__ void pinp(const uint8_t *&x)
{
        asm volatile("" : "+l"(x));
}

/* The per-lane constants of the page16 copy path, computed once per warp
 * (recomputing them cost ~100 instructions per tile, a sixth of an fp4
 * tile's).  Lane L copies chunks L, L+32, ... of a K (and the V) region:
 * round i is (row, c) = (i * RPI + row0, L % CPR), i * rstep bytes after the
 * lane's first chunk, which for slot s is kbase + s * token_bytes (kbase:
 * the layer's K array + the head's offset + row0 * token_bytes + c * 16;
 * vbase the same in V).  Its shared-memory chunk phys(row, c) repeats with
 * period PER rounds (phys depends on row & 7, or for CPR <= 4 not on the
 * round at all), DSTEP bytes further each period, so PER offsets cover
 * every round. */
template <int DT, int D>
struct lane_plan {
        typedef tgeo<DT, D> G;
        static constexpr int RPI = 32 / G::CPR;                 /* rows per round of 32 chunks */
        static constexpr int ROUNDS = 16 * G::CPR / 32;
        static constexpr int PER = G::CPR >= 8 ? (8 / RPI < ROUNDS ? 8 / RPI : ROUNDS) : 1;
        static constexpr uint32_t DSTEP = PER * RPI * G::CPR * 16;
        uint32_t row0;          /* lane / CPR */
        uint32_t rstep;         /* RPI * token_bytes */
        uint32_t d[PER];        /* phys(i * RPI + row0, c) * 16, i < PER */
        uint32_t sdst;          /* fp4: this lane's scale row in a stage (K: lanes 0-15, V: 16-31) */
        const uint8_t *kbase;   /* this lane's first K chunk of slot 0 */
        const uint8_t *vbase;   /* its first V chunk of slot 0 */
        const uint8_t *sbase;   /* fp4: its scale array + head offset + (lane % 16) * stoken_bytes */
        uint64_t pstream, pkeep; /* L2 policies of K/V codes and of fp4 scale rows */

        __device__ __forceinline__ lane_plan(const params &p, uint32_t h, int lane)
        {
                const uint32_t c = lane % G::CPR, tb = (uint32_t)p.token_bytes; /* checked to fit */
                row0 = lane / G::CPR;
                rstep = RPI * tb;
                const uint64_t o = (uint64_t)h * p.head_bytes + row0 * tb + c * 16;
                kbase = p.k + o;
                vbase = p.v + o;
#pragma unroll
                for (int i = 0; i < PER; i++)
                        d[i] = phys<G::CPR>(i * RPI + row0, c) * 16;
                const uint32_t k = lane & 15;
                sdst = (lane < 16 ? G::KSOFF : G::VSOFF) + k * G::SB;
                sbase = (lane < 16 ? p.ks : p.vs) + (uint64_t)h * p.shead_bytes + (uint64_t)k * p.stoken_bytes;
                /* keep them in registers: left to itself the compiler
                 * recomputes them from the lane index in every tile */
                pin(row0);
                pin(rstep);
#pragma unroll
                for (int i = 0; i < PER; i++)
                        pin(d[i]);
                pstream = l2_policy<G::HINT>(false);
                pkeep = l2_policy<G::SHINT>(true);
                pinp(kbase);
                pinp(vbase);
                if (G::FP4)
                        pinp(sbase);
        }
};

/* No slot: the tile's page id is out of range, or there is no such tile. */
constexpr uint32_t NOSLOT = 0xFFFFFFFFu;

/* Slots of a warp's tiles on the page16 path, looked up 32 tiles at a
 * time: lane j of the window holds the slot of the first key of the warp's
 * tile base + j (NOSLOT for a page id out of range or past the warp's last
 * tile), so that a tile's issue path is one shuffle and one multiply-add
 * per address.  The next window's page ids are loaded when the current one
 * is taken, 32 tiles before they are needed, and turned into slots only
 * then, so the page-table load (an L2 round trip, ~600 cycles) sits in no
 * tile's issue path.  The launcher takes this path only when every slot
 * fits in 32 bits below NOSLOT. */
#ifndef KVA_PWIN
#define KVA_PWIN 1
#endif
struct page_window {
        uint32_t cur;           /* slots of tiles base + lane */
        int32_t next;           /* page ids of tiles base + 32 + lane (-1: none) */
        uint32_t base;          /* warp tile index of lane 0's entry in cur */

        __device__ __forceinline__ static int32_t load(const params &p, const int32_t *__restrict__ pt,
                                                       uint32_t first, uint32_t step, uint32_t ntiles,
                                                       uint32_t kt, int lane)
        {
                const uint32_t t = kt + lane;
                if (t >= ntiles)
                        return -1;
                const uint32_t tok = first + t * step;
                return __ldg(pt + (p.page_shift >= 0 ? tok >> p.page_shift : tok / p.page_size));
        }

        /* slot of the first key of tile kt + lane on page pg */
        __device__ __forceinline__ static uint32_t slot(const params &p, uint32_t first, uint32_t step, uint32_t kt,
                                                        int lane, int32_t pg)
        {
                const uint32_t tok = first + (kt + lane) * step;
                const uint32_t off = p.page_shift >= 0 ? tok & (p.page_size - 1) : tok % p.page_size;
                return (uint32_t)pg < p.num_pages ? (uint32_t)pg * p.page_size + off : NOSLOT;
        }

        __device__ __forceinline__ page_window(const params &p, const int32_t *__restrict__ pt, uint32_t first,
                                               uint32_t step, uint32_t ntiles, int lane)
        {
                base = 0;
                cur = p.page16 ? slot(p, first, step, 0, lane, load(p, pt, first, step, ntiles, 0, lane)) : NOSLOT;
                next = p.page16 ? load(p, pt, first, step, ntiles, 32, lane) : -1;
        }

        /* slot of the first key of warp tile kt; kt grows by one per call
         * (warp-uniform) */
        __device__ __forceinline__ uint32_t get(const params &p, const int32_t *__restrict__ pt, uint32_t first,
                                                uint32_t step, uint32_t ntiles, uint32_t kt, int lane)
        {
#if !KVA_PWIN
                /* measuring switch: one lookup per tile, in the issue path */
                return slot(p, first, step, kt, 0, load(p, pt, first, step, ntiles, kt, 0));
#endif
                if (kt - base >= 32) {
                        base += 32;
                        cur = slot(p, first, step, base, lane, next);
                        next = load(p, pt, first, step, ntiles, base + 32, lane);
                }
                return __shfl_sync(0xFFFFFFFFu, cur, kt - base);
        }
};

/* Starts the copies of the 16-key tile at key `tile` into stage st and
 * records which keys exist (bit k: key tile+k is below t_end on a valid
 * page) in *valid.  Every lane of the warp calls it.  Lane L copies chunks
 * L, L+32, ... of the K region and the same chunks of the V region: chunk
 * i*32+L is (row, c) = (i*32+L) / CPR, % CPR.  On the page16 path slot0 is
 * the slot of the tile's first key (the caller's page window), h the kv
 * head for the other path. */
template <int DT, int D>
__device__ __forceinline__ void issue_tile(const params &p, const int32_t *__restrict__ pt, uint32_t tile,
                                           uint32_t t_end, uint32_t h, int lane, uint8_t *st, uint32_t *valid,
                                           const lane_plan<DT, D> &pl, uint32_t slot0)
{
        typedef tgeo<DT, D> G;
        typedef lane_plan<DT, D> PL;
        constexpr int NCH = 16 * G::CPR;       /* chunks per K (or V) region, a multiple of 32 */
        constexpr int RPI = PL::RPI;
        static_assert(G::CPR <= 32 && NCH % 32 == 0, "chunks per round");
        const uint32_t sb = (uint32_t)__cvta_generic_to_shared(st);
        const uint32_t k = lane & 15;

        if (p.page16) {
                /* page_size is a multiple of 16 and tiles start at multiples
                 * of 16: the tile is 16 consecutive slots from slot0, one
                 * multiply-add to the lane's first chunk; its other chunks
                 * and shared-memory offsets come from the plan */
                const uint32_t nv = slot0 != NOSLOT ? min(16u, t_end - tile) : 0u;
                const uint32_t vm = (1u << nv) - 1u;
                if (lane == 0)
                        *valid = vm;
                /* with slot0 == NOSLOT (nv == 0) these point nowhere and
                 * are never used: every copy below takes p.k / p.ks then */
                const uint8_t *kb = pl.kbase + (uint64_t)slot0 * (uint32_t)p.token_bytes;
                const uint8_t *vb = pl.vbase + (uint64_t)slot0 * (uint32_t)p.token_bytes;
                const uint8_t *sc = pl.sbase + (uint64_t)slot0 * (uint32_t)p.stoken_bytes;
                if (nv == 16) {
                        /* a whole tile (every tile but a split's last):
                         * no predicates */
#pragma unroll
                        for (int i = 0; i < NCH / 32; i++) {
                                const uint32_t d = sb + pl.d[i % PL::PER] + (i / PL::PER) * PL::DSTEP;
                                cp16<G::HINT>(d + G::KOFF, kb + i * pl.rstep, true, pl.pstream);
                                cp16<G::HINT>(d + G::VOFF, vb + i * pl.rstep, true, pl.pstream);
                        }
                        /* lanes 0-15: K scale row k, lanes 16-31: V scale row k */
                        if constexpr (G::FP4)
                                cpn<G::SB, G::SHINT>(sb + pl.sdst, sc, true, pl.pkeep);
                        return;
                }
#pragma unroll
                for (int i = 0; i < NCH / 32; i++) {
                        const bool ok = (vm >> (i * RPI + pl.row0)) & 1u;
                        const uint32_t d = sb + pl.d[i % PL::PER] + (i / PL::PER) * PL::DSTEP;
                        cp16<G::HINT>(d + G::KOFF, ok ? kb + i * pl.rstep : p.k, ok, pl.pstream);
                        cp16<G::HINT>(d + G::VOFF, ok ? vb + i * pl.rstep : p.v, ok, pl.pstream);
                }
                if constexpr (G::FP4) {
                        const bool ok = (vm >> k) & 1u;
                        cpn<G::SB, G::SHINT>(sb + pl.sdst, ok ? sc : p.ks, ok, pl.pkeep);
                }
                return;
        }

        /* any page size: lane k (and k+16) finds key k's slot, the chunks
         * take it from there */
        const uint64_t hoff = (uint64_t)h * p.head_bytes;
        const int64_t my = slot_of(p, pt, tile + k, t_end);
        const uint32_t vm = __ballot_sync(0xFFFFFFFFu, my >= 0) & 0xFFFFu;
        if (lane == 0)
                *valid = vm;
        const uint32_t row0 = lane / G::CPR, c = lane % G::CPR;
#pragma unroll
        for (int i = 0; i < NCH / 32; i++) {
                const uint32_t row = i * RPI + row0;
                const int64_t s = __shfl_sync(0xFFFFFFFFu, my, row);
                const uint64_t o = (s < 0 ? 0 : (uint64_t)s * p.token_bytes) + hoff + c * 16;
                const uint32_t d = sb + phys<G::CPR>(row, c) * 16;
                cp16<G::HINT>(d + G::KOFF, p.k + o, s >= 0, pl.pstream);
                cp16<G::HINT>(d + G::VOFF, p.v + o, s >= 0, pl.pstream);
        }
        if constexpr (G::FP4) {
                const uint64_t so = (my < 0 ? 0 : (uint64_t)my * p.stoken_bytes) + (uint64_t)h * p.shead_bytes;
                cpn<G::SB, G::SHINT>(sb + (lane < 16 ? G::KSOFF : G::VSOFF) + k * G::SB, (lane < 16 ? p.ks : p.vs) + so,
                           my >= 0, pl.pkeep);
        }
}

/* fp4 scale bytes a thread needs from a scale row: K (thread t: the blocks
 * of its D/4 dims), V (thread g: the blocks of its D/8 dims). */
template <int D>
__device__ __forceinline__ uint32_t ksc_of(const uint8_t *row, int t)
{
        if constexpr (D == 64)
                return row[t];                  /* dims 16t.. : block t */
        else if constexpr (D == 128)
                return *(const uint16_t *)(row + 2 * t); /* chunk t: blocks 2t, 2t+1 */
        else                                    /* chunks t, t+4: blocks 2t, 2t+1, 8+2t, 9+2t */
                return *(const uint16_t *)(row + 2 * t) | (uint32_t) * (const uint16_t *)(row + 8 + 2 * t) << 16;
}

template <int D>
__device__ __forceinline__ uint32_t vsc_of(const uint8_t *row, int g)
{
        return D == 64 ? row[g / 2] : D == 128 ? row[g] : *(const uint16_t *)(row + 2 * g);
}

} // namespace kva
#endif /* __CUDACC__ */
#endif
