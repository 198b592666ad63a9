/* test_pages.c - unit tests of the page table (daemon/pages.c): every
 * function, every error, and that a failed call changes nothing. */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "pages.h"

/* A recorder for the stored/evicted hooks. */
struct rec {
        uint32_t n_stored, n_evicted;
        uint32_t stored_page[64], evicted_page[64];
        struct kvd_scoped_key stored_key[64], evicted_key[64];
};

static void on_stored(void *ud, uint32_t page, const struct kvd_scoped_key *k)
{
        struct rec *r = ud;
        if (r->n_stored < 64) {
                r->stored_page[r->n_stored] = page;
                r->stored_key[r->n_stored] = *k;
        }
        r->n_stored++;
}

static void on_evicted(void *ud, uint32_t page, const struct kvd_scoped_key *k)
{
        struct rec *r = ud;
        if (r->n_evicted < 64) {
                r->evicted_page[r->n_evicted] = page;
                r->evicted_key[r->n_evicted] = *k;
        }
        r->n_evicted++;
}

static struct kvd_pages *mk(uint32_t n, struct rec *r)
{
        struct kvd_pages_hooks h = { on_stored, on_evicted, r };
        struct kvd_pages *t = NULL;
        cr_assert_eq(kvd_pages_new(n, r ? &h : NULL, &t), 0);
        cr_assert_not_null(t);
        return t;
}

static void key(uint8_t k[KVD_KEY_LEN], uint32_t v)
{
        memset(k, 0xA5, KVD_KEY_LEN);
        memcpy(k, &v, sizeof(v));
}

static struct kvd_pages_stats stats(const struct kvd_pages *t)
{
        struct kvd_pages_stats s;
        memset(&s, 0xEE, sizeof(s));
        kvd_pages_get_stats(t, &s);
        return s;
}

#define ASSERT_STATS(t, fr, he, ca, id) do { \
        struct kvd_pages_stats s_ = stats(t); \
        cr_assert_eq(s_.free, (fr), "free %u != %u", s_.free, (unsigned)(fr)); \
        cr_assert_eq(s_.held, (he), "held %u != %u", s_.held, (unsigned)(he)); \
        cr_assert_eq(s_.cached, (ca), "cached %u != %u", s_.cached, (unsigned)(ca)); \
        cr_assert_eq(s_.cached_idle, (id), "idle %u != %u", s_.cached_idle, (unsigned)(id)); \
        cr_assert_eq(kvd_pages_check(t), 0); \
} while (0)

static const uint8_t salt0[KVD_KEY_LEN] = { 0 };
static const uint8_t salt1[KVD_KEY_LEN] = { 1, 2, 3 };

/* ---- new / free -------------------------------------------------------- */

Test(pages, new_rejects_bad_args)
{
        struct kvd_pages *t = (struct kvd_pages *)0x1;
        cr_assert_eq(kvd_pages_new(0, NULL, &t), -EINVAL);
        cr_assert_eq(kvd_pages_new((1u << 30) + 1, NULL, &t), -EINVAL);
        cr_assert_eq(kvd_pages_new(4, NULL, NULL), -EINVAL);
        cr_assert_eq(t, (struct kvd_pages *)0x1, "ret untouched on failure");
        kvd_pages_free(NULL);
}

Test(pages, new_is_all_free)
{
        struct kvd_pages *t = mk(8, NULL);
        struct kvd_pages_stats s = stats(t);
        cr_assert_eq(s.total, 8);
        cr_assert_eq(s.lookups + s.hits + s.evictions, 0);
        ASSERT_STATS(t, 8, 0, 0, 0);
        /* queries out of range or on NULL answer 0 and touch nothing */
        cr_assert_eq(kvd_pages_refcount(t, 8), 0);
        cr_assert_eq(kvd_pages_refcount(t, UINT32_MAX), 0);
        cr_assert_eq(kvd_pages_refcount(NULL, 0), 0);
        cr_assert_eq(kvd_pages_session_count(NULL, 1), 0);
        cr_assert_eq(kvd_pages_session_count(t, UINT32_MAX), 0);
        struct kvd_pages_stats keep;
        memset(&keep, 0x3C, sizeof(keep));
        s = keep;
        kvd_pages_get_stats(NULL, &s);
        cr_assert_eq(memcmp(&s, &keep, sizeof(s)), 0);
        kvd_pages_get_stats(t, NULL);
        kvd_pages_free(t);
}

/* ---- alloc ------------------------------------------------------------- */

