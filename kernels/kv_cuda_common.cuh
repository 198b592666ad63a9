/* kv_cuda_common.cuh - what the CUDA kernels of kvpool share: the CUDA error
 * conversion, argument checks of the write and gather launchers, 16-byte
 * memory helpers and the element-type traits.
 *
 * The C part (outside __CUDACC__) may be included from C files too: it only
 * declares functions defined in kv_cuda_common.cu.
 */
#ifndef KV_CUDA_COMMON_CUH
#define KV_CUDA_COMMON_CUH

#include <stddef.h>
#include <stdint.h>
#include "kvclient.h"
#include "kv_ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Converts a cudaError_t (passed as int so C callers need no CUDA header) into
 * a negative errno and, when msg is not NULL, writes "<what>: <CUDA error name>:
 * <description>" into it.  cudaSuccess gives 0 and leaves msg alone.
 *   memory allocation             -> -ENOMEM
 *   invalid value / configuration,
 *   invalid resource handle       -> -EINVAL (the message adds: a stream of
 *                                    another device, or destroyed?)
 *   no device / driver too old    -> -ENODEV
 *   failed IPC buffer mapping     -> -ESTALE
 *   anything else                 -> -EIO */
int kv_cuda_errno(int cuda_err, const char *what, char *msg, size_t msglen);

/* Checks every host-side argument of a write: kv_write_check (kv_ops.h, the
 * same check kv_ref_write makes), then what only the CUDA kernels need of
 * the pool: head_dim 64, 128 or 256 and the layer's arrays 16-byte aligned
 * (kv_cuda_check_aligned).  Returns 0 (also for num_tokens 0) or -EINVAL
 * with the argument named in msg.  Slots are device memory and are not read
 * here: the kernel skips the out-of-range ones. */
int kv_cuda_check_write(const struct kv_pool_view *p, const struct kvc_write_args *a,
                        char *msg, size_t msglen);

/* The same for a gather (kv_gather_check, then the pool); page ids are
 * device memory and not read here: the kernel writes zeros for the rows of
 * an out-of-range page. */
int kv_cuda_check_gather(const struct kv_pool_view *p, const struct kvc_gather_args *a,
                         char *msg, size_t msglen);

/* The layer's pool arrays as every kernel reads and writes them, in 16-byte
 * vectors (cp.async, uint4): each array of the layer 16-byte aligned and a
 * token row a multiple of 16 bytes.  kv_layout_init always lays a pool out
 * that way; a view built otherwise would fault on the device instead of
 * failing here.  Returns 0 or -EINVAL naming op and the layer. */
int kv_cuda_check_aligned(const struct kv_pool_view *p, uint32_t layer, const char *op, char *msg, size_t msglen);

/* Where a data-path pointer must live for the kernels (or the launcher) to
 * read it (kv_cuda_check_mem). */
enum kv_mem {
        KV_MEM_GPU,       /* read or written by a kernel on device dev: device memory
                             of dev, managed memory, mapped pinned host memory, or
                             plain host memory where dev can access pageable memory */
        KV_MEM_DEVICE,    /* device (or managed) memory of dev only: a workspace */
        KV_MEM_HOST,      /* read by the launcher on the CPU: anything but device memory */
};

struct kv_mem_arg {
        const void *ptr;  /* NULL: not checked (the argument checks say whether it may be) */
        const char *name; /* the argument, as messages name it */
        enum kv_mem want;
};

/* Checks that each of the n pointers lives where its want says, as
 * cudaPointerGetAttributes sees it, for a launch on the current device:
 * a host array passed where the kernel reads device memory is an illegal
 * address on the device (a sticky error that ends the process's CUDA
 * context), and a device array passed as a host copy a SIGSEGV in the
 * launcher.  A query, not stream work: allowed while a stream is being
 * captured.  Returns 0 or -EINVAL with msg naming op (NULL: no prefix)
 * and the argument (-ENODEV with no current device). */
int kv_cuda_check_mem(const struct kv_mem_arg *args, size_t n, const char *op, char *msg, size_t msglen);

#ifdef __cplusplus
}
#endif

