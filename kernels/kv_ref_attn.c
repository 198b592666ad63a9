/* kv_ref_attn.c - CPU reference of paged decode and extend attention
 * (kv_ops.h), in fp32 over the dequantized pool values, and the argument
 * check the CUDA launchers share (kv_attn_common.cuh).
 *
 * Arithmetic, spelled out because the GPU kernels are compared against it:
 *   k[j] = dequant(K code) (fp8: code * k_scale[layer]; fp4: nibble *
 *          2^(s-127) of its block; bf16/fp16: widened), likewise v[j];
 *   s[j] = sm_scale * sum_d q[d] * k[j][d]              (fp32 accumulation)
 *   out  = sum_j exp(s[j] - max s) v[j] / sum_j exp(s[j] - max s)
 *   rounded once to the output elem (bf16 or f16, nearest even).
 * A sequence (or a query) that sees no key (seq_len 0) gets an output of
 * zeros.  Every argument is checked before anything is computed: page ids
 * here are host memory and are all range-checked (-ERANGE).
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "kv_codec.h"
#include "kv_ops.h"
#include "kv_attn_common.cuh"
#include "kv_ref_common.h"

void kv_attn_from_decode(const struct kvc_decode_args *a, struct kv_attn_call *c)
{
        memset(c, 0, sizeof(*c));
        c->op = "decode";
        c->q = a->q;
        c->out = a->out;
        c->elem = a->elem;
        c->page_table = a->page_table;
        c->max_pages = a->max_pages;
        c->seq_lens = a->seq_lens;
        c->seq_lens_host = a->seq_lens_host;
        c->batch = a->batch;
        c->num_q_heads = a->num_q_heads;
        c->sm_scale = a->sm_scale;
        c->layer = a->layer;
}

void kv_attn_from_extend(const struct kvc_extend_args *a, struct kv_attn_call *c)
{
        memset(c, 0, sizeof(*c));
        c->op = "extend";
        c->q = a->q;
        c->out = a->out;
        c->elem = a->elem;
        c->page_table = a->page_table;
        c->max_pages = a->max_pages;
        c->seq_lens = a->seq_lens;
        c->seq_lens_host = a->seq_lens_host;
        c->qo_indptr = a->qo_indptr;
        c->qo_indptr_host = a->qo_indptr_host;
        c->batch = a->batch;
        c->num_q_heads = a->num_q_heads;
        c->sm_scale = a->sm_scale;
        c->layer = a->layer;
}

int kv_attn_check(const struct kv_pool_view *p, const struct kv_attn_call *c, bool read_pages,
                  bool device, uint32_t *ret_rows, uint32_t *ret_max_len, char *msg, size_t msglen)
{
        const char *op = c->op;
        int r = kv_ref_check_view(p, op, msg, msglen);

        if (r < 0)
                return r;
        const struct kv_layout *L = &p->layout;
        const uint32_t H = L->g.kv_heads, D = L->g.head_dim, P = L->g.page_size;
        if (device && !kv_cuda_head_dim_ok(D))
                return kv_fail(-EINVAL, msg, msglen, "%s: head_dim %u: the CUDA kernels support 64, 128 and 256",
                               op, D);
        r = kv_ref_check_layer(p, c->layer, op, msg, msglen);
        if (r < 0)
                return r;
        if (c->elem != KVC_ELEM_BF16 && c->elem != KVC_ELEM_F16)
                return kv_fail(-EINVAL, msg, msglen, "%s: elem %d is not BF16 or F16 (q and out)", op, (int)c->elem);
        /* the launch grid counts (row, kv head, group of 8 q heads) in 32 bits */
        if (c->num_q_heads > KV_ATTN_MAX_Q_HEADS)
                return kv_fail(-EINVAL, msg, msglen, "%s: num_q_heads %u is more than %u", op, c->num_q_heads,
                               KV_ATTN_MAX_Q_HEADS);
        if (c->num_q_heads == 0 || c->num_q_heads % H != 0)
                return kv_fail(-EINVAL, msg, msglen, "%s: num_q_heads %u is not a positive multiple of kv_heads %u",
                               op, c->num_q_heads, H);
        if (!isfinite(c->sm_scale))
                return kv_fail(-EINVAL, msg, msglen, "%s: sm_scale %g is not finite", op, (double)c->sm_scale);
        if (c->batch == 0) {
                *ret_rows = 0;
                *ret_max_len = 0;
                return 0;
        }
        /* the index arrays are read as int32 (here the host copies, on a
         * host pool every one): natural alignment, or the reads are
         * undefined behaviour; the CUDA kernels ask for the same.  Each is
         * named on its own: a list of candidates would name the wrong ones
         * (a misaligned seq_lens_host used to read "page_table, seq_lens or
         * qo_indptr"). */
        const struct { const int32_t *a; const char *name; } idx[] = {
                { c->page_table, "page_table" }, { c->seq_lens, "seq_lens" },
                { c->seq_lens_host, "seq_lens_host" }, { c->qo_indptr, "qo_indptr" },
                { c->qo_indptr_host, "qo_indptr_host" },
        };
        for (size_t i = 0; i < sizeof(idx) / sizeof(idx[0]); i++)
                if ((uintptr_t)idx[i].a & 3u)
                        return kv_fail(-EINVAL, msg, msglen, "%s: %s is not 4-byte aligned", op, idx[i].name);
        const int32_t *lens = c->seq_lens_host;
        if (!lens)
                return kv_fail(-EINVAL, msg, msglen, "%s: seq_lens_host is NULL (the host copy of seq_lens is required)",
                               op);
        if (!c->seq_lens)
                return kv_fail(-EINVAL, msg, msglen, "%s: seq_lens is NULL", op);
        const bool ext = c->qo_indptr_host != NULL || c->qo_indptr != NULL;
        if (ext && (!c->qo_indptr_host || !c->qo_indptr))
                return kv_fail(-EINVAL, msg, msglen, "%s: %s is NULL", op,
                               c->qo_indptr ? "qo_indptr_host" : "qo_indptr");
        if (ext && c->qo_indptr_host[0] != 0)
                return kv_fail(-EINVAL, msg, msglen, "%s: qo_indptr[0] = %d, must be 0", op, c->qo_indptr_host[0]);

        const uint64_t cap = (uint64_t)c->max_pages * P;
        /* the kernels count keys in 32 bits, and lengths are int32 anyway */
        if (cap > INT32_MAX)
                return kv_fail(-EINVAL, msg, msglen,
                               "%s: max_pages %u x page_size %u = %" PRIu64 " keys per row, more than 2^31-1",
                               op, c->max_pages, P, cap);
        /* a table of max_pages entries per row is read (the CUDA kernel
         * reads a row's entries ahead of its length) */
        if (c->max_pages > 0 && !c->page_table)
                return kv_fail(-EINVAL, msg, msglen, "%s: page_table is NULL (max_pages %u)", op, c->max_pages);
        uint32_t max_len = 0;
        for (uint32_t b = 0; b < c->batch; b++) {
                if (lens[b] < 0 || (uint64_t)lens[b] > cap)
                        return kv_fail(-EINVAL, msg, msglen,
                                       "%s: seq_lens[%u] = %d out of range [0, max_pages*page_size = %" PRIu64 "]",
                                       op, b, lens[b], cap);
                if ((uint32_t)lens[b] > max_len)
                        max_len = (uint32_t)lens[b];
                if (ext) {
                        int32_t lo = c->qo_indptr_host[b], hi = c->qo_indptr_host[b + 1];
                        if (hi < lo)
                                return kv_fail(-EINVAL, msg, msglen, "%s: qo_indptr[%u] = %d < qo_indptr[%u] = %d",
                                               op, b + 1, hi, b, lo);
                        if (hi - lo > lens[b])
                                return kv_fail(-EINVAL, msg, msglen,
                                               "%s: sequence %u has %d queries but seq_lens[%u] = %d "
                                               "(the new tokens must be written and counted in seq_lens)",
                                               op, b, hi - lo, b, lens[b]);
                }
        }
        const uint32_t rows = ext ? (uint32_t)c->qo_indptr_host[c->batch] : c->batch;
        if (rows > 0 && (!c->q || !c->out))
                return kv_fail(-EINVAL, msg, msglen, "%s: %s is NULL", op, !c->q ? "q" : "out");
        if (rows > 0 && (((uintptr_t)c->q | (uintptr_t)c->out) & 1u))
                return kv_fail(-EINVAL, msg, msglen, "%s: %s is not 2-byte aligned", op,
                               (uintptr_t)c->q & 1u ? "q" : "out");
        if (read_pages) {
                for (uint32_t b = 0; b < c->batch; b++) {
                        uint32_t np = ((uint32_t)lens[b] + P - 1) / P;
                        for (uint32_t i = 0; i < np; i++) {
                                int32_t pg = c->page_table[(uint64_t)b * c->max_pages + i];
                                if (pg < 0 || (uint32_t)pg >= L->num_pages)
                                        return kv_fail(-ERANGE, msg, msglen,
                                                       "%s: page_table[%u][%u] = %d out of range [0, %u)",
                                                       op, b, i, pg, L->num_pages);
                        }
                }
        }
        *ret_rows = rows;
        *ret_max_len = max_len;
        return 0;
}

