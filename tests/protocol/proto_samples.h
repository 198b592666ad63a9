/* proto_samples.h - shared by the protocol tests and the fuzz target: one
 * valid example of every message kind, and a decoder that dispatches a whole
 * frame on its opcode the way the daemon and the client do.
 */
#ifndef PROTO_SAMPLES_H
#define PROTO_SAMPLES_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kv_proto.h"

#define SAMPLE_COUNT 22

/* Encodes the i-th sample message (0 <= i < SAMPLE_COUNT) into buf.
 * Returns its length or a negative errno from the encoder. */
static inline int sample_encode(int i, uint8_t *buf, size_t cap)
{
        static const uint32_t ids[5] = { 7, 0, 65535, 12, 4000000000u };
        static const uint8_t keys[3][KV_KEY_LEN] = {
                { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 },
                { 0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa, 0x99, 0x88,
                  0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0x00 },
                { 0 },
        };
        static const uint8_t results[5] = { 0, 1, 0, 0, 1 };
        static const float ks[3] = { 0.0152f, 0.0188f, 1.0f };
        static const float vs[3] = { 0.5f, 0.25f, 2.0f };

        switch (i) {
        case 0: {
                struct kv_hello_req m = { .proto_version = KV_PROTO_VERSION, .pid = 4242 };
                strcpy(m.name, "worker-0");
                memset(m.tenant_salt, 0xa5, sizeof m.tenant_salt);
                return kv_enc_hello_req(buf, cap, 1, &m);
        }
        case 1: {
                struct kv_hello_rep m = { .session_id = 0x0102030405060708ull,
                                          .num_pools = 2, .max_frame = KV_MAX_FRAME };
                return kv_enc_hello_rep(buf, cap, 1, &m);
        }
        case 2: {
                struct kv_attach_req m = { .name = "llama-8b" };
                return kv_enc_attach_req(buf, cap, 2, &m);
        }
        case 3: {
                struct kv_attach_rep m = {
                        .pool_id = 1, .dtype = 2, .backend = KV_BACKEND_HOST, .num_layers = 3,
                        .kv_heads = 8, .head_dim = 128, .page_size = 16, .num_pages = 64,
                        .pool_bytes = 6u << 20, .layer_stride = 2u << 20, .k_offset = 0,
                        .v_offset = 1u << 20, .page_bytes = 16384, .token_bytes = 1024,
                        .head_bytes = 128, .shm_name = "/kvpool-1-llama-8b",
                        .pool_epoch = 0xdeadbeefcafef00dull, .scale_source = "json",
                };
                memset(m.ipc_handle, 0x11, sizeof m.ipc_handle);
                memset(m.device_uuid, 0x22, sizeof m.device_uuid);
                return kv_enc_attach_rep(buf, cap, 2, &m, ks, vs);
        }
        case 4: {
                struct kv_alloc_req m = { .pool_id = 1, .count = 5 };
                return kv_enc_alloc_req(buf, cap, 3, &m);
        }
        case 5:  return kv_enc_pages(buf, cap, KV_OP_ALLOC | KV_OP_REPLY, 3, 0, 5, ids);
        case 6:  return kv_enc_pages(buf, cap, KV_OP_FREE, 4, 1, 5, ids);
        case 7:  return kv_enc_pages(buf, cap, KV_OP_FREE | KV_OP_REPLY, 4, 0, 0, NULL);
        case 8: {
                static const uint32_t pp[3] = { 7, 0, 12 };
                return kv_enc_publish_req(buf, cap, 5, 1, 3, pp, keys);
        }
        case 9:  return kv_enc_publish_rep(buf, cap, 5, 5, results);
        case 10: return kv_enc_lookup_req(buf, cap, 6, 1, 3, keys);
        case 11: return kv_enc_pages(buf, cap, KV_OP_LOOKUP | KV_OP_REPLY, 6, 0, 2, ids);
        case 12: return kv_enc_u32_req(buf, cap, KV_OP_STATUS, 7, 0);
        case 13: return kv_enc_text(buf, cap, KV_OP_STATUS | KV_OP_REPLY, 7, "{\"pools\":[]}", 12);
        case 14: return kv_enc_u32_req(buf, cap, KV_OP_METRICS, 8, 0);
        case 15: return kv_enc_text(buf, cap, KV_OP_METRICS | KV_OP_REPLY, 8, "kvpool_up 1\n", 12);
        case 16: return kv_enc_empty(buf, cap, KV_OP_BYE, 9);
        case 17: return kv_enc_empty(buf, cap, KV_OP_BYE | KV_OP_REPLY, 9);
        case 18: return kv_enc_error(buf, cap, 10, KV_E_NOSPACE, "pool llama-8b: 5 pages asked, 3 free");
        case 19: return kv_enc_pages(buf, cap, KV_OP_LOOKUP | KV_OP_REPLY, 11, 0, 0, NULL);
        case 20: {
                struct kv_attach_req m;
                memset(&m, 0, sizeof m);
                strcpy(m.name, "llama-8b");
                return kv_enc_reset_req(buf, cap, 12, &m);
        }
        case 21: return kv_enc_u32_req(buf, cap, KV_OP_RESET | KV_OP_REPLY, 12, 4321);
        default: return -1;
        }
}