Test(pages, alloc_hands_out_distinct_pages)
{
        struct kvd_pages *t = mk(8, NULL);
        uint32_t a[5], b[3];
        cr_assert_eq(kvd_pages_alloc(t, 1, 5, a), 0);
        cr_assert_eq(kvd_pages_alloc(t, 2, 3, b), 0);
        int seen[8] = { 0 };
        for (int i = 0; i < 5; i++)
                seen[a[i]]++;
        for (int i = 0; i < 3; i++)
                seen[b[i]]++;
        for (int i = 0; i < 8; i++) {
                cr_assert_eq(seen[i], 1, "page %d handed out %d times", i, seen[i]);
                cr_assert_eq(kvd_pages_refcount(t, i), 1);
        }
        cr_assert_eq(kvd_pages_session_count(t, 1), 5);
        cr_assert_eq(kvd_pages_session_count(t, 2), 3);
        cr_assert_eq(kvd_pages_session_count(t, 3), 0);
        ASSERT_STATS(t, 0, 8, 0, 0);
        kvd_pages_free(t);
}

Test(pages, alloc_enospc_changes_nothing)
{
        struct kvd_pages *t = mk(4, NULL);
        uint32_t a[5] = { 77, 77, 77, 77, 77 };
        cr_assert_eq(kvd_pages_alloc(t, 1, 5, a), -ENOSPC);
        cr_assert_eq(a[0], 77, "ret_ids untouched on failure");
        ASSERT_STATS(t, 4, 0, 0, 0);
        cr_assert_eq(kvd_pages_session_count(t, 1), 0);
        cr_assert_eq(kvd_pages_alloc(t, 1, 3, a), 0);
        cr_assert_eq(kvd_pages_alloc(t, 2, 2, a), -ENOSPC);
        cr_assert_eq(kvd_pages_alloc(t, 2, 1, a), 0);
        ASSERT_STATS(t, 0, 4, 0, 0);
        kvd_pages_free(t);
}

Test(pages, alloc_bad_args)
{
        struct kvd_pages *t = mk(4, NULL);
        uint32_t a[1];
        cr_assert_eq(kvd_pages_alloc(t, 1, 0, a), 0);
        cr_assert_eq(kvd_pages_alloc(t, 1, 0, NULL), 0);
        cr_assert_eq(kvd_pages_alloc(t, 1, 1, NULL), -EINVAL);
        cr_assert_eq(kvd_pages_alloc(NULL, 1, 1, a), -EINVAL);
        cr_assert_eq(kvd_pages_alloc(t, UINT32_MAX, 1, a), -EINVAL);
        ASSERT_STATS(t, 4, 0, 0, 0);
        kvd_pages_free(t);
}

/* ---- release ----------------------------------------------------------- */

Test(pages, release_returns_pages)
{
        struct kvd_pages *t = mk(4, NULL);
        uint32_t a[4];
        cr_assert_eq(kvd_pages_alloc(t, 1, 4, a), 0);
        cr_assert_eq(kvd_pages_release(t, 1, 2, a), 0);
        ASSERT_STATS(t, 2, 2, 0, 0);
        cr_assert_eq(kvd_pages_refcount(t, a[0]), 0);
        cr_assert_eq(kvd_pages_session_count(t, 1), 2);
        cr_assert_eq(kvd_pages_release(t, 1, 0, NULL), 0);
        cr_assert_eq(kvd_pages_release(t, 1, 2, a + 2), 0);
        ASSERT_STATS(t, 4, 0, 0, 0);
        cr_assert_eq(kvd_pages_session_count(t, 1), 0);
        kvd_pages_free(t);
}

Test(pages, release_errors_change_nothing)
{
        struct kvd_pages *t = mk(6, NULL);
        uint32_t a[3], b[2];
        cr_assert_eq(kvd_pages_alloc(t, 1, 3, a), 0);
        cr_assert_eq(kvd_pages_alloc(t, 2, 2, b), 0);
        /* out of range */
        uint32_t bad[2] = { a[0], 6 };
        cr_assert_eq(kvd_pages_release(t, 1, 2, bad), -ERANGE);
        uint32_t huge[1] = { UINT32_MAX };
        cr_assert_eq(kvd_pages_release(t, 1, 1, huge), -ERANGE);
        /* another session's page */
        uint32_t other[2] = { a[0], b[0] };
        cr_assert_eq(kvd_pages_release(t, 1, 2, other), -EPERM);
        /* a free page */
        uint32_t fr[1] = { 5 };
        cr_assert_eq(kvd_pages_alloc(t, 3, 0, NULL), 0);
        cr_assert_eq(kvd_pages_refcount(t, 5), 0);
        cr_assert_eq(kvd_pages_release(t, 1, 1, fr), -EPERM);
        /* the same page listed twice but held once */
        uint32_t dup[3] = { a[1], a[2], a[1] };
        cr_assert_eq(kvd_pages_release(t, 1, 3, dup), -EPERM);
        /* unknown session, bad args */
        cr_assert_eq(kvd_pages_release(t, 9, 1, a), -EPERM);
        cr_assert_eq(kvd_pages_release(t, UINT32_MAX, 1, a), -EPERM);
        cr_assert_eq(kvd_pages_release(t, 1, 1, NULL), -EINVAL);
        cr_assert_eq(kvd_pages_release(NULL, 1, 1, a), -EINVAL);
        /* nothing changed */
        for (int i = 0; i < 3; i++)
                cr_assert_eq(kvd_pages_refcount(t, a[i]), 1);
        cr_assert_eq(kvd_pages_session_count(t, 1), 3);
        cr_assert_eq(kvd_pages_session_count(t, 2), 2);
        ASSERT_STATS(t, 1, 5, 0, 0);
        kvd_pages_free(t);
}

