/* test_proto.c - the wire protocol: every message round-trips, every
 * malformed form is refused with the right code, failed decodes leave their
 * out-parameter alone, and encoders refuse buffers that are too small. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kv_proto.h"
#include "proto_samples.h"

#define BIG (KV_MAX_FRAME + 64u)

static uint8_t *big_buf(void)
{
        uint8_t *b = calloc(1, BIG);

        cr_assert_not_null(b);
        return b;
}

/* Encodes sample i and checks its header; returns the body length. */
static size_t enc_sample(int i, uint8_t *buf, size_t cap, struct kv_hdr *h)
{
        int n = sample_encode(i, buf, cap);

        cr_assert_gt(n, 0, "sample %d: encode returned %d", i, n);
        cr_assert_eq(kv_hdr_decode(buf, (size_t)n, h), 0, "sample %d: header", i);
        cr_assert_eq(h->body_len, (uint32_t)n - KV_HDR_SIZE);
        return h->body_len;
}

/* ---- header ------------------------------------------------------------ */

Test(proto, header_roundtrip)
{
        uint8_t b[KV_HDR_SIZE + 4] = { 0 };
        struct kv_hdr h;

        cr_assert_eq(kv_hdr_encode(b, sizeof b, KV_OP_STATUS, 0xabcdef01u, 4), (int)KV_HDR_SIZE);
        /* Little-endian on the wire, whatever the host. */
        cr_assert_eq(b[0], 'K');
        cr_assert_eq(b[1], 'V');
        cr_assert_eq(b[2], 'P');
        cr_assert_eq(b[3], '1');
        cr_assert_eq(b[4], 1);
        cr_assert_eq(b[5], 0);
        cr_assert_eq(b[6], 5);
        cr_assert_eq(b[7], 0);
        cr_assert_eq(b[8], 0x01);
        cr_assert_eq(b[11], 0xab);
        cr_assert_eq(kv_hdr_decode(b, sizeof b, &h), 0);
        cr_assert_eq(h.magic, KV_PROTO_MAGIC);
        cr_assert_eq(h.version, KV_PROTO_VERSION);
        cr_assert_eq(h.opcode, KV_OP_STATUS);
        cr_assert_eq(h.request_id, 0xabcdef01u);
        cr_assert_eq(h.body_len, 4);
        cr_assert_eq(kv_hdr_encode(b, KV_HDR_SIZE - 1, KV_OP_STATUS, 0, 0), -ENOBUFS);
}

Test(proto, header_malformed)
{
        uint8_t b[64] = { 0 };
        struct kv_hdr h, sentinel;

        memset(&sentinel, 0x5a, sizeof sentinel);
        h = sentinel;
        kv_hdr_encode(b, sizeof b, KV_OP_BYE, 1, 0);
        cr_assert_eq(kv_hdr_decode(b, KV_HDR_SIZE, &h), 0);

        /* too short */
        for (size_t n = 0; n < KV_HDR_SIZE; n++)
                cr_assert_eq(kv_hdr_decode(b, n, &h), -KV_E_PROTO, "len %zu", n);
        /* body_len larger and smaller than the frame's rest */
        cr_assert_eq(kv_hdr_decode(b, KV_HDR_SIZE + 1, &h), -KV_E_PROTO);
        kv_put32(b + 12, 8);
        cr_assert_eq(kv_hdr_decode(b, KV_HDR_SIZE + 4, &h), -KV_E_PROTO);
        cr_assert_eq(kv_hdr_decode(b, KV_HDR_SIZE + 12, &h), -KV_E_PROTO);
        cr_assert_eq(kv_hdr_decode(b, KV_HDR_SIZE + 8, &h), 0);
        kv_put32(b + 12, 0xffffffffu);
        cr_assert_eq(kv_hdr_decode(b, KV_HDR_SIZE, &h), -KV_E_PROTO);
        kv_put32(b + 12, 0);

        /* bad magic */
        h = sentinel;
        b[0] ^= 0x20;
        cr_assert_eq(kv_hdr_decode(b, KV_HDR_SIZE, &h), -KV_E_MAGIC);
        b[0] ^= 0x20;
        kv_put32(b, 0x31505648u);
        cr_assert_eq(kv_hdr_decode(b, KV_HDR_SIZE, &h), -KV_E_MAGIC);
        kv_put32(b, KV_PROTO_MAGIC);

        /* unknown versions */
        uint16_t versions[] = { 0, 2, 0x0100, 0xffff };
        for (size_t i = 0; i < sizeof versions / sizeof *versions; i++) {
                b[4] = (uint8_t)versions[i];
                b[5] = (uint8_t)(versions[i] >> 8);
                cr_assert_eq(kv_hdr_decode(b, KV_HDR_SIZE, &h), -KV_E_VERSION, "v %u", versions[i]);
        }
        b[4] = 1;
        b[5] = 0;

        /* unknown opcodes */
        uint16_t ops[] = { 0, 0x000b, 0x0100, 0x7fff, 0x8000, 0x800b, 0xfffe, 0x4001 };
        for (size_t i = 0; i < sizeof ops / sizeof *ops; i++) {
                b[6] = (uint8_t)ops[i];
                b[7] = (uint8_t)(ops[i] >> 8);
                cr_assert_eq(kv_hdr_decode(b, KV_HDR_SIZE, &h), -KV_E_OPCODE, "op %#x", ops[i]);
        }
        /* failed decodes did not touch the out-parameter */
        cr_assert_eq(memcmp(&h, &sentinel, sizeof h), 0);

        /* every known opcode is accepted */
        for (uint16_t op = KV_OP_HELLO; op <= KV_OP_LAST; op++) {
                kv_hdr_encode(b, sizeof b, op, 0, 0);
                cr_assert_eq(kv_hdr_decode(b, KV_HDR_SIZE, &h), 0);
                kv_hdr_encode(b, sizeof b, op | KV_OP_REPLY, 0, 0);
                cr_assert_eq(kv_hdr_decode(b, KV_HDR_SIZE, &h), 0);
        }
        kv_hdr_encode(b, sizeof b, KV_OP_ERROR, 0, 0);
        cr_assert_eq(kv_hdr_decode(b, KV_HDR_SIZE, &h), 0);
}

