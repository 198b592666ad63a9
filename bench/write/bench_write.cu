/* bench_write.cu - the write kernel's time per call and effective bandwidth
 * on the device, next to a device-to-device copy measured in the same run.
 *
 *   bench-write [--quick]
 *
 * Geometry: 8 kv heads x 128, page 16, bf16 input, every pool dtype, T in
 * {1, 16, 256, 4096, 16384} tokens.  Each call writes K and V of T tokens to
 * shuffled slots.  Successive calls rotate over enough input buffers and
 * pool regions that the working set is >= 4x the L2 (so large T measures
 * HBM, not cache); small T are latency-bound and stay in L2 like real
 * decode steps.
 *   events  median over 200 calls of the time between two CUDA events around
 *           one launch (includes the kernel's launch/drain overhead on the GPU)
 *   graph   one CUDA graph of many calls, replayed 20 times: median replay
 *           time / calls (what a serving loop that captures graphs sees)
 *   GB/s    (bf16 K+V read + quantized K+V written + fp4 scales) / graph time
 *   %copy   GB/s over the device-to-device cudaMemcpy bandwidth (bytes read
 *           + written) of a 1 GiB buffer, measured in this run
 *   pdl / nopdl  graph time of the same kernel launched the other way than
 *           the library does by default (KV_WRITE_PDL): with or without
 *           programmatic dependent launch, which lets a call's grid be
 *           scheduled while the previous call drains
 *   szcopy  graph time of cudaMemcpyAsync device-to-device calls moving the
 *           same bytes per call (half the write's traffic copied: read +
 *           write equal the write's), in a graph of as many calls, rotating
 *           over as many buffer sets: what one transfer of that size reaches,
 *           launch gaps included; %sz is the write's bandwidth over it.  The
 *           1 GiB copy stays the reference of %copy.
 *   codec   graph time of the same kernel built with the codec's integer
 *           conversions only (KV_CUDA_CODEC_ONLY), for comparison
 *
 * (An --fp4-variants mode, which timed the fp4 kernel against the previous
 * f16-pair encoder of bf16 input, existed up to commit 63fc4fa; its table is
 * in docs/benchmarks.md.)
 */
#include <algorithm>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>
#include <cuda_runtime.h>

#include "kv_cuda_common.cuh"
#include "kv_write.cuh"
#include "kv_codec.h"
#include "gpu_common.h" /* tests/gpu: CK, the PRNG, the device check */

extern "C" int bench_write_codec_only(const struct kv_pool_view *p, const struct kvc_write_args *a, void *stream);

static const uint32_t HEADS = 8, HD = 128, PAGE = 16;

static double median(std::vector<double> v)
{
        std::sort(v.begin(), v.end());
        return v[v.size() / 2];
}

static struct rng bench_rng = { 0x1234567 };

/* bytes of one call's traffic the effective bandwidth counts */
static double call_bytes(enum kvc_dtype d, uint32_t T)
{
        double e = (double)T * HEADS * HD * 2; /* K and V elements */
        double out = d == KVC_DTYPE_BF16 || d == KVC_DTYPE_FP16 ? 2 : d == KVC_DTYPE_FP4_E2M1 ? 0.5 + 1.0 / 16 : 1;
        return e * 2 + e * out;
}

struct setup {
        kv_pool_view view;
        std::vector<kvc_write_args> args; /* one per rotation set */
        void *pool, *in;
        int64_t *slots;
        void *csrc, *cdst;                /* same-size copy: sets x cbytes each */
        size_t cbytes;
};

