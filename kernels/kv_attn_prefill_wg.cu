/* kv_attn_prefill_wg.cu - instantiation and launch of the wgmma extend
 * kernel (kv_attn_prefill_wg.cuh); kv_attn_cuda_run (kv_attn_decode.cu)
 * checks the arguments, fills the parameters, plans the split and calls
 * this through kv_prefill_launch when the build and the device have wgmma. */
#include <errno.h>
#include <atomic>
#include <cuda_runtime.h>

#include "kv_cuda_common.cuh"
#include "kv_attn_prefill_wg.cuh"

/* The kernel for p (and, with splits, the reduction), or its occupancy
 * (ret_occ).  Returns a cudaError_t. */
template <int DT, int D, bool QLO>
static int launch_wg(const kva::params &p, dim3 grid, cudaStream_t st, int dev, int *ret_occ)
{
        static std::atomic<uint64_t> done(0);
        static std::atomic<int> occ_cache[64];
        typedef kva::wgeo<DT, D, QLO> WG;
        int e = kva::occupancy_or_launch<WG::NTH>(kva::wg_prefill_kernel<DT, D, QLO>, WG::SMEM, p, grid, st, dev,
                                                  ret_occ, done, occ_cache);
        if (e == 0 && !ret_occ && p.splits > 1)
                e = kva::launch_reduce<D>(p, st);
        return e;
}

int kv_prefill_wg_launch(int dtype, uint32_t D, bool qlo, const kva::params &p, dim3 grid, cudaStream_t st, int dev,
                         int *ret_occ)
{
        int r = -EINVAL;
        kvk::with_dtype((enum kvc_dtype)dtype, [&](auto t) {
                constexpr int DT = decltype(t)::value;
                if (qlo) {
                        if constexpr (kva::dtraits<DT>::bf) {
                                if (D == 64)
                                        r = launch_wg<DT, 64, true>(p, grid, st, dev, ret_occ);
                                else if (D == 128)
                                        r = launch_wg<DT, 128, true>(p, grid, st, dev, ret_occ);
                        }
                } else if (D == 64) {
                        r = launch_wg<DT, 64, false>(p, grid, st, dev, ret_occ);
                } else if (D == 128) {
                        r = launch_wg<DT, 128, false>(p, grid, st, dev, ret_occ);
                }
        });
        return r;
}
