/* backend_cuda.c - pools in GPU memory (see backend.h).  Builds without CUDA
 * get no cuda backend: kvd_backend_cuda is NULL and the daemon says so. */
#include <errno.h>
#include "kv_config.h"
#include "backend.h"

#if !KV_HAVE_CUDA
const struct kvd_backend_ops *const kvd_backend_cuda = NULL;

int kvd_cuda_mem_info(int device, uint64_t *ret_free, uint64_t *ret_total)
{
        return -ENODEV;
}
#else
#error "CUDA backend not written yet"
#endif
