/* test_prefix_model.c - randomized model test of the prefix cache through
 * the whole stack: four worker processes (two without a tenant, two sharing
 * a tenant salt) drive alloc, free (valid and invalid), publish (held, not
 * held, duplicate keys), lookup and session death (kill -9, or a clean exit)
 * against a real kvpoold.  A reference model in plain arrays predicts every
 * reply; after every step the daemon's STATUS (pool counts, lookups, hits,
 * evictions, each worker's pages held) must agree with the model.  Allocs
 * past the free pages must evict in the model's LRU order. */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "prefix_util.h"

#define POOL "name=p,dtype=bf16,layers=8,kv_heads=2,head_dim=64,page_size=16,capacity=2MiB,backend=host"
#define W     4
#define NKEYS 48
#define MAXN  256
#define SALT1 "5a5a5a5a000000000000000000000001"

static const int tenant_of[W] = { 0, 0, 1, 1 };

struct model {
        uint32_t n;
        uint32_t ref[MAXN];
        uint32_t hold[W][MAXN];
        int      keyed[MAXN];
        uint32_t keyof[MAXN];       /* tenant * NKEYS + key */
        int      page_of[2 * NKEYS];
        uint32_t lru[MAXN], nlru;   /* lru[0] is evicted first */
        int64_t  lookups, hits, evictions;
};

static struct kvt_daemon D;
static struct kvt_worker wk[W];
static struct model M;
static char keyhex[NKEYS][33];
static uint64_t rng;

static uint32_t rnd(uint32_t n)
{
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        return (uint32_t)(rng % n);
}

static uint32_t nfree(void)
{
        uint32_t f = 0;
        for (uint32_t i = 0; i < M.n; i++)
                f += M.ref[i] == 0 && !M.keyed[i];
        return f;
}

static void lru_del(uint32_t id)
{
        for (uint32_t i = 0; i < M.nlru; i++)
                if (M.lru[i] == id) {
                        memmove(M.lru + i, M.lru + i + 1, (M.nlru - i - 1) * sizeof(uint32_t));
                        M.nlru--;
                        return;
                }
        cr_assert_fail("model: page %u is not on the LRU", id);
}

static void unref(uint32_t id, uint32_t c)
{
        M.ref[id] -= c;
        if (M.ref[id] == 0 && M.keyed[id])
                M.lru[M.nlru++] = id;
}

static int err_of(const char *line)
{
        cr_assert(line && !strncmp(line, "err ", 4), "expected an error, got: %s", line ? line : "(died)");
        return atoi(line + 4);
}

static void spawn(int w)
{
        cr_assert_eq(kvt_worker_start(&wk[w]), 0);
        char name[16];
        snprintf(name, sizeof(name), "w%d", w);
        char *r = kvt_cmd(&wk[w], "connect %s %s %s", D.sock, tenant_of[w] ? SALT1 : "-", name);
        cr_assert(r && !strcmp(r, "ok"), "connect: %s", r);
        int64_t v[1];
        r = kvt_cmd(&wk[w], "use p");
        cr_assert_eq(kvt_parse_ok(r, v, 1), 1, "use: %s", r);
        M.n = (uint32_t)v[0];
        cr_assert_leq(M.n, MAXN);
}

static void do_alloc(int w)
{
        uint32_t n = 1 + rnd(rnd(5) == 0 ? M.n + 2 : 6);
        char *r = kvt_cmd(&wk[w], "alloc %u", n);
        if (n > nfree() + M.nlru) {
                cr_assert_eq(err_of(r), -ENOSPC, "alloc %u with %u free + %u idle: %s", n, nfree(), M.nlru, r);
                return;
        }
        int64_t v[MAXN + 8];
        cr_assert_eq(kvt_parse_ok(r, v, MAXN + 8), (int)n, "alloc %u: %s", n, r);
        for (uint32_t i = 0; i < n; i++) {
                uint32_t id = (uint32_t)v[i];
                cr_assert_lt(id, M.n);
                if (nfree() > 0) {
                        cr_assert(M.ref[id] == 0 && !M.keyed[id], "alloc gave page %u, which is not free", id);
                } else {
                        cr_assert_eq(id, M.lru[0], "alloc evicted page %u, the LRU page is %u", id, M.lru[0]);
                        lru_del(id);
                        M.page_of[M.keyof[id]] = -1;
                        M.keyed[id] = 0;
                        M.evictions++;
                }
                M.ref[id] = 1;
                M.hold[w][id]++;
        }
}

