/* test_write_gather.c - GPU write and gather kernels against the CPU
 * reference, bit for bit (suite 'gpu'; exits 77 without a CUDA device).
 *
 * For every dtype x head_dim {64, 128, 256} x input element type: random
 * inputs with special values, a poisoned pool, random slots with some -1;
 * kv_cuda_write on the device and kv_ref_write on a host copy must leave the
 * two pools identical to the byte (so skipped slots, other layers and other
 * tokens keep their poison), and kv_cuda_gather must equal kv_ref_gather for
 * f32 and bf16 outputs.  Also: out-of-range slots and page ids on the device
 * are skipped (zero rows for gather), row strides with padding and
 * misaligned inputs take the scalar path correctly, and every bad argument
 * is refused before any launch. */
#include <errno.h>
#include "gpu_common.h"

static int failures;
static int cases;

struct pool {
        struct kv_layout L;
        uint8_t *host;          /* reference pool */
        uint8_t *dev;           /* device pool */
        float ks[4], vs[4];
};

static void pool_init(struct pool *P, enum kvc_dtype d, uint32_t layers, uint32_t heads, uint32_t hd,
                      uint32_t page, uint32_t pages, uint64_t seed)
{
        struct kv_geom g = { .dtype = d, .num_layers = layers, .kv_heads = heads, .head_dim = hd, .page_size = page };

        if (kv_layout_init(&g, pages, &P->L) < 0) {
                printf("FAIL: kv_layout_init\n");
                exit(1);
        }
        P->host = malloc(P->L.alloc_bytes);
        fill_poison(P->host, P->L.alloc_bytes, seed);
        CK(cudaMalloc((void **)&P->dev, P->L.alloc_bytes));
        CK(cudaMemcpy(P->dev, P->host, P->L.alloc_bytes, cudaMemcpyHostToDevice));
        for (int l = 0; l < 4; l++) {
                /* not powers of two: the division's rounding matters */
                P->ks[l] = 0.0371f * (l + 1);
                P->vs[l] = 0.293f / (l + 1);
        }
}

static void pool_fini(struct pool *P)
{
        free(P->host);
        cudaFree(P->dev);
}

static struct kv_pool_view view(struct pool *P, int dev)
{
        struct kv_pool_view v = { .base = dev ? (void *)P->dev : (void *)P->host, .layout = P->L,
                                  .k_scale = P->ks, .v_scale = P->vs };
        return v;
}

/* Compares the device pool with the host one; names the first difference. */
static int pool_same(struct pool *P, const char *what)
{
        uint8_t *g = malloc(P->L.alloc_bytes);
        int same = 1;

        CK(cudaMemcpy(g, P->dev, P->L.alloc_bytes, cudaMemcpyDeviceToHost));
        for (uint64_t i = 0; i < P->L.alloc_bytes; i++) {
                if (g[i] != P->host[i]) {
                        uint64_t l = i / P->L.layer_stride, o = i % P->L.layer_stride;
                        EXPECT(0, "%s: pool byte %llu differs (layer %llu, offset %llu in layer): gpu %02x cpu %02x",
                               what, (unsigned long long)i, (unsigned long long)l, (unsigned long long)o, g[i],
                               P->host[i]);
                        same = 0;
                        break;
                }
        }
        free(g);
        return same;
}

static void *to_dev(const void *h, size_t n, size_t misalign)
{
        uint8_t *d;

        CK(cudaMalloc((void **)&d, n + 16));
        CK(cudaMemcpy(d + misalign, h, n, cudaMemcpyHostToDevice));
        return d + misalign;
}

/* One write + gather case of T tokens into a pool of `pages` pages.
 * misalign: element offset of the device inputs from a 16-byte boundary
 * (forces the scalar load path); pad: extra elements per row. */
