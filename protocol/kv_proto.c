/* kv_proto.c - encode and decode of the kvpool control protocol.
 *
 * Every function here is pure: no allocation, no I/O, no global state.  The
 * byte layout of each body is documented in docs/protocol.md; this file is
 * its reference implementation.  Decoders check every length before reading
 * and validate the whole body before writing their out-parameter, so a
 * failed decode leaves *ret untouched.
 */
#include "kv_proto.h"

#include <errno.h>
#include <math.h>
#include <string.h>
#include <time.h>

#include "kvclient.h" /* enum kvc_dtype, to range-check attach replies */

/* ---- error codes ------------------------------------------------------- */

static const char *const err_names[KV_E__COUNT] = {
        [KV_OK]         = "KV_OK",
        [KV_E_PROTO]    = "KV_E_PROTO",
        [KV_E_MAGIC]    = "KV_E_MAGIC",
        [KV_E_VERSION]  = "KV_E_VERSION",
        [KV_E_OPCODE]   = "KV_E_OPCODE",
        [KV_E_TOOBIG]   = "KV_E_TOOBIG",
        [KV_E_NOHELLO]  = "KV_E_NOHELLO",
        [KV_E_NOPOOL]   = "KV_E_NOPOOL",
        [KV_E_NOSPACE]  = "KV_E_NOSPACE",
        [KV_E_BADPAGE]  = "KV_E_BADPAGE",
        [KV_E_NOTHELD]  = "KV_E_NOTHELD",
        [KV_E_INVAL]    = "KV_E_INVAL",
        [KV_E_INTERNAL] = "KV_E_INTERNAL",
        [KV_E_SHUTDOWN] = "KV_E_SHUTDOWN",
};

const char *kv_err_name(uint32_t code)
{
        if (code >= KV_E__COUNT)
                return "KV_E_UNKNOWN";
        return err_names[code];
}

int kv_err_to_errno(uint32_t code)
{
        switch (code) {
        case KV_OK:          return 0;
        case KV_E_PROTO:     return -EPROTO;
        case KV_E_MAGIC:     return -EPROTO;
        case KV_E_VERSION:   return -EPROTONOSUPPORT;
        case KV_E_OPCODE:    return -EOPNOTSUPP;
        case KV_E_TOOBIG:    return -EMSGSIZE;
        /* The daemon does not know this session: typically it restarted
         * and the client must reconnect and attach again. */
        case KV_E_NOHELLO:   return -ESTALE;
        case KV_E_NOPOOL:    return -ENOENT;
        case KV_E_NOSPACE:   return -ENOSPC;
        case KV_E_BADPAGE:   return -ERANGE;
        case KV_E_NOTHELD:   return -EPERM;
        case KV_E_INVAL:     return -EINVAL;
        case KV_E_INTERNAL:  return -EIO;
        case KV_E_SHUTDOWN:  return -ESHUTDOWN;
        default:             return -EIO; /* a newer daemon's code we do not know */
        }
}

/* ---- helpers ----------------------------------------------------------- */

static int has_nul(const void *p, size_t n)
{
        return memchr(p, 0, n) != NULL;
}

/* Copies a C string into a fixed NUL-padded field of n bytes, truncating
 * to n-1 characters so the field always holds at least one NUL. */
static void put_name(uint8_t *dst, const char *src, size_t n)
{
        size_t l = strnlen(src, n - 1);

        memcpy(dst, src, l);
        memset(dst + l, 0, n - l);
}

/* Known opcodes: the requests, their replies, and the error reply. */
static int opcode_known(uint16_t op)
{
        if (op == KV_OP_ERROR)
                return 1;
        op &= (uint16_t)~KV_OP_REPLY;
        return op >= KV_OP_HELLO && op <= KV_OP_LAST;
}

