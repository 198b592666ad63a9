/* test_attn.c - GPU decode and extend attention against the CPU reference
 * on the same pool bytes (suite 'gpu'; exits 77 without a CUDA device).
 *
 * The pool is written on the host with kv_ref_write (random N(0,1)-like K/V,
 * K with outlier channels), every byte the test does not write is random
 * poison (so a kernel that reads a slot past a sequence, or an unused page,
 * picks up garbage and NaNs), then copied to the device.  Outputs are
 * poisoned with NaN before each run.  For every dtype x head_dim {64, 128,
 * 256} x page size {1, 16, 128}: ragged lengths including 0, 1, a page
 * exactly, a page plus one, and random ones; GQA groups 1..12 (one and two
 * head groups of the kernel); bf16 and f16 q/out.  Then long sequences up to
 * 32k keys, extend with many rows per sequence (the tiled kernel, its key
 * split included) and with a few (rows packed into the decode kernel's
 * CTAs), a device page id out of range (the key is skipped), and every
 * argument error before any launch.  Every decode case runs with the
 * launcher's choice of how the decode kernel's warps share a CTA and again
 * with each way forced (kv_cuda_decode_warps: tiles, a kv head a warp).
 * Pass: for every (row, head), ||gpu - ref|| / ||ref|| <= 1e-2, no NaN, and
 * rows that see no key are exactly 0.  Last, the split partials in a
 * caller's workspace (kv_cuda_decode_ws, kv_cuda_extend_ws): eager, too
 * small, and captured into a graph with no allocation node that is cloned,
 * instantiated twice and embedded as a child graph. */
#include <errno.h>
#include <stdbool.h>
#include "gpu_common.h"

static int failures, cases;
/* q starts q_shift elements into its device buffer: 1 makes it only 2-byte
 * aligned, which takes the kernel's element-wise q load */
static uint32_t q_shift;
/* the cases' softmax scale is sm_mul / sqrt(head_dim) */
static float sm_mul = 1.0f;
/* run_case's extend calls take this kernel (kv_cuda_extend_kernel); with
 * KV_EXTEND_AUTO, the launcher's choice, each case then runs again on the
 * tiled kernel and on the decode kernel, each of which takes any extend
 * call: whichever the launcher picks, both are checked */
static int ext_kernel = KV_EXTEND_AUTO;
/* run_case's decode calls: the launcher's choice of how the decode
 * kernel's warps share a CTA (kv_cuda_decode_warps), then each case again
 * with the 4 warps of a CTA over one kv head's tiles and with a kv head a
 * warp */
static const int dec_modes[] = { KV_DECODE_AUTO, KV_DECODE_TILES, KV_DECODE_HEADS };
static const char *const dec_names[] = { "auto", "tiles", "heads" };
static double worst;

struct apool {
        struct kv_layout L;
        uint8_t *host, *dev;
        float ks[2], vs[2];
};

static struct kv_pool_view view(struct apool *P, int dev)
{
        struct kv_pool_view v = { .base = dev ? (void *)P->dev : (void *)P->host, .layout = P->L,
                                  .k_scale = P->ks, .v_scale = P->vs };
        return v;
}

/* A pool whose sequences b (lengths lens[b]) are written at random distinct
 * pages; *ret_pt gets the page table [B, max_pages] (unused entries -7). */
static int32_t *apool_fill(struct apool *P, struct rng *r, enum kvc_dtype d, uint32_t H, uint32_t D, uint32_t ps,
                           uint32_t B, const int32_t *lens, uint32_t *ret_max_pages)
{
        const uint32_t layers = 2, layer = 1;
        uint32_t need = 0, maxp = 1;
        for (uint32_t b = 0; b < B; b++) {
                uint32_t np = ((uint32_t)lens[b] + ps - 1) / ps;
                need += np;
                if (np + 1 > maxp)
                        maxp = np + 1;
        }
        const uint32_t pages = need + 3;
        struct kv_geom g = { .dtype = d, .num_layers = layers, .kv_heads = H, .head_dim = D, .page_size = ps };
        if (kv_layout_init(&g, pages, &P->L) < 0) {
                printf("FAIL: kv_layout_init\n");
                exit(1);
        }
        P->host = malloc(P->L.alloc_bytes);
        fill_poison(P->host, P->L.alloc_bytes, rng_next(r));
        P->ks[0] = P->ks[1] = 0.0213f;
        P->vs[0] = P->vs[1] = 0.0087f;

        uint32_t *perm = malloc(sizeof(uint32_t) * pages);
        for (uint32_t i = 0; i < pages; i++)
                perm[i] = i;
        for (uint32_t i = pages - 1; i > 0; i--) {
                uint32_t j = (uint32_t)(rng_next(r) % (i + 1)), t = perm[i];
                perm[i] = perm[j];
                perm[j] = t;
        }
        int32_t *pt = malloc(sizeof(int32_t) * B * maxp);
        uint32_t next = 0;
        for (uint32_t b = 0; b < B; b++) {
                uint32_t np = ((uint32_t)lens[b] + ps - 1) / ps;
                for (uint32_t i = 0; i < maxp; i++)
                        pt[b * maxp + i] = i < np ? (int32_t)perm[next++] : -7;
        }
        free(perm);

        /* K/V of every key: N(0,1) * 2.5, K with outlier channels 3 and 77 */
        const uint64_t row = (uint64_t)H * D;
        for (uint32_t b = 0; b < B; b++) {
                const uint32_t T = (uint32_t)lens[b];
                if (!T)
                        continue;
                float *k = malloc(sizeof(float) * T * row), *v = malloc(sizeof(float) * T * row);
                int64_t *slots = malloc(sizeof(int64_t) * T);
                for (uint64_t i = 0; i < T * row; i++) {
                        k[i] = rng_normal(r) * 2.5f;
                        v[i] = rng_normal(r) * 2.5f;
                        if (i % D == 3 || i % D == 77 % D)
                                k[i] *= 8.0f;
                }
                for (uint32_t j = 0; j < T; j++)
                        slots[j] = (int64_t)pt[b * maxp + j / ps] * ps + j % ps;
                struct kv_pool_view hv = view(P, 0);
                struct kvc_write_args wa = { .k = k, .v = v, .elem = KVC_ELEM_F32, .k_row_stride = (int64_t)row,
                                             .v_row_stride = (int64_t)row, .slots = slots, .num_tokens = T,
                                             .layer = layer };
                char msg[256] = "";
                int rc = kv_ref_write(&hv, &wa, msg, sizeof msg);
                if (rc < 0) {
                        printf("FAIL: kv_ref_write: %s\n", msg);
                        exit(1);
                }
                free(k);
                free(v);
                free(slots);
        }
        CK(cudaMalloc((void **)&P->dev, P->L.alloc_bytes));
        CK(cudaMemcpy(P->dev, P->host, P->L.alloc_bytes, cudaMemcpyHostToDevice));
        *ret_max_pages = maxp;
        return pt;
}

static void apool_fini(struct apool *P)
{
        free(P->host);
        cudaFree(P->dev);
}

static void *to_dev(const void *h, size_t n)
{
        void *d;
        CK(cudaMalloc(&d, n ? n : 4));
        if (n && h)
                CK(cudaMemcpy(d, h, n, cudaMemcpyHostToDevice));
        return d;
}

static float get_out(const uint16_t *o, enum kvc_elem e, size_t i)
{
        return e == KVC_ELEM_BF16 ? kv_bf16_to_f32(o[i]) : kv_f16_to_f32(o[i]);
}

/* Compares rows x Hq x D outputs per (row, head). */
static void compare(const char *what, const uint16_t *g, const uint16_t *ref, enum kvc_elem e, uint32_t rows,
                    uint32_t Hq, uint32_t D)
{
        for (uint32_t r = 0; r < rows; r++) {
                for (uint32_t h = 0; h < Hq; h++) {
                        double num = 0, den = 0;
                        int nan = 0;
                        for (uint32_t d = 0; d < D; d++) {
                                size_t i = ((size_t)r * Hq + h) * D + d;
                                float a = get_out(g, e, i), b = get_out(ref, e, i);
                                if (isnan(a) || isnan(b))
                                        nan = 1;
                                num += (double)(a - b) * (a - b);
                                den += (double)b * b;
                        }
                        if (nan) {
                                EXPECT(0, "%s: row %u head %u: NaN in the output", what, r, h);
                                return;
                        }
                        if (den == 0) {
                                EXPECT(num == 0, "%s: row %u head %u: reference is 0, gpu is not", what, r, h);
                                continue;
                        }
                        double rel = sqrt(num / den);
                        if (rel > worst)
                                worst = rel;
                        if (rel > 1e-2) {
                                EXPECT(0, "%s: row %u head %u: relative error %.3g > 1e-2", what, r, h, rel);
                                return;
                        }
                }
        }
}

static void *make_q(struct rng *r, enum kvc_elem e, size_t n)
{
        uint16_t *q = malloc(n * 2 + 2);
        for (size_t i = 0; i < n; i++)
                put_elem(q, e, i, rng_normal(r));
        return q;
}

/* One decode (qn == NULL) or extend (qn[b] = new queries of sequence b) case. */
static void run_case(enum kvc_dtype d, uint32_t D, uint32_t ps, uint32_t H, uint32_t G, uint32_t B,
                     const int32_t *lens, const int32_t *qn, enum kvc_elem e, uint64_t seed)
{
        struct rng r = { seed * 2654435761u + 1 };
        struct apool P;
        uint32_t maxp;
        char what[200], msg[256] = "";
        const uint32_t Hq = H * G;

        cases++;
        snprintf(what, sizeof what, "%s %s D=%u page=%u H=%u G=%u B=%u len0=%d elem=%s%s", qn ? "extend" : "decode",
                 kvc_dtype_name(d), D, ps, H, G, B, lens[0], e == KVC_ELEM_BF16 ? "bf16" : "f16",
                 q_shift ? " q 2-byte aligned" : "");
        int32_t *pt = apool_fill(&P, &r, d, H, D, ps, B, lens, &maxp);
        int32_t *indptr = malloc(sizeof(int32_t) * (B + 1));
        indptr[0] = 0;
        for (uint32_t b = 0; b < B; b++)
                indptr[b + 1] = indptr[b] + (qn ? qn[b] : 1);
        const uint32_t rows = (uint32_t)indptr[B];
        const size_t n = (size_t)rows * Hq * D;
        void *q = make_q(&r, e, n);
        uint16_t *ref = malloc(n * 2 + 2), *got = malloc(n * 2 + 2);
        uint16_t *dqbuf = to_dev(NULL, n * 2 + 16);
        CK(cudaMemcpy(dqbuf + q_shift, q, n * 2, cudaMemcpyHostToDevice));
        void *dq = dqbuf + q_shift, *dout = to_dev(NULL, n * 2);
        int32_t *dpt = to_dev(pt, sizeof(int32_t) * B * maxp), *dlens = to_dev(lens, sizeof(int32_t) * B);
        int32_t *dind = to_dev(indptr, sizeof(int32_t) * (B + 1));
        CK(cudaMemset(dout, 0xFF, n * 2)); /* NaN in bf16 and f16 */
        struct kv_pool_view hv = view(&P, 0), dv = view(&P, 1);
        const float sm = sm_mul / sqrtf((float)D);
        int rc, rr, passes = 1;

        if (!qn) {
                struct kvc_decode_args a = { .q = dq, .out = dout, .elem = e, .page_table = dpt, .max_pages = maxp,
                                             .seq_lens = dlens, .seq_lens_host = lens, .batch = B,
                                             .num_q_heads = Hq, .sm_scale = sm, .layer = 1 };
                struct kvc_decode_args h = a;
                h.q = q;
                h.out = ref;
                h.page_table = pt;
                h.seq_lens = lens;
                rr = kv_ref_decode(&hv, &h, msg, sizeof msg);
                EXPECT(rr == 0, "%s: kv_ref_decode returned %d: %s", what, rr, msg);
                for (int pass = 0; pass < 3; pass++) {
                        char kw[240];
                        snprintf(kw, sizeof kw, "%s warps=%s", what, dec_names[pass]);
                        CK(cudaMemset(dout, 0xFF, n * 2));
                        const int prev = kv_cuda_decode_warps(dec_modes[pass]);
                        EXPECT(prev >= 0, "%s: kv_cuda_decode_warps failed", kw);
                        rc = kv_cuda_decode(&dv, &a, NULL, msg, sizeof msg);
                        kv_cuda_decode_warps(prev >= 0 ? prev : KV_DECODE_AUTO);
                        EXPECT(rc == 0, "%s: kv_cuda_decode returned %d: %s", kw, rc, msg);
                        CK(cudaDeviceSynchronize());
                        CK(cudaMemcpy(got, dout, n * 2, cudaMemcpyDeviceToHost));
                        if (rc == 0 && rr == 0)
                                compare(kw, got, ref, e, rows, Hq, D);
                }
        } else {
                struct kvc_extend_args a = { .q = dq, .out = dout, .elem = e, .qo_indptr = dind,
                                             .qo_indptr_host = indptr, .page_table = dpt, .max_pages = maxp,
                                             .seq_lens = dlens, .seq_lens_host = lens, .batch = B,
                                             .num_q_heads = Hq, .sm_scale = sm, .layer = 1 };
                struct kvc_extend_args h = a;
                h.q = q;
                h.out = ref;
                h.qo_indptr = indptr;
                h.page_table = pt;
                h.seq_lens = lens;
                rr = kv_ref_extend(&hv, &h, msg, sizeof msg);
                EXPECT(rr == 0, "%s: kv_ref_extend returned %d: %s", what, rr, msg);
                /* the last pass: the decode kernel with a kv head a warp
                 * (where its rows are not packed; packed rows ignore it) */
                static const int again[] = { KV_EXTEND_TILED, KV_EXTEND_DECODE, KV_EXTEND_DECODE };
                passes = ext_kernel == KV_EXTEND_AUTO ? 4 : 1;
                for (int pass = 0; pass < passes; pass++) {
                        const int k = pass == 0 ? ext_kernel : again[pass - 1];
                        const bool heads = pass == 3;
                        char kw[240];
                        snprintf(kw, sizeof kw, "%s kernel=%s", what,
                                 k == KV_EXTEND_AUTO ? "auto" : k == KV_EXTEND_TILED ? "tiled"
                                                                : heads ? "decode/heads" : "decode");
                        CK(cudaMemset(dout, 0xFF, n * 2));
                        EXPECT(kv_cuda_extend_kernel(k) >= 0, "%s: kv_cuda_extend_kernel(%d) failed", kw, k);
                        const int prev = heads ? kv_cuda_decode_warps(KV_DECODE_HEADS) : -1;
                        rc = kv_cuda_extend(&dv, &a, NULL, msg, sizeof msg);
                        kv_cuda_extend_kernel(KV_EXTEND_AUTO);
                        if (prev >= 0)
                                kv_cuda_decode_warps(prev);
                        EXPECT(rc == 0, "%s: kv_cuda_extend returned %d: %s", kw, rc, msg);
                        CK(cudaDeviceSynchronize());
                        CK(cudaMemcpy(got, dout, n * 2, cudaMemcpyDeviceToHost));
                        if (rc == 0 && rr == 0)
                                compare(kw, got, ref, e, rows, Hq, D);
                }
        }

        cudaFree(dqbuf);
        cudaFree(dout);
        cudaFree(dpt);
        cudaFree(dlens);
        cudaFree(dind);
        free(q);
        free(ref);
        free(got);
        free(pt);
        free(indptr);
        apool_fini(&P);
}

