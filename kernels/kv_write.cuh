/* kv_write.cuh - the quantizing write kernel: K and V of T new tokens into
 * their slots of one layer of a pool (design §8).
 *
 * One thread produces 16 bytes of one token's K row and the same 16 bytes
 * of its V row in the pool: 8 elements of a 16-bit pool, 16 of an fp8 pool,
 * 32 (two fp4 blocks plus their two E8M0 scale bytes) of an fp4 pool.  It
 * reads its inputs with 16-byte loads (when the caller's tensors are
 * 16-byte aligned), all of them before converting, and writes 16-byte
 * stores: one pass over the input, every byte written once.
 * A token's row is [kv_heads * head_dim] contiguous elements both in the
 * input and in the pool slot, and fp4 blocks of 16 never straddle a head
 * (head_dim is a multiple of 16), so the kernel needs no head index and
 * head_dim is a runtime value.
 *
 * Bits: the result equals kv_ref_write bit for bit.  Conversions are the
 * codec's (kernels/kv_codec.h) or hardware instructions proven equal to them
 * on every input they are used for (tests/gpu/test_conv_exhaustive.cu runs
 * them next to the codec over all 2^32 floats; tests/gpu/test_write_gather.c
 * compares whole pools with kv_ref_write).  FP8 stores the codes of x / scale
 * correctly rounded, as the reference's division does (fp8x2_div_fast, with
 * the IEEE division where it cannot decide); FP4 from bf16 input rounds in
 * bf16 pairs (fp4_block16_bf), from f16 input in f16 pairs (fp4_block16_f16),
 * from fp32 input in fp32 (fp4_block16).
 */
#ifndef KV_WRITE_CUH
#define KV_WRITE_CUH

#include "kv_cuda_common.cuh"
#include "kv_cuda_fp4.cuh"

/* Launch the write with programmatic dependent launch (see launch_write_d).
 * Measured on the H200 before it was made the default: docs/benchmarks.md. */
#ifndef KV_WRITE_PDL
#define KV_WRITE_PDL 1
#endif

/* The slot's load and the input's go out together, the slot checked when
 * both are back (see write_kernel), except for fp8 pools; 0, for
 * measuring: the slot first for every dtype. */
#ifndef KV_WRITE_EARLY
#define KV_WRITE_EARLY 1
#endif

/* KV_WRITE_SPLIT8_T (kv_ops.h): fp8 calls that run K and V apart. */

