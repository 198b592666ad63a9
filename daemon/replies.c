/* replies.c - REP contexts whose replies go out without the serving loop
 * waiting (see replies.h).
 *
 * Each context (a slot) receives one request, and its reply is handed to
 * nng with nng_ctx_send and a timeout; the completion puts the slot back on
 * the free list.  rep0 hands a reply to the connection at once when the
 * connection is idle, else queues it behind the one being written: only
 * those queued replies keep a slot busy.  The map `waiting` counts, per
 * connection (pipe id), the replies handed over and not yet completed, so
 * that one peer cannot take every slot.
 *
 * A connection found not reading is doomed, and closed by the serving
 * loop on its next round, after a pause: closing a connection a message is
 * arriving on can stick nng 1.5.2's pipe teardown for good
 * (docs/operations.md §9), and with the loop no longer waiting on a
 * peer's replies, a peer that pipelines is nearly always mid-message
 * (tests/daemon/test_e2e.c peer_that_never_reads_is_dropped caught it).  rep0
 * reads one request ahead on each connection and holds it until a context
 * takes it; while the loop takes none for KVD_REPLY_PARK_MS, every read in
 * progress completes and parks, and the close finds none in flight (the
 * loop that waited on sends paused the same way, for 200 ms).  Requests of
 * a doomed connection that come in before it is closed are dropped.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <nng/nng.h>
#include "kv_proto.h"
#include "log.h"
#include "replies.h"
#include "u32map.h"

struct kvd_reply_slot {
        struct kvd_replies    *r;
        nng_ctx                ctx;
        nng_aio               *aio;  /* its reply's send */
        uint32_t               rx;   /* the connection of the request it received */
        uint32_t               pipe; /* the connection of the reply in flight */
        size_t                 len;  /* and its bytes */
        struct kvd_reply_slot *next; /* on the free list */
};

struct kvd_replies {
        nng_socket             sock;
        int                    send_wait_ms;
        nng_aio               *raio; /* the serving loop's receive */
        pthread_mutex_t        lock; /* free list, waiting, nslots */
        pthread_cond_t         freed;
        struct kvd_reply_slot *slots[KVD_REPLY_SLOTS];
        uint32_t               nslots;
        struct kvd_reply_slot *free;
        struct u32map          waiting; /* pipe id -> replies handed over, not completed */
        size_t                 bytes;   /* of those replies */
        struct u32map          doomed;  /* pipe id -> now_ms() when doomed */
        uint32_t               closed[256]; /* the connections closed last (a reply of theirs
                                             * may still time out: not doomed again) */
        uint32_t               nclosed;     /* closed so far (the ring's next slot, mod 256) */
        uint32_t               parked;      /* now_ms() of the last pause */
};

/* A monotonic clock in ms, modulo 2^32 (only differences are used). */
static uint32_t now_ms(void)
{
        struct timespec t;

        clock_gettime(CLOCK_MONOTONIC, &t);
        return (uint32_t)((uint64_t)t.tv_sec * 1000u + (uint64_t)t.tv_nsec / 1000000u);
}

static nng_pipe pipe_of(uint32_t id)
{
        nng_pipe p = NNG_PIPE_INITIALIZER;

        p.id = id;
        return p;
}

/* One reply of connection id fewer in flight.  Caller holds the lock. */
static void unwait(struct kvd_replies *r, uint32_t id)
{
        int64_t i = id == MAP_EMPTY ? -1 : map_find(&r->waiting, id);

        if (i < 0)
                return;
        if (--r->waiting.v[i] == 0)
                map_del_slot(&r->waiting, (uint32_t)i);
}

/* Puts slot sl on the free list and wakes a take_slot waiting for one.
 * Caller holds the lock. */
static void put_free_locked(struct kvd_replies *r, struct kvd_reply_slot *sl)
{
        sl->next = r->free;
        r->free = sl;
        pthread_cond_signal(&r->freed);
}

static void give_back(struct kvd_replies *r, struct kvd_reply_slot *sl)
{
        pthread_mutex_lock(&r->lock);
        put_free_locked(r, sl);
        pthread_mutex_unlock(&r->lock);
}

/* Marks connection id doomed (see the header comment); returns 1 when it
 * was not before (the caller logs it), 0 when it was, or closes it at once
 * when the doomed set cannot grow (out of memory: -1).  Caller holds the
 * lock. */
