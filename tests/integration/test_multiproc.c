/* test_multiproc.c - libkvclient against a real kvpoold: several worker
 * processes sharing a host pool, session death, ownership, shared mappings,
 * daemon restart. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "pattern.h"

static struct kvt_daemon D;

static void cleanup(void)
{
        if (D.dir[0])
                kvt_daemon_cleanup(&D);
}

static void start_pool(const char *dtype, const char *capacity)
{
        const char *pools[] = { kvt_pool_spec(0, "p", dtype, capacity), NULL };

        cr_assert_eq(kvt_daemon_start(&D, pools), 0, "kvpoold did not start");
}

#define WORKERS 6
#define NPAGES  8

Test(integration, workers_write_others_verify_then_free, .fini = cleanup, .timeout = 60)
{
        struct kvt_proc w[WORKERS], v[WORKERS];
        int32_t pages[WORKERS][NPAGES];
        const char *exe = kvt_env_path("KVT_WORKER");
        double total;

        start_pool("fp8_e4m3", "4MiB");
        total = kvt_pool_num(D.url, "p", "pages_total");
        cr_assert(total >= WORKERS * NPAGES, "pool too small: %g pages", total);
        /* All workers allocate and write at once... */
        for (int i = 0; i < WORKERS; i++)
                cr_assert_eq(kvt_holder_start(D.url, "p", NPAGES, 100 + i, pages[i], &w[i]), 0);
        /* ...and, while they all hold their pages, no page was handed out twice. */
        for (int a = 0; a < WORKERS * NPAGES; a++)
                for (int b = a + 1; b < WORKERS * NPAGES; b++)
                        cr_assert_neq(pages[a / NPAGES][a % NPAGES], pages[b / NPAGES][b % NPAGES],
                                      "page %d handed to two workers", pages[a / NPAGES][a % NPAGES]);
        cr_assert_eq(kvt_pool_num(D.url, "p", "pages_held"), WORKERS * NPAGES);
        cr_assert_eq(kvt_pool_num(D.url, "p", "pages_free"), total - WORKERS * NPAGES);
        /* Other processes map the pool and check every worker's bytes. */
        for (int i = 0; i < WORKERS; i++) {
                char ws[16], ids[NPAGES][16], *argv[5 + NPAGES + 1] = { (char *)exe, "verify", D.url, "p", ws };

                snprintf(ws, sizeof ws, "%d", 100 + i);
                for (int j = 0; j < NPAGES; j++) {
                        snprintf(ids[j], sizeof ids[j], "%d", pages[i][j]);
                        argv[5 + j] = ids[j];
                }
                argv[5 + NPAGES] = NULL;
                cr_assert_eq(kvt_spawn(argv, &v[i]), 0);
        }
        for (int i = 0; i < WORKERS; i++)
                cr_assert_eq(kvt_proc_wait(&v[i]), 0, "verifier of worker %d failed", i);
        for (int i = 0; i < WORKERS; i++)
                cr_assert_eq(kvt_holder_release(&w[i]), 0);
        cr_assert(kvt_wait_all_free(D.url, "p", 2000), "pages not all free after the workers freed them");
        cr_assert_eq(kvt_pool_num(D.url, "p", "pages_held"), 0);
}

Test(integration, sigkill_releases_pages_within_1s, .fini = cleanup, .timeout = 60)
{
        struct kvt_proc w;
        int32_t pages[20];
        double t0, total;
        kvc_client *c;
        kvc_pool *p;
        int32_t page;

        start_pool("bf16", "2MiB");
        total = kvt_pool_num(D.url, "p", "pages_total");
        cr_assert_eq(kvt_holder_start(D.url, "p", 20, 7, pages, &w), 0);
        cr_assert_eq(kvt_pool_num(D.url, "p", "pages_free"), total - 20);
        t0 = kvt_now_ms();
        kill(w.pid, SIGKILL);
        cr_assert(kvt_wait_all_free(D.url, "p", 1000),
                  "pages of a SIGKILLed worker not free within 1 s (free %g of %g after %.0f ms)",
                  kvt_pool_num(D.url, "p", "pages_free"), total, kvt_now_ms() - t0);
        cr_assert_eq(kvt_proc_wait(&w), 128 + SIGKILL);
        /* The daemon keeps serving. */
        cr_assert_eq(kvc_connect(D.url, "after-kill", NULL, &c), 0);
        cr_assert_eq(kvc_attach(c, "p", &p), 0);
        cr_assert_eq(kvc_alloc(p, 1, &page), 0, "%s", kvc_errmsg(c));
        kvc_disconnect(c);
}

