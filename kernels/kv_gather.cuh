/* kv_gather.cuh - the dequantizing gather kernel: pages of one layer of a
 * pool into dense [n_pages * page_size, kv_heads, head_dim] fp32 or bf16
 * buffers, scales applied (design §8).
 *
 * One thread reads 16 bytes of one token's K or V row in the pool (8
 * elements of a 16-bit pool, 16 of fp8, 32 of fp4 with their two block
 * scales) with one 16-byte load and writes them dequantized with 16-byte
 * stores.  Values equal kv_ref_gather bit for bit: the codec's decoders, one
 * fp32 multiply by the scale (exact for fp4's power-of-two block scale), and
 * the codec's bf16 rounding for bf16 output.
 */
#ifndef KV_GATHER_CUH
#define KV_GATHER_CUH

#include "kv_cuda_common.cuh"
#include "kv_write.cuh" /* epc<D> */

namespace kvk {

struct gather_params {
        const int32_t *pages;         /* [n_pages] device memory; out of range = zero rows */
        uint32_t       n_pages;
        uint32_t       chunks;        /* 16-byte pool chunks per token row */
        const uint8_t *src[2];        /* layer's K, V arrays: [num_pages][page_size][kv_heads][head_dim] */
        const uint8_t *ssrc[2];       /* fp4: layer's KS, VS arrays: [num_pages][page_size][kv_heads][head_dim/16] */
        uint8_t       *out[2];        /* k_out, v_out: [n_pages*page_size, kv_heads, head_dim] elem */
        uint64_t       out_row_bytes; /* kv_heads * head_dim * sizeof(elem) */
        uint64_t       page_bytes, token_bytes, scale_page_bytes, scale_token_bytes;
        uint32_t       page_size;
        uint32_t       num_pages;
        float          scale[2];      /* fp8: layer's k and v scale; else 1 and unused */
};

/* Decodes one 16-byte chunk into N fp32 values. */
template <int D>
__device__ __forceinline__ void decode_chunk(uint4 in, uint16_t sc, float scale, float (&f)[epc<D>::n])
{
        const uint32_t w[4] = { in.x, in.y, in.z, in.w };

        if constexpr (D == KVC_DTYPE_BF16 || D == KVC_DTYPE_FP16) {
#pragma unroll
                for (int i = 0; i < 4; i++) {
                        if constexpr (D == KVC_DTYPE_BF16) {
                                f[2 * i] = kv_bf16_to_f32((uint16_t)(w[i] & 0xFFFFu));
                                f[2 * i + 1] = kv_bf16_to_f32((uint16_t)(w[i] >> 16));
                        } else {
                                f[2 * i] = kv_f16_to_f32((uint16_t)(w[i] & 0xFFFFu));
                                f[2 * i + 1] = kv_f16_to_f32((uint16_t)(w[i] >> 16));
                        }
                }
        } else if constexpr (D == KVC_DTYPE_FP8_E4M3 || D == KVC_DTYPE_FP8_E5M2) {
#pragma unroll
                for (int i = 0; i < 4; i++) {
                        float q[4];
                        if constexpr (D == KVC_DTYPE_FP8_E4M3)
                                kv_e4m3x4_to_f32(w[i], q);
                        else
                                kv_e5m2x4_to_f32(w[i], q);
#pragma unroll
                        for (int j = 0; j < 4; j++) /* NaN: the host's product keeps it, the GPU's would not */
                                f[4 * i + j] = isnan(q[j]) ? q[j] : __fmul_rn(q[j], scale);
                }
        } else {
                const float s0 = kv_e8m0_to_f32((uint8_t)(sc & 0xFF));
                const float s1 = kv_e8m0_to_f32((uint8_t)(sc >> 8));
                kv_e2m1x8_to_f32(w[0], s0, &f[0]);
                kv_e2m1x8_to_f32(w[1], s0, &f[8]);
                kv_e2m1x8_to_f32(w[2], s1, &f[16]);
                kv_e2m1x8_to_f32(w[3], s1, &f[24]);
                /* a NaN scale byte (0xFF, never written by kvpool): the host's
                 * products are that NaN itself, the GPU's the canonical NaN */
                if (__builtin_expect((sc & 0xFF) == 0xFF || (sc >> 8) == 0xFF, 0)) {
#pragma unroll
                        for (int k = 0; k < 32; k++)
                                if (((k < 16) ? (sc & 0xFF) : (sc >> 8)) == 0xFF)
                                        f[k] = __uint_as_float(0x7FC00000u);
                }
        }
}

/* Stores N fp32 values as element type E with 16-byte stores. */
template <int E, int N>
__device__ __forceinline__ void store_elems(uint8_t *dst, const float (&f)[N])
{
        if constexpr (E == KVC_ELEM_F32) {
#pragma unroll
                for (int i = 0; i < N / 4; i++)
                        ((uint4 *)dst)[i] = make_uint4(__float_as_uint(f[4 * i]), __float_as_uint(f[4 * i + 1]),
                                                       __float_as_uint(f[4 * i + 2]), __float_as_uint(f[4 * i + 3]));
        } else {
#pragma unroll
                for (int i = 0; i < N / 8; i++) {
                        uint32_t w[4];
#pragma unroll
                        for (int j = 0; j < 4; j++)
                                w[j] = (uint32_t)kv_f32_to_bf16(f[8 * i + 2 * j]) |
                                       (uint32_t)kv_f32_to_bf16(f[8 * i + 2 * j + 1]) << 16;
                        ((uint4 *)dst)[i] = make_uint4(w[0], w[1], w[2], w[3]);
                }
        }
}

/* Grid: 1-D over n_pages * page_size * 2 * chunks items, grid-stride. */
template <int D, int E>
__global__ void __launch_bounds__(256) gather_kernel(const gather_params p)
{
        constexpr int N = epc<D>::n;
        constexpr int ob = E == KVC_ELEM_F32 ? 4 : 2;
        const uint64_t per_row = 2ull * p.chunks;
        const uint64_t total = (uint64_t)p.n_pages * p.page_size * per_row;

        for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
             i += (uint64_t)gridDim.x * blockDim.x) {
                const uint64_t row = i / per_row;                 /* output token row */
                const uint32_t r = (uint32_t)(i - row * per_row);
                const int which = r >= p.chunks;
                const uint32_t c = r - (which ? p.chunks : 0);
                const uint32_t j = (uint32_t)(row / p.page_size); /* index into pages[] */
                const uint32_t off = (uint32_t)(row - (uint64_t)j * p.page_size);
                const int32_t page = __ldg(p.pages + j);
                uint8_t *dst = p.out[which] + row * p.out_row_bytes + (uint64_t)c * N * ob;
                float f[N];

                if (page < 0 || (uint32_t)page >= p.num_pages) {
                        /* page ids live on the device: an out-of-range one gives zero rows */
#pragma unroll
                        for (int k = 0; k < N; k++)
                                f[k] = 0.0f;
                } else {
                        const uint8_t *src = p.src[which] + (uint64_t)page * p.page_bytes + (uint64_t)off * p.token_bytes +
                                             (uint64_t)c * 16;
                        uint16_t sc = 0;
                        if constexpr (D == KVC_DTYPE_FP4_E2M1)
                                sc = __ldg((const uint16_t *)(p.ssrc[which] + (uint64_t)page * p.scale_page_bytes +
                                                              (uint64_t)off * p.scale_token_bytes + (uint64_t)c * 2));
                        decode_chunk<D>(__ldg((const uint4 *)src), sc, p.scale[which], f);
                }
                store_elems<E, N>(dst, f);
        }
}

} // namespace kvk
#endif
