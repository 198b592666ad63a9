/* listen_guard.c - keeps kvpoold's ipc:// listener accepting despite a bug
 * of Debian 12's nng 1.5.2: a peer that connects and closes before the
 * 8-byte SP handshake is done stops the listener for good ("Disconnect
 * during negotiation breaks listener", nanomsg/nng#1518, fixed upstream by
 * #1519 after 1.5.2).  nng's transport still accepts and completes the
 * handshake of later connections, but never hands them to the socket: their
 * requests go unanswered until the client's own timeout, while connected
 * clients keep working.  One `nc -U`, a health probe that only connects, a
 * client killed while connecting, or a second kvpoold started on the same
 * path (nng's check for a stale socket file connects and closes) is enough.
 *
 * How it is noticed: every KVD_GUARD_EVERY_MS (3 s) the guard lists the
 * connections the watched listener accepted (/proc/net/unix names an
 * accepted AF_UNIX connection by the name its listener was bound to; this
 * process's own are those whose inode is among /proc/self/fd) and how many
 * bytes wait unread in each (SIOCINQ).  nng reads every connection it has:
 * the peer's 8-byte handshake as it comes, then each request as it comes
 * (the serving loop takes them within microseconds).  A connection that
 * nng accepted but never handed over keeps what its peer sent after the
 * handshake.  So when bytes have waited in a connection, not shrinking,
 * for KVD_GUARD_STUCK_MS (12 s), the listener may have stopped.  Peers that
 * are slow or silent during the handshake, and connections that are
 * closing (their session just ended), have nothing unread; a serving loop
 * that was held up longer than two periods (its reads waited with it)
 * starts the count again.  One other thing keeps bytes unread for good: a
 * connection whose teardown nng 1.5.2 left stuck (reaper.c).  So
 * a probe client of the guard's own confirms first (probe_answers): only
 * when it gets no answer, while the serving loop goes round, is the
 * listener replaced.
 *
 * A socket whose peers send nothing after the handshake (the events PUB
 * socket: subscribers only read) has no unread bytes to count: there the
 * owner's probe alone decides, every probe_every seconds
 * (kvd_guard_probe_only, events.c events_probe).
 *
 * How it is mended: a new listener on the same socket, bound to a name
 * beside the socket file (<path>.<n>, or <dir>/.kvg<c><n> or <dir>/.<c><n>,
 * c the file name's first character, where that would not fit sun_path) with the same limits, mode and group,
 * is renamed over the socket file, and is watched from then on.  New
 * clients reach it; the old listener's connections stay as they are (its
 * served clients keep working; the unserved ones stay with nng until the
 * daemon exits: an old listener must not be closed before then, or nng
 * would remove the live socket file).  The clients that came while it was
 * stopped fail at their own request timeout.
 *
 * How long it goes on: each take-over leaks what the stopped listener
 * holds (its listening descriptor, the connections it accepted and never
 * handed over, the guard's probe connection among them) and a little
 * memory, until the daemon exits.  So the guard takes over while the
 * process has descriptors to spare: under 3/4 of RLIMIT_NOFILE's soft
 * limit (kvpoold raises it to the hard one at start), the last quarter
 * being the serving loop's (sessions, the metrics endpoint, pools), and at
 * most KVD_GUARD_CEILING times (listen_guard.h says why a ceiling still).
 * Short of descriptors (kvd_guard_headroom: live sessions count too, and
 * they leave) it says once, at error level, that the stopped listener
 * cannot be replaced now, and takes over at the first check that finds
 * room.  Out of descriptors altogether (EMFILE: the scan or the probe
 * cannot open one; nng cannot accept new clients either) it says so once
 * and checks again each time.  Past the ceiling, or when a take-over
 * fails, it gives up for good and says why and that kvpoold must be
 * restarted.  The metrics show its take-overs, whether new clients get no
 * answer that it cannot mend now, and whether it gave up
 * (kvd_guard_stats).
 *
 * Without /proc/net/unix or /proc/self/fd (a sandbox that hides them) the
 * guard says so once and does nothing.  The checks run on a thread of the
 * guard's own (kvd_guard_start), so that reading /proc never holds up the
 * serving loop.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include "kv_proto.h"
#include "listen_guard.h"
#include "log.h"

/* The descriptor of this process's socket with inode ino, looked up in
 * v[n] (sorted by inode), or -1. */
