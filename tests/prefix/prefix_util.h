/* prefix_util.h - helpers for the prefix-cache integration tests and the
 * lookup benchmark: start a kvpoold of their own on temporary sockets, spawn
 * scripted worker processes (prefix_worker), read STATUS counts. */
#ifndef KVT_PREFIX_UTIL_H
#define KVT_PREFIX_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "kvclient.h"

struct kvt_daemon {
        pid_t pid;
        char  sock[128];   /* ipc://... request socket */
        char  events[128]; /* ipc://... event socket */
};

/* Starts $KVPOOLD (or `exe` when not NULL) with --socket/--events on fresh
 * temporary paths, metrics off, and one --pool per spec ("name=p,dtype=..."),
 * then waits until it answers.  Returns 0 or a negative errno with a
 * message on stderr. */
int  kvt_daemon_start(struct kvt_daemon *d, const char *exe, const char *const *pools, int npools);
/* SIGTERM, wait; returns the exit status (or 128+signal). */
int  kvt_daemon_stop(struct kvt_daemon *d);

/* Connects a client of this process to the daemon. */
int  kvt_connect(const struct kvt_daemon *d, const char *name, const kvc_key *salt, kvc_client **ret);

struct kvt_worker {
        pid_t pid;
        FILE *in, *out;
        char *line;   /* last reply, owned */
        size_t cap;
};

/* Spawns $KVT_WORKER (fork + exec, so this process may already use nng). */
int   kvt_worker_start(struct kvt_worker *w);
/* Sends one command (printf format) and returns the reply line without its
 * newline (valid until the next command), or NULL if the worker died. */
char *kvt_cmd(struct kvt_worker *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Closes its input (it disconnects and exits) and reaps it. */
int   kvt_worker_stop(struct kvt_worker *w);
/* kill -9 and reap. */
void  kvt_worker_kill(struct kvt_worker *w);

/* Pool counts from STATUS JSON. */
struct kvt_pool_stats {
        int64_t total, free, held, cached, cached_idle, lookups, hits, evictions;
};
/* Fills *ret for pool `name`; -ENOENT if absent. */
int kvt_pool_stats(kvc_client *c, const char *name, struct kvt_pool_stats *ret);
/* pages_held of the client with this pid (-1 if it is not connected). */
int64_t kvt_client_held(kvc_client *c, pid_t pid);
/* Waits (up to 10 s) until no client with this pid is connected. */
int kvt_wait_gone(kvc_client *c, pid_t pid);

/* Key k as 32 hex digits (buf[33]). */
void kvt_hex(const kvc_key *k, char *buf);
/* Parses a worker's reply "ok a b c" (decimal) into out[0..max); returns the
 * count, or -1 if the line is NULL or does not start with "ok". */
int kvt_parse_ok(const char *line, int64_t *out, int max);

#endif
