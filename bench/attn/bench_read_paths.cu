/* bench_read_paths.cu - how fast the decode kernel's memory path alone can
 * stream the pool, with cp.async (LDGSTS, what the kernel uses) against
 * bulk copies (cp.async.bulk, the TMA unit, completion on an mbarrier), at
 * the kernel's own concurrency: CTAs of 4 warps, each warp a ring of S
 * stages of one 16-key tile (16 K rows and 16 V rows of one head, 128
 * bytes each: the fp8 pool at head_dim 128), S-1 tiles in flight, the
 * CTAs of one row's kv heads adjacent in launch order.  Next to them, the
 * streaming-read probe of bench_decode.py --floor (8 CTAs of 512 threads
 * per SM, 16-byte loads, grid-stride) over the same bytes.
 *
 * The question it answers (docs/benchmarks.md, "What holds fp8 at the mid
 * shapes"): how much of the gap between the fp8 kernel and a bare read is
 * the copy mechanism, how much the structure around it (each CTA's
 * page-table load before its first copy, the merge of its warps at the
 * end), and how much the attention arithmetic.  A tile's consumer reads
 * the whole stage from shared memory (as the kernel's fragment loads do)
 * and, with work 48, runs a chain of 48 dependent FMAs per tile in place
 * of the arithmetic.
 *
 *   bench-read-paths [--reps N] [--mib M]
 *
 * Prints three tables, each row the median time of --reps runs between two
 * CUDA events, each run after a read of a 512 MiB buffer that leaves the
 * L2 cold and clean, and its rate over the probe's:
 *   1. cp.async against bulk copies (one 128-byte row a lane), ring depth S
 *      3, 5, 8 (4, 2, 1 CTAs an SM), work 0 and 48;
 *   2. cp.async at S = 5 with the kernel's page table (random pages; each
 *      warp loads the ids of its tiles before its first copy) and merge
 *      (two barriers, partials through shared memory, outputs stored);
 *   3. both, with U = 1, 2, 4 work items a CTA run back to back, the rings
 *      running across them (what persistent CTAs would save).
 * Needs a CUDA device (exits 77 without one, like the gpu tests).
 */
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <algorithm>
#include <vector>

#define CK(x)                                                                                               \
        do {                                                                                                \
                cudaError_t e_ = (x);                                                                       \
                if (e_ != cudaSuccess) {                                                                    \
                        fprintf(stderr, "bench-read-paths: %s: %s\n", #x, cudaGetErrorString(e_));          \
                        exit(1);                                                                            \
                }                                                                                           \
        } while (0)

constexpr int ROW = 128;           /* bytes of one head's row of one token (fp8, D = 128) */
constexpr int TILE = 16;           /* keys a tile */
constexpr int STAGE = 2 * TILE * ROW; /* K and V rows of a tile: 4 KiB */
constexpr int WARPS = 4;

/* The probe: grid-stride 16-byte loads, XOR-folded so they are not dead. */
__global__ void __launch_bounds__(512) read_kernel(const uint4 *__restrict__ p, size_t n, uint32_t *sink)
{
        uint32_t a = 0;
        for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
                const uint4 x = __ldcs(p + i);
                a ^= x.x ^ x.y ^ x.z ^ x.w;
        }
        if (a == 0x9E3779B9u)
                *sink = a;
}

__device__ __forceinline__ void mbar_init(uint32_t bar)
{
        asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(bar) : "memory");
}

__device__ __forceinline__ void mbar_expect(uint32_t bar, uint32_t bytes)
{
        asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}

__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity)
{
        uint32_t ok;
        do {
                asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                             " selp.u32 %0, 1, 0, p;\n}"
                             : "=r"(ok)
                             : "r"(bar), "r"(parity)
                             : "memory");
        } while (!ok);
}

/* Lane `lane`'s 8 cp.async of the tile whose first key is token tok, head
 * h, into the stage at shared address dst: chunk c = lane + 32i is row
 * c / 8 (0-15 K, 16-31 V), 16 bytes at c % 8. */
__device__ __forceinline__ void copy_tile(uint32_t dst, const uint8_t *K, const uint8_t *V, uint64_t tok,
                                          uint64_t rstride, uint32_t h, int lane)
{
#pragma unroll
        for (int i = 0; i < 8; i++) {
                const int c = lane + 32 * i, r = c / 8, part = c % 8;
                const uint8_t *src = (r < 16 ? K : V) + (tok + (r & 15)) * rstride + h * ROW + part * 16;
                asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst + c * 16), "l"(src) : "memory");
        }
}