static int own_fd(const struct kvd_own_sock *v, size_t n, unsigned long ino)
{
        size_t lo = 0, hi = n;

        while (lo < hi) {
                size_t mid = (lo + hi) / 2;

                if (v[mid].ino < ino)
                        lo = mid + 1;
                else if (v[mid].ino > ino)
                        hi = mid;
                else
                        return v[mid].fd;
        }
        return -1;
}

static int cmp_own(const void *a, const void *b)
{
        unsigned long x = ((const struct kvd_own_sock *)a)->ino, y = ((const struct kvd_own_sock *)b)->ino;

        return x < y ? -1 : x > y;
}

long kvd_own_sockets(struct kvd_own_sock **ret)
{
        char            link[64], path[300];
        DIR            *d = opendir("/proc/self/fd");
        struct dirent  *e;
        struct kvd_own_sock *v = NULL;
        unsigned long   ino;
        size_t          n = 0, cap = 0;

        if (!d)
                return -errno;
        while ((e = readdir(d)) != NULL) {
                ssize_t k;

                if (e->d_name[0] == '.')
                        continue;
                snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
                if ((k = readlink(path, link, sizeof link - 1)) <= 0)
                        continue;
                link[k] = 0;
                if (sscanf(link, "socket:[%lu]", &ino) != 1)
                        continue;
                if (n == cap) {
                        struct kvd_own_sock *w = realloc(v, (cap = cap ? 2 * cap : 64) * sizeof *v);

                        if (!w) {
                                free(v);
                                closedir(d);
                                return -ENOMEM;
                        }
                        v = w;
                }
                v[n].ino = ino;
                v[n].fd = atoi(e->d_name);
                n++;
        }
        closedir(d);
        if (n)
                qsort(v, n, sizeof *v, cmp_own);
        *ret = v;
        return (long)n;
}

/* The connections this process accepted on the listener bound to name:
 * their inodes (*ret, malloc'ed; free it), the bytes waiting unread in each
 * (*unread, malloc'ed), and their count, or -errno when /proc cannot tell
 * (or out of memory).  Out-params untouched on failure. */
static long accepted_connections(const char *name, unsigned long **ret, int **unread)
{
        char             line[512];
        struct kvd_own_sock *fds = NULL;
        unsigned long   *ino;
        int             *rq;
        long             nfd = kvd_own_sockets(&fds), count = 0;
        FILE            *f;

        if (nfd < 0)
                return nfd;
        /* at most one per socket of this process */
        ino = malloc(((size_t)nfd + 1) * sizeof *ino);
        rq = malloc(((size_t)nfd + 1) * sizeof *rq);
        if (!ino || !rq) {
                free(fds);
                free(ino);
                free(rq);
                return -ENOMEM;
        }
        if (!(f = fopen("/proc/net/unix", "r")) || !fgets(line, sizeof line, f)) { /* the header */
                int e = f ? EIO : errno;

                if (f)
                        fclose(f);
                free(fds);
                free(ino);
                free(rq);
                return -e;
        }
        while (fgets(line, sizeof line, f) && count < nfd) {
                unsigned int  flags, type, st;
                unsigned long i;
                int           at = 0, fd, n = 0;

                /* Num: RefCount Protocol Flags Type St Inode Path; St 03:
                 * connected, which a listening socket (flag 0x10000) is not */
                if (sscanf(line, "%*s %*x %*x %x %x %x %lu %n", &flags, &type, &st, &i, &at) != 4 || at == 0 ||
                    st != 3 || (flags & 0x10000u))
                        continue;
                line[strcspn(line, "\n")] = 0;
                if (strcmp(line + at, name) != 0 || (fd = own_fd(fds, (size_t)nfd, i)) < 0)
                        continue;
                /* what nng has not read from it (0 if the fd went meanwhile) */
                if (ioctl(fd, SIOCINQ, &n) != 0)
                        n = 0;
                ino[count] = i;
                rq[count++] = n;
        }
        fclose(f);
        free(fds);
        *ret = ino;
        *unread = rq;
        return count;
}

