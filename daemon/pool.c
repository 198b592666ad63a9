/* pool.c - one pool: backend choice, layout, region, page table, scales
 * (see pool.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>
#include "pool.h"
#include "events.h"
#include "log.h"

/* Page table hooks: the prefix cache's stores and evictions become events.
 * pool->events is NULL until the server opened the stream (then a no-op). */
static void hook_stored(void *ud, uint32_t page, const struct kvd_scoped_key *k)
{
        struct kvd_pool *p = ud;

        if (p->events)
                kvd_events_stored(p->events, p->name, page, k->key);
}

static void hook_evicted(void *ud, uint32_t page, const struct kvd_scoped_key *k)
{
        struct kvd_pool *p = ud;

        kvd_debug("pool %s: page %u evicted from the prefix cache", p->name, page);
        if (p->events)
                kvd_events_evicted(p->events, p->name, page, k->key);
}

/* A non-zero random epoch: clients compare it to tell a restarted daemon
 * (stale mapping) from the one they attached to. */
static uint64_t random_epoch(void)
{
        uint64_t e = 0;

        if (getrandom(&e, sizeof(e), GRND_NONBLOCK) != (ssize_t)sizeof(e)) {
                struct timespec ts;

                clock_gettime(CLOCK_REALTIME, &ts);
                e = ((uint64_t)ts.tv_sec * 1000000007ull) ^ ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)getpid();
        }
        return e ? e : 1;
}

/* Picks the backend for spec.  For "auto" a missing CUDA backend or device is
 * not an error: the pool goes to host memory and the warning says why. */
static int choose_backend(const struct kvd_pool_spec *spec, const struct kvd_backend_ops **ret,
                          uint64_t *ret_free, char *err, size_t errlen)
{
        uint64_t free_b = 0, total_b = 0;
        int      want_cuda = strcmp(spec->backend, "cuda") == 0;
        int      want_host = strcmp(spec->backend, "host") == 0;
        int      r;

        if (want_host) {
                *ret = &kvd_backend_host;
                return 0;
        }
        if (!want_cuda && kvd_backend_cuda && !kv_cuda_head_dim_ok(spec->geom.head_dim)) {
                kvd_warn("pool %s: backend auto: head_dim %u is not supported by the CUDA kernels (64, 128, 256), "
                         "using host shared memory", spec->name, spec->geom.head_dim);
                *ret = &kvd_backend_host;
                return 0;
        }
        if (!kvd_backend_cuda) {
                if (want_cuda) {
                        snprintf(err, errlen, "pool %s: backend \"cuda\" requested, but this kvpoold was built without CUDA",
                                 spec->name);
                        return -ENODEV;
                }
                kvd_warn("pool %s: backend auto: this kvpoold was built without CUDA, using host shared memory",
                         spec->name);
                *ret = &kvd_backend_host;
                return 0;
        }
        r = kvd_cuda_mem_info(spec->device, &free_b, &total_b);
        if (r) {
                if (want_cuda) {
                        snprintf(err, errlen, "pool %s: backend \"cuda\" requested, but CUDA device %d is not usable (%s)",
                                 spec->name, spec->device, strerror(-r));
                        return -ENODEV;
                }
                kvd_warn("pool %s: backend auto: CUDA device %d is not usable (%s), using host shared memory",
                         spec->name, spec->device, strerror(-r));
                *ret = &kvd_backend_host;
                return 0;
        }
        *ret = kvd_backend_cuda;
        *ret_free = free_b;
        return 0;
}

/* kvd_pool_new, with sc the caller's loaded scales or NULL: they move
 * into the pool (sc emptied) once the layout is known, where scales are
 * loaded when sc is NULL; on a failure before, they stay in sc for the
 * caller to free. */