#ifdef __CUDACC__
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <atomic>
#include "kv_codec.h"

namespace kvk {

/* Element types of caller tensors, as compile-time tags. */
template <int E> struct elem_traits;
template <> struct elem_traits<KVC_ELEM_F32> {
        typedef float t;
        static constexpr int bytes = 4;
        static __device__ __forceinline__ float to_f32(uint32_t bits) { return __uint_as_float(bits); }
};
template <> struct elem_traits<KVC_ELEM_BF16> {
        typedef uint16_t t;
        static constexpr int bytes = 2;
        static __device__ __forceinline__ float to_f32(uint32_t bits) { return __uint_as_float(bits << 16); }
};
/* __byte_perm (prmt.b32) for the selectors without sign replication. */
__host__ __device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel)
{
#ifdef __CUDA_ARCH__
        return __byte_perm(a, b, sel);
#else
        const uint64_t x = (uint64_t)b << 32 | a;
        uint32_t r = 0;
        for (int i = 0; i < 4; i++)
                r |= (uint32_t)(x >> 8 * ((sel >> 4 * i) & 7) & 0xFFu) << 8 * i;
        return r;
#endif
}

/* (a & m) | (b & ~m): one LOP3 (ptxas does not always find it, and splits
 * a select by a constant m into two). */
__host__ __device__ __forceinline__ uint32_t bitsel(uint32_t m, uint32_t a, uint32_t b)
{
#ifdef __CUDA_ARCH__
        uint32_t r;
        asm("lop3.b32 %0, %1, %2, %3, 0xE4;" : "=r"(r) : "r"(a), "r"(b), "r"(m));
        return r;
#else
        return (a & m) | (b & ~m);
#endif
}

/* ---- device conversions proven equal to the codec -------------------------
 * Each of these equals the kv_codec.h function named beside it on EVERY
 * input (tests/gpu/test_conv_exhaustive.cu runs all 2^32 float patterns, or
 * all 2^16 halves, through both on the device).  They exist because the
 * codec's integer code costs 15-25 instructions an element, which would make
 * the write kernel compute-bound on an H200.  Define KV_CUDA_CODEC_ONLY to
 * compile the codec functions instead. */

/* == kv_f16_to_f32: the hardware widening is exact; NaN keeps sign and
 * payload in the codec, which the hardware does not promise. */
__device__ __forceinline__ float f16_to_f32(uint32_t h)
{
#ifdef KV_CUDA_CODEC_ONLY
        return kv_f16_to_f32((uint16_t)h);
#else
        if (__builtin_expect((h & 0x7C00u) == 0x7C00u && (h & 0x3FFu), 0))
                return kv_f16_to_f32((uint16_t)h);
        return __half2float(__ushort_as_half((unsigned short)h));
#endif
}

/* == kv_f32_to_f16 for both values (x0 in the low half): cvt.rn.f16x2.f32
 * rounds to nearest even with IEEE overflow to Inf; NaN goes to the codec. */
__device__ __forceinline__ uint32_t f32x2_to_f16x2(float x0, float x1)
{
#ifdef KV_CUDA_CODEC_ONLY
        return (uint32_t)kv_f32_to_f16(x0) | (uint32_t)kv_f32_to_f16(x1) << 16;
#else
        __half2 h = __floats2half2_rn(x0, x1);
        uint32_t r = *(uint32_t *)&h;
        if (__builtin_expect(isnan(x0) || isnan(x1), 0))
                r = (uint32_t)kv_f32_to_f16(x0) | (uint32_t)kv_f32_to_f16(x1) << 16;
        return r;
#endif
}

/* Two fp32 values to two fp8 codes (x0 in the low byte) with the hardware
 * conversion cvt.rn.satfinite (sm_89+): round to nearest even, finite values
 * and infinities beyond the range saturate to +-max, as in the codec.  Only
 * NaN differs (the hardware drops its sign): callers handle NaN. */
