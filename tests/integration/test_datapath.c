/* test_datapath.c - the full kvc_write / kvc_gather path through libkvclient
 * on host pools of every dtype, against a private copy written and gathered
 * by the CPU reference, and against the inputs within the dtype's rounding. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "kv_layout.h"
#include "kv_ops.h"

static struct kvt_daemon D;

static void cleanup(void)
{
        if (D.dir[0])
                kvt_daemon_cleanup(&D);
}

static const char *const dtypes[] = { "bf16", "fp16", "fp8_e4m3", "fp8_e5m2", "fp4_e2m1" };

/* Relative rounding of each dtype (half an ulp), generous for fp4 (checked
 * against the block's amax instead). */
static double tol(enum kvc_dtype dt, double x, double block_amax)
{
        switch (dt) {
        case KVC_DTYPE_BF16:     return fabs(x) * 0x1p-8 + 1e-30;
        case KVC_DTYPE_FP16:     return fabs(x) * 0x1p-11 + 0x1p-24;
        case KVC_DTYPE_FP8_E4M3: return fabs(x) * 0x1p-4 + 0x1p-9;
        case KVC_DTYPE_FP8_E5M2: return fabs(x) * 0x1p-3 + 0x1p-16;
        default:                 return block_amax / 3.0 + 1e-30;
        }
}

static float rnd(unsigned *s)
{
        *s = *s * 1103515245u + 12345u;
        return (float)((*s >> 8) & 0xffff) / 65536.0f * 6.0f - 3.0f;
}

#define NP 3
#define T  40

