/* fp4h_cases.h - the block cases of the fp4 encoders for 16-bit input
 * (kv_cuda_fp4.cuh: fp4_block16_h, fp4_block16_bf for bf16) against the
 * codec, shared by the GPU sweep (tests/gpu/test_conv_exhaustive.cu: every
 * case, on the device) and the CPU test (tests/codec/test_fp4_block_host.cu:
 * the host emulation of the same encoder on a subset in CI).  Each case
 * builds one block and says whether the encoder equals
 * kv_fp4_encode_block16 on it. */
#ifndef KV_TEST_FP4H_CASES_H
#define KV_TEST_FP4H_CASES_H

#include <stdint.h>
#include "kv_codec.h"
#include "kv_cuda_fp4.cuh"

/* splitmix64's finalizer: the cases' deterministic randomness */
__host__ __device__ __forceinline__ uint64_t mix(uint64_t z)
{
        z += 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
}

/* ---- fp4_block16_h (bf16 input: fp4_block16_bf; f16 input) against the codec
 * One case = a 16-bit input value v (every pattern), a position p in the
 * block (every one of 16) and a scale class c:
 *   c = 0          v is the block's largest magnitude (scale from v);
 *   c = 1..FP4H_C-2 another element A = +-6 * 2^e sets the scale, with
 *                  e = e_v + c - 1 (e_v: the scale v alone would give), so
 *                  y = v * 2^-e sweeps every binade from v's own scale down
 *                  to codes long past zero (skipped when A is not a finite
 *                  value of the format);
 *   c = FP4H_C-1   as c = 0 plus a NaN or an Inf elsewhere (the codec path).
 * The other elements are hash-drawn patterns of smaller magnitude, with
 * random signs.  The whole block (8 bytes and the scale byte) must equal
 * kv_fp4_encode_block16 on the same values widened to f32. */
#define FP4H_C 34u

template <int E>
__host__ __device__ uint32_t h16_bits_of_scale(int e, bool *ok)
{
        /* +6 * 2^e in format E, *ok = false when it is not finite there */
        if (E == KVC_ELEM_BF16) {
                *ok = e + 129 >= 1 && e + 129 <= 254;
                return (uint32_t)((e + 129) << 7) | 0x40u;
        }
        if (e + 17 >= 1 && e + 17 <= 30) {
                *ok = true;
                return (uint32_t)((e + 17) << 10) | 0x200u;
        }
        *ok = e + 17 < 1 && e + 25 >= 0; /* a subnormal: 3 * 2^(e+25) units of 2^-24 */
        return *ok ? 3u << (e + 25) : 0u;
}

template <int E>
__host__ __device__ bool fp4h_case(uint32_t v, uint32_t p, uint32_t c)
{
        constexpr uint32_t inf = E == KVC_ELEM_BF16 ? 0x7F80u : 0x7C00u;
        uint64_t h = mix(((uint64_t)v << 16 | p << 8 | c) + 0x5EEDull * E);
        uint32_t x[16];
        const uint32_t vm = v & 0x7FFFu;
        uint32_t amax = vm >= inf ? 0x7BFFu : vm; /* the others stay below this */
        int q = -1;

        if (c >= 1 && c + 1 < FP4H_C && vm < inf) {
                float fv = E == KVC_ELEM_BF16 ? kv_bf16_to_f32((uint16_t)vm) : kv_f16_to_f32((uint16_t)vm);
                bool ok;
                const int e = (int)kv_fp4_block_scale(fv) - 127 + (int)c - 1;
                const uint32_t a = h16_bits_of_scale<E>(e, &ok);
                if (!ok)
                        return true; /* no such block in this format */
                q = (int)((p + 1 + h % 15) % 16);
                amax = a;
                h = mix(h);
        }
        for (int i = 0; i < 16; i++) {
                h = mix(h + i);
                uint32_t m = amax ? (uint32_t)(h >> 20) % (amax + 1) : 0;
                if ((h & 0xF) == 0)
                        m >>= (h >> 4) & 15; /* now and then much smaller */
                x[i] = m | (uint32_t)((h >> 63) << 15);
        }
        x[p] = v;
        if (q >= 0)
                x[q] = amax | (uint32_t)((h >> 40) & 1) << 15;
        if (c + 1 == FP4H_C) {
                const int r = (int)((p + 3 + (h >> 8) % 15) % 16);
                x[r] = ((h >> 12) & 1 ? inf | 0x41u : inf) | (uint32_t)((h >> 13) & 1) << 15;
        }

        uint32_t w[8];
        float f[16];
        for (int i = 0; i < 8; i++)
                w[i] = x[2 * i] | x[2 * i + 1] << 16;
        for (int i = 0; i < 16; i++)
                f[i] = E == KVC_ELEM_BF16 ? kv_bf16_to_f32((uint16_t)x[i]) : kv_f16_to_f32((uint16_t)x[i]);
        uint32_t w0, w1, s;
        uint8_t pk[8], s2;
        kvk::fp4_block16_h<E>(w, w0, w1, s);
        kv_fp4_encode_block16(f, pk, &s2);
        const uint32_t r0 = pk[0] | pk[1] << 8 | pk[2] << 16 | (uint32_t)pk[3] << 24;
        const uint32_t r1 = pk[4] | pk[5] << 8 | pk[6] << 16 | (uint32_t)pk[7] << 24;
        return w0 == r0 && w1 == r1 && s == s2;
}

#endif
