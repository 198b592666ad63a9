/* blockkey.c - chained prefix-cache block keys (kvc_block_key).
 *
 * key = XXH3-128, seed 0, over  parent (16 bytes, zero for the first block)
 *                               || tokens as little-endian int32
 *                               || extra bytes,
 * stored as the hash's high 64 bits little-endian, then its low 64 bits
 * little-endian.  The concatenation is hashed with XXH3's streaming API, which
 * gives the same result as hashing one buffer holding all three parts.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack: no malloc, no failure */
#include <xxhash.h>

#include "kvclient.h"

#define TOKEN_CHUNK 256

static void put64le(uint8_t *p, uint64_t v)
{
        for (int i = 0; i < 8; i++)
                p[i] = (uint8_t)(v >> (8 * i));
}

/* Contract in kvclient.h.  Pure: thread safe. */
int kvc_block_key(const kvc_key *parent, const int32_t *tokens, size_t n_tokens,
                  const void *extra, size_t extra_len, kvc_key *ret_key)
{
        static const uint8_t zero[KVC_KEY_LEN];
        uint8_t buf[TOKEN_CHUNK * 4];
        XXH3_state_t st;
        XXH128_hash_t h;

        if (ret_key == NULL || (tokens == NULL && n_tokens > 0) || (extra == NULL && extra_len > 0))
                return -EINVAL;
        XXH3_128bits_reset(&st);
        XXH3_128bits_update(&st, parent ? parent->b : zero, KVC_KEY_LEN);
        /* Tokens go through a small buffer in little-endian order so the keys
         * are the same on every host, whatever its byte order. */
        for (size_t i = 0; i < n_tokens; i += TOKEN_CHUNK) {
                size_t n = n_tokens - i < TOKEN_CHUNK ? n_tokens - i : TOKEN_CHUNK;

                for (size_t j = 0; j < n; j++) {
                        uint32_t t = (uint32_t)tokens[i + j];

                        buf[4 * j] = (uint8_t)t;
                        buf[4 * j + 1] = (uint8_t)(t >> 8);
                        buf[4 * j + 2] = (uint8_t)(t >> 16);
                        buf[4 * j + 3] = (uint8_t)(t >> 24);
                }
                XXH3_128bits_update(&st, buf, 4 * n);
        }
        if (extra_len > 0)
                XXH3_128bits_update(&st, extra, extra_len);
        h = XXH3_128bits_digest(&st);
        put64le(ret_key->b, h.high64);
        put64le(ret_key->b + 8, h.low64);
        return 0;
}
