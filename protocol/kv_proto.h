/* kv_proto.h - the kvpool control protocol: opcodes, error codes, message
 * bodies, and pure encode/decode functions shared by kvpoold and libkvclient.
 *
 * Wire rules (docs/protocol.md is the normative text):
 *  - every message is one nng message: a 16-byte header then the body;
 *  - all integers are little-endian, fixed width, no padding on the wire
 *    but the PUBLISH reply's results, zero-padded to a multiple of 4;
 *  - strings are fixed-size, NUL-padded fields (a field of N bytes holds at
 *    most N-1 characters and at least one NUL) unless a length is given;
 *  - a reply has opcode (request opcode | KV_OP_REPLY); a failed request gets
 *    KV_OP_ERROR instead, whatever the request was.
 *
 * Encode functions write into a caller buffer and return the number of bytes
 * written, or -ENOBUFS when it does not fit.  Decode functions never read
 * outside [buf, buf+len), return 0 or a negative KV_E* code (negated), and
 * leave their out-parameter untouched on failure.  Arrays in decoded
 * messages point into the caller's buffer (read them with kv_le32()/kv_le64()),
 * so the buffer must outlive the decoded struct.
 *
 * No function here allocates, prints, or keeps state: they are safe from any
 * thread.
 */
#ifndef KV_PROTO_H
#define KV_PROTO_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KV_PROTO_MAGIC   0x3150564Bu /* "KVP1" read as little-endian u32 */
#define KV_PROTO_VERSION 1u
#define KV_HDR_SIZE      16u

/* Limits.  A frame larger than KV_MAX_FRAME is refused by nng itself
 * (NNG_OPT_RECVMAXSZ on the listener) before it is ever allocated. */
#define KV_MAX_FRAME      (1u << 20) /* 1 MiB */
#define KV_NAME_LEN       32u        /* client and pool names, NUL-padded */
#define KV_SHM_NAME_LEN   64u
#define KV_KEY_LEN        16u        /* prefix-cache content keys */
#define KV_MAX_PAGES_REQ  65536u     /* pages in one alloc/free reply/request */
#define KV_MAX_KEYS_REQ   8192u      /* keys in one publish/lookup */
#define KV_MAX_LAYERS     1024u
#define KV_MAX_MSG_LEN    512u       /* error message bytes */
#define KV_MAX_STATUS_LEN (KV_MAX_FRAME - KV_HDR_SIZE - 4u)

enum kv_opcode {
        KV_OP_HELLO   = 0x0001,
        KV_OP_ATTACH  = 0x0002,
        KV_OP_ALLOC   = 0x0003,
        KV_OP_FREE    = 0x0004,
        KV_OP_STATUS  = 0x0005,
        KV_OP_BYE     = 0x0006,
        KV_OP_PUBLISH = 0x0007,
        KV_OP_LOOKUP  = 0x0008,
        KV_OP_METRICS = 0x0009, /* Prometheus text, same as GET /metrics */
        KV_OP_RESET   = 0x000A, /* drop every prefix key of a pool */
        KV_OP_LAST    = KV_OP_RESET, /* requests are KV_OP_HELLO..KV_OP_LAST */
        KV_OP_REPLY   = 0x8000, /* or-ed into the request opcode */
        KV_OP_ERROR   = 0xFFFF,
};

/* Stable wire error codes: never renumber, only append. */
enum kv_err {
        KV_OK          = 0,
        KV_E_PROTO     = 1,  /* malformed message: lengths/counts disagree */
        KV_E_MAGIC     = 2,  /* bad magic */
        KV_E_VERSION   = 3,  /* unsupported protocol version */
        KV_E_OPCODE    = 4,  /* unknown opcode */
        KV_E_TOOBIG    = 5,  /* a count or length above its limit */
        KV_E_NOHELLO   = 6,  /* request before hello, or hello twice */
        KV_E_NOPOOL    = 7,  /* no pool of that name / id, or not attached */
        KV_E_NOSPACE   = 8,  /* alloc cannot be satisfied */
        KV_E_BADPAGE   = 9,  /* page id out of range (a page may repeat in one request) */
        KV_E_NOTHELD   = 10, /* page not held by this session */
        KV_E_INVAL     = 11, /* a field has a value outside its domain */
        KV_E_INTERNAL  = 12, /* daemon-side failure; the request changed nothing */
        KV_E_SHUTDOWN  = 13, /* daemon is shutting down */
        KV_E__COUNT
};

