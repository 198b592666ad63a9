/* test_ref_write.c - kv_ref_write / kv_ref_gather on a malloc'ed pool:
 * every dtype and head_dim 64/128/256, round-trip error within each format's
 * bound, bytes of skipped slots untouched, exact placement of the bytes, and
 * argument errors (which must leave the pool untouched). */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kv_codec.h"
#include "kv_ops.h"

#define POISON 0xA5
#define LAYERS 3

struct fixture {
        struct kv_pool_view view;
        uint8_t *mem;
        float ks[LAYERS], vs[LAYERS];
};

static void pool_new(struct fixture *f, enum kvc_dtype d, uint32_t heads, uint32_t D,
                     uint32_t page_size, uint32_t pages)
{
        struct kv_geom g = { .dtype = d, .num_layers = LAYERS, .kv_heads = heads,
                             .head_dim = D, .page_size = page_size };
        memset(f, 0, sizeof(*f));
        cr_assert_eq(kv_layout_init(&g, pages, &f->view.layout), 0);
        f->mem = aligned_alloc(KV_ARRAY_ALIGN, f->view.layout.alloc_bytes);
        cr_assert(f->mem);
        memset(f->mem, POISON, f->view.layout.alloc_bytes);
        for (int l = 0; l < LAYERS; l++)
                f->ks[l] = f->vs[l] = 1.0f;
        f->view.base = f->mem;
        f->view.k_scale = f->ks;
        f->view.v_scale = f->vs;
}

