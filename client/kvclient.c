/* kvclient.c - libkvclient's control path: connection, requests and replies,
 * per-thread error messages, alloc/free, publish/lookup, status and metrics.
 *
 * Pools and mappings live in attach.c; the data path (write, gather,
 * attention) in datapath.c, which only reads the immutable parts of a
 * kvc_pool that kvc_attach() filled in.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

#include "kv_proto.h"
#include "kvclient_internal.h"

#define DEFAULT_TIMEOUT_MS 10000
#define BYE_TIMEOUT_MS     1000
#define MSG_CAP            (KV_MAX_MSG_LEN + 160)

/* ---- per-thread error messages -------------------------------------------
 * kvc_errmsg() is per calling thread and per client.  A small thread-local
 * table keyed by (client pointer, client serial) does that without a lock;
 * the serial tells a freed client from a new one at the same address.  Free
 * slots go first; once all ERR_SLOTS are taken they are reused round robin,
 * so a thread that fails on more than ERR_SLOTS clients (kvc_connect
 * counting as one) gets "" for a client whose slot went to another, and a
 * string kvc_errmsg returned for it before now holds the other's message
 * (kvclient.h states the limit). */
#define ERR_SLOTS 8
struct errslot {
        int         used;   /* an all-zero slot is free, not kvc_connect's (NULL, 0) */
        const void *c;
        uint64_t    serial;
        char        msg[MSG_CAP];
};
static __thread struct errslot errslots[ERR_SLOTS];
static __thread unsigned       errnext;
static uint64_t                serial_counter;
/* The process whose kvc_connect started nng (0: none yet).  A forked child
 * inherits it, and nng aborts the process when the child initialises it
 * again ("nng is not fork-reentrant safe"). */
static pid_t                   nng_pid;

static uint64_t serial_of(const struct kvc_client *c)
{
        return c ? c->serial : 0;
}

static struct errslot *errslot_find(const struct kvc_client *c)
{
        for (unsigned i = 0; i < ERR_SLOTS; i++)
                if (errslots[i].used && errslots[i].c == c && errslots[i].serial == serial_of(c))
                        return &errslots[i];
        return NULL;
}

/* A slot for c's first message on this thread: a free one while there is
 * one, then round robin over the others. */
static struct errslot *errslot_take(const struct kvc_client *c)
{
        struct errslot *s = NULL;

        for (unsigned i = 0; i < ERR_SLOTS && s == NULL; i++)
                if (!errslots[i].used)
                        s = &errslots[i];
        if (s == NULL)
                s = &errslots[errnext++ % ERR_SLOTS];
        s->used = 1;
        s->c = c;
        s->serial = serial_of(c);
        return s;
}

/* Frees the calling thread's slot of c, if it has one: for a client that
 * kvc_connect gave up on, which never reached the caller (other threads
 * never saw it). */
static void errslot_drop(const struct kvc_client *c)
{
        struct errslot *s = errslot_find(c);

        if (s != NULL)
                s->used = 0;
}

int kvc__fail(const struct kvc_client *c, int err, const char *fmt, ...)
{
        struct errslot *s = errslot_find(c);
        va_list ap;

        if (s == NULL)
                s = errslot_take(c);
        va_start(ap, fmt);
        vsnprintf(s->msg, sizeof s->msg, fmt, ap);
        va_end(ap);
        return err;
}

int kvc__fail_forked(const struct kvc_client *c, const char *what)
{
        return kvc__fail(c, -ECHILD, "%s: the client belongs to process %d and this is a forked child of it "
                         "(nng does not survive fork): connect again, after an exec", what, (int)c->pid);
}

const char *kvc_errmsg(const kvc_client *c)
{
        const struct errslot *s = errslot_find(c);

        return s ? s->msg : "";
}

