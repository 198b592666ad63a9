/* reaper.c - ends the sessions whose connection has closed when nng does
 * not say so (see reaper.h).
 *
 * nng 1.5.2 can wedge its pipe teardown for good: a peer that closes with
 * two requests in flight can leave a pipe receive that is never finished,
 * and nng's single reaper thread waits for it, so no closed connection is
 * reported again (NNG_PIPE_EV_REM_POST never comes; docs/operations.md §9).
 * Without this sweep every page a worker held on a connection it closed,
 * or when it exited, would stay held until a restart.
 *
 * nng does not say which file descriptor serves a pipe, so the sweep links
 * sessions to connections itself.  Every REAP_EVERY_S it lists this
 * process's connected Unix sockets (/proc/self/fd) with the pid that made
 * each (SO_PEERCRED), its inode and whether its peer has closed
 * (POLLRDHUP), and per peer pid:
 *   - a session already linked to a connection (fd and inode, so a number
 *     nng closed and reused is not mistaken for it) is closed when that
 *     connection is;
 *   - one unlinked session and one connection not linked to another session
 *     of that pid are each other's: linked when two sweeps in a row find
 *     that pair (a session whose connection nng has just closed, seen
 *     beside a new connection whose session nng has not added yet, would
 *     pair them for one sweep);
 *   - otherwise (a process with several connections it opened close
 *     together, none linked yet) its unlinked sessions count as closed only
 *     when none of its unlinked connections is open.
 * Connections that are never a session's are not offered for a link, but
 * count in the last rule: those accepted on the events socket (named after
 * it) and those of sessions the reaper ended (nng never closes them; kept
 * from sweep to sweep while they are listed).
 * A session seen closed for REAP_GRACE_S is ended and its page references
 * released.  nng reports a close within milliseconds when it works, so
 * only a stuck teardown leaves one that long.  A connection a child process
 * inherited keeps its creator's pid and stays open while the child lives.
 * The sweep runs on its own thread (reading /proc costs milliseconds with
 * thousands of clients) and takes the server lock only to read and to
 * apply.
 */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <stddef.h>
#include <unistd.h>
#include "reaper.h"
#include "server_int.h"
#include "log.h"

#define REAP_EVERY_S 3.0 /* the sweep's period */
#define REAP_GRACE_S 5.0 /* how long a session is seen closed before it is ended */
#define REAP_BATCH   64  /* sessions ended at most per sweep (the rest at the next) */

static int by_pid_conn(const void *a, const void *b)
{
        const struct kvd_reap_conn *x = a, *y = b;

        if (x->pid != y->pid)
                return x->pid < y->pid ? -1 : 1;
        return x->fd < y->fd ? -1 : x->fd > y->fd;
}

static int by_fd_gone(const void *a, const void *b)
{
        const struct kvd_reap_gone *x = a, *y = b;

        return x->fd < y->fd ? -1 : x->fd > y->fd;
}

static int by_pid_snap(const void *a, const void *b)
{
        const struct kvd_reap_snap *x = a, *y = b;

        return x->pid < y->pid ? -1 : x->pid > y->pid;
}

/* Whether (fd, ino) is the connection of a session the reaper ended
 * (r->gone is sorted by fd). */
static int was_gone(const struct kvd_reaper *r, int fd, uint64_t ino)
{
        const struct kvd_reap_gone  key = { fd, ino };
        const struct kvd_reap_gone *g =
                r->n_gone ? bsearch(&key, r->gone, r->n_gone, sizeof(*r->gone), by_fd_gone) : NULL;

        return g && g->ino == ino;
}

/* Whether fd was accepted on the events socket at path ev (NULL: none):
 * an accepted socket is named after the listener that accepted it, the
 * socket file or a listener guard's `<path>.<n>` (a guard's fallback name
 * for a path near 108 bytes is not recognized: such a subscriber then
 * counts as a connection that could be a session's). */
static int on_events(int fd, const char *ev)
{
        struct sockaddr_un a;
        socklen_t          al = sizeof a;
        size_t             n;

        if (!ev)
                return 0;
        memset(&a, 0, sizeof a);
        if (getsockname(fd, (struct sockaddr *)&a, &al) != 0 || a.sun_family != AF_UNIX ||
            al <= offsetof(struct sockaddr_un, sun_path))
                return 0;
        a.sun_path[sizeof a.sun_path - 1] = 0;
        n = strlen(ev);
        if (strncmp(a.sun_path, ev, n) != 0)
                return 0;
        if (a.sun_path[n] == 0)
                return 1;
        if (a.sun_path[n] != '.' || !a.sun_path[n + 1])
                return 0;
        for (const char *p = a.sun_path + n + 1; *p; p++)
                if (*p < '0' || *p > '9')
                        return 0;
        return 1;
}

