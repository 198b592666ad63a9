/* test_http_serve_unit.c - daemon/http_serve.c with a callback of its own:
 * what each kind of request is answered, the cap on connections (the oldest
 * goes), the deadline (idle, slow and trickling peers are closed), a peer
 * that does not read holds neither the thread nor its slot past the
 * deadline, stop and restart, start errors.
 *
 * Times: the deadlines here are a few hundred ms and every wait is bounded
 * by seconds; nothing measures speed, only that a close came at all (the
 * old nng server never closed an idle connection). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "http_serve.h"
#include "svc_util.h"

#define BODY "hello 1\n"
#define CTYPE "text/plain; version=0.0.4; charset=utf-8"

static int    status = 200;   /* what get() answers */
static size_t big;            /* > 0: the next get() returns this many bytes */
static int    calls;

static int get(void *arg, char **ret_body, size_t *ret_len)
{
        size_t n = big ? big : strlen(BODY);
        char *b;

        (void)arg;
        __atomic_add_fetch(&calls, 1, __ATOMIC_SEQ_CST);
        if (status != 200)
                return status;
        b = malloc(n);
        cr_assert(b);
        if (big)
                memset(b, 'x', n);
        else
                memcpy(b, BODY, n);
        big = 0;
        *ret_body = b;
        *ret_len = n;
        return 200;
}

static struct kvd_http *start(int *ret_port, unsigned max_conns, unsigned deadline_ms)
{
        char port[16], err[256] = "";
        struct kvd_http *h = NULL;
        struct kvd_http_cfg cfg = { .host = "127.0.0.1", .port = port, .path = "/metrics",
                                    .content_type = CTYPE, .get = get,
                                    .max_conns = max_conns, .deadline_ms = deadline_ms };
        int r;

        status = 200;
        big = 0;
        *ret_port = svc_free_port();
        snprintf(port, sizeof(port), "%d", *ret_port);
        r = kvd_http_start(&cfg, &h, err, sizeof(err));
        cr_assert_eq(r, 0, "kvd_http_start: %d %s", r, err);
        cr_assert(h);
        return h;
}

static int req(int port, const char *text, char **ret_reply)
{
        return svc_http_raw(port, text, strlen(text), ret_reply);
}

/* ---- what is answered ------------------------------------------------------- */