Test(proto, header_frame_too_big)
{
        uint8_t *b = big_buf();
        struct kv_hdr h;

        kv_hdr_encode(b, BIG, KV_OP_STATUS | KV_OP_REPLY, 0, KV_MAX_FRAME - KV_HDR_SIZE);
        cr_assert_eq(kv_hdr_decode(b, KV_MAX_FRAME, &h), 0);
        kv_hdr_encode(b, BIG, KV_OP_STATUS | KV_OP_REPLY, 0, KV_MAX_FRAME - KV_HDR_SIZE + 1);
        cr_assert_eq(kv_hdr_decode(b, KV_MAX_FRAME + 1, &h), -KV_E_TOOBIG);
        free(b);
}

/* ---- every sample: round trip, short, long, small buffers ------------- */

Test(proto, samples_decode_and_reject_truncation_and_trailing_bytes)
{
        uint8_t buf[4096];
        uint8_t copy[4096 + 8];
        volatile uint32_t sink = 0;

        for (int i = 0; i < SAMPLE_COUNT; i++) {
                struct kv_hdr h;
                size_t body = enc_sample(i, buf, sizeof buf, &h);
                size_t n = KV_HDR_SIZE + body;

                cr_assert_eq(decode_frame(buf, n, &sink), 0, "sample %d", i);
                /* The body decoder alone, with the header lying consistently
                 * about a shorter or longer body. */
                for (size_t cut = 0; cut < body; cut++) {
                        memcpy(copy, buf, n);
                        kv_put32(copy + 12, (uint32_t)cut);
                        int rc = decode_frame(copy, KV_HDR_SIZE + cut, &sink);
                        /* A list of N items cut to a shorter list of whole
                         * items is still inconsistent with its count. */
                        cr_assert_lt(rc, 0, "sample %d cut to %zu decoded", i, cut);
                        cr_assert_neq(rc, -1000);
                }
                for (size_t extra = 1; extra <= 8; extra++) {
                        memcpy(copy, buf, n);
                        memset(copy + n, 0, extra);
                        kv_put32(copy + 12, (uint32_t)(body + extra));
                        int rc = decode_frame(copy, n + extra, &sink);
                        cr_assert_lt(rc, 0, "sample %d + %zu bytes decoded", i, extra);
                }
        }
}

Test(proto, samples_encode_refuses_small_buffers)
{
        uint8_t buf[4096];

        for (int i = 0; i < SAMPLE_COUNT; i++) {
                int n = sample_encode(i, buf, sizeof buf);

                cr_assert_gt(n, 0);
                for (int cap = 0; cap < n; cap++)
                        cr_assert_eq(sample_encode(i, buf, (size_t)cap), -ENOBUFS,
                                     "sample %d cap %d", i, cap);
                cr_assert_eq(sample_encode(i, buf, (size_t)n), n);
        }
}

/* ---- message by message ----------------------------------------------- */

Test(proto, hello_roundtrip_and_name_without_nul)
{
        uint8_t buf[256];
        struct kv_hdr h;
        struct kv_hello_req r, sentinel;
        struct kv_hello_rep p;

        size_t body = enc_sample(0, buf, sizeof buf, &h);
        cr_assert_eq(h.opcode, KV_OP_HELLO);
        cr_assert_eq(h.request_id, 1);
        cr_assert_eq(body, 56);
        cr_assert_eq(kv_dec_hello_req(buf + KV_HDR_SIZE, body, &r), 0);
        cr_assert_eq(r.proto_version, KV_PROTO_VERSION);
        cr_assert_eq(r.pid, 4242);
        cr_assert_str_eq(r.name, "worker-0");
        for (int i = 0; i < 16; i++)
                cr_assert_eq(r.tenant_salt[i], 0xa5);

        memset(&sentinel, 0x77, sizeof sentinel);
        r = sentinel;
        memset(buf + KV_HDR_SIZE + 8, 'x', KV_NAME_LEN);
        cr_assert_eq(kv_dec_hello_req(buf + KV_HDR_SIZE, body, &r), -KV_E_INVAL);
        cr_assert_eq(memcmp(&r, &sentinel, sizeof r), 0);

        /* The encoder truncates an unterminated name so the result decodes. */
        struct kv_hello_req m = { .proto_version = 1, .pid = 1 };
        memset(m.name, 'y', KV_NAME_LEN);
        int n = kv_enc_hello_req(buf, sizeof buf, 9, &m);
        cr_assert_eq(n, (int)(KV_HDR_SIZE + 56));
        cr_assert_eq(kv_dec_hello_req(buf + KV_HDR_SIZE, 56, &r), 0);
        cr_assert_eq(strlen(r.name), KV_NAME_LEN - 1);

        body = enc_sample(1, buf, sizeof buf, &h);
        cr_assert_eq(h.opcode, KV_OP_HELLO | KV_OP_REPLY);
        cr_assert_eq(kv_dec_hello_rep(buf + KV_HDR_SIZE, body, &p), 0);
        cr_assert_eq(p.session_id, 0x0102030405060708ull);
        cr_assert_eq(p.num_pools, 2);
        cr_assert_eq(p.max_frame, KV_MAX_FRAME);
        /* session_id is little-endian: low byte first */
        cr_assert_eq(buf[KV_HDR_SIZE], 0x08);
}