static int pool_make(const struct kvd_pool_spec *spec, uint32_t id, struct kvd_scales *sc, struct kvd_pool **ret,
                     char *err, size_t errlen)
{
        const struct kvd_backend_ops *be = NULL;
        struct kvd_pages_hooks        hooks;
        struct kvd_pool              *p;
        const char                   *dname = kvc_dtype_name(spec->geom.dtype);
        uint64_t                      free_b = 0, budget;
        char                          e[512];
        int                           r;

        if (kv_geom_check(&spec->geom, e, sizeof(e)) != 0) {
                snprintf(err, errlen, "pool %s: %s", spec->name, e);
                return -EINVAL;
        }
        if ((r = choose_backend(spec, &be, &free_b, err, errlen)))
                return r;
        if (be != &kvd_backend_host && !kv_cuda_head_dim_ok(spec->geom.head_dim)) {
                snprintf(err, errlen, "pool %s: head_dim %u: CUDA pools support head_dim 64, 128 or 256",
                         spec->name, spec->geom.head_dim);
                return -EINVAL;
        }
        if (spec->capacity_fraction > 0) {
                if (be == &kvd_backend_host) {
                        snprintf(err, errlen,
                                 "pool %s: capacity %g is a fraction of free GPU memory, but the pool is in host memory; give bytes (e.g. \"8GiB\")",
                                 spec->name, spec->capacity_fraction);
                        return -EINVAL;
                }
                budget = (uint64_t)((double)free_b * spec->capacity_fraction);
                kvd_info("pool %s: capacity %.1f%% of %llu free bytes on device %d = %llu bytes", spec->name,
                         spec->capacity_fraction * 100.0, (unsigned long long)free_b, spec->device,
                         (unsigned long long)budget);
        } else {
                budget = spec->capacity_bytes;
        }

        if (!(p = calloc(1, sizeof(*p)))) {
                snprintf(err, errlen, "pool %s: out of memory", spec->name);
                return -ENOMEM;
        }
        snprintf(p->name, sizeof(p->name), "%s", spec->name);
        p->id = id;
        p->backend = be;
        p->pressure_low = spec->pressure_low;
        p->pressure_high = spec->pressure_high;
        p->epoch = random_epoch();
        /* Several GPUs (issue 8): the rank and the configured spec, for STATUS. */
        p->tp_rank = spec->tp_rank;
        p->tp_size = spec->tp_size;
        snprintf(p->group, sizeof(p->group), "%s", spec->spec_name[0] ? spec->spec_name : spec->name);

        if ((r = kv_layout_fit(&spec->geom, budget, &p->layout))) {
                snprintf(err, errlen, "pool %s: capacity %llu bytes does not hold a single page of this geometry (%s)",
                         spec->name, (unsigned long long)budget, strerror(-r));
                free(p);
                return r == -ENOSPC ? -EINVAL : r;
        }
        /* The page table would refuse it: say so before the memory is taken
         * (a fraction of a large GPU, or a spec that skipped the config). */
        if (p->layout.num_pages > KVD_PAGES_MAX) {
                snprintf(err, errlen, "pool %s: capacity %llu bytes holds %u pages of this geometry, more than the %u a "
                         "pool can have (lower the capacity or use larger pages)", spec->name,
                         (unsigned long long)budget, p->layout.num_pages, KVD_PAGES_MAX);
                free(p);
                return -EINVAL;
        }
        /* Scales before the region: a bad scales file must fail before
         * memory is taken. */
        if (sc && sc->num_layers != spec->geom.num_layers) {
                snprintf(err, errlen, "pool %s: scales: %u layers given for a pool of %u", spec->name, sc->num_layers,
                         spec->geom.num_layers);
                free(p);
                return -EINVAL;
        }
        if (sc) {
                p->scales = *sc;
                memset(sc, 0, sizeof(*sc));
        } else if ((r = kvd_scales_load(spec->scales_cfg, spec->geom.num_layers, dname, &p->scales, e, sizeof(e)))) {
                snprintf(err, errlen, "pool %s: scales: %s", spec->name, e);
                free(p);
                return r;
        }
        if (p->scales.warn_unscaled) /* set for fp8 pools only */
                kvd_warn("pool %s: %s with constant scales k=%g v=%g, not calibrated ones: FP8 without calibrated "
                         "scales is known to wreck some models' accuracy; configure \"scales\" from the model's "
                         "calibration (json or safetensors)",
                         p->name, dname, p->scales.k_min, p->scales.v_min);
        r = be->create(p->name, p->layout.alloc_bytes, be == &kvd_backend_host ? -1 : spec->device,
                       spec->group, spec->has_group, &p->region, e, sizeof(e));
        if (r) {
                snprintf(err, errlen, "pool %s: %s backend: %s", spec->name, be->name, e);
                kvd_scales_fini(&p->scales);
                free(p);
                return r;
        }
        hooks.stored = hook_stored;
        hooks.evicted = hook_evicted;
        hooks.ud = p;
        if ((r = kvd_pages_new(p->layout.num_pages, &hooks, &p->pages))) {
                snprintf(err, errlen, "pool %s: page table of %u pages: %s", spec->name, p->layout.num_pages,
                         strerror(-r));
                be->destroy(&p->region);
                kvd_scales_fini(&p->scales);
                free(p);
                return r;
        }
        kvd_info("pool %s: %s backend (%s), %s, %u layers x %u kv_heads x %u head_dim, page_size %u: "
                 "%u pages, %llu tokens, %llu bytes, scales %s",
                 p->name, be->name, p->region.shm_name[0] ? p->region.shm_name : "device memory", dname, spec->geom.num_layers,
                 spec->geom.kv_heads, spec->geom.head_dim, spec->geom.page_size, p->layout.num_pages,
                 (unsigned long long)kv_layout_tokens(&p->layout), (unsigned long long)p->layout.alloc_bytes,
                 p->scales.source);
        *ret = p;
        return 0;
}

