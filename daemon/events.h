/* events.h - the event stream: an nng PUB socket announcing pages stored,
 * pages evicted (with their keys), pool pressure and shutdown.  Each event
 * carries a sequence number (starting at 1, +1 per event, per daemon run) so
 * that a subscriber can tell it missed some.  The wire format of an event is
 * in docs/protocol.md ("Event stream").  Publishing never blocks: nng's PUB
 * drops messages for slow subscribers. */
#ifndef KVD_EVENTS_H
#define KVD_EVENTS_H

#include <stddef.h>
#include <stdint.h>

struct kvd_events;

enum kvd_event_type {
        KVD_EV_STORED   = 1,
        KVD_EV_EVICTED  = 2,
        KVD_EV_PRESSURE = 3,
        KVD_EV_SHUTDOWN = 4,
};

/* Listens on url (e.g. ipc:///run/kvpool/events.sock). NULL url: events off
 * (every call below is then a no-op). */
int  kvd_events_open(const char *url, struct kvd_events **ret, char *err, size_t errlen);
/* Publishes a shutdown event, then closes. Accepts NULL. */
void kvd_events_close(struct kvd_events *e);
void kvd_events_stored(struct kvd_events *e, const char *pool, uint32_t page, const uint8_t key[16]);
void kvd_events_evicted(struct kvd_events *e, const char *pool, uint32_t page, const uint8_t key[16]);
/* free_fraction crossed threshold: entering = 1 when it fell below, 0 when it rose back. */
void kvd_events_pressure(struct kvd_events *e, const char *pool, double free_fraction,
                         double threshold, int entering);
uint64_t kvd_events_seq(const struct kvd_events *e); /* last sequence number sent */

#endif
