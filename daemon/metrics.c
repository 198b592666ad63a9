/* metrics.c - request counters, a request-latency histogram, per-pool gauges,
 * and their Prometheus text exposition (format 0.0.4), served at GET /metrics
 * by a bounded HTTP server of our own (http_serve.c) and returned by the
 * METRICS request.
 *
 * Counters are written by the serving thread only and read by whichever
 * thread renders (the serving thread for METRICS, the HTTP thread for
 * /metrics).  One writer makes a plain load + store enough; both sides use
 * relaxed atomic accesses so a reader never sees a torn value and the
 * compiler keeps the stores.  The hot path (kvd_metrics_observe) therefore
 * costs a few cache-line writes and no lock.
 *
 * Metric families (all prefixed kvpool_; docs/operations.md lists them):
 *   kvpool_build_info{version,cuda}                 gauge 1
 *   kvpool_start_time_seconds                       gauge, unix time
 *   kvpool_clients                                  gauge, connected sessions
 *   kvpool_events_dropped_total                     counter, events.c's queue full
 *   kvpool_log_lines_dropped_total                  counter, log.c: the journal's socket full
 *   kvpool_listener_takeovers_total{socket}         counter, listen_guard.c's take-overs
 *   kvpool_listener_guard_gave_up{socket}           gauge 0/1, listen_guard.c gave up
 *   kvpool_listener_unmended{socket}                gauge 0/1, new clients unanswered, not mendable now
 *   kvpool_requests_total{op}                       counter
 *   kvpool_request_errors_total{op,code}            counter
 *   kvpool_request_duration_seconds{op}             histogram, 10us .. 1s
 *   kvpool_pool_pages{pool,dtype,backend}           gauge, and _free/_held/
 *       _cached/_cached_idle_pages, kvpool_pool_token_capacity,
 *       kvpool_pool_size_bytes, kvpool_pool_page_size_tokens,
 *       kvpool_pool_{evictions,lookups,hits,prefix_resets,keys_reset}_total
 *       (counters)
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nng/nng.h>

#include "kv_config.h"
#include "kv_proto.h"
#include "kvclient.h"
#include "http_serve.h"
#include "log.h"
#include "metrics.h"
#include "pool.h"
#include "server.h"
#include "status.h" /* KVD_VERSION, the same string as STATUS's "version" */

/* Opcodes 1..KV_OP_LAST have names; slot 0 collects anything else (a
 * malformed request whose opcode could not be read, an unknown opcode). */
#define NUM_OPS (KV_OP_LAST + 1)
/* Wire error codes 0..KV_E__COUNT-1; slot KV_E__COUNT collects unknown ones. */
#define NUM_CODES (KV_E__COUNT + 1)

static const char *const op_names[NUM_OPS] = {
        [0]              = "other",
        [KV_OP_HELLO]    = "hello",
        [KV_OP_ATTACH]   = "attach",
        [KV_OP_ALLOC]    = "alloc",
        [KV_OP_FREE]     = "free",
        [KV_OP_STATUS]   = "status",
        [KV_OP_BYE]      = "bye",
        [KV_OP_PUBLISH]  = "publish",
        [KV_OP_LOOKUP]   = "lookup",
        [KV_OP_METRICS]  = "metrics",
        [KV_OP_RESET]    = "reset",
};

/* Upper bounds (seconds) of the latency buckets; +Inf is implicit.  A round
 * trip over ipc:// costs tens of microseconds, so the low end is fine grained. */
static const double bucket_le[] = {
        10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
        1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0,
};
#define NUM_BUCKETS (sizeof(bucket_le) / sizeof(bucket_le[0]))

struct op_stats {
        uint64_t requests;
        uint64_t errors[NUM_CODES];
        uint64_t buckets[NUM_BUCKETS + 1]; /* not cumulative; last = above 1 s */
        double   sum_seconds;
};

struct kvd_metrics {
        struct op_stats   ops[NUM_OPS];
        double            start_time; /* unix seconds */
        /* HTTP endpoint (NULL when off) and its limits (0: the defaults) */
        struct kvd_http   *http;
        struct kvd_server *srv;
        unsigned           http_max_conns, http_deadline_ms;
};

/* ---- counters ----------------------------------------------------------- */

static inline void bump(uint64_t *p)
{
        __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED);
}

static inline uint64_t rd(const uint64_t *p)
{
        return __atomic_load_n(p, __ATOMIC_RELAXED);
}