Test(proto, attach_req_roundtrip_and_name_without_nul)
{
        uint8_t buf[128];
        struct kv_hdr h;
        struct kv_attach_req r, sentinel;

        size_t body = enc_sample(2, buf, sizeof buf, &h);
        cr_assert_eq(h.opcode, KV_OP_ATTACH);
        cr_assert_eq(body, KV_NAME_LEN);
        cr_assert_eq(kv_dec_attach_req(buf + KV_HDR_SIZE, body, &r), 0);
        cr_assert_str_eq(r.name, "llama-8b");
        memset(&sentinel, 0x33, sizeof sentinel);
        r = sentinel;
        memset(buf + KV_HDR_SIZE, 'n', KV_NAME_LEN);
        cr_assert_eq(kv_dec_attach_req(buf + KV_HDR_SIZE, body, &r), -KV_E_INVAL);
        cr_assert_eq(memcmp(&r, &sentinel, sizeof r), 0);
        cr_assert_eq(kv_dec_attach_req(buf + KV_HDR_SIZE, body - 1, &r), -KV_E_PROTO);
        cr_assert_eq(kv_dec_attach_req(buf + KV_HDR_SIZE, body + 1, &r), -KV_E_PROTO);
}

Test(proto, attach_rep_roundtrip)
{
        uint8_t buf[1024];
        struct kv_hdr h;
        struct kv_attach_rep r;

        size_t body = enc_sample(3, buf, sizeof buf, &h);
        cr_assert_eq(h.opcode, KV_OP_ATTACH | KV_OP_REPLY);
        cr_assert_eq(body, KV_ATTACH_FIXED + 8u * 3u);
        cr_assert_eq(KV_HDR_SIZE + body, kv_size_attach_rep(3));
        cr_assert_eq(kv_dec_attach_rep(buf + KV_HDR_SIZE, body, &r), 0);
        cr_assert_eq(r.pool_id, 1);
        cr_assert_eq(r.dtype, 2);
        cr_assert_eq(r.backend, KV_BACKEND_HOST);
        cr_assert_eq(r.num_layers, 3);
        cr_assert_eq(r.kv_heads, 8);
        cr_assert_eq(r.head_dim, 128);
        cr_assert_eq(r.page_size, 16);
        cr_assert_eq(r.num_pages, 64);
        cr_assert_eq(r.pool_bytes, 6u << 20);
        cr_assert_eq(r.layer_stride, 2u << 20);
        cr_assert_eq(r.k_offset, 0);
        cr_assert_eq(r.v_offset, 1u << 20);
        cr_assert_eq(r.ks_offset, 0);
        cr_assert_eq(r.vs_offset, 0);
        cr_assert_eq(r.page_bytes, 16384);
        cr_assert_eq(r.token_bytes, 1024);
        cr_assert_eq(r.head_bytes, 128);
        cr_assert_eq(r.scale_page_bytes, 0);
        cr_assert_str_eq(r.shm_name, "/kvpool-1-llama-8b");
        for (int i = 0; i < 64; i++)
                cr_assert_eq(r.ipc_handle[i], 0x11);
        for (int i = 0; i < 16; i++)
                cr_assert_eq(r.device_uuid[i], 0x22);
        cr_assert_eq(r.pool_epoch, 0xdeadbeefcafef00dull);
        cr_assert_str_eq(r.scale_source, "json");
        cr_assert(r.scales == buf + KV_HDR_SIZE + KV_ATTACH_FIXED);
        cr_assert_float_eq(kv_attach_k_scale(&r, 0), 0.0152f, 0);
        cr_assert_float_eq(kv_attach_k_scale(&r, 1), 0.0188f, 0);
        cr_assert_float_eq(kv_attach_k_scale(&r, 2), 1.0f, 0);
        cr_assert_float_eq(kv_attach_v_scale(&r, 0), 0.5f, 0);
        cr_assert_float_eq(kv_attach_v_scale(&r, 1), 0.25f, 0);
        cr_assert_float_eq(kv_attach_v_scale(&r, 2), 2.0f, 0);
        cr_assert(isnan(kv_attach_k_scale(&r, 3)));
        cr_assert(isnan(kv_attach_v_scale(&r, 3)));
        /* k_scale[0] = 0.0152f on the wire as IEEE float32, little-endian */
        float f = 0.0152f;
        uint32_t u;
        memcpy(&u, &f, 4);
        cr_assert_eq(kv_le32(buf + KV_HDR_SIZE + KV_ATTACH_FIXED), u);
}