template <int D>
__device__ __forceinline__ uint32_t fp8x2_hw(float x0, float x1)
{
        static_assert(D == KVC_DTYPE_FP8_E4M3 || D == KVC_DTYPE_FP8_E5M2, "fp8 dtype");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890 && !defined(KV_CUDA_CODEC_ONLY)
        const __nv_fp8_interpretation_t kind = D == KVC_DTYPE_FP8_E4M3 ? __NV_E4M3 : __NV_E5M2;
        return __nv_cvt_float2_to_fp8x2(make_float2(x0, x1), __NV_SATFINITE, kind);
#else
        uint32_t a = D == KVC_DTYPE_FP8_E4M3 ? kv_f32_to_e4m3(x0) : kv_f32_to_e5m2(x0);
        uint32_t b = D == KVC_DTYPE_FP8_E4M3 ? kv_f32_to_e4m3(x1) : kv_f32_to_e5m2(x1);
        return a | b << 8;
#endif
}

template <int D>
__device__ __forceinline__ uint32_t fp8_codec(float x)
{
        return D == KVC_DTYPE_FP8_E4M3 ? kv_f32_to_e4m3(x) : kv_f32_to_e5m2(x);
}

/* == kv_f32_to_e4m3 / kv_f32_to_e5m2 for both values (x0 in the low byte),
 * every input: the hardware conversion, NaN through the codec. */
template <int D>
__device__ __forceinline__ uint32_t f32x2_to_fp8x2(float x0, float x1)
{
        uint32_t r = fp8x2_hw<D>(x0, x1);
        if (__builtin_expect(isnan(x0) || isnan(x1), 0))
                r = fp8_codec<D>(x0) | fp8_codec<D>(x1) << 8;
        return r;
}

/* == kv_f32_to_fp8(x0 / s) | kv_f32_to_fp8(x1 / s) << 8 as the host computes
 * it: an IEEE division (a reciprocal would round differently), then the
 * conversion.  A NaN quotient comes only from a NaN x, which the host's
 * division passes through with its sign and the GPU's does not: the codec
 * then gets x itself. */
template <int D>
__device__ __forceinline__ uint32_t fp8x2_div(float x0, float x1, float s)
{
        const float q0 = __fdiv_rn(x0, s), q1 = __fdiv_rn(x1, s);
        uint32_t r = fp8x2_hw<D>(q0, q1);
        if (__builtin_expect(isnan(q0) || isnan(q1), 0))
                r = fp8_codec<D>(isnan(x0) ? x0 : q0) | fp8_codec<D>(isnan(x1) ? x1 : q1) << 8;
        return r;
}

/* The same as fp8x2_div without a division, for scales s in [2^-60, 2^60]
 * with r = RN(1/s) (the host's 1.0f / s).  q = x*r corrected once with the
 * exact FMA residual, q' = q + (x - q*s)*r, is within one ulp of RN(x/s)
 * whenever x/s is a normal float (the residual term is exact there and the
 * error left is ~2^-47 relative, so q' is RN(x/s) or one of its two
 * neighbours).  fp8 rounding is monotone, so when the fp8 codes of q''s two
 * neighbours (bit patterns q'-1 and q'+1) agree, every value between them,
 * RN(x/s) included, has that code.  When they differ (q' within an ulp of
 * an fp8 rounding midpoint: about 2^-19 of inputs) or q' is 0, Inf or NaN
 * (x zero, non-finite, or a quotient out of range), *hard is set and the
 * caller redoes the chunk with fp8x2_div.  Range: a quotient with a
 * non-zero, non-saturated fp8 code has 2^-18 <= |x/s| <= 2^17, so with s in
 * [2^-60, 2^60] x and the residual are normal floats and the argument above
 * holds; smaller quotients are fp8 zeros with x's sign in every candidate,
 * larger ones saturate in every candidate.
 * tests/gpu/test_conv_exhaustive.cu checks it against the codec over all
 * 2^32 x for several scales, the range ends included. */
