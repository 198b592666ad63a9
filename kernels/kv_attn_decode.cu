/* kv_attn_decode.cu - launchers of the paged attention kernel
 * (kv_attn_decode.cuh): kv_cuda_decode (with a caller's workspace
 * kv_cuda_decode_ws, and its size) and the planner/launcher shared with
 * kv_cuda_extend (kv_attn_extend.cu).
 *
 * Split planning (flash-decoding).  A CTA covers one (query row, kv head,
 * group of <= 8 q heads), or for extend with G <= 4 of 8 / G rows of one
 * sequence (p.pack), and `chunk` keys.  When rows * kv_heads * groups
 * CTAs would fill at most half of one wave (the kernel's occupancy, 2 to 4
 * CTAs per SM by dtype, times the SMs), the sequence is split into chunks
 * of at least 128 keys (a multiple of 64: 4 warps x 16 keys) so that the
 * CTAs make about one full wave: B = 1 at 32k keys still fills the GPU, and
 * no launch ends with a mostly empty second wave.  Launches of more than one
 * wave may be split in up to 4 when that fills their last wave clearly
 * better (chunks of at least 4096 keys; 1024 for the tiled extend kernel:
 * kv_attn_plan.cuh).  Decode launches of several waves may instead give
 * each warp a kv head of its own (p.hw: a CTA takes 4 kv heads of a row and
 * all their keys, a quarter as many CTAs, no merge), where kva::take_heads
 * estimates that faster from the rows' lengths.  The partials (m, l, unnormalized
 * o: rows * Hq * splits * (D + 2) floats, o first) go to the caller's
 * workspace when the call has one (kv_cuda_decode_ws, kv_cuda_extend_ws:
 * kvc_decode_ws in kvclient.h), checked against the plan's size before
 * any launch (-ENOSPC), so that a captured call puts only kernel nodes into
 * its graph.  Without one they go to scratch taken with
 * cudaMallocFromPoolAsync on the caller's stream and given back with
 * cudaFreeAsync after the reduction kernel, so concurrent calls on different
 * streams never share scratch.  The pool is the library's own, one per device, created on first
 * use and kept for the life of the process, with a release threshold of
 * 64 MiB: the default pool's threshold of 0 would hand the memory back at
 * every synchronization and make each call map fresh memory (seen on the
 * H200: tens of microseconds per small call).  Scratch is about one wave of
 * CTAs times 8 * (D + 2) floats (under 1 MiB at D = 128) for the first kind
 * of split, up to 4 * rows * Hq * (D + 2) floats for the second.  The plan
 * (plan_call) launches nothing, so the size queries (kv_cuda_decode_ws_bytes,
 * kv_cuda_extend_ws_bytes) run it alone, once as an eager call and once as
 * a captured one (see capture_max_len), and answer with the larger need:
 * a workspace sized before a capture then serves the call in it too.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <string.h>
#include <atomic>
#include <cuda_runtime.h>

#include "kv_ops.h"
#include "kv_cuda_common.cuh"
#include "kv_attn_common.cuh"
#include "kv_attn_decode.cuh"
#include "kv_attn_plan.cuh"
#include "kv_attn_prefill.cuh"
#include "kv_ref_common.h"

/* Launches attn_kernel<DT, D, QLO, PACK> on grid, or, with ret_occ, only stores
 * how many of its CTAs fit on one SM (cached per device; dev is the current
 * device).  Returns a cudaError_t. */
template <int DT, int D, bool QLO, bool PACK>
static int launch_k(const kva::params &p, dim3 grid, cudaStream_t st, int dev, int *ret_occ)
{
        static std::atomic<uint64_t> done(0);
        static std::atomic<int> occ_cache[64];
        return kva::occupancy_or_launch(kva::attn_kernel<DT, D, QLO, PACK>, kva::tgeo<DT, D>::SMEM, p, grid, st,
                                        dev, ret_occ, done, occ_cache);
}

/* The same with the packed-rows kernel when p.pack is set. */
template <int DT, int D, bool QLO>
static int launch_q(const kva::params &p, dim3 grid, cudaStream_t st, int dev, int *ret_occ)
{
        return p.pack ? launch_k<DT, D, QLO, true>(p, grid, st, dev, ret_occ)
                      : launch_k<DT, D, QLO, false>(p, grid, st, dev, ret_occ);
}

/* The kernel for p (and, with splits, the reduction), or its occupancy
 * (ret_occ).  Returns a cudaError_t. */
