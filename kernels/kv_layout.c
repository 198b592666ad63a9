/* kv_layout.c - the memory layout of a pool (design §4) and its capacity.
 *
 * One function computes every offset; the daemon sends the result to
 * clients and tests compare against it, so nobody recomputes the layout.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "kv_layout.h"

/* Page ids travel as int32 (kvc_alloc, page tables), so a pool has at most
 * INT32_MAX pages. */
#define MAX_PAGES ((uint64_t)INT32_MAX)

/* Returns the bits of one stored element of d: 16 (bf16, fp16), 8 (fp8),
 * 4 (fp4; its block scales are counted separately), 0 if d is unknown. */
uint32_t kv_dtype_bits(enum kvc_dtype d)
{
        switch (d) {
        case KVC_DTYPE_BF16:
        case KVC_DTYPE_FP16:
                return 16;
        case KVC_DTYPE_FP8_E4M3:
        case KVC_DTYPE_FP8_E5M2:
                return 8;
        case KVC_DTYPE_FP4_E2M1:
                return 4;
        default:
                return 0;
        }
}

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
        if (err && errlen) {
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(err, errlen, fmt, ap);
                va_end(ap);
        }
        return -EINVAL;
}

/* Checks a geometry against the limits in kv_layout.h.  head_dim may be any
 * multiple of 16 (the FP4 block) from 16 to 512: the CPU reference handles
 * them all, and the CUDA backend narrows this to {64, 128, 256} itself.
 * Returns 0, or -EINVAL with one line naming the bad field and its value in
 * err (if not NULL).  Thread-safe. */
int kv_geom_check(const struct kv_geom *g, char *err, size_t errlen)
{
        if (!g)
                return fail(err, errlen, "geometry is NULL");
        if (kv_dtype_bits(g->dtype) == 0)
                return fail(err, errlen, "dtype %d is not a known dtype (bf16, fp16, fp8_e4m3, fp8_e5m2, fp4_e2m1)",
                            (int)g->dtype);
        if (g->num_layers < 1 || g->num_layers > 1024)
                return fail(err, errlen, "num_layers %u out of range [1, 1024]", g->num_layers);
        if (g->kv_heads < 1 || g->kv_heads > 256)
                return fail(err, errlen, "kv_heads %u out of range [1, 256]", g->kv_heads);
        if (g->head_dim < 16 || g->head_dim > 512 || g->head_dim % KV_FP4_BLOCK != 0)
                return fail(err, errlen, "head_dim %u is not a multiple of 16 in [16, 512] (GPU pools: 64, 128 or 256)",
                            g->head_dim);
        if (g->page_size < 1 || g->page_size > 1024)
                return fail(err, errlen, "page_size %u out of range [1, 1024]", g->page_size);
        return 0;
}

static inline uint64_t align_up(uint64_t x, uint64_t a)
{
        return (x + a - 1) / a * a;
}

/* Byte sizes of one array element group, independent of num_pages. */
struct unit {
        uint64_t head, token, page;             /* one K (or V) array */
        uint64_t shead, stoken, spage;          /* fp4 scales, else 0 */
};

static void units(const struct kv_geom *g, struct unit *u)
{
        u->head = (uint64_t)g->head_dim * kv_dtype_bits(g->dtype) / 8;
        u->token = u->head * g->kv_heads;
        u->page = u->token * g->page_size;
        if (g->dtype == KVC_DTYPE_FP4_E2M1) {
                u->shead = g->head_dim / KV_FP4_BLOCK;
                u->stoken = u->shead * g->kv_heads;
                u->spage = u->stoken * g->page_size;
        } else {
                u->shead = u->stoken = u->spage = 0;
        }
}

/* Per-layer stride for n pages: K and V arrays (and fp4 KS and VS), each
 * rounded up to KV_ARRAY_ALIGN.  With n <= MAX_PAGES and the geometry
 * limits every product stays far below 2^64 (2^31 pages x 2^28 bytes a page
 * x 4 arrays < 2^62), so only the multiplication by num_layers can
 * overflow, and the caller checks it. */
static uint64_t stride_for(const struct unit *u, uint64_t n)
{
        uint64_t s = 2 * align_up(n * u->page, KV_ARRAY_ALIGN);
        if (u->spage)
                s += 2 * align_up(n * u->spage, KV_ARRAY_ALIGN);
        return s;
}

