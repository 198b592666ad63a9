/* notify.c - the systemd service protocol: READY=1, STATUS=, WATCHDOG=1 and
 * STOPPING=1, sent as datagrams to $NOTIFY_SOCKET.
 *
 * Started by hand (no NOTIFY_SOCKET), every function is a cheap no-op.  Under
 * systemd (Type=notify, WatchdogSec=) the daemon announces readiness only
 * once every pool exists and the request socket listens, keeps a one-line
 * STATUS= summary current, pings the watchdog from the serving loop itself
 * (a wedged loop stops pinging and systemd restarts the service), and says
 * STOPPING=1 when it begins to shut down.
 *
 * No send ever waits.  sd_notify() sends with a blocking sendmsg: when the
 * receiver does not read (systemd busy, or a NOTIFY_SOCKET nobody reads) and
 * its queue is full (net.unix.max_dgram_qlen: 10 by default, 512 once
 * systemd as PID 1 has raised it) it blocks, and
 * with it the serving loop and every client.  So the datagram is sent here
 * on a non-blocking socket (MSG_DONTWAIT).  What cannot be sent now stays
 * pending as state, not as a queue of messages: READY=1 and STOPPING=1 are
 * flags that stay set until a datagram carrying them is sent, STATUS= is the
 * latest line only, WATCHDOG=1 one ping.  Every later call (the loop calls
 * the watchdog and status functions each tick) retries first; STOPPING=1,
 * which has no later tick, is retried for at most STOP_RETRY_MS.
 *
 * Why this rather than sd_notify on a thread of its own: the watchdog's
 * meaning comes for free.  Every datagram, a retry included, is sent by a
 * call the serving loop (or, at start and stop, the main thread) makes, so a
 * wedged loop sends nothing.  A notify thread would need a heartbeat from
 * the loop to decide whether to ping, a start and a join (a join that waits
 * on a blocked sd_notify at shutdown), and would still lose STOPPING=1 or
 * block on it.  The price is the address parsing sd_notify did: absolute
 * paths and abstract ("@name") addresses are handled; "vsock:" addresses and
 * paths longer than sun_path (newer systemd accepts both) are reported once
 * and nothing is sent.  libsystemd is still used for sd_watchdog_enabled.
 *
 * State is process-global because the protocol is: there is one service
 * manager and one NOTIFY_SOCKET per process.  A mutex makes the functions
 * safe from any thread; it is never held across a wait.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "log.h"
#include "notify.h"

/* A STATUS= line longer than this is truncated: systemctl shows one line. */
#define STATUS_MAX 256
/* How long kvd_notify_stopping() keeps retrying a STOPPING=1 that would
 * block, and how long it pauses between tries.  Shutdown has no later tick
 * to retry on; a bound keeps a receiver that never reads from holding the
 * exit up (systemd's own stop timeout is far longer). */
#define STOP_RETRY_MS 1000
#define STOP_PAUSE_MS 10

