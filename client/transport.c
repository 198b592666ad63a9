/* transport.c - libkvclient's request/reply exchange with kvpoold: one nng
 * REQ context per request in flight, a timed wait for its reply, and the
 * requests that timed out while they may still hand out pages.
 *
 * Why contexts.  On a socket-level REQ, a reply that misses the timeout is
 * dropped by nng as soon as the next request goes out (and cancelling a
 * receive aborts the request).  For ALLOC and LOOKUP that reply carries
 * pages the daemon has already given to the session: dropped, they stay
 * held under ids the caller never saw, until the client disconnects.  So
 * when an ALLOC or LOOKUP times out, its context becomes an orphan whose
 * receive stays posted, the next request takes a fresh context, and
 * kvclient.c, before each request, collects the replies orphans got and
 * gives their pages back (kvc__tp_orphan_reply).  Any other request that
 * times out is cancelled, as before.  At most MAX_ORPHANS wait at once
 * (a daemon that never answers must not grow the list without bound);
 * past that a timed-out request is cancelled too.
 *
 * Threads: requests are serialized by the client's lock (kvclient.c); the
 * reply callback runs on an nng thread and only sets its slot's done flag
 * under t->lock.  Nothing here holds t->lock while it cancels or stops an
 * aio, whose callback takes that lock.
 */
#include <errno.h>
#include <stdlib.h>
#include <time.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

#include "kv_proto.h"
#include "kvclient_internal.h"

#define MAX_ORPHANS 16

struct slot {
        struct kvc_transport *t;
        nng_ctx               ctx;
        nng_aio              *raio;     /* the posted receive; on_reply is its callback */
        int                   done;     /* raio completed (t->lock) */
        uint16_t              op;       /* an orphan's request: opcode, request id, pool */
        uint32_t              rid, pool_id;
        struct slot          *next;
};

struct kvc_transport {
        nng_socket      sock;
        nng_aio        *saio;           /* sends, waited for synchronously */
        pthread_mutex_t lock;
        pthread_cond_t  cond;           /* some slot's receive completed */
        struct slot    *cur;            /* the context the next request uses */
        struct slot    *orphans;
        unsigned        norphans;
        int             timeout_ms;
};

static void on_reply(void *arg)
{
        struct slot *s = arg;

        pthread_mutex_lock(&s->t->lock);
        s->done = 1;
        pthread_cond_broadcast(&s->t->cond);
        pthread_mutex_unlock(&s->t->lock);
}

/* Stops the slot's receive (waiting for its callback) and frees it with any
 * reply it was holding. */
static void slot_free(struct slot *s)
{
        nng_msg *m;

        if (s == NULL)
                return;
        nng_aio_stop(s->raio);
        if (nng_aio_result(s->raio) == 0 && (m = nng_aio_get_msg(s->raio)) != NULL)
                nng_msg_free(m);
        nng_aio_free(s->raio);
        nng_ctx_close(s->ctx);
        free(s);
}

/* A fresh context: 0 or an nng error. */
static int slot_new(struct kvc_transport *t, struct slot **ret)
{
        struct slot *s = calloc(1, sizeof *s);
        int rv;

        if (s == NULL)
                return NNG_ENOMEM;
        s->t = t;
        if ((rv = nng_ctx_open(&s->ctx, t->sock)) != 0) {
                free(s);
                return rv;
        }
        /* ALLOC is not idempotent: no automatic resend on any context */
        if ((rv = nng_ctx_set_ms(s->ctx, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE)) != 0 ||
            (rv = nng_aio_alloc(&s->raio, on_reply, s)) != 0) {
                nng_ctx_close(s->ctx);
                free(s);
                return rv;
        }
        /* no aio timeout (it stays with the aio): an expiring receive would
         * abort the request; the caller's deadline is wait_done's */
        nng_aio_set_timeout(s->raio, NNG_DURATION_INFINITE);
        *ret = s;
        return 0;
}

int kvc__tp_open(nng_socket sock, int timeout_ms, struct kvc_transport **ret)
{
        struct kvc_transport *t = calloc(1, sizeof *t);
        pthread_condattr_t ca;
        int rv;

        if (t == NULL)
                return NNG_ENOMEM;
        t->sock = sock;
        t->timeout_ms = timeout_ms;
        if ((rv = nng_aio_alloc(&t->saio, NULL, NULL)) != 0) {
                free(t);
                return rv;
        }
        pthread_mutex_init(&t->lock, NULL);
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&t->cond, &ca);
        pthread_condattr_destroy(&ca);
        if ((rv = slot_new(t, &t->cur)) != 0) {
                kvc__tp_close(t);
                return rv;
        }
        *ret = t;
        return 0;
}

