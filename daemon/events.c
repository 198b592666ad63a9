/* events.c - the event stream: an nng PUB0 socket announcing pages stored,
 * pages evicted, prefix-cache resets, pool pressure and shutdown.
 *
 * Wire format of one event (one nng message, little-endian, no padding):
 *
 *   offset size field
 *   0      4    magic      "KVE1" (bytes 4B 56 45 31; 0x3145564B as a LE u32)
 *   4      2    version    1
 *   6      2    type       1 STORED, 2 EVICTED, 3 PRESSURE, 4 SHUTDOWN, 5 RESET
 *   8      8    seq        1 for the first event of a daemon run, +1 per event
 *   16     8    time_ns    CLOCK_REALTIME when announced (queued), ns since the Unix epoch
 *   24     32   pool       pool name, NUL-padded (empty for SHUTDOWN)
 *   56     ...  body, by type:
 *     STORED, EVICTED (76 bytes in all):
 *     56   4    page       page id
 *     60   16   key        the 16-byte content key the client published
 *     PRESSURE (76 bytes in all):
 *     56   8    free_fraction  IEEE-754 binary64, the pool's free fraction
 *     64   8    threshold      the threshold that was crossed
 *     72   4    entering       1: fell below the threshold, 0: rose back above
 *     RESET (60 bytes in all):
 *     56   4    keys       the keys the RESET request dropped in this pool (all, or
 *                           its tenant's only when a tenant's session sent it)
 *     SHUTDOWN (56 bytes in all): no body.
 *
 * A reader checks magic and version, ignores bytes after the fields it knows
 * (later versions may append) and may skip types it does not know.  Up to
 * SUB_QUEUE events wait per subscriber; beyond that nng's PUB drops messages
 * for a subscriber that does not keep up, and a gap in seq tells the
 * subscriber how many it missed.  Subscribers must subscribe to the empty
 * topic ("" = everything): the type is not a topic prefix.
 *
 * Threads.  nng's PUB copies a message to every subscriber's queue inside
 * nng_send, so a send costs in proportion to the subscribers.  The thread
 * that announces an event (the serving thread) therefore only stamps it
 * (seq and time, under e->lock, so that seq order is queue order) and
 * copies its bytes into a ring of KVD_EV_QUEUE fixed-size slots allocated at
 * open; one sender thread takes them from the ring and calls nng_send, in
 * ring order, so subscribers get events in seq order.  When the ring is
 * full (a burst larger than the ring: one alloc can evict 65536 pages) the
 * announcer waits for the sender to make room, as a send used to take that
 * long, but for at most FULL_WAIT_MS an overflow; past that (the sender
 * cannot keep up with the subscribers) an event that finds the ring full is
 * dropped at once, without waiting, until the ring is half empty again.  A dropped event's seq is still used up (subscribers
 * see the gap, as for nng's own drops), kvd_events_dropped counts it, and the
 * sender logs the drops, at most once every DROP_LOG_EVERY s.
 * kvd_events_shutdown queues SHUTDOWN and waits up to SHUTDOWN_WAIT_MS for
 * the sender to hand everything to nng; kvd_events_close then joins the
 * sender before it closes the socket.
 *
 * The decoder is in events_wire.c, which kvpoolctl links alone.  The
 * socket file has a listener guard (listen_guard.c) with a probe of its
 * own (events_probe).
 */
#include "events.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/pubsub0/pub.h>

#include "kv_proto.h" /* kv_deadline_ms */
#include "listen_guard.h"
#include "log.h"
#include "ticker.h" /* kvd_mono_s */

#define POOL_LEN 32
#define SUB_QUEUE 8192 /* per subscriber, in nng's PUB: nng's maximum */
#define SLOT_MAX KVD_EV_PAGE_SIZE /* the longest event */
#define SEND_BATCH 256          /* events the sender takes from the ring at a time */
#define SHUTDOWN_WAIT_MS 1000   /* for the sender to send what is queued, SHUTDOWN last */
#define DROP_LOG_EVERY 10.0     /* seconds between the sender's reports of drops */
#define FULL_WAIT_MS 1000       /* an announcer's wait for room in a full ring, per overflow */
#define GUARD_PROBE_EVERY 10.0 /* seconds between the listener guard's probes */
#define GUARD_RECV_MAX 65536   /* a new listener's NNG_OPT_RECVMAXSZ: subscribers send nothing */

