/* kvclient.h - libkvclient, the worker-side library of kvpool.
 *
 * A worker connects to kvpoold, attaches to a pool (which maps the pool's
 * memory into the process once: POSIX shared memory for a host pool, a CUDA
 * IPC handle for a GPU pool), allocates and frees pages, publishes and looks
 * up prefix pages, and runs the data-path kernels (write, gather, attention)
 * directly on the mapped memory.  No KV byte passes through the daemon.
 *
 * Conventions
 *  - Every function returning int returns 0 (or a count where documented) on
 *    success and a negative errno on failure; ret_* out-parameters are left
 *    untouched on failure.  kvc_errmsg() gives a one-line explanation of the
 *    calling thread's last failure on that client.  A NULL client or pool
 *    handle gets -EINVAL and no message (there is no client to hold it):
 *    kvc_errmsg() still shows the one before.  The library never prints.
 *  - Thread safety: a kvc_client and its kvc_pools may be shared between
 *    threads.  Control requests on one client are serialized by an internal
 *    mutex (one new request at a time per client; allocs and lookups that
 *    timed out may still be in flight, see -ETIMEDOUT); data-path calls
 *    (kvc_write, kvc_gather, kvc_decode, kvc_extend and the workspace
 *    calls) take no lock and may run concurrently.  Use one client per thread for parallel control requests.
 *  - Destructors accept NULL.
 *  - Counts: kvc_alloc and kvc_free take n in 1..65536, kvc_publish and
 *    kvc_lookup n in 1..8192; n == 0 is -EINVAL, even where the call would
 *    do nothing (a lookup of an empty key chain, a free of 0 hits): callers
 *    skip those calls themselves.
 *  - fork(): nng, underneath, does not survive a fork; a child of a process
 *    that has used libkvclient must exec before it connects (a client is
 *    never carried across fork).  In such a child kvc_connect, and every
 *    control call on a client (or its pools) of the parent, is -ECHILD;
 *    kvc_detach and kvc_disconnect of the parent's do nothing (the parent's
 *    session stays the parent's).
 *
 * Error values used throughout:
 *  -ECONNREFUSED on connect: no daemon at that address
 *  -EPROTO     malformed reply, or the daemon rejected a malformed request
 *  -ENOENT     no pool of that name
 *  -ENOSPC     alloc: not enough free pages (the message says how many are free)
 *  -EPERM      free/publish of a page this session does not hold
 *  -ERANGE     a page id out of range
 *  -EINVAL     a bad argument (the message names it)
 *  -ENODEV     a GPU pool but no CUDA device with the pool's UUID in this process
 *              (attach), or the calling thread's CUDA device cannot be read
 *              (data path)
 *  -ESTALE     the daemon restarted since this client said HELLO: every call
 *              on the client and its pools fails so from then on; disconnect,
 *              connect and attach again (docs/operations.md section 4)
 *  -ESHUTDOWN  the daemon refused a request whose connection it was already
 *              closing (a stopping daemon closes its socket instead: see
 *              -ESTALE and -ETIMEDOUT)
 *  -ECHILD     a forked child calling on its parent's client, or connecting
 *              (see fork() above)
 *  -ETIMEDOUT  no reply within the client's timeout ($KVPOOL_TIMEOUT_MS,
 *              10 s by default).  The daemon may still carry the request
 *              out.  For kvc_alloc and kvc_lookup the library keeps
 *              waiting for that reply in the background (up to 16 such
 *              requests at once), and the first call of this client that
 *              sends a request after the reply has come frees the pages it
 *              hands out, before its own request.  Until then they are held
 *              (an alloc retried at once can still find the pool full); a
 *              reply that comes after kvc_disconnect, or that found 16
 *              waiting, is released by the disconnect.
 */
#ifndef KVCLIENT_H
#define KVCLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KVC_DEFAULT_SOCKET "ipc:///run/kvpool/kvpool.sock"
#define KVC_KEY_LEN 16

