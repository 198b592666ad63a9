/* listen_guard.h - mends kvpoold's ipc:// listener when nng 1.5.2 stops it
 * (listen_guard.c has the why and how).  Serving thread only. */
#ifndef KVD_LISTEN_GUARD_H
#define KVD_LISTEN_GUARD_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <nng/nng.h>

#define KVD_GUARD_MAX 8 /* take-overs in a process at most */

struct kvd_guard {
        nng_socket    sock;
        const char   *path;       /* the socket file clients dial; NULL: not ipc://, no guard */
        /* the names the listeners were bound to: [0] path, [k] <path>.<k>
         * (sun_path holds 108 bytes) */
        char          names[KVD_GUARD_MAX + 1][128];
        int           mode;       /* the socket file's mode and group, for a new listener */
        int           has_group;
        gid_t         group;
        int           runs;       /* checks in a row that found connections the socket never got */
        long          stranded;   /* such connections left on the listeners given up */
        int           said_blind;
        unsigned      swaps;
        double        last;       /* time of the last check (s) */
};

/* Watches the listener of sock bound to path (NULL: nothing to watch); mode
 * and group are the socket file's.  Does not copy path: it must outlive g. */
void kvd_guard_init(struct kvd_guard *g, nng_socket sock, const char *path, int mode, int has_group, gid_t group);
/* Once a second at most (now in seconds, any fixed origin; sessions: the
 * connections the socket has, one session each): checks the listener and,
 * after two checks in a row that found more connections accepted than the
 * socket has, starts a new one (recv_max: its NNG_OPT_RECVMAXSZ) in its
 * place.  Logs what it did; never fails the caller. */
void kvd_guard_tick(struct kvd_guard *g, double now, uint32_t sessions, size_t recv_max);

#endif
