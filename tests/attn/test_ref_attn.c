/* test_ref_attn.c - the CPU reference attention (kv_ref_decode,
 * kv_ref_extend) against a naive double-precision attention over the
 * dequantized pool values (kv_ref_gather), and its argument errors.
 * Suite 'unit'. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "kv_codec.h"
#include "kv_layout.h"
#include "kv_ops.h"

struct tpool {
        struct kv_layout L;
        struct kv_pool_view v;
        float ks[2], vs[2];
        int32_t *pt;            /* [B, maxp] */
        uint32_t maxp, B;
        int32_t lens[8];
};

static uint64_t st;
static float rnd(void)
{
        /* sum of uniforms: roughly normal, deterministic per test */
        float s = 0;
        for (int i = 0; i < 4; i++) {
                st = st * 6364136223846793005ull + 1442695040888963407ull;
                s += (float)((st >> 40) & 0xFFFFFF) / 16777216.0f - 0.5f;
        }
        return s * 1.7f;
}

/* A pool with B sequences of lengths lens, pages in reverse order. */
static void tpool_init(struct tpool *P, enum kvc_dtype d, uint32_t H, uint32_t D, uint32_t ps, uint32_t B,
                       const int32_t *lens)
{
        uint32_t total = 0, maxp = 1;
        memset(P, 0, sizeof *P);
        for (uint32_t b = 0; b < B; b++) {
                uint32_t np = ((uint32_t)lens[b] + ps - 1) / ps;
                total += np;
                maxp = np > maxp ? np : maxp;
                P->lens[b] = lens[b];
        }
        struct kv_geom g = { .dtype = d, .num_layers = 2, .kv_heads = H, .head_dim = D, .page_size = ps };
        cr_assert_eq(kv_layout_init(&g, total + 1, &P->L), 0);
        P->ks[0] = P->ks[1] = 0.023f;
        P->vs[0] = P->vs[1] = 0.011f;
        P->v = (struct kv_pool_view){ .base = malloc(P->L.alloc_bytes), .layout = P->L, .k_scale = P->ks,
                                      .v_scale = P->vs };
        memset(P->v.base, 0x7F, P->L.alloc_bytes); /* NaN-ish poison where nothing is written */
        P->maxp = maxp;
        P->B = B;
        P->pt = calloc((size_t)B * maxp, sizeof(int32_t));
        uint32_t next = total;
        for (uint32_t b = 0; b < B; b++) {
                uint32_t np = ((uint32_t)lens[b] + ps - 1) / ps;
                for (uint32_t i = 0; i < np; i++)
                        P->pt[b * maxp + i] = (int32_t)--next;
                const uint32_t T = (uint32_t)lens[b], row = H * D;
                if (!T)
                        continue;
                float *k = malloc(sizeof(float) * T * row), *v = malloc(sizeof(float) * T * row);
                int64_t *slots = malloc(sizeof(int64_t) * T);
                for (uint32_t i = 0; i < T * row; i++) {
                        k[i] = rnd() * (i % D == 9 ? 12.0f : 1.5f);
                        v[i] = rnd();
                }
                for (uint32_t j = 0; j < T; j++)
                        slots[j] = (int64_t)P->pt[b * maxp + j / ps] * ps + j % ps;
                struct kvc_write_args wa = { .k = k, .v = v, .elem = KVC_ELEM_F32, .k_row_stride = row,
                                             .v_row_stride = row, .slots = slots, .num_tokens = T, .layer = 1 };
                char msg[200];
                cr_assert_eq(kv_ref_write(&P->v, &wa, msg, sizeof msg), 0, "%s", msg);
                free(k);
                free(v);
                free(slots);
        }
}

static void tpool_fini(struct tpool *P)
{
        free(P->v.base);
        free(P->pt);
}

/* Naive attention in double over kv_ref_gather's dequantized K/V:
 * rows [r0, r0+n) of sequence b, row r0+i seeing keys [0, len-n+i]. */
