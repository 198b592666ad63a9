/* demo_worker.c - kvpool-demo-worker, an example worker (used by
 * scripts/quickstart) that shows two processes sharing pages of one pool.
 *
 *   kvpool-demo-worker write --pool default --pages 8 --tag 42 [--hold-ms MS]
 *       attaches, allocates the pages, writes K/V for every layer through
 *       kvc_write (values computed from the tag), publishes the pages under
 *       chained block keys derived from the tag, and holds them until stdin
 *       closes (or MS milliseconds pass).
 *   kvpool-demo-worker read --pool default --pages 8 --tag 42
 *       looks the same keys up (getting the writer's pages without knowing
 *       their ids), gathers them with kvc_gather and checks every value against
 *       a private copy written and gathered by the CPU reference, and against
 *       the original inputs within the dtype's rounding.  Prints
 *       "verified N pages", or fails with exit status 1.
 *
 * Works on host pools everywhere and on CUDA pools in a CUDA build (device
 * buffers, default stream).
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kv_config.h"
#include "kv_layout.h"
#include "kv_ops.h"
#include "kvclient.h"

#if KV_HAVE_CUDA
#include <cuda_runtime.h>
#endif

static const char usage_text[] =
        "usage: kvpool-demo-worker write|read [--socket URL] [--pool NAME] [--pages N]\n"
        "                          [--tag T] [--hold-ms MS]\n"
        "  write   allocate N pages, write K/V derived from T, publish them, hold them\n"
        "          until stdin closes (or MS milliseconds)\n"
        "  read    look the pages of T up by their prefix keys, gather and verify them\n";

struct opts {
        int         write;
        const char *socket, *pool;
        uint32_t    pages;
        uint64_t    tag;
        long        hold_ms; /* -1: until stdin closes */
};

/* ---- the values a tag stands for ----------------------------------------- */

static uint64_t mix(uint64_t x)
{
        x += 0x9e3779b97f4a7c15ull;
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
        x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
        return x ^ (x >> 31);
}

/* K (kv = 0) or V (kv = 1) element of token t, in [-2, 2): random-ish but a
 * pure function of (tag, layer, t, element), so writer and reader agree. */
static float value(uint64_t tag, uint32_t layer, uint32_t kv, uint64_t t, uint64_t e)
{
        uint64_t h = mix(tag ^ mix((uint64_t)layer << 1 | kv) ^ mix(t << 24 ^ e));

        return (float)((double)(h >> 11) / (double)(1ull << 53) * 4.0 - 2.0);
}

static void fill(uint64_t tag, uint32_t layer, uint32_t kv, uint64_t tokens, uint64_t row, float *x)
{
        for (uint64_t t = 0; t < tokens; t++)
                for (uint64_t e = 0; e < row; e++)
                        x[t * row + e] = value(tag, layer, kv, t, e);
}

/* Block keys of the tag's prompt: token ids derived from the tag, chained. */
static void make_keys(uint64_t tag, uint32_t n, uint32_t page_size, kvc_key *keys)
{
        static const char extra[] = "kvpool-demo";
        int32_t tok[1024];

        for (uint32_t i = 0; i < n; i++) {
                for (uint32_t j = 0; j < page_size && j < 1024; j++)
                        tok[j] = (int32_t)(mix(tag * 1000003u + (uint64_t)i * page_size + j) & 0x7fffffff);
                kvc_block_key(i ? &keys[i - 1] : NULL, tok, page_size, extra, sizeof extra - 1, &keys[i]);
        }
}

/* ---- host or device buffers ----------------------------------------------- */

static int is_cuda(const struct kvc_pool_desc *d)
{
        return d->backend == KVC_BACKEND_CUDA;
}

/* A buffer the data path can use: device memory on a CUDA pool. */
static void *buf_new(const struct kvc_pool_desc *d, size_t n)
{
#if KV_HAVE_CUDA
        if (is_cuda(d)) {
                void *p = NULL;

                return cudaMalloc(&p, n) == cudaSuccess ? p : NULL;
        }
#endif
        (void)d;
        return malloc(n);
}

