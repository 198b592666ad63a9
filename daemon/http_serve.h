/* http_serve.h - a small HTTP/1.1 server for one read-only resource (the
 * metrics endpoint): one thread, one listening TCP socket, at most
 * max_conns connections, each closed at most deadline_ms after it was
 * accepted, one request per connection.
 *
 * Why not nng's HTTP server: nng 1.5.2 has no cap on connections and no
 * read or idle timeout, so idle peers could hold as many of the daemon's
 * descriptors as they liked (docs/operations.md §7).
 *
 * What it answers: GET and HEAD of the path (also with a trailing '/', a
 * query string or an absolute-form target) get what the callback returns;
 * another method on the path 405, another path 404; a request that
 * announces a body (Content-Length above 0, or any Transfer-Encoding) 413;
 * a request head over KVD_HTTP_HEAD_MAX bytes 431; a malformed one 400 (and
 * HTTP/1.1 without Host), a version other than HTTP/1.x 505.  Every reply
 * says Connection: close.  Beyond the cap an older connection is closed to
 * make room for the new one: the oldest answered one, else the oldest idle
 * one, else the oldest reply in progress. */
#ifndef KVD_HTTP_SERVE_H
#define KVD_HTTP_SERVE_H

#include <stddef.h>

#define KVD_HTTP_MAX_CONNS   32u   /* default max_conns */
#define KVD_HTTP_DEADLINE_MS 5000u /* default deadline_ms */
#define KVD_HTTP_HEAD_MAX    8192u /* request line and headers, bytes */

struct kvd_http;

/* Produces the resource on the server's thread (for HEAD too: the length is
 * sent, not the body).  Returns an HTTP status; with 200, *ret_body is a
 * malloc'ed body of *ret_len bytes that the server frees.  Another status
 * (503, 500) is answered with a short text of its own. */
typedef int (*kvd_http_get_fn)(void *arg, char **ret_body, size_t *ret_len);

struct kvd_http_cfg {
        const char     *host;         /* numeric or a name; "" or "*": every IPv4 address (0.0.0.0; "::" for IPv6 as well) */
        const char     *port;         /* decimal */
        const char     *path;         /* "/metrics" */
        const char     *content_type; /* of a 200 */
        kvd_http_get_fn get;
        void           *arg;
        unsigned        max_conns;    /* 0: KVD_HTTP_MAX_CONNS */
        unsigned        deadline_ms;  /* 0: KVD_HTTP_DEADLINE_MS */
};

/* Listens on cfg->host:cfg->port (SO_REUSEADDR, the first address that
 * binds) and starts the serving thread.  cfg is copied; host and port are
 * read during the call only, path, content_type and arg must outlive the
 * server.  Returns 0 with *ret, or a
 * negative errno (-EADDRINUSE, -EADDRNOTAVAIL for a host that does not
 * resolve, -EACCES, -ENOMEM, ...) with the reason in err (no address in
 * it: the caller names the endpoint); *ret is untouched on failure. */
int kvd_http_start(const struct kvd_http_cfg *cfg, struct kvd_http **ret, char *err, size_t errlen);

/* Wakes the thread, waits for it (and for a callback in progress), closes
 * every connection and the listening socket, frees h.  Accepts NULL.  Not
 * from the server's own thread (the callback). */
void kvd_http_stop(struct kvd_http *h);

#endif