static void run_case_n(enum kvc_dtype d, uint32_t hd, enum kvc_elem e, int pad, int misalign, uint64_t seed,
                       uint32_t T, uint32_t pages)
{
        const uint32_t heads = hd == 256 ? 2 : 4, page = 16, layers = 3, layer = 1;
        struct pool P;
        struct rng r = { seed };
        char msg[256], what[128];
        const size_t es = elem_size(e);

        cases++;
        snprintf(what, sizeof what, "%s hd=%u elem=%d pad=%d misalign=%d T=%u", kvc_dtype_name(d), hd, (int)e, pad,
                 misalign, T);
        pool_init(&P, d, layers, heads, hd, page, pages, seed * 31 + 7);
        const int64_t row = (int64_t)heads * hd, stride = row + pad;
        const int64_t nslots = (int64_t)pages * page;

        /* slots: distinct, shuffled, about one in eight skipped */
        int64_t *slots = shuffled_range(&r, nslots);
        for (uint32_t t = 0; t < T; t++)
                if (rng_next(&r) % 8 == 0)
                        slots[t] = -1;

        float amp = (d == KVC_DTYPE_FP8_E4M3 || d == KVC_DTYPE_FP8_E5M2) ? 3.0f : 1.5f;
        void *k = make_input(&r, e, T, stride, amp, 1);
        void *v = make_input(&r, e, T, stride, amp * 0.5f, 1);
        size_t bytes = (size_t)T * stride * es;
        void *dk = to_dev(k, bytes, misalign * es), *dv = to_dev(v, bytes, 0);
        int64_t *dslots = to_dev(slots, sizeof(int64_t) * T, 0);

        struct kvc_write_args ha = { .k = k, .v = v, .elem = e, .k_row_stride = stride, .v_row_stride = stride,
                                     .slots = slots, .num_tokens = T, .layer = layer };
        struct kvc_write_args da = ha;
        da.k = dk;
        da.v = dv;
        da.slots = dslots;
        struct kv_pool_view hv = view(&P, 0), dvw = view(&P, 1);

        int rr = kv_ref_write(&hv, &ha, msg, sizeof msg);
        EXPECT(rr == 0, "%s: kv_ref_write: %d %s", what, rr, msg);
        int rg = kv_cuda_write(&dvw, &da, NULL, msg, sizeof msg);
        EXPECT(rg == 0, "%s: kv_cuda_write: %d %s", what, rg, msg);
        CK(cudaDeviceSynchronize());
        pool_same(&P, what);

        /* explicitly: the slots not written still hold the poison */
        {
                uint8_t *g = malloc(P.L.alloc_bytes), *poison = malloc(P.L.alloc_bytes);
                char *written = calloc(nslots, 1);
                CK(cudaMemcpy(g, P.dev, P.L.alloc_bytes, cudaMemcpyDeviceToHost));
                fill_poison(poison, P.L.alloc_bytes, seed * 31 + 7);
                for (uint32_t t = 0; t < T; t++)
                        if (slots[t] >= 0)
                                written[slots[t]] = 1;
                uint64_t kb = kv_layout_k(&P.L, layer), vb = kv_layout_v(&P.L, layer);
                int untouched = 1, changed = 0;
                for (int64_t s = 0; s < nslots; s++) {
                        uint64_t o = (uint64_t)(s / page) * P.L.page_bytes + (uint64_t)(s % page) * P.L.token_bytes;
                        int same_k = !memcmp(g + kb + o, poison + kb + o, P.L.token_bytes);
                        int same_v = !memcmp(g + vb + o, poison + vb + o, P.L.token_bytes);
                        if (!written[s] && (!same_k || !same_v))
                                untouched = 0;
                        if (written[s] && !same_k)
                                changed++;
                }
                EXPECT(untouched, "%s: a skipped (-1) or unused slot was modified", what);
                EXPECT(changed > (int)(T / 2), "%s: only %d written slots changed", what, changed);
                free(g);
                free(poison);
                free(written);
        }

        /* gather every page in a shuffled order, one twice */
        uint32_t np = pages + 1;
        int32_t *pl = malloc(sizeof(int32_t) * np);
        for (uint32_t i = 0; i < pages; i++)
                pl[i] = (int32_t)((i * 5 + 3) % pages);
        pl[pages] = pl[2];
        int32_t *dpl = to_dev(pl, sizeof(int32_t) * np, 0);
        for (int oe = 0; oe < 2; oe++) {
                enum kvc_elem ge = oe ? KVC_ELEM_BF16 : KVC_ELEM_F32;
                size_t ob = (size_t)np * page * row * elem_size(ge);
                uint8_t *hk = malloc(ob), *hvv = malloc(ob), *gk = malloc(ob), *gv = malloc(ob);
                void *dko, *dvo;
                CK(cudaMalloc(&dko, ob));
                CK(cudaMalloc(&dvo, ob));
                CK(cudaMemset(dko, 0xFF, ob)); /* poisoned: every element must be written */
                CK(cudaMemset(dvo, 0xFF, ob));
                struct kvc_gather_args hg = { .pages = pl, .n_pages = np, .layer = layer, .k_out = hk, .v_out = hvv,
                                              .elem = ge };
                struct kvc_gather_args dg = hg;
                dg.pages = dpl;
                dg.k_out = dko;
                dg.v_out = dvo;
                rr = kv_ref_gather(&hv, &hg, msg, sizeof msg);
                EXPECT(rr == 0, "%s: kv_ref_gather: %d %s", what, rr, msg);
                rg = kv_cuda_gather(&dvw, &dg, NULL, msg, sizeof msg);
                EXPECT(rg == 0, "%s: kv_cuda_gather: %d %s", what, rg, msg);
                CK(cudaDeviceSynchronize());
                CK(cudaMemcpy(gk, dko, ob, cudaMemcpyDeviceToHost));
                CK(cudaMemcpy(gv, dvo, ob, cudaMemcpyDeviceToHost));
                EXPECT(!memcmp(gk, hk, ob), "%s: gather k (%s out) differs from kv_ref_gather", what,
                       oe ? "bf16" : "f32");
                EXPECT(!memcmp(gv, hvv, ob), "%s: gather v (%s out) differs from kv_ref_gather", what,
                       oe ? "bf16" : "f32");
                free(hk);
                free(hvv);
                free(gk);
                free(gv);
                cudaFree(dko);
                cudaFree(dvo);
        }
        free(pl);
        cudaFree(dpl);
        free(slots);
        free(k);
        free(v);
        cudaFree((uint8_t *)dk - misalign * es);
        cudaFree(dv);
        cudaFree(dslots);
        pool_fini(&P);
}

