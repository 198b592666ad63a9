/* kv_attn_prefill.cu - instantiation and launch of the tiled extend kernel
 * (kv_attn_prefill.cuh); kv_attn_cuda_run (kv_attn_decode.cu) checks the
 * arguments, fills the parameters, plans the split and calls this. */
#include <errno.h>
#include <atomic>
#include <type_traits>
#include <cuda_runtime.h>

#include "kv_cuda_common.cuh"
#include "kv_attn_prefill.cuh"

/* The kernel for p (and, with splits, the reduction), or its occupancy
 * (ret_occ).  Returns a cudaError_t. */
template <int DT, int D, int MT, bool QLO, int PW>
static int launch_w(const kva::params &p, dim3 grid, cudaStream_t st, int dev, int *ret_occ)
{
        typedef kva::pgeo<DT, D, MT, QLO, PW> PG;
        static std::atomic<uint64_t> done(0);
        static std::atomic<int> occ_cache[64];
        int e = kva::occupancy_or_launch(kva::prefill_kernel<DT, D, MT, QLO, PW>, PG::SMEM, p, grid, st, dev, ret_occ,
                                         done, occ_cache, PG::THR);
        if (e == 0 && !ret_occ && p.splits > 1)
                e = kva::launch_reduce<D>(p, st);
        return e;
}

/* The 4- or 8-warp build of one kernel: pw 8 only where kva::pwide has
 * built it (else -EINVAL, as for any combination without a kernel). */
template <int DT, int D, int MT, bool QLO>
static int launch_p(int pw, const kva::params &p, dim3 grid, cudaStream_t st, int dev, int *ret_occ)
{
        if constexpr (KVA_PW != 8) {
                if (pw == 4)
                        return launch_w<DT, D, MT, QLO, 4>(p, grid, st, dev, ret_occ);
        }
        if constexpr (kva::pwide(DT, D, QLO)) {
                if (pw == 8)
                        return launch_w<DT, D, MT, QLO, 8>(p, grid, st, dev, ret_occ);
        }
        return -EINVAL;
}

int kv_prefill_launch(int dtype, uint32_t D, int mt, int pw, bool qlo, const kva::params &p, dim3 grid,
                      cudaStream_t st, int dev, int *ret_occ)
{
        int r = -EINVAL;
        kvk::with_dtype((enum kvc_dtype)dtype, [&](auto t) {
                constexpr int DT = decltype(t)::value;
                /* the kernel of head_dim D for MT m-tiles (head_dim 256:
                 * one m-tile only) and two-term q or not */
                auto by_d = [&](auto mt_c, auto qlo_c) {
                        constexpr int MT = decltype(mt_c)::value;
                        constexpr bool QLO = decltype(qlo_c)::value;
                        if (D == 64)
                                r = launch_p<DT, 64, MT, QLO>(pw, p, grid, st, dev, ret_occ);
                        else if (D == 128)
                                r = launch_p<DT, 128, MT, QLO>(pw, p, grid, st, dev, ret_occ);
                        else if constexpr (MT == 1) {
                                if (D == 256)
                                        r = launch_p<DT, 256, 1, QLO>(pw, p, grid, st, dev, ret_occ);
                        }
                };
                auto by_mt = [&](auto qlo_c) {
                        if (mt == 1)
                                by_d(std::integral_constant<int, 1>(), qlo_c);
                        else if (mt == 2)
                                by_d(std::integral_constant<int, 2>(), qlo_c);
                };
                if (!qlo)
                        by_mt(std::false_type());
                else if constexpr (kva::dtraits<DT>::bf) /* two-term q: bf16-compute pools only */
                        by_mt(std::true_type());
        });
        return r;
}