/* Stable name of a wire error code ("KV_E_NOSPACE"); "KV_E_UNKNOWN" otherwise. */
const char *kv_err_name(uint32_t code);
/* Negative errno a client returns for a wire error code (e.g. -ENOSPC). */
int kv_err_to_errno(uint32_t code);

enum kv_backend_kind { KV_BACKEND_HOST = 0, KV_BACKEND_CUDA = 1 };

struct kv_hdr {
        uint32_t magic;
        uint16_t version;
        uint16_t opcode;
        uint32_t request_id; /* echoed in the reply; the daemon does not interpret it */
        uint32_t body_len;   /* bytes after the header; must equal the frame's rest */
};

/* ---- bodies ---------------------------------------------------------- */

/* HELLO request: 4+4+32+16 = 56 bytes. */
struct kv_hello_req {
        uint32_t proto_version;
        uint32_t pid;
        char     name[KV_NAME_LEN];
        uint8_t  tenant_salt[KV_KEY_LEN]; /* all zero = no tenant */
};
/* HELLO reply: 8+4+4 = 16 bytes. */
struct kv_hello_rep {
        uint64_t session_id;
        uint32_t num_pools;
        uint32_t max_frame;
};

/* ATTACH and RESET requests: 32 bytes, a pool name. */
struct kv_attach_req {
        char name[KV_NAME_LEN];
};

/* ATTACH reply: fixed part (KV_ATTACH_FIXED bytes) then k_scale[num_layers]
 * and v_scale[num_layers] as little-endian IEEE float32.  Offsets are from the
 * start of the pool's single allocation; layer l's K array starts at
 * k_offset + l*layer_stride (likewise v/ks/vs). */
struct kv_attach_rep {
        uint32_t pool_id;
        uint32_t dtype;        /* enum kvc_dtype */
        uint32_t backend;      /* enum kv_backend_kind */
        uint32_t num_layers;
        uint32_t kv_heads;
        uint32_t head_dim;
        uint32_t page_size;
        uint32_t num_pages;
        uint64_t pool_bytes;   /* size of the mapping (2 MiB rounded) */
        uint64_t layer_stride;
        uint64_t k_offset, v_offset, ks_offset, vs_offset; /* ks/vs = 0 unless fp4 */
        uint64_t page_bytes;        /* one page of one K (or V) array */
        uint64_t token_bytes;       /* one token slot of one K (or V) array */
        uint64_t head_bytes;        /* one head of one token */
        uint64_t scale_page_bytes;  /* fp4 scale arrays, else 0 */
        uint64_t scale_token_bytes;
        uint64_t scale_head_bytes;
        char     shm_name[KV_SHM_NAME_LEN]; /* host backend: shm_open name */
        uint8_t  ipc_handle[64];            /* cuda backend: cudaIpcMemHandle_t */
        uint8_t  device_uuid[16];           /* cuda backend: cudaDeviceProp.uuid */
        uint64_t pool_epoch;                /* changes each daemon start: stale-handle check */
        char     scale_source[KV_NAME_LEN]; /* "constant", "json", "safetensors" */
        /* then: float k_scale[num_layers], float v_scale[num_layers] */
        const uint8_t *scales; /* decoded: points at 8*num_layers bytes in the buffer */
};
#define KV_ATTACH_FIXED (8u * 4u + 13u * 8u + KV_SHM_NAME_LEN + 64u + 16u + 8u + KV_NAME_LEN)

/* ALLOC request: pool_id, count (1..KV_MAX_PAGES_REQ). 8 bytes.
 * ALLOC reply: count, then count u32 page ids. */
struct kv_alloc_req { uint32_t pool_id; uint32_t count; };

/* FREE request: pool_id, count, then count u32 page ids.
 * PUBLISH request: pool_id, count, then count entries of {u32 page, u8 key[16]}.
 * LOOKUP request: pool_id, count, then count u8 key[16].
 * A page list (ALLOC/FREE/LOOKUP reply) is: count, then count u32. */