static void one_dtype(kvc_client *c, const char *name)
{
        kvc_pool *p;
        const struct kvc_pool_desc *d;
        int32_t pages[NP], own[NP] = { 0, 1, 2 };
        unsigned seed = 12345;
        char msg[256] = "";
        int rv;

        cr_assert_eq(kvc_attach(c, name, &p), 0, "%s: %s", name, kvc_errmsg(c));
        d = kvc_pool_get_desc(p);
        cr_assert_eq(kvc_dtype_name(d->dtype) != NULL && strcmp(kvc_dtype_name(d->dtype), name) == 0, 1,
                     "pool %s has dtype %d", name, d->dtype);
        cr_assert_eq(kvc_alloc(p, NP, pages), 0, "%s", kvc_errmsg(c));

        uint64_t row = (uint64_t)d->kv_heads * d->head_dim, stride = row + 8;
        uint64_t out_n = (uint64_t)NP * d->page_size * row;
        float *k = malloc(T * stride * 4), *v = malloc(T * stride * 4);
        float *gk = malloc(out_n * 4), *gv = malloc(out_n * 4), *rk = malloc(out_n * 4), *rv_ = malloc(out_n * 4);
        uint16_t *bk = malloc(out_n * 2), *bv = malloc(out_n * 2), *rbk = malloc(out_n * 2), *rbv = malloc(out_n * 2);
        int64_t slots[T], pslots[T];
        struct kv_geom g = { d->dtype, d->num_layers, d->kv_heads, d->head_dim, d->page_size };
        struct kv_pool_view priv = { .k_scale = d->k_scale, .v_scale = d->v_scale };

        cr_assert(k && v && gk && gv && rk && rv_ && bk && bv && rbk && rbv);
        cr_assert_eq(kv_layout_init(&g, NP, &priv.layout), 0);
        priv.base = calloc(1, priv.layout.alloc_bytes);
        cr_assert_not_null(priv.base);
        /* Tokens fill the pages in order; every 7th token is skipped (-1). */
        for (int t = 0; t < T; t++) {
                int i = t / (int)d->page_size, o = t % (int)d->page_size;

                slots[t] = t % 7 == 3 ? -1 : (int64_t)pages[i] * d->page_size + o;
                pslots[t] = t % 7 == 3 ? -1 : (int64_t)own[i] * d->page_size + o;
        }
        for (uint32_t l = 0; l < d->num_layers; l++) {
                for (uint64_t i = 0; i < T * stride; i++) {
                        k[i] = rnd(&seed);
                        v[i] = rnd(&seed) * 0.25f;
                }
                struct kvc_write_args w = { .k = k, .v = v, .elem = KVC_ELEM_F32,
                                            .k_row_stride = (int64_t)stride, .v_row_stride = (int64_t)stride,
                                            .slots = slots, .num_tokens = T, .layer = l };
                struct kvc_write_args pw = w;

                pw.slots = pslots;
                rv = kvc_write(p, &w, NULL);
                cr_assert_eq(rv, 0, "%s layer %u: kvc_write: %s", name, l, kvc_errmsg(c));
                cr_assert_eq(kv_ref_write(&priv, &pw, msg, sizeof msg), 0, "%s", msg);

                struct kvc_gather_args ga = { .pages = pages, .n_pages = NP, .layer = l,
                                              .k_out = gk, .v_out = gv, .elem = KVC_ELEM_F32 };
                struct kvc_gather_args pg = { .pages = own, .n_pages = NP, .layer = l,
                                              .k_out = rk, .v_out = rv_, .elem = KVC_ELEM_F32 };

                cr_assert_eq(kvc_gather(p, &ga, NULL), 0, "%s: kvc_gather: %s", name, kvc_errmsg(c));
                cr_assert_eq(kv_ref_gather(&priv, &pg, msg, sizeof msg), 0, "%s", msg);
                cr_assert_eq(memcmp(gk, rk, out_n * 4), 0, "%s layer %u: K differs from the reference", name, l);
                cr_assert_eq(memcmp(gv, rv_, out_n * 4), 0, "%s layer %u: V differs from the reference", name, l);
                /* Stored values are the inputs within the dtype's rounding;
                 * skipped tokens and the unwritten tail stay zero. */
                for (int t = 0; t < NP * (int)d->page_size; t++) {
                        for (uint64_t e = 0; e < row; e++) {
                                uint64_t i = (uint64_t)t * row + e;

                                if (t >= T || t % 7 == 3) {
                                        cr_assert_eq(gk[i], 0.0f, "%s: skipped token %d was written", name, t);
                                        continue;
                                }
                                for (int kv = 0; kv < 2; kv++) {
                                        const float *in = (kv ? v : k) + (uint64_t)t * stride;
                                        double amax = 0;

                                        for (uint64_t j = e - e % 16; j < e - e % 16 + 16; j++)
                                                amax = fmax(amax, fabs(in[j]));
                                        cr_assert(fabs((kv ? gv : gk)[i] - in[e]) <= tol(d->dtype, in[e], amax),
                                                  "%s layer %u token %d elem %llu %c: wrote %g, read %g", name, l,
                                                  t, (unsigned long long)e, kv ? 'V' : 'K', in[e], (kv ? gv : gk)[i]);
                                }
                        }
                }
                /* The bf16 output path too. */
                ga.elem = pg.elem = KVC_ELEM_BF16;
                ga.k_out = bk; ga.v_out = bv; pg.k_out = rbk; pg.v_out = rbv;
                cr_assert_eq(kvc_gather(p, &ga, NULL), 0, "%s: bf16 gather: %s", name, kvc_errmsg(c));
                cr_assert_eq(kv_ref_gather(&priv, &pg, msg, sizeof msg), 0, "%s", msg);
                cr_assert_eq(memcmp(bk, rbk, out_n * 2), 0, "%s: bf16 K differs", name);
                cr_assert_eq(memcmp(bv, rbv, out_n * 2), 0, "%s: bf16 V differs", name);
        }
        /* A bad argument is refused with a message naming it. */
        {
                struct kvc_write_args w = { .k = k, .v = v, .elem = KVC_ELEM_F32,
                                            .k_row_stride = (int64_t)stride, .v_row_stride = (int64_t)stride,
                                            .slots = slots, .num_tokens = T, .layer = d->num_layers };

                rv = kvc_write(p, &w, NULL);
                cr_assert_eq(rv, -EINVAL, "%s: layer out of range gave %d", name, rv);
                cr_assert(strstr(kvc_errmsg(c), "layer") != NULL, "message: %s", kvc_errmsg(c));
                cr_assert_eq(kvc_write(p, NULL, NULL), -EINVAL);
        }
        cr_assert_eq(kvc_free(p, NP, pages), 0);
        free(priv.base);
        free(k); free(v); free(gk); free(gv); free(rk); free(rv_);
        free(bk); free(bv); free(rbk); free(rbv);
}

