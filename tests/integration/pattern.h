/* pattern.h - recognizable page contents for the integration tests: every
 * byte of a page's K and V arrays in every layer is a function of (worker,
 * index of the page in the worker's allocation, layer, array, offset), so a
 * page handed to two workers, or written at the wrong address, shows. */
#ifndef KVT_PATTERN_H
#define KVT_PATTERN_H

#include <stdint.h>

#include "kvclient.h"

static inline uint8_t kvt_pattern_byte(uint32_t w, uint32_t i, uint32_t l, uint32_t kv, uint64_t o)
{
        uint64_t x = (uint64_t)w * 0x9E3779B1u ^ (uint64_t)i * 0x85EBCA77u ^ (uint64_t)l * 0xC2B2AE3Du ^
                     (uint64_t)kv * 0x27D4EB2Fu ^ o * 0x165667B1u;

        return (uint8_t)(x ^ x >> 13 ^ x >> 29);
}

static inline uint8_t *kvt_page_array(const struct kvc_pool_desc *d, int32_t page, uint32_t l, uint32_t kv)
{
        return (uint8_t *)d->base + (kv ? d->v_offset : d->k_offset) + (uint64_t)l * d->layer_stride +
               (uint64_t)page * d->page_bytes;
}

static inline void kvt_pattern_fill(const struct kvc_pool_desc *d, int32_t page, uint32_t w, uint32_t i)
{
        for (uint32_t l = 0; l < d->num_layers; l++)
                for (uint32_t kv = 0; kv < 2; kv++) {
                        uint8_t *a = kvt_page_array(d, page, l, kv);

                        for (uint64_t o = 0; o < d->page_bytes; o++)
                                a[o] = kvt_pattern_byte(w, i, l, kv, o);
                }
}

/* -1 if the page holds pattern (w, i), else the first wrong byte's offset
 * (counted over layers and arrays). */
static inline int64_t kvt_pattern_check(const struct kvc_pool_desc *d, int32_t page, uint32_t w, uint32_t i)
{
        for (uint32_t l = 0; l < d->num_layers; l++)
                for (uint32_t kv = 0; kv < 2; kv++) {
                        const uint8_t *a = kvt_page_array(d, page, l, kv);

                        for (uint64_t o = 0; o < d->page_bytes; o++)
                                if (a[o] != kvt_pattern_byte(w, i, l, kv, o))
                                        return (int64_t)((l * 2 + kv) * d->page_bytes + o);
                }
        return -1;
}

#endif