/* Dequantizes token `tok` of sequence row `pt` (its page-table row), head h,
 * K (which = 0) or V (which = 1) of layer ly, into out[0..D). */
static void dequant(const struct kv_pool_view *p, const struct kv_ref_layer *ly, int which, const int32_t *pt,
                    uint32_t tok, uint32_t h, float *out)
{
        const struct kv_layout *L = &p->layout;
        const uint32_t P = L->g.page_size;
        const uint64_t pg = (uint64_t)pt[tok / P], off = tok % P;
        const uint8_t *src = (which ? ly->v : ly->k) + kv_ref_head_off(L, pg, off, h);
        const uint8_t *ss = which ? ly->vs : ly->ks;

        kv_ref_get_head(L->g.dtype, L->g.head_dim, src, ss ? ss + kv_ref_scale_off(L, pg, off, h) : NULL,
                        which ? ly->v_scale : ly->k_scale, out);
}

static void store_out(void *out, enum kvc_elem e, uint64_t i, float v)
{
        ((uint16_t *)out)[i] = e == KVC_ELEM_BF16 ? kv_f32_to_bf16(v) : kv_f32_to_f16(v);
}

/* Scratch of one sequence: its dequantized K and V, scores, one row's
 * accumulator and q, sized for the longest sequence of the call. */