/* nng error -> negative errno, in one place. */
static int nng_errno(int rv)
{
        if (rv & NNG_ESYSERR)
                return -(rv & ~NNG_ESYSERR);
        switch (rv) {
        case 0:                 return 0;
        case NNG_ETIMEDOUT:     return -ETIMEDOUT;
        case NNG_ECONNREFUSED:  return -ECONNREFUSED;
        case NNG_ENOENT:        return -ENOENT;
        case NNG_ENOMEM:        return -ENOMEM;
        case NNG_EINVAL:        return -EINVAL;
        case NNG_EADDRINVAL:    return -EINVAL;
        case NNG_ECONNRESET:    return -ECONNRESET;
        case NNG_ECONNSHUT:     return -ECONNRESET;
        case NNG_ECONNABORTED:  return -ECONNABORTED;
        case NNG_ECLOSED:       return -EBADF;
        case NNG_EMSGSIZE:      return -EMSGSIZE;
        case NNG_EPERM:         return -EACCES;
        case NNG_ENOTSUP:       return -ENOTSUP;
        case NNG_EAGAIN:        return -EAGAIN;
        default:                return -EIO;
        }
}

/* ---- request / reply --------------------------------------------------------- */

static int mark_stale(struct kvc_client *c, const char *why)
{
        __atomic_store_n(&c->stale, 1, __ATOMIC_RELEASE);
        return kvc__fail(c, -ESTALE, "%s", why);
}

const char kvc__stale_msg[] =
        "kvpoold restarted: the pool mapping is stale; reconnect and re-attach";

int kvc__req_new(struct kvc_client *c, size_t cap, nng_msg **ret)
{
        nng_msg *m;
        int rv = nng_msg_alloc(&m, cap);

        if (rv != 0)
                return kvc__fail(c, nng_errno(rv), "out of memory for a %zu-byte request", cap);
        *ret = m;
        return 0;
}

static int chop(struct kvc_client *c, nng_msg *req, int enc, const char *what);
static int exchange(struct kvc_client *c, nng_msg *req, uint16_t op, const char *what,
                    nng_msg **ret_rep, const uint8_t **ret_body, size_t *ret_len);

/* FREEs the pages in m, the late reply of request rid (op) to pool: 0, or
 * -1 when a FREE was needed and failed.  A reply that is not that
 * request's page list (an ERROR, a mismatch) holds nothing to give back. */
static int free_late_pages(struct kvc_client *c, uint16_t op, uint32_t rid, uint32_t pool, nng_msg *m)
{
        const uint8_t *buf = nng_msg_body(m), *body;
        struct kv_hdr hdr;
        struct kv_pages pg;
        nng_msg *req, *rep;
        uint32_t *ids;
        size_t len;
        int rv;

        if (kv_hdr_decode(buf, nng_msg_len(m), &hdr) != 0 || hdr.request_id != rid ||
            hdr.opcode != (uint16_t)(op | KV_OP_REPLY) ||
            kv_dec_pages(buf + KV_HDR_SIZE, hdr.body_len, op | KV_OP_REPLY, &pg) != 0 || pg.count == 0)
                return 0; /* (kv_dec_pages refuses more than KV_MAX_PAGES_REQ ids) */
        if ((ids = malloc(sizeof *ids * pg.count)) == NULL)
                return -1;
        for (uint32_t i = 0; i < pg.count; i++)
                ids[i] = kv_le32(pg.ids + 4 * (size_t)i);
        rv = kvc__req_new(c, kv_size_pages(pg.count), &req);
        if (rv == 0)
                rv = chop(c, req, kv_enc_pages(nng_msg_body(req), nng_msg_len(req), KV_OP_FREE, 0, pool, pg.count, ids),
                          "free (the pages of a timed-out request)");
        if (rv == 0)
                rv = exchange(c, req, KV_OP_FREE, "free (the pages of a timed-out request)", &rep, &body, &len);
        free(ids);
        if (rv != 0)
                return -1;
        nng_msg_free(rep);
        return 0;
}

/* Gives back the pages of the timed-out ALLOCs and LOOKUPs whose replies
 * came in after all (transport.c keeps waiting for those): the caller never
 * got their ids, so they would stay held until disconnect.  Best effort: a
 * FREE that fails leaves its pages to the disconnect, as before, and ends
 * this round (the other replies wait for the next call), so that a slow
 * daemon costs the caller one timeout here, not one per reply. */