Test(integration, freeing_another_sessions_page_is_refused, .fini = cleanup, .timeout = 60)
{
        struct kvt_proc w;
        int32_t pages[2], mine;
        kvc_client *c;
        kvc_pool *p;
        int rv;

        start_pool("fp8_e5m2", "2MiB");
        cr_assert_eq(kvt_holder_start(D.url, "p", 2, 33, pages, &w), 0);
        cr_assert_eq(kvc_connect(D.url, "thief", NULL, &c), 0);
        cr_assert_eq(kvc_attach(c, "p", &p), 0);
        rv = kvc_free(p, 1, &pages[0]);
        cr_assert_eq(rv, -EPERM, "free of another session's page gave %d (%s)", rv, kvc_errmsg(c));
        cr_assert(strlen(kvc_errmsg(c)) > 0, "no error message");
        /* All or nothing: one own page and one foreign page frees neither. */
        cr_assert_eq(kvc_alloc(p, 1, &mine), 0);
        {
                int32_t both[2] = { mine, pages[1] };

                cr_assert_eq(kvc_free(p, 2, both), -EPERM);
        }
        cr_assert_eq(kvt_pool_num(D.url, "p", "pages_held"), 3);
        /* The owner's data is intact, seen through this process's own mapping. */
        cr_assert_eq(kvt_pattern_check(kvc_pool_get_desc(p), pages[0], 33, 0), -1);
        cr_assert_eq(kvt_pattern_check(kvc_pool_get_desc(p), pages[1], 33, 1), -1);
        cr_assert_eq(kvc_free(p, 1, &mine), 0, "%s", kvc_errmsg(c));
        /* Out of range and bad arguments are refused before any request. */
        {
                int32_t bad = 1 << 30;

                cr_assert_eq(kvc_free(p, 1, &bad), -ERANGE);
                cr_assert_eq(kvc_free(p, 0, &mine), -EINVAL);
                cr_assert(strstr(kvc_errmsg(c), "n") != NULL);
                cr_assert_eq(kvc_alloc(p, 1, NULL), -EINVAL);
                cr_assert(strstr(kvc_errmsg(c), "ret_pages") != NULL, "%s", kvc_errmsg(c));
                cr_assert_eq(kvc_alloc(p, 65537, &mine), -EINVAL);
        }
        kvc_disconnect(c);
        cr_assert_eq(kvt_holder_release(&w), 0);
}

/* Mappings of kvpool shared memory objects in this process. */
static int shm_mappings(void)
{
        FILE *f = fopen("/proc/self/maps", "r");
        char line[512];
        int n = 0;

        cr_assert_not_null(f);
        while (fgets(line, sizeof line, f))
                n += strstr(line, "/dev/shm/kvpool.") != NULL;
        fclose(f);
        return n;
}

