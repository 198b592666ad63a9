/* gpu_common.h - helpers shared by the GPU tests (tests/gpu) and the write
 * benchmark (bench/write): device check with the exit-77 skip, a seeded PRNG,
 * check counting, CUDA call checking, and test data (random K/V with special
 * values, poisoned pools).  C and C++. */
#ifndef KV_GPU_COMMON_H
#define KV_GPU_COMMON_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cuda_runtime.h>

#include "kv_codec.h"
#include "kv_layout.h"
#include "kv_ops.h"

#define GPU_SKIP 77

/* Exits 77 (meson's "skipped") when there is no usable CUDA device. */
static inline void gpu_require_device(const char *prog)
{
        int n = 0;
        cudaError_t e = cudaGetDeviceCount(&n);

        if (e != cudaSuccess || n == 0) {
                printf("%s: no CUDA device (%s): skipped\n", prog,
                       e != cudaSuccess ? cudaGetErrorString(e) : "cudaGetDeviceCount says 0");
                exit(GPU_SKIP);
        }
}

/* Counts a failed check in the including file's `static int failures` and
 * prints it with its place; the test goes on, and fails at its end.
 * Flushed at once: a child process or a crash must not lose the line. */
#define EXPECT(cond, ...)                                                                          \
        do {                                                                                       \
                if (!(cond)) {                                                                     \
                        failures++;                                                                \
                        printf("FAIL %s:%d: ", __FILE__, __LINE__);                                \
                        printf(__VA_ARGS__);                                                       \
                        printf("\n");                                                              \
                        fflush(stdout);                                                            \
                }                                                                                  \
        } while (0)

/* Aborts the test with the failing call named: a CUDA runtime failure in a
 * test is a failure of the test, never something to skip. */
#define CK(call)                                                                                   \
        do {                                                                                       \
                cudaError_t e_ = (call);                                                           \
                if (e_ != cudaSuccess) {                                                           \
                        fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,              \
                                cudaGetErrorString(e_));                                           \
                        exit(1);                                                                   \
                }                                                                                  \
        } while (0)

/* xorshift64*: deterministic, so a child process regenerates a parent's data. */
struct rng { uint64_t s; };
static inline uint64_t rng_next(struct rng *r)
{
        r->s ^= r->s >> 12;
        r->s ^= r->s << 25;
        r->s ^= r->s >> 27;
        return r->s * 0x2545F4914F6CDD1Dull;
}
static inline double rng_unit(struct rng *r) { return (rng_next(r) >> 11) * (1.0 / 9007199254740992.0); }
static inline float rng_normal(struct rng *r)
{
        double u = rng_unit(r), v = rng_unit(r);
        return (float)(sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v));
}

static inline size_t elem_size(enum kvc_elem e) { return e == KVC_ELEM_F32 ? 4 : 2; }

/* Stores x as element i of buf in element type e (bf16/f16 via the codec). */
static inline void put_elem(void *buf, enum kvc_elem e, size_t i, float x)
{
        if (e == KVC_ELEM_F32)
                ((float *)buf)[i] = x;
        else if (e == KVC_ELEM_BF16)
                ((uint16_t *)buf)[i] = kv_f32_to_bf16(x);
        else
                ((uint16_t *)buf)[i] = kv_f32_to_f16(x);
}

/* A random K or V tensor [T, row_stride] of element type e: normal values
 * times amp, some 16-element blocks with outliers, and (specials != 0) a
 * sprinkle of NaN, +-Inf, huge, tiny and signed zeros so the bit-exactness
 * covers the edge rules too.  The padding past each row is random as well. */
static inline void *make_input(struct rng *r, enum kvc_elem e, uint32_t T, int64_t row_stride, float amp,
                               int specials)
{
        static const float sp[] = { NAN, -NAN, INFINITY, -INFINITY, 1e30f, -3e38f, 1e-30f, -1e-40f,
                                    0.0f, -0.0f, 65504.0f, 70000.0f, -448.0f, 1e-7f };
        size_t n = (size_t)T * row_stride;
        void *buf = malloc(n * elem_size(e) + 16);

        for (size_t i = 0; i < n; i++) {
                float x = rng_normal(r) * amp;
                if ((i / 16) % 7 == 3 && i % 16 == 5)
                        x *= 40.0f; /* an outlier channel in some blocks */
                if (specials && rng_next(r) % 997 == 0)
                        x = sp[rng_next(r) % (sizeof sp / sizeof sp[0])];
                put_elem(buf, e, i, x);
        }
        return buf;
}

/* 0 .. n-1 in a random order (Fisher-Yates, one rng_next per step), malloc'd. */
static inline int64_t *shuffled_range(struct rng *r, int64_t n)
{
        int64_t *a = (int64_t *)malloc(sizeof(int64_t) * (n > 0 ? n : 1));
        for (int64_t i = 0; i < n; i++)
                a[i] = i;
        for (int64_t i = n - 1; i > 0; i--) {
                int64_t j = (int64_t)(rng_next(r) % (uint64_t)(i + 1)), t = a[i];
                a[i] = a[j];
                a[j] = t;
        }
        return a;
}

static inline void fill_poison(uint8_t *p, size_t n, uint64_t seed)
{
        struct rng r = { seed | 1 };
        for (size_t i = 0; i < n; i += 8) {
                uint64_t v = rng_next(&r);
                memcpy(p + i, &v, n - i < 8 ? n - i : 8);
        }
}

#endif
