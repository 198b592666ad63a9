/* bench_attn_accuracy.c - how much attention-output accuracy each pool dtype
 * costs: decode attention over the quantized pool against fp32 attention
 * (double accumulation) over the unquantized K/V.
 *
 *     bench_attn_accuracy [B L]        (default B = 8, L = 4096)
 *
 * Shape: Hq/kv_heads/D = 32/8/128, page 16, f16 q (the reference uses the
 * same f16 values, so q adds no error) and f16 outputs (rounding 2^-11
 * rather than bf16's 2^-8, so the figures show the KV quantization).  Data:
 *   normal    K, V ~ N(0, 1)
 *   outliers  K ~ N(0, 1) with 4 of 128 channels of every head x 20 (the
 *             outlier channels of real models' keys), V ~ N(0, 1)
 * FP8 scales: per tensor and layer, amax / max code (448 e4m3, 57344 e5m2),
 * separately for K and V.  FP4: block-16 E8M0 scales (kv_ref_write).
 * Metrics over the whole output: relative error ||o - r|| / ||r|| and cosine
 * similarity; plus the worst relative error of one (sequence, head) row.
 * The CPU reference (kv_ref_decode) always runs; in a CUDA build with a
 * device the GPU kernel (kv_cuda_decode) runs on the same pool bytes and its
 * figures are printed beside (they must agree within 1e-3).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_config.h"
#include "kv_codec.h"
#include "kv_layout.h"
#include "kv_ops.h"
#if KV_HAVE_CUDA
#include <cuda_runtime.h>
#endif

#define HQ 32
#define HK 8
#define D 128
#define PS 16

static uint64_t rs = 0x9E3779B97F4A7C15ull;
static double unit(void)
{
        rs ^= rs >> 12;
        rs ^= rs << 25;
        rs ^= rs >> 27;
        return ((rs * 0x2545F4914F6CDD1Dull) >> 11) * (1.0 / 9007199254740992.0);
}
static float normal(void)
{
        double u = unit(), v = unit();
        return (float)(sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v));
}

struct metrics {
        double rel, cos, worst;
};

static struct metrics measure(const uint16_t *o, const double *ref, size_t rows)
{
        struct metrics m = { 0, 0, 0 };
        double num = 0, den = 0, dot = 0, no = 0;
        for (size_t r = 0; r < rows; r++) {
                double rn = 0, rd = 0;
                for (int d = 0; d < D; d++) {
                        double a = kv_f16_to_f32(o[r * D + d]), b = ref[r * D + d];
                        rn += (a - b) * (a - b);
                        rd += b * b;
                        dot += a * b;
                        no += a * a;
                }
                num += rn;
                den += rd;
                if (rd > 0 && sqrt(rn / rd) > m.worst)
                        m.worst = sqrt(rn / rd);
        }
        m.rel = sqrt(num / den);
        m.cos = dot / sqrt(no * den);
        return m;
}

/* fp32-data attention in double over the unquantized K/V [B, L, HK, D]. */
static void exact(const float *K, const float *V, const uint16_t *q, double *out, int B, int L)
{
        double *s = malloc(sizeof(double) * L);
        const double sm = 1.0 / sqrt((double)D);
        for (int b = 0; b < B; b++) {
                for (int h = 0; h < HQ; h++) {
                        const int kh = h / (HQ / HK);
                        const uint16_t *qq = q + ((size_t)b * HQ + h) * D;
                        double m = -INFINITY, l = 0;
                        for (int j = 0; j < L; j++) {
                                const float *k = K + (((size_t)b * L + j) * HK + kh) * D;
                                double dot = 0;
                                for (int d = 0; d < D; d++)
                                        dot += (double)kv_f16_to_f32(qq[d]) * k[d];
                                s[j] = dot * sm;
                                if (s[j] > m)
                                        m = s[j];
                        }
                        double *o = out + ((size_t)b * HQ + h) * D;
                        memset(o, 0, sizeof(double) * D);
                        for (int j = 0; j < L; j++) {
                                const double w = exp(s[j] - m);
                                const float *v = V + (((size_t)b * L + j) * HK + kh) * D;
                                l += w;
                                for (int d = 0; d < D; d++)
                                        o[d] += w * v[d];
                        }
                        for (int d = 0; d < D; d++)
                                o[d] /= l;
                }
        }
        free(s);
}

