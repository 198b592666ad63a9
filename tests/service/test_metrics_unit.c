/* test_metrics_unit.c - daemon/metrics.c with a stand-in server: the
 * exposition's numbers, its format (promtool), label escaping, the HTTP
 * endpoint (status codes, content type, address errors) and its locking.
 *
 * The kvd_server_* functions metrics.c calls are defined here, so the test
 * does not depend on the serving loop; the page tables are real (pages.c). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "kv_layout.h"
#include "kv_proto.h"
#include "metrics.h"
#include "pool.h"
#include "server.h"
#include "svc_util.h"

/* ---- stand-in server ---------------------------------------------------- */

struct kvd_server {
        struct kvd_pool *pools[4];
        uint32_t         npools;
        uint32_t         clients;
        uint64_t         events_dropped;
        int              locked;     /* lock depth: must be 1 while rendering */
        int              lock_calls;
        int              closing;    /* kvd_server_free has begun */
        int              guards;     /* bit i: socket i (0 control, 1 events) has a listener guard */
        uint64_t         takeovers[2];
        int              gave_up[2];
        int              unmended[2];
};

static struct kvd_server fake;
static const struct kvd_backend_ops fake_host = { .name = "host" };

uint32_t kvd_server_pool_count(const struct kvd_server *s) { return s->npools; }
const struct kvd_pool *kvd_server_pool(const struct kvd_server *s, uint32_t i)
{
        return i < s->npools ? s->pools[i] : NULL;
}
uint32_t kvd_server_client_count(const struct kvd_server *s) { return s->clients; }
uint64_t kvd_server_events_dropped(const struct kvd_server *s) { return s->events_dropped; }
int kvd_server_listener_guard(const struct kvd_server *s, int events, uint64_t *ret_taken, int *ret_gave_up,
                              int *ret_unmended)
{
        if (!(s->guards & (1 << !!events)))
                return -ENOENT;
        *ret_taken = s->takeovers[!!events];
        *ret_gave_up = s->gave_up[!!events];
        *ret_unmended = s->unmended[!!events];
        return 0;
}
void kvd_server_lock(struct kvd_server *s)
{
        __atomic_add_fetch(&s->locked, 1, __ATOMIC_SEQ_CST);
        __atomic_add_fetch(&s->lock_calls, 1, __ATOMIC_SEQ_CST);
}
void kvd_server_unlock(struct kvd_server *s) { __atomic_sub_fetch(&s->locked, 1, __ATOMIC_SEQ_CST); }
int kvd_server_closing(const struct kvd_server *s) { return s->closing; }

static struct kvd_pool *add_pool(const char *name, enum kvc_dtype dt, uint32_t pages)
{
        struct kvd_pool *p = calloc(1, sizeof(*p));
        struct kv_geom g = { .dtype = dt, .num_layers = 2, .kv_heads = 2, .head_dim = 64, .page_size = 16 };

        cr_assert(p);
        snprintf(p->name, sizeof(p->name), "%s", name);
        p->id = fake.npools;
        cr_assert_eq(kv_layout_init(&g, pages, &p->layout), 0);
        p->backend = &fake_host;
        cr_assert_eq(kvd_pages_new(pages, NULL, &p->pages), 0);
        fake.pools[fake.npools++] = p;
        return p;
}

static void fini(void)
{
        for (uint32_t i = 0; i < fake.npools; i++) {
                kvd_pages_free(fake.pools[i]->pages);
                free(fake.pools[i]);
        }
        memset(&fake, 0, sizeof(fake));
}

TestSuite(metrics, .fini = fini);

static char *render(struct kvd_metrics *m)
{
        char *t = kvd_metrics_render(m, &fake);

        cr_assert(t, "render returned NULL");
        return t;
}

static void expect_metric(const char *text, const char *series, double want)
{
        double v;

        cr_assert_eq(svc_metric(text, series, &v), 0, "no series %s in:\n%s", series, text);
        cr_expect(fabs(v - want) <= 1e-9 * (fabs(want) + 1), "%s = %g, want %g", series, v, want);
}

static void expect_promtool_clean(const char *text)
{
        char *out = NULL;
        int rc = svc_promtool(text, &out);

        cr_expect_eq(rc, 0, "promtool check metrics failed (%d):\n%s\non:\n%s", rc, out, text);
        free(out);
}

/* ---- rendering ------------------------------------------------------------ */

