/* server.c - kvpoold's serving loop (see server.h).
 *
 * One REP socket, one serving thread.  The thread receives a request, takes
 * the server lock, decodes it, runs it against the session of the message's
 * pipe and the pool, writes the reply into the same nng message (no other
 * allocation per request), releases the lock and sends.  Pipe events (a
 * client connecting or going away) and the metrics HTTP handler run on nng
 * threads and take the same lock.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include "server.h"
#include "session.h"
#include "status.h"
#include "events.h"
#include "metrics.h"
#include "notify.h"
#include "log.h"

#define LOOP_WAKE_MS 200 /* upper bound on noticing a stop request */

struct kvd_server {
        pthread_mutex_t      lock;
        nng_socket           sock;
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
        struct timespec      started;
        /* scratch for one request (serving thread only, under the lock) */
        uint32_t            *ids;       /* [KV_MAX_PAGES_REQ] */
        uint8_t            (*keys)[KV_KEY_LEN]; /* [KV_MAX_KEYS_REQ] */
        uint8_t             *results;   /* [KV_MAX_KEYS_REQ] */
};

static double now_s(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* nng error -> negative errno, in one place. */
static int nng_errno(int rv)
{
        switch (rv) {
        case 0: return 0;
        case NNG_ENOMEM: return -ENOMEM;
        case NNG_EINVAL: return -EINVAL;
        case NNG_EADDRINUSE: return -EADDRINUSE;
        case NNG_EADDRINVAL: return -EINVAL;
        case NNG_EPERM: return -EACCES;
        case NNG_ENOENT: return -ENOENT;
        case NNG_ENOTSUP: return -ENOTSUP;
        case NNG_ECLOSED: return -EBADF;
        case NNG_ETIMEDOUT: return -ETIMEDOUT;
        default: return -EIO;
        }
}

/* ---- accessors ------------------------------------------------------------ */

uint32_t kvd_server_pool_count(const struct kvd_server *s) { return s->num_pools; }
const struct kvd_pool *kvd_server_pool(const struct kvd_server *s, uint32_t i)
{
        return i < s->num_pools ? s->pools[i] : NULL;
}
uint32_t kvd_server_client_count(const struct kvd_server *s) { return kvd_sessions_count(s->sessions); }
const struct kvd_sessions *kvd_server_sessions(const struct kvd_server *s) { return s->sessions; }
const char *kvd_server_socket_url(const struct kvd_server *s) { return s->socket_url; }
const char *kvd_server_events_url(const struct kvd_server *s) { return s->events_url; }
void kvd_server_lock(struct kvd_server *s) { pthread_mutex_lock(&s->lock); }
void kvd_server_unlock(struct kvd_server *s) { pthread_mutex_unlock(&s->lock); }

double kvd_server_uptime(const struct kvd_server *s)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)(ts.tv_sec - s->started.tv_sec) + (double)(ts.tv_nsec - s->started.tv_nsec) * 1e-9;
}

void kvd_server_status_line(const struct kvd_server *s, char *buf, size_t len)
{
        uint64_t used = 0, total = 0;

        for (uint32_t i = 0; i < s->num_pools; i++) {
                struct kvd_pages_stats st;

                kvd_pages_get_stats(s->pools[i]->pages, &st);
                total += st.total;
                used += st.total - st.free - st.cached_idle;
        }
        snprintf(buf, len, "%u pool%s, %llu/%llu pages used, %u client%s", s->num_pools,
                 s->num_pools == 1 ? "" : "s", (unsigned long long)used, (unsigned long long)total,
                 kvd_sessions_count(s->sessions), kvd_sessions_count(s->sessions) == 1 ? "" : "s");
}

/* ---- pressure --------------------------------------------------------------- */

/* The free fraction counts what an alloc can get: free pages and idle cached
 * pages (evictable).  Entering pressure below the low threshold and leaving
 * it above the high one gives hysteresis, so a pool hovering at a threshold
 * does not flood the event stream. */
static void check_pressure(struct kvd_server *s, struct kvd_pool *p)
{
        struct kvd_pages_stats st;
        double                 frac;

        kvd_pages_get_stats(p->pages, &st);
        frac = st.total ? (double)(st.free + st.cached_idle) / (double)st.total : 0.0;
        if (!p->under_pressure && frac < p->pressure_low) {
                p->under_pressure = 1;
                kvd_info("pool %s: under pressure, %.1f%% free (below %.1f%%)", p->name, frac * 100.0,
                         p->pressure_low * 100.0);
                kvd_events_pressure(s->events, p->name, frac, p->pressure_low, 1);
        } else if (p->under_pressure && frac > p->pressure_high) {
                p->under_pressure = 0;
                kvd_info("pool %s: pressure relieved, %.1f%% free (above %.1f%%)", p->name, frac * 100.0,
                         p->pressure_high * 100.0);
                kvd_events_pressure(s->events, p->name, frac, p->pressure_high, 0);
        }
}

