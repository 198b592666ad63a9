/* fuzz_proto.c - fuzz target for the protocol decoders.
 *
 * LLVMFuzzerTestOneInput feeds the input to kv_hdr_decode and, through the
 * opcode dispatch a peer uses, to the matching body decoder; then it feeds
 * the same bytes as a bare body to every kv_dec_*.  Nothing may crash or read
 * outside the input (built with ASan/UBSan where the compiler has them, and
 * kv_proto.c is compiled into this binary so it is instrumented too).
 *
 * Without libFuzzer (KV_LIBFUZZER undefined) a main() runs the target over
 * 200k inputs: random byte strings and mutations of valid messages (bit
 * flips, byte overwrites, length and count fields set to edge values,
 * truncation, extension).  Usage: fuzz_proto [iterations] [seed].
 * It exits 1 if a valid message stops decoding, which would mean the
 * harness itself tests nothing.
 *
 * With libFuzzer (clang), from the repository root:
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -DKV_LIBFUZZER -D_GNU_SOURCE \
 *         -Iprotocol -Iclient/include -Itests/protocol \
 *         tests/protocol/fuzz_proto.c protocol/kv_proto.c -o fuzz_proto_lf
 *   ./fuzz_proto_lf -max_total_time=60 -max_len=4096 CORPUS_DIR
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_proto.h"
#include "proto_samples.h"

static volatile uint32_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        static const uint16_t page_ops[] = {
                KV_OP_FREE, KV_OP_ALLOC | KV_OP_REPLY, KV_OP_FREE | KV_OP_REPLY,
                KV_OP_LOOKUP | KV_OP_REPLY, KV_OP_HELLO, 0xffff,
        };
        union {
                struct kv_hello_req hq;
                struct kv_hello_rep hp;
                struct kv_attach_req aq;
                struct kv_attach_rep ap;
                struct kv_alloc_req al;
                struct kv_pages pg;
                struct kv_publish_req pq;
                struct kv_publish_rep pp;
                struct kv_lookup_req lq;
                struct kv_text tx;
                struct kv_error er;
                uint32_t u;
        } m;

        (void)decode_frame(data, size, &sink);

        /* Every body decoder on the raw bytes, touching what it points at. */
        if (kv_dec_hello_req(data, size, &m.hq) == 0)
                sink += (uint32_t)strlen(m.hq.name);
        if (kv_dec_hello_rep(data, size, &m.hp) == 0)
                sink += m.hp.max_frame;
        if (kv_dec_attach_req(data, size, &m.aq) == 0)
                sink += (uint32_t)strlen(m.aq.name);
        if (kv_dec_attach_rep(data, size, &m.ap) == 0) {
                sink += (uint32_t)strlen(m.ap.shm_name) + (uint32_t)strlen(m.ap.scale_source);
                for (uint32_t l = 0; l <= m.ap.num_layers; l++)
                        sink += (uint32_t)(kv_attach_k_scale(&m.ap, l) > 1.0f) +
                                (uint32_t)(kv_attach_v_scale(&m.ap, l) > 1.0f);
        }
        if (kv_dec_alloc_req(data, size, &m.al) == 0)
                sink += m.al.count;
        for (size_t i = 0; i < sizeof page_ops / sizeof *page_ops; i++)
                if (kv_dec_pages(data, size, page_ops[i], &m.pg) == 0)
                        sink += touch(m.pg.ids, 4u * (size_t)m.pg.count);
        if (kv_dec_publish_req(data, size, &m.pq) == 0)
                sink += touch(m.pq.entries, 20u * (size_t)m.pq.count);
        if (kv_dec_publish_rep(data, size, &m.pp) == 0)
                sink += touch(m.pp.results, m.pp.count);
        if (kv_dec_lookup_req(data, size, &m.lq) == 0)
                sink += touch(m.lq.keys, 16u * (size_t)m.lq.count);
        if (kv_dec_u32_req(data, size, &m.u) == 0)
                sink += m.u;
        (void)kv_dec_empty(data, size);
        if (kv_dec_text(data, size, &m.tx) == 0)
                sink += touch((const uint8_t *)m.tx.text, m.tx.len);
        if (kv_dec_error(data, size, &m.er) == 0)
                sink += touch((const uint8_t *)m.er.msg, m.er.len);
        return 0;
}

#ifndef KV_LIBFUZZER

/* xorshift64*: reproducible from the seed printed at start. */
static uint64_t rng_state;

static uint32_t rnd(void)
{
        rng_state ^= rng_state >> 12;
        rng_state ^= rng_state << 25;
        rng_state ^= rng_state >> 27;
        return (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 32);
}

/* Values that sit on the edges of the decoders' checks. */
static uint32_t edge_value(void)
{
        static const uint32_t v[] = {
                0, 1, 2, 3, 4, 7, 8, 16, 31, 32, 255, 256, 1023, 1024, 1025,
                8191, 8192, 8193, 65535, 65536, 65537, KV_MAX_MSG_LEN, KV_MAX_MSG_LEN + 1,
                KV_MAX_STATUS_LEN, KV_MAX_STATUS_LEN + 1, KV_MAX_FRAME, 0x7fffffffu,
                0x80000000u, 0xfffffffcu, 0xffffffffu, 0x40000000u, 0x10000000u,
        };
        return v[rnd() % (sizeof v / sizeof *v)];
}