Test(pages, page_held_twice_needs_two_releases)
{
        struct kvd_pages *t = mk(4, NULL);
        uint32_t a[1], got[1];
        uint8_t k[1][KVD_KEY_LEN];
        key(k[0], 1);
        cr_assert_eq(kvd_pages_alloc(t, 1, 1, a), 0);
        cr_assert_eq(kvd_pages_publish(t, 1, salt0, 1, a, k, NULL), 1);
        cr_assert_eq(kvd_pages_lookup(t, 1, salt0, 1, k, got), 1);
        cr_assert_eq(got[0], a[0]);
        cr_assert_eq(kvd_pages_refcount(t, a[0]), 2);
        cr_assert_eq(kvd_pages_session_count(t, 1), 2);
        uint32_t three[3] = { a[0], a[0], a[0] };
        cr_assert_eq(kvd_pages_release(t, 1, 3, three), -EPERM);
        cr_assert_eq(kvd_pages_refcount(t, a[0]), 2);
        cr_assert_eq(kvd_pages_release(t, 1, 2, three), 0);
        cr_assert_eq(kvd_pages_refcount(t, a[0]), 0);
        ASSERT_STATS(t, 3, 0, 1, 1);
        kvd_pages_free(t);
}

/* ---- drop_session ------------------------------------------------------ */

Test(pages, drop_session_releases_everything)
{
        struct rec r = { 0 };
        struct kvd_pages *t = mk(8, &r);
        uint32_t a[6], b[2], got[2];
        uint8_t k[2][KVD_KEY_LEN];
        key(k[0], 10);
        key(k[1], 11);
        cr_assert_eq(kvd_pages_alloc(t, 1, 4, a), 0);
        cr_assert_eq(kvd_pages_alloc(t, 2, 2, b), 0);
        cr_assert_eq(kvd_pages_publish(t, 2, salt0, 2, b, k, NULL), 2);
        cr_assert_eq(kvd_pages_lookup(t, 1, salt0, 2, k, got), 2);
        cr_assert_eq(kvd_pages_lookup(t, 1, salt0, 1, k, got), 1);
        cr_assert_eq(kvd_pages_session_count(t, 1), 7);
        cr_assert_eq(kvd_pages_drop_session(t, 1), 7);
        cr_assert_eq(kvd_pages_session_count(t, 1), 0);
        /* session 2 still holds its two published pages */
        ASSERT_STATS(t, 6, 2, 2, 0);
        cr_assert_eq(kvd_pages_drop_session(t, 1), 0);
        cr_assert_eq(kvd_pages_drop_session(t, 42), 0);
        cr_assert_eq(kvd_pages_drop_session(t, UINT32_MAX), 0);
        cr_assert_eq(kvd_pages_drop_session(NULL, 1), 0);
        cr_assert_eq(kvd_pages_drop_session(t, 2), 2);
        ASSERT_STATS(t, 6, 0, 2, 2);
        /* the session can come back and allocate again */
        cr_assert_eq(kvd_pages_alloc(t, 1, 6, a), 0);
        cr_assert_eq(r.n_evicted, 0);
        kvd_pages_free(t);
}

/* ---- publish ----------------------------------------------------------- */

