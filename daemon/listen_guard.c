/* listen_guard.c - keeps kvpoold's ipc:// listener accepting despite a bug
 * of Debian 12's nng 1.5.2: a peer that connects and closes before the
 * 8-byte SP handshake is done leaves the listener accepting nothing more,
 * for good ("Disconnect during negotiation breaks listener",
 * nanomsg/nng#1518, fixed upstream by #1519 after 1.5.2).  Connected
 * clients keep working; every later one times out.  One `nc -U`, a health
 * probe that only connects, or a client killed while connecting is enough.
 *
 * How it is noticed: the connections the listener accepted that never
 * reached the REP socket.  /proc/net/unix lists every accepted AF_UNIX
 * connection under the name its listener was bound to; those of this
 * process (their inodes among /proc/self/fd) are counted against the
 * sessions, one for each connection the socket got (server.c pipe_cb).
 * More connections than sessions at two checks a second apart (a working
 * nng hands a connection over within milliseconds of its 8-byte
 * handshake) means the listener has stopped: the connections stay in nng's
 * transport, negotiated, never handed over.
 *
 * How it is mended: a new listener on the same REP socket, bound to a name
 * beside the socket file (<path>.<n>) with the same mode and group, is
 * renamed over the socket file.  New clients reach it; the old listener's
 * connections (every worker connected so far) stay as they are; the
 * connections left in the old backlog fail when their handshake times out
 * (the first client after the fault, 10 s later).  At most KVD_GUARD_MAX
 * times in a process: more means something else is wrong.
 *
 * Without /proc/net/unix (another network namespace's view, a sandbox) the
 * guard says so once at debug level and does nothing.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "listen_guard.h"
#include "log.h"

/* Whether this process has a descriptor of the socket with inode ino:
 * looked up in fds[n], the sorted inodes of /proc/self/fd's sockets. */
static int ours(const unsigned long *fds, size_t n, unsigned long ino)
{
        size_t lo = 0, hi = n;

        while (lo < hi) {
                size_t mid = (lo + hi) / 2;

                if (fds[mid] < ino)
                        lo = mid + 1;
                else if (fds[mid] > ino)
                        hi = mid;
                else
                        return 1;
        }
        return 0;
}

static int cmp_ul(const void *a, const void *b)
{
        unsigned long x = *(const unsigned long *)a, y = *(const unsigned long *)b;

        return x < y ? -1 : x > y;
}

/* The inodes of this process's sockets, sorted: *ret (malloc'ed) and its
 * count, or -1 when /proc/self/fd cannot be read. */
static long own_sockets(unsigned long **ret)
{
        char           link[64], path[300];
        DIR           *d = opendir("/proc/self/fd");
        struct dirent *e;
        unsigned long *v = NULL, ino;
        size_t         n = 0, cap = 0;

        if (!d)
                return -1;
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
                        unsigned long *w = realloc(v, (cap = cap ? 2 * cap : 64) * sizeof *v);

                        if (!w) {
                                free(v);
                                closedir(d);
                                return -1;
                        }
                        v = w;
                }
                v[n++] = ino;
        }
        closedir(d);
        qsort(v, n, sizeof *v, cmp_ul);
        *ret = v;
        return (long)n;
}

/* The connections this process accepted on any listener the guard has
 * known (their names in g->names), or -1 when /proc cannot tell. */
static long accepted_connections(struct kvd_guard *g)
{
        char           line[512];
        unsigned long *fds = NULL;
        long           nfd = own_sockets(&fds), count = 0;
        FILE          *f;

        if (nfd < 0 || !(f = fopen("/proc/net/unix", "r"))) {
                free(fds);
                return -1;
        }
        if (!fgets(line, sizeof line, f)) { /* the header */
                fclose(f);
                free(fds);
                return -1;
        }
        while (fgets(line, sizeof line, f)) {
                unsigned int  flags, type, st;
                unsigned long ino;
                int           at = 0;

                /* Num: RefCount Protocol Flags Type St Inode Path; St 03:
                 * connected, which a listening socket (flag 0x10000) is not */
                if (sscanf(line, "%*s %*x %*x %x %x %x %lu %n", &flags, &type, &st, &ino, &at) != 4 || at == 0 ||
                    st != 3 || (flags & 0x10000u))
                        continue;
                line[strcspn(line, "\n")] = 0;
                for (unsigned i = 0; i <= g->swaps; i++)
                        if (strcmp(line + at, g->names[i]) == 0) {
                                count += ours(fds, (size_t)nfd, ino);
                                break;
                        }
        }
        fclose(f);
        free(fds);
        return count;
}

void kvd_guard_init(struct kvd_guard *g, nng_socket sock, const char *path, int mode, int has_group, gid_t group)
{
        memset(g, 0, sizeof *g);
        g->sock = sock;
        g->path = path;
        g->mode = mode;
        g->has_group = has_group;
        g->group = group;
        if (path)
                snprintf(g->names[0], sizeof g->names[0], "%s", path);
}

/* A new listener bound beside the socket file, renamed over it.  0, or -1
 * with why (the old listener stays the only one). */
static int take_over(struct kvd_guard *g, size_t recv_max, char *why, size_t whylen)
{
        char         name[sizeof g->names[0]], url[sizeof g->names[0] + 8];
        nng_listener l;
        int          rv;

        snprintf(name, sizeof name, "%s.%u", g->path, g->swaps + 1);
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
        g->swaps++;
        snprintf(g->names[g->swaps], sizeof g->names[0], "%s", name);
        return 0;
}

void kvd_guard_tick(struct kvd_guard *g, double now, uint32_t sessions, size_t recv_max)
{
        char why[400];
        long n;

        if (!g->path || g->swaps >= KVD_GUARD_MAX || now - g->last < 1.0)
                return;
        g->last = now;
        if ((n = accepted_connections(g)) < 0) {
                if (!g->said_blind)
                        kvd_debug("listener guard: /proc/net/unix or /proc/self/fd cannot be read: not watching %s",
                                  g->path);
                g->said_blind = 1;
                return;
        }
        /* connections stranded on a listener given up before stay counted
         * (nng keeps them): only more than those is news */
        n -= (long)sessions;
        if (n < 0)
                n = 0; /* a session whose connection is already gone */
        if (n < g->stranded)
                g->stranded = n;
        g->runs = n > g->stranded ? g->runs + 1 : 0;
        if (g->runs < 2)
                return;
        g->runs = 0;
        if (take_over(g, recv_max, why, sizeof why) == 0) {
                g->stranded = n;
                kvd_warn("the listener on %s stopped accepting connections (nng 1.5.2, nanomsg/nng#1518: a peer "
                         "closed during the handshake); a new one took over the socket file (%u of at most %u)",
                         g->path, g->swaps, KVD_GUARD_MAX);
        } else {
                kvd_warn("the listener on %s stopped accepting connections (nng 1.5.2, nanomsg/nng#1518) and a "
                         "new one could not take over (%s): restart kvpoold",
                         g->path, why);
        }
}