static void shapes(void)
{
        static const enum kvc_dtype dts[] = { KVC_DTYPE_BF16, KVC_DTYPE_FP16, KVC_DTYPE_FP8_E4M3,
                                              KVC_DTYPE_FP8_E5M2, KVC_DTYPE_FP4_E2M1 };
        static const uint32_t Ds[] = { 64, 128, 256 }, pss[] = { 1, 16, 128 }, Gs[] = { 1, 4, 8, 3, 12, 5 };
        uint64_t seed = 1;

        for (int di = 0; di < 5; di++) {
                for (int hi = 0; hi < 3; hi++) {
                        for (int pi = 0; pi < 3; pi++) {
                                const uint32_t ps = pss[pi], D = Ds[hi];
                                struct rng r = { ++seed * 977 };
                                const uint32_t G = Gs[(di + hi + pi) % 6], H = 1 + (uint32_t)(rng_next(&r) % 3);
                                const enum kvc_elem e = (di + pi) % 2 ? KVC_ELEM_F16 : KVC_ELEM_BF16;
                                /* 1, a page exactly, a page + 1, 0 keys, random up to 700 */
                                int32_t lens[6] = { 1, (int32_t)ps, (int32_t)ps + 1, 0,
                                                    1 + (int32_t)(rng_next(&r) % 700),
                                                    1 + (int32_t)(rng_next(&r) % 300) };
                                run_case(dts[di], D, ps, H, G, 6, lens, NULL, e, seed);
                                /* extend: whole prefill, 1 new, several new, none, chunk */
                                int32_t qn[6] = { 1, (int32_t)ps, 1 + (int32_t)ps / 2, 0,
                                                  1 + (int32_t)(rng_next(&r) % 40), 17 };
                                int32_t el[6] = { 1, (int32_t)ps, (int32_t)ps + 1, 5, lens[4] + qn[4],
                                                  lens[5] + 17 };
                                run_case(dts[di], D, ps, H, G, 6, el, qn, e, seed + 1000);
                        }
                }
        }
}

static void long_sequences(void)
{
        /* up to 32k keys: split over the sequence with a reduction */
        int32_t lens[3] = { 32768, 20001, 4097 };
        run_case(KVC_DTYPE_BF16, 128, 16, 2, 4, 3, lens, NULL, KVC_ELEM_BF16, 77);
        run_case(KVC_DTYPE_FP8_E4M3, 128, 16, 2, 4, 3, lens, NULL, KVC_ELEM_BF16, 78);
        run_case(KVC_DTYPE_FP4_E2M1, 128, 16, 2, 4, 3, lens, NULL, KVC_ELEM_BF16, 79);
        int32_t l1[1] = { 32768 };
        run_case(KVC_DTYPE_FP8_E5M2, 256, 128, 1, 8, 1, l1, NULL, KVC_ELEM_F16, 80);
        run_case(KVC_DTYPE_FP16, 64, 1, 1, 8, 1, l1, NULL, KVC_ELEM_F16, 81);
        /* page sizes that are not powers of two: a multiple of 16 (one page
         * lookup per 16-key tile, by division) and not (one per key) */
        int32_t odd[4] = { 1000, 47, 48, 97 };
        run_case(KVC_DTYPE_FP8_E4M3, 128, 48, 2, 4, 4, odd, NULL, KVC_ELEM_BF16, 84);
        run_case(KVC_DTYPE_BF16, 64, 24, 2, 3, 4, odd, NULL, KVC_ELEM_F16, 85);
        run_case(KVC_DTYPE_FP4_E2M1, 128, 80, 1, 8, 4, odd, NULL, KVC_ELEM_BF16, 86);
        int32_t oq[4] = { 100, 47, 1, 30 };
        run_case(KVC_DTYPE_FP8_E5M2, 128, 48, 2, 4, 4, odd, oq, KVC_ELEM_BF16, 87);
        int32_t el[2] = { 9000, 700 }, qn[2] = { 300, 700 };
        run_case(KVC_DTYPE_FP4_E2M1, 128, 16, 2, 4, 2, el, qn, KVC_ELEM_BF16, 82);
        run_case(KVC_DTYPE_BF16, 128, 16, 2, 4, 2, el, qn, KVC_ELEM_BF16, 83);
        /* q not 16-byte aligned: every dtype, both q types, decode and extend */
        q_shift = 1;
        int32_t ml[3] = { 3000, 17, 1 };
        run_case(KVC_DTYPE_BF16, 128, 16, 2, 4, 3, ml, NULL, KVC_ELEM_F16, 88);
        run_case(KVC_DTYPE_FP16, 64, 16, 2, 4, 3, ml, NULL, KVC_ELEM_BF16, 89);
        run_case(KVC_DTYPE_FP8_E4M3, 256, 32, 2, 4, 3, ml, NULL, KVC_ELEM_BF16, 90);
        run_case(KVC_DTYPE_FP8_E5M2, 128, 8, 2, 4, 3, ml, NULL, KVC_ELEM_F16, 91);
        run_case(KVC_DTYPE_FP4_E2M1, 128, 16, 2, 4, 3, ml, NULL, KVC_ELEM_BF16, 92);
        run_case(KVC_DTYPE_FP4_E2M1, 256, 16, 2, 4, 2, el, qn, KVC_ELEM_F16, 93);
        q_shift = 0;
}

/* Extend with many rows per sequence on the tiled kernel
 * (kv_attn_prefill.cuh; forced: the launcher takes it from 128 rows x q
 * heads per kv head a sequence on average, 80 with 4 sequences or more,
 * but hands short launches to the decode kernel).  Tiles of 64 or 128
 * query vectors that cut a row's heads (G = 3, 5), rows that see a whole
 * prefill (no cached keys), sequences with 0 and 1 new rows next to long
 * ones, page sizes that are not a
 * multiple of the 64-key tile, every dtype and head_dim, both q types (f16
 * q on a bf16/fp4 pool: the two-term q kernels), and a long prefix under
 * few tiles, which splits the keys and runs the reduction. */
