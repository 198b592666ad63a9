/* prefix_worker.c - a scripted kvpool worker for the prefix-cache
 * integration tests.  It reads one command a line on stdin and answers one
 * line on stdout, so that a test can drive several real worker processes
 * (and kill -9 them) while it keeps a model of what the daemon should do.
 *
 *   connect URL SALT NAME     SALT: 32 hex digits or "-" (no tenant)  -> ok
 *   use POOL                  attach (once) and make it current  -> ok NUM_PAGES
 *   alloc N                   -> ok ID...           | err RC
 *   free ID...                -> ok                 | err RC
 *   publish N ID*N KEY*N      -> ok STORED DUP*N    | err RC
 *   lookup N KEY*N            -> ok HITS ID*HITS    | err RC
 *   fill TAG ID...            write a pattern derived from TAG into every
 *                             byte of the pages (all layers, K and V) -> ok
 *   check TAG ID...           -> ok | bad ID (first page not holding TAG)
 *   kvwrite SEED ID...        write random K/V for every token slot of the
 *                             pages through kvc_write (every layer) -> ok
 *   sum ID...                 FNV-1a 64 of the pages' bytes -> ok HEX
 *   race_reader MS TAG N KEY*N   see race_reader() -> ok ITERS HITS BAD
 *   race_writer MS MAXN          see race_writer() -> ok ITERS PAGES
 *   exit                      disconnect and exit 0 (so does end of input)
 *
 * RC is a negative errno.  Host pools only (fill/check/sum read the mapping). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvclient.h"

#define MAXP 8192

static kvc_client *cli;
static kvc_pool *pool;
static int32_t ids[MAXP], out_ids[MAXP];
static kvc_key keys[MAXP];
static uint8_t dup[MAXP];

static int parse_key(const char *s, kvc_key *k)
{
        if (strlen(s) != 32)
                return -EINVAL;
        for (int i = 0; i < 16; i++) {
                unsigned v;
                if (sscanf(s + 2 * i, "%2x", &v) != 1)
                        return -EINVAL;
                k->b[i] = (uint8_t)v;
        }
        return 0;
}

/* The bytes of page `id`: region r (0 .. 2*layers-1: K of layer r/2 when r
 * is even, V when odd). */
static uint8_t *region(uint32_t id, uint32_t r)
{
        const struct kvc_pool_desc *d = kvc_pool_get_desc(pool);
        uint64_t off = (r & 1) ? d->v_offset : d->k_offset;
        return (uint8_t *)d->base + off + (r / 2) * d->layer_stride + (uint64_t)id * d->page_bytes;
}

static uint32_t pattern(uint32_t tag, uint32_t r, uint32_t i)
{
        return (tag * 0x9E3779B1u) ^ (r << 24) ^ (i * 0x85EBCA6Bu);
}

static void fill(uint32_t tag, int32_t id)
{
        const struct kvc_pool_desc *d = kvc_pool_get_desc(pool);
        for (uint32_t r = 0; r < 2 * d->num_layers; r++) {
                uint32_t *w = (uint32_t *)region((uint32_t)id, r);
                for (uint32_t i = 0; i < d->page_bytes / 4; i++)
                        w[i] = pattern(tag, r, i);
        }
}

static int check(uint32_t tag, int32_t id)
{
        const struct kvc_pool_desc *d = kvc_pool_get_desc(pool);
        for (uint32_t r = 0; r < 2 * d->num_layers; r++) {
                const volatile uint32_t *w = (const uint32_t *)region((uint32_t)id, r);
                for (uint32_t i = 0; i < d->page_bytes / 4; i++)
                        if (w[i] != pattern(tag, r, i))
                                return 0;
        }
        return 1;
}