static float amax(const float *x, size_t n)
{
        float m = 0;
        for (size_t i = 0; i < n; i++)
                m = fabsf(x[i]) > m ? fabsf(x[i]) : m;
        return m;
}

int main(int argc, char **argv)
{
        const int B = argc > 2 ? atoi(argv[1]) : 8, L = argc > 2 ? atoi(argv[2]) : 4096;
        static const char *names[] = { "bf16", "fp16", "fp8_e4m3", "fp8_e5m2", "fp4_e2m1" };
        const size_t nkv = (size_t)B * L * HK * D, nq = (size_t)B * HQ * D;
        float *K = malloc(nkv * sizeof(float)), *V = malloc(nkv * sizeof(float));
        uint16_t *q = malloc(nq * 2), *o = malloc(nq * 2);
        double *ref = malloc(nq * sizeof(double));
        int32_t *pt = malloc(sizeof(int32_t) * B * (L / PS)), *lens = malloc(sizeof(int32_t) * B);
        int64_t *slots = malloc(sizeof(int64_t) * B * L);
        int gpu = 0;
        char msg[256];

        if (B < 1 || L < PS || L % PS) {
                fprintf(stderr, "usage: bench_attn_accuracy [B L]  (L a multiple of %d)\n", PS);
                return 2;
        }
        for (int i = 0; i < B * (L / PS); i++)
                pt[i] = i;
        for (int b = 0; b < B; b++)
                lens[b] = L;
        for (int i = 0; i < B * L; i++)
                slots[i] = i; /* sequence b's key j at page b*L/PS + j/PS */
#if KV_HAVE_CUDA
        int ndev = 0;
        gpu = kv_cuda_available() && cudaGetDeviceCount(&ndev) == cudaSuccess && ndev > 0;
#endif
        printf("attention accuracy vs fp32 attention on unquantized K/V: B=%d L=%d Hq/kv/D=%d/%d/%d page %d, "
               "f16 q/out\n", B, L, HQ, HK, D, PS);
        printf("fp8 scale = amax/max per tensor and layer (K and V separately); fp4: block-16 E8M0\n");
        printf("GPU kernel: %s\n\n", gpu ? "yes (same pool bytes)" : "not run (no CUDA device or no CUDA build)");
        printf("%-9s %-9s %10s %12s %10s", "data", "kv", "rel_err", "cosine", "worst_row");
        if (gpu)
                printf(" %10s %12s %10s", "gpu_rel", "gpu_cosine", "|gpu-cpu|");
        printf("\n");

        for (int data = 0; data < 2; data++) {
                for (size_t i = 0; i < nkv; i++) {
                        K[i] = normal();
                        V[i] = normal();
                        if (data == 1 && (i % D == 7 || i % D == 40 || i % D == 81 || i % D == 122))
                                K[i] *= 20.0f;
                }
                for (size_t i = 0; i < nq; i++)
                        q[i] = kv_f32_to_f16(normal());
                exact(K, V, q, ref, B, L);
                for (int dt = 0; dt < KVC_DTYPE__COUNT; dt++) {
                        struct kv_geom g = { .dtype = (enum kvc_dtype)dt, .num_layers = 1, .kv_heads = HK,
                                             .head_dim = D, .page_size = PS };
                        struct kv_layout lay;
                        if (kv_layout_init(&g, (uint32_t)(B * L / PS), &lay) < 0)
                                return 1;
                        float ks = 1, vs = 1;
                        if (dt == KVC_DTYPE_FP8_E4M3 || dt == KVC_DTYPE_FP8_E5M2) {
                                const float mx = dt == KVC_DTYPE_FP8_E4M3 ? KV_E4M3_MAX : KV_E5M2_MAX;
                                ks = amax(K, nkv) / mx;
                                vs = amax(V, nkv) / mx;
                        }
                        struct kv_pool_view pv = { .base = calloc(1, lay.alloc_bytes), .layout = lay,
                                                   .k_scale = &ks, .v_scale = &vs };
                        struct kvc_write_args wa = { .k = K, .v = V, .elem = KVC_ELEM_F32,
                                                     .k_row_stride = HK * D, .v_row_stride = HK * D,
                                                     .slots = slots, .num_tokens = (uint32_t)(B * L) };
                        if (kv_ref_write(&pv, &wa, msg, sizeof msg) < 0) {
                                fprintf(stderr, "kv_ref_write: %s\n", msg);
                                return 1;
                        }
                        struct kvc_decode_args da = { .q = q, .out = o, .elem = KVC_ELEM_F16, .page_table = pt,
                                                      .max_pages = (uint32_t)(L / PS), .seq_lens = lens,
                                                      .seq_lens_host = lens, .batch = (uint32_t)B,
                                                      .num_q_heads = HQ, .sm_scale = 1.0f / sqrtf(D) };
                        if (kv_ref_decode(&pv, &da, msg, sizeof msg) < 0) {
                                fprintf(stderr, "kv_ref_decode: %s\n", msg);
                                return 1;
                        }
                        struct metrics mc = measure(o, ref, (size_t)B * HQ);
                        printf("%-9s %-9s %10.3e %12.8f %10.3e", data ? "outliers" : "normal", names[dt], mc.rel,
                               mc.cos, mc.worst);
#if KV_HAVE_CUDA
                        if (gpu) {
                                void *dpool, *dq, *dout, *dpt, *dlens;
                                int ok = cudaMalloc(&dpool, lay.alloc_bytes) == cudaSuccess &&
                                         cudaMalloc(&dq, nq * 2) == cudaSuccess &&
                                         cudaMalloc(&dout, nq * 2) == cudaSuccess &&
                                         cudaMalloc(&dpt, sizeof(int32_t) * B * (L / PS)) == cudaSuccess &&
                                         cudaMalloc(&dlens, sizeof(int32_t) * B) == cudaSuccess;
                                ok = ok && cudaMemcpy(dpool, pv.base, lay.alloc_bytes, cudaMemcpyHostToDevice) == 0 &&
                                     cudaMemcpy(dq, q, nq * 2, cudaMemcpyHostToDevice) == 0 &&
                                     cudaMemcpy(dpt, pt, sizeof(int32_t) * B * (L / PS), cudaMemcpyHostToDevice) == 0 &&
                                     cudaMemcpy(dlens, lens, sizeof(int32_t) * B, cudaMemcpyHostToDevice) == 0 &&
                                     cudaMemset(dout, 0xFF, nq * 2) == 0;
                                struct kv_pool_view dv = pv;
                                dv.base = dpool;
                                struct kvc_decode_args ga = da;
                                ga.q = dq;
                                ga.out = dout;
                                ga.page_table = dpt;
                                ga.seq_lens = dlens;
                                uint16_t *og = malloc(nq * 2);
                                int rc = ok ? kv_cuda_decode(&dv, &ga, NULL, msg, sizeof msg) : -EIO;
                                if (rc == 0 && cudaDeviceSynchronize() == cudaSuccess &&
                                    cudaMemcpy(og, dout, nq * 2, cudaMemcpyDeviceToHost) == cudaSuccess) {
                                        struct metrics mg = measure(og, ref, (size_t)B * HQ);
                                        printf(" %10.3e %12.8f %10.1e", mg.rel, mg.cos, fabs(mg.rel - mc.rel));
                                } else {
                                        printf("  GPU run failed (%d): %s", rc, msg);
                                }
                                free(og);
                                cudaFree(dpool);
                                cudaFree(dq);
                                cudaFree(dout);
                                cudaFree(dpt);
                                cudaFree(dlens);
                        }
#endif
                        printf("\n");
                        fflush(stdout);
                        free(pv.base);
                }
        }
        free(K);
        free(V);
        free(q);
        free(o);
        free(ref);
        free(pt);
        free(lens);
        free(slots);
        return 0;
}
