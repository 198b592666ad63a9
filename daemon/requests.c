/* requests.c - kvpoold's request handlers: decode, check, run against the
 * session and the pool, encode the reply into the request's own message.
 * Called by the serving loop under the server lock (see server_int.h). */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "server_int.h"
#include "events.h"
#include "status.h"
#include "metrics.h"
#include "log.h"

/* ---- replies ------------------------------------------------------------------ */

/* Makes room for a reply of up to cap bytes in the request's own message. */
static uint8_t *reply_buf(struct kvd_req *q, size_t cap)
{
        if (nng_msg_realloc(q->msg, cap) != 0)
                return NULL;
        return nng_msg_body(q->msg);
}

static void reply_len(struct kvd_req *q, int n)
{
        if (n < 0) {
                q->ok = 0;
                return;
        }
        nng_msg_realloc(q->msg, (size_t)n); /* shrinking never fails */
        q->ok = 1;
}

static int reply_error(struct kvd_req *q, uint32_t code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int reply_error(struct kvd_req *q, uint32_t code, const char *fmt, ...)
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
        case KV_OP_RESET: return "RESET";
        default: return "request";
        }
}

/* A decoder's refusal, as a reply naming the request and the rule broken. */
static int reply_malformed(struct kvd_req *q, int r)
{
        uint32_t    code = (uint32_t)-r;
        const char *why;

        switch (code) {
        case KV_E_PROTO: why = "its length disagrees with its fields or counts"; break;
        case KV_E_TOOBIG: why = "a count or length is above its limit"; break;
        case KV_E_INVAL: why = "a field has a value outside its domain (a count of 0, a name without NUL)"; break;
        case KV_E_MAGIC: why = "bad magic (not a kvpool message)"; break;
        case KV_E_VERSION: why = "unsupported protocol version"; break;
        case KV_E_OPCODE: why = "unknown opcode"; break;
        default: code = KV_E_PROTO; why = "malformed"; break;
        }
        return reply_error(q, code, "%s: malformed request: %s", op_name(q->op), why);
}

