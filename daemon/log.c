/* log.c - leveled logging to stderr with sd-daemon priority prefixes. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include "log.h"

#define LINE_MAX_BYTES 1024

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
