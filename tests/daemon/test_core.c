/* test_core.c - the daemon's session table (against a model) and pool
 * creation on the host backend (layout, shm object, cleanup, errors). */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>
#include "config.h"
#include "pages.h"
#include "pool.h"
#include "session.h"

/* ---- session table ------------------------------------------------------------ */

#define MODEL_N 4096

Test(sessions, random_against_model)
{
        struct kvd_sessions *t;
        static uint32_t      sid_of[MODEL_N]; /* 0 = absent */
        uint32_t             live = 0, last_sid = 0;

        cr_assert_eq(kvd_sessions_new(&t), 0);
        srand(12345);
        for (int step = 0; step < 200000; step++) {
                /* pipe ids in a small range so that adds and removes collide;
                 * ids removed are not reused (nng's are not), so use fresh
                 * ids above MODEL_N for adds after a remove */
                uint32_t            k = (uint32_t)rand() % MODEL_N;
                uint32_t            pipe = k + 1;
                struct kvd_session *s;
                int                 op = rand() % 3;

                if (op == 0 && !sid_of[k]) {
                        int r = kvd_sessions_add(t, pipe, &s);
                        if (r == -ESTALE)
                                continue; /* removed recently: correctly refused */
                        cr_assert_eq(r, 0);
                        cr_assert_eq(s->pipe_id, pipe);
                        cr_assert_gt(s->id, last_sid, "session ids must increase");
                        last_sid = s->id;
                        sid_of[k] = s->id;
                        live++;
                } else if (op == 1 && sid_of[k]) {
                        s = kvd_sessions_remove(t, pipe);
                        cr_assert_not_null(s);
                        cr_assert_eq(s->id, sid_of[k]);
                        free(s);
                        sid_of[k] = 0;
                        live--;
                } else {
                        s = kvd_sessions_find(t, pipe);
                        if (sid_of[k]) {
                                cr_assert_not_null(s, "pipe %u lost", pipe);
                                cr_assert_eq(s->id, sid_of[k]);
                        } else {
                                cr_assert_null(s, "pipe %u found after removal", pipe);
                        }
                }
                cr_assert_eq(kvd_sessions_count(t), live);
        }
        /* iteration visits every live session once */
        {
                uint32_t cursor = 0, seen = 0;
                const struct kvd_session *s;

                while ((s = kvd_sessions_next(t, &cursor))) {
                        cr_assert_eq(sid_of[s->pipe_id - 1], s->id);
                        seen++;
                }
                cr_assert_eq(seen, live);
        }
        kvd_sessions_free(t);
}

Test(sessions, add_is_idempotent_and_late_messages_do_not_resurrect)
{
        struct kvd_sessions *t;
        struct kvd_session  *a, *b;

        cr_assert_eq(kvd_sessions_new(&t), 0);
        cr_assert_eq(kvd_sessions_add(t, 77, &a), 0);
        cr_assert_eq(kvd_sessions_add(t, 77, &b), 0);
        cr_assert_eq(a, b);
        cr_assert_eq(a->pid, -1);
        cr_assert_eq(a->uid, -1);
        cr_assert_eq(a->conn_fd, -1, "no connection until the reaper finds it");
        free(kvd_sessions_remove(t, 77));
        cr_assert_eq(kvd_sessions_add(t, 77, &b), -ESTALE);
        cr_assert_null(kvd_sessions_remove(t, 78));
        cr_assert_eq(kvd_sessions_count(t), 0);
        kvd_sessions_free(t);
        kvd_sessions_free(NULL);
}

/* The counter wraps after 2^32 - 2 connections (reached here with the test
 * hook): a new session must not get the id of a live one, or it would
 * share that session's page references in the page table, free them, and
 * drop them all when it closes. */
