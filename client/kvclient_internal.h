/* kvclient_internal.h - libkvclient's private structures, shared by
 * kvclient.c (control path) and datapath.c (kernel dispatch).  Not installed.
 */
#ifndef KVCLIENT_INTERNAL_H
#define KVCLIENT_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/types.h>
#include <unistd.h>

#include <nng/nng.h>

#include "kvclient.h"
#include "kv_layout.h"
#include "kv_proto.h"

struct kvc_mapping; /* process-wide registry entry (kvclient.c) */

struct kvc_pool {
        struct kvc_client   *c;
        struct kvc_pool     *next;     /* the client's list of attached pools */
        unsigned             attaches; /* kvc_attach calls minus kvc_detach calls */
        struct kvc_mapping  *map;      /* shared with other clients of this process */
        struct kvc_pool_desc desc;     /* what kvc_pool_get_desc returns */
        struct kv_layout     layout;   /* the same figures, as the kernels want them */
        float               *scales;   /* [2*num_layers]: k then v, owned */
};

struct kvc_transport; /* transport.c */

struct kvc_client {
        nng_socket            sock;
        struct kvc_transport *tp;    /* requests and replies over sock (transport.c) */
        pthread_mutex_t       lock;  /* one request in flight; guards the fields below */
        uint32_t         next_rid;
        uint64_t         session_id;
        uint64_t         serial;     /* unique per client in this process (errmsg slots) */
        int              timeout_ms; /* replies' timeout ($KVPOOL_TIMEOUT_MS) */
        int              stale;      /* the daemon forgot this session: every call -ESTALE */
        pid_t            pid;        /* the process that connected (fork: kvc__forked) */
        struct kvc_pool *pools;
        char             url[256];
        char             name[32];
};

/* Records the calling thread's error message for c (c may be NULL: a connect
 * failure, read back with kvc_errmsg(NULL)) and returns err unchanged, so a
 * failure is reported and returned in one step. */
int kvc__fail(const struct kvc_client *c, int err, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

/* "kvpoold restarted: ..." - the message of every -ESTALE. */
extern const char kvc__stale_msg[];

/* Allocates a request message of cap bytes for a kv_enc_* encoder to fill
 * (trim it to the encoded length with nng_msg_chop). */
int kvc__req_new(struct kvc_client *c, size_t cap, nng_msg **ret);

/* First FREEs the pages of late ALLOC/LOOKUP replies that came in since the
 * last call (see transport.c), then sends req (encoded with request id 0;
 * consumed in every case), waits for the reply and checks it: same request id, opcode op|REPLY.  An ERROR reply
 * becomes its errno with the daemon's message; KV_E_NOHELLO (the daemon
 * restarted and forgot the session) marks the client stale: -ESTALE.  On
 * success *ret_rep owns the reply and body/len point after its header.
 * Caller holds c->lock. */
int kvc__call(struct kvc_client *c, nng_msg *req, uint16_t op, const char *what,
              nng_msg **ret_rep, const uint8_t **ret_body, size_t *ret_len);

/* kvc__call for a request that a kv_enc_* encoder has just filled in req: enc
 * is the encoder's return value (the encoded length, or a negative errno).
 * req is trimmed to enc bytes and sent; an encoder failure frees req and
 * gives -EPROTO "<what>: cannot encode the request".  Otherwise the same
 * returns and ownership as kvc__call.  Caller holds c->lock. */
int kvc__send(struct kvc_client *c, nng_msg *req, int enc, uint16_t op, const char *what,
              nng_msg **ret_rep, const uint8_t **ret_body, size_t *ret_len);

/* The requests whose reply hands pages to the session: a late reply of one
 * of these is waited for and its pages given back (transport.c). */
static inline int kvc__hands_out_pages(uint16_t op)
{
        return op == KV_OP_ALLOC || op == KV_OP_LOOKUP;
}

/* ---- transport.c: the exchange with kvpoold (see its header comment) ---- */

/* Sets up requests over sock (a REQ socket, dialed or not) with replies
 * waited for timeout_ms: 0 or an nng error. */
int kvc__tp_open(nng_socket sock, int timeout_ms, struct kvc_transport **ret);
/* Stops every posted receive and frees t (NULL: nothing); before nng_close. */
void kvc__tp_close(struct kvc_transport *t);
void kvc__tp_set_timeout(struct kvc_transport *t, int timeout_ms);
/* Sends req (consumed) and waits for its reply: 0 with *ret_rep, or an nng
 * error (NNG_ETIMEDOUT when no reply came in time: the send and the reply
 * share one timeout); *ret_sent says whether
 * the request went out.  A timed-out ALLOC or LOOKUP (op) keeps waiting for
 * its reply in the background, remembered with rid and pool_id (*ret_kept
 * 1), unless 16 already wait (then it is cancelled like any other).  Caller
 * holds the client's lock. */
int kvc__tp_exchange(struct kvc_transport *t, nng_msg *req, uint16_t op, uint32_t rid, uint32_t pool_id,
                     nng_msg **ret_rep, int *ret_sent, int *ret_kept);
/* One timed-out ALLOC or LOOKUP whose wait has ended: 1 with its opcode,
 * request id, pool and reply (*ret_rep NULL if it ended without one, e.g.
 * the connection closed; else the caller frees it), 0 if none has.  Caller
 * holds the client's lock. */
int kvc__tp_orphan_reply(struct kvc_transport *t, uint16_t *ret_op, uint32_t *ret_rid, uint32_t *ret_pool,
                         nng_msg **ret_rep);

/* 1 when the calling process is not the one that connected c: a forked
 * child, where nng has no threads (a call would wait forever) and aborts
 * the process on its next initialisation.  Checked before c->lock, which
 * another of the parent's threads may have held at the fork. */
static inline int kvc__forked(const struct kvc_client *c)
{
        return c->pid != getpid();
}

/* -ECHILD with its message: the public calls' answer in a forked child. */
int kvc__fail_forked(const struct kvc_client *c, const char *what);

/* Drops a pool handle's mapping reference and frees it (attach.c). */
void kvc__pool_free(struct kvc_pool *p);

/* 1 when the client was marked stale (read without the lock: data-path calls
 * check it without serializing on the control mutex). */
static inline int kvc__is_stale(const struct kvc_client *c)
{
        return __atomic_load_n(&c->stale, __ATOMIC_ACQUIRE);
}

#endif
