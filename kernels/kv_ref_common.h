/* kv_ref_common.h - host-side helpers shared inside kernels/ (not installed,
 * not a contract): the message formatter of every kernel-argument error
 * (CPU references and CUDA launchers), and, for the CPU references of
 * kv_ref_write.c and kv_ref_attn.c, the pool-view checks, the addressing of
 * one layer's arrays and heads, element loads and head dequantization.
 *
 * Plain C that also compiles as C++ (nvcc), all static inline.
 */
#ifndef KV_REF_COMMON_H
#define KV_REF_COMMON_H

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "kv_codec.h"
#include "kv_ops.h"

/* Writes the message (when msg is not NULL and msglen > 0) and returns err,
 * so that a check fails and explains itself in one statement. */
static inline __attribute__((format(printf, 4, 5))) int kv_fail(int err, char *msg, size_t msglen,
                                                                const char *fmt, ...)
{
        if (msg && msglen) {
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(msg, msglen, fmt, ap);
                va_end(ap);
        }
        return err;
}

/* The pool view itself: non-NULL, mapped, a valid geometry, pages.  op (may
 * be NULL) prefixes the message as "<op>: ". */
static inline int kv_ref_check_view(const struct kv_pool_view *p, const char *op, char *msg, size_t msglen)
{
        const char *o = op ? op : "", *sep = op ? ": " : "";
        char why[160];

        if (!p)
                return kv_fail(-EINVAL, msg, msglen, "%s%spool view is NULL", o, sep);
        if (!p->base)
                return kv_fail(-EINVAL, msg, msglen, "%s%spool base is NULL", o, sep);
        if (kv_geom_check(&p->layout.g, why, sizeof(why)) < 0)
                return kv_fail(-EINVAL, msg, msglen, "%s%spool layout: %s", o, sep, why);
        if (p->layout.num_pages == 0)
                return kv_fail(-EINVAL, msg, msglen, "%s%spool layout has 0 pages", o, sep);
        return 0;
}

/* The layer of a checked view: in range, and for fp8 pools both scale
 * arrays present with a positive finite scale for it.  op as above. */
static inline int kv_ref_check_layer(const struct kv_pool_view *p, uint32_t layer, const char *op,
                                     char *msg, size_t msglen)
{
        const char *o = op ? op : "", *sep = op ? ": " : "";
        const enum kvc_dtype d = p->layout.g.dtype;

        if (layer >= p->layout.g.num_layers)
                return kv_fail(-EINVAL, msg, msglen, "%s%slayer %u out of range [0, %u)", o, sep, layer,
                               p->layout.g.num_layers);
        if (d == KVC_DTYPE_FP8_E4M3 || d == KVC_DTYPE_FP8_E5M2) {
                if (!p->k_scale || !p->v_scale)
                        return kv_fail(-EINVAL, msg, msglen, "%s%sfp8 pool without %s array", o, sep,
                                       p->k_scale ? "v_scale" : "k_scale");
                float ks = p->k_scale[layer], vs = p->v_scale[layer];
                if (!(isfinite(ks) && ks > 0.0f))
                        return kv_fail(-EINVAL, msg, msglen, "%s%sk_scale[%u] = %g is not a positive finite number",
                                       o, sep, layer, (double)ks);
                if (!(isfinite(vs) && vs > 0.0f))
                        return kv_fail(-EINVAL, msg, msglen, "%s%sv_scale[%u] = %g is not a positive finite number",
                                       o, sep, layer, (double)vs);
        }
        return 0;
}

/* One layer of a checked view, as the references address it. */
struct kv_ref_layer {
        uint8_t *k, *v;         /* the layer's K and V arrays */
        uint8_t *ks, *vs;       /* its fp4 block-scale arrays; NULL for other dtypes */
        float    k_scale, v_scale; /* the fp8 layer scales; 1 for other dtypes */
};

static inline void kv_ref_layer_of(const struct kv_pool_view *p, uint32_t layer, struct kv_ref_layer *r)
{
        const struct kv_layout *L = &p->layout;
        const enum kvc_dtype d = L->g.dtype;
        const bool fp8 = d == KVC_DTYPE_FP8_E4M3 || d == KVC_DTYPE_FP8_E5M2;
        uint8_t *base = (uint8_t *)p->base;

        r->k = base + kv_layout_k(L, layer);
        r->v = base + kv_layout_v(L, layer);
        r->ks = NULL;
        r->vs = NULL;
        if (d == KVC_DTYPE_FP4_E2M1) {
                r->ks = base + kv_layout_ks(L, layer);
                r->vs = base + kv_layout_vs(L, layer);
        }
        r->k_scale = fp8 ? p->k_scale[layer] : 1.0f;
        r->v_scale = fp8 ? p->v_scale[layer] : 1.0f;
}

/* Byte offset of head h of token off of page pg in a K or V array, and of
 * its fp4 scale bytes in a KS or VS array. */
static inline uint64_t kv_ref_head_off(const struct kv_layout *L, uint64_t pg, uint64_t off, uint32_t h)
{
        return pg * L->page_bytes + off * L->token_bytes + h * L->head_bytes;
}

static inline uint64_t kv_ref_scale_off(const struct kv_layout *L, uint64_t pg, uint64_t off, uint32_t h)
{
        return pg * L->scale_page_bytes + off * L->scale_token_bytes + h * L->scale_head_bytes;
}

/* Element i of a caller tensor of element type e, widened to fp32 (exact). */
static inline float kv_ref_load(const void *base, enum kvc_elem e, int64_t i)
{
        switch (e) {
        case KVC_ELEM_BF16:
                return kv_bf16_to_f32(((const uint16_t *)base)[i]);
        case KVC_ELEM_F16:
                return kv_f16_to_f32(((const uint16_t *)base)[i]);
        default:
                return ((const float *)base)[i];
        }
}

/* Dequantizes one head of dtype d (D elements at src; fp4: its block scales
 * at ssrc) into out[0..D): fp8 times scale, fp4 times each block's scale,
 * bf16/fp16 widened.  An unknown dtype gives zeros. */
static inline void kv_ref_get_head(enum kvc_dtype d, uint32_t D, const uint8_t *src, const uint8_t *ssrc,
                                   float scale, float *out)
{
        uint16_t h;

        switch (d) {
        case KVC_DTYPE_BF16:
                for (uint32_t i = 0; i < D; i++) {
                        memcpy(&h, src + 2 * i, 2);
                        out[i] = kv_bf16_to_f32(h);
                }
                break;
        case KVC_DTYPE_FP16:
                for (uint32_t i = 0; i < D; i++) {
                        memcpy(&h, src + 2 * i, 2);
                        out[i] = kv_f16_to_f32(h);
                }
                break;
        case KVC_DTYPE_FP8_E4M3:
                for (uint32_t i = 0; i < D; i++)
                        out[i] = kv_e4m3_to_f32(src[i]) * scale;
                break;
        case KVC_DTYPE_FP8_E5M2:
                for (uint32_t i = 0; i < D; i++)
                        out[i] = kv_e5m2_to_f32(src[i]) * scale;
                break;
        case KVC_DTYPE_FP4_E2M1:
                for (uint32_t i = 0; i < D; i++) {
                        uint8_t byte = src[i / 2];
                        uint8_t nib = (i & 1) ? (uint8_t)(byte >> 4) : (uint8_t)(byte & 0xF);
                        out[i] = kv_e2m1_to_f32(nib) * kv_e8m0_to_f32(ssrc[i / KV_FP4_BLOCK]);
                }
                break;
        default:
                memset(out, 0, D * sizeof(float));
                break;
        }
}

#endif
