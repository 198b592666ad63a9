/* metrics.h - request counters, a latency histogram, and the Prometheus text
 * exposition served at /metrics (http_serve.c, bounded) and by the METRICS
 * request.  Counters are updated by the serving thread; rendering happens
 * under the server lock (kvd_server_lock), so no extra locking is needed. */
#ifndef KVD_METRICS_H
#define KVD_METRICS_H

#include <stddef.h>
#include <stdint.h>

struct kvd_server;
struct kvd_metrics;

int  kvd_metrics_new(struct kvd_metrics **ret);
void kvd_metrics_free(struct kvd_metrics *m);
/* One request handled: its opcode, its wire error code (0 = ok), its latency. */
void kvd_metrics_observe(struct kvd_metrics *m, uint16_t opcode, uint32_t err_code, double seconds);
/* Renders the exposition text (pools from the server, counters from m).
 * Returns a malloc'ed NUL-terminated string or NULL on OOM.  Caller holds the
 * server lock. */
char *kvd_metrics_render(const struct kvd_metrics *m, const struct kvd_server *s);
/* 0 when addr (NULL, "" or "none": off) is what kvd_metrics_http_start
 * accepts as an address, else -EINVAL with the reason in err: for checking
 * a configuration before anything is allocated. */
int  kvd_metrics_check_addr(const char *addr, char *err, size_t errlen);
/* The HTTP endpoint's limits for its next start: connections at most, and
 * milliseconds from accept to close at the latest; 0: the default (32,
 * 5000).  For $KVPOOLD_METRICS_CONNS / _DEADLINE_MS and for tests. */
void kvd_metrics_http_limits(struct kvd_metrics *m, unsigned max_conns, unsigned deadline_ms);
/* Serves GET /metrics on addr ("127.0.0.1:9464"; NULL/""/"none" = off) from
 * a thread of its own (http_serve.c); stop joins it.  Details in metrics.c. */
int  kvd_metrics_http_start(struct kvd_metrics *m, struct kvd_server *s, const char *addr,
                            char *err, size_t errlen);
void kvd_metrics_http_stop(struct kvd_metrics *m);

#endif
