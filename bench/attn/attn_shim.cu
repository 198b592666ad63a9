/* attn_shim.cu - a small test/benchmark library (not installed) exposing the
 * attention launchers to Python through ctypes, with a pool laid out by
 * kv_layout_init in one cudaMalloc'ed buffer: no daemon needed.
 *
 * Used by bench/attn/bench_decode.py (timing against PyTorch's SDPA) and
 * tests/gpu/sdpa_check.py (correctness against SDPA).  Every function returns
 * 0 or a negative errno; shim_errmsg() gives the last message (per thread).
 * Pointers named *_dev are device addresses passed as integers (e.g. a torch
 * tensor's data_ptr()); the others are host memory.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cuda_runtime.h>

#include "kv_ops.h"
#include "kv_layout.h"
#include "kv_cuda_common.cuh"

#define SHIM_MAX_LAYERS 64

struct shim_pool {
        struct kv_layout L;
        uint8_t *dev;           /* device pool, alloc_bytes */
        uint8_t *host;          /* host mirror (with_host), else NULL */
        float ks[SHIM_MAX_LAYERS], vs[SHIM_MAX_LAYERS];
};

static __thread char errbuf[512];

static int err(int e, const char *fmt, const char *what)
{
        snprintf(errbuf, sizeof errbuf, fmt, what);
        return e;
}

static struct kv_pool_view view(struct shim_pool *p, int dev)
{
        struct kv_pool_view v;
        memset(&v, 0, sizeof v);
        v.base = dev ? (void *)p->dev : (void *)p->host;
        v.layout = p->L;
        v.k_scale = p->ks;
        v.v_scale = p->vs;
        return v;
}

extern "C" const char *shim_errmsg(void)
{
        return errbuf;
}

/* A pool of num_pages pages on the current device; with_host keeps a host
 * mirror for the CPU reference write/gather.  Scales start at 1.0. */
extern "C" void *shim_pool_new(int dtype, int layers, int kv_heads, int head_dim, int page_size, int num_pages,
                               int with_host)
{
        struct kv_geom g;
        struct shim_pool *p = (struct shim_pool *)calloc(1, sizeof *p);

        if (!p || layers < 1 || layers > SHIM_MAX_LAYERS || num_pages < 1) {
                free(p);
                err(-EINVAL, "%s", "shim_pool_new: bad arguments");
                return NULL;
        }
        g.dtype = (enum kvc_dtype)dtype;
        g.num_layers = layers;
        g.kv_heads = kv_heads;
        g.head_dim = head_dim;
        g.page_size = page_size;
        if (kv_layout_init(&g, (uint32_t)num_pages, &p->L) < 0) {
                free(p);
                err(-EINVAL, "%s", "shim_pool_new: kv_layout_init refused the geometry");
                return NULL;
        }
        cudaError_t e = cudaMalloc((void **)&p->dev, p->L.alloc_bytes);
        if (e != cudaSuccess) {
                kv_cuda_errno(e, "shim_pool_new: cudaMalloc", errbuf, sizeof errbuf);
                free(p);
                return NULL;
        }
        cudaMemset(p->dev, 0, p->L.alloc_bytes);
        if (with_host) {
                p->host = (uint8_t *)calloc(1, p->L.alloc_bytes);
                if (!p->host) {
                        cudaFree(p->dev);
                        free(p);
                        err(-ENOMEM, "%s", "shim_pool_new: host mirror");
                        return NULL;
                }
        }
        for (int l = 0; l < SHIM_MAX_LAYERS; l++)
                p->ks[l] = p->vs[l] = 1.0f;
        return p;
}

extern "C" void shim_pool_free(void *h)
{
        struct shim_pool *p = (struct shim_pool *)h;
        if (!p)
                return;
        cudaFree(p->dev);
        free(p->host);
        free(p);
}

extern "C" uint64_t shim_pool_dev(void *h)
{
        return (uint64_t)(uintptr_t)((struct shim_pool *)h)->dev;
}

extern "C" int shim_set_scales(void *h, float ks, float vs)
{
        struct shim_pool *p = (struct shim_pool *)h;
        for (int l = 0; l < SHIM_MAX_LAYERS; l++) {
                p->ks[l] = ks;
                p->vs[l] = vs;
        }
        return 0;
}