/* ---- sessions and pipes ------------------------------------------------------ */

static void fill_peer(struct kvd_session *ss, nng_pipe p)
{
        uint64_t v;

        /* Only ipc pipes know their peer; other transports leave -1. */
        if (nng_pipe_get_uint64(p, NNG_OPT_IPC_PEER_PID, &v) == 0)
                ss->pid = (int64_t)v;
        if (nng_pipe_get_uint64(p, NNG_OPT_IPC_PEER_UID, &v) == 0)
                ss->uid = (int64_t)v;
}

static void drop_session(struct kvd_server *s, struct kvd_session *ss)
{
        uint32_t dropped = 0;

        for (uint32_t i = 0; i < s->num_pools; i++) {
                uint32_t n = kvd_pages_drop_session(s->pools[i]->pages, ss->id);

                if (n) {
                        dropped += n;
                        check_pressure(s, s->pools[i]);
                }
        }
        if (ss->hello || dropped)
                kvd_info("client %s (pid %lld, session %u) disconnected, %u page reference%s released",
                         ss->name[0] ? ss->name : "?", (long long)ss->pid, ss->id, dropped,
                         dropped == 1 ? "" : "s");
}

static void pipe_cb(nng_pipe p, nng_pipe_ev ev, void *arg)
{
        struct kvd_server  *s = arg;
        struct kvd_session *ss = NULL;
        uint32_t            pid = (uint32_t)nng_pipe_id(p);

        pthread_mutex_lock(&s->lock);
        if (s->closing) {
                pthread_mutex_unlock(&s->lock);
                return;
        }
        if (ev == NNG_PIPE_EV_ADD_POST) {
                if (kvd_sessions_add(s->sessions, pid, &ss) == 0) {
                        fill_peer(ss, p);
                        kvd_debug("pipe %u connected (session %u, pid %lld, uid %lld)", pid, ss->id,
                                  (long long)ss->pid, (long long)ss->uid);
                } else {
                        kvd_warn("pipe %u: cannot create a session (out of memory); closing it", pid);
                        nng_pipe_close(p);
                }
        } else if (ev == NNG_PIPE_EV_REM_POST) {
                ss = kvd_sessions_remove(s->sessions, pid);
                if (ss) {
                        drop_session(s, ss);
                        free(ss);
                }
        }
        pthread_mutex_unlock(&s->lock);
}

/* ---- replies ------------------------------------------------------------------ */

/* Request context: the message being answered and what metrics will see. */
struct req {
        nng_msg  *msg;
        uint32_t  rid;
        uint16_t  op;
        uint32_t  code;   /* wire error code, 0 = ok */
        int       ok;     /* a reply was written into msg */
};

/* Makes room for a reply of up to cap bytes in the request's own message. */
static uint8_t *reply_buf(struct req *q, size_t cap)
{
        if (nng_msg_realloc(q->msg, cap) != 0)
                return NULL;
        return nng_msg_body(q->msg);
}

static void reply_len(struct req *q, int n)
{
        if (n < 0) {
                q->ok = 0;
                return;
        }
        nng_msg_realloc(q->msg, (size_t)n); /* shrinking never fails */
        q->ok = 1;
}

