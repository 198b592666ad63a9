/* server.c - kvpoold's serving loop (see server.h).
 *
 * One REP socket, one serving thread.  The thread receives a request, takes
 * the server lock, decodes it, runs it against the session of the message's
 * pipe and the pool, writes the reply into the same nng message (no other
 * allocation per request), releases the lock and hands the reply to nng
 * without waiting for it to go out (replies.c).  Pipe events (a
 * client connecting or going away) run on nng threads, the metrics HTTP
 * handler on the metrics endpoint's thread (http_serve.c); both take the
 * same lock.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include "server_int.h"
#include "config.h"
#include "events.h"
#include "http_serve.h" /* the endpoint's default limits */
#include "metrics.h"
#include "notify.h"
#include "log.h"
#include "replies.h"
#include "status.h"

#define LOOP_WAKE_MS 200 /* upper bound on noticing a stop request */
#define CLOSE_WAIT_MS 2000 /* default of $KVPOOLD_CLOSE_WAIT_MS: see close_bounded */
/* How long a reply may wait behind its connection's unread replies before
 * the daemon gives up on the connection and closes it.  The loop does not
 * wait for it (replies.c), so it can be generous: libkvclient has several
 * replies outstanding after its own timeouts (a timed-out ALLOC or LOOKUP
 * keeps waiting on its context), and a reply larger than the socket buffer
 * goes out only as the peer reads, so a worker that pauses must not lose
 * its session for it (it did, paused 40 ms, when this was 20 ms and the
 * loop waited). */
#define SEND_WAIT_MS 1000
/* The largest message nng may receive: a kvpool message of KV_MAX_FRAME
 * bytes plus the 4-byte request id the REQ protocol puts in front of it,
 * which nng counts in NNG_OPT_RECVMAXSZ (docs/protocol.md §1). */
#define RECV_MAX ((size_t)KV_MAX_FRAME + 4)

/* nng error -> negative errno, in one place. */
static int nng_errno(int rv)
{
        switch (rv) {
        case 0: return 0;
        case NNG_ENOMEM: return -ENOMEM;
        case NNG_EINVAL: return -EINVAL;
        case NNG_EADDRINUSE: return -EADDRINUSE;
        case NNG_EADDRINVAL: return -EINVAL;
        case NNG_EPERM: return -EACCES;
        case NNG_ENOENT: return -ENOENT;
        case NNG_ENOTSUP: return -ENOTSUP;
        case NNG_ECLOSED: return -EBADF;
        case NNG_ETIMEDOUT: return -ETIMEDOUT;
        default: return -EIO;
        }
}

/* ---- accessors ------------------------------------------------------------ */

uint32_t kvd_server_pool_count(const struct kvd_server *s) { return s->num_pools; }
const struct kvd_pool *kvd_server_pool(const struct kvd_server *s, uint32_t i)
{
        return i < s->num_pools ? s->pools[i] : NULL;
}
uint32_t kvd_server_client_count(const struct kvd_server *s) { return kvd_sessions_count(s->sessions); }
const struct kvd_sessions *kvd_server_sessions(const struct kvd_server *s) { return s->sessions; }
const char *kvd_server_socket_url(const struct kvd_server *s) { return s->socket_url; }
const char *kvd_server_events_url(const struct kvd_server *s) { return s->events_url; }
uint64_t kvd_server_events_dropped(const struct kvd_server *s) { return kvd_events_dropped(s->events); }
int kvd_server_listener_guard(const struct kvd_server *s, int events, uint64_t *ret_taken, int *ret_gave_up,
                              int *ret_unmended)
{
        return events ? kvd_events_guard_stats(s->events, ret_taken, ret_gave_up, ret_unmended)
                      : kvd_guard_stats(&s->guard, ret_taken, ret_gave_up, ret_unmended);
}
void kvd_server_lock(struct kvd_server *s) { pthread_mutex_lock(&s->lock); }
void kvd_server_unlock(struct kvd_server *s) { pthread_mutex_unlock(&s->lock); }
int kvd_server_closing(const struct kvd_server *s) { return s->closing; }

double kvd_server_uptime(const struct kvd_server *s)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)(ts.tv_sec - s->started.tv_sec) + (double)(ts.tv_nsec - s->started.tv_nsec) * 1e-9;
}

