/* kv_gather.cu - kv_cuda_gather: checks the arguments, dispatches dtype and
 * output element type, launches kvk::gather_kernel (kv_gather.cuh). */
#include <errno.h>
#include <cuda_runtime.h>

#include "kv_gather.cuh"

using namespace kvk;

template <int D>
static cudaError_t launch_d(const gather_params &gp, enum kvc_elem elem, unsigned grid, cudaStream_t s)
{
        if (elem == KVC_ELEM_F32)
                gather_kernel<D, KVC_ELEM_F32><<<grid, 256, 0, s>>>(gp);
        else
                gather_kernel<D, KVC_ELEM_BF16><<<grid, 256, 0, s>>>(gp);
        return cudaGetLastError();
}

/* Contract: kernels/kv_ops.h.  Asynchronous on stream; host-side arguments
 * are checked before the launch (kv_cuda_check_gather); page ids are
 * range-checked in the kernel: the output rows of a page id outside
 * [0, num_pages) are written as zeros.  Thread-safe. */
extern "C" int kv_cuda_gather(const struct kv_pool_view *p, const struct kvc_gather_args *a, void *stream,
                              char *msg, size_t msglen)
{
        const struct kv_layout *L;
        gather_params gp;
        cudaError_t e;
        int r;

        r = kv_cuda_check_gather(p, a, msg, msglen);
        if (r < 0 || a->n_pages == 0)
                return r;
        L = &p->layout;
        gp.pages = a->pages;
        gp.n_pages = a->n_pages;
        gp.chunks = (uint32_t)(L->token_bytes / 16);
        gp.src[0] = (const uint8_t *)p->base + kv_layout_k(L, a->layer);
        gp.src[1] = (const uint8_t *)p->base + kv_layout_v(L, a->layer);
        gp.ssrc[0] = (const uint8_t *)p->base + kv_layout_ks(L, a->layer);
        gp.ssrc[1] = (const uint8_t *)p->base + kv_layout_vs(L, a->layer);
        gp.out[0] = (uint8_t *)a->k_out;
        gp.out[1] = (uint8_t *)a->v_out;
        gp.out_row_bytes = (uint64_t)L->g.kv_heads * L->g.head_dim * (a->elem == KVC_ELEM_F32 ? 4 : 2);
        gp.page_bytes = L->page_bytes;
        gp.token_bytes = L->token_bytes;
        gp.scale_page_bytes = L->scale_page_bytes;
        gp.scale_token_bytes = L->scale_token_bytes;
        gp.page_size = L->g.page_size;
        gp.num_pages = L->num_pages;
        gp.scale[0] = 1.0f;
        gp.scale[1] = 1.0f;
        if (L->g.dtype == KVC_DTYPE_FP8_E4M3 || L->g.dtype == KVC_DTYPE_FP8_E5M2) {
                gp.scale[0] = p->k_scale[a->layer];
                gp.scale[1] = p->v_scale[a->layer];
        }
        uint64_t items = (uint64_t)a->n_pages * L->g.page_size * 2 * gp.chunks;
        unsigned grid = grid_for(items, 256);
        cudaStream_t s = (cudaStream_t)stream;
        if (!with_dtype(L->g.dtype, [&](auto t) { e = launch_d<decltype(t)::value>(gp, a->elem, grid, s); }))
                return -EINVAL;
        return kv_cuda_errno(e, "kv_cuda_gather: launch", msg, msglen);
}