Test(pages, publish_stores_and_reports)
{
        struct rec r = { 0 };
        struct kvd_pages *t = mk(8, &r);
        uint32_t a[3];
        uint8_t k[3][KVD_KEY_LEN], res[3] = { 9, 9, 9 };
        for (int i = 0; i < 3; i++)
                key(k[i], 100 + i);
        cr_assert_eq(kvd_pages_alloc(t, 1, 3, a), 0);
        cr_assert_eq(kvd_pages_publish(t, 1, salt1, 3, a, k, res), 3);
        cr_assert_eq(res[0] + res[1] + res[2], 0);
        cr_assert_eq(r.n_stored, 3);
        for (int i = 0; i < 3; i++) {
                cr_assert_eq(r.stored_page[i], a[i]);
                cr_assert_arr_eq(r.stored_key[i].key, k[i], KVD_KEY_LEN);
                cr_assert_arr_eq(r.stored_key[i].salt, salt1, KVD_KEY_LEN);
        }
        ASSERT_STATS(t, 5, 3, 3, 0);
        /* duplicate key (kept on its first page), and a page with another key */
        uint32_t b[2];
        cr_assert_eq(kvd_pages_alloc(t, 1, 2, b), 0);
        uint32_t ids[3] = { b[0], a[1], b[1] };
        uint8_t k2[3][KVD_KEY_LEN];
        memcpy(k2[0], k[0], KVD_KEY_LEN); /* dup key */
        key(k2[1], 200);                  /* a[1] already has key 101 */
        key(k2[2], 201);                  /* new */
        cr_assert_eq(kvd_pages_publish(t, 1, salt1, 3, ids, k2, res), 1);
        cr_assert_eq(res[0], 1);
        cr_assert_eq(res[1], 2);
        cr_assert_eq(res[2], 0);
        cr_assert_eq(r.n_stored, 4);
        uint32_t got[1];
        cr_assert_eq(kvd_pages_lookup(t, 2, salt1, 1, k2, got), 1);
        cr_assert_eq(got[0], a[0], "a duplicate keeps its first page");
        cr_assert_eq(kvd_pages_lookup(t, 2, salt1, 1, k2 + 1, got), 0, "key 200 was not stored");
        ASSERT_STATS(t, 3, 5, 4, 0);
        kvd_pages_free(t);
}

Test(pages, publish_same_key_twice_in_one_call)
{
        struct kvd_pages *t = mk(4, NULL);
        uint32_t a[2];
        uint8_t k[2][KVD_KEY_LEN], res[2];
        key(k[0], 5);
        key(k[1], 5);
        cr_assert_eq(kvd_pages_alloc(t, 1, 2, a), 0);
        cr_assert_eq(kvd_pages_publish(t, 1, NULL, 2, a, k, res), 1);
        cr_assert_eq(res[0], 0);
        cr_assert_eq(res[1], 1);
        /* NULL salt is the zero salt */
        uint32_t got[1];
        cr_assert_eq(kvd_pages_lookup(t, 1, salt0, 1, k, got), 1);
        cr_assert_eq(got[0], a[0]);
        ASSERT_STATS(t, 2, 2, 1, 0);
        kvd_pages_free(t);
}

Test(pages, publish_errors_change_nothing)
{
        struct rec r = { 0 };
        struct kvd_pages *t = mk(6, &r);
        uint32_t a[2], b[1];
        uint8_t k[2][KVD_KEY_LEN], res[2] = { 7, 7 };
        key(k[0], 1);
        key(k[1], 2);
        cr_assert_eq(kvd_pages_alloc(t, 1, 2, a), 0);
        cr_assert_eq(kvd_pages_alloc(t, 2, 1, b), 0);
        /* second page held by another session: nothing is published */
        uint32_t mixed[2] = { a[0], b[0] };
        cr_assert_eq(kvd_pages_publish(t, 1, salt0, 2, mixed, k, res), -EPERM);
        /* a free page */
        uint32_t fr[2] = { a[0], 5 };
        cr_assert_eq(kvd_pages_publish(t, 1, salt0, 2, fr, k, res), -EPERM);
        /* out of range */
        uint32_t oor[2] = { a[0], 6 };
        cr_assert_eq(kvd_pages_publish(t, 1, salt0, 2, oor, k, res), -ERANGE);
        /* a session holding nothing */
        cr_assert_eq(kvd_pages_publish(t, 7, salt0, 1, a, k, res), -EPERM);
        cr_assert_eq(kvd_pages_publish(t, UINT32_MAX, salt0, 1, a, k, res), -EPERM);
        cr_assert_eq(kvd_pages_publish(t, 1, salt0, 1, NULL, k, res), -EINVAL);
        cr_assert_eq(kvd_pages_publish(t, 1, salt0, 1, a, NULL, res), -EINVAL);
        cr_assert_eq(kvd_pages_publish(NULL, 1, salt0, 1, a, k, res), -EINVAL);
        cr_assert_eq(kvd_pages_publish(t, 1, salt0, 0, NULL, NULL, NULL), 0);
        cr_assert_eq(res[0], 7, "results untouched on failure");
        cr_assert_eq(r.n_stored, 0);
        uint32_t got[2];
        cr_assert_eq(kvd_pages_lookup(t, 1, salt0, 2, k, got), 0);
        ASSERT_STATS(t, 3, 3, 0, 0);
        kvd_pages_free(t);
}