static void naive(struct tpool *P, uint32_t b, const uint16_t *q, uint32_t r0, uint32_t n, uint32_t Hq,
                  float sm, double *out)
{
        const uint32_t H = P->L.g.kv_heads, D = P->L.g.head_dim, ps = P->L.g.page_size, G = Hq / H;
        const uint32_t len = (uint32_t)P->lens[b], np = (len + ps - 1) / ps;
        float *K = malloc(sizeof(float) * (np * ps + 1) * H * D), *V = malloc(sizeof(float) * (np * ps + 1) * H * D);
        struct kvc_gather_args ga = { .pages = P->pt + b * P->maxp, .n_pages = np, .layer = 1, .k_out = K,
                                      .v_out = V, .elem = KVC_ELEM_F32 };
        char msg[200];
        cr_assert_eq(kv_ref_gather(&P->v, &ga, msg, sizeof msg), 0, "%s", msg);
        for (uint32_t i = 0; i < n; i++) {
                const uint32_t see = len - n + i + 1;
                for (uint32_t h = 0; h < Hq; h++) {
                        const uint16_t *qq = q + ((size_t)(r0 + i) * Hq + h) * D;
                        double *o = out + ((size_t)(r0 + i) * Hq + h) * D, m = -INFINITY, l = 0;
                        double *s = malloc(sizeof(double) * (see + 1));
                        for (uint32_t j = 0; j < see; j++) {
                                double dot = 0;
                                for (uint32_t d = 0; d < D; d++)
                                        dot += (double)kv_f16_to_f32(qq[d]) * K[((size_t)j * H + h / G) * D + d];
                                s[j] = dot * sm;
                                m = s[j] > m ? s[j] : m;
                        }
                        memset(o, 0, sizeof(double) * D);
                        for (uint32_t j = 0; j < see; j++) {
                                double w = exp(s[j] - m);
                                l += w;
                                for (uint32_t d = 0; d < D; d++)
                                        o[d] += w * V[((size_t)j * H + h / G) * D + d];
                        }
                        for (uint32_t d = 0; d < D; d++)
                                o[d] = see ? o[d] / l : 0.0;
                        free(s);
                }
        }
        free(K);
        free(V);
}

/* out (f16) vs ref (double): per-row relative error <= tol; zero rows exact. */
static void expect_close(const uint16_t *out, const double *ref, uint32_t rows, uint32_t Hq, uint32_t D,
                         double tol, const char *what)
{
        for (uint32_t r = 0; r < rows * Hq; r++) {
                double num = 0, den = 0;
                for (uint32_t d = 0; d < D; d++) {
                        double a = kv_f16_to_f32(out[(size_t)r * D + d]), b = ref[(size_t)r * D + d];
                        cr_assert(!isnan(a), "%s: NaN at row %u", what, r / Hq);
                        num += (a - b) * (a - b);
                        den += b * b;
                }
                if (den == 0)
                        cr_assert_eq(num, 0, "%s: row %u head %u should be 0", what, r / Hq, r % Hq);
                else
                        cr_assert_leq(sqrt(num / den), tol, "%s: row %u head %u: rel err %g", what, r / Hq,
                                      r % Hq, sqrt(num / den));
        }
}

static uint16_t *make_q(size_t n)
{
        uint16_t *q = malloc(n * 2 + 2);
        for (size_t i = 0; i < n; i++)
                q[i] = kv_f32_to_f16(rnd());
        return q;
}

static void decode_case(enum kvc_dtype d, uint32_t D, uint32_t ps, uint32_t H, uint32_t G)
{
        struct tpool P;
        const int32_t lens[5] = { 1, (int32_t)ps, (int32_t)ps + 1, 0, 77 };
        const uint32_t B = 5, Hq = H * G;
        st = 12345 + d * 7 + D + ps;
        tpool_init(&P, d, H, D, ps, B, lens);
        uint16_t *q = make_q((size_t)B * Hq * D), *out = malloc((size_t)B * Hq * D * 2);
        double *ref = malloc(sizeof(double) * B * Hq * D);
        memset(out, 0xFF, (size_t)B * Hq * D * 2);
        for (uint32_t b = 0; b < B; b++)
                naive(&P, b, q, b, 1, Hq, 0.1f, ref);
        struct kvc_decode_args a = { .q = q, .out = out, .elem = KVC_ELEM_F16, .page_table = P.pt,
                                     .max_pages = P.maxp, .seq_lens = P.lens, .batch = B, .num_q_heads = Hq,
                                     .sm_scale = 0.1f, .layer = 1 };
        char msg[200] = "";
        cr_assert_eq(kv_ref_decode(&P.v, &a, msg, sizeof msg), 0, "%s", msg);
        char what[80];
        snprintf(what, sizeof what, "decode %s D=%u page=%u G=%u", kvc_dtype_name(d), D, ps, G);
        /* the reference rounds to f16 once at the end: 2^-11 relative, plus fp32 sums */
        expect_close(out, ref, B, Hq, D, 2e-3, what);
        free(q);
        free(out);
        free(ref);
        tpool_fini(&P);
}