Test(integration, two_clients_in_one_process_share_one_mapping, .fini = cleanup, .timeout = 60)
{
        kvc_client *c1, *c2;
        kvc_pool *p1, *p1b, *p2;
        const struct kvc_pool_desc *d1, *d2;
        int32_t page;

        start_pool("fp16", "2MiB");
        cr_assert_eq(shm_mappings(), 0);
        cr_assert_eq(kvc_connect(D.url, "one", NULL, &c1), 0);
        cr_assert_eq(kvc_connect(D.url, "two", NULL, &c2), 0);
        cr_assert_eq(kvc_attach(c1, "p", &p1), 0, "%s", kvc_errmsg(c1));
        cr_assert_eq(kvc_attach(c1, "p", &p1b), 0);
        cr_assert_eq(p1, p1b, "attaching twice on one client gave two handles");
        cr_assert_eq(kvc_attach(c2, "p", &p2), 0);
        d1 = kvc_pool_get_desc(p1);
        d2 = kvc_pool_get_desc(p2);
        cr_assert_eq(d1->base, d2->base, "two clients mapped the pool twice");
        cr_assert_eq(shm_mappings(), 1);
        cr_assert_eq(d1->dtype, KVC_DTYPE_FP16);
        cr_assert_eq(d1->backend, KVC_BACKEND_HOST);
        cr_assert_eq(d1->device, -1);
        cr_assert_eq(d1->num_layers, 2);
        cr_assert_eq(d1->kv_heads, 2);
        cr_assert_eq(d1->head_dim, 64);
        cr_assert_eq(d1->page_size, 16);
        cr_assert_eq(d1->head_bytes, 128);
        cr_assert_eq(d1->k_scale[0], 1.0f);
        /* Pages of one client are written through the shared mapping. */
        cr_assert_eq(kvc_alloc(p1, 1, &page), 0);
        kvt_pattern_fill(d1, page, 5, 0);
        cr_assert_eq(kvt_pattern_check(d2, page, 5, 0), -1);
        /* The mapping lives until the last handle goes. */
        kvc_detach(p1);
        kvc_detach(p1);
        cr_assert_eq(shm_mappings(), 1);
        cr_assert_eq(kvt_pattern_check(d2, page, 5, 0), -1);
        kvc_detach(p2);
        cr_assert_eq(shm_mappings(), 0);
        /* Detaching does not free: c1 still holds its page. */
        cr_assert_eq(kvt_pool_num(D.url, "p", "pages_held"), 1);
        kvc_disconnect(c1);
        kvc_disconnect(c2);
        cr_assert(kvt_wait_all_free(D.url, "p", 2000));
}

Test(integration, no_daemon_is_econnrefused, .timeout = 30)
{
        char url[128];
        kvc_client *c = NULL;
        int rv;

        snprintf(url, sizeof url, "ipc:///tmp/kvtest-%d-nobody.sock", (int)getpid());
        rv = kvc_connect(url, "lonely", NULL, &c);
        cr_assert_eq(rv, -ECONNREFUSED, "got %d", rv);
        cr_assert_null(c);
        cr_assert(strstr(kvc_errmsg(NULL), "no kvpoold at") != NULL, "message: %s", kvc_errmsg(NULL));
        cr_assert(strstr(kvc_errmsg(NULL), url) != NULL);
}

Test(integration, daemon_restart_makes_the_client_stale, .fini = cleanup, .timeout = 60)
{
        const char *pools[] = { kvt_pool_spec(0, "p", "fp8_e4m3", "2MiB"), NULL };
        kvc_client *c, *c2;
        kvc_pool *p, *p2;
        int32_t pages[2];
        float k[128] = { 0 }, v[128] = { 0 };
        int64_t slot = 0;
        struct kvc_write_args wa = { .k = k, .v = v, .elem = KVC_ELEM_F32, .k_row_stride = 128,
                                     .v_row_stride = 128, .slots = &slot, .num_tokens = 1 };
        int rv;

        start_pool("fp8_e4m3", "2MiB");
        cr_assert_eq(kvc_connect(D.url, "survivor", NULL, &c), 0);
        cr_assert_eq(kvc_attach(c, "p", &p), 0);
        cr_assert_eq(kvc_alloc(p, 2, pages), 0);
        cr_assert_eq(kvt_daemon_stop(&D), 0, "kvpoold did not exit cleanly on SIGTERM");
        cr_assert_eq(kvt_daemon_restart(&D, pools), 0);
        rv = kvc_alloc(p, 1, pages);
        cr_assert_eq(rv, -ESTALE, "alloc after a restart gave %d (%s)", rv, kvc_errmsg(c));
        cr_assert(strstr(kvc_errmsg(c), "restarted") != NULL, "message: %s", kvc_errmsg(c));
        /* Every later call says so too, the data path included. */
        cr_assert_eq(kvc_free(p, 2, pages), -ESTALE);
        cr_assert_eq(kvc_write(p, &wa, NULL), -ESTALE);
        {
                char *json = NULL;

                cr_assert_eq(kvc_status_json(c, &json), -ESTALE);
                cr_assert_null(json);
        }
        cr_assert_eq(kvc_attach(c, "p", &p2), -ESTALE);
        kvc_disconnect(c);
        /* A new connection works against the new daemon. */
        cr_assert_eq(kvc_connect(D.url, "reborn", NULL, &c2), 0);
        cr_assert_eq(kvc_attach(c2, "p", &p2), 0);
        cr_assert_eq(kvc_alloc(p2, 2, pages), 0, "%s", kvc_errmsg(c2));
        kvc_disconnect(c2);
}