struct scratch {
        float *K, *V, *s, *acc, *q;
};

static void scratch_free(struct scratch *w)
{
        free(w->K);
        free(w->V);
        free(w->s);
        free(w->acc);
        free(w->q);
}

/* Allocated before any output is written, so that a call the host cannot
 * hold fails with out untouched; -ENOMEM also where len * D floats would
 * not fit a size_t (32-bit hosts). */
static int scratch_new(uint32_t max_len, uint32_t D, struct scratch *w)
{
        memset(w, 0, sizeof(*w));
        if ((uint64_t)max_len * D > SIZE_MAX / sizeof(float))
                return -ENOMEM;
        const size_t n = (max_len > 0 ? max_len : 1);
        w->K = malloc(n * D * sizeof(float));
        w->V = malloc(n * D * sizeof(float));
        w->s = malloc(n * sizeof(float));
        w->acc = malloc((size_t)D * sizeof(float));
        w->q = malloc((size_t)D * sizeof(float));
        if (!w->K || !w->V || !w->s || !w->acc || !w->q) {
                scratch_free(w);
                return -ENOMEM;
        }
        return 0;
}

/* Attention of sequence b's query rows [r0, r0+n) over its first len keys,
 * row r0+i seeing keys [0, len - n + i] (decode: n = 1, sees all); sc holds
 * at least len keys. */