static void prefill_tiles(void)
{
        static const enum kvc_dtype dts[] = { KVC_DTYPE_BF16, KVC_DTYPE_FP16, KVC_DTYPE_FP8_E4M3,
                                              KVC_DTYPE_FP8_E5M2, KVC_DTYPE_FP4_E2M1 };
        static const uint32_t Ds[] = { 64, 128, 256 }, pss[] = { 16, 1, 48 }, Gs[] = { 4, 1, 3, 8, 5 };
        uint64_t seed = 300;

        /* every case here on the tiled kernel: the launcher hands the
         * short ones (few keys) to the decode kernel (kva::decode_is_short) */
        ext_kernel = KV_EXTEND_TILED;
        for (int di = 0; di < 5; di++) {
                for (int hi = 0; hi < 3; hi++) {
                        const uint32_t D = Ds[hi], ps = pss[(di + hi) % 3], G = Gs[(di + 2 * hi) % 5];
                        const uint32_t H = 1 + (uint32_t)((di + hi) % 2);
                        const enum kvc_elem e = (di + hi) % 2 ? KVC_ELEM_F16 : KVC_ELEM_BF16;
                        /* cached + new: 180 + 520, a whole prefill of 129,
                         * 64 + 33, 1 + 1, 17 + 0 (683 rows: tiled at G = 1) */
                        int32_t qn[5] = { 520, 129, 33, 1, 0 };
                        int32_t el[5] = { 700, 129, 97, 2, 17 };
                        run_case(dts[di], D, ps, H, G, 5, el, qn, e, ++seed);
                }
        }
        /* one sequence, a long prefix, 40 new rows: 2 or 3 tiles per kv
         * head, so the keys are split (partials and attn_reduce) */
        int32_t l1[1] = { 20040 }, q1[1] = { 40 };
        run_case(KVC_DTYPE_FP8_E4M3, 128, 16, 2, 4, 1, l1, q1, KVC_ELEM_BF16, 401);
        run_case(KVC_DTYPE_FP4_E2M1, 128, 16, 2, 4, 1, l1, q1, KVC_ELEM_BF16, 402);
        run_case(KVC_DTYPE_BF16, 256, 32, 1, 8, 1, l1, q1, KVC_ELEM_BF16, 403);
        run_case(KVC_DTYPE_FP16, 64, 16, 2, 4, 1, l1, q1, KVC_ELEM_F16, 404);
        run_case(KVC_DTYPE_BF16, 64, 16, 2, 4, 1, l1, q1, KVC_ELEM_F16, 414); /* two-term q, split */
        /* tiles of 64 vectors that fill more than half the GPU, of 128
         * less than a wave: one m-tile per warp (on a 132-SM H200; any GPU
         * runs one of the two and must match the reference) */
        int32_t l3[1] = { 1200 }, q3[1] = { 1100 };
        run_case(KVC_DTYPE_FP4_E2M1, 128, 16, 2, 4, 1, l3, q3, KVC_ELEM_BF16, 407);
        run_case(KVC_DTYPE_BF16, 128, 16, 2, 4, 1, l3, q3, KVC_ELEM_BF16, 409);
        run_case(KVC_DTYPE_FP8_E4M3, 128, 16, 2, 4, 1, l3, q3, KVC_ELEM_F16, 410);
        int32_t l4[1] = { 1750 }, q4[1] = { 1700 };
        run_case(KVC_DTYPE_FP8_E5M2, 64, 16, 2, 4, 1, l4, q4, KVC_ELEM_F16, 408);
        run_case(KVC_DTYPE_BF16, 64, 16, 2, 4, 1, l4, q4, KVC_ELEM_BF16, 411);
        /* tiles that make a wave: two m-tiles, no split (the output
         * written by the tiled kernel itself); 8 warps for the bf16 pool
         * at head_dim 128 with bf16 q, 4 for the others */
        int32_t l5[2] = { 700, 650 }, q5[2] = { 600, 600 };
        run_case(KVC_DTYPE_BF16, 128, 16, 8, 4, 2, l5, q5, KVC_ELEM_BF16, 412);
        run_case(KVC_DTYPE_FP4_E2M1, 64, 16, 8, 4, 2, l5, q5, KVC_ELEM_BF16, 413);
        run_case(KVC_DTYPE_BF16, 128, 16, 8, 4, 2, l5, q5, KVC_ELEM_F16, 416); /* two-term q, two m-tiles */
        run_case(KVC_DTYPE_FP4_E2M1, 128, 16, 8, 4, 2, l5, q5, KVC_ELEM_F16, 417);
        run_case(KVC_DTYPE_FP4_E2M1, 128, 16, 8, 4, 2, l5, q5, KVC_ELEM_BF16, 418); /* 64-key tiles */
        /* 8-warp CTAs (16-bit and fp8 pools at head_dim 128, where their
         * CTAs fill a wave without a split: kv_attn_decode.cu plan_tiles):
         * 20 tiles of 256 vectors x 8 kv heads, two m-tiles; then one
         * sequence of 560 rows, 9 tiles of 256 (under a wave) or 18 of 128,
         * one m-tile */
        run_case(KVC_DTYPE_FP16, 128, 16, 8, 4, 2, l5, q5, KVC_ELEM_F16, 419);
        run_case(KVC_DTYPE_FP8_E5M2, 128, 16, 8, 4, 2, l5, q5, KVC_ELEM_BF16, 420);
        int32_t l6[1] = { 660 }, q6[1] = { 560 };
        run_case(KVC_DTYPE_BF16, 128, 16, 8, 4, 1, l6, q6, KVC_ELEM_BF16, 421);
        run_case(KVC_DTYPE_FP8_E4M3, 128, 16, 8, 4, 1, l6, q6, KVC_ELEM_F16, 422);
        /* 40 sequences of 40 rows (160 vectors a kv head at G = 4): the
         * grid's last tile of each sequence holds 32 vectors or none (in
         * tiles of 64, 140 a kv head of which 120 hold vectors; the planner
         * counts those) */
        enum { NS = 40 };
        int32_t l8[NS], q8[NS];
        for (int i = 0; i < NS; i++) {
                q8[i] = 40;
                l8[i] = 40 + 37 * i;
        }
        run_case(KVC_DTYPE_FP8_E5M2, 128, 16, 2, 4, NS, l8, q8, KVC_ELEM_BF16, 431);
        run_case(KVC_DTYPE_BF16, 64, 16, 2, 4, NS, l8, q8, KVC_ELEM_F16, 432);
        /* 36 sequences of 128 rows at G = 1, one of them 2200 keys long:
         * 288 tiles of 128 vectors, more than a wave of two a SM on a
         * 132-SM H200, which the planner splits in two (chunks of at least
         * 1024 keys, KVA_PSFLOOR) */
        enum { NW = 36 };
        int32_t l9[NW], q9[NW];
        for (int i = 0; i < NW; i++) {
                q9[i] = 128;
                l9[i] = i == NW - 1 ? 2200 : 128 + 9 * i;
        }
        run_case(KVC_DTYPE_BF16, 128, 16, 8, 1, NW, l9, q9, KVC_ELEM_BF16, 433);
        run_case(KVC_DTYPE_FP4_E2M1, 128, 16, 8, 1, NW, l9, q9, KVC_ELEM_BF16, 434);
        /* decode of 34 rows of up to 4096 keys, 8 kv heads: 272 CTAs on a
         * 132-SM H200's 264 slots (bf16, fp8), a last wave of 8, which the
         * planner splits in 4 (chunks of at least 1024 keys: decode_floor) */
        enum { NX = 34 };
        int32_t lx[NX];
        for (int i = 0; i < NX; i++)
                lx[i] = 4096 - (i * 97) % 700;
        run_case(KVC_DTYPE_FP8_E4M3, 128, 16, 8, 4, NX, lx, NULL, KVC_ELEM_BF16, 435);
        run_case(KVC_DTYPE_BF16, 128, 16, 8, 4, NX, lx, NULL, KVC_ELEM_F16, 436);
        /* q only 2-byte aligned: the element-wise q load */
        q_shift = 1;
        int32_t l2[2] = { 700, 64 }, q2[2] = { 300, 64 };
        run_case(KVC_DTYPE_FP8_E5M2, 128, 16, 2, 4, 2, l2, q2, KVC_ELEM_BF16, 405);
        run_case(KVC_DTYPE_FP4_E2M1, 64, 16, 2, 4, 2, l2, q2, KVC_ELEM_BF16, 406);
        run_case(KVC_DTYPE_FP4_E2M1, 64, 48, 2, 3, 2, l2, q2, KVC_ELEM_F16, 415); /* two-term q, G = 3 */
        q_shift = 0;
        /* a negative and a zero softmax scale: the tiled kernel takes the
         * max of the raw scores, with the scale's sign folded into q; 0
         * (every visible key weighs the same) runs as the smallest normal
         * scale; the decode kernel beside it */
        sm_mul = -1.0f;
        run_case(KVC_DTYPE_BF16, 128, 16, 8, 4, 2, l5, q5, KVC_ELEM_BF16, 423); /* 8 warps, two m-tiles */
        run_case(KVC_DTYPE_BF16, 128, 16, 2, 4, 1, l3, q3, KVC_ELEM_BF16, 429); /* one m-tile, q in registers */
        run_case(KVC_DTYPE_FP8_E4M3, 128, 16, 8, 4, 1, l6, q6, KVC_ELEM_F16, 430); /* fp8, 8 warps, one m-tile */
        run_case(KVC_DTYPE_FP4_E2M1, 128, 16, 2, 4, 2, l2, q2, KVC_ELEM_F16, 424); /* two-term q */
        run_case(KVC_DTYPE_FP8_E5M2, 128, 16, 2, 4, 2, l2, NULL, KVC_ELEM_BF16, 425); /* decode */
        sm_mul = 0.0f;
        run_case(KVC_DTYPE_FP8_E4M3, 128, 16, 8, 4, 1, l6, q6, KVC_ELEM_BF16, 426); /* 8 warps, one m-tile */
        run_case(KVC_DTYPE_BF16, 64, 16, 2, 4, 2, l2, q2, KVC_ELEM_BF16, 427);
        run_case(KVC_DTYPE_FP16, 128, 16, 2, 4, 2, l2, NULL, KVC_ELEM_F16, 428); /* decode */
        sm_mul = 1.0f;
        ext_kernel = KV_EXTEND_AUTO;
}

/* Extend with a few new rows per sequence and at most 4 q heads a kv head:
 * the decode kernel takes 8 / G rows of one sequence a CTA (kv_attn_decode.cu
 * p.pack), each row with its own horizon.  Every dtype and head_dim, G = 1
 * to 4 (3: 6 of the 8 columns), page sizes 16, 1 and 48: sequences of 2 to
 * 9 new rows (packs cut inside a sequence, a last pack of one row), of 1 and
 * of 0, prefixes of 0, 1 and a page; then a long prefix under few CTAs (the
 * keys split, partials and attn_reduce), f16 q on the two-term q kernels,
 * q only 2-byte aligned, and more CTAs than a wave. */
static void packed_rows(void)
{
        static const enum kvc_dtype dts[] = { KVC_DTYPE_BF16, KVC_DTYPE_FP16, KVC_DTYPE_FP8_E4M3,
                                              KVC_DTYPE_FP8_E5M2, KVC_DTYPE_FP4_E2M1 };
        static const uint32_t Ds[] = { 64, 128, 256 }, pss[] = { 16, 1, 48 }, Gs[] = { 4, 1, 2, 3 };
        uint64_t seed = 500;

        for (int di = 0; di < 5; di++) {
                for (int hi = 0; hi < 3; hi++) {
                        const uint32_t D = Ds[hi], ps = pss[(di + hi) % 3], G = Gs[(di + hi) % 4];
                        const uint32_t H = 1 + (uint32_t)((di + hi) % 2);
                        /* f16 q here on the fp16 and e5m2 pools; the
                         * two-term q kernels have their cases below */
                        const enum kvc_elem e = di % 2 ? KVC_ELEM_F16 : KVC_ELEM_BF16;
                        int32_t qn[7] = { 2, 3, 9, 5, 1, 0, 4 };
                        int32_t el[7] = { 2, 4, 9 + (int32_t)ps, 700, 300, 17, 4 + 16 * (int32_t)ps };
                        run_case(dts[di], D, ps, H, G, 7, el, qn, e, ++seed);
                }
        }
        /* one and two sequences of long prefixes: a few CTAs, keys split */
        int32_t l1[1] = { 20003 }, q1[1] = { 4 };
        run_case(KVC_DTYPE_FP8_E4M3, 128, 16, 2, 4, 1, l1, q1, KVC_ELEM_BF16, 521);
        run_case(KVC_DTYPE_FP4_E2M1, 128, 16, 2, 4, 1, l1, q1, KVC_ELEM_F16, 522);
        /* 30 rows of one sequence (120 and 60 vectors: under the tiled
         * kernel's 128): 15 and 8 packs, keys split */
        int32_t l7[1] = { 20030 }, q7[1] = { 30 };
        run_case(KVC_DTYPE_FP8_E4M3, 128, 16, 2, 4, 1, l7, q7, KVC_ELEM_BF16, 536);
        run_case(KVC_DTYPE_FP4_E2M1, 64, 16, 2, 2, 1, l7, q7, KVC_ELEM_BF16, 537);
        /* several sequences of 80 to 127 vectors (4 x 24 rows at G = 4, 8 x
         * 44 at G = 2), where take_tiled (kv_attn_plan.cuh) takes the tiled
         * kernel, and decode_is_short, at these few keys, the decode kernel:
         * both run (ext_kernel auto) */
        int32_t lb[4] = { 1100, 2500, 700, 3000 }, qb[4] = { 24, 24, 24, 24 };
        run_case(KVC_DTYPE_FP8_E5M2, 128, 16, 2, 4, 4, lb, qb, KVC_ELEM_BF16, 538);
        int32_t lc[8] = { 44, 300, 1000, 45, 2047, 600, 90, 1500 }, qc[8] = { 44, 44, 44, 44, 44, 44, 44, 44 };
        run_case(KVC_DTYPE_FP4_E2M1, 64, 16, 2, 2, 8, lc, qc, KVC_ELEM_F16, 539);
        int32_t l2[2] = { 9000, 33 }, q2[2] = { 9, 7 };
        run_case(KVC_DTYPE_BF16, 128, 16, 1, 1, 2, l2, q2, KVC_ELEM_BF16, 523);
        run_case(KVC_DTYPE_FP8_E5M2, 64, 16, 4, 2, 2, l2, q2, KVC_ELEM_F16, 524);
        run_case(KVC_DTYPE_FP4_E2M1, 256, 32, 2, 3, 2, l2, q2, KVC_ELEM_BF16, 525);
        /* f16 q on bf16 and fp4 pools (the two-term q kernels) at G = 1,
         * 2, 3 and every head_dim; then q only 2-byte aligned (the
         * element-wise q load) */
        static const enum kvc_dtype bfs[] = { KVC_DTYPE_BF16, KVC_DTYPE_FP4_E2M1 };
        static const uint32_t G3[] = { 1, 2, 3 };
        for (int di = 0; di < 2; di++)
                for (int hi = 0; hi < 3; hi++) {
                        int32_t qn[4] = { 9, 2, 0, 5 }, el[4] = { 300, 2, 40, 69 };
                        run_case(bfs[di], Ds[hi], 16, 2, G3[(di + hi) % 3], 4, el, qn, KVC_ELEM_F16, 530 + 3 * di + hi);
                }
        q_shift = 1;
        int32_t el3[3] = { 300, 47, 5 }, qn3[3] = { 6, 3, 5 };
        run_case(KVC_DTYPE_FP8_E4M3, 128, 16, 2, 4, 3, el3, qn3, KVC_ELEM_BF16, 540);
        run_case(KVC_DTYPE_FP4_E2M1, 64, 16, 2, 1, 3, el3, qn3, KVC_ELEM_F16, 541);
        run_case(KVC_DTYPE_BF16, 256, 48, 1, 2, 3, el3, qn3, KVC_ELEM_BF16, 542);
        q_shift = 0;
        /* 300 sequences of 1 to 4 new rows: several waves, no split */
        enum { N = 300 };
        static int32_t lens[N], qn[N];
        struct rng r = { 556 };
        for (int i = 0; i < N; i++) {
                qn[i] = 1 + i % 4;
                lens[i] = qn[i] + (int32_t)(rng_next(&r) % 500);
        }
        run_case(KVC_DTYPE_FP8_E4M3, 128, 16, 2, 4, N, lens, qn, KVC_ELEM_BF16, 526);
        run_case(KVC_DTYPE_FP4_E2M1, 128, 16, 2, 4, N, lens, qn, KVC_ELEM_BF16, 527);
        run_case(KVC_DTYPE_BF16, 128, 16, 2, 4, N, lens, qn, KVC_ELEM_F16, 528);
}

/* More CTAs than the GPU holds at once (several waves, no split), every
 * pool dtype, both q types: ragged lengths with empty rows, one-key rows
 * and rows of whole pages, so that some warps of a CTA have no keys. */