Test(integration, a_late_alloc_reply_gives_its_pages_back, .fini = cleanup, .timeout = 60)
{
        /* kvpoold stopped (SIGSTOP) while an alloc waits: the client times
         * out, the daemon carries the alloc out once it runs again, and the
         * pages it handed out come back at the client's next call instead
         * of staying held under ids the caller never got. */
        kvc_client *c;
        kvc_pool *p;
        int32_t pages[100], one;
        double total, freep = NAN;

        start_pool("fp8_e4m3", "2MiB");
        setenv("KVPOOL_TIMEOUT_MS", "300", 1);
        cr_assert_eq(kvc_connect(D.url, "late", NULL, &c), 0, "%s", kvc_errmsg(NULL));
        unsetenv("KVPOOL_TIMEOUT_MS");
        cr_assert_eq(kvc_attach(c, "p", &p), 0, "%s", kvc_errmsg(c));
        total = kvt_pool_num(D.url, "p", "pages_total");
        cr_assert(total >= 101, "pool of %g pages", total);
        cr_assert_eq(kill(D.pid, SIGSTOP), 0);
        cr_assert_eq(kvc_alloc(p, 100, pages), -ETIMEDOUT, "%s", kvc_errmsg(c));
        cr_assert_eq(kill(D.pid, SIGCONT), 0);
        /* the daemon answers the alloc now: 100 pages held by this session */
        for (int i = 0; i < 100; i++) {
                freep = kvt_pool_num(D.url, "p", "pages_free");
                if (freep == total - 100)
                        break;
                usleep(20 * 1000);
        }
        cr_assert_eq(freep, total - 100, "the late alloc did not run: %g of %g free", freep, total);
        /* its reply reaches the client at some point; every call after
         * that gives the pages back first */
        for (int i = 0; i < 100; i++) {
                char *json = NULL;

                cr_assert_eq(kvc_status_json(c, &json), 0, "%s", kvc_errmsg(c));
                free(json);
                freep = kvt_pool_num(D.url, "p", "pages_free");
                if (freep == total)
                        break;
                usleep(20 * 1000);
        }
        cr_assert_eq(freep, total, "after the calls %g of %g pages are free", freep, total);
        cr_assert_eq(kvc_alloc(p, 1, &one), 0, "%s", kvc_errmsg(c));
        kvc_disconnect(c);
        cr_assert(kvt_wait_all_free(D.url, "p", 2000));
}

