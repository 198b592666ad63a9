/* kv_attn_common.cuh - what the attention code shares between the CPU
 * reference (kv_ref_attn.c) and the CUDA launchers (kv_attn_decode.cu,
 * kv_attn_extend.cu): one argument check with one set of messages.
 *
 * The C part (outside __CUDACC__) is plain C and is included from C files.
 *
 * Decode is the special case of extend with one query row per sequence, so
 * both operations are described to the checker by one struct:
 *   row r of q/out belongs to sequence b(r); for decode b(r) = r; for extend
 *   rows [qo_indptr[b], qo_indptr[b+1]) belong to sequence b, and query i of
 *   sequence b sits at position seq_len[b] - n_b + i and sees keys 0..pos.
 */
#ifndef KV_ATTN_COMMON_CUH
#define KV_ATTN_COMMON_CUH

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "kvclient.h"
#include "kv_ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One attention call, normalized.  Every pointer here is what the caller
 * passed; *_host are host memory (on a host pool they are the same arrays). */
struct kv_attn_call {
        const char    *op;            /* "decode" or "extend", for messages */
        const void    *q;             /* [rows, Hq, D] */
        void          *out;           /* [rows, Hq, D] */
        enum kvc_elem  elem;
        const int32_t *page_table;    /* [B, max_pages] (device memory on CUDA) */
        uint32_t       max_pages;
        const int32_t *seq_lens;      /* [B] (device memory on CUDA) */
        const int32_t *seq_lens_host; /* [B] host */
        const int32_t *qo_indptr;     /* [B+1] or NULL for decode (device on CUDA) */
        const int32_t *qo_indptr_host;/* [B+1] host, or NULL for decode */
        uint32_t       batch;
        uint32_t       num_q_heads;
        float          sm_scale;
        uint32_t       layer;
        void          *ws;            /* CUDA only: the caller's scratch for the split
                                         partials, or NULL for the library's own */
        size_t         ws_bytes;      /* its size */
};

/* Most query heads an attention call takes (far above any model's; the
 * launch grid counts rows x kv heads x groups of 8 q heads in 32 bits). */
#define KV_ATTN_MAX_Q_HEADS 65536u

/* Checks every host-visible argument of an attention call against the pool:
 * pool view (base, geometry, fp8 scales), layer, elem (BF16 or F16), q/out
 * non-NULL and 2-byte aligned when there are rows, page_table, seq_lens,
 * qo_indptr and their host copies 4-byte aligned (before any is read),
 * Hq a positive multiple of kv_heads and at most
 * KV_ATTN_MAX_Q_HEADS, sm_scale finite, max_pages * page_size <= 2^31-1, a
 * page table whenever max_pages > 0, every
 * seq_len in [0, max_pages*page_size], for extend qo_indptr[0] = 0,
 * non-decreasing, n_b <= seq_len[b]; and, when read_pages is true (host pool:
 * the page table is host memory), every page id the call will touch in
 * [0, num_pages) (-ERANGE).  device says the head_dim must be one the CUDA
 * kernels were built for (64, 128, 256).  On success *ret_rows gets the
 * number of query rows (B for decode, qo_indptr[B] for extend) and
 * *ret_max_len the largest seq_len.  Returns 0, -EINVAL or -ERANGE with one
 * line naming the argument in msg. */
int kv_attn_check(const struct kv_pool_view *p, const struct kv_attn_call *c, bool read_pages,
                  bool device, uint32_t *ret_rows, uint32_t *ret_max_len, char *msg, size_t msglen);

/* Fill c from decode / extend arguments (a must not be NULL; nothing is
 * checked here). */
void kv_attn_from_decode(const struct kvc_decode_args *a, struct kv_attn_call *c);
void kv_attn_from_extend(const struct kvc_extend_args *a, struct kv_attn_call *c);

/* CUDA builds only (kv_attn_decode.cu): checks c with kv_attn_check (page
 * ids are device memory and are range-checked in the kernel instead), plans
 * the split over the sequence and launches the attention kernel (plus the
 * split reduction) on stream.  The split partials go to c->ws when it is
 * not NULL (kv_attn_ws_check's shape, device memory of the current device:
 * -EINVAL; smaller than the plan needs: -ENOSPC, before any launch), else
 * to scratch taken with cudaMallocFromPoolAsync and given back with
 * cudaFreeAsync on the same stream, so calls on different streams never
 * share it.  Returns 0 or a negative errno with msg naming the argument or
 * the CUDA error. */
int kv_attn_cuda_run(const struct kv_pool_view *p, const struct kv_attn_call *c, void *stream,
                     char *msg, size_t msglen);

/* CUDA builds only: checks c and plans it as kv_attn_cuda_run does, twice:
 * as an eager call (for seq_lens_host) and as a captured one (for the page
 * table's capacity), launches nothing, and stores in *ret_bytes the larger
 * scratch the two plans' split partials need (each 0 when that plan does
 * not split; 0 for no rows), enough for the call on any stream, capturing
 * or not.  c->ws is not looked at.  Returns 0 or kv_attn_cuda_run's
 * argument errors, *ret_bytes untouched then. */
int kv_attn_cuda_ws_bytes(const struct kv_pool_view *p, const struct kv_attn_call *c, size_t *ret_bytes,
                          char *msg, size_t msglen);

#ifdef __cplusplus
}
#endif

#endif