static int reply_error(struct req *q, uint32_t code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int reply_error(struct req *q, uint32_t code, const char *fmt, ...)
{
        char     msg[KV_MAX_MSG_LEN + 1];
        uint8_t *b;
        va_list  ap;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        q->code = code;
        b = reply_buf(q, KV_HDR_SIZE + 8u + KV_MAX_MSG_LEN);
        if (b)
                reply_len(q, kv_enc_error(b, KV_HDR_SIZE + 8u + KV_MAX_MSG_LEN, q->rid, code, msg));
        else
                q->ok = 0;
        return 0;
}

static const char *op_name(uint16_t op)
{
        switch (op) {
        case KV_OP_HELLO: return "HELLO";
        case KV_OP_ATTACH: return "ATTACH";
        case KV_OP_ALLOC: return "ALLOC";
        case KV_OP_FREE: return "FREE";
        case KV_OP_STATUS: return "STATUS";
        case KV_OP_BYE: return "BYE";
        case KV_OP_PUBLISH: return "PUBLISH";
        case KV_OP_LOOKUP: return "LOOKUP";
        case KV_OP_METRICS: return "METRICS";
        default: return "request";
        }
}

/* A decoder's refusal, as a reply naming the request and the rule broken. */
static int reply_malformed(struct req *q, int r)
{
        uint32_t    code = (uint32_t)-r;
        const char *why;

        switch (code) {
        case KV_E_PROTO: why = "its length disagrees with its fields or counts"; break;
        case KV_E_TOOBIG: why = "a count or length is above its limit"; break;
        case KV_E_INVAL: why = "a field has a value outside its domain (e.g. a name without NUL)"; break;
        case KV_E_MAGIC: why = "bad magic (not a kvpool message)"; break;
        case KV_E_VERSION: why = "unsupported protocol version"; break;
        case KV_E_OPCODE: why = "unknown opcode"; break;
        default: code = KV_E_PROTO; why = "malformed"; break;
        }
        return reply_error(q, code, "%s: malformed request: %s", op_name(q->op), why);
}

/* Pool of a request: it must exist and the session must have attached it. */
static struct kvd_pool *req_pool(struct kvd_server *s, struct req *q, const struct kvd_session *ss,
                                 uint32_t pool_id)
{
        if (pool_id >= s->num_pools) {
                reply_error(q, KV_E_NOPOOL, "%s: no pool with id %u (the daemon has %u)", op_name(q->op),
                            pool_id, s->num_pools);
                return NULL;
        }
        if (!(ss->attached & (1ull << pool_id))) {
                reply_error(q, KV_E_NOPOOL, "%s: pool %s (id %u) is not attached by this session: ATTACH it first",
                            op_name(q->op), s->pools[pool_id]->name, pool_id);
                return NULL;
        }
        return s->pools[pool_id];
}

static int reply_pages(struct req *q, uint32_t count, const uint32_t *ids)
{
        size_t   n = kv_size_pages(count);
        uint8_t *b = reply_buf(q, n);

        if (!b)
                return reply_error(q, KV_E_INTERNAL, "%s: out of memory for the reply", op_name(q->op));
        reply_len(q, kv_enc_pages(b, n, (uint16_t)(q->op | KV_OP_REPLY), q->rid, 0, count, ids));
        return 0;
}

static int reply_text(struct req *q, char *text)
{
        size_t   len;
        uint8_t *b;

        if (!text)
                return reply_error(q, KV_E_INTERNAL, "%s: out of memory rendering the reply", op_name(q->op));
        len = strlen(text);
        if (len > KV_MAX_STATUS_LEN) {
                free(text);
                return reply_error(q, KV_E_TOOBIG, "%s: the reply (%zu bytes) exceeds the frame limit",
                                   op_name(q->op), len);
        }
        b = reply_buf(q, KV_HDR_SIZE + 4u + len);
        if (!b) {
                free(text);
                return reply_error(q, KV_E_INTERNAL, "%s: out of memory for the reply", op_name(q->op));
        }
        reply_len(q, kv_enc_text(b, KV_HDR_SIZE + 4u + len, (uint16_t)(q->op | KV_OP_REPLY), q->rid, text,
                                 (uint32_t)len));
        free(text);
        return 0;
}

/* ---- requests ---------------------------------------------------------------- */

static int do_hello(struct kvd_server *s, struct req *q, struct kvd_session *ss, const uint8_t *body, size_t len)
{
        static const uint8_t zero[KV_KEY_LEN];
        struct kv_hello_req  m;
        struct kv_hello_rep  rep;
        uint8_t             *b;
        int                  r;

        if ((r = kv_dec_hello_req(body, len, &m)))
                return reply_malformed(q, r);
        if (ss->hello)
                return reply_error(q, KV_E_NOHELLO, "HELLO: this connection already said hello (session %u)", ss->id);
        if (m.proto_version != KV_PROTO_VERSION)
                return reply_error(q, KV_E_VERSION, "HELLO: protocol version %u is not supported (kvpoold speaks %u)",
                                   m.proto_version, KV_PROTO_VERSION);
        ss->hello = 1;
        memcpy(ss->name, m.name, sizeof(ss->name));
        ss->name[KV_NAME_LEN - 1] = 0;
        if (ss->pid < 0) /* no peer credentials (not ipc): trust the hello */
                ss->pid = m.pid;
        memcpy(ss->salt, m.tenant_salt, KV_KEY_LEN);
        ss->tenant = memcmp(ss->salt, zero, KV_KEY_LEN) != 0;
        kvd_info("client %s (pid %lld, uid %lld) connected, session %u%s", ss->name[0] ? ss->name : "?",
                 (long long)ss->pid, (long long)ss->uid, ss->id, ss->tenant ? ", tenant" : "");
        rep.session_id = ss->id;
        rep.num_pools = s->num_pools;
        rep.max_frame = KV_MAX_FRAME;
        if (!(b = reply_buf(q, KV_HDR_SIZE + 16u)))
                return reply_error(q, KV_E_INTERNAL, "HELLO: out of memory");
        reply_len(q, kv_enc_hello_rep(b, KV_HDR_SIZE + 16u, q->rid, &rep));
        return 0;
}

static int do_attach(struct kvd_server *s, struct req *q, struct kvd_session *ss, const uint8_t *body, size_t len)
{
        struct kv_attach_req  m;
        struct kv_attach_rep  rep;
        const struct kvd_pool *p = NULL;
        size_t                n;
        uint8_t              *b;
        int                   r;

        if ((r = kv_dec_attach_req(body, len, &m)))
                return reply_malformed(q, r);
        m.name[KV_NAME_LEN - 1] = 0;
        for (uint32_t i = 0; i < s->num_pools && !p; i++)
                if (strcmp(s->pools[i]->name, m.name) == 0)
                        p = s->pools[i];
        if (!p) {
                char names[256] = "";
                size_t off = 0;

                for (uint32_t i = 0; i < s->num_pools && off < sizeof(names) - 40; i++)
                        off += (size_t)snprintf(names + off, sizeof(names) - off, "%s%s", i ? ", " : "",
                                                s->pools[i]->name);
                return reply_error(q, KV_E_NOPOOL, "ATTACH: no pool named \"%s\" (pools: %s)", m.name, names);
        }
        kvd_pool_describe(p, &rep);
        n = kv_size_attach_rep(p->layout.g.num_layers);
        if (!(b = reply_buf(q, n)))
                return reply_error(q, KV_E_INTERNAL, "ATTACH: out of memory");
        reply_len(q, kv_enc_attach_rep(b, n, q->rid, &rep, p->scales.k, p->scales.v));
        if (q->ok)
                ss->attached |= 1ull << p->id;
        kvd_debug("session %u attached pool %s", ss->id, p->name);
        return 0;
}

static int do_alloc(struct kvd_server *s, struct req *q, struct kvd_session *ss, const uint8_t *body, size_t len)
{
        struct kv_alloc_req m;
        struct kvd_pool    *p;
        int                 r;

        if ((r = kv_dec_alloc_req(body, len, &m)))
                return reply_malformed(q, r);
        if (!(p = req_pool(s, q, ss, m.pool_id)))
                return 0;
        r = kvd_pages_alloc(p->pages, ss->id, m.count, s->ids);
        if (r == -ENOSPC) {
                struct kvd_pages_stats st;

                kvd_pages_get_stats(p->pages, &st);
                return reply_error(q, KV_E_NOSPACE, "pool %s: %u pages requested, %u free (%u cached evictable)",
                                   p->name, m.count, st.free, st.cached_idle);
        }
        if (r < 0)
                return reply_error(q, KV_E_INTERNAL, "ALLOC: pool %s: %s", p->name, strerror(-r));
        reply_pages(q, m.count, s->ids);
        check_pressure(s, p);
        return 0;
}

/* Copies a wire page list into the scratch array; returns the index of the
 * first id out of range, or -1. */
static int64_t load_ids(struct kvd_server *s, const struct kvd_pool *p, const uint8_t *src, uint32_t n,
                        size_t stride)
{
        int64_t bad = -1;

        for (uint32_t i = 0; i < n; i++) {
                s->ids[i] = kv_le32(src + stride * i);
                if (bad < 0 && s->ids[i] >= p->layout.num_pages)
                        bad = i;
        }
        return bad;
}

/* The page table says only "some page is not held": name the first one the
 * caller cannot be holding (nobody holds it, or it is listed more often than
 * it is held).  Ids held by other sessions cannot be told apart from ours
 * without a per-session query, so the message then names the request. */
static int reply_not_held(struct req *q, const struct kvd_pool *p, const uint32_t *ids, uint32_t n,
                          const char *what)
{
        int64_t at = -1;

        for (uint32_t i = 0; i < n && at < 0; i++)
                if (kvd_pages_refcount(p->pages, ids[i]) == 0)
                        at = i;
        /* Quadratic, so only over a bounded prefix (this is an error path). */
        for (uint32_t i = 0; i < n && i < 1024 && at < 0; i++) {
                uint32_t want = 0;

                for (uint32_t j = 0; j <= i; j++)
                        want += ids[j] == ids[i];
                if (kvd_pages_refcount(p->pages, ids[i]) < want)
                        at = i;
        }
        if (at < 0)
                return reply_error(q, KV_E_NOTHELD,
                                   "%s: pool %s: a page of the request (%u pages, the first is %u) is not held by this session; nothing was %s",
                                   op_name(q->op), p->name, n, n ? ids[0] : 0, what);
        return reply_error(q, KV_E_NOTHELD, "%s: page %u of pool %s is not held by this session; nothing was %s",
                           op_name(q->op), ids[at], p->name, what);
}

static int do_free(struct kvd_server *s, struct req *q, struct kvd_session *ss, const uint8_t *body, size_t len)
{
        struct kv_pages m;
        struct kvd_pool *p;
        int64_t          bad;
        int              r;

        if ((r = kv_dec_pages(body, len, KV_OP_FREE, &m)))
                return reply_malformed(q, r);
        if (!(p = req_pool(s, q, ss, m.pool_id)))
                return 0;
        if ((bad = load_ids(s, p, m.ids, m.count, 4)) >= 0)
                return reply_error(q, KV_E_BADPAGE, "FREE: page %u is out of range (pool %s has pages 0..%u)",
                                   s->ids[bad], p->name, p->layout.num_pages - 1);
        r = kvd_pages_release(p->pages, ss->id, m.count, s->ids);
        if (r == -EPERM)
                return reply_not_held(q, p, s->ids, m.count, "freed");
        if (r == -ERANGE)
                return reply_error(q, KV_E_BADPAGE, "FREE: a page id is out of range for pool %s", p->name);
        if (r < 0)
                return reply_error(q, KV_E_INTERNAL, "FREE: pool %s: %s", p->name, strerror(-r));
        reply_pages(q, m.count, s->ids);
        check_pressure(s, p);
        return 0;
}

static int do_publish(struct kvd_server *s, struct req *q, struct kvd_session *ss, const uint8_t *body, size_t len)
{
        struct kv_publish_req m;
        struct kvd_pool      *p;
        int64_t               bad;
        size_t                n;
        uint8_t              *b;
        int                   r;

        if ((r = kv_dec_publish_req(body, len, &m)))
                return reply_malformed(q, r);
        if (!(p = req_pool(s, q, ss, m.pool_id)))
                return 0;
        if ((bad = load_ids(s, p, m.entries, m.count, 4u + KV_KEY_LEN)) >= 0)
                return reply_error(q, KV_E_BADPAGE, "PUBLISH: page %u is out of range (pool %s has pages 0..%u)",
                                   s->ids[bad], p->name, p->layout.num_pages - 1);
        for (uint32_t i = 0; i < m.count; i++)
                memcpy(s->keys[i], m.entries + (4u + KV_KEY_LEN) * i + 4u, KV_KEY_LEN);
        r = kvd_pages_publish(p->pages, ss->id, ss->salt, m.count, s->ids, (const uint8_t (*)[KV_KEY_LEN])s->keys,
                              s->results);
        if (r == -EPERM)
                return reply_not_held(q, p, s->ids, m.count, "published");
        if (r == -ERANGE)
                return reply_error(q, KV_E_BADPAGE, "PUBLISH: a page id is out of range for pool %s", p->name);
        if (r < 0)
                return reply_error(q, KV_E_INTERNAL, "PUBLISH: pool %s: %s", p->name, strerror(-r));
        n = KV_HDR_SIZE + 4u + ((m.count + 3u) & ~3u);
        if (!(b = reply_buf(q, n)))
                return reply_error(q, KV_E_INTERNAL, "PUBLISH: out of memory");
        reply_len(q, kv_enc_publish_rep(b, n, q->rid, m.count, s->results));
        return 0;
}

static int do_lookup(struct kvd_server *s, struct req *q, struct kvd_session *ss, const uint8_t *body, size_t len)
{
        struct kv_lookup_req m;
        struct kvd_pool     *p;
        int                  r;

        if ((r = kv_dec_lookup_req(body, len, &m)))
                return reply_malformed(q, r);
        if (!(p = req_pool(s, q, ss, m.pool_id)))
                return 0;
        /* The keys are read in place: the reply overwrites the message only
         * after the lookup is done. */
        r = kvd_pages_lookup(p->pages, ss->id, ss->salt, m.count, (const uint8_t (*)[KV_KEY_LEN])m.keys, s->ids);
        if (r < 0)
                return reply_error(q, KV_E_INTERNAL, "LOOKUP: pool %s: %s", p->name, strerror(-r));
        reply_pages(q, (uint32_t)r, s->ids);
        if (!q->ok && r > 0) /* the caller will never learn of these pages */
                kvd_pages_release(p->pages, ss->id, (uint32_t)r, s->ids);
        if (r > 0)
                check_pressure(s, p);
        return 0;
}

static void dispatch(struct kvd_server *s, struct req *q)
{
        uint8_t            *buf = nng_msg_body(q->msg);
        size_t              len = nng_msg_len(q->msg);
        nng_pipe            pipe = nng_msg_get_pipe(q->msg);
        struct kvd_session *ss = NULL;
        struct kv_hdr       h;
        uint32_t            flags;
        int                 r;

        q->rid = len >= 12 ? kv_le32(buf + 8) : 0;
        q->op = len >= 8 ? (uint16_t)(buf[6] | buf[7] << 8) : 0;
        if ((r = kv_hdr_decode(buf, len, &h))) {
                if (len < KV_HDR_SIZE)
                        return (void)reply_error(q, KV_E_PROTO, "message of %zu bytes is shorter than the %u-byte header",
                                                 len, KV_HDR_SIZE);
                return (void)reply_malformed(q, r);
        }
        if (h.opcode & KV_OP_REPLY || h.opcode < KV_OP_HELLO || h.opcode > KV_OP_METRICS)
                return (void)reply_error(q, KV_E_OPCODE, "opcode 0x%04x is not a request", h.opcode);
        r = kvd_sessions_add(s->sessions, (uint32_t)nng_pipe_id(pipe), &ss);
        if (r)
                return (void)reply_error(q, r == -ESTALE ? KV_E_SHUTDOWN : KV_E_INTERNAL,
                                         "%s: connection is closing", op_name(h.opcode));
        if (ss->pid < 0 && ss->uid < 0) /* seen before ADD_POST: fill the peer now */
                fill_peer(ss, pipe);
        if (!ss->hello && h.opcode != KV_OP_HELLO && h.opcode != KV_OP_BYE)
                return (void)reply_error(q, KV_E_NOHELLO, "%s: send HELLO first", op_name(h.opcode));

        buf += KV_HDR_SIZE;
        len = h.body_len;
        switch (h.opcode) {
        case KV_OP_HELLO: do_hello(s, q, ss, buf, len); break;
        case KV_OP_ATTACH: do_attach(s, q, ss, buf, len); break;
        case KV_OP_ALLOC: do_alloc(s, q, ss, buf, len); break;
        case KV_OP_FREE: do_free(s, q, ss, buf, len); break;
        case KV_OP_PUBLISH: do_publish(s, q, ss, buf, len); break;
        case KV_OP_LOOKUP: do_lookup(s, q, ss, buf, len); break;
        case KV_OP_STATUS:
        case KV_OP_METRICS:
                if ((r = kv_dec_u32_req(buf, len, &flags)))
                        reply_malformed(q, r);
                else
                        reply_text(q, h.opcode == KV_OP_STATUS ? kvd_status_json(s)
                                                               : kvd_metrics_render(s->metrics, s));
                break;
        case KV_OP_BYE:
                if ((r = kv_dec_empty(buf, len)))
                        return (void)reply_malformed(q, r);
                kvd_debug("session %u said bye", ss->id);
                {
                        uint8_t *b = reply_buf(q, KV_HDR_SIZE);
                        if (b)
                                reply_len(q, kv_enc_empty(b, KV_HDR_SIZE, KV_OP_BYE | KV_OP_REPLY, q->rid));
                }
                break;
        }
}

/* ---- loop -------------------------------------------------------------------- */

static void periodic(struct kvd_server *s)
{
        char line[160];

        kvd_notify_watchdog();
        pthread_mutex_lock(&s->lock);
        kvd_server_status_line(s, line, sizeof(line));
        pthread_mutex_unlock(&s->lock);
        kvd_notify_status(line);
}

int kvd_server_run(struct kvd_server *s, volatile sig_atomic_t *stop)
{
        uint64_t wd_usec = kvd_notify_init();
        int      wake_ms = LOOP_WAKE_MS;
        double   last_periodic = 0.0, period;
        int      rv;

        if (wd_usec && wd_usec / 2000 < (uint64_t)wake_ms)
                wake_ms = wd_usec / 2000 ? (int)(wd_usec / 2000) : 1;
        period = wake_ms / 2000.0;
        if ((rv = nng_socket_set_ms(s->sock, NNG_OPT_RECVTIMEO, wake_ms)))
                return kvd_log_ret(KVD_LOG_ERR, nng_errno(rv), "socket: cannot set a receive timeout: %s",
                                   nng_strerror(rv));
        while (!*stop) {
                struct req q = { 0 };
                double     t0, t1;

                rv = nng_recvmsg(s->sock, &q.msg, 0);
                t0 = now_s();
                if (t0 - last_periodic >= period) {
                        periodic(s);
                        last_periodic = t0;
                }
                if (rv == NNG_ETIMEDOUT)
                        continue;
                if (rv == NNG_ECLOSED)
                        return kvd_log_ret(KVD_LOG_ERR, -EBADF, "socket closed under the serving loop");
                if (rv) {
                        kvd_warn("receive failed: %s", nng_strerror(rv));
                        continue;
                }
                pthread_mutex_lock(&s->lock);
                dispatch(s, &q);
                t1 = now_s();
                kvd_metrics_observe(s->metrics, q.op, q.ok ? q.code : KV_E_INTERNAL, t1 - t0);
                pthread_mutex_unlock(&s->lock);
                if (!q.ok || nng_sendmsg(s->sock, q.msg, 0) != 0)
                        nng_msg_free(q.msg); /* the peer is gone or we ran out of memory */
        }
        return 0;
}

/* ---- start and stop ------------------------------------------------------------ */

/* mkdir -p of the folder holding path. */
static int make_parent(const char *path, char *err, size_t errlen)
{
        char   dir[512];
        char  *slash;

        if (strlen(path) >= sizeof(dir)) {
                snprintf(err, errlen, "socket path %s is too long", path);
                return -ENAMETOOLONG;
        }
        strcpy(dir, path);
        if (!(slash = strrchr(dir, '/')) || slash == dir)
                return 0;
        *slash = 0;
        for (char *c = dir + 1; ; c++) {
                if (*c == '/' || *c == 0) {
                        char keep = *c;

                        *c = 0;
                        if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
                                int e = errno;
                                snprintf(err, errlen, "cannot create the socket folder %s: %s", dir, strerror(e));
                                return -e;
                        }
                        *c = keep;
                        if (!keep)
                                break;
                }
        }
        return 0;
}