namespace kvk {

struct write_params {
        const uint8_t *src[2];        /* k, v: [T, kv_heads, head_dim] elements, rows stride[] bytes apart */
        int64_t        stride[2];     /* bytes between tokens */
        bool           vec[2];        /* src and stride 16-byte aligned */
        bool           flat;          /* page_bytes == page_size * token_bytes (and for scales):
                                         a slot's byte offset is slot * token_bytes */
        const int64_t *slots;         /* [T] device memory; -1 or out of range = skip */
        uint32_t       T;
        uint32_t       chunks;        /* 16-byte output chunks per token row */
        uint8_t       *dst[2];        /* layer's K, V arrays: [num_pages][page_size][kv_heads][head_dim] */
        uint8_t       *sdst[2];       /* fp4: layer's KS, VS arrays: [num_pages][page_size][kv_heads][head_dim/16] */
        uint64_t       page_bytes, token_bytes, scale_page_bytes, scale_token_bytes;
        uint32_t       page_size;
        int64_t        num_slots;     /* num_pages * page_size */
        float          scale[2];      /* fp8: k and v scale of the layer */
        float          rscale[2];     /* fp8: RN(1 / scale), for fp8x2_div_fast */
        bool           fastdiv;       /* both scales in [2^-60, 2^60]: fp8x2_div_fast applies */
};

/* x / s rounded to nearest even, as the host's float division.  GPU
 * arithmetic turns a NaN into the canonical NaN (sign dropped) where the
 * host keeps the operand's NaN: keep x itself so the codec sees the same
 * NaN as on the host.  (The kernel uses fp8x2_div, which checks the
 * quotient instead; this form is the codec-only build's and the tests'.) */
__device__ __forceinline__ float div_like_host(float x, float s)
{
        return isnan(x) ? x : __fdiv_rn(x, s);
}

/* Elements of input converted per chunk: one 16-byte output chunk. */
template <int D> struct epc { static constexpr int n = 8; };          /* bf16, fp16 */
template <> struct epc<KVC_DTYPE_FP8_E4M3> { static constexpr int n = 16; };
template <> struct epc<KVC_DTYPE_FP8_E5M2> { static constexpr int n = 16; };
template <> struct epc<KVC_DTYPE_FP4_E2M1> { static constexpr int n = 32; };

/* Converts N = epc<D>::n fp32 values into one 16-byte chunk (and, for fp4,
 * the two block scale bytes, first block in the low byte of *sc). */
template <int D>
__device__ __forceinline__ uint4 convert_chunk(const float (&f)[epc<D>::n], float scale, float rscale, bool fastdiv,
                                               uint16_t *sc)
{
        uint32_t w[4];

        if constexpr (D == KVC_DTYPE_BF16) {
#pragma unroll
                for (int i = 0; i < 4; i++)
                        w[i] = (uint32_t)kv_f32_to_bf16(f[2 * i]) | (uint32_t)kv_f32_to_bf16(f[2 * i + 1]) << 16;
        } else if constexpr (D == KVC_DTYPE_FP16) {
#pragma unroll
                for (int i = 0; i < 4; i++)
                        w[i] = f32x2_to_f16x2(f[2 * i], f[2 * i + 1]);
        } else if constexpr (D == KVC_DTYPE_FP8_E4M3 || D == KVC_DTYPE_FP8_E5M2) {
#ifdef KV_CUDA_CODEC_ONLY
#pragma unroll
                for (int i = 0; i < 4; i++) {
                        const float q[4] = { div_like_host(f[4 * i], scale), div_like_host(f[4 * i + 1], scale),
                                             div_like_host(f[4 * i + 2], scale), div_like_host(f[4 * i + 3], scale) };
                        w[i] = fp8_codec<D>(q[0]) | fp8_codec<D>(q[1]) << 8 | fp8_codec<D>(q[2]) << 16 |
                               fp8_codec<D>(q[3]) << 24;
                }
#else
                bool hard = !fastdiv;
                if (fastdiv) {
#pragma unroll
                        for (int i = 0; i < 4; i++)
                                w[i] = fp8x2_div_fast<D>(f[4 * i], f[4 * i + 1], scale, rscale, hard) |
                                       fp8x2_div_fast<D>(f[4 * i + 2], f[4 * i + 3], scale, rscale, hard) << 16;
                }
                if (__builtin_expect(hard, 0)) {
                        /* a code the fast quotient cannot decide, or a scale
                         * outside its range: the IEEE division */
#pragma unroll
                        for (int i = 0; i < 4; i++)
                                w[i] = fp8x2_div<D>(f[4 * i], f[4 * i + 1], scale) |
                                       fp8x2_div<D>(f[4 * i + 2], f[4 * i + 3], scale) << 16;
                }
#endif
        } else {
                /* fp4: two blocks of 16 elements, each with its own E8M0 scale */
                uint32_t s0, s1;
                fp4_block16(&f[0], w[0], w[1], s0);
                fp4_block16(&f[16], w[2], w[3], s1);
                *sc = (uint16_t)(s0 | s1 << 8);
        }
        return make_uint4(w[0], w[1], w[2], w[3]);
}

/* fp4 pools with bf16 or f16 input skip the widening to fp32: the block
 * encoder works on the raw 16-bit words, two elements per instruction
 * (fp4_block16_h, which hands bf16 to fp4_block16_bf).  fp32 input keeps the
 * fp32 encoder (rounding its values to f16 first would round twice); the
 * codec-only build keeps the codec. */
template <int D, int E>
__host__ __device__ __forceinline__ constexpr bool fp4_from_raw()
{
#ifdef KV_CUDA_CODEC_ONLY
        return false;
#else
        return D == KVC_DTYPE_FP4_E2M1 && E != KVC_ELEM_F32;
#endif
}

/* fp8 from 16-bit input: K and V in separate threads when launched with
 * grid z = 2 (launch_write_d, KV_WRITE_SPLIT8_T). */
template <int D, int E>
__host__ __device__ __forceinline__ constexpr bool fp8_may_split()
{
#ifdef KV_CUDA_CODEC_ONLY
        return false;
#else
        return KV_WRITE_SPLIT8_T > 0 && (D == KVC_DTYPE_FP8_E4M3 || D == KVC_DTYPE_FP8_E5M2) && E != KVC_ELEM_F32;
#endif
}

/* One 16-byte chunk of an fp4 pool (two blocks of 16) from 32 raw 16-bit
 * inputs; the two scale bytes into *sc, first block in the low byte. */
template <int E>
__device__ __forceinline__ uint4 fp4_chunk_raw(const uint4 (&w)[4], uint16_t *sc)
{
        const uint32_t b0[8] = { w[0].x, w[0].y, w[0].z, w[0].w, w[1].x, w[1].y, w[1].z, w[1].w };
        const uint32_t b1[8] = { w[2].x, w[2].y, w[2].z, w[2].w, w[3].x, w[3].y, w[3].z, w[3].w };
        uint32_t o[4], s0, s1;
        fp4_block16_h<E>(b0, o[0], o[1], s0);
        fp4_block16_h<E>(b1, o[2], o[3], s1);
        *sc = (uint16_t)(s0 | s1 << 8);
        return make_uint4(o[0], o[1], o[2], o[3]);
}

/* ---- the kernel -------------------------------------------------------- */

/* Byte offsets of slot's token row in a layer's K (or V) array and in its
 * scale array; no division when the layout is flat (make_write_params). */
__device__ __forceinline__ void slot_offsets(const write_params &p, int64_t slot, uint64_t *doff, uint64_t *soff)
{
        if (p.flat) {
                *doff = (uint64_t)slot * p.token_bytes;
                *soff = (uint64_t)slot * p.scale_token_bytes;
        } else {
                const uint64_t page = (uint64_t)slot / p.page_size, off = (uint64_t)slot - page * p.page_size;
                *doff = page * p.page_bytes + off * p.token_bytes;
                *soff = page * p.scale_page_bytes + off * p.scale_token_bytes;
        }
}

/* Block (tx, ty): threadIdx.x walks the 16-byte chunks of a token row,
 * threadIdx.y the tokens; grid (ceil(T / ty), ceil(chunks / tx)).  Each
 * thread converts chunk c of token t for K and for V: both inputs' loads go
 * out before either conversion, and the slot, index and address arithmetic
 * is shared.  fp4 from 16-bit input (fp4_from_raw) instead runs K and V in
 * separate threads, K in grid z = 0 and V in z = 1: its chunk is 64 input
 * bytes per tensor, and with both in one thread too few threads keep too few
 * bytes in flight (H200, T = 16384: 85.3 % of the copy split, 81.8 % joint;
 * docs/benchmarks.md, Write kernel, has the run and its command, a bench-write
 * mode removed after commit 63fc4fa).  fp8 from 16-bit input does the same
 * in calls of at most KV_WRITE_SPLIT8_T tokens (launched with grid z = 2),
 * where more threads with half the work each finish short calls sooner.
 * No division unless the pool layout is not flat. */
template <int D, int E>
__global__ void __launch_bounds__(256) write_kernel(const write_params p)
{
        constexpr int N = epc<D>::n;
        constexpr int NW = N * elem_traits<E>::bytes / 16;
        const uint32_t c = blockIdx.y * blockDim.x + threadIdx.x;
        const uint32_t t = blockIdx.x * blockDim.y + threadIdx.y;

        if (t >= p.T || c >= p.chunks)
                return;
        const uint32_t in_off = c * (uint32_t)(N * elem_traits<E>::bytes);
        /* Launched with programmatic stream serialization (launch_write's
         * pdl), this grid may start before the previous kernel on the stream
         * has finished: wait for it, and for its memory, before the first
         * global access.  Launched normally, this is a no-op. */
        grid_dep_wait();
        /* The slot and the input go out together, the slot checked only
         * when both are back (a skipped token's row is read for nothing:
         * it is the caller's memory like every row below T), so that the
         * first loads cost one trip to memory, not two.  Measured on the
         * H200 against the slot first (docs/benchmarks.md, Write kernel):
         * T = 4096 bf16/fp16 2-3% and fp4 5% less time a call, but fp8 1-2%
         * more, so fp8 keeps the slot first. */
        constexpr bool early = KV_WRITE_EARLY && D != KVC_DTYPE_FP8_E4M3 && D != KVC_DTYPE_FP8_E5M2;
        const int64_t slot = __ldg(p.slots + t);
        /* -1 means skip; anything else out of range is skipped too: the
         * slots live on the device, so the launcher cannot check them */
        const bool skip = slot < 0 || slot >= p.num_slots;
        if (!early && skip)
                return;

        /* one tensor a thread: fp4 from 16-bit input always, fp8 from
         * 16-bit input when launched with grid z = 2 (uniform over the grid) */
        if (fp4_from_raw<D, E>() || (fp8_may_split<D, E>() && gridDim.z == 2)) {
                const int h = blockIdx.z; /* 0: K, 1: V */
                uint4 w[NW];
                load_raw<E, N>(p.src[h] + (int64_t)t * p.stride[h] + in_off, p.vec[h], w);
                grid_dep_launch();
                if (early && skip)
                        return;
                uint64_t doff, soff;
                slot_offsets(p, slot, &doff, &soff);
                if constexpr (fp4_from_raw<D, E>()) {
                        uint16_t sc;
                        const uint4 o = fp4_chunk_raw<E>(w, &sc);
                        *(uint4 *)(p.dst[h] + doff + (uint64_t)c * 16) = o;
                        *(uint16_t *)(p.sdst[h] + soff + (uint64_t)c * 2) = sc;
                } else {
                        uint16_t unused = 0;
                        float f[N];
                        unpack_f32<E, N>(w, f);
                        *(uint4 *)(p.dst[h] + doff + (uint64_t)c * 16) =
                                convert_chunk<D>(f, p.scale[h], p.rscale[h], p.fastdiv, &unused);
                }
                return;
        }
        uint4 wk[NW], wv[NW];
        load_raw<E, N>(p.src[0] + (int64_t)t * p.stride[0] + in_off, p.vec[0], wk);
        load_raw<E, N>(p.src[1] + (int64_t)t * p.stride[1] + in_off, p.vec[1], wv);
        /* every load of this thread is issued: the next grid may be
         * scheduled (it waits for this one's completion all the same) */
        grid_dep_launch();
        if (early && skip)
                return;

        uint64_t doff, soff;
        slot_offsets(p, slot, &doff, &soff);

        uint16_t sk = 0, sv = 0;
        float f[N];
        unpack_f32<E, N>(wk, f);
        const uint4 ok = convert_chunk<D>(f, p.scale[0], p.rscale[0], p.fastdiv, &sk);
        unpack_f32<E, N>(wv, f);
        const uint4 ov = convert_chunk<D>(f, p.scale[1], p.rscale[1], p.fastdiv, &sv);
        *(uint4 *)(p.dst[0] + doff + (uint64_t)c * 16) = ok;
        *(uint4 *)(p.dst[1] + doff + (uint64_t)c * 16) = ov;
        if constexpr (D == KVC_DTYPE_FP4_E2M1) {
                /* chunk c holds blocks 2c and 2c+1 of the row: scale bytes 2c, 2c+1 */
                *(uint16_t *)(p.sdst[0] + soff + (uint64_t)c * 2) = sk;
                *(uint16_t *)(p.sdst[1] + soff + (uint64_t)c * 2) = sv;
        }
}

/* Fills the kernel's parameters from checked arguments (kv_cuda_check_write
 * returned 0 and num_tokens > 0). */
static inline void make_write_params(const struct kv_pool_view *p, const struct kvc_write_args *a, write_params *wp)
{
        const struct kv_layout *L = &p->layout;
        const int64_t esz = a->elem == KVC_ELEM_F32 ? 4 : 2;

        wp->src[0] = (const uint8_t *)a->k;
        wp->src[1] = (const uint8_t *)a->v;
        wp->stride[0] = a->k_row_stride * esz;
        wp->stride[1] = a->v_row_stride * esz;
        /* 16-byte loads need every row start 16-byte aligned */
        wp->vec[0] = ((uintptr_t)a->k % 16 == 0) && (wp->stride[0] % 16 == 0);
        wp->vec[1] = ((uintptr_t)a->v % 16 == 0) && (wp->stride[1] % 16 == 0);
        wp->slots = a->slots;
        wp->T = a->num_tokens;
        wp->chunks = (uint32_t)(L->token_bytes / 16);
        wp->dst[0] = (uint8_t *)p->base + kv_layout_k(L, a->layer);
        wp->dst[1] = (uint8_t *)p->base + kv_layout_v(L, a->layer);
        wp->sdst[0] = (uint8_t *)p->base + kv_layout_ks(L, a->layer);
        wp->sdst[1] = (uint8_t *)p->base + kv_layout_vs(L, a->layer);
        wp->page_bytes = L->page_bytes;
        wp->token_bytes = L->token_bytes;
        wp->scale_page_bytes = L->scale_page_bytes;
        wp->scale_token_bytes = L->scale_token_bytes;
        wp->page_size = L->g.page_size;
        wp->flat = L->page_bytes == (uint64_t)L->g.page_size * L->token_bytes &&
                   L->scale_page_bytes == (uint64_t)L->g.page_size * L->scale_token_bytes;
        wp->num_slots = (int64_t)L->num_pages * L->g.page_size;
        wp->scale[0] = 1.0f;
        wp->scale[1] = 1.0f;
        if (L->g.dtype == KVC_DTYPE_FP8_E4M3 || L->g.dtype == KVC_DTYPE_FP8_E5M2) {
                wp->scale[0] = p->k_scale[a->layer];
                wp->scale[1] = p->v_scale[a->layer];
        }
        /* fp8x2_div_fast's precondition; RN(1/s) by the host's IEEE division */
        wp->rscale[0] = 1.0f / wp->scale[0];
        wp->rscale[1] = 1.0f / wp->scale[1];
        wp->fastdiv = true;
        for (int i = 0; i < 2; i++)
                if (!(wp->scale[i] >= 0x1p-60f && wp->scale[i] <= 0x1p60f))
                        wp->fastdiv = false;
}

/* Launches write_kernel<D, elem>: blocks of (tx, ty) threads, tx chunks of
 * a row by ty tokens (see the kernel).  Very large T goes in pieces of at
 * most 2^24 tokens so grid.x stays far below its limit.
 * pdl: launch with programmatic stream serialization, so that the grid can
 * be scheduled while the previous kernel of the stream drains (the kernel
 * waits for it with griddepcontrol.wait before touching memory, so stream
 * order is kept).  On every stream, the default ones included, as for
 * attn_reduce: the kernel's wait covers whatever the launch depends on
 * (tests/gpu/test_write_pdl.cu checks created, legacy and per-thread
 * streams, and a producer on another stream before a legacy-stream write). */
template <int D>
static inline cudaError_t launch_write_d(const write_params &wp0, enum kvc_elem elem, cudaStream_t s, bool pdl)
{
        const unsigned tx = wp0.chunks < 256 ? wp0.chunks : 256;
        const unsigned ty = 256 / tx > 0 ? 256 / tx : 1;
        const uint32_t piece = 1u << 24;
        write_params wp = wp0;
        /* fp4_from_raw kernels: one grid z per tensor; fp8 from 16-bit
         * input too for calls of at most KV_WRITE_SPLIT8_T tokens */
        const bool raw = elem == KVC_ELEM_BF16 || elem == KVC_ELEM_F16;
        const bool fp4raw = (elem == KVC_ELEM_BF16 && fp4_from_raw<D, KVC_ELEM_BF16>()) ||
                            (elem == KVC_ELEM_F16 && fp4_from_raw<D, KVC_ELEM_F16>());
        const bool fp8split = raw && fp8_may_split<D, KVC_ELEM_BF16>() && wp0.T <= (uint32_t)KV_WRITE_SPLIT8_T;
        const unsigned gz = fp4raw || fp8split ? 2 : 1;

        for (uint32_t t0 = 0; t0 < wp0.T; t0 += piece) {
                wp.T = wp0.T - t0 < piece ? wp0.T - t0 : piece;
                wp.src[0] = wp0.src[0] + (int64_t)t0 * wp0.stride[0];
                wp.src[1] = wp0.src[1] + (int64_t)t0 * wp0.stride[1];
                wp.slots = wp0.slots + t0;
                const launch_cfg lc(dim3((wp.T + ty - 1) / ty, (wp.chunks + tx - 1) / tx, gz), dim3(tx, ty), s,
                                    pdl);
                cudaError_t e = cudaErrorInvalidValue;
                switch (elem) {
                case KVC_ELEM_F32:
                        e = cudaLaunchKernelEx(&lc.cfg, write_kernel<D, KVC_ELEM_F32>, wp);
                        break;
                case KVC_ELEM_BF16:
                        e = cudaLaunchKernelEx(&lc.cfg, write_kernel<D, KVC_ELEM_BF16>, wp);
                        break;
                case KVC_ELEM_F16:
                        e = cudaLaunchKernelEx(&lc.cfg, write_kernel<D, KVC_ELEM_F16>, wp);
                        break;
                }
                if (e == cudaSuccess)
                        e = cudaGetLastError();
                if (e != cudaSuccess)
                        return e;
        }
        return cudaSuccess;
}

static inline cudaError_t launch_write(const write_params &wp, enum kvc_dtype d, enum kvc_elem elem, cudaStream_t s,
                                       bool pdl = KV_WRITE_PDL)
{
        cudaError_t e = cudaErrorInvalidValue;

        with_dtype(d, [&](auto t) { e = launch_write_d<decltype(t)::value>(wp, elem, s, pdl); });
        return e;
}

} // namespace kvk
#endif
