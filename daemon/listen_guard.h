/* listen_guard.h - mends kvpoold's ipc:// listener when nng 1.5.2 stops it
 * (listen_guard.c has the why and how).  The checks run on a thread of the
 * guard's own (kvd_guard_start), so that reading /proc never holds up the
 * serving loop; the loop only beats (kvd_guard_beat). */
#ifndef KVD_LISTEN_GUARD_H
#define KVD_LISTEN_GUARD_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <nng/nng.h>
#include "ticker.h"

/* Take-overs (tried) in a process at most.  Each one leaks a few
 * descriptors and a little memory for good (the stopped listener and the
 * connections it never handed over cannot be closed: listen_guard.c), and
 * the descriptor rule (kvd_guard_headroom) bounds that only where
 * RLIMIT_NOFILE is modest: container runtimes set 1048576 or even 2^30,
 * where three quarters of it would be gigabytes of leaked socket memory
 * and every check's /proc/self/fd scan (the guard's, the reaper's) would
 * read hundreds of thousands of links.  A take-over needs at least
 * KVD_GUARD_STUCK_MS + KVD_GUARD_PROBE_MS (15 s): 4096 of them are 17 hours
 * of a listener stopped again and again, some 25000 descriptors (about 6
 * each in tests/protocol/test_listen_guard.py) and tens of MB; a cause that
 * persistent wants a restart (and a look) anyway. */
#define KVD_GUARD_CEILING 4096u
/* The defaults of the guard's timings (kvd_guard_timing), in ms */
#define KVD_GUARD_EVERY_MS 3000u  /* between checks */
#define KVD_GUARD_STUCK_MS 12000u /* bytes must wait unread in a connection */
#define KVD_GUARD_PROBE_MS 3000u  /* each step of the probe client may take (listen_guard.c) */

struct kvd_guard {
        nng_socket    sock;
        nng_listener  listener;   /* the one watched: the first, then the last that took over */
        const char   *path;       /* the socket file clients dial; NULL: not ipc://, no guard */
        char          bound[128]; /* the name the watched listener was bound to (sun_path holds 108 bytes) */
        int           mode;       /* the socket file's mode and group, for a new listener */
        int           has_group;
        gid_t         group;
        unsigned      tries;      /* take-overs tried (the guard thread's): <path>.<tries> */
        int           quiet;      /* 1: said it cannot watch; 2: gave up; 4: said a probe was answered */
        int           waits;      /* KVD_GUARD_WAIT_*: why it cannot mend now (the guard thread's) */
        double        wait_since; /* since when (s) */
        double        last;       /* time of the last check (s) */
        double        every;      /* seconds between checks (kvd_guard_timing) */
        double        stuck;      /* seconds bytes must wait unread */
        int           probe_ms;   /* each step of probe_answers */
        /* for the metrics (kvd_guard_stats), read from any thread */
        _Atomic uint64_t taken;   /* take-overs that succeeded */
        atomic_int       gave_up; /* 1: takes over no more (quiet & 2) */
        atomic_int       unmended; /* 1: new clients get no answer and it cannot mend that now (kvd_guard_stats) */
        /* the watched listener's accepted connections at the last check:
         * inode, since when its unread bytes have waited, how many */
        unsigned long *ino;       /* malloc'ed, n of them */
        double        *seen;      /* since when its unread bytes have waited */
        int           *unread;    /* bytes nng had not read from it */
        size_t         n;
        struct kvd_ticker ticker; /* the thread (kvd_guard_start) */
        size_t          recv_max;
        _Atomic uint64_t beat_ms; /* the serving loop's last beat (kvd_guard_beat), ms */
        /* a socket whose peers send nothing after the handshake (PUB):
         * no scan, the probe alone decides (kvd_guard_probe_only) */
        int           (*probe)(void *arg, const char *path);
        void           *probe_arg;
        double          probe_every; /* seconds between probes */
        double          probe_last;
};

/* Watches listener l of sock, bound to path (NULL: nothing to watch); mode
 * and group are the socket file's.  Does not copy path: it must outlive g. */
void kvd_guard_init(struct kvd_guard *g, nng_socket sock, nng_listener l, const char *path, int mode,
                    int has_group, gid_t group);
/* The guard's timings in milliseconds, 0 for a default: between checks
 * (KVD_GUARD_EVERY_MS), how long bytes must wait unread in a connection
 * (KVD_GUARD_STUCK_MS), and each step of the probe client
 * (KVD_GUARD_PROBE_MS).  For $KVPOOLD_GUARD_*_MS (server.c) and tests.
 * After kvd_guard_init, before kvd_guard_start. */
void kvd_guard_timing(struct kvd_guard *g, unsigned every_ms, unsigned stuck_ms, unsigned probe_ms);
/* Frees what g holds (not the listeners: nng_close closes them). */
void kvd_guard_fini(struct kvd_guard *g);
/* For a socket whose peers send nothing once connected (the events PUB
 * socket: subscribers only read), where unread bytes cannot tell a stopped
 * listener: every `every` seconds probe(arg, path) is asked whether a new
 * peer on the socket file is served (1) or not (0: take over); -EMFILE or
 * -ENFILE: no descriptor for the probe (out of descriptors: reported, and
 * asked again at the next check).  Before kvd_guard_start. */