/* What is still to be sent (bits of `pending`). */
enum {
        P_READY    = 1u << 0,
        P_STOPPING = 1u << 1,
        P_STATUS   = 1u << 2, /* last_status */
        P_WATCHDOG = 1u << 3,
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static bool     initialized;      /* init_locked ran */
static bool     enabled;          /* NOTIFY_SOCKET was set at init */
static uint64_t wd_interval_usec; /* half the watchdog timeout, 0 = no watchdog */
static uint64_t wd_last_usec;     /* CLOCK_MONOTONIC of the last WATCHDOG=1 */
static char     last_status[STATUS_MAX]; /* the latest line, sent or pending */
static bool     have_status;
static unsigned pending;          /* P_* bits; read without the lock in the watchdog fast path */
static bool     warned;           /* a failed or blocked send was logged once */
static int      sock_fd = -1;     /* non-blocking AF_UNIX datagram socket, unconnected */
static struct sockaddr_un addr;   /* $NOTIFY_SOCKET */
static socklen_t addr_len;
static int      addr_err;         /* negative errno when NOTIFY_SOCKET cannot be used */

static uint64_t now_usec(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void set_pending(unsigned bits)
{
        __atomic_store_n(&pending, bits, __ATOMIC_RELAXED);
}

/* Logs the first failed or blocked send; called with the lock held.  A
 * failure must not stop the daemon, and repeating it on every tick would
 * flood the journal. */
static void warn_once(int r)
{
        if (warned)
                return;
        warned = true;
        if (r == -EAGAIN)
                kvd_warn("$NOTIFY_SOCKET (%s) is full: its reader is not reading; the latest state is kept "
                         "and sent when it can be (further failures are not logged)",
                         getenv("NOTIFY_SOCKET") ? getenv("NOTIFY_SOCKET") : "?");
        else if (r == -ENOBUFS || r == -ENOMEM)
                kvd_warn("notify to $NOTIFY_SOCKET: %s; the latest state is kept and sent when it can be "
                         "(further failures are not logged)", strerror(-r));
        else
                kvd_warn("notify to $NOTIFY_SOCKET failed: %s (further failures are not logged)", strerror(-r));
}

/* Fills addr/addr_len from NOTIFY_SOCKET as sd_notify does for "/path" and
 * "@abstract".  Returns 0 or a negative errno. */
static int parse_address(const char *s)
{
        size_t len = strlen(s);

        /* "@" or "/" alone names nothing; sd_notify refuses them (EINVAL)
         * rather than sending to the empty abstract name or to "/" */
        if (len < 2)
                return s[0] == '@' || s[0] == '/' ? -EINVAL : -EAFNOSUPPORT;
        memset(&addr, 0, sizeof(addr));
        addr.sun_family = AF_UNIX;
        if (s[0] == '/') {
                if (len >= sizeof(addr.sun_path))
                        return -ENAMETOOLONG;
                memcpy(addr.sun_path, s, len + 1);
                addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
                return 0;
        }
        if (s[0] == '@') {
                /* abstract: a leading NUL, the name, no terminator */
                if (len > sizeof(addr.sun_path))
                        return -ENAMETOOLONG;
                memcpy(addr.sun_path + 1, s + 1, len - 1);
                addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
                return 0;
        }
        return -EAFNOSUPPORT; /* "vsock:...", a relative path */
}

/* Sends msg as one datagram without waiting.  Returns 0, -EAGAIN when it
 * would block, -ENOBUFS / -ENOMEM when the kernel is short of memory (both
 * worth a retry: flush_locked), or another negative errno (not worth one). */
static int send_datagram(const char *msg)
{
        ssize_t n;

        if (addr_err)
                return addr_err;
        do
                n = sendto(sock_fd, msg, strlen(msg), MSG_DONTWAIT | MSG_NOSIGNAL, (const struct sockaddr *)&addr,
                           addr_len);
        while (n < 0 && errno == EINTR);
        if (n >= 0)
                return 0;
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
}

/* Builds the next datagram from the pending bits into msg and returns the
 * bits it carries.  Assignments come in the order the old messages had
 * (READY/STOPPING, STATUS, WATCHDOG), so an unblocked send is the same
 * datagram as before.  READY=1 and STOPPING=1 both pending go in two
 * datagrams: older systemd applies both flags of one datagram in its own
 * order, not ours. */
static unsigned compose(char *msg, size_t cap)
{
        unsigned carry = pending;
        size_t   n = 0;

        if ((carry & P_READY) && (carry & P_STOPPING))
                carry &= ~(P_STOPPING | P_STATUS);
        if (carry & P_READY)
                n += (size_t)snprintf(msg + n, cap - n, "READY=1\n");
        if (carry & P_STOPPING)
                n += (size_t)snprintf(msg + n, cap - n, "STOPPING=1\n");
        if ((carry & P_STATUS) && have_status)
                n += (size_t)snprintf(msg + n, cap - n, "STATUS=%s\n", last_status);
        if (carry & P_WATCHDOG)
                n += (size_t)snprintf(msg + n, cap - n, "WATCHDOG=1\n");
        if (n)
                msg[n - 1] = '\0'; /* no newline after the last assignment */
        else
                msg[0] = '\0';
        return carry;
}

/* Sends everything pending; called with the lock held, never waits.
 * Returns true when nothing is left pending.  A datagram that fails for a
 * reason other than a full queue is dropped (logged once), as sd_notify's
 * failures were: retrying a missing socket would only fail again. */
static bool flush_locked(void)
{
        while (pending) {
                char     msg[STATUS_MAX + 64];
                unsigned carry = compose(msg, sizeof(msg));
                int      r = msg[0] ? send_datagram(msg) : 0;

                if (r == -EAGAIN || r == -ENOBUFS || r == -ENOMEM) {
                        warn_once(r); /* the kernel short of memory: worth a retry too */
                        return false;
                }
                if (r < 0)
                        warn_once(r);
                set_pending(pending & ~carry);
        }
        return true;
}

/* Copies line into dst as one line of at most STATUS_MAX-1 bytes: a newline
 * would start a new KEY=VALUE assignment in the notify datagram, so control
 * characters become spaces. */
static void sanitize(char *dst, const char *line)
{
        size_t i = 0;

        for (; line && line[i] && i < STATUS_MAX - 1; i++) {
                unsigned char ch = (unsigned char)line[i];

                dst[i] = ch < 0x20 || ch == 0x7f ? ' ' : (char)ch;
        }
        dst[i] = '\0';
}

/* Reads NOTIFY_SOCKET and WATCHDOG_USEC; called with the lock held.  The
 * last STATUS= line and whatever is pending are kept across a re-init, so an
 * unchanged line is not sent twice and nothing pending is lost. */
static void init_locked(void)
{
        const char *ns = getenv("NOTIFY_SOCKET");
        uint64_t    usec = 0;
        int         r;

        /* Stores are atomic because kvd_notify_watchdog() reads these two
         * without the lock. */
        __atomic_store_n(&enabled, ns != NULL, __ATOMIC_RELAXED);
        if (sock_fd >= 0) {
                close(sock_fd);
                sock_fd = -1;
        }
        addr_err = ns ? parse_address(ns) : -ENOTCONN;
        if (!addr_err) {
                /* unconnected: sendto looks the path up on each send, as
                 * sd_notify's fresh socket did, so a manager that re-binds
                 * it is still reached */
                sock_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
                if (sock_fd < 0)
                        addr_err = -errno;
        }
        /* sd_watchdog_enabled also checks WATCHDOG_PID against our pid, so a
         * variable inherited from a parent is ignored.  Keep the environment:
         * nothing is forked, and the values are useful in /proc for
         * debugging. */
        r = sd_watchdog_enabled(0, &usec);
        __atomic_store_n(&wd_interval_usec, ns && r > 0 ? usec / 2 : 0, __ATOMIC_RELAXED);
        wd_last_usec = now_usec();
        __atomic_store_n(&initialized, true, __ATOMIC_RELEASE);
}

/* Every entry point initializes on first use, so the order in which the
 * daemon calls them (ready before the loop's init, say) does not matter. */
static inline void ensure_init_locked(void)
{
        if (!initialized)
                init_locked();
}

/* Returns the interval (usec) at which the serving loop must call
 * kvd_notify_watchdog(): half of WATCHDOG_USEC, or 0 without a watchdog (or
 * without NOTIFY_SOCKET, or when WATCHDOG_PID names another process).
 * Re-reads the environment each time it is called. */
uint64_t kvd_notify_init(void)
{
        uint64_t usec;

        pthread_mutex_lock(&lock);
        init_locked();
        usec = wd_interval_usec;
        pthread_mutex_unlock(&lock);
        return usec;
}

/* Tells the service manager that the daemon is ready (every pool exists and
 * clients can attach), with status_line (may be NULL) as its STATUS=.  Also
 * counts as a watchdog ping.  Never waits: READY=1 that would block stays
 * pending and goes with the next call that can send. */
void kvd_notify_ready(const char *status_line)
{
        pthread_mutex_lock(&lock);
        ensure_init_locked();
        if (!enabled)
                goto out;
        if (status_line) {
                sanitize(last_status, status_line);
                have_status = true;
                set_pending(pending | P_STATUS);
        }
        set_pending(pending | P_READY | (wd_interval_usec ? P_WATCHDOG : 0));
        wd_last_usec = now_usec();
        flush_locked();
out:
        pthread_mutex_unlock(&lock);
}

/* Sends STATUS=status_line, but only when it differs from the latest line
 * (the loop may call this after every request: an unchanged line costs a
 * string compare, not a syscall, unless something is pending, which is then
 * retried).  Never waits. */
void kvd_notify_status(const char *status_line)
{
        char line[STATUS_MAX];

        if (!status_line)
                return;
        pthread_mutex_lock(&lock);
        ensure_init_locked();
        if (!enabled)
                goto out;
        sanitize(line, status_line);
        if (!have_status || strcmp(line, last_status) != 0) {
                memcpy(last_status, line, sizeof(line));
                have_status = true;
                set_pending(pending | P_STATUS);
        }
        if (pending)
                flush_locked();
out:
        pthread_mutex_unlock(&lock);
}

/* Sends WATCHDOG=1 when enough time has passed since the last ping, and
 * retries whatever is pending.  Never waits.
 *
 * The loop wakes at least every interval (= timeout/2) but also after every
 * request, so a request arriving just before a due ping would push the next
 * wake-up (and ping) to almost a full timeout later.  Pinging once half an
 * interval has passed keeps the worst-case gap at about 1.5 intervals
 * (3/4 of the timeout) while a busy loop still pays only a clock read per
 * request. */
void kvd_notify_watchdog(void)
{
        uint64_t now;

        /* Fast path without the lock: after init, enabled and the interval
         * only change in a re-init, which a stale read merely delays by one
         * call; a stale `pending` delays a retry by one call. */
        if (__atomic_load_n(&initialized, __ATOMIC_ACQUIRE) &&
            (!__atomic_load_n(&enabled, __ATOMIC_RELAXED) ||
             (!__atomic_load_n(&wd_interval_usec, __ATOMIC_RELAXED) && !__atomic_load_n(&pending, __ATOMIC_RELAXED))))
                return;
        now = now_usec();
        pthread_mutex_lock(&lock);
        ensure_init_locked();
        if (!enabled)
                goto out;
        if (wd_interval_usec && now - wd_last_usec >= wd_interval_usec / 2) {
                /* pending until sent: a late ping still comes from a live
                 * loop, because only the loop's own calls send it */
                set_pending(pending | P_WATCHDOG);
                wd_last_usec = now;
        }
        if (pending)
                flush_locked();
out:
        pthread_mutex_unlock(&lock);
}

/* Tells the service manager that shutdown has begun (SIGTERM/SIGINT), so
 * `systemctl status` shows "deactivating" and the watchdog stops mattering.
 * The one function that may wait: a STOPPING=1 that would block is retried
 * for at most STOP_RETRY_MS (then it stays pending, probably for good). */
void kvd_notify_stopping(void)
{
        uint64_t deadline = now_usec() + STOP_RETRY_MS * 1000u;

        pthread_mutex_lock(&lock);
        ensure_init_locked();
        if (!enabled)
                goto out;
        memcpy(last_status, "shutting down", sizeof("shutting down"));
        have_status = true;
        set_pending(pending | P_STOPPING | P_STATUS);
        while (!flush_locked() && now_usec() < deadline) {
                struct timespec pause = { 0, STOP_PAUSE_MS * 1000000L };

                pthread_mutex_unlock(&lock);
                nanosleep(&pause, NULL);
                pthread_mutex_lock(&lock);
        }
out:
        pthread_mutex_unlock(&lock);
}