static void buf_free(const struct kvc_pool_desc *d, void *p)
{
#if KV_HAVE_CUDA
        if (is_cuda(d)) {
                cudaFree(p);
                return;
        }
#endif
        free(p);
}

/* Copies n bytes between host and a data-path buffer (to_buf: host -> buf). */
static int buf_copy(const struct kvc_pool_desc *d, void *dst, const void *src, size_t n, int to_buf)
{
#if KV_HAVE_CUDA
        if (is_cuda(d))
                return cudaMemcpy(dst, src, n, to_buf ? cudaMemcpyHostToDevice
                                                      : cudaMemcpyDeviceToHost) == cudaSuccess ? 0 : -EIO;
#endif
        (void)d;
        (void)to_buf;
        memcpy(dst, src, n);
        return 0;
}

static int sync_stream(const struct kvc_pool_desc *d)
{
#if KV_HAVE_CUDA
        if (is_cuda(d))
                return cudaDeviceSynchronize() == cudaSuccess ? 0 : -EIO;
#endif
        (void)d;
        return 0;
}

/* ---- write --------------------------------------------------------------- */

static int fail(kvc_client *c, const char *what, int rv)
{
        fprintf(stderr, "kvpool-demo-worker: %s failed: %s\n", what,
                kvc_errmsg(c)[0] ? kvc_errmsg(c) : strerror(-rv));
        return 1;
}

/* Writes every layer of the tag's K/V into pages (token t -> page t/ps). */
static int write_pages(kvc_client *c, kvc_pool *p, const struct opts *o, const int32_t *pages)
{
        const struct kvc_pool_desc *d = kvc_pool_get_desc(p);
        uint64_t T = (uint64_t)o->pages * d->page_size, row = (uint64_t)d->kv_heads * d->head_dim;
        float *k = malloc(T * row * sizeof *k), *v = malloc(T * row * sizeof *v);
        int64_t *slots = malloc(T * sizeof *slots);
        void *dk = buf_new(d, T * row * 4), *dv = buf_new(d, T * row * 4), *ds = buf_new(d, T * 8);
        int rv = -ENOMEM;

        if (!k || !v || !slots || !dk || !dv || !ds) {
                fprintf(stderr, "kvpool-demo-worker: out of memory for %llu tokens\n",
                        (unsigned long long)T);
                goto out;
        }
        for (uint64_t t = 0; t < T; t++)
                slots[t] = (int64_t)pages[t / d->page_size] * d->page_size + (int64_t)(t % d->page_size);
        if ((rv = buf_copy(d, ds, slots, T * 8, 1)) != 0)
                goto out;
        for (uint32_t l = 0; l < d->num_layers; l++) {
                struct kvc_write_args a = {
                        .k = dk, .v = dv, .elem = KVC_ELEM_F32,
                        .k_row_stride = (int64_t)row, .v_row_stride = (int64_t)row,
                        .slots = ds, .num_tokens = (uint32_t)T, .layer = l,
                };

                fill(o->tag, l, 0, T, row, k);
                fill(o->tag, l, 1, T, row, v);
                if ((rv = buf_copy(d, dk, k, T * row * 4, 1)) != 0 ||
                    (rv = buf_copy(d, dv, v, T * row * 4, 1)) != 0)
                        goto out;
                rv = kvc_write(p, &a, NULL);
                if (rv != 0) {
                        fail(c, "kvc_write", rv);
                        goto out;
                }
                /* The host buffers are refilled next layer: wait for the copy. */
                if ((rv = sync_stream(d)) != 0)
                        goto out;
        }
out:
        if (rv == -EIO)
                fprintf(stderr, "kvpool-demo-worker: a CUDA copy failed\n");
        free(k);
        free(v);
        free(slots);
        buf_free(d, dk);
        buf_free(d, dv);
        buf_free(d, ds);
        return rv;
}