static uint64_t sum(uint32_t n, const int32_t *pages)
{
        const struct kvc_pool_desc *d = kvc_pool_get_desc(pool);
        uint64_t h = 0xcbf29ce484222325ull;
        for (uint32_t p = 0; p < n; p++)
                for (uint32_t r = 0; r < 2 * d->num_layers; r++) {
                        const uint8_t *b = region((uint32_t)pages[p], r);
                        for (uint64_t i = 0; i < d->page_bytes; i++)
                                h = (h ^ b[i]) * 0x100000001b3ull;
                }
        return h;
}

static uint64_t rng = 88172645463325252ull;
static uint32_t rnd(void)
{
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        return (uint32_t)(rng >> 32);
}

static int kvwrite(uint32_t seed, uint32_t n, const int32_t *pages)
{
        const struct kvc_pool_desc *d = kvc_pool_get_desc(pool);
        uint32_t T = n * d->page_size, row = d->kv_heads * d->head_dim;
        float *k = malloc(sizeof(float) * T * row), *v = malloc(sizeof(float) * T * row);
        int64_t *slots = malloc(sizeof(int64_t) * T);
        int rc = 0;
        if (!k || !v || !slots) {
                rc = -ENOMEM;
                goto out;
        }
        rng = 0x9E3779B97F4A7C15ull * (seed + 1);
        for (uint32_t t = 0; t < T; t++)
                slots[t] = (int64_t)pages[t / d->page_size] * d->page_size + t % d->page_size;
        for (uint32_t l = 0; l < d->num_layers && rc == 0; l++) {
                for (uint64_t i = 0; i < (uint64_t)T * row; i++) {
                        k[i] = (float)((int32_t)rnd() % 2000) / 1000.0f;
                        v[i] = (float)((int32_t)rnd() % 2000) / 1000.0f;
                }
                struct kvc_write_args a = {
                        .k = k, .v = v, .elem = KVC_ELEM_F32, .k_row_stride = row,
                        .v_row_stride = row, .slots = slots, .num_tokens = T, .layer = l,
                };
                rc = kvc_write(pool, &a, NULL);
        }
out:
        free(k);
        free(v);
        free(slots);
        return rc;
}

