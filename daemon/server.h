/* server.h - the serving loop: one nng REP socket, sessions bound to pipes,
 * request dispatch.  One thread serves requests; pipe events and the metrics
 * HTTP handler run on nng threads and take the server lock. */
#ifndef KVD_SERVER_H
#define KVD_SERVER_H

#include <stdint.h>
#include "pool.h"

struct kvd_metrics;
struct kvd_events;

struct kvd_server_cfg {
        const char *socket_url;   /* ipc://... */
        const char *events_url;   /* NULL = off */
        const char *metrics_addr; /* NULL = off */
        int         socket_mode;  /* ipc socket permissions, e.g. 0660 */
};

struct kvd_server;

/* Read-only access for status/metrics rendering; caller holds the lock. */
uint32_t               kvd_server_pool_count(const struct kvd_server *s);
const struct kvd_pool *kvd_server_pool(const struct kvd_server *s, uint32_t i);
uint32_t               kvd_server_client_count(const struct kvd_server *s);

void kvd_server_lock(struct kvd_server *s);
void kvd_server_unlock(struct kvd_server *s);

#endif