/* Checks cap, writes the header, returns the body pointer or NULL. */
static uint8_t *begin(uint8_t *buf, size_t cap, uint16_t opcode, uint32_t rid, size_t body_len)
{
        if (body_len > (size_t)UINT32_MAX - KV_HDR_SIZE || buf == NULL ||
            cap < KV_HDR_SIZE + body_len)
                return NULL;
        kv_hdr_encode(buf, cap, opcode, rid, (uint32_t)body_len);
        return buf + KV_HDR_SIZE;
}

static size_t pad4(size_t n)
{
        return (n + 3u) & ~(size_t)3u;
}

/* The shape of the counted bodies: head bytes whose last u32 is a count,
 * then count entries of entry bytes.  Checks, in this order, that the head
 * is there (KV_E_PROTO), that the count is at most max (KV_E_TOOBIG) and
 * that the body is exactly that long (KV_E_PROTO); only then *ret_count. */
static int dec_counted(const uint8_t *buf, size_t len, size_t head, size_t entry, uint32_t max,
                       uint32_t *ret_count)
{
        uint32_t count;

        if (len < head)
                return -KV_E_PROTO;
        count = kv_le32(buf + head - 4);
        if (count > max)
                return -KV_E_TOOBIG;
        if (len != head + entry * (size_t)count)
                return -KV_E_PROTO;
        *ret_count = count;
        return 0;
}

/* ---- header ------------------------------------------------------------ */

int kv_hdr_encode(uint8_t *buf, size_t cap, uint16_t opcode, uint32_t request_id, uint32_t body_len)
{
        if (buf == NULL || cap < KV_HDR_SIZE)
                return -ENOBUFS;
        kv_put32(buf, KV_PROTO_MAGIC);
        buf[4] = (uint8_t)KV_PROTO_VERSION;
        buf[5] = (uint8_t)(KV_PROTO_VERSION >> 8);
        buf[6] = (uint8_t)opcode;
        buf[7] = (uint8_t)(opcode >> 8);
        kv_put32(buf + 8, request_id);
        kv_put32(buf + 12, body_len);
        return (int)KV_HDR_SIZE;
}

int kv_hdr_decode(const uint8_t *buf, size_t len, struct kv_hdr *ret_hdr)
{
        struct kv_hdr h;

        if (buf == NULL || len < KV_HDR_SIZE)
                return -KV_E_PROTO;
        h.magic = kv_le32(buf);
        h.version = (uint16_t)(buf[4] | buf[5] << 8);
        h.opcode = (uint16_t)(buf[6] | buf[7] << 8);
        h.request_id = kv_le32(buf + 8);
        h.body_len = kv_le32(buf + 12);
        /* Magic and version first: a peer speaking something else entirely
         * should hear that, not a complaint about one of its fields. */
        if (h.magic != KV_PROTO_MAGIC)
                return -KV_E_MAGIC;
        if (h.version != KV_PROTO_VERSION)
                return -KV_E_VERSION;
        if (!opcode_known(h.opcode))
                return -KV_E_OPCODE;
        if (len > KV_MAX_FRAME)
                return -KV_E_TOOBIG;
        if ((size_t)h.body_len != len - KV_HDR_SIZE)
                return -KV_E_PROTO;
        if (ret_hdr)
                *ret_hdr = h;
        return 0;
}

/* ---- hello ------------------------------------------------------------- */

#define HELLO_REQ_LEN (4u + 4u + KV_NAME_LEN + KV_KEY_LEN)
#define HELLO_REP_LEN 16u

int kv_enc_hello_req(uint8_t *buf, size_t cap, uint32_t rid, const struct kv_hello_req *m)
{
        uint8_t *b;

        if (m == NULL)
                return -EINVAL;
        b = begin(buf, cap, KV_OP_HELLO, rid, HELLO_REQ_LEN);
        if (b == NULL)
                return -ENOBUFS;
        kv_put32(b, m->proto_version);
        kv_put32(b + 4, m->pid);
        put_name(b + 8, m->name, KV_NAME_LEN);
        memcpy(b + 8 + KV_NAME_LEN, m->tenant_salt, KV_KEY_LEN);
        return (int)(KV_HDR_SIZE + HELLO_REQ_LEN);
}