template <int DT, int D>
static int launch(const kva::params &p, dim3 grid, cudaStream_t st, int dev, int *ret_occ)
{
        /* f16 q on a bf16-compute pool takes the hi/lo-q kernel; the other
         * dtypes compute in f16 and never need it */
        int e;
        if (kva::dtraits<DT>::bf && p.elem == KVC_ELEM_F16)
                e = launch_q<DT, D, kva::dtraits<DT>::bf>(p, grid, st, dev, ret_occ);
        else
                e = launch_q<DT, D, false>(p, grid, st, dev, ret_occ);
        if (e == 0 && !ret_occ && p.splits > 1)
                e = kva::launch_reduce<D>(p, st);
        return e;
}

/* Returns 0, a cudaError_t (> 0), or -EINVAL for a head_dim without a kernel. */
template <int DT>
static int launch_d(uint32_t D, const kva::params &p, dim3 grid, cudaStream_t st, int dev, int *ret_occ)
{
        switch (D) {
        case 64:
                return launch<DT, 64>(p, grid, st, dev, ret_occ);
        case 128:
                return launch<DT, 128>(p, grid, st, dev, ret_occ);
        case 256:
                return launch<DT, 256>(p, grid, st, dev, ret_occ);
        default:
                return -EINVAL;
        }
}

/* The library's own stream-ordered pool for scratch on device dev, the
 * current one (see the file comment).  Returns a cudaError_t. */
static int scratch_pool(int dev, cudaMemPool_t *ret)
{
        static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
        static cudaMemPool_t pools[64];
        cudaError_t e = cudaSuccess;
        if (dev < 0 || dev >= 64)
                return (int)cudaErrorInvalidDevice;
        pthread_mutex_lock(&mu);
        if (!pools[dev]) {
                cudaMemPoolProps props;
                memset(&props, 0, sizeof props);
                props.allocType = cudaMemAllocationTypePinned;
                props.location.type = cudaMemLocationTypeDevice;
                props.location.id = dev;
                const kvk::relaxed_capture relaxed;
                e = cudaMemPoolCreate(&pools[dev], &props);
                if (e == cudaSuccess) {
                        uint64_t thr = 64ull << 20;
                        e = cudaMemPoolSetAttribute(pools[dev], cudaMemPoolAttrReleaseThreshold, &thr);
                }
                if (e != cudaSuccess)
                        pools[dev] = NULL;
        }
        *ret = pools[dev];
        pthread_mutex_unlock(&mu);
        return (int)e;
}

/* The SM count of device dev (cached).  Returns a cudaError_t. */
static int sm_count(int dev, int *ret)
{
        static std::atomic<int> cache[64];
        int n = 0;
        if (dev >= 0 && dev < 64 && (n = cache[dev].load(std::memory_order_relaxed)) > 0) {
                *ret = n;
                return 0;
        }
        cudaError_t e = cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
        if (e != cudaSuccess)
                return (int)e;
        if (dev >= 0 && dev < 64)
                cache[dev].store(n, std::memory_order_relaxed); /* every thread stores the same value */
        *ret = n;
        return 0;
}

/* The decode kernel's busy CTAs for rows query rows of c (hgt: kv heads x
 * head groups) with pack vectors a CTA (p.pack; 0: a row a CTA): the
 * empty tiles of the grid (ptile_grid, up to one a sequence) return at
 * once and are not counted.  A loop over the batch when packed. */
static uint64_t decode_ctas(const struct kv_attn_call *c, uint32_t rows, uint32_t G, uint64_t hgt, uint32_t pack)
{
        return pack ? kva::ptile_busy(c->qo_indptr_host, c->batch, G, (int)pack) * hgt : (uint64_t)rows * hgt;
}

/* kv_cuda_extend_kernel's setting (kv_ops.h) */
static std::atomic<int> extend_kernel(KV_EXTEND_AUTO);

extern "C" int kv_cuda_extend_kernel(int which)
{
        if (which != KV_EXTEND_AUTO && which != KV_EXTEND_TILED && which != KV_EXTEND_DECODE)
                return -EINVAL;
        return extend_kernel.exchange(which, std::memory_order_relaxed);
}

/* kv_cuda_decode_warps' setting (kv_ops.h) */
static std::atomic<int> decode_warps(KV_DECODE_AUTO);

extern "C" int kv_cuda_decode_warps(int which)
{
        if (which != KV_DECODE_AUTO && which != KV_DECODE_TILES && which != KV_DECODE_HEADS)
                return -EINVAL;
        return decode_warps.exchange(which, std::memory_order_relaxed);
}