static void many_rows(void)
{
        enum { N = 300 };
        static int32_t lens[N];
        struct rng r = { 555 };

        for (int i = 0; i < N; i++)
                lens[i] = i % 7 == 0 ? 0 : i % 11 == 0 ? 1 + (i % 3) * 16 : 1 + (int32_t)(rng_next(&r) % 400);
        run_case(KVC_DTYPE_FP8_E4M3, 128, 16, 2, 4, N, lens, NULL, KVC_ELEM_BF16, 95);
        run_case(KVC_DTYPE_FP8_E5M2, 64, 32, 3, 4, N, lens, NULL, KVC_ELEM_F16, 96);
        run_case(KVC_DTYPE_BF16, 128, 16, 2, 4, N, lens, NULL, KVC_ELEM_BF16, 97);
        run_case(KVC_DTYPE_FP16, 256, 16, 2, 8, N, lens, NULL, KVC_ELEM_F16, 98);
        run_case(KVC_DTYPE_FP4_E2M1, 128, 16, 2, 4, N, lens, NULL, KVC_ELEM_BF16, 99);
        run_case(KVC_DTYPE_BF16, 128, 16, 2, 4, N, lens, NULL, KVC_ELEM_F16, 100);
        /* 128 rows of 512 keys, 8 kv heads of 4 q heads: where the launcher
         * takes a kv head a warp itself (kva::take_heads; not for fp4,
         * whose 4 CTAs an SM leave the heads CTAs half the slots), on the
         * page16 path, one key a page and 128 keys a page */
        enum { U = 128 };
        static int32_t ulens[U];
        for (int i = 0; i < U; i++)
                ulens[i] = 512;
        run_case(KVC_DTYPE_BF16, 128, 16, 8, 4, U, ulens, NULL, KVC_ELEM_BF16, 101);
        run_case(KVC_DTYPE_FP8_E5M2, 128, 1, 8, 4, U, ulens, NULL, KVC_ELEM_BF16, 102);
        run_case(KVC_DTYPE_FP8_E4M3, 128, 128, 8, 4, U, ulens, NULL, KVC_ELEM_F16, 103);
        run_case(KVC_DTYPE_FP4_E2M1, 128, 16, 8, 4, U, ulens, NULL, KVC_ELEM_BF16, 104);
}

/* The reference's row of a page table whose entry j is out of range: the
 * other maxp - 1 entries in order, then a filler the reference never reads
 * (its length is a page shorter). */
static void without_entry(const int32_t *row, int32_t *rrow, uint32_t maxp, uint32_t j)
{
        for (uint32_t i = 0, o = 0; i < maxp; i++)
                if (i != j)
                        rrow[o++] = row[i];
        rrow[maxp - 1] = -7;
}

/* Device copies of a bad-page call's page table, lengths, qo_indptr (extend
 * only: nlens + 1 entries), q and an output of q's size (nout bytes each;
 * the output poisoned with NaN). */
struct devcall {
        int32_t *pt, *lens, *ind;
        void *q, *out;
        size_t nout;
};

static void devcall_init(struct devcall *c, const int32_t *pt, size_t npt, const int32_t *lens, size_t nlens,
                         const int32_t *ind, const void *q, size_t nout)
{
        c->pt = to_dev(pt, npt * sizeof *pt);
        c->lens = to_dev(lens, nlens * sizeof *lens);
        c->ind = ind ? to_dev(ind, (nlens + 1) * sizeof *ind) : NULL;
        c->q = to_dev(q, nout);
        c->out = to_dev(NULL, nout);
        c->nout = nout;
        CK(cudaMemset(c->out, 0xFF, nout)); /* NaN in bf16 */
}

/* Waits for the call, copies its output to got and frees the copies. */
static void devcall_finish(struct devcall *c, void *got)
{
        CK(cudaDeviceSynchronize());
        CK(cudaMemcpy(got, c->out, c->nout, cudaMemcpyDeviceToHost));
        cudaFree(c->pt);
        cudaFree(c->lens);
        if (c->ind)
                cudaFree(c->ind);
        cudaFree(c->q);
        cudaFree(c->out);
}

/* Destroys a graph case's executable graph, graph and stream. */
static void graph_free(cudaGraphExec_t ge, cudaGraph_t g, cudaStream_t st)
{
        CK(cudaGraphExecDestroy(ge));
        CK(cudaGraphDestroy(g));
        CK(cudaStreamDestroy(st));
}

/* Ends the capture of one library call on st (which returned rc, with
 * msg) and instantiates its graph into *ge.  Returns 1 with *g and *ge set;
 * 0 after counting the failure (the call's error, or the capture's, named
 * with `what`), with the stream destroyed and nothing left to free: a
 * failed call must fail the test with its own message, not stop it at the
 * next CUDA call (a call that failed inside a capture can invalidate it). */
static int capture_end(cudaStream_t st, int rc, const char *msg, const char *what, cudaGraph_t *g,
                       cudaGraphExec_t *ge)
{
        *g = NULL;
        cudaError_t ce = cudaStreamEndCapture(st, g);
        EXPECT(rc == 0, "%s: the captured call returned %d: %s", what, rc, msg);
        EXPECT(ce == cudaSuccess, "%s: cudaStreamEndCapture: %s", what, cudaGetErrorString(ce));
        if (rc == 0 && ce == cudaSuccess) {
                CK(cudaGraphInstantiate(ge, *g, 0));
                return 1;
        }
        if (ce != cudaSuccess)
                (void)cudaGetLastError();
        if (*g)
                CK(cudaGraphDestroy(*g));
        CK(cudaStreamDestroy(st));
        return 0;
}

/* One replay of ge on st into dc's output, poisoned first, copied to got. */
static void graph_replay(cudaGraphExec_t ge, cudaStream_t st, struct devcall *dc, void *got)
{
        CK(cudaMemset(dc->out, 0xFF, dc->nout)); /* NaN in bf16 */
        CK(cudaGraphLaunch(ge, st));
        CK(cudaStreamSynchronize(st));
        CK(cudaMemcpy(got, dc->out, dc->nout, cudaMemcpyDeviceToHost));
}

/* The reference of extend call h (its shape and scale) on host copies:
 * q, out, qo_indptr, page table and lengths. */
static int ref_extend(const struct kv_pool_view *hv, struct kvc_extend_args h, const void *q, void *out,
                      const int32_t *ind, const int32_t *pt, const int32_t *lens, char *msg, size_t msglen)
{
        h.q = q;
        h.out = out;
        h.qo_indptr = h.qo_indptr_host = ind;
        h.page_table = pt;
        h.seq_lens = h.seq_lens_host = lens;
        return kv_ref_extend(hv, &h, msg, msglen);
}

/* Frees a case's host buffers and its pool. */
static void case_free(void *q, void *ref, void *got, int32_t *pt, struct apool *P)
{
        free(q);
        free(ref);
        free(got);
        free(pt);
        apool_fini(P);
}

/* One workspace case's call, extend (ext) or decode: ws_run makes it with
 * workspace ws of `bytes` (NULL, 0: the launcher's own scratch), ws_need
 * asks the size of workspace it needs (the larger of its eager plan's and
 * its captured plan's: no stream). */
struct wscall {
        const struct kv_pool_view *dv;
        bool ext;
        struct kvc_decode_args da;
        struct kvc_extend_args ea;
};

static int ws_run(const struct wscall *w, void *ws, size_t bytes, cudaStream_t st, char *msg, size_t msglen)
{
        return w->ext ? kv_cuda_extend_ws(w->dv, &w->ea, ws, bytes, st, msg, msglen)
                      : kv_cuda_decode_ws(w->dv, &w->da, ws, bytes, st, msg, msglen);
}

static int ws_need(const struct wscall *w, size_t *ret_need, char *msg, size_t msglen)
{
        return w->ext ? kv_cuda_extend_ws_bytes(w->dv, &w->ea, ret_need, msg, msglen)
                      : kv_cuda_decode_ws_bytes(w->dv, &w->da, ret_need, msg, msglen);
}

/* The bytes an -ENOSPC message says the call needs ("... the call needs
 * N"), 0 if it says none. */
static size_t ws_said_need(const char *msg)
{
        static const char key[] = "the call needs ";
        const char *at = strstr(msg, key);
        return at ? (size_t)strtoull(at + sizeof key - 1, NULL, 10) : 0;
}

/* The reference of w's call over host copies: q, out, qo_indptr (extend),
 * page table and lengths. */
static int ws_ref(const struct kv_pool_view *hv, const struct wscall *w, const void *q, void *out,
                  const int32_t *ind, const int32_t *pt, const int32_t *lens, char *msg, size_t msglen)
{
        if (w->ext)
                return ref_extend(hv, w->ea, q, out, ind, pt, lens, msg, msglen);
        struct kvc_decode_args h = w->da;
        h.q = q;
        h.out = out;
        h.page_table = pt;
        h.seq_lens = h.seq_lens_host = lens;
        return kv_ref_decode(hv, &h, msg, msglen);
}

/* The call w of a case set up on dc (B sequences, qo_indptr ind for
 * extend, the host lengths lens). */
static struct wscall ws_call(const struct kv_pool_view *dv, const struct devcall *dc, uint32_t maxp, uint32_t B,
                             uint32_t Hq, const int32_t *ind, const int32_t *lens, bool ext)
{
        const float sm = 1.0f / sqrtf(128.0f);
        struct wscall w = { .dv = dv, .ext = ext };
        w.da = (struct kvc_decode_args){ .q = dc->q, .out = dc->out, .elem = KVC_ELEM_BF16, .page_table = dc->pt,
                                         .max_pages = maxp, .seq_lens = dc->lens, .seq_lens_host = lens,
                                         .batch = B, .num_q_heads = Hq, .sm_scale = sm, .layer = 1 };
        w.ea = (struct kvc_extend_args){ .q = dc->q, .out = dc->out, .elem = KVC_ELEM_BF16, .qo_indptr = dc->ind,
                                         .qo_indptr_host = ind, .page_table = dc->pt, .max_pages = maxp,
                                         .seq_lens = dc->lens, .seq_lens_host = lens, .batch = B,
                                         .num_q_heads = Hq, .sm_scale = sm, .layer = 1 };
        return w;
}

/* A captured case's pool and buffers: B sequences at their longest
 * (lens_max) in a pool of 2 kv heads x 128 with G q heads each, qn[b] new
 * rows each (extend) or one (decode: qn NULL); the capture's lengths
 * (cap_lens, also the device lengths to begin with) are as short as the
 * queries allow.  The pool's bytes and q come from r, in that order. */
struct gcase {
        struct apool P;
        uint32_t maxp, B, Hq, rows;
        size_t n;          /* q and output elements */
        int32_t *pt, *ind, *cap_lens;
        void *q;
        uint16_t *ref, *got;
        struct devcall dc;
        struct kv_pool_view hv, dv;
};

static void gcase_init(struct gcase *c, struct rng *r, enum kvc_dtype d, uint32_t G, uint32_t B,
                       const int32_t *lens_max, const int32_t *qn)
{
        const uint32_t H = 2, D = 128;

        c->B = B;
        c->Hq = H * G;
        c->pt = apool_fill(&c->P, r, d, H, D, 16, B, lens_max, &c->maxp);
        c->ind = malloc(sizeof(int32_t) * (B + 1));
        c->cap_lens = malloc(sizeof(int32_t) * B);
        c->ind[0] = 0;
        for (uint32_t b = 0; b < B; b++) {
                c->ind[b + 1] = c->ind[b] + (qn ? qn[b] : 1);
                c->cap_lens[b] = qn ? qn[b] : 1;
        }
        c->rows = (uint32_t)c->ind[B];
        c->n = (size_t)c->rows * c->Hq * D;
        c->q = make_q(r, KVC_ELEM_BF16, c->n);
        c->ref = malloc(c->n * 2);
        c->got = malloc(c->n * 2);
        devcall_init(&c->dc, c->pt, (size_t)B * c->maxp, c->cap_lens, B, qn ? c->ind : NULL, c->q, c->n * 2);
        c->hv = view(&c->P, 0);
        c->dv = view(&c->P, 1);
}

static void gcase_fini(struct gcase *c)
{
        devcall_finish(&c->dc, c->got);
        free(c->ind);
        free(c->cap_lens);
        case_free(c->q, c->ref, c->got, c->pt, &c->P);
}

/* Decode and extend captured into a CUDA graph with short lengths, then
 * replayed after the device lengths changed (longer, then mixed), as a
 * serving engine replays its decode graph every step: each replay must
 * equal the reference at the replay's lengths.  The pool holds every
 * sequence at its longest (lens_max); a plan fixed for the capture's
 * lengths would read only their first chunk of keys. */