Test(proto, attach_rep_malformed)
{
        uint8_t buf[1024], b2[1024];
        struct kv_hdr h;
        struct kv_attach_rep r, sentinel;

        memset(&sentinel, 0x44, sizeof sentinel);
        size_t body = enc_sample(3, buf, sizeof buf, &h);
        uint8_t *b = buf + KV_HDR_SIZE;
        r = sentinel;

        /* num_layers disagreeing with the length, both ways */
        memcpy(b2, b, body);
        kv_put32(b2 + 12, 4);
        cr_assert_eq(kv_dec_attach_rep(b2, body, &r), -KV_E_PROTO);
        kv_put32(b2 + 12, 2);
        cr_assert_eq(kv_dec_attach_rep(b2, body, &r), -KV_E_PROTO);
        /* a length that is not fixed + 8*L for any L */
        cr_assert_eq(kv_dec_attach_rep(b, body - 4, &r), -KV_E_PROTO);
        cr_assert_eq(kv_dec_attach_rep(b, KV_ATTACH_FIXED - 1, &r), -KV_E_PROTO);
        /* num_layers above its limit */
        kv_put32(b2 + 12, KV_MAX_LAYERS + 1);
        cr_assert_eq(kv_dec_attach_rep(b2, body, &r), -KV_E_TOOBIG);
        kv_put32(b2 + 12, 0xffffffffu);
        cr_assert_eq(kv_dec_attach_rep(b2, body, &r), -KV_E_TOOBIG);
        /* zero layers */
        kv_put32(b2 + 12, 0);
        cr_assert_eq(kv_dec_attach_rep(b2, KV_ATTACH_FIXED, &r), -KV_E_INVAL);
        /* shm_name and scale_source without NUL */
        memcpy(b2, b, body);
        memset(b2 + 136, 's', KV_SHM_NAME_LEN);
        cr_assert_eq(kv_dec_attach_rep(b2, body, &r), -KV_E_INVAL);
        memcpy(b2, b, body);
        memset(b2 + 288, 'j', KV_NAME_LEN);
        cr_assert_eq(kv_dec_attach_rep(b2, body, &r), -KV_E_INVAL);
        /* unknown dtype and backend */
        memcpy(b2, b, body);
        kv_put32(b2 + 4, 5);
        cr_assert_eq(kv_dec_attach_rep(b2, body, &r), -KV_E_INVAL);
        memcpy(b2, b, body);
        kv_put32(b2 + 8, 2);
        cr_assert_eq(kv_dec_attach_rep(b2, body, &r), -KV_E_INVAL);
        cr_assert_eq(memcmp(&r, &sentinel, sizeof r), 0);

        /* encoder refuses more layers than the limit, and missing arrays */
        struct kv_attach_rep m = { .num_layers = KV_MAX_LAYERS + 1 };
        static float s[KV_MAX_LAYERS + 1];
        cr_assert_eq(kv_enc_attach_rep(buf, sizeof buf, 0, &m, s, s), -EMSGSIZE);
        m.num_layers = 2;
        cr_assert_eq(kv_enc_attach_rep(buf, sizeof buf, 0, &m, NULL, s), -EINVAL);
}

Test(proto, attach_rep_max_layers)
{
        static float k[KV_MAX_LAYERS], v[KV_MAX_LAYERS];
        size_t cap = kv_size_attach_rep(KV_MAX_LAYERS);
        uint8_t *buf = malloc(cap);
        struct kv_attach_rep m = { .dtype = 3, .backend = KV_BACKEND_CUDA,
                                   .num_layers = KV_MAX_LAYERS, .scale_source = "safetensors" };
        struct kv_attach_rep r;

        for (uint32_t l = 0; l < KV_MAX_LAYERS; l++) {
                k[l] = 1.0f / (float)(l + 1);
                v[l] = (float)l + 0.5f;
        }
        cr_assert_eq(kv_enc_attach_rep(buf, cap, 0, &m, k, v), (int)cap);
        cr_assert_eq(kv_dec_attach_rep(buf + KV_HDR_SIZE, cap - KV_HDR_SIZE, &r), 0);
        for (uint32_t l = 0; l < KV_MAX_LAYERS; l++) {
                cr_assert_eq(kv_attach_k_scale(&r, l), k[l]);
                cr_assert_eq(kv_attach_v_scale(&r, l), v[l]);
        }
        cr_assert_str_eq(r.shm_name, "");
        free(buf);
}

Test(proto, alloc_req)
{
        uint8_t buf[64];
        struct kv_hdr h;
        struct kv_alloc_req r, sentinel = { 0xaaaa, 0xbbbb };

        size_t body = enc_sample(4, buf, sizeof buf, &h);
        cr_assert_eq(body, 8);
        cr_assert_eq(kv_dec_alloc_req(buf + KV_HDR_SIZE, body, &r), 0);
        cr_assert_eq(r.pool_id, 1);
        cr_assert_eq(r.count, 5);

        r = sentinel;
        kv_put32(buf + KV_HDR_SIZE + 4, KV_MAX_PAGES_REQ);
        cr_assert_eq(kv_dec_alloc_req(buf + KV_HDR_SIZE, 8, &r), 0);
        cr_assert_eq(r.count, KV_MAX_PAGES_REQ);
        r = sentinel;
        kv_put32(buf + KV_HDR_SIZE + 4, KV_MAX_PAGES_REQ + 1);
        cr_assert_eq(kv_dec_alloc_req(buf + KV_HDR_SIZE, 8, &r), -KV_E_TOOBIG);
        kv_put32(buf + KV_HDR_SIZE + 4, 0);
        cr_assert_eq(kv_dec_alloc_req(buf + KV_HDR_SIZE, 8, &r), -KV_E_INVAL);
        cr_assert_eq(kv_dec_alloc_req(buf + KV_HDR_SIZE, 7, &r), -KV_E_PROTO);
        cr_assert_eq(kv_dec_alloc_req(buf + KV_HDR_SIZE, 12, &r), -KV_E_PROTO);
        /* the encoder does not send a count the decoder refuses as too big */
        struct kv_alloc_req big = { 1, KV_MAX_PAGES_REQ + 1 }, most = { 1, KV_MAX_PAGES_REQ };
        cr_assert_eq(kv_enc_alloc_req(buf, sizeof buf, 7, &big), -EMSGSIZE);
        cr_assert_eq(kv_enc_alloc_req(buf, sizeof buf, 7, &most), (int)(KV_HDR_SIZE + 8));
        cr_assert_eq(memcmp(&r, &sentinel, sizeof r), 0);
}