/* Fills *ret with the layout of num_pages pages of geometry g (kv_layout.h
 * lists the arrays).  For dtypes other than fp4 the scale sizes and
 * ks_offset/vs_offset are 0.  Returns 0; -EINVAL if g fails kv_geom_check()
 * or num_pages is 0; -EOVERFLOW if num_pages exceeds INT32_MAX or the pool
 * size does not fit in 64 bits.  *ret untouched on failure.  Thread-safe. */
int kv_layout_init(const struct kv_geom *g, uint32_t num_pages, struct kv_layout *ret)
{
        struct unit u;
        struct kv_layout L;
        uint64_t used;

        if (!ret || kv_geom_check(g, NULL, 0) < 0 || num_pages == 0)
                return -EINVAL;
        if (num_pages > MAX_PAGES)
                return -EOVERFLOW;
        units(g, &u);

        memset(&L, 0, sizeof(L));
        L.g = *g;
        L.num_pages = num_pages;
        L.head_bytes = u.head;
        L.token_bytes = u.token;
        L.page_bytes = u.page;
        L.scale_head_bytes = u.shead;
        L.scale_token_bytes = u.stoken;
        L.scale_page_bytes = u.spage;

        uint64_t arr = align_up((uint64_t)num_pages * u.page, KV_ARRAY_ALIGN);
        L.k_offset = 0;
        L.v_offset = arr;
        if (u.spage) {
                uint64_t sarr = align_up((uint64_t)num_pages * u.spage, KV_ARRAY_ALIGN);
                L.ks_offset = 2 * arr;
                L.vs_offset = 2 * arr + sarr;
        }
        L.layer_stride = stride_for(&u, num_pages);
        if (__builtin_mul_overflow(L.layer_stride, (uint64_t)g->num_layers, &used) ||
            used > UINT64_MAX - (KV_POOL_ALIGN - 1))
                return -EOVERFLOW;
        L.used_bytes = used;
        L.alloc_bytes = align_up(used, KV_POOL_ALIGN);
        *ret = L;
        return 0;
}

/* alloc_bytes(n) <= budget, without overflow. */
static bool fits(const struct kv_geom *g, const struct unit *u, uint64_t n, uint64_t budget)
{
        uint64_t used;

        if (__builtin_mul_overflow(stride_for(u, n), (uint64_t)g->num_layers, &used))
                return false;
        /* align_up(used) <= budget  <=>  used <= budget rounded down */
        return used <= budget / KV_POOL_ALIGN * KV_POOL_ALIGN;
}

/* Fills *ret with the layout of the largest page count whose alloc_bytes is
 * at most budget.  alloc_bytes grows monotonically with the page count and is
 * at least num_layers * n * (bytes of a page in every array), which bounds n
 * from above; a binary search below that bound finds the exact answer in
 * about 31 steps, whatever the budget.  Returns 0; -EINVAL for a bad
 * geometry; -ENOSPC if not even one page fits.  *ret untouched on failure.
 * Thread-safe. */
int kv_layout_fit(const struct kv_geom *g, uint64_t budget, struct kv_layout *ret)
{
        struct unit u;

        if (!ret || kv_geom_check(g, NULL, 0) < 0)
                return -EINVAL;
        units(g, &u);

        uint64_t per_page = 2 * u.page + 2 * u.spage;   /* all arrays of one layer */
        uint64_t cap = budget / KV_POOL_ALIGN * KV_POOL_ALIGN / g->num_layers;
        uint64_t hi = cap / per_page;                   /* fits(n) implies n <= hi */
        if (hi > MAX_PAGES)
                hi = MAX_PAGES;
        if (hi == 0 || !fits(g, &u, 1, budget))
                return -ENOSPC;

        /* invariant: fits(lo), and every n > hi does not fit */
        uint64_t lo = 1;
        while (lo < hi) {
                uint64_t mid = lo + (hi - lo + 1) / 2;
                if (fits(g, &u, mid, budget))
                        lo = mid;
                else
                        hi = mid - 1;
        }
        return kv_layout_init(g, (uint32_t)lo, ret);
}
