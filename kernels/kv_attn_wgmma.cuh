/* kv_attn_wgmma.cuh - the Hopper warpgroup MMA (wgmma) pieces of the tiled
 * extend kernel (kv_attn_prefill_wg.cuh): shared-memory tile layout,
 * matrix descriptors, the asynchronous mma and its fences.
 *
 * wgmma exists only in sm_90a code (the "a" target: features of this one
 * architecture); KVA_WG_DEVICE says whether the device pass being compiled
 * has it, KVA_WG_HOST whether the build asked for it (meson: gpu_arch
 * "90a"), which the launcher needs before it picks the kernel.
 *
 * Tile layout.  A tile holds R rows (query vectors or keys) of D 16-bit
 * values in the 128-byte-swizzle layout wgmma reads: the row is cut into
 * column blocks of 64 values (128 bytes); block c of every row comes
 * before block c + 1, row r of a block at r * 128, and the 16-byte chunk j
 * of it at chunk j ^ (r % 8).  Eight rows make a 1024-byte swizzle atom,
 * so a tile starts 1024-byte aligned.  The XOR also keeps the 8 rows a
 * quarter-warp writes with 16-byte stores on 8 different bank groups.
 *
 * Descriptors (PTX ISA, "Matrix Descriptor Format"): start address >> 4
 * in bits 0-13, leading-dimension byte offset >> 4 in 16-29, stride
 * byte offset >> 4 in 32-45, swizzle mode in 62-63 (1 = 128 bytes).
 *  - K-major operand (Q as A, K as B of S = Q K^T: the reduction dim d runs
 *    along the row): SBO = 1024 (the next 8 rows); a k16 step inside a
 *    column block adds 32 bytes to the start, the next block R * 128.
 *  - MN-major operand (V as B of O = P V: the reduction dim is the key, the
 *    row; d runs along it, "transposed"): LBO = R * 128 (the next block of 64
 *    d), SBO = 1024 (the next 8 keys); a k16 step adds 16 rows, 2048 bytes.
 */
#ifndef KV_ATTN_WGMMA_CUH
#define KV_ATTN_WGMMA_CUH

#ifdef __CUDACC__
#include <stdint.h>

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define KVA_WG_DEVICE 1
#else
#define KVA_WG_DEVICE 0
#endif
#ifndef KVA_WG_HOST
#define KVA_WG_HOST 0
#endif

namespace kva {

/* Byte offset of 16-byte chunk j (values 8j..8j+7) of row r in a tile of R
 * rows. */
__host__ __device__ constexpr uint32_t sw_off(int R, int r, int j)
{
        return (uint32_t)((j / 8) * R * 128 + r * 128 + (((j % 8) ^ (r % 8)) * 16));
}

__device__ __forceinline__ uint32_t smem_u32(const void *p)
{
        return (uint32_t)__cvta_generic_to_shared(p);
}

/* A 128-byte-swizzle descriptor at shared address addr. */
__device__ __forceinline__ uint64_t wg_desc(uint32_t addr, uint32_t lbo, uint32_t sbo)
{
        return (uint64_t)((addr >> 4) & 0x3FFFu) | (uint64_t)((lbo >> 4) & 0x3FFFu) << 16 |
               (uint64_t)((sbo >> 4) & 0x3FFFu) << 32 | 1ull << 62;
}

#if KVA_WG_DEVICE
/* Orders this thread's register and shared-memory accesses before the
 * wgmma that follow (accumulators written by ordinary instructions). */
__device__ __forceinline__ void wg_fence()
{
        asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

__device__ __forceinline__ void wg_commit()
{
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

template <int N>
__device__ __forceinline__ void wg_wait()
{
        asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

/* Makes this thread's generic-proxy writes to shared memory (st.shared,
 * cp.async) visible to the async proxy that wgmma reads through; a barrier
 * after it makes every thread's visible. */
__device__ __forceinline__ void proxy_fence()
{
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

/* dst = src, read after the wgmma wait before it (an ordered asm, which
 * the compiler cannot hoist above the wait) into registers no wgmma uses. */
template <int N>
__device__ __forceinline__ void wg_take(float (&dst)[N], const float (&src)[N])
{
#pragma unroll
        for (int i = 0; i < N; i++)
                asm volatile("mov.b32 %0, %1;" : "=f"(dst[i]) : "f"(src[i]));
}

/* Makes d a value the compiler cannot recompute later: descriptors held
 * this way before the first wgmma of a group are not rebuilt between
 * wgmma in flight, which makes ptxas serialize them (C7513). */
__device__ __forceinline__ void wg_hold(uint64_t &d)
{
        asm volatile("" : "+l"(d));
}

/* Keeps the compiler from moving accesses of r across a wgmma wait. */
template <int N>
__device__ __forceinline__ void wg_pin(float (&r)[N])
{
#pragma unroll
        for (int i = 0; i < N; i++)
                asm volatile("" : "+f"(r[i])::"memory");
}

/* S += A B^T, A and B from shared memory (K-major): m64 x N x k16 */
template <int N, bool BF>
__device__ __forceinline__ void wg_ss(float (&d)[N / 2], uint64_t da, uint64_t db, int acc)
{
        static_assert(N == 64, "the score tile is 64 keys");
        if constexpr (BF) {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
                     "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                     : "l"(da), "l"(db), "r"(acc));
        } else {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
                     "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                     : "l"(da), "l"(db), "r"(acc));
        }
}

/* O += A B, A (4 registers a thread: the mma.sync A fragment of the warp's
 * 16 rows) from registers, B from shared memory, MN-major (transposed) */
template <int N, bool BF>
__device__ __forceinline__ void wg_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t db, int acc)
{
        static_assert(N == 64 || N == 128, "head_dim 64 or 128");
        if constexpr (N == 64) {
                if constexpr (BF) {
                asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                             "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
                             "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
                             : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                             : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc));
                } else {
                asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                             "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
                             "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
                             : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                             : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc));
                }
        }
        if constexpr (N == 128) {
                if constexpr (BF) {
                asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                             "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
                             "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
                             : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                             : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc));
                } else {
                asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                             "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
                             "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
                             : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                             : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc));
                }
        }
}
#endif /* KVA_WG_DEVICE */

} // namespace kva

#endif /* __CUDACC__ */
#endif
