/* kv_ops.h - the data-path operations over a mapped pool: write (quantize +
 * scatter), gather (dequantize pages), decode and extend attention.
 *
 * Each operation exists twice with the same arguments:
 *   kv_ref_*   CPU reference in fp32, host pointers, synchronous
 *              (kernels/kv_ref_*.c; what the host backend runs and what GPU
 *              tests compare against);
 *   kv_cuda_*  CUDA launcher, device pointers, asynchronous on stream
 *              (kernels/kv_*.cu; only when built with CUDA, else they return
 *              -ENOSYS).
 * All return 0 or a negative errno, having checked every host-side argument
 * before launching anything; on error, msg (if not NULL) gets a line naming
 * the bad argument.  The argument structs are the public ones of kvclient.h.
 */
#ifndef KV_OPS_H
#define KV_OPS_H

#include <stddef.h>
#include "kvclient.h"
#include "kv_layout.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A pool as the kernels see it: a mapped base and its layout and scales. */
struct kv_pool_view {
        void                   *base;    /* host or device pointer to the pool */
        struct kv_layout        layout;
        const float            *k_scale; /* [num_layers], host memory */
        const float            *v_scale; /* [num_layers], host memory */
};


/* The argument checks of write and gather, shared by both backends (the CPU
 * references call them first; the CUDA launchers too, and then check what
 * only the kernels need of the pool: kv_cuda_common.cu).  Everything that
 * can be checked without reading caller arrays: a non-NULL a, the pool view
 * and the layer (with its fp8 scales), elem (write: F32, BF16 or F16;
 * gather: F32 or BF16), and, only when there is work (num_tokens or n_pages
 * > 0): write's k, v and slots non-NULL, row strides of at least
 * kv_heads*head_dim whose last row is addressable, k and v aligned to their
 * element and slots to 8 bytes; gather's pages, k_out and v_out non-NULL,
 * k_out and v_out 16-byte aligned and pages 4-byte aligned.  Slots and page
 * ids are not read (the reference range-checks them; on a GPU they are
 * device memory and the kernels skip bad ones).  Returns 0 (also for
 * num_tokens or n_pages 0: the caller has nothing to do) or -EINVAL with one
 * line in msg (if not NULL) that names the bad argument first.
 * Thread-safe; touches nothing. */
int kv_write_check(const struct kv_pool_view *p, const struct kvc_write_args *a, char *msg, size_t msglen);
int kv_gather_check(const struct kv_pool_view *p, const struct kvc_gather_args *a, char *msg, size_t msglen);

int kv_ref_write(const struct kv_pool_view *p, const struct kvc_write_args *a, char *msg, size_t msglen);
int kv_ref_gather(const struct kv_pool_view *p, const struct kvc_gather_args *a, char *msg, size_t msglen);
int kv_ref_decode(const struct kv_pool_view *p, const struct kvc_decode_args *a, char *msg, size_t msglen);
int kv_ref_extend(const struct kv_pool_view *p, const struct kvc_extend_args *a, char *msg, size_t msglen);
/* The checks kv_ref_decode / kv_ref_extend make before computing, with the
 * same returns and messages; nothing is computed or written (the size
 * query of a host pool's workspace, which needs none). */
int kv_ref_decode_check(const struct kv_pool_view *p, const struct kvc_decode_args *a, char *msg, size_t msglen);
int kv_ref_extend_check(const struct kv_pool_view *p, const struct kvc_extend_args *a, char *msg, size_t msglen);

/* The shape of a caller's workspace for the split partials of decode and
 * extend, checkable on any pool: ws NULL with ws_bytes > 0, or ws not
 * 16-byte aligned, is -EINVAL with msg ("<op>: workspace ...").  NULL with
 * 0 (the library's own scratch) and a non-NULL ws of any size pass.
 * Thread-safe; touches nothing. */
int kv_attn_ws_check(const void *ws, size_t ws_bytes, const char *op, char *msg, size_t msglen);

int kv_cuda_write(const struct kv_pool_view *p, const struct kvc_write_args *a, void *stream, char *msg, size_t msglen);
/* fp8 pools from 16-bit input: kv_cuda_write calls of at most this many
 * tokens run K and V in separate threads (grid z = 2), as fp4 from 16-bit
 * input always does; longer ones convert both in one thread.  Measured on
 * the H200 (docs/benchmarks.md, Write kernel, "fp8: K and V apart in short
 * calls"): apart, T = 1, 16 and 256 took 1.01, 1.14 and 1.98 us a call
 * against 1.21, 1.43 and 2.15; at T = 4096 3-4% more, so longer calls stay
 * as they were.  0: never (for measuring).  Here, not in kv_write.cuh, so
 * that the GPU test (C) covers both sides of it. */
