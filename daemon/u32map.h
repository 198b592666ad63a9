/* u32map.h - a u32 -> u32 open-addressing map (linear probing, backward-
 * shift deletion, power-of-two capacity) for the page table (pages.c): sid
 * -> session index and, per session, page -> count of references.  Keys
 * are never MAP_EMPTY.  Header-only: every function is small and on the
 * page table's hot path.
 *
 * A client chooses the keys of its own page -> count map: the free list
 * hands back the pages freed last, and LOOKUP the pages of the keys it
 * names.  With a public hash it could hold ids whose homes share a narrow
 * band of slots, one probe run as long as the map, and make every ALLOC
 * and FREE quadratic (32768 such pages: a second of the serving thread's
 * time, against a millisecond).  So the hash takes a secret seed, which
 * the owner of a map sets (map_init) and which the map keeps through its
 * rehashes and map_fini. */
#ifndef KVD_U32MAP_H
#define KVD_U32MAP_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAP_EMPTY UINT32_MAX

/* Keys are never MAP_EMPTY (page ids are < KVD_PAGES_MAX, sid MAX is
 * refused by pages.c). */
struct u32map {
        uint32_t *k;
        uint32_t *v;
        uint32_t  cap; /* 0 or a power of two */
        uint32_t  len;
        uint32_t  seed; /* of the hash (map_home): secret where clients choose keys */
};

static inline uint32_t mix32(uint32_t x)
{
        /* a cheap bijective mixer (lowbias32); map_home seeds it */
        x ^= x >> 16;
        x *= 0x7feb352dU;
        x ^= x >> 15;
        x *= 0x846ca68bU;
        x ^= x >> 16;
        return x;
}

/* The slot where key's probe run starts.  The seed goes in before the
 * mixer, so that which ids share a home cannot be worked out without it. */
static inline uint32_t map_home(const struct u32map *m, uint32_t key)
{
        return mix32(key ^ m->seed) & (m->cap - 1);
}

/* An empty map whose hash takes seed. */
static inline void map_init(struct u32map *m, uint32_t seed)
{
        memset(m, 0, sizeof(*m));
        m->seed = seed;
}

static inline int64_t map_find(const struct u32map *m, uint32_t key)
{
        if (m->cap == 0)
                return -1;
        uint32_t mask = m->cap - 1;
        for (uint32_t i = map_home(m, key);; i = (i + 1) & mask) {
                if (m->k[i] == key)
                        return i;
                if (m->k[i] == MAP_EMPTY)
                        return -1;
        }
}

/* Inserts a key known to be absent; the caller reserved room. */
static inline void map_put(struct u32map *m, uint32_t key, uint32_t val)
{
        uint32_t mask = m->cap - 1;
        uint32_t i = map_home(m, key);
        while (m->k[i] != MAP_EMPTY)
                i = (i + 1) & mask;
        m->k[i] = key;
        m->v[i] = val;
        m->len++;
}

static inline int map_rehash(struct u32map *m, uint32_t cap)
{
        uint32_t *k = malloc((size_t)cap * sizeof(*k));
        uint32_t *v = malloc((size_t)cap * sizeof(*v));
        if (!k || !v) {
                free(k);
                free(v);
                return -ENOMEM;
        }
        memset(k, 0xff, (size_t)cap * sizeof(*k));
        struct u32map n = { .k = k, .v = v, .cap = cap, .len = 0, .seed = m->seed };
        for (uint32_t i = 0; i < m->cap; i++)
                if (m->k[i] != MAP_EMPTY)
                        map_put(&n, m->k[i], m->v[i]);
        free(m->k);
        free(m->v);
        *m = n;
        return 0;
}

/* Makes room for `extra` more keys at load <= 1/2, so that later puts cannot
 * fail: this is what lets every operation be all or nothing. */
static inline int map_reserve(struct u32map *m, uint64_t extra)
{
        uint64_t need = (uint64_t)m->len + extra;
        if (need * 2 <= m->cap)
                return 0;
        uint64_t cap = m->cap ? m->cap : 8;
        while (cap < need * 2)
                cap *= 2;
        if (cap > (1ull << 31))
                return -ENOMEM;
        return map_rehash(m, (uint32_t)cap);
}

/* Removes slot i (backward-shift deletion keeps probe runs unbroken). */
static inline void map_del_slot(struct u32map *m, uint32_t i)
{
        uint32_t mask = m->cap - 1;
        uint32_t j = i;
        for (;;) {
                j = (j + 1) & mask;
                if (m->k[j] == MAP_EMPTY)
                        break;
                uint32_t home = map_home(m, m->k[j]);
                /* move j into the hole i unless its home lies cyclically in (i, j] */
                bool stays = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
                if (!stays) {
                        m->k[i] = m->k[j];
                        m->v[i] = m->v[j];
                        i = j;
                }
        }
        m->k[i] = MAP_EMPTY;
        m->len--;
}

/* Shrinks a mostly empty map so that walking it stays O(entries).  A failed
 * allocation just keeps the larger map. */
static inline void map_maybe_shrink(struct u32map *m)
{
        if (m->cap <= 64 || (uint64_t)m->len * 8 >= m->cap)
                return;
        uint32_t cap = m->cap;
        while (cap > 64 && (uint64_t)m->len * 8 < cap)
                cap /= 2;
        (void)map_rehash(m, cap);
}

/* The longest distance of a key from its home slot, in slots: how long
 * the longest probe is (for tests: tests/pages/test_pages.c). */
static inline uint32_t map_longest_probe(const struct u32map *m)
{
        uint32_t most = 0;
        for (uint32_t i = 0; i < m->cap; i++)
                if (m->k[i] != MAP_EMPTY) {
                        uint32_t d = (i - map_home(m, m->k[i])) & (m->cap - 1);
                        if (d > most)
                                most = d;
                }
        return most;
}

/* Frees the slots; the map is empty again, with the same seed. */
static inline void map_fini(struct u32map *m)
{
        free(m->k);
        free(m->v);
        map_init(m, m->seed);
}

#endif
