/* test_notify_unit.c - daemon/notify.c against a datagram socket standing in
 * for systemd's NOTIFY_SOCKET.  Criterion runs each test in its own process,
 * so notify.c's process-global state starts fresh in each. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "notify.h"
#include "svc_util.h"

static char sock_path[256];
static int sock_fd = -1;

static void setup(void)
{
        unsetenv("WATCHDOG_PID");
        unsetenv("WATCHDOG_USEC");
        sock_fd = svc_notify_socket(sock_path, sizeof(sock_path));
}

static void teardown(void)
{
        if (sock_fd >= 0)
                close(sock_fd);
        unlink(sock_path);
}

/* Drains every datagram that arrives within ms; returns how many. */
static int drain(int ms)
{
        char buf[1024];
        int n = 0;

        while (svc_recv(sock_fd, buf, sizeof(buf), ms) > 0)
                n++;
        return n;
}

TestSuite(notify, .init = setup, .fini = teardown);

Test(notify, off_without_notify_socket)
{
        unsetenv("NOTIFY_SOCKET");
        setenv("WATCHDOG_USEC", "400000", 1);
        cr_expect_eq(kvd_notify_init(), 0, "no NOTIFY_SOCKET: no watchdog duty");
        kvd_notify_ready("ready");
        kvd_notify_status("x");
        kvd_notify_watchdog();
        kvd_notify_stopping();
        cr_expect_eq(drain(50), 0, "nothing may be sent without NOTIFY_SOCKET");
}

Test(notify, interval_is_half_the_timeout)
{
        cr_expect_eq(kvd_notify_init(), 0, "no WATCHDOG_USEC: 0");
        setenv("WATCHDOG_USEC", "400000", 1);
        cr_expect_eq(kvd_notify_init(), 200000);
        setenv("WATCHDOG_PID", "1", 1); /* another process's watchdog */
        cr_expect_eq(kvd_notify_init(), 0, "WATCHDOG_PID of another process must be ignored");
        char pid[32];
        snprintf(pid, sizeof(pid), "%d", (int)getpid());
        setenv("WATCHDOG_PID", pid, 1);
        cr_expect_eq(kvd_notify_init(), 200000);
        setenv("WATCHDOG_USEC", "garbage", 1);
        cr_expect_eq(kvd_notify_init(), 0, "an unparsable WATCHDOG_USEC means no watchdog");
}

Test(notify, ready_carries_status_and_a_ping)
{
        char buf[1024], val[256];

        setenv("WATCHDOG_USEC", "400000", 1);
        kvd_notify_init();
        kvd_notify_ready("1 pool, 0/512 pages used, 0 clients");
        cr_assert_gt(svc_recv(sock_fd, buf, sizeof(buf), 1000), 0, "no READY datagram");
        cr_expect(svc_has_line(buf, "READY=1", NULL, 0), "got: %s", buf);
        cr_expect(svc_has_line(buf, "STATUS=", val, sizeof(val)), "got: %s", buf);
        cr_expect_str_eq(val, "1 pool, 0/512 pages used, 0 clients");
        cr_expect(svc_has_line(buf, "WATCHDOG=1", NULL, 0), "READY should also ping: %s", buf);
}

Test(notify, status_only_on_change)
{
        char buf[1024], val[256];

        kvd_notify_init();
        kvd_notify_ready("a");
        cr_assert_gt(svc_recv(sock_fd, buf, sizeof(buf), 1000), 0);
        cr_expect(!svc_has_line(buf, "WATCHDOG=1", NULL, 0), "no watchdog configured: %s", buf);
        kvd_notify_status("a"); /* same as READY's: nothing */
        kvd_notify_status("b");
        kvd_notify_status("b");
        kvd_notify_status("b");
        kvd_notify_status("c");
        kvd_notify_status(NULL);
        cr_assert_gt(svc_recv(sock_fd, buf, sizeof(buf), 1000), 0);
        cr_expect(svc_has_line(buf, "STATUS=", val, sizeof(val)));
        cr_expect_str_eq(val, "b");
        cr_assert_gt(svc_recv(sock_fd, buf, sizeof(buf), 1000), 0);
        cr_expect(svc_has_line(buf, "STATUS=", val, sizeof(val)));
        cr_expect_str_eq(val, "c");
        cr_expect_eq(drain(100), 0, "repeated lines must not be re-sent");
}

