/* kv_ref_write.c - CPU reference of the write (quantize + scatter) and
 * gather (dequantize pages) operations of kv_ops.h, in fp32 on host memory.
 *
 * This is what the host backend runs and what the CUDA kernels are compared
 * against, so the arithmetic is spelled out to the bit:
 *   fp8   q = kv_f32_to_e4m3/e5m2(x / scale[layer])   (a true division, not a
 *         multiplication by the reciprocal: the two differ in the last bit);
 *         read back as decode(q) * scale[layer].
 *   fp4   each block of 16 consecutive elements of one head's head_dim goes
 *         through kv_fp4_encode_block16(); read back as
 *         kv_e2m1_to_f32(nibble) * kv_e8m0_to_f32(scale byte).  The layer
 *         scales are not used.
 *   bf16/fp16  plain round-to-nearest-even conversion; scales not used.
 * Input elements (bf16/f16) are widened to fp32 exactly first.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "kv_codec.h"
#include "kv_ops.h"

static int fail(int err, char *msg, size_t msglen, const char *fmt, ...)
{
        if (msg && msglen) {
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(msg, msglen, fmt, ap);
                va_end(ap);
        }
        return err;
}

static inline float load_elem(const void *base, enum kvc_elem e, int64_t i)
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

/* Checks what both operations need of the pool view and the layer. */
static int check_pool(const struct kv_pool_view *p, uint32_t layer, char *msg, size_t msglen)
{
        char why[160];

        if (!p)
                return fail(-EINVAL, msg, msglen, "pool view is NULL");
        if (!p->base)
                return fail(-EINVAL, msg, msglen, "pool base is NULL");
        if (kv_geom_check(&p->layout.g, why, sizeof(why)) < 0)
                return fail(-EINVAL, msg, msglen, "pool layout: %s", why);
        if (p->layout.num_pages == 0)
                return fail(-EINVAL, msg, msglen, "pool layout has 0 pages");
        if (layer >= p->layout.g.num_layers)
                return fail(-EINVAL, msg, msglen, "layer %u out of range [0, %u)",
                            layer, p->layout.g.num_layers);
        enum kvc_dtype d = p->layout.g.dtype;
        if (d == KVC_DTYPE_FP8_E4M3 || d == KVC_DTYPE_FP8_E5M2) {
                if (!p->k_scale || !p->v_scale)
                        return fail(-EINVAL, msg, msglen, "fp8 pool without %s array",
                                    p->k_scale ? "v_scale" : "k_scale");
                float ks = p->k_scale[layer], vs = p->v_scale[layer];
                if (!(isfinite(ks) && ks > 0.0f))
                        return fail(-EINVAL, msg, msglen, "k_scale[%u] = %g is not a positive finite number",
                                    layer, (double)ks);
                if (!(isfinite(vs) && vs > 0.0f))
                        return fail(-EINVAL, msg, msglen, "v_scale[%u] = %g is not a positive finite number",
                                    layer, (double)vs);
        }
        return 0;
}

/* Quantizes one head (head_dim elements at src, element i at src_index0 + i)
 * into its place: dst = data bytes of that head, sdst = its fp4 scale bytes. */
static void put_head(enum kvc_dtype d, uint32_t D, const void *src, enum kvc_elem e, int64_t i0,
                     float scale, uint8_t *dst, uint8_t *sdst)
{
        switch (d) {
        case KVC_DTYPE_BF16:
                for (uint32_t i = 0; i < D; i++) {
                        uint16_t h = kv_f32_to_bf16(load_elem(src, e, i0 + i));
                        memcpy(dst + 2 * i, &h, 2);
                }
                break;
        case KVC_DTYPE_FP16:
                for (uint32_t i = 0; i < D; i++) {
                        uint16_t h = kv_f32_to_f16(load_elem(src, e, i0 + i));
                        memcpy(dst + 2 * i, &h, 2);
                }
                break;
        case KVC_DTYPE_FP8_E4M3:
                for (uint32_t i = 0; i < D; i++)
                        dst[i] = kv_f32_to_e4m3(load_elem(src, e, i0 + i) / scale);
                break;
        case KVC_DTYPE_FP8_E5M2:
                for (uint32_t i = 0; i < D; i++)
                        dst[i] = kv_f32_to_e5m2(load_elem(src, e, i0 + i) / scale);
                break;
        case KVC_DTYPE_FP4_E2M1:
                for (uint32_t b = 0; b < D / KV_FP4_BLOCK; b++) {
                        float x[KV_FP4_BLOCK];
                        for (uint32_t i = 0; i < KV_FP4_BLOCK; i++)
                                x[i] = load_elem(src, e, i0 + b * KV_FP4_BLOCK + i);
                        kv_fp4_encode_block16(x, dst + b * (KV_FP4_BLOCK / 2), sdst + b);
                }
                break;
        default:
                break;
        }
}