static void graph_case(enum kvc_dtype d, uint32_t G, uint32_t B, const int32_t *lens_max,
                       const int32_t *const *replays, int nreplays, const int32_t *qn, uint64_t seed)
{
        struct rng r = { seed * 2654435761u + 1 };
        struct gcase c;
        char what[160], msg[256] = "";
        cudaStream_t st;
        cudaGraph_t g;
        cudaGraphExec_t ge;
        int rc;

        gcase_init(&c, &r, d, G, B, lens_max, qn);
        const struct wscall w = ws_call(&c.dv, &c.dc, c.maxp, B, c.Hq, c.ind, c.cap_lens, qn != NULL);
        CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
        rc = ws_run(&w, NULL, 0, st, msg, sizeof msg);
        snprintf(what, sizeof what, "graph %s %s G=%u B=%u", qn ? "extend" : "decode", kvc_dtype_name(d), G, B);
        const int ok = capture_end(st, rc, msg, what, &g, &ge);
        for (int i = 0; i < nreplays && ok; i++) {
                cases++;
                snprintf(what, sizeof what, "graph %s %s G=%u B=%u replay %d (len0 %d, captured at %d)",
                         qn ? "extend" : "decode", kvc_dtype_name(d), G, B, i, replays[i][0], c.cap_lens[0]);
                CK(cudaMemcpy(c.dc.lens, replays[i], sizeof(int32_t) * B, cudaMemcpyHostToDevice));
                graph_replay(ge, st, &c.dc, c.got);
                int rr = ws_ref(&c.hv, &w, c.q, c.ref, c.ind, c.pt, replays[i], msg, sizeof msg);
                EXPECT(rr == 0, "%s: the reference returned %d: %s", what, rr, msg);
                if (rr == 0)
                        compare(what, c.got, c.ref, KVC_ELEM_BF16, c.rows, c.Hq, 128);
        }
        if (ok)
                graph_free(ge, g, st);
        gcase_fini(&c);
}

/* An extend graph of n new rows replayed with seq_lens below n (eager calls
 * refuse that; a replay cannot check it): rows whose position falls before
 * the sequence's start see no key and give zeros, the others equal the
 * reference over the keys they do see, i.e. the same rows as the last
 * seq_len queries of a sequence of seq_len keys.  G = 2 packs the rows 4 to
 * a CTA, each column with its own horizon, some of them before the start
 * (the columns' horizons used to be counted from the first row's clamped
 * one: rows before the start saw keys); G = 8 takes a row a CTA. */
static void graph_short_extend(enum kvc_dtype d, uint32_t G, uint32_t n, int32_t seen_keys, uint64_t seed)
{
        struct rng r = { seed * 2654435761u + 1 };
        struct apool P;
        uint32_t maxp;
        char what[160], msg[256] = "";
        const uint32_t H = 2, Hq = H * G, D = 128;
        const int32_t lens_max[1] = { 100 }, cap_len[1] = { (int32_t)n }, short_len[1] = { seen_keys };
        int32_t *pt = apool_fill(&P, &r, d, H, D, 16, 1, lens_max, &maxp);
        const int32_t indptr[2] = { 0, (int32_t)n };
        const size_t row = (size_t)Hq * D, nq = n * row;
        uint16_t *q = make_q(&r, KVC_ELEM_BF16, nq), *got = malloc(nq * 2), *ref = malloc(nq * 2);
        struct devcall dc;
        devcall_init(&dc, pt, maxp, cap_len, 1, indptr, q, nq * 2);
        struct kv_pool_view hv = view(&P, 0), dv = view(&P, 1);
        const float sm = 1.0f / sqrtf((float)D);
        struct kvc_extend_args a = { .q = dc.q, .out = dc.out, .elem = KVC_ELEM_BF16, .qo_indptr = dc.ind,
                                     .qo_indptr_host = indptr, .page_table = dc.pt, .max_pages = maxp,
                                     .seq_lens = dc.lens, .seq_lens_host = cap_len, .batch = 1,
                                     .num_q_heads = Hq, .sm_scale = sm, .layer = 1 };
        cudaStream_t st;
        cudaGraph_t g;
        cudaGraphExec_t ge;

        cases++;
        snprintf(what, sizeof what, "graph extend %s G=%u: %u rows replayed at seq_len %d", kvc_dtype_name(d), G,
                 n, short_len[0]);
        CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
        int rc = kv_cuda_extend(&dv, &a, st, msg, sizeof msg);
        if (!capture_end(st, rc, msg, what, &g, &ge)) {
                devcall_finish(&dc, got);
                case_free(q, ref, got, pt, &P);
                return;
        }
        CK(cudaMemcpy(dc.lens, short_len, sizeof short_len, cudaMemcpyHostToDevice));
        CK(cudaGraphLaunch(ge, st)); /* dc.out is NaN until then (devcall_init) */
        CK(cudaStreamSynchronize(st));
        graph_free(ge, g, st);
        devcall_finish(&dc, got);
        /* the last `seen` rows sit at positions 0 .. seen - 1: the reference
         * of a sequence of seen keys whose seen new rows are those */
        const uint32_t seen = (uint32_t)short_len[0], blind = n - seen;
        const int32_t rind[2] = { 0, (int32_t)seen };
        int rr = ref_extend(&hv, a, q + blind * row, ref, rind, pt, short_len, msg, sizeof msg);
        EXPECT(rr == 0, "%s: the reference returned %d: %s", what, rr, msg);
        size_t nonzero = 0;
        for (size_t i = 0; i < blind * row; i++)
                nonzero += got[i] != 0 && got[i] != 0x8000; /* +0 or -0 */
        EXPECT(nonzero == 0, "%s: %zu outputs of the %u rows before the sequence's start are not 0", what,
               nonzero, blind);
        if (rr == 0)
                compare(what, got + blind * row, ref, KVC_ELEM_BF16, seen, Hq, D);
        case_free(q, ref, got, pt, &P);
}

/* An extend graph replayed with its new rows divided otherwise among the
 * sequences: the same batch and the same total of rows (qo_indptr[B]),
 * which is all the captured grid depends on (ptile_grid), a sequence with
 * none included.  Each replay must equal the reference at the replay's
 * qo_indptr: the kernels find a row's sequence and horizon in the device
 * copy, and the split planned at capture holds any lengths up to the
 * table's capacity. */
static void graph_moved_rows(enum kvc_dtype d, uint32_t G, const int32_t *qn_cap,
                             const int32_t *const *qn_replays, int nreplays, uint64_t seed)
{
        enum { B = 4 };
        struct rng r = { seed * 2654435761u + 1 };
        struct apool P;
        uint32_t maxp;
        char what[200], msg[256] = "";
        const uint32_t H = 2, Hq = H * G, D = 128;
        static const int32_t lens[B] = { 3000, 1100, 700, 300 };
        int32_t *pt = apool_fill(&P, &r, d, H, D, 16, B, lens, &maxp);
        int32_t ind[B + 1] = { 0 };
        for (int b = 0; b < B; b++)
                ind[b + 1] = ind[b] + qn_cap[b];
        const uint32_t rows = (uint32_t)ind[B];
        const size_t n = (size_t)rows * Hq * D;
        void *q = make_q(&r, KVC_ELEM_BF16, n);
        uint16_t *ref = malloc(n * 2), *got = malloc(n * 2);
        struct devcall dc;
        devcall_init(&dc, pt, (size_t)B * maxp, lens, B, ind, q, n * 2);
        struct kv_pool_view hv = view(&P, 0), dv = view(&P, 1);
        const float sm = 1.0f / sqrtf((float)D);
        struct kvc_extend_args a = { .q = dc.q, .out = dc.out, .elem = KVC_ELEM_BF16, .qo_indptr = dc.ind,
                                     .qo_indptr_host = ind, .page_table = dc.pt, .max_pages = maxp,
                                     .seq_lens = dc.lens, .seq_lens_host = lens, .batch = B,
                                     .num_q_heads = Hq, .sm_scale = sm, .layer = 1 };
        cudaStream_t st;
        cudaGraph_t g;
        cudaGraphExec_t ge;

        CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
        int rc = kv_cuda_extend(&dv, &a, st, msg, sizeof msg);
        snprintf(what, sizeof what, "graph extend %s G=%u, rows %d %d %d %d", kvc_dtype_name(d), G, qn_cap[0],
                 qn_cap[1], qn_cap[2], qn_cap[3]);
        const int ok = capture_end(st, rc, msg, what, &g, &ge);
        for (int i = 0; i < nreplays && ok; i++) {
                const int32_t *qn = qn_replays[i];
                int32_t rind[B + 1] = { 0 };
                for (int b = 0; b < B; b++)
                        rind[b + 1] = rind[b] + qn[b];
                cases++;
                snprintf(what, sizeof what, "graph extend %s G=%u, rows %d %d %d %d replayed as %d %d %d %d",
                         kvc_dtype_name(d), G, qn_cap[0], qn_cap[1], qn_cap[2], qn_cap[3], qn[0], qn[1], qn[2],
                         qn[3]);
                EXPECT(rind[B] == ind[B], "%s: the test's replay has %d rows, the capture %d", what, rind[B],
                       ind[B]);
                CK(cudaMemcpy(dc.ind, rind, sizeof rind, cudaMemcpyHostToDevice));
                graph_replay(ge, st, &dc, got);
                int rr = ref_extend(&hv, a, q, ref, rind, pt, lens, msg, sizeof msg);
                EXPECT(rr == 0, "%s: the reference returned %d: %s", what, rr, msg);
                if (rr == 0)
                        compare(what, got, ref, KVC_ELEM_BF16, rows, Hq, D);
        }
        if (ok)
                graph_free(ge, g, st);
        devcall_finish(&dc, got);
        case_free(q, ref, got, pt, &P);
}

static void graph_replays(void)
{
        /* one long sequence (split over the GPU) and a batch (a few splits) */
        static const int32_t one_max[1] = { 20000 }, one_a[1] = { 20000 }, one_b[1] = { 3000 };
        static const int32_t *const one[] = { one_a, one_b };
        static const int32_t four_max[4] = { 5000, 4100, 700, 64 }, four_a[4] = { 5000, 4100, 700, 64 },
                             four_b[4] = { 17, 4100, 2, 64 };
        static const int32_t *const four[] = { four_a, four_b };
        /* extend: 2 new rows a sequence (the decode kernel, G = 4 packed
         * 2 rows a CTA, G = 8 a row a CTA) and 64 (the tiled kernel:
         * 256 query vectors a sequence) */
        static const int32_t qn[4] = { 2, 2, 2, 2 }, qt[4] = { 64, 64, 64, 64 };
        static const int32_t four_d[4] = { 64, 4100, 90, 64 };
        static const int32_t *const fourt[] = { four_a, four_d };
        static const enum kvc_dtype dts[] = { KVC_DTYPE_BF16, KVC_DTYPE_FP8_E4M3, KVC_DTYPE_FP4_E2M1 };

        for (int i = 0; i < 3; i++) {
                graph_case(dts[i], 4, 1, one_max, one, 2, NULL, 300 + i);
                graph_case(dts[i], 4, 4, four_max, four, 2, NULL, 310 + i);
                graph_case(dts[i], 4, 4, four_max, four, 2, qn, 320 + i);
                graph_case(dts[i], 8, 4, four_max, four, 2, qn, 330 + i);
                graph_case(dts[i], 4, 4, four_max, fourt, 2, qt, 340 + i);
                graph_short_extend(dts[i], 2, 4, 2, 350 + i);
                graph_short_extend(dts[i], 2, 6, 1, 360 + i);
                graph_short_extend(dts[i], 8, 4, 2, 370 + i);
        }
        /* extend graphs whose rows move between the sequences at replay
         * (same batch, same total): 2 rows a sequence on the decode kernel
         * (G = 4: 2 rows a CTA, G = 8: a row a CTA) and 64 (256 query
         * vectors a sequence) on the tiled kernel and on the decode
         * kernel, replayed with a sequence of none and one of most */
        static const int32_t m2[4] = { 2, 2, 2, 2 }, m2a[4] = { 5, 0, 1, 2 }, m2b[4] = { 0, 0, 0, 8 };
        static const int32_t *const m2r[] = { m2a, m2b, m2 };
        static const int32_t m64[4] = { 64, 64, 64, 64 }, m64a[4] = { 100, 0, 92, 64 },
                             m64b[4] = { 1, 200, 27, 28 };
        static const int32_t *const m64r[] = { m64a, m64b, m64 };
        for (int i = 0; i < 3; i++) {
                graph_moved_rows(dts[i], 4, m2, m2r, 3, 400 + i);
                graph_moved_rows(dts[i], 8, m2, m2r, 3, 410 + i);
                /* 64 rows a sequence on each kernel, forced */
                const int prev = kv_cuda_extend_kernel(KV_EXTEND_TILED);
                graph_moved_rows(dts[i], 4, m64, m64r, 3, 420 + i);
                kv_cuda_extend_kernel(KV_EXTEND_DECODE);
                graph_moved_rows(dts[i], 4, m64, m64r, 3, 430 + i);
                kv_cuda_extend_kernel(prev);
        }
        /* the decode graphs again with a kv head a warp (the launcher never
         * takes it under capture; the kernel's row chunks must hold all the
         * same) */
        for (int i = 0; i < 3; i++) {
                const int prev = kv_cuda_decode_warps(KV_DECODE_HEADS);
                graph_case(dts[i], 4, 1, one_max, one, 2, NULL, 380 + i);
                graph_case(dts[i], 4, 4, four_max, four, 2, NULL, 390 + i);
                kv_cuda_decode_warps(prev);
        }
}