void kvd_guard_init(struct kvd_guard *g, nng_socket sock, nng_listener l, const char *path, int mode,
                    int has_group, gid_t group)
{
        memset(g, 0, sizeof *g);
        g->sock = sock;
        g->listener = l;
        g->path = path;
        g->mode = mode;
        g->has_group = has_group;
        g->group = group;
        if (path)
                snprintf(g->bound, sizeof g->bound, "%s", path);
        kvd_guard_timing(g, 0, 0, 0);
}

void kvd_guard_timing(struct kvd_guard *g, unsigned every_ms, unsigned stuck_ms, unsigned probe_ms)
{
        g->every = (every_ms ? every_ms : KVD_GUARD_EVERY_MS) / 1000.0;
        g->stuck = (stuck_ms ? stuck_ms : KVD_GUARD_STUCK_MS) / 1000.0;
        g->probe_ms = (int)(probe_ms ? probe_ms : KVD_GUARD_PROBE_MS);
}

int kvd_guard_due(const struct kvd_guard *g, double now)
{
        return g->path && !(g->quiet & 2) && now - g->last >= g->every;
}

int kvd_guard_headroom(long fds_open, unsigned long fd_limit, unsigned tries, char *why, size_t whylen)
{
        if (tries >= KVD_GUARD_CEILING) {
                snprintf(why, whylen, "%u take-overs tried, the most one process makes (each leaks a few descriptors "
                         "and some memory)", tries);
                return -1;
        }
        if (fds_open == -EMFILE || fds_open == -ENFILE) {
                if (fds_open == -EMFILE && fd_limit > 0)
                        snprintf(why, whylen, "no descriptor left (EMFILE): limit %lu reached", fd_limit);
                else
                        snprintf(why, whylen, "no descriptor left (%s)", fds_open == -EMFILE ? "EMFILE" :
                                 "ENFILE: the system's file table is full");
                return 0;
        }
        /* the last quarter is the serving loop's: sessions, the metrics
         * endpoint's connections, pools; written so that a limit near
         * ULONG_MAX does not overflow */
        if (fds_open >= 0 && fd_limit > 0 && (unsigned long)fds_open >= fd_limit - fd_limit / 4) {
                snprintf(why, whylen, "descriptors %ld of limit %lu open, and a take-over may fill at most 3/4 of the "
                         "limit (each leaks a few)", fds_open, fd_limit);
                return 0;
        }
        return 1;
}

int kvd_guard_stats(const struct kvd_guard *g, uint64_t *ret_taken, int *ret_gave_up, int *ret_unmended)
{
        if (!g || !g->path)
                return -ENOENT;
        *ret_taken = atomic_load(&g->taken);
        *ret_gave_up = atomic_load(&g->gave_up);
        *ret_unmended = atomic_load(&g->unmended);
        return 0;
}

/* The descriptors open in this process (entries of /proc/self/fd, less
 * the one that reads it), or -errno. */
static long open_fds(void)
{
        DIR           *d = opendir("/proc/self/fd");
        struct dirent *e;
        long           n = 0;

        if (!d)
                return -errno;
        while ((e = readdir(d)) != NULL)
                n += e->d_name[0] != '.' && atoi(e->d_name) != dirfd(d);
        closedir(d);
        return n;
}

/* RLIMIT_NOFILE's soft limit, 0 for none (or unknown). */
static unsigned long fd_limit(void)
{
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
                return 0;
        return (unsigned long)rl.rlim_cur;
}

void kvd_guard_fini(struct kvd_guard *g)
{
        free(g->ino);
        free(g->seen);
        free(g->unread);
        g->ino = NULL;
        g->seen = NULL;
        g->unread = NULL;
        g->n = 0;
}

/* Writes all of buf[0..n) (the socket has a send timeout). */
static int send_all(int fd, const uint8_t *buf, size_t n)
{
        while (n) {
                ssize_t k = send(fd, buf, n, MSG_NOSIGNAL);

                if (k <= 0)
                        return -1;
                buf += k;
                n -= (size_t)k;
        }
        return 0;
}

/* Reads exactly n bytes into buf (the socket has a receive timeout). */
static int recv_all(int fd, uint8_t *buf, size_t n)
{
        while (n) {
                ssize_t k = recv(fd, buf, n, 0);

                if (k <= 0)
                        return -1;
                buf += k;
                n -= (size_t)k;
        }
        return 0;
}

