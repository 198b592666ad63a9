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
 * (m, l, unnormalized o) that attn_reduce() combines (flash-decoding).  The
 * CTAs of one row's kv heads are adjacent in launch order (grid.x = row *
 * heads + head), so the CTAs that run together read whole token rows.
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
 *   S[8 heads x 16 keys] = Q[heads x D] K^T        A = Q (rows g, g+8; the
 *       g+8 rows are zero padding), B = K^T in two n-tiles of 8 keys.  Thread
 *       (g,t) supplies key g (and g+8) over the D/4 dims it owns: chunks t,
 *       t+4, ... of the row (kdim): the dot product runs over every dim
 *       once, so the order of dims inside the k-chunks is free as long as Q
 *       uses the same order (and the "pair" permutation of each dtype below).
 *   O^T[D x 8 heads] += V^T[D x 16 keys] P^T       A = V^T (thread g owns
 *       the D/8 dims of chunks g, g+8, ... (vdim), keys 2t, 2t+1, 2t+8,
 *       2t+9), B = P^T, whose fragment is exactly the C fragment of S: no
 *       shuffles.
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
 * bf16 terms, exact, at the cost of a second Q K^T mma).
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
        uint32_t rows, hgt;             /* grid.x = rows * hgt (hgt = H * head_groups), grid.y = splits */
        float qk_scale_log2;            /* sm_scale * k fold * log2(e) */
        float out_scale;                /* v fold */
        int elem;                       /* KVC_ELEM_BF16 / F16 */
        int q16;                        /* q is 16-byte aligned */
};

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
#define KVA_S8 5        /* 20 KB per warp: 2 CTAs per SM; 4 (3 CTAs) was 3-4% slower at B = 128 */
#endif
#ifndef KVA_S4
#define KVA_S4 4
#endif
#ifndef KVA_MINB4
#define KVA_MINB4 4     /* CTAs per SM the fp4 kernels ask for at D <= 128 */
#endif
#ifndef KVA_MINB8
#define KVA_MINB8 3     /* the same for fp8 */
#endif
template <int DT, int D>
struct tgeo {
        static constexpr int bits = dtraits<DT>::bits;
        static constexpr bool FP4 = DT == KVC_DTYPE_FP4_E2M1;
        static constexpr int RB = D * bits / 8;         /* bytes of one key's head row */
        static constexpr int CPR = RB / 16;             /* 16-byte chunks per row */
        static constexpr int EPC = 128 / bits;          /* elements per chunk */
        static constexpr int KB = D / 4 * bits / 8;     /* K bytes of a key one thread reads */
        static constexpr int VB = D / 8 * bits / 8;     /* V bytes of a key one thread reads */
        static constexpr int SB = FP4 ? D / 16 : 0;     /* scale bytes per row */
        static constexpr int KOFF = 0, VOFF = 16 * RB, KSOFF = 32 * RB, VSOFF = 32 * RB + 16 * SB;
        static constexpr int STAGE = 32 * RB + 32 * SB;
        /* stages per warp: ~16-24 KB of ring per warp at D <= 128 */
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

__device__ __forceinline__ void cp16(uint32_t dst, const void *src, bool ok)
{
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(ok ? 16 : 0)
                     : "memory");
}