/* A device page id out of range: the kernel skips that page's keys, which
 * must equal the reference over the sequence without that page (decode
 * attention does not depend on the order of the keys, so the reference
 * table is the row with the entry taken out and the length shortened by
 * the page's keys).  Row b's bad entry is at index at(b, len). */
static void bad_pages(enum kvc_dtype d, uint32_t B, int32_t len, uint32_t (*at)(uint32_t b, int32_t len),
                      uint64_t seed)
{
        struct rng r = { seed };
        struct apool P;
        uint32_t maxp;
        const uint32_t D = 128, H = 2, Hq = 8, ps = 16;
        char msg[256] = "";
        int32_t *lens = malloc(B * sizeof *lens), *rlens = malloc(B * sizeof *rlens);

        cases++;
        for (uint32_t b = 0; b < B; b++)
                lens[b] = len;
        int32_t *pt = apool_fill(&P, &r, d, H, D, ps, B, lens, &maxp);
        int32_t *rpt = malloc((size_t)B * maxp * sizeof *rpt);
        const int32_t bad = (int32_t)P.L.num_pages + 5;
        for (uint32_t b = 0; b < B; b++) {
                const uint32_t j = at(b, len);
                int32_t *row = pt + (size_t)b * maxp;
                without_entry(row, rpt + (size_t)b * maxp, maxp, j);
                const int32_t on_page = len - (int32_t)(j * ps) < (int32_t)ps ? len - (int32_t)(j * ps) : (int32_t)ps;
                rlens[b] = len - on_page;
                row[j] = bad;
        }
        const size_t n = (size_t)B * Hq * D;
        void *q = make_q(&r, KVC_ELEM_BF16, n);
        uint16_t *ref = malloc(n * 2), *got = malloc(n * 2);
        struct kv_pool_view hv = view(&P, 0), dv = view(&P, 1);
        struct kvc_decode_args h = { .q = q, .out = ref, .elem = KVC_ELEM_BF16, .page_table = rpt, .max_pages = maxp,
                                     .seq_lens = rlens, .seq_lens_host = rlens, .batch = B,
                                     .num_q_heads = Hq, .sm_scale = 0.088f, .layer = 1 };
        EXPECT(kv_ref_decode(&hv, &h, msg, sizeof msg) == 0, "bad_pages: reference: %s", msg);
        struct devcall dc;
        devcall_init(&dc, pt, (size_t)B * maxp, lens, B, NULL, q, n * 2);
        struct kvc_decode_args a = h;
        a.q = dc.q;
        a.out = dc.out;
        a.page_table = dc.pt;
        a.seq_lens = dc.lens;
        a.seq_lens_host = lens;
        int rc = kv_cuda_decode(&dv, &a, NULL, msg, sizeof msg);
        EXPECT(rc == 0, "bad_pages: kv_cuda_decode = %d: %s", rc, msg);
        devcall_finish(&dc, got);
        char what[64];
        snprintf(what, sizeof what, "bad_pages dtype %d B %u len %d", (int)d, B, len);
        compare(what, got, ref, KVC_ELEM_BF16, B, Hq, D);
        /* the host reference refuses the table with the bad entry, naming it */
        h.page_table = pt;
        h.seq_lens = lens;
        h.seq_lens_host = lens;
        rc = kv_ref_decode(&hv, &h, msg, sizeof msg);
        snprintf(what, sizeof what, "page_table[0][%u]", at(0, len));
        EXPECT(rc == -ERANGE && strstr(msg, what), "bad_pages: ref gave %d '%s'", rc, msg);
        free(q);
        free(ref);
        free(got);
        free(pt);
        free(rpt);
        free(lens);
        free(rlens);
        apool_fini(&P);
}

/* The same for extend (the tiled kernel with many rows, the decode kernel's
 * packed rows with a few): one sequence of len keys whose
 * last nb are new rows, page j (inside the cached prefix, so every row sees
 * all of it) out of range.  Keys do not depend on their order, and every
 * row's horizon lies past the page, so the reference is the sequence
 * without that page: the entry taken out, len shortened by a page, the
 * same rows. */
static void bad_pages_extend(enum kvc_dtype d, uint32_t D, int32_t len, int32_t nb, uint32_t j, uint64_t seed)
{
        struct rng r = { seed };
        struct apool P;
        uint32_t maxp;
        const uint32_t H = 2, Hq = 8, ps = 16;
        char msg[256] = "";
        int32_t lens[1] = { len }, rlens[1] = { len - (int32_t)ps }, ind[2] = { 0, nb };

        cases++;
        if ((int64_t)(j + 1) * ps > len - nb) {
                printf("FAIL: bad_pages_extend: page %u is not inside the cached prefix\n", j);
                failures++;
                return;
        }
        int32_t *pt = apool_fill(&P, &r, d, H, D, ps, 1, lens, &maxp);
        int32_t *rpt = malloc(maxp * sizeof *rpt);
        without_entry(pt, rpt, maxp, j);
        pt[j] = (int32_t)P.L.num_pages + 3;
        const size_t n = (size_t)nb * Hq * D;
        void *q = make_q(&r, KVC_ELEM_BF16, n);
        uint16_t *ref = malloc(n * 2), *got = malloc(n * 2);
        struct kv_pool_view hv = view(&P, 0), dv = view(&P, 1);
        struct kvc_extend_args h = { .q = q, .out = ref, .elem = KVC_ELEM_BF16, .qo_indptr = ind,
                                     .qo_indptr_host = ind, .page_table = rpt, .max_pages = maxp,
                                     .seq_lens = rlens, .seq_lens_host = rlens, .batch = 1,
                                     .num_q_heads = Hq, .sm_scale = 0.088f, .layer = 1 };
        EXPECT(kv_ref_extend(&hv, &h, msg, sizeof msg) == 0, "bad_pages_extend: reference: %s", msg);
        struct devcall dc;
        devcall_init(&dc, pt, maxp, lens, 1, ind, q, n * 2);
        struct kvc_extend_args a = h;
        a.q = dc.q;
        a.out = dc.out;
        a.qo_indptr = dc.ind;
        a.page_table = dc.pt;
        a.seq_lens = dc.lens;
        a.seq_lens_host = lens;
        int rc = kv_cuda_extend(&dv, &a, NULL, msg, sizeof msg);
        EXPECT(rc == 0, "bad_pages_extend: kv_cuda_extend = %d: %s", rc, msg);
        devcall_finish(&dc, got);
        char what[80];
        snprintf(what, sizeof what, "bad_pages_extend dtype %d D %u len %d rows %d page %u", (int)d, D, len, nb, j);
        compare(what, got, ref, KVC_ELEM_BF16, (uint32_t)nb, Hq, D);
        free(q);
        free(ref);
        free(got);
        free(pt);
        free(rpt);
        apool_fini(&P);
}

/* the last page, partly filled */
static uint32_t last_page(uint32_t b, int32_t len)
{
        (void)b;
        return ((uint32_t)len - 1) / 16;
}

/* by row: a whole page in the middle of a warp's first page window; one
 * whose tile a warp reaches only after taking its next window (the warp's
 * 33rd tile is at key 32 * 64 + 16 * warp and more); the last page */
static uint32_t mixed_pages(uint32_t b, int32_t len)
{
        return b % 3 == 0 ? 3u : b % 3 == 1 ? 140u : last_page(b, len);
}

static void bad_page(void)
{
        bad_pages(KVC_DTYPE_BF16, 1, 100, last_page, 4242); /* keys 96..99 */
        /* 300 rows of 2400 keys: more CTAs than fit at once, so no split,
         * and every warp takes a second page window */
        bad_pages(KVC_DTYPE_FP4_E2M1, 300, 2400, mixed_pages, 4243);
        bad_pages(KVC_DTYPE_FP8_E5M2, 300, 2400, mixed_pages, 4244);
        /* the tiled extend kernel (600 rows x 4 q heads): its key mask with
         * one copy thread per row (D = 64, 64-key tiles) and two (D = 128,
         * 32-key tiles); the bad page mid-tile and on a tile's first keys */
        /* 1000 keys: auto would take the decode kernel */
        EXPECT(kv_cuda_extend_kernel(KV_EXTEND_TILED) >= 0, "kv_cuda_extend_kernel(KV_EXTEND_TILED) failed");
        bad_pages_extend(KVC_DTYPE_FP8_E4M3, 64, 1000, 600, 10, 4245);
        bad_pages_extend(KVC_DTYPE_BF16, 128, 1000, 600, 6, 4246);
        bad_pages_extend(KVC_DTYPE_FP4_E2M1, 128, 1000, 600, 17, 4247);
        kv_cuda_extend_kernel(KV_EXTEND_AUTO);
        /* 5 rows x 4 q heads: the decode kernel, two rows a CTA */
        bad_pages_extend(KVC_DTYPE_FP8_E5M2, 128, 1000, 5, 3, 4248);
        bad_pages_extend(KVC_DTYPE_FP4_E2M1, 64, 300, 5, 12, 4249);
}

#define ARGERR(expr, want, needle)                                                                 \
        do {                                                                                       \
                msg[0] = 0;                                                                        \
                int rc_ = (expr);                                                                  \
                cases++;                                                                           \
                EXPECT(rc_ == (want) && strstr(msg, needle), "%s: got %d '%s', want %d '%s'", #expr, \
                       rc_, msg, want, needle);                                                    \
        } while (0)