static void attend_seq(const struct kv_pool_view *p, const struct kv_attn_call *c, uint32_t b,
                       uint32_t r0, uint32_t n, uint32_t len, const struct scratch *sc)
{
        const struct kv_layout *L = &p->layout;
        const uint32_t H = L->g.kv_heads, D = L->g.head_dim, Hq = c->num_q_heads, G = Hq / H;
        const int32_t *pt = c->page_table ? c->page_table + (uint64_t)b * c->max_pages : NULL;
        float *K = sc->K, *V = sc->V, *s = sc->s, *acc = sc->acc, *q = sc->q;
        struct kv_ref_layer ly;

        if (n == 0)
                return;
        kv_ref_layer_of(p, c->layer, &ly);
        for (uint32_t h = 0; h < H; h++) {
                /* dequantize this kv head once for all its q heads and rows */
                for (uint32_t j = 0; j < len; j++) {
                        dequant(p, &ly, 0, pt, j, h, K + (size_t)j * D);
                        dequant(p, &ly, 1, pt, j, h, V + (size_t)j * D);
                }
                for (uint32_t i = 0; i < n; i++) {
                        const uint32_t row = r0 + i;
                        const uint32_t see = len - n + i + 1; /* keys [0, see) */
                        for (uint32_t g = 0; g < G; g++) {
                                const uint32_t hq = h * G + g;
                                const uint64_t qo = ((uint64_t)row * Hq + hq) * D;
                                for (uint32_t d = 0; d < D; d++)
                                        q[d] = kv_ref_load(c->q, c->elem, (int64_t)(qo + d));
                                float m = -INFINITY;
                                for (uint32_t j = 0; j < see; j++) {
                                        const float *k = K + (size_t)j * D;
                                        float dot = 0.0f;
                                        for (uint32_t d = 0; d < D; d++)
                                                dot += q[d] * k[d];
                                        s[j] = dot * c->sm_scale;
                                        if (s[j] > m)
                                                m = s[j];
                                }
                                float l = 0.0f;
                                memset(acc, 0, D * sizeof(float));
                                for (uint32_t j = 0; j < see; j++) {
                                        const float w = expf(s[j] - m);
                                        const float *v = V + (size_t)j * D;
                                        l += w;
                                        for (uint32_t d = 0; d < D; d++)
                                                acc[d] += w * v[d];
                                }
                                const float inv = l > 0.0f ? 1.0f / l : 0.0f;
                                for (uint32_t d = 0; d < D; d++)
                                        store_out(c->out, c->elem, qo + d, see ? acc[d] * inv : 0.0f);
                        }
                }
        }
}

/* kv_attn_check with the host page table read, then what only a host pool
 * needs: the arrays the loop reads (seq_lens, qo_indptr) must hold what
 * the checked host copies hold.  Returns 0 with *ret_rows and *ret_max_len
 * (kv_attn_check's), or a negative errno with msg. */
static int check(const struct kv_pool_view *p, const struct kv_attn_call *c, uint32_t *ret_rows,
                 uint32_t *ret_max_len, char *msg, size_t msglen)
{
        int r = kv_attn_check(p, c, true, false, ret_rows, ret_max_len, msg, msglen);
        if (r < 0)
                return r;
        /* kv_attn_check read the host copies; the loop of run() reads
         * seq_lens and qo_indptr (on a host pool both are host memory,
         * possibly other arrays).  A copy that disagrees would take the loop
         * past what was checked: page-table entries, pages, q and out rows. */
        for (uint32_t b = 0; b < c->batch; b++) {
                if (c->seq_lens[b] != c->seq_lens_host[b])
                        return kv_fail(-EINVAL, msg, msglen,
                                       "%s: seq_lens[%u] = %d differs from seq_lens_host[%u] = %d "
                                       "(on a host pool they must hold the same values)",
                                       c->op, b, c->seq_lens[b], b, c->seq_lens_host[b]);
        }
        for (uint32_t b = 0; c->batch > 0 && c->qo_indptr && b <= c->batch; b++) {
                if (c->qo_indptr[b] != c->qo_indptr_host[b])
                        return kv_fail(-EINVAL, msg, msglen,
                                       "%s: qo_indptr[%u] = %d differs from qo_indptr_host[%u] = %d "
                                       "(on a host pool they must hold the same values)",
                                       c->op, b, c->qo_indptr[b], b, c->qo_indptr_host[b]);
        }
        return 0;
}

static int run(const struct kv_pool_view *p, const struct kv_attn_call *c, char *msg, size_t msglen)
{
        uint32_t rows, max_len;
        int r = check(p, c, &rows, &max_len, msg, msglen);
        if (r < 0)
                return r;
        if (rows == 0)
                return 0;
        struct scratch w;
        if (scratch_new(max_len, p->layout.g.head_dim, &w) < 0)
                return kv_fail(-ENOMEM, msg, msglen, "%s: out of host memory for the scratch of %u keys", c->op,
                               max_len);
        for (uint32_t b = 0; b < c->batch; b++) {
                const uint32_t len = (uint32_t)c->seq_lens[b];
                uint32_t r0 = b, n = 1;
                if (c->qo_indptr) {
                        r0 = (uint32_t)c->qo_indptr[b];
                        n = (uint32_t)(c->qo_indptr[b + 1] - c->qo_indptr[b]);
                }
                attend_seq(p, c, b, r0, n, len, &w);
        }
        scratch_free(&w);
        return 0;
}