/* splitmix64 + Box-Muller: reproducible N(0,1) without libc rand state */
static uint64_t rng_state;
static double uniform(void)
{
        uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        return ((z >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}
static float normal(void)
{
        return (float)(sqrt(-2.0 * log(uniform())) * cos(6.283185307179586 * uniform()));
}

static const enum kvc_dtype all_dtypes[] = { KVC_DTYPE_BF16, KVC_DTYPE_FP16, KVC_DTYPE_FP8_E4M3,
                                             KVC_DTYPE_FP8_E5M2, KVC_DTYPE_FP4_E2M1 };

/* The smallest power of two s with 6 s >= amax (amax > 0). */
static float fp4_scale_of(const float *x)
{
        float amax = 0;
        for (int i = 0; i < 16; i++)
                amax = fmaxf(amax, fabsf(x[i]));
        if (amax == 0)
                return 1.0f;
        float s = ldexpf(1.0f, -130);
        while (6.0f * s < amax)
                s *= 2;
        return s;
}

/* |x - y| within the format's rounding bound (half a unit in the last place,
 * plus half the smallest subnormal step; fp4: a quarter of max(|x|, block scale)). */
static int within_bound(enum kvc_dtype d, float x, float y, float scale)
{
        double err = fabs((double)x - y), ax = fabs(x);
        switch (d) {
        case KVC_DTYPE_BF16:     return err <= ax * 0x1p-8;
        case KVC_DTYPE_FP16:     return err <= ax * 0x1p-11 + 0x1p-25;
        case KVC_DTYPE_FP8_E4M3: return err <= (ax * 0x1p-4 + 0x1p-10 * scale) * 1.000001;
        case KVC_DTYPE_FP8_E5M2: return err <= (ax * 0x1p-3 + 0x1p-17 * scale) * 1.000001;
        case KVC_DTYPE_FP4_E2M1: return err <= 0.25 * fmax(ax, scale) * 1.000001;
        default:                 return 0;
        }
}

/* Writes T tokens (every third one skipped with slot -1) at scattered slots
 * of one layer, gathers every page back, and checks values, bounds and that
 * no byte outside the written slots changed. */
static void round_trip(enum kvc_dtype d, uint32_t D)
{
        const uint32_t H = 2, P = 16, NP = 6, T = 40, layer = 1;
        struct fixture f;
        char msg[256] = "";

        rng_state = 1000u * d + D;
        pool_new(&f, d, H, D, P, NP);
        const struct kv_layout *L = &f.view.layout;
        const int64_t row = (int64_t)H * D, kstride = row + 8, vstride = row;
        float *k = calloc((size_t)T * kstride, sizeof(float)), *v = calloc((size_t)T * vstride, sizeof(float));
        int64_t slots[T];
        cr_assert(k && v);
        float kmax = 0, vmax = 0;
        for (uint32_t t = 0; t < T; t++) {
                for (int64_t i = 0; i < row; i++) {
                        /* V gets a 10x channel: fp4 blocks must cope with outliers */
                        k[t * kstride + i] = normal() * 3.0f;
                        v[t * vstride + i] = normal() * ((i % 37) == 5 ? 10.0f : 1.0f);
                        kmax = fmaxf(kmax, fabsf(k[t * kstride + i]));
                        vmax = fmaxf(vmax, fabsf(v[t * vstride + i]));
                }
                for (int64_t i = row; i < kstride; i++)
                        k[t * kstride + i] = NAN;       /* the gap between rows is never read */
                /* slot t*7 mod (NP*P): distinct since gcd(7, 96) = 1 */
                slots[t] = (t % 3 == 2) ? -1 : (int64_t)((t * 7u) % (NP * P));
        }
        if (d == KVC_DTYPE_FP8_E4M3 || d == KVC_DTYPE_FP8_E5M2) {
                float mx = d == KVC_DTYPE_FP8_E4M3 ? KV_E4M3_MAX : KV_E5M2_MAX;
                f.ks[layer] = kmax / mx;        /* per-tensor scale = amax / max */
                f.vs[layer] = vmax / mx;
        }
        struct kvc_write_args wa = { .k = k, .v = v, .elem = KVC_ELEM_F32, .k_row_stride = kstride,
                                     .v_row_stride = vstride, .slots = slots, .num_tokens = T,
                                     .layer = layer };
        cr_assert_eq(kv_ref_write(&f.view, &wa, msg, sizeof(msg)), 0, "%s", msg);

        /* bytes outside written slots are untouched: rebuild the expected
         * "owned" mask from the layout and compare with the poison */
        uint8_t *owned = calloc(L->alloc_bytes, 1);
        cr_assert(owned);
        for (uint32_t t = 0; t < T; t++) {
                if (slots[t] < 0)
                        continue;
                uint64_t pg = (uint64_t)slots[t] / P, off = (uint64_t)slots[t] % P;
                memset(owned + kv_layout_k(L, layer) + pg * L->page_bytes + off * L->token_bytes, 1, L->token_bytes);
                memset(owned + kv_layout_v(L, layer) + pg * L->page_bytes + off * L->token_bytes, 1, L->token_bytes);
                if (d == KVC_DTYPE_FP4_E2M1) {
                        uint64_t so = pg * L->scale_page_bytes + off * L->scale_token_bytes;
                        memset(owned + kv_layout_ks(L, layer) + so, 1, L->scale_token_bytes);
                        memset(owned + kv_layout_vs(L, layer) + so, 1, L->scale_token_bytes);
                }
        }
        uint64_t bad = 0;
        for (uint64_t i = 0; i < L->alloc_bytes; i++)
                bad += !owned[i] && f.mem[i] != POISON;
        cr_expect_eq(bad, 0, "%llu bytes outside the written slots changed", (unsigned long long)bad);
        free(owned);

        /* gather every page (in reverse order) and compare */
        int32_t pages[NP];
        for (uint32_t i = 0; i < NP; i++)
                pages[i] = (int32_t)(NP - 1 - i);
        size_t n_out = (size_t)NP * P * row;
        float *ko = malloc(n_out * sizeof(float)), *vo = malloc(n_out * sizeof(float));
        uint16_t *kb = malloc(n_out * 2), *vb = malloc(n_out * 2);
        struct kvc_gather_args ga = { .pages = pages, .n_pages = NP, .layer = layer, .k_out = ko,
                                      .v_out = vo, .elem = KVC_ELEM_F32 };
        cr_assert_eq(kv_ref_gather(&f.view, &ga, msg, sizeof(msg)), 0, "%s", msg);
        ga.k_out = kb;
        ga.v_out = vb;
        ga.elem = KVC_ELEM_BF16;
        cr_assert_eq(kv_ref_gather(&f.view, &ga, msg, sizeof(msg)), 0, "%s", msg);

        double se = 0, sx = 0;
        unsigned nbad = 0;
        for (uint32_t t = 0; t < T; t++) {
                if (slots[t] < 0)
                        continue;
                uint64_t pg = (uint64_t)slots[t] / P, off = (uint64_t)slots[t] % P;
                uint64_t tok = (NP - 1 - pg) * P + off;         /* its row in the gather output */
                for (int kvsel = 0; kvsel < 2; kvsel++) {
                        const float *src = kvsel ? v + t * vstride : k + t * kstride;
                        const float *out = (kvsel ? vo : ko) + tok * row;
                        const uint16_t *outb = (kvsel ? vb : kb) + tok * row;
                        float sc = kvsel ? f.vs[layer] : f.ks[layer];
                        for (int64_t i = 0; i < row; i++) {
                                float bound_scale = d == KVC_DTYPE_FP4_E2M1 ? fp4_scale_of(src + i / 16 * 16) : sc;
                                /* report the first few failures, count them all */
                                if (!within_bound(d, src[i], out[i], bound_scale) && nbad++ < 5)
                                        cr_expect_fail("%s D=%u t=%u i=%lld: %g -> %g out of bound",
                                                       kvc_dtype_name(d), D, t, (long long)i, src[i], out[i]);
                                if (outb[i] != kv_f32_to_bf16(out[i]) && nbad++ < 5)
                                        cr_expect_fail("%s D=%u: bf16 gather %#x != rounded f32 gather %g",
                                                       kvc_dtype_name(d), D, outb[i], out[i]);
                                se += ((double)src[i] - out[i]) * ((double)src[i] - out[i]);
                                sx += (double)src[i] * src[i];
                        }
                }
        }
        cr_expect_eq(nbad, 0, "%s D=%u: %u elements wrong", kvc_dtype_name(d), D, nbad);
        /* relative RMS error of the format (see docs/accuracy.md) */
        static const double max_rel[] = { 0.004, 0.0005, 0.04, 0.08, 0.2 };
        cr_expect(sqrt(se / sx) < max_rel[d], "%s: relative RMS error %g", kvc_dtype_name(d), sqrt(se / sx));
        free(k); free(v); free(ko); free(vo); free(kb); free(vb);
        free(f.mem);
}

Test(ref_write, round_trip_every_dtype_and_head_dim)
{
        static const uint32_t dims[] = { 64, 128, 256 };
        for (size_t i = 0; i < sizeof(all_dtypes) / sizeof(all_dtypes[0]); i++)
                for (size_t j = 0; j < 3; j++)
                        round_trip(all_dtypes[i], dims[j]);
}

/* The bytes land where the layout says, with the codec's exact bits. */
Test(ref_write, exact_bytes_at_layout_offsets)
{
        for (size_t di = 0; di < sizeof(all_dtypes) / sizeof(all_dtypes[0]); di++) {
                enum kvc_dtype d = all_dtypes[di];
                const uint32_t H = 4, D = 64, P = 8;
                struct fixture f;
                char msg[256];
                pool_new(&f, d, H, D, P, 3);
                const struct kv_layout *L = &f.view.layout;
                f.ks[2] = 0.037f;
                f.vs[2] = 0.011f;
                float k[4 * 64], v[4 * 64];
                for (int i = 0; i < 4 * 64; i++) {
                        k[i] = (float)(i % 29) * 0.31f - 4.0f;
                        v[i] = (float)(i % 13) * -0.17f + 1.0f;
                }
                int64_t slot = 2 * P + 5;       /* page 2, offset 5 */
                struct kvc_write_args wa = { .k = k, .v = v, .elem = KVC_ELEM_F32, .k_row_stride = H * D,
                                             .v_row_stride = H * D, .slots = &slot, .num_tokens = 1,
                                             .layer = 2 };
                cr_assert_eq(kv_ref_write(&f.view, &wa, msg, sizeof(msg)), 0, "%s", msg);
                for (uint32_t h = 0; h < H; h++) {
                        uint64_t o = 2 * L->page_bytes + 5 * L->token_bytes + h * L->head_bytes;
                        const uint8_t *kd = f.mem + kv_layout_k(L, 2) + o, *vd = f.mem + kv_layout_v(L, 2) + o;
                        for (uint32_t i = 0; i < D; i++) {
                                float kx = k[h * D + i], vx = v[h * D + i];
                                uint16_t a, b;
                                switch (d) {
                                case KVC_DTYPE_BF16:
                                case KVC_DTYPE_FP16:
                                        memcpy(&a, kd + 2 * i, 2);
                                        memcpy(&b, vd + 2 * i, 2);
                                        cr_expect_eq(a, d == KVC_DTYPE_BF16 ? kv_f32_to_bf16(kx) : kv_f32_to_f16(kx));
                                        cr_expect_eq(b, d == KVC_DTYPE_BF16 ? kv_f32_to_bf16(vx) : kv_f32_to_f16(vx));
                                        break;
                                case KVC_DTYPE_FP8_E4M3:
                                        cr_expect_eq(kd[i], kv_f32_to_e4m3(kx / 0.037f), "x / scale, a true division");
                                        cr_expect_eq(vd[i], kv_f32_to_e4m3(vx / 0.011f));
                                        break;
                                case KVC_DTYPE_FP8_E5M2:
                                        cr_expect_eq(kd[i], kv_f32_to_e5m2(kx / 0.037f));
                                        cr_expect_eq(vd[i], kv_f32_to_e5m2(vx / 0.011f));
                                        break;
                                default:
                                        break;
                                }
                        }
                        if (d == KVC_DTYPE_FP4_E2M1) {
                                uint64_t so = 2 * L->scale_page_bytes + 5 * L->scale_token_bytes + h * L->scale_head_bytes;
                                for (uint32_t b = 0; b < D / 16; b++) {
                                        uint8_t pk[8], ps, pv[8], pvs;
                                        kv_fp4_encode_block16(k + h * D + b * 16, pk, &ps);
                                        kv_fp4_encode_block16(v + h * D + b * 16, pv, &pvs);
                                        cr_expect_eq(memcmp(kd + b * 8, pk, 8), 0, "K head %u block %u", h, b);
                                        cr_expect_eq(memcmp(vd + b * 8, pv, 8), 0, "V head %u block %u", h, b);
                                        cr_expect_eq(f.mem[kv_layout_ks(L, 2) + so + b], ps);
                                        cr_expect_eq(f.mem[kv_layout_vs(L, 2) + so + b], pvs);
                                }
                        }
                }
                free(f.mem);
        }
}

/* bf16/f16 inputs into a pool of the same type are bit-exact passthrough. */
Test(ref_write, half_inputs_pass_through)
{
        for (int pass = 0; pass < 2; pass++) {
                enum kvc_dtype d = pass ? KVC_DTYPE_FP16 : KVC_DTYPE_BF16;
                enum kvc_elem e = pass ? KVC_ELEM_F16 : KVC_ELEM_BF16;
                struct fixture f;
                char msg[256];
                pool_new(&f, d, 1, 64, 4, 2);
                uint16_t k[3 * 64], v[3 * 64];
                for (int i = 0; i < 3 * 64; i++) {
                        k[i] = (uint16_t)(0x3C00 + i * 37);     /* finite in both formats */
                        v[i] = (uint16_t)(0xB800 + i * 11);
                }
                int64_t slots[3] = { 7, -1, 0 };
                struct kvc_write_args wa = { .k = k, .v = v, .elem = e, .k_row_stride = 64,
                                             .v_row_stride = 64, .slots = slots, .num_tokens = 3 };
                cr_assert_eq(kv_ref_write(&f.view, &wa, msg, sizeof(msg)), 0, "%s", msg);
                const struct kv_layout *L = &f.view.layout;
                cr_expect_eq(memcmp(f.mem + kv_layout_k(L, 0) + 7 * L->token_bytes, k, 128), 0);
                cr_expect_eq(memcmp(f.mem + kv_layout_v(L, 0) + 7 * L->token_bytes, v, 128), 0);
                cr_expect_eq(memcmp(f.mem + kv_layout_k(L, 0), k + 128, 128), 0);
                if (pass == 0) {
                        /* gather to BF16 from a bf16 pool returns the same bits */
                        uint16_t ko[8 * 64], vo[8 * 64];
                        int32_t pages[2] = { 1, 0 };
                        struct kvc_gather_args ga = { .pages = pages, .n_pages = 2, .k_out = ko,
                                                      .v_out = vo, .elem = KVC_ELEM_BF16 };
                        cr_assert_eq(kv_ref_gather(&f.view, &ga, msg, sizeof(msg)), 0, "%s", msg);
                        cr_expect_eq(memcmp(ko + 3 * 64, k, 128), 0, "slot 7 = page 1 offset 3");
                        cr_expect_eq(memcmp(ko + 4 * 64, k + 128, 128), 0, "slot 0 = page 0 offset 0");
                }
                free(f.mem);
        }
}

/* Each bad argument: the right errno, a message naming it, pool unchanged. */
static void expect_write_error(struct fixture *f, const struct kvc_write_args *wa, int err, const char *needle)
{
        char msg[256] = "";
        int r = kv_ref_write(&f->view, wa, msg, sizeof(msg));
        cr_expect_eq(r, err, "want %d got %d (%s)", err, r, msg);
        cr_expect(strstr(msg, needle), "message '%s' should name '%s'", msg, needle);
        for (uint64_t i = 0; i < f->view.layout.alloc_bytes; i++)
                if (f->mem[i] != POISON) {
                        cr_expect_fail("pool byte %llu changed by a failing write", (unsigned long long)i);
                        break;
                }
}

Test(ref_write, argument_errors)
{
        struct fixture f;
        pool_new(&f, KVC_DTYPE_FP8_E4M3, 2, 64, 16, 4);
        float k[3 * 128] = { 0 }, v[3 * 128] = { 0 };
        int64_t slots[3] = { 0, 1, 2 };
        struct kvc_write_args good = { .k = k, .v = v, .elem = KVC_ELEM_F32, .k_row_stride = 128,
                                       .v_row_stride = 128, .slots = slots, .num_tokens = 3, .layer = 0 };
        struct kvc_write_args wa;

        wa = good; wa.layer = LAYERS;
        expect_write_error(&f, &wa, -EINVAL, "layer 3");
        wa = good; wa.elem = (enum kvc_elem)7;
        expect_write_error(&f, &wa, -EINVAL, "elem: 7 is not F32, BF16 or F16");
        wa = good; wa.k_row_stride = 127;
        expect_write_error(&f, &wa, -EINVAL, "k_row_stride: 127 is less than kv_heads*head_dim = 128");
        wa = good; wa.v_row_stride = 0;
        expect_write_error(&f, &wa, -EINVAL, "v_row_stride: 0 is less than");
        /* a stride whose last row lies beyond the address space: refused (as
         * kv_cuda_write does), not dereferenced */
        wa = good; wa.k_row_stride = INT64_MAX;
        expect_write_error(&f, &wa, -EINVAL, "k_row_stride: 9223372036854775807 with 3 rows would overflow");
        wa = good; wa.v_row_stride = INT64_MAX / 2;
        expect_write_error(&f, &wa, -EINVAL, "v_row_stride: 4611686018427387903 with 3 rows would overflow");
        wa = good; wa.k = NULL;
        expect_write_error(&f, &wa, -EINVAL, "k: NULL with num_tokens 3");
        wa = good; wa.v = NULL;
        expect_write_error(&f, &wa, -EINVAL, "v: NULL with num_tokens 3");
        wa = good; wa.slots = NULL;
        expect_write_error(&f, &wa, -EINVAL, "slots: NULL with num_tokens 3");
        /* pointers the CUDA write refuses are refused here too (reading
         * them would be undefined behaviour) */
        wa = good; wa.k = (const char *)k + 2;
        expect_write_error(&f, &wa, -EINVAL, "k: pointer not aligned to its 4-byte element");
        wa = good; wa.slots = (const int64_t *)((const char *)slots + 4);
        expect_write_error(&f, &wa, -EINVAL, "slots: pointer not aligned to 8 bytes");
        /* a bad slot after good ones: nothing written at all */
        slots[2] = 4 * 16;
        expect_write_error(&f, &good, -ERANGE, "slots[2] = 64");
        slots[2] = -2;
        expect_write_error(&f, &good, -ERANGE, "slots[2] = -2");
        slots[2] = 2;
        f.ks[0] = 0.0f;
        expect_write_error(&f, &good, -EINVAL, "k_scale[0]");
        f.ks[0] = 1.0f;
        f.vs[0] = NAN;
        expect_write_error(&f, &good, -EINVAL, "v_scale[0]");
        f.vs[0] = 1.0f;
        f.view.v_scale = NULL;
        expect_write_error(&f, &good, -EINVAL, "v_scale");
        f.view.v_scale = f.vs;
        f.view.base = NULL;
        expect_write_error(&f, &good, -EINVAL, "base");
        f.view.base = f.mem;
        f.view.layout.g.head_dim = 72;
        expect_write_error(&f, &good, -EINVAL, "head_dim");
        f.view.layout.g.head_dim = 64;
        expect_write_error(&f, NULL, -EINVAL, "args: NULL write arguments");
        /* zero tokens is a no-op even with NULL pointers */
        wa = good; wa.num_tokens = 0; wa.k = wa.v = NULL; wa.slots = NULL;
        cr_expect_eq(kv_ref_write(&f.view, &wa, NULL, 0), 0);
        /* and the good call works (msg may be NULL) */
        cr_expect_eq(kv_ref_write(&f.view, &good, NULL, 0), 0);
        free(f.mem);
}

Test(ref_write, gather_argument_errors)
{
        struct fixture f;
        char msg[256];
        pool_new(&f, KVC_DTYPE_FP4_E2M1, 2, 64, 16, 4);
        _Alignas(16) float ko[2 * 16 * 128];
        _Alignas(16) float vo[2 * 16 * 128];
        int32_t pages[2] = { 3, 0 };
        struct kvc_gather_args good = { .pages = pages, .n_pages = 2, .layer = 2, .k_out = ko,
                                        .v_out = vo, .elem = KVC_ELEM_F32 };
        struct kvc_gather_args ga;

        cr_expect_eq(kv_ref_gather(&f.view, &good, msg, sizeof(msg)), 0, "%s", msg);
        pages[1] = 4;
        cr_expect_eq(kv_ref_gather(&f.view, &good, msg, sizeof(msg)), -ERANGE);
        cr_expect(strstr(msg, "pages[1] = 4"), "%s", msg);
        pages[1] = -1;
        cr_expect_eq(kv_ref_gather(&f.view, &good, msg, sizeof(msg)), -ERANGE);
        cr_expect(strstr(msg, "pages[1] = -1"), "%s", msg);
        pages[1] = 0;
        ga = good; ga.elem = KVC_ELEM_F16;
        cr_expect_eq(kv_ref_gather(&f.view, &ga, msg, sizeof(msg)), -EINVAL);
        cr_expect(strstr(msg, "elem: 2 is not F32 or BF16"), "%s", msg);
        ga = good; ga.k_out = ko + 1; /* the CUDA gather writes 16-byte vectors */
        cr_expect_eq(kv_ref_gather(&f.view, &ga, msg, sizeof(msg)), -EINVAL);
        cr_expect(strstr(msg, "k_out: pointer not 16-byte aligned"), "%s", msg);
        ga = good; ga.layer = 9;
        cr_expect_eq(kv_ref_gather(&f.view, &ga, msg, sizeof(msg)), -EINVAL);
        cr_expect(strstr(msg, "layer 9"), "%s", msg);
        ga = good; ga.v_out = NULL;
        cr_expect_eq(kv_ref_gather(&f.view, &ga, msg, sizeof(msg)), -EINVAL);
        cr_expect(strstr(msg, "v_out: NULL with n_pages 2"), "%s", msg);
        ga = good; ga.pages = NULL;
        cr_expect_eq(kv_ref_gather(&f.view, &ga, msg, sizeof(msg)), -EINVAL);
        cr_expect(strstr(msg, "pages: NULL with n_pages 2"), "%s", msg);
        ga = good; ga.pages = (const int32_t *)((const char *)pages + 2);
        cr_expect_eq(kv_ref_gather(&f.view, &ga, msg, sizeof(msg)), -EINVAL);
        cr_expect(strstr(msg, "pages: pointer not aligned to 4 bytes"), "%s", msg);
        cr_expect_eq(kv_ref_gather(&f.view, NULL, msg, sizeof(msg)), -EINVAL);
        cr_expect(strstr(msg, "args: NULL gather arguments"), "%s", msg);
        /* no pages is a no-op even with NULL pointers */
        ga = good; ga.n_pages = 0; ga.pages = NULL; ga.k_out = ga.v_out = NULL;
        cr_expect_eq(kv_ref_gather(&f.view, &ga, NULL, 0), 0);
        cr_expect_eq(kv_ref_gather(NULL, &good, msg, sizeof(msg)), -EINVAL);
        for (uint64_t i = 0; i < f.view.layout.alloc_bytes; i++)
                cr_assert_eq(f.mem[i], POISON, "gather never writes the pool");
        free(f.mem);
}
