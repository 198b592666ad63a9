/* status.h - the STATUS document: one JSON object describing the daemon, its
 * pools and its clients (kvpoolctl status renders it).  Key names are fixed:
 *
 * {"version", "pid", "uptime_s", "socket", "events",
 *  "pools": [{"name", "dtype", "backend", "device", "layers", "kv_heads",
 *             "head_dim", "page_size", "pages_total", "pages_free",
 *             "pages_held", "pages_cached", "cached_idle", "token_capacity",
 *             "bytes", "scale_source", "scale_path", "k_scale_min",
 *             "k_scale_max", "v_scale_min", "v_scale_max", "lookups", "hits",
 *             "hit_rate", "evictions", "prefix_resets", "keys_reset", "group",
 *             "tp_rank", "tp_size"}],
 *  "clients": [{"name", "pid", "uid", "session_id", "pages_held", "tenant"}],
 *  "clients_total"}
 *
 * "clients" lists at most kvd_status_clients_max() sessions, the oldest
 * first; "clients_total" counts them all.
 * "events" is null when the event stream is off; "device" is -1 for host
 * pools; "pid"/"uid" of a client are -1 when unknown; "hit_rate" is
 * hits/lookups (0 before any lookup).
 */
#ifndef KVD_STATUS_H
#define KVD_STATUS_H

#define KVD_VERSION "0.1.0"

struct kvd_server;

/* Renders the document (unformatted JSON, NUL-terminated, malloc'ed: the
 * caller frees it) or returns NULL when out of memory.  Caller holds the
 * server lock. */
char *kvd_status_json(const struct kvd_server *s);

/* The most clients the document lists: 2048, or $KVPOOLD_STATUS_CLIENTS
 * (1 to 2048), read at the first call (kvd_server_new makes it, so that a
 * bad value is reported at startup, once, and the default kept). */
unsigned kvd_status_clients_max(void);

#endif
