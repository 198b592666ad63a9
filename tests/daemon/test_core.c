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
        free(kvd_sessions_remove(t, 77));
        cr_assert_eq(kvd_sessions_add(t, 77, &b), -ESTALE);
        cr_assert_null(kvd_sessions_remove(t, 78));
        cr_assert_eq(kvd_sessions_count(t), 0);
        kvd_sessions_free(t);
        kvd_sessions_free(NULL);
}

/* ---- pools on the host backend --------------------------------------------------- */

static void spec(struct kvd_pool_spec *s, const char *name, enum kvc_dtype d, uint64_t bytes)
{
        char n[64];

        snprintf(n, sizeof(n), "%s%d", name, (int)getpid());
        kvd_config_default_pool(s);
        snprintf(s->name, sizeof(s->name), "%s", n);
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
                cr_assert_eq(kvd_pool_new(&s, 5, &p, err, sizeof(err)), 0, "%s", err);
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
        cr_assert_neq(kvd_pool_new(&s, 0, &p, err, sizeof(err)), 0);
        cr_assert(strstr(err, s.name) && strstr(err, "page"), "%s", err);
        cr_assert_eq(p, (struct kvd_pool *)0x1, "ret touched on failure");

        /* a fraction of GPU memory on a host pool */
        spec(&s, "frac", KVC_DTYPE_BF16, 0);
        s.capacity_fraction = 0.5;
        cr_assert_neq(kvd_pool_new(&s, 0, &p, err, sizeof(err)), 0);
        cr_assert(strstr(err, "fraction"), "%s", err);

        /* bad scales: refused before any memory is taken */
        spec(&s, "scl", KVC_DTYPE_FP8_E4M3, 4u << 20);
        s.scales_cfg = cJSON_Parse("{\"source\": \"json\", \"path\": \"/nonexistent/kvtest-scales.json\"}");
        cr_assert_neq(kvd_pool_new(&s, 0, &p, err, sizeof(err)), 0);
        cr_assert(strstr(err, "kvtest-scales.json"), "%s", err);
        snprintf(path, sizeof(path), "/dev/shm/kvpool.%d.%s", (int)getpid(), s.name);
        cr_assert_neq(stat(path, &sb), 0, "%s left after a failed pool", path);
        kvd_pool_spec_fini(&s);

        /* cuda asked for in a build without it: a clear error */
        if (!kvd_backend_cuda) {
                spec(&s, "gpu", KVC_DTYPE_BF16, 4u << 20);
                strcpy(s.backend, "cuda");
                cr_assert_eq(kvd_pool_new(&s, 0, &p, err, sizeof(err)), -ENODEV);
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
        cr_assert_eq(kvd_pool_new(&s, 0, &p, err, sizeof(err)), -EINVAL, "%s", err);
        cr_assert(strstr(err, s.name) && strstr(err, "pages"), "%s", err);
        cr_assert_null(p);
        snprintf(path, sizeof(path), "/dev/shm/kvpool.%d.%s", (int)getpid(), s.name);
        cr_assert_neq(stat(path, &sb), 0, "%s left after a failed pool", path);
        kvd_pool_spec_fini(&s);
}

Test(pool, same_name_twice_is_refused)
{
        struct kvd_pool_spec s;
        struct kvd_pool     *a, *b;
        char                 err[512];

        spec(&s, "dup", KVC_DTYPE_FP8_E4M3, 4u << 20);
        cr_assert_eq(kvd_pool_new(&s, 0, &a, err, sizeof(err)), 0, "%s", err);
        /* O_EXCL: the second object of the same name is not adopted */
        cr_assert_neq(kvd_pool_new(&s, 1, &b, err, sizeof(err)), 0);
        cr_assert(strstr(err, "shm_open"), "%s", err);
        kvd_pool_free(a);
        kvd_pool_spec_fini(&s);
}