/* Storage dtypes of a pool (wire values: never renumber). */
enum kvc_dtype {
        KVC_DTYPE_BF16     = 0,
        KVC_DTYPE_FP16     = 1,
        KVC_DTYPE_FP8_E4M3 = 2,
        KVC_DTYPE_FP8_E5M2 = 3,
        KVC_DTYPE_FP4_E2M1 = 4,
        KVC_DTYPE__COUNT
};

/* Element types of caller tensors (inputs to write, outputs of gather, q/out
 * of attention). */
enum kvc_elem {
        KVC_ELEM_F32  = 0,
        KVC_ELEM_BF16 = 1,
        KVC_ELEM_F16  = 2,
};

enum kvc_backend { KVC_BACKEND_HOST = 0, KVC_BACKEND_CUDA = 1 };

typedef struct kvc_client kvc_client;
typedef struct kvc_pool kvc_pool;
typedef struct { uint8_t b[KVC_KEY_LEN]; } kvc_key;

/* Everything a worker needs to address a pool's memory.  Valid from
 * kvc_attach() until kvc_detach().  Offsets are bytes from base; layer l's K
 * array is base + k_offset + l*layer_stride, shaped
 * [num_pages][page_size][kv_heads][head_dim] (fp4: head_dim/2 bytes a head,
 * even element in the low nibble), and for fp4 its scale array is
 * base + ks_offset + l*layer_stride, shaped [num_pages][page_size][kv_heads][head_dim/16]
 * bytes (E8M0: value 2^(s-127)). */
struct kvc_pool_desc {
        char             name[32];
        enum kvc_dtype   dtype;
        enum kvc_backend backend;
        int              device;      /* this process's CUDA ordinal, -1 for host */
        uint32_t         pool_id;
        uint32_t         num_layers, kv_heads, head_dim, page_size, num_pages;
        void            *base;        /* host pointer or device pointer */
        uint64_t         bytes;       /* size of the mapping */
        uint64_t         layer_stride;
        uint64_t         k_offset, v_offset, ks_offset, vs_offset;
        uint64_t         page_bytes, token_bytes, head_bytes;
        uint64_t         scale_page_bytes, scale_token_bytes, scale_head_bytes;
        const float     *k_scale;     /* [num_layers], host memory; 1.0 unless fp8 */
        const float     *v_scale;     /* [num_layers] */
        char             scale_source[32];
};

/* ---- connection ---------------------------------------------------------- */

/* Connects to kvpoold at url (NULL: $KVPOOL_SOCKET, else KVC_DEFAULT_SOCKET)
 * and says hello.  name is shown in `kvpoolctl status` (truncated to 31
 * bytes).  tenant_salt (NULL = none) scopes prefix-cache keys: clients with
 * different salts never see each other's prefixes.  On success *ret_client
 * owns the connection; free it with kvc_disconnect().  No daemon at url
 * fails at once (-ECONNREFUSED); a daemon whose socket accepts
 * but which does not answer (stopped, hung) fails with -ETIMEDOUT only after
 * nng's connection handshake gives up, 10 s whatever $KVPOOL_TIMEOUT_MS
 * says (it bounds the replies to requests, not the handshake).
 * $KVPOOL_TIMEOUT_MS set to anything but milliseconds in 1..2^31-1 is
 * -EINVAL, named in kvc_errmsg(NULL). */
int kvc_connect(const char *url, const char *name, const kvc_key *tenant_salt, kvc_client **ret_client);

/* Detaches every pool still attached, says bye, closes.  The daemon releases
 * every page this client still holds.  Every kvc_pool of c is freed with it:
 * neither it nor its descriptor may be used (or detached) afterwards.  As
 * for the last kvc_detach, every call on c and its pools must have returned
 * and their CUDA work completed. */
void kvc_disconnect(kvc_client *c);

/* The calling thread's last error message on c ("" if none).  Valid until the
 * thread's next call on c.  kvc_errmsg(NULL) is the calling thread's last
 * kvc_connect() failure (there is no client to hold it).  A thread keeps
 * messages for 8 clients (kvc_connect counting as one), each in the slot its
 * first failure on the thread took; when a 9th client fails, the slots are
 * reused in the order they were first taken, and a client whose slot went
 * to another reads "" (a string returned for it earlier then holds the
 * other's message). */
