/* test_conv_exhaustive.cu - proves the device conversions of the write and
 * gather kernels equal the codec of kernels/kv_codec.h (suite 'gpu'; exits 77
 * without a CUDA device).
 *
 * kv_cuda_common.cuh swaps some codec functions for hardware instructions
 * (fp8 and f16 cvt, a magic-add e2m1 encoder, a short fp4 block path);
 * kv_codec.h allows that only where proven equal.  This test is the proof:
 * each replacement runs next to the codec function on the device over EVERY
 * input (all 2^32 float bit patterns, all 2^16 halves, all of [0, 6] for the
 * e2m1 encoder, whose caller never passes more), plus 2^24 random fp4
 * blocks with outliers and specials, the fp4 block encoders of bf16 input
 * (bf16x2, fp4_block16_bf) and f16 input (f16x2, fp4_block16_f16) on every
 * 16-bit input value at every block position against every scale class that
 * matters, and the IEEE division used for fp8 is
 * checked against a division in double rounded once to float (exact for
 * float operands).  Also the attention kernels' e4m3 pair decode
 * (kv_attn_deq.cuh), the low pair of a word and the high pair read in
 * place, on every 32-bit word, and its fp4 unpack of a word into four
 * bf16x2 pairs (fp4quad) on every word.  Any difference is a failure, with
 * the first inputs. */
#include <stdio.h>
#include <stdlib.h>
#include "kv_cuda_common.cuh"
#include "kv_write.cuh"
#include "kv_attn_deq.cuh"

#include "gpu_common.h"
#include "fp4h_cases.h" /* mix, fp4h_case: shared with tests/codec/test_fp4_block_host.cu */

struct mism {
        unsigned long long count;
        uint32_t first[4];
};

__device__ void record(mism *m, uint32_t in)
{
        unsigned long long i = atomicAdd(&m->count, 1ull);
        if (i < 4)
                m->first[i] = in;
}

/* lane-1 input: a bijection of u, so a full sweep covers every value in both
 * lanes of the x2 conversions */
__device__ __forceinline__ uint32_t other(uint32_t u) { return u * 2654435761u + 0x9E3779B9u; }

template <int D>
__global__ void sweep_fp8(mism *m)
{
        for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < (1ull << 32);
             i += (uint64_t)gridDim.x * blockDim.x) {
                uint32_t u = (uint32_t)i, w = other(u);
                float x = __uint_as_float(u), y = __uint_as_float(w);
                uint32_t got = kvk::f32x2_to_fp8x2<D>(x, y);
                uint32_t a = D == KVC_DTYPE_FP8_E4M3 ? kv_f32_to_e4m3(x) : kv_f32_to_e5m2(x);
                uint32_t b = D == KVC_DTYPE_FP8_E4M3 ? kv_f32_to_e4m3(y) : kv_f32_to_e5m2(y);
                if (got != (a | b << 8))
                        record(m, u);
        }
}

__global__ void sweep_f16(mism *m)
{
        for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < (1ull << 32);
             i += (uint64_t)gridDim.x * blockDim.x) {
                uint32_t u = (uint32_t)i, w = other(u);
                float x = __uint_as_float(u), y = __uint_as_float(w);
                uint32_t got = kvk::f32x2_to_f16x2(x, y);
                uint32_t want = (uint32_t)kv_f32_to_f16(x) | (uint32_t)kv_f32_to_f16(y) << 16;
                if (got != want)
                        record(m, u);
        }
}

/* the short fp4 path's element encoder, over its whole domain [0, 6] */
__global__ void sweep_e2m1(mism *m)
{
        const uint64_t n = 0x40C00000ull + 1; /* every float pattern from +0 to 6.0 */
        for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n;
             i += (uint64_t)gridDim.x * blockDim.x) {
                uint32_t u = (uint32_t)i;
                float x = __uint_as_float(u);
                if (kvk::e2m1_mag(x) != kv_f32_to_e2m1(x))
                        record(m, u);
        }
}

/* what the write kernel computes for fp8: division + conversion of a pair */
template <int D>
__global__ void sweep_fp8_div(mism *m, float s)
{
        for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < (1ull << 32);
             i += (uint64_t)gridDim.x * blockDim.x) {
                uint32_t u = (uint32_t)i, w = other(u);
                float x = __uint_as_float(u), y = __uint_as_float(w);
                uint32_t got = kvk::fp8x2_div<D>(x, y, s);
                uint32_t want = kvk::fp8_codec<D>(kvk::div_like_host(x, s)) |
                                kvk::fp8_codec<D>(kvk::div_like_host(y, s)) << 8;
                if (got != want)
                        record(m, u);
        }
}