int kvd_guard_dial(const char *path, uint8_t proto, uint8_t peer_proto, int timeout_ms)
{
        struct sockaddr_un a = { .sun_family = AF_UNIX };
        struct timeval     tv = { .tv_sec = timeout_ms / 1000, .tv_usec = timeout_ms % 1000 * 1000 };
        const uint8_t      hs[8] = { 0, 'S', 'P', 0, 0x00, proto, 0, 0 };
        uint8_t            peer[8];
        int                fd, e;

        if (strlen(path) >= sizeof a.sun_path)
                return -ENAMETOOLONG;
        if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
                return -errno;
        memcpy(a.sun_path, path, strlen(path) + 1);
        if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0) {
                e = -errno;
                close(fd);
                return e;
        }
        e = 0;
        if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
                e = -ECONNREFUSED;
        else if (send_all(fd, hs, sizeof hs) != 0 || recv_all(fd, peer, sizeof peer) != 0 ||
                 memcmp(peer, "\0SP\0\0", 5) != 0 || peer[5] != peer_proto)
                e = -EPROTO;
        if (e) {
                close(fd);
                return e;
        }
        return fd;
}

/* Whether a new client gets an answer on the socket file now: connects as
 * a REQ peer (docs/protocol.md appendix), finishes the SP handshake, sends
 * one STATUS request and reads the reply's frame header (before HELLO the
 * daemon answers with an error: any answer will do), each step within
 * probe_ms milliseconds.  The count of unread connections can also come
 * from nng's stuck pipe teardown (reaper.c): a connection whose
 * teardown never finished keeps its peer's last request, while the
 * listener works.  1: answered; 0: not; -EMFILE or -ENFILE: no
 * descriptor for the probe (the process is out of them); -1: the probe
 * could not be made otherwise.  Neither negative says anything about the
 * listener. */
static int probe_answers(const char *path, int probe_ms)
{
        uint8_t msg[13 + KV_HDR_SIZE + 4], rep;
        int     fd, ok = 0;

        /* REQ (0x30) to REP (0x31); no socket at all (the fd limit) says
         * nothing about the listener */
        if ((fd = kvd_guard_dial(path, 0x30, 0x31, probe_ms)) < 0)
                return fd == -ECONNREFUSED || fd == -EPROTO || fd == -ENAMETOOLONG ? 0
                       : fd == -EMFILE || fd == -ENFILE                           ? fd
                                                                                  : -1;
        {
                /* frame: type 1, big-endian u64 length, SP request id (top
                 * bit set), then the kvpool message (little-endian) */
                const uint64_t len = 4 + KV_HDR_SIZE + 4;

                msg[0] = 1;
                for (int i = 0; i < 8; i++)
                        msg[1 + i] = (uint8_t)(len >> (56 - 8 * i));
                msg[9] = 0x80, msg[10] = 0, msg[11] = 0, msg[12] = 1;
                if (kv_hdr_encode(msg + 13, KV_HDR_SIZE, KV_OP_STATUS, 1, 4) == (int)KV_HDR_SIZE) {
                        kv_put32(msg + 13 + KV_HDR_SIZE, 0);
                        ok = send_all(fd, msg, sizeof msg) == 0 && recv_all(fd, &rep, 1) == 0 && rep == 1;
                }
        }
        close(fd);
        return ok;
}

int kvd_guard_name(const char *path, unsigned n, char *buf, size_t len)
{
        const size_t max = sizeof(((struct sockaddr_un *)0)->sun_path); /* with its NUL */
        const char  *slash = strrchr(path, '/');
        const int    dir = slash ? (int)(slash - path) : 0;
        /* the file name's first character keeps two guards' names apart in
         * one folder (kvpool.sock and events.sock) */
        const char   c = slash ? slash[1] : path[0];
        int          k;

        /* each form's length is checked as written, whatever the digits of
         * n: snprintf's count, not the buffer's, so that a cut name is never
         * taken for one that fits */
        k = snprintf(buf, len, "%s.%u", path, n);
        if (k >= 0 && (size_t)k < len && (size_t)k < max)
                return 0;
        /* a path near sun_path's 108 bytes: a shorter name in the same
         * folder (rename stays within one file system) */
        k = snprintf(buf, len, "%.*s%s.kvg%c%u", dir, path, slash ? "/" : "", c, n);
        if (k >= 0 && (size_t)k < len && (size_t)k < max)
                return 0;
        k = snprintf(buf, len, "%.*s%s.%c%u", dir, path, slash ? "/" : "", c, n); /* a short file name */
        if (k >= 0 && (size_t)k < len && (size_t)k < max)
                return 0;
        return -ENAMETOOLONG;
}