Test(sessions, ids_skip_live_sessions_after_the_counter_wraps)
{
        struct kvd_sessions *t;
        struct kvd_session  *a, *b, *c, *d, *e, *f;
        struct kvd_pages    *pg;
        uint32_t             ids[4];

        cr_assert_eq(kvd_sessions_new(&t), 0);
        cr_assert_eq(kvd_pages_new(16, NULL, &pg), 0);
        cr_assert_eq(kvd_sessions_add(t, 10, &a), 0); /* a long-lived worker */
        cr_assert_eq(kvd_sessions_add(t, 11, &b), 0);
        cr_assert_eq(a->id, 1);
        cr_assert_eq(b->id, 2);
        cr_assert_eq(kvd_pages_alloc(pg, a->id, 4, ids), 0);
        kvd_sessions_set_next_id(t, UINT32_MAX - 2); /* 2^32 - 5 connections later */
        cr_assert_eq(kvd_sessions_add(t, 12, &c), 0);
        cr_assert_eq(kvd_sessions_add(t, 13, &d), 0);
        cr_assert_eq(c->id, UINT32_MAX - 2);
        cr_assert_eq(d->id, UINT32_MAX - 1, "UINT32_MAX marks an unused key in the page table");
        cr_assert_eq(kvd_sessions_add(t, 14, &e), 0);
        cr_assert_eq(e->id, 3, "after the wrap, ids 1 and 2 are live and must be skipped, got %u", e->id);
        /* the new session cannot free the worker's pages, and its close
         * leaves them held */
        cr_assert_lt(kvd_pages_release(pg, e->id, 4, ids), 0);
        kvd_pages_drop_session(pg, e->id);
        free(kvd_sessions_remove(t, 14));
        cr_assert_eq(kvd_pages_session_count(pg, a->id), 4);
        /* a closed session's id may be taken again: it holds nothing */
        free(kvd_sessions_remove(t, 11));
        kvd_sessions_set_next_id(t, 1);
        cr_assert_eq(kvd_sessions_add(t, 15, &f), 0);
        cr_assert_eq(f->id, 2, "1 is live, 2 was closed: got %u", f->id);
        kvd_pages_free(pg);
        kvd_sessions_free(t);
}

/* ---- pools on the host backend --------------------------------------------------- */

static void spec(struct kvd_pool_spec *s, const char *name, enum kvc_dtype d, uint64_t bytes)
{
        kvd_config_default_pool(s);
        /* short names and a pid: well inside the name field (the test's
         * pools must not collide with a parallel run's) */
        snprintf(s->name, sizeof(s->name), "%.20s%d", name, (int)getpid());
        s->geom.dtype = d;
        s->geom.num_layers = 3;
        s->geom.kv_heads = 2;
        s->geom.head_dim = 64;
        s->geom.page_size = 16;
        s->capacity_bytes = bytes;
        strcpy(s->backend, "host");
}

