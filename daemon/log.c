/* log.c - leveled logging to stderr with sd-daemon priority prefixes.
 *
 * Under systemd, stderr is a stream socket to journald.  A journald that
 * does not read (stopped, wedged, rate limiting on a full socket) would
 * make a blocking write(2) hold up whichever thread logs, the serving loop
 * among them.  So when stderr is a socket, a line is sent with
 * MSG_DONTWAIT: a line that finds the socket full is dropped and counted,
 * and the next line that goes out is preceded by one that says how many
 * were lost.  A line sent in part (the socket had room for some of it) is
 * finished within LINE_WAIT_MS, waiting for room with poll, else the rest
 * is dropped too and the next line out begins with the newline that ends
 * the cut one.  Lines are sent under a mutex, so the threads' lines do not
 * mix; a thread that logs waits at most for the lines ahead of it, each at
 * most 2 x LINE_WAIT_MS (the dropped-lines note and the line), and on a
 * Unix stream socket a line of at most LINE_MAX_BYTES goes whole or not at
 * all in practice.  A terminal, file or pipe keeps the plain blocking
 * write.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include "log.h"
#include "ticker.h" /* kvd_mono_ms */

#define LINE_MAX_BYTES 1024
#define LINE_WAIT_MS 100 /* to finish a line sent in part */

/* stderr as a socket: -1 not probed yet, 0 no, 1 yes (kvd_log_probe_stderr) */
static int stderr_sock = -1;
static pthread_mutex_t sock_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long long dropped; /* lines dropped since the last line out (sock_lock) */
static unsigned long long dropped_total; /* since start, for kvd_log_dropped (sock_lock) */
static int cut;                          /* a line went out in part: end it first (sock_lock) */

/* Read by every thread, written once at startup (and by tests): a plain int
 * with relaxed atomics is enough. */
static int threshold = KVD_LOG_INFO;

void kvd_log_set_level(int level)
{
        if (level < KVD_LOG_ERR)
                level = KVD_LOG_ERR;
        if (level > KVD_LOG_DEBUG)
                level = KVD_LOG_DEBUG;
        __atomic_store_n(&threshold, level, __ATOMIC_RELAXED);
}

int kvd_log_get_level(void)
{
        return __atomic_load_n(&threshold, __ATOMIC_RELAXED);
}

static const struct {
        const char *name;
        int         level;
} level_names[] = {
        { "error", KVD_LOG_ERR },   { "err", KVD_LOG_ERR },
        { "warning", KVD_LOG_WARNING }, { "warn", KVD_LOG_WARNING },
        { "info", KVD_LOG_INFO },   { "debug", KVD_LOG_DEBUG },
};

int kvd_log_parse_level(const char *s, int *ret_level)
{
        if (!s)
                return -EINVAL;
        for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
                if (strcasecmp(s, level_names[i].name) == 0) {
                        *ret_level = level_names[i].level;
                        return 0;
                }
        }
        return -EINVAL;
}

const char *kvd_log_level_name(int level)
{
        switch (level) {
        case KVD_LOG_ERR: return "error";
        case KVD_LOG_WARNING: return "warning";
        case KVD_LOG_INFO: return "info";
        case KVD_LOG_DEBUG: return "debug";
        default: return "unknown";
        }
}

void kvd_log_probe_stderr(void)
{
        struct stat st;

        __atomic_store_n(&stderr_sock, fstat(STDERR_FILENO, &st) == 0 && S_ISSOCK(st.st_mode) ? 1 : 0,
                         __ATOMIC_RELAXED);
}

unsigned long long kvd_log_dropped(void)
{
        unsigned long long d;

        pthread_mutex_lock(&sock_lock);
        d = dropped_total;
        pthread_mutex_unlock(&sock_lock);
        return d;
}

/* Sends buf[0, len) to the stderr socket without waiting for room, but
 * once some of it went, waits up to LINE_WAIT_MS for room for the rest.
 * Returns 1 when all of it went, 0 when none did (the socket full), -1 when
 * part went and the rest did not (or another error).  sock_lock held. */
static int send_all(const char *buf, size_t len)
{
        size_t    done = 0;
        uint64_t  due = 0; /* set at the first wait */

        while (done < len) {
                ssize_t w = send(STDERR_FILENO, buf + done, len - done, MSG_DONTWAIT | MSG_NOSIGNAL);

                if (w > 0) {
                        done += (size_t)w;
                        continue;
                }
                if (w < 0 && errno == EINTR)
                        continue;
                if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                        if (done == 0)
                                return 0;
                        struct pollfd p = { .fd = STDERR_FILENO, .events = POLLOUT };
                        const uint64_t now = kvd_mono_ms();

                        if (due == 0)
                                due = now + LINE_WAIT_MS;
                        if (now >= due)
                                return -1;
                        int pr = poll(&p, 1, (int)(due - now));
                        if (pr == 0 || (pr < 0 && errno != EINTR)) /* a signal: wait out the rest */
                                return -1;
                        continue;
                }
                return done ? -1 : 0;
        }
        return 1;
}

/* One line to a stderr socket (see the file comment). */
static void emit_socket(const char *line, size_t n)
{
        pthread_mutex_lock(&sock_lock);
        if (cut) {
                int r = send_all("\n", 1);

                if (r != 1) { /* still full */
                        dropped++;
                        dropped_total++;
                        pthread_mutex_unlock(&sock_lock);
                        return;
                }
                cut = 0;
        }
        if (dropped) {
                char note[128];
                int  k = snprintf(note, sizeof(note),
                                  "<4>kvpoold: %llu log lines dropped: the journal's socket was full\n", dropped);
                int  r = send_all(note, (size_t)k);

                if (r != 1) { /* still full: this line goes the same way */
                        cut = r < 0;
                        dropped++;
                        dropped_total++;
                        pthread_mutex_unlock(&sock_lock);
                        return;
                }
                dropped = 0;
        }
        int r = send_all(line, n);
        if (r != 1) {
                cut = r < 0;
                dropped++;
                dropped_total++;
        }
        pthread_mutex_unlock(&sock_lock);
}

static void vlog(int level, const char *fmt, va_list ap)
{
        char line[LINE_MAX_BYTES + 8];
        int  n, m;

        if (level > kvd_log_get_level())
                return;
        n = snprintf(line, sizeof(line), "<%d>", level);
        m = vsnprintf(line + n, LINE_MAX_BYTES - (size_t)n, fmt, ap);
        if (m < 0)
                return;
        if (m >= LINE_MAX_BYTES - n)
                m = LINE_MAX_BYTES - n - 1; /* truncated */
        n += m;
        /* One message, one journal entry: fold embedded newlines. */
        for (int i = 0; i < n; i++)
                if (line[i] == '\n' || line[i] == '\r')
                        line[i] = ' ';
        line[n++] = '\n';
        if (__atomic_load_n(&stderr_sock, __ATOMIC_RELAXED) < 0)
                kvd_log_probe_stderr();
        if (__atomic_load_n(&stderr_sock, __ATOMIC_RELAXED) == 1) {
                emit_socket(line, (size_t)n);
                return;
        }
        /* A single write keeps lines from different threads whole. */
        ssize_t w = write(STDERR_FILENO, line, (size_t)n);
        (void)w;
}

void kvd_log(int level, const char *fmt, ...)
{
        va_list ap;
        int     saved = errno;

        va_start(ap, fmt);
        vlog(level, fmt, ap);
        va_end(ap);
        errno = saved;
}

int kvd_log_ret(int level, int err, const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        vlog(level, fmt, ap);
        va_end(ap);
        return err;
}