/* The tiled extend kernel's m-tiles per warp (*ret_mt: kva::pick_mt,
 * kv_attn_plan.cuh), tiles per kv head (*ret_tiles: ptile_grid,
 * kv_attn_extend.cuh; *ret_busy of them hold query vectors: ptile_busy,
 * from qo, the host copy of qo_indptr) and CTAs per SM (*ret_occ) for CTAs
 * of pw warps over sequences of at most max_len keys.  The two-term q
 * kernels (qlo) follow the same rule (-DKVA_QLO2=0: one m-tile, for
 * measuring). */
static int plan_mt(enum kvc_dtype dt, uint32_t D, bool qlo, int pw, const kva::params &p, const int32_t *qo,
                   uint32_t rows, uint32_t batch, uint32_t H, uint32_t max_len, int dev, int sms, int *ret_mt,
                   uint64_t *ret_tiles, uint64_t *ret_busy, int *ret_occ)
{
        int occ1 = 1, occ2 = 1, r;
        const uint64_t b1 = kva::ptile_busy(qo, batch, p.G, kva::pqv(pw, 1));
        uint64_t b2 = 0; /* counted only where two m-tiles exist (a loop over the batch) */
        if ((r = kv_prefill_launch((int)dt, D, 1, pw, qlo, p, dim3(), NULL, dev, &occ1)) != 0)
                return r;
        int mt = 1;
        if (D <= 128 && (!qlo || KVA_QLO2)) {
                if ((r = kv_prefill_launch((int)dt, D, 2, pw, qlo, p, dim3(), NULL, dev, &occ2)) != 0)
                        return r;
                b2 = kva::ptile_busy(qo, batch, p.G, kva::pqv(pw, 2));
                const uint64_t slots1 = (uint64_t)(occ1 > 0 ? occ1 : 1) * sms;
                const uint64_t slots2 = (uint64_t)(occ2 > 0 ? occ2 : 1) * sms;
                const uint64_t qv2 = (uint64_t)kva::pqv(pw, 2);
                const uint64_t e2 = ((uint64_t)rows * p.G + qv2 - 1) / qv2 * H;
                /* whether one m-tile's launch splits its keys (as planned below) */
                const bool split1 = kva::plan_keys(true, b1 * H, slots1, max_len, kva::MAX_SPLITS).splits > 1;
                mt = kva::pick_mt(b1 * H, b2 * H, e2, slots1, slots2, occ2, split1);
                if (KVA_PFORCE_MT)
                        mt = KVA_PFORCE_MT;
        }
        *ret_mt = mt;
        *ret_tiles = kva::ptile_grid(batch, rows, p.G, kva::pqv(pw, mt));
        *ret_busy = mt == 2 ? b2 : b1;
        *ret_occ = mt == 2 ? occ2 : occ1;
        return 0;
}

/* The tiled extend kernel's warps a CTA (*ret_pw: 8 where the kernel has
 * them, kva::pwide, and kva::take_8warps says so, else 4) and plan_mt's
 * four for them. */
static int plan_tiles(enum kvc_dtype dt, uint32_t D, bool qlo, const kva::params &p, const int32_t *qo,
                      uint32_t rows, uint32_t batch, uint32_t H, uint32_t max_len, int dev, int sms, int *ret_mt,
                      int *ret_pw, uint64_t *ret_tiles, uint64_t *ret_busy, int *ret_occ)
{
        int mt = 0, occ = 1, r;
        uint64_t tiles = 0, busy = 0;
        if (kva::pwide((int)dt, (int)D, qlo)) {
                r = plan_mt(dt, D, qlo, 8, p, qo, rows, batch, H, max_len, dev, sms, &mt, &tiles, &busy, &occ);
                if (r != 0)
                        return r;
                if (KVA_PW == 8 || kva::take_8warps(busy * H, (uint64_t)(occ > 0 ? occ : 1) * sms,
                                                    (uint64_t)rows * p.G, batch, kva::pqv(8, mt))) {
                        *ret_mt = mt, *ret_pw = 8, *ret_tiles = tiles, *ret_busy = busy, *ret_occ = occ;
                        return 0;
                }
        }
        if ((r = plan_mt(dt, D, qlo, 4, p, qo, rows, batch, H, max_len, dev, sms, &mt, &tiles, &busy, &occ)) != 0)
                return r;
        *ret_mt = mt, *ret_pw = 4, *ret_tiles = tiles, *ret_busy = busy, *ret_occ = occ;
        return 0;
}