/* A new listener bound beside the socket file, renamed over it, watched
 * from now on.  0, or -1 with why (the old listener stays the watched one). */
static int take_over(struct kvd_guard *g, size_t recv_max, char *why, size_t whylen)
{
        char         name[sizeof g->bound + 16], url[sizeof name + 8];
        nng_listener l;
        int          rv;

        if (kvd_guard_name(g->path, g->tries, name, sizeof name) != 0 || strlen(name) >= sizeof g->bound) {
                snprintf(why, whylen, "%s is too long for a socket name", name);
                return -1;
        }
        snprintf(url, sizeof url, "ipc://%s", name);
        (void)unlink(name); /* a leftover of an earlier process */
        if ((rv = nng_listener_create(&l, g->sock, url))) {
                snprintf(why, whylen, "listen on %s: %s", name, nng_strerror(rv));
                return -1;
        }
        if ((rv = nng_listener_set_size(l, NNG_OPT_RECVMAXSZ, recv_max)) ||
            (rv = nng_listener_set_int(l, NNG_OPT_IPC_PERMISSIONS, g->mode)) || (rv = nng_listener_start(l, 0))) {
                snprintf(why, whylen, "listen on %s: %s", name, nng_strerror(rv));
                nng_listener_close(l);
                return -1;
        }
        if ((g->has_group && chown(name, (uid_t)-1, g->group) != 0) || rename(name, g->path) != 0) {
                snprintf(why, whylen, "%s: %s", name, strerror(errno));
                nng_listener_close(l);
                (void)unlink(name);
                return -1;
        }
        g->listener = l;
        snprintf(g->bound, sizeof g->bound, "%s", name);
        kvd_guard_fini(g); /* the old listener's connections are not watched */
        return 0;
}

void kvd_guard_probe_only(struct kvd_guard *g, int (*probe)(void *arg, const char *path), void *arg, double every)
{
        g->probe = probe;
        g->probe_arg = arg;
        g->probe_every = every;
}

/* Stops taking over for good (the guard thread's).  Always after a stop
 * was seen: new clients get no answer from then on. */
static void give_up(struct kvd_guard *g)
{
        g->quiet |= 2;
        g->waits = 0;
        atomic_store(&g->unmended, 1);
        atomic_store(&g->gave_up, 1);
}

/* The process is out of descriptors (e: EMFILE or ENFILE, met by the
 * scan or the probe): nng cannot accept new clients, and the guard can
 * neither see whether the listener stopped nor replace it.  Says so once
 * (until it has descriptors again: no_fds_over); the next check tries
 * again.  The guard thread's. */
static void no_fds(struct kvd_guard *g, double now, int e, const char *doing)
{
        char                why[96];
        const unsigned long lim = fd_limit();

        atomic_store(&g->unmended, 1);
        if (g->waits == KVD_GUARD_WAIT_NO_FDS)
                return;
        if (e == EMFILE && lim > 0)
                snprintf(why, sizeof why, "EMFILE: all %lu of its limit are open", lim);
        else
                snprintf(why, sizeof why, "%s", e == EMFILE ? "EMFILE" : "ENFILE: the system's file table is full");
        kvd_err("kvpoold is out of descriptors (%s; the listener guard could not %s): new clients on %s get no "
                "answer, and the guard can neither check nor replace its listener now; it tries again each check "
                "(every %.3g s)", why, doing, g->path, g->every);
        g->waits = KVD_GUARD_WAIT_NO_FDS;
        g->wait_since = now;
}

/* A check got the descriptors it needed: ends the out-of-descriptors
 * state of no_fds, and says so.  The guard thread's. */
static void no_fds_over(struct kvd_guard *g, double now)
{
        if (g->waits != KVD_GUARD_WAIT_NO_FDS)
                return;
        g->waits = 0;
        atomic_store(&g->unmended, 0);
        kvd_warn("kvpoold has descriptors again after %.3g s: the listener guard watches %s again", now - g->wait_since,
                 g->path);
}