_Static_assert(KVD_EV_PRESSURE_SIZE <= SLOT_MAX && KVD_EV_RESET_SIZE <= SLOT_MAX &&
               KVD_EV_HDR_SIZE <= SLOT_MAX, "an event does not fit a slot");
_Static_assert((KVD_EV_QUEUE & (KVD_EV_QUEUE - 1)) == 0, "KVD_EV_QUEUE is not a power of two");

struct slot {
        uint8_t len;
        uint8_t buf[SLOT_MAX];
};

struct kvd_events {
        nng_socket      sock;
        int             open;        /* 0: events are off (NULL url) */
        pthread_mutex_t lock;        /* seq, the ring's indices, the flags below */
        uint64_t        seq;
        atomic_int      subscribers; /* pipes attached, from nng's pipe callback */
        /* the queue: slots [head, tail) (indices mod KVD_EV_QUEUE) wait for
         * the sender or are being sent by it; only the sender advances
         * head, and only once it is done with those slots, so an announcer
         * never writes a slot that is being sent */
        struct slot     *ring;
        uint64_t         head, tail;
        pthread_cond_t   wake;       /* the sender: events queued, limit raised, or stop */
        pthread_cond_t   sent;       /* head moved (shutdown and hold wait for it) */
        pthread_t        sender;
        int              sender_idle; /* waiting on wake: an announcer signals it */
        uint64_t         limit;      /* kvd_events_hold: the sender stops at this index */
        double           full_left;  /* seconds an overflow may still wait (FULL_WAIT_MS at first) */
        int              stalled;    /* it ended: no waiting until the ring is half empty */
        int              shut;       /* kvd_events_shutdown has run */
        atomic_int       stop;       /* the sender ends (after the send in progress) */
        uint64_t         dropped;    /* events dropped because the ring was full (__atomic) */
        uint64_t         drops_told; /* dropped as last logged (sender thread) */
        double           drop_log_at; /* kvd_mono_s() of that log (sender thread) */
        /* the listener guard (listen_guard.c), for an ipc:// socket file */
        struct kvd_guard guard;
        char            *path;       /* the socket file, for the guard */
        atomic_int       probing;    /* events_probe is connecting */
        atomic_int       probe_seen; /* its pipe was attached */
        atomic_uint      probe_pipe; /* its pipe's id while attached (not a subscriber); 0: none */
        int              probe_held; /* said that a probe's close was never reported (guard thread) */
};

static int nng_to_errno(int rv)
{
        switch (rv) {
        case NNG_ENOMEM:      return -ENOMEM;
        case NNG_EINVAL:      return -EINVAL;
        case NNG_EADDRINVAL:  return -EINVAL;
        case NNG_EADDRINUSE:  return -EADDRINUSE;
        case NNG_EPERM:       return -EPERM;
        case NNG_ENOTSUP:     return -ENOTSUP;
        case NNG_ENOENT:      return -ENOENT;
        case NNG_ECLOSED:     return -EBADF;
        default:              return -EIO;
        }
}

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }

static void putf64(uint8_t *p, double d)
{
        uint64_t v;
        memcpy(&v, &d, sizeof(v));
        put64(p, v);
}

static void on_pipe(nng_pipe p, nng_pipe_ev ev, void *arg)
{
        struct kvd_events *e = arg;
        unsigned           id = (unsigned)nng_pipe_id(p), none = 0, mine = id;
        uint64_t           pid;

        if (ev == NNG_PIPE_EV_ADD_POST) {
                /* the guard's probe (events_probe): this process, while it
                 * connects; not a subscriber.  One such pipe at a time, and
                 * only its removal is skipped, so that the count stays
                 * balanced even when a subscriber of this process's own
                 * comes in the probe's window */
                if (atomic_load(&e->probing) && nng_pipe_get_uint64(p, NNG_OPT_IPC_PEER_PID, &pid) == 0 &&
                    pid == (uint64_t)getpid()) {
                        atomic_store(&e->probe_seen, 1);
                        if (atomic_compare_exchange_strong(&e->probe_pipe, &none, id))
                                return;
                }
                atomic_fetch_add(&e->subscribers, 1);
        } else if (ev == NNG_PIPE_EV_REM_POST) {
                if (atomic_compare_exchange_strong(&e->probe_pipe, &mine, 0u))
                        return;
                atomic_fetch_sub(&e->subscribers, 1);
        }
}