static void make_setup(setup &s, enum kvc_dtype d, uint32_t T, size_t l2)
{
        static float ks[1] = { 0.0371f }, vs[1] = { 0.0293f };
        const double per_call = call_bytes(d, T);
        int sets = (int)std::min(64.0, std::max(1.0, 4.0 * l2 / per_call + 1));
        const uint32_t pages_per_set = (T + PAGE - 1) / PAGE;
        kv_geom g = { d, 1, HEADS, HD, PAGE };
        kv_layout L;

        if (kv_layout_init(&g, pages_per_set * sets, &L) < 0) {
                fprintf(stderr, "kv_layout_init failed\n");
                exit(1);
        }
        CK(cudaMalloc(&s.pool, L.alloc_bytes));
        CK(cudaMemset(s.pool, 0, L.alloc_bytes));
        s.view.base = s.pool;
        s.view.layout = L;
        s.view.k_scale = ks;
        s.view.v_scale = vs;

        /* random bf16 inputs: N(0,1)-ish from a uniform sum, never zeros */
        const size_t row = (size_t)HEADS * HD, elems = (size_t)T * row;
        std::vector<uint16_t> h(elems * 2);
        for (size_t i = 0; i < h.size(); i++) {
                float x = 0;
                for (int k = 0; k < 3; k++)
                        x += (float)((rng_next(&bench_rng) >> 40) * (1.0 / 16777216.0)) - 0.5f;
                h[i] = kv_f32_to_bf16(x * 2.0f);
        }
        CK(cudaMalloc(&s.in, elems * 2 * 2 * sets));
        std::vector<int64_t> sl((size_t)T * sets);
        for (int k = 0; k < sets; k++) {
                CK(cudaMemcpy((uint8_t *)s.in + (size_t)k * elems * 4, h.data(), elems * 4, cudaMemcpyHostToDevice));
                /* this set's pages, slots shuffled */
                for (uint32_t t = 0; t < T; t++)
                        sl[(size_t)k * T + t] = (int64_t)k * pages_per_set * PAGE + t;
                for (uint32_t t = T - 1; t > 0; t--)
                        std::swap(sl[(size_t)k * T + t], sl[(size_t)k * T + rng_next(&bench_rng) % (t + 1)]);
        }
        /* the same-size copy: half the write's traffic, 256-byte aligned */
        s.cbytes = ((size_t)(per_call / 2) + 255) / 256 * 256;
        CK(cudaMalloc(&s.csrc, s.cbytes * sets));
        CK(cudaMalloc(&s.cdst, s.cbytes * sets));
        CK(cudaMemset(s.csrc, 0x5A, s.cbytes * sets));
        CK(cudaMemset(s.cdst, 0, s.cbytes * sets));
        CK(cudaMalloc(&s.slots, sl.size() * sizeof(int64_t)));
        CK(cudaMemcpy(s.slots, sl.data(), sl.size() * sizeof(int64_t), cudaMemcpyHostToDevice));
        s.args.clear();
        for (int k = 0; k < sets; k++) {
                kvc_write_args a;
                memset(&a, 0, sizeof a);
                a.k = (uint8_t *)s.in + (size_t)k * elems * 4;
                a.v = (uint8_t *)a.k + elems * 2;
                a.elem = KVC_ELEM_BF16;
                a.k_row_stride = a.v_row_stride = row;
                a.slots = s.slots + (size_t)k * T;
                a.num_tokens = T;
                a.layer = 0;
                s.args.push_back(a);
        }
}

static void free_setup(setup &s)
{
        cudaFree(s.pool);
        cudaFree(s.in);
        cudaFree(s.slots);
        cudaFree(s.csrc);
        cudaFree(s.cdst);
}

enum variant { V_LIB, V_CODEC, V_OTHER_LAUNCH, V_COPY };

static int call(setup &s, int i, cudaStream_t st, int v)
{
        char msg[256] = "";
        const size_t k = i % s.args.size();
        int r;

        switch (v) {
        case V_LIB:
                r = kv_cuda_write(&s.view, &s.args[k], st, msg, sizeof msg);
                break;
        case V_CODEC:
                r = bench_write_codec_only(&s.view, &s.args[k], st);
                break;
        case V_OTHER_LAUNCH: {
                /* the library's kernel and arguments, launched the other way */
                kvk::write_params wp;
                kvk::make_write_params(&s.view, &s.args[k], &wp);
                r = kvk::launch_write(wp, s.view.layout.g.dtype, s.args[k].elem, st, !KV_WRITE_PDL) == cudaSuccess ? 0
                                                                                                            : -5;
                break;
        }
        default:
                r = cudaMemcpyAsync((uint8_t *)s.cdst + k * s.cbytes, (uint8_t *)s.csrc + k * s.cbytes, s.cbytes,
                                    cudaMemcpyDeviceToDevice, st) == cudaSuccess ? 0 : -5;
                break;
        }
        if (r) {
                fprintf(stderr, "write failed (variant %d): %d %s\n", v, r, msg);
                exit(1);
        }
        return r;
}

/* median µs per call over single launches between events */
static double time_events(setup &s, cudaStream_t st, int reps)
{
        cudaEvent_t a, b;
        std::vector<double> v;

        CK(cudaEventCreate(&a));
        CK(cudaEventCreate(&b));
        for (int i = 0; i < 10; i++)
                call(s, i, st, V_LIB);
        for (int i = 0; i < reps; i++) {
                float ms;
                CK(cudaEventRecord(a, st));
                call(s, i, st, V_LIB);
                CK(cudaEventRecord(b, st));
                CK(cudaEventSynchronize(b));
                CK(cudaEventElapsedTime(&ms, a, b));
                v.push_back(ms * 1e3);
        }
        cudaEventDestroy(a);
        cudaEventDestroy(b);
        return median(v);
}