Test(http_serve, requests_and_their_statuses, .timeout = 30)
{
        static const struct { const char *req; int want; } cases[] = {
                { "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 200 },
                { "GET /metrics/ HTTP/1.1\r\nHost: x\r\n\r\n", 200 },
                { "GET /metrics?name[]=up HTTP/1.1\r\nHost: x\r\n\r\n", 200 },
                { "GET http://x:9464/metrics HTTP/1.1\r\nHost: x\r\n\r\n", 200 },
                { "GET http://x:9464/metrics?a=/b HTTP/1.1\r\nHost: x\r\n\r\n", 200 },
                /* absolute form without a path: the path is "/" (these
                 * used to crash the server: a write to a string literal) */
                { "GET http://x HTTP/1.1\r\nHost: x\r\n\r\n", 404 },
                { "GET https://x:9464 HTTP/1.1\r\nHost: x\r\n\r\n", 404 },
                { "GET http://x?/metrics HTTP/1.1\r\nHost: x\r\n\r\n", 404 },
                { "GET http://x#/metrics HTTP/1.1\r\nHost: x\r\n\r\n", 404 },
                { "GET /metrics HTTP/1.0\r\n\r\n", 200 },           /* 1.0 needs no Host */
                { "GET /metrics HTTP/1.1\nHost: x\n\n", 200 },      /* bare LF lines */
                { "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 200 },
                { "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 404 },
                { "GET /metrics/x HTTP/1.1\r\nHost: x\r\n\r\n", 404 },
                { "GET /metricsx HTTP/1.1\r\nHost: x\r\n\r\n", 404 },
                { "POST /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404 },
                { "POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 405 },
                { "DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 405 },
                { "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 413 },
                { "GET /metrics HTTP/1.1\r\nHost: x\r\ncontent-length: 99999999999999999999999\r\n\r\n", 413 },
                { "GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 413 },
                { "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5x\r\n\r\n", 400 },
                { "GET /metrics HTTP/1.1\r\n\r\n", 400 },           /* 1.1 without Host */
                { "GET /metrics\r\nHost: x\r\n\r\n", 400 },
                { "GET  /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 400 },
                { "GET /metrics HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n", 400 },
                { "GET /metrics HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400 },
                { "GET /metrics HTTP/2.0\r\nHost: x\r\n\r\n", 505 },
                { "GET /metrics HTTP/1.2\r\nHost: x\r\n\r\n", 200 },   /* a later 1.x is served as 1.1 */
                /* not an HTTP-version at all: malformed (these were taken for 1.x) */
                { "GET /metrics HTTP/1.x\r\nHost: x\r\n\r\n", 400 },
                { "GET /metrics HTTP/1.\r\n\r\n", 400 },
                { "GET /metrics HTTP/1.1junk\r\nHost: x\r\n\r\n", 400 },
                { "GET /metrics HTTP/1.10\r\n\r\n", 400 },
                { "GET /metrics HTTP/\r\nHost: x\r\n\r\n", 400 },
        };
        int port;
        struct kvd_http *h = start(&port, 0, 0);

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                char *rep = NULL;
                int st = req(port, cases[i].req, &rep);

                cr_expect_eq(st, cases[i].want, "%s-> %d, want %d:\n%s", cases[i].req, st, cases[i].want, rep);
                cr_expect(strstr(rep, "\r\nConnection: close\r\n"), "no Connection: close:\n%s", rep);
                if (st == 200) {
                        cr_expect(strstr(rep, "\r\nContent-Type: " CTYPE "\r\n"), "content type:\n%s", rep);
                        cr_expect(strstr(rep, "\r\nContent-Length: 8\r\n"), "length:\n%s", rep);
                        cr_expect(strstr(rep, "\r\n\r\n" BODY) == rep + strlen(rep) - strlen("\r\n\r\n" BODY),
                                  "body:\n%s", rep);
                }
                if (st == 405)
                        cr_expect(strstr(rep, "\r\nAllow: GET, HEAD\r\n"), "405 without Allow:\n%s", rep);
                free(rep);
        }
        kvd_http_stop(h);
}

Test(http_serve, head_gets_the_length_and_no_body, .timeout = 30)
{
        int port;
        struct kvd_http *h = start(&port, 0, 0);
        char *rep = NULL;

        cr_expect_eq(req(port, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &rep), 200);
        cr_expect(strstr(rep, "\r\nContent-Length: 8\r\n"), "%s", rep);
        cr_expect(strlen(rep) >= 4 && strcmp(rep + strlen(rep) - 4, "\r\n\r\n") == 0, "a body after HEAD:\n%s", rep);
        free(rep);
        rep = NULL;
        cr_expect_eq(req(port, "HEAD /nope HTTP/1.1\r\nHost: x\r\n\r\n", &rep), 404);
        cr_expect(strcmp(rep + strlen(rep) - 4, "\r\n\r\n") == 0, "a body after HEAD:\n%s", rep);
        free(rep);
        kvd_http_stop(h);
}

Test(http_serve, callback_statuses_and_big_heads, .timeout = 30)
{
        int port;
        struct kvd_http *h = start(&port, 0, 0);
        char head[KVD_HTTP_HEAD_MAX + 64];

        status = 503;
        cr_expect_eq(req(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", NULL), 503);
        status = 500;
        cr_expect_eq(req(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", NULL), 500);
        status = 200;
        /* a head that does not end within 8 KiB is refused, not buffered */
        snprintf(head, sizeof(head), "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: %0*d\r\n\r\n",
                 (int)KVD_HTTP_HEAD_MAX, 0);
        cr_expect_eq(req(port, head, NULL), 431);
        /* just under the limit is fine */
        snprintf(head, sizeof(head), "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: %0*d\r\n\r\n",
                 (int)KVD_HTTP_HEAD_MAX - 64, 0);
        cr_expect_eq(req(port, head, NULL), 200);
        /* a NUL in the head, here hiding a Content-Length */
        static const char nul[] = "GET /metrics HTTP/1.1\r\nHost: x\r\nX: a\0b\r\nContent-Length: 5\r\n\r\nhello";
        cr_expect_eq(svc_http_raw(port, nul, sizeof(nul) - 1, NULL), 400);
        kvd_http_stop(h);
}

/* A refused body that keeps coming: the 413 is read before the close (the
 * server drains instead of resetting the connection under the reply). */
Test(http_serve, refused_body_still_gets_its_reply, .timeout = 30)
{
        int port;
        struct kvd_http *h = start(&port, 0, 2000);
        const char *hd = "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n";
        char part[1000], rep[64] = "";
        int fd = svc_tcp_connect(port);

        cr_assert(fd >= 0);
        memset(part, 'x', sizeof(part));
        cr_assert_eq(write(fd, hd, strlen(hd)), (ssize_t)strlen(hd));
        cr_assert_eq(write(fd, part, sizeof(part)), (ssize_t)sizeof(part));
        usleep(50000); /* let the reply be sent, then send more body */
        cr_assert_eq(write(fd, part, sizeof(part)), (ssize_t)sizeof(part));
        cr_expect_gt(read(fd, rep, sizeof(rep) - 1), 12);
        cr_expect(strncmp(rep, "HTTP/1.1 413", 12) == 0, "got %s", rep);
        close(fd);
        kvd_http_stop(h);
}

/* ---- bounds ----------------------------------------------------------------- */

/* More connections than the cap: the oldest are closed, a scrape is still
 * answered at once, and no more than the cap stay open. */
Test(http_serve, cap_closes_the_oldest, .timeout = 30)
{
        enum { CAP = 4, N = 100 };
        int port, fds[N], open_left = 0;
        struct kvd_http *h = start(&port, CAP, 20000); /* no deadline in play */

        for (int i = 0; i < CAP + 1; i++)
                cr_assert((fds[i] = svc_tcp_connect(port)) >= 0);
        /* the fifth took the first one's place */
        cr_expect(svc_wait_closed(fds[0], 3000), "the oldest connection was not closed for the new one");
        cr_expect_eq(req(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", NULL), 200,
                     "a scrape with %d idle connections open", CAP);
        /* the scrape took the second one's place; the others are open */
        cr_expect(svc_wait_closed(fds[1], 3000), "the second oldest was not closed for the scrape");
        for (int i = 2; i < CAP + 1; i++)
                cr_expect(svc_is_open(fds[i]), "connection %d was closed, the cap is %d", i, CAP);

        for (int i = CAP + 1; i < N; i++)
                cr_assert((fds[i] = svc_tcp_connect(port)) >= 0);
        cr_expect_eq(req(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", NULL), 200,
                     "a scrape after %d idle connections", N);
        for (int i = 0; i < N; i++) {
                open_left += svc_is_open(fds[i]);
                close(fds[i]);
        }
        cr_expect_leq(open_left, CAP - 1, "%d of %d idle connections still open with a cap of %d", open_left, N, CAP);
        kvd_http_stop(h);
}

/* A full server makes room from idle peers, not from a reply in progress:
 * a slow reader of a big reply is the oldest connection, yet the idle ones
 * go first. */
Test(http_serve, cap_spares_a_reply_in_progress, .timeout = 30)
{
        enum { CAP = 4, BIG = 32 << 20 };
        const char *get_req = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        int port, idle[CAP], rcvbuf = 4096, slow;
        struct kvd_http *h = start(&port, CAP, 20000); /* no deadline in play */
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        char buf[65536];

        sa.sin_port = htons((uint16_t)port);
        cr_assert((slow = socket(AF_INET, SOCK_STREAM, 0)) >= 0);
        setsockopt(slow, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
        cr_assert_eq(connect(slow, (struct sockaddr *)&sa, sizeof(sa)), 0);
        big = BIG;
        cr_assert_eq(write(slow, get_req, strlen(get_req)), (ssize_t)strlen(get_req));
        while (__atomic_load_n(&calls, __ATOMIC_SEQ_CST) == 0)
                usleep(1000);
        usleep(50000); /* the reply is under way and stuck in the window */
        for (int i = 0; i < CAP; i++) /* the last one takes a place */
                cr_assert((idle[i] = svc_tcp_connect(port)) >= 0);
        cr_expect(svc_wait_closed(idle[0], 3000), "the oldest idle connection was not closed for the new one");
        /* the whole reply still comes (the server's socket buffer holds
         * a few MiB of it at most: the rest is sent as we read) */
        size_t got = 0;
        for (;;) {
                struct pollfd p = { .fd = slow, .events = POLLIN };
                ssize_t n;

                if (poll(&p, 1, 5000) != 1 || (n = recv(slow, buf, sizeof(buf), 0)) <= 0)
                        break;
                got += (size_t)n;
        }
        cr_expect_gt(got, (size_t)BIG, "the reply in progress was cut at %zu of %d bytes to make room", got, BIG);
        for (int i = 0; i < CAP; i++)
                close(idle[i]);
        close(slow);
        kvd_http_stop(h);
}

/* Out of descriptors (RLIMIT_NOFILE reached with idle peers in every
 * place the limit leaves): the server closes one of its own to take the
 * waiting scrape, instead of leaving it in the listen backlog until the idle
 * peers' deadline (20 s here). */
Test(http_serve, out_of_descriptors_makes_room, .timeout = 30)
{
        enum { N = 6 };
        const char *get_req = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        int port, idle[N], scrape, lowest;
        struct kvd_http *h = start(&port, 32, 20000);
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        struct rlimit old, lim;
        char rep[64] = "";

        sa.sin_port = htons((uint16_t)port);
        for (int i = 0; i < N; i++)
                cr_assert((idle[i] = svc_tcp_connect(port)) >= 0);
        usleep(200000); /* accepted: each holds a descriptor of the server's */
        cr_assert((scrape = socket(AF_INET, SOCK_STREAM, 0)) >= 0); /* made before the limit */
        /* no new descriptor from now on: the limit is the lowest free one */
        cr_assert((lowest = dup(0)) >= 0);
        close(lowest);
        cr_assert_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
        lim = old;
        lim.rlim_cur = (rlim_t)lowest;
        cr_assert_eq(setrlimit(RLIMIT_NOFILE, &lim), 0);

        cr_assert_eq(connect(scrape, (struct sockaddr *)&sa, sizeof(sa)), 0);
        cr_assert_eq(write(scrape, get_req, strlen(get_req)), (ssize_t)strlen(get_req));
        struct pollfd p = { .fd = scrape, .events = POLLIN };
        int ready = poll(&p, 1, 3000);
        cr_expect_eq(ready, 1, "no reply in 3 s with the server out of descriptors");
        if (ready == 1)
                cr_expect(read(scrape, rep, sizeof(rep) - 1) > 12 && strncmp(rep, "HTTP/1.1 200", 12) == 0,
                          "got %s", rep);
        cr_assert_eq(setrlimit(RLIMIT_NOFILE, &old), 0);
        close(scrape);
        for (int i = 0; i < N; i++)
                close(idle[i]);
        kvd_http_stop(h);
}

/* A peer that sends nothing, one that stops half-way through its head, and
 * one that trickles a byte now and then: each is closed by the deadline. */
Test(http_serve, deadline_closes_idle_and_slow_peers, .timeout = 30)
{
        int port;
        struct kvd_http *h = start(&port, 0, 300);
        int idle = svc_tcp_connect(port), half = svc_tcp_connect(port), drip = svc_tcp_connect(port);
        const char *part = "GET /metrics HTTP/1.1\r\nHost: x\r\n";
        uint64_t t0 = svc_now_usec();
        int drip_closed = 0;

        cr_assert(idle >= 0 && half >= 0 && drip >= 0);
        cr_assert_eq(write(half, part, strlen(part)), (ssize_t)strlen(part));
        /* sending keeps no connection alive: the deadline counts from accept */
        for (int i = 0; i < 40 && !drip_closed; i++) {
                drip_closed = send(drip, "X", 1, MSG_NOSIGNAL) != 1 || !svc_is_open(drip);
                usleep(50000);
        }
        cr_expect(drip_closed || svc_wait_closed(drip, 3000), "a trickling peer was kept past the deadline");
        cr_expect(svc_wait_closed(idle, 3000), "an idle connection is still open after %llu ms (deadline 300)",
                  (unsigned long long)(svc_now_usec() - t0) / 1000);
        cr_expect(svc_wait_closed(half, 3000), "a half-sent request is still open past the deadline");
        cr_expect_geq(svc_now_usec() - t0, 250000u, "closed before the deadline");
        /* and the server still answers */
        cr_expect_eq(req(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", NULL), 200);
        close(idle);
        close(half);
        close(drip);
        kvd_http_stop(h);
}

/* A peer that asks for a big reply and does not read it: the thread goes
 * on serving others, and the connection is closed at the deadline with the
 * reply unsent. */
Test(http_serve, slow_reader_does_not_block, .timeout = 30)
{
        enum { BIG = 32 << 20 };
        const char *get_req = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        int port, rcvbuf = 4096, fd;
        struct kvd_http *h = start(&port, 0, 1000);
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        size_t got = 0;
        char buf[65536];
        ssize_t n;

        sa.sin_port = htons((uint16_t)port);
        cr_assert((fd = socket(AF_INET, SOCK_STREAM, 0)) >= 0);
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)); /* before connect: the window */
        cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        big = BIG;
        cr_assert_eq(write(fd, get_req, strlen(get_req)), (ssize_t)strlen(get_req));
        while (__atomic_load_n(&calls, __ATOMIC_SEQ_CST) == 0)
                usleep(1000);
        /* the big reply is stuck in our window; others are served */
        for (int i = 0; i < 3; i++)
                cr_expect_eq(req(port, get_req, NULL), 200, "a scrape behind a slow reader");
        usleep(1500000); /* past the deadline */
        while ((n = recv(fd, buf, sizeof(buf), 0)) > 0)
                got += (size_t)n;
        cr_log_info("the slow reader got %zu of %d bytes before the close", got, BIG);
        cr_expect_lt(got, (size_t)BIG, "the whole %d bytes came after the deadline", BIG);
        close(fd);
        kvd_http_stop(h);
}

/* ---- start and stop --------------------------------------------------------- */

Test(http_serve, stop_closes_connections_and_frees_the_port, .timeout = 30)
{
        int port;
        struct kvd_http *h = start(&port, 0, 20000);
        struct kvd_http_cfg cfg = { .host = "127.0.0.1", .path = "/metrics", .content_type = CTYPE, .get = get };
        char portstr[16], err[256] = "";
        int idle = svc_tcp_connect(port), r;

        cr_assert(idle >= 0);
        cr_expect_eq(req(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", NULL), 200);
        kvd_http_stop(h);
        cr_expect(svc_wait_closed(idle, 1000), "stop left a connection open");
        close(idle);
        cr_expect_eq(svc_tcp_connect(port), -1, "still listening after stop");
        kvd_http_stop(NULL);

        /* the port again, at once */
        snprintf(portstr, sizeof(portstr), "%d", port);
        cfg.port = portstr;
        h = NULL;
        r = kvd_http_start(&cfg, &h, err, sizeof(err));
        cr_assert_eq(r, 0, "%d %s", r, err);
        cr_expect_eq(req(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", NULL), 200);

        /* taken: -EADDRINUSE, *ret untouched */
        struct kvd_http *h2 = (struct kvd_http *)&cfg;
        r = kvd_http_start(&cfg, &h2, err, sizeof(err));
        cr_expect_eq(r, -EADDRINUSE, "%d %s", r, err);
        cr_expect(strstr(err, "in use"), "%s", err);
        cr_expect_eq(h2, (struct kvd_http *)&cfg, "*ret changed on failure");
        kvd_http_stop(h);

        /* incomplete configuration */
        cfg.get = NULL;
        cr_expect_eq(kvd_http_start(&cfg, &h2, err, sizeof(err)), -EINVAL);
}