/* ---- the queue and its sender thread ----------------------------------- */

/* Logs the drops since the last report: at once for the first ones, then
 * at most once every DROP_LOG_EVERY s (force: now, at the end).  The
 * sender's thread only, so that the announcing thread never writes to the
 * log for a drop (a slow journal would hold it up as subscribers did). */
static void tell_drops(struct kvd_events *e, int force)
{
        uint64_t d = __atomic_load_n(&e->dropped, __ATOMIC_RELAXED);
        double   now;

        if (d == e->drops_told)
                return;
        now = kvd_mono_s();
        if (!force && now < e->drop_log_at + DROP_LOG_EVERY)
                return;
        kvd_warn("events: %llu events dropped (%llu since kvpoold started): the send queue of %u events "
                 "was full, the event sender cannot keep up with the subscribers; they see a gap in seq "
                 "(docs/operations.md §7)", (unsigned long long)(d - e->drops_told), (unsigned long long)d,
                 (unsigned)KVD_EV_QUEUE);
        e->drops_told = d;
        e->drop_log_at = now;
}

/* *due: the deadline (kv_deadline_ms: CLOCK_MONOTONIC, the condition
 * variables' clock) left seconds from now, rounded up to the next
 * millisecond so that a wait never ends just before its time; now when
 * left is not positive. */
static void deadline_in(struct timespec *due, double left)
{
        kv_deadline_ms(due, left > 0 ? (uint32_t)(left * 1000.0) + 1 : 0);
}

/* The sender: takes up to SEND_BATCH events at a time from the ring and
 * sends them, in ring (= seq) order; the slots are given back (head moves)
 * after they are sent, so that nng_send reads them without a copy and
 * without the lock. */
static void *sender_main(void *arg)
{
        struct kvd_events *e = arg;

        pthread_mutex_lock(&e->lock);
        while (!atomic_load(&e->stop)) {
                if (e->head == e->tail || e->head >= e->limit) {
                        struct timespec due;

                        e->sender_idle = 1;
                        /* drops not yet told: wake when the report is due */
                        if (__atomic_load_n(&e->dropped, __ATOMIC_RELAXED) != e->drops_told) {
                                const double left = e->drop_log_at + DROP_LOG_EVERY - kvd_mono_s();

                                deadline_in(&due, left);
                                pthread_cond_timedwait(&e->wake, &e->lock, &due);
                        } else {
                                pthread_cond_wait(&e->wake, &e->lock);
                        }
                        e->sender_idle = 0;
                        pthread_mutex_unlock(&e->lock);
                        tell_drops(e, 0);
                        pthread_mutex_lock(&e->lock);
                        continue;
                }
                uint64_t from = e->head, to = e->tail - e->head > SEND_BATCH ? e->head + SEND_BATCH : e->tail;

                if (to > e->limit)
                        to = e->limit;
                pthread_mutex_unlock(&e->lock);
                for (uint64_t i = from; i < to && !atomic_load(&e->stop); i++) {
                        struct slot *sl = &e->ring[i & (KVD_EV_QUEUE - 1)];

                        /* PUB never blocks: a subscriber whose queue is full
                         * loses its oldest message (a gap in its seq) */
                        (void)nng_send(e->sock, sl->buf, sl->len, NNG_FLAG_NONBLOCK);
                }
                tell_drops(e, 0);
                pthread_mutex_lock(&e->lock);
                e->head = to;
                pthread_cond_broadcast(&e->sent);
        }
        pthread_mutex_unlock(&e->lock);
        tell_drops(e, 1);
        return NULL;
}

/* Stops the sender after the send in progress and joins it. */
static void stop_sender(struct kvd_events *e)
{
        pthread_mutex_lock(&e->lock);
        atomic_store(&e->stop, 1);
        pthread_cond_signal(&e->wake);
        pthread_mutex_unlock(&e->lock);
        pthread_join(e->sender, NULL);
}

/* The lock, the condition variables (on CLOCK_MONOTONIC, for the timed
 * waits) and, with a url, the ring.  0 or -errno; nothing is left on
 * failure. */
