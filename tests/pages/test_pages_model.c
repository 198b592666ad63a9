/* test_pages_model.c - randomized model test of the page table.
 *
 * Six sessions do random allocs, releases (valid and invalid: other
 * sessions' pages, free pages, out-of-range ids, a page listed more often
 * than held), publishes (held, not held, duplicate keys, a page that already
 * has a key), lookups (hits, partial runs, another salt), session drops and,
 * rarely, a reset of every key.
 * A plain-array reference model predicts every result; after every step the
 * test compares return values, returned ids, hook calls, stats, every
 * refcount and every session's count, and runs kvd_pages_check().  Evictions
 * must come in the model's LRU order, and a page is never handed out while
 * the model says it is in use. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pages.h"

#define S      6    /* sessions */
#define NSALT  2
#define MAXN   128
#define MAXOP  16   /* ids in one release */
#define MAXEV  (MAXN + 8)

struct model {
        uint32_t n, nkeys;
        uint32_t ref[MAXN];
        uint32_t hold[S][MAXN];
        int      keyed[MAXN];
        uint32_t keyof[MAXN];          /* salt * nkeys + key */
        int      page_of[NSALT * 3 * MAXN + 8];
        uint32_t lru[MAXN], nlru;      /* lru[0] = least recently used */
        uint64_t lookups, hits, evictions;
};

/* what the hooks saw since the last step */
struct seen {
        uint32_t nst, nev;
        uint32_t st_page[MAXEV], ev_page[MAXEV];
        struct kvd_scoped_key st_key[MAXEV], ev_key[MAXEV];
};

static uint64_t rng;
static uint32_t rnd(uint32_t n)
{
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        return (uint32_t)(rng % n);
}

static const uint32_t sids[S] = { 1, 2, 7, 1000, 65536, 0 };

static void make_salt(uint8_t out[KVD_KEY_LEN], uint32_t salt)
{
        memset(out, salt ? 0x77 : 0, KVD_KEY_LEN);
}

static void make_key(uint8_t out[KVD_KEY_LEN], uint32_t k)
{
        memset(out, 0x5a, KVD_KEY_LEN);
        memcpy(out, &k, sizeof(k));
}

static uint32_t scoped_id(const struct model *m, const struct kvd_scoped_key *k)
{
        uint32_t key;
        memcpy(&key, k->key, sizeof(key));
        return (k->salt[0] == 0x77 ? m->nkeys : 0) + key;
}

static void on_stored(void *ud, uint32_t page, const struct kvd_scoped_key *k)
{
        struct seen *w = ud;
        cr_assert_lt(w->nst, MAXEV);
        w->st_page[w->nst] = page;
        w->st_key[w->nst++] = *k;
}

static void on_evicted(void *ud, uint32_t page, const struct kvd_scoped_key *k)
{
        struct seen *w = ud;
        cr_assert_lt(w->nev, MAXEV);
        w->ev_page[w->nev] = page;
        w->ev_key[w->nev++] = *k;
}

static uint32_t model_free(const struct model *m)
{
        uint32_t f = 0;
        for (uint32_t i = 0; i < m->n; i++)
                f += m->ref[i] == 0 && !m->keyed[i];
        return f;
}

static void lru_del(struct model *m, uint32_t id)
{
        for (uint32_t i = 0; i < m->nlru; i++) {
                if (m->lru[i] == id) {
                        memmove(m->lru + i, m->lru + i + 1, (m->nlru - i - 1) * sizeof(uint32_t));
                        m->nlru--;
                        return;
                }
        }
        cr_assert_fail("model: page %u not on the LRU", id);
}

static void unref(struct model *m, uint32_t id, uint32_t c)
{
        m->ref[id] -= c;
        if (m->ref[id] == 0 && m->keyed[id])
                m->lru[m->nlru++] = id;
}

