/* kv_write.cu - kv_cuda_write: checks the arguments, dispatches dtype and
 * element type, launches kvk::write_kernel (kv_write.cuh) on the caller's
 * stream. */
#include <errno.h>
#include <cuda_runtime.h>

#include "kv_write.cuh"
#include "kv_ref_common.h"

using namespace kvk;

/* Contract: kernels/kv_ops.h.  Asynchronous on stream (a cudaStream_t, NULL =
 * the default stream); every host-side argument is checked before the launch
 * (kv_cuda_check_write); slots are range-checked in the kernel, which skips
 * -1 and any slot outside [0, num_pages*page_size).  Thread-safe. */
extern "C" int kv_cuda_write(const struct kv_pool_view *p, const struct kvc_write_args *a, void *stream,
                             char *msg, size_t msglen)
{
        const struct kv_layout *L;
        write_params wp;
        cudaError_t e;
        int r;

        r = kv_cuda_check_write(p, a, msg, msglen);
        if (r < 0 || a->num_tokens == 0)
                return r;
        L = &p->layout;
        make_write_params(p, a, &wp); /* the arrays' alignment: kv_cuda_check_write */

        e = launch_write(wp, L->g.dtype, a->elem, (cudaStream_t)stream);
        return kv_cuda_errno(e, "kv_cuda_write: launch", msg, msglen);
}
