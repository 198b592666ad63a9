/* kv_cuda_common.cu - CUDA error conversion, argument checks shared by the
 * write and gather launchers, and kv_cuda_available(). */
#include <errno.h>
#include <stdint.h>
#include <cuda_runtime.h>

#include "kv_cuda_common.cuh"
#include "kv_ref_common.h"

extern "C" int kv_cuda_errno(int cuda_err, const char *what, char *msg, size_t msglen)
{
        cudaError_t e = (cudaError_t)cuda_err;
        int err;

        if (e == cudaSuccess)
                return 0;
        switch (e) {
        case cudaErrorMemoryAllocation:
                err = -ENOMEM;
                break;
        case cudaErrorInvalidValue:
        case cudaErrorInvalidConfiguration:
        case cudaErrorInvalidDevicePointer:
        case cudaErrorInvalidPitchValue:
                err = -EINVAL;
                break;
        case cudaErrorNoDevice:
        case cudaErrorInsufficientDriver:
        case cudaErrorInvalidDevice:
        case cudaErrorDevicesUnavailable:
        case cudaErrorCompatNotSupportedOnDevice:
                err = -ENODEV;
                break;
        case cudaErrorInvalidResourceHandle:
        case cudaErrorMapBufferObjectFailed:
                err = -ESTALE;
                break;
        default:
                err = -EIO;
                break;
        }
        return kv_fail(err, msg, msglen, "%s: %s: %s", what ? what : "CUDA", cudaGetErrorName(e),
                       cudaGetErrorString(e));
}

extern "C" int kv_cuda_available(void)
{
        int n = 0;

        /* cudaGetDeviceCount fails (rather than returning 0) when no driver is
         * loaded; both mean "no usable device". */
        if (cudaGetDeviceCount(&n) != cudaSuccess) {
                (void)cudaGetLastError(); /* clear the sticky-free error state */
                return 0;
        }
        return n > 0;
}

extern "C" int kv_cuda_check_aligned(const struct kv_pool_view *p, uint32_t layer, const char *op, char *msg,
                                     size_t msglen)
{
        const struct kv_layout *L = &p->layout;
        const uintptr_t b = (uintptr_t)p->base;
        uintptr_t a = (b + kv_layout_k(L, layer)) | (b + kv_layout_v(L, layer));

        if (L->g.dtype == KVC_DTYPE_FP4_E2M1)
                a |= (b + kv_layout_ks(L, layer)) | (b + kv_layout_vs(L, layer));
        if (L->token_bytes % 16 || a % 16)
                return kv_fail(-EINVAL, msg, msglen, "%s: the pool's layer %u arrays or token rows are not 16-byte aligned",
                               op, layer);
        return 0;
}

/* Checks shared by write and gather: the pool view (kv_ref_check_view), a
 * head_dim the kernels are built for, the layer with its fp8 scales
 * (kv_ref_check_layer) and its arrays' alignment. */
static int check_pool(const struct kv_pool_view *p, uint32_t layer, char *msg, size_t msglen)
{
        int r = kv_ref_check_view(p, NULL, msg, msglen);

        if (r < 0)
                return r;
        if (p->layout.g.head_dim != 64 && p->layout.g.head_dim != 128 && p->layout.g.head_dim != 256)
                return kv_fail(-EINVAL, msg, msglen,
                               "pool: head_dim %u is not supported by the CUDA kernels (64, 128 or 256)",
                               p->layout.g.head_dim);
        r = kv_ref_check_layer(p, layer, NULL, msg, msglen);
        return r < 0 ? r : kv_cuda_check_aligned(p, layer, "pool", msg, msglen);
}