struct kv_pages {
        uint32_t       pool_id; /* unused (0) in replies */
        uint32_t       count;
        const uint8_t *ids;     /* count * 4 bytes, read with kv_le32(ids + 4*i) */
};
struct kv_publish_req {
        uint32_t       pool_id;
        uint32_t       count;
        const uint8_t *entries; /* count * 20 bytes: u32 page, u8 key[16] */
};
/* PUBLISH reply: count, then count u8 results (0 = stored, 1 = duplicate key:
 * the key keeps its first page, 2 = the page is already published under
 * another key and keeps it). Padded to a multiple of 4 with zeros. */
struct kv_publish_rep {
        uint32_t       count;
        const uint8_t *results;
};
struct kv_lookup_req {
        uint32_t       pool_id;
        uint32_t       count;
        const uint8_t *keys;    /* count * 16 bytes */
};

/* STATUS request: u32 flags (0). STATUS/METRICS reply: u32 len, then len bytes
 * of UTF-8 text (JSON for STATUS, Prometheus text for METRICS), no NUL. */
struct kv_text {
        uint32_t    len;
        const char *text;
};

/* ERROR reply: u32 code (enum kv_err), u32 len (<= KV_MAX_MSG_LEN), message. */
struct kv_error {
        uint32_t    code;
        uint32_t    len;
        const char *msg;
};