Test(proto, page_lists)
{
        uint8_t buf[256];
        struct kv_hdr h;
        struct kv_pages r;
        static const uint32_t want[5] = { 7, 0, 65535, 12, 4000000000u };

        /* ALLOC reply: no pool_id on the wire */
        size_t body = enc_sample(5, buf, sizeof buf, &h);
        cr_assert_eq(h.opcode, KV_OP_ALLOC | KV_OP_REPLY);
        cr_assert_eq(body, 4 + 4 * 5);
        cr_assert_eq(kv_dec_pages(buf + KV_HDR_SIZE, body, h.opcode, &r), 0);
        cr_assert_eq(r.pool_id, 0);
        cr_assert_eq(r.count, 5);
        for (int i = 0; i < 5; i++)
                cr_assert_eq(kv_le32(r.ids + 4 * i), want[i]);

        /* FREE request: pool_id first */
        body = enc_sample(6, buf, sizeof buf, &h);
        cr_assert_eq(h.opcode, KV_OP_FREE);
        cr_assert_eq(body, 8 + 4 * 5);
        cr_assert_eq(KV_HDR_SIZE + body, kv_size_pages(5));
        cr_assert_eq(kv_dec_pages(buf + KV_HDR_SIZE, body, KV_OP_FREE, &r), 0);
        cr_assert_eq(r.pool_id, 1);
        cr_assert_eq(r.count, 5);
        for (int i = 0; i < 5; i++)
                cr_assert_eq(kv_le32(r.ids + 4 * i), want[i]);
        /* the same bytes read as a reply disagree with their count */
        cr_assert_eq(kv_dec_pages(buf + KV_HDR_SIZE, body, KV_OP_FREE | KV_OP_REPLY, &r), -KV_E_PROTO);

        /* empty lists (FREE and LOOKUP replies) */
        body = enc_sample(7, buf, sizeof buf, &h);
        cr_assert_eq(body, 4);
        cr_assert_eq(kv_dec_pages(buf + KV_HDR_SIZE, body, h.opcode, &r), 0);
        cr_assert_eq(r.count, 0);
        body = enc_sample(11, buf, sizeof buf, &h);
        cr_assert_eq(h.opcode, KV_OP_LOOKUP | KV_OP_REPLY);
        cr_assert_eq(kv_dec_pages(buf + KV_HDR_SIZE, body, h.opcode, &r), 0);
        cr_assert_eq(r.count, 2);
        cr_assert_eq(kv_le32(r.ids + 4), 0);

        /* opcodes that are not page lists */
        cr_assert_eq(kv_dec_pages(buf + KV_HDR_SIZE, body, KV_OP_ALLOC, &r), -KV_E_OPCODE);
        cr_assert_eq(kv_dec_pages(buf + KV_HDR_SIZE, body, KV_OP_ERROR, &r), -KV_E_OPCODE);
        cr_assert_eq(kv_enc_pages(buf, sizeof buf, KV_OP_HELLO, 0, 0, 0, NULL), -EINVAL);
}

Test(proto, page_list_counts)
{
        uint8_t *buf = big_buf();
        uint32_t *ids = calloc(KV_MAX_PAGES_REQ + 1, 4);
        struct kv_pages r, sentinel;

        memset(&sentinel, 0x66, sizeof sentinel);
        for (uint32_t i = 0; i <= KV_MAX_PAGES_REQ; i++)
                ids[i] = i * 3u;
        /* the largest list fits in a frame and round-trips */
        int n = kv_enc_pages(buf, BIG, KV_OP_FREE, 1, 9, KV_MAX_PAGES_REQ, ids);
        cr_assert_eq(n, (int)kv_size_pages(KV_MAX_PAGES_REQ));
        cr_assert_leq((size_t)n, KV_MAX_FRAME);
        cr_assert_eq(kv_dec_pages(buf + KV_HDR_SIZE, (size_t)n - KV_HDR_SIZE, KV_OP_FREE, &r), 0);
        cr_assert_eq(r.count, KV_MAX_PAGES_REQ);
        cr_assert_eq(kv_le32(r.ids + 4u * 65535u), 65535u * 3u);
        /* one more is refused on both ends */
        cr_assert_eq(kv_enc_pages(buf, BIG, KV_OP_FREE, 1, 9, KV_MAX_PAGES_REQ + 1, ids), -EMSGSIZE);
        r = sentinel;
        kv_put32(buf + KV_HDR_SIZE + 4, KV_MAX_PAGES_REQ + 1);
        cr_assert_eq(kv_dec_pages(buf + KV_HDR_SIZE, 8u + 4u * (KV_MAX_PAGES_REQ + 1), KV_OP_FREE, &r),
                     -KV_E_TOOBIG);
        /* counts disagreeing with the body */
        kv_put32(buf + KV_HDR_SIZE + 4, 3);
        cr_assert_eq(kv_dec_pages(buf + KV_HDR_SIZE, 8 + 8, KV_OP_FREE, &r), -KV_E_PROTO);
        cr_assert_eq(kv_dec_pages(buf + KV_HDR_SIZE, 8 + 16, KV_OP_FREE, &r), -KV_E_PROTO);
        cr_assert_eq(kv_dec_pages(buf + KV_HDR_SIZE, 8 + 14, KV_OP_FREE, &r), -KV_E_PROTO);
        cr_assert_eq(kv_dec_pages(buf + KV_HDR_SIZE, 3, KV_OP_FREE | KV_OP_REPLY, &r), -KV_E_PROTO);
        kv_put32(buf + KV_HDR_SIZE, 0xffffffffu);
        cr_assert_eq(kv_dec_pages(buf + KV_HDR_SIZE, 8, KV_OP_ALLOC | KV_OP_REPLY, &r), -KV_E_TOOBIG);
        cr_assert_eq(memcmp(&r, &sentinel, sizeof r), 0);
        cr_assert_eq(kv_enc_pages(buf, BIG, KV_OP_FREE, 1, 9, 3, NULL), -EINVAL);
        free(ids);
        free(buf);
}

