/* session.c - the session table: nng pipe id -> session (see session.h).
 *
 * Open addressing with linear probing and backward-shift deletion, so a
 * lookup is a multiply and a probe or two and deletions leave no tombstones.
 * The table doubles when it is half full and never shrinks (it is sized by
 * the largest number of concurrent clients, a few hundred at most). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "session.h"

#define INITIAL_SLOTS 64u
#define REMOVED_RING  256u /* recently closed pipes, see kvd_sessions_add */

struct kvd_sessions {
        struct kvd_session **slots; /* NULL = empty */
        uint32_t             mask;  /* slots - 1 (power of two) */
        uint32_t             count;
        uint32_t             next_id;
        int                  wrapped; /* next_id has wrapped: ids may be live */
        uint32_t             removed[REMOVED_RING];
        uint32_t             removed_pos;
};

static uint32_t slot_of(const struct kvd_sessions *t, uint32_t pipe_id)
{
        /* Fibonacci hashing: pipe ids are sequential, spread them. */
        return (uint32_t)((pipe_id * 2654435761u) >> 7) & t->mask;
}

int kvd_sessions_new(struct kvd_sessions **ret)
{
        struct kvd_sessions *t = calloc(1, sizeof(*t));

        if (!t)
                return -ENOMEM;
        t->slots = calloc(INITIAL_SLOTS, sizeof(*t->slots));
        if (!t->slots) {
                free(t);
                return -ENOMEM;
        }
        t->mask = INITIAL_SLOTS - 1;
        t->next_id = 1;
        *ret = t;
        return 0;
}

void kvd_sessions_free(struct kvd_sessions *t)
{
        if (!t)
                return;
        for (uint32_t i = 0; i <= t->mask; i++)
                free(t->slots[i]);
        free(t->slots);
        free(t);
}

static int64_t find_slot(const struct kvd_sessions *t, uint32_t pipe_id)
{
        for (uint32_t i = slot_of(t, pipe_id);; i = (i + 1) & t->mask) {
                const struct kvd_session *s = t->slots[i];

                if (!s)
                        return -1;
                if (s->pipe_id == pipe_id)
                        return i;
        }
}

struct kvd_session *kvd_sessions_find(struct kvd_sessions *t, uint32_t pipe_id)
{
        int64_t i = find_slot(t, pipe_id);

        return i < 0 ? NULL : t->slots[i];
}

static void insert(struct kvd_sessions *t, struct kvd_session *s)
{
        uint32_t i = slot_of(t, s->pipe_id);

        while (t->slots[i])
                i = (i + 1) & t->mask;
        t->slots[i] = s;
}

static int grow(struct kvd_sessions *t)
{
        struct kvd_session **old = t->slots;
        uint32_t             n = (t->mask + 1) * 2;

        if (n == 0 || !(t->slots = calloc(n, sizeof(*t->slots)))) {
                t->slots = old;
                return -ENOMEM;
        }
        t->mask = n - 1;
        for (uint32_t i = 0; i < n / 2; i++)
                if (old[i])
                        insert(t, old[i]);
        free(old);
        return 0;
}

static int id_live(const struct kvd_sessions *t, uint32_t id)
{
        for (uint32_t i = 0; i <= t->mask; i++)
                if (t->slots[i] && t->slots[i]->id == id)
                        return 1;
        return 0;
}

/* The next session id.  Never 0 ("none") or UINT32_MAX (the page table's
 * mark of an unused key, pages.c and u32map.h), and, once the counter has
 * wrapped after 2^32 - 2 connections, never the id of a live session: the
 * page table keys a session's references by its id, so a second session
 * with the same id could free the first one's pages, and its close would
 * drop them while their owner still uses them.  A live id is skipped with
 * a scan of the table, only after the wrap; fewer sessions than ids are
 * live, so the search ends. */
static uint32_t fresh_id(struct kvd_sessions *t)
{
        for (;;) {
                const uint32_t id = t->next_id++;
                if (t->next_id == 0 || t->next_id == UINT32_MAX) {
                        t->next_id = 1;
                        t->wrapped = 1;
                }
                if (!t->wrapped || !id_live(t, id))
                        return id;
        }
}

void kvd_sessions_set_next_id(struct kvd_sessions *t, uint32_t id)
{
        if (id != 0 && id != UINT32_MAX) {
                t->next_id = id;
                t->wrapped = 1; /* the ids from here on may be live */
        }
}

int kvd_sessions_add(struct kvd_sessions *t, uint32_t pipe_id, struct kvd_session **ret)
{
        struct kvd_session *s = kvd_sessions_find(t, pipe_id);

        if (s) {
                *ret = s;
                return 0;
        }
        /* A request that was queued before its pipe closed may reach the
         * serving loop after the close was handled: it must not create a
         * session that no close event will ever remove. */
        for (uint32_t i = 0; i < REMOVED_RING; i++)
                if (t->removed[i] == pipe_id && pipe_id != 0)
                        return -ESTALE;
        if ((t->count + 1) * 2 > t->mask + 1 && grow(t))
                return -ENOMEM;
        if (!(s = calloc(1, sizeof(*s))))
                return -ENOMEM;
        s->pipe_id = pipe_id;
        s->id = fresh_id(t);
        s->pid = -1;
        s->uid = -1;
        s->conn_fd = -1;
        s->cand_fd = -1;
        insert(t, s);
        t->count++;
        *ret = s;
        return 0;
}

struct kvd_session *kvd_sessions_remove(struct kvd_sessions *t, uint32_t pipe_id)
{
        int64_t             found = find_slot(t, pipe_id);
        struct kvd_session *s;
        uint32_t            i, j;

        t->removed[t->removed_pos++ % REMOVED_RING] = pipe_id;
        if (found < 0)
                return NULL;
        i = (uint32_t)found;
        s = t->slots[i];
        t->slots[i] = NULL;
        t->count--;
        /* Backward shift: move later members of the probe run into the hole
         * when their home slot allows it, so lookups never stop early. */
        for (j = (i + 1) & t->mask; t->slots[j]; j = (j + 1) & t->mask) {
                uint32_t home = slot_of(t, t->slots[j]->pipe_id);
                /* Movable unless home lies cyclically in (i, j]. */
                int in_range = i <= j ? (home > i && home <= j) : (home > i || home <= j);

                if (!in_range) {
                        t->slots[i] = t->slots[j];
                        t->slots[j] = NULL;
                        i = j;
                }
        }
        return s;
}

uint32_t kvd_sessions_count(const struct kvd_sessions *t)
{
        return t ? t->count : 0;
}

const struct kvd_session *kvd_sessions_next(const struct kvd_sessions *t, uint32_t *cursor)
{
        while (*cursor <= t->mask) {
                const struct kvd_session *s = t->slots[(*cursor)++];

                if (s)
                        return s;
        }
        return NULL;
}
