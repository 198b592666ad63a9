/* events_wire.c - the event stream's decoder (the format is in events.c
 * and docs/protocol.md "Event stream").  Depends on libc only, so that
 * kvpoolctl and the tests link it alone. */
#include "events.h"

#include <errno.h>
#include <string.h>

#define POOL_LEN 32

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t get32(const uint8_t *p)
{
        return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32; }

static double getf64(const uint8_t *p)
{
        uint64_t v = get64(p);
        double d;
        memcpy(&d, &v, sizeof(d));
        return d;
}

const char *kvd_event_type_name(uint16_t type)
{
        switch (type) {
        case KVD_EV_STORED:   return "stored";
        case KVD_EV_EVICTED:  return "evicted";
        case KVD_EV_PRESSURE: return "pressure";
        case KVD_EV_SHUTDOWN: return "shutdown";
        case KVD_EV_RESET:    return "reset";
        default:              return NULL;
        }
}

int kvd_event_decode(const uint8_t *buf, size_t len, struct kvd_event *ret)
{
        if (!buf || !ret)
                return -EINVAL;
        if (len < KVD_EV_HDR_SIZE || get32(buf) != KVD_EV_MAGIC)
                return -EPROTO;
        if (get16(buf + 4) != KVD_EV_VERSION)
                return -EPROTONOSUPPORT;
        if (memchr(buf + 24, '\0', POOL_LEN) == NULL)
                return -EPROTO;
        struct kvd_event ev;
        memset(&ev, 0, sizeof(ev));
        ev.version = get16(buf + 4);
        ev.type = get16(buf + 6);
        ev.seq = get64(buf + 8);
        ev.time_ns = get64(buf + 16);
        memcpy(ev.pool, buf + 24, POOL_LEN);
        switch (ev.type) {
        case KVD_EV_STORED:
        case KVD_EV_EVICTED:
                if (len < KVD_EV_PAGE_SIZE)
                        return -EPROTO;
                ev.page = get32(buf + 56);
                memcpy(ev.key, buf + 60, 16);
                break;
        case KVD_EV_PRESSURE:
                if (len < KVD_EV_PRESSURE_SIZE)
                        return -EPROTO;
                ev.free_fraction = getf64(buf + 56);
                ev.threshold = getf64(buf + 64);
                ev.entering = get32(buf + 72);
                break;
        case KVD_EV_RESET:
                if (len < KVD_EV_RESET_SIZE)
                        return -EPROTO;
                ev.keys = get32(buf + 56);
                break;
        default:
                break;
        }
        *ret = ev;
        return 0;
}