static int doom_locked(struct kvd_replies *r, uint32_t id)
{
        if (id == MAP_EMPTY || map_find(&r->doomed, id) >= 0)
                return 0;
        for (uint32_t i = 0; i < 256 && i < r->nclosed; i++)
                if (r->closed[i] == id)
                        return 0;
        if (map_reserve(&r->doomed, 1))
                return -1;
        map_put(&r->doomed, id, now_ms());
        return 1;
}

/* doom_locked for a caller without the lock, and the warning, once. */
static void doom(struct kvd_replies *r, uint32_t id, const char *why)
{
        int d;

        pthread_mutex_lock(&r->lock);
        d = doom_locked(r, id);
        pthread_mutex_unlock(&r->lock);
        if (d != 0)
                kvd_warn("connection %u does not read its replies: closing it (%s)", id, why);
        if (d < 0)
                nng_pipe_close(pipe_of(id));
}

/* Closes the connections doomed at least KVD_REPLY_PARK_MS ago, up to 64
 * a call (the rest at the next), after taking no request for
 * KVD_REPLY_PARK_MS (see the header comment); unless now_too (every slot
 * is busy), at most one such pause every 5 * KVD_REPLY_PARK_MS, so that
 * peers doomed one after another cost the others at most a fifth of the
 * loop's time.  The serving loop's thread. */
static void close_doomed(struct kvd_replies *r, bool now_too)
{
        const struct timespec park = { 0, KVD_REPLY_PARK_MS * 1000000L };
        uint32_t              ids[64], n = 0, now = now_ms();

        pthread_mutex_lock(&r->lock);
        n = r->doomed.len;
        pthread_mutex_unlock(&r->lock);
        if (n == 0 || (!now_too && now - r->parked < 5 * KVD_REPLY_PARK_MS))
                return;
        nanosleep(&park, NULL);
        n = 0;
        now = r->parked = now_ms();
        pthread_mutex_lock(&r->lock);
        for (uint32_t i = 0; i < r->doomed.cap && n < 64; i++)
                if (r->doomed.k[i] != MAP_EMPTY && now - r->doomed.v[i] >= KVD_REPLY_PARK_MS)
                        ids[n++] = r->doomed.k[i];
        for (uint32_t j = 0; j < n; j++) {
                int64_t i = map_find(&r->doomed, ids[j]);

                if (i >= 0)
                        map_del_slot(&r->doomed, (uint32_t)i);
                r->closed[r->nclosed++ % 256] = ids[j];
        }
        if (n)
                map_maybe_shrink(&r->doomed);
        pthread_mutex_unlock(&r->lock);
        for (uint32_t j = 0; j < n; j++)
                nng_pipe_close(pipe_of(ids[j])); /* NNG_ENOENT if it went meanwhile */
}

/* The completion of a slot's send, on an nng thread.  A reply that failed
 * is still ours to free; one that timed out was queued behind replies its
 * peer did not read for send_wait_ms: the connection is doomed. */
static void sent(void *arg)
{
        struct kvd_reply_slot *sl = arg;
        struct kvd_replies    *r = sl->r;
        int                    rv = nng_aio_result(sl->aio);
        uint32_t               id;

        if (rv) {
                nng_msg *m = nng_aio_get_msg(sl->aio);

                nng_aio_set_msg(sl->aio, NULL);
                if (m)
                        nng_msg_free(m);
        }
        pthread_mutex_lock(&r->lock);
        id = sl->pipe;
        unwait(r, id);
        r->bytes -= sl->len;
        sl->pipe = 0;
        sl->len = 0;
        put_free_locked(r, sl);
        pthread_mutex_unlock(&r->lock);
        if (rv == NNG_ETIMEDOUT) {
                char why[48];

                snprintf(why, sizeof(why), "a reply waited %d ms", r->send_wait_ms);
                doom(r, id, why);
        }
}

/* A new slot, or NULL when nng cannot make one (out of memory, or the
 * socket closed). */
static struct kvd_reply_slot *slot_new(struct kvd_replies *r)
{
        struct kvd_reply_slot *sl = calloc(1, sizeof(*sl));