/* c from decode arguments a as the reference takes them: seq_lens_host may
 * be NULL (then seq_lens, host memory, is used).  Returns 0 or -EINVAL. */
static int decode_call(const struct kvc_decode_args *a, struct kv_attn_call *c, char *msg, size_t msglen)
{
        if (!a)
                return kv_fail(-EINVAL, msg, msglen, "decode: args are NULL");
        kv_attn_from_decode(a, c);
        if (c->batch > 0 && !c->seq_lens)
                return kv_fail(-EINVAL, msg, msglen, "decode: seq_lens is NULL");
        if (!c->seq_lens_host)
                c->seq_lens_host = c->seq_lens; /* host pool: the array is host memory */
        return 0;
}

/* The same for extend: qo_indptr_host may be NULL too. */
static int extend_call(const struct kvc_extend_args *a, struct kv_attn_call *c, char *msg, size_t msglen)
{
        if (!a)
                return kv_fail(-EINVAL, msg, msglen, "extend: args are NULL");
        kv_attn_from_extend(a, c);
        if (c->batch > 0 && !c->seq_lens)
                return kv_fail(-EINVAL, msg, msglen, "extend: seq_lens is NULL");
        if (!c->seq_lens_host)
                c->seq_lens_host = c->seq_lens;
        if (!c->qo_indptr_host)
                c->qo_indptr_host = c->qo_indptr;
        /* as kv_cuda_extend: an empty batch needs no qo_indptr */
        if (a->batch > 0 && !c->qo_indptr)
                return kv_fail(-EINVAL, msg, msglen, "extend: qo_indptr is NULL");
        return 0;
}

/* Paged decode attention on host memory (see the file comment).  All
 * pointers are host memory; seq_lens_host may equal seq_lens (or be another
 * array holding the same values: -EINVAL if they differ).  Returns 0,
 * -EINVAL (a bad argument, named in msg), -ERANGE (a page id out of range),
 * -ENOMEM.  Thread-safe; out is written only after every check passed. */
int kv_ref_decode(const struct kv_pool_view *p, const struct kvc_decode_args *a, char *msg, size_t msglen)
{
        struct kv_attn_call c;
        int r = decode_call(a, &c, msg, msglen);

        return r < 0 ? r : run(p, &c, msg, msglen);
}

/* Extend (chunked-prefill) attention on host memory: query i of sequence b
 * sits at position seq_len[b] - n_b + i and attends causally.  Same returns
 * as kv_ref_decode; qo_indptr_host may be NULL (then qo_indptr is used), else
 * it must hold the same values as qo_indptr. */
int kv_ref_extend(const struct kv_pool_view *p, const struct kvc_extend_args *a, char *msg, size_t msglen)
{
        struct kv_attn_call c;
        int r = extend_call(a, &c, msg, msglen);

        return r < 0 ? r : run(p, &c, msg, msglen);
}

/* kv_ops.h: kv_ref_decode's and kv_ref_extend's checks alone. */
int kv_ref_decode_check(const struct kv_pool_view *p, const struct kvc_decode_args *a, char *msg, size_t msglen)
{
        struct kv_attn_call c;
        uint32_t rows, max_len;
        int r = decode_call(a, &c, msg, msglen);

        return r < 0 ? r : check(p, &c, &rows, &max_len, msg, msglen);
}

int kv_ref_extend_check(const struct kv_pool_view *p, const struct kvc_extend_args *a, char *msg, size_t msglen)
{
        struct kv_attn_call c;
        uint32_t rows, max_len;
        int r = extend_call(a, &c, msg, msglen);

        return r < 0 ? r : check(p, &c, &rows, &max_len, msg, msglen);
}

/* kv_ops.h: the shape of a caller's attention workspace. */
int kv_attn_ws_check(const void *ws, size_t ws_bytes, const char *op, char *msg, size_t msglen)
{
        if (!ws && ws_bytes > 0)
                return kv_fail(-EINVAL, msg, msglen, "%s: workspace is NULL with workspace_bytes %zu", op,
                               ws_bytes);
        /* the library's own scratch comes 256-byte aligned; 16 leaves the
         * kernels free to store partials as float4 */
        if ((uintptr_t)ws % 16u)
                return kv_fail(-EINVAL, msg, msglen, "%s: workspace %p is not 16-byte aligned", op, ws);
        return 0;
}
