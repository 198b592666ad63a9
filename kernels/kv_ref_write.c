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
 *
 * The argument checks of both operations (kv_write_check, kv_gather_check)
 * are here too: the CUDA launchers call them as well, and add only what the
 * kernels need of the pool (kv_cuda_common.cu), so that both backends refuse
 * the same arguments with the same words.
 */
#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kv_codec.h"
#include "kv_ops.h"
#include "kv_ref_common.h"

/* Quantizes one head (head_dim elements at src, element i at src_index0 + i)
 * into its place: dst = data bytes of that head, sdst = its fp4 scale bytes. */
static void put_head(enum kvc_dtype d, uint32_t D, const void *src, enum kvc_elem e, int64_t i0,
                     float scale, uint8_t *dst, uint8_t *sdst)
{
        switch (d) {
        case KVC_DTYPE_BF16:
                for (uint32_t i = 0; i < D; i++) {
                        uint16_t h = kv_f32_to_bf16(kv_ref_load(src, e, i0 + i));
                        memcpy(dst + 2 * i, &h, 2);
                }
                break;
        case KVC_DTYPE_FP16:
                for (uint32_t i = 0; i < D; i++) {
                        uint16_t h = kv_f32_to_f16(kv_ref_load(src, e, i0 + i));
                        memcpy(dst + 2 * i, &h, 2);
                }
                break;
        case KVC_DTYPE_FP8_E4M3:
                for (uint32_t i = 0; i < D; i++)
                        dst[i] = kv_f32_to_e4m3(kv_ref_load(src, e, i0 + i) / scale);
                break;
        case KVC_DTYPE_FP8_E5M2:
                for (uint32_t i = 0; i < D; i++)
                        dst[i] = kv_f32_to_e5m2(kv_ref_load(src, e, i0 + i) / scale);
                break;
        case KVC_DTYPE_FP4_E2M1:
                for (uint32_t b = 0; b < D / KV_FP4_BLOCK; b++) {
                        float x[KV_FP4_BLOCK];
                        for (uint32_t i = 0; i < KV_FP4_BLOCK; i++)
                                x[i] = kv_ref_load(src, e, i0 + b * KV_FP4_BLOCK + i);
                        kv_fp4_encode_block16(x, dst + b * (KV_FP4_BLOCK / 2), sdst + b);
                }
                break;
        default:
                break;
        }
}

/* Checks what both operations need of the pool view and the layer. */
static int check_pool(const struct kv_pool_view *p, uint32_t layer, char *msg, size_t msglen)
{
        int r = kv_ref_check_view(p, NULL, msg, msglen);

        return r < 0 ? r : kv_ref_check_layer(p, layer, NULL, msg, msglen);
}

