/* test_wgmma.cu - the wgmma building blocks of the tiled extend kernel
 * (kernels/kv_attn_wgmma.cuh) against a CPU product (suite 'gpu'; exits 77
 * without a CUDA device, without an sm_90 device or in a build without
 * sm_90a code).
 *
 * For bf16 and f16 operands and head_dim 64 and 128, one warpgroup:
 *  1. S = Q K^T: Q [64][D] and K [64][D] stored in the swizzled tile layout
 *     (sw_off), D/16 wgmma with both operands from shared memory (K-major
 *     descriptors), the f32 accumulators written out by their fragment
 *     layout (row 16 w + g (+8), column 8 i + 2 t (+1));
 *  2. O = P V: P [64][64] in registers as the mma A fragment, V [64 keys][D]
 *     in the tile layout read transposed (MN-major descriptor), 4 wgmma.
 * Each must equal the CPU product of the same 16-bit values within f32
 * rounding.  A failure of 2 also says whether the descriptor with its two
 * strides swapped would have matched, which is the usual mistake.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kv_attn_wgmma.cuh"

#define CK(x)                                                                                        \
        do {                                                                                         \
                cudaError_t e_ = (x);                                                                \
                if (e_ != cudaSuccess) {                                                             \
                        printf("%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
                        exit(1);                                                                     \
                }                                                                                    \
        } while (0)

/* Set by the kernels: 1 when they were compiled with wgmma. */
__device__ int g_have;

template <bool BF, int D>
__global__ void __launch_bounds__(128) qk_kernel(const uint16_t *q, const uint16_t *k, float *s)
{
        __shared__ __align__(1024) uint8_t sm[2 * 64 * D * 2];
#if KVA_WG_DEVICE
        uint8_t *qs = sm, *ks = sm + 64 * D * 2;
        for (int i = threadIdx.x; i < 64 * D / 8; i += 128) {
                const int r = i / (D / 8), j = i % (D / 8);
                *(uint4 *)(qs + kva::sw_off(64, r, j)) = *(const uint4 *)(q + r * D + j * 8);
                *(uint4 *)(ks + kva::sw_off(64, r, j)) = *(const uint4 *)(k + r * D + j * 8);
        }
        kva::proxy_fence();
        __syncthreads();
        float d[32];
        const uint32_t qa = kva::smem_u32(qs), ka = kva::smem_u32(ks);
        kva::wg_fence();
#pragma unroll
        for (int ks_ = 0; ks_ < D / 16; ks_++) {
                const uint32_t off = (ks_ / 4) * 64 * 128 + (ks_ % 4) * 32;
                kva::wg_ss<64, BF>(d, kva::wg_desc(qa + off, 16, 1024), kva::wg_desc(ka + off, 16, 1024), ks_ > 0);
        }
        kva::wg_commit();
        kva::wg_wait<0>();
        kva::wg_pin(d);
        const int w = threadIdx.x / 32, g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
        for (int i = 0; i < 32; i++)
                s[(16 * w + g + 8 * ((i % 4) / 2)) * 64 + 8 * (i / 4) + 2 * t + (i % 2)] = d[i];
        if (threadIdx.x == 0)
                g_have = 1;
#else
        (void)q, (void)k, (void)s, (void)sm;
#endif
}

template <bool BF, int D>
__global__ void __launch_bounds__(128) pv_kernel(const uint16_t *pm, const uint16_t *v, float *o, uint32_t lbo,
                                                 uint32_t sbo)
{
        __shared__ __align__(1024) uint8_t sm[64 * D * 2];
#if KVA_WG_DEVICE
        for (int i = threadIdx.x; i < 64 * D / 8; i += 128) {
                const int r = i / (D / 8), j = i % (D / 8);
                *(uint4 *)(sm + kva::sw_off(64, r, j)) = *(const uint4 *)(v + r * D + j * 8);
        }
        kva::proxy_fence();
        __syncthreads();
        const int w = threadIdx.x / 32, g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
        const int r0 = 16 * w + g;
        float d[D / 2];
        const uint32_t va = kva::smem_u32(sm);
        kva::wg_fence();
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
                uint32_t a[4];
                const int c = 16 * kk + 2 * t;
                a[0] = pm[r0 * 64 + c] | (uint32_t)pm[r0 * 64 + c + 1] << 16;
                a[1] = pm[(r0 + 8) * 64 + c] | (uint32_t)pm[(r0 + 8) * 64 + c + 1] << 16;
                a[2] = pm[r0 * 64 + c + 8] | (uint32_t)pm[r0 * 64 + c + 9] << 16;
                a[3] = pm[(r0 + 8) * 64 + c + 8] | (uint32_t)pm[(r0 + 8) * 64 + c + 9] << 16;
                kva::wg_rs<D, BF>(d, a, kva::wg_desc(va + kk * 2048, lbo, sbo), kk > 0);
        }
        kva::wg_commit();
        kva::wg_wait<0>();
        kva::wg_pin(d);
        for (int i = 0; i < D / 2; i++)
                o[(r0 + 8 * ((i % 4) / 2)) * D + 8 * (i / 4) + 2 * t + (i % 2)] = d[i];
        if (threadIdx.x == 0)
                g_have = 1;
#else
        (void)pm, (void)v, (void)o, (void)lbo, (void)sbo, (void)sm;
#endif
}

static float to_f(uint16_t x, bool bf)
{
        if (bf) {
                uint32_t u = (uint32_t)x << 16;
                float f;
                memcpy(&f, &u, 4);
                return f;
        }
        return __half2float(__ushort_as_half(x));
}