static uint64_t now_ms(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Loops for ms milliseconds over one chain of n keys whose page i must hold
 * pattern tag+i: looks the chain up, checks every page found (twice, with a
 * pause between, while the writer is busy evicting and overwriting), frees
 * them, then re-publishes the missing tail on fresh pages.  A page that is
 * handed to someone else while this worker holds it fails the check. */
static void race_reader(uint64_t ms, uint32_t tag, uint32_t n)
{
        uint64_t iters = 0, hits = 0, bad = 0, end = now_ms() + ms;
        while (now_ms() < end) {
                iters++;
                int h = kvc_lookup(pool, n, keys, out_ids);
                if (h < 0) {
                        printf("err %d lookup: %s\n", h, kvc_errmsg(cli));
                        return;
                }
                hits += (uint64_t)h;
                for (int pass = 0; pass < 2; pass++) {
                        for (int i = 0; i < h; i++)
                                bad += !check(tag + (uint32_t)i, out_ids[i]);
                        if (pass == 0) {
                                struct timespec ts = { 0, 200000 };
                                nanosleep(&ts, NULL);
                        }
                }
                if (h > 0 && kvc_free(pool, (uint32_t)h, out_ids) < 0) {
                        printf("err -1 free after lookup: %s\n", kvc_errmsg(cli));
                        return;
                }
                uint32_t m = n - (uint32_t)h;
                if (m == 0 || kvc_alloc(pool, m, ids) < 0)
                        continue;
                for (uint32_t j = 0; j < m; j++)
                        fill(tag + (uint32_t)h + j, ids[j]);
                int r = kvc_publish(pool, m, ids, keys + h, dup);
                if (r < 0 || kvc_free(pool, m, ids) < 0) {
                        printf("err %d publish/free: %s\n", r, kvc_errmsg(cli));
                        return;
                }
        }
        printf("ok %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", iters, hits, bad);
}

/* Loops for ms milliseconds: allocates up to maxn pages (fewer when the pool
 * cannot give that many), overwrites them all, frees them. */
static void race_writer(uint64_t ms, uint32_t maxn)
{
        uint64_t iters = 0, pages = 0, end = now_ms() + ms;
        while (now_ms() < end) {
                uint32_t n = 1 + rnd() % maxn;
                int r;
                while ((r = kvc_alloc(pool, n, ids)) == -ENOSPC && n > 1)
                        n /= 2;
                if (r < 0)
                        continue;
                for (uint32_t i = 0; i < n; i++)
                        fill(0xDEAD0000u + (uint32_t)iters, ids[i]);
                if (kvc_free(pool, n, ids) < 0) {
                        printf("err -1 free: %s\n", kvc_errmsg(cli));
                        return;
                }
                iters++;
                pages += n;
        }
        printf("ok %" PRIu64 " %" PRIu64 "\n", iters, pages);
}

/* Reads n page ids (strtol over the rest of the line). */
static int read_ids(char **p, uint32_t n, int32_t *out)
{
        for (uint32_t i = 0; i < n; i++) {
                char *end;
                long v = strtol(*p, &end, 10);
                if (end == *p)
                        return -EINVAL;
                out[i] = (int32_t)v;
                *p = end;
        }
        return 0;
}

static uint32_t count_words(const char *p)
{
        uint32_t n = 0;
        while (*p) {
                while (*p == ' ')
                        p++;
                if (!*p)
                        break;
                n++;
                while (*p && *p != ' ')
                        p++;
        }
        return n;
}

static int read_keys(char **p, uint32_t n, kvc_key *out)
{
        for (uint32_t i = 0; i < n; i++) {
                char word[40];
                int used;
                if (sscanf(*p, " %39s%n", word, &used) != 1 || parse_key(word, &out[i]) < 0)
                        return -EINVAL;
                *p += used;
        }
        return 0;
}

static void reply_rc(int rc)
{
        if (rc < 0)
                printf("err %d %s\n", rc, cli ? kvc_errmsg(cli) : "");
        else
                printf("ok\n");
}

int main(void)
{
        char *line = NULL;
        size_t cap = 0;
        setvbuf(stdout, NULL, _IOLBF, 0);
        while (getline(&line, &cap, stdin) > 0) {
                line[strcspn(line, "\n")] = '\0';
                char cmd[32];
                int used = 0;
                if (sscanf(line, "%31s%n", cmd, &used) != 1)
                        continue;
                char *p = line + used;
                uint32_t n = 0;
                int rc = 0;
                if (!strcmp(cmd, "exit")) {
                        break;
                } else if (!strcmp(cmd, "connect")) {
                        char url[256], salt[40], name[40];
                        kvc_key s;
                        if (sscanf(p, "%255s %39s %39s", url, salt, name) != 3 ||
                            (strcmp(salt, "-") && parse_key(salt, &s) < 0)) {
                                printf("err -22 bad connect line\n");
                                continue;
                        }
                        rc = kvc_connect(url, name, strcmp(salt, "-") ? &s : NULL, &cli);
                        if (rc < 0)
                                cli = NULL;
                        printf(rc < 0 ? "err %d\n" : "ok\n", rc);
                } else if (!cli) {
                        printf("err -107 not connected\n");
                } else if (!strcmp(cmd, "use")) {
                        char name[40];
                        if (sscanf(p, "%39s", name) != 1 || (rc = kvc_attach(cli, name, &pool)) < 0)
                                reply_rc(rc ? rc : -EINVAL);
                        else
                                printf("ok %u\n", kvc_pool_get_desc(pool)->num_pages);
                } else if (!pool) {
                        printf("err -19 no pool\n");
                } else if (!strcmp(cmd, "alloc")) {
                        n = (uint32_t)strtoul(p, NULL, 10);
                        if (n > MAXP || (rc = kvc_alloc(pool, n, ids)) < 0) {
                                reply_rc(rc ? rc : -EINVAL);
                                continue;
                        }
                        printf("ok");
                        for (uint32_t i = 0; i < n; i++)
                                printf(" %d", ids[i]);
                        printf("\n");
                } else if (!strcmp(cmd, "free")) {
                        n = count_words(p);
                        rc = n > MAXP ? -EINVAL : read_ids(&p, n, ids);
                        reply_rc(rc < 0 ? rc : kvc_free(pool, n, ids));
                } else if (!strcmp(cmd, "publish")) {
                        n = (uint32_t)strtoul(p, &p, 10);
                        if (n > MAXP || read_ids(&p, n, ids) < 0 || read_keys(&p, n, keys) < 0) {
                                printf("err -22 bad publish line\n");
                                continue;
                        }
                        memset(dup, 0, n);
                        if ((rc = kvc_publish(pool, n, ids, keys, dup)) < 0) {
                                reply_rc(rc);
                                continue;
                        }
                        printf("ok %d", rc);
                        for (uint32_t i = 0; i < n; i++)
                                printf(" %u", dup[i]);
                        printf("\n");
                } else if (!strcmp(cmd, "lookup")) {
                        n = (uint32_t)strtoul(p, &p, 10);
                        if (n > MAXP || read_keys(&p, n, keys) < 0) {
                                printf("err -22 bad lookup line\n");
                                continue;
                        }
                        if ((rc = kvc_lookup(pool, n, keys, out_ids)) < 0) {
                                reply_rc(rc);
                                continue;
                        }
                        printf("ok %d", rc);
                        for (int i = 0; i < rc; i++)
                                printf(" %d", out_ids[i]);
                        printf("\n");
                } else if (!strcmp(cmd, "fill") || !strcmp(cmd, "check") || !strcmp(cmd, "kvwrite")) {
                        uint32_t tag = (uint32_t)strtoul(p, &p, 0);
                        n = count_words(p);
                        if (n > MAXP || read_ids(&p, n, ids) < 0) {
                                printf("err -22 bad ids\n");
                                continue;
                        }
                        for (uint32_t i = 0; i < n; i++)
                                if (ids[i] < 0 || (uint32_t)ids[i] >= kvc_pool_get_desc(pool)->num_pages)
                                        rc = -ERANGE;
                        if (rc < 0) {
                                reply_rc(rc);
                        } else if (cmd[0] == 'f') {
                                for (uint32_t i = 0; i < n; i++)
                                        fill(tag, ids[i]);
                                printf("ok\n");
                        } else if (cmd[0] == 'c') {
                                uint32_t i = 0;
                                while (i < n && check(tag, ids[i]))
                                        i++;
                                if (i < n)
                                        printf("bad %d\n", ids[i]);
                                else
                                        printf("ok\n");
                        } else {
                                reply_rc(kvwrite(tag, n, ids));
                        }
                } else if (!strcmp(cmd, "sum")) {
                        n = count_words(p);
                        if (n > MAXP || read_ids(&p, n, ids) < 0)
                                printf("err -22 bad ids\n");
                        else
                                printf("ok %016" PRIx64 "\n", sum(n, ids));
                } else if (!strcmp(cmd, "race_reader")) {
                        uint64_t ms = strtoull(p, &p, 10);
                        uint32_t tag = (uint32_t)strtoul(p, &p, 0);
                        n = (uint32_t)strtoul(p, &p, 10);
                        if (n == 0 || n > MAXP || read_keys(&p, n, keys) < 0)
                                printf("err -22 bad race_reader line\n");
                        else
                                race_reader(ms, tag, n);
                } else if (!strcmp(cmd, "race_writer")) {
                        uint64_t ms = strtoull(p, &p, 10);
                        n = (uint32_t)strtoul(p, &p, 10);
                        if (n == 0 || n > MAXP)
                                printf("err -22 bad race_writer line\n");
                        else
                                race_writer(ms, n);
                } else {
                        printf("err -22 unknown command %s\n", cmd);
                }
        }
        free(line);
        kvc_disconnect(cli);
        return 0;
}