template <int N>
__device__ __forceinline__ void cpn(uint32_t dst, const void *src, bool ok)
{
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

/* The per-lane constants of the page16 copy path, computed once per warp
 * (recomputing them cost ~100 instructions per tile, a sixth of an fp4
 * tile's).  Lane L copies chunks L, L+32, ... of a K (and the V) region:
 * round i is (row, c) = (i * RPI + row0, L % CPR), at byte i * rstep + ko
 * from the tile's first row of this head.  Its shared-memory chunk
 * phys(row, c) repeats with period PER rounds (phys depends on row & 7, or
 * for CPR <= 4 not on the round at all), DSTEP bytes further each period,
 * so PER offsets cover every round. */
template <int DT, int D>
struct lane_plan {
        typedef tgeo<DT, D> G;
        static constexpr int RPI = 32 / G::CPR;                 /* rows per round of 32 chunks */
        static constexpr int ROUNDS = 16 * G::CPR / 32;
        static constexpr int PER = G::CPR >= 8 ? (8 / RPI < ROUNDS ? 8 / RPI : ROUNDS) : 1;
        static constexpr uint32_t DSTEP = PER * RPI * G::CPR * 16;
        uint32_t row0;          /* lane / CPR */
        uint32_t ko;            /* row0 * token_bytes + c * 16 */
        uint32_t rstep;         /* RPI * token_bytes */
        uint32_t d[PER];        /* phys(i * RPI + row0, c) * 16, i < PER */
        uint32_t sdst;          /* fp4: this lane's scale row in a stage (K: lanes 0-15, V: 16-31) */
        const uint8_t *sbase;   /* fp4: its scale array + head offset + (lane % 16) * stoken_bytes */

        __device__ __forceinline__ lane_plan(const params &p, uint64_t shoff, int lane)
        {
                const uint32_t c = lane % G::CPR, tb = (uint32_t)p.token_bytes; /* checked to fit */
                row0 = lane / G::CPR;
                ko = row0 * tb + c * 16;
                rstep = RPI * tb;
#pragma unroll
                for (int i = 0; i < PER; i++)
                        d[i] = phys<G::CPR>(i * RPI + row0, c) * 16;
                const uint32_t k = lane & 15;
                sdst = (lane < 16 ? G::KSOFF : G::VSOFF) + k * G::SB;
                sbase = (lane < 16 ? p.ks : p.vs) + shoff + (uint64_t)k * p.stoken_bytes;
                /* keep them in registers: left to itself the compiler
                 * recomputes them from the lane index in every tile */
                pin(row0);
                pin(ko);
                pin(rstep);
#pragma unroll
                for (int i = 0; i < PER; i++)
                        pin(d[i]);
        }
};

/* Page ids of a warp's tiles on the page16 path, looked up 32 tiles at a
 * time: lane j of the window holds the page id of the warp's tile base + j
 * (-1 past its last tile).  The next window is loaded when the current one
 * is taken, 32 tiles before it is needed, so the page-table load (an L2
 * round trip, ~600 cycles) no longer sits in every tile's issue path ahead
 * of the copies that depend on it. */
#ifndef KVA_PWIN
#define KVA_PWIN 1
#endif
struct page_window {
        int32_t cur, next;
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

        __device__ __forceinline__ page_window(const params &p, const int32_t *__restrict__ pt, uint32_t first,
                                               uint32_t step, uint32_t ntiles, int lane)
        {
                base = 0;
                cur = p.page16 ? load(p, pt, first, step, ntiles, 0, lane) : -1;
                next = p.page16 ? load(p, pt, first, step, ntiles, 32, lane) : -1;
        }

        /* page id of warp tile kt; kt grows by one per call (warp-uniform) */
        __device__ __forceinline__ int32_t get(const params &p, const int32_t *__restrict__ pt, uint32_t first,
                                               uint32_t step, uint32_t ntiles, uint32_t kt, int lane)
        {
#if !KVA_PWIN
                /* measuring switch: one lookup per tile, in the issue path */
                const uint32_t tok = first + kt * step;
                return __ldg(pt + (p.page_shift >= 0 ? tok >> p.page_shift : tok / p.page_size));
#endif
                if (kt - base >= 32) {
                        base += 32;
                        cur = next;
                        next = load(p, pt, first, step, ntiles, base + 32, lane);
                }
                return __shfl_sync(0xFFFFFFFFu, cur, kt - base);
        }
};

/* Starts the copies of the 16-key tile at key `tile` into stage st and
 * records which keys exist (bit k: key tile+k is below t_end on a valid
 * page) in *valid.  Every lane of the warp calls it.  Lane L copies chunks
 * L, L+32, ... of the K region and the same chunks of the V region: chunk
 * i*32+L is (row, c) = (i*32+L) / CPR, % CPR. */
template <int DT, int D>
__device__ __forceinline__ void issue_tile(const params &p, const int32_t *__restrict__ pt, uint32_t tile,
                                           uint32_t t_end, uint64_t hoff, uint64_t shoff, int lane, uint8_t *st,
                                           uint32_t *valid, const lane_plan<DT, D> &pl, int32_t pg)
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
                 * of 16: the tile is 16 consecutive slots of page pg (the
                 * caller's page window looked it up), one 64-bit base; the
                 * lane's offsets and shared-memory chunks come from the plan */
                const uint32_t off0 = p.page_shift >= 0 ? tile & (p.page_size - 1) : tile % p.page_size;
                const uint32_t nv = (uint32_t)pg < p.num_pages ? min(16u, t_end - tile) : 0u;
                const uint32_t vm = (1u << nv) - 1u;
                if (lane == 0)
                        *valid = vm;
                const uint64_t slot0 = (uint64_t)(uint32_t)pg * p.page_size + off0;
                const uint64_t base = nv ? slot0 * p.token_bytes + hoff + pl.ko : 0;
                const uint8_t *kb = p.k + base, *vb = p.v + base;
                if (nv == 16) {
                        /* a whole tile (every tile but a split's last):
                         * no predicates */
#pragma unroll
                        for (int i = 0; i < NCH / 32; i++) {
                                const uint32_t d = sb + pl.d[i % PL::PER] + (i / PL::PER) * PL::DSTEP;
                                cp16(d + G::KOFF, kb + i * pl.rstep, true);
                                cp16(d + G::VOFF, vb + i * pl.rstep, true);
                        }
                } else {
#pragma unroll
                        for (int i = 0; i < NCH / 32; i++) {
                                const bool ok = (vm >> (i * RPI + pl.row0)) & 1u;
                                const uint32_t d = sb + pl.d[i % PL::PER] + (i / PL::PER) * PL::DSTEP;
                                cp16(d + G::KOFF, ok ? kb + i * pl.rstep : p.k, ok);
                                cp16(d + G::VOFF, ok ? vb + i * pl.rstep : p.v, ok);
                        }
                }
                if constexpr (G::FP4) {
                        /* lanes 0-15: K scale row k, lanes 16-31: V scale row k */
                        const bool ok = (vm >> k) & 1u;
                        cpn<G::SB>(sb + pl.sdst, pl.sbase + (ok ? slot0 * p.stoken_bytes : 0), ok);
                }
                return;
        }

        /* any page size: lane k (and k+16) finds key k's slot, the chunks
         * take it from there */
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
                cp16(d + G::KOFF, p.k + o, s >= 0);
                cp16(d + G::VOFF, p.v + o, s >= 0);
        }
        if constexpr (G::FP4) {
                const uint64_t so = (my < 0 ? 0 : (uint64_t)my * p.stoken_bytes) + shoff;
                cpn<G::SB>(sb + (lane < 16 ? G::KSOFF : G::VSOFF) + k * G::SB, (lane < 16 ? p.ks : p.vs) + so,
                           my >= 0);
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

/* QLO: q is f16 on a bf16-compute pool (see qb below); a template argument
 * so that the common bf16-q case does not pay its registers.
 *
 * Dynamic shared memory: tgeo<DT, D>::SMEM bytes (the four warps' rings). */
template <int DT, int D, bool QLO>
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
        __shared__ float sm_m[WARPS][HG], sm_l[WARPS][HG];
        __shared__ uint32_t sm_valid[WARPS][G::S];

        const uint32_t row = blockIdx.x / p.hgt, hy = blockIdx.x % p.hgt;
        const uint32_t h = hy / p.head_groups, hg = hy % p.head_groups;
        const uint32_t split = blockIdx.y;
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        const int g = lane / 4, t = lane % 4;
        uint8_t *ring = dsm + warp * G::S * G::STAGE;

        /* the reduction (launched as a programmatic dependent when there
         * are splits) may be scheduled now; it waits for this grid to end */
        kvk::grid_dep_launch();

        uint32_t b, len;
        row_to_seq(p.seq_lens, p.qo_indptr, p.batch, row, p.max_pages * p.page_size, b, len);
        const uint32_t t_begin = split * p.chunk;
        const uint32_t t_end = min(len, t_begin + p.chunk);
        const int32_t *pt = p.page_table + (uint64_t)b * p.max_pages;
        const uint64_t hoff = (uint64_t)h * p.head_bytes;
        const uint64_t shoff = (uint64_t)h * p.shead_bytes;

        /* this warp's tiles: t_begin + (warp + 4k) * 16; the first S-1 go
         * out before Q is even loaded */
        const uint32_t first = t_begin + warp * TILE, step = WARPS * TILE;
        const lane_plan<DT, D> plan(p, shoff, lane);
        const uint32_t ntiles = first < t_end ? (t_end - first + step - 1) / step : 0;
        page_window pw(p, pt, first, step, ntiles, lane);
#pragma unroll
        for (int s = 0; s < G::S - 1; s++) {
                if ((uint32_t)s < ntiles) {
                        const int32_t pg = p.page16 ? pw.get(p, pt, first, step, ntiles, s, lane) : -1;
                        issue_tile<DT, D>(p, pt, first + s * step, t_end, hoff, shoff, lane, ring + s * G::STAGE,
                                          &sm_valid[warp][s], plan, pg);
                }
                cp_commit();
        }

        /* Q fragment: head g of the group, the thread's K dims in kdim
         * order; rows g+8 are zero.  f16 q on a bf16-compute pool: q = hi +
         * lo, both bf16, exact (11 significant bits fit in two 8-bit ones),
         * so the scores do not carry the rounding of q to bf16 (outlier K
         * channels amplify it) */
        const uint32_t gi = hg * HG + g;
        constexpr bool qlo = BF && QLO;
        uint32_t qa[D / 8], qb[qlo ? D / 8 : 1];
        {
                const bool ok = gi < p.G;
                const uint16_t *qp = (const uint16_t *)p.q + ((uint64_t)row * p.Hq + h * p.G + gi) * D;
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
        /* the A fragments of Q K^T kept whole (rows g+8 zero): built once,
         * instead of the compiler zeroing the padding registers of each
         * fragment in every tile (21-36 instructions per tile; not for
         * the qlo kernels, which would spill) */
        uint32_t qf[qlo ? 1 : KC][4];
#pragma unroll
        for (int kc = 0; kc < (qlo ? 0 : KC); kc++) {
                qf[kc][0] = qa[2 * kc];
                qf[kc][1] = 0u;
                qf[kc][2] = qa[2 * kc + 1];
                qf[kc][3] = 0u;
                pin(qf[kc][1]);
                pin(qf[kc][3]);
        }

        float acc[KC][4];
#pragma unroll
        for (int i = 0; i < KC; i++)
                acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
        float m = -1e30f, l = 0.0f;

        uint32_t si = G::S - 1, sc = 0; /* stage to issue into, stage to compute */
        for (uint32_t k = 0; k < ntiles; k++) {
                /* every lane is done with the stage computed last round,
                 * which is the one the next tile goes into */
                __syncwarp();
                if (k + G::S - 1 < ntiles) {
                        const uint32_t ki = k + G::S - 1;
                        const int32_t pg = p.page16 ? pw.get(p, pt, first, step, ntiles, ki, lane) : -1;
                        issue_tile<DT, D>(p, pt, first + ki * step, t_end, hoff, shoff, lane, ring + si * G::STAGE,
                                          &sm_valid[warp][si], plan, pg);
                }
                cp_commit();
                si = si + 1 == G::S ? 0 : si + 1;
                cp_wait<G::S - 1>();    /* this thread's copies of tile k are done */
                __syncwarp();           /* ... and every lane's are visible */

                const uint8_t *st = ring + sc * G::STAGE;
                const uint32_t vm = sm_valid[warp][sc];
                sc = sc + 1 == G::S ? 0 : sc + 1;

                /* ---- S = Q K^T, two n-tiles of 8 keys (keys g and g+8) */
                float s[2][4];
#pragma unroll
                for (int n = 0; n < 2; n++) {
                        uint32_t kw[NWK], kp[D / 8];
                        lds_k<DT, D>(st + G::KOFF, g + 8 * n, t, kw);
                        const uint32_t ksc = G::FP4 ? ksc_of<D>(st + G::KSOFF + (g + 8 * n) * G::SB, t) : 0u;
                        deq_k<DT, D>(kw, ksc, kp);
                        s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
                        for (int kc = 0; kc < KC; kc++)
                                if constexpr (qlo)
                                        mma<BF>(s[n], qa[2 * kc], 0u, qa[2 * kc + 1], 0u, kp[2 * kc], kp[2 * kc + 1]);
                                else
                                        mma<BF>(s[n], qf[kc][0], qf[kc][1], qf[kc][2], qf[kc][3], kp[2 * kc],
                                                kp[2 * kc + 1]);
                        if constexpr (qlo) {
#pragma unroll
                                for (int kc = 0; kc < KC; kc++)
                                        mma<BF>(s[n], qb[2 * kc], 0u, qb[2 * kc + 1], 0u, kp[2 * kc], kp[2 * kc + 1]);
                        }
                }

                /* ---- online softmax for head g over keys 2t, 2t+1 (n-tile 0) and 8+2t, 9+2t */
                const uint32_t kk[4] = { 2u * t, 2u * t + 1, 2u * t + 8, 2u * t + 9 };
                float x[4];
                x[0] = (vm >> kk[0]) & 1u ? s[0][0] * qk_scale : -INFINITY;
                x[1] = (vm >> kk[1]) & 1u ? s[0][1] * qk_scale : -INFINITY;
                x[2] = (vm >> kk[2]) & 1u ? s[1][0] * qk_scale : -INFINITY;
                x[3] = (vm >> kk[3]) & 1u ? s[1][1] * qk_scale : -INFINITY;
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

                /* ---- O^T += V^T P^T; keys that do not exist were
                 * zero-filled, so their V is 0 and their p is 0 */
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

        /* ---- merge the warps: l over t, then through shared memory (each
         * warp's partial o goes into its own ring, which it no longer needs) */
        l += __shfl_xor_sync(0xFFFFFFFFu, l, 1);
        l += __shfl_xor_sync(0xFFFFFFFFu, l, 2);
        __syncwarp();
        static_assert(HG * D * sizeof(float) <= G::S * G::STAGE, "partial o fits the ring");
        float(*my_o)[D] = (float(*)[D])ring;
        if (t == 0) {
                sm_m[warp][g] = m;
                sm_l[warp][g] = l;
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
                        O += ((const float(*)[D])(dsm + w * G::S * G::STAGE))[hh][d] * f;
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

/* Most splits the planner makes (kv_attn_decode.cu clamps to it): the
 * reduction keeps one weight per split in shared memory. */
constexpr int MAX_SPLITS = 1024;

/* Combines the splits of each (row, q head): one CTA of 128 threads each.
 * The splits' (m, l) are read once, in parallel, into one weight per split
 * (2^(m_s - M)); then each thread sums its dims over the splits with
 * independent loads (a serial walk would pay one L2 round trip per split). */
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
                uint16_t *o = (uint16_t *)p.out + hq * D + d;
                *o = p.elem == KVC_ELEM_BF16 ? __bfloat16_as_ushort(__float2bfloat16_rn(v))
                                             : __half_as_ushort(__float2half_rn(v));
        }
}

} // namespace kva
#endif /* __CUDACC__ */
#endif