/* ---- lookup ------------------------------------------------------------ */

Test(pages, lookup_longest_leading_run)
{
        struct kvd_pages *t = mk(16, NULL);
        uint32_t a[4];
        uint8_t k[6][KVD_KEY_LEN];
        for (int i = 0; i < 6; i++)
                key(k[i], 300 + i);
        cr_assert_eq(kvd_pages_alloc(t, 1, 4, a), 0);
        /* publish keys 0, 1, 3, 4 (not 2) */
        uint32_t ids[3] = { a[0], a[1], a[2] };
        uint8_t pk[3][KVD_KEY_LEN];
        memcpy(pk[0], k[0], KVD_KEY_LEN);
        memcpy(pk[1], k[1], KVD_KEY_LEN);
        memcpy(pk[2], k[3], KVD_KEY_LEN);
        cr_assert_eq(kvd_pages_publish(t, 1, salt0, 3, ids, pk, NULL), 3);
        uint32_t got[6] = { 0 };
        got[2] = 999;
        cr_assert_eq(kvd_pages_lookup(t, 2, salt0, 6, k, got), 2);
        cr_assert_eq(got[0], a[0]);
        cr_assert_eq(got[1], a[1]);
        cr_assert_eq(got[2], 999, "nothing written past the run");
        cr_assert_eq(kvd_pages_session_count(t, 2), 2);
        cr_assert_eq(kvd_pages_refcount(t, a[0]), 2);
        /* a first-key miss is 0 hits and holds nothing */
        cr_assert_eq(kvd_pages_lookup(t, 3, salt0, 4, k + 2, got), 0);
        cr_assert_eq(kvd_pages_session_count(t, 3), 0);
        /* a run starting at key 3 */
        cr_assert_eq(kvd_pages_lookup(t, 3, salt0, 1, k + 3, got), 1);
        cr_assert_eq(got[0], a[2]);
        struct kvd_pages_stats s = stats(t);
        cr_assert_eq(s.lookups, 6 + 4 + 1);
        cr_assert_eq(s.hits, 2 + 0 + 1);
        cr_assert_eq(kvd_pages_lookup(t, 3, salt0, 0, NULL, NULL), 0);
        cr_assert_eq(kvd_pages_lookup(t, 3, salt0, 1, NULL, got), -EINVAL);
        cr_assert_eq(kvd_pages_lookup(t, 3, salt0, 1, k, NULL), -EINVAL);
        cr_assert_eq(kvd_pages_lookup(t, UINT32_MAX, salt0, 1, k, got), -EINVAL);
        cr_assert_eq(kvd_pages_lookup(NULL, 3, salt0, 1, k, got), -EINVAL);
        ASSERT_STATS(t, 12, 4, 3, 0);
        kvd_pages_free(t);
}

Test(pages, lookup_is_scoped_by_salt)
{
        struct kvd_pages *t = mk(8, NULL);
        uint32_t a[2], got[1];
        uint8_t k[1][KVD_KEY_LEN];
        key(k[0], 1);
        cr_assert_eq(kvd_pages_alloc(t, 1, 2, a), 0);
        cr_assert_eq(kvd_pages_publish(t, 1, salt1, 1, a, k, NULL), 1);
        cr_assert_eq(kvd_pages_lookup(t, 2, salt0, 1, k, got), 0);
        cr_assert_eq(kvd_pages_lookup(t, 2, NULL, 1, k, got), 0);
        /* the same key under another salt is a separate entry */
        cr_assert_eq(kvd_pages_publish(t, 1, salt0, 1, a + 1, k, NULL), 1);
        cr_assert_eq(kvd_pages_lookup(t, 2, salt0, 1, k, got), 1);
        cr_assert_eq(got[0], a[1]);
        cr_assert_eq(kvd_pages_lookup(t, 2, salt1, 1, k, got), 1);
        cr_assert_eq(got[0], a[0]);
        ASSERT_STATS(t, 6, 2, 2, 0);
        kvd_pages_free(t);
}

Test(pages, lookup_repeated_key_longer_than_table)
{
        struct kvd_pages *t = mk(2, NULL);
        uint32_t a[1];
        enum { N = 50 };
        uint8_t k[N][KVD_KEY_LEN];
        uint32_t got[N];
        for (int i = 0; i < N; i++)
                key(k[i], 9);
        cr_assert_eq(kvd_pages_alloc(t, 1, 1, a), 0);
        cr_assert_eq(kvd_pages_publish(t, 1, salt0, 1, a, k, NULL), 1);
        cr_assert_eq(kvd_pages_lookup(t, 2, salt0, N, k, got), N);
        for (int i = 0; i < N; i++)
                cr_assert_eq(got[i], a[0]);
        cr_assert_eq(kvd_pages_refcount(t, a[0]), N + 1);
        cr_assert_eq(kvd_pages_session_count(t, 2), N);
        cr_assert_eq(kvd_pages_drop_session(t, 2), N);
        ASSERT_STATS(t, 1, 1, 1, 0);
        kvd_pages_free(t);
}