static int queue_init(struct kvd_events *e, int ring)
{
        pthread_condattr_t ca;
        int                r;

        if (ring && !(e->ring = calloc(KVD_EV_QUEUE, sizeof(*e->ring))))
                return -ENOMEM;
        if ((r = pthread_condattr_init(&ca)))
                goto fail;
        if ((r = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC)) || (r = pthread_cond_init(&e->wake, &ca))) {
                pthread_condattr_destroy(&ca);
                goto fail;
        }
        if ((r = pthread_cond_init(&e->sent, &ca))) {
                pthread_cond_destroy(&e->wake);
                pthread_condattr_destroy(&ca);
                goto fail;
        }
        pthread_condattr_destroy(&ca);
        if ((r = pthread_mutex_init(&e->lock, NULL))) {
                pthread_cond_destroy(&e->wake);
                pthread_cond_destroy(&e->sent);
                goto fail;
        }
        /* the first drop is told at once */
        e->drop_log_at = -DROP_LOG_EVERY;
        e->limit = UINT64_MAX;
        e->full_left = FULL_WAIT_MS / 1000.0;
        return 0;
fail:
        free(e->ring);
        e->ring = NULL;
        return -r;
}

static void queue_fini(struct kvd_events *e)
{
        pthread_cond_destroy(&e->wake);
        pthread_cond_destroy(&e->sent);
        pthread_mutex_destroy(&e->lock);
        free(e->ring);
}

/* The listener guard's probe (kvd_guard_probe_only): a subscriber that
 * connects to the socket file, finishes the SP handshake and waits up to
 * PROBE_WAIT_MS for nng to attach its pipe to the socket.  A subscriber
 * sends nothing after the handshake, so the guard's unread-bytes rule
 * cannot see a stopped events listener (nng 1.5.2, nanomsg/nng#1518):
 * subscribers that come later just never get an event.  1: attached, or
 * the probe could not be made (nothing to say then); 0: not attached;
 * -EMFILE or -ENFILE: no descriptor for the probe (the guard reports the
 * process out of descriptors). */
#define PROBE_WAIT_MS 3000
static int events_probe(void *arg, const char *path)
{
        struct kvd_events *e = arg;
        int                fd, seen;

        if (atomic_load(&e->probe_pipe) != 0) {
                /* the last probe's close was never reported: nng's pipe
                 * teardown is stuck (reaper.c), and every probe
                 * would keep a descriptor and a pipe for good */
                if (!e->probe_held)
                        kvd_warn("events: listener guard: nng did not report the close of its last probe "
                                 "(stuck pipe teardown, docs/operations.md §9): no more probes of %s", path);
                e->probe_held = 1;
                return 1;
        }
        atomic_store(&e->probe_seen, 0);
        atomic_store(&e->probing, 1);
        /* SUB (0x21) to PUB (0x20); a probe that cannot connect says
         * nothing, one whose handshake does not come asks whether the pipe
         * was attached all the same */
        fd = kvd_guard_dial(path, 0x21, 0x20, PROBE_WAIT_MS);
        seen = fd == -EPROTO ? atomic_load(&e->probe_seen) : fd == -EMFILE || fd == -ENFILE ? fd : 1;
        if (fd >= 0) {
                /* nng attaches the pipe right after the handshake */
                for (int ms = 0; !atomic_load(&e->probe_seen) && ms < PROBE_WAIT_MS; ms += 10) {
                        struct timespec ts = { 0, 10 * 1000 * 1000 };

                        nanosleep(&ts, NULL);
                }
                seen = atomic_load(&e->probe_seen);
                close(fd);
        }
        atomic_store(&e->probing, 0);
        return seen;
}

/* Listens on url; for an ipc:// url with mode != 0, the socket file gets
 * that mode (set before it is bound, so it is never more open) and, with
 * gid != (gid_t)-1, that group.  Returns an nng error (positive) or a
 * negative errno, with err naming the step. */
static int listen_on(struct kvd_events *e, const char *url, int mode, gid_t gid, nng_listener *ret_l,
                     char *err, size_t errlen)
{
        const char *path = strncmp(url, "ipc://", 6) == 0 ? url + 6 : NULL;
        nng_listener l;
        int rv = nng_listener_create(&l, e->sock, url);
        if (rv == 0 && path && mode)
                rv = nng_listener_set_int(l, NNG_OPT_IPC_PERMISSIONS, mode);
        if (rv == 0)
                rv = nng_listener_start(l, 0);
        if (rv != 0) {
                if (err)
                        snprintf(err, errlen, "events: cannot listen on %s: %s", url, nng_strerror(rv));
                return rv;
        }
        if (path && gid != (gid_t)-1 && chown(path, (uid_t)-1, gid) != 0) {
                int saved = errno;
                if (err)
                        snprintf(err, errlen, "events: cannot give %s to group %u: %s", path,
                                 (unsigned)gid, strerror(saved));
                return -saved;
        }
        *ret_l = l;
        return 0;
}

