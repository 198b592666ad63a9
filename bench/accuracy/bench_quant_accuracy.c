/* bench_quant_accuracy.c - how much each pool dtype loses.
 *
 * For each dtype, writes a K tensor [tokens, kv_heads, head_dim] into a host
 * pool through the CPU reference write (kv_ref_write), gathers it back as
 * fp32 (kv_ref_gather), and prints the relative RMS error
 * ||x - x'|| / ||x||, the cosine similarity over the whole tensor, and the
 * mean and minimum cosine over the head vectors (head_dim elements each,
 * what attention's dot products see).  Three kinds of data:
 *   normal    N(0, 1)
 *   student3  Student-t with 3 degrees of freedom (heavy tails)
 *   outlier   N(0, 1) with 4 of every head's 128 channels scaled x20, the
 *             same channels for every token (as real K caches have)
 * Scale rules: fp8 per-tensor scale = amax / max (448 for e4m3, 57344 for
 * e5m2), i.e. the largest element maps to the format's max; fp4 one E8M0
 * power-of-two scale per 16 elements, 2^ceil(log2(amax_block / 6)).
 *
 * Usage: bench_quant_accuracy [--tokens N] [--heads H] [--head-dim D] [--seed S]
 * Prints a Markdown table.  Deterministic for a given seed.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_ops.h"

static uint64_t rng_state;

/* splitmix64: small, fast, good enough for test data, same on every libc */
static uint64_t next_u64(void)
{
        uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
}