/* ---- caching and eviction ---------------------------------------------- */

Test(pages, cached_page_survives_free_and_is_found)
{
        struct kvd_pages *t = mk(4, NULL);
        uint32_t a[2], got[2];
        uint8_t k[2][KVD_KEY_LEN];
        key(k[0], 1);
        key(k[1], 2);
        cr_assert_eq(kvd_pages_alloc(t, 1, 2, a), 0);
        cr_assert_eq(kvd_pages_publish(t, 1, salt0, 2, a, k, NULL), 2);
        cr_assert_eq(kvd_pages_release(t, 1, 2, a), 0);
        ASSERT_STATS(t, 2, 0, 2, 2);
        cr_assert_eq(kvd_pages_lookup(t, 2, salt0, 2, k, got), 2);
        cr_assert_eq(got[0], a[0]);
        cr_assert_eq(got[1], a[1]);
        /* held again: not idle, so an alloc of the rest cannot evict them */
        ASSERT_STATS(t, 2, 2, 2, 0);
        uint32_t b[3];
        cr_assert_eq(kvd_pages_alloc(t, 3, 3, b), -ENOSPC);
        cr_assert_eq(kvd_pages_alloc(t, 3, 2, b), 0);
        ASSERT_STATS(t, 0, 4, 2, 0);
        kvd_pages_free(t);
}

Test(pages, eviction_is_lru_and_only_when_needed)
{
        struct rec r = { 0 };
        struct kvd_pages *t = mk(6, &r);
        uint32_t a[4];
        uint8_t k[4][KVD_KEY_LEN];
        for (int i = 0; i < 4; i++)
                key(k[i], 40 + i);
        cr_assert_eq(kvd_pages_alloc(t, 1, 4, a), 0);
        cr_assert_eq(kvd_pages_publish(t, 1, salt0, 4, a, k, NULL), 4);
        /* idle order: a[3] first (one call frees last to first), then a[1],
         * a[0] (second call), then a[2] touched by a lookup and freed last */
        cr_assert_eq(kvd_pages_release(t, 1, 1, a + 3), 0);
        uint32_t two[2] = { a[0], a[1] };
        cr_assert_eq(kvd_pages_release(t, 1, 2, two), 0);
        uint32_t got[1];
        cr_assert_eq(kvd_pages_lookup(t, 1, salt0, 1, k + 2, got), 1);
        uint32_t twice[2] = { a[2], a[2] };
        cr_assert_eq(kvd_pages_release(t, 1, 2, twice), 0);
        ASSERT_STATS(t, 2, 0, 4, 4);
        /* free pages go first: no eviction */
        uint32_t b[6];
        cr_assert_eq(kvd_pages_alloc(t, 2, 2, b), 0);
        cr_assert_eq(r.n_evicted, 0);
        cr_assert_eq(kvd_pages_alloc(t, 2, 3, b), 0);
        cr_assert_eq(r.n_evicted, 3);
        uint32_t want[3] = { a[3], a[1], a[0] };
        uint32_t wkey[3] = { 43, 41, 40 };
        for (int i = 0; i < 3; i++) {
                cr_assert_eq(r.evicted_page[i], want[i], "eviction %d: page %u, want %u", i,
                             r.evicted_page[i], want[i]);
                uint8_t kk[KVD_KEY_LEN];
                key(kk, wkey[i]);
                cr_assert_arr_eq(r.evicted_key[i].key, kk, KVD_KEY_LEN);
                cr_assert_arr_eq(r.evicted_key[i].salt, salt0, KVD_KEY_LEN);
                cr_assert_eq(b[i], want[i], "the evicted page is the one handed out");
        }
        cr_assert_eq(stats(t).evictions, 3);
        ASSERT_STATS(t, 0, 5, 1, 1);
        /* the evicted keys are gone, the last one is still there */
        cr_assert_eq(kvd_pages_lookup(t, 3, salt0, 1, k + 0, got), 0);
        cr_assert_eq(kvd_pages_lookup(t, 3, salt0, 1, k + 2, got), 1);
        cr_assert_eq(got[0], a[2]);
        /* an evicted page can be published again under a new key */
        uint8_t nk[1][KVD_KEY_LEN];
        key(nk[0], 40);
        cr_assert_eq(kvd_pages_publish(t, 2, salt0, 1, b, nk, NULL), 1);
        ASSERT_STATS(t, 0, 6, 2, 0);
        kvd_pages_free(t);
}

