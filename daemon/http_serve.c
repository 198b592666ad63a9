/* http_serve.c - a bounded HTTP/1.1 server for one resource (see
 * http_serve.h).
 *
 * One thread polls an eventfd (the stop), the listening socket and the
 * connections.  A connection goes HEAD (reading the request head into its
 * 8 KiB buffer) -> REPLY (non-blocking sends of the whole reply) -> DRAIN
 * (our side shut down for writing; what the peer still sends is read and
 * dropped until it closes) and is closed at the latest deadline_ms after
 * accept, whatever its state.  So a connection costs one descriptor and one
 * slot for a bounded time, there are at most max_conns of them, and no peer
 * can hold the thread: it never blocks but in poll and in the callback.
 *
 * Why DRAIN rather than close after the reply: closing a socket with unread
 * input makes the kernel send a reset, which can destroy the reply before
 * the peer has read it (a refused request whose body is still coming).
 */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include "http_serve.h"
#include "ticker.h" /* kvd_mono_ms */

/* Connections accepted per turn of the loop: a quarter of max_conns, 1 to
 * 8.  A connection whose request has come in is served on the turn after
 * its accept (connections are served before accepting), so it would take
 * four turns of newer connections to make it the oldest and evict it. */
#define ACCEPT_BATCH_MAX 8u
/* Out of descriptors (EMFILE, ENFILE) with no connection of ours to give
 * back, or out of memory: the pending connection stays queued and the
 * listener readable, so accepting pauses this long instead of spinning. */
#define ACCEPT_PAUSE_MS 100
#define BACKLOG 128

enum cstate { C_FREE, C_HEAD, C_REPLY, C_DRAIN };

struct conn {
        int         fd;
        enum cstate st;
        uint64_t    deadline; /* ms, CLOCK_MONOTONIC */
        uint64_t    seq;      /* accept order: the smallest is evicted */
        size_t      in_len;
        char       *out;
        size_t      out_len, out_off;
        char        in[KVD_HTTP_HEAD_MAX + 1]; /* +1: room for a NUL */
};

struct kvd_http {
        struct kvd_http_cfg cfg;
        int                 lfd, wake;
        pthread_t           thread;
        struct conn        *conns;     /* [cfg.max_conns] */
        struct pollfd      *pfd;       /* [2 + cfg.max_conns] */
        struct conn       **pconn;     /* [2 + cfg.max_conns]: pfd[i]'s connection */
        unsigned            live;
        uint64_t            seq;
        uint64_t            accept_at; /* ms: accept again from then on */
};

static void conn_close(struct kvd_http *h, struct conn *c)
{
        close(c->fd);
        free(c->out);
        c->fd = -1;
        c->out = NULL;
        c->st = C_FREE;
        h->live--;
}

/* ---- replies ---------------------------------------------------------------- */

static const char *reason(int status)
{
        switch (status) {
        case 200: return "OK";
        case 400: return "Bad Request";
        case 404: return "Not Found";
        case 405: return "Method Not Allowed";
        case 413: return "Content Too Large";
        case 431: return "Request Header Fields Too Large";
        case 503: return "Service Unavailable";
        case 505: return "HTTP Version Not Supported";
        default:  return "Internal Server Error";
        }
}

/* Sends what fits of c's reply now; all of it sent: our side is shut down
 * and the connection drains.  A peer that reads slowly is waited for by
 * poll, never by a blocking send. */
static void conn_send(struct kvd_http *h, struct conn *c)
{
        while (c->out_off < c->out_len) {
                /* MSG_NOSIGNAL: a peer gone mid-reply is EPIPE, not SIGPIPE */
                ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                        return;
                if (n <= 0) {
                        conn_close(h, c);
                        return;
                }
                c->out_off += (size_t)n;
        }
        free(c->out);
        c->out = NULL;
        shutdown(c->fd, SHUT_WR);
        c->st = C_DRAIN;
}

/* Queues the reply (head, and body unless head_only) and starts sending
 * it.  body NULL: a status other than 200, with a line of text for body.
 * Takes body.  No memory for the reply: the connection is closed. */
