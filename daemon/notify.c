/* notify.c - the systemd service protocol (sd_notify): READY=1, STATUS=,
 * WATCHDOG=1 and STOPPING=1.
 *
 * Started by hand (no NOTIFY_SOCKET), every function is a cheap no-op.  Under
 * systemd (Type=notify, WatchdogSec=) the daemon announces readiness only
 * once every pool exists and the request socket listens, keeps a one-line
 * STATUS= summary current, pings the watchdog from the serving loop itself
 * (a wedged loop stops pinging and systemd restarts the service), and says
 * STOPPING=1 when it begins to shut down.
 *
 * State is process-global because the protocol is: there is one service
 * manager and one NOTIFY_SOCKET per process.  A mutex makes the functions
 * safe from any thread (the serving loop calls them; startup and shutdown
 * may call them from the main thread).
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <systemd/sd-daemon.h>

#include "log.h"
#include "notify.h"

/* A STATUS= line longer than this is truncated: systemctl shows one line. */
#define STATUS_MAX 256

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static bool     initialized;      /* init_locked ran */
static bool     enabled;          /* NOTIFY_SOCKET was set at init */
static uint64_t wd_interval_usec; /* half the watchdog timeout, 0 = no watchdog */
static uint64_t wd_last_usec;     /* CLOCK_MONOTONIC of the last WATCHDOG=1 */
static char     last_status[STATUS_MAX];
static bool     have_status;
static bool     warned;           /* a failed send was logged once */

static uint64_t now_usec(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Sends one datagram; called with the lock held.  A failure (the manager's
 * socket vanished, a bad NOTIFY_SOCKET) is logged once: it must not stop the
 * daemon, and repeating it on every watchdog tick would flood the journal. */
static void send_state(const char *state)
{
        int r = sd_notify(0, state);

        if (r < 0 && !warned) {
                warned = true;
                kvd_warn("sd_notify to $NOTIFY_SOCKET failed: %s (further failures are not logged)",
                         strerror(-r));
        }
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
 * last STATUS= line is kept across a re-init, so an unchanged line is not
 * sent twice. */
static void init_locked(void)
{
        uint64_t usec = 0;
        int r;

        /* Stores are atomic because kvd_notify_watchdog() reads these two
         * without the lock. */
        __atomic_store_n(&enabled, getenv("NOTIFY_SOCKET") != NULL, __ATOMIC_RELAXED);
        /* sd_watchdog_enabled also checks WATCHDOG_PID against our pid, so a
         * variable inherited from a parent is ignored.  Keep the environment:
         * nothing is forked, and the values are useful in /proc for
         * debugging. */
        r = sd_watchdog_enabled(0, &usec);
        __atomic_store_n(&wd_interval_usec, enabled && r > 0 ? usec / 2 : 0, __ATOMIC_RELAXED);
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
 * counts as a watchdog ping. */
void kvd_notify_ready(const char *status_line)
{
        char line[STATUS_MAX];

        pthread_mutex_lock(&lock);
        ensure_init_locked();
        if (!enabled)
                goto out;
        if (status_line) {
                char msg[STATUS_MAX + 32];

                sanitize(line, status_line);
                snprintf(msg, sizeof(msg), "READY=1\nSTATUS=%s%s", line,
                         wd_interval_usec ? "\nWATCHDOG=1" : "");
                send_state(msg);
                memcpy(last_status, line, sizeof(line));
                have_status = true;
        } else {
                send_state(wd_interval_usec ? "READY=1\nWATCHDOG=1" : "READY=1");
        }
        wd_last_usec = now_usec();
out:
        pthread_mutex_unlock(&lock);
}

/* Sends STATUS=status_line, but only when it differs from the last line sent
 * (the loop may call this after every request: an unchanged line costs a
 * string compare, not a syscall). */
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
        if (have_status && strcmp(line, last_status) == 0)
                goto out;
        {
                char msg[STATUS_MAX + 8];

                snprintf(msg, sizeof(msg), "STATUS=%s", line);
                send_state(msg);
        }
        memcpy(last_status, line, sizeof(line));
        have_status = true;
out:
        pthread_mutex_unlock(&lock);
}

/* Sends WATCHDOG=1 when enough time has passed since the last ping.
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
         * call. */
        if (__atomic_load_n(&initialized, __ATOMIC_ACQUIRE) &&
            (!__atomic_load_n(&enabled, __ATOMIC_RELAXED) ||
             !__atomic_load_n(&wd_interval_usec, __ATOMIC_RELAXED)))
                return;
        now = now_usec();
        pthread_mutex_lock(&lock);
        ensure_init_locked();
        if (enabled && wd_interval_usec && now - wd_last_usec >= wd_interval_usec / 2) {
                send_state("WATCHDOG=1");
                wd_last_usec = now;
        }
        pthread_mutex_unlock(&lock);
}

/* Tells the service manager that shutdown has begun (SIGTERM/SIGINT), so
 * `systemctl status` shows "deactivating" and the watchdog stops mattering. */
void kvd_notify_stopping(void)
{
        pthread_mutex_lock(&lock);
        ensure_init_locked();
        if (enabled)
                send_state("STOPPING=1\nSTATUS=shutting down");
        pthread_mutex_unlock(&lock);
}
