/* pool_check.c - see pool_check.h. */
#include "pool_check.h"

#include "gpu_common.h"

static struct kv_layout layout_of(const struct kvc_pool_desc *d)
{
        struct kv_geom g = { .dtype = d->dtype, .num_layers = d->num_layers, .kv_heads = d->kv_heads,
                             .head_dim = d->head_dim, .page_size = d->page_size };
        struct kv_layout L;

        memset(&L, 0, sizeof L);
        kv_layout_init(&g, d->num_pages, &L);
        return L;
}

void pc_make_write(struct pc_input *in, const struct kvc_pool_desc *d, const int32_t *pages, int n_pages,
                   uint64_t seed)
{
        struct rng r = { seed };

        in->T = (uint32_t)n_pages * d->page_size;
        in->row = (int64_t)d->kv_heads * d->head_dim;
        in->slots = malloc(sizeof(int64_t) * in->T);
        for (uint32_t i = 0; i < in->T; i++)
                in->slots[i] = (int64_t)pages[i / d->page_size] * d->page_size + i % d->page_size;
        for (uint32_t i = in->T - 1; i > 0; i--) {
                uint32_t j = (uint32_t)(rng_next(&r) % (i + 1));
                int64_t t = in->slots[i];
                in->slots[i] = in->slots[j];
                in->slots[j] = t;
        }
        in->k = make_input(&r, KVC_ELEM_BF16, in->T, in->row, 2.0f, 0);
        in->v = make_input(&r, KVC_ELEM_BF16, in->T, in->row, 1.0f, 0);
}

void pc_free_write(struct pc_input *in)
{
        free(in->slots);
        free(in->k);
        free(in->v);
}

