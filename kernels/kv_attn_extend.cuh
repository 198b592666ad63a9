/* kv_attn_extend.cuh - the part of the attention kernel that is specific to
 * extend (chunked prefill): which sequence a query row belongs to and how
 * many keys it sees.
 *
 * With few rows per sequence extend runs the decode kernel
 * (kv_attn_decode.cuh; with many, kv_attn_prefill.cuh): a query row of
 * extend is a decode row whose sequence is found through qo_indptr and whose
 * length is its causal horizon.  Query i of sequence b (rows
 * [qo_indptr[b], qo_indptr[b+1])) sits at position seq_len[b] - n_b + i and
 * attends to keys 0 .. seq_len[b] - n_b + i, i.e. a decode over the first
 * seq_len[b] - n_b + i + 1 keys.  Every row reads its sequence's K/V itself;
 * rows of one sequence share those bytes through L2.
 */
#ifndef KV_ATTN_EXTEND_CUH
#define KV_ATTN_EXTEND_CUH

#ifdef __CUDACC__
#include <stdint.h>

namespace kva {

/* Row r -> (sequence, keys seen), from device memory.  qo_indptr NULL means
 * decode (row r is sequence r, it sees seq_lens[r] keys).  Lengths are
 * clamped to [0, cap] (cap = max_pages * page_size) so that device arrays
 * that disagree with the host copies the launcher checked can never make
 * the kernel read outside the page table. */
__device__ __forceinline__ void row_to_seq(const int32_t *__restrict__ seq_lens,  // [B]
                                           const int32_t *__restrict__ qo_indptr, // [B+1] or NULL
                                           uint32_t batch, uint32_t r, uint32_t cap,
                                           uint32_t &ret_b, uint32_t &ret_len)
{
        int64_t len;
        uint32_t b;

        if (!qo_indptr) {
                b = r;
                len = __ldg(seq_lens + r);
        } else {
                /* largest b with indptr[b] <= r (indptr is non-decreasing;
                 * empty sequences repeat a value, the search skips them) */
                uint32_t lo = 0, hi = batch; /* answer in [lo, hi) */
                while (hi - lo > 1) {
                        uint32_t mid = (lo + hi) / 2;
                        if ((uint32_t)__ldg(qo_indptr + mid) <= r)
                                lo = mid;
                        else
                                hi = mid;
                }
                b = lo;
                const int64_t i0 = __ldg(qo_indptr + b), i1 = __ldg(qo_indptr + b + 1);
                len = (int64_t)__ldg(seq_lens + b) - (i1 - i0) + ((int64_t)r - i0) + 1;
        }
        if (len < 0)
                len = 0;
        if (len > (int64_t)cap)
                len = cap;
        ret_b = b;
        ret_len = (uint32_t)len;
}

} // namespace kva
#endif /* __CUDACC__ */
#endif