/* Writes K and V of a->num_tokens tokens into the pool (see the file
 * comment for the arithmetic).  Every argument is checked before the first
 * byte is written: on error nothing in the pool has changed.  Returns 0;
 * -EINVAL (bad pool view, layer, elem, NULL pointer, row stride, fp8 scale);
 * -ERANGE (a slot that is neither -1 nor in [0, num_pages*page_size)).
 * msg (if not NULL) gets one line naming the bad argument.  Thread-safe for
 * writes to distinct slots. */
int kv_ref_write(const struct kv_pool_view *p, const struct kvc_write_args *a, char *msg, size_t msglen)
{
        if (!a)
                return fail(-EINVAL, msg, msglen, "write args are NULL");
        int r = check_pool(p, a->layer, msg, msglen);
        if (r < 0)
                return r;
        const struct kv_layout *L = &p->layout;
        const uint32_t H = L->g.kv_heads, D = L->g.head_dim, P = L->g.page_size;
        const int64_t row = (int64_t)H * D;

        if (a->elem != KVC_ELEM_F32 && a->elem != KVC_ELEM_BF16 && a->elem != KVC_ELEM_F16)
                return fail(-EINVAL, msg, msglen, "elem %d is not F32, BF16 or F16", (int)a->elem);
        if (a->num_tokens == 0)
                return 0;
        if (!a->k || !a->v || !a->slots)
                return fail(-EINVAL, msg, msglen, "%s is NULL with num_tokens = %u",
                            !a->k ? "k" : !a->v ? "v" : "slots", a->num_tokens);
        if (a->k_row_stride < row)
                return fail(-EINVAL, msg, msglen, "k_row_stride %" PRId64 " < kv_heads*head_dim = %" PRId64,
                            a->k_row_stride, row);
        if (a->v_row_stride < row)
                return fail(-EINVAL, msg, msglen, "v_row_stride %" PRId64 " < kv_heads*head_dim = %" PRId64,
                            a->v_row_stride, row);
        const int64_t nslots = (int64_t)L->num_pages * P;
        for (uint32_t t = 0; t < a->num_tokens; t++) {
                int64_t s = a->slots[t];
                if (s != -1 && (s < 0 || s >= nslots))
                        return fail(-ERANGE, msg, msglen,
                                    "slots[%u] = %" PRId64 " out of range [0, %" PRId64 ") (or -1 to skip)",
                                    t, s, nslots);
        }

        const enum kvc_dtype d = L->g.dtype;
        const bool fp8 = d == KVC_DTYPE_FP8_E4M3 || d == KVC_DTYPE_FP8_E5M2;
        const float ks = fp8 ? p->k_scale[a->layer] : 1.0f;
        const float vs = fp8 ? p->v_scale[a->layer] : 1.0f;
        uint8_t *base = p->base;
        uint8_t *kd = base + kv_layout_k(L, a->layer), *vd = base + kv_layout_v(L, a->layer);
        uint8_t *ksd = NULL, *vsd = NULL;
        if (d == KVC_DTYPE_FP4_E2M1) {
                ksd = base + kv_layout_ks(L, a->layer);
                vsd = base + kv_layout_vs(L, a->layer);
        }

        for (uint32_t t = 0; t < a->num_tokens; t++) {
                int64_t s = a->slots[t];
                if (s == -1)
                        continue;
                uint64_t pg = (uint64_t)s / P, off = (uint64_t)s % P;
                for (uint32_t h = 0; h < H; h++) {
                        uint64_t o = pg * L->page_bytes + off * L->token_bytes + h * L->head_bytes;
                        uint64_t so = pg * L->scale_page_bytes + off * L->scale_token_bytes +
                                      h * L->scale_head_bytes;
                        put_head(d, D, a->k, a->elem, t * a->k_row_stride + (int64_t)h * D, ks,
                                 kd + o, ksd ? ksd + so : NULL);
                        put_head(d, D, a->v, a->elem, t * a->v_row_stride + (int64_t)h * D, vs,
                                 vd + o, vsd ? vsd + so : NULL);
                }
        }
        return 0;
}