/* Under stream capture (a CUDA graph, replayed later with whatever lengths
 * seq_lens holds then) the split of the keys over CTAs is fixed at capture,
 * but the lengths are not: a plan made for the capture's lengths would drop
 * the keys of a longer replay past its last split.  So a captured call is
 * planned for the longest length its page table can hold (max_pages *
 * page_size); the splits that a replay's shorter lengths leave empty copy
 * no key but still write an empty partial (m = -1e30, l = 0, o = 0), which
 * attn_reduce weighs 0 and needs (it reads every split's partial), and the
 * lengths are still read on the device; the decode
 * kernel's rows then spread their own lengths over the splits (params
 * row_chunk), so that a replay's short rows still use every split.
 *
 * Whether the call is captured: a call asks its stream (PLAN_STREAM); the
 * size query, which has no stream, plans the call both ways (PLAN_EAGER,
 * PLAN_CAPTURED) and answers with the larger, so that one workspace serves
 * the call eagerly and under capture. */
enum plan_mode { PLAN_STREAM, PLAN_EAGER, PLAN_CAPTURED };

/* *max_len is raised to the capacity and *ret_captured set when the call
 * is planned as captured (mode, or for PLAN_STREAM the stream capturing);
 * both are left alone otherwise. */
static int capture_max_len(const struct kv_attn_call *c, uint32_t page_size, void *stream, enum plan_mode mode,
                           uint32_t *max_len, bool *ret_captured, char *msg, size_t msglen)
{
        bool captured = mode == PLAN_CAPTURED;
        if (mode == PLAN_STREAM) {
                cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
                cudaError_t e = cudaStreamIsCapturing((cudaStream_t)stream, &cs);
                if (e != cudaSuccess) {
                        (void)cudaGetLastError();
                        /* e.g. the legacy stream while another captures */
                        return kv_cuda_errno(e, c->op, msg, msglen);
                }
                captured = cs == cudaStreamCaptureStatusActive;
        }
        if (captured) {
                const uint64_t cap = (uint64_t)c->max_pages * page_size; /* <= 2^31-1: kv_attn_check */
                if (cap > *max_len)
                        *max_len = (uint32_t)cap;
                *ret_captured = true;
        }
        return 0;
}

/* A call as plan_call planned it: the kernel's parameters and grid
 * (p.part_o and p.part_ml not yet set), which kernel, and the scratch its
 * split partials take.  p.rows == 0: nothing to launch. */
struct attn_plan {
        kva::params p;
        dim3 grid;
        bool tiled, qlo;
        int mt, pw;             /* the tiled kernel's m-tiles per warp and warps a CTA */
        int dev;                /* the current device, which every cache was indexed by */
        uint32_t D;
        enum kvc_dtype dt;
        size_t ws_bytes;        /* rows * Hq * splits * (D + 2) floats when p.splits > 1, else 0 */
};

/* Checks c (kv_attn_check) and plans it as kv_attn_cuda_run launches it:
 * the kernel, its occupancy, the split of the keys, the grid; as captured
 * or not by mode (PLAN_STREAM: as stream says; stream is not looked at
 * otherwise).  Launches nothing and takes no memory, so that
 * kv_attn_cuda_ws_bytes answers with the plans the call itself can make
 * (the occupancy and SM count queries are cached per device, so planning
 * again costs little).  Returns 0 with *pl set, or a negative errno with
 * msg. */
static int plan_call(const struct kv_pool_view *pv, const struct kv_attn_call *c, void *stream, enum plan_mode mode,
                     struct attn_plan *pl, char *msg, size_t msglen)
{
        uint32_t rows, max_len;
        /* kv_attn_check reads the host copies: device memory passed as
         * one would be a SIGSEGV there */
        const struct kv_mem_arg host[] = {
                { c->seq_lens_host, "seq_lens_host", KV_MEM_HOST },
                { c->qo_indptr_host, "qo_indptr_host", KV_MEM_HOST },
        };
        int r = c->batch ? kv_cuda_check_mem(host, 2, c->op, msg, msglen) : 0;
        if (r < 0)
                return r;
        r = kv_attn_check(pv, c, false, true, &rows, &max_len, msg, msglen);
        if (r < 0)
                return r;
        *pl = attn_plan{};
        if (rows == 0)
                return 0;