Test(pages, drop_session_idle_order)
{
        struct rec r = { 0 };
        struct kvd_pages *t = mk(3, &r);
        uint32_t a[3];
        uint8_t k[3][KVD_KEY_LEN];
        for (int i = 0; i < 3; i++)
                key(k[i], i);
        cr_assert_eq(kvd_pages_alloc(t, 1, 3, a), 0);
        cr_assert_eq(kvd_pages_publish(t, 1, salt0, 3, a, k, NULL), 3);
        cr_assert_eq(kvd_pages_drop_session(t, 1), 3);
        /* as a release in ascending id order: highest id idles first */
        uint32_t b[3];
        cr_assert_eq(kvd_pages_alloc(t, 2, 3, b), 0);
        cr_assert_eq(r.n_evicted, 3);
        cr_assert_eq(r.evicted_page[0], 2);
        cr_assert_eq(r.evicted_page[1], 1);
        cr_assert_eq(r.evicted_page[2], 0);
        ASSERT_STATS(t, 0, 3, 0, 0);
        kvd_pages_free(t);
}

/* Many keys in a big table: exercises probing and backward-shift deletion. */
Test(pages, many_keys_insert_evict)
{
        enum { N = 4096 };
        struct kvd_pages *t = mk(N, NULL);
        static uint32_t a[N], got[N];
        static uint8_t k[N][KVD_KEY_LEN];
        for (uint32_t round = 0; round < 4; round++) {
                for (uint32_t i = 0; i < N; i++)
                        key(k[i], round * N + i);
                cr_assert_eq(kvd_pages_alloc(t, 1, N, a), 0);
                cr_assert_eq(kvd_pages_publish(t, 1, salt0, N, a, k, NULL), N);
                cr_assert_eq(kvd_pages_release(t, 1, N, a), 0);
                cr_assert_eq(kvd_pages_check(t), 0);
                cr_assert_eq(kvd_pages_lookup(t, 2, salt0, N, k, got), N);
                for (uint32_t i = 0; i < N; i++)
                        cr_assert_eq(got[i], a[i]);
                cr_assert_eq(kvd_pages_drop_session(t, 2), N);
        }
        cr_assert_eq(stats(t).evictions, 3 * N);
        ASSERT_STATS(t, 0, 0, N, N);
        kvd_pages_free(t);
}

/* (test_pages_check.c corrupts the internals to show the checker catches it.) */
Test(pages, check_null)
{
        cr_assert_eq(kvd_pages_check(NULL), -EINVAL);
}

Test(pages, reset_keys_empties_the_cache_and_keeps_holdings)
{
        struct rec r = { 0 };
        struct kvd_pages *t = mk(8, &r);
        uint32_t a[4], b[2], got[4];
        uint8_t k[6][KVD_KEY_LEN];
        for (uint32_t i = 0; i < 6; i++)
                key(k[i], 10 + i);
        cr_assert_eq(kvd_pages_reset_keys(t, NULL), 0); /* nothing to drop */
        cr_assert_eq(kvd_pages_alloc(t, 1, 4, a), 0);
        cr_assert_eq(kvd_pages_alloc(t, 2, 2, b), 0);
        cr_assert_eq(kvd_pages_publish(t, 1, salt0, 4, a, k, NULL), 4);
        cr_assert_eq(kvd_pages_publish(t, 2, salt1, 2, b, k + 4, NULL), 2); /* another tenant */
        cr_assert_eq(kvd_pages_release(t, 1, 2, a + 2), 0);                 /* a[2], a[3] idle */
        cr_assert_eq(kvd_pages_lookup(t, 3, salt0, 1, k, got), 1);          /* a[0] held twice */
        ASSERT_STATS(t, 2, 4, 6, 2);
        cr_assert_eq(r.n_stored, 6);

        cr_assert_eq(kvd_pages_reset_keys(t, NULL), 6);
        /* the idle ones are free again, the held ones still held, by the same holders */
        ASSERT_STATS(t, 4, 4, 0, 0);
        cr_assert_eq(r.n_evicted, 0); /* the caller announces a reset once, not per key */
        cr_assert_eq(kvd_pages_refcount(t, a[0]), 2);
        cr_assert_eq(kvd_pages_session_count(t, 1), 2);
        cr_assert_eq(kvd_pages_session_count(t, 2), 2);
        /* no tenant finds anything */
        cr_assert_eq(kvd_pages_lookup(t, 3, salt0, 4, k, got), 0);
        cr_assert_eq(kvd_pages_lookup(t, 3, salt1, 2, k + 4, got), 0);
        /* a held page released now is free, not cached */
        cr_assert_eq(kvd_pages_release(t, 2, 2, b), 0);
        ASSERT_STATS(t, 6, 2, 0, 0);
        /* the pages and keys can be published again */
        cr_assert_eq(kvd_pages_publish(t, 1, salt0, 1, a + 1, k + 1, NULL), 1);
        cr_assert_eq(kvd_pages_lookup(t, 4, salt0, 2, k, got), 0); /* k[0] is gone */
        cr_assert_eq(kvd_pages_lookup(t, 4, salt0, 1, k + 1, got), 1);
        cr_assert_eq(got[0], a[1]);
        cr_assert_eq(kvd_pages_reset_keys(t, NULL), 1);
        cr_assert_eq(kvd_pages_drop_session(t, 1), 2);
        cr_assert_eq(kvd_pages_drop_session(t, 3), 1);
        cr_assert_eq(kvd_pages_drop_session(t, 4), 1);
        ASSERT_STATS(t, 8, 0, 0, 0);
        cr_assert_eq(kvd_pages_reset_keys(NULL, NULL), 0);
        kvd_pages_free(t);
}