/* Contract: kv_ops.h. */
int kv_write_check(const struct kv_pool_view *p, const struct kvc_write_args *a, char *msg, size_t msglen)
{
        if (!a)
                return kv_fail(-EINVAL, msg, msglen, "args: NULL write arguments");
        int r = check_pool(p, a->layer, msg, msglen);
        if (r < 0)
                return r;
        const int64_t row = (int64_t)p->layout.g.kv_heads * p->layout.g.head_dim;
        int64_t esz;

        switch (a->elem) {
        case KVC_ELEM_F32: esz = 4; break;
        case KVC_ELEM_BF16: esz = 2; break;
        case KVC_ELEM_F16: esz = 2; break;
        default:
                return kv_fail(-EINVAL, msg, msglen, "elem: %d is not F32, BF16 or F16", (int)a->elem);
        }
        if (a->num_tokens == 0)
                return 0;
        if (!a->k || !a->v || !a->slots)
                return kv_fail(-EINVAL, msg, msglen, "%s: NULL with num_tokens %u",
                               !a->k ? "k" : !a->v ? "v" : "slots", a->num_tokens);
        if (a->k_row_stride < row)
                return kv_fail(-EINVAL, msg, msglen,
                               "k_row_stride: %" PRId64 " is less than kv_heads*head_dim = %" PRId64,
                               a->k_row_stride, row);
        if (a->v_row_stride < row)
                return kv_fail(-EINVAL, msg, msglen,
                               "v_row_stride: %" PRId64 " is less than kv_heads*head_dim = %" PRId64,
                               a->v_row_stride, row);
        /* Element t*stride + h*D + i is read for t < num_tokens: the last row
         * must be addressable (the element index, times the element size,
         * within ptrdiff_t; the CUDA kernel computes t * stride * esz in
         * int64), or the index arithmetic overflows and reads somewhere else
         * entirely.  The strides are positive here (>= row >= 1). */
        if (a->k_row_stride > PTRDIFF_MAX / esz / a->num_tokens)
                return kv_fail(-EINVAL, msg, msglen,
                               "k_row_stride: %" PRId64 " with %u rows would overflow the address space",
                               a->k_row_stride, a->num_tokens);
        if (a->v_row_stride > PTRDIFF_MAX / esz / a->num_tokens)
                return kv_fail(-EINVAL, msg, msglen,
                               "v_row_stride: %" PRId64 " with %u rows would overflow the address space",
                               a->v_row_stride, a->num_tokens);
        /* natural alignment (anything less is undefined behaviour in C as
         * well, and the CUDA kernel loads whole elements), so that a caller
         * tested on a host pool passes on a GPU pool */
        if ((uintptr_t)a->k % esz || (uintptr_t)a->v % esz)
                return kv_fail(-EINVAL, msg, msglen, "%s: pointer not aligned to its %d-byte element",
                               (uintptr_t)a->k % esz ? "k" : "v", (int)esz);
        if ((uintptr_t)a->slots % 8)
                return kv_fail(-EINVAL, msg, msglen, "slots: pointer not aligned to 8 bytes");
        return 0;
}

/* Writes K and V of a->num_tokens tokens into the pool (see the file
 * comment for the arithmetic).  Every argument is checked before the first
 * byte is written: on error nothing in the pool has changed.  Returns 0;
 * -EINVAL (kv_write_check: bad pool view, layer, fp8 scale, elem, NULL
 * pointer, row stride, alignment); -ERANGE (a slot that is neither -1 nor
 * in [0, num_pages*page_size)).  msg (if not NULL) gets one line naming the
 * bad argument.  Thread-safe for writes to distinct slots. */
