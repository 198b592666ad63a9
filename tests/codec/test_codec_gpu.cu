/* test_codec_gpu.cu - kernels/kv_codec.h gives the same bits on the device
 * as on the host (suite 'gpu'; exits 77 when no CUDA device is present).
 *
 * The device runs the codec over EVERY float32 bit pattern (2^32 inputs:
 * e4m3, e5m2, e2m1, bf16, f16 encoders, and the FP8 x4 / FP4 x8 vector
 * helpers), every code of every decoder, and 2^24 FP4 blocks of 16
 * pseudo-random bit patterns plus 2^22 blocks of ordinary values; the host
 * computes the same with the same header, in parallel threads, and any
 * difference fails the test with the first few inputs printed.
 */
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#include "kv_codec.h"

#define CHUNK (1u << 26)        /* float patterns per pass */

#define CK(call) do { cudaError_t e_ = (call); if (e_ != cudaSuccess) { \
        fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
        exit(1); } } while (0)

struct enc_out {
        uint8_t *e4m3, *e5m2, *e2m1, *e4m3x4, *e5m2x4, *e2m1x8;  /* e2m1x8: 4 bytes a group of 8 */
        uint16_t *bf16, *f16;
};

static __host__ __device__ float pattern(uint64_t i) { return kv_bits_f32((uint32_t)i); }

/* One thread per group of 8 consecutive patterns, so the vector helpers see
 * the same inputs as the scalar ones. */
__global__ void encode_kernel(uint64_t base, enc_out o)
{
        uint64_t g = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
        if (g >= CHUNK / 8)
                return;
        float x[8];
        for (int j = 0; j < 8; j++)
                x[j] = pattern(base + 8 * g + j);
        for (int j = 0; j < 8; j++) {
                uint64_t i = 8 * g + j;
                o.e4m3[i] = kv_f32_to_e4m3(x[j]);
                o.e5m2[i] = kv_f32_to_e5m2(x[j]);
                o.e2m1[i] = kv_f32_to_e2m1(x[j]);
                o.bf16[i] = kv_f32_to_bf16(x[j]);
                o.f16[i] = kv_f32_to_f16(x[j]);
        }
        for (int h = 0; h < 2; h++) {
                uint32_t a = kv_f32x4_to_e4m3(x + 4 * h), b = kv_f32x4_to_e5m2(x + 4 * h);
                memcpy(o.e4m3x4 + 8 * g + 4 * h, &a, 4);
                memcpy(o.e5m2x4 + 8 * g + 4 * h, &b, 4);
        }
        uint32_t c = kv_f32x8_to_e2m1(x, 1.0f);
        memcpy(o.e2m1x8 + 4 * g, &c, 4);
}

/* Decoders over every code: e4m3/e5m2/e8m0/e2m1 (256 codes, x4/x8 helpers
 * too), bf16/f16 (65536 codes).  out layout documented in decode_host(). */
__global__ void decode_kernel(float *out)
{
        uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
        if (c >= 65536)
                return;
        out[c] = kv_bf16_to_f32((uint16_t)c);
        out[65536 + c] = kv_f16_to_f32((uint16_t)c);
        if (c < 256) {
                float *s = out + 131072;
                s[c] = kv_e4m3_to_f32((uint8_t)c);
                s[256 + c] = kv_e5m2_to_f32((uint8_t)c);
                s[512 + c] = kv_e8m0_to_f32((uint8_t)c);
                s[768 + c] = kv_e2m1_to_f32((uint8_t)c);
                s[1024 + c] = kv_e8m0_inv_f32((uint8_t)c);
        }
        if (c < 64) {   /* x4 helpers: 64 words cover the 256 codes */
                float *s = out + 131072 + 1280;
                uint32_t w = (4 * c) | (4 * c + 1) << 8 | (4 * c + 2) << 16 | (4 * c + 3) << 24;
                kv_e4m3x4_to_f32(w, s + 4 * c);
                kv_e5m2x4_to_f32(w, s + 256 + 4 * c);
        }
        if (c < 2) {    /* x8 helper: the 16 nibbles, scale 2^-3 */
                float *s = out + 131072 + 1792;
                kv_e2m1x8_to_f32(c ? 0xFEDCBA98u : 0x76543210u, 0.125f, s + 8 * c);
        }
}
#define DECODE_N (131072 + 1792 + 16)

static __host__ __device__ uint32_t mix(uint64_t z)
{
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return (uint32_t)(z ^ (z >> 31));
}

/* Block b's element j: kind 0 = any bit pattern, kind 1 = a value of
 * ordinary size with the block's own magnitude (exponent 100..154). */
static __host__ __device__ float block_elem(uint64_t b, int j, int kind)
{
        uint32_t r = mix(b * 16 + j + (kind ? 0x123456789ull : 0));
        if (!kind)
                return kv_bits_f32(r);
        uint32_t e = 100 + mix(b) % 55 - (r >> 28);
        return kv_bits_f32((r & 0x807FFFFFu) | (e << 23));
}

