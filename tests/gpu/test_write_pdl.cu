/* test_write_pdl.cu - the write kernel keeps stream order when it is launched
 * with programmatic dependent launch (suite 'gpu'; exits 77 without a CUDA
 * device).
 *
 * kv_cuda_write launches with programmatic stream serialization, on any
 * stream, when KV_WRITE_PDL is set (kernels/kv_write.cuh): its grid
 * may be scheduled before the previous kernel of the stream has finished,
 * and the kernel must wait (griddepcontrol.wait) before it reads its inputs
 * or its slots and before it writes the pool.  This test makes that wait
 * observable: each round, a slow producer kernel (every thread spins ~20 us
 * before it stores) fills the K/V input buffers with the round's values,
 * and the write that follows at once must see them, not the previous
 * round's; the rounds write overlapping slot sets, so the pool also shows
 * whether one write could overtake the one before it.  After all rounds the
 * device pool must equal, byte for byte, the host pool that kv_ref_write
 * built from the same rounds in order.  On a created stream directly, as a
 * captured CUDA graph replayed on a fresh pool, on the legacy and on the
 * per-thread default stream (the launch uses PDL on every stream), and with
 * the producers on a created blocking stream and the writes on the legacy
 * stream, whose implicit synchronization with that stream is the only
 * order between them; every pool dtype. */
#include <errno.h>
#include "gpu_common.h"

static int failures;

/* dst[i] = src[i] for n 16-bit values, each thread after spinning for
 * `spin` clock cycles: a kernel that is still storing long after the next
 * one on the stream could have started. */
__global__ void slow_copy(uint16_t *dst, const uint16_t *src, size_t n, long long spin)
{
        /* as a PDL-aware producer would: let the next grid be scheduled at
         * once, so that a write missing its wait would read stale inputs */
#if __CUDA_ARCH__ >= 900
        asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
        const long long t0 = clock64();
        while (clock64() - t0 < spin)
                ;
        for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
                dst[i] = src[i];
}

enum { HEADS = 8, HD = 128, PAGE = 16, PAGES = 64, T = 300, ROUNDS = 4 };

struct rounds {
        uint16_t *hk[ROUNDS], *hv[ROUNDS];    /* host inputs [T, HEADS*HD] bf16 */
        int64_t *hs[ROUNDS];                  /* host slots [T] */
        uint16_t *dk_src[ROUNDS], *dv_src[ROUNDS];
        int64_t *ds[ROUNDS];
        uint16_t *dk, *dv;                    /* the write's input buffers */
};

/* Enqueues every round: slow producer on ps, then the write on st. */
static void enqueue(struct rounds *R, struct kv_pool_view *dvw, cudaStream_t ps, cudaStream_t st, const char *what)
{
        const size_t n = (size_t)T * HEADS * HD;
        char msg[256];

        for (int r = 0; r < ROUNDS; r++) {
                slow_copy<<<264, 256, 0, ps>>>(R->dk, R->dk_src[r], n, 40000);
                slow_copy<<<264, 256, 0, ps>>>(R->dv, R->dv_src[r], n, 40000);
                CK(cudaGetLastError());
                struct kvc_write_args a;
                memset(&a, 0, sizeof a);
                a.k = R->dk;
                a.v = R->dv;
                a.elem = KVC_ELEM_BF16;
                a.k_row_stride = a.v_row_stride = HEADS * HD;
                a.slots = R->ds[r];
                a.num_tokens = T;
                a.layer = 1;
                int rc = kv_cuda_write(dvw, &a, st, msg, sizeof msg);
                EXPECT(rc == 0, "%s: kv_cuda_write round %d: %d %s", what, r, rc, msg);
        }
}