#ifndef KV_WRITE_SPLIT8_T
#define KV_WRITE_SPLIT8_T 256
#endif
int kv_cuda_gather(const struct kv_pool_view *p, const struct kvc_gather_args *a, void *stream, char *msg, size_t msglen);
int kv_cuda_decode(const struct kv_pool_view *p, const struct kvc_decode_args *a, void *stream, char *msg, size_t msglen);
int kv_cuda_extend(const struct kv_pool_view *p, const struct kvc_extend_args *a, void *stream, char *msg, size_t msglen);

/* Decode and extend whose split partials go to the caller's workspace ws
 * (ws_bytes of device memory on the current device, 16-byte aligned)
 * instead of scratch the launcher takes from its stream-ordered pool; ws
 * NULL with ws_bytes 0 is that scratch, so kv_cuda_decode(p, a, s, ...) is
 * kv_cuda_decode_ws(p, a, NULL, 0, s, ...).  Besides kv_cuda_decode's
 * errors: kv_attn_ws_check's, -EINVAL for a ws that is not device memory
 * of the current device, and -ENOSPC when the call splits and ws_bytes is
 * below what it needs (the message says both), all before any launch.
 * Under stream capture a call with ws puts only kernel nodes into the
 * graph. */
int kv_cuda_decode_ws(const struct kv_pool_view *p, const struct kvc_decode_args *a, void *ws, size_t ws_bytes,
                      void *stream, char *msg, size_t msglen);
int kv_cuda_extend_ws(const struct kv_pool_view *p, const struct kvc_extend_args *a, void *ws, size_t ws_bytes,
                      void *stream, char *msg, size_t msglen);
/* The bytes of workspace kv_cuda_decode_ws / kv_cuda_extend_ws need for
 * the same arguments both as an eager call (planned for seq_lens_host) and
 * under stream capture (planned for the page table's capacity), in
 * *ret_bytes: the larger of the two plans' needs, each 0 when that plan
 * does not split.  A workspace of that size serves the call eagerly and
 * captured, so a graph's workspace can be sized and allocated before the
 * capture.  Launches nothing, looks at no stream.  The call's argument
 * errors (and -EINVAL for a NULL ret_bytes), *ret_bytes untouched then. */
int kv_cuda_decode_ws_bytes(const struct kv_pool_view *p, const struct kvc_decode_args *a, size_t *ret_bytes,
                            char *msg, size_t msglen);
int kv_cuda_extend_ws_bytes(const struct kv_pool_view *p, const struct kvc_extend_args *a, size_t *ret_bytes,
                            char *msg, size_t msglen);

/* Which kernel kv_cuda_extend takes, process-wide: KV_EXTEND_AUTO (the
 * launcher's rule, kernels/kv_attn_plan.cuh), or always the tiled kernel or
 * always the decode kernel, so that tests and benchmarks can run both on the
 * same call (libkvclient never sets it).  It applies to the calls that
 * start after it is set, in every thread; restore the value it returns when
 * done.  Returns the previous setting, or -EINVAL for another value
 * (nothing changed), -ENOSYS without CUDA. */
enum kv_extend_kernel { KV_EXTEND_AUTO = 0, KV_EXTEND_TILED = 1, KV_EXTEND_DECODE = 2 };
int kv_cuda_extend_kernel(int which);

/* How the decode kernel's warps share a CTA's work, process-wide:
 * KV_DECODE_AUTO (the launcher's rule, kva::take_heads in
 * kernels/kv_attn_plan.cuh), KV_DECODE_TILES (the 4 warps of a CTA take
 * turns over one kv head's 16-key tiles) or KV_DECODE_HEADS (each warp a
 * kv head of its own and all its tiles), so that tests and benchmarks can
 * run both on the same call (libkvclient never sets it).  It applies to
 * calls on the decode kernel with a row a CTA (decode, and extend whose
 * rows are not packed), those that start after it is set, in every
 * thread; restore the value it returns when done.  Returns the previous
 * setting, or -EINVAL for another value (nothing changed), -ENOSYS
 * without CUDA. */
enum kv_decode_warps { KV_DECODE_AUTO = 0, KV_DECODE_TILES = 1, KV_DECODE_HEADS = 2 };
int kv_cuda_decode_warps(int which);

/* 1 if this build has CUDA kernels and at least one device is usable. */
int kv_cuda_available(void);

#ifdef __cplusplus
}
#endif
#endif
