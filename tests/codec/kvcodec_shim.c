/* kvcodec_shim.c - a test-only shared library that exposes the inline codecs
 * of kernels/kv_codec.h as plain C functions over arrays, so the Python
 * oracle test (test_codec.py) can drive them with ctypes.  Not installed. */
#include <stddef.h>
#include <stdint.h>

#include "kv_codec.h"

#define SHIM __attribute__((visibility("default")))

SHIM void shim_e4m3_encode(const float *in, uint8_t *out, size_t n)
{
        for (size_t i = 0; i < n; i++)
                out[i] = kv_f32_to_e4m3(in[i]);
}

SHIM void shim_e4m3_decode(const uint8_t *in, float *out, size_t n)
{
        for (size_t i = 0; i < n; i++)
                out[i] = kv_e4m3_to_f32(in[i]);
}

SHIM void shim_e5m2_encode(const float *in, uint8_t *out, size_t n)
{
        for (size_t i = 0; i < n; i++)
                out[i] = kv_f32_to_e5m2(in[i]);
}

SHIM void shim_e5m2_decode(const uint8_t *in, float *out, size_t n)
{
        for (size_t i = 0; i < n; i++)
                out[i] = kv_e5m2_to_f32(in[i]);
}

/* one nibble per output byte */
SHIM void shim_e2m1_encode(const float *in, uint8_t *out, size_t n)
{
        for (size_t i = 0; i < n; i++)
                out[i] = kv_f32_to_e2m1(in[i]);
}

SHIM void shim_e2m1_decode(const uint8_t *in, float *out, size_t n)
{
        for (size_t i = 0; i < n; i++)
                out[i] = kv_e2m1_to_f32(in[i]);
}

SHIM void shim_e8m0_decode(const uint8_t *in, float *out, size_t n)
{
        for (size_t i = 0; i < n; i++)
                out[i] = kv_e8m0_to_f32(in[i]);
}

SHIM void shim_e8m0_inv(const uint8_t *in, float *out, size_t n)
{
        for (size_t i = 0; i < n; i++)
                out[i] = kv_e8m0_inv_f32(in[i]);
}

SHIM void shim_fp4_block_scale(const float *amax, uint8_t *out, size_t n)
{
        for (size_t i = 0; i < n; i++)
                out[i] = kv_fp4_block_scale(amax[i]);
}

/* in[nblocks*16] -> packed[nblocks*8], scales[nblocks] */
SHIM void shim_fp4_encode_blocks(const float *in, size_t nblocks, uint8_t *packed, uint8_t *scales)
{
        for (size_t b = 0; b < nblocks; b++)
                kv_fp4_encode_block16(in + 16 * b, packed + 8 * b, scales + b);
}

/* packed[nblocks*8], scales[nblocks] -> out[nblocks*16], through the x8 helper */
SHIM void shim_fp4_decode_blocks(const uint8_t *packed, const uint8_t *scales, size_t nblocks, float *out)
{
        for (size_t b = 0; b < nblocks; b++) {
                for (size_t w = 0; w < 2; w++) {
                        const uint8_t *p = packed + 8 * b + 4 * w;
                        uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                                     (uint32_t)p[3] << 24;
                        kv_e2m1x8_to_f32(u, kv_e8m0_to_f32(scales[b]), out + 16 * b + 8 * w);
                }
        }
}

/* in[n] (n a multiple of 8) -> n/2 packed bytes through kv_f32x8_to_e2m1 */
SHIM void shim_e2m1x8_encode(const float *in, float inv_scale, uint8_t *out, size_t n)
{
        for (size_t i = 0; i + 8 <= n; i += 8) {
                uint32_t u = kv_f32x8_to_e2m1(in + i, inv_scale);
                for (size_t j = 0; j < 4; j++)
                        out[i / 2 + j] = (uint8_t)(u >> (8 * j));
        }
}

/* FP8 through the x4 helpers (n a multiple of 4); fmt 0 = e4m3, 1 = e5m2 */
SHIM void shim_fp8x4_encode(int fmt, const float *in, uint8_t *out, size_t n)
{
        for (size_t i = 0; i + 4 <= n; i += 4) {
                uint32_t u = fmt ? kv_f32x4_to_e5m2(in + i) : kv_f32x4_to_e4m3(in + i);
                for (size_t j = 0; j < 4; j++)
                        out[i + j] = (uint8_t)(u >> (8 * j));
        }
}

SHIM void shim_fp8x4_decode(int fmt, const uint8_t *in, float *out, size_t n)
{
        for (size_t i = 0; i + 4 <= n; i += 4) {
                uint32_t u = (uint32_t)in[i] | (uint32_t)in[i + 1] << 8 | (uint32_t)in[i + 2] << 16 |
                             (uint32_t)in[i + 3] << 24;
                if (fmt)
                        kv_e5m2x4_to_f32(u, out + i);
                else
                        kv_e4m3x4_to_f32(u, out + i);
        }
}

SHIM void shim_bf16_encode(const float *in, uint16_t *out, size_t n)
{
        for (size_t i = 0; i < n; i++)
                out[i] = kv_f32_to_bf16(in[i]);
}

SHIM void shim_bf16_decode(const uint16_t *in, float *out, size_t n)
{
        for (size_t i = 0; i < n; i++)
                out[i] = kv_bf16_to_f32(in[i]);
}

SHIM void shim_f16_encode(const float *in, uint16_t *out, size_t n)
{
        for (size_t i = 0; i < n; i++)
                out[i] = kv_f32_to_f16(in[i]);
}

SHIM void shim_f16_decode(const uint16_t *in, float *out, size_t n)
{
        for (size_t i = 0; i < n; i++)
                out[i] = kv_f16_to_f32(in[i]);
}