int kv_dec_hello_req(const uint8_t *buf, size_t len, struct kv_hello_req *ret)
{
        struct kv_hello_req m;

        if (len != HELLO_REQ_LEN)
                return -KV_E_PROTO;
        if (!has_nul(buf + 8, KV_NAME_LEN))
                return -KV_E_INVAL;
        m.proto_version = kv_le32(buf);
        m.pid = kv_le32(buf + 4);
        memcpy(m.name, buf + 8, KV_NAME_LEN);
        memcpy(m.tenant_salt, buf + 8 + KV_NAME_LEN, KV_KEY_LEN);
        *ret = m;
        return 0;
}

int kv_enc_hello_rep(uint8_t *buf, size_t cap, uint32_t rid, const struct kv_hello_rep *m)
{
        uint8_t *b;

        if (m == NULL)
                return -EINVAL;
        b = begin(buf, cap, KV_OP_HELLO | KV_OP_REPLY, rid, HELLO_REP_LEN);
        if (b == NULL)
                return -ENOBUFS;
        kv_put64(b, m->session_id);
        kv_put32(b + 8, m->num_pools);
        kv_put32(b + 12, m->max_frame);
        return (int)(KV_HDR_SIZE + HELLO_REP_LEN);
}

int kv_dec_hello_rep(const uint8_t *buf, size_t len, struct kv_hello_rep *ret)
{
        if (len != HELLO_REP_LEN)
                return -KV_E_PROTO;
        ret->session_id = kv_le64(buf);
        ret->num_pools = kv_le32(buf + 8);
        ret->max_frame = kv_le32(buf + 12);
        return 0;
}

/* ---- attach ------------------------------------------------------------ */

static int enc_name_req(uint8_t *buf, size_t cap, uint16_t opcode, uint32_t rid, const struct kv_attach_req *m)
{
        uint8_t *b;

        if (m == NULL)
                return -EINVAL;
        b = begin(buf, cap, opcode, rid, KV_NAME_LEN);
        if (b == NULL)
                return -ENOBUFS;
        put_name(b, m->name, KV_NAME_LEN);
        return (int)(KV_HDR_SIZE + KV_NAME_LEN);
}

int kv_enc_attach_req(uint8_t *buf, size_t cap, uint32_t rid, const struct kv_attach_req *m)
{
        return enc_name_req(buf, cap, KV_OP_ATTACH, rid, m);
}

int kv_enc_reset_req(uint8_t *buf, size_t cap, uint32_t rid, const struct kv_attach_req *m)
{
        return enc_name_req(buf, cap, KV_OP_RESET, rid, m);
}

int kv_dec_attach_req(const uint8_t *buf, size_t len, struct kv_attach_req *ret)
{
        if (len != KV_NAME_LEN)
                return -KV_E_PROTO;
        if (!has_nul(buf, KV_NAME_LEN))
                return -KV_E_INVAL;
        memcpy(ret->name, buf, KV_NAME_LEN);
        return 0;
}

/* Byte offsets of the attach reply's fixed part (docs/protocol.md).  The
 * twelve layout u64s are followed by one reserved u64 (sent as zero,
 * ignored on receipt) so the block is the 13 u64 slots KV_ATTACH_FIXED
 * counts. */