const char *kvc_errmsg(const kvc_client *c);

/* Daemon status as one JSON document (the same as `kvpoolctl status --json`).
 * *ret_json is malloc'ed; free() it. */
int kvc_status_json(kvc_client *c, char **ret_json);
/* Prometheus text exposition (the same as GET /metrics). free() it. */
int kvc_metrics_text(kvc_client *c, char **ret_text);

/* ---- pools ------------------------------------------------------------------ */

/* Attaches to pool `name` and maps its memory.  A process maps a pool once:
 * attaching twice to the same pool on one client returns the same kvc_pool
 * without a request to the daemon, and each kvc_attach needs its own
 * kvc_detach.  A CUDA pool whose IPC handle cannot be opened gives -ESTALE
 * where its memory is gone or out of reach (the daemon restarted since it
 * answered, or this process is in another pid namespace than kvpoold's: the
 * message names both) and CUDA's own errno otherwise (-ENOMEM, -EINVAL,
 * -EIO); either way the client stays usable, and nothing is attached. */
int kvc_attach(kvc_client *c, const char *name, kvc_pool **ret_pool);
/* Undoes one kvc_attach; the last unmaps the pool.  Pages still held stay
 * held until free or disconnect.  Before the last, every call on the pool
 * has returned and, on a CUDA pool, the work those calls queued has
 * completed (synchronize their streams; graphs that captured them are not
 * replayed again): the mapping may be closed at once, and
 * cudaIpcCloseMemHandle is documented to unmap, not to wait for kernels. */
void kvc_detach(kvc_pool *p);
const struct kvc_pool_desc *kvc_pool_get_desc(const kvc_pool *p);

/* Allocates n pages, all or nothing, into ret_pages[n].  On -ETIMEDOUT the
 * daemon may still hand them out; see the conventions above for when they
 * are freed. */
int kvc_alloc(kvc_pool *p, uint32_t n, int32_t *ret_pages);
/* Releases this session's reference on n pages.  All or nothing: if one page
 * is not held by this session nothing is freed (-EPERM). */
int kvc_free(kvc_pool *p, uint32_t n, const int32_t *pages);

/* ---- prefix cache ------------------------------------------------------------ */

/* Publishes n held, fully written pages under keys.  ret_dup (optional, [n])
 * gets 1 where page i was not stored: its key was already published (the key
 * keeps its first page) or the page is already published under another key.
 * Returns the number of pages newly stored. */
int kvc_publish(kvc_pool *p, uint32_t n, const int32_t *pages, const kvc_key *keys, uint8_t *ret_dup);
/* Looks up keys[0..n) and returns the longest leading run that is cached:
 * ret_pages[0..hits) are now also held by this session.  Returns hits (>= 0). */
int kvc_lookup(kvc_pool *p, uint32_t n, const kvc_key *keys, int32_t *ret_pages);

/* Drops the prefix keys of pool `name`: every tenant's when c has no tenant
 * salt, else c's tenant's only.  For a change of model weights, or of
 * anything else the keys do not cover, which makes the cached KV wrong;
 * stop the old model's engines first (docs/prefix-cache.md).  No lookup
 * finds those pages again.  Idle cached pages become free; held pages stay
 * held by their holders, who may keep reading them, and become free when
 * released.  The name of a spec expanded over tp_size or devices resets
 * each of its pools.  Needs no attach (`kvpoolctl reset-prefixes`).
 * *ret_keys (may be NULL) gets the number of keys dropped.  -ENOENT: no
 * such pool. */
int kvc_reset_prefixes(kvc_client *c, const char *name, uint32_t *ret_keys);

/* Chained block key: XXH3-128 (seed 0) over
 *   parent key (16 bytes; all zero for the first block) ||
 *   tokens as little-endian int32 ||
 *   extra bytes (optional, e.g. a LoRA id or image hash),
 * written as the 128-bit hash's high 64 bits little-endian then the low 64
 * bits little-endian.  docs/prefix-cache.md gives a Python equivalent.
 * Returns 0, or -EINVAL with *ret_key untouched when ret_key is NULL, tokens
 * is NULL with n_tokens > 0 or extra is NULL with extra_len > 0 (a key of
 * data that is not there would equal the key of an empty block or of no
 * extra, and share their pages).  Pure and thread safe; it records no
 * kvc_errmsg (there is no client). */