        const struct kv_layout *L = &pv->layout;
        const uint32_t H = L->g.kv_heads, D = L->g.head_dim, P = L->g.page_size;
        bool captured = false;
        if ((r = capture_max_len(c, P, stream, mode, &max_len, &captured, msg, msglen)) < 0)
                return r;
        /* the kernel addresses a key as slot * token_bytes: pages must be
         * page_size token rows back to back, as kv_layout_init lays them
         * out (a view built by hand might not) */
        if (L->page_bytes != (uint64_t)P * L->token_bytes ||
            L->scale_page_bytes != (uint64_t)P * L->scale_token_bytes)
                return kv_fail(-EINVAL, msg, msglen, "%s: pool layout: a page is not page_size token rows", c->op);
        if ((r = kv_cuda_check_aligned(pv, c->layer, c->op, msg, msglen)) < 0)
                return r;
        const enum kvc_dtype dt = L->g.dtype;
        const uint8_t *base = (const uint8_t *)pv->base;
        kva::params p = {};

        p.k = base + kv_layout_k(L, c->layer);
        p.v = base + kv_layout_v(L, c->layer);
        p.ks = dt == KVC_DTYPE_FP4_E2M1 ? base + kv_layout_ks(L, c->layer) : p.k;
        p.vs = dt == KVC_DTYPE_FP4_E2M1 ? base + kv_layout_vs(L, c->layer) : p.v;
        p.q = c->q;
        p.out = c->out;
        p.page_table = c->page_table;
        p.seq_lens = c->seq_lens;
        p.qo_indptr = c->qo_indptr;
        p.batch = c->batch;
        p.max_pages = c->max_pages;
        p.num_pages = L->num_pages;
        p.page_size = P;
        p.page_shift = -1;
        if ((P & (P - 1)) == 0)
                p.page_shift = __builtin_ctz(P);
        /* the page-aligned path adds 32-bit offsets of up to 16 token rows
         * and keeps slots in 32 bits, below kva::NOSLOT */
        p.page16 = P % kva::TILE == 0 && L->token_bytes < (1ull << 27) &&
                   (uint64_t)L->num_pages * P < (uint64_t)kva::NOSLOT;
        p.Hq = c->num_q_heads;
        p.G = c->num_q_heads / H;
        p.head_groups = (uint32_t)(((uint64_t)p.G + kva::HG - 1) / kva::HG); /* no wrap for a huge G */
        p.token_bytes = L->token_bytes;
        p.head_bytes = L->head_bytes;
        p.stoken_bytes = L->scale_token_bytes;
        p.shead_bytes = L->scale_head_bytes;
        p.elem = c->elem;
        p.q16 = ((uintptr_t)c->q % 16) == 0; /* rows are D * 2 bytes, a multiple of 16 */

        /* scale folding: fp8 decodes exactly to f16 codes (x = code * scale);
         * fp4 decodes to value * 2^-64 (see kv_attn_decode.cuh) */
        float kf = 1.0f, vf = 1.0f;
        if (dt == KVC_DTYPE_FP8_E4M3 || dt == KVC_DTYPE_FP8_E5M2) {
                kf = pv->k_scale[c->layer];
                vf = pv->v_scale[c->layer];
        } else if (dt == KVC_DTYPE_FP4_E2M1) {
                kf = vf = 18446744073709551616.0f; /* 2^64 */
        }
        p.qk_scale_log2 = c->sm_scale * kf * 1.4426950408889634f;
        p.out_scale = vf;

        /* the current device, once per call: every per-device cache below
         * is indexed by it */
        int dev = 0, sms = 0, occ = 1;
        r = (int)cudaGetDevice(&dev);
        if (r == 0)
                r = sm_count(dev, &sms);
        if (r != 0)
                return kv_cuda_errno(r, c->op, msg, msglen);
        if (sms < 1) /* the driver reports at least one; never divide by 0 below */
                sms = 1;