enum {
        AT_POOL_ID = 0, AT_DTYPE = 4, AT_BACKEND = 8, AT_NUM_LAYERS = 12,
        AT_KV_HEADS = 16, AT_HEAD_DIM = 20, AT_PAGE_SIZE = 24, AT_NUM_PAGES = 28,
        AT_POOL_BYTES = 32, AT_LAYER_STRIDE = 40, AT_K_OFF = 48, AT_V_OFF = 56,
        AT_KS_OFF = 64, AT_VS_OFF = 72, AT_PAGE_BYTES = 80, AT_TOKEN_BYTES = 88,
        AT_HEAD_BYTES = 96, AT_SPAGE_BYTES = 104, AT_STOKEN_BYTES = 112,
        AT_SHEAD_BYTES = 120, AT_RESERVED = 128, AT_SHM_NAME = 136,
        AT_IPC_HANDLE = 200, AT_DEVICE_UUID = 264, AT_POOL_EPOCH = 280,
        AT_SCALE_SOURCE = 288, AT_SCALES = 320,
};
_Static_assert(AT_SCALES == KV_ATTACH_FIXED, "attach reply offsets disagree with KV_ATTACH_FIXED");

static void put_f32(uint8_t *p, float f)
{
        uint32_t u;

        memcpy(&u, &f, 4);
        kv_put32(p, u);
}

static float get_f32(const uint8_t *p)
{
        uint32_t u = kv_le32(p);
        float f;

        memcpy(&f, &u, 4);
        return f;
}

int kv_enc_attach_rep(uint8_t *buf, size_t cap, uint32_t rid, const struct kv_attach_rep *m,
                      const float *k_scale, const float *v_scale)
{
        uint8_t *b;
        uint32_t L;

        if (m == NULL)
                return -EINVAL;
        L = m->num_layers;
        if (L > KV_MAX_LAYERS)
                return -EMSGSIZE;
        if (L > 0 && (k_scale == NULL || v_scale == NULL))
                return -EINVAL;
        b = begin(buf, cap, KV_OP_ATTACH | KV_OP_REPLY, rid, KV_ATTACH_FIXED + 8u * (size_t)L);
        if (b == NULL)
                return -ENOBUFS;
        kv_put32(b + AT_POOL_ID, m->pool_id);
        kv_put32(b + AT_DTYPE, m->dtype);
        kv_put32(b + AT_BACKEND, m->backend);
        kv_put32(b + AT_NUM_LAYERS, L);
        kv_put32(b + AT_KV_HEADS, m->kv_heads);
        kv_put32(b + AT_HEAD_DIM, m->head_dim);
        kv_put32(b + AT_PAGE_SIZE, m->page_size);
        kv_put32(b + AT_NUM_PAGES, m->num_pages);
        kv_put64(b + AT_POOL_BYTES, m->pool_bytes);
        kv_put64(b + AT_LAYER_STRIDE, m->layer_stride);
        kv_put64(b + AT_K_OFF, m->k_offset);
        kv_put64(b + AT_V_OFF, m->v_offset);
        kv_put64(b + AT_KS_OFF, m->ks_offset);
        kv_put64(b + AT_VS_OFF, m->vs_offset);
        kv_put64(b + AT_PAGE_BYTES, m->page_bytes);
        kv_put64(b + AT_TOKEN_BYTES, m->token_bytes);
        kv_put64(b + AT_HEAD_BYTES, m->head_bytes);
        kv_put64(b + AT_SPAGE_BYTES, m->scale_page_bytes);
        kv_put64(b + AT_STOKEN_BYTES, m->scale_token_bytes);
        kv_put64(b + AT_SHEAD_BYTES, m->scale_head_bytes);
        kv_put64(b + AT_RESERVED, 0);
        put_name(b + AT_SHM_NAME, m->shm_name, KV_SHM_NAME_LEN);
        memcpy(b + AT_IPC_HANDLE, m->ipc_handle, 64);
        memcpy(b + AT_DEVICE_UUID, m->device_uuid, 16);
        kv_put64(b + AT_POOL_EPOCH, m->pool_epoch);
        put_name(b + AT_SCALE_SOURCE, m->scale_source, KV_NAME_LEN);
        for (uint32_t l = 0; l < L; l++) {
                put_f32(b + AT_SCALES + 4u * l, k_scale[l]);
                put_f32(b + AT_SCALES + 4u * (L + l), v_scale[l]);
        }
        return (int)(KV_HDR_SIZE + KV_ATTACH_FIXED + 8u * L);
}