static void reap_orphans(struct kvc_client *c)
{
        uint16_t op;
        uint32_t rid, pool;
        nng_msg *m;
        int failed = 0;

        while (!failed && kvc__tp_orphan_reply(c->tp, &op, &rid, &pool, &m) == 1) {
                if (m == NULL)
                        continue;
                failed = free_late_pages(c, op, rid, pool, m) != 0;
                nng_msg_free(m);
        }
}

int kvc__call(struct kvc_client *c, nng_msg *req, uint16_t op, const char *what,
                nng_msg **ret_rep, const uint8_t **ret_body, size_t *ret_len)
{
        if (!kvc__is_stale(c))
                reap_orphans(c); /* a FREE there may find the daemon gone: exchange checks again */
        return exchange(c, req, op, what, ret_rep, ret_body, ret_len);
}

/* One request and its checked reply, without first giving back the pages
 * of late replies (kvc__call does that; this is also how those FREEs and
 * the BYE go out).  Takes req; on success *ret_rep is the reply to free and
 * *ret_body / *ret_len its body. */
static int exchange(struct kvc_client *c, nng_msg *req, uint16_t op, const char *what,
                    nng_msg **ret_rep, const uint8_t **ret_body, size_t *ret_len)
{
        struct kv_hdr hdr;
        nng_msg *rep = NULL;
        const uint8_t *buf;
        size_t len;
        uint32_t rid, pool = 0;
        int rv, sent, kept;

        if (kvc__is_stale(c)) {
                nng_msg_free(req);
                return kvc__fail(c, -ESTALE, "%s", kvc__stale_msg);
        }
        /* The request id lives at byte 8 of the header; patching it here keeps
         * every encoder call free of the counter. */
        rid = ++c->next_rid;
        kv_put32((uint8_t *)nng_msg_body(req) + 8, rid);
        /* ALLOC and LOOKUP bodies start with their pool id: an orphan's
         * pages are given back to that pool */
        if (kvc__hands_out_pages(op) && nng_msg_len(req) >= KV_HDR_SIZE + 4)
                pool = kv_le32((const uint8_t *)nng_msg_body(req) + KV_HDR_SIZE);
        rv = kvc__tp_exchange(c->tp, req, op, rid, pool, &rep, &sent, &kept);
        if (rv != 0 && !sent)
                return kvc__fail(c, nng_errno(rv), "%s: cannot send to kvpoold at %s: %s",
                                 what, c->url, nng_strerror(rv));
        if (rv == NNG_ECONNRESET || rv == NNG_ECONNSHUT || rv == NNG_ECLOSED) {
                /* The pipe carrying this request went away: the daemon bound
                 * the session (and its pages) to that pipe, so they are gone. */
                return mark_stale(c, "connection to kvpoold lost during the request "
                                     "(daemon exited or restarted): the session is gone; "
                                     "reconnect and re-attach");
        }
        if (rv == NNG_ETIMEDOUT)
                return kvc__fail(c, -ETIMEDOUT, "%s: no reply from kvpoold at %s within the timeout%s",
                                 what, c->url,
                                 kept ? " (pages it may still hand out are freed by a call after its reply comes)"
                                 : kvc__hands_out_pages(op)
                                         ? " (too many timed-out requests wait already: pages it may still hand "
                                           "out stay held until kvc_disconnect)"
                                         : "");
        if (rv != 0)
                return kvc__fail(c, nng_errno(rv), "%s: receive from kvpoold failed: %s",
                                 what, nng_strerror(rv));
        buf = nng_msg_body(rep);
        len = nng_msg_len(rep);
        rv = kv_hdr_decode(buf, len, &hdr);
        if (rv != 0) {
                nng_msg_free(rep);
                return kvc__fail(c, -EPROTO, "%s: malformed reply header (%s)", what,
                                 kv_err_name((uint32_t)-rv));
        }
        if (hdr.request_id != rid) {
                nng_msg_free(rep);
                return kvc__fail(c, -EPROTO, "%s: reply for request %u, expected %u",
                                 what, hdr.request_id, rid);
        }
        if (hdr.opcode == KV_OP_ERROR) {
                struct kv_error e;

                rv = kv_dec_error(buf + KV_HDR_SIZE, hdr.body_len, &e);
                if (rv != 0) {
                        nng_msg_free(rep);
                        return kvc__fail(c, -EPROTO, "%s: malformed error reply", what);
                }
                if (e.code == KV_E_NOHELLO && op != KV_OP_HELLO) {
                        nng_msg_free(rep);
                        return mark_stale(c, kvc__stale_msg);
                }
                rv = kv_err_to_errno(e.code);
                if (rv >= 0)
                        rv = -EPROTO;
                /* The daemon's message names the request and what was wrong. */
                if (e.len > 0)
                        kvc__fail(c, rv, "%.*s (%s)", (int)e.len, e.msg, kv_err_name(e.code));
                else
                        kvc__fail(c, rv, "%s: refused by kvpoold (%s)", what, kv_err_name(e.code));
                nng_msg_free(rep);
                return rv;
        }
        if (hdr.opcode != (uint16_t)(op | KV_OP_REPLY)) {
                nng_msg_free(rep);
                return kvc__fail(c, -EPROTO, "%s: reply opcode 0x%04x, expected 0x%04x",
                                 what, hdr.opcode, op | KV_OP_REPLY);
        }
        *ret_rep = rep;
        *ret_body = buf + KV_HDR_SIZE;
        *ret_len = hdr.body_len;
        return 0;
}