        /* Extend with, on average, at least 128 query vectors (rows x q
         * heads per kv head) per sequence, 80 with 2 or more sequences
         * (96 with 3; kva::take_tiled), takes the tiled kernel
         * (kv_attn_prefill.cuh), which reads each key once per tile of 64
         * or 128 vectors instead of once per row; decode, and extend with
         * fewer, the decode kernel (one row a CTA, or 8 / G rows: p.pack
         * below).  Measured on the H200 with both kernels forced
         * (docs/benchmarks.md "Which kernel"): from 128 vectors on the
         * tiled kernel was up to 2.7x faster, except for one sequence of 4k
         * keys at 128 (14-21% slower with 16-bit and fp8 pools); at 32 it
         * was 1.4-2.9x slower, at 64 1.04-2.2x slower with up to 8
         * sequences and from 13% faster to 13% slower with 32 or 128 (the
         * tiled kernel as planned before the busy-tile count below; as
         * planned now it takes less time from 80 vectors with 2 or more
         * sequences, 96 with 3: KVA_PMIN4 and KVA_PMIN3, kv_attn_plan.cuh); but
         * not where the decode kernel's own launch would be short
         * (kva::decode_is_short).  kv_cuda_extend_kernel (tests,
         * benchmarks) can force either kernel.  f16 q
         * on a bf16-compute pool (bf16, fp4) takes the tiled kernel's exact
         * two-term q (qlo). */
        const bool qlo = (dt == KVC_DTYPE_BF16 || dt == KVC_DTYPE_FP4_E2M1) && c->elem == KVC_ELEM_F16;
        const int force = extend_kernel.load(std::memory_order_relaxed);
        /* the decode kernel's packed rows for this call (p.pack below) */
        const uint32_t dpack =
                KVA_DPACK && c->qo_indptr && p.G <= kva::HG / 2 && rows > c->batch ? kva::HG / p.G * p.G : 0;
        const bool many = kva::take_tiled((uint64_t)rows * p.G, c->batch, KVA_PMIN, KVA_PMIN4, KVA_PMIN3);
        const uint64_t hgt = (uint64_t)H * p.head_groups;
        uint64_t dctas = 0; /* decode_ctas(dpack), once counted */
        bool tiled = KVA_PREFILL && c->qo_indptr &&
                     (force == KV_EXTEND_TILED || (force == KV_EXTEND_AUTO && many));
        /* ... unless the decode kernel's launch would be short (few keys,
         * few CTAs), where the tiled kernel's fixed cost outweighs what it
         * saves: the decode kernel's CTAs, splits and occupancy as it
         * would be planned below.  A failed occupancy query leaves the
         * tiled kernel, whose own query reports its errors: this one's is
         * taken off the thread (cudaGetLastError) so that it is not
         * reported for a launch that worked. */
        if (tiled && force == KV_EXTEND_AUTO && KVA_PWORK > 0) {
                int occd = 0, qe = -EINVAL;
                p.pack = dpack;
                kvk::with_dtype(dt, [&](auto t) { qe = launch_d<decltype(t)::value>(D, p, dim3(), NULL, dev, &occd); });
                if (qe > 0)
                        (void)cudaGetLastError();
                if (qe == 0) {
                        dctas = decode_ctas(c, rows, p.G, hgt, dpack);
                        const kva::split_plan d = kva::plan_keys(false, dctas, (uint64_t)(occd > 0 ? occd : 1) *
                                                                                       (uint64_t)sms,
                                                                 max_len, kva::MAX_SPLITS);
                        tiled = !kva::decode_is_short(dctas * d.splits, (uint64_t)sms, d.chunk, D, KVA_PWORK);
                }
        }
        /* Extend on the decode kernel with at most 4 q heads a kv head and
         * more rows than sequences (speculative decoding's verification,
         * a few new rows each): a CTA takes 8 / G rows of one sequence, all
         * their heads in the mma's 8 columns, which one row alone fills
         * only to G, so the rows share each key's copy and dequantization
         * (kv_attn_extend.cuh).  Its grid counts tiles of p.pack vectors,
         * at most one empty one a sequence (ptile_base). */
        p.pack = tiled ? 0 : dpack;