int kvc_block_key(const kvc_key *parent, const int32_t *tokens, size_t n_tokens,
                  const void *extra, size_t extra_len, kvc_key *ret_key);

/* ---- data path --------------------------------------------------------------
 * On a CUDA pool every pointer below but the host copies (*_host) is
 * memory the pool's device reads: device memory of that device (or managed
 * memory, or pinned host memory mapped at its own address, as
 * cudaMallocHost's is; plain host memory only where the device reads
 * pageable memory), checked with
 * cudaPointerGetAttributes before anything runs: -EINVAL naming the
 * argument and where it lives, as for a host copy that is device memory.
 * The call is asynchronous on `stream` (a cudaStream_t; NULL = the
 * default stream).  On a
 * host pool every pointer is host memory, the call runs the CPU reference
 * synchronously and stream is ignored.  A CUDA pool's calls run on the
 * calling thread's current device, which must be the pool's
 * (kvc_pool_desc.device; -EINVAL otherwise, before anything runs): a
 * process with pools on several GPUs calls cudaSetDevice before each pool's
 * calls.  The stream must be one of that device too: another device's is
 * refused by the launch itself, -EINVAL with CUDA's "invalid resource
 * handle", nothing run.  Arguments are checked before any kernel runs;
 * device-resident indices (slots, page tables) are range-checked in the
 * kernel, which skips out-of-range entries. */

struct kvc_write_args {
        const void    *k;            /* [T, kv_heads, head_dim], elem, rows k_row_stride apart */
        const void    *v;            /* [T, kv_heads, head_dim], elem, rows v_row_stride apart */
        enum kvc_elem  elem;
        int64_t        k_row_stride; /* elements between consecutive tokens (>= kv_heads*head_dim) */
        int64_t        v_row_stride;
        const int64_t *slots;        /* [T]: page*page_size + offset, -1 = skip (a skipped
                                        token's k and v rows may still be read: all T rows
                                        must be readable) */
        uint32_t       num_tokens;   /* T */
        uint32_t       layer;
};
/* Quantizes K and V of T tokens into the pool (fp8: x / layer scale, fp4:
 * per-16-element block scale, bf16/fp16: conversion). */
int kvc_write(kvc_pool *p, const struct kvc_write_args *a, void *stream);

struct kvc_gather_args {
        const int32_t *pages;     /* [n_pages] */
        uint32_t       n_pages;
        uint32_t       layer;
        void          *k_out;     /* [n_pages*page_size, kv_heads, head_dim], elem */
        void          *v_out;     /* same */
        enum kvc_elem  elem;      /* KVC_ELEM_F32 or KVC_ELEM_BF16 */
};
/* Dequantizes pages of one layer into dense buffers (scales applied). */
int kvc_gather(kvc_pool *p, const struct kvc_gather_args *a, void *stream);

struct kvc_decode_args {
        const void    *q;          /* [B, Hq, D], elem (BF16 or F16) */
        void          *out;        /* [B, Hq, D], elem */
        enum kvc_elem  elem;
        const int32_t *page_table; /* [B, max_pages], device memory on a CUDA pool; all
                                      B*max_pages entries may be read (NULL only
                                      with max_pages 0) */
        uint32_t       max_pages;  /* max_pages * page_size <= 2^31-1 */
        const int32_t *seq_lens;   /* [B], device memory on a CUDA pool */
        const int32_t *seq_lens_host; /* [B], host copy (required on CUDA: used to check
                                         lengths and plan the split before launch) */
        uint32_t       batch;      /* B */
        uint32_t       num_q_heads;/* Hq, a multiple of kv_heads */
        float          sm_scale;   /* softmax scale, e.g. 1/sqrt(D) */
        uint32_t       layer;
};
/* Paged decode attention: one query token per sequence over its cached K/V. */
int kvc_decode(kvc_pool *p, const struct kvc_decode_args *a, void *stream);

