/* pages.c - the page table of one pool: free list, per-session holdings,
 * prefix cache (scoped key -> page) and LRU of idle cached pages.
 *
 * Data structures (all O(1) per page touched):
 *  - pages[id]: refcount, key flag, and two links used either by the free list
 *    (a stack through `next`) or by the LRU list (doubly linked through
 *    prev/next: head = least recently used, tail = most recently used);
 *  - keys[id]: the scoped key of a published page, khash[id] its hash;
 *  - a linear-probing table of (scoped key -> page) with backward-shift
 *    deletion, sized at >= 2 * num_pages so it never grows (a page carries at
 *    most one key, so there are never more than num_pages keys);
 *  - sessions: a small map sid -> session record; each record has its own
 *    map page -> count of references and a total.  "Does sid hold page p"
 *    is one probe; dropping a session walks only its own map.
 *
 * Order of the LRU: a cached page enters the LRU (at the most recently used
 * end) when its last reference is dropped.  Within one release call the
 * pages become idle from the last id to the first, so ids[0] ends most
 * recently used: a worker frees a sequence's pages in order, and its leading
 * blocks, which every longer prompt shares, should outlive its tail (vLLM
 * frees in reverse for the same reason).  drop_session behaves as a release
 * of the session's pages in ascending id order.
 *
 * Keys come from clients, so the table hashes them with SipHash-1-3 under a
 * random per-table secret: a client cannot build colliding keys to make
 * probes long.  The page ids a session holds are the client's choice too
 * (u32map.h): its map hashes them under another per-table secret.
 */
#include "pages.h"
#include "u32map.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define NIL        UINT32_MAX
#define MAX_PAGES  KVD_PAGES_MAX

/* ---- SipHash-1-3 over a 32-byte scoped key ------------------------------- */

static inline uint64_t rotl(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }

#define SIPROUND do { \
        v0 += v1; v1 = rotl(v1, 13); v1 ^= v0; v0 = rotl(v0, 32); \
        v2 += v3; v3 = rotl(v3, 16); v3 ^= v2; \
        v0 += v3; v3 = rotl(v3, 21); v3 ^= v0; \
        v2 += v1; v1 = rotl(v1, 17); v1 ^= v2; v2 = rotl(v2, 32); \
} while (0)

static uint64_t le64(const uint8_t *p)
{
        uint64_t x = 0;
        for (int i = 7; i >= 0; i--)
                x = (x << 8) | p[i];
        return x;
}

static uint64_t siphash_key(const uint64_t sk[2], const struct kvd_scoped_key *key)
{
        uint64_t v0 = sk[0] ^ 0x736f6d6570736575ULL, v1 = sk[1] ^ 0x646f72616e646f6dULL;
        uint64_t v2 = sk[0] ^ 0x6c7967656e657261ULL, v3 = sk[1] ^ 0x7465646279746573ULL;
        const uint8_t *p = (const uint8_t *)key;
        for (int i = 0; i < 4; i++) {
                uint64_t m = le64(p + 8 * i);
                v3 ^= m;
                SIPROUND;
                v0 ^= m;
        }
        uint64_t b = 32ULL << 56;
        v3 ^= b;
        SIPROUND;
        v0 ^= b;
        v2 ^= 0xff;
        SIPROUND; SIPROUND; SIPROUND;
        return v0 ^ v1 ^ v2 ^ v3;
}

/* ---- the table ----------------------------------------------------------- */

struct page {
        uint32_t ref;
        uint32_t prev, next; /* LRU links, or `next` as free-list link */
        uint8_t  keyed;
        uint8_t  on_free;
        uint8_t  on_lru;
};

struct sess {
        uint32_t      sid;   /* MAP_EMPTY when the slot is unused */
        uint32_t      total; /* references held, duplicates counted */
        struct u32map held;  /* page -> count (>= 1) */
};

struct kvd_pages {
        uint32_t                n;
        struct page            *pages;
        struct kvd_scoped_key  *keys;
        uint32_t               *khash;
        uint32_t               *slots; /* key table: page + 1, 0 = empty */
        uint32_t                kmask;
        uint64_t                sipkey[2];
        uint32_t                mapseed; /* of the session maps' hash (u32map.h says why) */
        uint32_t                free_head;
        uint32_t                lru_head, lru_tail;
        uint32_t               *scratch; /* [n], for drop_session */
        struct u32map           sids;    /* sid -> index into sess */
        struct sess            *sess;
        uint32_t                nsess, sess_cap, sess_free; /* sess_free: chain via total */
        struct kvd_pages_hooks  hooks;
        struct kvd_pages_stats  st;
};

