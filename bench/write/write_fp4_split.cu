/* write_fp4_split.cu - an fp4 write kernel (bf16 input) with K and V in
 * separate threads (grid z = 2) instead of both in one thread: half the
 * registers and bytes in flight per thread, twice the threads; built as it
 * comes (40 registers: 6 blocks of 256 per SM) and launch-bounded to 8
 * blocks per SM (32 registers).  For bench-write --fp4-variants (a same-run
 * comparison; the benchmark checks that its pool equals the library's).
 * Not part of the library. */
#include "kv_write.cuh"

namespace {

template <int MINB>
__global__ void __launch_bounds__(256, MINB) write_fp4_split(const kvk::write_params p)
{
        constexpr int E = KVC_ELEM_BF16;
        const uint32_t c = blockIdx.y * blockDim.x + threadIdx.x;
        const uint32_t t = blockIdx.x * blockDim.y + threadIdx.y;
        const int h = blockIdx.z; /* 0: K, 1: V */

        if (t >= p.T || c >= p.chunks)
                return;
        kvk::grid_dep_wait();
        const int64_t slot = __ldg(p.slots + t);
        if (slot < 0 || slot >= p.num_slots)
                return;
        uint4 w[4];
        kvk::load_raw<E, 32>(p.src[h] + (int64_t)t * p.stride[h] + c * 64u, p.vec[h], w);
        kvk::grid_dep_launch();
        uint64_t doff, soff;
        if (p.flat) {
                doff = (uint64_t)slot * p.token_bytes;
                soff = (uint64_t)slot * p.scale_token_bytes;
        } else {
                const uint64_t page = (uint64_t)slot / p.page_size, off = (uint64_t)slot - page * p.page_size;
                doff = page * p.page_bytes + off * p.token_bytes;
                soff = page * p.scale_page_bytes + off * p.scale_token_bytes;
        }
        uint16_t sc;
        const uint4 o = kvk::fp4_chunk_raw<E>(w, &sc);
        *(uint4 *)(p.dst[h] + doff + (uint64_t)c * 16) = o;
        *(uint16_t *)(p.sdst[h] + soff + (uint64_t)c * 2) = sc;
}

} // namespace

/* fp4 pools with bf16 input only (what the benchmark passes); -22 otherwise.
 * minb8: the kernel bounded to 8 resident blocks per SM. */
extern "C" int bench_write_fp4_split(const struct kv_pool_view *p, const struct kvc_write_args *a, void *stream,
                                     int minb8)
{
        kvk::write_params wp;

        if (p->layout.g.dtype != KVC_DTYPE_FP4_E2M1 || a->elem != KVC_ELEM_BF16)
                return -22;
        kvk::make_write_params(p, a, &wp);
        const unsigned tx = wp.chunks < 256 ? wp.chunks : 256, ty = 256 / tx > 0 ? 256 / tx : 1;
        const cudaStream_t s = (cudaStream_t)stream;
        const kvk::launch_cfg lc(dim3((wp.T + ty - 1) / ty, (wp.chunks + tx - 1) / tx, 2), dim3(tx, ty), s,
                                 KV_WRITE_PDL && s != 0 && s != cudaStreamLegacy && s != cudaStreamPerThread);
        cudaError_t e = minb8 ? cudaLaunchKernelEx(&lc.cfg, write_fp4_split<8>, wp)
                              : cudaLaunchKernelEx(&lc.cfg, write_fp4_split<1>, wp);
        if (e == cudaSuccess)
                e = cudaGetLastError();
        return e == cudaSuccess ? 0 : -5;
}