__global__ void sweep_f16_to_f32(mism *m)
{
        uint32_t h = blockIdx.x * blockDim.x + threadIdx.x;
        if (h < 65536u && __float_as_uint(kvk::f16_to_f32(h)) != __float_as_uint(kv_f16_to_f32((uint16_t)h)))
                record(m, h);
}

/* x / s as the write kernel computes it vs the correctly rounded quotient
 * (double division of two floats rounded to float is correctly rounded:
 * 53 >= 2*24 + 2).  NaN inputs are kept as they are by both. */
__global__ void sweep_div(mism *m, float s)
{
        for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < (1ull << 32);
             i += (uint64_t)gridDim.x * blockDim.x) {
                uint32_t u = (uint32_t)i;
                float x = __uint_as_float(u);
                float got = kvk::div_like_host(x, s);
                float want = isnan(x) ? x : (float)((double)x / (double)s);
                if (__float_as_uint(got) != __float_as_uint(want))
                        record(m, u);
        }
}

/* the write kernel's fp8 path with its fallback, as convert_chunk composes
 * them, vs the codec on the host's division; hard counts the fallbacks */
template <int D>
__global__ void sweep_fp8_fast(mism *m, float s, float r, unsigned long long *hard_count)
{
        unsigned long long hard_local = 0;
        for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < (1ull << 32);
             i += (uint64_t)gridDim.x * blockDim.x) {
                uint32_t u = (uint32_t)i, w = other(u);
                float x = __uint_as_float(u), y = __uint_as_float(w);
                bool hard = false;
                uint32_t got = kvk::fp8x2_div_fast<D>(x, y, s, r, hard);
                if (hard) {
                        got = kvk::fp8x2_div<D>(x, y, s);
                        hard_local++;
                }
                uint32_t want = kvk::fp8_codec<D>(kvk::div_like_host(x, s)) |
                                kvk::fp8_codec<D>(kvk::div_like_host(y, s)) << 8;
                if (got != want)
                        record(m, u);
        }
        atomicAdd(hard_count, hard_local);
}

/* Random blocks: a random binade per block (2^-140 .. 2^+120), random signs
 * and mantissas, some exact e2m1 midpoints times the block scale, and now
 * and then NaN, Inf, zero or a subnormal. */
__global__ void random_blocks(mism *m, uint64_t n)
{
        for (uint64_t b = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; b < n; b += (uint64_t)gridDim.x * blockDim.x) {
                float x[16];
                uint64_t h = mix(b);
                int binade = (int)(h % 261) - 140;
                for (int i = 0; i < 16; i++) {
                        uint64_t r = mix(h + i + 1);
                        uint32_t e = (uint32_t)max(1, min(254, binade + 127 + (int)(r % 3)));
                        uint32_t u = (uint32_t)(r >> 32) & 0x807FFFFFu;
                        u |= e << 23;
                        switch ((r >> 8) % 64) {
                        case 0: u = 0x7FC00000u | (uint32_t)(r & 0x80000000u); break;          /* NaN */
                        case 1: u = 0x7F800000u | (uint32_t)(r & 0x80000000u); break;          /* Inf */
                        case 2: u = (uint32_t)(r & 0x80000000u); break;                        /* +-0 */
                        case 3: u = (uint32_t)(r >> 40) & 0x807FFFFFu; break;                  /* subnormal */
                        case 4: case 5: case 6:                                                /* midpoint */
                                u = (((uint32_t)(binade + 127 > 3 && binade + 127 < 250 ? binade + 127 : 127)) << 23) |
                                    (((r >> 20) & 1) ? 0x400000u : 0u) | ((uint32_t)r & 0x80000000u);
                                break;
                        default: break;
                        }
                        x[i] = __uint_as_float(u);
                }
                uint32_t w0, w1, s;
                uint8_t p[8], s2;
                kvk::fp4_block16(x, w0, w1, s);
                kv_fp4_encode_block16(x, p, &s2);
                uint32_t r0 = p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
                uint32_t r1 = p[4] | p[5] << 8 | p[6] << 16 | (uint32_t)p[7] << 24;
                if (w0 != r0 || w1 != r1 || s != s2)
                        record(m, (uint32_t)b);
        }
}

/* every (v, p, c): 2^16 * 16 * FP4H_C cases; the recorded input is
 * v | p << 16 | c << 20 */
template <int E>
__global__ void sweep_fp4h(mism *m)
{
        const uint64_t n = 65536ull * 16 * FP4H_C;
        for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n;
             i += (uint64_t)gridDim.x * blockDim.x) {
                const uint32_t v = (uint32_t)(i & 0xFFFF), p = (uint32_t)(i >> 16) & 15, c = (uint32_t)(i >> 20);
                if (!fp4h_case<E>(v, p, c))
                        record(m, v | p << 16 | c << 20);
        }
}