/* Creates an empty metrics set (all counters 0, no HTTP endpoint).
 * Returns 0 or -ENOMEM; *ret is untouched on failure. */
int kvd_metrics_new(struct kvd_metrics **ret)
{
        struct kvd_metrics *m = calloc(1, sizeof(*m));
        struct timespec ts;

        if (!m)
                return -ENOMEM;
        clock_gettime(CLOCK_REALTIME, &ts);
        m->start_time = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
        *ret = m;
        return 0;
}

/* Stops the HTTP endpoint if running and frees m.  Accepts NULL. */
void kvd_metrics_free(struct kvd_metrics *m)
{
        if (!m)
                return;
        kvd_metrics_http_stop(m);
        free(m);
}

/* Records one handled request.  Call from the serving thread only (single
 * writer); never blocks, never allocates.  Accepts NULL m. */
void kvd_metrics_observe(struct kvd_metrics *m, uint16_t opcode, uint32_t err_code, double seconds)
{
        struct op_stats *o;
        size_t b = 0;
        double sum;

        if (!m)
                return;
        o = &m->ops[opcode < NUM_OPS ? opcode : 0];
        bump(&o->requests);
        if (err_code != KV_OK)
                bump(&o->errors[err_code < KV_E__COUNT ? err_code : KV_E__COUNT]);
        if (!(seconds >= 0.0)) /* NaN or a clock step backwards */
                seconds = 0.0;
        while (b < NUM_BUCKETS && seconds > bucket_le[b])
                b++;
        bump(&o->buckets[b]);
        __atomic_load(&o->sum_seconds, &sum, __ATOMIC_RELAXED);
        sum += seconds;
        __atomic_store(&o->sum_seconds, &sum, __ATOMIC_RELAXED);
}

/* ---- text building -------------------------------------------------------- */

struct buf {
        char  *p;
        size_t len, cap;
        bool   oom;
};

static void put(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct buf *b, const char *fmt, ...)
{
        va_list ap;
        int n;

        if (b->oom)
                return;
        for (;;) {
                size_t room = b->cap - b->len;

                va_start(ap, fmt);
                n = vsnprintf(b->p + b->len, room, fmt, ap);
                va_end(ap);
                if (n < 0) {
                        b->oom = true;
                        return;
                }
                if ((size_t)n < room) {
                        b->len += (size_t)n;
                        return;
                }
                size_t ncap = b->cap * 2 + (size_t)n;
                char *np = realloc(b->p, ncap);

                if (!np) {
                        b->oom = true;
                        return;
                }
                b->p = np;
                b->cap = ncap;
        }
}

/* Label values are escaped per the exposition format: backslash, double quote
 * and newline.  Pool names come from the operator's config and may hold any
 * byte but NUL. */
static const char *esc(const char *s, char *out, size_t cap)
{
        size_t o = 0;

        for (; *s && o + 3 < cap; s++) {
                if (*s == '\\' || *s == '"') {
                        out[o++] = '\\';
                        out[o++] = *s;
                } else if (*s == '\n') {
                        out[o++] = '\\';
                        out[o++] = 'n';
                } else {
                        out[o++] = *s;
                }
        }
        out[o] = '\0';
        return out;
}