/* ---- little-endian helpers -------------------------------------------- */
static inline uint32_t kv_le32(const uint8_t *p)
{
        return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t kv_le64(const uint8_t *p)
{
        return (uint64_t)kv_le32(p) | (uint64_t)kv_le32(p + 4) << 32;
}
static inline void kv_put32(uint8_t *p, uint32_t v)
{
        p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline void kv_put64(uint8_t *p, uint64_t v)
{
        kv_put32(p, (uint32_t)v);
        kv_put32(p + 4, (uint32_t)(v >> 32));
}

/* ---- header ------------------------------------------------------------ */

/* Writes a header. Returns KV_HDR_SIZE, or -ENOBUFS. */
int kv_hdr_encode(uint8_t *buf, size_t cap, uint16_t opcode, uint32_t request_id, uint32_t body_len);
/* Checks magic, version, a known opcode, and body_len == len - KV_HDR_SIZE.
 * Returns 0 or -KV_E_PROTO/-KV_E_MAGIC/-KV_E_VERSION/-KV_E_OPCODE. */
int kv_hdr_decode(const uint8_t *buf, size_t len, struct kv_hdr *ret_hdr);

/* ---- whole messages (header + body) -------------------------------------
 * kv_enc_*: encode a complete message into buf, return its length or -ENOBUFS.
 * kv_dec_*: decode the BODY (buf points after the header, len = body_len);
 *           return 0 or -KV_E_* (PROTO for a size that disagrees with the
 *           counts, TOOBIG for a count above its limit, INVAL for a bad value
 *           such as a name without NUL). */
int kv_enc_hello_req(uint8_t *buf, size_t cap, uint32_t rid, const struct kv_hello_req *m);
int kv_dec_hello_req(const uint8_t *buf, size_t len, struct kv_hello_req *ret);
int kv_enc_hello_rep(uint8_t *buf, size_t cap, uint32_t rid, const struct kv_hello_rep *m);
int kv_dec_hello_rep(const uint8_t *buf, size_t len, struct kv_hello_rep *ret);

int kv_enc_attach_req(uint8_t *buf, size_t cap, uint32_t rid, const struct kv_attach_req *m);
int kv_dec_attach_req(const uint8_t *buf, size_t len, struct kv_attach_req *ret);
/* RESET request: the ATTACH body (decode it with kv_dec_attach_req); its
 * reply is a u32, the keys dropped (kv_enc_u32_req / kv_dec_u32_req). */
int kv_enc_reset_req(uint8_t *buf, size_t cap, uint32_t rid, const struct kv_attach_req *m);
/* k_scale/v_scale: host arrays of m->num_layers floats (m->scales is ignored). */
int kv_enc_attach_rep(uint8_t *buf, size_t cap, uint32_t rid, const struct kv_attach_rep *m,
                      const float *k_scale, const float *v_scale);
int kv_dec_attach_rep(const uint8_t *buf, size_t len, struct kv_attach_rep *ret);
/* Reads layer l's scales from a decoded attach reply. */
float kv_attach_k_scale(const struct kv_attach_rep *m, uint32_t l);
float kv_attach_v_scale(const struct kv_attach_rep *m, uint32_t l);

int kv_enc_alloc_req(uint8_t *buf, size_t cap, uint32_t rid, const struct kv_alloc_req *m);
int kv_dec_alloc_req(const uint8_t *buf, size_t len, struct kv_alloc_req *ret);

/* Page lists: FREE request (opcode KV_OP_FREE, pool_id used) and the ALLOC,
 * FREE and LOOKUP replies (opcode = request | KV_OP_REPLY, pool_id not on the
 * wire).  ids is a host array of count page ids. */
int kv_enc_pages(uint8_t *buf, size_t cap, uint16_t opcode, uint32_t rid, uint32_t pool_id,
                 uint32_t count, const uint32_t *ids);
int kv_dec_pages(const uint8_t *buf, size_t len, uint16_t opcode, struct kv_pages *ret);

int kv_enc_publish_req(uint8_t *buf, size_t cap, uint32_t rid, uint32_t pool_id, uint32_t count,
                       const uint32_t *pages, const uint8_t (*keys)[KV_KEY_LEN]);
int kv_dec_publish_req(const uint8_t *buf, size_t len, struct kv_publish_req *ret);
int kv_enc_publish_rep(uint8_t *buf, size_t cap, uint32_t rid, uint32_t count, const uint8_t *results);
int kv_dec_publish_rep(const uint8_t *buf, size_t len, struct kv_publish_rep *ret);

int kv_enc_lookup_req(uint8_t *buf, size_t cap, uint32_t rid, uint32_t pool_id, uint32_t count,
                      const uint8_t (*keys)[KV_KEY_LEN]);
int kv_dec_lookup_req(const uint8_t *buf, size_t len, struct kv_lookup_req *ret);

/* STATUS / METRICS request: u32 flags, and the RESET reply.  BYE has an
 * empty body (kv_enc_empty). */
int kv_enc_u32_req(uint8_t *buf, size_t cap, uint16_t opcode, uint32_t rid, uint32_t value);
int kv_dec_u32_req(const uint8_t *buf, size_t len, uint32_t *ret_value);
int kv_enc_empty(uint8_t *buf, size_t cap, uint16_t opcode, uint32_t rid);
int kv_dec_empty(const uint8_t *buf, size_t len);

int kv_enc_text(uint8_t *buf, size_t cap, uint16_t opcode, uint32_t rid, const char *text, uint32_t len);
int kv_dec_text(const uint8_t *buf, size_t len, struct kv_text *ret);

/* msg is truncated to KV_MAX_MSG_LEN bytes. */
int kv_enc_error(uint8_t *buf, size_t cap, uint32_t rid, uint32_t code, const char *msg);
int kv_dec_error(const uint8_t *buf, size_t len, struct kv_error *ret);

/* The event socket's default URL for a daemon on socket_url: events.sock
 * beside the request socket (same folder) — the one rule kvpoold and
 * kvpoolctl share.  Only ipc:// sockets have one.  Writes a NUL-terminated
 * URL into buf and returns its length, -EINVAL for a URL that is not ipc://,
 * or -ENOBUFS when it does not fit (buf untouched then). */
int kv_default_events_url(const char *socket_url, char *buf, size_t cap);

/* *ret = CLOCK_MONOTONIC now + ms: the deadline of a timed wait (a reply,
 * a shutdown), which a step of the wall clock cannot stretch. */
struct timespec;
void kv_deadline_ms(struct timespec *ret, uint32_t ms);

/* Size of a whole message, for sizing buffers before encoding. */
static inline size_t kv_size_pages(uint32_t count) { return KV_HDR_SIZE + 8u + 4u * (size_t)count; }
static inline size_t kv_size_attach_rep(uint32_t layers) { return KV_HDR_SIZE + KV_ATTACH_FIXED + 8u * (size_t)layers; }
/* PUBLISH reply: count, then the results padded to 4 bytes */
static inline size_t kv_size_publish_rep(uint32_t count) { return KV_HDR_SIZE + 4u + (((size_t)count + 3u) & ~(size_t)3u); }

#ifdef __cplusplus
}
#endif
#endif