/* The consumer of a stage: every byte read back (as the kernel's fragment
 * loads read the tile), then `work` dependent FMAs. */
__device__ __forceinline__ void consume(const uint8_t *stage, int lane, int work, uint32_t &acc, float &f)
{
        const uint4 *st = (const uint4 *)stage;
#pragma unroll
        for (int i = 0; i < 8; i++) {
                const uint4 x = st[lane + 32 * i];
                acc ^= x.x ^ x.y ^ x.z ^ x.w;
        }
        for (int i = 0; i < work; i++)
                f = fmaf(f, 1.0000001f, 0.5f);
}

/* K: [tokens][heads][ROW], V the same; CTA c: row c / heads, head c % heads,
 * keys [row * keys, (row + 1) * keys).  BULK: lane L copies row L of the
 * tile (0-15 K, 16-31 V) with one 128-byte bulk copy; otherwise 8 16-byte
 * cp.async per lane, as the kernel's issue path does. */
template <int S, bool BULK>
__global__ void __launch_bounds__(128) ring_kernel(const uint8_t *__restrict__ K, const uint8_t *__restrict__ V,
                                                   uint32_t keys, uint32_t heads, int work,
                                                   const int32_t *__restrict__ ptab, bool epi, uint32_t *sink)
{
        extern __shared__ __align__(128) uint8_t dsm[];
        __shared__ __align__(8) uint64_t bars[WARPS][S];
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        const uint32_t row = blockIdx.x / heads, h = blockIdx.x % heads;
        uint8_t *ring = dsm + warp * S * STAGE;
        const uint32_t sring = (uint32_t)__cvta_generic_to_shared(ring);
        const uint32_t sbar = (uint32_t)__cvta_generic_to_shared(&bars[warp][0]);
        const uint32_t ntiles_cta = keys / TILE;
        const uint32_t ntiles = ntiles_cta > (uint32_t)warp ? (ntiles_cta - warp + WARPS - 1) / WARPS : 0;
        const uint64_t tok0 = (uint64_t)row * keys;
        const uint64_t rstride = (uint64_t)heads * ROW;

        if (BULK) {
                if (lane < S)
                        mbar_init(sbar + 8 * lane);
                asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
                __syncwarp();
        }
        /* ptab: the row's pages, [rows][keys / TILE] int32, a page a tile;
         * the warp loads the ids of its first 32 tiles at once (lane i:
         * tile warp + 4i), as the kernel's page window does, and every
         * copy's address waits for it */
        int32_t win0 = 0, win1 = 0;
        if (ptab && (uint32_t)lane < ntiles)
                win0 = ptab[(uint64_t)row * ntiles_cta + warp + WARPS * lane];
        if (ptab && (uint32_t)lane + 32 < ntiles)
                win1 = ptab[(uint64_t)row * ntiles_cta + warp + WARPS * (lane + 32)];
        auto issue = [&](uint32_t k, uint32_t s) {
                uint64_t tok = tok0 + (uint64_t)(warp + WARPS * k) * TILE;
                if (ptab) {
                        const int32_t pg = __shfl_sync(0xFFFFFFFFu, k < 32 ? win0 : win1, k & 31);
                        tok = (uint64_t)pg * TILE;
                }
                const uint32_t dst = sring + s * STAGE;
                if (BULK) {
                        if (lane == 0)
                                mbar_expect(sbar + 8 * s, STAGE);
                        const uint8_t *src = (lane < 16 ? K : V) + (tok + (lane & 15)) * rstride + h * ROW;
                        asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], "
                                     "%2, [%3];" ::"r"(dst + lane * ROW),
                                     "l"(src), "n"(ROW), "r"(sbar + 8 * s)
                                     : "memory");
                } else {
                        copy_tile(dst, K, V, tok, rstride, h, lane);
                }
        };

