/* kv_cuda_stub.c - the kv_cuda_* launchers of kv_ops.h in a build without
 * CUDA (kernels/meson.build compiles this file only then).  Each returns
 * -ENOSYS with the message "built without CUDA", so a client that somehow
 * meets a GPU pool fails clearly instead of touching device pointers. */
#include <errno.h>
#include <stdio.h>

#include "kv_ops.h"

static int nosys(const char *what, char *msg, size_t msglen)
{
        if (msg && msglen)
                snprintf(msg, msglen, "%s: built without CUDA", what);
        return -ENOSYS;
}

/* Returns -ENOSYS ("built without CUDA"); touches nothing. */
int kv_cuda_write(const struct kv_pool_view *p, const struct kvc_write_args *a, void *stream,
                  char *msg, size_t msglen)
{
        return nosys("kv_cuda_write", msg, msglen);
}

/* Returns -ENOSYS ("built without CUDA"); touches nothing. */
int kv_cuda_gather(const struct kv_pool_view *p, const struct kvc_gather_args *a, void *stream,
                   char *msg, size_t msglen)
{
        return nosys("kv_cuda_gather", msg, msglen);
}

/* Returns -ENOSYS ("built without CUDA"); touches nothing. */
int kv_cuda_decode(const struct kv_pool_view *p, const struct kvc_decode_args *a, void *stream,
                   char *msg, size_t msglen)
{
        return nosys("kv_cuda_decode", msg, msglen);
}

/* Returns -ENOSYS ("built without CUDA"); touches nothing. */
int kv_cuda_extend(const struct kv_pool_view *p, const struct kvc_extend_args *a, void *stream,
                   char *msg, size_t msglen)
{
        return nosys("kv_cuda_extend", msg, msglen);
}

/* Returns -ENOSYS ("built without CUDA"); touches nothing. */
int kv_cuda_decode_ws(const struct kv_pool_view *p, const struct kvc_decode_args *a, void *ws, size_t ws_bytes,
                      void *stream, char *msg, size_t msglen)
{
        return nosys("kv_cuda_decode_ws", msg, msglen);
}

/* Returns -ENOSYS ("built without CUDA"); touches nothing. */
int kv_cuda_extend_ws(const struct kv_pool_view *p, const struct kvc_extend_args *a, void *ws, size_t ws_bytes,
                      void *stream, char *msg, size_t msglen)
{
        return nosys("kv_cuda_extend_ws", msg, msglen);
}

/* Returns -ENOSYS ("built without CUDA"); *ret_bytes untouched. */
int kv_cuda_decode_ws_bytes(const struct kv_pool_view *p, const struct kvc_decode_args *a, size_t *ret_bytes,
                            char *msg, size_t msglen)
{
        return nosys("kv_cuda_decode_ws_bytes", msg, msglen);
}

/* Returns -ENOSYS ("built without CUDA"); *ret_bytes untouched. */
int kv_cuda_extend_ws_bytes(const struct kv_pool_view *p, const struct kvc_extend_args *a, size_t *ret_bytes,
                            char *msg, size_t msglen)
{
        return nosys("kv_cuda_extend_ws_bytes", msg, msglen);
}

/* Always 0: this build has no CUDA kernels. */
int kv_cuda_available(void)
{
        return 0;
}

/* Returns -ENOSYS: no kernels to choose between. */
int kv_cuda_extend_kernel(int which)
{
        (void)which;
        return -ENOSYS;
}

/* Returns -ENOSYS: no kernels to choose between. */
int kv_cuda_decode_warps(int which)
{
        (void)which;
        return -ENOSYS;
}