struct kvc_extend_args {
        const void    *q;            /* [total_q, Hq, D], elem */
        void          *out;          /* [total_q, Hq, D], elem */
        enum kvc_elem  elem;
        const int32_t *qo_indptr;    /* [B+1], device on CUDA: sequence b's queries are rows [indptr[b], indptr[b+1]) */
        const int32_t *qo_indptr_host; /* [B+1], host copy */
        const int32_t *page_table;   /* [B, max_pages], as for kvc_decode */
        uint32_t       max_pages;
        const int32_t *seq_lens;     /* [B] total KV length, new tokens included (already written) */
        const int32_t *seq_lens_host;/* [B] host copy */
        uint32_t       batch;
        uint32_t       num_q_heads;
        float          sm_scale;
        uint32_t       layer;
};
/* Extend (chunked-prefill) attention: query i of sequence b sits at position
 * seq_len[b] - n_b + i and attends causally to positions <= its own.  On a
 * CUDA pool a call whose sequences average at least 128 query vectors (new
 * rows x q heads per kv head) with one sequence, 96 with three, 80 with two
 * or with four or more runs a tiled kernel that reads and dequantizes each
 * key once per 64 to 256 of them, unless the decode kernel would finish it
 * in a short launch (few keys and CTAs); fewer rows run the decode kernel,
 * once per 8 / G rows of a sequence where a kv head has G <= 4 q heads,
 * else once per row (docs/benchmarks.md, "Extend attention"). */
int kvc_extend(kvc_pool *p, const struct kvc_extend_args *a, void *stream);

/* A caller's workspace for decode and extend.  On a CUDA pool a call whose
 * keys are split over the GPU (flash-decoding: few rows, long sequences)
 * writes partial results, rows * Hq * splits * (head_dim + 2) floats, and
 * merges them in a second kernel.  kvc_decode and kvc_extend take that
 * scratch from a stream-ordered pool of the library's own
 * (cudaMallocFromPoolAsync on `stream`, freed after the merge);
 * kvc_decode_ws and kvc_extend_ws put it in the caller's workspace instead,
 * so that a captured call adds only kernel nodes to its graph (below, "CUDA
 * graphs"), as serving engines hand FlashInfer a float workspace buffer.
 *
 * kvc_decode_workspace / kvc_extend_workspace: *ret_bytes gets the bytes
 * of workspace the call with the same arguments needs, eagerly and under
 * stream capture alike: the query plans the split twice, as an eager call
 * plans it (for seq_lens_host) and as a captured one (for the table's
 * capacity, max_pages * page_size keys a sequence: "CUDA graphs" below),
 * and answers with the larger need, each 0 where that plan does not split.
 * A workspace of that size serves the call on any stream, captured or not,
 * so a graph's workspace is sized and allocated before its capture begins
 * (no cudaMalloc may run inside a global-mode capture), with no capture to
 * size it.  0 when neither plan splits, and always 0 on a host pool.  The
 * answer depends on the batch, the rows, the q heads, the lengths
 * (seq_lens_host), the capacity (max_pages), the pool and the GPU, and not
 * monotonically (fewer rows may split into more pieces): ask for each
 * shape of call and keep the largest answer.  Takes no stream, launches
 * nothing and allocates nothing.  Errors: the call's own, with its
 * messages, and -EINVAL for a NULL ret_bytes; *ret_bytes untouched.
 *
 * kvc_decode_ws / kvc_extend_ws: kvc_decode / kvc_extend with workspace,
 * workspace_bytes of device memory on the pool's device, 16-byte aligned.
 * workspace NULL with workspace_bytes 0 is the library's own scratch:
 * kvc_decode(p, a, s) is kvc_decode_ws(p, a, NULL, 0, s).  Besides the
 * call's errors, all before any launch: -EINVAL naming `workspace` when it
 * is NULL with workspace_bytes > 0, not 16-byte aligned, or (CUDA, a call
 * with rows to compute: one of batch 0 or no rows returns 0 at once) not
 * device memory of the pool's device; -ENOSPC when the call splits and
 * workspace_bytes is below what it needs as planned on `stream` (eagerly
 * or captured; at most the size query's answer; the message gives both
 * sizes; a call that does not split takes any workspace, even of 0
 * bytes).  A host pool checks the workspace's shape (NULL with bytes,
 * alignment) like a CUDA pool and otherwise ignores it: the CPU reference
 * needs none.
 * The workspace's contents need no initialisation and mean nothing after
 * the call.  It is the call's until the stream has run it: it must not be
 * used by another call running at the same time (two streams, or two
 * graphs that may replay at once, need two workspaces); calls one after
 * another on one stream may share it. */