Test(integration, write_gather_every_dtype_through_libkvclient, .fini = cleanup, .timeout = 60)
{
        const char *pools[6];
        kvc_client *c;

        for (int i = 0; i < 5; i++)
                pools[i] = kvt_pool_spec(i, dtypes[i], dtypes[i], "2MiB");
        pools[5] = NULL;
        cr_assert_eq(kvt_daemon_start(&D, pools), 0);
        cr_assert_eq(kvc_connect(D.url, "datapath", NULL, &c), 0);
        for (int i = 0; i < 5; i++)
                one_dtype(c, dtypes[i]);
        kvc_disconnect(c);
}

/* bf16 bits of a float that bf16 holds exactly. */
static uint16_t bf16(float f)
{
        uint32_t u;

        memcpy(&u, &f, 4);
        return (uint16_t)(u >> 16);
}

/* kvc_decode and kvc_extend reach the attention reference through the
 * library: with one cached token, attention returns that token's V. */
Test(integration, decode_and_extend_through_libkvclient, .fini = cleanup, .timeout = 60)
{
        const char *pools[] = { kvt_pool_spec(0, "att", "bf16", "2MiB"), NULL };
        kvc_client *c;
        kvc_pool *p;
        const struct kvc_pool_desc *d;
        int32_t page;

        cr_assert_eq(kvt_daemon_start(&D, pools), 0);
        cr_assert_eq(kvc_connect(D.url, "attention", NULL, &c), 0);
        cr_assert_eq(kvc_attach(c, "att", &p), 0);
        d = kvc_pool_get_desc(p);
        cr_assert_eq(kvc_alloc(p, 1, &page), 0);

        uint32_t H = d->kv_heads, Dm = d->head_dim, Hq = 2 * H, row = H * Dm;
        float *k = malloc(row * 4), *v = malloc(row * 4);
        uint16_t *q = malloc(Hq * Dm * 2), *out = malloc(Hq * Dm * 2);
        int64_t slot = (int64_t)page * d->page_size;
        int32_t len = 1, indptr[2] = { 0, 1 };

        for (uint32_t i = 0; i < row; i++) {
                k[i] = (float)((int)(i % 7) - 3) * 0.25f;
                v[i] = (float)((int)(i % 11) - 5) * 0.5f;
        }
        for (uint32_t i = 0; i < Hq * Dm; i++)
                q[i] = bf16((float)((int)(i % 5) - 2) * 0.5f);
        struct kvc_write_args w = { .k = k, .v = v, .elem = KVC_ELEM_F32, .k_row_stride = row,
                                    .v_row_stride = row, .slots = &slot, .num_tokens = 1, .layer = 0 };

        cr_assert_eq(kvc_write(p, &w, NULL), 0, "%s", kvc_errmsg(c));
        struct kvc_decode_args da = { .q = q, .out = out, .elem = KVC_ELEM_BF16, .page_table = &page,
                                      .max_pages = 1, .seq_lens = &len, .seq_lens_host = &len, .batch = 1,
                                      .num_q_heads = Hq, .sm_scale = 0.125f, .layer = 0 };

        memset(out, 0xff, Hq * Dm * 2);
        cr_assert_eq(kvc_decode(p, &da, NULL), 0, "%s", kvc_errmsg(c));
        /* Query head h reads kv head h / (Hq / H). */
        for (uint32_t h = 0; h < Hq; h++)
                for (uint32_t e = 0; e < Dm; e++)
                        cr_assert_eq(out[h * Dm + e], bf16(v[(h / 2) * Dm + e]),
                                     "decode head %u elem %u", h, e);
        struct kvc_extend_args ea = { .q = q, .out = out, .elem = KVC_ELEM_BF16, .qo_indptr = indptr,
                                      .qo_indptr_host = indptr, .page_table = &page, .max_pages = 1,
                                      .seq_lens = &len, .seq_lens_host = &len, .batch = 1,
                                      .num_q_heads = Hq, .sm_scale = 0.125f, .layer = 0 };

        memset(out, 0xff, Hq * Dm * 2);
        cr_assert_eq(kvc_extend(p, &ea, NULL), 0, "%s", kvc_errmsg(c));
        for (uint32_t h = 0; h < Hq; h++)
                for (uint32_t e = 0; e < Dm; e++)
                        cr_assert_eq(out[h * Dm + e], bf16(v[(h / 2) * Dm + e]),
                                     "extend head %u elem %u", h, e);
        /* A bad argument comes back with the kernel's message. */
        da.num_q_heads = H + 1;
        cr_assert_eq(kvc_decode(p, &da, NULL), -EINVAL);
        cr_assert(strstr(kvc_errmsg(c), "num_q_heads") != NULL, "%s", kvc_errmsg(c));
        free(k); free(v); free(q); free(out);
        kvc_disconnect(c);
}