/* kv_ref_write into the host mirror: k, v [T, kv_heads, head_dim] f32. */
extern "C" int shim_write_host(void *h, int layer, const float *k, const float *v, const int64_t *slots, int T)
{
        struct shim_pool *p = (struct shim_pool *)h;
        if (!p->host)
                return err(-EINVAL, "%s", "shim_write_host: pool has no host mirror");
        struct kv_pool_view hv = view(p, 0);
        struct kvc_write_args a;
        memset(&a, 0, sizeof a);
        a.k = k;
        a.v = v;
        a.elem = KVC_ELEM_F32;
        a.k_row_stride = a.v_row_stride = (int64_t)p->L.g.kv_heads * p->L.g.head_dim;
        a.slots = slots;
        a.num_tokens = (uint32_t)T;
        a.layer = (uint32_t)layer;
        return kv_ref_write(&hv, &a, errbuf, sizeof errbuf);
}

/* Host mirror -> device pool. */
extern "C" int shim_upload(void *h)
{
        struct shim_pool *p = (struct shim_pool *)h;
        if (!p->host)
                return err(-EINVAL, "%s", "shim_upload: pool has no host mirror");
        return kv_cuda_errno(cudaMemcpy(p->dev, p->host, p->L.alloc_bytes, cudaMemcpyHostToDevice),
                             "shim_upload", errbuf, sizeof errbuf);
}

/* kv_ref_gather from the host mirror into f32 [n*page_size, kv_heads, head_dim]. */
extern "C" int shim_gather_host(void *h, int layer, const int32_t *pages, int n, float *k_out, float *v_out)
{
        struct shim_pool *p = (struct shim_pool *)h;
        struct kv_pool_view hv = view(p, 0);
        struct kvc_gather_args a;
        memset(&a, 0, sizeof a);
        a.pages = pages;
        a.n_pages = (uint32_t)n;
        a.layer = (uint32_t)layer;
        a.k_out = k_out;
        a.v_out = v_out;
        a.elem = KVC_ELEM_F32;
        return kv_ref_gather(&hv, &a, errbuf, sizeof errbuf);
}

static __device__ __forceinline__ uint32_t mix(uint64_t x)
{
        x ^= x >> 33;
        x *= 0xff51afd7ed558ccdull;
        x ^= x >> 33;
        x *= 0xc4ceb9fe1a85ec53ull;
        x ^= x >> 33;
        return (uint32_t)x;
}

/* Random but valid codes (no NaN/Inf) for the benchmark: kind 0 bf16, 1 f16,
 * 2 e4m3, 3 e5m2, 4 fp4 data, 5 fp4 E8M0 scales in [124, 130]. */
__global__ void fill_kernel(uint32_t *w, uint64_t nw, int kind, uint64_t seed)
{
        for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < nw;
             i += (uint64_t)gridDim.x * blockDim.x) {
                uint32_t r = mix(seed * 0x9E3779B97F4A7C15ull + i), o;
                switch (kind) {
                case 0: /* sign, exponent 124..127, mantissa: |x| in [0.125, 2) */
                        o = ((r & 0x807F807Fu) | 0x3E003E00u) + (((r >> 7) & 0x00030003u) << 7);
                        break;
                case 1:
                        o = ((r & 0x83FF83FFu) | 0x30003000u) + (((r >> 10) & 0x00030003u) << 10);
                        break;
                case 2: /* e4m3: clear exponent bit 3 -> no NaN (0x7F) */
                        o = r & 0xBFBFBFBFu;
                        break;
                case 3: /* e5m2: clear the top exponent bit -> no Inf/NaN */
                        o = r & 0xBFBFBFBFu;
                        break;
                case 5:
                        o = 0x7C7C7C7Cu + (r & 0x03030303u) + ((r >> 2) & 0x03030303u);
                        break;
                default:
                        o = r;
                        break;
                }
                w[i] = o;
        }
}

/* Fills every layer's K/V (and fp4 scale) arrays of the device pool with
 * random valid codes. */
extern "C" int shim_fill_random(void *h, uint64_t seed)
{
        struct shim_pool *p = (struct shim_pool *)h;
        const struct kv_layout *L = &p->L;
        const int kind = (int)L->g.dtype;
        for (uint32_t l = 0; l < L->g.num_layers; l++) {
                uint64_t off[4] = { kv_layout_k(L, l), kv_layout_v(L, l), kv_layout_ks(L, l), kv_layout_vs(L, l) };
                for (int a = 0; a < (kind == KVC_DTYPE_FP4_E2M1 ? 4 : 2); a++) {
                        uint64_t bytes = (uint64_t)L->num_pages * (a < 2 ? L->page_bytes : L->scale_page_bytes);
                        fill_kernel<<<4096, 256>>>((uint32_t *)(p->dev + off[a]), bytes / 4, a < 2 ? kind : 5,
                                                   seed + 17 * l + a);
                }
        }
        return kv_cuda_errno(cudaDeviceSynchronize(), "shim_fill_random", errbuf, sizeof errbuf);
}

/* Reads bytes at ptr once with 16-byte loads (a streaming-read bandwidth
 * probe); the xor of everything lands in *sink only if it hits a magic
 * value, which keeps the loads alive. */