        /* the plan: the kernel and its occupancy (the tiled kernel's
         * m-tiles and warps with it), then the split of the keys over the
         * CTAs it makes (kv_attn_plan.cuh) */
        r = -EINVAL;
        int mt = 0, pw = 4;  /* the tiled kernel's m-tiles per warp and warps a CTA */
        uint64_t ptiles = 0, pbusy = 0; /* and its tiles per kv head (grid.x / kv heads), those not empty */
        if (tiled)
                r = plan_tiles(dt, D, qlo, p, c->qo_indptr_host, rows, c->batch, H, max_len, dev, sms, &mt, &pw,
                               &ptiles, &pbusy, &occ);
        else if (!kvk::with_dtype(dt, [&](auto t) { r = launch_d<decltype(t)::value>(D, p, dim3(), NULL, dev, &occ); }))
                r = -EINVAL;
        if (r < 0)
                return kv_fail(-EINVAL, msg, msglen, "%s: no kernel for dtype %d head_dim %u", c->op, (int)dt, D);
        if (r > 0)
                return kv_cuda_errno(r, c->op, msg, msglen);
        if (occ < 1)
                occ = 1;
        /* grid.x: for the tiled kernel and packed rows ptile_grid
         * (kv_attn_extend.cuh), whose empty tiles (up to one a sequence)
         * return at once; the split plan counts the others */
        uint64_t ctas, gx;
        if (tiled) {
                ctas = pbusy * H;
                gx = ptiles * H;
        } else {
                ctas = dctas ? dctas : decode_ctas(c, rows, p.G, hgt, p.pack);
                gx = p.pack ? kva::ptile_grid(c->batch, rows, p.G, (int)p.pack) * hgt : ctas;
        }
        const uint64_t slots = (uint64_t)occ * (uint64_t)sms;
        kva::split_plan sp = kva::plan_keys(tiled, ctas, slots, max_len, kva::MAX_SPLITS);
        /* A decode launch of several waves may give each warp a kv head of
         * its own instead (p.hw, kva::take_heads): a quarter of the CTAs,
         * each over 4 kv heads of a row, so fewer CTA starts and no merge.
         * Weighed on the rows' lengths, so not under capture, where a
         * replay's lengths are unknown. */
        const int dw = decode_warps.load(std::memory_order_relaxed);
        if (!tiled && !p.pack && dw != KV_DECODE_TILES) {
                const kva::heads_choice hc =
                        kva::pick_heads(!captured && !c->qo_indptr ? c->seq_lens_host : NULL, rows,
                                        c->max_pages * P, hgt, ctas, sp, slots, max_len, kva::MAX_SPLITS,
                                        kva::WARPS, L->head_bytes, dt == KVC_DTYPE_FP4_E2M1);
                if (dw == KV_DECODE_HEADS || hc.heads) {
                        p.hw = 1;
                        ctas = gx = hc.hctas;
                        sp = hc.hsp;
                }
        }
        p.chunk = sp.chunk;
        p.splits = (uint32_t)sp.splits;
        p.row_chunk = captured && !tiled && p.splits > 1;
        p.rows = rows;
        p.hgt = (uint32_t)hgt;
        if (gx > 0x7FFFFFFFull)
                return kv_fail(-EINVAL, msg, msglen, "%s: %llu query rows x kv heads exceed the grid limit", c->op,
                               (unsigned long long)gx);

        /* CTAs of one row's kv heads are adjacent in launch order, so the
         * CTAs running together read whole token rows of the pool (all
         * heads), not one head's slice of many rows */
        pl->p = p;
        pl->grid = dim3((unsigned)gx, p.splits);
        pl->tiled = tiled;
        pl->qlo = qlo;
        pl->mt = mt;
        pl->pw = pw;
        pl->dev = dev;
        pl->D = D;
        pl->dt = dt;
        pl->ws_bytes = p.splits > 1 ? (size_t)rows * p.Hq * p.splits * (D + 2) * sizeof(float) : 0;
        return 0;
}

extern "C" int kv_attn_cuda_ws_bytes(const struct kv_pool_view *pv, const struct kv_attn_call *c,
                                     size_t *ret_bytes, char *msg, size_t msglen)
{
        /* a call plans as captured or not as its stream says; the query
         * has no stream (a graph's workspace is sized before its capture):
         * the larger of both plans serves the call either way */
        struct attn_plan eager, captured;
        int r = plan_call(pv, c, NULL, PLAN_EAGER, &eager, msg, msglen);
        if (r < 0)
                return r;
        if ((r = plan_call(pv, c, NULL, PLAN_CAPTURED, &captured, msg, msglen)) < 0)
                return r;
        *ret_bytes = eager.ws_bytes > captured.ws_bytes ? eager.ws_bytes : captured.ws_bytes;
        return 0;
}