static void conn_reply(struct kvd_http *h, struct conn *c, int status, char *body, size_t len, bool head_only)
{
        char   head[512], text[64];
        const char *ctype = h->cfg.content_type;
        int    hl;

        if (!body) {
                len = (size_t)snprintf(text, sizeof(text), "%d %s\n", status, reason(status));
                ctype = "text/plain; charset=utf-8";
        }
        hl = snprintf(head, sizeof(head),
                      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%sConnection: close\r\n\r\n",
                      status, reason(status), ctype, len, status == 405 ? "Allow: GET, HEAD\r\n" : "");
        if (hl < 0 || (size_t)hl >= sizeof(head) || !(c->out = malloc((size_t)hl + (head_only ? 0 : len)))) {
                free(body);
                conn_close(h, c);
                return;
        }
        memcpy(c->out, head, (size_t)hl);
        if (!head_only)
                memcpy(c->out + hl, body ? body : text, len);
        c->out_len = (size_t)hl + (head_only ? 0 : len);
        c->out_off = 0;
        free(body);
        c->st = C_REPLY;
        conn_send(h, c);
}

/* ---- requests --------------------------------------------------------------- */

/* The end of the request head (just past its empty line) in in[0..len), or
 * 0.  Lines may end in CRLF or LF.  from: where the previous search
 * stopped, so a peer sending one byte at a time costs linear time. */
static size_t head_end(const char *in, size_t from, size_t len)
{
        for (size_t i = from; i < len; i++) {
                size_t j = i + 1;

                if (in[i] != '\n')
                        continue;
                if (j < len && in[j] == '\r')
                        j++;
                if (j < len && in[j] == '\n')
                        return j + 1;
        }
        return 0;
}

/* Splits off the next line of s (CRLF or LF), NUL-terminating it. */
static char *next_line(char **s)
{
        char *line = *s, *nl = strchr(line, '\n');

        if (nl) {
                *nl = '\0';
                *s = nl + 1;
        } else {
                *s = line + strlen(line);
        }
        if (nl && nl > line && nl[-1] == '\r')
                nl[-1] = '\0';
        return line;
}

/* The status for the request head in head (NUL-terminated), or 0 when it
 * asks for the resource.  *head_only: a HEAD request (known once the
 * request line has parsed), whose reply has no body whatever its status. */
static int judge(const struct kvd_http_cfg *cfg, char *head, bool *head_only)
{
        char *line = next_line(&head), *method = line, *target, *version, *end;
        const char *path;
        bool has_host = false, body = false;
        size_t plen = strlen(cfg->path);

        if (!(target = strchr(method, ' ')))
                return 400;
        *target++ = '\0';
        if (!(version = strchr(target, ' ')))
                return 400;
        *version++ = '\0';
        /* HTTP-version = "HTTP/" DIGIT "." DIGIT (RFC 9112 2.3): anything
         * else ("HTTP/1.x", "HTTP/1.1junk") is malformed, not a 1.x */
        if (!*method || !*target || strncmp(version, "HTTP/", 5) != 0 || !(version[5] >= '0' && version[5] <= '9') ||
            version[6] != '.' || !(version[7] >= '0' && version[7] <= '9') || version[8] != '\0')
                return 400;
        if (version[5] != '1')
                return 505;
        *head_only = strcmp(method, "HEAD") == 0; /* no body in any reply to it */
        while (*(line = next_line(&head))) {
                char *colon = strchr(line, ':'), *v;

                /* no name, or a folded line (obsolete, and a smuggling aid) */
                if (!colon || colon == line || line[0] == ' ' || line[0] == '\t')
                        return 400;
                *colon = '\0';
                v = colon + 1 + strspn(colon + 1, " \t");
                if (!strcasecmp(line, "Host")) {
                        has_host = true;
                } else if (!strcasecmp(line, "Transfer-Encoding")) {
                        body = true;
                } else if (!strcasecmp(line, "Content-Length")) {
                        /* a scrape has no body: refuse one at once rather
                         * than read it, but Content-Length: 0 is no body */
                        unsigned long long n;

                        if (!(*v >= '0' && *v <= '9'))
                                return 400;
                        errno = 0;
                        n = strtoull(v, &end, 10);
                        if (end[strspn(end, " \t")] != '\0')
                                return 400;
                        body |= n > 0 || errno == ERANGE;
                }
        }
        if (!has_host && strcmp(version, "HTTP/1.1") == 0)
                return 400; /* RFC 9112 3.2: a 1.1 request without Host */
        if (body)
                return 413;
        /* absolute form (a proxy's): the path is what follows the
         * authority, which ends at the first '/', '?' or '#'.  target stays
         * in the request buffer (it is cut below): with no path it points
         * at the query or at the end, never at a string literal */
        if (!strncasecmp(target, "http://", 7) || !strncasecmp(target, "https://", 8)) {
                char *auth = strstr(target, "://") + 3;

                target = auth + strcspn(auth, "/?#");
        }
        target[strcspn(target, "?#")] = '\0';
        path = *target ? target : "/"; /* an empty path is "/" (RFC 9112 3.2.2) */
        if (strncmp(path, cfg->path, plen) != 0 || (path[plen] && strcmp(path + plen, "/") != 0))
                return 404;
        if (strcmp(method, "GET") != 0 && !*head_only)
                return 405;
        return 0;
}