void kvd_server_status_line(const struct kvd_server *s, char *buf, size_t len)
{
        uint64_t used = 0, total = 0;

        for (uint32_t i = 0; i < s->num_pools; i++) {
                struct kvd_pages_stats st;

                kvd_pages_get_stats(s->pools[i]->pages, &st);
                total += st.total;
                used += st.total - st.free - st.cached_idle;
        }
        snprintf(buf, len, "%u pool%s, %llu/%llu pages used, %u client%s", s->num_pools,
                 s->num_pools == 1 ? "" : "s", (unsigned long long)used, (unsigned long long)total,
                 kvd_sessions_count(s->sessions), kvd_sessions_count(s->sessions) == 1 ? "" : "s");
}

/* ---- pressure --------------------------------------------------------------- */

/* The free fraction counts what an alloc can get: free pages and idle cached
 * pages (evictable).  Entering pressure below the low threshold and leaving
 * it above the high one gives hysteresis, so a pool hovering at a threshold
 * does not flood the event stream. */
void kvd_server_check_pressure(struct kvd_server *s, struct kvd_pool *p)
{
        struct kvd_pages_stats st;
        double                 frac;

        kvd_pages_get_stats(p->pages, &st);
        frac = st.total ? (double)(st.free + st.cached_idle) / (double)st.total : 0.0;
        if (!p->under_pressure && frac < p->pressure_low) {
                p->under_pressure = 1;
                kvd_info("pool %s: under pressure, %.1f%% free (below %.1f%%)", p->name, frac * 100.0,
                         p->pressure_low * 100.0);
                kvd_events_pressure(s->events, p->name, frac, p->pressure_low, 1);
        } else if (p->under_pressure && frac > p->pressure_high) {
                p->under_pressure = 0;
                kvd_info("pool %s: pressure relieved, %.1f%% free (above %.1f%%)", p->name, frac * 100.0,
                         p->pressure_high * 100.0);
                kvd_events_pressure(s->events, p->name, frac, p->pressure_high, 0);
        }
}

/* ---- sessions and pipes ------------------------------------------------------ */

void kvd_server_fill_peer(struct kvd_session *ss, nng_pipe p)
{
        uint64_t v;

        /* Only ipc pipes know their peer; other transports leave -1. */
        if (nng_pipe_get_uint64(p, NNG_OPT_IPC_PEER_PID, &v) == 0) {
                ss->pid = (int64_t)v;
                ss->pid_peer = 1;
        }
        if (nng_pipe_get_uint64(p, NNG_OPT_IPC_PEER_UID, &v) == 0)
                ss->uid = (int64_t)v;
}

void kvd_server_drop_session(struct kvd_server *s, struct kvd_session *ss)
{
        uint32_t dropped = 0;

        for (uint32_t i = 0; i < s->num_pools; i++) {
                uint32_t n = kvd_pages_drop_session(s->pools[i]->pages, ss->id);

                if (n) {
                        dropped += n;
                        kvd_server_check_pressure(s, s->pools[i]);
                }
        }
        if (ss->hello || dropped)
                kvd_info("client %s (pid %lld, session %u) disconnected, %u page reference%s released",
                         ss->name[0] ? ss->name : "?", (long long)ss->pid, ss->id, dropped,
                         dropped == 1 ? "" : "s");
}

static void pipe_cb(nng_pipe p, nng_pipe_ev ev, void *arg)
{
        struct kvd_server  *s = arg;
        struct kvd_session *ss = NULL;
        uint32_t            pid = (uint32_t)nng_pipe_id(p);

        pthread_mutex_lock(&s->lock);
        if (s->closing) {
                pthread_mutex_unlock(&s->lock);
                return;
        }
        if (ev == NNG_PIPE_EV_ADD_POST) {
                int r = kvd_sessions_add(s->sessions, pid, &ss);
                if (r == 0) {
                        kvd_server_fill_peer(ss, p);
                        kvd_debug("pipe %u connected (session %u, pid %lld, uid %lld)", pid, ss->id,
                                  (long long)ss->pid, (long long)ss->uid);
                } else {
                        /* -ESTALE: nng ran this pipe's removal first (a peer that
                         * connected and left at once); nothing to report then. */
                        if (r != -ESTALE)
                                kvd_warn("pipe %u: cannot create a session (%s); closing it", pid, strerror(-r));
                        nng_pipe_close(p);
                }
        } else if (ev == NNG_PIPE_EV_REM_POST) {
                ss = kvd_sessions_remove(s->sessions, pid);
                if (ss) {
                        kvd_server_drop_session(s, ss);
                        free(ss);
                }
        }
        pthread_mutex_unlock(&s->lock);
}