/* Trims req to the enc bytes its encoder wrote (req may be longer), or,
 * for an encoder failure (enc < 0), frees it and fails. */
static int chop(struct kvc_client *c, nng_msg *req, int enc, const char *what)
{
        if (enc < 0) {
                nng_msg_free(req);
                return kvc__fail(c, -EPROTO, "%s: cannot encode the request", what);
        }
        nng_msg_chop(req, nng_msg_len(req) - (size_t)enc);
        return 0;
}

int kvc__send(struct kvc_client *c, nng_msg *req, int enc, uint16_t op, const char *what,
              nng_msg **ret_rep, const uint8_t **ret_body, size_t *ret_len)
{
        int rv = chop(c, req, enc, what);

        return rv < 0 ? rv : kvc__call(c, req, op, what, ret_rep, ret_body, ret_len);
}

/* ---- connection ------------------------------------------------------------ */

/* $KVPOOL_TIMEOUT_MS, or the default when it is unset or empty; -EINVAL
 * when it is set to anything but a whole number of milliseconds in
 * 1..2^31-1 (a typo must not turn into the default silently). */
static int timeout_ms(void)
{
        const char *s = getenv("KVPOOL_TIMEOUT_MS");
        char *end;
        long v;

        if (s == NULL || *s == '\0')
                return DEFAULT_TIMEOUT_MS;
        errno = 0;
        v = strtol(s, &end, 10);
        if (errno != 0 || !isdigit((unsigned char)*s) || *end != '\0' || v <= 0 || v > INT_MAX)
                return -EINVAL;
        return (int)v;
}

static int hello(struct kvc_client *c, const kvc_key *salt)
{
        struct kv_hello_req h;
        struct kv_hello_rep r;
        nng_msg *req, *rep;
        const uint8_t *body;
        size_t len;
        int rv;

        memset(&h, 0, sizeof h);
        h.proto_version = KV_PROTO_VERSION;
        h.pid = (uint32_t)getpid();
        memcpy(h.name, c->name, sizeof h.name);
        if (salt != NULL)
                memcpy(h.tenant_salt, salt->b, KV_KEY_LEN);
        rv = kvc__req_new(c, KV_HDR_SIZE + 64, &req);
        if (rv != 0)
                return rv;
        rv = kvc__send(c, req, kv_enc_hello_req(nng_msg_body(req), nng_msg_len(req), 0, &h),
                       KV_OP_HELLO, "hello", &rep, &body, &len);
        if (rv != 0)
                return rv;
        rv = kv_dec_hello_rep(body, len, &r);
        nng_msg_free(rep);
        if (rv != 0)
                return kvc__fail(c, -EPROTO, "hello: malformed reply");
        c->session_id = r.session_id;
        return 0;
}

