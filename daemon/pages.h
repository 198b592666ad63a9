/* pages.h - the page table of one pool: page states, per-session holdings,
 * and the prefix cache (published pages, keyed lookup, LRU eviction).
 *
 * States (design §7):
 *   FREE    on the free list, refcount 0, no key;
 *   HELD    refcount >= 1, each reference recorded against a session;
 *   CACHED  published under a key; while refcount >= 1 it is also held, at
 *           refcount 0 it sits on the LRU list and is evicted (key dropped,
 *           page back to FREE) only when an alloc cannot otherwise be met.
 * A session may hold the same page several times (e.g. two lookups); each
 * reference is released by one free.  Nothing here knows about nng, sockets
 * or memory: it is a pure data structure, tested against a model.
 *
 * Keys are scoped: the table stores (tenant salt, key) pairs, so two tenants
 * publishing the same key have two entries and never see each other's.
 * Pools have separate tables, which scopes keys by pool.
 *
 * Not thread safe: the daemon calls it from its single serving thread.
 * Every function returns 0 (or a count) or a negative errno, and changes
 * nothing on failure (all or nothing).
 */
#ifndef KVD_PAGES_H
#define KVD_PAGES_H

#include <stdint.h>
#include <stddef.h>

#define KVD_KEY_LEN 16
/* Pages one table holds (kvd_pages_new refuses more): ids stay far from the
 * u32 sentinels, and a session's map of them fits its 2^31 slots. */
#define KVD_PAGES_MAX (1u << 30)

struct kvd_pages;

struct kvd_scoped_key {
        uint8_t salt[KVD_KEY_LEN];
        uint8_t key[KVD_KEY_LEN];
};

/* Called for every page evicted from the cache (its key is dropped) and every
 * key newly stored, so the daemon can emit events. May be NULL. */
struct kvd_pages_hooks {
        void (*stored)(void *ud, uint32_t page, const struct kvd_scoped_key *k);
        void (*evicted)(void *ud, uint32_t page, const struct kvd_scoped_key *k);
        void *ud;
};

struct kvd_pages_stats {
        uint32_t total;
        uint32_t free;        /* FREE pages */
        uint32_t held;        /* refcount >= 1 (cached or not) */
        uint32_t cached;      /* pages with a key (held or not) */
        uint32_t cached_idle; /* pages with a key at refcount 0: evictable */
        uint64_t lookups;     /* keys looked up */
        uint64_t hits;        /* keys found */
        uint64_t evictions;
        uint64_t resets;      /* kvd_pages_reset_keys calls */
        uint64_t keys_reset;  /* keys they dropped */
};

int  kvd_pages_new(uint32_t num_pages, const struct kvd_pages_hooks *hooks, struct kvd_pages **ret);
void kvd_pages_free(struct kvd_pages *t);

/* Allocates n pages for session sid, all or nothing.  Takes FREE pages first,
 * then evicts idle CACHED pages least recently used first.  -ENOSPC if
 * free + cached_idle < n (nothing changes); -EOVERFLOW if sid would hold more
 * than 2^32-1 references. */
int kvd_pages_alloc(struct kvd_pages *t, uint32_t sid, uint32_t n, uint32_t *ret_ids);

/* Drops one reference of sid on each of ids[0..n).  All or nothing: -ERANGE if
 * an id is out of range, -EPERM if sid does not hold one of them (as many
 * times as it appears in ids). */
int kvd_pages_release(struct kvd_pages *t, uint32_t sid, uint32_t n, const uint32_t *ids);

/* Drops every reference sid holds (session ended). Returns the number dropped. */
uint32_t kvd_pages_drop_session(struct kvd_pages *t, uint32_t sid);

/* References sid holds in total, and on page id. */
uint32_t kvd_pages_session_count(const struct kvd_pages *t, uint32_t sid);
uint32_t kvd_pages_refcount(const struct kvd_pages *t, uint32_t id);
/* For tests: the longest probe, in slots past a page id's home, of the map
 * that holds session sid's pages (0 without the session).  Page ids are the
 * client's choice, so it must stay short whichever ids a session holds
 * (u32map.h). */
uint32_t kvd_pages_longest_probe(const struct kvd_pages *t, uint32_t sid);

/* Publishes ids[i] under keys[i] (scoped by salt).  Each page must be held by
 * sid (-EPERM otherwise, nothing published; -ERANGE for a bad id).  A key
 * already present keeps its first page: results[i] = 1 (duplicate), else 0.
 * A page already published under another key gets results[i] = 2 and keeps
 * its first key.  Returns the number newly stored. */
int kvd_pages_publish(struct kvd_pages *t, uint32_t sid, const uint8_t salt[KVD_KEY_LEN],
                      uint32_t n, const uint32_t *ids, const uint8_t (*keys)[KVD_KEY_LEN],
                      uint8_t *results);

/* Finds the longest leading run of keys that are cached under salt; each found
 * page gains a reference for sid (atomically: nothing can evict it between
 * finding and holding); an idle one leaves the LRU list and re-enters it at
 * the most recently used end when its last reference is dropped.  Returns the
 * number of hits h and fills ret_ids[0..h); -EOVERFLOW (nothing changes) if
 * a page's refcount or sid's references would pass 2^32-1. */
int kvd_pages_lookup(struct kvd_pages *t, uint32_t sid, const uint8_t salt[KVD_KEY_LEN],
                     uint32_t n, const uint8_t (*keys)[KVD_KEY_LEN], uint32_t *ret_ids);

/* Drops every key of the table (salt NULL) or every key scoped by salt (the
 * prefix cache is emptied, as after a model change that makes cached KV
 * wrong): idle cached pages go back to FREE, held ones stay held by their
 * holders and go to FREE, not the LRU, when released.  No lookup finds any
 * of them again.  The `evicted` hook is not called (the caller announces
 * the reset once).  Returns the number of keys dropped; 0 for NULL t. */
uint32_t kvd_pages_reset_keys(struct kvd_pages *t, const uint8_t salt[KVD_KEY_LEN]);

void kvd_pages_get_stats(const struct kvd_pages *t, struct kvd_pages_stats *ret);

/* Checks every invariant (counts add up, lists consistent, holdings match
 * refcounts). Returns 0 or -EUCLEAN. For tests and debug builds. */
int kvd_pages_check(const struct kvd_pages *t);

#endif