/* ---- loop -------------------------------------------------------------------- */

static void periodic(struct kvd_server *s)
{
        char line[160];

        kvd_notify_watchdog();
        pthread_mutex_lock(&s->lock);
        kvd_server_status_line(s, line, sizeof(line));
        pthread_mutex_unlock(&s->lock);
        kvd_notify_status(line);
}

int kvd_server_run(struct kvd_server *s, volatile sig_atomic_t *stop)
{
        uint64_t wd_usec = kvd_notify_init();
        int      wake_ms = LOOP_WAKE_MS;
        double   last_periodic = 0.0, period;
        int      rv;

        if (wd_usec && wd_usec / 2000 < (uint64_t)wake_ms)
                wake_ms = wd_usec / 2000 ? (int)(wd_usec / 2000) : 1;
        period = wake_ms / 2000.0;
        while (!*stop) {
                struct kvd_req         q = { 0 };
                struct kvd_reply_slot *slot = NULL;
                double                 t0, t1;

                rv = kvd_replies_recv(s->replies, wake_ms, &q.msg, &slot);
                t0 = kvd_mono_s();
                if (t0 - last_periodic >= period) {
                        periodic(s);
                        last_periodic = t0;
                }
                kvd_guard_beat(&s->guard, t0);
                if (rv == -EBADF)
                        return kvd_log_ret(KVD_LOG_ERR, -EBADF, "socket closed under the serving loop");
                if (rv)
                        continue; /* nothing came, or a failed receive (logged) */
                pthread_mutex_lock(&s->lock);
                kvd_requests_dispatch(s, &q);
                t1 = kvd_mono_s();
                kvd_metrics_observe(s->metrics, q.op, q.ok ? q.code : KV_E_INTERNAL, t1 - t0);
                pthread_mutex_unlock(&s->lock);
                if (!q.ok) {
                        nng_msg_free(q.msg); /* out of memory: the peer times out */
                        kvd_replies_drop(s->replies, slot);
                        continue;
                }
                /* without waiting: a peer that does not read its replies
                 * holds a reply slot, not the loop (replies.c) */
                kvd_replies_send(s->replies, slot, q.msg);
        }
        return 0;
}

/* ---- start and stop ------------------------------------------------------------ */

/* $KVPOOLD_CLOSE_WAIT_MS: how long a stopping daemon waits for its sockets
 * to close (0 to 60000 ms; 0: it does not wait, as if the close were stuck).
 * Anything else is reported and the default used. */
static int close_wait_ms(void)
{
        return (int)kvd_env_number("KVPOOLD_CLOSE_WAIT_MS", 0, 60000, CLOSE_WAIT_MS, "milliseconds");
}

/* mkdir -p of the folder holding path. */
static int make_parent(const char *path, char *err, size_t errlen)
{
        char   dir[512];
        char  *slash;

        if (strlen(path) >= sizeof(dir)) {
                snprintf(err, errlen, "socket path %s is too long", path);
                return -ENAMETOOLONG;
        }
        strcpy(dir, path);
        if (!(slash = strrchr(dir, '/')) || slash == dir)
                return 0;
        *slash = 0;
        for (char *c = dir + 1; ; c++) {
                if (*c == '/' || *c == 0) {
                        char keep = *c;

                        *c = 0;
                        if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
                                int e = errno;
                                snprintf(err, errlen, "cannot create the socket folder %s: %s", dir, strerror(e));
                                return -e;
                        }
                        *c = keep;
                        if (!keep)
                                break;
                }
        }
        return 0;
}