/* Pool of a request: it must exist and the session must have attached it. */
static struct kvd_pool *req_pool(struct kvd_server *s, struct kvd_req *q, const struct kvd_session *ss,
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

static int reply_pages(struct kvd_req *q, uint32_t count, const uint32_t *ids)
{
        size_t   n = kv_size_pages(count);
        uint8_t *b = reply_buf(q, n);

        if (!b)
                return reply_error(q, KV_E_INTERNAL, "%s: out of memory for the reply", op_name(q->op));
        reply_len(q, kv_enc_pages(b, n, (uint16_t)(q->op | KV_OP_REPLY), q->rid, 0, count, ids));
        return 0;
}

static int reply_text(struct kvd_req *q, char *text)
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

static int do_hello(struct kvd_server *s, struct kvd_req *q, struct kvd_session *ss, const uint8_t *body, size_t len)
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
        /* The name goes into logs and the STATUS JSON: printable ASCII only,
         * so that a client cannot inject lines or invalid UTF-8. */
        for (char *c = ss->name; *c; c++)
                if ((unsigned char)*c < 0x20 || (unsigned char)*c > 0x7e)
                        *c = '?';
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

/* The pool a request body of one pool name (ATTACH, RESET) names, or NULL
 * with the error reply made (a malformed body, or no such pool: the message
 * lists the pools).  With ret_group, the name of a spec that expanded into
 * several pools (tp_size, devices: their group) also matches: *ret_group
 * then says so and the first of its pools is returned. */
static struct kvd_pool *named_pool(struct kvd_server *s, struct kvd_req *q, const uint8_t *body, size_t len,
                                   int *ret_group)
{
        struct kv_attach_req m;
        int                  r;

        if ((r = kv_dec_attach_req(body, len, &m))) {
                reply_malformed(q, r);
                return NULL;
        }
        m.name[KV_NAME_LEN - 1] = 0;
        for (uint32_t i = 0; i < s->num_pools; i++)
                if (strcmp(s->pools[i]->name, m.name) == 0)
                        return s->pools[i];
        for (uint32_t i = 0; ret_group && i < s->num_pools; i++)
                if (strcmp(s->pools[i]->group, m.name) == 0) { /* the exact names are above */
                        *ret_group = 1;
                        return s->pools[i];
                }
        char names[256] = "";
        size_t off = 0;

        for (uint32_t i = 0; i < s->num_pools && off < sizeof(names) - 40; i++)
                off += (size_t)snprintf(names + off, sizeof(names) - off, "%s%s", i ? ", " : "", s->pools[i]->name);
        reply_error(q, KV_E_NOPOOL, "%s: no pool named \"%s\" (pools: %s)", op_name(q->op), m.name, names);
        return NULL;
}

static int do_attach(struct kvd_server *s, struct kvd_req *q, struct kvd_session *ss, const uint8_t *body, size_t len)
{
        struct kv_attach_rep  rep;
        const struct kvd_pool *p;
        size_t                n;
        uint8_t              *b;

        if (!(p = named_pool(s, q, body, len, NULL)))
                return 0;
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

/* RESET: the prefix keys of the pool go (kvd_pages_reset_keys): a tenant's
 * session drops its tenant's, any other session every tenant's; held pages
 * stay held.  A group's name (a spec expanded over tp_size or devices)
 * resets each of its pools.  One RESET event a pool and a log line say so. */
static int do_reset(struct kvd_server *s, struct kvd_req *q, struct kvd_session *ss, const uint8_t *body, size_t len)
{
        struct kvd_pool *p;
        uint8_t         *b;
        int              group = 0;
        uint64_t         n = 0; /* a group's pools together may pass 2^32 - 1 keys */

        if (!(p = named_pool(s, q, body, len, &group)))
                return 0;
        if (!(b = reply_buf(q, KV_HDR_SIZE + 4u)))
                return reply_error(q, KV_E_INTERNAL, "RESET: out of memory for the reply");
        for (uint32_t i = 0; i < s->num_pools; i++) {
                struct kvd_pool *x = s->pools[i];
                if (group ? strcmp(x->group, p->group) != 0 : x != p)
                        continue;
                uint32_t k = kvd_pages_reset_keys(x->pages, ss->tenant ? ss->salt : NULL);
                n += k;
                kvd_info("pool %s: prefix cache reset by client %s (session %u): %u %skeys dropped", x->name,
                         ss->name[0] ? ss->name : "?", ss->id, k, ss->tenant ? "of its tenant's " : "");
                /* no pressure check: idle cached pages already counted as free */
                kvd_events_reset(s->events, x->name, k);
        }
        reply_len(q, kv_enc_u32_req(b, KV_HDR_SIZE + 4u, KV_OP_RESET | KV_OP_REPLY, q->rid,
                                    n > UINT32_MAX ? UINT32_MAX : (uint32_t)n));
        return 0;
}

static int do_alloc(struct kvd_server *s, struct kvd_req *q, struct kvd_session *ss, const uint8_t *body, size_t len)
{
        struct kv_alloc_req m;
        struct kvd_pool    *p;
        int                 r;

        if ((r = kv_dec_alloc_req(body, len, &m)))
                return reply_malformed(q, r);
        if (!(p = req_pool(s, q, ss, m.pool_id)))
                return 0;
        /* The reply's room first: once pages are taken (and cached pages
         * perhaps evicted for them) the reply must not fail.  reply_pages
         * below then only shrinks the message to the same size. */
        if (!reply_buf(q, kv_size_pages(m.count)))
                return reply_error(q, KV_E_INTERNAL, "ALLOC: out of memory for the reply");
        r = kvd_pages_alloc(p->pages, ss->id, m.count, s->ids);
        if (r == -ENOSPC) {
                struct kvd_pages_stats st;

                kvd_pages_get_stats(p->pages, &st);
                return reply_error(q, KV_E_NOSPACE, "pool %s: %u pages requested, %u free (%u cached evictable)",
                                   p->name, m.count, st.free, st.cached_idle);
        }
        if (r == -EOVERFLOW)
                return reply_error(q, KV_E_TOOBIG, "ALLOC: pool %s: this session's references would exceed 2^32 - 1",
                                   p->name);
        if (r < 0)
                return reply_error(q, KV_E_INTERNAL, "ALLOC: pool %s: %s", p->name, strerror(-r));
        reply_pages(q, m.count, s->ids);
        kvd_server_check_pressure(s, p);
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
static int reply_not_held(struct kvd_req *q, const struct kvd_pool *p, const uint32_t *ids, uint32_t n,
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

static int do_free(struct kvd_server *s, struct kvd_req *q, struct kvd_session *ss, const uint8_t *body, size_t len)
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
        /* the reply's room before the pages go back, so that an error
         * reply still means nothing changed (the request's bytes are no
         * longer needed: the ids are in s->ids) */
        if (!reply_buf(q, kv_size_pages(m.count)))
                return reply_error(q, KV_E_INTERNAL, "FREE: out of memory for the reply; nothing was freed");
        r = kvd_pages_release(p->pages, ss->id, m.count, s->ids);
        if (r == -EPERM)
                return reply_not_held(q, p, s->ids, m.count, "freed");
        if (r == -ERANGE)
                return reply_error(q, KV_E_BADPAGE, "FREE: a page id is out of range for pool %s", p->name);
        if (r < 0)
                return reply_error(q, KV_E_INTERNAL, "FREE: pool %s: %s", p->name, strerror(-r));
        reply_pages(q, m.count, s->ids);
        kvd_server_check_pressure(s, p);
        return 0;
}

static int do_publish(struct kvd_server *s, struct kvd_req *q, struct kvd_session *ss, const uint8_t *body, size_t len)
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
        /* the reply's room before anything is published (as FREE) */
        n = kv_size_publish_rep(m.count);
        if (!reply_buf(q, n))
                return reply_error(q, KV_E_INTERNAL, "PUBLISH: out of memory for the reply; nothing was published");
        r = kvd_pages_publish(p->pages, ss->id, ss->salt, m.count, s->ids, (const uint8_t (*)[KV_KEY_LEN])s->keys,
                              s->results);
        if (r == -EPERM)
                return reply_not_held(q, p, s->ids, m.count, "published");
        if (r == -ERANGE)
                return reply_error(q, KV_E_BADPAGE, "PUBLISH: a page id is out of range for pool %s", p->name);
        if (r < 0)
                return reply_error(q, KV_E_INTERNAL, "PUBLISH: pool %s: %s", p->name, strerror(-r));
        b = reply_buf(q, n); /* the size reserved above: no allocation */
        reply_len(q, b ? kv_enc_publish_rep(b, n, q->rid, m.count, s->results) : -1);
        return 0;
}

static int do_lookup(struct kvd_server *s, struct kvd_req *q, struct kvd_session *ss, const uint8_t *body, size_t len)
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
        if (r == -EOVERFLOW)
                return reply_error(q, KV_E_TOOBIG,
                                   "LOOKUP: pool %s: a page's or this session's references would exceed 2^32 - 1",
                                   p->name);
        if (r < 0)
                return reply_error(q, KV_E_INTERNAL, "LOOKUP: pool %s: %s", p->name, strerror(-r));
        reply_pages(q, (uint32_t)r, s->ids);
        /* The reply (20 + 4 r bytes) is never larger than the request (24 +
         * 16 n), so with nng its realloc only shrinks and cannot fail; should
         * it fail, the caller would never learn of these pages: give them
         * back (tests/daemon/test_core forces that failure). */
        if ((!q->ok || q->code) && r > 0)
                kvd_pages_release(p->pages, ss->id, (uint32_t)r, s->ids);
        if (r > 0)
                kvd_server_check_pressure(s, p);
        return 0;
}

/* Whether nng has forgotten pipe p, i.e. its removal ran (any pipe option
 * would do: nng looks the pipe up before the option; a pipe whose
 * transport lacks this one answers NNG_ENOTSUP and counts as known). */
static bool pipe_gone(nng_pipe p)
{
        nng_sockaddr sa;

        return nng_pipe_get_addr(p, NNG_OPT_LOCADDR, &sa) == NNG_ENOENT;
}

void kvd_requests_dispatch(struct kvd_server *s, struct kvd_req *q)
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
        if (h.opcode & KV_OP_REPLY || h.opcode < KV_OP_HELLO || h.opcode > KV_OP_LAST)
                return (void)reply_error(q, KV_E_OPCODE, "opcode 0x%04x is not a request", h.opcode);
        /* A request whose connection nng no longer knows was queued before
         * the close, and the close's removal (pipe_cb, REM_POST) has run:
         * nng forgets a pipe's id right after that callback.  The ring of
         * recently closed pipes in kvd_sessions_add covers the moment in
         * between; this covers a request that waited longer than that
         * ring's 256 closes.  Either way no session may be made that no
         * close will ever end (its pages would be held for good). */
        ss = kvd_sessions_find(s->sessions, (uint32_t)nng_pipe_id(pipe));
        r = ss ? 0 : pipe_gone(pipe) ? -ESTALE : kvd_sessions_add(s->sessions, (uint32_t)nng_pipe_id(pipe), &ss);
        if (r == -ESTALE)
                return (void)reply_error(q, KV_E_SHUTDOWN, "%s: connection is closing", op_name(h.opcode));
        if (r)
                return (void)reply_error(q, KV_E_INTERNAL, "%s: cannot record the session: %s",
                                         op_name(h.opcode), strerror(-r));
        if (ss->pid < 0 && ss->uid < 0) /* seen before ADD_POST: fill the peer now */
                kvd_server_fill_peer(ss, pipe);
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
        case KV_OP_RESET: do_reset(s, q, ss, buf, len); break;
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