int kvd_pool_new(const struct kvd_pool_spec *spec, uint32_t id, struct kvd_scales *scales, struct kvd_pool **ret,
                 char *err, size_t errlen)
{
        int r = pool_make(spec, id, scales, ret, err, errlen);

        if (scales) { /* what the pool did not take (already emptied if it did) */
                kvd_scales_fini(scales);
                memset(scales, 0, sizeof(*scales));
        }
        return r;
}

void kvd_pool_free(struct kvd_pool *p)
{
        if (!p)
                return;
        kvd_pages_free(p->pages);
        if (p->backend)
                p->backend->destroy(&p->region);
        kvd_scales_fini(&p->scales);
        free(p);
}

void kvd_pool_describe(const struct kvd_pool *p, struct kv_attach_rep *rep)
{
        const struct kv_layout *L = &p->layout;

        memset(rep, 0, sizeof(*rep));
        rep->pool_id = p->id;
        rep->dtype = (uint32_t)L->g.dtype;
        rep->backend = (uint32_t)p->region.kind;
        rep->num_layers = L->g.num_layers;
        rep->kv_heads = L->g.kv_heads;
        rep->head_dim = L->g.head_dim;
        rep->page_size = L->g.page_size;
        rep->num_pages = L->num_pages;
        rep->pool_bytes = p->region.bytes;
        rep->layer_stride = L->layer_stride;
        rep->k_offset = L->k_offset;
        rep->v_offset = L->v_offset;
        rep->ks_offset = L->ks_offset;
        rep->vs_offset = L->vs_offset;
        rep->page_bytes = L->page_bytes;
        rep->token_bytes = L->token_bytes;
        rep->head_bytes = L->head_bytes;
        rep->scale_page_bytes = L->scale_page_bytes;
        rep->scale_token_bytes = L->scale_token_bytes;
        rep->scale_head_bytes = L->scale_head_bytes;
        p->backend->describe(&p->region, rep);
        rep->pool_epoch = p->epoch;
        snprintf(rep->scale_source, sizeof(rep->scale_source), "%s", p->scales.source);
}
