/* bench_lookup.c - prefix-cache lookup round trip next to the alloc round
 * trip, for 1, 16, 128 and 1024 keys (pages), against a kvpoold it starts.
 *
 * Starts kvpoold with one host pool of 4096 small pages on temporary sockets,
 * publishes a 1024-block chain of keys (then frees its pages: they stay
 * cached), and for each n measures, through libkvclient, one client:
 *   alloc       kvc_alloc(n)                (its kvc_free(n) is not timed)
 *   lookup hit  kvc_lookup of the chain's first n keys: n hits
 *               (the kvc_free of the n pages found is not timed)
 *   lookup miss kvc_lookup of n keys never published: 0 hits (the daemon
 *               stops at the first miss, but the n keys still travel)
 * and prints p50 and p99 in microseconds as a Markdown table.
 *
 * A benchmark, not a test: it prints, it never fails on a figure.
 *
 * usage: bench_lookup [--kvpoold PATH] [--iters N]
 * kvpoold is found through --kvpoold, else $KVPOOLD. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "prefix_util.h"

#define POOL "name=bench,dtype=bf16,layers=1,kv_heads=1,head_dim=64,page_size=16,capacity=16MiB,backend=host"
#define MAXK 1024

static uint64_t now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
        uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
        return (x > y) - (x < y);
}

static double pct(uint64_t *v, int n, double p)
{
        qsort(v, (size_t)n, sizeof(*v), cmp_u64);
        int i = (int)(p * (n - 1) + 0.5);
        return (double)v[i] / 1000.0;
}

static void chain(uint32_t seed, kvc_key *out, int n)
{
        for (int i = 0; i < n; i++) {
                int32_t tok[16];
                for (int j = 0; j < 16; j++)
                        tok[j] = (int32_t)(seed * 1000000u + 16u * (uint32_t)i + (uint32_t)j);
                kvc_block_key(i ? &out[i - 1] : NULL, tok, 16, NULL, 0, &out[i]);
        }
}

static void fail(kvc_client *c, const char *what, int rc)
{
        fprintf(stderr, "bench_lookup: %s failed: %d %s\n", what, rc, c ? kvc_errmsg(c) : "");
        exit(1);
}

enum mode { ALLOC, HIT, MISS };

/* One measurement: iters timed calls (after warmup untimed ones). */
static void measure(kvc_client *c, kvc_pool *p, enum mode m, int n, int iters, const kvc_key *hit,
                    const kvc_key *miss, uint64_t *lat, double *p50, double *p99)
{
        static int32_t ids[MAXK];
        int warmup = iters / 10 + 5;
        for (int it = 0; it < warmup + iters; it++) {
                uint64_t t0 = now_ns(), t1;
                int rc, got = n;
                if (m == ALLOC) {
                        rc = kvc_alloc(p, (uint32_t)n, ids);
                        t1 = now_ns();
                        if (rc < 0)
                                fail(c, "alloc", rc);
                } else {
                        rc = kvc_lookup(p, (uint32_t)n, m == HIT ? hit : miss, ids);
                        t1 = now_ns();
                        if (rc != (m == HIT ? n : 0))
                                fail(c, m == HIT ? "lookup (expected all hits)" : "lookup (expected a miss)", rc);
                        got = rc;
                }
                if (got > 0 && (rc = kvc_free(p, (uint32_t)got, ids)) < 0)
                        fail(c, "free", rc);
                if (it >= warmup)
                        lat[it - warmup] = t1 - t0;
        }
        *p50 = pct(lat, iters, 0.50);
        *p99 = pct(lat, iters, 0.99);
}

int main(int argc, char **argv)
{
        const char *exe = NULL;
        int iters = 2000;
        for (int i = 1; i < argc; i++) {
                if (!strcmp(argv[i], "--kvpoold") && i + 1 < argc) {
                        exe = argv[++i];
                } else if (!strcmp(argv[i], "--iters") && i + 1 < argc) {
                        iters = atoi(argv[++i]);
                        if (iters < 10) {
                                fprintf(stderr, "bench_lookup: --iters must be at least 10\n");
                                return 2;
                        }
                } else {
                        fprintf(stderr, "usage: bench_lookup [--kvpoold PATH] [--iters N]\n");
                        return 2;
                }
        }
        struct kvt_daemon d;
        const char *pools[] = { POOL };
        if (kvt_daemon_start(&d, exe, pools, 1) < 0)
                return 1;
        kvc_client *c = NULL;
        kvc_pool *p = NULL;
        int rc;
        if ((rc = kvt_connect(&d, "bench_lookup", NULL, &c)) < 0)
                fail(NULL, "connect", rc);
        if ((rc = kvc_attach(c, "bench", &p)) < 0)
                fail(c, "attach", rc);
        static kvc_key hit[MAXK], miss[MAXK];
        static int32_t ids[MAXK];
        chain(1, hit, MAXK);
        chain(2, miss, MAXK);
        if ((rc = kvc_alloc(p, MAXK, ids)) < 0)
                fail(c, "alloc of the chain", rc);
        if ((rc = kvc_publish(p, MAXK, ids, hit, NULL)) != MAXK)
                fail(c, "publish of the chain", rc);
        if ((rc = kvc_free(p, MAXK, ids)) < 0)
                fail(c, "free of the chain", rc);

        const struct kvc_pool_desc *desc = kvc_pool_get_desc(p);
        printf("kvpoold host pool: %u pages; one client; %d timed calls per cell (%d for 1024); "
               "times in microseconds (p50 / p99)\n\n", desc->num_pages, iters, iters / 4);
        printf("| keys or pages | alloc | lookup, all hit | lookup, miss |\n");
        printf("| ---: | ---: | ---: | ---: |\n");
        uint64_t *lat = malloc(sizeof(uint64_t) * (size_t)iters);
        const int ns[] = { 1, 16, 128, 1024 };
        for (int i = 0; i < 4; i++) {
                int it = ns[i] == 1024 ? iters / 4 : iters;
                double a50, a99, h50, h99, m50, m99;
                measure(c, p, ALLOC, ns[i], it, hit, miss, lat, &a50, &a99);
                measure(c, p, HIT, ns[i], it, hit, miss, lat, &h50, &h99);
                measure(c, p, MISS, ns[i], it, hit, miss, lat, &m50, &m99);
                printf("| %d | %.1f / %.1f | %.1f / %.1f | %.1f / %.1f |\n", ns[i], a50, a99, h50, h99,
                       m50, m99);
                fflush(stdout);
        }
        free(lat);
        kvc_disconnect(c);
        kvt_daemon_stop(&d);
        return 0;
}