static int start_listener(struct kvd_server *s, const struct kvd_server_cfg *cfg, char *err, size_t errlen)
{
        int rv, r;

        if (s->socket_path && (r = make_parent(s->socket_path, err, errlen)))
                return r;
        if ((rv = nng_listener_create(&s->listener, s->sock, s->socket_url))) {
                snprintf(err, errlen, "socket %s: %s", s->socket_url, nng_strerror(rv));
                return nng_errno(rv);
        }
        /* nng's default frame limit is unlimited: a peer announcing 1 GiB
         * would make it allocate 1 GiB.  Refuse such frames up front. */
        if ((rv = nng_listener_set_size(s->listener, NNG_OPT_RECVMAXSZ, KV_MAX_FRAME))) {
                snprintf(err, errlen, "socket %s: cannot limit the frame size: %s", s->socket_url, nng_strerror(rv));
                return nng_errno(rv);
        }
        if (s->socket_path &&
            (rv = nng_listener_set_int(s->listener, NNG_OPT_IPC_PERMISSIONS, cfg->socket_mode ? cfg->socket_mode
                                                                                                : 0600))) {
                snprintf(err, errlen, "socket %s: cannot set permissions: %s", s->socket_url, nng_strerror(rv));
                return nng_errno(rv);
        }
        if ((rv = nng_listener_start(s->listener, 0))) {
                snprintf(err, errlen, "cannot listen on %s: %s%s", s->socket_url, nng_strerror(rv),
                         rv == NNG_EADDRINUSE ? " (another kvpoold is running there?)" : "");
                return nng_errno(rv);
        }
        s->listening = 1;
        if (s->socket_path && cfg->has_group && chown(s->socket_path, (uid_t)-1, cfg->group) != 0) {
                int e = errno;
                snprintf(err, errlen, "cannot give socket %s to group %u: %s", s->socket_path,
                         (unsigned)cfg->group, strerror(e));
                return -e;
        }
        return 0;
}