Test(notify, status_is_one_line)
{
        char buf[1024], val[512], longline[1000];

        kvd_notify_init();
        kvd_notify_status("pools ok\nREADY=1\tx");
        cr_assert_gt(svc_recv(sock_fd, buf, sizeof(buf), 1000), 0);
        cr_expect(!svc_has_line(buf, "READY=1", NULL, 0), "a newline in the status became an assignment: %s", buf);
        cr_expect(svc_has_line(buf, "STATUS=", val, sizeof(val)));
        cr_expect_str_eq(val, "pools ok READY=1 x");

        memset(longline, 'x', sizeof(longline) - 1);
        longline[sizeof(longline) - 1] = '\0';
        kvd_notify_status(longline);
        cr_assert_gt(svc_recv(sock_fd, buf, sizeof(buf), 1000), 0);
        cr_expect(svc_has_line(buf, "STATUS=", val, sizeof(val)));
        cr_expect(strlen(val) > 100 && strlen(val) < 300, "long status is truncated, got %zu bytes", strlen(val));
}

Test(notify, watchdog_is_rate_limited)
{
        char buf[256];
        int pings = 0;

        setenv("WATCHDOG_USEC", "200000", 1);
        cr_assert_eq(kvd_notify_init(), 100000);
        /* A busy loop calls it after every request: no datagram per call. */
        for (int i = 0; i < 10000; i++)
                kvd_notify_watchdog();
        cr_expect_leq(drain(20), 1, "a burst of calls right after init must not ping each time");

        /* Calls every 5 ms for 600 ms: a ping at most every half interval
         * (50 ms) => at most 13, and at least one per interval => at least 5. */
        /* Read while calling: an AF_UNIX datagram queue holds only
         * net.unix.max_dgram_qlen (10) messages; beyond that pings are
         * coalesced (see full_socket_never_blocks) and the count is off. */
        uint64_t end = svc_now_usec() + 600000;
        while (svc_now_usec() < end) {
                kvd_notify_watchdog();
                if (svc_recv(sock_fd, buf, sizeof(buf), 5) > 0) {
                        cr_expect_str_eq(buf, "WATCHDOG=1");
                        pings++;
                }
        }
        while (svc_recv(sock_fd, buf, sizeof(buf), 50) > 0)
                pings++;
        cr_expect(pings >= 5 && pings <= 13, "%d pings in 600 ms with a 100 ms interval", pings);
}

Test(notify, no_ping_without_watchdog)
{
        kvd_notify_init();
        for (int i = 0; i < 5; i++) {
                kvd_notify_watchdog();
                usleep(20000);
        }
        cr_expect_eq(drain(50), 0, "no WATCHDOG_USEC: no pings");
}

Test(notify, stopping)
{
        char buf[256];

        kvd_notify_init();
        kvd_notify_stopping();
        cr_assert_gt(svc_recv(sock_fd, buf, sizeof(buf), 1000), 0);
        cr_expect(svc_has_line(buf, "STOPPING=1", NULL, 0), "got: %s", buf);
}

Test(notify, bad_socket_does_not_crash)
{
        setenv("NOTIFY_SOCKET", "/nonexistent/dir/notify.sock", 1);
        setenv("WATCHDOG_USEC", "100000", 1);
        cr_expect_eq(kvd_notify_init(), 50000);
        kvd_notify_ready("x");
        usleep(30000);
        kvd_notify_watchdog();
        kvd_notify_status("y");
        kvd_notify_stopping();
}

/* kvpoold announces READY before its serving loop calls kvd_notify_init():
 * every entry point must initialize itself. */
Test(notify, ready_before_init)
{
        char buf[1024], val[256];

        setenv("WATCHDOG_USEC", "400000", 1);
        kvd_notify_ready("early");
        cr_assert_gt(svc_recv(sock_fd, buf, sizeof(buf), 1000), 0, "READY before init was not sent");
        cr_expect(svc_has_line(buf, "READY=1", NULL, 0), "got: %s", buf);
        cr_expect(svc_has_line(buf, "WATCHDOG=1", NULL, 0), "got: %s", buf);
        /* The loop's init afterwards keeps the status memory. */
        cr_expect_eq(kvd_notify_init(), 200000);
        kvd_notify_status("early");
        cr_expect_eq(drain(100), 0, "an unchanged line after re-init must not be re-sent");
        kvd_notify_status("later");
        cr_assert_gt(svc_recv(sock_fd, buf, sizeof(buf), 1000), 0);
        cr_expect(svc_has_line(buf, "STATUS=", val, sizeof(val)));
        cr_expect_str_eq(val, "later");
}