static void compare(struct kvd_pages *t, const struct model *m, uint64_t step)
{
        cr_assert_eq(kvd_pages_check(t), 0, "step %lu: check failed", (unsigned long)step);
        struct kvd_pages_stats st;
        kvd_pages_get_stats(t, &st);
        uint32_t held = 0, cached = 0;
        for (uint32_t i = 0; i < m->n; i++) {
                cr_assert_eq(kvd_pages_refcount(t, i), m->ref[i], "step %lu: page %u refcount %u, model %u",
                             (unsigned long)step, i, kvd_pages_refcount(t, i), m->ref[i]);
                held += m->ref[i] > 0;
                cached += m->keyed[i];
        }
        cr_assert_eq(st.free, model_free(m), "step %lu: free", (unsigned long)step);
        cr_assert_eq(st.held, held, "step %lu: held", (unsigned long)step);
        cr_assert_eq(st.cached, cached, "step %lu: cached", (unsigned long)step);
        cr_assert_eq(st.cached_idle, m->nlru, "step %lu: idle", (unsigned long)step);
        cr_assert_eq(st.lookups, m->lookups);
        cr_assert_eq(st.hits, m->hits);
        cr_assert_eq(st.evictions, m->evictions);
        for (int s = 0; s < S; s++) {
                uint32_t c = 0;
                for (uint32_t i = 0; i < m->n; i++)
                        c += m->hold[s][i];
                cr_assert_eq(kvd_pages_session_count(t, sids[s]), c, "step %lu: session %d",
                             (unsigned long)step, s);
        }
}

static void do_alloc(struct kvd_pages *t, struct model *m, struct seen *w, int s)
{
        uint32_t n = 1 + rnd(rnd(4) == 0 ? m->n + 2 : 6);
        uint32_t ids[MAXN + 8];
        int r = kvd_pages_alloc(t, sids[s], n, ids);
        if (n > model_free(m) + m->nlru) {
                cr_assert_eq(r, -ENOSPC);
                cr_assert_eq(w->nev, 0);
                return;
        }
        cr_assert_eq(r, 0);
        uint32_t ev = 0;
        for (uint32_t i = 0; i < n; i++) {
                uint32_t id = ids[i];
                cr_assert_lt(id, m->n);
                if (model_free(m) > 0) {
                        cr_assert(m->ref[id] == 0 && !m->keyed[id],
                                  "alloc handed out page %u which is not free", id);
                } else {
                        cr_assert_gt(m->nlru, 0);
                        cr_assert_eq(id, m->lru[0], "evicted page %u, LRU is %u", id, m->lru[0]);
                        cr_assert_lt(ev, w->nev);
                        cr_assert_eq(w->ev_page[ev], id);
                        cr_assert_eq(scoped_id(m, &w->ev_key[ev]), m->keyof[id]);
                        ev++;
                        lru_del(m, id);
                        m->page_of[m->keyof[id]] = -1;
                        m->keyed[id] = 0;
                        m->evictions++;
                }
                m->ref[id] = 1;
                m->hold[s][id]++;
        }
        cr_assert_eq(ev, w->nev, "evicted hook called %u times, expected %u", w->nev, ev);
}

static void do_release(struct kvd_pages *t, struct model *m, int s)
{
        /* a valid list: some of s's references, in random order */
        uint32_t refs[MAXN * 8], nrefs = 0;
        for (uint32_t i = 0; i < m->n; i++)
                for (uint32_t c = 0; c < m->hold[s][i] && nrefs < MAXN * 8; c++)
                        refs[nrefs++] = i;
        for (uint32_t i = nrefs; i > 1; i--) {
                uint32_t j = rnd(i), x = refs[i - 1];
                refs[i - 1] = refs[j];
                refs[j] = x;
        }
        uint32_t n = nrefs ? rnd(nrefs < MAXOP ? nrefs : MAXOP - 1) + 1 : 0;
        uint32_t ids[MAXOP];
        memcpy(ids, refs, n * sizeof(uint32_t));
        int want = 0, kind = rnd(5);
        if (kind == 0 || n == 0) {
                /* a page s does not hold (another's, free or cached) */
                uint32_t id = rnd(m->n);
                ids[n++] = id;
                want = m->hold[s][id] ? 0 : -EPERM;
                if (want == 0 && n > 1) {
                        uint32_t c = 0;
                        for (uint32_t i = 0; i < n; i++)
                                c += ids[i] == id;
                        want = c > m->hold[s][id] ? -EPERM : 0;
                }
        } else if (kind == 1) {
                ids[n++] = rnd(2) ? m->n + rnd(5) : UINT32_MAX;
                want = -ERANGE;
        } else if (kind == 2) {
                /* one page more often than held */
                uint32_t id = ids[0], c = 0;
                for (uint32_t i = 0; i < n; i++)
                        c += ids[i] == id;
                while (c <= m->hold[s][id] && n < MAXOP) {
                        ids[n++] = id;
                        c++;
                }
                want = c > m->hold[s][id] ? -EPERM : 0;
        }
        int r = kvd_pages_release(t, sids[s], n, ids);
        cr_assert_eq(r, want, "release: %d, want %d", r, want);
        if (r < 0)
                return;
        for (uint32_t i = n; i-- > 0;) {
                m->hold[s][ids[i]]--;
                unref(m, ids[i], 1);
        }
}