static void free_push(struct kvd_pages *t, uint32_t id)
{
        t->pages[id].next = t->free_head;
        t->pages[id].on_free = 1;
        t->free_head = id;
        t->st.free++;
}

static uint32_t free_pop(struct kvd_pages *t)
{
        uint32_t id = t->free_head;
        t->free_head = t->pages[id].next;
        t->pages[id].on_free = 0;
        t->pages[id].next = NIL;
        t->st.free--;
        return id;
}

static void lru_append(struct kvd_pages *t, uint32_t id)
{
        struct page *p = &t->pages[id];
        p->prev = t->lru_tail;
        p->next = NIL;
        if (t->lru_tail != NIL)
                t->pages[t->lru_tail].next = id;
        else
                t->lru_head = id;
        t->lru_tail = id;
        p->on_lru = 1;
        t->st.cached_idle++;
}

static void lru_remove(struct kvd_pages *t, uint32_t id)
{
        struct page *p = &t->pages[id];
        if (p->prev != NIL)
                t->pages[p->prev].next = p->next;
        else
                t->lru_head = p->next;
        if (p->next != NIL)
                t->pages[p->next].prev = p->prev;
        else
                t->lru_tail = p->prev;
        p->prev = p->next = NIL;
        p->on_lru = 0;
        t->st.cached_idle--;
}

/* Slot index of key in the key table, or -1. */
static int64_t key_find(const struct kvd_pages *t, const struct kvd_scoped_key *k, uint32_t h)
{
        for (uint32_t i = h & t->kmask;; i = (i + 1) & t->kmask) {
                uint32_t s = t->slots[i];
                if (s == 0)
                        return -1;
                if (t->khash[s - 1] == h && memcmp(&t->keys[s - 1], k, sizeof(*k)) == 0)
                        return i;
        }
}

static void key_insert(struct kvd_pages *t, uint32_t id, const struct kvd_scoped_key *k, uint32_t h)
{
        uint32_t i = h & t->kmask;
        while (t->slots[i] != 0)
                i = (i + 1) & t->kmask;
        t->slots[i] = id + 1;
        t->keys[id] = *k;
        t->khash[id] = h;
        t->pages[id].keyed = 1;
        t->st.cached++;
}

static void key_delete(struct kvd_pages *t, uint32_t id)
{
        int64_t at = key_find(t, &t->keys[id], t->khash[id]);
        uint32_t i = (uint32_t)at, j = i;
        for (;;) {
                j = (j + 1) & t->kmask;
                if (t->slots[j] == 0)
                        break;
                uint32_t home = t->khash[t->slots[j] - 1] & t->kmask;
                bool stays = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
                if (!stays) {
                        t->slots[i] = t->slots[j];
                        i = j;
                }
        }
        t->slots[i] = 0;
        t->pages[id].keyed = 0;
        t->st.cached--;
}

static void make_scoped(struct kvd_scoped_key *sk, const uint8_t *salt, const uint8_t *key)
{
        if (salt)
                memcpy(sk->salt, salt, KVD_KEY_LEN);
        else
                memset(sk->salt, 0, KVD_KEY_LEN);
        memcpy(sk->key, key, KVD_KEY_LEN);
}

static uint32_t key_hash(const struct kvd_pages *t, const struct kvd_scoped_key *k)
{
        return (uint32_t)siphash_key(t->sipkey, k);
}

/* ---- sessions ------------------------------------------------------------ */

static struct sess *sess_get(const struct kvd_pages *t, uint32_t sid)
{
        int64_t at = map_find(&t->sids, sid);
        return at < 0 ? NULL : &t->sess[t->sids.v[at]];
}

/* Finds or creates the record of sid, with room for `extra` more distinct
 * pages.  On failure nothing is left behind. */
