/* hexdump_example.c - prints one ATTACH request and its reply as encoded by
 * kv_proto.c, for docs/protocol.md.  Not a test: built, run by hand.
 *
 * The example pool: "llama-8b", fp8_e4m3, 4 layers, 8 KV heads, head_dim
 * 128, 16 tokens a page, 64 pages, host backend.  Its layout follows
 * design §4 (kernels/kv_layout.h): a page of one K array is
 * 16 * 8 * 128 * 1 = 16384 bytes, a K array 64 pages = 1 MiB, V follows K,
 * so a layer is 2 MiB and the pool 8 MiB (already a multiple of 2 MiB).
 */
#include <stdio.h>
#include <string.h>

#include "kv_proto.h"

static void dump(const char *title, const uint8_t *b, int n)
{
        printf("%s (%d bytes)\n", title, n);
        for (int off = 0; off < n; off += 16) {
                printf("%04x ", off);
                for (int i = 0; i < 16; i++) {
                        if (off + i < n)
                                printf(" %02x", b[off + i]);
                        else
                                printf("   ");
                        if (i == 7)
                                printf(" ");
                }
                printf("  |");
                for (int i = 0; i < 16 && off + i < n; i++) {
                        uint8_t c = b[off + i];
                        putchar(c >= 0x20 && c < 0x7f ? c : '.');
                }
                printf("|\n");
        }
        printf("\n");
}

int main(void)
{
        static const float k_scale[4] = { 0.0152f, 0.0188f, 0.0210f, 0.0173f };
        static const float v_scale[4] = { 0.0152f, 0.0188f, 0.0210f, 0.0173f };
        uint8_t buf[1024];
        struct kv_attach_req req;
        struct kv_attach_rep rep;
        int n;

        memset(&req, 0, sizeof req);
        strcpy(req.name, "llama-8b");
        n = kv_enc_attach_req(buf, sizeof buf, 2, &req);
        if (n < 0)
                return 1;
        dump("ATTACH request, request_id 2", buf, n);

        memset(&rep, 0, sizeof rep);
        rep.pool_id = 1;
        rep.dtype = 2;           /* KVC_DTYPE_FP8_E4M3 */
        rep.backend = KV_BACKEND_HOST;
        rep.num_layers = 4;
        rep.kv_heads = 8;
        rep.head_dim = 128;
        rep.page_size = 16;
        rep.num_pages = 64;
        rep.pool_bytes = 8u << 20;
        rep.layer_stride = 2u << 20;
        rep.k_offset = 0;
        rep.v_offset = 1u << 20;
        rep.page_bytes = 16384;
        rep.token_bytes = 1024;
        rep.head_bytes = 128;
        strcpy(rep.shm_name, "/kvpool-1234-llama-8b");
        rep.pool_epoch = 0x65f1a2b3c4d5e6f7ull;
        strcpy(rep.scale_source, "json");
        n = kv_enc_attach_rep(buf, sizeof buf, 2, &rep, k_scale, v_scale);
        if (n < 0)
                return 1;
        dump("ATTACH reply, request_id 2", buf, n);
        return 0;
}