/* Folds every byte an array field points at into a sum, so a sanitizer
 * sees any pointer a decoder set past the end of the buffer. */
static inline uint32_t touch(const uint8_t *p, size_t n)
{
        uint32_t s = 0;

        for (size_t i = 0; i < n; i++)
                s = s * 31u + p[i];
        return s;
}

/* Decodes a whole frame as a peer would: header, then the body decoder
 * for its opcode.  Returns 0 or the negative KV_E_* code; *sink absorbs
 * the decoded content. */
static inline int decode_frame(const uint8_t *buf, size_t len, volatile uint32_t *sink)
{
        struct kv_hdr h;
        const uint8_t *b;
        int rc;

        rc = kv_hdr_decode(buf, len, &h);
        if (rc < 0)
                return rc;
        b = buf + KV_HDR_SIZE;
        switch (h.opcode) {
        case KV_OP_HELLO: {
                struct kv_hello_req m;
                rc = kv_dec_hello_req(b, h.body_len, &m);
                if (rc == 0)
                        *sink += (uint32_t)strlen(m.name);
                return rc;
        }
        case KV_OP_HELLO | KV_OP_REPLY: {
                struct kv_hello_rep m;
                rc = kv_dec_hello_rep(b, h.body_len, &m);
                if (rc == 0)
                        *sink += m.num_pools;
                return rc;
        }
        case KV_OP_ATTACH:
        case KV_OP_RESET: {
                struct kv_attach_req m;
                rc = kv_dec_attach_req(b, h.body_len, &m);
                if (rc == 0)
                        *sink += (uint32_t)strlen(m.name);
                return rc;
        }
        case KV_OP_ATTACH | KV_OP_REPLY: {
                struct kv_attach_rep m;
                rc = kv_dec_attach_rep(b, h.body_len, &m);
                if (rc == 0) {
                        *sink += (uint32_t)strlen(m.shm_name) + (uint32_t)strlen(m.scale_source);
                        for (uint32_t l = 0; l < m.num_layers; l++)
                                *sink += (uint32_t)(kv_attach_k_scale(&m, l) + kv_attach_v_scale(&m, l));
                }
                return rc;
        }
        case KV_OP_ALLOC: {
                struct kv_alloc_req m;
                rc = kv_dec_alloc_req(b, h.body_len, &m);
                if (rc == 0)
                        *sink += m.count;
                return rc;
        }
        case KV_OP_ALLOC | KV_OP_REPLY:
        case KV_OP_FREE:
        case KV_OP_FREE | KV_OP_REPLY:
        case KV_OP_LOOKUP | KV_OP_REPLY: {
                struct kv_pages m;
                rc = kv_dec_pages(b, h.body_len, h.opcode, &m);
                if (rc == 0)
                        *sink += touch(m.ids, 4u * (size_t)m.count);
                return rc;
        }
        case KV_OP_PUBLISH: {
                struct kv_publish_req m;
                rc = kv_dec_publish_req(b, h.body_len, &m);
                if (rc == 0)
                        *sink += touch(m.entries, 20u * (size_t)m.count);
                return rc;
        }
        case KV_OP_PUBLISH | KV_OP_REPLY: {
                struct kv_publish_rep m;
                rc = kv_dec_publish_rep(b, h.body_len, &m);
                if (rc == 0)
                        *sink += touch(m.results, m.count);
                return rc;
        }
        case KV_OP_LOOKUP: {
                struct kv_lookup_req m;
                rc = kv_dec_lookup_req(b, h.body_len, &m);
                if (rc == 0)
                        *sink += touch(m.keys, 16u * (size_t)m.count);
                return rc;
        }
        case KV_OP_STATUS:
        case KV_OP_METRICS:
        case KV_OP_RESET | KV_OP_REPLY: {
                uint32_t v;
                rc = kv_dec_u32_req(b, h.body_len, &v);
                if (rc == 0)
                        *sink += v;
                return rc;
        }
        case KV_OP_STATUS | KV_OP_REPLY:
        case KV_OP_METRICS | KV_OP_REPLY: {
                struct kv_text m;
                rc = kv_dec_text(b, h.body_len, &m);
                if (rc == 0)
                        *sink += touch((const uint8_t *)m.text, m.len);
                return rc;
        }
        case KV_OP_BYE:
        case KV_OP_BYE | KV_OP_REPLY:
                return kv_dec_empty(b, h.body_len);
        case KV_OP_ERROR: {
                struct kv_error m;
                rc = kv_dec_error(b, h.body_len, &m);
                if (rc == 0)
                        *sink += touch((const uint8_t *)m.msg, m.len) + m.code;
                return rc;
        }
        default:
                /* kv_hdr_decode accepted an opcode this switch lacks. */
                return -1000;
        }
}

#endif
