/* pool.h - one pool: geometry and layout, the backend region holding its
 * memory, its page table, and its FP8 scales. */
#ifndef KVD_POOL_H
#define KVD_POOL_H

#include <stdint.h>
#include "kv_layout.h"
#include "kv_proto.h"
#include "backend.h"
#include "pages.h"
#include "scales.h"

struct kvd_events;

#define KVD_MAX_DEVICES 64u /* tp_size and "devices" entries of one spec */

/* Requested pool, as parsed from the config file or --pool. */
struct kvd_pool_spec {
        char           name[KV_NAME_LEN];
        struct kv_geom geom;
        char           backend[16];      /* "auto" (default), "host", "cuda" */
        int            device;           /* cuda ordinal (default 0) */
        uint64_t       capacity_bytes;   /* 0 if given as a fraction */
        double         capacity_fraction;/* of the device's free memory (cuda), 0 if bytes */
        cJSON         *scales_cfg;       /* owned copy of the "scales" object, or NULL */
        double         pressure_low;     /* free fraction thresholds for pressure events */
        double         pressure_high;
        /* Added by the daemon core (additive): the --group for the host
         * backend's shm object (mode 0660 + fchown) when has_group. */
        gid_t          group;
        int            has_group;
        /* Added for several GPUs (issue 8, additive).  As parsed, tp_size
         * (0 = not given) and devices[0..num_devices) (num_devices 0 = not
         * given) describe a spec that kvd_config_parse expands into one spec
         * per tensor-parallel rank or per device (config.h).  An expanded
         * spec has num_devices 0, its tp_rank (tp_size stays; 0 for a
         * per-device data-parallel pool) and spec_name, the name before
         * expansion ("" for a pool that was never expanded). */
        uint32_t       tp_size;
        uint32_t       tp_rank;
        uint32_t       num_devices;
        int            devices[KVD_MAX_DEVICES];
        char           spec_name[KV_NAME_LEN];
};

struct kvd_pool {
        char                          name[KV_NAME_LEN];
        uint32_t                      id;        /* index in the daemon's pool array */
        struct kv_layout              layout;
        const struct kvd_backend_ops *backend;
        struct kvd_region             region;
        struct kvd_pages             *pages;
        struct kvd_scales             scales;
        uint64_t                      epoch;     /* random per daemon start */
        double                        pressure_low, pressure_high;
        int                           under_pressure; /* last pressure state announced */
        /* Added by the daemon core (additive): the event stream the page
         * table's hooks publish to; NULL until the server opened it. */
        struct kvd_events            *events;
        /* Added for several GPUs (issue 8, additive), from the spec:
         * tp_size 0 = not a tensor-parallel rank; group = the spec's name
         * before expansion (the pool's own name for a plain pool). */
        uint32_t                      tp_rank, tp_size;
        char                          group[KV_NAME_LEN];
};

/* Creates a pool from spec: picks the backend (auto: cuda if usable, else
 * host, saying why in err-level logs), fits the layout into the capacity,
 * allocates and zeroes the region.  scales: the pool's scales as
 * kvd_scales_load (or kvd_config_load_scales) gave them for this spec,
 * taken over whatever the outcome (emptied: kvd_scales_fini on it
 * afterwards is harmless; a layer count other than the spec's is
 * -EINVAL), or NULL to load them here.  On failure returns a negative
 * errno, a message in err naming the pool and the cause, and *ret is
 * untouched. */
int  kvd_pool_new(const struct kvd_pool_spec *spec, uint32_t id, struct kvd_scales *scales, struct kvd_pool **ret,
                  char *err, size_t errlen);
void kvd_pool_free(struct kvd_pool *p);
/* Fills an attach reply for this pool (everything but the scales arrays). */
void kvd_pool_describe(const struct kvd_pool *p, struct kv_attach_rep *rep);

#endif
