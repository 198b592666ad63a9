/* server.h - the serving loop: one nng REP socket, sessions bound to pipes,
 * request dispatch.  One thread serves requests; pipe events (nng threads)
 * and the metrics HTTP handler (its own thread) take the server lock. */
#ifndef KVD_SERVER_H
#define KVD_SERVER_H

#include <signal.h>
#include <stdint.h>
#include <sys/types.h>
#include "pool.h"

struct kvd_metrics;
struct kvd_events;

struct kvd_server_cfg {
        const char *socket_url;   /* ipc://... */
        const char *events_url;   /* NULL = off */
        const char *metrics_addr; /* NULL = off */
        int         socket_mode;  /* ipc socket permissions, e.g. 0660 */
        /* Added by the daemon core (additive): chown the ipc socket to this
         * group after listening when has_group. */
        gid_t       group;
        int         has_group;
};

struct kvd_server;

/* Read-only access for status/metrics rendering; caller holds the lock. */
uint32_t               kvd_server_pool_count(const struct kvd_server *s);
const struct kvd_pool *kvd_server_pool(const struct kvd_server *s, uint32_t i);
uint32_t               kvd_server_client_count(const struct kvd_server *s);
/* Events dropped because the event send queue was full (events.c); 0 when
 * events are off.  Needs no lock. */
uint64_t               kvd_server_events_dropped(const struct kvd_server *s);
/* The listener guard (listen_guard.c) of the request socket (events 0) or
 * of the events socket (events 1): take-overs done (*ret_taken), whether
 * it gave up (*ret_gave_up), and whether new clients get no answer that it
 * cannot mend now (*ret_unmended: kvd_guard_stats).  0, or -ENOENT when
 * that socket has no guard (not an ipc:// socket file, events off), ret_*
 * untouched then.  Needs no lock. */
int                    kvd_server_listener_guard(const struct kvd_server *s, int events, uint64_t *ret_taken,
                                                 int *ret_gave_up, int *ret_unmended);

void kvd_server_lock(struct kvd_server *s);
void kvd_server_unlock(struct kvd_server *s);
/* Non-zero once kvd_server_free has begun to take the pools down; a handler
 * running on another thread (a pipe callback, metrics) then must not touch them.  Caller holds
 * the lock. */
int                    kvd_server_closing(const struct kvd_server *s);

/* ---- added by the daemon core (additive) ---------------------------------- */

struct kvd_sessions;

/* Creates the server over pools[0..num_pools) and starts it: listens on
 * cfg->socket_url (creating the socket's folder if missing, mode and group
 * from cfg), opens the event stream, starts the metrics HTTP server.  On
 * success the server owns the pools (and the array's elements, not the
 * array) and *ret is set; on failure nothing is left listening, the pools
 * still belong to the caller, and err names what failed. */
int  kvd_server_new(const struct kvd_server_cfg *cfg, struct kvd_pool **pools, uint32_t num_pools,
                    struct kvd_server **ret, char *err, size_t errlen);
/* Serves requests on the calling thread until *stop becomes non-zero (set
 * it from a signal handler: the loop wakes at least every 200 ms) and pings
 * the systemd watchdog from the loop.  Returns 0, or a negative errno when
 * the socket failed. */
int  kvd_server_run(struct kvd_server *s, volatile sig_atomic_t *stop);
/* Shuts down in order: metrics HTTP, listener and socket (sessions drop
 * their pages), event stream (sends shutdown), pools (unlinks the shm
 * objects), the ipc socket file.  Accepts NULL. */
void kvd_server_free(struct kvd_server *s);

/* For status rendering; caller holds the lock. */
const struct kvd_sessions *kvd_server_sessions(const struct kvd_server *s);
const char *kvd_server_socket_url(const struct kvd_server *s);
const char *kvd_server_events_url(const struct kvd_server *s); /* NULL when off */
double      kvd_server_uptime(const struct kvd_server *s);     /* seconds since start */
/* The one-line summary sent as systemd STATUS= ("2 pools, 10/2048 pages
 * used, 3 clients"). */
void        kvd_server_status_line(const struct kvd_server *s, char *buf, size_t len);

#endif
