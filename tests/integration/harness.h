/* harness.h - helpers of the multi-process integration tests: start and stop
 * a real kvpoold on a private socket, read its status, run programs. */
#ifndef KVT_HARNESS_H
#define KVT_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include <cjson/cJSON.h>

#include "kvclient.h"

struct kvt_daemon {
        pid_t pid;
        char  dir[96];    /* private temp directory: sockets and the daemon's log */
        char  url[160];   /* ipc://dir/kvpool.sock */
        char  events[160];
        char  log[160];
};

/* Host pool spec for --pool with the given name and dtype (small: 2 layers,
 * 2 kv heads, head_dim 64, page 16, capacity bytes). Returns a static buffer
 * per slot (0..7). */
const char *kvt_pool_spec(int slot, const char *name, const char *dtype, const char *capacity);

/* Starts kvpoold ($KVPOOLD) with the --pool specs (NULL-terminated) on a new
 * private socket and waits until it answers.  0 or a negative errno; on
 * failure the daemon's log is printed to stderr. */
int kvt_daemon_start(struct kvt_daemon *d, const char *const *pools);
/* The same with raw kvpoold arguments (NULL-terminated) instead of --pool
 * specs, e.g. { "--config", path, NULL }. */
int kvt_daemon_start_args(struct kvt_daemon *d, const char *const *args);
/* The same, on d's existing socket (a restart). */
int kvt_daemon_restart(struct kvt_daemon *d, const char *const *pools);
/* SIGTERM, wait (5 s, then SIGKILL); returns the exit status or -1. */
int kvt_daemon_stop(struct kvt_daemon *d);
/* Stops the daemon if running and removes the temp directory. */
void kvt_daemon_cleanup(struct kvt_daemon *d);

/* STATUS document of the daemon at url (NULL on failure). cJSON_Delete it. */
cJSON *kvt_status(const char *url);
/* A numeric field of pool `pool` in the status; NAN if missing. */
double kvt_pool_num(const char *url, const char *pool, const char *key);
/* Polls until pool's pages_free == pages_total or ms pass; 1 if they did. */
int kvt_wait_all_free(const char *url, const char *pool, int ms);

#include "run.h" /* kvt_run */

/* A child process with a pipe to its stdin and one from its stdout. */
struct kvt_proc {
        pid_t pid;
        int   in;   /* write end: the child's stdin */
        FILE *out;  /* read end: the child's stdout */
};
/* Starts argv[0] (an absolute path).  0 or a negative errno. */
int kvt_spawn(char *const argv[], struct kvt_proc *ret);
/* Reads one line of the child's output into buf; 0, or -1 at EOF. */
int kvt_proc_line(struct kvt_proc *p, char *buf, size_t len);
/* Writes a line to the child's stdin. */
int kvt_proc_say(struct kvt_proc *p, const char *line);
/* Closes both pipes and waits; returns the exit status, 128+signal, or -1. */
int kvt_proc_wait(struct kvt_proc *p);

/* Starts `kvt-worker hold URL POOL n w` ($KVT_WORKER): it allocates n pages
 * of pool, writes pattern w into them and holds them; their ids go to
 * pages[n].  0, or a negative errno with the reason on stderr (the child is
 * then reaped). */
int kvt_holder_start(const char *url, const char *pool, uint32_t n, uint32_t w, int32_t *pages,
                     struct kvt_proc *ret);
/* Tells a holder to free its pages and waits for it: 0 if it said FREED and
 * exited 0, else -1 with the reason on stderr. */
int kvt_holder_release(struct kvt_proc *pr);

/* $name or a test failure message to stderr and NULL. */
const char *kvt_env_path(const char *name);

double kvt_now_ms(void);

#endif