static void arg_errors(void)
{
        struct rng r = { 99 };
        struct apool P;
        uint32_t maxp;
        int32_t lens[2] = { 40, 3 };
        char msg[256];
        int32_t *pt = apool_fill(&P, &r, KVC_DTYPE_FP8_E4M3, 2, 128, 16, 2, lens, &maxp);
        int32_t *dpt = to_dev(pt, sizeof(int32_t) * 2 * maxp), *dlens = to_dev(lens, 8);
        void *dq = to_dev(NULL, 2 * 8 * 128 * 2), *dout = to_dev(NULL, 2 * 8 * 128 * 2);
        CK(cudaMemset(dout, 0xAB, 2 * 8 * 128 * 2));
        struct kv_pool_view dv = view(&P, 1);
        const struct kvc_decode_args ok = { .q = dq, .out = dout, .elem = KVC_ELEM_BF16, .page_table = dpt,
                                            .max_pages = maxp, .seq_lens = dlens, .seq_lens_host = lens,
                                            .batch = 2, .num_q_heads = 8, .sm_scale = 0.1f, .layer = 1 };
        struct kvc_decode_args a;

        a = ok; a.num_q_heads = 7;
        ARGERR(kv_cuda_decode(&dv, &a, NULL, msg, sizeof msg), -EINVAL, "num_q_heads 7");
        a = ok; a.layer = 2;
        ARGERR(kv_cuda_decode(&dv, &a, NULL, msg, sizeof msg), -EINVAL, "layer 2");
        a = ok; a.elem = KVC_ELEM_F32;
        ARGERR(kv_cuda_decode(&dv, &a, NULL, msg, sizeof msg), -EINVAL, "elem");
        a = ok; a.seq_lens_host = NULL;
        ARGERR(kv_cuda_decode(&dv, &a, NULL, msg, sizeof msg), -EINVAL, "seq_lens_host");
        a = ok; a.max_pages = 2;
        ARGERR(kv_cuda_decode(&dv, &a, NULL, msg, sizeof msg), -EINVAL, "seq_lens[0] = 40");
        a = ok; a.sm_scale = NAN;
        ARGERR(kv_cuda_decode(&dv, &a, NULL, msg, sizeof msg), -EINVAL, "sm_scale");
        a = ok; a.q = NULL;
        ARGERR(kv_cuda_decode(&dv, &a, NULL, msg, sizeof msg), -EINVAL, "q is NULL");
        {
                /* no page table with every length 0: refused (the kernel
                 * reads a row's table entries ahead of its length, and used
                 * to fault on the NULL), and max_pages beyond 2^31-1 keys */
                int32_t zl[2] = { 0, 0 };
                int32_t *dzl = to_dev(zl, 8);
                a = ok; a.page_table = NULL; a.seq_lens = dzl; a.seq_lens_host = zl;
                ARGERR(kv_cuda_decode(&dv, &a, NULL, msg, sizeof msg), -EINVAL, "page_table is NULL");
                a = ok; a.max_pages = (1u << 27) + 1;
                ARGERR(kv_cuda_decode(&dv, &a, NULL, msg, sizeof msg), -EINVAL, "keys per row");
                /* a q head count that wrapped the planner's head groups and
                 * divided by zero on the host */
                a = ok; a.num_q_heads = 0xFFFFFFFEu;
                ARGERR(kv_cuda_decode(&dv, &a, NULL, msg, sizeof msg), -EINVAL, "num_q_heads");
                /* a pool view whose arrays are not 16-byte aligned: refused,
                 * not a misaligned cp.async on the device */
                struct kv_pool_view mis = dv;
                mis.base = (uint8_t *)dv.base + 8;
                ARGERR(kv_cuda_decode(&mis, &ok, NULL, msg, sizeof msg), -EINVAL, "not 16-byte aligned");
                CK(cudaDeviceSynchronize());
                CK(cudaFree(dzl));
        }
        float bad_scale[2] = { 0.0f, 0.0f };
        struct kv_pool_view bv = dv;
        bv.k_scale = bad_scale;
        ARGERR(kv_cuda_decode(&bv, &ok, NULL, msg, sizeof msg), -EINVAL, "k_scale[1]");
        bv = dv; /* pages padded apart: the kernel addresses slot * token_bytes */
        bv.layout.page_bytes += 256;
        ARGERR(kv_cuda_decode(&bv, &ok, NULL, msg, sizeof msg), -EINVAL, "a page is not page_size token rows");

        int32_t ind[3] = { 0, 2, 6 }, bad_ind[3] = { 1, 2, 3 };
        int32_t *dind = to_dev(ind, 12);
        const struct kvc_extend_args eok = { .q = dq, .out = dout, .elem = KVC_ELEM_BF16, .qo_indptr = dind,
                                             .qo_indptr_host = ind, .page_table = dpt, .max_pages = maxp,
                                             .seq_lens = dlens, .seq_lens_host = lens, .batch = 2,
                                             .num_q_heads = 8, .sm_scale = 0.1f, .layer = 1 };
        struct kvc_extend_args x;
        x = eok; /* 4 new queries for a sequence of 3 keys */
        ARGERR(kv_cuda_extend(&dv, &x, NULL, msg, sizeof msg), -EINVAL, "seq_lens[1] = 3");
        x = eok; x.qo_indptr_host = NULL;
        ARGERR(kv_cuda_extend(&dv, &x, NULL, msg, sizeof msg), -EINVAL, "qo_indptr_host");
        x = eok; x.qo_indptr_host = bad_ind;
        ARGERR(kv_cuda_extend(&dv, &x, NULL, msg, sizeof msg), -EINVAL, "qo_indptr[0] = 1");

        {
                /* where the arrays live (kv_cuda_check_mem): a device array
                 * passed as a host copy used to be read on the CPU by the
                 * argument check (SIGSEGV); host memory the device cannot
                 * read would be an illegal address in the kernel, a sticky
                 * error that ends the process's CUDA context */
                char want[160];
                size_t bytes = 0;
                a = ok; a.seq_lens_host = dlens;
                snprintf(want, sizeof want, "decode: seq_lens_host %p is device memory", (void *)dlens);
                ARGERR(kv_cuda_decode(&dv, &a, NULL, msg, sizeof msg), -EINVAL, want);
                ARGERR(kv_cuda_decode_ws_bytes(&dv, &a, &bytes, msg, sizeof msg), -EINVAL, want);
                EXPECT(bytes == 0, "a refused size query wrote %zu into ret_bytes", bytes);
                x = eok; x.qo_indptr_host = dind;
                snprintf(want, sizeof want, "extend: qo_indptr_host %p is device memory", (void *)dind);
                ARGERR(kv_cuda_extend(&dv, &x, NULL, msg, sizeof msg), -EINVAL, want);
                void *pinned;
                CK(cudaMallocHost(&pinned, 1 << 20));
                snprintf(want, sizeof want, "workspace %p is pinned host memory, not device memory", pinned);
                ARGERR(kv_cuda_decode_ws(&dv, &ok, pinned, 1 << 20, NULL, msg, sizeof msg), -EINVAL, want);
                int pageable = 0;
                CK(cudaDeviceGetAttribute(&pageable, cudaDevAttrPageableMemoryAccess, 0));
                if (!pageable) { /* else the device reads it: nothing to refuse */
                        void *hq = malloc(2 * 8 * 128 * 2);
                        a = ok; a.q = hq;
                        snprintf(want, sizeof want, "decode: q %p is host memory, not device memory", hq);
                        ARGERR(kv_cuda_decode(&dv, &a, NULL, msg, sizeof msg), -EINVAL, want);
                        a = ok; a.seq_lens = lens;
                        snprintf(want, sizeof want, "decode: seq_lens %p is host memory", (void *)lens);
                        ARGERR(kv_cuda_decode(&dv, &a, NULL, msg, sizeof msg), -EINVAL, want);
                        /* eok itself is refused (4 queries for 3 keys):
                         * one query a sequence passes every other check */
                        int32_t one[3] = { 0, 1, 2 };
                        int32_t *done = to_dev(one, 12);
                        x = eok; x.qo_indptr = done; x.qo_indptr_host = one; x.page_table = pt;
                        snprintf(want, sizeof want, "extend: page_table %p is host memory", (void *)pt);
                        ARGERR(kv_cuda_extend(&dv, &x, NULL, msg, sizeof msg), -EINVAL, want);
                        CK(cudaFree(done));
                        free(hq);
                } else {
                        printf("# the device reads pageable host memory: host arrays are not refused\n");
                }
                CK(cudaDeviceSynchronize());
                CK(cudaFreeHost(pinned));
        }

        /* nothing ran: the output keeps its 0xAB fill */
        uint8_t *o = malloc(2 * 8 * 128 * 2);
        CK(cudaDeviceSynchronize());
        CK(cudaMemcpy(o, dout, 2 * 8 * 128 * 2, cudaMemcpyDeviceToHost));
        int touched = 0;
        for (int i = 0; i < 2 * 8 * 128 * 2; i++)
                touched |= o[i] != 0xAB;
        EXPECT(!touched, "a refused call wrote its output");
        free(o);
        cudaFree(dind);
        cudaFree(dpt);
        cudaFree(dlens);
        cudaFree(dq);
        cudaFree(dout);
        free(pt);
        apool_fini(&P);
}

/* ---- a caller's workspace (kv_cuda_decode_ws, kv_cuda_extend_ws) ---------- */

/* The nodes of g of type t (a captured graph is flat: no child graphs). */
static size_t graph_count(cudaGraph_t g, enum cudaGraphNodeType t)
{
        size_t n = 0, k = 0;
        CK(cudaGraphGetNodes(g, NULL, &n));
        cudaGraphNode_t *nodes = malloc(sizeof *nodes * (n ? n : 1));
        CK(cudaGraphGetNodes(g, nodes, &n));
        for (size_t i = 0; i < n; i++) {
                enum cudaGraphNodeType nt;
                CK(cudaGraphNodeGetType(nodes[i], &nt));
                k += nt == t;
        }
        free(nodes);
        return k;
}

/* An eager decode (qn NULL) or extend (qn[b] new rows) with a workspace of
 * the size the query gives, poisoned (its contents need no
 * initialisation), 64 guard bytes after it: equal to the reference, and
 * bit for bit to the same call on the launcher's scratch (the same plan).
 * The query answers for the call captured too (planned for the table's
 * capacity), which may need more than the eager call: what the eager call
 * itself needs (act) is what a workspace of 0 bytes is refused with
 * (-ENOSPC, "the call needs act"), at most the query's answer.  The
 * partials went to the workspace (its poison is gone) and nowhere past
 * act bytes (the rest of the workspace and the guard are intact).  A call
 * that splits (split) must run with exactly act bytes and be refused,
 * nothing launched, with act - 1 (-ENOSPC, both sizes in the message),
 * misaligned, in host memory or NULL with a size; one that does not (act
 * 0) must write none of its workspace and run with one of 0 bytes. */