/* median µs per call of a graph of n calls, replayed */
static double time_graph(setup &s, cudaStream_t st, int n, int variant)
{
        cudaGraph_t g;
        cudaGraphExec_t ge;
        cudaEvent_t a, b;
        std::vector<double> v;

        CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
        for (int i = 0; i < n; i++)
                call(s, i, st, variant);
        CK(cudaStreamEndCapture(st, &g));
        CK(cudaGraphInstantiate(&ge, g, 0));
        CK(cudaEventCreate(&a));
        CK(cudaEventCreate(&b));
        CK(cudaGraphLaunch(ge, st)); /* warm-up */
        CK(cudaStreamSynchronize(st));
        for (int r = 0; r < 20; r++) {
                float ms;
                CK(cudaEventRecord(a, st));
                CK(cudaGraphLaunch(ge, st));
                CK(cudaEventRecord(b, st));
                CK(cudaEventSynchronize(b));
                CK(cudaEventElapsedTime(&ms, a, b));
                v.push_back(ms * 1e3 / n);
        }
        cudaEventDestroy(a);
        cudaEventDestroy(b);
        cudaGraphExecDestroy(ge);
        cudaGraphDestroy(g);
        return median(v);
}

/* device-to-device copy bandwidth, bytes read + written, GB/s */
static double copy_bw(cudaStream_t st)
{
        const size_t n = 1ull << 30;
        void *x, *y;
        cudaEvent_t a, b;
        std::vector<double> v;

        CK(cudaMalloc(&x, n));
        CK(cudaMalloc(&y, n));
        CK(cudaMemset(x, 0x5A, n));
        CK(cudaMemset(y, 0, n));
        CK(cudaEventCreate(&a));
        CK(cudaEventCreate(&b));
        for (int i = 0; i < 3; i++)
                CK(cudaMemcpyAsync(y, x, n, cudaMemcpyDeviceToDevice, st));
        for (int i = 0; i < 20; i++) {
                float ms;
                CK(cudaEventRecord(a, st));
                CK(cudaMemcpyAsync(y, x, n, cudaMemcpyDeviceToDevice, st));
                CK(cudaEventRecord(b, st));
                CK(cudaEventSynchronize(b));
                CK(cudaEventElapsedTime(&ms, a, b));
                v.push_back(2.0 * n / (ms * 1e-3) / 1e9);
        }
        cudaFree(x);
        cudaFree(y);
        cudaEventDestroy(a);
        cudaEventDestroy(b);
        return median(v);
}

int main(int argc, char **argv)
{
        static const uint32_t Ts[] = { 1, 16, 256, 4096, 16384 };
        const int quick = argc > 1 && !strcmp(argv[1], "--quick");
        cudaDeviceProp prop;
        cudaStream_t st;

        gpu_require_device("bench-write");
        CK(cudaGetDeviceProperties(&prop, 0));
        CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        const double copy = copy_bw(st);
        printf("bench-write: %s, %d SMs, L2 %d MiB; kv_heads %u x head_dim %u, page %u, bf16 input\n", prop.name,
               prop.multiProcessorCount, prop.l2CacheSize >> 20, HEADS, HD, PAGE);
        printf("device-to-device cudaMemcpy of 1 GiB: %.0f GB/s (read + write)\n\n", copy);
        printf("library launch: %s programmatic dependent launch (KV_WRITE_PDL %d)\n\n",
               KV_WRITE_PDL ? "with" : "without", KV_WRITE_PDL);
        printf("%6s  %-9s %9s %9s %6s %6s %9s %6s %9s %6s %6s %9s %6s\n", "T", "dtype", "events_us", "graph_us",
               "GB/s", "%copy", KV_WRITE_PDL ? "nopdl_us" : "pdl_us", "%copy", "szcopy_us", "GB/s", "%sz",
               "codec_us", "%copy");
        for (uint32_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
                for (int d = 0; d < KVC_DTYPE__COUNT; d++) {
                        const uint32_t T = Ts[ti];
                        setup s;
                        make_setup(s, (enum kvc_dtype)d, T, prop.l2CacheSize);
                        const int calls = T <= 16 ? 2000 : T <= 256 ? 500 : T <= 4096 ? 100 : 40;
                        double ev = time_events(s, st, quick ? 50 : 200);
                        const int n = quick ? calls / 4 : calls;
                        double gr = time_graph(s, st, n, V_LIB);
                        double go = time_graph(s, st, n, V_OTHER_LAUNCH);
                        double gs = time_graph(s, st, n, V_COPY);
                        double gc = time_graph(s, st, n, V_CODEC);
                        const double cb = call_bytes((enum kvc_dtype)d, T);
                        double bw = cb / (gr * 1e-6) / 1e9, bwo = cb / (go * 1e-6) / 1e9;
                        double bws = 2.0 * s.cbytes / (gs * 1e-6) / 1e9;
                        double bwc = cb / (gc * 1e-6) / 1e9;
                        printf("%6u  %-9s %9.2f %9.2f %6.0f %5.1f%% %9.2f %5.1f%% %9.2f %6.0f %5.1f%% %9.2f %5.1f%%\n",
                               T, kvc_dtype_name((enum kvc_dtype)d), ev, gr, bw, 100.0 * bw / copy, go,
                               100.0 * bwo / copy, gs, bws, 100.0 * bw / bws, gc, 100.0 * bwc / copy);
                        fflush(stdout);
                        free_setup(s);
                }
        }
        CK(cudaStreamDestroy(st));
        return 0;
}