template <int D>
__device__ __forceinline__ uint32_t fp8x2_div_fast(float x0, float x1, float s, float r, bool &hard)
{
        float q0 = __fmul_rn(x0, r), q1 = __fmul_rn(x1, r);
        q0 = __fmaf_rn(__fmaf_rn(-q0, s, x0), r, q0);
        q1 = __fmaf_rn(__fmaf_rn(-q1, s, x1), r, q1);
        const uint32_t b0 = __float_as_uint(q0), b1 = __float_as_uint(q1);
        /* Inf or NaN (x not finite, or x/s overflowed): the IEEE path */
        hard |= ((b0 & 0x7F800000u) == 0x7F800000u) | ((b1 & 0x7F800000u) == 0x7F800000u);
        const uint32_t lo = fp8x2_hw<D>(__uint_as_float(b0 - 1u), __uint_as_float(b1 - 1u));
        const uint32_t hi = fp8x2_hw<D>(__uint_as_float(b0 + 1u), __uint_as_float(b1 + 1u));
        hard |= lo != hi;
        return lo;
}

/* == kv_f32_to_e2m1(y) for 0 <= y <= 6 (the range of |x| / block scale in
 * a block without NaN or Inf; the sign is added by the caller).  Round half
 * even onto {0, .5, 1, 1.5, 2, 3, 4, 6} is a float addition of a magic
 * number whose ulp is the grid spacing of y's binade: 2^22 (ulp 0.5) below
 * 2, 2^23 (ulp 1) in [2, 4), 2^24 (ulp 2) in [4, 6]; the sum's low mantissa
 * bits then count grid steps, and 2E shifts them to the code. */
__device__ __forceinline__ uint32_t e2m1_mag_p254(float y)
{
        const uint32_t m2 = max(__float_as_uint(y) >> 23, 127u);       /* 127 + e, e = 0, 1, 2 */
        const float magic = __uint_as_float((m2 + 22u) << 23);          /* 2^(22+e) */
        return (__float_as_uint(__fadd_rn(y, magic)) & 7u) + 2u * m2;   /* code + 254 */
}

__device__ __forceinline__ uint32_t e2m1_mag(float y)
{
#ifdef KV_CUDA_CODEC_ONLY
        return kv_f32_to_e2m1(y);
#else
        return e2m1_mag_p254(y) - 254u;
#endif
}

/* == kv_fp4_encode_block16 on x[0..16), nibbles packed into two words
 * (element i of the block in bits [4i, 4i+4) of w[i/8]).  The usual block
 * (all finite) takes the short path; a block holding NaN or Inf goes
 * through the codec's own encoder. */
/* The codec's own block encoder, nibbles and scale as fp4_block16 returns
 * them: the path for blocks holding NaN or Inf. */
__host__ __device__ __forceinline__ void fp4_block16_codec(const float *x, uint32_t &w0, uint32_t &w1,
                                                           uint32_t &scale)
{
        uint8_t p[8], s;
        kv_fp4_encode_block16(x, p, &s);
        w0 = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
        w1 = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
        scale = s;
}

__device__ __forceinline__ void fp4_block16(const float *x, uint32_t &w0, uint32_t &w1, uint32_t &scale)
{
        uint32_t m = 0;
#pragma unroll
        for (int i = 0; i < 16; i++)
                m = max(m, __float_as_uint(x[i]) & 0x7FFFFFFFu);
        if (__builtin_expect(m >= 0x7F800000u, 0)) {
                fp4_block16_codec(x, w0, w1, scale);
                return;
        }
        /* all finite: amax is the largest magnitude, as in the codec, and
         * |x| / 2^e <= 6 for every element */
        const uint8_t s = kv_fp4_block_scale(__uint_as_float(m));
        const float inv = kv_e8m0_inv_f32(s); /* a power of two: |x| * inv is exact */
        uint32_t r[2] = { 0, 0 };
#pragma unroll
        for (int i = 0; i < 16; i++) {
                const uint32_t u = __float_as_uint(x[i]);
#ifdef KV_CUDA_CODEC_ONLY
                const uint32_t nib = e2m1_mag(__fmul_rn(__uint_as_float(u & 0x7FFFFFFFu), inv)) | (u >> 31) << 3;
                r[i / 8] |= nib << (4 * (i % 8));
#else
                /* e2m1_mag inlined with its constant moved out: with
                 * m = max(exponent, 127) the code is (sum & 7) + 2m - 254;
                 * the nibbles are added (the sign as +8, -0 and negative
                 * values that round to zero keep it, as in the codec) and
                 * the -254 of every nibble is subtracted once per word,
                 * which modulo 2^32 leaves exactly the packed nibbles. */
                const float y = __fmul_rn(__uint_as_float(u & 0x7FFFFFFFu), inv);
                r[i / 8] += (e2m1_mag_p254(y) + ((u >> 31) << 3)) << (4 * (i % 8));
#endif
        }
#ifndef KV_CUDA_CODEC_ONLY
        r[0] -= 254u * 0x11111111u;
        r[1] -= 254u * 0x11111111u;
#endif
        w0 = r[0];
        w1 = r[1];
        scale = s;
}