Test(metrics, empty_daemon_is_valid_exposition)
{
        struct kvd_metrics *m;
        char *t;

        cr_assert_eq(kvd_metrics_new(&m), 0);
        fake.guards = 1; /* the request socket's guard, no events socket */
        t = render(m);
        expect_metric(t, "kvpool_clients", 0);
        expect_metric(t, "kvpool_events_dropped_total", 0);
        expect_metric(t, "kvpool_log_lines_dropped_total", 0);
        expect_metric(t, "kvpool_listener_takeovers_total{socket=\"control\"}", 0);
        expect_metric(t, "kvpool_listener_guard_gave_up{socket=\"control\"}", 0);
        expect_metric(t, "kvpool_listener_unmended{socket=\"control\"}", 0);
        cr_expect(!strstr(t, "socket=\"events\""), "no events socket, no events guard series:\n%s", t);
        expect_metric(t, "kvpool_requests_total{op=\"alloc\"}", 0);
        cr_expect(strstr(t, "kvpool_build_info{version=\""), "no build info:\n%s", t);
        cr_expect(strstr(t, "# TYPE kvpool_request_duration_seconds histogram\n"));
        cr_expect(strstr(t, "# TYPE kvpool_pool_pages gauge\n"), "pool families have HELP/TYPE even without pools");
        cr_expect(!strstr(t, "op=\"other\""), "the catch-all opcode appears only once used");
        expect_promtool_clean(t);
        free(t);
        free(kvd_metrics_render(m, NULL)); /* no server: still renders */
        kvd_metrics_free(m);
        kvd_metrics_free(NULL);
}

Test(metrics, listener_guards)
{
        struct kvd_metrics *m;
        char *t;

        cr_assert_eq(kvd_metrics_new(&m), 0);
        fake.guards = 3;
        fake.takeovers[0] = 9;
        fake.takeovers[1] = 2;
        fake.gave_up[1] = 1;
        fake.unmended[0] = 1; /* short of descriptors now, not given up */
        fake.unmended[1] = 1;
        t = render(m);
        expect_metric(t, "kvpool_listener_takeovers_total{socket=\"control\"}", 9);
        expect_metric(t, "kvpool_listener_takeovers_total{socket=\"events\"}", 2);
        expect_metric(t, "kvpool_listener_guard_gave_up{socket=\"control\"}", 0);
        expect_metric(t, "kvpool_listener_guard_gave_up{socket=\"events\"}", 1);
        expect_metric(t, "kvpool_listener_unmended{socket=\"control\"}", 1);
        expect_metric(t, "kvpool_listener_unmended{socket=\"events\"}", 1);
        cr_expect(strstr(t, "# TYPE kvpool_listener_takeovers_total counter\n"));
        cr_expect(strstr(t, "# TYPE kvpool_listener_guard_gave_up gauge\n"));
        cr_expect(strstr(t, "# TYPE kvpool_listener_unmended gauge\n"));
        expect_promtool_clean(t);
        free(t);
        fake.guards = 0; /* no ipc:// socket file: the families, no series */
        t = render(m);
        cr_expect(strstr(t, "# TYPE kvpool_listener_takeovers_total counter\n"));
        cr_expect(!strstr(t, "kvpool_listener_takeovers_total{"), "no guard, no series:\n%s", t);
        cr_expect(strstr(t, "# TYPE kvpool_listener_unmended gauge\n"));
        cr_expect(!strstr(t, "kvpool_listener_unmended{"), "no guard, no series:\n%s", t);
        expect_promtool_clean(t);
        free(t);
        kvd_metrics_free(m);
}