Test(proto, publish)
{
        uint8_t buf[256];
        struct kv_hdr h;
        struct kv_publish_req r, rs;
        struct kv_publish_rep p, ps;

        size_t body = enc_sample(8, buf, sizeof buf, &h);
        cr_assert_eq(h.opcode, KV_OP_PUBLISH);
        cr_assert_eq(body, 8 + 20 * 3);
        cr_assert_eq(kv_dec_publish_req(buf + KV_HDR_SIZE, body, &r), 0);
        cr_assert_eq(r.pool_id, 1);
        cr_assert_eq(r.count, 3);
        cr_assert_eq(kv_le32(r.entries), 7);
        cr_assert_eq(r.entries[4], 1);
        cr_assert_eq(r.entries[19], 16);
        cr_assert_eq(kv_le32(r.entries + 20), 0);
        cr_assert_eq(r.entries[24], 0xff);
        cr_assert_eq(kv_le32(r.entries + 40), 12);

        memset(&rs, 0x12, sizeof rs);
        r = rs;
        cr_assert_eq(kv_dec_publish_req(buf + KV_HDR_SIZE, body - 1, &r), -KV_E_PROTO);
        cr_assert_eq(kv_dec_publish_req(buf + KV_HDR_SIZE, body + 20, &r), -KV_E_PROTO);
        cr_assert_eq(kv_dec_publish_req(buf + KV_HDR_SIZE, 7, &r), -KV_E_PROTO);
        kv_put32(buf + KV_HDR_SIZE + 4, KV_MAX_KEYS_REQ + 1);
        cr_assert_eq(kv_dec_publish_req(buf + KV_HDR_SIZE, body, &r), -KV_E_TOOBIG);
        cr_assert_eq(memcmp(&r, &rs, sizeof r), 0);
        cr_assert_eq(kv_enc_publish_req(buf, sizeof buf, 0, 0, KV_MAX_KEYS_REQ + 1, NULL, NULL), -EMSGSIZE);

        /* reply: five results padded to eight bytes */
        body = enc_sample(9, buf, sizeof buf, &h);
        cr_assert_eq(h.opcode, KV_OP_PUBLISH | KV_OP_REPLY);
        cr_assert_eq(body, 4 + 8);
        cr_assert_eq(kv_dec_publish_rep(buf + KV_HDR_SIZE, body, &p), 0);
        cr_assert_eq(p.count, 5);
        cr_assert_eq(p.results[1], 1);
        cr_assert_eq(p.results[4], 1);
        cr_assert_eq(p.results[3], 0);
        memset(&ps, 0x21, sizeof ps);
        p = ps;
        /* nonzero padding, unpadded length, count above the limit */
        buf[KV_HDR_SIZE + 4 + 6] = 1;
        cr_assert_eq(kv_dec_publish_rep(buf + KV_HDR_SIZE, body, &p), -KV_E_PROTO);
        buf[KV_HDR_SIZE + 4 + 6] = 0;
        cr_assert_eq(kv_dec_publish_rep(buf + KV_HDR_SIZE, 4 + 5, &p), -KV_E_PROTO);
        cr_assert_eq(kv_dec_publish_rep(buf + KV_HDR_SIZE, 3, &p), -KV_E_PROTO);
        kv_put32(buf + KV_HDR_SIZE, KV_MAX_KEYS_REQ + 1);
        cr_assert_eq(kv_dec_publish_rep(buf + KV_HDR_SIZE, body, &p), -KV_E_TOOBIG);
        cr_assert_eq(memcmp(&p, &ps, sizeof p), 0);
        /* exact multiples of four get no padding */
        static const uint8_t four[4] = { 1, 0, 1, 0 };
        int n = kv_enc_publish_rep(buf, sizeof buf, 0, 4, four);
        cr_assert_eq(n, (int)(KV_HDR_SIZE + 8));
        cr_assert_eq(n, (int)kv_size_publish_rep(4));
        cr_assert_eq(kv_size_publish_rep(5), KV_HDR_SIZE + 4 + 8); /* 5 results padded to 8 */
        cr_assert_eq(kv_dec_publish_rep(buf + KV_HDR_SIZE, 8, &p), 0);
        cr_assert_eq(p.results[2], 1);
}

Test(proto, lookup)
{
        uint8_t buf[256];
        struct kv_hdr h;
        struct kv_lookup_req r, rs;

        size_t body = enc_sample(10, buf, sizeof buf, &h);
        cr_assert_eq(h.opcode, KV_OP_LOOKUP);
        cr_assert_eq(body, 8 + 16 * 3);
        cr_assert_eq(kv_dec_lookup_req(buf + KV_HDR_SIZE, body, &r), 0);
        cr_assert_eq(r.pool_id, 1);
        cr_assert_eq(r.count, 3);
        cr_assert_eq(r.keys[0], 1);
        cr_assert_eq(r.keys[16], 0xff);
        cr_assert_eq(r.keys[47], 0);

        memset(&rs, 0x13, sizeof rs);
        r = rs;
        cr_assert_eq(kv_dec_lookup_req(buf + KV_HDR_SIZE, body - 16, &r), -KV_E_PROTO);
        cr_assert_eq(kv_dec_lookup_req(buf + KV_HDR_SIZE, body + 1, &r), -KV_E_PROTO);
        kv_put32(buf + KV_HDR_SIZE + 4, KV_MAX_KEYS_REQ + 1);
        cr_assert_eq(kv_dec_lookup_req(buf + KV_HDR_SIZE, body, &r), -KV_E_TOOBIG);
        cr_assert_eq(memcmp(&r, &rs, sizeof r), 0);
        cr_assert_eq(kv_enc_lookup_req(buf, sizeof buf, 0, 0, KV_MAX_KEYS_REQ + 1, NULL), -EMSGSIZE);
}

