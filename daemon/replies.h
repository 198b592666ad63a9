/* replies.h - kvpoold's request intake and reply path: REP contexts whose
 * replies go out without the serving loop waiting for them.
 *
 * A REP socket sends a connection's replies in order, one at a time: a reply
 * to a connection whose previous reply is still unsent (its peer is not
 * reading, or reads slowly) waits.  Sent from the serving loop, that wait
 * held every other client up.  Here each request is received on an nng
 * context of its own and its reply is sent from that context
 * asynchronously: the loop goes on at once, and only that context stays
 * busy until the reply is on its way.  A connection that lets replies pile
 * up is doomed: when KVD_REPLY_PER_PIPE of its replies wait at once, when
 * one has waited send_wait_ms, when every context is busy and it holds the
 * most of them, or when its next reply would take the replies in flight
 * past KVD_REPLY_BYTES while one of its own waits (STATUS replies run to
 * hundreds of kilobytes).  The serving loop closes it on its next round,
 * after a pause of KVD_REPLY_PARK_MS (its session ends and its pages are
 * released, as for any connection that goes away; replies.c says why the
 * pause); its requests that come in before get no reply.
 *
 * One thread (the serving loop) calls kvd_replies_recv, _send and _drop;
 * the send completions run on nng's threads.  Internal to the daemon. */
#ifndef KVD_REPLIES_H
#define KVD_REPLIES_H

#include <stdint.h>
#include <nng/nng.h>

#define KVD_REPLY_SLOTS    1024 /* contexts at most (made as needed) */
#define KVD_REPLY_PER_PIPE 32   /* replies of one connection waiting at once, at most (libkvclient
                                 * may have 17 outstanding: 16 timed-out requests and one) */
#define KVD_REPLY_BYTES (64u << 20) /* bytes of replies in flight beyond which a connection
                                     * with one waiting already is doomed by the next */
#define KVD_REPLY_PARK_MS  10       /* the pause before doomed connections are closed (replies.c) */

struct kvd_replies;
struct kvd_reply_slot;

/* Makes the reply path of the open REP socket sock; a reply that cannot be
 * sent within send_wait_ms (>= 1) dooms its connection.  Returns 0 and
 * *ret, or -ENOMEM / -EINVAL (*ret untouched). */
int kvd_replies_new(nng_socket sock, int send_wait_ms, struct kvd_replies **ret);

/* Waits up to wait_ms for the next request.  Returns 0 with the request in
 * *ret_msg (the caller's, to answer with kvd_replies_send or give back with
 * kvd_replies_drop) and its context in *ret_slot; -ETIMEDOUT when none came;
 * -EBADF when the socket is closed; another negative errno on a failed
 * receive (logged).  Out-params untouched on failure. */
int kvd_replies_recv(struct kvd_replies *r, int wait_ms, nng_msg **ret_msg, struct kvd_reply_slot **ret_slot);

/* Sends msg (taken) as the reply of the request received on slot, without
 * waiting; the slot is free again once the reply has gone out or failed. */
void kvd_replies_send(struct kvd_replies *r, struct kvd_reply_slot *slot, nng_msg *msg);

/* Gives slot back without a reply (its peer times out). */
void kvd_replies_drop(struct kvd_replies *r, struct kvd_reply_slot *slot);

/* Frees r once its socket is closed (every send has completed).  NULL is
 * a no-op. */
void kvd_replies_free(struct kvd_replies *r);

#endif