template <> struct elem_traits<KVC_ELEM_F16> {
        typedef uint16_t t;
        static constexpr int bytes = 2;
        static __device__ __forceinline__ float to_f32(uint32_t bits) { return f16_to_f32(bits); }
};

/* Reads N elements of element type E at p as raw 16-byte words w[] (N *
 * bytes / 16 of them).  vec says p is 16-byte aligned (the launcher checked
 * the base and the row stride): then each word is one 16-byte load;
 * otherwise the words are assembled element by element.  Split from the
 * conversion so that a thread issues all its loads before it waits. */
template <int E, int N>
__device__ __forceinline__ void load_raw(const void *p, bool vec, uint4 (&w)[N * elem_traits<E>::bytes / 16])
{
        typedef elem_traits<E> tr;
        constexpr int NW = N * tr::bytes / 16;
        if (vec) {
                const uint4 *q = (const uint4 *)p;
#pragma unroll
                for (int i = 0; i < NW; i++)
                        w[i] = __ldcs(q + i); /* read once: stream past the caches */
        } else {
                const uint8_t *b = (const uint8_t *)p;
#pragma unroll
                for (int i = 0; i < NW; i++) {
                        uint32_t u[4];
#pragma unroll
                        for (int j = 0; j < 4; j++) {
                                if constexpr (tr::bytes == 4)
                                        u[j] = *(const uint32_t *)(b + 16 * i + 4 * j);
                                else
                                        u[j] = (uint32_t) * (const uint16_t *)(b + 16 * i + 4 * j) |
                                               (uint32_t) * (const uint16_t *)(b + 16 * i + 4 * j + 2) << 16;
                        }
                        w[i] = make_uint4(u[0], u[1], u[2], u[3]);
                }
        }
}

/* Widens the raw words of load_raw to fp32 (exact for every input type). */
template <int E, int N>
__device__ __forceinline__ void unpack_f32(const uint4 (&w)[N * elem_traits<E>::bytes / 16], float (&f)[N])
{
        typedef elem_traits<E> tr;
        constexpr int per16 = 16 / tr::bytes;
#pragma unroll
        for (int i = 0; i < N / per16; i++) {
                const uint32_t u[4] = { w[i].x, w[i].y, w[i].z, w[i].w };
#pragma unroll
                for (int j = 0; j < 4; j++) {
                        if constexpr (tr::bytes == 4) {
                                f[i * per16 + j] = tr::to_f32(u[j]);
                        } else {
                                f[i * per16 + 2 * j] = tr::to_f32(u[j] & 0xFFFFu);
                                f[i * per16 + 2 * j + 1] = tr::to_f32(u[j] >> 16);
                        }
                }
        }
}

/* Pool dtypes as compile-time tags, for the launchers' dispatch:
 * with_dtype(d, f) calls f(dtype_tag<D>()) with D the pool dtype d, so the
 * callee can instantiate its kernel for D (decltype(tag)::value).  Returns
 * false without calling f for a dtype that has no kernels. */
template <int D> struct dtype_tag {
        static constexpr int value = D;
};

template <class F>
static inline bool with_dtype(enum kvc_dtype d, F &&f)
{
        switch (d) {
        case KVC_DTYPE_BF16: f(dtype_tag<KVC_DTYPE_BF16>()); return true;
        case KVC_DTYPE_FP16: f(dtype_tag<KVC_DTYPE_FP16>()); return true;
        case KVC_DTYPE_FP8_E4M3: f(dtype_tag<KVC_DTYPE_FP8_E4M3>()); return true;
        case KVC_DTYPE_FP8_E5M2: f(dtype_tag<KVC_DTYPE_FP8_E5M2>()); return true;
        case KVC_DTYPE_FP4_E2M1: f(dtype_tag<KVC_DTYPE_FP4_E2M1>()); return true;
        default: return false;
        }
}