int kvd_events_open_mode(const char *url, int mode, gid_t gid, struct kvd_events **ret,
                         char *err, size_t errlen)
{
        if (!ret)
                return -EINVAL;
        if (err && errlen)
                err[0] = '\0';
        struct kvd_events *e = calloc(1, sizeof(*e));
        if (!e) {
                if (err)
                        snprintf(err, errlen, "events: out of memory");
                return -ENOMEM;
        }
        atomic_init(&e->subscribers, 0);
        int rv = queue_init(e, url != NULL);
        if (rv) {
                if (err)
                        snprintf(err, errlen, "events: cannot set up the send queue: %s", strerror(-rv));
                free(e);
                return rv;
        }
        if (!url) {
                *ret = e;
                return 0;
        }
        nng_listener l = NNG_LISTENER_INITIALIZER;
        rv = nng_pub0_open(&e->sock);
        if (rv != 0) {
                if (err)
                        snprintf(err, errlen, "events: cannot open a PUB socket: %s", nng_strerror(rv));
        } else {
                /* one alloc may evict thousands of pages at once: queue a
                 * burst per subscriber rather than drop it (default: 16) */
                rv = nng_socket_set_int(e->sock, NNG_OPT_SENDBUF, SUB_QUEUE);
                if (rv != 0 && err)
                        snprintf(err, errlen, "events: cannot size the send queue: %s", nng_strerror(rv));
                if (rv == 0) {
                        nng_pipe_notify(e->sock, NNG_PIPE_EV_ADD_POST, on_pipe, e);
                        nng_pipe_notify(e->sock, NNG_PIPE_EV_REM_POST, on_pipe, e);
                        rv = listen_on(e, url, mode, gid, &l, err, errlen);
                }
                if (rv == 0 && (rv = -pthread_create(&e->sender, NULL, sender_main, e)) != 0 && err)
                        snprintf(err, errlen, "events: cannot start the sender thread: %s", strerror(-rv));
                if (rv != 0)
                        nng_close(e->sock);
        }
        if (rv != 0) {
                queue_fini(e);
                free(e);
                return rv < 0 ? rv : nng_to_errno(rv);
        }
        e->open = 1;
        /* the guard (for the daemon's socket file, which has a mode): a
         * probe every GUARD_PROBE_EVERY s; without it the daemon still
         * publishes, so a failure is only logged */
        if (mode && strncmp(url, "ipc://", 6) == 0 && (e->path = strdup(url + 6)) != NULL) {
                kvd_guard_init(&e->guard, e->sock, l, e->path, mode, gid != (gid_t)-1, gid);
                kvd_guard_probe_only(&e->guard, events_probe, e, GUARD_PROBE_EVERY);
                if ((rv = kvd_guard_start(&e->guard, GUARD_RECV_MAX)))
                        kvd_warn("events: listener guard: cannot start its thread (%s): not watching %s",
                                 strerror(-rv), e->path);
        }
        *ret = e;
        return 0;
}

int kvd_events_open(const char *url, struct kvd_events **ret, char *err, size_t errlen)
{
        return kvd_events_open_mode(url, 0, (gid_t)-1, ret, err, errlen);
}

/* Fills the common header; seq and time are set under the lock in
 * queue_locked. */
static void header(uint8_t *buf, uint16_t type, const char *pool)
{
        put32(buf, KVD_EV_MAGIC);
        put16(buf + 4, KVD_EV_VERSION);
        put16(buf + 6, type);
        memset(buf + 24, 0, POOL_LEN);
        if (pool) {
                size_t n = strnlen(pool, POOL_LEN - 1);
                memcpy(buf + 24, pool, n);
        }
}

