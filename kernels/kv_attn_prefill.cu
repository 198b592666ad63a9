/* kv_attn_prefill.cu - instantiation and launch of the tiled extend kernel
 * (kv_attn_prefill.cuh); kv_attn_cuda_run (kv_attn_decode.cu) checks the
 * arguments, fills the parameters, plans the split and calls this. */
#include <errno.h>
#include <atomic>
#include <cuda_runtime.h>

#include "kv_cuda_common.cuh"
#include "kv_attn_prefill.cuh"

template <int DT, int D, int MT>
static int launch_p(const kva::params &p, dim3 grid, cudaStream_t st, int dev, int *ret_occ)
{
        static std::atomic<uint64_t> done(0);
        static std::atomic<int> occ_cache[64];
        constexpr int smem = kva::pgeo<DT, D, MT>::SMEM;
        int e = kvk::smem_limit(kva::prefill_kernel<DT, D, MT>, smem, dev, done);
        if (e != 0)
                return e;
        if (ret_occ) {
                int n = 0;
                if (dev >= 0 && dev < 64 && (n = occ_cache[dev].load(std::memory_order_relaxed)) > 0) {
                        *ret_occ = n;
                        return 0;
                }
                e = (int)cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kva::prefill_kernel<DT, D, MT>, kva::THREADS,
                                                                      smem);
                if (e != 0)
                        return e;
                if (dev >= 0 && dev < 64)
                        occ_cache[dev].store(n, std::memory_order_relaxed);
                *ret_occ = n;
                return 0;
        }
        kva::prefill_kernel<DT, D, MT><<<grid, kva::THREADS, smem, st>>>(p);
        if (p.splits > 1)
                return kva::launch_reduce<D>(p, st);
        return 0;
}

int kv_prefill_launch(int dtype, uint32_t D, int mt, const kva::params &p, dim3 grid, cudaStream_t st, int dev,
                      int *ret_occ)
{
        int r = -EINVAL;
        kvk::with_dtype((enum kvc_dtype)dtype, [&](auto t) {
                constexpr int DT = decltype(t)::value;
                if (mt == 1) {
                        switch (D) {
                        case 64: r = launch_p<DT, 64, 1>(p, grid, st, dev, ret_occ); break;
                        case 128: r = launch_p<DT, 128, 1>(p, grid, st, dev, ret_occ); break;
                        case 256: r = launch_p<DT, 256, 1>(p, grid, st, dev, ret_occ); break;
                        default: break;
                        }
                } else if (mt == 2) {
                        switch (D) {
                        case 64: r = launch_p<DT, 64, 2>(p, grid, st, dev, ret_occ); break;
                        case 128: r = launch_p<DT, 128, 2>(p, grid, st, dev, ret_occ); break;
                        default: break;
                        }
                }
        });
        return r;
}