static void do_free(int w)
{
        uint32_t refs[1024], nr = 0;
        for (uint32_t i = 0; i < M.n; i++)
                for (uint32_t c = 0; c < M.hold[w][i] && nr < 1024; c++)
                        refs[nr++] = i;
        for (uint32_t i = nr; i > 1; i--) {
                uint32_t j = rnd(i), x = refs[i - 1];
                refs[i - 1] = refs[j];
                refs[j] = x;
        }
        uint32_t n = nr ? 1 + rnd(nr < 12 ? nr : 12) : 0, ids[16];
        memcpy(ids, refs, n * sizeof(uint32_t));
        int kind = (int)rnd(5), want = 0;
        if (kind == 0 || n == 0) {
                ids[n++] = rnd(M.n); /* perhaps someone else's, free or cached */
        } else if (kind == 1) {
                ids[n++] = ids[0];   /* perhaps more often than held */
        }
        for (uint32_t i = 0; i < n && want == 0; i++) {
                uint32_t c = 0;
                for (uint32_t j = 0; j < n; j++)
                        c += ids[j] == ids[i];
                if (c > M.hold[w][ids[i]])
                        want = -EPERM;
        }
        char line[256];
        size_t off = 0;
        for (uint32_t i = 0; i < n; i++)
                off += (size_t)snprintf(line + off, sizeof(line) - off, " %u", ids[i]);
        char *r = kvt_cmd(&wk[w], "free%s", line);
        if (want) {
                cr_assert_eq(err_of(r), want, "free%s: %s", line, r);
                return;
        }
        cr_assert_str_eq(r, "ok", "free%s", line);
        /* the daemon makes the last page of a call idle first */
        for (uint32_t i = n; i-- > 0;) {
                M.hold[w][ids[i]]--;
                unref(ids[i], 1);
        }
}

static void do_publish(int w)
{
        uint32_t held[MAXN], nh = 0;
        for (uint32_t i = 0; i < M.n; i++)
                if (M.hold[w][i])
                        held[nh++] = i;
        uint32_t n = 1 + rnd(4), ids[4], k[4];
        for (uint32_t i = 0; i < n; i++) {
                ids[i] = (nh && rnd(10) < 9) ? held[rnd(nh)] : rnd(M.n);
                k[i] = rnd(NKEYS);
        }
        int eperm = 0;
        for (uint32_t i = 0; i < n; i++)
                eperm |= M.hold[w][ids[i]] == 0;
        char line[512];
        size_t off = (size_t)snprintf(line, sizeof(line), "publish %u", n);
        for (uint32_t i = 0; i < n; i++)
                off += (size_t)snprintf(line + off, sizeof(line) - off, " %u", ids[i]);
        for (uint32_t i = 0; i < n; i++)
                off += (size_t)snprintf(line + off, sizeof(line) - off, " %s", keyhex[k[i]]);
        char *r = kvt_cmd(&wk[w], "%s", line);
        if (eperm) {
                cr_assert_eq(err_of(r), -EPERM, "%s: %s", line, r);
                return;
        }
        int64_t v[5];
        cr_assert_eq(kvt_parse_ok(r, v, 5), (int)n + 1, "%s: %s", line, r);
        int64_t stored = 0;
        for (uint32_t i = 0; i < n; i++) {
                uint32_t sk = (uint32_t)tenant_of[w] * NKEYS + k[i];
                int dup = 1;
                if (M.page_of[sk] < 0 && !M.keyed[ids[i]]) {
                        M.page_of[sk] = (int)ids[i];
                        M.keyed[ids[i]] = 1;
                        M.keyof[ids[i]] = sk;
                        stored++;
                        dup = 0;
                }
                cr_assert_eq(v[1 + i], dup, "%s: result %u is %lld", line, i, (long long)v[1 + i]);
        }
        cr_assert_eq(v[0], stored, "%s: %s", line, r);
}

static void do_lookup(int w)
{
        uint32_t t = (uint32_t)tenant_of[w], n = 1 + rnd(6), k[6];
        uint32_t lead = rnd(3) ? rnd(n + 1) : 0;
        for (uint32_t i = 0; i < n; i++) {
                k[i] = rnd(NKEYS);
                for (uint32_t tries = 0; i < lead && M.page_of[t * NKEYS + k[i]] < 0 && tries < 64; tries++)
                        k[i] = rnd(NKEYS);
        }
        char line[512];
        size_t off = (size_t)snprintf(line, sizeof(line), "lookup %u", n);
        for (uint32_t i = 0; i < n; i++)
                off += (size_t)snprintf(line + off, sizeof(line) - off, " %s", keyhex[k[i]]);
        char *r = kvt_cmd(&wk[w], "%s", line);
        uint32_t h = 0;
        while (h < n && M.page_of[t * NKEYS + k[h]] >= 0)
                h++;
        int64_t v[8];
        cr_assert_eq(kvt_parse_ok(r, v, 8), (int)h + 1, "lookup of %u keys, model %u hits: %s", n, h, r);
        cr_assert_eq(v[0], h);
        for (uint32_t i = 0; i < h; i++) {
                uint32_t id = (uint32_t)M.page_of[t * NKEYS + k[i]];
                cr_assert_eq(v[1 + i], id, "lookup hit %u: page %lld, model %u", i, (long long)v[1 + i], id);
                if (M.ref[id] == 0)
                        lru_del(id);
                M.ref[id]++;
                M.hold[w][id]++;
        }
        M.lookups += n;
        M.hits += h;
}