static void hold(long ms)
{
        struct pollfd pfd = { .fd = STDIN_FILENO, .events = POLLIN };
        char buf[256];

        /* Until stdin reaches EOF (or errors), or the hold time passes. */
        for (;;) {
                int n = poll(&pfd, 1, ms < 0 ? -1 : (int)ms);

                if (n == 0)
                        return;
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return;
                }
                if (read(STDIN_FILENO, buf, sizeof buf) <= 0)
                        return;
        }
}

static int do_write(kvc_client *c, kvc_pool *p, const struct opts *o)
{
        const struct kvc_pool_desc *d = kvc_pool_get_desc(p);
        int32_t *pages = calloc(o->pages, sizeof *pages);
        kvc_key *keys = calloc(o->pages, sizeof *keys);
        uint8_t *dup = calloc(o->pages, 1);
        int rv, stored;

        if (!pages || !keys || !dup) {
                fprintf(stderr, "kvpool-demo-worker: out of memory\n");
                return 1;
        }
        rv = kvc_alloc(p, o->pages, pages);
        if (rv != 0)
                return fail(c, "alloc", rv);
        if (write_pages(c, p, o, pages) != 0)
                return 1;
        if ((rv = sync_stream(d)) != 0) {
                fprintf(stderr, "kvpool-demo-worker: CUDA synchronize failed\n");
                return 1;
        }
        make_keys(o->tag, o->pages, d->page_size, keys);
        stored = kvc_publish(p, o->pages, pages, keys, dup);
        if (stored < 0)
                return fail(c, "publish", stored);
        printf("writer: pool %s (%s, %s, %u layers x %u kv_heads x %u head_dim, page %u): wrote %u "
               "pages for tag %llu:", d->name, kvc_dtype_name(d->dtype),
               is_cuda(d) ? "cuda" : "host", d->num_layers, d->kv_heads, d->head_dim, d->page_size,
               o->pages, (unsigned long long)o->tag);
        for (uint32_t i = 0; i < o->pages; i++)
                printf(" %d", pages[i]);
        printf("\nwriter: published %d pages under their prefix keys (%u already cached)\n",
               stored, o->pages - (uint32_t)stored);
        printf("writer: holding the pages until stdin closes%s\n", o->hold_ms >= 0 ? " or the hold time passes" : "");
        fflush(stdout);
        hold(o->hold_ms);
        rv = kvc_free(p, o->pages, pages);
        if (rv != 0)
                return fail(c, "free", rv);
        printf("writer: freed my references; the published pages stay cached\n");
        free(pages);
        free(keys);
        free(dup);
        return 0;
}

/* ---- read ---------------------------------------------------------------- */

/* How far a stored value may sit from its input x: half an ulp of the dtype
 * (relative), a subnormal floor, and for fp4 the block's half-gap. */
static double tolerance(enum kvc_dtype dt, double x, double scale, double block_amax)
{
        double ax = fabs(x) / scale;

        switch (dt) {
        case KVC_DTYPE_BF16:     return (ax * 0x1p-8 + 0x1p-133) * scale;
        case KVC_DTYPE_FP16:     return (ax * 0x1p-11 + 0x1p-25) * scale;
        case KVC_DTYPE_FP8_E4M3: return (ax * 0x1p-4 + 0x1p-10) * scale;
        case KVC_DTYPE_FP8_E5M2: return (ax * 0x1p-3 + 0x1p-17) * scale;
        /* e2m1's widest gap is 2 (between 4 and 6) in units of the block scale
         * 2^ceil(log2(amax/6)) < amax/3: a value is off by at most amax/3. */
        case KVC_DTYPE_FP4_E2M1: return block_amax / 3.0 + 1e-30;
        default:                 return 0;
        }
}