int kvc_connect(const char *url, const char *name, const kvc_key *tenant_salt, kvc_client **ret_client)
{
        struct kvc_client *c;
        pid_t owner;
        int rv, tmo;

        if (ret_client == NULL)
                return kvc__fail(NULL, -EINVAL, "kvc_connect: ret_client is NULL");
        if (url == NULL || *url == '\0')
                url = getenv("KVPOOL_SOCKET");
        if (url == NULL || *url == '\0')
                url = KVC_DEFAULT_SOCKET;
        if (strlen(url) >= sizeof c->url)
                return kvc__fail(NULL, -EINVAL, "kvc_connect: url is longer than %zu bytes",
                                 sizeof c->url - 1);
        if (name == NULL || *name == '\0')
                name = program_invocation_short_name;
        if ((owner = __atomic_load_n(&nng_pid, __ATOMIC_RELAXED)) != 0 && owner != getpid())
                return kvc__fail(NULL, -ECHILD, "kvc_connect: this process is a forked child of process %d, "
                                 "which used libkvclient (nng does not survive fork): exec before connecting",
                                 (int)owner);
        if ((tmo = timeout_ms()) < 0)
                return kvc__fail(NULL, -EINVAL, "kvc_connect: KVPOOL_TIMEOUT_MS \"%s\": expected a whole number of "
                                 "milliseconds in 1..2147483647", getenv("KVPOOL_TIMEOUT_MS"));

        c = calloc(1, sizeof *c);
        if (c == NULL)
                return kvc__fail(NULL, -ENOMEM, "kvc_connect: out of memory");
        c->serial = __atomic_add_fetch(&serial_counter, 1, __ATOMIC_RELAXED);
        c->pid = getpid();
        c->timeout_ms = tmo;
        snprintf(c->url, sizeof c->url, "%s", url);
        snprintf(c->name, sizeof c->name, "%s", name);
        pthread_mutex_init(&c->lock, NULL);

        rv = nng_req0_open(&c->sock);
        if (rv != 0) {
                rv = kvc__fail(NULL, nng_errno(rv), "kvc_connect: cannot open a REQ socket: %s",
                               nng_strerror(rv));
                goto fail_nosock;
        }
        /* nng is initialised now: a fork from here on cannot use it */
        __atomic_store_n(&nng_pid, c->pid, __ATOMIC_RELAXED);
        /* requests go out on the transport's contexts, which set their own
         * resend time (none: alloc is not idempotent) and reply timeout */
        if ((rv = nng_socket_set_size(c->sock, NNG_OPT_RECVMAXSZ, KV_MAX_FRAME + 4096)) != 0 ||
            (rv = nng_socket_set_ms(c->sock, NNG_OPT_RECONNMINT, 20)) != 0 ||
            (rv = nng_socket_set_ms(c->sock, NNG_OPT_RECONNMAXT, 500)) != 0) {
                rv = kvc__fail(NULL, nng_errno(rv), "kvc_connect: cannot set socket options: %s",
                               nng_strerror(rv));
                goto fail;
        }
        if ((rv = kvc__tp_open(c->sock, tmo, &c->tp)) != 0) {
                rv = kvc__fail(NULL, nng_errno(rv), "kvc_connect: cannot set up requests: %s",
                               nng_strerror(rv));
                goto fail;
        }
        /* Synchronous dial: a missing daemon is an error now, not a silent
         * background retry followed by a timeout. */
        rv = nng_dial(c->sock, url, NULL, 0);
        if (rv == NNG_ECONNREFUSED || rv == NNG_ENOENT) {
                rv = kvc__fail(NULL, -ECONNREFUSED, "no kvpoold at %s (%s)", url, nng_strerror(rv));
                goto fail;
        }
        /* nng says EINVAL for a string it cannot parse as a URL at all
         * (no scheme), EADDRINVAL / ENOTSUP for a bad address or scheme */
        if (rv == NNG_EADDRINVAL || rv == NNG_ENOTSUP || rv == NNG_EINVAL) {
                rv = kvc__fail(NULL, -EINVAL, "kvc_connect: bad socket URL '%s': %s", url,
                               nng_strerror(rv));
                goto fail;
        }
        if (rv != 0) {
                rv = kvc__fail(NULL, nng_errno(rv), "cannot connect to kvpoold at %s: %s", url,
                               nng_strerror(rv));
                goto fail;
        }
        pthread_mutex_lock(&c->lock);
        rv = hello(c, tenant_salt);
        pthread_mutex_unlock(&c->lock);
        if (rv != 0) {
                kvc__fail(NULL, rv, "%s", kvc_errmsg(c));
                errslot_drop(c);
                goto fail;
        }
        *ret_client = c;
        return 0;
fail:
        kvc__tp_close(c->tp);
        nng_close(c->sock);
fail_nosock:
        pthread_mutex_destroy(&c->lock);
        free(c);
        return rv;
}

