/* kv_layout.h - the memory layout of a pool (design §4), computed in one place.
 *
 * The daemon computes a layout when it creates a pool and sends every offset
 * and stride in the attach reply; clients never recompute it.  Tests use the
 * same function to check the daemon's figures to the byte.
 *
 * Per layer, in this order, each array starting on a 256-byte boundary:
 *   K  [num_pages][page_size][kv_heads][head_dim]    elements of the dtype
 *   V  same
 *   KS [num_pages][page_size][kv_heads][head_dim/16] bytes (fp4 only)
 *   VS same                                           (fp4 only)
 * Layers follow each other at layer_stride; the whole pool is one allocation
 * rounded up to 2 MiB.
 */
#ifndef KV_LAYOUT_H
#define KV_LAYOUT_H

#include <stdint.h>
#include "kvclient.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KV_ARRAY_ALIGN 256u
#define KV_POOL_ALIGN  (2u << 20)
#define KV_FP4_BLOCK   16u

struct kv_geom {
        enum kvc_dtype dtype;
        uint32_t num_layers, kv_heads, head_dim, page_size;
};

struct kv_layout {
        struct kv_geom g;
        uint32_t num_pages;
        uint64_t head_bytes, token_bytes, page_bytes;                   /* one K (or V) array */
        uint64_t scale_head_bytes, scale_token_bytes, scale_page_bytes; /* fp4, else 0 */
        uint64_t k_offset, v_offset, ks_offset, vs_offset;              /* layer 0 */
        uint64_t layer_stride;
        uint64_t used_bytes;  /* num_layers * layer_stride */
        uint64_t alloc_bytes; /* used_bytes rounded up to KV_POOL_ALIGN */
};

/* Bits per stored element: 16, 8 or 4 (fp4 scales counted separately). */
uint32_t kv_dtype_bits(enum kvc_dtype d);

/* Checks a geometry: known dtype; 1 <= layers <= 1024; 1 <= kv_heads <= 256;
 * head_dim in {64, 128, 256} (any multiple of 16 up to 512 for host pools is
 * accepted too); 1 <= page_size <= 1024.  Returns 0 or -EINVAL with a
 * description of the bad field in err (may be NULL). */
int kv_geom_check(const struct kv_geom *g, char *err, size_t errlen);

/* Fills the layout for num_pages pages.  Returns 0 or -EINVAL/-EOVERFLOW. */
int kv_layout_init(const struct kv_geom *g, uint32_t num_pages, struct kv_layout *ret);

/* The largest page count whose alloc_bytes fits in budget bytes.  Returns
 * 0 and fills *ret, or -ENOSPC if not even one page fits. */
int kv_layout_fit(const struct kv_geom *g, uint64_t budget, struct kv_layout *ret);

/* Byte offsets of layer l's arrays from the pool base. */
static inline uint64_t kv_layout_k(const struct kv_layout *L, uint32_t l) { return L->k_offset + (uint64_t)l * L->layer_stride; }
static inline uint64_t kv_layout_v(const struct kv_layout *L, uint32_t l) { return L->v_offset + (uint64_t)l * L->layer_stride; }
static inline uint64_t kv_layout_ks(const struct kv_layout *L, uint32_t l) { return L->ks_offset + (uint64_t)l * L->layer_stride; }
static inline uint64_t kv_layout_vs(const struct kv_layout *L, uint32_t l) { return L->vs_offset + (uint64_t)l * L->layer_stride; }

/* The head_dims the CUDA kernels are built for (host pools take any
 * multiple of 16 up to 512): the one list the launchers' checks and
 * kvpoold's pool configuration share. */
static inline int kv_cuda_head_dim_ok(uint32_t d) { return d == 64 || d == 128 || d == 256; }

/* Token capacity = num_pages * page_size. */
static inline uint64_t kv_layout_tokens(const struct kv_layout *L) { return (uint64_t)L->num_pages * L->g.page_size; }

#ifdef __cplusplus
}
#endif
#endif