static int start_listener(struct kvd_server *s, const struct kvd_server_cfg *cfg, char *err, size_t errlen)
{
        int rv, r;

        if (s->socket_path && (r = make_parent(s->socket_path, err, errlen)))
                return r;
        if ((rv = nng_listener_create(&s->listener, s->sock, s->socket_url))) {
                snprintf(err, errlen, "socket %s: %s", s->socket_url, nng_strerror(rv));
                return nng_errno(rv);
        }
        /* nng's default frame limit is unlimited: a peer announcing 1 GiB
         * would make it allocate 1 GiB.  Refuse such frames up front. */
        if ((rv = nng_listener_set_size(s->listener, NNG_OPT_RECVMAXSZ, RECV_MAX))) {
                snprintf(err, errlen, "socket %s: cannot limit the frame size: %s", s->socket_url, nng_strerror(rv));
                return nng_errno(rv);
        }
        if (s->socket_path &&
            (rv = nng_listener_set_int(s->listener, NNG_OPT_IPC_PERMISSIONS, cfg->socket_mode ? cfg->socket_mode
                                                                                                : 0600))) {
                snprintf(err, errlen, "socket %s: cannot set permissions: %s", s->socket_url, nng_strerror(rv));
                return nng_errno(rv);
        }
        if ((rv = nng_listener_start(s->listener, 0))) {
                snprintf(err, errlen, "cannot listen on %s: %s%s", s->socket_url, nng_strerror(rv),
                         rv == NNG_EADDRINUSE ? " (another kvpoold is running there?)" : "");
                return nng_errno(rv);
        }
        s->listening = 1;
        if (s->socket_path && cfg->has_group && chown(s->socket_path, (uid_t)-1, cfg->group) != 0) {
                int e = errno;
                snprintf(err, errlen, "cannot give socket %s to group %u: %s", s->socket_path,
                         (unsigned)cfg->group, strerror(e));
                return -e;
        }
        kvd_guard_init(&s->guard, s->sock, s->listener, s->socket_path, cfg->socket_mode ? cfg->socket_mode : 0600,
                       cfg->has_group, cfg->has_group ? cfg->group : (gid_t)-1);
        /* $KVPOOLD_GUARD_EVERY_MS (250..60000, default 3000),
         * $KVPOOLD_GUARD_STUCK_MS (500..600000, default 12000) and
         * $KVPOOLD_GUARD_PROBE_MS (250..60000, default 3000): the guard's
         * timings, for tests that make it take over many times
         * (docs/operations.md §9).  250 ms at least: a check counts the
         * serving loop held up when its beat (every 200 ms at most) is two
         * periods old. */
        kvd_guard_timing(&s->guard,
                         (unsigned)kvd_env_number("KVPOOLD_GUARD_EVERY_MS", 250, 60000, KVD_GUARD_EVERY_MS,
                                                  "milliseconds"),
                         (unsigned)kvd_env_number("KVPOOLD_GUARD_STUCK_MS", 500, 600000, KVD_GUARD_STUCK_MS,
                                                  "milliseconds"),
                         (unsigned)kvd_env_number("KVPOOLD_GUARD_PROBE_MS", 250, 60000, KVD_GUARD_PROBE_MS,
                                                  "milliseconds"));
        if ((r = kvd_guard_start(&s->guard, RECV_MAX)))
                kvd_warn("listener guard: cannot start its thread (%s): not watching %s for nng 1.5.2's stopped "
                         "listener (docs/operations.md §9)", strerror(-r), s->socket_path);
        if ((r = kvd_reaper_start(s)))
                kvd_warn("cannot start the thread that ends the sessions of closed connections nng does not "
                         "report (%s; docs/operations.md §9)", strerror(-r));
        return 0;
}

int kvd_server_new(const struct kvd_server_cfg *cfg, struct kvd_pool **pools, uint32_t num_pools,
                   struct kvd_server **ret, char *err, size_t errlen)
{
        struct kvd_server *s;
        int                rv, r = -ENOMEM;

        if (!cfg || !cfg->socket_url || num_pools > 64 || (num_pools && !pools)) {
                snprintf(err, errlen, "invalid server configuration");
                return -EINVAL;
        }
        if (!(s = calloc(1, sizeof(*s))))
                goto oom;
        pthread_mutex_init(&s->lock, NULL);
        clock_gettime(CLOCK_MONOTONIC, &s->started);
        s->close_wait_ms = close_wait_ms();
        (void)kvd_status_clients_max(); /* its environment setting, checked now */
        s->socket_url = strdup(cfg->socket_url);
        s->events_url = cfg->events_url ? strdup(cfg->events_url) : NULL;
        s->pools = calloc(num_pools ? num_pools : 1, sizeof(*s->pools));
        s->ids = malloc(KV_MAX_PAGES_REQ * sizeof(*s->ids));
        s->keys = malloc(KV_MAX_KEYS_REQ * sizeof(*s->keys));
        s->results = malloc(KV_MAX_KEYS_REQ);
        if (!s->socket_url || (cfg->events_url && !s->events_url) || !s->pools || !s->ids || !s->keys ||
            !s->results || kvd_sessions_new(&s->sessions) || kvd_metrics_new(&s->metrics))
                goto oom;
        if (strncmp(cfg->socket_url, "ipc://", 6) == 0 && !(s->socket_path = strdup(cfg->socket_url + 6)))
                goto oom;
        /* Pools are attached only on success; until then they stay the caller's. */
        s->num_pools = 0;