/* Replaces the watched listener and says so (the tick's last step), or,
 * when the process has no room for one more take-over's leak, says once
 * that it cannot now (each check calls it again until it can), or gives up
 * for good (the ceiling, a take-over that failed).  what: how the stop was
 * seen. */
static void mend(struct kvd_guard *g, double now, size_t recv_max, const char *what)
{
        char                why[400];
        const unsigned long lim = fd_limit();
        long                fds = open_fds();
        int                 room;

        /* no descriptor left to read /proc/self/fd with: at the limit */
        if (fds == -EMFILE && lim > 0 && lim <= (unsigned long)LONG_MAX)
                fds = (long)lim;
        if ((room = kvd_guard_headroom(fds, lim, g->tries, why, sizeof why)) < 0) {
                kvd_err("the listener on %s stopped handing connections over (%s: nng 1.5.2, nanomsg/nng#1518) and "
                        "the listener guard gives up: %s; new clients get no answer until kvpoold is restarted "
                        "(systemctl restart kvpoold)", g->path, what, why);
                give_up(g);
                return;
        }
        if (room == 0) {
                /* sessions hold descriptors too, and they leave: not for good */
                atomic_store(&g->unmended, 1);
                if (g->waits == KVD_GUARD_WAIT_STOPPED)
                        return;
                kvd_err("the listener on %s stopped handing connections over (%s: nng 1.5.2, nanomsg/nng#1518) and "
                        "cannot be replaced now: %s; new clients get no answer until descriptors are freed (sessions "
                        "that end) or the limit is raised (docs/operations.md §9); the listener guard tries again "
                        "each check (every %.3g s)", g->path, what, why, g->every);
                g->waits = KVD_GUARD_WAIT_STOPPED;
                g->wait_since = now;
                return;
        }
        g->tries++;
        if (take_over(g, recv_max, why, sizeof why) == 0) {
                atomic_fetch_add(&g->taken, 1);
                atomic_store(&g->unmended, 0);
                if (fds >= 0 && lim > 0)
                        snprintf(why, sizeof why, "descriptors %ld of limit %lu", fds, lim);
                else
                        snprintf(why, sizeof why, "descriptors not known");
                if (g->waits == KVD_GUARD_WAIT_STOPPED)
                        kvd_warn("the listener guard recovered: descriptors allow it now, and a new listener on %s "
                                 "took over the socket file %.3g s after it could not (take-over %u; %s); new clients "
                                 "are answered again", g->path, now - g->wait_since, g->tries, why);
                else
                        kvd_warn("the listener on %s stopped handing connections over (%s: nng 1.5.2, "
                                 "nanomsg/nng#1518, a peer closed during the handshake); a new one took over the "
                                 "socket file (take-over %u; %s)", g->path, what, g->tries, why);
                g->waits = 0;
        } else {
                /* a failure would only repeat */
                kvd_err("the listener on %s stopped handing connections over (nng 1.5.2, nanomsg/nng#1518) and "
                        "a new one could not take over (%s): new clients get no answer until kvpoold is restarted "
                        "(systemctl restart kvpoold)", g->path, why);
                give_up(g);
        }
}