int kv_ref_write(const struct kv_pool_view *p, const struct kvc_write_args *a, char *msg, size_t msglen)
{
        int r = kv_write_check(p, a, msg, msglen);
        if (r < 0 || a->num_tokens == 0)
                return r;
        const struct kv_layout *L = &p->layout;
        const uint32_t H = L->g.kv_heads, D = L->g.head_dim, P = L->g.page_size;
        const int64_t nslots = (int64_t)L->num_pages * P;
        for (uint32_t t = 0; t < a->num_tokens; t++) {
                int64_t s = a->slots[t];
                if (s != -1 && (s < 0 || s >= nslots))
                        return kv_fail(-ERANGE, msg, msglen,
                                       "slots[%u] = %" PRId64 " out of range [0, %" PRId64 ") (or -1 to skip)",
                                       t, s, nslots);
        }

        const enum kvc_dtype d = L->g.dtype;
        struct kv_ref_layer ly;
        kv_ref_layer_of(p, a->layer, &ly);

        for (uint32_t t = 0; t < a->num_tokens; t++) {
                int64_t s = a->slots[t];
                if (s == -1)
                        continue;
                uint64_t pg = (uint64_t)s / P, off = (uint64_t)s % P;
                for (uint32_t h = 0; h < H; h++) {
                        uint64_t o = kv_ref_head_off(L, pg, off, h), so = kv_ref_scale_off(L, pg, off, h);
                        put_head(d, D, a->k, a->elem, t * a->k_row_stride + (int64_t)h * D, ly.k_scale,
                                 ly.k + o, ly.ks ? ly.ks + so : NULL);
                        put_head(d, D, a->v, a->elem, t * a->v_row_stride + (int64_t)h * D, ly.v_scale,
                                 ly.v + o, ly.vs ? ly.vs + so : NULL);
                }
        }
        return 0;
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

/* Contract: kv_ops.h. */
int kv_gather_check(const struct kv_pool_view *p, const struct kvc_gather_args *a, char *msg, size_t msglen)
{
        if (!a)
                return kv_fail(-EINVAL, msg, msglen, "args: NULL gather arguments");
        int r = check_pool(p, a->layer, msg, msglen);
        if (r < 0)
                return r;
        if (a->elem != KVC_ELEM_F32 && a->elem != KVC_ELEM_BF16)
                return kv_fail(-EINVAL, msg, msglen, "elem: %d is not F32 or BF16 (gather output)", (int)a->elem);
        if (a->n_pages == 0)
                return 0;
        if (!a->pages || !a->k_out || !a->v_out)
                return kv_fail(-EINVAL, msg, msglen, "%s: NULL with n_pages %u",
                               !a->pages ? "pages" : !a->k_out ? "k_out" : "v_out", a->n_pages);
        /* the CUDA kernel writes 16-byte vectors (rows are multiples of 16
         * bytes); asked of host outputs too, so that a caller tested on a
         * host pool passes on a GPU pool */
        if ((uintptr_t)a->k_out % 16 || (uintptr_t)a->v_out % 16)
                return kv_fail(-EINVAL, msg, msglen, "%s: pointer not 16-byte aligned",
                               (uintptr_t)a->k_out % 16 ? "k_out" : "v_out");
        if ((uintptr_t)a->pages % 4)
                return kv_fail(-EINVAL, msg, msglen, "pages: pointer not aligned to 4 bytes");
        return 0;
}

/* Dequantizes n_pages pages of one layer into dense k_out/v_out, shaped
 * [n_pages*page_size, kv_heads, head_dim] (fp8 times the layer's scale, fp4
 * times each block's scale), as F32 or BF16 (rounded to nearest even).
 * Every argument is checked before the first byte is written.  Returns 0;
 * -EINVAL (kv_gather_check: bad pool view, layer, fp8 scale, elem, NULL
 * pointer, alignment); -ERANGE (a page id outside [0, num_pages)).  msg (if
 * not NULL) names the bad argument.  Thread-safe. */
int kv_ref_gather(const struct kv_pool_view *p, const struct kvc_gather_args *a, char *msg, size_t msglen)
{
        int r = kv_gather_check(p, a, msg, msglen);
        if (r < 0 || a->n_pages == 0)
                return r;
        const struct kv_layout *L = &p->layout;
        const uint32_t H = L->g.kv_heads, D = L->g.head_dim, P = L->g.page_size;

        for (uint32_t i = 0; i < a->n_pages; i++) {
                if (a->pages[i] < 0 || (uint32_t)a->pages[i] >= L->num_pages)
                        return kv_fail(-ERANGE, msg, msglen, "pages[%u] = %d out of range [0, %u)",
                                       i, a->pages[i], L->num_pages);
        }

        const enum kvc_dtype d = L->g.dtype;
        struct kv_ref_layer ly;
        kv_ref_layer_of(p, a->layer, &ly);
        float buf[512];         /* head_dim <= 512 (kv_geom_check) */

        for (uint32_t i = 0; i < a->n_pages; i++) {
                uint64_t pg = (uint64_t)a->pages[i];
                for (uint32_t off = 0; off < P; off++) {
                        uint64_t tok = (uint64_t)i * P + off;
                        for (uint32_t h = 0; h < H; h++) {
                                uint64_t o = kv_ref_head_off(L, pg, off, h);
                                uint64_t so = kv_ref_scale_off(L, pg, off, h);
                                uint64_t dst = (tok * H + h) * D;
                                kv_ref_get_head(d, D, ly.k + o, ly.ks ? ly.ks + so : NULL, ly.k_scale, buf);
                                store_row(a->k_out, a->elem, dst, buf, D);
                                kv_ref_get_head(d, D, ly.v + o, ly.vs ? ly.vs + so : NULL, ly.v_scale, buf);
                                store_row(a->v_out, a->elem, dst, buf, D);
                        }
                }
        }
        return 0;
}