Test(integration, unknown_pool_is_enoent, .fini = cleanup, .timeout = 30)
{
        kvc_client *c;
        kvc_pool *p = NULL;
        int rv;

        start_pool("bf16", "2MiB");
        cr_assert_eq(kvc_connect(D.url, "lost", NULL, &c), 0);
        rv = kvc_attach(c, "nosuchpool", &p);
        cr_assert_eq(rv, -ENOENT, "got %d (%s)", rv, kvc_errmsg(c));
        cr_assert_null(p);
        cr_assert(strlen(kvc_errmsg(c)) > 0);
        cr_assert_eq(kvc_attach(c, "", &p), -EINVAL);
        cr_assert_eq(kvc_attach(c, "p", NULL), -EINVAL);
        /* Asking for more pages than are free: -ENOSPC, nothing allocated. */
        cr_assert_eq(kvc_attach(c, "p", &p), 0);
        {
                uint32_t total = kvc_pool_get_desc(p)->num_pages;
                int32_t *pages = calloc(total + 1, sizeof *pages);

                rv = kvc_alloc(p, total + 1, pages);
                cr_assert_eq(rv, -ENOSPC, "got %d (%s)", rv, kvc_errmsg(c));
                cr_assert(strstr(kvc_errmsg(c), "free") != NULL, "message: %s", kvc_errmsg(c));
                cr_assert_eq(kvt_pool_num(D.url, "p", "pages_held"), 0);
                cr_assert_eq(kvc_alloc(p, total, pages), 0, "%s", kvc_errmsg(c));
                free(pages);
        }
        kvc_disconnect(c);
}

/* One client shared by threads: control requests are serialized inside the
 * library, data-path calls run concurrently; nothing is lost or mixed up. */
struct thread_arg {
        kvc_pool *p;
        int       id;
        int       failures;
};

static void *hammer(void *arg)
{
        struct thread_arg *a = arg;
        const struct kvc_pool_desc *d = kvc_pool_get_desc(a->p);
        uint64_t row = (uint64_t)d->kv_heads * d->head_dim;
        float *k = calloc(d->page_size * row, sizeof *k), *out = calloc(d->page_size * row, sizeof *out);
        float *vout = calloc(d->page_size * row, sizeof *vout);
        int64_t *slots = calloc(d->page_size, sizeof *slots);

        for (int it = 0; it < 100 && k && out && vout && slots; it++) {
                int32_t page;

                if (kvc_alloc(a->p, 1, &page) != 0) {
                        a->failures++;
                        continue;
                }
                /* bf16 holds integers up to 256 exactly: a value names the
                 * thread and the iteration. */
                for (uint64_t i = 0; i < d->page_size * row; i++)
                        k[i] = (float)(a->id * 32 + it % 32);
                for (uint32_t t = 0; t < d->page_size; t++)
                        slots[t] = (int64_t)page * d->page_size + t;
                struct kvc_write_args w = { .k = k, .v = k, .elem = KVC_ELEM_F32,
                                            .k_row_stride = (int64_t)row, .v_row_stride = (int64_t)row,
                                            .slots = slots, .num_tokens = d->page_size, .layer = 1 };
                struct kvc_gather_args g = { .pages = &page, .n_pages = 1, .layer = 1,
                                             .k_out = out, .v_out = vout, .elem = KVC_ELEM_F32 };

                if (kvc_write(a->p, &w, NULL) != 0 || kvc_gather(a->p, &g, NULL) != 0 ||
                    memcmp(out, k, d->page_size * row * sizeof *k) != 0)
                        a->failures++;
                if (kvc_free(a->p, 1, &page) != 0)
                        a->failures++;
        }
        free(k);
        free(out);
        free(vout);
        free(slots);
        return NULL;
}

Test(integration, one_client_shared_by_threads, .fini = cleanup, .timeout = 60)
{
        enum { THREADS = 4 };
        pthread_t t[THREADS];
        struct thread_arg a[THREADS];
        kvc_client *c;
        kvc_pool *p;

        start_pool("bf16", "2MiB");
        cr_assert_eq(kvc_connect(D.url, "threads", NULL, &c), 0);
        cr_assert_eq(kvc_attach(c, "p", &p), 0);
        for (int i = 0; i < THREADS; i++) {
                a[i] = (struct thread_arg){ .p = p, .id = i + 1 };
                cr_assert_eq(pthread_create(&t[i], NULL, hammer, &a[i]), 0);
        }
        for (int i = 0; i < THREADS; i++) {
                pthread_join(t[i], NULL);
                cr_assert_eq(a[i].failures, 0, "thread %d: %d failures", i, a[i].failures);
        }
        cr_assert_eq(kvt_pool_num(D.url, "p", "pages_held"), 0);
        kvc_disconnect(c);
}