static int sess_reserve(struct kvd_pages *t, uint32_t sid, uint32_t extra, struct sess **ret)
{
        struct sess *s = sess_get(t, sid);
        if (!s) {
                int r = map_reserve(&t->sids, 1);
                if (r < 0)
                        return r;
                if (t->sess_free == NIL && t->nsess == t->sess_cap) {
                        uint32_t cap = t->sess_cap ? t->sess_cap * 2 : 8;
                        struct sess *ns = realloc(t->sess, (size_t)cap * sizeof(*ns));
                        if (!ns)
                                return -ENOMEM;
                        t->sess = ns;
                        t->sess_cap = cap;
                }
                uint32_t idx;
                if (t->sess_free != NIL) {
                        idx = t->sess_free;
                        t->sess_free = t->sess[idx].total;
                } else {
                        idx = t->nsess++;
                }
                s = &t->sess[idx];
                memset(s, 0, sizeof(*s));
                map_init(&s->held, t->mapseed);
                s->sid = sid;
                map_put(&t->sids, sid, idx);
        }
        int r = map_reserve(&s->held, extra);
        if (r < 0) {
                if (s->total == 0) {
                        /* drop the record we may just have made */
                        uint32_t idx = (uint32_t)(s - t->sess);
                        map_fini(&s->held);
                        map_del_slot(&t->sids, (uint32_t)map_find(&t->sids, sid));
                        s->sid = MAP_EMPTY;
                        s->total = t->sess_free;
                        t->sess_free = idx;
                }
                return r;
        }
        *ret = s;
        return 0;
}

/* Removes the record of a session that holds nothing. */
static void sess_gc(struct kvd_pages *t, struct sess *s)
{
        if (s->total != 0)
                return;
        uint32_t idx = (uint32_t)(s - t->sess);
        map_del_slot(&t->sids, (uint32_t)map_find(&t->sids, s->sid));
        map_fini(&s->held);
        s->sid = MAP_EMPTY;
        s->total = t->sess_free;
        t->sess_free = idx;
}

/* One more reference of s on page id (room reserved by the caller). */
static void hold(struct kvd_pages *t, struct sess *s, uint32_t id)
{
        int64_t at = map_find(&s->held, id);
        if (at >= 0)
                s->held.v[at]++;
        else
                map_put(&s->held, id, 1);
        s->total++;
        if (t->pages[id].ref++ == 0)
                t->st.held++;
}

/* The page lost its last reference: to the LRU if published, else freed. */
static void went_idle(struct kvd_pages *t, uint32_t id)
{
        t->st.held--;
        if (t->pages[id].keyed)
                lru_append(t, id);
        else
                free_push(t, id);
}

/* Whether sid may take n more references, on pages whose largest refcount
 * is maxref, without wrapping a u32 counter: the session's total (which
 * bounds its count on each page) or a page's refcount.  A client can pile up
 * references with lookups of a repeated key; a wrapped refcount would send a
 * page that is still held to the LRU or the free list. */
static bool counts_fit(const struct kvd_pages *t, uint32_t sid, uint32_t n, uint32_t maxref)
{
        const struct sess *s = sess_get(t, sid);

        return maxref <= UINT32_MAX - n && (!s || s->total <= UINT32_MAX - n);
}

/* ---- public: each function's contract is above its declaration in pages.h */

