/* notify.h - the systemd service protocol: READY=1, STATUS=, WATCHDOG=1,
 * STOPPING=1 as datagrams to $NOTIFY_SOCKET, sent without waiting (what does
 * not fit is kept and retried by the next call; notify.c).  Everything is a
 * no-op when NOTIFY_SOCKET is unset (started by hand).  Thread safe. */
#ifndef KVD_NOTIFY_H
#define KVD_NOTIFY_H

#include <stdint.h>

/* Reads WATCHDOG_USEC (sd_watchdog_enabled). Returns the interval in usec at
 * which the serving loop must call kvd_notify_watchdog(), i.e. half the
 * watchdog timeout, or 0 when there is no watchdog. */
uint64_t kvd_notify_init(void);
/* READY=1 with status_line (may be NULL) as STATUS=, and a ping.  Never
 * waits; kept until sent. */
void kvd_notify_ready(const char *status_line);
/* Sends STATUS= only when the line changed since the last call.  Never
 * waits; retries what is pending. */
void kvd_notify_status(const char *status_line);
/* Sends WATCHDOG=1 if at least the interval has passed since the last one.
 * Call it from the serving loop itself (so a wedged loop stops pinging).
 * Never waits; retries what is pending. */
void kvd_notify_watchdog(void);
/* STOPPING=1 and STATUS=shutting down; retried for at most about a second
 * when the receiver's queue is full. */
void kvd_notify_stopping(void);

#endif