Test(notify, watchdog_before_init)
{
        char buf[256];

        setenv("WATCHDOG_USEC", "100000", 1);
        usleep(30000);
        kvd_notify_watchdog(); /* initializes: the clock starts now, no ping yet */
        usleep(30000);
        kvd_notify_watchdog(); /* 30 ms >= 25 ms: ping */
        cr_assert_gt(svc_recv(sock_fd, buf, sizeof(buf), 1000), 0, "no ping");
        cr_expect_str_eq(buf, "WATCHDOG=1");
}

/* Fills the notify socket's queue from a socket of the test's own until a
 * send would block (net.unix.max_dgram_qlen datagrams, 10 by default): from
 * then on the daemon's datagrams do not fit either.  Returns how many. */
static int fill_queue(void)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0), n = 0;

        cr_assert(fd >= 0);
        strcpy(sa.sun_path, sock_path);
        while (n < 100000 && sendto(fd, "FILLER=1", 8, MSG_DONTWAIT, (struct sockaddr *)&sa, sizeof(sa)) == 8)
                n++;
        cr_assert(errno == EAGAIN || errno == EWOULDBLOCK, "filling the queue: %s", strerror(errno));
        close(fd);
        cr_assert_gt(n, 0);
        return n;
}

/* Sends stderr (kvd_log writes fd 2) to a fresh file until restore_stderr. */
static int capture_stderr(char *path, size_t cap)
{
        int saved = dup(2), fd;

        svc_tmp_path(path, cap, "stderr");
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        cr_assert(saved >= 0 && fd >= 0);
        dup2(fd, 2);
        close(fd);
        return saved;
}

/* Restores stderr; returns how many lines of the capture contain needle. */
static int restore_stderr(int saved, const char *path, const char *needle)
{
        char  line[2048];
        int   n = 0;
        FILE *f;

        dup2(saved, 2);
        close(saved);
        f = fopen(path, "r");
        cr_assert(f);
        while (fgets(line, sizeof(line), f))
                n += strstr(line, needle) != NULL;
        fclose(f);
        unlink(path);
        return n;
}

/* A receiver that does not read must not hold up the serving loop: with the
 * queue full, every call returns at once (sd_notify blocked in the first
 * one, and the suite's timeout failed the test), the failure is logged once,
 * and once the reader reads, one datagram brings READY=1 with the latest
 * STATUS= and a ping, not the history. */
Test(notify, full_socket_never_blocks, .timeout = 20)
{
        char     buf[1024], val[256], errpath[256], line[64];
        int      filler, saved, got = 0;
        uint64_t worst = 0;

        setenv("WATCHDOG_USEC", "20000", 1); /* a ping is due every 5 ms */
        cr_assert_eq(kvd_notify_init(), 10000);
        filler = fill_queue();
        saved = capture_stderr(errpath, sizeof(errpath));
        for (int i = 0; i < 3 * filler + 10; i++) {
                uint64_t t0 = svc_now_usec(), dt;

                if (i == 0) {
                        kvd_notify_ready("starting");
                } else {
                        snprintf(line, sizeof(line), "line %d", i);
                        kvd_notify_status(line);
                        kvd_notify_watchdog();
                }
                dt = svc_now_usec() - t0;
                worst = dt > worst ? dt : worst;
                usleep(2000);
        }
        cr_expect_eq(restore_stderr(saved, errpath, "NOTIFY_SOCKET"), 1, "the blocked send is logged once");
        cr_expect_lt(worst, 100000, "a call took %llu us with the notify queue full", (unsigned long long)worst);

        /* The reader catches up: the filler, and nothing of ours fitted. */
        while (svc_recv(sock_fd, buf, sizeof(buf), 0) > 0) {
                cr_expect_str_eq(buf, "FILLER=1");
                got++;
        }
        cr_expect_eq(got, filler);
        kvd_notify_watchdog(); /* the next tick sends what is pending */
        cr_assert_gt(svc_recv(sock_fd, buf, sizeof(buf), 1000), 0, "READY=1 was lost");
        cr_expect(svc_has_line(buf, "READY=1", NULL, 0), "got: %s", buf);
        cr_expect(svc_has_line(buf, "STATUS=", val, sizeof(val)), "got: %s", buf);
        snprintf(line, sizeof(line), "line %d", 3 * filler + 9);
        cr_expect_str_eq(val, line, "the latest status, not an older one");
        cr_expect(svc_has_line(buf, "WATCHDOG=1", NULL, 0), "got: %s", buf);
        kvd_notify_status(line);
        cr_expect_eq(drain(50), 0, "sent once");
}