/* Relaxed stream capture for the scope of one setup call.  While any
 * thread captures a stream in global mode (PyTorch's torch.cuda.graph does),
 * or this thread does in thread-local mode, CUDA refuses the calls it
 * deems unsafe and invalidates the capture; the once-per-device setup of
 * the launchers (cudaFuncSetAttribute, occupancy queries,
 * cudaMemPoolCreate) is among them, so a first call made under capture
 * would break the caller's graph.  Those calls touch no stream, so they
 * run with this thread's mode relaxed, and the caller's mode is restored
 * after. */
struct relaxed_capture {
        cudaStreamCaptureMode prev = cudaStreamCaptureModeRelaxed;
        bool swapped;
        relaxed_capture() : swapped(cudaThreadExchangeStreamCaptureMode(&prev) == cudaSuccess)
        {
                if (!swapped) /* not left for the launchers' cudaGetLastError to report */
                        (void)cudaGetLastError();
        }
        ~relaxed_capture()
        {
                if (swapped)
                        (void)cudaThreadExchangeStreamCaptureMode(&prev);
        }
        relaxed_capture(const relaxed_capture &) = delete;
        relaxed_capture &operator=(const relaxed_capture &) = delete;
};

/* Raises kernel k's dynamic shared memory limit to bytes, once per device
 * (the attribute is per device context; dev is the current device; done
 * is the caller's per-kernel bit set of devices already raised).  Returns
 * a cudaError_t. */
template <typename K>
static inline int smem_limit(K k, int bytes, int dev, std::atomic<uint64_t> &done)
{
        const uint64_t bit = dev < 64 ? 1ull << dev : 0;
        if (bit && (done.load(std::memory_order_acquire) & bit))
                return 0;
        const relaxed_capture relaxed;
        cudaError_t e = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
        if (e == cudaSuccess && bit)
                done.fetch_or(bit, std::memory_order_release);
        return (int)e;
}

/* Grid-stride helper: a 1-D launch of enough blocks to cover n items, capped
 * so that very large calls loop instead of launching millions of blocks. */
static inline unsigned grid_for(uint64_t n, unsigned threads)
{
        uint64_t b = (n + threads - 1) / threads;
        if (b > (1u << 20))
                b = 1u << 20;
        return b ? (unsigned)b : 1u;
}

/* Programmatic dependent launch (sm_90).  A grid launched with
 * programmatic stream serialization (launch_cfg with pdl) may be scheduled
 * before the previous kernel on its stream has finished: it must call
 * grid_dep_wait() before it touches memory that kernel may write or read
 * (the wait returns once that kernel has completed and its memory is
 * visible; launched normally, it returns at once).  grid_dep_launch() lets
 * the next such grid be scheduled; it waits all the same. */
__device__ __forceinline__ void grid_dep_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void grid_dep_launch()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* The configuration of one cudaLaunchKernelEx: grid, block, stream, and
 * with pdl the programmatic stream serialization attribute (see
 * grid_dep_wait).  Build it where it is launched: cfg.attrs points into it,
 * so it is not copied. */
struct launch_cfg {
        cudaLaunchConfig_t cfg = {};
        cudaLaunchAttribute at[1] = {};

        launch_cfg(dim3 grid, dim3 block, cudaStream_t s, bool pdl)
        {
                at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
                at[0].val.programmaticStreamSerializationAllowed = 1;
                cfg.gridDim = grid;
                cfg.blockDim = block;
                cfg.stream = s;
                cfg.attrs = at;
                cfg.numAttrs = pdl ? 1 : 0;
        }
        launch_cfg(const launch_cfg &) = delete;
        launch_cfg &operator=(const launch_cfg &) = delete;
};

} // namespace kvk
#endif /* __CUDACC__ */

#endif
