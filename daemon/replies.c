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
 */
#include <errno.h>
#include <pthread.h>
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
};

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

static void give_back(struct kvd_replies *r, struct kvd_reply_slot *sl)
{
        pthread_mutex_lock(&r->lock);
        sl->next = r->free;
        r->free = sl;
        pthread_cond_signal(&r->freed);
        pthread_mutex_unlock(&r->lock);
}

/* The completion of a slot's send, on an nng thread.  A reply that failed
 * is still ours to free; one that timed out was queued behind replies its
 * peer did not read for send_wait_ms: the connection goes. */
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
        sl->next = r->free;
        r->free = sl;
        pthread_cond_signal(&r->freed);
        pthread_mutex_unlock(&r->lock);
        if (rv == NNG_ETIMEDOUT) {
                kvd_warn("connection %u does not read its replies: closing it (a reply waited %d ms)", id,
                         r->send_wait_ms);
                nng_pipe_close(pipe_of(id));
        }
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
        if (map_reserve(&r->waiting, KVD_REPLY_SLOTS) || nng_aio_alloc(&r->raio, NULL, NULL)) {
                map_fini(&r->waiting);
                free(r);
                return -ENOMEM;
        }
        /* CLOCK_MONOTONIC: a clock step must not stretch the loop's wait */
        if (pthread_condattr_init(&ca)) {
                nng_aio_free(r->raio);
                map_fini(&r->waiting);
                free(r);
                return -ENOMEM;
        }
        if (pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) || pthread_cond_init(&r->freed, &ca)) {
                pthread_condattr_destroy(&ca);
                nng_aio_free(r->raio);
                map_fini(&r->waiting);
                free(r);
                return -ENOMEM;
        }
        pthread_condattr_destroy(&ca);
        pthread_mutex_init(&r->lock, NULL);
        *ret = r;
        return 0;
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

/* Closes the connection with the most replies in flight, if it has more
 * than one (a peer with one reply out may just be slow).  Caller holds the
 * lock; it is released around the close and taken again. */
static void close_worst(struct kvd_replies *r)
{
        uint32_t worst = MAP_EMPTY, most = 1;

        for (uint32_t i = 0; i < r->waiting.cap; i++)
                if (r->waiting.k[i] != MAP_EMPTY && r->waiting.v[i] > most) {
                        most = r->waiting.v[i];
                        worst = r->waiting.k[i];
                }
        if (worst == MAP_EMPTY)
                return;
        pthread_mutex_unlock(&r->lock);
        kvd_warn("connection %u does not read its replies: closing it (%u unsent, every reply slot busy)", worst,
                 most);
        nng_pipe_close(pipe_of(worst));
        pthread_mutex_lock(&r->lock);
}

/* A free slot within wait_ms: one from the free list, a new one while there
 * are fewer than KVD_REPLY_SLOTS, else the first freed (once every slot is
 * busy, the connection holding the most goes). */
static int take_slot(struct kvd_replies *r, int wait_ms, struct kvd_reply_slot **ret)
{
        struct timespec until;
        int             closed = 0;

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
                        if (r->nslots == 0) {
                                pthread_mutex_unlock(&r->lock);
                                return -ENOMEM;
                        }
                }
                if (!closed) {
                        close_worst(r);
                        closed = 1;
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
        struct kvd_reply_slot *sl;
        int                    e, rv;

        if ((e = take_slot(r, wait_ms, &sl)))
                return e;
        nng_aio_set_timeout(r->raio, wait_ms);
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
        *ret_msg = nng_aio_get_msg(r->raio);
        nng_aio_set_msg(r->raio, NULL);
        *ret_slot = sl;
        return 0;
}

void kvd_replies_send(struct kvd_replies *r, struct kvd_reply_slot *sl, nng_msg *msg)
{
        const nng_pipe p = nng_msg_get_pipe(msg);
        const uint32_t id = (uint32_t)nng_pipe_id(p);
        const size_t   len = nng_msg_len(msg);
        int64_t        i;
        uint32_t       n;

        pthread_mutex_lock(&r->lock);
        i = id == MAP_EMPTY ? -1 : map_find(&r->waiting, id);
        n = i < 0 ? 0 : r->waiting.v[i];
        if (n >= KVD_REPLY_PER_PIPE || (n > 0 && r->bytes + len > KVD_REPLY_BYTES)) {
                /* replies pile up unread: the peer goes now, not after
                 * send_wait_ms, so that it cannot take every slot, nor
                 * hold the daemon's memory in replies */
                const size_t bytes = r->bytes;

                pthread_mutex_unlock(&r->lock);
                nng_msg_free(msg);
                give_back(r, sl);
                kvd_warn("connection %u does not read its replies: closing it (%u unsent; %zu bytes of replies "
                         "in flight)",
                         id, n, bytes);
                nng_pipe_close(p);
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
        pthread_cond_destroy(&r->freed);
        pthread_mutex_destroy(&r->lock);
        free(r);
}