int kv_dec_attach_rep(const uint8_t *buf, size_t len, struct kv_attach_rep *ret)
{
        struct kv_attach_rep m;
        uint32_t L;

        if (len < KV_ATTACH_FIXED)
                return -KV_E_PROTO;
        L = kv_le32(buf + AT_NUM_LAYERS);
        if (L > KV_MAX_LAYERS)
                return -KV_E_TOOBIG;
        if (len != KV_ATTACH_FIXED + 8u * (size_t)L)
                return -KV_E_PROTO;
        if (L == 0)
                return -KV_E_INVAL;
        if (!has_nul(buf + AT_SHM_NAME, KV_SHM_NAME_LEN) ||
            !has_nul(buf + AT_SCALE_SOURCE, KV_NAME_LEN))
                return -KV_E_INVAL;
        m.pool_id = kv_le32(buf + AT_POOL_ID);
        m.dtype = kv_le32(buf + AT_DTYPE);
        m.backend = kv_le32(buf + AT_BACKEND);
        if (m.dtype >= KVC_DTYPE__COUNT || m.backend > KV_BACKEND_CUDA)
                return -KV_E_INVAL;
        m.num_layers = L;
        m.kv_heads = kv_le32(buf + AT_KV_HEADS);
        m.head_dim = kv_le32(buf + AT_HEAD_DIM);
        m.page_size = kv_le32(buf + AT_PAGE_SIZE);
        m.num_pages = kv_le32(buf + AT_NUM_PAGES);
        m.pool_bytes = kv_le64(buf + AT_POOL_BYTES);
        m.layer_stride = kv_le64(buf + AT_LAYER_STRIDE);
        m.k_offset = kv_le64(buf + AT_K_OFF);
        m.v_offset = kv_le64(buf + AT_V_OFF);
        m.ks_offset = kv_le64(buf + AT_KS_OFF);
        m.vs_offset = kv_le64(buf + AT_VS_OFF);
        m.page_bytes = kv_le64(buf + AT_PAGE_BYTES);
        m.token_bytes = kv_le64(buf + AT_TOKEN_BYTES);
        m.head_bytes = kv_le64(buf + AT_HEAD_BYTES);
        m.scale_page_bytes = kv_le64(buf + AT_SPAGE_BYTES);
        m.scale_token_bytes = kv_le64(buf + AT_STOKEN_BYTES);
        m.scale_head_bytes = kv_le64(buf + AT_SHEAD_BYTES);
        memcpy(m.shm_name, buf + AT_SHM_NAME, KV_SHM_NAME_LEN);
        memcpy(m.ipc_handle, buf + AT_IPC_HANDLE, 64);
        memcpy(m.device_uuid, buf + AT_DEVICE_UUID, 16);
        m.pool_epoch = kv_le64(buf + AT_POOL_EPOCH);
        memcpy(m.scale_source, buf + AT_SCALE_SOURCE, KV_NAME_LEN);
        m.scales = buf + AT_SCALES;
        *ret = m;
        return 0;
}

/* Out-of-range layers read as NaN so a caller's bug cannot pass for a
 * plausible scale. */
float kv_attach_k_scale(const struct kv_attach_rep *m, uint32_t l)
{
        if (m == NULL || m->scales == NULL || l >= m->num_layers)
                return NAN;
        return get_f32(m->scales + 4u * l);
}

float kv_attach_v_scale(const struct kv_attach_rep *m, uint32_t l)
{
        if (m == NULL || m->scales == NULL || l >= m->num_layers)
                return NAN;
        return get_f32(m->scales + 4u * ((size_t)m->num_layers + l));
}

/* ---- alloc ------------------------------------------------------------- */