void kvc__tp_close(struct kvc_transport *t)
{
        if (t == NULL)
                return;
        slot_free(t->cur);
        while (t->orphans != NULL) {
                struct slot *s = t->orphans;

                t->orphans = s->next;
                slot_free(s);
        }
        nng_aio_free(t->saio);
        pthread_cond_destroy(&t->cond);
        pthread_mutex_destroy(&t->lock);
        free(t);
}

void kvc__tp_set_timeout(struct kvc_transport *t, int timeout_ms)
{
        t->timeout_ms = timeout_ms;
}

/* Waits for s's receive until deadline: 1 if it completed. */
static int wait_done(struct kvc_transport *t, struct slot *s, const struct timespec *deadline)
{
        int done, rc = 0;

        pthread_mutex_lock(&t->lock);
        while (!s->done && rc != ETIMEDOUT)
                rc = pthread_cond_timedwait(&t->cond, &t->lock, deadline);
        done = s->done;
        pthread_mutex_unlock(&t->lock);
        return done;
}

static int take_reply(struct slot *s, nng_msg **ret_rep)
{
        int rv = nng_aio_result(s->raio);

        if (rv == 0) {
                *ret_rep = nng_aio_get_msg(s->raio);
                nng_aio_set_msg(s->raio, NULL);
        }
        return rv;
}

int kvc__tp_exchange(struct kvc_transport *t, nng_msg *req, uint16_t op, uint32_t rid, uint32_t pool_id,
                     nng_msg **ret_rep, int *ret_sent, int *ret_kept)
{
        struct slot *s = t->cur, *fresh;
        struct timespec deadline;
        int rv;

        *ret_sent = 0;
        *ret_kept = 0;
        /* One deadline for the send and the reply together: a send that
         * waited for a connection (a daemon restarting) leaves the reply
         * only the rest, so -ETIMEDOUT comes within the client's timeout
         * as kvclient.h says, not after up to twice it. */
        kv_deadline_ms(&deadline, (uint32_t)t->timeout_ms);
        nng_aio_set_msg(t->saio, req);
        nng_aio_set_timeout(t->saio, t->timeout_ms);
        nng_ctx_send(s->ctx, t->saio);
        nng_aio_wait(t->saio);
        if ((rv = nng_aio_result(t->saio)) != 0) {
                nng_msg *m = nng_aio_get_msg(t->saio); /* not sent: still ours */

                if (m != NULL)
                        nng_msg_free(m);
                nng_aio_set_msg(t->saio, NULL);
                return rv;
        }
        *ret_sent = 1;

        pthread_mutex_lock(&t->lock);
        s->done = 0;
        pthread_mutex_unlock(&t->lock);
        nng_ctx_recv(s->ctx, s->raio);
        if (wait_done(t, s, &deadline))
                return take_reply(s, ret_rep);

        /* Timed out.  A request that hands out pages keeps waiting on its
         * own context; the next request takes a fresh one. */
        if (kvc__hands_out_pages(op) && t->norphans < MAX_ORPHANS &&
            slot_new(t, &fresh) == 0) {
                s->op = op;
                s->rid = rid;
                s->pool_id = pool_id;
                pthread_mutex_lock(&t->lock);
                s->next = t->orphans;
                t->orphans = s;
                pthread_mutex_unlock(&t->lock);
                t->norphans++;
                t->cur = fresh;
                *ret_kept = 1;
                return NNG_ETIMEDOUT;
        }
        nng_aio_cancel(s->raio);
        nng_aio_wait(s->raio);
        /* the reply may have come in just before the cancel: then use it */
        rv = take_reply(s, ret_rep);
        return rv == NNG_ECANCELED ? NNG_ETIMEDOUT : rv;
}

int kvc__tp_orphan_reply(struct kvc_transport *t, uint16_t *ret_op, uint32_t *ret_rid, uint32_t *ret_pool,
                         nng_msg **ret_rep)
{
        struct slot **pp, *s = NULL;

        if (t->norphans == 0) /* written under the client's lock, which the caller holds */
                return 0;
        pthread_mutex_lock(&t->lock);
        for (pp = &t->orphans; *pp != NULL; pp = &(*pp)->next) {
                if ((*pp)->done) {
                        s = *pp;
                        *pp = s->next;
                        break;
                }
        }
        pthread_mutex_unlock(&t->lock);
        if (s == NULL)
                return 0;
        t->norphans--;
        *ret_op = s->op;
        *ret_rid = s->rid;
        *ret_pool = s->pool_id;
        *ret_rep = NULL;
        take_reply(s, ret_rep);
        slot_free(s);
        return 1;
}