/* Keeps in r->gone only the connections listed in c[0..n) now. */
static void prune_gone(struct kvd_reaper *r, const struct kvd_reap_conn *c, size_t n)
{
        unsigned char *seen;
        size_t         kept = 0;

        if (r->n_gone == 0 || !(seen = calloc(r->n_gone, 1)))
                return; /* out of memory: pruned at a later sweep */
        for (size_t k = 0; k < n; k++) {
                const struct kvd_reap_gone  key = { c[k].fd, c[k].ino };
                const struct kvd_reap_gone *g = bsearch(&key, r->gone, r->n_gone, sizeof(*r->gone), by_fd_gone);

                if (g && g->ino == c[k].ino)
                        seen[g - r->gone] = 1;
        }
        for (size_t i = 0; i < r->n_gone; i++)
                if (seen[i])
                        r->gone[kept++] = r->gone[i];
        r->n_gone = kept;
        free(seen);
}

/* This process's connected Unix sockets whose peer pid is known, sorted by
 * pid, into *ret (malloc'ed) and *ret_n, those of the events socket (path
 * ev) and of sessions the reaper ended marked aux.  0 or -errno (nothing
 * stored). */
static int list_conns(const struct kvd_reaper *r, const char *ev, struct kvd_reap_conn **ret, size_t *ret_n)
{
        struct kvd_own_sock  *own = NULL;
        struct kvd_reap_conn *v;
        const long            m = kvd_own_sockets(&own);
        size_t                n = 0;

        if (m < 0)
                return (int)m;
        if (!(v = malloc(((size_t)m + 1) * sizeof(*v)))) {
                free(own);
                return -ENOMEM;
        }
        for (long i = 0; i < m; i++) {
                const int     fd = own[i].fd;
                struct ucred  uc;
                socklen_t     len = sizeof uc, alen = sizeof(int);
                int           listening = 0;
                struct pollfd pf = { .fd = fd, .events = POLLRDHUP };

                /* a listening socket's SO_PEERCRED names this process: not
                 * a connection; other families report pid 0 */
                if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) != 0 || uc.pid <= 0 ||
                    getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &alen) != 0 || listening)
                        continue;
                v[n] = (struct kvd_reap_conn){ .pid = uc.pid, .fd = fd, .ino = (uint64_t)own[i].ino,
                                               .open = poll(&pf, 1, 0) == 0 };
                v[n].aux = was_gone(r, fd, v[n].ino) || on_events(fd, ev);
                n++;
        }
        free(own);
        if (n)
                qsort(v, n, sizeof(*v), by_pid_conn);
        *ret = v;
        *ret_n = n;
        return 0;
}

void kvd_reaper_judge(struct kvd_reap_snap *sn, size_t ns, struct kvd_reap_conn *c, size_t nc)
{
        size_t unlinked = 0, free_conns = 0, open_free = 0, last_s = 0, last_c = 0;

        for (size_t i = 0; i < ns; i++) {
                size_t k = nc;

                if (sn[i].fd >= 0) {
                        /* c is sorted by fd: binary search */
                        size_t lo = 0, hi = nc;

                        while (lo < hi) {
                                const size_t mid = lo + (hi - lo) / 2;

                                if (c[mid].fd < sn[i].fd)
                                        lo = mid + 1;
                                else
                                        hi = mid;
                        }
                        if (lo < nc && c[lo].fd == sn[i].fd && c[lo].ino == sn[i].ino && !c[lo].linked)
                                k = lo;
                }
                if (k < nc) {
                        c[k].linked = 1;
                        sn[i].closed = !c[k].open;
                } else {
                        sn[i].fd = -1; /* its connection is gone: nng closed it */
                        unlinked++;
                        last_s = i;
                }
        }
        /* any unlinked connection may be an unlinked session's (the
         * verdict below), but only one that can be a session's is
         * offered for a link */
        for (size_t k = 0; k < nc; k++)
                if (!c[k].linked) {
                        open_free += c[k].open;
                        if (!c[k].aux) {
                                free_conns++;
                                last_c = k;
                        }
                }
        for (size_t i = 0; i < ns; i++)
                if (sn[i].fd < 0)
                        sn[i].closed = open_free == 0;
        if (unlinked == 1 && free_conns == 1) {
                struct kvd_reap_snap *t = &sn[last_s];

                if (t->cand == c[last_c].fd && t->cand_ino == c[last_c].ino) {
                        t->fd = c[last_c].fd; /* the second sweep in a row: linked */
                        t->ino = c[last_c].ino;
                        t->cand = -1;
                } else {
                        t->cand = c[last_c].fd;
                        t->cand_ino = c[last_c].ino;
                }
        } else {
                for (size_t i = 0; i < ns; i++)
                        if (sn[i].fd < 0)
                                sn[i].cand = -1;
        }
}