void kvc_disconnect(kvc_client *c)
{
        nng_msg *req, *rep;
        const uint8_t *body;
        size_t len;

        if (c == NULL)
                return;
        /* A forked child leaves the parent's client alone: nng would abort
         * it, the lock may have been held at the fork, and the parent's
         * session is the parent's. */
        if (kvc__forked(c))
                return;
        pthread_mutex_lock(&c->lock);
        while (c->pools != NULL) {
                struct kvc_pool *p = c->pools;

                c->pools = p->next;
                kvc__pool_free(p);
        }
        /* BYE is a courtesy (closing the pipe releases the session anyway):
         * don't let a dead daemon hold up the exit for the full timeout (nor
         * for longer than a shorter one). */
        if (!kvc__is_stale(c) && kvc__req_new(c, KV_HDR_SIZE, &req) == 0) {
                if (c->timeout_ms > BYE_TIMEOUT_MS)
                        kvc__tp_set_timeout(c->tp, BYE_TIMEOUT_MS);
                /* exchange, not kvc__call: BYE releases every page anyway */
                if (chop(c, req, kv_enc_empty(nng_msg_body(req), nng_msg_len(req), KV_OP_BYE, 0), "bye") == 0 &&
                    exchange(c, req, KV_OP_BYE, "bye", &rep, &body, &len) == 0)
                        nng_msg_free(rep);
        }
        pthread_mutex_unlock(&c->lock);
        kvc__tp_close(c->tp);
        nng_close(c->sock);
        pthread_mutex_destroy(&c->lock);
        free(c);
}

/* ---- pages ------------------------------------------------------------------ */

/* Common entry checks of the pool requests; on success c->lock is held. */
static int pool_enter(kvc_pool *p, const char *what, uint32_t n, uint32_t max, const void *a1,
                      const char *a1name, const void *a2, const char *a2name)
{
        struct kvc_client *c;

        if (p == NULL)
                return -EINVAL;
        c = p->c;
        if (kvc__forked(c))
                return kvc__fail_forked(c, what);
        if (n == 0 || n > max)
                return kvc__fail(c, -EINVAL, "%s: n is %u, must be 1 to %u", what, n, max);
        if (a1 == NULL)
                return kvc__fail(c, -EINVAL, "%s: %s is NULL", what, a1name);
        if (a2name != NULL && a2 == NULL)
                return kvc__fail(c, -EINVAL, "%s: %s is NULL", what, a2name);
        pthread_mutex_lock(&c->lock);
        return 0;
}

/* Page ids the caller passes for p: -ERANGE naming the first one outside
 * the pool. */
static int check_ids(struct kvc_pool *p, const char *what, uint32_t n, const int32_t *pages)
{
        for (uint32_t i = 0; i < n; i++) {
                if (pages[i] < 0 || (uint32_t)pages[i] >= p->desc.num_pages)
                        return kvc__fail(p->c, -ERANGE, "%s: pages[%u] = %d is out of range (pool %s "
                                         "has %u pages)", what, i, pages[i], p->desc.name,
                                         p->desc.num_pages);
        }
        return 0;
}

/* Page ids received from the daemon must lie in the pool: the kernels would
 * otherwise be aimed outside the mapping. */
