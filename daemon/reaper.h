/* reaper.h - ends the sessions whose connection has closed when nng does
 * not say so (nng 1.5.2's stuck pipe teardown, docs/operations.md §9); see
 * reaper.c for how sessions are linked to connections.  Internal to the
 * daemon core.
 */
#ifndef KVD_REAPER_H
#define KVD_REAPER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "ticker.h"

struct kvd_server;

/* One connected Unix socket of this process, as a sweep lists it. */
struct kvd_reap_conn {
        pid_t    pid;     /* the peer that connected (SO_PEERCRED) */
        int      fd;
        uint64_t ino;
        int      open;    /* its peer end is open */
        int      aux;     /* never a session's: an events subscriber's, or the connection of a
                           * session the reaper ended; counted as a connection of its pid
                           * but never offered for a link */
        int      linked;  /* a session is linked to it (kvd_reaper_judge's) */
};

/* What a sweep knows of one session. */
struct kvd_reap_snap {
        pid_t    pid;
        uint32_t pipe_id;
        int      fd;       /* linked connection, -1 none (as found; then as decided) */
        uint64_t ino;
        int      cand;     /* the last sweep's candidate connection, -1 none (likewise) */
        uint64_t cand_ino;
        int      closed;   /* the verdict */
};

/* Decides sn[0..ns), the sessions of one peer pid, against c[0..nc), that
 * pid's connections sorted by fd: updates each session's link and
 * candidate and sets its verdict (reaper.c's header comment has the
 * rules).  Pure. */
void kvd_reaper_judge(struct kvd_reap_snap *sn, size_t ns, struct kvd_reap_conn *c, size_t nc);

/* A connection of a session the reaper ended: nng never closes it. */
struct kvd_reap_gone {
        int      fd;
        uint64_t ino;
};

/* The reaper: its thread and what it keeps between sweeps (the thread's
 * alone). */
struct kvd_reaper {
        struct kvd_ticker     ticker;
        struct kvd_reap_gone *gone; /* at most KVD_REAP_GONE_MAX, still listed at the last sweep; by fd */
        size_t                n_gone;
        int                   told; /* said it cannot list the connections */
};
#define KVD_REAP_GONE_MAX 4096

/* The thread that sweeps every few seconds and ends the sessions seen
 * closed for long enough.  Start: 0 or -errno; stop joins it and frees
 * what it kept (nothing if it is not running). */
int  kvd_reaper_start(struct kvd_server *s);
void kvd_reaper_stop(struct kvd_server *s);

#endif