static uint16_t from_f(float f, bool bf)
{
        if (bf)
                return __bfloat16_as_ushort(__float2bfloat16_rn(f));
        return __half_as_ushort(__float2half_rn(f));
}

static double urand(void)
{
        return rand() / (double)RAND_MAX * 2.0 - 1.0;
}

/* Largest |a - b| over n, relative to the largest |b|. */
static double rel_err(const float *a, const float *b, int n)
{
        double e = 0, m = 1e-30;
        for (int i = 0; i < n; i++) {
                e = fmax(e, fabs((double)a[i] - b[i]));
                m = fmax(m, fabs((double)b[i]));
        }
        return e / m;
}

static int have_wgmma(void)
{
        int h = 0;
        CK(cudaMemcpyFromSymbol(&h, g_have, sizeof h));
        return h;
}

template <bool BF, int D>
static int run_case(void)
{
        const char *ty = BF ? "bf16" : "f16";
        uint16_t *hq = (uint16_t *)malloc(64 * D * 2), *hk = (uint16_t *)malloc(64 * D * 2);
        uint16_t *hp = (uint16_t *)malloc(64 * 64 * 2), *hv = (uint16_t *)malloc(64 * D * 2);
        float *ref = (float *)malloc(64 * D * 4), *got = (float *)malloc(64 * D * 4);
        uint16_t *dq, *dk, *dp, *dv;
        float *dout;
        int bad = 0;

        for (int i = 0; i < 64 * D; i++) {
                hq[i] = from_f((float)urand(), BF);
                hk[i] = from_f((float)urand(), BF);
                hv[i] = from_f((float)urand(), BF);
        }
        for (int i = 0; i < 64 * 64; i++)
                hp[i] = from_f((float)(urand() * 0.5 + 0.5), BF);
        CK(cudaMalloc((void **)&dq, 64 * D * 2));
        CK(cudaMalloc((void **)&dk, 64 * D * 2));
        CK(cudaMalloc((void **)&dp, 64 * 64 * 2));
        CK(cudaMalloc((void **)&dv, 64 * D * 2));
        CK(cudaMalloc((void **)&dout, 64 * D * 4));
        CK(cudaMemcpy(dq, hq, 64 * D * 2, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dk, hk, 64 * D * 2, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dp, hp, 64 * 64 * 2, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dv, hv, 64 * D * 2, cudaMemcpyHostToDevice));

        /* 1. S = Q K^T */
        for (int r = 0; r < 64; r++)
                for (int c = 0; c < 64; c++) {
                        double a = 0;
                        for (int d = 0; d < D; d++)
                                a += (double)to_f(hq[r * D + d], BF) * to_f(hk[c * D + d], BF);
                        ref[r * 64 + c] = (float)a;
                }
        CK(cudaMemset(dout, 0xFF, 64 * D * 4));
        qk_kernel<BF, D><<<1, 128>>>(dq, dk, dout);
        CK(cudaGetLastError());
        CK(cudaDeviceSynchronize());
        CK(cudaMemcpy(got, dout, 64 * 64 * 4, cudaMemcpyDeviceToHost));
        double e = rel_err(got, ref, 64 * 64);
        printf("%-4s D=%3d  S = Q K^T   relative error %.2e  %s\n", ty, D, e, e < 1e-5 ? "ok" : "FAIL");
        bad += !(e < 1e-5);

        /* 2. O = P V, and with the strides swapped if that fails */
        for (int r = 0; r < 64; r++)
                for (int c = 0; c < D; c++) {
                        double a = 0;
                        for (int k = 0; k < 64; k++)
                                a += (double)to_f(hp[r * 64 + k], BF) * to_f(hv[k * D + c], BF);
                        ref[r * D + c] = (float)a;
                }
        const uint32_t lbo[2] = { 64 * 128, 1024 }, sbo[2] = { 1024, 64 * 128 };
        for (int vnt = 0; vnt < 2; vnt++) {
                CK(cudaMemset(dout, 0xFF, 64 * D * 4));
                pv_kernel<BF, D><<<1, 128>>>(dp, dv, dout, lbo[vnt], sbo[vnt]);
                CK(cudaGetLastError());
                CK(cudaDeviceSynchronize());
                CK(cudaMemcpy(got, dout, 64 * D * 4, cudaMemcpyDeviceToHost));
                e = rel_err(got, ref, 64 * D);
                printf("%-4s D=%3d  O = P V     relative error %.2e  (LBO %u, SBO %u%s)  %s\n", ty, D, e, lbo[vnt],
                       sbo[vnt], vnt ? ", swapped" : "", e < 1e-5 ? "ok" : vnt ? "no match either" : "FAIL");
                if (vnt == 0) {
                        bad += !(e < 1e-5);
                        if (e < 1e-5)
                                break;
                }
        }
        cudaFree(dq), cudaFree(dk), cudaFree(dp), cudaFree(dv), cudaFree(dout);
        free(hq), free(hk), free(hp), free(hv), free(ref), free(got);
        return bad;
}

int main(void)
{
        int n = 0, major = 0, minor = 0;
        if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
                printf("test_wgmma: no CUDA device: skipped\n");
                return 77;
        }
        CK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0));
        CK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0));
        if (major != 9 || minor != 0) {
                printf("test_wgmma: device 0 is sm_%d%d, wgmma needs sm_90: skipped\n", major, minor);
                return 77;
        }
        srand(7);
        int bad = run_case<true, 128>();
        if (!have_wgmma()) {
                printf("test_wgmma: this build has no sm_90a code (gpu_arch 90a): skipped\n");
                return 77;
        }
        bad += run_case<true, 64>() + run_case<false, 128>() + run_case<false, 64>();
        printf("test_wgmma: %d failures\n", bad);
        return bad ? 1 : 0;
}