static void do_drop(struct kvd_pages *t, struct model *m, int s)
{
        uint32_t total = 0;
        for (uint32_t i = 0; i < m->n; i++)
                total += m->hold[s][i];
        cr_assert_eq(kvd_pages_drop_session(t, sids[s]), total);
        for (uint32_t i = m->n; i-- > 0;) {
                uint32_t c = m->hold[s][i];
                m->hold[s][i] = 0;
                if (c)
                        unref(m, i, c);
        }
}

static void do_publish(struct kvd_pages *t, struct model *m, struct seen *w, int s)
{
        uint32_t held[MAXN], nh = 0;
        for (uint32_t i = 0; i < m->n; i++)
                if (m->hold[s][i])
                        held[nh++] = i;
        uint32_t n = 1 + rnd(4), salt = rnd(NSALT);
        uint32_t ids[8], kid[8];
        uint8_t keys[8][KVD_KEY_LEN], saltb[KVD_KEY_LEN], res[8];
        int want = 0;
        for (uint32_t i = 0; i < n; i++) {
                uint32_t roll = rnd(20);
                if (nh && roll < 17)
                        ids[i] = held[rnd(nh)];
                else if (roll < 19)
                        ids[i] = rnd(m->n);
                else
                        ids[i] = m->n + rnd(3);
                kid[i] = rnd(m->nkeys);
                make_key(keys[i], kid[i]);
        }
        for (uint32_t i = 0; i < n; i++)
                if (ids[i] >= m->n)
                        want = -ERANGE;
        for (uint32_t i = 0; i < n && want == 0; i++)
                if (!m->hold[s][ids[i]])
                        want = -EPERM;
        make_salt(saltb, salt);
        memset(res, 0xEE, sizeof(res));
        int r = kvd_pages_publish(t, sids[s], salt ? saltb : (rnd(2) ? saltb : NULL), n, ids, keys, res);
        if (want < 0) {
                cr_assert_eq(r, want, "publish: %d, want %d", r, want);
                cr_assert_eq(w->nst, 0);
                return;
        }
        int stored = 0;
        uint32_t nst = 0;
        for (uint32_t i = 0; i < n; i++) {
                uint32_t ks = salt * m->nkeys + kid[i], id = ids[i];
                uint8_t expect;
                if (m->page_of[ks] >= 0) {
                        expect = 1;
                } else if (m->keyed[id]) {
                        expect = 2;
                } else {
                        expect = 0;
                        m->page_of[ks] = (int)id;
                        m->keyed[id] = 1;
                        m->keyof[id] = ks;
                        stored++;
                        cr_assert_lt(nst, w->nst);
                        cr_assert_eq(w->st_page[nst], id);
                        cr_assert_eq(scoped_id(m, &w->st_key[nst]), ks);
                        nst++;
                }
                cr_assert_eq(res[i], expect, "publish result %u: %u, want %u", i, res[i], expect);
        }
        cr_assert_eq(r, stored);
        cr_assert_eq(w->nst, nst);
}

