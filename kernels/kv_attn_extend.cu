/* kv_attn_extend.cu - kv_cuda_extend: extend (chunked-prefill) attention on
 * a CUDA pool.  kv_attn_cuda_run picks the kernel: with many rows per
 * sequence the tiled one (kv_attn_prefill.cuh: a K/V tile serves 64 or 128
 * query vectors), otherwise the decode kernel over query rows (see
 * kv_attn_extend.cuh for how a row maps to its sequence and causal
 * horizon); both take every dtype, head dim and GQA grouping, and split
 * long sequences. */
#include <errno.h>

#include "kv_ops.h"
#include "kv_attn_common.cuh"
#include "kv_ref_common.h"

/* Fills c from a; -EINVAL with msg for what kv_attn_check does not catch
 * on a CUDA pool: both qo_indptr copies are required. */
static int extend_call(const struct kvc_extend_args *a, struct kv_attn_call *c, char *msg, size_t msglen)
{
        if (!a)
                return kv_fail(-EINVAL, msg, msglen, "extend: args are NULL");
        kv_attn_from_extend(a, c);
        if (a->batch > 0 && (!a->qo_indptr || !a->qo_indptr_host))
                return kv_fail(-EINVAL, msg, msglen,
                               "extend: %s is NULL (device qo_indptr and its host copy are required)",
                               !a->qo_indptr ? "qo_indptr" : "qo_indptr_host");
        return 0;
}

/* Extend attention (kv_ops.h): q, out, qo_indptr, page_table and seq_lens
 * are device memory; qo_indptr_host and seq_lens_host their host copies,
 * both required (they are checked and plan the launch).  Query i of sequence
 * b sits at position seq_len[b] - n_b + i and attends to keys 0..position.
 * Asynchronous on stream.  Returns 0 or a negative errno with msg naming the
 * argument. */
extern "C" int kv_cuda_extend(const struct kv_pool_view *p, const struct kvc_extend_args *a, void *stream,
                              char *msg, size_t msglen)
{
        return kv_cuda_extend_ws(p, a, NULL, 0, stream, msg, msglen);
}

/* kv_cuda_extend with the caller's scratch for the split partials (ws, of
 * ws_bytes; NULL and 0: the library's own), kv_ops.h. */
extern "C" int kv_cuda_extend_ws(const struct kv_pool_view *p, const struct kvc_extend_args *a, void *ws,
                                 size_t ws_bytes, void *stream, char *msg, size_t msglen)
{
        struct kv_attn_call c;
        int r = extend_call(a, &c, msg, msglen);

        if (r < 0)
                return r;
        c.ws = ws;
        c.ws_bytes = ws_bytes;
        return kv_attn_cuda_run(p, &c, stream, msg, msglen);
}

/* The scratch kv_cuda_extend_ws needs for a, eagerly or captured (kv_ops.h). */
extern "C" int kv_cuda_extend_ws_bytes(const struct kv_pool_view *p, const struct kvc_extend_args *a,
                                       size_t *ret_bytes, char *msg, size_t msglen)
{
        struct kv_attn_call c;
        int r;

        if (a && !ret_bytes) /* after a NULL a, as decode's */
                return kv_fail(-EINVAL, msg, msglen, "extend: ret_bytes is NULL");
        if ((r = extend_call(a, &c, msg, msglen)) < 0)
                return r;
        return kv_attn_cuda_ws_bytes(p, &c, ret_bytes, msg, msglen);
}
