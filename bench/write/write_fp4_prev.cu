/* write_fp4_prev.cu - the write kernel with bf16 input to fp4 through the
 * f16-pair encoder (fp4_block16_h's own path, the encoder before
 * fp4_block16_bf), in its own namespace, for bench-write --fp4-variants (a
 * same-run comparison).  Not part of the library. */
#define KV_FP4_BF16_VIA_F16 1
#define kvk kvk_fp4_prev
#include "kv_write.cuh"

/* Same as kv_cuda_write without the argument checks (the benchmark passes
 * checked arguments), launched as the library launches (KV_WRITE_PDL). */
extern "C" int bench_write_fp4_prev(const struct kv_pool_view *p, const struct kvc_write_args *a, void *stream)
{
        kvk::write_params wp;

        kvk::make_write_params(p, a, &wp);
        return kvk::launch_write(wp, p->layout.g.dtype, a->elem, (cudaStream_t)stream) == cudaSuccess ? 0 : -5;
}
