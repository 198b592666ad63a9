/* kv_write.cu - kv_cuda_write: checks the arguments, dispatches dtype and
 * element type, launches kvk::write_kernel (kv_write.cuh) on the caller's
 * stream. */
#include <errno.h>
#include <stdio.h>
#include <cuda_runtime.h>

#include "kv_write.cuh"

using namespace kvk;

template <int D>
static cudaError_t launch_d(const write_params &wp, enum kvc_elem elem, unsigned grid, cudaStream_t s)
{
        switch (elem) {
        case KVC_ELEM_F32:
                write_kernel<D, KVC_ELEM_F32><<<grid, 256, 0, s>>>(wp);
                break;
        case KVC_ELEM_BF16:
                write_kernel<D, KVC_ELEM_BF16><<<grid, 256, 0, s>>>(wp);
                break;
        case KVC_ELEM_F16:
                write_kernel<D, KVC_ELEM_F16><<<grid, 256, 0, s>>>(wp);
                break;
        }
        return cudaGetLastError();
}

/* Contract: kernels/kv_ops.h.  Asynchronous on stream (a cudaStream_t, NULL =
 * the default stream); every host-side argument is checked before the launch
 * (kv_cuda_check_write); slots are range-checked in the kernel, which skips
 * -1 and any slot outside [0, num_pages*page_size).  Thread-safe. */
extern "C" int kv_cuda_write(const struct kv_pool_view *p, const struct kvc_write_args *a, void *stream,
                             char *msg, size_t msglen)
{
        const struct kv_layout *L;
        write_params wp;
        size_t esz;
        uint64_t items;
        cudaError_t e;
        int r;

        r = kv_cuda_check_write(p, a, msg, msglen);
        if (r < 0 || a->num_tokens == 0)
                return r;
        L = &p->layout;
        esz = a->elem == KVC_ELEM_F32 ? 4 : 2;

        wp.src[0] = (const uint8_t *)a->k;
        wp.src[1] = (const uint8_t *)a->v;
        wp.stride[0] = a->k_row_stride * (int64_t)esz;
        wp.stride[1] = a->v_row_stride * (int64_t)esz;
        /* 16-byte loads need every row start 16-byte aligned */
        wp.vec[0] = ((uintptr_t)a->k % 16 == 0) && (wp.stride[0] % 16 == 0);
        wp.vec[1] = ((uintptr_t)a->v % 16 == 0) && (wp.stride[1] % 16 == 0);
        wp.slots = a->slots;
        wp.T = a->num_tokens;
        wp.chunks = (uint32_t)(L->token_bytes / 16);
        wp.dst[0] = (uint8_t *)p->base + kv_layout_k(L, a->layer);
        wp.dst[1] = (uint8_t *)p->base + kv_layout_v(L, a->layer);
        wp.sdst[0] = (uint8_t *)p->base + kv_layout_ks(L, a->layer);
        wp.sdst[1] = (uint8_t *)p->base + kv_layout_vs(L, a->layer);
        wp.page_bytes = L->page_bytes;
        wp.token_bytes = L->token_bytes;
        wp.scale_page_bytes = L->scale_page_bytes;
        wp.scale_token_bytes = L->scale_token_bytes;
        wp.page_size = L->g.page_size;
        wp.num_slots = (int64_t)L->num_pages * L->g.page_size;
        wp.scale[0] = 1.0f;
        wp.scale[1] = 1.0f;
        if (L->g.dtype == KVC_DTYPE_FP8_E4M3 || L->g.dtype == KVC_DTYPE_FP8_E5M2) {
                wp.scale[0] = p->k_scale[a->layer];
                wp.scale[1] = p->v_scale[a->layer];
        }
        /* kv_layout puts every array on a 256-byte boundary; a view built by
         * hand might not */
        if (L->token_bytes % 16 || ((uintptr_t)wp.dst[0] | (uintptr_t)wp.dst[1]) % 16) {
                if (msg && msglen)
                        snprintf(msg, msglen, "pool: layer %u arrays are not 16-byte aligned", a->layer);
                return -EINVAL;
        }

        items = (uint64_t)wp.T * 2 * wp.chunks;
        unsigned grid = grid_for(items, 256);
        cudaStream_t s = (cudaStream_t)stream;
        switch (L->g.dtype) {
        case KVC_DTYPE_BF16: e = launch_d<KVC_DTYPE_BF16>(wp, a->elem, grid, s); break;
        case KVC_DTYPE_FP16: e = launch_d<KVC_DTYPE_FP16>(wp, a->elem, grid, s); break;
        case KVC_DTYPE_FP8_E4M3: e = launch_d<KVC_DTYPE_FP8_E4M3>(wp, a->elem, grid, s); break;
        case KVC_DTYPE_FP8_E5M2: e = launch_d<KVC_DTYPE_FP8_E5M2>(wp, a->elem, grid, s); break;
        case KVC_DTYPE_FP4_E2M1: e = launch_d<KVC_DTYPE_FP4_E2M1>(wp, a->elem, grid, s); break;
        default: return -EINVAL; /* unreachable: checked above */
        }
        return kv_cuda_errno(e, "kv_cuda_write: launch", msg, msglen);
}