Test(ref_attn, decode_every_dtype_vs_naive_double)
{
        for (int d = 0; d < KVC_DTYPE__COUNT; d++) {
                decode_case((enum kvc_dtype)d, 64, 16, 2, 4);
                decode_case((enum kvc_dtype)d, 128, 1, 1, 3);
                decode_case((enum kvc_dtype)d, 256, 7, 2, 1);
        }
}

Test(ref_attn, extend_causal_with_prefix_vs_naive_double)
{
        for (int d = 0; d < KVC_DTYPE__COUNT; d += 2) {
                struct tpool P;
                const int32_t lens[3] = { 20, 9, 33 }, nq[3] = { 20, 4, 1 }; /* full prefill, chunk, decode */
                const uint32_t B = 3, H = 2, Hq = 4, D = 64, rows = 25;
                int32_t ind[4] = { 0, 20, 24, 25 };
                st = 99 + d;
                tpool_init(&P, (enum kvc_dtype)d, H, D, 4, B, lens);
                uint16_t *q = make_q((size_t)rows * Hq * D), *out = malloc((size_t)rows * Hq * D * 2);
                double *ref = malloc(sizeof(double) * rows * Hq * D);
                for (uint32_t b = 0; b < B; b++)
                        naive(&P, b, q, (uint32_t)ind[b], (uint32_t)nq[b], Hq, 0.125f, ref);
                struct kvc_extend_args a = { .q = q, .out = out, .elem = KVC_ELEM_F16, .qo_indptr = ind,
                                             .page_table = P.pt, .max_pages = P.maxp, .seq_lens = P.lens,
                                             .batch = B, .num_q_heads = Hq, .sm_scale = 0.125f, .layer = 1 };
                char msg[200] = "";
                cr_assert_eq(kv_ref_extend(&P.v, &a, msg, sizeof msg), 0, "%s", msg);
                expect_close(out, ref, rows, Hq, D, 2e-3, kvc_dtype_name((enum kvc_dtype)d));
                /* the first query of a full prefill sees only key 0: its output is V[0] */
                free(q);
                free(out);
                free(ref);
                tpool_fini(&P);
        }
}

Test(ref_attn, single_key_returns_its_value)
{
        struct tpool P;
        const int32_t lens[1] = { 1 };
        st = 5;
        tpool_init(&P, KVC_DTYPE_FP16, 1, 64, 16, 1, lens);
        uint16_t *q = make_q(2 * 64), out[2 * 64];
        struct kvc_decode_args a = { .q = q, .out = out, .elem = KVC_ELEM_F16, .page_table = P.pt,
                                     .max_pages = P.maxp, .seq_lens = P.lens, .batch = 1, .num_q_heads = 2,
                                     .sm_scale = 3.0f, .layer = 1 };
        cr_assert_eq(kv_ref_decode(&P.v, &a, NULL, 0), 0);
        const uint8_t *vb = (const uint8_t *)P.v.base + kv_layout_v(&P.L, 1) + (uint64_t)P.pt[0] * P.L.page_bytes;
        for (int h = 0; h < 2; h++)
                cr_assert_eq(memcmp(out + h * 64, vb, 128), 0, "head %d: softmax over one key is that key's V", h);
        free(q);
        tpool_fini(&P);
}

/* A call whose keys the host cannot hold in its scratch (here: the address
 * space limited below it) fails with -ENOMEM before any output row is
 * written, even when its first sequences are short. */