Test(metrics, counters_and_histogram)
{
        struct kvd_metrics *m;
        char *t;

        cr_assert_eq(kvd_metrics_new(&m), 0);
        kvd_metrics_observe(m, KV_OP_ALLOC, KV_OK, 30e-6);
        kvd_metrics_observe(m, KV_OP_ALLOC, KV_OK, 10e-6);      /* on a bound: le is inclusive */
        kvd_metrics_observe(m, KV_OP_ALLOC, KV_E_NOSPACE, 2.0); /* above the last bound */
        kvd_metrics_observe(m, KV_OP_FREE, KV_E_NOTHELD, 0.004);
        kvd_metrics_observe(m, 0x4242, KV_E_OPCODE, 1e-6);
        kvd_metrics_observe(m, KV_OP_HELLO, 999, -1.0);         /* unknown code, bad time */
        kvd_metrics_observe(NULL, KV_OP_HELLO, 0, 0);
        t = render(m);
        expect_metric(t, "kvpool_requests_total{op=\"alloc\"}", 3);
        expect_metric(t, "kvpool_requests_total{op=\"free\"}", 1);
        expect_metric(t, "kvpool_requests_total{op=\"other\"}", 1);
        expect_metric(t, "kvpool_requests_total{op=\"attach\"}", 0);
        expect_metric(t, "kvpool_request_errors_total{op=\"alloc\",code=\"KV_E_NOSPACE\"}", 1);
        expect_metric(t, "kvpool_request_errors_total{op=\"free\",code=\"KV_E_NOTHELD\"}", 1);
        expect_metric(t, "kvpool_request_errors_total{op=\"other\",code=\"KV_E_OPCODE\"}", 1);
        expect_metric(t, "kvpool_request_errors_total{op=\"hello\",code=\"KV_E_UNKNOWN\"}", 1);
        cr_expect(!strstr(t, "code=\"KV_OK\""), "successes are not errors");
        expect_metric(t, "kvpool_request_duration_seconds_bucket{op=\"alloc\",le=\"1e-05\"}", 1);
        expect_metric(t, "kvpool_request_duration_seconds_bucket{op=\"alloc\",le=\"2.5e-05\"}", 1);
        expect_metric(t, "kvpool_request_duration_seconds_bucket{op=\"alloc\",le=\"5e-05\"}", 2);
        expect_metric(t, "kvpool_request_duration_seconds_bucket{op=\"alloc\",le=\"1\"}", 2);
        expect_metric(t, "kvpool_request_duration_seconds_bucket{op=\"alloc\",le=\"+Inf\"}", 3);
        expect_metric(t, "kvpool_request_duration_seconds_count{op=\"alloc\"}", 3);
        expect_metric(t, "kvpool_request_duration_seconds_sum{op=\"alloc\"}", 2.00004);
        expect_metric(t, "kvpool_request_duration_seconds_bucket{op=\"free\",le=\"0.0025\"}", 0);
        expect_metric(t, "kvpool_request_duration_seconds_bucket{op=\"free\",le=\"0.005\"}", 1);
        expect_metric(t, "kvpool_request_duration_seconds_bucket{op=\"hello\",le=\"1e-05\"}", 1);
        expect_metric(t, "kvpool_request_duration_seconds_sum{op=\"hello\"}", 0);
        expect_promtool_clean(t);
        free(t);
        kvd_metrics_free(m);
}

Test(metrics, pools_match_page_tables)
{
        struct kvd_metrics *m;
        struct kvd_pool *a, *b;
        uint32_t ids[64];
        char *t;

        cr_assert_eq(kvd_metrics_new(&m), 0);
        a = add_pool("main", KVC_DTYPE_FP8_E4M3, 100);
        b = add_pool("we\"ird\\na\nme", KVC_DTYPE_FP4_E2M1, 40);
        fake.clients = 3;
        fake.events_dropped = 12345678901ull; /* past 2^32 */
        cr_assert_eq(kvd_pages_alloc(a->pages, 1, 10, ids), 0);
        cr_assert_eq(kvd_pages_alloc(a->pages, 2, 7, ids), 0);
        cr_assert_eq(kvd_pages_release(a->pages, 2, 2, ids), 0);
        cr_assert_eq(kvd_pages_alloc(b->pages, 1, 40, ids), 0);
        t = render(m);
        expect_metric(t, "kvpool_clients", 3);
        expect_metric(t, "kvpool_events_dropped_total", 12345678901.0);
#define A "{pool=\"main\",dtype=\"fp8_e4m3\",backend=\"host\"}"
        expect_metric(t, "kvpool_pool_pages" A, 100);
        expect_metric(t, "kvpool_pool_free_pages" A, 85);
        expect_metric(t, "kvpool_pool_held_pages" A, 15);
        expect_metric(t, "kvpool_pool_cached_pages" A, 0);
        expect_metric(t, "kvpool_pool_token_capacity" A, 1600);
        expect_metric(t, "kvpool_pool_page_size_tokens" A, 16);
        expect_metric(t, "kvpool_pool_size_bytes" A, (double)a->layout.alloc_bytes);
        expect_metric(t, "kvpool_pool_evictions_total" A, 0);
        /* The label value is escaped: backslash, quote and newline. */
#define B "{pool=\"we\\\"ird\\\\na\\nme\",dtype=\"fp4_e2m1\",backend=\"host\"}"
        expect_metric(t, "kvpool_pool_pages" B, 40);
        expect_metric(t, "kvpool_pool_free_pages" B, 0);
        expect_metric(t, "kvpool_pool_held_pages" B, 40);
        expect_metric(t, "kvpool_pool_size_bytes" B, (double)b->layout.alloc_bytes);
        expect_promtool_clean(t);
        free(t);
        kvd_metrics_free(m);
}