/* Reads what the peer sent; a complete head is answered. */
static void conn_read(struct kvd_http *h, struct conn *c)
{
        ssize_t n;
        size_t  end;

        do
                n = recv(c->fd, c->in + c->in_len, KVD_HTTP_HEAD_MAX - c->in_len, 0);
        while (n < 0 && errno == EINTR);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                return;
        if (n <= 0) { /* the peer left, or the connection broke */
                conn_close(h, c);
                return;
        }
        end = head_end(c->in, c->in_len > 2 ? c->in_len - 2 : 0, c->in_len + (size_t)n);
        c->in_len += (size_t)n;
        if (!end) {
                if (c->in_len == KVD_HTTP_HEAD_MAX)
                        conn_reply(h, c, 431, NULL, 0, false);
                return;
        }
        /* anything after the head (a body, a pipelined request) is left
         * unread: there is one request per connection */
        c->in[end] = '\0';
        bool head_only = false;
        /* a NUL would hide the headers after it from the parse */
        int  st = memchr(c->in, '\0', end) ? 400 : judge(&h->cfg, c->in, &head_only);
        char *body = NULL;
        size_t len = 0;

        if (st == 0) {
                st = h->cfg.get(h->cfg.arg, &body, &len);
                if (st == 200 && !body)
                        st = 500;
                if (st != 200) {
                        free(body);
                        body = NULL;
                }
        }
        conn_reply(h, c, st, body, len, head_only);
}

/* DRAIN: drops what the peer still sends; its close ends the connection. */
static void conn_drain(struct kvd_http *h, struct conn *c)
{
        char    junk[4096];
        ssize_t n = recv(c->fd, junk, sizeof(junk), 0);

        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
                conn_close(h, c);
}

/* ---- the loop --------------------------------------------------------------- */

/* The connection to close to make room: the oldest of those already
 * answered (draining), else the oldest still waiting for its request head
 * (an idle peer), else (with replies) the oldest being answered; NULL if
 * none of those is open.
 * An idle peer is always the oldest of its kind soon, so idle connections
 * cannot lock a scrape out, they can only be replaced, and a reply in
 * progress goes last. */
static struct conn *victim(struct kvd_http *h, bool replies)
{
        static const enum cstate order[] = { C_DRAIN, C_HEAD, C_REPLY };

        for (unsigned o = 0; o < (replies ? 3u : 2u); o++) {
                struct conn *best = NULL;

                for (unsigned i = 0; i < h->cfg.max_conns; i++) {
                        struct conn *x = &h->conns[i];

                        if (x->st == order[o] && (!best || x->seq < best->seq))
                                best = x;
                }
                if (best)
                        return best;
        }
        return NULL;
}