static void do_lookup(struct kvd_pages *t, struct model *m, int s)
{
        uint32_t salt = rnd(NSALT), n = 1 + rnd(8), kid[8];
        uint8_t keys[8][KVD_KEY_LEN], saltb[KVD_KEY_LEN];
        /* start with cached keys of some salt most of the time, so runs are long */
        uint32_t lead = rnd(3) ? rnd(n + 1) : 0;
        for (uint32_t i = 0; i < n; i++) {
                kid[i] = rnd(m->nkeys);
                if (i < lead) {
                        uint32_t tries = 0, sa = rnd(4) ? salt : 1 - salt;
                        while (m->page_of[sa * m->nkeys + kid[i]] < 0 && tries++ < 4 * m->nkeys)
                                kid[i] = rnd(m->nkeys);
                }
                make_key(keys[i], kid[i]);
        }
        make_salt(saltb, salt);
        uint32_t got[8];
        int r = kvd_pages_lookup(t, sids[s], saltb, n, keys, got);
        uint32_t h = 0;
        while (h < n && m->page_of[salt * m->nkeys + kid[h]] >= 0)
                h++;
        cr_assert_eq(r, (int)h, "lookup: %d hits, model %u", r, h);
        for (uint32_t i = 0; i < h; i++) {
                uint32_t id = (uint32_t)m->page_of[salt * m->nkeys + kid[i]];
                cr_assert_eq(got[i], id);
                if (m->ref[id] == 0)
                        lru_del(m, id);
                m->ref[id]++;
                m->hold[s][id]++;
        }
        m->lookups += n;
        m->hits += h;
}

/* every key goes, or every key of one salt; idle cached pages become free,
 * held ones stay held */
static void do_reset(struct kvd_pages *t, struct model *m)
{
        int all = rnd(2) == 0;
        uint32_t salt = rnd(NSALT), keys = 0;
        uint8_t sb[KVD_KEY_LEN];
        make_salt(sb, salt);
        for (uint32_t id = 0; id < m->n; id++) {
                if (!m->keyed[id] || (!all && m->keyof[id] / m->nkeys != salt))
                        continue;
                keys++;
                if (m->ref[id] == 0)
                        lru_del(m, id);
                m->page_of[m->keyof[id]] = -1;
                m->keyed[id] = 0;
        }
        cr_assert_eq(kvd_pages_reset_keys(t, all ? NULL : sb), keys);
}

static void run_model(uint32_t n, uint64_t seed, uint32_t steps)
{
        static struct model m;
        struct seen w;
        memset(&m, 0, sizeof(m));
        m.n = n;
        m.nkeys = 3 * n;
        for (uint32_t i = 0; i < NSALT * m.nkeys; i++)
                m.page_of[i] = -1;
        rng = seed;
        struct kvd_pages_hooks hooks = { on_stored, on_evicted, &w };
        struct kvd_pages *t = NULL;
        cr_assert_eq(kvd_pages_new(n, &hooks, &t), 0);
        for (uint64_t step = 0; step < steps; step++) {
                memset(&w, 0, sizeof(w));
                int s = (int)rnd(S);
                uint32_t op = rnd(100);
                if (op < 25)
                        do_alloc(t, &m, &w, s);
                else if (op < 50)
                        do_release(t, &m, s);
                else if (op < 70)
                        do_publish(t, &m, &w, s);
                else if (op < 97)
                        do_lookup(t, &m, s);
                else if (op < 99 || rnd(4))
                        do_drop(t, &m, s);
                else
                        do_reset(t, &m); /* one step in 400 */
                if (op >= 25)
                        cr_assert_eq(w.nev, 0, "only alloc evicts");
                if (op < 50 || op >= 70)
                        cr_assert_eq(w.nst, 0, "only publish stores");
                compare(t, &m, step);
        }
        cr_assert_gt(m.evictions, 0, "the run never evicted: widen it");
        cr_assert_gt(m.hits, 0, "the run never hit");
        kvd_pages_free(t);
}

Test(pages_model, one_page)     { run_model(1, 0x1234567ull, 20000); }
Test(pages_model, seven_pages)  { run_model(7, 0x9e3779b97f4a7c15ull, 30000); }
Test(pages_model, small)        { run_model(24, 42, 30000); }
Test(pages_model, medium)       { run_model(64, 0xdeadbeefcafeull, 30000); }
Test(pages_model, large)        { run_model(MAXN, 7777777, 30000); }