static int copy_pages(struct kvc_pool *p, const char *what, const struct kv_pages *pg,
                      int32_t *out)
{
        for (uint32_t i = 0; i < pg->count; i++) {
                uint32_t id = kv_le32(pg->ids + 4 * (size_t)i);

                if (id >= p->desc.num_pages)
                        return kvc__fail(p->c, -EPROTO, "%s: the daemon returned page %u, the pool "
                                         "has %u", what, id, p->desc.num_pages);
        }
        for (uint32_t i = 0; i < pg->count; i++)
                out[i] = (int32_t)kv_le32(pg->ids + 4 * (size_t)i);
        return 0;
}

int kvc_alloc(kvc_pool *p, uint32_t n, int32_t *ret_pages)
{
        struct kv_alloc_req q = { .pool_id = 0, .count = n };
        struct kv_pages pg;
        struct kvc_client *c;
        nng_msg *req, *rep;
        const uint8_t *body;
        size_t len;
        int rv;

        rv = pool_enter(p, "kvc_alloc", n, KV_MAX_PAGES_REQ, ret_pages, "ret_pages", NULL, NULL);
        if (rv != 0)
                return rv;
        c = p->c;
        q.pool_id = p->desc.pool_id;
        rv = kvc__req_new(c, KV_HDR_SIZE + 8, &req);
        if (rv != 0)
                goto out;
        rv = kvc__send(c, req, kv_enc_alloc_req(nng_msg_body(req), nng_msg_len(req), 0, &q),
                       KV_OP_ALLOC, "alloc", &rep, &body, &len);
        if (rv != 0)
                goto out;
        rv = kv_dec_pages(body, len, KV_OP_ALLOC | KV_OP_REPLY, &pg);
        if (rv != 0 || pg.count != n)
                rv = kvc__fail(c, -EPROTO, "alloc: malformed reply (%u pages for %u requested)",
                               rv != 0 ? 0 : pg.count, n);
        else
                rv = copy_pages(p, "alloc", &pg, ret_pages);
        nng_msg_free(rep);
out:
        pthread_mutex_unlock(&c->lock);
        return rv;
}

int kvc_free(kvc_pool *p, uint32_t n, const int32_t *pages)
{
        struct kvc_client *c;
        nng_msg *req, *rep;
        const uint8_t *body;
        size_t len;
        int rv;

        rv = pool_enter(p, "kvc_free", n, KV_MAX_PAGES_REQ, pages, "pages", NULL, NULL);
        if (rv != 0)
                return rv;
        c = p->c;
        rv = check_ids(p, "free", n, pages);
        if (rv != 0)
                goto out;
        rv = kvc__req_new(c, kv_size_pages(n), &req);
        if (rv != 0)
                goto out;
        /* int32 and uint32 arrays share their representation (ids checked >= 0). */
        rv = kvc__send(c, req, kv_enc_pages(nng_msg_body(req), nng_msg_len(req), KV_OP_FREE, 0,
                                            p->desc.pool_id, n, (const uint32_t *)pages),
                       KV_OP_FREE, "free", &rep, &body, &len);
        if (rv == 0)
                nng_msg_free(rep);
out:
        pthread_mutex_unlock(&c->lock);
        return rv;
}

/* ---- prefix cache -------------------------------------------------------------- */

int kvc_publish(kvc_pool *p, uint32_t n, const int32_t *pages, const kvc_key *keys, uint8_t *ret_dup)
{
        struct kv_publish_rep pr;
        struct kvc_client *c;
        nng_msg *req, *rep;
        const uint8_t *body;
        size_t len;
        int rv, stored = 0;

        rv = pool_enter(p, "kvc_publish", n, KV_MAX_KEYS_REQ, pages, "pages", keys, "keys");
        if (rv != 0)
                return rv;
        c = p->c;
        rv = check_ids(p, "publish", n, pages);
        if (rv != 0)
                goto out;
        rv = kvc__req_new(c, KV_HDR_SIZE + 8 + 20 * (size_t)n, &req);
        if (rv != 0)
                goto out;
        rv = kvc__send(c, req, kv_enc_publish_req(nng_msg_body(req), nng_msg_len(req), 0,
                                                  p->desc.pool_id, n, (const uint32_t *)pages,
                                                  (const uint8_t (*)[KV_KEY_LEN])keys),
                       KV_OP_PUBLISH, "publish", &rep, &body, &len);
        if (rv != 0)
                goto out;
        rv = kv_dec_publish_rep(body, len, &pr);
        if (rv != 0 || pr.count != n) {
                rv = kvc__fail(c, -EPROTO, "publish: malformed reply (%u results for %u pages)",
                               rv != 0 ? 0 : pr.count, n);
        } else {
                for (uint32_t i = 0; i < n; i++) {
                        stored += pr.results[i] == 0;
                        if (ret_dup != NULL)
                                ret_dup[i] = pr.results[i] != 0;
                }
                rv = stored;
        }
        nng_msg_free(rep);
out:
        pthread_mutex_unlock(&c->lock);
        return rv;
}