Test(ref_attn, out_of_memory_leaves_out_untouched)
{
#if defined(__SANITIZE_ADDRESS__)
        cr_skip_test("ASan reserves address space that RLIMIT_AS would take away");
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
        cr_skip_test("ASan reserves address space that RLIMIT_AS would take away");
#endif
#endif
        struct tpool P;
        const int32_t lens1[1] = { 16 };
        st = 11;
        tpool_init(&P, KVC_DTYPE_FP16, 1, 64, 16, 1, lens1);
        enum { MAXP = 1 << 18 };          /* 4M keys: 1 GiB of K scratch alone */
        int32_t *pt = malloc(sizeof(int32_t) * 2 * MAXP), lens[2] = { 16, MAXP * 16 };
        for (uint32_t i = 0; i < 2u * MAXP; i++)
                pt[i] = P.pt[0];          /* every entry the one written page */
        uint16_t *q = make_q(2 * 64), out[2 * 64];
        memset(out, 0xAB, sizeof out);
        struct kvc_decode_args a = { .q = q, .out = out, .elem = KVC_ELEM_F16, .page_table = pt,
                                     .max_pages = MAXP, .seq_lens = lens, .batch = 2, .num_q_heads = 1,
                                     .sm_scale = 0.125f, .layer = 1 };
        long pages = 0;
        FILE *f = fopen("/proc/self/statm", "r");
        cr_assert_not_null(f);
        cr_assert_eq(fscanf(f, "%ld", &pages), 1);
        fclose(f);
        const struct rlimit rl = { .rlim_cur = (rlim_t)pages * 4096 + (256u << 20), .rlim_max = RLIM_INFINITY };
        cr_assert_eq(setrlimit(RLIMIT_AS, &rl), 0);
        char m[256] = "";
        const int r = kv_ref_decode(&P.v, &a, m, sizeof m);
        cr_assert_eq(r, -ENOMEM, "got %d (%s)", r, m);
        cr_expect(strstr(m, "scratch") != NULL, "%s", m);
        for (size_t i = 0; i < 2 * 64; i++)
                cr_assert_eq(out[i], 0xABAB, "out[%zu] written by a call that failed", i);
        free(q);
        free(pt);
        tpool_fini(&P);
}

#define ERR(call, want, needle)                                                                    \
        do {                                                                                       \
                char m_[256] = "";                                                                 \
                int r_ = call(&P.v, &a, m_, sizeof m_);                                            \
                cr_expect_eq(r_, want, "%s: got %d (%s)", needle, r_, m_);                         \
                cr_expect(strstr(m_, needle) != NULL, "message '%s' lacks '%s'", m_, needle);      \
        } while (0)