Test(proto, u32_empty_text)
{
        uint8_t buf[256];
        struct kv_hdr h;
        uint32_t v = 99;
        struct kv_text t, ts;

        size_t body = enc_sample(12, buf, sizeof buf, &h);
        cr_assert_eq(h.opcode, KV_OP_STATUS);
        cr_assert_eq(kv_dec_u32_req(buf + KV_HDR_SIZE, body, &v), 0);
        cr_assert_eq(v, 0);
        v = 99;
        cr_assert_eq(kv_dec_u32_req(buf + KV_HDR_SIZE, 3, &v), -KV_E_PROTO);
        cr_assert_eq(kv_dec_u32_req(buf + KV_HDR_SIZE, 5, &v), -KV_E_PROTO);
        cr_assert_eq(v, 99);

        body = enc_sample(16, buf, sizeof buf, &h);
        cr_assert_eq(h.opcode, KV_OP_BYE);
        cr_assert_eq(body, 0);
        cr_assert_eq(kv_dec_empty(buf + KV_HDR_SIZE, 0), 0);
        cr_assert_eq(kv_dec_empty(buf + KV_HDR_SIZE, 1), -KV_E_PROTO);

        body = enc_sample(13, buf, sizeof buf, &h);
        cr_assert_eq(h.opcode, KV_OP_STATUS | KV_OP_REPLY);
        cr_assert_eq(kv_dec_text(buf + KV_HDR_SIZE, body, &t), 0);
        cr_assert_eq(t.len, 12);
        cr_assert_eq(memcmp(t.text, "{\"pools\":[]}", 12), 0);
        memset(&ts, 0x14, sizeof ts);
        t = ts;
        cr_assert_eq(kv_dec_text(buf + KV_HDR_SIZE, body - 1, &t), -KV_E_PROTO);
        cr_assert_eq(kv_dec_text(buf + KV_HDR_SIZE, body + 1, &t), -KV_E_PROTO);
        cr_assert_eq(kv_dec_text(buf + KV_HDR_SIZE, 2, &t), -KV_E_PROTO);
        buf[KV_HDR_SIZE + 4 + 3] = 0;
        cr_assert_eq(kv_dec_text(buf + KV_HDR_SIZE, body, &t), -KV_E_INVAL);
        kv_put32(buf + KV_HDR_SIZE, KV_MAX_STATUS_LEN + 1);
        cr_assert_eq(kv_dec_text(buf + KV_HDR_SIZE, body, &t), -KV_E_TOOBIG);
        cr_assert_eq(memcmp(&t, &ts, sizeof t), 0);
        cr_assert_eq(kv_enc_text(buf, sizeof buf, KV_OP_STATUS | KV_OP_REPLY, 0, "x",
                                 KV_MAX_STATUS_LEN + 1), -EMSGSIZE);
}

Test(proto, text_largest_fills_a_frame)
{
        uint8_t *buf = big_buf();
        char *text = malloc(KV_MAX_STATUS_LEN);
        struct kv_text t;
        struct kv_hdr h;

        memset(text, 'm', KV_MAX_STATUS_LEN);
        int n = kv_enc_text(buf, BIG, KV_OP_METRICS | KV_OP_REPLY, 3, text, KV_MAX_STATUS_LEN);
        cr_assert_eq(n, (int)KV_MAX_FRAME);
        cr_assert_eq(kv_hdr_decode(buf, (size_t)n, &h), 0);
        cr_assert_eq(kv_dec_text(buf + KV_HDR_SIZE, h.body_len, &t), 0);
        cr_assert_eq(t.len, KV_MAX_STATUS_LEN);
        free(text);
        free(buf);
}

Test(proto, error_reply)
{
        uint8_t buf[1024];
        struct kv_hdr h;
        struct kv_error e, es;
        char longmsg[KV_MAX_MSG_LEN + 100];

        size_t body = enc_sample(18, buf, sizeof buf, &h);
        cr_assert_eq(h.opcode, KV_OP_ERROR);
        cr_assert_eq(h.request_id, 10);
        cr_assert_eq(kv_dec_error(buf + KV_HDR_SIZE, body, &e), 0);
        cr_assert_eq(e.code, KV_E_NOSPACE);
        cr_assert_eq(e.len, strlen("pool llama-8b: 5 pages asked, 3 free"));
        cr_assert_eq(memcmp(e.msg, "pool llama-8b: 5 pages asked, 3 free", e.len), 0);

        memset(&es, 0x15, sizeof es);
        e = es;
        cr_assert_eq(kv_dec_error(buf + KV_HDR_SIZE, body - 1, &e), -KV_E_PROTO);
        cr_assert_eq(kv_dec_error(buf + KV_HDR_SIZE, body + 1, &e), -KV_E_PROTO);
        cr_assert_eq(kv_dec_error(buf + KV_HDR_SIZE, 7, &e), -KV_E_PROTO);
        kv_put32(buf + KV_HDR_SIZE + 4, KV_MAX_MSG_LEN + 1);
        cr_assert_eq(kv_dec_error(buf + KV_HDR_SIZE, 8 + KV_MAX_MSG_LEN + 1, &e), -KV_E_TOOBIG);
        cr_assert_eq(memcmp(&e, &es, sizeof e), 0);

        /* code 0 in an error reply would read as success */
        int n = kv_enc_error(buf, sizeof buf, 1, KV_OK, "x");
        cr_assert_eq(kv_dec_error(buf + KV_HDR_SIZE, (size_t)n - KV_HDR_SIZE, &e), -KV_E_INVAL);

        /* messages are truncated to KV_MAX_MSG_LEN; NULL is an empty message */
        memset(longmsg, 'q', sizeof longmsg - 1);
        longmsg[sizeof longmsg - 1] = 0;
        n = kv_enc_error(buf, sizeof buf, 1, KV_E_INVAL, longmsg);
        cr_assert_eq(n, (int)(KV_HDR_SIZE + 8 + KV_MAX_MSG_LEN));
        cr_assert_eq(kv_dec_error(buf + KV_HDR_SIZE, (size_t)n - KV_HDR_SIZE, &e), 0);
        cr_assert_eq(e.len, KV_MAX_MSG_LEN);
        n = kv_enc_error(buf, sizeof buf, 1, KV_E_SHUTDOWN, NULL);
        cr_assert_eq(n, (int)(KV_HDR_SIZE + 8));
        cr_assert_eq(kv_dec_error(buf + KV_HDR_SIZE, 8, &e), 0);
        cr_assert_eq(e.len, 0);
        cr_assert_eq(e.code, KV_E_SHUTDOWN);
        /* a code from a newer daemon still decodes */
        n = kv_enc_error(buf, sizeof buf, 1, 77, "future");
        cr_assert_eq(kv_dec_error(buf + KV_HDR_SIZE, (size_t)n - KV_HDR_SIZE, &e), 0);
        cr_assert_eq(e.code, 77);
}