extern "C" int kv_attn_cuda_run(const struct kv_pool_view *pv, const struct kv_attn_call *c, void *stream,
                                char *msg, size_t msglen)
{
        int r = kv_attn_ws_check(c->ws, c->ws_bytes, c->op, msg, msglen);
        if (r < 0)
                return r;
        struct attn_plan pl;
        if ((r = plan_call(pv, c, stream, PLAN_STREAM, &pl, msg, msglen)) < 0)
                return r;
        if (pl.p.rows == 0)
                return 0;
        /* where the arrays the kernels touch live (the host copies: in
         * plan_call); the workspace only on the pool's device, where the
         * partials are written and read back at full speed */
        const struct kv_mem_arg mem[] = {
                { c->q, "q", KV_MEM_GPU }, { c->out, "out", KV_MEM_GPU },
                { c->page_table, "page_table", KV_MEM_GPU }, { c->seq_lens, "seq_lens", KV_MEM_GPU },
                { c->qo_indptr, "qo_indptr", KV_MEM_GPU }, { c->ws, "workspace", KV_MEM_DEVICE },
        };
        if ((r = kv_cuda_check_mem(mem, sizeof mem / sizeof mem[0], c->op, msg, msglen)) < 0)
                return r;

        kva::params &p = pl.p;
        cudaStream_t st = (cudaStream_t)stream;
        void *ws = NULL, *own = NULL; /* own: taken here, given back after the launch */
        if (p.splits > 1) {
                if (c->ws) {
                        /* before any launch: a short workspace must not
                         * get partials written past its end */
                        if (c->ws_bytes < pl.ws_bytes)
                                return kv_fail(-ENOSPC, msg, msglen,
                                               "%s: workspace of %zu bytes is too small, the call needs %zu",
                                               c->op, c->ws_bytes, pl.ws_bytes);
                        ws = c->ws;
                } else {
                        cudaMemPool_t pool;
                        int pe = scratch_pool(pl.dev, &pool);
                        if (pe != 0)
                                return kv_cuda_errno(pe, "attention scratch pool (cudaMemPoolCreate)", msg, msglen);
                        cudaError_t e = cudaMallocFromPoolAsync(&own, pl.ws_bytes, pool, st);
                        if (e != cudaSuccess)
                                return kv_cuda_errno(e, "attention scratch (cudaMallocFromPoolAsync)", msg, msglen);
                        ws = own;
                }
                const size_t n = (size_t)p.rows * p.Hq * p.splits;
                p.part_o = (float *)ws;
                p.part_ml = (float *)ws + n * pl.D;
        }
        /* the dtype and head_dim have a kernel (plan_call's occupancy
         * query): r is 0 or a cudaError_t */
        if (pl.tiled)
                r = kv_prefill_launch((int)pl.dt, pl.D, pl.mt, pl.pw, pl.qlo, p, pl.grid, st, pl.dev, NULL);
        else
                kvk::with_dtype(pl.dt, [&](auto t) {
                        r = launch_d<decltype(t)::value>(pl.D, p, pl.grid, st, pl.dev, NULL);
                });
        cudaError_t e = r > 0 ? (cudaError_t)r : cudaGetLastError();
        if (own)
                cudaFreeAsync(own, st);
        if (e != cudaSuccess)
                return kv_cuda_errno(e, c->op, msg, msglen);
        return 0;
}

/* Paged decode attention on a CUDA pool (kv_ops.h): q, out, page_table and
 * seq_lens are device memory, seq_lens_host the host copy used to check the
 * lengths and plan the split.  Asynchronous on stream.  Page ids are
 * range-checked in the kernel: a key on an out-of-range page is skipped.
 * Returns 0 or a negative errno with msg naming the argument. */
extern "C" int kv_cuda_decode(const struct kv_pool_view *p, const struct kvc_decode_args *a, void *stream,
                              char *msg, size_t msglen)
{
        return kv_cuda_decode_ws(p, a, NULL, 0, stream, msg, msglen);
}

/* kv_cuda_decode with the caller's scratch for the split partials (ws, of
 * ws_bytes; NULL and 0: the library's own), kv_ops.h. */
extern "C" int kv_cuda_decode_ws(const struct kv_pool_view *p, const struct kvc_decode_args *a, void *ws,
                                 size_t ws_bytes, void *stream, char *msg, size_t msglen)
{
        struct kv_attn_call c;

        if (!a)
                return kv_fail(-EINVAL, msg, msglen, "decode: args are NULL");
        kv_attn_from_decode(a, &c);
        c.ws = ws;
        c.ws_bytes = ws_bytes;
        return kv_attn_cuda_run(p, &c, stream, msg, msglen);
}

/* The scratch kv_cuda_decode_ws needs for a, eagerly or captured (kv_ops.h). */
extern "C" int kv_cuda_decode_ws_bytes(const struct kv_pool_view *p, const struct kvc_decode_args *a,
                                       size_t *ret_bytes, char *msg, size_t msglen)
{
        struct kv_attn_call c;

        if (!a)
                return kv_fail(-EINVAL, msg, msglen, "decode: args are NULL");
        if (!ret_bytes)
                return kv_fail(-EINVAL, msg, msglen, "decode: ret_bytes is NULL");
        kv_attn_from_decode(a, &c);
        return kv_attn_cuda_ws_bytes(p, &c, ret_bytes, msg, msglen);
}