/* The session ends (kill -9 or a clean exit); the daemon drops its pages as
 * one release in ascending page order.  A new worker takes the slot. */
static void do_death(kvc_client *ctl, int w, int brutal)
{
        pid_t pid = wk[w].pid;
        if (brutal)
                kvt_worker_kill(&wk[w]);
        else
                cr_assert_eq(kvt_worker_stop(&wk[w]), 0);
        cr_assert_eq(kvt_wait_gone(ctl, pid), 0, "the daemon still lists worker %d", w);
        for (uint32_t i = M.n; i-- > 0;) {
                uint32_t c = M.hold[w][i];
                M.hold[w][i] = 0;
                if (c)
                        unref(i, c);
        }
        spawn(w);
}

static void compare(kvc_client *ctl, int step)
{
        struct kvt_pool_stats st;
        cr_assert_eq(kvt_pool_stats(ctl, "p", &st), 0);
        uint32_t held = 0, cached = 0;
        for (uint32_t i = 0; i < M.n; i++) {
                held += M.ref[i] > 0;
                cached += M.keyed[i];
        }
        cr_assert_eq(st.total, M.n);
        cr_assert_eq(st.free, nfree(), "step %d: %lld free, model %u", step, (long long)st.free, nfree());
        cr_assert_eq(st.held, held, "step %d: %lld held, model %u", step, (long long)st.held, held);
        cr_assert_eq(st.cached, cached, "step %d: %lld cached, model %u", step, (long long)st.cached, cached);
        cr_assert_eq(st.cached_idle, M.nlru, "step %d: %lld idle, model %u", step, (long long)st.cached_idle, M.nlru);
        cr_assert_eq(st.lookups, M.lookups, "step %d: lookups", step);
        cr_assert_eq(st.hits, M.hits, "step %d: hits", step);
        cr_assert_eq(st.evictions, M.evictions, "step %d: evictions", step);
        for (int w = 0; w < W; w++) {
                int64_t c = 0;
                for (uint32_t i = 0; i < M.n; i++)
                        c += M.hold[w][i];
                cr_assert_eq(kvt_client_held(ctl, wk[w].pid), c, "step %d: worker %d holds %lld, model %lld",
                             step, w, (long long)kvt_client_held(ctl, wk[w].pid), (long long)c);
        }
}

static void run(uint64_t seed, int steps)
{
        const char *pools[] = { POOL };
        cr_assert_eq(kvt_daemon_start(&D, NULL, pools, 1), 0);
        memset(&M, 0, sizeof(M));
        for (int i = 0; i < 2 * NKEYS; i++)
                M.page_of[i] = -1;
        for (int k = 0; k < NKEYS; k++) {
                kvc_key key;
                int32_t tok = k;
                kvc_block_key(NULL, &tok, 1, NULL, 0, &key);
                kvt_hex(&key, keyhex[k]);
        }
        rng = seed;
        kvc_client *ctl;
        cr_assert_eq(kvt_connect(&D, "model", NULL, &ctl), 0);
        for (int w = 0; w < W; w++)
                spawn(w);
        int deaths = 0;
        for (int step = 0; step < steps; step++) {
                int w = (int)rnd(W);
                uint32_t op = rnd(100);
                if (op < 27)
                        do_alloc(w);
                else if (op < 52)
                        do_free(w);
                else if (op < 70)
                        do_publish(w);
                else if (op < 97)
                        do_lookup(w);
                else
                        do_death(ctl, w, (deaths++ & 1) == 0);
                compare(ctl, step);
        }
        cr_assert_gt(M.evictions, 0, "the run never evicted");
        cr_assert_gt(M.hits, 0, "the run never hit");
        cr_assert_gt(deaths, 0, "no session died");
        cr_log_info("seed %llu: %d steps, %lld lookups, %lld hits, %lld evictions, %d deaths",
                    (unsigned long long)seed, steps, (long long)M.lookups, (long long)M.hits,
                    (long long)M.evictions, deaths);
        for (int w = 0; w < W; w++)
                cr_assert_eq(kvt_worker_stop(&wk[w]), 0);
        kvc_disconnect(ctl);
        cr_assert_eq(kvt_daemon_stop(&D), 0);
}

Test(prefix_model, seed_1, .timeout = 240) { run(0x2545F4914F6CDD1Dull, 1500); }
Test(prefix_model, seed_2, .timeout = 240) { run(12345, 1500); }