int kvc_decode_workspace(kvc_pool *p, const struct kvc_decode_args *a, size_t *ret_bytes);
int kvc_extend_workspace(kvc_pool *p, const struct kvc_extend_args *a, size_t *ret_bytes);
int kvc_decode_ws(kvc_pool *p, const struct kvc_decode_args *a, void *workspace, size_t workspace_bytes,
                  void *stream);
int kvc_extend_ws(kvc_pool *p, const struct kvc_extend_args *a, void *workspace, size_t workspace_bytes,
                  void *stream);

/* CUDA graphs.  Every data-path call may be captured into a CUDA graph
 * (stream capture, any capture mode, also as the process's first call:
 * the kernels are then loaded during the capture, which the driver tested,
 * 580.159, allows; where a driver refuses it, make one eager call first) and
 * the graph replayed with other contents in the same buffers.  kvc_write
 * and kvc_gather plan nothing on the host.  kvc_decode and kvc_extend plan
 * the split of the keys over the GPU before the launch: under capture they
 * plan it for the table's capacity, max_pages * page_size keys a sequence,
 * not for seq_lens_host, so a replay may hold any lengths up to that in
 * seq_lens (and any pages in page_table); an extend row whose position falls
 * before its sequence's start (seq_lens[b] below the sequence's new rows,
 * which eager calls refuse) sees no key and gets zeros.  kvc_extend chooses
 * its kernel, warps and split from the capture's qo_indptr_host, but the
 * grid it launches holds every division of the same total of new rows
 * (qo_indptr[B]) among the same batch, and the kernels find a row's
 * sequence in the device copy: a replay must keep the batch and the total,
 * and may divide the rows otherwise (a sequence with none included),
 * correctly if perhaps more slowly.
 * A replay whose lengths are far below the capacity launches
 * CTAs that find no keys (each still writes an empty partial for the
 * reduction): size max_pages for the longest sequence the graph serves
 * (docs/benchmarks.md, "Decode in a CUDA graph").
 * A replay runs none of the calls' host-side checks: the graph keeps the
 * pool's mapping, the layer's fp8 scales and every pointer as captured.
 * Replay it only while the pool stays attached and the client is not stale
 * (-ESTALE after a kvpoold restart); after a re-attach, capture again.
 * Scratch: a captured kvc_decode or kvc_extend whose keys are split puts a
 * memory allocation and a free node for its scratch into the graph, which
 * CUDA then allows one instantiation at a time and neither clones nor takes
 * as a child graph node.  Captured with a workspace instead (kvc_decode_ws,
 * kvc_extend_ws), the graph has kernel nodes only: it may be cloned,
 * instantiated several times and embedded as a child graph.  Size the
 * workspace with kvc_decode_workspace / kvc_extend_workspace and allocate
 * it before the capture begins: the answer covers the captured call (its
 * plan for the capacity) as well as the eager one.  The graph keeps the
 * workspace's address: it must stay allocated as long as the graph may
 * replay, and instances that may replay at the same time need workspaces
 * of their own (capture once per workspace). */

/* Names: "bf16", "fp16", "fp8_e4m3", "fp8_e5m2", "fp4_e2m1"; NULL if unknown. */
const char *kvc_dtype_name(enum kvc_dtype d);
/* Parses a dtype name; returns 0 or -EINVAL. */
int kvc_dtype_parse(const char *name, enum kvc_dtype *ret_dtype);

#ifdef __cplusplus
}
#endif
#endif