int kvc_lookup(kvc_pool *p, uint32_t n, const kvc_key *keys, int32_t *ret_pages)
{
        struct kv_pages pg;
        struct kvc_client *c;
        nng_msg *req, *rep;
        const uint8_t *body;
        size_t len;
        int rv;

        rv = pool_enter(p, "kvc_lookup", n, KV_MAX_KEYS_REQ, keys, "keys", ret_pages, "ret_pages");
        if (rv != 0)
                return rv;
        c = p->c;
        rv = kvc__req_new(c, KV_HDR_SIZE + 8 + KV_KEY_LEN * (size_t)n, &req);
        if (rv != 0)
                goto out;
        rv = kvc__send(c, req, kv_enc_lookup_req(nng_msg_body(req), nng_msg_len(req), 0,
                                                 p->desc.pool_id, n, (const uint8_t (*)[KV_KEY_LEN])keys),
                       KV_OP_LOOKUP, "lookup", &rep, &body, &len);
        if (rv != 0)
                goto out;
        rv = kv_dec_pages(body, len, KV_OP_LOOKUP | KV_OP_REPLY, &pg);
        if (rv != 0 || pg.count > n)
                rv = kvc__fail(c, -EPROTO, "lookup: malformed reply (%u pages for %u keys)",
                               rv != 0 ? 0 : pg.count, n);
        else
                rv = copy_pages(p, "lookup", &pg, ret_pages);
        if (rv == 0)
                rv = (int)pg.count;
        nng_msg_free(rep);
out:
        pthread_mutex_unlock(&c->lock);
        return rv;
}

/* ---- status and metrics ----------------------------------------------------------- */

static int text_request(kvc_client *c, uint16_t op, const char *what, char **ret_text)
{
        struct kv_text t;
        nng_msg *req, *rep;
        const uint8_t *body;
        size_t len;
        char *out;
        int rv;

        if (c == NULL)
                return -EINVAL;
        if (kvc__forked(c))
                return kvc__fail_forked(c, what);
        if (ret_text == NULL)
                return kvc__fail(c, -EINVAL, "%s: the output pointer is NULL", what);
        pthread_mutex_lock(&c->lock);
        rv = kvc__req_new(c, KV_HDR_SIZE + 4, &req);
        if (rv != 0)
                goto out;
        rv = kvc__send(c, req, kv_enc_u32_req(nng_msg_body(req), nng_msg_len(req), op, 0, 0),
                       op, what, &rep, &body, &len);
        if (rv != 0)
                goto out;
        rv = kv_dec_text(body, len, &t);
        if (rv != 0) {
                rv = kvc__fail(c, -EPROTO, "%s: malformed reply", what);
        } else if ((out = malloc((size_t)t.len + 1)) == NULL) {
                rv = kvc__fail(c, -ENOMEM, "%s: out of memory for %u bytes", what, t.len);
        } else {
                memcpy(out, t.text, t.len);
                out[t.len] = '\0';
                *ret_text = out;
        }
        nng_msg_free(rep);
out:
        pthread_mutex_unlock(&c->lock);
        return rv;
}

int kvc_status_json(kvc_client *c, char **ret_json)
{
        return text_request(c, KV_OP_STATUS, "status", ret_json);
}

int kvc_metrics_text(kvc_client *c, char **ret_text)
{
        return text_request(c, KV_OP_METRICS, "metrics", ret_text);
}
