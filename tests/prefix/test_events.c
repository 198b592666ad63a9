/* test_events.c - the event stream (daemon/events.c) over a real nng PUB/SUB
 * pair (with its send queue held and overflowed), its decoder on good and bad input, and `kvpoolctl events` (readable
 * and JSON output, gap reports, --count, exit on shutdown) against a PUB
 * socket this test drives by hand. */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/pubsub0/pub.h>
#include <nng/protocol/pubsub0/sub.h>

#include "events.h"

static void url_for(char *buf, size_t len, const char *tag)
{
        static int n;
        snprintf(buf, len, "ipc:///tmp/kvtest-%d-%d-%s.sock", (int)getpid(), n++, tag);
}

static nng_socket subscriber(const char *url)
{
        nng_socket s;
        cr_assert_eq(nng_sub0_open(&s), 0);
        cr_assert_eq(nng_socket_set(s, NNG_OPT_SUB_SUBSCRIBE, "", 0), 0);
        cr_assert_eq(nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 5000), 0);
        cr_assert_eq(nng_dial(s, url, NULL, 0), 0);
        return s;
}

static int recv_event(nng_socket s, struct kvd_event *ev, size_t *ret_len)
{
        void *buf;
        size_t len;
        int rv = nng_recv(s, &buf, &len, NNG_FLAG_ALLOC);
        if (rv != 0)
                return -rv;
        int r = kvd_event_decode(buf, len, ev);
        if (ret_len)
                *ret_len = len;
        nng_free(buf, len);
        return r;
}

static void wait_connected(nng_socket sub, struct kvd_events *e)
{
        /* PUB drops what is sent before the subscriber's pipe exists: send
         * probes until one arrives, then read past them */
        nng_socket_set_ms(sub, NNG_OPT_RECVTIMEO, 50);
        uint8_t k[16] = { 0 };
        for (int i = 0; i < 200; i++) {
                kvd_events_stored(e, "probe", 0, k);
                struct kvd_event ev;
                if (recv_event(sub, &ev, NULL) == 0)
                        break;
        }
        /* drain */
        struct kvd_event ev;
        while (recv_event(sub, &ev, NULL) == 0)
                ;
        nng_socket_set_ms(sub, NNG_OPT_RECVTIMEO, 5000);
}

/* Events on a fresh socket (tag in its name) with one subscriber whose
 * queue holds 8192 events, connected. */
static nng_socket open_with_subscriber(const char *tag, struct kvd_events **ret_e)
{
        char url[128], err[256];
        url_for(url, sizeof(url), tag);
        cr_assert_eq(kvd_events_open(url, ret_e, err, sizeof(err)), 0, "%s", err);
        nng_socket sub = subscriber(url);
        cr_assert_eq(nng_socket_set_int(sub, NNG_OPT_RECVBUF, 8192), 0);
        wait_connected(sub, *ret_e);
        return sub;
}

