/* events.h - the event stream: an nng PUB socket announcing pages stored,
 * pages evicted (with their keys), prefix-cache resets, pool pressure and
 * shutdown.  Each event
 * carries a sequence number (starting at 1, +1 per event, per daemon run) so
 * that a subscriber can tell it missed some.  The wire format of an event is
 * in docs/protocol.md ("Event stream").  Publishing never blocks: nng's PUB
 * drops messages for slow subscribers. */
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

/* Listens on url (e.g. ipc:///run/kvpool/events.sock). NULL url: events off
 * (every call below is then a no-op). */
int  kvd_events_open(const char *url, struct kvd_events **ret, char *err, size_t errlen);
/* As kvd_events_open; for an ipc:// url, mode != 0 gives the socket file that
 * mode (e.g. 0660, like the request socket) and gid != (gid_t)-1 that group,
 * so that the operators who may use the request socket may also subscribe,
 * and starts the socket file's listener guard: a thread that connects a
 * subscriber of this process every 10 s and replaces the listener when nng
 * does not attach it (listen_guard.c; kvd_events_shutdown stops it). */
int  kvd_events_open_mode(const char *url, int mode, gid_t gid, struct kvd_events **ret,
                          char *err, size_t errlen);
/* Publishes the SHUTDOWN event and gives subscribers 100 ms to get it; the
 * socket stays open (kvd_events_close calls it).  Accepts NULL. */
void kvd_events_shutdown(struct kvd_events *e);
/* kvd_events_shutdown, then closes and frees. Accepts NULL. */
void kvd_events_close(struct kvd_events *e);
void kvd_events_stored(struct kvd_events *e, const char *pool, uint32_t page, const uint8_t key[16]);
void kvd_events_evicted(struct kvd_events *e, const char *pool, uint32_t page, const uint8_t key[16]);
/* Every prefix key of the pool was dropped (RESET request): keys of them. */
void kvd_events_reset(struct kvd_events *e, const char *pool, uint32_t keys);
/* free_fraction crossed threshold: entering = 1 when it fell below, 0 when it rose back. */
void kvd_events_pressure(struct kvd_events *e, const char *pool, double free_fraction,
                         double threshold, int entering);
uint64_t kvd_events_seq(const struct kvd_events *e); /* last sequence number sent */

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
