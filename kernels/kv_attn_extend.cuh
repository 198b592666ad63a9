/* kv_attn_extend.cuh - the part of the attention kernels that is specific
 * to extend (chunked prefill): which sequence a query row belongs to and
 * how many keys it sees.
 *
 * Query i of sequence b (rows [qo_indptr[b], qo_indptr[b+1])) sits at
 * position seq_len[b] - n_b + i and attends to keys 0 .. seq_len[b] - n_b +
 * i: its causal horizon is seq_len[b] - n_b + i + 1 keys.  With many rows
 * per sequence extend runs the tiled kernel (kv_attn_prefill.cuh), whose
 * CTAs take tiles of QV query vectors (rows x q heads of a kv head); with
 * few, the decode kernel (kv_attn_decode.cuh), a CTA per row or, where a
 * kv head has at most 4 q heads, a CTA per 8 / G rows of one sequence (the
 * mma's 8 columns filled with several rows' heads instead of padding), so
 * that those rows read and dequantize their keys once.  Both find their
 * rows with ptile below.
 */
#ifndef KV_ATTN_EXTEND_CUH
#define KV_ATTN_EXTEND_CUH

#ifdef __CUDACC__
#include <stdint.h>
#include "kv_attn_ring.cuh"

namespace kva {

/* A read-only load of device memory (ld.global.nc); a plain load when the
 * function runs on the host (tests/attn/test_ptile.cu checks ptile there). */
__host__ __device__ __forceinline__ int32_t ld_ro(const int32_t *p)
{
#ifdef __CUDA_ARCH__
        return __ldg(p);
#else
        return *p;
#endif
}

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

/* First grid tile of sequence b in a grid of tiles of QV query vectors:
 * tile j belongs to the sequence b with base(b) <= j < base(b+1), base(b) =
 * b + floor(qo_indptr[b] * G / QV), so no per-sequence prefix sum is needed,
 * at the cost of at most one empty tile per sequence. */
__host__ __device__ __forceinline__ uint64_t ptile_base(const params &p, uint32_t b, int QV)
{
        return b + (uint64_t)(uint32_t)ld_ro(p.qo_indptr + b) * p.G / QV;
}

/* The tiles of such a grid for a batch of rows query rows: base(batch),
 * the launchers' grid.x per kv head (empty tiles included). */
__host__ __device__ __forceinline__ uint64_t ptile_grid(uint32_t batch, uint64_t rows, uint32_t G, int QV)
{
        return batch + rows * G / QV;
}

/* The grid's non-empty tiles, sum over sequences of ceil(n_b * G / QV),
 * from qo, the host copy of qo_indptr (as the launcher checked it). */
__host__ __forceinline__ uint64_t ptile_busy(const int32_t *qo, uint32_t batch, uint32_t G, int QV)
{
        uint64_t n = 0;
        for (uint32_t b = 0; b < batch; b++)
                n += ((uint64_t)(qo[b + 1] - qo[b]) * G + QV - 1) / QV;
        return n;
}

/* The query tile j of a grid: sequence b (the largest with ptile_base(b)
 * <= j), its rows [i0, i0 + nb) of q, its nv = nb * G query vectors in
 * (row, head) order, of which the tile holds v0 .. v0 + QV - 1 (none when
 * v0 >= nv: an empty tile). */
struct ptile {
        uint32_t b, cap;
        int64_t i0, nb, hbase;
        uint64_t nv, v0;

        __host__ __device__ __forceinline__ ptile(const params &p, uint32_t j, int QV)
        {
                uint32_t lo = 0, hi = p.batch;
                while (hi - lo > 1) {
                        const uint32_t mid = (lo + hi) / 2;
                        if (ptile_base(p, mid, QV) <= j)
                                lo = mid;
                        else
                                hi = mid;
                }
                b = lo;
                /* qo_indptr is device memory the launcher only saw the host
                 * copy of: rows are kept inside [0, rows) whatever it holds */
                i0 = min(max((int64_t)ld_ro(p.qo_indptr + b), (int64_t)0), (int64_t)p.rows);
                const int64_t i1 = min(max((int64_t)ld_ro(p.qo_indptr + b + 1), i0), (int64_t)p.rows);
                nb = i1 - i0;
                nv = (uint64_t)nb * p.G;
                v0 = (j - ptile_base(p, b, QV)) * (uint64_t)QV;
                cap = p.max_pages * p.page_size;
                hbase = (int64_t)ld_ro(p.seq_lens + b) - nb + 1;
        }

        /* Vector v sees keys [0, horizon(v)): row i of the sequence sees
         * hbase + i, clamped to [0, cap] as row_to_seq does for decode. */
        __host__ __device__ __forceinline__ uint32_t horizon(const params &p, uint64_t v) const
        {
                const int64_t x = hbase + (int64_t)(v / p.G);
                return x < 0 ? 0u : x > (int64_t)cap ? cap : (uint32_t)x;
        }
};

} // namespace kva
#endif /* __CUDACC__ */
#endif