static void accept_some(struct kvd_http *h, uint64_t now)
{
        unsigned batch = h->cfg.max_conns / 4;

        batch = batch < 1 ? 1 : batch > ACCEPT_BATCH_MAX ? ACCEPT_BATCH_MAX : batch;
        for (unsigned k = 0; k < batch; k++) {
                struct conn *c = NULL;
                int fd = accept4(h->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

                if (fd < 0) {
                        if (errno == EMFILE || errno == ENFILE) {
                                /* out of descriptors (the process or the
                                 * system): give one of ours back and take the
                                 * waiting peer on the next turn, or the
                                 * listen backlog fills behind idle peers that
                                 * hold every slot until their deadline; not
                                 * a reply in progress: the descriptors may be
                                 * short for another reason than our
                                 * connections, and each turn would close one
                                 * more */
                                struct conn *v = victim(h, false);

                                if (v)
                                        conn_close(h, v);
                                else
                                        h->accept_at = now + ACCEPT_PAUSE_MS;
                        } else if (errno == ENOBUFS || errno == ENOMEM) {
                                h->accept_at = now + ACCEPT_PAUSE_MS;
                        }
                        /* else EAGAIN (none left), or one that aborted: next turn */
                        return;
                }
                for (unsigned i = 0; i < h->cfg.max_conns && !c; i++)
                        if (h->conns[i].st == C_FREE)
                                c = &h->conns[i];
                if (!c) {
                        /* full: one goes (victim) */
                        c = victim(h, true);
                        conn_close(h, c);
                }
                c->fd = fd;
                c->st = C_HEAD;
                c->seq = h->seq++;
                c->deadline = now + h->cfg.deadline_ms;
                c->in_len = 0;
                h->live++;
        }
}

static void *serve(void *arg)
{
        struct kvd_http *h = arg;

        for (;;) {
                uint64_t now = kvd_mono_ms(), next = UINT64_MAX;
                nfds_t   n = 0;
                bool     accepting = now >= h->accept_at;
                int      r, timeout;

                h->pfd[n] = (struct pollfd){ .fd = h->wake, .events = POLLIN };
                h->pconn[n++] = NULL;
                if (accepting) {
                        h->pfd[n] = (struct pollfd){ .fd = h->lfd, .events = POLLIN };
                        h->pconn[n++] = NULL;
                } else {
                        next = h->accept_at;
                }
                for (unsigned i = 0; i < h->cfg.max_conns; i++) {
                        struct conn *c = &h->conns[i];

                        if (c->st == C_FREE)
                                continue;
                        if (now >= c->deadline) { /* idle, slow, or a slow reader */
                                conn_close(h, c);
                                continue;
                        }
                        if (c->deadline < next)
                                next = c->deadline;
                        h->pfd[n] = (struct pollfd){ .fd = c->fd, .events = c->st == C_REPLY ? POLLOUT : POLLIN };
                        h->pconn[n++] = c;
                }
                timeout = next == UINT64_MAX ? -1 : next - now > 60000 ? 60000 : (int)(next - now);
                r = poll(h->pfd, n, timeout);
                if (r < 0) {
                        if (errno != EINTR)
                                usleep(10000); /* ENOMEM: try again shortly */
                        continue;
                }
                if (h->pfd[0].revents)
                        break; /* kvd_http_stop */
                now = kvd_mono_ms();
                /* the connections first: one whose request is in is served
                 * before accepting can evict it */
                for (nfds_t i = 1; i < n; i++) {
                        struct conn *c = h->pconn[i];

                        if (!c || !h->pfd[i].revents)
                                continue;
                        if (c->st == C_HEAD)
                                conn_read(h, c);
                        else if (c->st == C_REPLY)
                                conn_send(h, c);
                        else if (c->st == C_DRAIN)
                                conn_drain(h, c);
                }
                if (accepting && h->pfd[1].revents)
                        accept_some(h, now);
        }
        return NULL;
}

/* ---- start and stop --------------------------------------------------------- */

static int listen_on(const struct kvd_http_cfg *cfg, int *ret_fd, char *err, size_t errlen)
{
        struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                                  .ai_flags = AI_PASSIVE | AI_NUMERICSERV }, *res = NULL;
        const char *host = cfg->host && *cfg->host && strcmp(cfg->host, "*") ? cfg->host : NULL;
        int g = getaddrinfo(host, cfg->port, &hints, &res), r = 0;

        if (g != 0) {
                snprintf(err, errlen, "%s", g == EAI_SYSTEM ? strerror(errno) : gai_strerror(g));
                return g == EAI_MEMORY ? -ENOMEM : g == EAI_AGAIN ? -EAGAIN
                       : g == EAI_SYSTEM && errno ? -errno : -EADDRNOTAVAIL;
        }
        for (struct addrinfo *a = res; a; a = a->ai_next) {
                int fd = socket(a->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;

                /* SO_REUSEADDR: a restart binds the port while the last
                 * run's connections are still in TIME_WAIT */
                if (fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0 &&
                    bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, BACKLOG) == 0) {
                        freeaddrinfo(res);
                        *ret_fd = fd;
                        return 0;
                }
                if (!r) /* the first address's failure is the one to tell */
                        r = -errno;
                if (fd >= 0)
                        close(fd);
        }
        freeaddrinfo(res);
        r = r ? r : -EADDRNOTAVAIL;
        snprintf(err, errlen, "%s", strerror(-r));
        return r;
}