/* The ring is full: waits (e->lock held, released while waiting) for the
 * sender to give slots back, out of the overflow's budget of FULL_WAIT_MS
 * of waiting (only the time spent waiting counts: an overflow that lasts
 * while the ring stays above half full between its waits keeps the rest);
 * with the budget spent, marks the ring stalled.  Not while the sender is
 * held (kvd_events_hold: the tests' drops) or stopping. */
static void wait_room_locked(struct kvd_events *e)
{
        const double t0 = kvd_mono_s();
        struct timespec due;

        deadline_in(&due, e->full_left);
        if (e->sender_idle) {
                e->sender_idle = 0;
                pthread_cond_signal(&e->wake);
        }
        while (e->tail - e->head >= KVD_EV_QUEUE && !atomic_load(&e->stop))
                if (pthread_cond_timedwait(&e->sent, &e->lock, &due) == ETIMEDOUT)
                        break;
        e->full_left -= kvd_mono_s() - t0;
        if (e->tail - e->head >= KVD_EV_QUEUE || e->full_left <= 0)
                e->stalled = 1;
}

/* Numbers the event and queues it for the sender; caller holds e->lock.
 * Numbering and queueing under one lock makes seq order the ring's order,
 * which is the send order.  An event that finds the ring full waits for
 * room (wait_room_locked), within the overflow's time; one that still finds
 * it full is dropped but keeps its number, so subscribers see the gap
 * instead of silently missing an event. */