Test(proto, error_names_and_errnos)
{
        static const struct { uint32_t code; const char *name; int err; } t[] = {
                { KV_OK, "KV_OK", 0 },
                { KV_E_PROTO, "KV_E_PROTO", -EPROTO },
                { KV_E_MAGIC, "KV_E_MAGIC", -EPROTO },
                { KV_E_VERSION, "KV_E_VERSION", -EPROTONOSUPPORT },
                { KV_E_OPCODE, "KV_E_OPCODE", -EOPNOTSUPP },
                { KV_E_TOOBIG, "KV_E_TOOBIG", -EMSGSIZE },
                { KV_E_NOHELLO, "KV_E_NOHELLO", -ESTALE },
                { KV_E_NOPOOL, "KV_E_NOPOOL", -ENOENT },
                { KV_E_NOSPACE, "KV_E_NOSPACE", -ENOSPC },
                { KV_E_BADPAGE, "KV_E_BADPAGE", -ERANGE },
                { KV_E_NOTHELD, "KV_E_NOTHELD", -EPERM },
                { KV_E_INVAL, "KV_E_INVAL", -EINVAL },
                { KV_E_INTERNAL, "KV_E_INTERNAL", -EIO },
                { KV_E_SHUTDOWN, "KV_E_SHUTDOWN", -ESHUTDOWN },
        };

        cr_assert_eq(sizeof t / sizeof *t, KV_E__COUNT);
        for (size_t i = 0; i < sizeof t / sizeof *t; i++) {
                cr_assert_str_eq(kv_err_name(t[i].code), t[i].name);
                cr_assert_eq(kv_err_to_errno(t[i].code), t[i].err, "%s", t[i].name);
        }
        cr_assert_str_eq(kv_err_name(KV_E__COUNT), "KV_E_UNKNOWN");
        cr_assert_str_eq(kv_err_name(0xffffffffu), "KV_E_UNKNOWN");
        cr_assert_eq(kv_err_to_errno(KV_E__COUNT), -EIO);
}

/* Random single-byte corruptions of every sample never crash and, when
 * they hit the header's magic, version or length, are refused. */
Test(proto, corrupted_header_fields_refused)
{
        uint8_t buf[4096];
        volatile uint32_t sink = 0;

        for (int i = 0; i < SAMPLE_COUNT; i++) {
                int n = sample_encode(i, buf, sizeof buf);
                for (int byte = 0; byte < 16; byte++) {
                        if (byte >= 8 && byte < 12)
                                continue; /* request_id is opaque */
                        for (int bit = 0; bit < 8; bit++) {
                                buf[byte] ^= (uint8_t)(1u << bit);
                                int rc = decode_frame(buf, (size_t)n, &sink);
                                buf[byte] ^= (uint8_t)(1u << bit);
                                if (byte < 6 || byte >= 12) {
                                        cr_assert_lt(rc, 0, "sample %d byte %d bit %d", i, byte, bit);
                                }
                                cr_assert_neq(rc, -1000);
                        }
                }
        }
}

/* The event socket's default, the rule kvpoold and kvpoolctl share. */
Test(proto, default_events_url)
{
        char buf[64] = "untouched";

        cr_assert_eq(kv_default_events_url("ipc:///run/kvpool/kvpool.sock", buf, sizeof(buf)),
                     (int)strlen("ipc:///run/kvpool/events.sock"));
        cr_assert_str_eq(buf, "ipc:///run/kvpool/events.sock");
        cr_assert_eq(kv_default_events_url("ipc://kvpool.sock", buf, sizeof(buf)), (int)strlen("ipc://events.sock"));
        cr_assert_str_eq(buf, "ipc://events.sock");
        strcpy(buf, "untouched");
        cr_assert_eq(kv_default_events_url("tcp://127.0.0.1:5555", buf, sizeof(buf)), -EINVAL);
        cr_assert_eq(kv_default_events_url(NULL, buf, sizeof(buf)), -EINVAL);
        cr_assert_eq(kv_default_events_url("ipc:///a/very/long/folder/kvpool.sock", buf, 20), -ENOBUFS);
        cr_assert_str_eq(buf, "untouched");
        /* exactly the room for the URL and its NUL */
        cr_assert_eq(kv_default_events_url("ipc:///d/x", buf, sizeof("ipc:///d/events.sock")),
                     (int)strlen("ipc:///d/events.sock"));
        cr_assert_str_eq(buf, "ipc:///d/events.sock");
}
