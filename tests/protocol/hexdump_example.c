/* hexdump_example.c - prints one ATTACH request and its reply as encoded by
 * kv_proto.c, for docs/protocol.md.  Not a test: built, run by hand.
 *
 * The example pool: "llama-8b", fp8_e4m3, 4 layers, 8 KV heads, head_dim
 * 128, 16 tokens a page, 64 pages, host backend, laid out by kv_layout_init
 * exactly as the daemon does: a page of one K array is 16 * 8 * 128 * 1 =
 * 16384 bytes, a K array 64 pages = 1 MiB, V follows K, so a layer is 2 MiB
 * and the pool 8 MiB (already a multiple of 2 MiB).
 */
#include <stdio.h>
#include <string.h>

#include "kv_layout.h"
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
        struct kv_geom g = { .dtype = KVC_DTYPE_FP8_E4M3, .num_layers = 4, .kv_heads = 8, .head_dim = 128,
                             .page_size = 16 };
        struct kv_layout L;
        int n;

        memset(&req, 0, sizeof req);
        strcpy(req.name, "llama-8b");
        n = kv_enc_attach_req(buf, sizeof buf, 2, &req);
        if (n < 0)
                return 1;
        dump("ATTACH request, request_id 2", buf, n);

        if (kv_layout_init(&g, 64, &L))
                return 1;
        memset(&rep, 0, sizeof rep);
        rep.pool_id = 1;
        rep.dtype = g.dtype;
        rep.backend = KV_BACKEND_HOST;
        rep.num_layers = g.num_layers;
        rep.kv_heads = g.kv_heads;
        rep.head_dim = g.head_dim;
        rep.page_size = g.page_size;
        rep.num_pages = L.num_pages;
        rep.pool_bytes = L.alloc_bytes;
        rep.layer_stride = L.layer_stride;
        rep.k_offset = L.k_offset;
        rep.v_offset = L.v_offset;
        rep.ks_offset = L.ks_offset;
        rep.vs_offset = L.vs_offset;
        rep.page_bytes = L.page_bytes;
        rep.token_bytes = L.token_bytes;
        rep.head_bytes = L.head_bytes;
        rep.scale_page_bytes = L.scale_page_bytes;
        rep.scale_token_bytes = L.scale_token_bytes;
        rep.scale_head_bytes = L.scale_head_bytes;
        strcpy(rep.shm_name, "/kvpool.1234.llama-8b"); /* the host backend's "/kvpool.<pid>.<pool>" */
        rep.pool_epoch = 0x65f1a2b3c4d5e6f7ull;
        strcpy(rep.scale_source, "json");
        n = kv_enc_attach_rep(buf, sizeof buf, 2, &rep, k_scale, v_scale);
        if (n < 0)
                return 1;
        dump("ATTACH reply, request_id 2", buf, n);
        return 0;
}