#pragma unroll
        for (int s = 0; s < S - 1; s++) {
                if ((uint32_t)s < ntiles)
                        issue(s, s);
                if (!BULK)
                        asm volatile("cp.async.commit_group;" ::: "memory");
        }
        uint32_t acc = 0, phases = 0;
        float f = (float)lane;
        uint32_t si = S - 1, sc = 0;
        for (uint32_t k = 0; k < ntiles; k++) {
                __syncwarp();
                if (k + S - 1 < ntiles)
                        issue(k + S - 1, si);
                si = si + 1 == S ? 0 : si + 1;
                if (BULK) {
                        mbar_wait(sbar + 8 * sc, (phases >> sc) & 1u);
                        phases ^= 1u << sc;
                } else {
                        asm volatile("cp.async.commit_group;" ::: "memory");
                        asm volatile("cp.async.wait_group %0;" ::"n"(S - 1) : "memory");
                        __syncwarp();
                }
                consume(ring + sc * STAGE, lane, work, acc, f);
                sc = sc + 1 == S ? 0 : sc + 1;
        }
        if (!BULK)
                asm volatile("cp.async.wait_group 0;" ::: "memory");
        if (epi) {
                /* the kernel's merge: each warp's 8 x 128 floats through
                 * its ring, two barriers, the CTA's outputs stored */
                __syncwarp();
                float *o = (float *)ring;
                for (int i = lane; i < 8 * 128; i += 32)
                        o[i] = (float)(acc ^ i) + f;
                __syncthreads();
                float x = 0.0f;
                for (int w = 0; w < WARPS; w++)
                        x += ((const float *)(dsm + w * S * STAGE))[threadIdx.x];
                __syncthreads();
                ((float *)sink)[1 + (blockIdx.x * 128 + threadIdx.x) % (1 << 20)] = x;
                return;
        }
        if (acc == 0x9E3779B9u || f == 1.2345f)
                *sink = acc;
}


/* The same path with U work items a CTA run back to back (U = 1: one item
 * a CTA, as ring_kernel with a page table and the merge): each warp's
 * ring runs across the items, the page ids of all of them (up to 64
 * tiles a warp) are loaded at the start, and the CTA merges after each
 * item's last tile.  Item i of CTA c is c + i * gridDim.x. */
template <int S>
__global__ void __launch_bounds__(128) items_kernel(const uint8_t *__restrict__ K, const uint8_t *__restrict__ V,
                                                    uint32_t keys, uint32_t heads, int work, uint32_t U,
                                                    const int32_t *__restrict__ ptab, uint32_t *sink)
{
        extern __shared__ __align__(128) uint8_t dsm[];
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        uint8_t *ring = dsm + warp * S * STAGE;
        const uint32_t sring = (uint32_t)__cvta_generic_to_shared(ring);
        const uint32_t tpw = keys / TILE / WARPS; /* tiles a warp an item */
        const uint32_t ntiles = tpw * U;          /* <= 64 */
        const uint64_t rstride = (uint64_t)heads * ROW;
        const uint32_t ntiles_cta = keys / TILE;
        auto item_of = [&](uint32_t k) { return blockIdx.x + (k / tpw) * gridDim.x; };
        int32_t win[2];
#pragma unroll
        for (int w = 0; w < 2; w++) {
                const uint32_t k = lane + 32 * w;
                win[w] = 0;
                if (k < ntiles)
                        win[w] = ptab[(uint64_t)(item_of(k) / heads) * ntiles_cta + warp + WARPS * (k % tpw)];
        }
        auto issue = [&](uint32_t k, uint32_t s) {
                const uint32_t h = item_of(k) % heads;
                const int32_t pg = __shfl_sync(0xFFFFFFFFu, k < 32 ? win[0] : win[1], k & 31);
                const uint64_t tok = (uint64_t)pg * TILE;
                copy_tile(sring + s * STAGE, K, V, tok, rstride, h, lane);
        };
#pragma unroll
        for (int s = 0; s < S - 1; s++) {
                if ((uint32_t)s < ntiles)
                        issue(s, s);
                asm volatile("cp.async.commit_group;" ::: "memory");
        }
        __shared__ float red[WARPS][8 * 32];
        uint32_t acc = 0;
        float f = (float)lane;
        uint32_t si = S - 1, sc = 0;
        for (uint32_t k = 0; k < ntiles; k++) {
                __syncwarp();
                if (k + S - 1 < ntiles)
                        issue(k + S - 1, si);
                si = si + 1 == S ? 0 : si + 1;
                asm volatile("cp.async.commit_group;" ::: "memory");
                asm volatile("cp.async.wait_group %0;" ::"n"(S - 1) : "memory");
                __syncwarp();
                consume(ring + sc * STAGE, lane, work, acc, f);
                sc = sc + 1 == S ? 0 : sc + 1;
                if ((k + 1) % tpw == 0) {
                        /* the item's merge: partials through shared
                         * memory (a region of their own: the ring is
                         * still in use), two barriers, outputs stored */
                        for (int i = lane; i < 8 * 32; i += 32)
                                red[warp][i] = (float)(acc ^ i) + f;
                        __syncthreads();
                        float x = 0.0f;
                        for (int w = 0; w < WARPS; w++)
                                x += red[w][threadIdx.x] + red[w][threadIdx.x + 128];
                        __syncthreads();
                        ((float *)sink)[1 + (item_of(k) * 128 + threadIdx.x) % (1 << 20)] = x;
                }
        }
        asm volatile("cp.async.wait_group 0;" ::: "memory");
}