static void ws_eager(enum kvc_dtype d, uint32_t G, uint32_t B, const int32_t *lens, const int32_t *qn, bool split,
                     uint64_t seed)
{
        struct rng r = { seed * 2654435761u + 1 };
        struct apool P;
        uint32_t maxp;
        char what[200], msg[256] = "";
        const uint32_t H = 2, Hq = H * G, D = 128;
        int32_t *pt = apool_fill(&P, &r, d, H, D, 16, B, lens, &maxp);
        int32_t *ind = malloc(sizeof(int32_t) * (B + 1));
        ind[0] = 0;
        for (uint32_t b = 0; b < B; b++)
                ind[b + 1] = ind[b] + (qn ? qn[b] : 1);
        const uint32_t rows = (uint32_t)ind[B];
        const size_t n = (size_t)rows * Hq * D;
        void *q = make_q(&r, KVC_ELEM_BF16, n);
        uint16_t *ref = malloc(n * 2), *got = malloc(n * 2), *plain = malloc(n * 2);
        struct devcall dc;
        devcall_init(&dc, pt, (size_t)B * maxp, lens, B, qn ? ind : NULL, q, n * 2);
        struct kv_pool_view hv = view(&P, 0), dv = view(&P, 1);
        const struct wscall w = ws_call(&dv, &dc, maxp, B, Hq, ind, lens, qn != NULL);
        size_t need = 0, act = 0;
        int rc, rr;

        cases++;
        snprintf(what, sizeof what, "workspace %s %s G=%u B=%u len0=%d", qn ? "extend" : "decode",
                 kvc_dtype_name(d), G, B, lens[0]);
        rr = ws_ref(&hv, &w, q, ref, ind, pt, lens, msg, sizeof msg);
        EXPECT(rr == 0, "%s: the reference returned %d: %s", what, rr, msg);
        rc = ws_need(&w, &need, msg, sizeof msg);
        EXPECT(rc == 0 && (need > 0 || !split), "%s: the size query returned %d, %zu bytes (the case must split): %s",
               what, rc, need, msg);
        if (rc != 0 || (need == 0 && split) || rr != 0)
                goto out;

        /* the launcher's own scratch: the bits to equal */
        rc = ws_run(&w, NULL, 0, NULL, msg, sizeof msg);
        EXPECT(rc == 0, "%s: the call without workspace returned %d: %s", what, rc, msg);
        CK(cudaDeviceSynchronize());
        CK(cudaMemcpy(plain, dc.out, n * 2, cudaMemcpyDeviceToHost));

        const size_t guard = 64;
        uint8_t *ws, *hws = malloc(need + guard);
        CK(cudaMalloc((void **)&ws, need + guard));
        CK(cudaMemset(ws, 0xFF, need + guard));
        if (split) {
                /* the eager call's own need: refused before any launch */
                msg[0] = 0;
                rc = ws_run(&w, ws, 0, NULL, msg, sizeof msg);
                act = ws_said_need(msg);
                EXPECT(rc == -ENOSPC && act > 0 && act <= need,
                       "%s: a workspace of 0 bytes: %d '%s' (the size query gave %zu)", what, rc, msg, need);
                if (rc != -ENOSPC || act == 0 || act > need)
                        act = need; /* counted: the checks below still run */
        }
        CK(cudaMemset(dc.out, 0xFF, n * 2));
        rc = ws_run(&w, ws, need, NULL, msg, sizeof msg);
        EXPECT(rc == 0, "%s: the call with a workspace of %zu bytes returned %d: %s", what, need, rc, msg);
        CK(cudaDeviceSynchronize());
        CK(cudaMemcpy(got, dc.out, n * 2, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(hws, ws, need + guard, cudaMemcpyDeviceToHost));
        compare(what, got, ref, KVC_ELEM_BF16, rows, Hq, D);
        EXPECT(memcmp(got, plain, n * 2) == 0, "%s: the output differs from the same call without workspace",
               what);
        size_t written = 0, past = 0;
        for (size_t i = 0; i < need + guard; i++) {
                written += i < act && hws[i] != 0xFF;
                past += i >= act && hws[i] != 0xFF;
        }
        EXPECT(!split || written > 0, "%s: the split call wrote nothing into its workspace", what);
        EXPECT(past == 0,
               "%s: %zu bytes written past the %zu the call needs (of a workspace of %zu, the size query's, and "
               "%zu guard bytes)",
               what, past, act, need, guard);

        if (split) { /* exactly its need does */
                CK(cudaMemset(dc.out, 0xFF, n * 2));
                rc = ws_run(&w, ws, act, NULL, msg, sizeof msg);
                EXPECT(rc == 0, "%s: the call with a workspace of the %zu bytes it needs returned %d: %s", what, act,
                       rc, msg);
                CK(cudaDeviceSynchronize());
                CK(cudaMemcpy(got, dc.out, n * 2, cudaMemcpyDeviceToHost));
                if (rc == 0)
                        EXPECT(memcmp(got, plain, n * 2) == 0,
                               "%s: the output with a workspace of %zu bytes differs from the call without", what,
                               act);
        }

        /* refused before any launch: the output keeps its poison */
        CK(cudaMemset(dc.out, 0xFF, n * 2));
        if (split) {
                char want[160];
                snprintf(want, sizeof want, "workspace of %zu bytes is too small, the call needs %zu", act - 1,
                         act);
                ARGERR(ws_run(&w, ws, act - 1, NULL, msg, sizeof msg), -ENOSPC, want);
                ARGERR(ws_run(&w, ws, 0, NULL, msg, sizeof msg), -ENOSPC, "workspace of 0 bytes");
        }
        ARGERR(ws_run(&w, ws + 8, need, NULL, msg, sizeof msg), -EINVAL, "16-byte aligned");
        ARGERR(ws_run(&w, NULL, need ? need : 16, NULL, msg, sizeof msg), -EINVAL, "workspace is NULL");
        {
                /* never written: refused before the launch (or the
                 * kernel's fault fails the test at the next CK) */
                static _Alignas(256) uint8_t host[256];
                ARGERR(ws_run(&w, host, need, NULL, msg, sizeof msg), -EINVAL, "not device memory");
        }
        CK(cudaDeviceSynchronize());
        CK(cudaGetLastError());
        CK(cudaMemcpy(got, dc.out, n * 2, cudaMemcpyDeviceToHost));
        size_t touched = 0;
        for (size_t i = 0; i < n; i++)
                touched += got[i] != 0xFFFF;
        EXPECT(touched == 0, "%s: a refused call wrote %zu outputs", what, touched);
        if (!split) { /* any workspace does, even of 0 bytes */
                rc = ws_run(&w, ws, 0, NULL, msg, sizeof msg);
                EXPECT(rc == 0, "%s: a call that does not split refused a workspace of 0 bytes: %d %s", what, rc,
                       msg);
                CK(cudaDeviceSynchronize());
                CK(cudaMemcpy(got, dc.out, n * 2, cudaMemcpyDeviceToHost));
                if (rc == 0)
                        compare(what, got, ref, KVC_ELEM_BF16, rows, Hq, D);
        }
        CK(cudaFree(ws));
        free(hws);
out:
        devcall_finish(&dc, got);
        free(ind);
        free(plain);
        case_free(q, ref, got, pt, &P);
}

/* Ends a capture that must hold no node (the calls in it were size queries
 * or refused before any launch); what: the case. */
static void capture_empty(cudaStream_t st, const char *what, const char *after)
{
        cudaGraph_t g = NULL;
        cudaError_t ce = cudaStreamEndCapture(st, &g);
        EXPECT(ce == cudaSuccess, "%s: cudaStreamEndCapture after %s: %s", what, after, cudaGetErrorString(ce));
        if (ce != cudaSuccess) {
                (void)cudaGetLastError();
                return;
        }
        size_t nodes = 0;
        CK(cudaGraphGetNodes(g, NULL, &nodes));
        EXPECT(nodes == 0, "%s: %s left %zu nodes in the capture", what, after, nodes);
        CK(cudaGraphDestroy(g));
}

/* A split decode or extend captured with a workspace sized and allocated
 * before the capture, as an engine must (no cudaMalloc in a global-mode
 * capture): the size query answers for the captured call too, planned for
 * the table's capacity, so it is above 0 although the call at the
 * capture's short lengths does not split eagerly (it runs with a
 * workspace of 0 bytes), and a byte short of it is refused under capture
 * (-ENOSPC naming it as the need), leaving the capture empty.  Captured
 * as graph_case captures, the graph must hold kernel nodes only (the same
 * call on the launcher's scratch, the control, holds an allocation and a
 * free node), so that CUDA clones it, instantiates the clone twice and
 * embeds it as a child graph node; every one of the four executables,
 * replayed with new q and lengths, must equal the reference, and leave
 * the 64 guard bytes after the workspace alone. */
static void ws_graph(enum kvc_dtype d, uint32_t G, uint32_t B, const int32_t *lens_max,
                     const int32_t *const *replays, int nreplays, const int32_t *qn, uint64_t seed)
{
        static const char *const execs[] = { "the captured graph", "its clone", "its clone, instantiated again",
                                             "a graph holding it as a child graph node" };
        struct rng r = { seed * 2654435761u + 1 };
        struct gcase c;
        char what[200], msg[256] = "";

        gcase_init(&c, &r, d, G, B, lens_max, qn);
        const struct wscall w = ws_call(&c.dv, &c.dc, c.maxp, B, c.Hq, c.ind, c.cap_lens, qn != NULL);
        cudaStream_t st;
        cudaGraph_t g = NULL, gs = NULL, gc = NULL, gp = NULL;
        cudaGraphExec_t ex[4] = { NULL };
        cudaGraphNode_t child;
        size_t need = 0;
        const size_t guard = 64;
        uint8_t *ws = NULL;
        int rc;

        cases++;
        snprintf(what, sizeof what, "workspace graph %s %s G=%u B=%u", qn ? "extend" : "decode",
                 kvc_dtype_name(d), G, B);
        CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        /* the size, asked before any capture */
        rc = ws_need(&w, &need, msg, sizeof msg);
        EXPECT(rc == 0 && need > 0,
               "%s: the size query returned %d, %zu bytes (the call captured, planned for the capacity, must "
               "split): %s",
               what, rc, need, msg);
        if (rc != 0 || need == 0)
                goto out;
        CK(cudaMalloc((void **)&ws, need + guard));
        CK(cudaMemset(ws, 0xFF, need + guard));

        /* eagerly the capture's short lengths do not split: the answer is
         * the captured plan's alone */
        rc = ws_run(&w, ws, 0, st, msg, sizeof msg);
        CK(cudaStreamSynchronize(st));
        EXPECT(rc == 0, "%s: the eager call at the capture's lengths refused a workspace of 0 bytes: %d %s", what,
               rc, msg);
        if (rc != 0)
                goto out;

        /* a byte short: refused under capture, nothing captured; the
         * captured call needs all of the answer */
        CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
        msg[0] = 0;
        rc = ws_run(&w, ws, need - 1, st, msg, sizeof msg);
        capture_empty(st, what, "the call with a short workspace");
        {
                char want[160];
                snprintf(want, sizeof want, "workspace of %zu bytes is too small, the call needs %zu", need - 1,
                         need);
                EXPECT(rc == -ENOSPC && strstr(msg, want), "%s: a workspace a byte short under capture: %d '%s', "
                       "want '%s'", what, rc, msg, want);
        }

        /* the control: on the launcher's scratch the graph allocates */
        CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
        rc = ws_run(&w, NULL, 0, st, msg, sizeof msg);
        cudaError_t ce = cudaStreamEndCapture(st, &gs);
        EXPECT(rc == 0 && ce == cudaSuccess, "%s: the control capture: %d %s, %s", what, rc, msg,
               cudaGetErrorString(ce));
        if (ce == cudaSuccess) {
                EXPECT(graph_count(gs, cudaGraphNodeTypeMemAlloc) > 0 && graph_count(gs, cudaGraphNodeTypeMemFree) > 0,
                       "%s: the call without workspace captured no allocation: the check below proves nothing",
                       what);
                CK(cudaGraphDestroy(gs));
        } else {
                (void)cudaGetLastError();
        }

        CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
        rc = ws_run(&w, ws, need, st, msg, sizeof msg);
        ce = cudaStreamEndCapture(st, &g);
        EXPECT(rc == 0 && ce == cudaSuccess, "%s: the capture: %d %s, %s", what, rc, msg, cudaGetErrorString(ce));
        if (rc != 0 || ce != cudaSuccess) {
                (void)cudaGetLastError();
                if (g)
                        CK(cudaGraphDestroy(g));
                goto out;
        }
        const size_t allocs = graph_count(g, cudaGraphNodeTypeMemAlloc) + graph_count(g, cudaGraphNodeTypeMemFree);
        EXPECT(allocs == 0, "%s: %zu allocation or free nodes in the graph", what, allocs);
        EXPECT(graph_count(g, cudaGraphNodeTypeKernel) >= 2, "%s: %zu kernel nodes: a split needs the merge too",
               what, graph_count(g, cudaGraphNodeTypeKernel));
        CK(cudaGraphClone(&gc, g));
        CK(cudaGraphCreate(&gp, 0));
        CK(cudaGraphAddChildGraphNode(&child, gp, NULL, 0, g));
        CK(cudaGraphInstantiate(&ex[0], g, 0));
        CK(cudaGraphInstantiate(&ex[1], gc, 0));
        CK(cudaGraphInstantiate(&ex[2], gc, 0));
        CK(cudaGraphInstantiate(&ex[3], gp, 0));
        for (int i = 0; i < nreplays; i++) {
                for (int e = 0; e < 4; e++) {
                        char rw[300];
                        cases++;
                        snprintf(rw, sizeof rw, "%s: %s, replay %d (len0 %d)", what, execs[e], i, replays[i][0]);
                        void *q2 = make_q(&r, KVC_ELEM_BF16, c.n); /* new contents each replay */
                        CK(cudaMemcpy(c.dc.q, q2, c.n * 2, cudaMemcpyHostToDevice));
                        CK(cudaMemcpy(c.dc.lens, replays[i], sizeof(int32_t) * B, cudaMemcpyHostToDevice));
                        graph_replay(ex[e], st, &c.dc, c.got);
                        int rr = ws_ref(&c.hv, &w, q2, c.ref, c.ind, c.pt, replays[i], msg, sizeof msg);
                        EXPECT(rr == 0, "%s: the reference returned %d: %s", rw, rr, msg);
                        if (rr == 0)
                                compare(rw, c.got, c.ref, KVC_ELEM_BF16, c.rows, c.Hq, 128);
                        free(q2);
                }
        }
        {
                uint8_t hg[64];
                size_t past = 0;
                CK(cudaMemcpy(hg, ws + need, guard, cudaMemcpyDeviceToHost));
                for (size_t i = 0; i < guard; i++)
                        past += hg[i] != 0xFF;
                EXPECT(past == 0, "%s: the replays wrote %zu of the %zu guard bytes after the workspace", what, past,
                       guard);
        }
        for (int e = 0; e < 4; e++)
                CK(cudaGraphExecDestroy(ex[e]));
        CK(cudaGraphDestroy(gp));
        CK(cudaGraphDestroy(gc));
        CK(cudaGraphDestroy(g));
out:
        CK(cudaStreamSynchronize(st));
        CK(cudaStreamDestroy(st));
        if (ws)
                CK(cudaFree(ws));
        gcase_fini(&c);
}

static void workspaces(void)
{
        static const int32_t one[1] = { 20000 }, four[4] = { 5000, 4100, 700, 64 }, few[2] = { 16, 100 };
        static const int32_t qn[4] = { 2, 2, 2, 2 }, qt[4] = { 64, 64, 64, 64 }, qf[2] = { 1, 3 };

        /* eager: decode split over the GPU (one long sequence, a batch),
         * extend on the decode kernel (G = 4: 2 rows a CTA; G = 8: a row a
         * CTA) and on the tiled kernel (64 rows a sequence), and calls
         * that do not split */
        ws_eager(KVC_DTYPE_BF16, 4, 1, one, NULL, true, 500);
        ws_eager(KVC_DTYPE_FP8_E4M3, 4, 4, four, NULL, true, 501);
        ws_eager(KVC_DTYPE_FP4_E2M1, 8, 4, four, NULL, true, 502);
        ws_eager(KVC_DTYPE_BF16, 4, 4, four, qn, true, 503);
        ws_eager(KVC_DTYPE_FP8_E4M3, 8, 4, four, qn, true, 504);
        ws_eager(KVC_DTYPE_FP4_E2M1, 4, 4, four, qt, true, 505);
        ws_eager(KVC_DTYPE_BF16, 4, 2, few, NULL, false, 506);
        ws_eager(KVC_DTYPE_BF16, 4, 2, few, qf, false, 507);

        /* captured, cloned, instantiated twice, embedded; replayed at
         * other lengths (graph_replays' cases) */
        static const int32_t one_a[1] = { 20000 }, one_b[1] = { 3000 };
        static const int32_t *const ones[] = { one_a, one_b };
        static const int32_t four_b[4] = { 17, 4100, 2, 64 }, four_d[4] = { 64, 4100, 90, 64 };
        static const int32_t *const fours[] = { four, four_b }, *const fourt[] = { four, four_d };
        ws_graph(KVC_DTYPE_BF16, 4, 1, one, ones, 2, NULL, 510);
        ws_graph(KVC_DTYPE_FP8_E4M3, 4, 4, four, fours, 2, NULL, 511);
        ws_graph(KVC_DTYPE_BF16, 4, 4, four, fours, 2, qn, 512);
        ws_graph(KVC_DTYPE_FP4_E2M1, 8, 4, four, fours, 2, qn, 513);
        ws_graph(KVC_DTYPE_FP8_E4M3, 4, 4, four, fourt, 2, qt, 514);
}

int main(int argc, char **argv)
{
        gpu_require_device(argv[0]);
        if (argc > 1 && strcmp(argv[1], "graph") == 0) { /* test_attn graph: the graph replays alone */
                graph_replays();
                workspaces();
                printf("test_attn graph: %d cases, %d failures, worst relative error %.3g (bound 1e-2)\n", cases,
                       failures, worst);
                return failures ? 1 : 0;
        }
        shapes();
        long_sequences();
        prefill_tiles();
        packed_rows();
        many_rows();
        graph_replays();
        workspaces();
        bad_page();
        arg_errors();
        CK(cudaGetLastError());
        printf("test_attn: %d cases, %d failures, worst relative error %.3g (bound 1e-2)\n", cases, failures,
               worst);
        return failures ? 1 : 0;
}