/* The event socket gets the request socket's mode and group, so that the
 * members of the group who may send requests may also subscribe (nng creates
 * it with the process umask). */
static int secure_events_socket(struct kvd_server *s, const struct kvd_server_cfg *cfg, char *err, size_t errlen)
{
        const char *path;
        mode_t      mode = (mode_t)(cfg->socket_mode ? cfg->socket_mode : 0600);

        if (!s->events_url || strncmp(s->events_url, "ipc://", 6) != 0)
                return 0;
        path = s->events_url + 6;
        if (chmod(path, mode) != 0 || (cfg->has_group && chown(path, (uid_t)-1, cfg->group) != 0)) {
                int e = errno;
                snprintf(err, errlen, "cannot set mode %04o%s on the event socket %s: %s", (unsigned)mode,
                         cfg->has_group ? " and group" : "", path, strerror(e));
                return -e;
        }
        return 0;
}

int kvd_server_new(const struct kvd_server_cfg *cfg, struct kvd_pool **pools, uint32_t num_pools,
                   struct kvd_server **ret, char *err, size_t errlen)
{
        struct kvd_server *s;
        int                rv, r = -ENOMEM;

        if (!cfg || !cfg->socket_url || num_pools > 64 || (num_pools && !pools)) {
                snprintf(err, errlen, "invalid server configuration");
                return -EINVAL;
        }
        if (!(s = calloc(1, sizeof(*s))))
                goto oom;
        pthread_mutex_init(&s->lock, NULL);
        clock_gettime(CLOCK_MONOTONIC, &s->started);
        s->socket_url = strdup(cfg->socket_url);
        s->events_url = cfg->events_url ? strdup(cfg->events_url) : NULL;
        s->pools = calloc(num_pools ? num_pools : 1, sizeof(*s->pools));
        s->ids = malloc(KV_MAX_PAGES_REQ * sizeof(*s->ids));
        s->keys = malloc(KV_MAX_KEYS_REQ * sizeof(*s->keys));
        s->results = malloc(KV_MAX_KEYS_REQ);
        if (!s->socket_url || (cfg->events_url && !s->events_url) || !s->pools || !s->ids || !s->keys ||
            !s->results || kvd_sessions_new(&s->sessions) || kvd_metrics_new(&s->metrics))
                goto oom;
        if (strncmp(cfg->socket_url, "ipc://", 6) == 0 && !(s->socket_path = strdup(cfg->socket_url + 6)))
                goto oom;
        /* Pools are attached only on success; until then they stay the caller's. */
        s->num_pools = 0;