static void run_case(enum kvc_dtype d, uint32_t hd, enum kvc_elem e, int pad, int misalign, uint64_t seed)
{
        run_case_n(d, hd, e, pad, misalign, seed, 61, 7);
}

/* Slots and page ids live on the device: out-of-range ones are skipped by
 * the kernel (write) or give zero rows (gather), never a fault. */
static void out_of_range_on_device(enum kvc_dtype d)
{
        struct pool P;
        struct rng r = { 99 + d };
        char msg[256];
        const uint32_t heads = 2, hd = 128, page = 16, pages = 4, T = 8;
        const int64_t row = heads * hd, nslots = pages * page;

        cases++;
        pool_init(&P, d, 2, heads, hd, page, pages, 1234 + d);
        int64_t dev_slots[8] = { 3, nslots, -2, 17, INT64_MIN, nslots + 1000, 40, -1 };
        int64_t ref_slots[8] = { 3, -1, -1, 17, -1, -1, 40, -1 };
        void *k = make_input(&r, KVC_ELEM_BF16, T, row, 1.0f, 0), *v = make_input(&r, KVC_ELEM_BF16, T, row, 1.0f, 0);
        void *dk = to_dev(k, T * row * 2, 0), *dv = to_dev(v, T * row * 2, 0);
        int64_t *ds = to_dev(dev_slots, sizeof dev_slots, 0);
        struct kvc_write_args ha = { .k = k, .v = v, .elem = KVC_ELEM_BF16, .k_row_stride = row, .v_row_stride = row,
                                     .slots = ref_slots, .num_tokens = T, .layer = 0 };
        struct kvc_write_args da = ha;
        da.k = dk;
        da.v = dv;
        da.slots = ds;
        struct kv_pool_view hv = view(&P, 0), dvw = view(&P, 1);
        EXPECT(kv_ref_write(&hv, &ha, msg, sizeof msg) == 0, "ref write: %s", msg);
        EXPECT(kv_cuda_write(&dvw, &da, NULL, msg, sizeof msg) == 0, "cuda write with bad slots: %s", msg);
        CK(cudaDeviceSynchronize());
        pool_same(&P, "out-of-range slots skipped");

        /* gather {1, -1, pages, 2}: rows of the bad ids are zeros */
        int32_t pl[4] = { 1, -1, (int32_t)pages, 2 }, good[2] = { 1, 2 };
        int32_t *dpl = to_dev(pl, sizeof pl, 0);
        size_t rows = (size_t)page * row, ob = 4 * rows * sizeof(float);
        float *ko = malloc(ob), *vo = malloc(ob), *rk = malloc(ob / 2), *rv = malloc(ob / 2);
        void *dko, *dvo;
        CK(cudaMalloc(&dko, ob));
        CK(cudaMalloc(&dvo, ob));
        CK(cudaMemset(dko, 0xFF, ob));
        CK(cudaMemset(dvo, 0xFF, ob));
        struct kvc_gather_args dg = { .pages = dpl, .n_pages = 4, .layer = 0, .k_out = dko, .v_out = dvo,
                                      .elem = KVC_ELEM_F32 };
        struct kvc_gather_args hg = { .pages = good, .n_pages = 2, .layer = 0, .k_out = rk, .v_out = rv,
                                      .elem = KVC_ELEM_F32 };
        EXPECT(kv_cuda_gather(&dvw, &dg, NULL, msg, sizeof msg) == 0, "cuda gather with bad pages: %s", msg);
        EXPECT(kv_ref_gather(&hv, &hg, msg, sizeof msg) == 0, "ref gather: %s", msg);
        CK(cudaDeviceSynchronize());
        CK(cudaMemcpy(ko, dko, ob, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(vo, dvo, ob, cudaMemcpyDeviceToHost));
        EXPECT(!memcmp(ko, rk, rows * 4) && !memcmp(ko + 3 * rows, rk + rows, rows * 4),
               "%s: gather of good pages next to bad ones differs", kvc_dtype_name(d));
        int zeros = 1;
        for (size_t i = rows; i < 3 * rows; i++)
                if (ko[i] != 0.0f || vo[i] != 0.0f || signbit(ko[i]))
                        zeros = 0;
        EXPECT(zeros, "%s: rows of out-of-range page ids are not zero", kvc_dtype_name(d));
        free(ko);
        free(vo);
        free(rk);
        free(rv);
        free(k);
        free(v);
        cudaFree(dko);
        cudaFree(dvo);
        cudaFree(dpl);
        cudaFree(dk);
        cudaFree(dv);
        cudaFree(ds);
        pool_fini(&P);
}

/* A bad argument: the expected errno, a message naming it, and no launch
 * (P's pool is unchanged).  P is NULL where pv is not a view of P's pool
 * (a shifted base, another geometry): there is nothing of P to compare. */
static void expect_write_err(struct pool *P, struct kv_pool_view *pv, struct kvc_write_args *a, int err,
                             const char *word, const char *what)
{
        char msg[256] = "";
        int r = kv_cuda_write(pv, a, NULL, msg, sizeof msg);

        EXPECT(r == err, "%s: kv_cuda_write returned %d, expected %d (%s)", what, r, err, msg);
        EXPECT(strstr(msg, word) != NULL, "%s: message \"%s\" does not name \"%s\"", what, msg, word);
        CK(cudaDeviceSynchronize());
        if (P)
                pool_same(P, what);
}

static void expect_gather_err(struct kv_pool_view *pv, struct kvc_gather_args *a, int err, const char *word,
                              const char *what)
{
        char msg[256] = "";
        int r = kv_cuda_gather(pv, a, NULL, msg, sizeof msg);

        EXPECT(r == err, "%s: kv_cuda_gather returned %d, expected %d (%s)", what, r, err, msg);
        EXPECT(strstr(msg, word) != NULL, "%s: message \"%s\" does not name \"%s\"", what, msg, word);
}

/* Where the arrays of a write and a gather live (kv_cuda_check_mem): host
 * memory the device cannot read (hk: the tokens, hs: the slots, both
 * malloc'ed) is refused before the launch, not an illegal address in the
 * kernel (a sticky error that ends the process's CUDA context); pinned host
 * memory is mapped into the device's address space and taken: a gather
 * through pinned page ids equals the same gather through device ones. */
static void where_arrays_live(struct pool *P, struct kv_pool_view *pv, const struct kvc_write_args *good,
                              const struct kvc_gather_args *gg, void *hk, int64_t *hs)
{
        struct kvc_write_args a;
        struct kvc_gather_args g;
        char want[160];
        int pageable = 0;

        CK(cudaDeviceGetAttribute(&pageable, cudaDevAttrPageableMemoryAccess, 0));
        if (!pageable) { /* else the device reads them: nothing to refuse */
                a = *good; a.slots = hs;
                snprintf(want, sizeof want, "slots %p is host memory, not device memory", (void *)hs);
                expect_write_err(P, pv, &a, -EINVAL, want, "host slots");
                a = *good; a.v = hk;
                snprintf(want, sizeof want, "v %p is host memory", hk);
                expect_write_err(P, pv, &a, -EINVAL, want, "host v");
                g = *gg; g.k_out = hk;
                snprintf(want, sizeof want, "k_out %p is host memory", hk);
                expect_gather_err(pv, &g, -EINVAL, want, "gather to host k_out");
        } else {
                printf("# the device reads pageable host memory: host arrays are not refused\n");
        }
        const size_t out_bytes = (size_t)P->L.g.page_size * P->L.g.kv_heads * P->L.g.head_dim * 4;
        int32_t *pinned;
        uint8_t *o1 = malloc(out_bytes), *o2 = malloc(out_bytes);
        CK(cudaMallocHost((void **)&pinned, sizeof(int32_t)));
        CK(cudaMemcpy(pinned, gg->pages, sizeof(int32_t), cudaMemcpyDeviceToHost));
        char msg[256] = "";
        CK(cudaMemset(gg->k_out, 0xAB, out_bytes));
        int r = kv_cuda_gather(pv, gg, NULL, msg, sizeof msg);
        EXPECT(r == 0, "gather through device page ids: %d %s", r, msg);
        CK(cudaDeviceSynchronize());
        CK(cudaMemcpy(o1, gg->k_out, out_bytes, cudaMemcpyDeviceToHost));
        CK(cudaMemset(gg->k_out, 0xAB, out_bytes));
        g = *gg; g.pages = pinned;
        r = kv_cuda_gather(pv, &g, NULL, msg, sizeof msg);
        EXPECT(r == 0, "gather through pinned host page ids: %d %s", r, msg);
        CK(cudaDeviceSynchronize());
        CK(cudaMemcpy(o2, gg->k_out, out_bytes, cudaMemcpyDeviceToHost));
        EXPECT(memcmp(o1, o2, out_bytes) == 0, "the gather through pinned page ids differs");
        CK(cudaFreeHost(pinned));
        free(o1);
        free(o2);
}

static void argument_errors(void)
{
        struct pool P;
        struct rng r = { 5 };
        const uint32_t heads = 2, hd = 128, T = 4;
        const int64_t row = heads * hd;

        cases++;
        pool_init(&P, KVC_DTYPE_FP8_E4M3, 2, heads, hd, 16, 4, 77);
        void *k = make_input(&r, KVC_ELEM_BF16, T, row, 1.0f, 0);
        void *dk = to_dev(k, T * row * 2, 0);
        int64_t slots[4] = { 0, 1, 2, 3 };
        int64_t *ds = to_dev(slots, sizeof slots, 0);
        struct kv_pool_view pv = view(&P, 1);
        const struct kvc_write_args good = { .k = dk, .v = dk, .elem = KVC_ELEM_BF16, .k_row_stride = row,
                                             .v_row_stride = row, .slots = ds, .num_tokens = T, .layer = 0 };
        struct kvc_write_args a;

        a = good; a.layer = 2;
        expect_write_err(&P, &pv, &a, -EINVAL, "layer", "layer out of range");
        a = good; a.elem = (enum kvc_elem)7;
        expect_write_err(&P, &pv, &a, -EINVAL, "elem", "unknown elem");
        a = good; a.k_row_stride = row - 1;
        expect_write_err(&P, &pv, &a, -EINVAL, "k_row_stride", "short k row stride");
        a = good; a.v_row_stride = 0;
        expect_write_err(&P, &pv, &a, -EINVAL, "v_row_stride", "zero v row stride");
        /* a stride whose last row overflows int64 byte offsets (the
         * kernel's t * stride * esz): refused as on the host backend */
        a = good; a.elem = KVC_ELEM_F32; a.k_row_stride = (int64_t)(UINT64_MAX / 4 / T);
        expect_write_err(&P, &pv, &a, -EINVAL, "overflow the address space", "k stride overflowing int64");
        a = good; a.v = NULL;
        expect_write_err(&P, &pv, &a, -EINVAL, "v", "NULL v");
        a = good; a.slots = NULL;
        expect_write_err(&P, &pv, &a, -EINVAL, "slots", "NULL slots");
        a = good; a.k = (const uint8_t *)dk + 1;
        expect_write_err(&P, &pv, &a, -EINVAL, "k", "k not element aligned");
        expect_write_err(&P, NULL, (struct kvc_write_args *)&good, -EINVAL, "pool", "NULL pool view");
        expect_write_err(&P, &pv, NULL, -EINVAL, "args", "NULL args");
        {
                struct kv_pool_view bad = pv;
                float zero[2] = { 0.0f, 0.0f }, nan2[2] = { NAN, NAN };
                bad.k_scale = zero;
                expect_write_err(&P, &bad, (struct kvc_write_args *)&good, -EINVAL, "k_scale", "zero k_scale");
                bad = pv;
                bad.v_scale = nan2;
                expect_write_err(&P, &bad, (struct kvc_write_args *)&good, -EINVAL, "v_scale", "NaN v_scale");
                bad = pv;
                bad.base = NULL;
                expect_write_err(&P, &bad, (struct kvc_write_args *)&good, -EINVAL, "pool", "NULL base");
                bad = pv;
                bad.base = (uint8_t *)pv.base + 8;
                expect_write_err(NULL, &bad, (struct kvc_write_args *)&good, -EINVAL, "not 16-byte aligned",
                                 "misaligned pool base");
        }
        {
                /* a geometry the host backend accepts but the CUDA kernels do not */
                struct kv_geom g = { .dtype = KVC_DTYPE_BF16, .num_layers = 1, .kv_heads = 1, .head_dim = 96,
                                     .page_size = 16 };
                struct kv_pool_view odd = pv;
                if (kv_layout_init(&g, 4, &odd.layout) == 0)
                        expect_write_err(NULL, &odd, (struct kvc_write_args *)&good, -EINVAL, "head_dim", "head_dim 96");
        }
        a = good; a.num_tokens = 0; a.k = NULL;
        {
                char msg[64];
                EXPECT(kv_cuda_write(&pv, &a, NULL, msg, sizeof msg) == 0, "T = 0 is a no-op: %s", msg);
        }

        int32_t pl[1] = { 0 };
        int32_t *dpl = to_dev(pl, sizeof pl, 0);
        void *out;
        CK(cudaMalloc(&out, 16 * row * 4));
        const struct kvc_gather_args gg = { .pages = dpl, .n_pages = 1, .layer = 0, .k_out = out, .v_out = out,
                                            .elem = KVC_ELEM_F32 };
        struct kvc_gather_args g;
        g = gg; g.elem = KVC_ELEM_F16;
        expect_gather_err(&pv, &g, -EINVAL, "elem", "gather to f16");
        g = gg; g.layer = 9;
        expect_gather_err(&pv, &g, -EINVAL, "layer", "gather layer out of range");
        {
                struct kv_pool_view mis = pv;
                mis.base = (uint8_t *)pv.base + 8;
                g = gg;
                expect_gather_err(&mis, &g, -EINVAL, "not 16-byte aligned", "gather from a misaligned pool base");
        }
        g = gg; g.k_out = NULL;
        expect_gather_err(&pv, &g, -EINVAL, "k_out", "gather NULL k_out");
        g = gg; g.pages = NULL;
        expect_gather_err(&pv, &g, -EINVAL, "pages", "gather NULL pages");
        g = gg; g.v_out = (uint8_t *)out + 4;
        expect_gather_err(&pv, &g, -EINVAL, "v_out", "gather v_out not 16-byte aligned");
        CK(cudaDeviceSynchronize());
        where_arrays_live(&P, &pv, &good, &gg, k, slots);

        cudaFree(out);
        cudaFree(dpl);
        cudaFree(dk);
        cudaFree(ds);
        free(k);
        pool_fini(&P);
}

int main(void)
{
        static const uint32_t hds[] = { 64, 128, 256 };
        uint64_t seed = 1;

        gpu_require_device("test_write_gather");
        EXPECT(kv_cuda_available() == 1, "kv_cuda_available() is not 1 on a machine with a device");
        for (int d = 0; d < KVC_DTYPE__COUNT; d++)
                for (int h = 0; h < 3; h++)
                        for (int e = 0; e < 3; e++) {
                                /* cover the 16-byte path, padded rows and the
                                 * misaligned scalar path across the cases */
                                int pad = (d + h + e) % 3 == 1 ? 8 : (d + h + e) % 3 == 2 ? 3 : 0;
                                int mis = (d + e) % 4 == 3 ? 1 : 0;
                                run_case((enum kvc_dtype)d, hds[h], (enum kvc_elem)e, pad, mis, seed++ * 0x9E3779B97F4A7C15ull);
                        }
        /* fp8 from 16-bit input runs K and V in separate threads up to
         * KV_WRITE_SPLIT8_T tokens and in one thread beyond: both ways */
        for (int d = KVC_DTYPE_FP8_E4M3; d <= KVC_DTYPE_FP8_E5M2; d++)
                for (int e = KVC_ELEM_BF16; e <= KVC_ELEM_F16; e++)
                        run_case_n((enum kvc_dtype)d, 128, (enum kvc_elem)e, 0, 0, seed++ * 0x9E3779B97F4A7C15ull,
                                   KV_WRITE_SPLIT8_T + 5, (KV_WRITE_SPLIT8_T + 5) / 16 + 40);
        for (int d = 0; d < KVC_DTYPE__COUNT; d++)
                out_of_range_on_device((enum kvc_dtype)d);
        argument_errors();
        printf("test_write_gather: %d cases, %d failures\n", cases, failures);
        return failures ? 1 : 0;
}