/* Checks one layer's gathered K or V: bit-equal to the reference gather of a
 * private copy, and within the dtype's rounding of the inputs.  Returns the
 * number of bad elements (and prints the first). */
static uint64_t check(const struct kvc_pool_desc *d, uint32_t l, uint32_t kv, const float *got,
                      const float *ref, const float *in, uint64_t T)
{
        uint64_t row = (uint64_t)d->kv_heads * d->head_dim, bad = 0;
        double scale = d->dtype == KVC_DTYPE_FP8_E4M3 || d->dtype == KVC_DTYPE_FP8_E5M2
                     ? (kv ? d->v_scale[l] : d->k_scale[l]) : 1.0;

        for (uint64_t i = 0; i < T * row; i++) {
                double amax = 0;

                if (d->dtype == KVC_DTYPE_FP4_E2M1)
                        for (uint64_t j = i - i % 16; j < i - i % 16 + 16; j++)
                                amax = fmax(amax, fabs(in[j]));
                if (memcmp(&got[i], &ref[i], sizeof(float)) == 0 &&
                    fabs((double)got[i] - in[i]) <= tolerance(d->dtype, in[i], scale, amax))
                        continue;
                if (bad++ == 0)
                        fprintf(stderr, "kvpool-demo-worker: layer %u %s token %llu element %llu: "
                                "gathered %.9g, reference %.9g, written %.9g\n", l, kv ? "V" : "K",
                                (unsigned long long)(i / row), (unsigned long long)(i % row),
                                got[i], ref[i], in[i]);
        }
        return bad;
}

/* Gathers every layer of pages from the pool and checks it. */
static int verify(kvc_client *c, kvc_pool *p, const struct opts *o, const int32_t *pages)
{
        const struct kvc_pool_desc *d = kvc_pool_get_desc(p);
        uint64_t T = (uint64_t)o->pages * d->page_size, row = (uint64_t)d->kv_heads * d->head_dim;
        uint64_t n = T * row, bad = 0;
        struct kv_geom g = { d->dtype, d->num_layers, d->kv_heads, d->head_dim, d->page_size };
        struct kv_pool_view priv = { .k_scale = d->k_scale, .v_scale = d->v_scale };
        float *in_k = malloc(n * 4), *in_v = malloc(n * 4), *ref_k = malloc(n * 4);
        float *ref_v = malloc(n * 4), *got_k = malloc(n * 4), *got_v = malloc(n * 4);
        int64_t *slots = malloc(T * sizeof *slots);
        int32_t *own = malloc(o->pages * sizeof *own);
        void *dk = buf_new(d, n * 4), *dv = buf_new(d, n * 4), *dp = buf_new(d, o->pages * 4);
        char msg[256] = "";
        int rv = 1;

        if (!in_k || !in_v || !ref_k || !ref_v || !got_k || !got_v || !slots || !own || !dk || !dv || !dp) {
                fprintf(stderr, "kvpool-demo-worker: out of memory\n");
                goto out;
        }
        /* The private copy: the same geometry and scales, o->pages pages. */
        if (kv_layout_init(&g, o->pages, &priv.layout) != 0 ||
            (priv.base = calloc(1, priv.layout.alloc_bytes)) == NULL) {
                fprintf(stderr, "kvpool-demo-worker: cannot lay out a private copy\n");
                goto out;
        }
        for (uint64_t t = 0; t < T; t++)
                slots[t] = (int64_t)t;
        for (uint32_t i = 0; i < o->pages; i++)
                own[i] = (int32_t)i;
        if (buf_copy(d, dp, pages, o->pages * 4, 1) != 0)
                goto cuda_fail;
        for (uint32_t l = 0; l < d->num_layers; l++) {
                struct kvc_write_args w = {
                        .k = in_k, .v = in_v, .elem = KVC_ELEM_F32, .k_row_stride = (int64_t)row,
                        .v_row_stride = (int64_t)row, .slots = slots, .num_tokens = (uint32_t)T,
                        .layer = l,
                };
                struct kvc_gather_args rg = {
                        .pages = own, .n_pages = o->pages, .layer = l,
                        .k_out = ref_k, .v_out = ref_v, .elem = KVC_ELEM_F32,
                };
                struct kvc_gather_args pg = {
                        .pages = dp, .n_pages = o->pages, .layer = l,
                        .k_out = dk, .v_out = dv, .elem = KVC_ELEM_F32,
                };

                fill(o->tag, l, 0, T, row, in_k);
                fill(o->tag, l, 1, T, row, in_v);
                if (kv_ref_write(&priv, &w, msg, sizeof msg) != 0 ||
                    kv_ref_gather(&priv, &rg, msg, sizeof msg) != 0) {
                        fprintf(stderr, "kvpool-demo-worker: reference copy: %s\n", msg);
                        goto out;
                }
                rv = kvc_gather(p, &pg, NULL);
                if (rv != 0) {
                        rv = fail(c, "kvc_gather", rv);
                        goto out;
                }
                rv = 1;
                if (buf_copy(d, got_k, dk, n * 4, 0) != 0 || buf_copy(d, got_v, dv, n * 4, 0) != 0)
                        goto cuda_fail;
                bad += check(d, l, 0, got_k, ref_k, in_k, T);
                bad += check(d, l, 1, got_v, ref_v, in_v, T);
        }
        if (bad != 0) {
                fprintf(stderr, "kvpool-demo-worker: %llu of %llu values differ from what the writer "
                        "wrote\n", (unsigned long long)bad, (unsigned long long)(2 * n * d->num_layers));
                goto out;
        }
        rv = 0;
        goto out;
cuda_fail:
        fprintf(stderr, "kvpool-demo-worker: a CUDA copy failed\n");
out:
        free(priv.base);
        free(in_k); free(in_v); free(ref_k); free(ref_v); free(got_k); free(got_v);
        free(slots);
        free(own);
        buf_free(d, dk);
        buf_free(d, dv);
        buf_free(d, dp);
        return rv;
}