Test(metrics, prefix_cache_counters)
{
        struct kvd_metrics *m;
        struct kvd_pool *a;
        uint8_t salt[KVD_KEY_LEN] = { 0 }, keys[3][KVD_KEY_LEN] = { { 1 }, { 2 }, { 3 } };
        uint32_t ids[4], got[4];
        uint8_t res[4];
        char *t;

        cr_assert_eq(kvd_metrics_new(&m), 0);
        a = add_pool("p", KVC_DTYPE_BF16, 4);
        cr_assert_eq(kvd_pages_alloc(a->pages, 1, 2, ids), 0);
        cr_assert_eq(kvd_pages_publish(a->pages, 1, salt, 2, ids, (const uint8_t (*)[KVD_KEY_LEN])keys, res), 2);
        cr_assert_eq(kvd_pages_release(a->pages, 1, 2, ids), 0);
        cr_assert_eq(kvd_pages_lookup(a->pages, 2, salt, 3, (const uint8_t (*)[KVD_KEY_LEN])keys, got), 2);
        cr_assert_eq(kvd_pages_release(a->pages, 2, 2, got), 0);
        cr_assert_eq(kvd_pages_alloc(a->pages, 3, 4, ids), 0); /* evicts both */
        t = render(m);
#define P "{pool=\"p\",dtype=\"bf16\",backend=\"host\"}"
        struct kvd_pages_stats st;
        kvd_pages_get_stats(a->pages, &st);
        expect_metric(t, "kvpool_pool_lookups_total" P, (double)st.lookups);
        expect_metric(t, "kvpool_pool_hits_total" P, (double)st.hits);
        expect_metric(t, "kvpool_pool_evictions_total" P, 2);
        expect_metric(t, "kvpool_pool_cached_pages" P, 0);
        expect_metric(t, "kvpool_pool_held_pages" P, 4);
        cr_expect_eq(st.hits, 2);
        free(t);
        kvd_metrics_free(m);
}

/* ---- HTTP ------------------------------------------------------------------ */

Test(metrics, http_serves_metrics_and_404)
{
        struct kvd_metrics *m;
        char addr[64], err[256] = "", ctype[128], *body = NULL, *direct;
        int port = svc_free_port(), st;

        cr_assert_eq(kvd_metrics_new(&m), 0);
        add_pool("main", KVC_DTYPE_FP8_E5M2, 8);
        snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
        cr_assert_eq(kvd_metrics_http_start(m, &fake, addr, err, sizeof(err)), 0, "%s", err);

        st = svc_http_get(port, "/metrics", &body, ctype, sizeof(ctype));
        cr_assert_eq(st, 200, "GET /metrics: %d", st);
        cr_expect_str_eq(ctype, "text/plain; version=0.0.4; charset=utf-8");
        cr_expect_gt(fake.lock_calls, 0, "the handler must take the server lock");
        cr_expect_eq(fake.locked, 0, "the handler must release the server lock");
        direct = render(m);
        cr_expect_str_eq(body, direct);
        expect_promtool_clean(body);
        free(body);
        free(direct);

        body = NULL;
        cr_expect_eq(svc_http_get(port, "/", &body, NULL, 0), 404);
        free(body);
        body = NULL;
        cr_expect_eq(svc_http_get(port, "/metrics/x", &body, NULL, 0), 404);
        free(body);

        cr_expect_eq(kvd_metrics_http_start(m, &fake, addr, err, sizeof(err)), -EALREADY);
        kvd_metrics_http_stop(m);
        kvd_metrics_http_stop(m);
        cr_expect_eq(svc_http_get(port, "/metrics", NULL, NULL, 0), -1, "still serving after stop");

        /* The same port can be served again after a stop. */
        cr_assert_eq(kvd_metrics_http_start(m, &fake, addr, err, sizeof(err)), 0, "%s", err);
        cr_expect_eq(svc_http_get(port, "/metrics", NULL, NULL, 0), 200);
        /* A server whose pools are going away (a shutdown whose socket close
         * got stuck) answers 503 without rendering them. */
        fake.closing = 1;
        cr_expect_eq(svc_http_get(port, "/metrics", NULL, NULL, 0), 503);
        cr_expect_eq(fake.locked, 0, "the handler must release the server lock");
        fake.closing = 0;
        kvd_metrics_free(m); /* stops it too */
}