        if ((rv = nng_rep0_open(&s->sock))) {
                snprintf(err, errlen, "cannot open the REP socket: %s", nng_strerror(rv));
                r = nng_errno(rv);
                goto fail;
        }
        s->sock_open = 1;
        nng_socket_set_size(s->sock, NNG_OPT_RECVMAXSZ, RECV_MAX);
        if ((r = kvd_replies_new(s->sock, SEND_WAIT_MS, &s->replies))) {
                snprintf(err, errlen, "cannot set up the reply path: %s", strerror(-r));
                goto fail;
        }
        if ((rv = nng_pipe_notify(s->sock, NNG_PIPE_EV_ADD_POST, pipe_cb, s)) ||
            (rv = nng_pipe_notify(s->sock, NNG_PIPE_EV_REM_POST, pipe_cb, s))) {
                snprintf(err, errlen, "cannot watch connections: %s", nng_strerror(rv));
                r = nng_errno(rv);
                goto fail;
        }
        /* The pipe callbacks read the pool list: publish it before listening. */
        pthread_mutex_lock(&s->lock);
        memcpy(s->pools, pools, num_pools * sizeof(*pools));
        s->num_pools = num_pools;
        pthread_mutex_unlock(&s->lock);
        if ((r = start_listener(s, cfg, err, errlen)))
                goto fail;
        /* The event socket gets the request socket's mode and group before it
         * listens, so that the members of the group who may send requests may
         * also subscribe, and nobody else ever could. */
        if ((r = kvd_events_open_mode(s->events_url, cfg->socket_mode ? cfg->socket_mode : 0600,
                                      cfg->has_group ? cfg->group : (gid_t)-1, &s->events, err, errlen)))
                goto fail;
        for (uint32_t i = 0; i < num_pools; i++)
                pools[i]->events = s->events;
        if (cfg->metrics_addr && *cfg->metrics_addr) {
                /* $KVPOOLD_METRICS_CONNS (1..1024, default 32) and
                 * $KVPOOLD_METRICS_DEADLINE_MS (10..60000, default 5000):
                 * how many connections the endpoint keeps, and for how long
                 * at most (docs/operations.md §7) */
                kvd_metrics_http_limits(s->metrics,
                                        (unsigned)kvd_env_number("KVPOOLD_METRICS_CONNS", 1, 1024,
                                                                 KVD_HTTP_MAX_CONNS, "connections"),
                                        (unsigned)kvd_env_number("KVPOOLD_METRICS_DEADLINE_MS", 10, 60000,
                                                                 KVD_HTTP_DEADLINE_MS, "milliseconds"));
                if ((r = kvd_metrics_http_start(s->metrics, s, cfg->metrics_addr, err, errlen)))
                        goto fail;
                s->metrics_http = 1;
        }
        kvd_info("listening on %s (mode %04o%s), events %s, metrics %s", s->socket_url,
                 (unsigned)(cfg->socket_mode ? cfg->socket_mode : 0600), cfg->has_group ? " with group" : "",
                 s->events_url ? s->events_url : "off",
                 cfg->metrics_addr && *cfg->metrics_addr ? cfg->metrics_addr : "off");
        *ret = s;
        return 0;
oom:
        snprintf(err, errlen, "out of memory starting the server");
        r = -ENOMEM;
fail:
        if (s) {
                /* Give the pools back untouched: detach them before freeing. */
                pthread_mutex_lock(&s->lock);
                s->closing = 1;
                pthread_mutex_unlock(&s->lock);
                for (uint32_t i = 0; i < s->num_pools; i++)
                        s->pools[i]->events = NULL;
                s->num_pools = 0;
                kvd_server_free(s);
        }
        return r;
}

static void *close_thread(void *arg)
{
        struct kvd_server *s = arg;

        if (s->metrics_http)
                kvd_metrics_http_stop(s->metrics);
        if (s->sock_open) {
                if (s->listening)
                        nng_listener_close(s->listener);
                nng_close(s->sock);
        }
        return NULL;
}