static void family(struct buf *b, const char *name, const char *type, const char *help)
{
        put(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Bucket bounds print as Go's strconv does ("1e-05", "0.00025", "1"), which
 * is what the official client libraries emit for the same buckets. */
static void put_le(struct buf *b, double v)
{
        put(b, "%.6g", v);
}

static void render_requests(struct buf *b, const struct kvd_metrics *m)
{
        uint64_t cnt[NUM_OPS];

        for (size_t i = 0; i < NUM_OPS; i++)
                cnt[i] = rd(&m->ops[i].requests);

        family(b, "kvpool_requests_total", "counter",
               "Control requests handled, by opcode (including failed ones).");
        for (size_t i = 0; i < NUM_OPS; i++)
                if (i != 0 || cnt[i])
                        put(b, "kvpool_requests_total{op=\"%s\"} %llu\n", op_names[i],
                            (unsigned long long)cnt[i]);

        family(b, "kvpool_request_errors_total", "counter",
               "Control requests answered with an error, by opcode and wire error code.");
        for (size_t i = 0; i < NUM_OPS; i++)
                for (size_t c = 1; c < NUM_CODES; c++) {
                        uint64_t e = rd(&m->ops[i].errors[c]);

                        if (e)
                                put(b, "kvpool_request_errors_total{op=\"%s\",code=\"%s\"} %llu\n",
                                    op_names[i], c < KV_E__COUNT ? kv_err_name((uint32_t)c) : "KV_E_UNKNOWN",
                                    (unsigned long long)e);
                }

        family(b, "kvpool_request_duration_seconds", "histogram",
               "Time from receiving a control request to queueing its reply, by opcode.");
        for (size_t i = 0; i < NUM_OPS; i++) {
                const struct op_stats *o = &m->ops[i];
                uint64_t cum = 0;
                double sum;

                if (i == 0 && !cnt[i])
                        continue;
                /* _count is the +Inf bucket we print, not o->requests read
                 * earlier, so the series stays consistent even if a request
                 * lands while we render. */
                for (size_t k = 0; k < NUM_BUCKETS; k++) {
                        cum += rd(&o->buckets[k]);
                        put(b, "kvpool_request_duration_seconds_bucket{op=\"%s\",le=\"", op_names[i]);
                        put_le(b, bucket_le[k]);
                        put(b, "\"} %llu\n", (unsigned long long)cum);
                }
                cum += rd(&o->buckets[NUM_BUCKETS]);
                __atomic_load(&o->sum_seconds, &sum, __ATOMIC_RELAXED);
                put(b, "kvpool_request_duration_seconds_bucket{op=\"%s\",le=\"+Inf\"} %llu\n",
                    op_names[i], (unsigned long long)cum);
                put(b, "kvpool_request_duration_seconds_sum{op=\"%s\"} %.9g\n", op_names[i], sum);
                put(b, "kvpool_request_duration_seconds_count{op=\"%s\"} %llu\n", op_names[i],
                    (unsigned long long)cum);
        }
}

/* One gauge or counter family with a value per pool. */
enum pool_field {
        PF_PAGES, PF_FREE, PF_HELD, PF_CACHED, PF_CACHED_IDLE, PF_TOKENS, PF_BYTES,
        PF_PAGE_SIZE, PF_EVICTIONS, PF_LOOKUPS, PF_HITS, PF_RESETS, PF_KEYS_RESET, PF__COUNT
};

static const struct {
        const char *name, *type, *help;
} pool_families[PF__COUNT] = {
        [PF_PAGES]       = { "kvpool_pool_pages", "gauge", "Pages in the pool." },
        [PF_FREE]        = { "kvpool_pool_free_pages", "gauge", "Pages on the free list." },
        [PF_HELD]        = { "kvpool_pool_held_pages", "gauge",
                             "Pages held by at least one session (cached or not)." },
        [PF_CACHED]      = { "kvpool_pool_cached_pages", "gauge",
                             "Pages published in the prefix cache (held or not)." },
        [PF_CACHED_IDLE] = { "kvpool_pool_cached_idle_pages", "gauge",
                             "Cached pages nobody holds: evictable when an alloc needs them." },
        [PF_TOKENS]      = { "kvpool_pool_token_capacity", "gauge",
                             "Token slots in the pool (pages times page size)." },
        [PF_BYTES]       = { "kvpool_pool_size_bytes", "gauge",
                             "Bytes of the pool's single allocation (2 MiB rounded)." },
        [PF_PAGE_SIZE]   = { "kvpool_pool_page_size_tokens", "gauge", "Token slots per page." },
        [PF_EVICTIONS]   = { "kvpool_pool_evictions_total", "counter",
                             "Cached pages evicted to satisfy allocations." },
        [PF_LOOKUPS]     = { "kvpool_pool_lookups_total", "counter", "Prefix-cache keys looked up." },
        [PF_HITS]        = { "kvpool_pool_hits_total", "counter", "Prefix-cache keys found." },
        [PF_RESETS]      = { "kvpool_pool_prefix_resets_total", "counter",
                             "RESET requests that emptied the pool's prefix cache (or a tenant's part)." },
        [PF_KEYS_RESET]  = { "kvpool_pool_keys_reset_total", "counter", "Prefix-cache keys dropped by resets." },
};

static uint64_t pool_value(const struct kvd_pool *p, const struct kvd_pages_stats *st, int f)
{
        switch (f) {
        case PF_PAGES:       return st->total;
        case PF_FREE:        return st->free;
        case PF_HELD:        return st->held;
        case PF_CACHED:      return st->cached;
        case PF_CACHED_IDLE: return st->cached_idle;
        case PF_TOKENS:      return kv_layout_tokens(&p->layout);
        case PF_BYTES:       return p->layout.alloc_bytes;
        case PF_PAGE_SIZE:   return p->layout.g.page_size;
        case PF_EVICTIONS:   return st->evictions;
        case PF_LOOKUPS:     return st->lookups;
        case PF_HITS:        return st->hits;
        case PF_RESETS:      return st->resets;
        case PF_KEYS_RESET:  return st->keys_reset;
        }
        return 0;
}

static void render_pools(struct buf *b, const struct kvd_server *s)
{
        uint32_t n = s ? kvd_server_pool_count(s) : 0;
        struct kvd_pages_stats *st = n ? calloc(n, sizeof(*st)) : NULL;
        char name[2 * KV_NAME_LEN + 1];

        if (n && !st) {
                b->oom = true;
                return;
        }
        /* Page stats are read once per pool so every family shows the same
         * instant (we hold the server lock, so nothing changes anyway). */
        for (uint32_t i = 0; i < n; i++) {
                const struct kvd_pool *p = kvd_server_pool(s, i);

                if (p && p->pages)
                        kvd_pages_get_stats(p->pages, &st[i]);
        }
        for (int f = 0; f < PF__COUNT; f++) {
                family(b, pool_families[f].name, pool_families[f].type, pool_families[f].help);
                for (uint32_t i = 0; i < n; i++) {
                        const struct kvd_pool *p = kvd_server_pool(s, i);
                        const char *dt;

                        if (!p)
                                continue;
                        dt = kvc_dtype_name(p->layout.g.dtype);
                        put(b, "%s{pool=\"%s\",dtype=\"%s\",backend=\"%s\"} %llu\n",
                            pool_families[f].name, esc(p->name, name, sizeof(name)),
                            dt ? dt : "unknown", p->backend ? p->backend->name : "unknown",
                            (unsigned long long)pool_value(p, &st[i], f));
                }
        }
        free(st);
}

/* One family of the guards' series: a sample per socket that has a guard. */
static void per_socket(struct buf *b, const char *name, const char *type, const char *help, const int has[2],
                       const uint64_t v[2])
{
        static const char *const sockets[2] = { "control", "events" };

        family(b, name, type, help);
        for (int i = 0; i < 2; i++)
                if (has[i])
                        put(b, "%s{socket=\"%s\"} %llu\n", name, sockets[i], (unsigned long long)v[i]);
}

/* The listener guards (listen_guard.c) of the request socket ("control")
 * and of the events socket ("events"), each where it has one (an ipc://
 * socket file): how often nng 1.5.2's stopped listener was replaced,
 * whether the guard gave up for good (new clients get no answer: restart
 * kvpoold), and whether new clients get no answer now that the guard
 * cannot mend yet (descriptors short or none left; it does once they are
 * freed) or at all (it gave up). */
static void render_guards(struct buf *b, const struct kvd_server *s)
{
        uint64_t taken[2], gave_up[2], unmended[2];
        int      has[2];

        for (int i = 0; i < 2; i++) {
                int g = 0, u = 0;

                has[i] = s && kvd_server_listener_guard(s, i, &taken[i], &g, &u) == 0;
                gave_up[i] = (uint64_t)g;
                unmended[i] = (uint64_t)u;
        }
        per_socket(b, "kvpool_listener_takeovers_total", "counter",
                   "New listeners that took over a socket file after nng 1.5.2 stopped the old one "
                   "(nanomsg/nng#1518).", has, taken);
        per_socket(b, "kvpool_listener_guard_gave_up", "gauge",
                   "1 when the listener guard takes over no more (4096 take-overs, or a failed take-over): restart "
                   "kvpoold.", has, gave_up);
        per_socket(b, "kvpool_listener_unmended", "gauge",
                   "1 while new clients get no answer and the listener guard cannot mend it now (nng 1.5.2 stopped "
                   "the listener and descriptors are short, or none is left; or it gave up); 0 once mended.",
                   has, unmended);
}

/* Returns the whole exposition as a malloc'ed NUL-terminated string, or NULL
 * on OOM.  s may be NULL (no pool families' samples, no clients).  The caller
 * holds the server lock (kvd_server_lock) so pools and sessions cannot change
 * underneath; m's counters need no lock. */
char *kvd_metrics_render(const struct kvd_metrics *m, const struct kvd_server *s)
{
        struct buf b = { .cap = 16384 };

        if (!m)
                return NULL;
        b.p = malloc(b.cap);
        if (!b.p)
                return NULL;
        b.p[0] = '\0';

        family(&b, "kvpool_build_info", "gauge", "Always 1; the labels say which kvpoold is running.");
        put(&b, "kvpool_build_info{version=\"%s\",cuda=\"%s\"} 1\n", KVD_VERSION,
            KV_HAVE_CUDA ? "yes" : "no");
        family(&b, "kvpool_start_time_seconds", "gauge", "When kvpoold started, in seconds since the epoch.");
        put(&b, "kvpool_start_time_seconds %.3f\n", m->start_time);
        family(&b, "kvpool_clients", "gauge", "Connected client sessions.");
        put(&b, "kvpool_clients %u\n", s ? kvd_server_client_count(s) : 0u);
        family(&b, "kvpool_events_dropped_total", "counter",
               "Events dropped because the event send queue was full (subscribers see a gap in seq).");
        put(&b, "kvpool_events_dropped_total %llu\n",
            (unsigned long long)(s ? kvd_server_events_dropped(s) : 0));
        family(&b, "kvpool_log_lines_dropped_total", "counter",
               "Log lines dropped because stderr, the journal's socket, was full.");
        put(&b, "kvpool_log_lines_dropped_total %llu\n", kvd_log_dropped());
        render_guards(&b, s);

        render_requests(&b, m);
        render_pools(&b, s);

        if (b.oom) {
                free(b.p);
                return NULL;
        }
        return b.p;
}

/* ---- HTTP endpoint ---------------------------------------------------------- */

/* GET or HEAD /metrics on the HTTP thread (http_serve.c answers everything
 * else itself: 404, 405, 413, ...).  Returns 200 with the text in *ret_body,
 * 503 while the server shuts down, 500 when out of memory. */
static int http_metrics_get(void *arg, char **ret_body, size_t *ret_len)
{
        struct kvd_metrics *m = arg;
        char *text;
        int closing;

        kvd_server_lock(m->srv);
        /* a shutdown that did not wait for its close thread, which stops
         * this endpoint first (KVPOOLD_CLOSE_WAIT_MS=0, or a wait that ran
         * out), frees the pools with this possibly still to run
         * (kvd_server_free): nothing to render then */
        closing = kvd_server_closing(m->srv);
        text = closing ? NULL : kvd_metrics_render(m, m->srv);
        kvd_server_unlock(m->srv);
        if (closing)
                return 503;
        if (!text)
                return 500;
        *ret_body = text;
        *ret_len = strlen(text);
        return 200;
}

static int nng_to_errno(int rv)
{
        switch (rv) {
        case 0:               return 0;
        case NNG_ENOMEM:      return -ENOMEM;
        case NNG_EADDRINUSE:  return -EADDRINUSE;
        case NNG_EADDRINVAL:  return -EADDRNOTAVAIL;
        case NNG_EINVAL:      return -EINVAL;
        case NNG_EPERM:       return -EACCES;
        case NNG_ENOTSUP:     return -ENOTSUP;
        default:              return -EIO;
        }
}

/* Turns "host:port" (IPv6 hosts in brackets: "[::1]:9464") into
 * "http://host:port".  Returns 0 or -EINVAL with the reason in err. */
static int addr_to_url(const char *addr, char *url, size_t cap, char *err, size_t errlen)
{
        const char *colon;
        char *end;
        long port;

        if (strncmp(addr, "http://", 7) == 0)
                addr += 7;
        colon = strrchr(addr, ':');
        if (!colon || colon == addr) {
                snprintf(err, errlen, "metrics address \"%s\": expected HOST:PORT, e.g. 127.0.0.1:9464", addr);
                return -EINVAL;
        }
        if (addr[0] == '[' ? colon[-1] != ']' : memchr(addr, ':', (size_t)(colon - addr)) != NULL) {
                snprintf(err, errlen, "metrics address \"%s\": write an IPv6 host in brackets, e.g. [::1]:9464", addr);
                return -EINVAL;
        }
        /* "[]": nng's parse gives an empty host, which listen_on takes for
         * every address; an endpoint without authentication must not
         * widen to the network from a typo */
        if (addr[0] == '[' && colon == addr + 2) {
                snprintf(err, errlen, "metrics address \"%s\": an empty host between the brackets; name one, "
                         "e.g. [::1]:9464 (or [::]:9464 for every address)", addr);
                return -EINVAL;
        }
        errno = 0;
        port = strtol(colon + 1, &end, 10);
        if (errno || end == colon + 1 || *end || port < 1 || port > 65535) {
                snprintf(err, errlen, "metrics address \"%s\": port must be a number in 1..65535", addr);
                return -EINVAL;
        }
        if (strpbrk(addr, "/?#@ \t") || (size_t)snprintf(url, cap, "http://%s", addr) >= cap) {
                snprintf(err, errlen, "metrics address \"%s\": not a HOST:PORT", addr);
                return -EINVAL;
        }
        return 0;
}

/* addr (HOST:PORT) parsed as a URL (u_hostname without brackets, u_port):
 * 0 with *ret to nng_url_free, or a negative errno with err naming the
 * address.  Only the parse is nng's; the server is http_serve.c. */
static int parse_addr(const char *addr, nng_url **ret, char *err, size_t errlen)
{
        char urlstr[300];
        int rv, r;

        if ((r = addr_to_url(addr, urlstr, sizeof(urlstr), err, errlen)) < 0)
                return r;
        if ((rv = nng_url_parse(ret, urlstr)) != 0) {
                snprintf(err, errlen, "metrics address \"%s\": %s", addr, nng_strerror(rv));
                return nng_to_errno(rv) == -EIO ? -EINVAL : nng_to_errno(rv);
        }
        return 0;
}

int kvd_metrics_check_addr(const char *addr, char *err, size_t errlen)
{
        nng_url *url = NULL;
        int r;

        if (addr == NULL || *addr == '\0' || strcmp(addr, "none") == 0)
                return 0;
        if ((r = parse_addr(addr, &url, err, errlen)) < 0)
                return r;
        nng_url_free(url);
        return 0;
}

/* Sets the HTTP endpoint's limits for its next start: at most max_conns
 * connections (beyond that an older one is closed for the new one, which
 * one: http_serve.h), each closed deadline_ms after accept at the latest;
 * 0 keeps a default (KVD_HTTP_MAX_CONNS, KVD_HTTP_DEADLINE_MS).  Accepts
 * NULL m. */
void kvd_metrics_http_limits(struct kvd_metrics *m, unsigned max_conns, unsigned deadline_ms)
{
        if (!m)
                return;
        m->http_max_conns = max_conns;
        m->http_deadline_ms = deadline_ms;
}

/* Starts serving GET /metrics on addr ("127.0.0.1:9464"; NULL, "" or "none":
 * off, returns 0) from a thread of its own.  s is the server whose pools
 * are rendered; the handler takes kvd_server_lock(s) around rendering.
 * Returns 0, -EALREADY when already started, -EINVAL for a bad address,
 * -EADDRINUSE, or another negative errno, with a message naming the
 * address in err. */
int kvd_metrics_http_start(struct kvd_metrics *m, struct kvd_server *s, const char *addr,
                           char *err, size_t errlen)
{
        nng_url *url = NULL;
        struct kvd_http_cfg cfg = {
                .path = "/metrics",
                .content_type = "text/plain; version=0.0.4; charset=utf-8",
                .get = http_metrics_get,
        };
        char why[256] = "";
        int r;

        if (!addr || !*addr || strcmp(addr, "none") == 0)
                return 0;
        if (!m || !s) {
                snprintf(err, errlen, "metrics: no metrics or server object");
                return -EINVAL;
        }
        if (m->http) {
                snprintf(err, errlen, "metrics: HTTP endpoint already started");
                return -EALREADY;
        }
        if ((r = parse_addr(addr, &url, err, errlen)) < 0)
                return r;
        cfg.host = url->u_hostname;
        cfg.port = url->u_port;
        cfg.arg = m;
        cfg.max_conns = m->http_max_conns;
        cfg.deadline_ms = m->http_deadline_ms;
        m->srv = s; /* before the thread can call http_metrics_get */
        r = kvd_http_start(&cfg, &m->http, why, sizeof(why));
        nng_url_free(url); /* the strings are read only while starting */
        if (r < 0) {
                snprintf(err, errlen, "metrics: cannot serve http://%s/metrics: %s",
                         addr + (strncmp(addr, "http://", 7) ? 0 : 7), why);
                m->srv = NULL;
                return r;
        }
        return 0;
}

/* Stops the HTTP endpoint (no-op if not started; accepts NULL): closes its
 * connections and joins its thread, after a handler in progress, which
 * takes the server lock: do not call it while holding kvd_server_lock. */
void kvd_metrics_http_stop(struct kvd_metrics *m)
{
        if (!m || !m->http)
                return;
        kvd_http_stop(m->http);
        m->http = NULL;
        m->srv = NULL;
}