static void http_free(struct kvd_http *h)
{
        if (h->conns)
                for (unsigned i = 0; i < h->cfg.max_conns; i++)
                        if (h->conns[i].st != C_FREE)
                                conn_close(h, &h->conns[i]);
        if (h->lfd >= 0)
                close(h->lfd);
        if (h->wake >= 0)
                close(h->wake);
        free(h->conns);
        free(h->pfd);
        free(h->pconn);
        free(h);
}

int kvd_http_start(const struct kvd_http_cfg *cfg, struct kvd_http **ret, char *err, size_t errlen)
{
        static const int sync_signals[] = { SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT, SIGSYS };
        struct kvd_http *h;
        sigset_t all, old;
        int r;

        if (!cfg || !cfg->port || !cfg->path || !cfg->content_type || !cfg->get) {
                snprintf(err, errlen, "incomplete HTTP configuration");
                return -EINVAL;
        }
        if (!(h = calloc(1, sizeof(*h))))
                goto oom;
        h->cfg = *cfg;
        h->cfg.max_conns = cfg->max_conns ? cfg->max_conns : KVD_HTTP_MAX_CONNS;
        h->cfg.deadline_ms = cfg->deadline_ms ? cfg->deadline_ms : KVD_HTTP_DEADLINE_MS;
        h->lfd = h->wake = -1;
        h->conns = calloc(h->cfg.max_conns, sizeof(*h->conns));
        h->pfd = calloc(2 + (size_t)h->cfg.max_conns, sizeof(*h->pfd));
        h->pconn = calloc(2 + (size_t)h->cfg.max_conns, sizeof(*h->pconn));
        if (!h->conns || !h->pfd || !h->pconn)
                goto oom;
        for (unsigned i = 0; i < h->cfg.max_conns; i++)
                h->conns[i].fd = -1;
        if ((h->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
                r = -errno;
                snprintf(err, errlen, "eventfd: %s", strerror(errno));
                goto fail;
        }
        if ((r = listen_on(&h->cfg, &h->lfd, err, errlen)) < 0)
                goto fail;
        h->cfg.host = h->cfg.port = NULL; /* the caller's, for the call only */
        /* the thread takes no asynchronous signal: SIGTERM goes to a thread
         * that can act on it, and none interrupts poll.  The ones a fault
         * raises stay open (blocked, the kernel would kill the process
         * without running a handler, a sanitizer's say). */
        sigfillset(&all);
        for (size_t i = 0; i < sizeof(sync_signals) / sizeof(sync_signals[0]); i++)
                sigdelset(&all, sync_signals[i]);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        r = -pthread_create(&h->thread, NULL, serve, h);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (r) {
                snprintf(err, errlen, "cannot start a thread: %s", strerror(-r));
                goto fail;
        }
        *ret = h;
        return 0;
oom:
        snprintf(err, errlen, "out of memory");
        r = -ENOMEM;
fail:
        if (h)
                http_free(h);
        return r;
}

void kvd_http_stop(struct kvd_http *h)
{
        uint64_t one = 1;

        if (!h)
                return;
        /* an eventfd write cannot fail here: the counter is far from full */
        while (write(h->wake, &one, sizeof(one)) < 0 && errno == EINTR)
                ;
        pthread_join(h->thread, NULL);
        http_free(h);
}
