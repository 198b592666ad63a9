/* server_int.h - what the serving loop (server.c) and the request handlers
 * (requests.c) share.  Internal to the daemon core. */
#ifndef KVD_SERVER_INT_H
#define KVD_SERVER_INT_H

#include <pthread.h>
#include <time.h>
#include <nng/nng.h>
#include "listen_guard.h"
#include "reaper.h"
#include "replies.h"
#include "server.h"
#include "session.h"
#include "ticker.h"

struct kvd_server {
        pthread_mutex_t      lock;
        nng_socket           sock;
        struct kvd_replies  *replies;  /* REP contexts, replies sent without waiting (replies.c) */
        nng_listener         listener;
        int                  sock_open;
        int                  listening;
        int                  closing;     /* set under the lock before pools go */
        char                *socket_url;
        char                *socket_path; /* ipc:// file, else NULL */
        char                *events_url;
        struct kvd_pool    **pools;
        uint32_t             num_pools;
        struct kvd_sessions *sessions;
        struct kvd_events   *events;
        struct kvd_metrics  *metrics;
        int                  metrics_http;
        int                  close_wait_ms; /* see close_bounded (server.c) */
        struct kvd_guard     guard;         /* listen_guard.c */
        struct kvd_reaper    reaper;        /* reaper.c */
        int                  reap_told;     /* the reaper has reported nng's stuck teardown (under lock) */
        struct timespec      started;
        /* scratch for one request (serving thread only, under the lock) */
        uint32_t            *ids;       /* [KV_MAX_PAGES_REQ] */
        uint8_t            (*keys)[KV_KEY_LEN]; /* [KV_MAX_KEYS_REQ] */
        uint8_t             *results;   /* [KV_MAX_KEYS_REQ] */
};

/* Request context: the message being answered and what metrics will see. */
struct kvd_req {
        nng_msg  *msg;
        uint32_t  rid;
        uint16_t  op;
        uint32_t  code;   /* wire error code, 0 = ok */
        int       ok;     /* a reply was written into msg */
};

/* Decodes the request in q->msg, runs it for the session of its pipe and
 * writes the reply (or a KV_OP_ERROR) into the same message.  Caller holds
 * the server lock. */
void kvd_requests_dispatch(struct kvd_server *s, struct kvd_req *q);

/* Announces pressure crossings of pool p's free fraction (server.c). */
void kvd_server_check_pressure(struct kvd_server *s, struct kvd_pool *p);
/* Fills the peer pid/uid of a session from its ipc pipe (server.c). */
void kvd_server_fill_peer(struct kvd_session *ss, nng_pipe p);
/* Releases every page reference of session ss (removed from the table by
 * the caller, who frees it) and logs the disconnect.  Caller holds the
 * server lock (server.c). */
void kvd_server_drop_session(struct kvd_server *s, struct kvd_session *ss);


#endif
