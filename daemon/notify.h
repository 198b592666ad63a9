/* notify.h - the systemd service protocol: READY=1, STATUS=, WATCHDOG=1,
 * STOPPING=1 through sd_notify.  Everything is a no-op when NOTIFY_SOCKET is
 * unset (started by hand). */
#ifndef KVD_NOTIFY_H
#define KVD_NOTIFY_H

#include <stdint.h>

/* Reads WATCHDOG_USEC (sd_watchdog_enabled). Returns the interval in usec at
 * which the serving loop must call kvd_notify_watchdog(), i.e. half the
 * watchdog timeout, or 0 when there is no watchdog. */
uint64_t kvd_notify_init(void);
void kvd_notify_ready(const char *status_line);
/* Sends STATUS= only when the line changed since the last call. */
void kvd_notify_status(const char *status_line);
/* Sends WATCHDOG=1 if at least the interval has passed since the last one.
 * Call it from the serving loop itself (so a wedged loop stops pinging). */
void kvd_notify_watchdog(void);
void kvd_notify_stopping(void);

#endif
