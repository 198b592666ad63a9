/* events.h - the event stream: an nng PUB socket announcing pages stored,
 * pages evicted (with their keys), prefix-cache resets, pool pressure and
 * shutdown.  Each event
 * carries a sequence number (starting at 1, +1 per event, per daemon run) so
 * that a subscriber can tell it missed some.  The wire format of an event is
 * in docs/protocol.md ("Event stream").  Announcing an event does not send
 * it: it is numbered and queued (at most KVD_EV_QUEUE wait) for a sender
 * thread of the module's own, which hands it to nng's PUB; that drops
 * messages for slow subscribers.  Only when the queue is full does the
 * announcer wait for the sender to make room, at most 1 s an overflow;
 * past that, events that find the queue full are dropped. */
#ifndef KVD_EVENTS_H
#define KVD_EVENTS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct kvd_events;

enum kvd_event_type {
        KVD_EV_STORED   = 1,
        KVD_EV_EVICTED  = 2,
        KVD_EV_PRESSURE = 3,
        KVD_EV_SHUTDOWN = 4,
        KVD_EV_RESET    = 5,
};

/* Events waiting for the sender thread, at most: a ring of fixed-size slots
 * allocated at open (1.2 MiB).  A publish announces up to 8192 events
 * (KV_MAX_KEYS_REQ) at once, faster than the sender sends them: the ring
 * holds two such bursts.  (An alloc announces one event per page it
 * evicts, which can be more.) */
#define KVD_EV_QUEUE 16384u

/* Listens on url (e.g. ipc:///run/kvpool/events.sock) and starts the sender
 * thread.  NULL url: events off (every call below is then a no-op).
 * Returns 0 or a negative errno, with err naming the step; *ret is
 * untouched on failure. */
int  kvd_events_open(const char *url, struct kvd_events **ret, char *err, size_t errlen);
/* As kvd_events_open; for an ipc:// url, mode != 0 gives the socket file that
 * mode (e.g. 0660, like the request socket) and gid != (gid_t)-1 that group,
 * so that the operators who may use the request socket may also subscribe,
 * and starts the socket file's listener guard: a thread that connects a
 * subscriber of this process every 10 s and replaces the listener when nng
 * does not attach it (listen_guard.c; kvd_events_shutdown stops it). */
int  kvd_events_open_mode(const char *url, int mode, gid_t gid, struct kvd_events **ret,
                          char *err, size_t errlen);
/* Stops the listener guard, queues the SHUTDOWN event (waiting for room if
 * the queue is full), waits for the sender to hand everything queued to nng
 * (up to 1 s in all: what is left then is logged) and gives subscribers
 * 100 ms to get it; the socket and the sender stay (kvd_events_close calls
 * it).  Once: later calls do nothing.  Accepts NULL. */
void kvd_events_shutdown(struct kvd_events *e);
/* kvd_events_shutdown, then stops and joins the sender, closes and frees.
 * Accepts NULL. */
void kvd_events_close(struct kvd_events *e);

/* Announcing: the event gets the time now, waits for room when the queue
 * is full (for the sender to send: up to 1 s in all until the queue is half
 * empty again; not while the sender is held or stopping), then the next
 * sequence number, and is queued; the calls allocate nothing.  One that
 * still finds the queue full is dropped: its number is used up all the
 * same (subscribers see a gap) and kvd_events_dropped counts it.  Thread
 * safe; events are sent in the order of their numbers. */
void kvd_events_stored(struct kvd_events *e, const char *pool, uint32_t page, const uint8_t key[16]);
void kvd_events_evicted(struct kvd_events *e, const char *pool, uint32_t page, const uint8_t key[16]);
/* A RESET request dropped `keys` prefix keys of the pool: every key, or a
 * tenant's session's own tenant's only (the event does not say which). */
void kvd_events_reset(struct kvd_events *e, const char *pool, uint32_t keys);
/* free_fraction crossed threshold: entering = 1 when it fell below, 0 when it rose back. */
void kvd_events_pressure(struct kvd_events *e, const char *pool, double free_fraction,
                         double threshold, int entering);
uint64_t kvd_events_seq(const struct kvd_events *e); /* last sequence number given out (sent or dropped) */
/* Events dropped because the queue was full, since open (0 for NULL or
 * events off).  Any thread. */
uint64_t kvd_events_dropped(const struct kvd_events *e);
/* The events socket's listener guard (listen_guard.c kvd_guard_stats):
 * take-overs done, whether it gave up, and whether new subscribers get
 * nothing that it cannot mend now.  0, or -ENOENT when there is none
 * (NULL, events off, not an ipc:// socket file), ret_* untouched then.
 * Any thread. */
int kvd_events_guard_stats(const struct kvd_events *e, uint64_t *ret_taken, int *ret_gave_up, int *ret_unmended);
/* For tests: allow == UINT64_MAX lets the sender send freely (the default).
 * Otherwise the sender sends `allow` more events than it was allowed so far
 * and then stops: events queue up, and are dropped once the queue is full.
 * Coming from sending freely, the call first waits until every event queued
 * so far has gone to nng, so that the count starts at an empty queue.  Do
 * not hold the sender across kvd_events_shutdown: its 1 s wait would lapse
 * and SHUTDOWN stay unsent. */
void kvd_events_hold(struct kvd_events *e, uint64_t allow);

/* ---- decoding (events_wire.c; used by kvpoolctl, which links that file
 * alone: nothing below depends on daemon state) ---------------------------- */

#define KVD_EV_MAGIC        0x3145564Bu /* "KVE1" read as a little-endian u32 */
#define KVD_EV_VERSION      1u
#define KVD_EV_HDR_SIZE     56u         /* magic .. pool[32] */
#define KVD_EV_PAGE_SIZE    76u         /* STORED / EVICTED */
#define KVD_EV_PRESSURE_SIZE 76u
#define KVD_EV_RESET_SIZE   60u

/* One decoded event.  Fields a type does not carry are zero. */
struct kvd_event {
        uint16_t version;
        uint16_t type;          /* enum kvd_event_type, or an unknown newer type */
        uint64_t seq;
        uint64_t time_ns;       /* CLOCK_REALTIME, ns since the Unix epoch */
        char     pool[32];      /* NUL-terminated */
        uint32_t page;          /* STORED, EVICTED */
        uint8_t  key[16];       /* STORED, EVICTED */
        double   free_fraction; /* PRESSURE */
        double   threshold;     /* PRESSURE */
        uint32_t entering;      /* PRESSURE: 1 fell below, 0 rose back */
        uint32_t keys;          /* RESET: keys dropped */
};

/* Decodes one event message.  Returns 0, -EPROTO (too short for its type,
 * bad magic, pool name not NUL-terminated) or -EPROTONOSUPPORT (another
 * version); *ret is untouched on failure.  An unknown type decodes with its
 * header only; bytes past the known fields are ignored (room to grow). */
int kvd_event_decode(const uint8_t *buf, size_t len, struct kvd_event *ret);
/* "stored", "evicted", "pressure", "shutdown", "reset", or NULL for an
 * unknown type. */
const char *kvd_event_type_name(uint16_t type);

#endif