        if ((rv = nng_rep0_open(&s->sock))) {
                snprintf(err, errlen, "cannot open the REP socket: %s", nng_strerror(rv));
                r = nng_errno(rv);
                goto fail;
        }
        s->sock_open = 1;
        nng_socket_set_size(s->sock, NNG_OPT_RECVMAXSZ, KV_MAX_FRAME);
        if ((rv = nng_pipe_notify(s->sock, NNG_PIPE_EV_ADD_POST, pipe_cb, s)) ||
            (rv = nng_pipe_notify(s->sock, NNG_PIPE_EV_REM_POST, pipe_cb, s))) {
                snprintf(err, errlen, "cannot watch connections: %s", nng_strerror(rv));
                r = nng_errno(rv);
                goto fail;
        }
        /* The pipe callbacks read the pool list: publish it before listening. */
        pthread_mutex_lock(&s->lock);
        memcpy(s->pools, pools, num_pools * sizeof(*pools));
        s->num_pools = num_pools;
        pthread_mutex_unlock(&s->lock);
        if ((r = start_listener(s, cfg, err, errlen)))
                goto fail;
        if ((r = kvd_events_open(s->events_url, &s->events, err, errlen)))
                goto fail;
        for (uint32_t i = 0; i < num_pools; i++)
                pools[i]->events = s->events;
        if ((r = secure_events_socket(s, cfg, err, errlen)))
                goto fail;
        if (cfg->metrics_addr && *cfg->metrics_addr) {
                if ((r = kvd_metrics_http_start(s->metrics, s, cfg->metrics_addr, err, errlen)))
                        goto fail;
                s->metrics_http = 1;
        }
        kvd_info("listening on %s (mode %04o%s), events %s, metrics %s", s->socket_url,
                 (unsigned)(cfg->socket_mode ? cfg->socket_mode : 0600), cfg->has_group ? " with group" : "",
                 s->events_url ? s->events_url : "off",
                 cfg->metrics_addr && *cfg->metrics_addr ? cfg->metrics_addr : "off");
        *ret = s;
        return 0;
oom:
        snprintf(err, errlen, "out of memory starting the server");
        r = -ENOMEM;
fail:
        if (s) {
                /* Give the pools back untouched: detach them before freeing. */
                pthread_mutex_lock(&s->lock);
                s->closing = 1;
                pthread_mutex_unlock(&s->lock);
                for (uint32_t i = 0; i < s->num_pools; i++)
                        s->pools[i]->events = NULL;
                s->num_pools = 0;
                kvd_server_free(s);
        }
        return r;
}