int kv_enc_alloc_req(uint8_t *buf, size_t cap, uint32_t rid, const struct kv_alloc_req *m)
{
        uint8_t *b;

        if (m == NULL)
                return -EINVAL;
        /* as the other encoders: never send what the decoder refuses */
        if (m->count > KV_MAX_PAGES_REQ)
                return -EMSGSIZE;
        b = begin(buf, cap, KV_OP_ALLOC, rid, 8);
        if (b == NULL)
                return -ENOBUFS;
        kv_put32(b, m->pool_id);
        kv_put32(b + 4, m->count);
        return (int)(KV_HDR_SIZE + 8u);
}

int kv_dec_alloc_req(const uint8_t *buf, size_t len, struct kv_alloc_req *ret)
{
        uint32_t count;

        if (len != 8)
                return -KV_E_PROTO;
        count = kv_le32(buf + 4);
        if (count > KV_MAX_PAGES_REQ)
                return -KV_E_TOOBIG;
        if (count == 0)
                return -KV_E_INVAL;
        ret->pool_id = kv_le32(buf);
        ret->count = count;
        return 0;
}

/* ---- page lists -------------------------------------------------------- */

/* Returns 1 if the page list carries a pool_id (the FREE request), 0 if not
 * (the ALLOC/FREE/LOOKUP replies), -1 for any other opcode. */
static int pages_has_pool(uint16_t opcode)
{
        switch (opcode) {
        case KV_OP_FREE:
                return 1;
        case KV_OP_ALLOC | KV_OP_REPLY:
        case KV_OP_FREE | KV_OP_REPLY:
        case KV_OP_LOOKUP | KV_OP_REPLY:
                return 0;
        default:
                return -1;
        }
}

int kv_enc_pages(uint8_t *buf, size_t cap, uint16_t opcode, uint32_t rid, uint32_t pool_id,
                 uint32_t count, const uint32_t *ids)
{
        int with_pool = pages_has_pool(opcode);
        size_t head, body;
        uint8_t *b;

        if (with_pool < 0)
                return -EINVAL;
        if (count > KV_MAX_PAGES_REQ)
                return -EMSGSIZE;
        if (count > 0 && ids == NULL)
                return -EINVAL;
        head = with_pool ? 8u : 4u;
        body = head + 4u * (size_t)count;
        b = begin(buf, cap, opcode, rid, body);
        if (b == NULL)
                return -ENOBUFS;
        if (with_pool)
                kv_put32(b, pool_id);
        kv_put32(b + head - 4, count);
        for (uint32_t i = 0; i < count; i++)
                kv_put32(b + head + 4u * i, ids[i]);
        return (int)(KV_HDR_SIZE + body);
}

int kv_dec_pages(const uint8_t *buf, size_t len, uint16_t opcode, struct kv_pages *ret)
{
        int with_pool = pages_has_pool(opcode);
        size_t head;
        uint32_t count;
        int rv;

        if (with_pool < 0)
                return -KV_E_OPCODE;
        head = with_pool ? 8u : 4u;
        rv = dec_counted(buf, len, head, 4u, KV_MAX_PAGES_REQ, &count);
        if (rv != 0)
                return rv;
        ret->pool_id = with_pool ? kv_le32(buf) : 0;
        ret->count = count;
        ret->ids = buf + head;
        return 0;
}

/* ---- publish ----------------------------------------------------------- */

#define PUB_ENTRY (4u + KV_KEY_LEN)

int kv_enc_publish_req(uint8_t *buf, size_t cap, uint32_t rid, uint32_t pool_id, uint32_t count,
                       const uint32_t *pages, const uint8_t (*keys)[KV_KEY_LEN])
{
        size_t body = 8u + PUB_ENTRY * (size_t)count;
        uint8_t *b;

        if (count > KV_MAX_KEYS_REQ)
                return -EMSGSIZE;
        if (count > 0 && (pages == NULL || keys == NULL))
                return -EINVAL;
        b = begin(buf, cap, KV_OP_PUBLISH, rid, body);
        if (b == NULL)
                return -ENOBUFS;
        kv_put32(b, pool_id);
        kv_put32(b + 4, count);
        for (uint32_t i = 0; i < count; i++) {
                uint8_t *e = b + 8 + PUB_ENTRY * (size_t)i;

                kv_put32(e, pages[i]);
                memcpy(e + 4, keys[i], KV_KEY_LEN);
        }
        return (int)(KV_HDR_SIZE + body);
}