/* ---- hash flooding ------------------------------------------------------- */

#include <stdlib.h>
#include "u32map.h"

/* What a client can do with ALLOC and FREE alone: session 1 takes every page
 * and frees them so that the pages of `chosen` come out of the free list
 * first; session 2 then ALLOCs exactly those.  Returns the longest probe of
 * session 2's page map while it holds them. */
static uint32_t probe_of_chosen(uint32_t n, const uint32_t *chosen, uint32_t h)
{
        struct kvd_pages *t = mk(n, NULL);
        uint32_t         *all = malloc(n * sizeof(*all)), *order = malloc(n * sizeof(*order)), m = 0, probe;
        uint8_t          *is = calloc(n, 1);

        cr_assert(all && order && is);
        cr_assert_eq(kvd_pages_alloc(t, 1, n, all), 0);
        for (uint32_t i = 0; i < h; i++)
                is[chosen[i]] = 1;
        for (uint32_t id = 0; id < n; id++)
                if (!is[id])
                        order[m++] = id;
        cr_assert_eq(kvd_pages_release(t, 1, m, order), 0);
        /* released last, so on top of the free list */
        cr_assert_eq(kvd_pages_release(t, 1, h, chosen), 0);
        cr_assert_eq(kvd_pages_alloc(t, 2, h, all), 0);
        for (uint32_t i = 0; i < h; i++)
                cr_assert(is[all[i]], "session 2 got page %u, not one of the chosen", all[i]);
        probe = kvd_pages_longest_probe(t, 2);
        cr_assert_eq(kvd_pages_release(t, 2, h, all), 0);
        cr_assert_eq(kvd_pages_check(t), 0);
        kvd_pages_free(t);
        free(all);
        free(order);
        free(is);
        return probe;
}

/* A session's holdings are a hash map keyed by page id, and a client
 * chooses which ids it holds (the free list hands back what was freed
 * last; LOOKUP hands out published pages).  When the map hashed with
 * u32map.h's mixer alone, ids whose mix32 falls into a narrow band of the
 * map's slots made one probe run as long as the map: an ALLOC and FREE of
 * 32768 such pages held the serving thread for about a second (65536 pages
 * of a 2^20-page pool: 5 s), against a millisecond for any other 32768.
 * With the map's secret seed they make probes as short as any others: the
 * longest stays under 256 slots (about 30 for random ids at the map's load
 * of a half; the unseeded map's was over 28000). */
Test(pages, chosen_page_ids_cannot_make_probes_long)
{
        enum { N = 1u << 19, H = 32768 };
        const uint32_t mask = 2 * H - 1; /* the map an ALLOC of H pages reserves */
        uint32_t      *bad = malloc(H * sizeof(*bad)), *good = malloc(H * sizeof(*good)), nb = 0;

        cr_assert(bad && good);
        /* a band of a little more than H / 8 slots: N / (mask + 1) = 8 ids
         * have their home in each slot */
        for (uint32_t id = 0; id < N && nb < H; id++)
                if ((mix32(id) & mask) < H / 8 + H / 64)
                        bad[nb++] = id;
        cr_assert_eq(nb, H, "only %u ids in the band", nb);
        for (uint32_t i = 0; i < H; i++)
                good[i] = i * (N / H);
        uint32_t pg = probe_of_chosen(N, good, H), pb = probe_of_chosen(N, bad, H);
        cr_assert_lt(pg, 256, "spread page ids: longest probe %u slots", pg);
        cr_assert_lt(pb, 256, "chosen page ids: longest probe %u slots (spread ones: %u)", pb, pg);
        free(bad);
        free(good);
}
