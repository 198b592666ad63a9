/* attach.c - libkvclient's pools: attach and detach, the pool descriptor,
 * and the process-wide registry that maps each pool once per process.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "client_cuda.h"
#include "kv_proto.h"
#include "kvclient_internal.h"

/* ---- the process-wide mapping registry --------------------------------------
 * A process maps a pool once, however many clients attach it: mappings are
 * keyed by (pool name, epoch, shm name) and reference counted.  The epoch
 * changes at each daemon start, so a restarted daemon's pool never reuses a
 * stale mapping. */
struct kvc_mapping {
        struct kvc_mapping *next;
        char                pool[KV_NAME_LEN];
        char                shm[KV_SHM_NAME_LEN];
        uint64_t            epoch;
        int                 backend;
        void               *base;
        uint64_t            bytes;
        int                 device;
        unsigned            refs;
};

static pthread_mutex_t     reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct kvc_mapping *reg_head;

static int map_host(struct kvc_client *c, const char *pool, const struct kv_attach_rep *r, void **ret_base)
{
        struct stat st;
        void *base;
        int fd, err;

        fd = shm_open(r->shm_name, O_RDWR | O_CLOEXEC, 0);
        if (fd < 0) {
                err = errno;
                if (err == EACCES)
                        return kvc__fail(c, -EACCES, "attach %s: no permission to open shared memory "
                                         "%s (is this user in the daemon's group?)", pool, r->shm_name);
                return kvc__fail(c, -err, "attach %s: cannot open shared memory %s: %s",
                                 pool, r->shm_name, strerror(err));
        }
        if (fstat(fd, &st) != 0) {
                err = errno;
                close(fd);
                return kvc__fail(c, -err, "attach %s: cannot stat shared memory %s: %s", pool,
                                 r->shm_name, strerror(err));
        }
        if ((uint64_t)st.st_size < r->pool_bytes) {
                close(fd);
                return kvc__fail(c, -EPROTO, "attach %s: shared memory %s holds %lld bytes, the daemon "
                                 "announced %llu", pool, r->shm_name, (long long)st.st_size,
                                 (unsigned long long)r->pool_bytes);
        }
        base = mmap(NULL, r->pool_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        err = errno;
        close(fd);
        if (base == MAP_FAILED)
                return kvc__fail(c, -err, "attach %s: cannot map %llu bytes of %s: %s", pool,
                                 (unsigned long long)r->pool_bytes, r->shm_name, strerror(err));
        *ret_base = base;
        return 0;
}

static void unmap(struct kvc_mapping *m)
{
        if (m->backend == KV_BACKEND_HOST)
                munmap(m->base, m->bytes);
        else
                kvc__cuda_unmap(m->base, m->device);
}

static int mapping_ref(struct kvc_client *c, const char *pool, const struct kv_attach_rep *r,
                       struct kvc_mapping **ret)
{
        struct kvc_mapping *m;
        char err[256] = "";
        int rv;

        pthread_mutex_lock(&reg_lock);
        for (m = reg_head; m != NULL; m = m->next) {
                if (m->epoch == r->pool_epoch && m->backend == (int)r->backend &&
                    m->bytes == r->pool_bytes && strcmp(m->pool, pool) == 0 &&
                    strcmp(m->shm, r->shm_name) == 0) {
                        m->refs++;
                        pthread_mutex_unlock(&reg_lock);
                        *ret = m;
                        return 0;
                }
        }
        m = calloc(1, sizeof *m);
        if (m == NULL) {
                pthread_mutex_unlock(&reg_lock);
                return kvc__fail(c, -ENOMEM, "attach %s: out of memory", pool);
        }
        snprintf(m->pool, sizeof m->pool, "%s", pool);
        snprintf(m->shm, sizeof m->shm, "%s", r->shm_name);
        m->epoch = r->pool_epoch;
        m->backend = (int)r->backend;
        m->bytes = r->pool_bytes;
        m->device = -1;
        if (r->backend == KV_BACKEND_HOST) {
                rv = map_host(c, pool, r, &m->base);
        } else {
                /* -ENODEV in a build without CUDA, with err saying so. */
                rv = kvc__cuda_map(r, &m->base, &m->device, err, sizeof err);
                if (rv != 0)
                        kvc__fail(c, rv, "attach %s: %s", pool, err[0] ? err : strerror(-rv));
        }
        if (rv != 0) {
                pthread_mutex_unlock(&reg_lock);
                free(m);
                return rv;
        }
        m->refs = 1;
        m->next = reg_head;
        reg_head = m;
        pthread_mutex_unlock(&reg_lock);
        *ret = m;
        return 0;
}

static void mapping_unref(struct kvc_mapping *m)
{
        struct kvc_mapping **pp;

        if (m == NULL)
                return;
        pthread_mutex_lock(&reg_lock);
        if (--m->refs > 0) {
                pthread_mutex_unlock(&reg_lock);
                return;
        }
        for (pp = &reg_head; *pp != NULL; pp = &(*pp)->next) {
                if (*pp == m) {
                        *pp = m->next;
                        break;
                }
        }
        /* Unmapped under the lock, as mapping_ref maps under it: an attach
         * of the same pool by another client of this process must not open
         * the pool's handle or shared memory again while this mapping is
         * still being closed. */
        unmap(m);
        pthread_mutex_unlock(&reg_lock);
        free(m);
}

/* ---- attach ------------------------------------------------------------------ */

static uint32_t dtype_bits(uint32_t d)
{
        switch (d) {
        case KVC_DTYPE_BF16: case KVC_DTYPE_FP16:         return 16;
        case KVC_DTYPE_FP8_E4M3: case KVC_DTYPE_FP8_E5M2: return 8;
        case KVC_DTYPE_FP4_E2M1:                          return 4;
        default:                                          return 0;
        }
}

/* 1 if arrays of n_pages*page_bytes at off + l*stride (l < layers) fit in bytes. */
static int array_fits(uint64_t off, uint64_t stride, uint32_t layers, uint64_t pages,
                      uint64_t page_bytes, uint64_t bytes)
{
        uint64_t last, size, end;

        if (__builtin_mul_overflow(stride, (uint64_t)(layers - 1), &last) ||
            __builtin_add_overflow(last, off, &last) ||
            __builtin_mul_overflow(pages, page_bytes, &size) ||
            __builtin_add_overflow(last, size, &end))
                return 0;
        return end <= bytes;
}

/* a * b == want, without wrapping around 64 bits. */
static int product_is(uint64_t a, uint64_t b, uint64_t want)
{
        uint64_t p;

        return !__builtin_mul_overflow(a, b, &p) && p == want;
}

/* The kernels trust the descriptor, so a reply that would make them write
 * outside the mapping is refused here.  The byte figures must equal their
 * products exactly (a product that wraps could pass for a small page), and
 * page ids travel as int32, so a pool has at most INT32_MAX pages. */
static int check_rep(struct kvc_client *c, const char *pool, const struct kv_attach_rep *r)
{
        uint32_t bits = dtype_bits(r->dtype);
        int fp4 = r->dtype == KVC_DTYPE_FP4_E2M1;
        const char *name;

        if (bits == 0 || r->backend > KV_BACKEND_CUDA || r->num_layers == 0 ||
            r->num_layers > KV_MAX_LAYERS || r->kv_heads == 0 || r->head_dim == 0 ||
            r->page_size == 0 || r->num_pages == 0 || r->num_pages > INT32_MAX ||
            r->head_dim % (fp4 ? 16 : 1) != 0 ||
            r->head_bytes != (uint64_t)r->head_dim * bits / 8 ||
            !product_is(r->head_bytes, r->kv_heads, r->token_bytes) ||
            !product_is(r->token_bytes, r->page_size, r->page_bytes) ||
            !array_fits(r->k_offset, r->layer_stride, r->num_layers, r->num_pages, r->page_bytes, r->pool_bytes) ||
            !array_fits(r->v_offset, r->layer_stride, r->num_layers, r->num_pages, r->page_bytes, r->pool_bytes))
                goto bad;
        if (fp4 && (r->scale_head_bytes != r->head_dim / 16 ||
                    !product_is(r->scale_head_bytes, r->kv_heads, r->scale_token_bytes) ||
                    !product_is(r->scale_token_bytes, r->page_size, r->scale_page_bytes) ||
                    !array_fits(r->ks_offset, r->layer_stride, r->num_layers, r->num_pages,
                                r->scale_page_bytes, r->pool_bytes) ||
                    !array_fits(r->vs_offset, r->layer_stride, r->num_layers, r->num_pages,
                                r->scale_page_bytes, r->pool_bytes)))
                goto bad;
        return 0;
bad:
        /* kvc_dtype_name also pulls kv_codec_names.o (kvc_dtype_name and
         * kvc_dtype_parse) from the static kernels library into this one, so
         * the version script can export them. */
        name = r->dtype < KVC_DTYPE__COUNT ? kvc_dtype_name((enum kvc_dtype)r->dtype) : NULL;
        return kvc__fail(c, -EPROTO, "attach %s: the daemon's pool descriptor is inconsistent "
                         "(dtype %s, %u layers, %u pages, %llu bytes)", pool, name ? name : "unknown",
                         r->num_layers, r->num_pages, (unsigned long long)r->pool_bytes);
}

static void fill_pool(struct kvc_pool *p, const char *name, const struct kv_attach_rep *r)
{
        struct kvc_pool_desc *d = &p->desc;
        struct kv_layout *L = &p->layout;

        snprintf(d->name, sizeof d->name, "%s", name);
        d->dtype = (enum kvc_dtype)r->dtype;
        d->backend = r->backend == KV_BACKEND_CUDA ? KVC_BACKEND_CUDA : KVC_BACKEND_HOST;
        d->device = p->map->device;
        d->pool_id = r->pool_id;
        d->num_layers = r->num_layers;
        d->kv_heads = r->kv_heads;
        d->head_dim = r->head_dim;
        d->page_size = r->page_size;
        d->num_pages = r->num_pages;
        d->base = p->map->base;
        d->bytes = r->pool_bytes;
        d->layer_stride = r->layer_stride;
        d->k_offset = r->k_offset;
        d->v_offset = r->v_offset;
        d->ks_offset = r->ks_offset;
        d->vs_offset = r->vs_offset;
        d->page_bytes = r->page_bytes;
        d->token_bytes = r->token_bytes;
        d->head_bytes = r->head_bytes;
        d->scale_page_bytes = r->scale_page_bytes;
        d->scale_token_bytes = r->scale_token_bytes;
        d->scale_head_bytes = r->scale_head_bytes;
        for (uint32_t l = 0; l < r->num_layers; l++) {
                p->scales[l] = kv_attach_k_scale(r, l);
                p->scales[r->num_layers + l] = kv_attach_v_scale(r, l);
        }
        d->k_scale = p->scales;
        d->v_scale = p->scales + r->num_layers;
        snprintf(d->scale_source, sizeof d->scale_source, "%.*s", (int)KV_NAME_LEN, r->scale_source);

        L->g.dtype = d->dtype;
        L->g.num_layers = d->num_layers;
        L->g.kv_heads = d->kv_heads;
        L->g.head_dim = d->head_dim;
        L->g.page_size = d->page_size;
        L->num_pages = d->num_pages;
        L->head_bytes = d->head_bytes;
        L->token_bytes = d->token_bytes;
        L->page_bytes = d->page_bytes;
        L->scale_head_bytes = d->scale_head_bytes;
        L->scale_token_bytes = d->scale_token_bytes;
        L->scale_page_bytes = d->scale_page_bytes;
        L->k_offset = d->k_offset;
        L->v_offset = d->v_offset;
        L->ks_offset = d->ks_offset;
        L->vs_offset = d->vs_offset;
        L->layer_stride = d->layer_stride;
        L->used_bytes = d->layer_stride * d->num_layers;
        L->alloc_bytes = d->bytes;
}

static int check_name(struct kvc_client *c, const char *what, const char *name)
{
        size_t n;

        if (name == NULL)
                return kvc__fail(c, -EINVAL, "%s: pool name is NULL", what);
        n = strlen(name);
        if (n == 0 || n >= KV_NAME_LEN)
                return kvc__fail(c, -EINVAL, "%s: pool name '%s' must be 1 to %u bytes", what,
                                 name, KV_NAME_LEN - 1);
        return 0;
}

int kvc_attach(kvc_client *c, const char *name, kvc_pool **ret_pool)
{
        struct kv_attach_req q;
        struct kv_attach_rep r;
        struct kvc_pool *p;
        nng_msg *req, *rep;
        const uint8_t *body;
        size_t len;
        int rv;

        if (c == NULL)
                return -EINVAL;
        if (kvc__forked(c))
                return kvc__fail_forked(c, "kvc_attach");
        if (ret_pool == NULL)
                return kvc__fail(c, -EINVAL, "kvc_attach: ret_pool is NULL");
        rv = check_name(c, "kvc_attach", name);
        if (rv != 0)
                return rv;
        pthread_mutex_lock(&c->lock);
        for (p = c->pools; p != NULL; p = p->next) {
                if (strcmp(p->desc.name, name) == 0) {
                        if (kvc__is_stale(c)) {
                                rv = kvc__fail(c, -ESTALE, "%s", kvc__stale_msg);
                        } else {
                                p->attaches++;
                                *ret_pool = p;
                        }
                        pthread_mutex_unlock(&c->lock);
                        return rv;
                }
        }
        memset(&q, 0, sizeof q);
        memcpy(q.name, name, strlen(name));
        rv = kvc__req_new(c, KV_HDR_SIZE + sizeof q.name, &req);
        if (rv != 0)
                goto out;
        rv = kvc__send(c, req, kv_enc_attach_req(nng_msg_body(req), nng_msg_len(req), 0, &q),
                       KV_OP_ATTACH, "attach", &rep, &body, &len);
        if (rv != 0)
                goto out;
        rv = kv_dec_attach_rep(body, len, &r);
        if (rv != 0) {
                rv = kvc__fail(c, -EPROTO, "attach %s: malformed reply (%s)", name,
                               kv_err_name((uint32_t)-rv));
                goto out_rep;
        }
        rv = check_rep(c, name, &r);
        if (rv != 0)
                goto out_rep;
        p = calloc(1, sizeof *p);
        if (p != NULL)
                p->scales = calloc(2 * (size_t)r.num_layers, sizeof(float));
        if (p == NULL || p->scales == NULL) {
                if (p != NULL)
                        free(p);
                rv = kvc__fail(c, -ENOMEM, "attach %s: out of memory", name);
                goto out_rep;
        }
        rv = mapping_ref(c, name, &r, &p->map);
        if (rv != 0) {
                free(p->scales);
                free(p);
                goto out_rep;
        }
        p->c = c;
        p->attaches = 1;
        fill_pool(p, name, &r);
        p->next = c->pools;
        c->pools = p;
        *ret_pool = p;
out_rep:
        nng_msg_free(rep);
out:
        pthread_mutex_unlock(&c->lock);
        return rv;
}

void kvc__pool_free(struct kvc_pool *p)
{
        mapping_unref(p->map);
        free(p->scales);
        free(p);
}

void kvc_detach(kvc_pool *p)
{
        struct kvc_client *c;
        struct kvc_pool **pp;

        if (p == NULL)
                return;
        c = p->c;
        if (kvc__forked(c)) /* as kvc_disconnect: the parent's, left alone */
                return;
        pthread_mutex_lock(&c->lock);
        if (--p->attaches > 0) {
                pthread_mutex_unlock(&c->lock);
                return;
        }
        for (pp = &c->pools; *pp != NULL; pp = &(*pp)->next) {
                if (*pp == p) {
                        *pp = p->next;
                        break;
                }
        }
        pthread_mutex_unlock(&c->lock);
        kvc__pool_free(p);
}

const struct kvc_pool_desc *kvc_pool_get_desc(const kvc_pool *p)
{
        return p ? &p->desc : NULL;
}

/* Sent by name, like ATTACH, so that an operator's tool (kvpoolctl) need
 * not map the pool, which for a CUDA pool would need its GPU. */
int kvc_reset_prefixes(kvc_client *c, const char *name, uint32_t *ret_keys)
{
        struct kv_attach_req q;
        nng_msg *req, *rep;
        const uint8_t *body;
        size_t len;
        uint32_t n;
        int rv;

        if (c == NULL)
                return -EINVAL;
        if (kvc__forked(c))
                return kvc__fail_forked(c, "kvc_reset_prefixes");
        rv = check_name(c, "kvc_reset_prefixes", name);
        if (rv != 0)
                return rv;
        memset(&q, 0, sizeof q);
        memcpy(q.name, name, strlen(name));
        pthread_mutex_lock(&c->lock);
        rv = kvc__req_new(c, KV_HDR_SIZE + sizeof q.name, &req);
        if (rv != 0)
                goto out;
        rv = kvc__send(c, req, kv_enc_reset_req(nng_msg_body(req), nng_msg_len(req), 0, &q),
                       KV_OP_RESET, "reset prefixes", &rep, &body, &len);
        if (rv != 0)
                goto out;
        if (kv_dec_u32_req(body, len, &n) != 0)
                rv = kvc__fail(c, -EPROTO, "reset prefixes of %s: malformed reply", name);
        else if (ret_keys != NULL)
                *ret_keys = n;
        nng_msg_free(rep);
out:
        pthread_mutex_unlock(&c->lock);
        return rv;
}