int kv_dec_publish_req(const uint8_t *buf, size_t len, struct kv_publish_req *ret)
{
        uint32_t count;
        int rv = dec_counted(buf, len, 8u, PUB_ENTRY, KV_MAX_KEYS_REQ, &count);

        if (rv != 0)
                return rv;
        ret->pool_id = kv_le32(buf);
        ret->count = count;
        ret->entries = buf + 8;
        return 0;
}

int kv_enc_publish_rep(uint8_t *buf, size_t cap, uint32_t rid, uint32_t count, const uint8_t *results)
{
        size_t body = 4u + pad4(count);
        uint8_t *b;

        if (count > KV_MAX_KEYS_REQ)
                return -EMSGSIZE;
        if (count > 0 && results == NULL)
                return -EINVAL;
        b = begin(buf, cap, KV_OP_PUBLISH | KV_OP_REPLY, rid, body);
        if (b == NULL)
                return -ENOBUFS;
        kv_put32(b, count);
        if (count > 0)
                memcpy(b + 4, results, count);
        memset(b + 4 + count, 0, body - 4 - count);
        return (int)(KV_HDR_SIZE + body);
}

int kv_dec_publish_rep(const uint8_t *buf, size_t len, struct kv_publish_rep *ret)
{
        uint32_t count;

        if (len < 4)
                return -KV_E_PROTO;
        count = kv_le32(buf);
        if (count > KV_MAX_KEYS_REQ)
                return -KV_E_TOOBIG;
        if (len != 4u + pad4(count))
                return -KV_E_PROTO;
        /* Padding must be zero: anything else means the two ends disagree
         * about the count. */
        for (size_t i = 4u + count; i < len; i++)
                if (buf[i] != 0)
                        return -KV_E_PROTO;
        ret->count = count;
        ret->results = buf + 4;
        return 0;
}

/* ---- lookup ------------------------------------------------------------ */

int kv_enc_lookup_req(uint8_t *buf, size_t cap, uint32_t rid, uint32_t pool_id, uint32_t count,
                      const uint8_t (*keys)[KV_KEY_LEN])
{
        size_t body = 8u + KV_KEY_LEN * (size_t)count;
        uint8_t *b;

        if (count > KV_MAX_KEYS_REQ)
                return -EMSGSIZE;
        if (count > 0 && keys == NULL)
                return -EINVAL;
        b = begin(buf, cap, KV_OP_LOOKUP, rid, body);
        if (b == NULL)
                return -ENOBUFS;
        kv_put32(b, pool_id);
        kv_put32(b + 4, count);
        if (count > 0)
                memcpy(b + 8, keys, KV_KEY_LEN * (size_t)count);
        return (int)(KV_HDR_SIZE + body);
}

int kv_dec_lookup_req(const uint8_t *buf, size_t len, struct kv_lookup_req *ret)
{
        uint32_t count;
        int rv = dec_counted(buf, len, 8u, KV_KEY_LEN, KV_MAX_KEYS_REQ, &count);

        if (rv != 0)
                return rv;
        ret->pool_id = kv_le32(buf);
        ret->count = count;
        ret->keys = buf + 8;
        return 0;
}

/* ---- small bodies ------------------------------------------------------ */

int kv_enc_u32_req(uint8_t *buf, size_t cap, uint16_t opcode, uint32_t rid, uint32_t value)
{
        uint8_t *b = begin(buf, cap, opcode, rid, 4);

        if (b == NULL)
                return -ENOBUFS;
        kv_put32(b, value);
        return (int)(KV_HDR_SIZE + 4u);
}