__global__ void read_kernel(const uint4 *p, uint64_t n, uint32_t *sink)
{
        uint32_t acc = 0;
        for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n;
             i += (uint64_t)gridDim.x * blockDim.x) {
                uint4 x = __ldcs(p + i);
                acc ^= x.x ^ x.y ^ x.z ^ x.w;
        }
        if (acc == 0x9E3779B9u)
                *sink = acc;
}

/* One thread that spins for ns nanoseconds of the GPU's global timer: put
 * ahead of a timed call so that the host has queued the flush, both events
 * and the call before the GPU reaches the first event (otherwise the host's
 * dispatch time of the call, tens of microseconds for some PyTorch ops, is
 * timed as GPU time). */
__global__ void spin_kernel(uint64_t ns)
{
        uint64_t t0, t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
        do {
                asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        } while (t - t0 < ns);
}

extern "C" int shim_spin(uint64_t ns, uint64_t stream)
{
        spin_kernel<<<1, 1, 0, (cudaStream_t)stream>>>(ns);
        return kv_cuda_errno(cudaGetLastError(), "shim_spin", errbuf, sizeof errbuf);
}

extern "C" int shim_stream_read(uint64_t ptr_dev, uint64_t bytes, uint64_t sink_dev, uint64_t stream)
{
        int sms = 132;
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
        read_kernel<<<sms * 8, 512, 0, (cudaStream_t)stream>>>((const uint4 *)ptr_dev, bytes / 16,
                                                               (uint32_t *)sink_dev);
        return kv_cuda_errno(cudaGetLastError(), "shim_stream_read", errbuf, sizeof errbuf);
}

extern "C" int shim_decode(void *h, int layer, uint64_t q_dev, uint64_t out_dev, int elem, uint64_t pt_dev,
                           int max_pages, uint64_t lens_dev, const int32_t *lens_host, int B, int Hq,
                           float sm_scale, uint64_t stream)
{
        struct shim_pool *p = (struct shim_pool *)h;
        struct kv_pool_view dv = view(p, 1);
        struct kvc_decode_args a;
        memset(&a, 0, sizeof a);
        a.q = (const void *)q_dev;
        a.out = (void *)out_dev;
        a.elem = (enum kvc_elem)elem;
        a.page_table = (const int32_t *)pt_dev;
        a.max_pages = (uint32_t)max_pages;
        a.seq_lens = (const int32_t *)lens_dev;
        a.seq_lens_host = lens_host;
        a.batch = (uint32_t)B;
        a.num_q_heads = (uint32_t)Hq;
        a.sm_scale = sm_scale;
        a.layer = (uint32_t)layer;
        return kv_cuda_decode(&dv, &a, (void *)stream, errbuf, sizeof errbuf);
}

/* kv_cuda_extend_kernel (kv_ops.h): 0 the launcher's rule, 1 the tiled
 * kernel, 2 the decode kernel for every extend call; the previous setting. */
extern "C" int shim_extend_kernel(int which)
{
        return kv_cuda_extend_kernel(which);
}

/* kv_cuda_decode_warps (kv_ops.h): 0 the launcher's rule, 1 a CTA's warps
 * take turns over one kv head's tiles, 2 each warp a kv head of its own;
 * the previous setting. */
extern "C" int shim_decode_warps(int which)
{
        return kv_cuda_decode_warps(which);
}

extern "C" int shim_extend(void *h, int layer, uint64_t q_dev, uint64_t out_dev, int elem, uint64_t indptr_dev,
                           const int32_t *indptr_host, uint64_t pt_dev, int max_pages, uint64_t lens_dev,
                           const int32_t *lens_host, int B, int Hq, float sm_scale, uint64_t stream)
{
        struct shim_pool *p = (struct shim_pool *)h;
        struct kv_pool_view dv = view(p, 1);
        struct kvc_extend_args a;
        memset(&a, 0, sizeof a);
        a.q = (const void *)q_dev;
        a.out = (void *)out_dev;
        a.elem = (enum kvc_elem)elem;
        a.qo_indptr = (const int32_t *)indptr_dev;
        a.qo_indptr_host = indptr_host;
        a.page_table = (const int32_t *)pt_dev;
        a.max_pages = (uint32_t)max_pages;
        a.seq_lens = (const int32_t *)lens_dev;
        a.seq_lens_host = lens_host;
        a.batch = (uint32_t)B;
        a.num_q_heads = (uint32_t)Hq;
        a.sm_scale = sm_scale;
        a.layer = (uint32_t)layer;
        return kv_cuda_extend(&dv, &a, (void *)stream, errbuf, sizeof errbuf);
}