/* One round at time `now` (CLOCK_MONOTONIC seconds). */
static void sweep(struct kvd_server *s, double now)
{
        struct kvd_reaper *r = &s->reaper;
        struct kvd_reap_snap *sn = NULL;
        struct kvd_reap_conn *c = NULL;
        size_t       ns = 0, nc = 0, ended = 0;
        uint32_t     cur = 0;
        const pid_t  self = getpid();

        pthread_mutex_lock(&s->lock);
        const uint32_t count = kvd_sessions_count(s->sessions);
        if (count && (sn = malloc(count * sizeof(*sn))))
                for (const struct kvd_session *ss; ns < count && (ss = kvd_sessions_next(s->sessions, &cur));)
                        if (ss->pid_peer && ss->pid > 0)
                                sn[ns++] = (struct kvd_reap_snap){ .pid = (pid_t)ss->pid, .pipe_id = ss->pipe_id,
                                                          .fd = ss->conn_fd, .ino = ss->conn_ino,
                                                          .cand = ss->cand_fd, .cand_ino = ss->cand_ino };
        pthread_mutex_unlock(&s->lock);
        if (ns == 0) {
                free(sn);
                return;
        }
        const char *ev = s->events_url && strncmp(s->events_url, "ipc://", 6) == 0 ? s->events_url + 6 : NULL;
        const int   e = list_conns(r, ev, &c, &nc);
        if (e < 0) {
                /* at the fd limit (every closed connection keeps one in a
                 * wedged nng), or out of memory: say so once */
                if (!r->told)
                        kvd_warn("cannot list this process's connections (%s): sessions whose connection closed "
                                 "without nng reporting it are not ended until it can", strerror(-e));
                r->told = 1;
                free(sn);
                return;
        }
        r->told = 0;
        qsort(sn, ns, sizeof(*sn), by_pid_snap);
        for (size_t i = 0, k = 0; i < ns;) {
                size_t j = i, m;

                while (j < ns && sn[j].pid == sn[i].pid)
                        j++;
                while (k < nc && c[k].pid < sn[i].pid)
                        k++;
                for (m = k; m < nc && c[m].pid == sn[i].pid; m++)
                        ;
                kvd_reaper_judge(sn + i, j - i, c + k, m - k);
                i = j;
        }
        prune_gone(r, c, nc);
        free(c);

        pthread_mutex_lock(&s->lock);
        for (size_t i = 0; i < ns && !s->closing; i++) {
                struct kvd_session *ss = kvd_sessions_find(s->sessions, sn[i].pipe_id);

                if (!ss)
                        continue; /* nng reported the close meanwhile */
                ss->conn_fd = sn[i].fd;
                ss->conn_ino = sn[i].ino;
                ss->cand_fd = sn[i].cand;
                ss->cand_ino = sn[i].cand_ino;
                if (!sn[i].closed) {
                        ss->closed_since = 0.0;
                        continue;
                }
                if (ss->closed_since == 0.0)
                        ss->closed_since = now;
                if (now - ss->closed_since < REAP_GRACE_S || ended == REAP_BATCH)
                        continue;
                /* its connection stays listed (nng never closes it) but is
                 * nobody's now: it must not keep the pid's next session
                 * from being linked */
                if (sn[i].fd >= 0 && r->n_gone < KVD_REAP_GONE_MAX &&
                    (r->gone || (r->gone = malloc(KVD_REAP_GONE_MAX * sizeof(*r->gone)))))
                        r->gone[r->n_gone++] = (struct kvd_reap_gone){ sn[i].fd, sn[i].ino };
                ss = kvd_sessions_remove(s->sessions, sn[i].pipe_id);
                if (sn[i].pid == self)
                        kvd_warn("the listener guard's probe closed its connection %u (session %u), but nng has "
                                 "not reported the close; ending the session now", ss->pipe_id, ss->id);
                else
                        kvd_warn("client %s (pid %lld, session %u): its connection %u is closed, but nng has not "
                                 "reported the close for %.0f s; ending the session now",
                                 ss->name[0] ? ss->name : "?", (long long)ss->pid, ss->id, ss->pipe_id,
                                 now - ss->closed_since);
                kvd_server_drop_session(s, ss);
                free(ss);
                ended++;
        }
        if (r->n_gone > 1)
                qsort(r->gone, r->n_gone, sizeof(*r->gone), by_fd_gone);
        if (ended && !s->reap_told) {
                s->reap_told = 1;
                kvd_err("nng no longer reports closed connections (its pipe teardown is stuck, a known fault of "
                        "nng 1.5.2; docs/operations.md section 9): kvpoold ends the sessions of closed "
                        "connections itself, but every closed connection keeps a file descriptor; restart "
                        "kvpoold when convenient");
        }
        pthread_mutex_unlock(&s->lock);
        free(sn);
}

static void reaper_tick(void *arg, double now)
{
        sweep(arg, now);
}

int kvd_reaper_start(struct kvd_server *s)
{
        return kvd_ticker_start(&s->reaper.ticker, REAP_EVERY_S, reaper_tick, s);
}

void kvd_reaper_stop(struct kvd_server *s)
{
        kvd_ticker_stop(&s->reaper.ticker);
        free(s->reaper.gone);
        s->reaper.gone = NULL;
        s->reaper.n_gone = 0;
}