void kvd_guard_probe_only(struct kvd_guard *g, int (*probe)(void *arg, const char *path), void *arg, double every);
/* Why a guard cannot mend its socket now (struct kvd_guard's waits) */
#define KVD_GUARD_WAIT_STOPPED 1 /* the listener stopped; no descriptor headroom to replace it */
#define KVD_GUARD_WAIT_NO_FDS  2 /* out of descriptors (EMFILE, ENFILE): cannot check at all */

/* Whether the guard may take over once more: fds_open descriptors are
 * open in the process (negative: -errno, unknown; -EMFILE or -ENFILE: none
 * left to count them with), fd_limit is RLIMIT_NOFILE's soft limit (0:
 * none), tries take-overs were tried before.  1: yes, while the open
 * descriptors stay under 3/4 of the limit and tries under
 * KVD_GUARD_CEILING; 0: not now, the descriptors are short ("descriptors
 * n of limit m ..."), which sessions that leave can change; -1: never
 * again, KVD_GUARD_CEILING take-overs were tried.  why says why on 0 and
 * -1, untouched on 1.  Pure; any thread. */
int kvd_guard_headroom(long fds_open, unsigned long fd_limit, unsigned tries, char *why, size_t whylen);
/* The name the take-over numbered n binds its listener to before it is
 * renamed over the socket file at path: <path>.<n>, or where that would
 * not fit sun_path, <dir>/.kvg<c><n>, else <dir>/.<c><n> (c: the file
 * name's first character).  0 with the name in buf, or -ENAMETOOLONG when
 * none fits sun_path or len (buf then holds the last one tried, for the
 * message).  Pure. */
int kvd_guard_name(const char *path, unsigned n, char *buf, size_t len);
/* What g has done, for the metrics: take-overs that succeeded
 * (*ret_taken), whether it gave up (*ret_gave_up = 1: it takes over no
 * more, and a listener that stops keeps new clients out until kvpoold is
 * restarted), and whether new clients get no answer now that it cannot
 * mend (*ret_unmended = 1: the listener stopped and the descriptors are too
 * short to replace it, or it gave up; or the process is out of
 * descriptors; 0 once a new listener took over, or descriptors are back,
 * or no stop is known).  0, or -ENOENT for a guard that watches nothing
 * (no ipc:// path), ret_* untouched then.  Any thread; lock-free. */
int kvd_guard_stats(const struct kvd_guard *g, uint64_t *ret_taken, int *ret_gave_up, int *ret_unmended);
/* One of this process's sockets. */
struct kvd_own_sock {
        unsigned long ino;
        int           fd;
};

/* This process's sockets (from /proc/self/fd), sorted by inode: *ret
 * (malloc'ed; free it) and their count, or -errno (*ret untouched).  The
 * listener guard's scan and the reaper's (reaper.c). */
long kvd_own_sockets(struct kvd_own_sock **ret);

/* Connects to the SP socket file at path as protocol proto (e.g. 0x30,
 * REQ) and finishes the handshake with a peer of protocol peer_proto,
 * each step within timeout_ms milliseconds: the connected descriptor (the
 * caller closes it), -ECONNREFUSED when it cannot connect, -EPROTO when
 * the handshake fails or does not come, -ENAMETOOLONG for a path beyond
 * sun_path, or another -errno when no socket could be made (the fd
 * limit).  The guards' probes (probe_answers, events.c events_probe). */
int kvd_guard_dial(const char *path, uint8_t proto, uint8_t peer_proto, int timeout_ms);
/* Starts the thread that checks every g->every seconds (nothing
 * for a guard without a path); recv_max: a new listener's
 * NNG_OPT_RECVMAXSZ.  0, or -errno (no guard then; the daemon serves on). */
int kvd_guard_start(struct kvd_guard *g, size_t recv_max);
/* Stops and joins the thread; nothing if it is not running.  Before the
 * socket closes and before kvd_guard_fini. */
void kvd_guard_stop(struct kvd_guard *g);
/* The serving loop is alive at now (seconds, CLOCK_MONOTONIC): a loop
 * that has not beaten for two periods holds up nng's reads, and the checks
 * then start their count again.  Any thread; lock-free. */
void kvd_guard_beat(struct kvd_guard *g, double now);
/* Whether a check is due at now (seconds, CLOCK_MONOTONIC). */
int kvd_guard_due(const struct kvd_guard *g, double now);
/* A check at now (the thread's; tests may call it): when bytes have waited unread by nng in a connection the
 * watched listener accepted, not shrinking, for g->stuck seconds,
 * and a probe client gets no answer on the socket file, starts a new
 * listener (recv_max: its NNG_OPT_RECVMAXSZ) in its place, while
 * kvd_guard_headroom allows.  When the descriptors are short it says so
 * once and takes over at the first check that finds room (no scan, no
 * probe meanwhile: the stopped listener stays stopped); when the process
 * is out of descriptors (the scan or the probe gets EMFILE) it says so
 * once and checks again each time; past KVD_GUARD_CEILING, or when a
 * take-over fails, it gives up for good and says so.
 * Logs what it did; never fails the caller. */
void kvd_guard_tick(struct kvd_guard *g, double now, size_t recv_max);

#endif