static void mutate(uint8_t *b, size_t *n, size_t cap)
{
        int rounds = 1 + (int)(rnd() % 4);

        for (int r = 0; r < rounds; r++) {
                switch (rnd() % 8) {
                case 0: /* flip a bit */
                        if (*n)
                                b[rnd() % *n] ^= (uint8_t)(1u << (rnd() % 8));
                        break;
                case 1: /* overwrite a byte */
                        if (*n)
                                b[rnd() % *n] = (uint8_t)rnd();
                        break;
                case 2: /* a length or count field: header body_len or the
                         * first words of the body */
                        if (*n >= 4) {
                                size_t off = (rnd() % 2) ? 12 : KV_HDR_SIZE + 4u * (rnd() % 4);
                                if (off + 4 <= *n)
                                        kv_put32(b + off, edge_value());
                        }
                        break;
                case 3: /* truncate */
                        if (*n)
                                *n = rnd() % *n;
                        break;
                case 4: { /* extend with random bytes */
                        size_t add = 1 + rnd() % 64;
                        if (*n + add > cap)
                                add = cap - *n;
                        for (size_t i = 0; i < add; i++)
                                b[*n + i] = (uint8_t)rnd();
                        *n += add;
                        break;
                }
                case 5: /* body_len made consistent again after other changes */
                        if (*n >= KV_HDR_SIZE)
                                kv_put32(b + 12, (uint32_t)(*n - KV_HDR_SIZE));
                        break;
                case 6: /* another opcode */
                        if (*n >= 8) {
                                uint16_t op = (uint16_t)(1 + rnd() % 10);
                                if (rnd() % 2)
                                        op |= KV_OP_REPLY;
                                if (rnd() % 8 == 0)
                                        op = KV_OP_ERROR;
                                b[6] = (uint8_t)op;
                                b[7] = (uint8_t)(op >> 8);
                        }
                        break;
                case 7: /* strip the header: feed a bare body */
                        if (*n >= KV_HDR_SIZE) {
                                memmove(b, b + KV_HDR_SIZE, *n - KV_HDR_SIZE);
                                *n -= KV_HDR_SIZE;
                        }
                        break;
                }
        }
}

/* Runs the target on an exact-size heap copy so ASan sees any overread. */
static void run_one(const uint8_t *b, size_t n)
{
        uint8_t *copy = malloc(n ? n : 1);

        if (copy == NULL) {
                fprintf(stderr, "fuzz_proto: out of memory\n");
                exit(2);
        }
        memcpy(copy, b, n);
        LLVMFuzzerTestOneInput(copy, n);
        free(copy);
}

int main(int argc, char **argv)
{
        enum { CAP = 8192 };
        static uint8_t valid[SAMPLE_COUNT][CAP];
        static size_t valid_len[SAMPLE_COUNT];
        static uint8_t work[CAP];
        long iters = argc > 1 ? atol(argv[1]) : 200000;
        uint64_t seed = argc > 2 ? strtoull(argv[2], NULL, 0) : 0x6b7670726f746fULL;
        long accepted = 0;

        rng_state = seed ? seed : 1;
        printf("fuzz_proto: %ld iterations, seed %#llx\n", iters, (unsigned long long)seed);
        for (int i = 0; i < SAMPLE_COUNT; i++) {
                int n = sample_encode(i, valid[i], CAP);
                if (n < 0 || decode_frame(valid[i], (size_t)n, &sink) != 0) {
                        fprintf(stderr, "fuzz_proto: sample %d does not round-trip (%d)\n", i, n);
                        return 1;
                }
                valid_len[i] = (size_t)n;
        }
        for (long it = 0; it < iters; it++) {
                size_t n;

                if (it % 4 == 0) {
                        /* random bytes, mostly short, sometimes with a valid
                         * header prefix so the body decoders get reached */
                        n = rnd() % (it % 64 == 0 ? CAP : 400);
                        for (size_t i = 0; i < n; i++)
                                work[i] = (uint8_t)rnd();
                        if (n >= KV_HDR_SIZE && rnd() % 2) {
                                uint16_t op = (uint16_t)(1 + rnd() % 9);
                                if (rnd() % 2)
                                        op |= KV_OP_REPLY;
                                kv_hdr_encode(work, n, op, rnd(), (uint32_t)(n - KV_HDR_SIZE));
                        }
                } else {
                        int s = (int)(rnd() % SAMPLE_COUNT);
                        n = valid_len[s];
                        memcpy(work, valid[s], n);
                        mutate(work, &n, CAP);
                }
                if (decode_frame(work, n, &sink) == 0)
                        accepted++;
                run_one(work, n);
        }
        printf("fuzz_proto: done, %ld inputs decoded as valid frames\n", accepted);
        return 0;
}

#endif
