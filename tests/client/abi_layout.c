/* abi_layout.c - prints the size and every field offset of libkvclient's
 * public structs as one JSON object, as the C compiler lays them out.
 * test_python.py compares it with the ctypes mirrors of the Python binding
 * (client/python/kvpool/_capi.py): a field added, moved or retyped in
 * kvclient.h without the binding following fails there. */
#include <stddef.h>
#include <stdio.h>

#include "kvclient.h"

#define FIELD(s, f) printf("%s\"%s\": %zu", first++ ? ", " : "", #f, offsetof(struct s, f))

static int first;

static void open_struct(const char *name, size_t size, int comma)
{
        printf("%s\"%s\": {\"size\": %zu, \"fields\": {", comma ? ",\n " : "", name, size);
        first = 0;
}

int main(void)
{
        printf("{");
        printf("\"kvc_key\": {\"size\": %zu, \"fields\": {\"b\": %zu}}", sizeof(kvc_key), offsetof(kvc_key, b));

        open_struct("kvc_pool_desc", sizeof(struct kvc_pool_desc), 1);
        FIELD(kvc_pool_desc, name); FIELD(kvc_pool_desc, dtype); FIELD(kvc_pool_desc, backend);
        FIELD(kvc_pool_desc, device); FIELD(kvc_pool_desc, pool_id); FIELD(kvc_pool_desc, num_layers);
        FIELD(kvc_pool_desc, kv_heads); FIELD(kvc_pool_desc, head_dim); FIELD(kvc_pool_desc, page_size);
        FIELD(kvc_pool_desc, num_pages); FIELD(kvc_pool_desc, base); FIELD(kvc_pool_desc, bytes);
        FIELD(kvc_pool_desc, layer_stride); FIELD(kvc_pool_desc, k_offset); FIELD(kvc_pool_desc, v_offset);
        FIELD(kvc_pool_desc, ks_offset); FIELD(kvc_pool_desc, vs_offset); FIELD(kvc_pool_desc, page_bytes);
        FIELD(kvc_pool_desc, token_bytes); FIELD(kvc_pool_desc, head_bytes);
        FIELD(kvc_pool_desc, scale_page_bytes); FIELD(kvc_pool_desc, scale_token_bytes);
        FIELD(kvc_pool_desc, scale_head_bytes); FIELD(kvc_pool_desc, k_scale); FIELD(kvc_pool_desc, v_scale);
        FIELD(kvc_pool_desc, scale_source);
        printf("}}");

        open_struct("kvc_write_args", sizeof(struct kvc_write_args), 1);
        FIELD(kvc_write_args, k); FIELD(kvc_write_args, v); FIELD(kvc_write_args, elem);
        FIELD(kvc_write_args, k_row_stride); FIELD(kvc_write_args, v_row_stride); FIELD(kvc_write_args, slots);
        FIELD(kvc_write_args, num_tokens); FIELD(kvc_write_args, layer);
        printf("}}");

        open_struct("kvc_gather_args", sizeof(struct kvc_gather_args), 1);
        FIELD(kvc_gather_args, pages); FIELD(kvc_gather_args, n_pages); FIELD(kvc_gather_args, layer);
        FIELD(kvc_gather_args, k_out); FIELD(kvc_gather_args, v_out); FIELD(kvc_gather_args, elem);
        printf("}}");

        open_struct("kvc_decode_args", sizeof(struct kvc_decode_args), 1);
        FIELD(kvc_decode_args, q); FIELD(kvc_decode_args, out); FIELD(kvc_decode_args, elem);
        FIELD(kvc_decode_args, page_table); FIELD(kvc_decode_args, max_pages); FIELD(kvc_decode_args, seq_lens);
        FIELD(kvc_decode_args, seq_lens_host); FIELD(kvc_decode_args, batch);
        FIELD(kvc_decode_args, num_q_heads); FIELD(kvc_decode_args, sm_scale); FIELD(kvc_decode_args, layer);
        printf("}}");

        open_struct("kvc_extend_args", sizeof(struct kvc_extend_args), 1);
        FIELD(kvc_extend_args, q); FIELD(kvc_extend_args, out); FIELD(kvc_extend_args, elem);
        FIELD(kvc_extend_args, qo_indptr); FIELD(kvc_extend_args, qo_indptr_host);
        FIELD(kvc_extend_args, page_table); FIELD(kvc_extend_args, max_pages); FIELD(kvc_extend_args, seq_lens);
        FIELD(kvc_extend_args, seq_lens_host); FIELD(kvc_extend_args, batch);
        FIELD(kvc_extend_args, num_q_heads); FIELD(kvc_extend_args, sm_scale); FIELD(kvc_extend_args, layer);
        printf("}}");
        printf("}\n");
        return 0;
}