static double uniform01(void)   /* (0, 1) */
{
        return ((next_u64() >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static double normal(void)
{
        return sqrt(-2.0 * log(uniform01())) * cos(6.283185307179586 * uniform01());
}

static double student3(void)
{
        double z = normal(), v = 0;
        for (int i = 0; i < 3; i++) {
                double n = normal();
                v += n * n;
        }
        return z / sqrt(v / 3.0);
}

enum dist { NORMAL, STUDENT3, OUTLIER, NDIST };
static const char *const dist_name[NDIST] = { "normal", "student3", "outlier" };

static void fill(float *x, enum dist d, uint32_t T, uint32_t H, uint32_t D)
{
        /* outlier channels: 4 per head (per 128 channels), fixed over tokens */
        uint32_t nout = D / 32 ? D / 32 : 1;
        uint8_t *hot = calloc((size_t)H * D, 1);
        for (uint32_t h = 0; h < H && hot; h++)
                for (uint32_t k = 0; k < nout; k++)
                        hot[h * D + next_u64() % D] = 1;
        for (uint64_t t = 0; t < T; t++)
                for (uint32_t i = 0; i < H * D; i++) {
                        double v = d == STUDENT3 ? student3() : normal();
                        if (d == OUTLIER && hot && hot[i])
                                v *= 20.0;
                        x[t * H * D + i] = (float)v;
                }
        free(hot);
}

struct result { double rel_rms, cos, cos_mean, cos_min; };

static void compare(const float *x, const float *y, uint64_t nvec, uint32_t D, struct result *r)
{
        double se = 0, sx = 0, sy = 0, sxy = 0, csum = 0, cmin = 2;
        for (uint64_t v = 0; v < nvec; v++) {
                double vx = 0, vy = 0, vxy = 0;
                for (uint32_t i = 0; i < D; i++) {
                        double a = x[v * D + i], b = y[v * D + i];
                        se += (a - b) * (a - b);
                        vx += a * a;
                        vy += b * b;
                        vxy += a * b;
                }
                sx += vx;
                sy += vy;
                sxy += vxy;
                double c = (vx > 0 && vy > 0) ? vxy / sqrt(vx * vy) : (vx == vy ? 1.0 : 0.0);
                csum += c;
                cmin = c < cmin ? c : cmin;
        }
        r->rel_rms = sqrt(se / sx);
        r->cos = sxy / sqrt(sx * sy);
        r->cos_mean = csum / (double)nvec;
        r->cos_min = cmin;
}

/* Round trip of x through a one-layer pool of dtype d; y gets the gather. */
static int round_trip(enum kvc_dtype d, const float *x, float *y, uint32_t T, uint32_t H, uint32_t D)
{
        const uint32_t P = 16;
        struct kv_geom g = { .dtype = d, .num_layers = 1, .kv_heads = H, .head_dim = D, .page_size = P };
        struct kv_pool_view pv;
        char msg[256] = "";
        int r;

        memset(&pv, 0, sizeof(pv));
        if ((r = kv_layout_init(&g, T / P, &pv.layout)) < 0)
                return r;
        pv.base = malloc(pv.layout.alloc_bytes);
        int64_t *slots = malloc(sizeof(int64_t) * T);
        int32_t *pages = malloc(sizeof(int32_t) * (T / P));
        if (!pv.base || !slots || !pages) {
                r = -ENOMEM;
                goto out;
        }
        float amax = 0, scale = 1.0f;
        for (uint64_t i = 0; i < (uint64_t)T * H * D; i++)
                amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
        if (d == KVC_DTYPE_FP8_E4M3)
                scale = amax / 448.0f;
        else if (d == KVC_DTYPE_FP8_E5M2)
                scale = amax / 57344.0f;
        pv.k_scale = &scale;
        pv.v_scale = &scale;
        for (uint32_t t = 0; t < T; t++)
                slots[t] = t;
        for (uint32_t p = 0; p < T / P; p++)
                pages[p] = (int32_t)p;
        struct kvc_write_args wa = { .k = x, .v = x, .elem = KVC_ELEM_F32, .k_row_stride = (int64_t)H * D,
                                     .v_row_stride = (int64_t)H * D, .slots = slots, .num_tokens = T };
        struct kvc_gather_args ga = { .pages = pages, .n_pages = T / P, .k_out = y, .v_out = y,
                                      .elem = KVC_ELEM_F32 };
        if ((r = kv_ref_write(&pv, &wa, msg, sizeof(msg))) < 0 ||
            (r = kv_ref_gather(&pv, &ga, msg, sizeof(msg))) < 0)
                fprintf(stderr, "bench_quant_accuracy: %s\n", msg);
out:
        free(pv.base);
        free(slots);
        free(pages);
        return r;
}

static int parse_u32(const char *s, uint32_t *ret)
{
        char *end;
        errno = 0;
        unsigned long v = strtoul(s, &end, 10);
        if (errno || *end || end == s || v == 0 || v > 1u << 24)
                return -EINVAL;
        *ret = (uint32_t)v;
        return 0;
}

int main(int argc, char **argv)
{
        uint32_t T = 4096, H = 8, D = 128, seed = 1;

        for (int i = 1; i < argc; i++) {
                uint32_t *dst = !strcmp(argv[i], "--tokens") ? &T : !strcmp(argv[i], "--heads") ? &H :
                                !strcmp(argv[i], "--head-dim") ? &D : !strcmp(argv[i], "--seed") ? &seed : NULL;
                if (!dst || i + 1 >= argc || parse_u32(argv[++i], dst) < 0) {
                        fprintf(stderr, "usage: %s [--tokens N (multiple of 16)] [--heads H] [--head-dim D] [--seed S]\n"
                                "bad or incomplete argument: %s\n", argv[0], argv[i]);
                        return 2;
                }
        }
        if (T % 16) {
                fprintf(stderr, "bench_quant_accuracy: --tokens %u is not a multiple of the page size 16\n", T);
                return 2;
        }
        uint64_t n = (uint64_t)T * H * D;
        float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
        if (!x || !y) {
                fprintf(stderr, "bench_quant_accuracy: out of memory for %llu elements\n", (unsigned long long)n);
                return 1;
        }
        printf("tokens %u, kv_heads %u, head_dim %u, seed %u; fp8: per-tensor scale = amax/max; "
               "fp4: E8M0 scale per 16 elements = 2^ceil(log2(amax/6))\n\n", T, H, D, seed);
        printf("| data | dtype | rel. RMS error | cosine (tensor) | cosine (mean/head vec) | cosine (min/head vec) |\n");
        printf("| --- | --- | ---: | ---: | ---: | ---: |\n");
        for (int di = 0; di < NDIST; di++) {
                rng_state = seed * 1000003ull + (uint64_t)di;
                fill(x, (enum dist)di, T, H, D);
                for (int d = 0; d < KVC_DTYPE__COUNT; d++) {
                        struct result r;
                        int e = round_trip((enum kvc_dtype)d, x, y, T, H, D);
                        if (e < 0) {
                                fprintf(stderr, "bench_quant_accuracy: %s failed: %s\n",
                                        kvc_dtype_name((enum kvc_dtype)d), strerror(-e));
                                return 1;
                        }
                        compare(x, y, (uint64_t)T * H, D, &r);
                        printf("| %s | %s | %.2f%% | %.6f | %.6f | %.6f |\n", dist_name[di],
                               kvc_dtype_name((enum kvc_dtype)d), 100.0 * r.rel_rms, r.cos, r.cos_mean, r.cos_min);
                }
        }
        free(x);
        free(y);
        return 0;
}