void kvd_server_free(struct kvd_server *s)
{
        if (!s)
                return;
        if (s->metrics_http)
                kvd_metrics_http_stop(s->metrics);
        if (s->sock_open) {
                /* Closing the socket closes every pipe; their REM_POST
                 * callbacks still see the pools and drop the sessions' pages. */
                if (s->listening)
                        nng_listener_close(s->listener);
                nng_close(s->sock);
        }
        pthread_mutex_lock(&s->lock);
        s->closing = 1;
        pthread_mutex_unlock(&s->lock);
        for (uint32_t i = 0; i < s->num_pools; i++)
                s->pools[i]->events = NULL;
        kvd_events_close(s->events);
        for (uint32_t i = 0; i < s->num_pools; i++)
                kvd_pool_free(s->pools[i]);
        /* nng removes the ipc file when the listener closes; make sure, but
         * only for a socket this daemon actually listened on. */
        if (s->listening && s->socket_path && unlink(s->socket_path) != 0 && errno != ENOENT)
                kvd_warn("cannot remove socket %s: %s", s->socket_path, strerror(errno));
        kvd_sessions_free(s->sessions);
        kvd_metrics_free(s->metrics);
        pthread_mutex_destroy(&s->lock);
        free(s->ids);
        free(s->keys);
        free(s->results);
        free(s->pools);
        free(s->socket_url);
        free(s->socket_path);
        free(s->events_url);
        free(s);
}