Test(events, publish_and_decode)
{
        char url[128];
        url_for(url, sizeof(url), "ev");
        struct kvd_events *e = NULL;
        char err[256];
        cr_assert_eq(kvd_events_open(url, &e, err, sizeof(err)), 0, "%s", err);
        nng_socket sub = subscriber(url);
        wait_connected(sub, e);
        uint64_t base = kvd_events_seq(e);
        cr_assert_gt(base, 0);

        uint8_t key[16];
        for (int i = 0; i < 16; i++)
                key[i] = (uint8_t)(0xF0 + i);
        kvd_events_stored(e, "gpu0", 7, key);
        kvd_events_evicted(e, "a-very-long-pool-name-that-is-cut-at-31-bytes", 123456, key);
        kvd_events_pressure(e, "gpu0", 0.0625, 0.1, 1);
        kvd_events_pressure(e, "gpu0", 0.25, 0.2, 0);
        kvd_events_reset(e, "gpu0", 4000000000u);
        cr_assert_eq(kvd_events_seq(e), base + 5);

        struct kvd_event ev;
        size_t len;
        cr_assert_eq(recv_event(sub, &ev, &len), 0);
        cr_assert_eq(len, KVD_EV_PAGE_SIZE);
        cr_assert_eq(ev.version, 1);
        cr_assert_eq(ev.type, KVD_EV_STORED);
        cr_assert_eq(ev.seq, base + 1);
        cr_assert_str_eq(ev.pool, "gpu0");
        cr_assert_eq(ev.page, 7);
        cr_assert_arr_eq(ev.key, key, 16);
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        uint64_t now_ns = (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec;
        cr_assert(ev.time_ns <= now_ns && ev.time_ns + 60ull * 1000000000ull > now_ns,
                  "event time %llu is not now (%llu)", (unsigned long long)ev.time_ns,
                  (unsigned long long)now_ns);

        cr_assert_eq(recv_event(sub, &ev, NULL), 0);
        cr_assert_eq(ev.type, KVD_EV_EVICTED);
        cr_assert_eq(ev.seq, base + 2);
        cr_assert_eq(ev.page, 123456);
        cr_assert_eq(strlen(ev.pool), 31);
        cr_assert_eq(strncmp(ev.pool, "a-very-long-pool-name-that-is-cut", 31), 0);

        cr_assert_eq(recv_event(sub, &ev, &len), 0);
        cr_assert_eq(len, KVD_EV_PRESSURE_SIZE);
        cr_assert_eq(ev.type, KVD_EV_PRESSURE);
        cr_assert_eq(ev.seq, base + 3);
        cr_assert_eq(ev.free_fraction, 0.0625);
        cr_assert_eq(ev.threshold, 0.1);
        cr_assert_eq(ev.entering, 1);
        cr_assert_eq(ev.page, 0);

        cr_assert_eq(recv_event(sub, &ev, NULL), 0);
        cr_assert_eq(ev.seq, base + 4);
        cr_assert_eq(ev.entering, 0);

        cr_assert_eq(recv_event(sub, &ev, &len), 0);
        cr_assert_eq(len, KVD_EV_RESET_SIZE);
        cr_assert_eq(ev.type, KVD_EV_RESET);
        cr_assert_eq(ev.seq, base + 5);
        cr_assert_str_eq(ev.pool, "gpu0");
        cr_assert_eq(ev.keys, 4000000000u);
        cr_assert_str_eq(kvd_event_type_name(KVD_EV_RESET), "reset");

        kvd_events_close(e);
        cr_assert_eq(recv_event(sub, &ev, &len), 0, "the shutdown event arrives before the close");
        cr_assert_eq(len, KVD_EV_HDR_SIZE);
        cr_assert_eq(ev.type, KVD_EV_SHUTDOWN);
        cr_assert_eq(ev.seq, base + 6);
        cr_assert_str_eq(ev.pool, "");
        nng_close(sub);
}

/* One alloc can evict thousands of pages: a burst sent while the subscriber
 * is not reading arrives whole, without a gap. */
Test(events, a_burst_is_not_dropped)
{
        struct kvd_events *e = NULL;
        nng_socket sub = open_with_subscriber("burst", &e);
        uint64_t base = kvd_events_seq(e);
        uint8_t key[16] = { 9 };
        enum { N = 4000 };
        for (uint32_t i = 0; i < N; i++)
                kvd_events_evicted(e, "p", i, key);
        for (uint32_t i = 0; i < N; i++) {
                struct kvd_event ev;
                cr_assert_eq(recv_event(sub, &ev, NULL), 0, "event %u of %u did not arrive", i, N);
                cr_assert_eq(ev.seq, base + 1 + i, "gap: got seq %llu, want %llu",
                             (unsigned long long)ev.seq, (unsigned long long)(base + 1 + i));
                cr_assert_eq(ev.page, i);
        }
        kvd_events_close(e);
        nng_close(sub);
}

/* The first event after *base that arrives (the probes of wait_connected
 * may still be on their way). */
static int recv_after(nng_socket s, uint64_t base, struct kvd_event *ev)
{
        int r;

        while ((r = recv_event(s, ev, NULL)) == 0 && ev->seq <= base)
                ;
        return r;
}

/* Announcing only queues: the sender thread sends.  With the sender held
 * (kvd_events_hold), more events than the queue holds are announced
 * anyway: every one gets its number, nothing reaches the subscriber, and
 * those past the queue's room are dropped and counted.  Let go a chunk at a
 * time (the subscriber's own queue holds 8192), the queued events arrive
 * in seq order, and the next event comes after the gap of the dropped
 * ones. */
Test(events, full_queue_drops_with_a_gap)
{
        struct kvd_events *e = NULL;
        nng_socket sub = open_with_subscriber("queue", &e);

        kvd_events_hold(e, 0);
        uint64_t base = kvd_events_seq(e);
        uint8_t key[16] = { 7 };
        enum { EXTRA = 100, CHUNK = 4096 };
        const uint32_t n = KVD_EV_QUEUE + EXTRA;
        for (uint32_t i = 0; i < n; i++)
                kvd_events_evicted(e, "p", i, key);
        cr_assert_eq(kvd_events_seq(e), base + n, "every event got its number");
        cr_assert_eq(kvd_events_dropped(e), EXTRA, "dropped %llu, want %d",
                     (unsigned long long)kvd_events_dropped(e), EXTRA);

        struct kvd_event ev;
        nng_socket_set_ms(sub, NNG_OPT_RECVTIMEO, 200);
        cr_assert_neq(recv_after(sub, base, &ev), 0, "event %llu was sent while the sender was held",
                      (unsigned long long)ev.seq);
        nng_socket_set_ms(sub, NNG_OPT_RECVTIMEO, 5000);

        for (uint32_t i = 0; i < KVD_EV_QUEUE; i++) {
                if (i % CHUNK == 0)
                        kvd_events_hold(e, CHUNK);
                cr_assert_eq(recv_after(sub, base, &ev), 0, "event %u of %u did not arrive", i,
                             (unsigned)KVD_EV_QUEUE);
                cr_assert_eq(ev.seq, base + 1 + i, "got seq %llu, want %llu", (unsigned long long)ev.seq,
                             (unsigned long long)(base + 1 + i));
                cr_assert_eq(ev.page, i);
        }
        kvd_events_hold(e, UINT64_MAX);
        kvd_events_stored(e, "p", 424242, key);
        cr_assert_eq(recv_after(sub, base, &ev), 0);
        cr_assert_eq(ev.type, KVD_EV_STORED);
        cr_assert_eq(ev.seq, base + n + 1, "after the gap: seq %llu, want %llu", (unsigned long long)ev.seq,
                     (unsigned long long)(base + n + 1));
        cr_assert_eq(ev.page, 424242);
        cr_assert_eq(kvd_events_dropped(e), EXTRA);

        kvd_events_close(e);
        cr_assert_eq(recv_after(sub, base, &ev), 0, "the shutdown event arrives before the close");
        cr_assert_eq(ev.type, KVD_EV_SHUTDOWN);
        cr_assert_eq(ev.seq, base + n + 2);
        nng_close(sub);
}

/* A burst larger than the queue (one alloc can evict 65536 pages) with
 * subscribers that make each send slow: the announcer waits for room
 * instead of dropping (for up to a second an overflow), so every event is
 * queued and numbered, none dropped. */
Test(events, a_burst_past_the_queue_waits_for_room, .timeout = 60)
{
        enum { SUBS = 16, N = 3 * KVD_EV_QUEUE };
        char url[128];
        url_for(url, sizeof(url), "overflow");
        struct kvd_events *e = NULL;
        char err[256];
        cr_assert_eq(kvd_events_open(url, &e, err, sizeof(err)), 0, "%s", err);
        nng_socket subs[SUBS];
        for (int i = 0; i < SUBS; i++) {
                subs[i] = subscriber(url);
                wait_connected(subs[i], e);
        }
        uint64_t base = kvd_events_seq(e), dropped = kvd_events_dropped(e);
        uint8_t key[16] = { 5 };
        for (uint32_t i = 0; i < N; i++)
                kvd_events_evicted(e, "p", i, key);
        cr_assert_eq(kvd_events_seq(e), base + N);
        cr_expect_eq(kvd_events_dropped(e), dropped, "%llu of %d events dropped with %d subscribers",
                     (unsigned long long)(kvd_events_dropped(e) - dropped), N, SUBS);
        kvd_events_close(e);
        /* the subscribers are left to the test's exit: nng 1.5.2's
         * nng_close of a SUB socket that never read its full queue hung
         * here now and then (2 runs of 8, before or after the PUB's close) */
}

Test(events, socket_mode_and_group)
{
        char url[128];
        url_for(url, sizeof(url), "mode");
        const char *path = url + strlen("ipc://");
        struct kvd_events *e = NULL;
        char err[256];
        cr_assert_eq(kvd_events_open_mode(url, 0660, getgid(), &e, err, sizeof(err)), 0, "%s", err);
        struct stat st;
        cr_assert_eq(stat(path, &st), 0);
        cr_assert_eq(st.st_mode & 0777, 0660, "mode %o", (unsigned)(st.st_mode & 0777));
        cr_assert_eq(st.st_gid, getgid());
        kvd_events_close(e);
        url_for(url, sizeof(url), "mode");
        cr_assert_eq(kvd_events_open_mode(url, 0600, (gid_t)-1, &e, err, sizeof(err)), 0, "%s", err);
        cr_assert_eq(stat(url + strlen("ipc://"), &st), 0);
        cr_assert_eq(st.st_mode & 0777, 0600, "mode %o", (unsigned)(st.st_mode & 0777));
        kvd_events_close(e);
        /* a bad mode is refused by nng and named */
        url_for(url, sizeof(url), "mode");
        struct kvd_events *untouched = (struct kvd_events *)0x1;
        cr_assert_lt(kvd_events_open_mode(url, 070000, (gid_t)-1, &untouched, err, sizeof(err)), 0);
        cr_assert_eq(untouched, (struct kvd_events *)0x1);
        cr_assert(strstr(err, url) != NULL, "error names the url: %s", err);
}

Test(events, off_and_errors)
{
        struct kvd_events *e = NULL;
        char err[256];
        cr_assert_eq(kvd_events_open(NULL, &e, err, sizeof(err)), 0);
        cr_assert_not_null(e);
        uint8_t key[16] = { 0 };
        kvd_events_stored(e, "p", 1, key);
        kvd_events_pressure(e, "p", 0.5, 0.5, 1);
        cr_assert_eq(kvd_events_seq(e), 0, "events off: nothing sent");
        kvd_events_close(e);
        kvd_events_close(NULL);
        kvd_events_stored(NULL, "p", 1, key);
        cr_assert_eq(kvd_events_seq(NULL), 0);

        struct kvd_events *untouched = (struct kvd_events *)0x1;
        int r = kvd_events_open("nosuchscheme://x", &untouched, err, sizeof(err));
        cr_assert_lt(r, 0);
        cr_assert_eq(untouched, (struct kvd_events *)0x1);
        cr_assert(strstr(err, "nosuchscheme://x") != NULL, "error names the url: %s", err);

        /* a second listener on the same address */
        char url[128];
        url_for(url, sizeof(url), "dup");
        cr_assert_eq(kvd_events_open(url, &e, err, sizeof(err)), 0, "%s", err);
        struct kvd_events *e2 = NULL;
        cr_assert_eq(kvd_events_open(url, &e2, err, sizeof(err)), -EADDRINUSE, "%s", err);
        cr_assert_null(e2);
        kvd_events_close(e);
        cr_assert_eq(kvd_events_open(NULL, NULL, err, sizeof(err)), -EINVAL);
}

static size_t mk(uint8_t *b, uint16_t version, uint16_t type, uint64_t seq, const char *pool)
{
        memset(b, 0, 128);
        b[0] = 'K'; b[1] = 'V'; b[2] = 'E'; b[3] = '1';
        b[4] = (uint8_t)version; b[5] = (uint8_t)(version >> 8);
        b[6] = (uint8_t)type; b[7] = (uint8_t)(type >> 8);
        for (int i = 0; i < 8; i++)
                b[8 + i] = (uint8_t)(seq >> (8 * i));
        strncpy((char *)b + 24, pool, 31);
        return type == KVD_EV_SHUTDOWN ? 56 : 76;
}

Test(events, decode_rejects_bad_input)
{
        uint8_t b[128];
        struct kvd_event ev, keep;
        memset(&keep, 0x5C, sizeof(keep));
        ev = keep;
        size_t n = mk(b, 1, KVD_EV_EVICTED, 9, "p");
        b[56] = 0x34; b[57] = 0x12;
        cr_assert_eq(kvd_event_decode(b, n, &ev), 0);
        cr_assert_eq(ev.page, 0x1234);
        cr_assert_eq(ev.seq, 9);
        /* trailing bytes (a later version's additions) are ignored */
        cr_assert_eq(kvd_event_decode(b, n + 20, &ev), 0);
        ev = keep;
        cr_assert_eq(kvd_event_decode(b, n - 1, &ev), -EPROTO, "short body");
        cr_assert_eq(kvd_event_decode(b, 55, &ev), -EPROTO, "short header");
        cr_assert_eq(kvd_event_decode(b, 0, &ev), -EPROTO);
        cr_assert_eq(kvd_event_decode(NULL, 0, &ev), -EINVAL);
        b[0] = 'X';
        cr_assert_eq(kvd_event_decode(b, n, &ev), -EPROTO, "magic");
        n = mk(b, 2, KVD_EV_EVICTED, 9, "p");
        cr_assert_eq(kvd_event_decode(b, n, &ev), -EPROTONOSUPPORT, "version");
        n = mk(b, 1, KVD_EV_PRESSURE, 9, "p");
        memset(b + 24, 'x', 32);
        cr_assert_eq(kvd_event_decode(b, n, &ev), -EPROTO, "pool without NUL");
        n = mk(b, 1, KVD_EV_PRESSURE, 9, "p");
        cr_assert_eq(kvd_event_decode(b, 60, &ev), -EPROTO, "short pressure");
        n = mk(b, 1, KVD_EV_RESET, 9, "p");
        cr_assert_eq(kvd_event_decode(b, KVD_EV_RESET_SIZE - 1, &ev), -EPROTO, "short reset");
        cr_assert_eq(memcmp(&ev, &keep, sizeof(ev)), 0, "untouched on failure");
        /* an unknown type decodes its header */
        n = mk(b, 1, 99, 3, "q");
        cr_assert_eq(kvd_event_decode(b, 56, &ev), 0);
        cr_assert_eq(ev.type, 99);
        cr_assert_str_eq(ev.pool, "q");
        cr_assert_null(kvd_event_type_name(99));
        cr_assert_str_eq(kvd_event_type_name(KVD_EV_EVICTED), "evicted");
}

/* ---- kvpoolctl events ---------------------------------------------------- */

static atomic_int pipes;

static void on_pipe(nng_pipe p, nng_pipe_ev ev, void *arg)
{
        if (ev == NNG_PIPE_EV_ADD_POST)
                atomic_fetch_add(&pipes, 1);
}

struct ctl {
        nng_socket pub;
        pid_t      pid;
        FILE      *out;
};

/* Starts `kvpoolctl --events URL events <args>` with its stdout on a pipe and
 * waits until it has subscribed. */
static void ctl_start(struct ctl *c, const char *a1, const char *a2, const char *a3)
{
        const char *exe = getenv("KVPOOLCTL");
        cr_assert(exe && *exe, "KVPOOLCTL is not set (meson sets it to the built kvpoolctl)");
        cr_assert_eq(access(exe, X_OK), 0, "kvpoolctl not found at %s", exe);
        char url[128];
        url_for(url, sizeof(url), "ctl");
        atomic_store(&pipes, 0);
        cr_assert_eq(nng_pub0_open(&c->pub), 0);
        nng_pipe_notify(c->pub, NNG_PIPE_EV_ADD_POST, on_pipe, NULL);
        cr_assert_eq(nng_listen(c->pub, url, NULL, 0), 0);
        int fd[2];
        cr_assert_eq(pipe(fd), 0);
        c->pid = fork();
        cr_assert_geq(c->pid, 0);
        if (c->pid == 0) {
                dup2(fd[1], 1);
                close(fd[0]);
                close(fd[1]);
                execl(exe, exe, "--events", url, "events", a1, a2, a3, (char *)NULL);
                _exit(127);
        }
        close(fd[1]);
        c->out = fdopen(fd[0], "r");
        for (int i = 0; i < 1000 && atomic_load(&pipes) == 0; i++)
                usleep(10000);
        cr_assert_gt(atomic_load(&pipes), 0, "kvpoolctl did not subscribe");
}

static void send_raw(struct ctl *c, uint16_t type, uint64_t seq, uint32_t page)
{
        uint8_t b[128];
        size_t n = mk(b, 1, type, seq, "pool\"x");
        if (type == KVD_EV_PRESSURE) {
                double f = 0.125, th = 0.25;
                memcpy(b + 56, &f, 8);
                memcpy(b + 64, &th, 8);
                b[72] = 1;
        } else if (type != KVD_EV_SHUTDOWN) {
                memcpy(b + 56, &page, 4);
                for (int i = 0; i < 16; i++)
                        b[60 + i] = (uint8_t)(i * 17);
        }
        uint64_t t = 1700000000ull * 1000000000ull + 123456789ull;
        for (int i = 0; i < 8; i++)
                b[16 + i] = (uint8_t)(t >> (8 * i));
        cr_assert_eq(nng_send(c->pub, b, n, 0), 0);
}

static int ctl_wait(struct ctl *c)
{
        int st;
        for (int i = 0; i < 1000; i++) {
                if (waitpid(c->pid, &st, WNOHANG) == c->pid)
                        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
                usleep(10000);
        }
        kill(c->pid, SIGKILL);
        waitpid(c->pid, &st, 0);
        char printed[2048] = "", line[512];
        while (fgets(line, sizeof(line), c->out) && strlen(printed) + strlen(line) < sizeof(printed))
                strcat(printed, line);
        cr_assert_fail("kvpoolctl events did not exit; it printed:\n%s", printed);
        return -1;
}

static void expect_line(struct ctl *c, const char *want)
{
        char line[512];
        cr_assert_not_null(fgets(line, sizeof(line), c->out), "no line, wanted: %s", want);
        line[strcspn(line, "\n")] = '\0';
        cr_assert_str_eq(line, want);
}

/* The JSON line kvpoolctl prints for a page event that send_raw sent. */
static const char JSON_TIME[] = "\"time\":\"2023-11-14T22:13:20.123456Z\",\"time_ns\":\"1700000000123456789\"";

static void expect_page_json(struct ctl *c, unsigned seq, const char *type, unsigned page)
{
        char want[512];
        snprintf(want, sizeof(want), "{\"seq\":%u,%s,\"type\":\"%s\",\"pool\":\"pool\\\"x\","
                 "\"page\":%u,\"key\":\"00112233445566778899aabbccddeeff\"}", seq, JSON_TIME, type, page);
        expect_line(c, want);
}

/* The readable line for the same event. */
static void expect_page_text(struct ctl *c, unsigned seq, const char *type, unsigned page)
{
        char want[512];
        snprintf(want, sizeof(want), "#%u 2023-11-14T22:13:20.123456Z %-8s pool=pool\"x page=%u "
                 "key=00112233445566778899aabbccddeeff", seq, type, page);
        expect_line(c, want);
}

Test(ctl_events, json_gaps_and_shutdown)
{
        struct ctl c;
        ctl_start(&c, "--json", NULL, NULL);
        send_raw(&c, KVD_EV_STORED, 1, 5);
        send_raw(&c, KVD_EV_EVICTED, 2, 6);
        send_raw(&c, KVD_EV_RESET, 3, 42);
        send_raw(&c, KVD_EV_PRESSURE, 5, 0);
        send_raw(&c, 77, 6, 0);
        send_raw(&c, KVD_EV_SHUTDOWN, 7, 0);
        cr_assert_eq(ctl_wait(&c), 0);
        const char *t = JSON_TIME;
        char want[512];
        expect_page_json(&c, 1, "stored", 5);
        expect_page_json(&c, 2, "evicted", 6);
        snprintf(want, sizeof(want), "{\"seq\":3,%s,\"type\":\"reset\",\"pool\":\"pool\\\"x\",\"keys\":42}", t);
        expect_line(&c, want);
        expect_line(&c, "{\"type\":\"missed\",\"missed\":1,\"first_seq\":4,\"last_seq\":4}");
        snprintf(want, sizeof(want), "{\"seq\":5,%s,\"type\":\"pressure\",\"pool\":\"pool\\\"x\","
                 "\"free_fraction\":0.125,\"threshold\":0.25,\"entering\":true}", t);
        expect_line(&c, want);
        snprintf(want, sizeof(want), "{\"seq\":6,%s,\"type\":77,\"pool\":\"pool\\\"x\"}", t);
        expect_line(&c, want);
        snprintf(want, sizeof(want), "{\"seq\":7,%s,\"type\":\"shutdown\",\"pool\":\"pool\\\"x\"}", t);
        expect_line(&c, want);
        fclose(c.out);
        nng_close(c.pub);
}

Test(ctl_events, readable_and_count)
{
        struct ctl c;
        ctl_start(&c, "--count", "4", NULL);
        send_raw(&c, KVD_EV_STORED, 10, 1);
        send_raw(&c, KVD_EV_EVICTED, 14, 2);
        send_raw(&c, KVD_EV_PRESSURE, 15, 0);
        send_raw(&c, KVD_EV_RESET, 16, 3);
        send_raw(&c, KVD_EV_STORED, 17, 3); /* past --count: not printed */
        cr_assert_eq(ctl_wait(&c), 0);
        expect_page_text(&c, 10, "stored", 1);
        expect_line(&c, "missed 3 events (seq 11..13)");
        expect_page_text(&c, 14, "evicted", 2);
        expect_line(&c, "#15 2023-11-14T22:13:20.123456Z pressure pool=pool\"x free=0.1250 "
                    "threshold=0.2500 entering (fell below)");
        expect_line(&c, "#16 2023-11-14T22:13:20.123456Z reset    pool=pool\"x keys=3 (prefix keys dropped)");
        char line[256];
        cr_assert_null(fgets(line, sizeof(line), c.out), "extra output: %s", line);
        fclose(c.out);
        nng_close(c.pub);
}

/* A sequence number that goes back (a restarted daemon numbers from 1 again
 * on the same socket) is reported before the event, in both formats. */
Test(ctl_events, restart_is_reported)
{
        struct ctl c;

        ctl_start(&c, "--json", "--count", "3");
        send_raw(&c, KVD_EV_STORED, 7, 1);
        send_raw(&c, KVD_EV_STORED, 8, 2);
        send_raw(&c, KVD_EV_EVICTED, 1, 3);
        cr_assert_eq(ctl_wait(&c), 0);
        expect_page_json(&c, 7, "stored", 1);
        expect_page_json(&c, 8, "stored", 2);
        expect_line(&c, "{\"type\":\"restarted\",\"last_seq\":8,\"seq\":1}");
        expect_page_json(&c, 1, "evicted", 3);
        fclose(c.out);
        nng_close(c.pub);

        ctl_start(&c, "--count", "2", NULL);
        send_raw(&c, KVD_EV_STORED, 5, 1);
        send_raw(&c, KVD_EV_STORED, 5, 2); /* the same number again counts as going back */
        cr_assert_eq(ctl_wait(&c), 0);
        expect_page_text(&c, 5, "stored", 1);
        expect_line(&c, "sequence went back from 5 to 5 (the daemon restarted?)");
        expect_page_text(&c, 5, "stored", 2);
        fclose(c.out);
        nng_close(c.pub);
}

Test(ctl_events, sigint_and_usage)
{
        struct ctl c;
        ctl_start(&c, NULL, NULL, NULL);
        kill(c.pid, SIGINT);
        cr_assert_eq(ctl_wait(&c), 0, "SIGINT ends it with status 0");
        fclose(c.out);
        nng_close(c.pub);

        const char *exe = getenv("KVPOOLCTL");
        char cmd[512];
        snprintf(cmd, sizeof(cmd), "%s --events ipc:///tmp/kvtest-%d-x.sock events --count zero"
                 " >/dev/null 2>&1", exe, (int)getpid());
        int st = system(cmd);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "a bad --count is a usage error: %d", st);
        snprintf(cmd, sizeof(cmd), "%s --events ipc:///tmp/kvtest-%d-x.sock events --bogus"
                 " >/dev/null 2>&1", exe, (int)getpid());
        st = system(cmd);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "an unknown option is a usage error: %d", st);
        /* a daemon socket that is not ipc:// has no default event socket
         * beside it: a usage error that says so (not a made-up URL) */
        snprintf(cmd, sizeof(cmd), "%s --socket tcp://127.0.0.1:9 events >/dev/null 2>&1", exe);
        st = system(cmd);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "events without a default event socket: %d", st);
        snprintf(cmd, sizeof(cmd), "%s --socket tcp://127.0.0.1:9 events 2>&1 >/dev/null | "
                 "grep -q 'no default event socket for tcp://127.0.0.1:9'", exe);
        st = system(cmd);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the message does not name the missing default");
}

Test(ctl_events, no_daemon_is_an_error)
{
        const char *exe = getenv("KVPOOLCTL");
        cr_assert(exe && *exe);
        char cmd[512];
        snprintf(cmd, sizeof(cmd), "%s --events ipc:///tmp/kvtest-%d-nobody.sock events >/dev/null 2>&1",
                 exe, (int)getpid());
        int st = system(cmd);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1, "status %d", st);
}