/* STOPPING=1 has no later tick: it is retried for a while (the reader
 * starts reading 200 ms later and gets it) and never for long. */
static void *read_later(void *arg)
{
        char buf[1024];
        int *seen = arg;

        usleep(200000);
        while (svc_recv(sock_fd, buf, sizeof(buf), 500) > 0)
                *seen |= svc_has_line(buf, "STOPPING=1", NULL, 0);
        return NULL;
}

Test(notify, stopping_is_retried_briefly, .timeout = 20)
{
        pthread_t th;
        uint64_t  t0, dt;
        int       seen = 0;

        kvd_notify_init();
        fill_queue();
        cr_assert_eq(pthread_create(&th, NULL, read_later, &seen), 0);
        t0 = svc_now_usec();
        kvd_notify_stopping();
        dt = svc_now_usec() - t0;
        pthread_join(th, NULL);
        cr_expect(seen, "STOPPING=1 was lost although the reader read within 200 ms");
        cr_expect_lt(dt, 900000, "stopping took %llu us", (unsigned long long)dt);

        /* A reader that never reads holds the exit up for about a second. */
        fill_queue();
        t0 = svc_now_usec();
        kvd_notify_stopping();
        dt = svc_now_usec() - t0;
        cr_expect(dt >= 500000 && dt < 3000000, "stopping with nobody reading took %llu us", (unsigned long long)dt);
}

/* NOTIFY_SOCKET="@name" is an abstract address, as sd_notify reads it. */
Test(notify, abstract_address)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        char name[64], env[80], buf[256];
        int  fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

        cr_assert(fd >= 0);
        snprintf(name, sizeof(name), "kvtest-notify-%d", (int)getpid());
        memcpy(sa.sun_path + 1, name, strlen(name));
        socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name));

        cr_assert(bind(fd, (struct sockaddr *)&sa, len) == 0, "bind: %s", strerror(errno));
        snprintf(env, sizeof(env), "@%s", name);
        setenv("NOTIFY_SOCKET", env, 1);
        kvd_notify_ready(NULL);
        cr_assert_gt(svc_recv(fd, buf, sizeof(buf), 1000), 0, "nothing on the abstract socket");
        cr_expect_str_eq(buf, "READY=1");
        close(fd);
}

/* An address it cannot use ("vsock:", a relative path) sends nothing,
 * crashes nothing, and is reported once. */
Test(notify, unusable_address)
{
        char errpath[256];
        int  saved;

        setenv("NOTIFY_SOCKET", "relative/notify.sock", 1);
        saved = capture_stderr(errpath, sizeof(errpath));
        kvd_notify_ready("x");
        kvd_notify_status("y");
        kvd_notify_stopping();
        cr_expect_eq(restore_stderr(saved, errpath, "NOTIFY_SOCKET"), 1);
}

/* "@" alone is no address to sd_notify (EINVAL): nothing may reach the
 * abstract socket whose name is empty (what "@" would otherwise name),
 * and the unusable address is reported once. */
Test(notify, bare_at_is_no_address)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        char errpath[256], buf[256];
        int  saved, fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

        cr_assert(fd >= 0);
        /* the empty abstract name: a leading NUL and nothing after it */
        if (bind(fd, (struct sockaddr *)&sa, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1)) != 0)
                cr_skip_test("cannot bind the empty abstract name: %s", strerror(errno));
        setenv("NOTIFY_SOCKET", "@", 1);
        saved = capture_stderr(errpath, sizeof(errpath));
        kvd_notify_ready("x");
        kvd_notify_status("y");
        cr_expect_eq(restore_stderr(saved, errpath, "NOTIFY_SOCKET"), 1, "an unusable address is reported once");
        cr_expect_leq(svc_recv(fd, buf, sizeof(buf), 100), 0, "\"@\" sent to the empty abstract name: %s", buf);
        close(fd);
}
