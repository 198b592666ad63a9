/* pool_check.h - a write through libkvclient in one process, checked in
 * another: the GPU tests that share a cuda pool between processes
 * (test_ipc.c, test_tp_gpu.c) build the same inputs from a seed on both
 * sides, so the checking process needs only the seed and the page ids. */
#ifndef KV_POOL_CHECK_H
#define KV_POOL_CHECK_H

#include <stdint.h>

#include "kvclient.h"

/* K and V bf16 [T, kv_heads * head_dim] for every slot of the given pages,
 * the slots shuffled; the same (desc geometry, pages, seed) gives the same
 * data in any process. */
struct pc_input {
        uint32_t T;
        int64_t row;
        int64_t *slots;
        void *k, *v;
};

void pc_make_write(struct pc_input *in, const struct kvc_pool_desc *d, const int32_t *pages, int n_pages,
                   uint64_t seed);
void pc_free_write(struct pc_input *in);

/* Copies the inputs to the calling thread's current device and writes them
 * into layer of p through kvc_write (the CUDA kernel), then synchronizes.
 * kvc_write's return value (its message in kvc_errmsg). */
int pc_gpu_write(kvc_pool *p, const struct pc_input *in, uint32_t layer);

/* Checks, on p's device (made current for the call, restored after), that
 * what pc_make_write(seed) + pc_gpu_write made of the pages equals the CPU
 * reference (kv_ref_write, then kv_ref_gather, on a private host pool with
 * the same layout and p's scales): the raw bytes of every page (K, V, fp4
 * scales) and kvc_gather's fp32 output.  Prints what differs, prefixed with
 * label (kvc_gather's message is c's); returns the number of mismatches (0: equal), or -1 when a call
 * failed (printed). */
int pc_check_pages(kvc_client *c, kvc_pool *p, const int32_t *pages, int n_pages, uint64_t seed, uint32_t layer,
                   const char *label);

#endif