/* One f16 half of the attention kernels' e4m3 decode vs the codec: the
 * f16 of the byte's value (exact: e4m3 values are f16 values), any NaN for
 * the NaN codes. */
__device__ __forceinline__ bool e4m3_half_ok(uint32_t half, uint8_t c)
{
        const float f = kv_e4m3_to_f32(c);
        if (f != f)
                return (half & 0x7C00u) == 0x7C00u && (half & 0x3FFu) != 0;
        return half == kv_f32_to_f16(f);
}

/* e4m3x2_f16x2 (bytes 0, 1 of x) and e4m3x2_f16x2_hi (bytes 2, 3, the
 * high half read in place) over every word x */
__global__ void sweep_e4m3_deq(mism *m)
{
        for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < (1ull << 32);
             i += (uint64_t)gridDim.x * blockDim.x) {
                const uint32_t x = (uint32_t)i;
                const uint32_t lo = kva::e4m3x2_f16x2(x), hi = kva::e4m3x2_f16x2_hi(x);
                if (!e4m3_half_ok(lo & 0xFFFFu, (uint8_t)x) || !e4m3_half_ok(lo >> 16, (uint8_t)(x >> 8)) ||
                    !e4m3_half_ok(hi & 0xFFFFu, (uint8_t)(x >> 16)) || !e4m3_half_ok(hi >> 16, (uint8_t)(x >> 24)))
                        record(m, x);
        }
}

/* fp4quad: the four bf16x2 pairs of a word (nibbles P and P+4 -> pair P),
 * each half value * 2^-126 of the codec's e2m1 decode (as test_fp4_unpack
 * checks on the CPU, here with the device's shifts and LOP3) over every
 * word x */
__device__ __forceinline__ uint32_t e2m1_bf16_scaled(uint32_t nibble)
{
        return __float_as_uint(kv_e2m1_to_f32((uint8_t)nibble) * 0x1p-126f) >> 16;
}

__global__ void sweep_fp4quad(mism *m)
{
        for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < (1ull << 32);
             i += (uint64_t)gridDim.x * blockDim.x) {
                const uint32_t x = (uint32_t)i;
                uint32_t q[4];
                kva::fp4quad(x, q);
                bool ok = true;
                for (int p = 0; p < 4; p++)
                        ok = ok && q[p] == (e2m1_bf16_scaled((x >> (4 * p)) & 0xFu) |
                                            e2m1_bf16_scaled((x >> (16 + 4 * p)) & 0xFu) << 16);
                if (!ok)
                        record(m, x);
        }
}

static int run(const char *name, void (*launch)(mism *), mism *dm)
{
        mism h;

        CK(cudaMemset(dm, 0, sizeof *dm));
        launch(dm);
        CK(cudaGetLastError());
        CK(cudaDeviceSynchronize());
        CK(cudaMemcpy(&h, dm, sizeof h, cudaMemcpyDeviceToHost));
        if (h.count) {
                printf("FAIL %s: %llu inputs differ from the codec, first:", name, h.count);
                for (unsigned i = 0; i < 4 && i < h.count; i++)
                        printf(" 0x%08x", h.first[i]);
                printf("\n");
                return 1;
        }
        printf("ok   %s: no difference on any input\n", name);
        return 0;
}

static const unsigned G = 132 * 16, B = 256;
static void l_e4m3(mism *m) { sweep_fp8<KVC_DTYPE_FP8_E4M3><<<G, B>>>(m); }
static void l_e5m2(mism *m) { sweep_fp8<KVC_DTYPE_FP8_E5M2><<<G, B>>>(m); }
static void l_f16(mism *m) { sweep_f16<<<G, B>>>(m); }
static void l_e2m1(mism *m) { sweep_e2m1<<<G, B>>>(m); }
static void l_e4m3d(mism *m) { sweep_fp8_div<KVC_DTYPE_FP8_E4M3><<<G, B>>>(m, 0.0371f); }
static void l_e5m2d(mism *m) { sweep_fp8_div<KVC_DTYPE_FP8_E5M2><<<G, B>>>(m, 0.293f); }
static void l_h2f(mism *m) { sweep_f16_to_f32<<<256, 256>>>(m); }
static void l_div1(mism *m) { sweep_div<<<G, B>>>(m, 0.0371f); }
static void l_div2(mism *m) { sweep_div<<<G, B>>>(m, 0.293f); }
static void l_div3(mism *m) { sweep_div<<<G, B>>>(m, 3.0e-5f); }
static void l_fp4(mism *m) { random_blocks<<<G, B>>>(m, 1ull << 24); }
static void l_fp4bf(mism *m) { sweep_fp4h<KVC_ELEM_BF16><<<G, B>>>(m); }
static void l_fp4hf(mism *m) { sweep_fp4h<KVC_ELEM_F16><<<G, B>>>(m); }
static void l_e4deq(mism *m) { sweep_e4m3_deq<<<G, B>>>(m); }
static void l_fp4q(mism *m) { sweep_fp4quad<<<G, B>>>(m); }