__global__ void fp4_kernel(uint64_t nblocks, int kind, uint8_t *packed, uint8_t *scales)
{
        uint64_t b = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
        if (b >= nblocks)
                return;
        float x[16];
        for (int j = 0; j < 16; j++)
                x[j] = block_elem(b, j, kind);
        kv_fp4_encode_block16(x, packed + 8 * b, scales + b);
}

static void parallel_for(uint64_t n, const std::function<void(uint64_t, uint64_t)> &fn)
{
        unsigned nt = std::thread::hardware_concurrency();
        nt = nt ? nt : 4;
        std::vector<std::thread> th;
        for (unsigned t = 0; t < nt; t++)
                th.emplace_back([&, t] { fn(n * t / nt, n * (t + 1) / nt); });
        for (auto &x : th)
                x.join();
}

static std::atomic<uint64_t> mismatches{0};

static void report(const char *what, uint64_t i, uint32_t got, uint32_t want)
{
        if (mismatches.fetch_add(1) < 20)
                fprintf(stderr, "MISMATCH %s input %#llx: device %#x host %#x\n", what,
                        (unsigned long long)i, got, want);
}

static uint32_t fbits(float f) { return kv_f32_bits(f); }

int main(void)
{
        int ndev = 0;
        if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
                printf("no CUDA device: skipped\n");
                return 77;
        }
        cudaDeviceProp prop;
        CK(cudaGetDeviceProperties(&prop, 0));
        printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);

        /* ---- every float32 pattern through every encoder ---- */
        enc_out d, h;
        size_t sz8 = CHUNK, sz16 = 2 * (size_t)CHUNK;
        CK(cudaMalloc(&d.e4m3, sz8)); CK(cudaMalloc(&d.e5m2, sz8)); CK(cudaMalloc(&d.e2m1, sz8));
        CK(cudaMalloc(&d.e4m3x4, sz8)); CK(cudaMalloc(&d.e5m2x4, sz8)); CK(cudaMalloc(&d.e2m1x8, sz8 / 2));
        CK(cudaMalloc(&d.bf16, sz16)); CK(cudaMalloc(&d.f16, sz16));
        CK(cudaMallocHost(&h.e4m3, sz8)); CK(cudaMallocHost(&h.e5m2, sz8)); CK(cudaMallocHost(&h.e2m1, sz8));
        CK(cudaMallocHost(&h.e4m3x4, sz8)); CK(cudaMallocHost(&h.e5m2x4, sz8)); CK(cudaMallocHost(&h.e2m1x8, sz8 / 2));
        CK(cudaMallocHost(&h.bf16, sz16)); CK(cudaMallocHost(&h.f16, sz16));
        for (uint64_t base = 0; base < (1ull << 32); base += CHUNK) {
                encode_kernel<<<CHUNK / 8 / 256, 256>>>(base, d);
                CK(cudaGetLastError());
                CK(cudaMemcpy(h.e4m3, d.e4m3, sz8, cudaMemcpyDeviceToHost));
                CK(cudaMemcpy(h.e5m2, d.e5m2, sz8, cudaMemcpyDeviceToHost));
                CK(cudaMemcpy(h.e2m1, d.e2m1, sz8, cudaMemcpyDeviceToHost));
                CK(cudaMemcpy(h.e4m3x4, d.e4m3x4, sz8, cudaMemcpyDeviceToHost));
                CK(cudaMemcpy(h.e5m2x4, d.e5m2x4, sz8, cudaMemcpyDeviceToHost));
                CK(cudaMemcpy(h.e2m1x8, d.e2m1x8, sz8 / 2, cudaMemcpyDeviceToHost));
                CK(cudaMemcpy(h.bf16, d.bf16, sz16, cudaMemcpyDeviceToHost));
                CK(cudaMemcpy(h.f16, d.f16, sz16, cudaMemcpyDeviceToHost));
                parallel_for(CHUNK, [&](uint64_t lo, uint64_t hi) {
                        for (uint64_t i = lo; i < hi; i++) {
                                float x = pattern(base + i);
                                uint8_t a = kv_f32_to_e4m3(x), b = kv_f32_to_e5m2(x), c = kv_f32_to_e2m1(x);
                                uint16_t p = kv_f32_to_bf16(x), q = kv_f32_to_f16(x);
                                if (h.e4m3[i] != a) report("e4m3", base + i, h.e4m3[i], a);
                                if (h.e5m2[i] != b) report("e5m2", base + i, h.e5m2[i], b);
                                if (h.e2m1[i] != c) report("e2m1", base + i, h.e2m1[i], c);
                                if (h.bf16[i] != p) report("bf16", base + i, h.bf16[i], p);
                                if (h.f16[i] != q) report("f16", base + i, h.f16[i], q);
                                if (h.e4m3x4[i] != a) report("e4m3x4", base + i, h.e4m3x4[i], a);
                                if (h.e5m2x4[i] != b) report("e5m2x4", base + i, h.e5m2x4[i], b);
                                uint8_t n = (h.e2m1x8[i / 2] >> (4 * (i & 1))) & 0xF;
                                if (n != c) report("e2m1x8", base + i, n, c);
                        }
                });
        }
        printf("encoders: 2^32 float32 patterns x 8 encoders compared\n");

        /* ---- every code through every decoder ---- */
        float *dd, *hd;
        CK(cudaMalloc(&dd, DECODE_N * sizeof(float)));
        CK(cudaMallocHost(&hd, DECODE_N * sizeof(float)));
        decode_kernel<<<256, 256>>>(dd);
        CK(cudaGetLastError());
        CK(cudaMemcpy(hd, dd, DECODE_N * sizeof(float), cudaMemcpyDeviceToHost));
        for (uint32_t c = 0; c < 65536; c++) {
                if (fbits(hd[c]) != fbits(kv_bf16_to_f32((uint16_t)c)))
                        report("bf16 decode", c, fbits(hd[c]), fbits(kv_bf16_to_f32((uint16_t)c)));
                if (fbits(hd[65536 + c]) != fbits(kv_f16_to_f32((uint16_t)c)))
                        report("f16 decode", c, fbits(hd[65536 + c]), fbits(kv_f16_to_f32((uint16_t)c)));
        }
        const float *s = hd + 131072;
        for (uint32_t c = 0; c < 256; c++) {
                uint32_t w[7] = { fbits(kv_e4m3_to_f32(c)), fbits(kv_e5m2_to_f32(c)), fbits(kv_e8m0_to_f32(c)),
                                  fbits(kv_e2m1_to_f32(c)), fbits(kv_e8m0_inv_f32(c)),
                                  fbits(kv_e4m3_to_f32(c)), fbits(kv_e5m2_to_f32(c)) };
                static const char *nm[7] = { "e4m3 decode", "e5m2 decode", "e8m0 decode", "e2m1 decode",
                                             "e8m0 inverse", "e4m3x4 decode", "e5m2x4 decode" };
                for (int k = 0; k < 7; k++)
                        if (fbits(s[256 * k + c]) != w[k])
                                report(nm[k], c, fbits(s[256 * k + c]), w[k]);
        }
        for (uint32_t c = 0; c < 16; c++) {
                float want = kv_e2m1_to_f32(c) * 0.125f;
                if (fbits(s[1792 + c]) != fbits(want))
                        report("e2m1x8 decode", c, fbits(s[1792 + c]), fbits(want));
        }
        printf("decoders: every code compared\n");

        /* ---- FP4 blocks ---- */
        for (int kind = 0; kind < 2; kind++) {
                uint64_t nb = kind ? (1u << 22) : (1u << 24);
                uint8_t *dp, *ds, *hp, *hs;
                CK(cudaMalloc(&dp, 8 * nb)); CK(cudaMalloc(&ds, nb));
                CK(cudaMallocHost(&hp, 8 * nb)); CK(cudaMallocHost(&hs, nb));
                fp4_kernel<<<(unsigned)((nb + 255) / 256), 256>>>(nb, kind, dp, ds);
                CK(cudaGetLastError());
                CK(cudaMemcpy(hp, dp, 8 * nb, cudaMemcpyDeviceToHost));
                CK(cudaMemcpy(hs, ds, nb, cudaMemcpyDeviceToHost));
                std::atomic<uint64_t> scale_hist_distinct{0};
                std::vector<std::atomic<uint8_t>> seen(256);
                parallel_for(nb, [&](uint64_t lo, uint64_t hi) {
                        for (uint64_t b = lo; b < hi; b++) {
                                float x[16];
                                uint8_t p[8], sc;
                                for (int j = 0; j < 16; j++)
                                        x[j] = block_elem(b, j, kind);
                                kv_fp4_encode_block16(x, p, &sc);
                                if (hs[b] != sc) report(kind ? "fp4 scale (values)" : "fp4 scale (patterns)", b, hs[b], sc);
                                if (memcmp(hp + 8 * b, p, 8)) {
                                        uint64_t gw, ww;
                                        memcpy(&gw, hp + 8 * b, 8);
                                        memcpy(&ww, p, 8);
                                        report(kind ? "fp4 nibbles (values)" : "fp4 nibbles (patterns)", b,
                                               (uint32_t)(gw ^ ww), (uint32_t)((gw ^ ww) >> 32));
                                }
                                seen[sc].store(1);
                        }
                });
                for (int i = 0; i < 256; i++)
                        scale_hist_distinct += seen[i].load();
                printf("fp4: %llu blocks of %s compared, %llu distinct scale bytes\n", (unsigned long long)nb,
                       kind ? "ordinary values" : "arbitrary bit patterns",
                       (unsigned long long)scale_hist_distinct.load());
                CK(cudaFree(dp)); CK(cudaFree(ds)); CK(cudaFreeHost(hp)); CK(cudaFreeHost(hs));
        }

        if (mismatches.load()) {
                printf("FAIL: %llu mismatches between device and host\n", (unsigned long long)mismatches.load());
                return 1;
        }
        printf("PASS: device and host codecs agree bit for bit\n");
        return 0;
}
