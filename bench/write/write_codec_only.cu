/* write_codec_only.cu - the write kernel compiled with the codec's integer
 * conversions only (KV_CUDA_CODEC_ONLY), in its own namespace, so the
 * benchmark can show what the hardware conversions of kv_cuda_common.cuh
 * buy.  Not part of the library. */
#define KV_CUDA_CODEC_ONLY 1
#define kvk kvk_codec_only
#include "kv_write.cuh"

/* Same as kv_cuda_write without the argument checks (the benchmark passes
 * checked arguments). */
extern "C" int bench_write_codec_only(const struct kv_pool_view *p, const struct kvc_write_args *a, void *stream)
{
        kvk::write_params wp;

        kvk::make_write_params(p, a, &wp);
        return kvk::launch_write(wp, p->layout.g.dtype, a->elem, (cudaStream_t)stream) == cudaSuccess ? 0 : -5;
}