/* Stops the metrics HTTP server, closes the listener and the REP socket (and
 * with them every pipe: when that finishes, their REM_POST callbacks have
 * seen the pools and dropped the sessions' pages), waiting at most
 * s->close_wait_ms (0: not at all).  Returns 0, or -ETIMEDOUT when that has
 * not finished by then: the thread doing it is left behind (the daemon is
 * on its way out).  Why: Debian 12's nng 1.5.2 can block forever in
 * nng_close when a message is arriving on a pipe as it closes (the ipc
 * transport resubmits its read on an aio the close has just stopped, the
 * read is dropped without completing, and the pipe reaper, one thread for
 * the whole process, waits for it; every later close then waits behind it).
 * Under client traffic a stop hung there now and then (up to 2 of the 24
 * of tests/daemon/test_lifecycle.c sigterm_under_client_traffic, which
 * counts them), until systemd's SIGKILL, 90 s later.  If no thread can be created the close runs here,
 * unbounded. */
static int close_bounded(struct kvd_server *s)
{
        pthread_t       t;
        struct timespec until;

        if (!s->sock_open && !s->metrics_http)
                return 0; /* a start that failed early */
        if (pthread_create(&t, NULL, close_thread, s) != 0) {
                close_thread(s);
                return 0;
        }
        if (s->close_wait_ms == 0) {
                pthread_detach(t);
                return -ETIMEDOUT;
        }
        /* CLOCK_MONOTONIC: a clock step during shutdown must not stretch it */
        kv_deadline_ms(&until, (uint32_t)s->close_wait_ms);
        if (pthread_clockjoin_np(t, NULL, CLOCK_MONOTONIC, &until) == 0)
                return 0;
        pthread_detach(t);
        return -ETIMEDOUT;
}

void kvd_server_free(struct kvd_server *s)
{
        int stuck = 0;

        if (!s)
                return;
        kvd_guard_stop(&s->guard); /* before the socket its new listeners would go on closes */
        kvd_reaper_stop(s);        /* before the sessions and pools it ends sessions in go */
        if (close_bounded(s) < 0) {
                stuck = 1;
                if (s->close_wait_ms == 0)
                        kvd_info("not waiting for the client socket to close (KVPOOLD_CLOSE_WAIT_MS=0)");
                else
                        kvd_warn("closing the client socket did not finish within %d ms (a known nng 1.5.2 "
                                 "race with a message arriving); shutting down without it", s->close_wait_ms);
        }
        pthread_mutex_lock(&s->lock);
        s->closing = 1;
        pthread_mutex_unlock(&s->lock);
        for (uint32_t i = 0; i < s->num_pools; i++)
                s->pools[i]->events = NULL;
        /* after a stuck close nng's reaper is stuck too and any further
         * nng_close would wait on it: the event socket stays open (its file
         * is removed below) */
        if (stuck)
                kvd_events_shutdown(s->events);
        else
                kvd_events_close(s->events);
        for (uint32_t i = 0; i < s->num_pools; i++)
                kvd_pool_free(s->pools[i]);
        /* nng removes the ipc file when the listener closes; make sure, but
         * only for a socket this daemon actually listened on. */
        if (s->listening && s->socket_path && unlink(s->socket_path) != 0 && errno != ENOENT)
                kvd_warn("cannot remove socket %s: %s", s->socket_path, strerror(errno));
        if (stuck && s->events && s->events_url && strncmp(s->events_url, "ipc://", 6) == 0 &&
            unlink(s->events_url + 6) != 0 && errno != ENOENT)
                kvd_warn("cannot remove socket %s: %s", s->events_url + 6, strerror(errno));
        kvd_sessions_free(s->sessions);
        kvd_guard_fini(&s->guard);
        /* after a stuck close the metrics handler may still run: it finds
         * closing set, but its struct has to stay */
        if (!stuck) {
                kvd_metrics_free(s->metrics);
                kvd_replies_free(s->replies); /* the socket is closed: no send is pending */
        }
        free(s->ids);
        free(s->keys);
        free(s->results);
        free(s->pools);
        free(s->socket_url);
        free(s->socket_path);
        free(s->events_url);
        /* a stuck close still owns the socket, and nng may yet run pipe_cb
         * or the metrics handler, which take the lock and see closing: both
         * outlive this call */
        if (stuck)
                return;
        pthread_mutex_destroy(&s->lock);
        free(s);
}