Test(ref_attn, decode_argument_errors)
{
        struct tpool P;
        const int32_t lens[2] = { 30, 5 };
        st = 7;
        tpool_init(&P, KVC_DTYPE_FP8_E4M3, 2, 64, 16, 2, lens);
        uint16_t q[2 * 4 * 64], out[2 * 4 * 64];
        const struct kvc_decode_args ok = { .q = q, .out = out, .elem = KVC_ELEM_BF16, .page_table = P.pt,
                                            .max_pages = P.maxp, .seq_lens = P.lens, .batch = 2,
                                            .num_q_heads = 4, .sm_scale = 0.1f, .layer = 1 };
        struct kvc_decode_args a;
        memset(q, 0, sizeof q);
        a = ok;
        cr_assert_eq(kv_ref_decode(&P.v, &a, NULL, 0), 0);
        a = ok; a.num_q_heads = 3;
        ERR(kv_ref_decode, -EINVAL, "num_q_heads 3 is not a positive multiple of kv_heads 2");
        a = ok; a.num_q_heads = 0;
        ERR(kv_ref_decode, -EINVAL, "num_q_heads 0");
        a = ok; a.num_q_heads = 0xFFFFFFFEu; /* a multiple of kv_heads 2: used to wrap the launch's head groups */
        ERR(kv_ref_decode, -EINVAL, "num_q_heads 4294967294 is more than 65536");
        a = ok; a.layer = 2;
        ERR(kv_ref_decode, -EINVAL, "layer 2 out of range [0, 2)");
        a = ok; a.elem = KVC_ELEM_F32;
        ERR(kv_ref_decode, -EINVAL, "elem 0 is not BF16 or F16");
        a = ok; a.max_pages = 1;
        ERR(kv_ref_decode, -EINVAL, "seq_lens[0] = 30 out of range [0, max_pages*page_size = 16]");
        int32_t neg[2] = { 30, -1 };
        a = ok; a.seq_lens = neg;
        ERR(kv_ref_decode, -EINVAL, "seq_lens[1] = -1");
        a = ok; a.sm_scale = INFINITY;
        ERR(kv_ref_decode, -EINVAL, "sm_scale");
        a = ok; a.out = NULL;
        ERR(kv_ref_decode, -EINVAL, "out is NULL");
        a = ok; a.page_table = NULL;
        ERR(kv_ref_decode, -EINVAL, "page_table is NULL");
        a = ok; a.seq_lens = NULL; /* seq_lens_host is optional on a host pool, seq_lens is not */
        ERR(kv_ref_decode, -EINVAL, "decode: seq_lens is NULL");
        /* a misaligned array is named itself, not as one of a list (a
         * seq_lens_host off by 2 bytes used to be reported as "page_table,
         * seq_lens or qo_indptr") */
        a = ok; a.q = (const char *)q + 1;
        ERR(kv_ref_decode, -EINVAL, "decode: q is not 2-byte aligned");
        a = ok; a.out = (char *)out + 1;
        ERR(kv_ref_decode, -EINVAL, "decode: out is not 2-byte aligned");
        a = ok; a.page_table = (const int32_t *)((const char *)P.pt + 2);
        ERR(kv_ref_decode, -EINVAL, "decode: page_table is not 4-byte aligned");
        _Alignas(8) char lens_buf[3 * sizeof(int32_t)];
        int32_t *lens_mis = (int32_t *)(lens_buf + 2);
        memcpy(lens_mis, P.lens, 2 * sizeof(int32_t));
        a = ok; a.seq_lens = lens_mis;
        ERR(kv_ref_decode, -EINVAL, "decode: seq_lens is not 4-byte aligned");
        a = ok; a.seq_lens_host = lens_mis;
        ERR(kv_ref_decode, -EINVAL, "decode: seq_lens_host is not 4-byte aligned");
        /* a table of max_pages entries per row is part of the call even when
         * every length is 0 (the CUDA kernel reads rows ahead of lengths) */
        const int32_t zero[2] = { 0, 0 };
        a = ok; a.page_table = NULL; a.seq_lens = zero;
        ERR(kv_ref_decode, -EINVAL, "page_table is NULL (max_pages 2)");
        a = ok; a.page_table = NULL; a.seq_lens = zero; a.max_pages = 0;
        cr_expect_eq(kv_ref_decode(&P.v, &a, NULL, 0), 0, "no table, no pages: fine");
        /* the kernels count a row's keys in 32 bits */
        a = ok; a.max_pages = (1u << 27) + 1;
        ERR(kv_ref_decode, -EINVAL, "max_pages 134217729 x page_size 16 = 2147483664 keys per row");
        int32_t saved = P.pt[1];
        P.pt[1] = (int32_t)P.L.num_pages;
        a = ok;
        ERR(kv_ref_decode, -ERANGE, "page_table[0][1]");
        P.pt[1] = -2;
        ERR(kv_ref_decode, -ERANGE, "page_table[0][1] = -2 out of range");
        P.pt[1] = saved;
        P.ks[1] = -1.0f;
        ERR(kv_ref_decode, -EINVAL, "k_scale[1]");
        P.ks[1] = 0.023f;
        /* The lengths checked are seq_lens_host's; a seq_lens that says more
         * must not send the reference to page-table entries (and pages) that
         * were never checked: sequence 1 needs one page by its host length,
         * its second entry holds a page id outside the pool. */
        int32_t longer[2] = { 30, 20 };
        P.pt[3] = (int32_t)P.L.num_pages + 1000;
        a = ok; a.seq_lens = longer; a.seq_lens_host = P.lens;
        ERR(kv_ref_decode, -EINVAL, "seq_lens[1] = 20 differs from seq_lens_host[1] = 5");
        P.pt[3] = 0;
        a = ok; a.seq_lens_host = P.lens;
        cr_expect_eq(kv_ref_decode(&P.v, &a, NULL, 0), 0, "a separate but equal host copy is fine");
        struct kv_pool_view nob = P.v;
        nob.base = NULL;
        char m[200] = "";
        cr_expect_eq(kv_ref_decode(&nob, &ok, m, sizeof m), -EINVAL);
        cr_expect(strstr(m, "pool base is NULL"), "%s", m);
        cr_expect_eq(kv_ref_decode(&P.v, NULL, m, sizeof m), -EINVAL);
        /* batch 0 is a no-op */
        a = ok; a.batch = 0;
        cr_expect_eq(kv_ref_decode(&P.v, &a, NULL, 0), 0);
        tpool_fini(&P);
}