static int do_read(kvc_client *c, kvc_pool *p, const struct opts *o)
{
        const struct kvc_pool_desc *d = kvc_pool_get_desc(p);
        int32_t *pages = calloc(o->pages, sizeof *pages);
        kvc_key *keys = calloc(o->pages, sizeof *keys);
        int hits, rv;

        if (!pages || !keys) {
                fprintf(stderr, "kvpool-demo-worker: out of memory\n");
                return 1;
        }
        make_keys(o->tag, o->pages, d->page_size, keys);
        hits = kvc_lookup(p, o->pages, keys, pages);
        if (hits < 0)
                return fail(c, "lookup", hits);
        printf("reader: looked up %u prefix keys of tag %llu in pool %s: %d cached:", o->pages,
               (unsigned long long)o->tag, d->name, hits);
        for (int i = 0; i < hits; i++)
                printf(" %d", pages[i]);
        printf("\n");
        if ((uint32_t)hits < o->pages) {
                fprintf(stderr, "kvpool-demo-worker: only %d of %u pages of tag %llu are cached "
                        "(was the writer run with the same --pool, --pages and --tag?)\n", hits,
                        o->pages, (unsigned long long)o->tag);
                return 1;
        }
        rv = verify(c, p, o, pages);
        if (kvc_free(p, (uint32_t)hits, pages) != 0)
                fprintf(stderr, "kvpool-demo-worker: free: %s\n", kvc_errmsg(c));
        if (rv != 0)
                return 1;
        printf("reader: verified %u pages (%u layers, K and V, %s)\n", o->pages, d->num_layers,
               kvc_dtype_name(d->dtype));
        free(pages);
        free(keys);
        return 0;
}

/* ---- main ----------------------------------------------------------------- */