static void run_dtype(enum kvc_dtype d, uint64_t seed)
{
        struct kv_geom g = { d, 3, HEADS, HD, PAGE };
        struct kv_layout L;
        float ks[3] = { 0.05f, 0.0371f, 0.11f }, vs[3] = { 0.02f, 0.0293f, 0.3f };
        struct rng rg = { seed };
        struct rounds R;
        const size_t n = (size_t)T * HEADS * HD;
        char msg[256], what[96];
        cudaStream_t st, sb;

        if (kv_layout_init(&g, PAGES, &L) < 0) {
                printf("FAIL: kv_layout_init\n");
                exit(1);
        }
        CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        CK(cudaStreamCreate(&sb)); /* blocking: the legacy stream waits for it */
        uint8_t *host = (uint8_t *)malloc(L.alloc_bytes), *got = (uint8_t *)malloc(L.alloc_bytes);
        fill_poison(host, L.alloc_bytes, seed ^ 0xABCDull);
        uint8_t *dpool;
        CK(cudaMalloc((void **)&dpool, L.alloc_bytes));

        CK(cudaMalloc((void **)&R.dk, n * 2));
        CK(cudaMalloc((void **)&R.dv, n * 2));
        for (int r = 0; r < ROUNDS; r++) {
                R.hk[r] = (uint16_t *)make_input(&rg, KVC_ELEM_BF16, T, HEADS * HD, 1.5f, 1);
                R.hv[r] = (uint16_t *)make_input(&rg, KVC_ELEM_BF16, T, HEADS * HD, 0.7f, 1);
                /* T distinct slots out of PAGES * PAGE: rounds overlap */
                const int64_t ns = (int64_t)PAGES * PAGE;
                R.hs[r] = shuffled_range(&rg, ns); /* the first T are used */
                CK(cudaMalloc((void **)&R.dk_src[r], n * 2));
                CK(cudaMalloc((void **)&R.dv_src[r], n * 2));
                CK(cudaMalloc((void **)&R.ds[r], sizeof(int64_t) * T));
                CK(cudaMemcpy(R.dk_src[r], R.hk[r], n * 2, cudaMemcpyHostToDevice));
                CK(cudaMemcpy(R.dv_src[r], R.hv[r], n * 2, cudaMemcpyHostToDevice));
                CK(cudaMemcpy(R.ds[r], R.hs[r], sizeof(int64_t) * T, cudaMemcpyHostToDevice));
        }

        /* the reference: the rounds in order on the host pool */
        struct kv_pool_view hvw = { host, L, ks, vs }, dvw = { dpool, L, ks, vs };
        for (int r = 0; r < ROUNDS; r++) {
                struct kvc_write_args a;
                memset(&a, 0, sizeof a);
                a.k = R.hk[r];
                a.v = R.hv[r];
                a.elem = KVC_ELEM_BF16;
                a.k_row_stride = a.v_row_stride = HEADS * HD;
                a.slots = R.hs[r];
                a.num_tokens = T;
                a.layer = 1;
                int rc = kv_ref_write(&hvw, &a, msg, sizeof msg);
                EXPECT(rc == 0, "kv_ref_write: %d %s", rc, msg);
        }

        static const char *const modes[] = { "stream", "graph", "legacy stream (NULL)", "per-thread stream",
                                             "producer on a blocking stream, write on the legacy stream" };
        for (int mode = 0; mode < 5; mode++) {
                snprintf(what, sizeof what, "%s, %s", kvc_dtype_name(d), modes[mode]);
                /* fresh poisoned pool, inputs holding something else */
                fill_poison(got, L.alloc_bytes, seed ^ 0xABCDull);
                CK(cudaMemcpy(dpool, got, L.alloc_bytes, cudaMemcpyHostToDevice));
                CK(cudaMemset(R.dk, 0x3C, n * 2));
                CK(cudaMemset(R.dv, 0xBC, n * 2));
                CK(cudaDeviceSynchronize());
                if (mode != 1) {
                        /* mode 2 passes NULL, as most callers of the
                         * legacy stream do; mode 4 names it */
                        cudaStream_t ws = mode == 0   ? st
                                          : mode == 2 ? (cudaStream_t)0
                                          : mode == 3 ? cudaStreamPerThread
                                                      : cudaStreamLegacy;
                        enqueue(&R, &dvw, mode == 4 ? sb : ws, ws, what);
                } else {
                        cudaGraph_t gr;
                        cudaGraphExec_t ge;
                        CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
                        enqueue(&R, &dvw, st, st, what);
                        CK(cudaStreamEndCapture(st, &gr));
                        CK(cudaGraphInstantiate(&ge, gr, 0));
                        CK(cudaGraphLaunch(ge, st));
                        CK(cudaStreamSynchronize(st));
                        cudaGraphExecDestroy(ge);
                        cudaGraphDestroy(gr);
                }
                CK(cudaDeviceSynchronize());
                CK(cudaGetLastError());
                CK(cudaMemcpy(got, dpool, L.alloc_bytes, cudaMemcpyDeviceToHost));
                uint64_t diff = 0, first = 0;
                for (uint64_t i = 0; i < L.alloc_bytes; i++)
                        if (got[i] != host[i] && diff++ == 0)
                                first = i;
                EXPECT(diff == 0, "%s: %llu pool bytes differ from %d rounds of kv_ref_write, first at %llu",
                       what, (unsigned long long)diff, ROUNDS, (unsigned long long)first);
                if (diff == 0)
                        printf("ok   %s: %d rounds (slow producer, then the write at once) equal kv_ref_write\n",
                               what, ROUNDS);
        }

        for (int r = 0; r < ROUNDS; r++) {
                free(R.hk[r]);
                free(R.hv[r]);
                free(R.hs[r]);
                cudaFree(R.dk_src[r]);
                cudaFree(R.dv_src[r]);
                cudaFree(R.ds[r]);
        }
        cudaFree(R.dk);
        cudaFree(R.dv);
        cudaFree(dpool);
        free(host);
        free(got);
        CK(cudaStreamDestroy(st));
        CK(cudaStreamDestroy(sb));
}

int main(void)
{
        gpu_require_device("test_write_pdl");
        for (int d = 0; d < KVC_DTYPE__COUNT; d++)
                run_dtype((enum kvc_dtype)d, 0x9E37ull * (d + 1));
        printf("test_write_pdl: %d failures\n", failures);
        return failures ? 1 : 0;
}