static void queue_locked(struct kvd_events *e, uint8_t *buf, size_t len)
{
        if (e->tail - e->head <= KVD_EV_QUEUE / 2) {
                e->full_left = FULL_WAIT_MS / 1000.0; /* the overflow, if any, is over */
                e->stalled = 0;
        }
        if (e->tail - e->head >= KVD_EV_QUEUE && !e->stalled && e->limit == UINT64_MAX &&
            !atomic_load(&e->stop))
                wait_room_locked(e);
        /* numbered after the wait, which lets go of the lock: another
         * announcer may have queued meanwhile, and seq order is ring order */
        uint64_t seq = e->seq + 1;
        struct timespec ts;

        __atomic_store_n(&e->seq, seq, __ATOMIC_RELAXED);
        put64(buf + 8, seq);
        clock_gettime(CLOCK_REALTIME, &ts); /* when queued: after any wait */
        put64(buf + 16, (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec);
        if (e->tail - e->head >= KVD_EV_QUEUE) {
                __atomic_fetch_add(&e->dropped, 1, __ATOMIC_RELAXED);
                return;
        }
        struct slot *sl = &e->ring[e->tail & (KVD_EV_QUEUE - 1)];
        memcpy(sl->buf, buf, len);
        sl->len = (uint8_t)len;
        e->tail++;
        /* one wake-up per idle spell, not one per event of a burst */
        if (e->sender_idle) {
                e->sender_idle = 0;
                pthread_cond_signal(&e->wake);
        }
}

/* Queues without waiting on subscribers: the lock is held by the sender
 * only to take or give back slots, never while it sends; only a burst
 * larger than the ring waits for the sender (queue_locked). */
static void send_event(struct kvd_events *e, uint8_t *buf, size_t len)
{
        pthread_mutex_lock(&e->lock);
        queue_locked(e, buf, len);
        pthread_mutex_unlock(&e->lock);
}

static void page_event(struct kvd_events *e, uint16_t type, const char *pool, uint32_t page,
                       const uint8_t key[16])
{
        if (!e || !e->open)
                return;
        uint8_t buf[KVD_EV_PAGE_SIZE];
        header(buf, type, pool);
        put32(buf + 56, page);
        if (key)
                memcpy(buf + 60, key, 16);
        else
                memset(buf + 60, 0, 16);
        send_event(e, buf, sizeof(buf));
}

void kvd_events_stored(struct kvd_events *e, const char *pool, uint32_t page, const uint8_t key[16])
{
        page_event(e, KVD_EV_STORED, pool, page, key);
}

void kvd_events_evicted(struct kvd_events *e, const char *pool, uint32_t page, const uint8_t key[16])
{
        page_event(e, KVD_EV_EVICTED, pool, page, key);
}

void kvd_events_reset(struct kvd_events *e, const char *pool, uint32_t keys)
{
        if (!e || !e->open)
                return;
        uint8_t buf[KVD_EV_RESET_SIZE];
        header(buf, KVD_EV_RESET, pool);
        put32(buf + 56, keys);
        send_event(e, buf, sizeof(buf));
}

void kvd_events_pressure(struct kvd_events *e, const char *pool, double free_fraction,
                         double threshold, int entering)
{
        if (!e || !e->open)
                return;
        uint8_t buf[KVD_EV_PRESSURE_SIZE];
        header(buf, KVD_EV_PRESSURE, pool);
        putf64(buf + 56, free_fraction);
        putf64(buf + 64, threshold);
        put32(buf + 72, entering ? 1 : 0);
        send_event(e, buf, sizeof(buf));
}

uint64_t kvd_events_seq(const struct kvd_events *e)
{
        if (!e)
                return 0;
        /* no lock: written with an atomic store, read for status only */
        return __atomic_load_n(&e->seq, __ATOMIC_RELAXED);
}

uint64_t kvd_events_dropped(const struct kvd_events *e)
{
        /* no lock: counted with an atomic add, read for metrics only */
        return e ? __atomic_load_n(&e->dropped, __ATOMIC_RELAXED) : 0;
}

int kvd_events_guard_stats(const struct kvd_events *e, uint64_t *ret_taken, int *ret_gave_up, int *ret_unmended)
{
        /* no lock: the guard's counts are atomic */
        return e ? kvd_guard_stats(&e->guard, ret_taken, ret_gave_up, ret_unmended) : -ENOENT;
}

void kvd_events_hold(struct kvd_events *e, uint64_t allow)
{
        if (!e || !e->open)
                return;
        pthread_mutex_lock(&e->lock);
        if (allow == UINT64_MAX) {
                e->limit = UINT64_MAX;
        } else {
                /* from sending freely: what was announced before goes out
                 * first, so that the count starts at an empty queue */
                while (e->limit == UINT64_MAX && e->head != e->tail)
                        pthread_cond_wait(&e->sent, &e->lock);
                if (e->limit == UINT64_MAX)
                        e->limit = e->head;
                e->limit = allow > UINT64_MAX - 1 - e->limit ? UINT64_MAX - 1 : e->limit + allow;
        }
        if (e->sender_idle) {
                e->sender_idle = 0;
                pthread_cond_signal(&e->wake);
        }
        pthread_mutex_unlock(&e->lock);
}

void kvd_events_shutdown(struct kvd_events *e)
{
        if (!e || !e->open)
                return;
        kvd_guard_stop(&e->guard); /* no take-over while the socket goes */
        struct timespec until;
        uint8_t         buf[KVD_EV_HDR_SIZE];
        uint64_t        left;

        kv_deadline_ms(&until, SHUTDOWN_WAIT_MS);
        header(buf, KVD_EV_SHUTDOWN, NULL);
        pthread_mutex_lock(&e->lock);
        if (e->shut) {
                pthread_mutex_unlock(&e->lock);
                return;
        }
        e->shut = 1;
        /* SHUTDOWN is worth waiting for room: nothing is served any more */
        while (e->tail - e->head >= KVD_EV_QUEUE && pthread_cond_timedwait(&e->sent, &e->lock, &until) == 0)
                ;
        if (e->tail - e->head >= KVD_EV_QUEUE)
                e->stalled = 1; /* waited enough: queue_locked drops it at once */
        queue_locked(e, buf, sizeof(buf));
        while (e->head != e->tail && pthread_cond_timedwait(&e->sent, &e->lock, &until) == 0)
                ;
        left = e->tail - e->head;
        pthread_mutex_unlock(&e->lock);
        if (left)
                kvd_warn("events: %llu events, the shutdown event last, were not sent within %d ms of shutdown "
                         "(too many subscribers for the event sender to keep up)", (unsigned long long)left,
                         SHUTDOWN_WAIT_MS);
        /* nng sends asynchronously and closing drops what is queued: give
         * connected subscribers a moment to receive the event */
        if (atomic_load(&e->subscribers) > 0) {
                struct timespec ts = { 0, 100 * 1000 * 1000 };
                nanosleep(&ts, NULL);
        }
}

void kvd_events_close(struct kvd_events *e)
{
        if (!e)
                return;
        kvd_events_shutdown(e);
        if (e->open) {
                stop_sender(e); /* before the socket it sends on closes */
                nng_close(e->sock);
        }
        kvd_guard_fini(&e->guard);
        free(e->path);
        queue_fini(e);
        free(e);
}