        if (!sl)
                return NULL;
        sl->r = r;
        if (nng_ctx_open(&sl->ctx, r->sock)) {
                free(sl);
                return NULL;
        }
        if (nng_aio_alloc(&sl->aio, sent, sl)) {
                nng_ctx_close(sl->ctx);
                free(sl);
                return NULL;
        }
        return sl;
}

int kvd_replies_new(nng_socket sock, int send_wait_ms, struct kvd_replies **ret)
{
        struct kvd_replies *r;
        pthread_condattr_t  ca;

        if (send_wait_ms < 1 || !ret)
                return -EINVAL;
        if (!(r = calloc(1, sizeof(*r))))
                return -ENOMEM;
        r->sock = sock;
        r->send_wait_ms = send_wait_ms;
        /* room for every slot's connection: puts never fail later */
        if (map_reserve(&r->waiting, KVD_REPLY_SLOTS) || nng_aio_alloc(&r->raio, NULL, NULL))
                goto fail;
        /* CLOCK_MONOTONIC: a clock step must not stretch the loop's wait */
        if (pthread_condattr_init(&ca))
                goto fail;
        if (pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) || pthread_cond_init(&r->freed, &ca)) {
                pthread_condattr_destroy(&ca);
                goto fail;
        }
        pthread_condattr_destroy(&ca);
        pthread_mutex_init(&r->lock, NULL);
        /* one slot now, so that the loop always has one to wait on */
        if (!(r->slots[0] = slot_new(r))) {
                kvd_replies_free(r);
                return -ENOMEM;
        }
        r->nslots = 1;
        r->free = r->slots[0];
        *ret = r;
        return 0;

fail:
        if (r->raio)
                nng_aio_free(r->raio);
        map_fini(&r->waiting);
        free(r);
        return -ENOMEM;
}

/* Dooms the connection with the most replies in flight, if it has more
 * than one (a peer with one reply out may just be slow) and is not doomed
 * already.  Caller holds the lock; it is released around the warning and
 * taken again. */
static void doom_worst(struct kvd_replies *r)
{
        uint32_t worst = MAP_EMPTY, most = 1;
        int      d;

        for (uint32_t i = 0; i < r->waiting.cap; i++)
                if (r->waiting.k[i] != MAP_EMPTY && r->waiting.v[i] > most &&
                    map_find(&r->doomed, r->waiting.k[i]) < 0) {
                        most = r->waiting.v[i];
                        worst = r->waiting.k[i];
                }
        if (worst == MAP_EMPTY || (d = doom_locked(r, worst)) == 0)
                return;
        pthread_mutex_unlock(&r->lock);
        kvd_warn("connection %u does not read its replies: closing it (%u unsent, every reply slot busy)", worst,
                 most);
        if (d < 0)
                nng_pipe_close(pipe_of(worst));
        pthread_mutex_lock(&r->lock);
}

/* A free slot within wait_ms: one from the free list, a new one while there
 * are fewer than KVD_REPLY_SLOTS, else the first freed (once every slot is
 * busy, the connection holding the most is doomed and closed after the
 * pause, which completes its queued replies and frees their slots). */
static int take_slot(struct kvd_replies *r, int wait_ms, struct kvd_reply_slot **ret)
{
        struct timespec until;
        int             doomed = 0;

        kv_deadline_ms(&until, (uint32_t)wait_ms);
        pthread_mutex_lock(&r->lock);
        for (;;) {
                if (r->free) {
                        *ret = r->free;
                        r->free = r->free->next;
                        pthread_mutex_unlock(&r->lock);
                        return 0;
                }
                if (r->nslots < KVD_REPLY_SLOTS) {
                        struct kvd_reply_slot *sl = slot_new(r);

                        if (sl) {
                                r->slots[r->nslots++] = sl;
                                pthread_mutex_unlock(&r->lock);
                                *ret = sl;
                                return 0;
                        }
                        /* out of memory: wait for one of those there are */
                }
                if (!doomed) {
                        /* its queued replies complete as it closes */
                        doom_worst(r);
                        doomed = 1;
                        pthread_mutex_unlock(&r->lock);
                        close_doomed(r, true);
                        pthread_mutex_lock(&r->lock);
                        continue;
                }
                if (pthread_cond_timedwait(&r->freed, &r->lock, &until) == ETIMEDOUT && !r->free) {
                        pthread_mutex_unlock(&r->lock);
                        return -ETIMEDOUT;
                }
        }
}