int pc_gpu_write(kvc_pool *p, const struct pc_input *in, uint32_t layer)
{
        void *dk, *dv, *ds;
        size_t b = (size_t)in->T * in->row * 2;
        int r;

        CK(cudaMalloc(&dk, b));
        CK(cudaMalloc(&dv, b));
        CK(cudaMalloc(&ds, sizeof(int64_t) * in->T));
        CK(cudaMemcpy(dk, in->k, b, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dv, in->v, b, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(ds, in->slots, sizeof(int64_t) * in->T, cudaMemcpyHostToDevice));
        struct kvc_write_args a = { .k = dk, .v = dv, .elem = KVC_ELEM_BF16, .k_row_stride = in->row,
                                    .v_row_stride = in->row, .slots = ds, .num_tokens = in->T, .layer = layer };
        r = kvc_write(p, &a, NULL);
        CK(cudaDeviceSynchronize());
        cudaFree(dk);
        cudaFree(dv);
        cudaFree(ds);
        return r;
}

/* The raw bytes of every written page of layer (K, V and fp4 scale rows) on
 * the device against the reference pool ref; mismatches. */
static int check_raw(const struct kvc_pool_desc *d, const struct kv_layout *L, const uint8_t *ref,
                     const int32_t *pages, int n_pages, uint32_t layer, const char *label)
{
        const uint8_t *dev = d->base;
        uint64_t offs[4] = { kv_layout_k(L, layer), kv_layout_v(L, layer), kv_layout_ks(L, layer),
                             kv_layout_vs(L, layer) };
        int bad = 0;

        for (int i = 0; i < n_pages; i++) {
                for (int a = 0; a < 4; a++) {
                        uint64_t pb = a < 2 ? L->page_bytes : L->scale_page_bytes;
                        if (pb == 0)
                                continue;
                        uint64_t o = offs[a] + (uint64_t)pages[i] * pb;
                        uint8_t *g = malloc(pb);
                        CK(cudaMemcpy(g, dev + o, pb, cudaMemcpyDeviceToHost));
                        if (memcmp(g, ref + o, pb)) {
                                printf("%s: raw bytes of page %d (array %d) differ from kv_ref_write\n", label,
                                       pages[i], a);
                                bad++;
                        }
                        free(g);
                }
        }
        return bad;
}

/* kvc_gather into fp32 device buffers (poisoned first) against
 * kv_ref_gather of the reference view; mismatches, or -1. */
static int check_gather(kvc_client *c, kvc_pool *p, const struct kv_pool_view *hv, const int32_t *pages, int n_pages,
                        uint32_t layer, const char *label)
{
        const struct kvc_pool_desc *d = kvc_pool_get_desc(p);
        size_t ob = (size_t)n_pages * d->page_size * d->kv_heads * d->head_dim * sizeof(float);
        float *hk = malloc(ob), *hvv = malloc(ob), *gk = malloc(ob), *gv = malloc(ob);
        void *dko, *dvo, *dpl;
        char msg[256];
        int bad = 0;

        CK(cudaMalloc(&dko, ob));
        CK(cudaMalloc(&dvo, ob));
        CK(cudaMalloc(&dpl, sizeof(int32_t) * n_pages));
        CK(cudaMemset(dko, 0xFF, ob));
        CK(cudaMemset(dvo, 0xFF, ob));
        CK(cudaMemcpy(dpl, pages, sizeof(int32_t) * n_pages, cudaMemcpyHostToDevice));
        struct kvc_gather_args dg = { .pages = dpl, .n_pages = (uint32_t)n_pages, .layer = layer, .k_out = dko,
                                      .v_out = dvo, .elem = KVC_ELEM_F32 };
        struct kvc_gather_args hg = { .pages = pages, .n_pages = (uint32_t)n_pages, .layer = layer, .k_out = hk,
                                      .v_out = hvv, .elem = KVC_ELEM_F32 };
        if (kvc_gather(p, &dg, NULL)) {
                printf("%s: kvc_gather: %s\n", label, kvc_errmsg(c));
                bad = -1;
        } else if (kv_ref_gather(hv, &hg, msg, sizeof msg)) {
                printf("%s: kv_ref_gather: %s\n", label, msg);
                bad = -1;
        } else {
                CK(cudaDeviceSynchronize());
                CK(cudaMemcpy(gk, dko, ob, cudaMemcpyDeviceToHost));
                CK(cudaMemcpy(gv, dvo, ob, cudaMemcpyDeviceToHost));
                if (memcmp(gk, hk, ob) || memcmp(gv, hvv, ob)) {
                        printf("%s: gathered values differ from kv_ref_gather\n", label);
                        bad = 1;
                }
        }
        cudaFree(dko);
        cudaFree(dvo);
        cudaFree(dpl);
        free(hk);
        free(hvv);
        free(gk);
        free(gv);
        return bad;
}

int pc_check_pages(kvc_client *c, kvc_pool *p, const int32_t *pages, int n_pages, uint64_t seed, uint32_t layer,
                   const char *label)
{
        const struct kvc_pool_desc *d = kvc_pool_get_desc(p);
        struct kv_layout L = layout_of(d);
        struct pc_input in;
        char msg[256];
        int prev = -1, bad;

        if (d->backend != KVC_BACKEND_CUDA || d->device < 0) {
                printf("%s: pool %s is not a cuda pool in this process\n", label, d->name);
                return -1;
        }
        CK(cudaGetDevice(&prev));
        CK(cudaSetDevice(d->device));
        pc_make_write(&in, d, pages, n_pages, seed);

        /* the reference: a private host pool with the same layout */
        uint8_t *ref = calloc(1, L.alloc_bytes);
        struct kv_pool_view hv = { .base = ref, .layout = L, .k_scale = d->k_scale, .v_scale = d->v_scale };
        struct kvc_write_args ha = { .k = in.k, .v = in.v, .elem = KVC_ELEM_BF16, .k_row_stride = in.row,
                                     .v_row_stride = in.row, .slots = in.slots, .num_tokens = in.T,
                                     .layer = layer };
        if (kv_ref_write(&hv, &ha, msg, sizeof msg)) {
                printf("%s: kv_ref_write: %s\n", label, msg);
                bad = -1;
        } else {
                bad = check_raw(d, &L, ref, pages, n_pages, layer, label);
                int g = check_gather(c, p, &hv, pages, n_pages, layer, label);
                bad = g < 0 ? -1 : bad + g;
        }
        pc_free_write(&in);
        free(ref);
        CK(cudaSetDevice(prev));
        return bad;
}