Test(metrics, http_address_errors)
{
        static const struct { const char *addr; int want; const char *says; } cases[] = {
                { "nonsense", -EINVAL, "nonsense" },
                { "127.0.0.1", -EINVAL, "HOST:PORT" },
                { ":9464", -EINVAL, "HOST:PORT" },
                { "127.0.0.1:0", -EINVAL, "1..65535" },
                { "127.0.0.1:65536", -EINVAL, "1..65535" },
                { "127.0.0.1:12ab", -EINVAL, "1..65535" },
                { "::1:9464", -EINVAL, "brackets" },
                { "127.0.0.1:80/x", -EINVAL, "1..65535" },
                /* nng parses it to an empty host, which http_serve.c took
                 * for every address: the endpoint, which has no
                 * authentication, listened on 0.0.0.0 */
                { "[]:19464", -EINVAL, "empty host" },
        };
        struct kvd_metrics *m;
        char err[256];

        cr_assert_eq(kvd_metrics_new(&m), 0);
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                err[0] = '\0';
                cr_expect_eq(kvd_metrics_http_start(m, &fake, cases[i].addr, err, sizeof(err)), cases[i].want,
                             "address %s", cases[i].addr);
                cr_expect(strstr(err, cases[i].says), "error for %s should say %s: %s", cases[i].addr,
                          cases[i].says, err);
                cr_expect(strstr(err, "metrics"), "error should name the option: %s", err);
        }
        /* Off: no endpoint, no error. */
        cr_expect_eq(kvd_metrics_http_start(m, &fake, NULL, err, sizeof(err)), 0);
        cr_expect_eq(kvd_metrics_http_start(m, &fake, "", err, sizeof(err)), 0);
        cr_expect_eq(kvd_metrics_http_start(m, &fake, "none", err, sizeof(err)), 0);
        kvd_metrics_free(m);
}

Test(metrics, http_port_in_use)
{
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t sl = sizeof(sa);
        struct kvd_metrics *m;
        char addr[64], err[256] = "";
        int fd = socket(AF_INET, SOCK_STREAM, 0), r;

        /* Somebody else (another kvpoold, a node exporter) has the port. */
        cr_assert(fd >= 0);
        cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        cr_assert_eq(listen(fd, 1), 0);
        cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
        snprintf(addr, sizeof(addr), "127.0.0.1:%d", ntohs(sa.sin_port));
        cr_assert_eq(kvd_metrics_new(&m), 0);
        r = kvd_metrics_http_start(m, &fake, addr, err, sizeof(err));
        cr_expect_eq(r, -EADDRINUSE, "got %d: %s", r, err);
        cr_expect(strstr(err, addr), "error should name the address: %s", err);
        kvd_metrics_free(m);
        close(fd);
}

/* The endpoint is bounded: with more idle connections than its cap a scrape
 * is still answered (the oldest idle one makes room), and an idle
 * connection is closed by the deadline.  nng's HTTP server, before, kept
 * every connection for as long as the peer liked. */
Test(metrics, http_connections_are_bounded, .timeout = 30)
{
        enum { CAP = 4, N = 40 };
        struct kvd_metrics *m;
        char addr[64], err[256] = "", *body = NULL, *direct;
        int port = svc_free_port(), fds[N], open_left = 0, idle;
        uint64_t t0;

        cr_assert_eq(kvd_metrics_new(&m), 0);
        add_pool("main", KVC_DTYPE_BF16, 8);
        snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
        kvd_metrics_http_limits(m, CAP, 400);
        cr_assert_eq(kvd_metrics_http_start(m, &fake, addr, err, sizeof(err)), 0, "%s", err);

        for (int i = 0; i < N; i++)
                cr_assert((fds[i] = svc_tcp_connect(port)) >= 0, "connect %d", i);
        cr_assert_eq(svc_http_get(port, "/metrics", &body, NULL, 0), 200, "a scrape behind %d idle connections", N);
        direct = render(m);
        cr_expect_str_eq(body, direct);
        free(body);
        free(direct);
        for (int i = 0; i < N; i++) {
                open_left += svc_is_open(fds[i]);
                close(fds[i]);
        }
        cr_expect_leq(open_left, CAP - 1, "%d of %d idle connections open, cap %d", open_left, N, CAP);

        idle = svc_tcp_connect(port);
        t0 = svc_now_usec();
        cr_assert(idle >= 0);
        cr_expect(svc_wait_closed(idle, 3000), "an idle connection still open after %llu ms (deadline 400 ms)",
                  (unsigned long long)(svc_now_usec() - t0) / 1000);
        close(idle);

        /* the limits' other answers, through the real handler */
        cr_expect_eq(svc_http_raw(port, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 35, NULL), 200);
        cr_expect_eq(svc_http_raw(port, "POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 35, NULL), 405);
        kvd_metrics_http_limits(NULL, 1, 1);
        kvd_metrics_free(m);
}