Test(ref_attn, extend_argument_errors)
{
        struct tpool P;
        const int32_t lens[2] = { 10, 3 };
        st = 8;
        tpool_init(&P, KVC_DTYPE_BF16, 1, 64, 4, 2, lens);
        uint16_t q[6 * 64], out[6 * 64];
        int32_t ind[3] = { 0, 2, 6 }, ind0[3] = { 2, 2, 6 }, dec[3] = { 0, 5, 4 };
        memset(q, 0, sizeof q);
        const struct kvc_extend_args ok = { .q = q, .out = out, .elem = KVC_ELEM_F16, .qo_indptr = ind,
                                            .page_table = P.pt, .max_pages = P.maxp, .seq_lens = P.lens,
                                            .batch = 2, .num_q_heads = 1, .sm_scale = 0.1f, .layer = 1 };
        struct kvc_extend_args a;
        a = ok;
        ERR(kv_ref_extend, -EINVAL, "sequence 1 has 4 queries but seq_lens[1] = 3");
        a = ok; a.qo_indptr = ind0;
        ERR(kv_ref_extend, -EINVAL, "qo_indptr[0] = 2, must be 0");
        a = ok; a.qo_indptr = dec;
        ERR(kv_ref_extend, -EINVAL, "qo_indptr[2] = 4 < qo_indptr[1] = 5");
        a = ok; a.qo_indptr = NULL;
        ERR(kv_ref_extend, -EINVAL, "qo_indptr is NULL");
        int32_t good_[3] = { 0, 3, 6 };
        _Alignas(8) char ind_buf[4 * sizeof(int32_t)];
        int32_t *ind_mis = (int32_t *)(ind_buf + 2);
        memcpy(ind_mis, good_, sizeof good_);
        a = ok; a.qo_indptr = ind_mis;
        ERR(kv_ref_extend, -EINVAL, "extend: qo_indptr is not 4-byte aligned");
        a = ok; a.qo_indptr = good_; a.qo_indptr_host = ind_mis;
        ERR(kv_ref_extend, -EINVAL, "extend: qo_indptr_host is not 4-byte aligned");
        a = ok; a.qo_indptr = NULL; a.batch = 0;
        cr_expect_eq(kv_ref_extend(&P.v, &a, NULL, 0), 0, "an empty batch needs no qo_indptr (as on CUDA)");
        int32_t good[3] = { 0, 3, 6 };
        a = ok; a.qo_indptr = good;
        cr_expect_eq(kv_ref_extend(&P.v, &a, NULL, 0), 0);
        /* qo_indptr_host is what gets checked; a qo_indptr that disagrees (here
         * 5 queries for sequence 1 of length 3, rows past out's end) is refused */
        int32_t wild[3] = { 0, 2, 7 };
        a = ok; a.qo_indptr = wild; a.qo_indptr_host = good;
        ERR(kv_ref_extend, -EINVAL, "qo_indptr[1] = 2 differs from qo_indptr_host[1] = 3");
        int32_t longer[2] = { 10, 9 };
        a = ok; a.qo_indptr = good; a.seq_lens = longer; a.seq_lens_host = P.lens;
        ERR(kv_ref_extend, -EINVAL, "seq_lens[1] = 9 differs from seq_lens_host[1] = 3");
        int32_t good2[3] = { 0, 3, 6 }, lens2[2] = { 10, 3 };
        a = ok; a.qo_indptr = good; a.qo_indptr_host = good2; a.seq_lens_host = lens2;
        cr_expect_eq(kv_ref_extend(&P.v, &a, NULL, 0), 0, "separate but equal host copies are fine");
        tpool_fini(&P);
}