struct Timer {
        cudaEvent_t a, b;
        const uint4 *flush;
        size_t nflush;
        uint32_t *sink;
        int sms, reps;
        template <typename F>
        float run(F launch)
        {
                std::vector<float> t;
                for (int r = 0; r < reps + 2; r++) {
                        read_kernel<<<sms * 8, 512>>>(flush, nflush, sink);
                        CK(cudaEventRecord(a));
                        launch();
                        CK(cudaEventRecord(b));
                        CK(cudaEventSynchronize(b));
                        CK(cudaGetLastError());
                        float ms;
                        CK(cudaEventElapsedTime(&ms, a, b));
                        if (r >= 2)
                                t.push_back(ms * 1e3f);
                }
                std::sort(t.begin(), t.end());
                return t[t.size() / 2];
        }
};

template <int S, bool BULK>
static float time_ring(Timer &tm, const uint8_t *K, const uint8_t *V, uint32_t keys, uint32_t heads, uint32_t ctas,
                       int work, const int32_t *ptab, bool epi, int *ret_occ)
{
        const int smem = WARPS * S * STAGE;
        CK(cudaFuncSetAttribute(ring_kernel<S, BULK>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(ret_occ, ring_kernel<S, BULK>, 128, smem));
        return tm.run([&] { ring_kernel<S, BULK><<<ctas, 128, smem>>>(K, V, keys, heads, work, ptab, epi, tm.sink); });
}

int main(int argc, char **argv)
{
        int reps = 15, mib = 256;
        for (int i = 1; i < argc; i++) {
                if (!strcmp(argv[i], "--reps") && i + 1 < argc)
                        reps = atoi(argv[++i]);
                else if (!strcmp(argv[i], "--mib") && i + 1 < argc)
                        mib = atoi(argv[++i]);
                else {
                        fprintf(stderr, "usage: bench-read-paths [--reps N] [--mib M]\n");
                        return 2;
                }
        }
        if (reps < 1 || mib < 16 || mib % 16) {
                fprintf(stderr, "bench-read-paths: --reps must be >= 1 and --mib a multiple of 16, >= 16\n");
                return 2;
        }
        int ndev = 0;
        if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
                fprintf(stderr, "bench-read-paths: no CUDA device\n");
                return 77;
        }
        cudaDeviceProp prop;
        CK(cudaGetDeviceProperties(&prop, 0));
        const size_t bytes = (size_t)mib << 20, half = bytes / 2;
        const size_t nflush = (size_t)512 << 20;
        uint8_t *buf, *fl;
        uint32_t *sink;
        CK(cudaMalloc(&buf, bytes));
        CK(cudaMalloc(&fl, nflush));
        CK(cudaMalloc(&sink, 4 << 20));
        CK(cudaMemset(buf, 0x11, bytes));
        CK(cudaMemset(fl, 0x22, nflush));
        Timer tm;
        CK(cudaEventCreate(&tm.a));
        CK(cudaEventCreate(&tm.b));
        tm.flush = (const uint4 *)fl;
        tm.nflush = nflush / 16;
        tm.sink = sink;
        tm.sms = prop.multiProcessorCount;
        tm.reps = reps;

        const float probe = tm.run([&] { read_kernel<<<tm.sms * 8, 512>>>((const uint4 *)buf, bytes / 16, sink); });
        printf("%s, %d SMs; %d MiB (K and V %d MiB each, 8 heads x 128-byte rows), median of %d, read flush\n",
               prop.name, tm.sms, mib, mib / 2, reps);
        printf("probe (8 x 512 threads per SM, 16-byte loads): %.1f us, %.2f TB/s\n\n", probe, bytes / probe / 1e6);
        printf("| keys per CTA | CTAs | copy | S | CTAs/SM | work | us | TB/s | of probe |\n");
        printf("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        const uint32_t heads = 8, tokens = (uint32_t)(half / (heads * ROW));
        const uint8_t *K = buf, *V = buf + half;
        for (uint32_t keys : { 1024u, 4096u }) {
                const uint32_t ctas = tokens / keys * heads;
                for (int work : { 0, 48 }) {
                        for (int bulk = 0; bulk < 2; bulk++) {
                                for (int s : { 3, 5, 8 }) {
                                        int occ = 0;
                                        float us;
                                        if (bulk)
                                                us = s == 3 ? time_ring<3, true>(tm, K, V, keys, heads, ctas, work, nullptr, false, &occ)
                                                   : s == 5 ? time_ring<5, true>(tm, K, V, keys, heads, ctas, work, nullptr, false, &occ)
                                                            : time_ring<8, true>(tm, K, V, keys, heads, ctas, work, nullptr, false, &occ);
                                        else
                                                us = s == 3 ? time_ring<3, false>(tm, K, V, keys, heads, ctas, work, nullptr, false, &occ)
                                                   : s == 5 ? time_ring<5, false>(tm, K, V, keys, heads, ctas, work, nullptr, false, &occ)
                                                            : time_ring<8, false>(tm, K, V, keys, heads, ctas, work, nullptr, false, &occ);
                                        printf("| %u | %u | %s | %d | %d | %d | %.1f | %.2f | %.3f |\n", keys, ctas,
                                               bulk ? "bulk" : "cp.async", s, occ, work, us, bytes / us / 1e6,
                                               probe / us);
                                }
                        }
                }
        }

        /* the kernel's other costs on the same path: a page table (a
         * random permutation of the pages, the ids loaded by each warp
         * before its first copy) and the CTA's merge */
        int32_t *ptab;
        const uint32_t pages = tokens / TILE;
        std::vector<int32_t> perm(pages);
        for (uint32_t i = 0; i < pages; i++)
                perm[i] = (int32_t)i;
        uint64_t x = 0x9E3779B97F4A7C15ull;
        for (uint32_t i = pages - 1; i > 0; i--) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                std::swap(perm[i], perm[x % (i + 1)]);
        }
        CK(cudaMalloc(&ptab, pages * sizeof(int32_t)));
        CK(cudaMemcpy(ptab, perm.data(), pages * sizeof(int32_t), cudaMemcpyHostToDevice));
        printf("\ncp.async, S = 5, with the kernel's page table (random pages, ids loaded before the first copy) "
               "and merge (two barriers, partials through shared memory, outputs stored):\n\n");
        printf("| keys per CTA | CTAs | work | page table | merge | us | TB/s | of probe |\n");
        printf("| ---: | ---: | ---: | --- | --- | ---: | ---: | ---: |\n");
        for (uint32_t keys : { 1024u, 4096u }) {
                const uint32_t ctas = tokens / keys * heads;
                for (int work : { 0, 48 })
                        for (int v = 0; v < 4; v++) {
                                int occ = 0;
                                const bool pt = v & 1, epi = v & 2;
                                const float us = time_ring<5, false>(tm, K, V, keys, heads, ctas, work,
                                                                     pt ? ptab : nullptr, epi, &occ);
                                printf("| %u | %u | %d | %s | %s | %.1f | %.2f | %.3f |\n", keys, ctas, work,
                                       pt ? "yes" : "no", epi ? "yes" : "no", us, bytes / us / 1e6, probe / us);
                        }
        }

        printf("\ncp.async, S = 5, page table and merge, U items a CTA run back to back (rings across them):\n\n");
        printf("| keys per item | items | U | CTAs | work | us | TB/s | of probe |\n");
        printf("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        for (uint32_t keys : { 1024u, 4096u }) {
                const uint32_t items = tokens / keys * heads;
                for (int work : { 0, 48 })
                        for (uint32_t U : { 1u, 2u, 4u }) {
                                if (keys / TILE / WARPS * U > 64 || items % U)
                                        continue;
                                const int smem = WARPS * 5 * STAGE;
                                CK(cudaFuncSetAttribute(items_kernel<5>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
                                const float us = tm.run([&] {
                                        items_kernel<5><<<items / U, 128, smem>>>(K, V, keys, heads, work, U, ptab, tm.sink);
                                });
                                printf("| %u | %u | %u | %u | %d | %.1f | %.2f | %.3f |\n", keys, items, U, items / U, work,
                                       us, bytes / us / 1e6, probe / us);
                        }
        }
        return 0;
}