int kvd_replies_recv(struct kvd_replies *r, int wait_ms, nng_msg **ret_msg, struct kvd_reply_slot **ret_slot)
{
        const uint32_t t0 = now_ms();

        for (;;) {
                struct kvd_reply_slot *sl;
                nng_msg               *msg;
                const uint32_t         spent = now_ms() - t0;
                int64_t                i;
                int                    e, rv, left;

                close_doomed(r, false);
                if (spent >= (uint32_t)wait_ms)
                        return -ETIMEDOUT;
                left = wait_ms - (int)spent;
                if ((e = take_slot(r, left, &sl)))
                        return e;
                nng_aio_set_timeout(r->raio, left);
                nng_ctx_recv(sl->ctx, r->raio);
                nng_aio_wait(r->raio);
                if ((rv = nng_aio_result(r->raio))) {
                        give_back(r, sl);
                        if (rv == NNG_ETIMEDOUT)
                                return -ETIMEDOUT;
                        if (rv == NNG_ECLOSED)
                                return -EBADF;
                        kvd_warn("receive failed: %s", nng_strerror(rv));
                        return -EIO;
                }
                msg = nng_aio_get_msg(r->raio);
                nng_aio_set_msg(r->raio, NULL);
                /* a doomed connection's request: dropped */
                sl->rx = (uint32_t)nng_pipe_id(nng_msg_get_pipe(msg));
                pthread_mutex_lock(&r->lock);
                i = map_find(&r->doomed, sl->rx);
                pthread_mutex_unlock(&r->lock);
                if (i >= 0) {
                        nng_msg_free(msg);
                        give_back(r, sl);
                        continue;
                }
                *ret_msg = msg;
                *ret_slot = sl;
                return 0;
        }
}

void kvd_replies_send(struct kvd_replies *r, struct kvd_reply_slot *sl, nng_msg *msg)
{
        const uint32_t id = sl->rx;
        const size_t   len = nng_msg_len(msg);
        int64_t        i;
        uint32_t       n;

        pthread_mutex_lock(&r->lock);
        i = id == MAP_EMPTY ? -1 : map_find(&r->waiting, id);
        n = i < 0 ? 0 : r->waiting.v[i];
        if (n >= KVD_REPLY_PER_PIPE || (n > 0 && r->bytes + len > KVD_REPLY_BYTES)) {
                /* replies pile up unread: the peer is doomed now, not after
                 * send_wait_ms, so that it cannot take every slot, nor hold
                 * the daemon's memory in replies */
                char why[96];

                snprintf(why, sizeof(why), "%u unsent; %zu bytes of replies in flight", n, r->bytes);
                pthread_mutex_unlock(&r->lock);
                nng_msg_free(msg);
                give_back(r, sl);
                doom(r, id, why);
                return;
        }
        if (id != MAP_EMPTY) {
                if (i < 0)
                        map_put(&r->waiting, id, 1);
                else
                        r->waiting.v[i]++;
        }
        sl->pipe = id;
        sl->len = len;
        r->bytes += len;
        pthread_mutex_unlock(&r->lock);
        nng_aio_set_msg(sl->aio, msg);
        nng_aio_set_timeout(sl->aio, r->send_wait_ms);
        nng_ctx_send(sl->ctx, sl->aio);
}

void kvd_replies_drop(struct kvd_replies *r, struct kvd_reply_slot *sl)
{
        give_back(r, sl);
}

void kvd_replies_free(struct kvd_replies *r)
{
        if (!r)
                return;
        /* closing a context ends its pending send (the completion runs and
         * frees the reply); nng_aio_free then waits for that completion */
        for (uint32_t i = 0; i < r->nslots; i++)
                nng_ctx_close(r->slots[i]->ctx);
        for (uint32_t i = 0; i < r->nslots; i++) {
                nng_aio_free(r->slots[i]->aio);
                free(r->slots[i]);
        }
        nng_aio_free(r->raio);
        map_fini(&r->waiting);
        map_fini(&r->doomed);
        pthread_cond_destroy(&r->freed);
        pthread_mutex_destroy(&r->lock);
        free(r);
}
