/* test_notify_unit.c - daemon/notify.c against a datagram socket standing in
 * for systemd's NOTIFY_SOCKET.  Criterion runs each test in its own process,
 * so notify.c's process-global state starts fresh in each. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
         * net.unix.max_dgram_qlen (10) messages before sd_notify blocks. */
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