Test(pool, host_pool_every_dtype)
{
        for (int d = 0; d < KVC_DTYPE__COUNT; d++) {
                struct kvd_pool_spec s;
                struct kvd_pool     *p = NULL;
                struct kv_attach_rep rep;
                struct kv_layout     L;
                struct stat          sb;
                char                 err[512], path[128];

                spec(&s, "t", (enum kvc_dtype)d, 6u << 20);
                cr_assert_eq(kvd_pool_new(&s, 5, NULL, &p, err, sizeof(err)), 0, "%s", err);
                cr_assert_eq(p->id, 5);
                cr_assert_leq(p->layout.alloc_bytes, 6u << 20);
                cr_assert_eq(kv_layout_init(&s.geom, p->layout.num_pages, &L), 0);
                cr_assert_eq(memcmp(&L, &p->layout, sizeof(L)), 0, "layout differs from kv_layout_init");
                kvd_pool_describe(p, &rep);
                cr_assert_eq(rep.pool_id, 5);
                cr_assert_eq(rep.dtype, (uint32_t)d);
                cr_assert_eq(rep.backend, KV_BACKEND_HOST);
                cr_assert_eq(rep.num_pages, L.num_pages);
                cr_assert_eq(rep.pool_bytes, L.alloc_bytes);
                cr_assert_eq(rep.k_offset, L.k_offset);
                cr_assert_eq(rep.vs_offset, L.vs_offset);
                cr_assert_eq(rep.layer_stride, L.layer_stride);
                cr_assert_neq(rep.pool_epoch, 0);
                cr_assert_str_eq(rep.scale_source, "constant");
                snprintf(path, sizeof(path), "/dev/shm%s", rep.shm_name);
                cr_assert_eq(stat(path, &sb), 0, "%s missing", path);
                cr_assert_eq(sb.st_mode & 0777, 0600);
                cr_assert_eq((uint64_t)sb.st_size, L.alloc_bytes);
                /* zeroed, and mapped by a second mapping like a worker would */
                {
                        int fd = shm_open(rep.shm_name, O_RDWR, 0);
                        uint8_t *m;

                        cr_assert(fd >= 0);
                        m = mmap(NULL, rep.pool_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
                        cr_assert_neq(m, MAP_FAILED);
                        for (uint64_t i = 0; i < rep.pool_bytes; i += 4093)
                                cr_assert_eq(m[i], 0);
                        m[rep.k_offset] = 0x5A;
                        cr_assert_eq(((uint8_t *)p->region.base)[rep.k_offset], 0x5A, "not the same memory");
                        munmap(m, rep.pool_bytes);
                        close(fd);
                }
                kvd_pool_free(p);
                cr_assert_neq(stat(path, &sb), 0, "%s left after kvd_pool_free", path);
                kvd_pool_spec_fini(&s);
        }
        kvd_pool_free(NULL);
}

Test(pool, refusals_leave_nothing)
{
        struct kvd_pool_spec s;
        struct kvd_pool     *p = (struct kvd_pool *)0x1;
        char                 err[512], path[128];
        struct stat          sb;

        /* too small for one page */
        spec(&s, "small", KVC_DTYPE_BF16, 4096);
        cr_assert_neq(kvd_pool_new(&s, 0, NULL, &p, err, sizeof(err)), 0);
        cr_assert(strstr(err, s.name) && strstr(err, "page"), "%s", err);
        cr_assert_eq(p, (struct kvd_pool *)0x1, "ret touched on failure");

        /* a fraction of GPU memory on a host pool */
        spec(&s, "frac", KVC_DTYPE_BF16, 0);
        s.capacity_fraction = 0.5;
        cr_assert_neq(kvd_pool_new(&s, 0, NULL, &p, err, sizeof(err)), 0);
        cr_assert(strstr(err, "fraction"), "%s", err);

        /* bad scales: refused before any memory is taken */
        spec(&s, "scl", KVC_DTYPE_FP8_E4M3, 4u << 20);
        s.scales_cfg = cJSON_Parse("{\"source\": \"json\", \"path\": \"/nonexistent/kvtest-scales.json\"}");
        cr_assert_neq(kvd_pool_new(&s, 0, NULL, &p, err, sizeof(err)), 0);
        cr_assert(strstr(err, "kvtest-scales.json"), "%s", err);
        snprintf(path, sizeof(path), "/dev/shm/kvpool.%d.%s", (int)getpid(), s.name);
        cr_assert_neq(stat(path, &sb), 0, "%s left after a failed pool", path);
        kvd_pool_spec_fini(&s);

        /* cuda asked for in a build without it: a clear error */
        if (!kvd_backend_cuda) {
                spec(&s, "gpu", KVC_DTYPE_BF16, 4u << 20);
                strcpy(s.backend, "cuda");
                cr_assert_eq(kvd_pool_new(&s, 0, NULL, &p, err, sizeof(err)), -ENODEV);
                cr_assert(strstr(err, "without CUDA"), "%s", err);
        }
}

/* More pages than a page table holds (2^30, here of 18 bytes each): refused
 * before any memory is reserved.  The file-size limit keeps a regression
 * from reserving 20 GiB of /dev/shm (tmpfs fallocate fails with EFBIG). */
Test(pool, more_pages_than_a_page_table_holds)
{
        struct kvd_pool_spec s;
        struct kvd_pool     *p = NULL;
        struct rlimit        rl = { 64u << 20, 64u << 20 };
        char                 err[512], path[128];
        struct stat          sb;

        signal(SIGXFSZ, SIG_IGN);
        cr_assert_eq(setrlimit(RLIMIT_FSIZE, &rl), 0);
        spec(&s, "huge", KVC_DTYPE_FP4_E2M1, 20ull << 30);
        s.geom.num_layers = 1;
        s.geom.kv_heads = 1;
        s.geom.head_dim = 16;
        s.geom.page_size = 1;
        cr_assert_eq(kvd_pool_new(&s, 0, NULL, &p, err, sizeof(err)), -EINVAL, "%s", err);
        cr_assert(strstr(err, s.name) && strstr(err, "pages"), "%s", err);
        cr_assert_null(p);
        snprintf(path, sizeof(path), "/dev/shm/kvpool.%d.%s", (int)getpid(), s.name);
        cr_assert_neq(stat(path, &sb), 0, "%s left after a failed pool", path);
        kvd_pool_spec_fini(&s);
}

/* Scales loaded by the caller (kvpoold loads every pool's first) move into
 * the pool; on a failure they are freed; either way the caller's struct is
 * left empty. */
Test(pool, takes_over_loaded_scales)
{
        struct kvd_pool_spec s;
        struct kvd_pool     *p = NULL;
        struct kvd_scales    sc;
        char                 err[512];

        /* the spec itself has no scales (constant 1): a pool that loaded
         * its own instead of taking the caller's would show 1, not 0.5 */
        cJSON *cfg = cJSON_Parse("{\"source\": \"constant\", \"k\": 0.5, \"v\": 0.25}");

        spec(&s, "sc", KVC_DTYPE_FP8_E4M3, 4u << 20);
        cr_assert_not_null(cfg);
        cr_assert_null(s.scales_cfg);
        cr_assert_eq(kvd_scales_load(cfg, s.geom.num_layers, "fp8_e4m3", &sc, err, sizeof(err)), 0, "%s", err);
        cr_assert_eq(kvd_pool_new(&s, 0, &sc, &p, err, sizeof(err)), 0, "%s", err);
        cr_assert_null(sc.k, "the caller's scales were not taken over");
        cr_assert_eq(p->scales.num_layers, s.geom.num_layers);
        for (uint32_t l = 0; l < s.geom.num_layers; l++)
                cr_assert(p->scales.k[l] == 0.5f && p->scales.v[l] == 0.25f, "layer %u: %g %g", l, p->scales.k[l],
                          p->scales.v[l]);
        kvd_pool_free(p);

        /* scales of another layer count: refused, taken (and freed) all
         * the same */
        cr_assert_eq(kvd_scales_load(cfg, s.geom.num_layers + 1, "fp8_e4m3", &sc, err, sizeof(err)), 0, "%s", err);
        p = NULL;
        cr_assert_eq(kvd_pool_new(&s, 0, &sc, &p, err, sizeof(err)), -EINVAL);
        cr_assert(strstr(err, "layers"), "%s", err);
        cr_assert_null(p);
        cr_assert_null(sc.k, "the scales of a refused pool were left to the caller");

        /* a geometry kv_geom_check refuses: nothing is made, the scales go */
        cr_assert_eq(kvd_scales_load(cfg, s.geom.num_layers, "fp8_e4m3", &sc, err, sizeof(err)), 0, "%s", err);
        s.geom.head_dim = 3;
        cr_assert_eq(kvd_pool_new(&s, 0, &sc, &p, err, sizeof(err)), -EINVAL);
        cr_assert_null(p);
        cr_assert_null(sc.k, "the scales of a refused pool were left to the caller");
        kvd_scales_fini(&sc); /* harmless on the emptied struct */
        cJSON_Delete(cfg);
        kvd_pool_spec_fini(&s);
}

Test(pool, same_name_twice_is_refused)
{
        struct kvd_pool_spec s;
        struct kvd_pool     *a, *b;
        char                 err[512];

        spec(&s, "dup", KVC_DTYPE_FP8_E4M3, 4u << 20);
        cr_assert_eq(kvd_pool_new(&s, 0, NULL, &a, err, sizeof(err)), 0, "%s", err);
        /* O_EXCL: the second object of the same name is not adopted */
        cr_assert_neq(kvd_pool_new(&s, 1, NULL, &b, err, sizeof(err)), 0);
        cr_assert(strstr(err, "shm_open"), "%s", err);
        kvd_pool_free(a);
        kvd_pool_spec_fini(&s);
}

/* ---- request handlers when the reply cannot be built ---------------------------- */

#include <dlfcn.h>
#include <pthread.h>
#include "server_int.h"

/* nng_msg_realloc, interposed for this test program (requests.c, linked in
 * statically, calls this one): above fail_above bytes it fails like nng out
 * of memory.  0 = never. */
static size_t fail_above;

int nng_msg_realloc(nng_msg *m, size_t sz)
{
        static int (*real)(nng_msg *, size_t);

        if (!real)
                real = (int (*)(nng_msg *, size_t))dlsym(RTLD_NEXT, "nng_msg_realloc");
        if (fail_above && sz > fail_above)
                return NNG_ENOMEM;
        return real(m, sz);
}

/* nng_pipe_get_addr, interposed the same way: requests.c asks it whether
 * nng still knows a request's pipe.  The tests' requests come on pipe 42,
 * which nng never made: it passes for an open connection (as a transport
 * without the option would answer); any other id gets the real answer. */
int nng_pipe_get_addr(nng_pipe p, const char *opt, nng_sockaddr *sa)
{
        static int (*real)(nng_pipe, const char *, nng_sockaddr *);

        if (!real)
                real = (int (*)(nng_pipe, const char *, nng_sockaddr *))dlsym(RTLD_NEXT, "nng_pipe_get_addr");
        if (nng_pipe_id(p) == 42)
                return NNG_ENOTSUP;
        return real(p, opt, sa);
}

static uint32_t req_pipe = 42; /* the pipe dispatch() puts on its requests */

/* Runs one request through kvd_requests_dispatch; returns the wire error
 * code of the reply (0 for a success reply, -1 for no reply at all). */
static int dispatch(struct kvd_server *s, const uint8_t *buf, int len, uint8_t *out, size_t outcap)
{
        struct kvd_req q = { 0 };
        struct kv_hdr  h;
        int            code;

        cr_assert_gt(len, 0);
        cr_assert_eq(nng_msg_alloc(&q.msg, 0), 0);
        cr_assert_eq(nng_msg_append(q.msg, buf, (size_t)len), 0);
        nng_msg_set_pipe(q.msg, (nng_pipe){ .id = req_pipe }); /* no such pipe: no peer credentials */
        kvd_requests_dispatch(s, &q);
        if (!q.ok) {
                nng_msg_free(q.msg);
                return -1;
        }
        cr_assert_eq(kv_hdr_decode(nng_msg_body(q.msg), nng_msg_len(q.msg), &h), 0);
        code = h.opcode == KV_OP_ERROR ? (int)kv_le32((const uint8_t *)nng_msg_body(q.msg) + KV_HDR_SIZE) : 0;
        cr_assert_eq(code != 0, q.code != 0, "q.code %u, reply code %d", q.code, code);
        if (out)
                memcpy(out, nng_msg_body(q.msg), nng_msg_len(q.msg) < outcap ? nng_msg_len(q.msg) : outcap);
        nng_msg_free(q.msg);
        return code;
}

/* All or nothing (docs/protocol.md §3): an ALLOC or LOOKUP whose page list
 * cannot be put into the reply must not leave the session holding pages the
 * client never learns of. */
Test(requests, pages_of_a_failed_reply_are_given_back)
{
        struct kvd_pool_spec s;
        struct kvd_pool     *p;
        struct kvd_server    srv;
        struct kvd_session  *ss;
        uint8_t              buf[4096], rep[4096];
        uint32_t             ids[200];
        uint8_t              keys[200][KV_KEY_LEN];
        char                 err[512];

        spec(&s, "req", KVC_DTYPE_BF16, 16u << 20);
        cr_assert_eq(kvd_pool_new(&s, 0, NULL, &p, err, sizeof(err)), 0, "%s", err);
        cr_assert_geq(p->layout.num_pages, 400, "the ALLOC below must not evict");
        memset(&srv, 0, sizeof(srv));
        pthread_mutex_init(&srv.lock, NULL);
        srv.pools = &p;
        srv.num_pools = 1;
        srv.ids = malloc(KV_MAX_PAGES_REQ * sizeof(*srv.ids));
        srv.keys = malloc(KV_MAX_KEYS_REQ * sizeof(*srv.keys));
        srv.results = malloc(KV_MAX_KEYS_REQ);
        cr_assert(srv.ids && srv.keys && srv.results);
        cr_assert_eq(kvd_sessions_new(&srv.sessions), 0);

        struct kv_hello_req hello = { .proto_version = KV_PROTO_VERSION, .name = "t" };
        struct kv_attach_req att;
        snprintf(att.name, sizeof(att.name), "%s", p->name);
        cr_assert_eq(dispatch(&srv, buf, kv_enc_hello_req(buf, sizeof(buf), 1, &hello), NULL, 0), 0);
        cr_assert_eq(dispatch(&srv, buf, kv_enc_attach_req(buf, sizeof(buf), 2, &att), NULL, 0), 0);
        cr_assert_not_null(ss = kvd_sessions_find(srv.sessions, 42));

        /* 200 cached pages, then nobody holds them */
        struct kv_alloc_req a = { 0, 200 };
        cr_assert_eq(dispatch(&srv, buf, kv_enc_alloc_req(buf, sizeof(buf), 3, &a), rep, sizeof(rep)), 0);
        for (uint32_t i = 0; i < 200; i++) {
                ids[i] = kv_le32(rep + KV_HDR_SIZE + 4 + 4 * i);
                memset(keys[i], 0, KV_KEY_LEN);
                memcpy(keys[i], &i, sizeof(i));
        }
        {
                static uint8_t big[8 + 200 * 20 + 64];
                int n = kv_enc_publish_req(big, sizeof(big), 4, 0, 200, ids, (const uint8_t (*)[KV_KEY_LEN])keys);
                cr_assert_eq(dispatch(&srv, big, n, NULL, 0), 0);
                n = kv_enc_pages(big, sizeof(big), KV_OP_FREE, 5, 0, 200, ids);
                cr_assert_eq(dispatch(&srv, big, n, NULL, 0), 0);
        }
        cr_assert_eq(kvd_pages_session_count(p->pages, ss->id), 0);

        /* page lists of 200 ids no longer fit; error replies (536 bytes) do */
        fail_above = 600;
        cr_assert_eq(dispatch(&srv, buf, kv_enc_alloc_req(buf, sizeof(buf), 6, &a), NULL, 0), KV_E_INTERNAL);
        cr_assert_eq(kvd_pages_session_count(p->pages, ss->id), 0, "ALLOC without a reply kept %u references",
                     kvd_pages_session_count(p->pages, ss->id));
        {
                static uint8_t big[8 + 200 * 16 + 64];
                int n = kv_enc_lookup_req(big, sizeof(big), 7, 0, 200, (const uint8_t (*)[KV_KEY_LEN])keys);
                cr_assert_eq(dispatch(&srv, big, n, NULL, 0), KV_E_INTERNAL);
        }
        cr_assert_eq(kvd_pages_session_count(p->pages, ss->id), 0, "LOOKUP without a reply kept %u references",
                     kvd_pages_session_count(p->pages, ss->id));
        cr_assert_eq(kvd_pages_check(p->pages), 0);
        fail_above = 0;

        kvd_sessions_free(srv.sessions);
        free(srv.ids);
        free(srv.keys);
        free(srv.results);
        pthread_mutex_destroy(&srv.lock);
        kvd_pool_free(p);
        kvd_pool_spec_fini(&s);
}

/* A request that waited in nng's queue while its connection closed and
 * more than the session table's ring of 256 closes went by: nng no longer
 * knows its pipe, and no session may be made for it (none of nng's close
 * events would end it, and pages it allocated would be held for good). */
Test(requests, a_forgotten_connection_gets_no_session)
{
        struct kvd_server srv;
        uint8_t           buf[256];
        nng_sockaddr      sa;

        /* the premise, from nng itself: an id it never made (or forgot) */
        cr_assert_eq(((int (*)(nng_pipe, const char *, nng_sockaddr *))dlsym(RTLD_NEXT, "nng_pipe_get_addr"))(
                             (nng_pipe){ .id = 0x7ffffff0 }, NNG_OPT_LOCADDR, &sa),
                     NNG_ENOENT);
        memset(&srv, 0, sizeof(srv));
        pthread_mutex_init(&srv.lock, NULL);
        cr_assert_eq(kvd_sessions_new(&srv.sessions), 0);
        struct kv_hello_req hello = { .proto_version = KV_PROTO_VERSION, .name = "late" };
        req_pipe = 0x7ffffff0;
        cr_assert_eq(dispatch(&srv, buf, kv_enc_hello_req(buf, sizeof(buf), 1, &hello), NULL, 0), KV_E_SHUTDOWN);
        cr_assert_eq(kvd_sessions_count(srv.sessions), 0);
        /* a known pipe still gets its session */
        req_pipe = 42;
        cr_assert_eq(dispatch(&srv, buf, kv_enc_hello_req(buf, sizeof(buf), 2, &hello), NULL, 0), 0);
        cr_assert_eq(kvd_sessions_count(srv.sessions), 1);
        kvd_sessions_free(srv.sessions);
        pthread_mutex_destroy(&srv.lock);
}

/* ---- log.c: stderr as journald's stream socket ----------------------------- */

#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include "log.h"

static long long test_mono_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Reads what is waiting on fd (non-blocking) into buf, NUL-terminated. */
static size_t drain_fd(int fd, char *buf, size_t cap)
{
        size_t n = 0;

        for (;;) {
                ssize_t r = recv(fd, buf + n, cap - 1 - n, MSG_DONTWAIT);

                if (r <= 0 || n + (size_t)r >= cap - 1) {
                        if (r > 0)
                                n += (size_t)r;
                        break;
                }
                n += (size_t)r;
        }
        buf[n] = '\0';
        return n;
}

/* A journal that does not read: logging into its full socket costs lines,
 * not time (a blocking write(2) held the logging thread, the serving loop
 * among them, until it read), and once it reads again the next line is
 * preceded by the count of the lines lost. */
Test(log, a_full_journal_socket_costs_lines_not_time, .timeout = 30)
{
        enum { LINES = 20000 };
        static char got[1 << 22];
        char pad[201];
        int sv[2], sndbuf = 4096, saved;

        memset(pad, 'x', sizeof(pad) - 1);
        pad[sizeof(pad) - 1] = '\0';
        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
        setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
        cr_assert((saved = dup(STDERR_FILENO)) >= 0);
        cr_assert_eq(dup2(sv[0], STDERR_FILENO), STDERR_FILENO);
        kvd_log_probe_stderr();
        const unsigned long long d0 = kvd_log_dropped();
        const long long t0 = test_mono_ms();
        for (int i = 0; i < LINES; i++)
                kvd_warn("line %d %s", i, pad);
        const long long took = test_mono_ms() - t0;
        const unsigned long long lost = kvd_log_dropped() - d0;
        size_t n = drain_fd(sv[1], got, sizeof(got));
        kvd_warn("after the journal read");
        n += drain_fd(sv[1], got + n, sizeof(got) - n);
        cr_assert_eq(dup2(saved, STDERR_FILENO), STDERR_FILENO);
        close(saved);
        kvd_log_probe_stderr();

        cr_expect_lt(took, 10000, "%d lines into a full socket took %lld ms", LINES, took);
        cr_expect_gt(lost, 0, "no line was dropped with a socket that holds far fewer than %d", LINES);
        cr_expect_lt(lost, (unsigned long long)LINES, "every line was dropped");
        char want[96];
        snprintf(want, sizeof(want), "<4>kvpoold: %llu log lines dropped", lost);
        const char *note = strstr(got, want);
        cr_expect(note, "no '%s' line in what the journal read (%zu bytes)", want, n);
        cr_expect(note && strstr(note, "\n<4>after the journal read\n"),
                  "the line after the note is not whole");
        /* whole lines before it: each "<4>line ..." ends with the pad and a
         * newline, but for at most one cut short */
        int bad = 0;
        for (const char *p = got; note && p < note;) {
                const char *e = strchr(p, '\n');
                if (!e)
                        break;
                if (strncmp(p, "<4>line ", 8) != 0 || (size_t)(e - p) < sizeof(pad) - 1 ||
                    memcmp(e - (sizeof(pad) - 1), pad, sizeof(pad) - 1) != 0)
                        bad++;
                p = e + 1;
        }
        cr_expect_leq(bad, 1, "%d lines before the note are not whole", bad);
        close(sv[0]);
        close(sv[1]);
}