/* Dequantizes one head into out[0..D) (fp32). */
static void get_head(enum kvc_dtype d, uint32_t D, const uint8_t *src, const uint8_t *ssrc,
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
                break;
        }
}

static void store_row(void *out, enum kvc_elem e, uint64_t i0, const float *x, uint32_t D)
{
        if (e == KVC_ELEM_F32) {
                memcpy((float *)out + i0, x, D * sizeof(float));
                return;
        }
        uint16_t *o = (uint16_t *)out + i0;
        for (uint32_t i = 0; i < D; i++)
                o[i] = kv_f32_to_bf16(x[i]);
}

/* Dequantizes n_pages pages of one layer into dense k_out/v_out, shaped
 * [n_pages*page_size, kv_heads, head_dim] (fp8 times the layer's scale, fp4
 * times each block's scale), as F32 or BF16 (rounded to nearest even).
 * Every argument is checked before the first byte is written.  Returns 0;
 * -EINVAL (bad pool view, layer, elem, NULL pointer); -ERANGE (a page id
 * outside [0, num_pages)).  msg (if not NULL) names the bad argument.
 * Thread-safe. */
int kv_ref_gather(const struct kv_pool_view *p, const struct kvc_gather_args *a, char *msg, size_t msglen)
{
        if (!a)
                return fail(-EINVAL, msg, msglen, "gather args are NULL");
        int r = check_pool(p, a->layer, msg, msglen);
        if (r < 0)
                return r;
        const struct kv_layout *L = &p->layout;
        const uint32_t H = L->g.kv_heads, D = L->g.head_dim, P = L->g.page_size;

        if (a->elem != KVC_ELEM_F32 && a->elem != KVC_ELEM_BF16)
                return fail(-EINVAL, msg, msglen, "elem %d is not F32 or BF16 (gather output)", (int)a->elem);
        if (a->n_pages == 0)
                return 0;
        if (!a->pages || !a->k_out || !a->v_out)
                return fail(-EINVAL, msg, msglen, "%s is NULL with n_pages = %u",
                            !a->pages ? "pages" : !a->k_out ? "k_out" : "v_out", a->n_pages);
        for (uint32_t i = 0; i < a->n_pages; i++) {
                if (a->pages[i] < 0 || (uint32_t)a->pages[i] >= L->num_pages)
                        return fail(-ERANGE, msg, msglen, "pages[%u] = %d out of range [0, %u)",
                                    i, a->pages[i], L->num_pages);
        }

        const enum kvc_dtype d = L->g.dtype;
        const bool fp8 = d == KVC_DTYPE_FP8_E4M3 || d == KVC_DTYPE_FP8_E5M2;
        const float ks = fp8 ? p->k_scale[a->layer] : 1.0f;
        const float vs = fp8 ? p->v_scale[a->layer] : 1.0f;
        const uint8_t *base = p->base;
        const uint8_t *kd = base + kv_layout_k(L, a->layer), *vd = base + kv_layout_v(L, a->layer);
        const uint8_t *ksd = NULL, *vsd = NULL;
        if (d == KVC_DTYPE_FP4_E2M1) {
                ksd = base + kv_layout_ks(L, a->layer);
                vsd = base + kv_layout_vs(L, a->layer);
        }
        float buf[512];         /* head_dim <= 512 (kv_geom_check) */

        for (uint32_t i = 0; i < a->n_pages; i++) {
                uint64_t pg = (uint64_t)a->pages[i];
                for (uint32_t off = 0; off < P; off++) {
                        uint64_t tok = (uint64_t)i * P + off;
                        for (uint32_t h = 0; h < H; h++) {
                                uint64_t o = pg * L->page_bytes + off * L->token_bytes + h * L->head_bytes;
                                uint64_t so = pg * L->scale_page_bytes + off * L->scale_token_bytes +
                                              h * L->scale_head_bytes;
                                uint64_t dst = (tok * H + h) * D;
                                get_head(d, D, kd + o, ksd ? ksd + so : NULL, ks, buf);
                                store_row(a->k_out, a->elem, dst, buf, D);
                                get_head(d, D, vd + o, vsd ? vsd + so : NULL, vs, buf);
                                store_row(a->v_out, a->elem, dst, buf, D);
                        }
                }
        }
        return 0;
}