int main(void)
{
        mism *dm;
        int f = 0;

        gpu_require_device("test_conv_exhaustive");
        CK(cudaMalloc(&dm, sizeof *dm));
        f += run("f32x2 -> e4m3x2 (cvt.rn.satfinite) vs kv_f32_to_e4m3, all 2^32", l_e4m3, dm);
        f += run("f32x2 -> e5m2x2 (cvt.rn.satfinite) vs kv_f32_to_e5m2, all 2^32", l_e5m2, dm);
        f += run("f32x2 -> f16x2 (cvt.rn) vs kv_f32_to_f16, all 2^32", l_f16, dm);
        f += run("|y| -> e2m1 (magic add) vs kv_f32_to_e2m1, all of [0, 6]", l_e2m1, dm);
        f += run("e4m3x2(x / 0.0371) fused vs codec(x / 0.0371), all 2^32", l_e4m3d, dm);
        f += run("e5m2x2(x / 0.293) fused vs codec(x / 0.293), all 2^32", l_e5m2d, dm);
        f += run("f16 -> f32 (cvt) vs kv_f16_to_f32, all 2^16", l_h2f, dm);
        f += run("x / 0.0371 (__fdiv_rn) vs correctly rounded, all 2^32", l_div1, dm);
        f += run("x / 0.293 (__fdiv_rn) vs correctly rounded, all 2^32", l_div2, dm);
        f += run("x / 3e-5 (__fdiv_rn) vs correctly rounded, all 2^32", l_div3, dm);
        f += run("fp4 block16 short path vs kv_fp4_encode_block16, 2^24 random blocks", l_fp4, dm);
        f += run("fp4 block16 from bf16 (bf16x2) vs kv_fp4_encode_block16, every bf16 x position x scale class",
                 l_fp4bf, dm);
        f += run("fp4 block16 from f16 (f16x2) vs kv_fp4_encode_block16, every f16 x position x scale class",
                 l_fp4hf, dm);
        f += run("attention e4m3x2 -> f16x2, low pair and high pair in place, vs kv_e4m3_to_f32, all 2^32",
                 l_e4deq, dm);
        f += run("attention fp4 word -> four bf16x2 pairs (fp4quad) vs kv_e2m1_to_f32 * 2^-126, all 2^32", l_fp4q,
                 dm);
        {
                /* the fast fp8 division over every x, at typical scales,
                 * awkward mantissas and both ends of its range */
                static const float scales[] = { 0.0371f, 0.293f, 3.0e-5f, 1.0f, 64.0f, 1.99999988f, 0.70710677f,
                                                0x1p-60f, 0x1p60f, 0x1.fffffep59f, 12345.678f };
                unsigned long long *dh, hh;
                CK(cudaMalloc(&dh, sizeof *dh));
                for (unsigned k = 0; k < sizeof scales / sizeof scales[0]; k++)
                        for (int d = 0; d < 2; d++) {
                                const float sc = scales[k], r = 1.0f / sc;
                                mism h;
                                CK(cudaMemset(dm, 0, sizeof *dm));
                                CK(cudaMemset(dh, 0, sizeof *dh));
                                if (d == 0)
                                        sweep_fp8_fast<KVC_DTYPE_FP8_E4M3><<<G, B>>>(dm, sc, r, dh);
                                else
                                        sweep_fp8_fast<KVC_DTYPE_FP8_E5M2><<<G, B>>>(dm, sc, r, dh);
                                CK(cudaGetLastError());
                                CK(cudaDeviceSynchronize());
                                CK(cudaMemcpy(&h, dm, sizeof h, cudaMemcpyDeviceToHost));
                                CK(cudaMemcpy(&hh, dh, sizeof hh, cudaMemcpyDeviceToHost));
                                if (h.count) {
                                        printf("FAIL fast %s division by %a: %llu inputs differ, first 0x%08x\n",
                                               d ? "e5m2" : "e4m3", (double)sc, h.count, h.first[0]);
                                        f++;
                                } else {
                                        printf("ok   fast %s division by %-14a equal on all 2^32 x (%llu pairs took the IEEE fallback)\n",
                                               d ? "e5m2" : "e4m3", (double)sc, hh);
                                }
                        }
                cudaFree(dh);
        }
        cudaFree(dm);
        printf("test_conv_exhaustive: %d failures\n", f);
        return f ? 1 : 0;
}