/* The part of the client's last message after "<call> on pool <name>: ",
 * to compare two calls' messages whatever their names. */
static const char *after_pool(const char *m)
{
        const char *s = strstr(m, " on pool ");

        s = s ? strstr(s, ": ") : NULL;
        return s ? s + 2 : m;
}

/* The workspace calls on a host pool (kvclient.h): the CPU reference needs
 * no workspace, so the size queries answer 0 and kvc_decode_ws and
 * kvc_extend_ws ignore a well-formed workspace (even one that points
 * nowhere: it is never touched) and equal kvc_decode and kvc_extend; a
 * workspace of the wrong shape (NULL with bytes, misaligned) is refused as a
 * CUDA pool refuses it, the output untouched; the size queries check what
 * the calls check, with the same messages, and leave *ret_bytes alone on
 * every failure. */
Test(integration, workspace_calls_on_a_host_pool, .fini = cleanup, .timeout = 60)
{
        const char *pools[] = { kvt_pool_spec(0, "att", "bf16", "2MiB"), NULL };
        enum { NT = 21, SENT = 0x5eed };
        kvc_client *c;
        kvc_pool *p;
        const struct kvc_pool_desc *d;
        int32_t pages[2];
        unsigned seed = 77;

        cr_assert_eq(kvt_daemon_start(&D, pools), 0);
        cr_assert_eq(kvc_connect(D.url, "workspace", NULL, &c), 0);
        cr_assert_eq(kvc_attach(c, "att", &p), 0);
        d = kvc_pool_get_desc(p);
        cr_assert_eq(kvc_alloc(p, 2, pages), 0);

        /* NT tokens over two pages (page_size 16), two sequences of NT and 5
         * keys sharing them; extend: the last 3 and 2 of them are new */
        const uint32_t H = d->kv_heads, Dm = d->head_dim, Hq = 2 * H, row = H * Dm;
        float *k = malloc(NT * row * 4), *v = malloc(NT * row * 4);
        int64_t slots[NT];
        for (uint32_t i = 0; i < NT * row; i++) {
                k[i] = rnd(&seed);
                v[i] = rnd(&seed);
        }
        for (int t = 0; t < NT; t++)
                slots[t] = (int64_t)pages[t / (int)d->page_size] * d->page_size + t % (int)d->page_size;
        struct kvc_write_args w = { .k = k, .v = v, .elem = KVC_ELEM_F32, .k_row_stride = row,
                                    .v_row_stride = row, .slots = slots, .num_tokens = NT, .layer = 1 };
        cr_assert_eq(kvc_write(p, &w, NULL), 0, "%s", kvc_errmsg(c));

        const size_t n = 5 * (size_t)Hq * Dm; /* 5 rows: 2 of decode, 3 + 2 of extend */
        uint16_t *q = malloc(n * 2), *want = malloc(n * 2), *got = malloc(n * 2);
        for (size_t i = 0; i < n; i++)
                q[i] = bf16(rnd(&seed));
        int32_t table[4] = { pages[0], pages[1], pages[0], -1 }, lens[2] = { NT, 5 }, indptr[3] = { 0, 3, 5 };
        struct kvc_decode_args da = { .q = q, .out = want, .elem = KVC_ELEM_BF16, .page_table = table,
                                      .max_pages = 2, .seq_lens = lens, .seq_lens_host = lens, .batch = 2,
                                      .num_q_heads = Hq, .sm_scale = 0.125f, .layer = 1 };
        struct kvc_extend_args ea = { .q = q, .out = want, .elem = KVC_ELEM_BF16, .qo_indptr = indptr,
                                      .qo_indptr_host = indptr, .page_table = table, .max_pages = 2,
                                      .seq_lens = lens, .seq_lens_host = lens, .batch = 2,
                                      .num_q_heads = Hq, .sm_scale = 0.125f, .layer = 1 };
        /* a workspace the host pool must ignore: aligned, never dereferenced */
        _Alignas(16) static unsigned char ws[64];
        void *const nowhere = (void *)(uintptr_t)0x1000;
        size_t bytes;
        char first[256];

        /* decode: sizes 0, and the _ws calls equal kvc_decode */
        bytes = SENT;
        cr_assert_eq(kvc_decode_workspace(p, &da, &bytes), 0, "%s", kvc_errmsg(c));
        cr_assert_eq(bytes, 0);
        memset(want, 0xff, n * 2);
        cr_assert_eq(kvc_decode(p, &da, NULL), 0, "%s", kvc_errmsg(c));
        da.out = got;
        memset(got, 0xff, n * 2);
        cr_assert_eq(kvc_decode_ws(p, &da, NULL, 0, NULL), 0, "%s", kvc_errmsg(c));
        cr_assert_eq(memcmp(got, want, 2 * (size_t)Hq * Dm * 2), 0, "decode_ws(NULL, 0) differs from decode");
        memset(got, 0xff, n * 2);
        cr_assert_eq(kvc_decode_ws(p, &da, ws, sizeof ws, NULL), 0, "%s", kvc_errmsg(c));
        cr_assert_eq(memcmp(got, want, 2 * (size_t)Hq * Dm * 2), 0, "decode_ws(ws) differs from decode");
        memset(got, 0xff, n * 2);
        cr_assert_eq(kvc_decode_ws(p, &da, nowhere, (size_t)1 << 30, NULL), 0, "%s", kvc_errmsg(c));
        cr_assert_eq(memcmp(got, want, 2 * (size_t)Hq * Dm * 2), 0, "decode_ws(nowhere) differs from decode");

        /* extend: the same */
        ea.out = want;
        bytes = SENT;
        cr_assert_eq(kvc_extend_workspace(p, &ea, &bytes), 0, "%s", kvc_errmsg(c));
        cr_assert_eq(bytes, 0);
        memset(want, 0xff, n * 2);
        cr_assert_eq(kvc_extend(p, &ea, NULL), 0, "%s", kvc_errmsg(c));
        ea.out = got;
        memset(got, 0xff, n * 2);
        cr_assert_eq(kvc_extend_ws(p, &ea, NULL, 0, NULL), 0, "%s", kvc_errmsg(c));
        cr_assert_eq(memcmp(got, want, n * 2), 0, "extend_ws(NULL, 0) differs from extend");
        memset(got, 0xff, n * 2);
        cr_assert_eq(kvc_extend_ws(p, &ea, ws, 0, NULL), 0, "%s", kvc_errmsg(c));
        cr_assert_eq(memcmp(got, want, n * 2), 0, "extend_ws(ws, 0) differs from extend");

        /* a workspace of the wrong shape: -EINVAL naming it, nothing written */
        memset(got, 0xff, n * 2);
        cr_assert_eq(kvc_decode_ws(p, &da, NULL, 64, NULL), -EINVAL);
        cr_assert(strstr(kvc_errmsg(c), "kvc_decode_ws") && strstr(kvc_errmsg(c), "workspace is NULL"), "%s",
                  kvc_errmsg(c));
        cr_assert_eq(kvc_decode_ws(p, &da, ws + 4, sizeof ws - 4, NULL), -EINVAL);
        cr_assert(strstr(kvc_errmsg(c), "16-byte aligned"), "%s", kvc_errmsg(c));
        cr_assert_eq(kvc_extend_ws(p, &ea, ws + 8, 8, NULL), -EINVAL);
        cr_assert(strstr(kvc_errmsg(c), "kvc_extend_ws") && strstr(kvc_errmsg(c), "workspace"), "%s",
                  kvc_errmsg(c));
        for (size_t i = 0; i < n; i++)
                cr_assert_eq(got[i], 0xffff, "a refused call wrote out[%zu]", i);

        /* NULL handles and arguments, NULL ret_bytes: *ret_bytes untouched */
        bytes = SENT;
        cr_assert_eq(kvc_decode_workspace(NULL, &da, &bytes), -EINVAL);
        cr_assert_eq(kvc_decode_ws(NULL, &da, NULL, 0, NULL), -EINVAL);
        cr_assert_eq(kvc_decode_workspace(p, NULL, &bytes), -EINVAL);
        cr_assert(strstr(kvc_errmsg(c), "kvc_decode_workspace: args is NULL"), "%s", kvc_errmsg(c));
        cr_assert_eq(kvc_extend_workspace(p, NULL, &bytes), -EINVAL);
        cr_assert(strstr(kvc_errmsg(c), "kvc_extend_workspace: args is NULL"), "%s", kvc_errmsg(c));
        cr_assert_eq(kvc_extend_ws(p, NULL, ws, sizeof ws, NULL), -EINVAL);
        cr_assert(strstr(kvc_errmsg(c), "kvc_extend_ws: args is NULL"), "%s", kvc_errmsg(c));
        cr_assert_eq(kvc_decode_workspace(p, &da, NULL), -EINVAL);
        cr_assert(strstr(kvc_errmsg(c), "ret_bytes"), "%s", kvc_errmsg(c));
        cr_assert_eq(kvc_extend_workspace(p, &ea, NULL), -EINVAL);
        cr_assert(strstr(kvc_errmsg(c), "ret_bytes"), "%s", kvc_errmsg(c));

        /* bad call arguments: the size query fails as the call does, with
         * its message */
        da.num_q_heads = H + 1;
        cr_assert_eq(kvc_decode(p, &da, NULL), -EINVAL);
        snprintf(first, sizeof first, "%s", after_pool(kvc_errmsg(c)));
        cr_assert(strstr(first, "num_q_heads"), "%s", first);
        cr_assert_eq(kvc_decode_workspace(p, &da, &bytes), -EINVAL);
        cr_assert_str_eq(after_pool(kvc_errmsg(c)), first);
        da.num_q_heads = Hq;
        table[1] = (int32_t)d->num_pages; /* a page id out of range: the reference reads the table */
        cr_assert_eq(kvc_decode(p, &da, NULL), -ERANGE);
        snprintf(first, sizeof first, "%s", after_pool(kvc_errmsg(c)));
        cr_assert_eq(kvc_decode_workspace(p, &da, &bytes), -ERANGE);
        cr_assert_str_eq(after_pool(kvc_errmsg(c)), first);
        cr_assert_eq(kvc_extend(p, &ea, NULL), -ERANGE);
        snprintf(first, sizeof first, "%s", after_pool(kvc_errmsg(c)));
        cr_assert_eq(kvc_extend_workspace(p, &ea, &bytes), -ERANGE);
        cr_assert_str_eq(after_pool(kvc_errmsg(c)), first);
        table[1] = pages[1];
        ea.qo_indptr = NULL;
        cr_assert_eq(kvc_extend(p, &ea, NULL), -EINVAL);
        snprintf(first, sizeof first, "%s", after_pool(kvc_errmsg(c)));
        cr_assert(strstr(first, "qo_indptr"), "%s", first);
        cr_assert_eq(kvc_extend_workspace(p, &ea, &bytes), -EINVAL);
        cr_assert_str_eq(after_pool(kvc_errmsg(c)), first);
        cr_assert_eq(bytes, SENT, "a failed size query wrote *ret_bytes");
        free(k); free(v); free(q); free(want); free(got);
        kvc_disconnect(c);
}