static int parse_num(const char *opt, const char *s, unsigned long long min, unsigned long long max,
                     unsigned long long *ret)
{
        char *end;
        unsigned long long v;

        errno = 0;
        v = strtoull(s, &end, 10);
        /* digits only: strtoull would also take leading blanks and a sign */
        if (errno != 0 || !isdigit((unsigned char)*s) || *end != '\0' || v < min || v > max) {
                fprintf(stderr, "kvpool-demo-worker: %s: '%s' is not a number in %llu..%llu\n", opt, s, min, max);
                return -EINVAL;
        }
        *ret = v;
        return 0;
}

static int parse(int argc, char **argv, struct opts *o)
{
        unsigned long long v;

        if (argc < 2 || (strcmp(argv[1], "write") != 0 && strcmp(argv[1], "read") != 0))
                return -EINVAL;
        *o = (struct opts){ .write = argv[1][0] == 'w', .pool = "default", .pages = 8, .tag = 42,
                            .hold_ms = -1 };
        for (int i = 2; i < argc; i++) {
                const char *opt = argv[i];

                if (strcmp(opt, "--socket") != 0 && strcmp(opt, "--pool") != 0 && strcmp(opt, "--pages") != 0 &&
                    strcmp(opt, "--tag") != 0 && strcmp(opt, "--hold-ms") != 0) {
                        fprintf(stderr, "kvpool-demo-worker: unknown option '%s'\n", opt);
                        return -EINVAL;
                }
                if (i + 1 >= argc) {
                        fprintf(stderr, "kvpool-demo-worker: %s needs a value\n", opt);
                        return -EINVAL;
                }
                const char *val = argv[++i];

                if (strcmp(opt, "--socket") == 0) {
                        o->socket = val;
                } else if (strcmp(opt, "--pool") == 0) {
                        o->pool = val;
                } else if (strcmp(opt, "--pages") == 0) {
                        if (parse_num(opt, val, 1, 65536, &v) != 0)
                                return -EINVAL;
                        o->pages = (uint32_t)v;
                } else if (strcmp(opt, "--tag") == 0) {
                        if (parse_num(opt, val, 0, UINT64_MAX, &v) != 0)
                                return -EINVAL;
                        o->tag = v;
                } else if (strcmp(opt, "--hold-ms") == 0) {
                        if (parse_num(opt, val, 0, 86400000, &v) != 0)
                                return -EINVAL;
                        o->hold_ms = (long)v;
                } else {
                        fprintf(stderr, "kvpool-demo-worker: unknown option '%s'\n", opt);
                        return -EINVAL;
                }
        }
        return 0;
}

int main(int argc, char **argv)
{
        struct opts o;
        kvc_client *c;
        kvc_pool *p;
        char name[32];
        int rv;

        if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
                fputs(usage_text, stdout);
                return 0;
        }
        if (parse(argc, argv, &o) != 0) {
                fputs(usage_text, stderr);
                return 2;
        }
        snprintf(name, sizeof name, "demo-%s-%llu", o.write ? "writer" : "reader",
                 (unsigned long long)o.tag);
        rv = kvc_connect(o.socket, name, NULL, &c);
        if (rv != 0) {
                fprintf(stderr, "kvpool-demo-worker: %s\n", kvc_errmsg(NULL));
                return 1;
        }
        rv = kvc_attach(c, o.pool, &p);
        if (rv != 0) {
                rv = fail(c, "attach", rv);
                kvc_disconnect(c);
                return rv;
        }
#if KV_HAVE_CUDA
        if (is_cuda(kvc_pool_get_desc(p)) && cudaSetDevice(kvc_pool_get_desc(p)->device) != cudaSuccess) {
                fprintf(stderr, "kvpool-demo-worker: cannot use CUDA device %d\n",
                        kvc_pool_get_desc(p)->device);
                kvc_disconnect(c);
                return 1;
        }
#endif
        rv = o.write ? do_write(c, p, &o) : do_read(c, p, &o);
        kvc_disconnect(c);
        return rv;
}