extern "C" int kv_cuda_check_write(const struct kv_pool_view *p, const struct kvc_write_args *a,
                                   char *msg, size_t msglen)
{
        int64_t row;
        size_t esz;
        int r;

        if (!a)
                return kv_fail(-EINVAL, msg, msglen, "args: NULL write arguments");
        r = check_pool(p, a->layer, msg, msglen);
        if (r < 0)
                return r;
        switch (a->elem) {
        case KVC_ELEM_F32: esz = 4; break;
        case KVC_ELEM_BF16: esz = 2; break;
        case KVC_ELEM_F16: esz = 2; break;
        default:
                return kv_fail(-EINVAL, msg, msglen, "elem: unknown element type %d (f32, bf16 or f16)", (int)a->elem);
        }
        if (a->num_tokens == 0)
                return 0;
        if (!a->k || !a->v)
                return kv_fail(-EINVAL, msg, msglen, "%s: NULL with num_tokens %u", !a->k ? "k" : "v", a->num_tokens);
        if (!a->slots)
                return kv_fail(-EINVAL, msg, msglen, "slots: NULL with num_tokens %u", a->num_tokens);
        row = (int64_t)p->layout.g.kv_heads * p->layout.g.head_dim;
        if (a->k_row_stride < row)
                return kv_fail(-EINVAL, msg, msglen, "k_row_stride: %lld is less than kv_heads*head_dim = %lld",
                               (long long)a->k_row_stride, (long long)row);
        if (a->v_row_stride < row)
                return kv_fail(-EINVAL, msg, msglen, "v_row_stride: %lld is less than kv_heads*head_dim = %lld",
                               (long long)a->v_row_stride, (long long)row);
        /* the last row's end must be addressable without overflow: the
         * kernel computes t * stride * esz in int64 (the same bound as
         * kv_ref_write's) */
        if ((uint64_t)a->k_row_stride > (uint64_t)(PTRDIFF_MAX / esz) / a->num_tokens ||
            (uint64_t)a->v_row_stride > (uint64_t)(PTRDIFF_MAX / esz) / a->num_tokens)
                return kv_fail(-EINVAL, msg, msglen, "k_row_stride/v_row_stride: %u rows overflow the address space",
                               a->num_tokens);
        if ((uintptr_t)a->k % esz || (uintptr_t)a->v % esz)
                return kv_fail(-EINVAL, msg, msglen, "%s: pointer not aligned to its %zu-byte element",
                               (uintptr_t)a->k % esz ? "k" : "v", esz);
        if ((uintptr_t)a->slots % 8)
                return kv_fail(-EINVAL, msg, msglen, "slots: pointer not aligned to 8 bytes");
        return 0;
}

extern "C" int kv_cuda_check_gather(const struct kv_pool_view *p, const struct kvc_gather_args *a,
                                    char *msg, size_t msglen)
{
        size_t esz;
        int r;

        if (!a)
                return kv_fail(-EINVAL, msg, msglen, "args: NULL gather arguments");
        r = check_pool(p, a->layer, msg, msglen);
        if (r < 0)
                return r;
        switch (a->elem) {
        case KVC_ELEM_F32: esz = 4; break;
        case KVC_ELEM_BF16: esz = 2; break;
        default:
                return kv_fail(-EINVAL, msg, msglen, "elem: gather writes f32 or bf16, not element type %d",
                               (int)a->elem);
        }
        if (a->n_pages == 0)
                return 0;
        if (!a->pages)
                return kv_fail(-EINVAL, msg, msglen, "pages: NULL with n_pages %u", a->n_pages);
        if (!a->k_out || !a->v_out)
                return kv_fail(-EINVAL, msg, msglen, "%s: NULL with n_pages %u", !a->k_out ? "k_out" : "v_out",
                               a->n_pages);
        /* the kernel writes 16-byte vectors (rows are multiples of 16 bytes) */
        if ((uintptr_t)a->k_out % 16 || (uintptr_t)a->v_out % 16)
                return kv_fail(-EINVAL, msg, msglen, "%s: pointer not 16-byte aligned (element size %zu)",
                               (uintptr_t)a->k_out % 16 ? "k_out" : "v_out", esz);
        if ((uintptr_t)a->pages % 4)
                return kv_fail(-EINVAL, msg, msglen, "pages: pointer not aligned to 4 bytes");
        return 0;
}