int kvd_pages_new(uint32_t num_pages, const struct kvd_pages_hooks *hooks, struct kvd_pages **ret)
{
        if (num_pages == 0 || num_pages > MAX_PAGES || !ret)
                return -EINVAL;
        struct kvd_pages *t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        uint64_t kcap = 8;
        while (kcap < 2ull * num_pages)
                kcap *= 2;
        t->n = num_pages;
        t->pages = calloc(num_pages, sizeof(*t->pages));
        t->keys = calloc(num_pages, sizeof(*t->keys));
        t->khash = calloc(num_pages, sizeof(*t->khash));
        t->scratch = calloc(num_pages, sizeof(*t->scratch));
        t->slots = calloc(kcap, sizeof(*t->slots));
        if (!t->pages || !t->keys || !t->khash || !t->scratch || !t->slots) {
                kvd_pages_free(t);
                return -ENOMEM;
        }
        t->kmask = (uint32_t)(kcap - 1);
        if (getrandom(t->sipkey, sizeof(t->sipkey), GRND_NONBLOCK) != (ssize_t)sizeof(t->sipkey) ||
            getrandom(&t->mapseed, sizeof(t->mapseed), GRND_NONBLOCK) != (ssize_t)sizeof(t->mapseed)) {
                /* no entropy yet (early boot): still unpredictable enough to a client */
                struct timespec ts;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                t->sipkey[0] = (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ULL ^ (uint64_t)getpid();
                t->sipkey[1] = (uint64_t)ts.tv_sec * 0xC2B2AE3D27D4EB4FULL ^ (uint64_t)(uintptr_t)t;
                t->mapseed = (uint32_t)(t->sipkey[0] >> 32) ^ (uint32_t)t->sipkey[1];
        }
        map_init(&t->sids, t->mapseed);
        if (hooks)
                t->hooks = *hooks;
        t->free_head = NIL;
        t->lru_head = t->lru_tail = NIL;
        t->sess_free = NIL;
        t->st.total = num_pages;
        /* pushed in reverse so that a fresh table hands out 0, 1, 2, ... */
        for (uint32_t i = num_pages; i-- > 0;) {
                t->pages[i].prev = NIL;
                free_push(t, i);
        }
        *ret = t;
        return 0;
}

void kvd_pages_free(struct kvd_pages *t)
{
        if (!t)
                return;
        for (uint32_t i = 0; i < t->nsess; i++)
                if (t->sess[i].sid != MAP_EMPTY)
                        map_fini(&t->sess[i].held);
        free(t->sess);
        map_fini(&t->sids);
        free(t->pages);
        free(t->keys);
        free(t->khash);
        free(t->scratch);
        free(t->slots);
        free(t);
}

int kvd_pages_alloc(struct kvd_pages *t, uint32_t sid, uint32_t n, uint32_t *ret_ids)
{
        if (!t || sid == MAP_EMPTY || (n && !ret_ids))
                return -EINVAL;
        if (n == 0)
                return 0;
        if ((uint64_t)t->st.free + t->st.cached_idle < n)
                return -ENOSPC;
        if (!counts_fit(t, sid, n, 0))
                return -EOVERFLOW;
        struct sess *s;
        int r = sess_reserve(t, sid, n, &s);
        if (r < 0)
                return r;
        for (uint32_t i = 0; i < n; i++) {
                uint32_t id;
                if (t->free_head != NIL) {
                        id = free_pop(t);
                } else {
                        /* evict the least recently used idle cached page */
                        id = t->lru_head;
                        lru_remove(t, id);
                        struct kvd_scoped_key k = t->keys[id];
                        key_delete(t, id);
                        t->st.evictions++;
                        if (t->hooks.evicted)
                                t->hooks.evicted(t->hooks.ud, id, &k);
                }
                hold(t, s, id);
                ret_ids[i] = id;
        }
        return 0;
}

int kvd_pages_release(struct kvd_pages *t, uint32_t sid, uint32_t n, const uint32_t *ids)
{
        if (!t || (n && !ids))
                return -EINVAL;
        if (n == 0)
                return 0;
        for (uint32_t i = 0; i < n; i++)
                if (ids[i] >= t->n)
                        return -ERANGE;
        struct sess *s = sid == MAP_EMPTY ? NULL : sess_get(t, sid);
        if (!s)
                return -EPERM;
        /* take the session's counts down first, undoing them if one is short,
         * so that a page listed more often than held changes nothing */
        for (uint32_t i = 0; i < n; i++) {
                int64_t at = map_find(&s->held, ids[i]);
                if (at < 0 || s->held.v[at] == 0) {
                        while (i-- > 0)
                                s->held.v[map_find(&s->held, ids[i])]++;
                        return -EPERM;
                }
                s->held.v[at]--;
        }
        /* last to first: see "Order of the LRU" at the top */
        for (uint32_t i = n; i-- > 0;) {
                uint32_t id = ids[i];
                int64_t at = map_find(&s->held, id);
                if (at >= 0 && s->held.v[at] == 0)
                        map_del_slot(&s->held, (uint32_t)at);
                if (--t->pages[id].ref == 0)
                        went_idle(t, id);
        }
        s->total -= n;
        if (s->total == 0)
                sess_gc(t, s);
        else
                map_maybe_shrink(&s->held);
        return 0;
}

static int cmp_u32(const void *a, const void *b)
{
        uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
        return (x > y) - (x < y);
}

uint32_t kvd_pages_drop_session(struct kvd_pages *t, uint32_t sid)
{
        struct sess *s = (t && sid != MAP_EMPTY) ? sess_get(t, sid) : NULL;
        if (!s)
                return 0;
        uint32_t m = 0;
        for (uint32_t i = 0; i < s->held.cap; i++)
                if (s->held.k[i] != MAP_EMPTY)
                        t->scratch[m++] = s->held.k[i];
        qsort(t->scratch, m, sizeof(uint32_t), cmp_u32);
        /* as a release of the ids in ascending order: the highest id first */
        for (uint32_t i = m; i-- > 0;) {
                uint32_t id = t->scratch[i];
                uint32_t c = s->held.v[map_find(&s->held, id)];
                t->pages[id].ref -= c;
                if (t->pages[id].ref == 0)
                        went_idle(t, id);
        }
        uint32_t dropped = s->total;
        s->total = 0;
        sess_gc(t, s);
        return dropped;
}

uint32_t kvd_pages_session_count(const struct kvd_pages *t, uint32_t sid)
{
        const struct sess *s = (t && sid != MAP_EMPTY) ? sess_get(t, sid) : NULL;
        return s ? s->total : 0;
}

uint32_t kvd_pages_longest_probe(const struct kvd_pages *t, uint32_t sid)
{
        const struct sess *s = (t && sid != MAP_EMPTY) ? sess_get(t, sid) : NULL;
        return s ? map_longest_probe(&s->held) : 0;
}

uint32_t kvd_pages_refcount(const struct kvd_pages *t, uint32_t id)
{
        return (t && id < t->n) ? t->pages[id].ref : 0;
}

int kvd_pages_publish(struct kvd_pages *t, uint32_t sid, const uint8_t salt[KVD_KEY_LEN],
                      uint32_t n, const uint32_t *ids, const uint8_t (*keys)[KVD_KEY_LEN],
                      uint8_t *results)
{
        if (!t || (n && (!ids || !keys)))
                return -EINVAL;
        for (uint32_t i = 0; i < n; i++)
                if (ids[i] >= t->n)
                        return -ERANGE;
        const struct sess *s = (sid != MAP_EMPTY) ? sess_get(t, sid) : NULL;
        for (uint32_t i = 0; i < n; i++)
                if (!s || map_find(&s->held, ids[i]) < 0)
                        return -EPERM;
        int stored = 0;
        for (uint32_t i = 0; i < n; i++) {
                struct kvd_scoped_key k;
                make_scoped(&k, salt, keys[i]);
                uint32_t h = key_hash(t, &k);
                uint8_t res;
                if (key_find(t, &k, h) >= 0) {
                        res = 1;
                } else if (t->pages[ids[i]].keyed) {
                        res = 2;
                } else {
                        key_insert(t, ids[i], &k, h);
                        res = 0;
                        stored++;
                        if (t->hooks.stored)
                                t->hooks.stored(t->hooks.ud, ids[i], &t->keys[ids[i]]);
                }
                if (results)
                        results[i] = res;
        }
        return stored;
}

int kvd_pages_lookup(struct kvd_pages *t, uint32_t sid, const uint8_t salt[KVD_KEY_LEN],
                     uint32_t n, const uint8_t (*keys)[KVD_KEY_LEN], uint32_t *ret_ids)
{
        if (!t || sid == MAP_EMPTY || (n && (!keys || !ret_ids)))
                return -EINVAL;
        if (n == 0)
                return 0;
        /* find the run first without touching anything, then reserve the
         * session's room, then take the references: all or nothing */
        uint32_t h = 0, maxref = 0;
        for (; h < n; h++) {
                struct kvd_scoped_key k;
                make_scoped(&k, salt, keys[h]);
                int64_t at = key_find(t, &k, key_hash(t, &k));
                if (at < 0)
                        break;
                uint32_t id = t->slots[at] - 1;
                if (t->pages[id].ref > maxref)
                        maxref = t->pages[id].ref;
                /* a key may repeat, so a run can be longer than the table */
                if (h < t->n)
                        t->scratch[h] = id;
        }
        if (h > 0 && !counts_fit(t, sid, h, maxref))
                return -EOVERFLOW;
        if (h > 0) {
                struct sess *s;
                int r = sess_reserve(t, sid, h, &s);
                if (r < 0)
                        return r;
                for (uint32_t i = 0; i < h; i++) {
                        uint32_t id;
                        if (i < t->n) {
                                id = t->scratch[i];
                        } else {
                                struct kvd_scoped_key k;
                                make_scoped(&k, salt, keys[i]);
                                id = t->slots[key_find(t, &k, key_hash(t, &k))] - 1;
                        }
                        if (t->pages[id].on_lru)
                                lru_remove(t, id);
                        hold(t, s, id);
                        ret_ids[i] = id;
                }
        }
        t->st.lookups += n;
        t->st.hits += h;
        return (int)h;
}

uint32_t kvd_pages_reset_keys(struct kvd_pages *t, const uint8_t salt[KVD_KEY_LEN])
{
        if (!t)
                return 0;
        uint32_t dropped = 0;
        /* every key going, the key table is cleared whole; one tenant's keys
         * go one by one (key_delete keeps the others' probe chains) */
        if (!salt)
                memset(t->slots, 0, ((size_t)t->kmask + 1) * sizeof(*t->slots));
        for (uint32_t id = 0; id < t->n; id++) {
                struct page *p = &t->pages[id];
                if (!p->keyed || (salt && memcmp(t->keys[id].salt, salt, KVD_KEY_LEN) != 0))
                        continue;
                if (salt) {
                        key_delete(t, id);
                } else {
                        p->keyed = 0;
                        t->st.cached--;
                }
                if (p->on_lru) {
                        lru_remove(t, id);
                        free_push(t, id);
                }
                dropped++;
        }
        t->st.resets++;
        t->st.keys_reset += dropped;
        return dropped;
}

void kvd_pages_get_stats(const struct kvd_pages *t, struct kvd_pages_stats *ret)
{
        if (t && ret)
                *ret = t->st;
}

/* ---- invariants ---------------------------------------------------------- */

#define CHECK(c) do { if (!(c)) { ret = -EUCLEAN; goto out; } } while (0)

int kvd_pages_check(const struct kvd_pages *t)
{
        if (!t)
                return -EINVAL;
        int ret = 0;
        uint32_t *refs = calloc(t->n, sizeof(*refs));
        if (!refs)
                return -ENOMEM;
        /* free list: no loop, only unkeyed pages at refcount 0 */
        uint32_t nfree = 0;
        for (uint32_t id = t->free_head; id != NIL; id = t->pages[id].next) {
                CHECK(id < t->n && nfree < t->n);
                const struct page *p = &t->pages[id];
                CHECK(p->on_free && !p->on_lru && !p->keyed && p->ref == 0);
                nfree++;
        }
        /* LRU: links agree both ways, only keyed pages at refcount 0 */
        uint32_t nidle = 0, prev = NIL;
        for (uint32_t id = t->lru_head; id != NIL; id = t->pages[id].next) {
                CHECK(id < t->n && nidle < t->n);
                const struct page *p = &t->pages[id];
                CHECK(p->on_lru && !p->on_free && p->keyed && p->ref == 0 && p->prev == prev);
                prev = id;
                nidle++;
        }
        CHECK(t->lru_tail == prev);
        /* every page is in exactly one state; counters add up */
        uint32_t nheld = 0, ncached = 0;
        for (uint32_t id = 0; id < t->n; id++) {
                const struct page *p = &t->pages[id];
                CHECK(p->on_free + p->on_lru <= 1);
                if (p->ref > 0)
                        CHECK(!p->on_free && !p->on_lru);
                else
                        CHECK(p->keyed ? p->on_lru : p->on_free);
                nheld += p->ref > 0;
                if (p->keyed) {
                        ncached++;
                        CHECK(key_hash(t, &t->keys[id]) == t->khash[id]);
                        int64_t at = key_find(t, &t->keys[id], t->khash[id]);
                        CHECK(at >= 0 && t->slots[at] == id + 1);
                }
        }
        uint32_t nslots = 0;
        for (uint32_t i = 0; i <= t->kmask; i++) {
                if (t->slots[i] == 0)
                        continue;
                CHECK(t->slots[i] <= t->n && t->pages[t->slots[i] - 1].keyed);
                nslots++;
        }
        CHECK(nslots == ncached);
        CHECK(nfree == t->st.free && nidle == t->st.cached_idle && nheld == t->st.held &&
              ncached == t->st.cached && t->st.total == t->n);
        CHECK(nfree + nidle + nheld == t->n);
        /* holdings: each session's counts sum to its total and, over all
         * sessions, to each page's refcount */
        uint32_t nlive = 0;
        for (uint32_t i = 0; i < t->nsess; i++) {
                const struct sess *s = &t->sess[i];
                if (s->sid == MAP_EMPTY)
                        continue;
                nlive++;
                int64_t at = map_find(&t->sids, s->sid);
                CHECK(at >= 0 && t->sids.v[at] == i);
                CHECK(s->total > 0);
                uint64_t sum = 0;
                uint32_t len = 0;
                for (uint32_t j = 0; j < s->held.cap; j++) {
                        uint32_t id = s->held.k[j];
                        if (id == MAP_EMPTY)
                                continue;
                        CHECK(id < t->n && s->held.v[j] > 0);
                        CHECK(map_find(&s->held, id) == j);
                        refs[id] += s->held.v[j];
                        sum += s->held.v[j];
                        len++;
                }
                CHECK(len == s->held.len && sum == s->total);
        }
        CHECK(nlive == t->sids.len);
        for (uint32_t id = 0; id < t->n; id++)
                CHECK(refs[id] == t->pages[id].ref);
out:
        free(refs);
        return ret;
}