void kvd_guard_tick(struct kvd_guard *g, double now, size_t recv_max)
{
        unsigned long *ino = NULL;
        int           *rq = NULL;
        double        *seen;
        size_t         n = 0;
        long           m;
        uint64_t       stuck = 0;
        int            stalled;

        if (!kvd_guard_due(g, now))
                return;
        /* a listener seen stopped stays stopped: each check only asks
         * whether there is room to replace it now */
        if (g->waits == KVD_GUARD_WAIT_STOPPED) {
                g->last = now;
                mend(g, now, recv_max, "seen at an earlier check");
                return;
        }
        if (g->probe) {
                int r;

                g->last = now;
                /* out of descriptors: the next check asks again, not the
                 * next period */
                if (now - g->probe_last < g->probe_every && g->waits != KVD_GUARD_WAIT_NO_FDS)
                        return;
                if ((r = g->probe(g->probe_arg, g->path)) == -EMFILE || r == -ENFILE) {
                        no_fds(g, now, -r, "probe the socket");
                        return;
                }
                g->probe_last = now;
                no_fds_over(g, now);
                if (r == 0)
                        mend(g, now, recv_max, "a new peer was not attached within the probe's wait");
                return;
        }
        /* the serving loop (or this thread) was held up: what nng did not
         * read meanwhile says nothing about the listener */
        {
                const double beat = (double)atomic_load(&g->beat_ms) / 1000.0;

                stalled = (g->last > 0 && now - g->last > 2 * g->every) ||
                          (beat > 0 && now - beat > 2 * g->every);
        }
        g->last = now;
        /* no descriptor to read /proc with: nng cannot accept either */
        if ((m = accepted_connections(g->bound, &ino, &rq)) == -EMFILE || m == -ENFILE) {
                no_fds(g, now, (int)-m, "list the connections");
                return;
        }
        if (m < 0 || !(seen = malloc(((size_t)m + 1) * sizeof *seen))) {
                free(ino);
                free(rq);
                if (!g->quiet)
                        kvd_info("listener guard: cannot list the connections of %s (%s): not watching it for "
                                 "nng 1.5.2's stopped listener (docs/operations.md §9)",
                                 g->path, strerror(m < 0 ? (int)-m : ENOMEM));
                g->quiet |= 1;
                return;
        }
        /* A connection is stuck when bytes have waited in it, unread by nng,
         * for g->stuck seconds: nng reads every connection it has
         * (the handshake, then each request), so only one that nng never
         * handed to the socket keeps them.  Peers that are slow or silent
         * during the handshake, and connections whose session has just
         * ended, have nothing unread.  since: when it was first seen with
         * unread bytes that did not shrink since. */
        for (n = 0; n < (size_t)m; n++) {
                seen[n] = now;
                if (!stalled && rq[n] > 0)
                        for (size_t k = 0; k < g->n; k++)
                                if (g->ino[k] == ino[n]) {
                                        if (g->unread[k] > 0 && rq[n] >= g->unread[k])
                                                seen[n] = g->seen[k];
                                        break;
                                }
                stuck += rq[n] > 0 && now - seen[n] >= g->stuck;
        }
        kvd_guard_fini(g);
        g->ino = ino;
        g->seen = seen;
        g->unread = rq;
        g->n = n;
        if (stuck == 0) {
                no_fds_over(g, now);
                return;
        }
        const uint64_t b0 = atomic_load(&g->beat_ms);
        const int      r = probe_answers(g->path, g->probe_ms);
        char           what[96];

        if (r == -EMFILE || r == -ENFILE) {
                no_fds(g, now, -r, "probe the socket");
                return;
        }
        no_fds_over(g, now);
        /* no socket for the probe, or a serving loop that did not go round
         * while the probe waited (it answers the probe): that says nothing
         * about the listener; the next check asks again */
        if (r < 0 || (r == 0 && b0 > 0 && atomic_load(&g->beat_ms) == b0))
                return;
        if (r > 0) {
                /* the listener works: these connections are ones nng stopped
                 * tearing down, never to be read; not counted again */
                for (size_t k = 0; k < g->n; k++)
                        if (g->unread[k] > 0 && now - g->seen[k] >= g->stuck)
                                g->seen[k] = INFINITY;
                if (!(g->quiet & 4))
                        kvd_info("listener guard: %u connection%s of %s unread for %.3g s, but a new client is "
                                 "answered: not a stopped listener (nng's stuck pipe teardown, docs/operations.md "
                                 "§9)", (unsigned)stuck, stuck == 1 ? "" : "s", g->path, g->stuck);
                g->quiet |= 4;
                return;
        }
        snprintf(what, sizeof what, "%u of its connections unread for %.3g s", (unsigned)stuck, g->stuck);
        mend(g, now, recv_max, what);
}

/* ---- the thread ---------------------------------------------------------------- */

static void guard_tick(void *arg, double now)
{
        struct kvd_guard *g = arg;

        kvd_guard_tick(g, now, g->recv_max);
}

int kvd_guard_start(struct kvd_guard *g, size_t recv_max)
{
        if (!g->path)
                return 0;
        g->recv_max = recv_max;
        return kvd_ticker_start(&g->ticker, g->every, guard_tick, g);
}

void kvd_guard_stop(struct kvd_guard *g)
{
        kvd_ticker_stop(&g->ticker);
}

void kvd_guard_beat(struct kvd_guard *g, double now)
{
        atomic_store(&g->beat_ms, (uint64_t)(now * 1000.0));
}