int kv_dec_u32_req(const uint8_t *buf, size_t len, uint32_t *ret_value)
{
        if (len != 4)
                return -KV_E_PROTO;
        *ret_value = kv_le32(buf);
        return 0;
}

int kv_enc_empty(uint8_t *buf, size_t cap, uint16_t opcode, uint32_t rid)
{
        if (begin(buf, cap, opcode, rid, 0) == NULL)
                return -ENOBUFS;
        return (int)KV_HDR_SIZE;
}

int kv_dec_empty(const uint8_t *buf, size_t len)
{
        return len == 0 ? 0 : -KV_E_PROTO;
}

int kv_enc_text(uint8_t *buf, size_t cap, uint16_t opcode, uint32_t rid, const char *text, uint32_t len)
{
        uint8_t *b;

        if (len > KV_MAX_STATUS_LEN)
                return -EMSGSIZE;
        if (len > 0 && text == NULL)
                return -EINVAL;
        b = begin(buf, cap, opcode, rid, 4u + (size_t)len);
        if (b == NULL)
                return -ENOBUFS;
        kv_put32(b, len);
        if (len > 0)
                memcpy(b + 4, text, len);
        return (int)(KV_HDR_SIZE + 4u + len);
}

int kv_dec_text(const uint8_t *buf, size_t len, struct kv_text *ret)
{
        uint32_t n;
        int rv = dec_counted(buf, len, 4u, 1u, KV_MAX_STATUS_LEN, &n);

        if (rv != 0)
                return rv;
        /* The text is counted, not terminated: an embedded NUL would make
         * C consumers silently see a shorter document. */
        if (n > 0 && has_nul(buf + 4, n))
                return -KV_E_INVAL;
        ret->len = n;
        ret->text = (const char *)buf + 4;
        return 0;
}

int kv_enc_error(uint8_t *buf, size_t cap, uint32_t rid, uint32_t code, const char *msg)
{
        size_t n = msg ? strnlen(msg, KV_MAX_MSG_LEN) : 0;
        uint8_t *b = begin(buf, cap, KV_OP_ERROR, rid, 8u + n);

        if (b == NULL)
                return -ENOBUFS;
        kv_put32(b, code);
        kv_put32(b + 4, (uint32_t)n);
        if (n > 0)
                memcpy(b + 8, msg, n);
        return (int)(KV_HDR_SIZE + 8u + n);
}

int kv_dec_error(const uint8_t *buf, size_t len, struct kv_error *ret)
{
        uint32_t code, n;
        int rv = dec_counted(buf, len, 8u, 1u, KV_MAX_MSG_LEN, &n);

        if (rv != 0)
                return rv;
        code = kv_le32(buf);
        /* An error reply saying "OK" would turn a failure into a success. */
        if (code == KV_OK)
                return -KV_E_INVAL;
        ret->code = code;
        ret->len = n;
        ret->msg = (const char *)buf + 8;
        return 0;
}

int kv_default_events_url(const char *socket_url, char *buf, size_t cap)
{
        const char *path, *base;
        size_t      dirlen, n;

        if (!socket_url || strncmp(socket_url, "ipc://", 6) != 0)
                return -EINVAL;
        path = socket_url + 6;
        base = strrchr(path, '/');
        dirlen = base ? (size_t)(base - path) + 1 : 0;
        n = 6 + dirlen + sizeof("events.sock") - 1;
        if (!buf || n >= cap)
                return -ENOBUFS;
        memcpy(buf, socket_url, 6 + dirlen);
        memcpy(buf + 6 + dirlen, "events.sock", sizeof("events.sock"));
        return (int)n;
}

void kv_deadline_ms(struct timespec *ret, uint32_t ms)
{
        clock_gettime(CLOCK_MONOTONIC, ret);
        ret->tv_sec += ms / 1000;
        ret->tv_nsec += (long)(ms % 1000) * 1000000L;
        if (ret->tv_nsec >= 1000000000L) {
                ret->tv_sec++;
                ret->tv_nsec -= 1000000000L;
        }
}
