/* log.h - kvpoold's leveled logging: one line per message on stderr, with the
 * sd-daemon priority prefix ("<3>" error, "<4>" warning, "<6>" info, "<7>"
 * debug) so that journald keeps the level when the daemon runs under systemd.
 * Thread safe: pipe callbacks log from nng threads, the reaper and the
 * guard from theirs; each message is written with one write(2), or, when
 * stderr is a socket (journald's stream), sent without waiting for room: a
 * journal that does not read costs lines, not a thread blocked for as long
 * as it does not read (at most a bounded wait for a line sent in part:
 * log.c). */
#ifndef KVD_LOG_H
#define KVD_LOG_H

#include <systemd/sd-daemon.h>

/* Levels are syslog priorities, as SD_ERR etc. from sd-daemon.h. */
enum kvd_log_level {
        KVD_LOG_ERR     = 3, /* SD_ERR */
        KVD_LOG_WARNING = 4, /* SD_WARNING */
        KVD_LOG_INFO    = 6, /* SD_INFO */
        KVD_LOG_DEBUG   = 7, /* SD_DEBUG */
};

/* Sets the threshold: messages of a level numerically above it are dropped.
 * Default KVD_LOG_INFO. */
void kvd_log_set_level(int level);
int  kvd_log_get_level(void);

/* Parses "error"/"err", "warning"/"warn", "info", "debug" (any case) into
 * *ret_level.  Returns 0 or -EINVAL (*ret_level untouched). */
int kvd_log_parse_level(const char *s, int *ret_level);
/* Name of a level ("error", "warning", "info", "debug"). */
const char *kvd_log_level_name(int level);

/* True when a message of this level would be written (to skip building
 * expensive arguments). */
static inline int kvd_log_enabled(int level)
{
        return level <= kvd_log_get_level();
}

/* Writes one line "<N>message\n".  Newlines inside the message become spaces
 * so that a message is always exactly one journal entry; long messages are
 * truncated at 1 KiB. */
void kvd_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Logs and returns in one step: writes the message at level and returns err
 * (a negative errno), so a failure path reads
 *         return kvd_log_ret(KVD_LOG_ERR, -ENOMEM, "pool %s: out of memory", name); */
int kvd_log_ret(int level, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Looks again at what stderr is (a socket: journald's stream, sent to
 * without waiting).  Done at the first message; call it after redirecting
 * stderr (tests). */
void kvd_log_probe_stderr(void);
/* Lines dropped because stderr was a full socket, since start. */
unsigned long long kvd_log_dropped(void);

#define kvd_err(...)   kvd_log(KVD_LOG_ERR, __VA_ARGS__)
#define kvd_warn(...)  kvd_log(KVD_LOG_WARNING, __VA_ARGS__)
#define kvd_info(...)  kvd_log(KVD_LOG_INFO, __VA_ARGS__)
#define kvd_debug(...) do { if (kvd_log_enabled(KVD_LOG_DEBUG)) kvd_log(KVD_LOG_DEBUG, __VA_ARGS__); } while (0)

#endif
