/* test_tp.c - several GPUs and tensor parallelism (issue 8) on the host
 * backend: a pool spec with tp_size 2, from the JSON config and from --pool,
 * starts one pool per rank ("<name>.tp<r>", kv_heads/tp_size heads, the
 * scaling factors of rank r); a worker per rank allocates and writes its
 * rank's pool; a killed worker's pages come back in its pool only; kvpoolctl
 * groups pools by device; bad tp configs stop kvpoold with a message naming
 * the key.  The same config runs unchanged on a multi-GPU host (backend cuda,
 * devices 0..N-1); here every pool is in host shared memory. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <pthread.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>

#include "harness.h"
#include "kv_proto.h"
#include "pattern.h"

static struct kvt_daemon D;
static char scales_path[128], cfg_path[128];

static void cleanup(void)
{
        if (D.dir[0])
                kvt_daemon_cleanup(&D);
        if (scales_path[0])
                unlink(scales_path);
        if (cfg_path[0])
                unlink(cfg_path);
}

/* Factor of rank r, layer l in the files below: rank 0 near 0.02, rank 1
 * near 0.05, so per-rank values cannot be mistaken for each other. */
static double factor(int r, int l)
{
        return (r == 0 ? 0.02 : 0.05) + 0.001 * l;
}

/* A vLLM-style scaling-factor JSON of nranks ranks and 2 layers. */
static void write_scales(int nranks)
{
        FILE *f;

        snprintf(scales_path, sizeof scales_path, "/tmp/kvtest-tp-%d-scales.json", (int)getpid());
        f = fopen(scales_path, "w");
        cr_assert_not_null(f);
        fprintf(f, "{\"model_type\": \"llama\", \"kv_cache\": {\"dtype\": \"float8_e4m3fn\", \"scaling_factor\": {");
        for (int r = 0; r < nranks; r++)
                fprintf(f, "%s\"%d\": {\"0\": %g, \"1\": %g}", r ? ", " : "", r, factor(r, 0), factor(r, 1));
        fprintf(f, "}}}\n");
        fclose(f);
}

/* The JSON config: one fp8 spec "llama", 4 kv heads over tp_size 2, host. */
static void write_config(const char *extra)
{
        FILE *f;

        snprintf(cfg_path, sizeof cfg_path, "/tmp/kvtest-tp-%d-config.json", (int)getpid());
        f = fopen(cfg_path, "w");
        cr_assert_not_null(f);
        fprintf(f, "{\"pools\": [{\"name\": \"llama\", \"dtype\": \"fp8_e4m3\", \"layers\": 2, \"kv_heads\": 4,\n"
                   "  \"head_dim\": 64, \"page_size\": 16, \"capacity\": \"2MiB\", \"backend\": \"host\",\n"
                   "  \"tp_size\": 2%s,\n"
                   "  \"scales\": {\"source\": \"json\", \"path\": \"%s\"}}]}\n",
                extra, scales_path);
        fclose(f);
}

/* Starts kvpoold with --config cfg_path on a private socket and waits until
 * it answers (the daemon's log goes to stderr if it does not). */
static void start_with_config(void)
{
        const char *const args[] = { "--config", cfg_path, NULL };

        cr_assert_eq(kvt_daemon_start_args(&D, args), 0, "kvpoold --config %s did not start", cfg_path);
}

/* The STATUS entry of pool name (asserted present); cJSON_Delete(*doc). */
static const cJSON *status_pool(cJSON **doc, const char *name)
{
        const cJSON *p;

        *doc = kvt_status(D.url);
        cr_assert_not_null(*doc);
        cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(*doc, "pools")) {
                const cJSON *n = cJSON_GetObjectItemCaseSensitive(p, "name");

                if (cJSON_IsString(n) && strcmp(n->valuestring, name) == 0)
                        return p;
        }
        cr_assert_fail("pool %s not in STATUS", name);
        return NULL;
}

static double jnum(const cJSON *o, const char *key)
{
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

        return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

/* The pools of a tp_size 2 spec named spec with kv_heads 4: names, geometry,
 * STATUS's group/tp keys, and (want_scales) each rank's factors in STATUS and
 * in the descriptor libkvclient hands a worker. */
static void check_ranks(const char *spec, int want_scales)
{
        kvc_client *c;
        cJSON *doc;
        int n = 0;

        cr_assert_eq(kvc_connect(D.url, "tp-checker", NULL, &c), 0);
        for (int r = 0; r < 2; r++) {
                char name[32];
                const cJSON *p;
                kvc_pool *pool;
                const struct kvc_pool_desc *d;

                /* What a worker of rank r computes from its rank. */
                snprintf(name, sizeof name, "%s.tp%d", spec, r);
                p = status_pool(&doc, name);
                cr_assert_eq(jnum(p, "kv_heads"), 2, "%s: kv_heads 4 / tp_size 2", name);
                cr_assert_eq(jnum(p, "layers"), 2);
                cr_assert_eq(jnum(p, "head_dim"), 64);
                cr_assert_eq(jnum(p, "tp_rank"), r);
                cr_assert_eq(jnum(p, "tp_size"), 2);
                cr_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(p, "group")), spec);
                cr_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(p, "backend")), "host");
                cr_assert_eq(jnum(p, "device"), -1, "host pools report device -1");
                if (want_scales) {
                        cr_assert_float_eq(jnum(p, "k_scale_min"), factor(r, 0), 1e-6, "%s k_scale_min", name);
                        cr_assert_float_eq(jnum(p, "k_scale_max"), factor(r, 1), 1e-6, "%s k_scale_max", name);
                        cr_assert_float_eq(jnum(p, "v_scale_min"), factor(r, 0), 1e-6, "%s v_scale_min", name);
                        cr_assert_float_eq(jnum(p, "v_scale_max"), factor(r, 1), 1e-6, "%s v_scale_max", name);
                        cr_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(p, "scale_source")), "json");
                }
                n = cJSON_GetArraySize(cJSON_GetObjectItem(doc, "pools"));
                cJSON_Delete(doc);

                cr_assert_eq(kvc_attach(c, name, &pool), 0, "attach %s: %s", name, kvc_errmsg(c));
                d = kvc_pool_get_desc(pool);
                cr_assert_str_eq(d->name, name);
                cr_assert_eq(d->kv_heads, 2);
                cr_assert_eq(d->num_layers, 2);
                if (want_scales) {
                        cr_assert_not_null(d->k_scale);
                        for (int l = 0; l < 2; l++) {
                                cr_assert_float_eq(d->k_scale[l], factor(r, l), 1e-6, "%s k_scale[%d] = %g", name, l,
                                                   d->k_scale[l]);
                                cr_assert_float_eq(d->v_scale[l], factor(r, l), 1e-6, "%s v_scale[%d] = %g", name, l,
                                                   d->v_scale[l]);
                        }
                }
        }
        cr_assert_eq(n, 2, "two pools, no unexpanded \"%s\"", spec);
        /* The spec's own name is no pool. */
        {
                kvc_pool *none;

                cr_assert_neq(kvc_attach(c, spec, &none), 0, "attached to the unexpanded name %s", spec);
        }
        kvc_disconnect(c);
}

/* `kvt-worker verify`: pattern w intact in pool's pages, seen by another
 * process through its own mapping. */
static int verify(const char *pool, uint32_t w, uint32_t n, const int32_t *pages)
{
        const char *exe = kvt_env_path("KVT_WORKER");
        char ws[16], ids[16][16], *argv[5 + 16 + 1] = { (char *)exe, "verify", D.url, (char *)pool, ws };
        char *out = NULL;
        int rc;

        cr_assert(n <= 16);
        snprintf(ws, sizeof ws, "%u", w);
        for (uint32_t j = 0; j < n; j++) {
                snprintf(ids[j], sizeof ids[j], "%d", pages[j]);
                argv[5 + j] = ids[j];
        }
        argv[5 + n] = NULL;
        rc = kvt_run(argv, &out);
        if (rc != 0)
                cr_log_error("verify %s w %u: %s", pool, w, out ? out : "");
        free(out);
        return rc;
}

#define N 6

/* One worker per rank writes its rank's pool; a second worker on rank 0 is
 * SIGKILLed: its pages come back, rank 0's other worker and rank 1 keep
 * theirs, bytes intact. */
static void workers_per_rank(const char *spec)
{
        char p0[32], p1[32];
        struct kvt_proc a0, b0, a1;
        int32_t pa0[N], pb0[N], pa1[N];

        snprintf(p0, sizeof p0, "%s.tp0", spec);
        snprintf(p1, sizeof p1, "%s.tp1", spec);
        cr_assert_eq(kvt_holder_start(D.url, p0, N, 200, pa0, &a0), 0);
        cr_assert_eq(kvt_holder_start(D.url, p1, N, 201, pa1, &a1), 0);
        cr_assert_eq(kvt_holder_start(D.url, p0, N, 202, pb0, &b0), 0);
        /* Each pool hands out its own pages: rank 1's count is its worker's. */
        cr_assert_eq(kvt_pool_num(D.url, p0, "pages_held"), 2 * N);
        cr_assert_eq(kvt_pool_num(D.url, p1, "pages_held"), N);
        cr_assert_eq(verify(p0, 200, N, pa0), 0, "rank 0 worker A's pages");
        cr_assert_eq(verify(p0, 202, N, pb0), 0, "rank 0 worker B's pages");
        cr_assert_eq(verify(p1, 201, N, pa1), 0, "rank 1 worker's pages");

        kill(b0.pid, SIGKILL);
        cr_assert_eq(kvt_proc_wait(&b0), 128 + SIGKILL);
        for (double t0 = kvt_now_ms(); kvt_now_ms() - t0 < 2000 && kvt_pool_num(D.url, p0, "pages_held") != N;)
                usleep(10000);
        cr_assert_eq(kvt_pool_num(D.url, p0, "pages_held"), N, "the killed worker's pages are not back");
        cr_assert_eq(kvt_pool_num(D.url, p0, "pages_free"), kvt_pool_num(D.url, p0, "pages_total") - N);
        cr_assert_eq(kvt_pool_num(D.url, p1, "pages_held"), N, "rank 1 lost pages when a rank 0 worker died");
        cr_assert_eq(verify(p0, 200, N, pa0), 0, "rank 0 survivor's pages after the kill");
        cr_assert_eq(verify(p1, 201, N, pa1), 0, "rank 1 pages after the kill");
        cr_assert_eq(kvt_holder_release(&a0), 0);
        cr_assert_eq(kvt_holder_release(&a1), 0);
        cr_assert(kvt_wait_all_free(D.url, p0, 2000));
        cr_assert(kvt_wait_all_free(D.url, p1, 2000));
}

Test(tp, json_config_per_rank_pools_scales_and_workers, .fini = cleanup, .timeout = 90)
{
        write_scales(2);
        write_config("");
        start_with_config();
        check_ranks("llama", 1);
        workers_per_rank("llama");
        cr_assert_eq(kvt_daemon_stop(&D), 0);
}

Test(tp, pool_arg_per_rank_pools_and_workers, .fini = cleanup, .timeout = 90)
{
        const char *pools[] = {
                "name=g,dtype=bf16,layers=2,kv_heads=4,head_dim=64,page_size=16,capacity=2MiB,backend=host,tp_size=2",
                "name=solo,dtype=bf16,layers=2,kv_heads=4,head_dim=64,page_size=16,capacity=2MiB,backend=host",
                NULL };
        cJSON *doc;
        const cJSON *p;

        cr_assert_eq(kvt_daemon_start(&D, pools), 0);
        {
                /* A plain pool beside the ranks: no tp keys, its own group. */
                p = status_pool(&doc, "solo");
                cr_assert(cJSON_IsNull(cJSON_GetObjectItem(p, "tp_rank")), "plain pool: tp_rank null");
                cr_assert(cJSON_IsNull(cJSON_GetObjectItem(p, "tp_size")), "plain pool: tp_size null");
                cr_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(p, "group")), "solo");
                cr_assert_eq(jnum(p, "kv_heads"), 4);
                cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(doc, "pools")), 3);
                cJSON_Delete(doc);
        }
        for (int r = 0; r < 2; r++) {
                char name[32];

                snprintf(name, sizeof name, "g.tp%d", r);
                p = status_pool(&doc, name);
                cr_assert_eq(jnum(p, "kv_heads"), 2);
                cr_assert_eq(jnum(p, "tp_rank"), r);
                cr_assert_eq(jnum(p, "tp_size"), 2);
                cr_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(p, "group")), "g");
                cJSON_Delete(doc);
        }
        workers_per_rank("g");
        /* kvpoolctl: a DEVICE column first, the ranks' TP rank/size. */
        {
                const char *ctl = kvt_env_path("KVPOOLCTL");
                char *argv[] = { (char *)ctl, "--socket", D.url, "status", NULL };
                char *out = NULL, *l0, *l1, *ls;

                cr_assert_not_null(ctl);
                cr_assert_eq(kvt_run(argv, &out), 0, "kvpoolctl status failed:\n%s", out);
                cr_assert(strncmp(out + strcspn(out, "\n") + 2, "DEVICE", 6) == 0, "no DEVICE column first:\n%s", out);
                l0 = strstr(out, "\nhost    g.tp0  0/2 ");
                l1 = strstr(out, "\nhost    g.tp1  1/2 ");
                ls = strstr(out, "\nhost    solo   -   ");
                cr_assert(l0 && l1 && ls, "rows not as expected:\n%s", out);
                cr_assert(l0 < l1 && l1 < ls, "rows not sorted by device then name:\n%s", out);
                free(out);
        }
        cr_assert_eq(kvt_daemon_stop(&D), 0);
}

/* kvpoold with args; its exit status and output (log) in *out. */
static int run_kvpoold(char **out, const char *a1, const char *a2, const char *a3)
{
        const char *kvpoold = kvt_env_path("KVPOOLD");
        char *argv[] = { (char *)kvpoold, "--metrics", "none", "--socket", "ipc:///tmp/kvtest-tp-never.sock",
                         (char *)a1, (char *)a2, (char *)a3, NULL };

        cr_assert_not_null(kvpoold);
        return kvt_run(argv, out);
}

Test(tp, bad_configs_stop_kvpoold_naming_the_key, .fini = cleanup, .timeout = 60)
{
        char *out = NULL;

        /* A one-rank scaling-factor file for tp_size 2. */
        write_scales(1);
        write_config("");
        cr_assert_eq(run_kvpoold(&out, "--config", cfg_path, NULL), 1, "%s", out);
        cr_assert(strstr(out, "pools[0].tp_size") && strstr(out, "has 1") && strstr(out, scales_path),
                  "message: %s", out);
        free(out);
        /* --check-config of a good two-rank file prints each rank's scales. */
        write_scales(2);
        cr_assert_eq(run_kvpoold(&out, "--config", cfg_path, "--check-config"), 0, "%s", out);
        cr_assert(strstr(out, "pool llama.tp0 scales: json") && strstr(out, "k 0.02..0.021"), "%s", out);
        cr_assert(strstr(out, "pool llama.tp1 scales: json") && strstr(out, "k 0.05..0.051"), "%s", out);
        cr_assert(strstr(out, "tensor-parallel rank 1 of 2 of llama"), "%s", out);
        free(out);
        /* devices of the wrong length. */
        write_config(", \"devices\": [0, 1, 2]");
        cr_assert_eq(run_kvpoold(&out, "--config", cfg_path, NULL), 1, "%s", out);
        cr_assert(strstr(out, "pools[0].devices") && strstr(out, "3 devices for tp_size 2"), "%s", out);
        free(out);
        /* kv_heads not divisible, tp_size 0, a duplicate device, on --pool. */
        cr_assert_eq(run_kvpoold(&out, "--pool",
                                 "name=x,dtype=bf16,layers=2,kv_heads=3,head_dim=64,page_size=16,capacity=2MiB,tp_size=2",
                                 NULL), 1, "%s", out);
        cr_assert(strstr(out, "kv_heads") && strstr(out, "not divisible by tp_size 2"), "%s", out);
        free(out);
        cr_assert_eq(run_kvpoold(&out, "--pool",
                                 "name=x,dtype=bf16,layers=2,kv_heads=4,head_dim=64,page_size=16,capacity=2MiB,tp_size=0",
                                 NULL), 1, "%s", out);
        cr_assert(strstr(out, "--pool tp_size") && strstr(out, "got 0"), "%s", out);
        free(out);
        cr_assert_eq(run_kvpoold(&out, "--pool",
                                 "name=x,dtype=bf16,layers=2,kv_heads=4,head_dim=64,page_size=16,capacity=2MiB,devices=0:0",
                                 NULL), 1, "%s", out);
        cr_assert(strstr(out, "--pool devices") && strstr(out, "listed twice"), "%s", out);
        free(out);
}

/* ---- kvpoolctl against a fake daemon reporting CUDA pools ------------------ */

/* A REP socket in a thread that answers HELLO, STATUS (with doc) and BYE: the
 * only way to show kvpoolctl pools on GPUs on a machine without one. */
static struct {
        nng_socket  sock;
        pthread_t   thread;
        char        url[128];
        const char *doc;
} FK;

static void *fake_serve(void *arg)
{
        static uint8_t out[1 << 16];
        nng_msg       *m;

        (void)arg;
        while (nng_recvmsg(FK.sock, &m, 0) == 0) {
                struct kv_hdr h;
                int           n;

                if (kv_hdr_decode(nng_msg_body(m), nng_msg_len(m), &h) != 0) {
                        nng_msg_free(m);
                        continue;
                }
                if (h.opcode == KV_OP_HELLO) {
                        struct kv_hello_rep hr = { .session_id = 1, .num_pools = 5, .max_frame = KV_MAX_FRAME };

                        n = kv_enc_hello_rep(out, sizeof out, h.request_id, &hr);
                } else if (h.opcode == KV_OP_STATUS) {
                        n = kv_enc_text(out, sizeof out, KV_OP_STATUS | KV_OP_REPLY, h.request_id, FK.doc,
                                        (uint32_t)strlen(FK.doc));
                } else {
                        n = kv_enc_empty(out, sizeof out, h.opcode | KV_OP_REPLY, h.request_id);
                }
                nng_msg_clear(m);
                nng_msg_append(m, out, (size_t)(n > 0 ? n : 0));
                if (nng_sendmsg(FK.sock, m, 0) != 0)
                        nng_msg_free(m);
        }
        return NULL;
}

#define FAKE_POOL(name, dev, backend, tp) \
        "{\"name\": \"" name "\", \"dtype\": \"fp8_e4m3\", \"backend\": \"" backend "\", \"device\": " #dev ", " \
        "\"layers\": 2, \"kv_heads\": 2, \"head_dim\": 128, \"page_size\": 16, \"pages_total\": 10, " \
        "\"pages_free\": 10, \"pages_held\": 0, \"pages_cached\": 0, \"token_capacity\": 160, \"bytes\": 2097152, " \
        "\"scale_source\": \"json\", \"k_scale_min\": 0.02, \"k_scale_max\": 0.02, \"v_scale_min\": 0.02, " \
        "\"v_scale_max\": 0.02, \"lookups\": 0, \"hits\": 0, \"hit_rate\": 0, \"evictions\": 0, " tp "}"
#define NO_TP "\"group\": \"x\", \"tp_rank\": null, \"tp_size\": null"

/* Runs `kvpoolctl status [extra]` against the fake answering doc: its exit
 * status, *ret_out its stdout and stderr. */
static int ctl_status_of(const char *doc, const char *extra, char **ret_out)
{
        const char *ctl = kvt_env_path("KVPOOLCTL");
        char *argv[] = { (char *)ctl, "--socket", FK.url, "status", (char *)extra, NULL };
        int rv;

        cr_assert_not_null(ctl);
        FK.doc = doc;
        snprintf(FK.url, sizeof FK.url, "ipc:///tmp/kvtest-%d-statusfake.sock", (int)getpid());
        cr_assert_eq(nng_rep0_open(&FK.sock), 0);
        cr_assert_eq(nng_listen(FK.sock, FK.url, NULL, 0), 0);
        cr_assert_eq(pthread_create(&FK.thread, NULL, fake_serve, NULL), 0);
        rv = kvt_run(argv, ret_out);
        nng_close(FK.sock);
        pthread_join(FK.thread, NULL);
        unlink(FK.url + 6);
        return rv;
}

Test(tp, kvpoolctl_groups_cuda_pools_by_device, .timeout = 60)
{
        /* Reported out of order: rank 1 on GPU 1 first, a host pool in the
         * middle. */
        static const char doc[] =
                "{\"version\": \"fake\", \"pid\": 1, \"uptime_s\": 5, \"socket\": \"fake\", \"events\": null, \"pools\": ["
                FAKE_POOL("m.tp1", 1, "cuda", "\"group\": \"m\", \"tp_rank\": 1, \"tp_size\": 2") ", "
                FAKE_POOL("z", 0, "cuda", NO_TP) ", "
                FAKE_POOL("h", -1, "host", NO_TP) ", "
                FAKE_POOL("m.tp0", 0, "cuda", "\"group\": \"m\", \"tp_rank\": 0, \"tp_size\": 2") ", "
                FAKE_POOL("a", 1, "cuda", NO_TP)
                "], \"clients\": []}";
        /* Device 0 (m.tp0, z), device 1 (a, m.tp1), then host (h). */
        static const char *const rows[] = {
                "0       m.tp0  0/2  fp8_e4m3  cuda ", "0       z      -    fp8_e4m3  cuda ",
                "1       a      -    fp8_e4m3  cuda ", "1       m.tp1  1/2  fp8_e4m3  cuda ",
                "host    h      -    fp8_e4m3  host ",
        };
        char *out = NULL, *at;

        cr_assert_eq(ctl_status_of(doc, NULL, &out), 0, "kvpoolctl status failed:\n%s", out);
        cr_log_info("kvpoolctl status against the fake daemon:\n%s", out);
        cr_assert_not_null(strstr(out, "\nDEVICE  POOL   TP   DTYPE"), "header:\n%s", out);
        at = out;
        for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
                char *r = strstr(at, rows[i]);

                cr_assert_not_null(r, "row \"%s\" missing or out of order:\n%s", rows[i], out);
                at = r + 1;
        }
        /* The scales table follows the same order. */
        cr_assert_not_null(strstr(at, "\nDEVICE  POOL   SCALES"), "%s", out);
        cr_assert_not_null(strstr(at, "\n0       m.tp0  json"), "%s", out);
        const char *m1 = strstr(at, "\n1       m.tp1  json"), *a1 = strstr(at, "\n1       a      json");
        cr_assert(m1 && a1 && m1 > a1, "scales rows of device 1 missing or out of order:\n%s", out);
        free(out);
}

/* A status document of another shape than kvpoold's (another version, a
 * bug): kvpoolctl says what is missing or of the wrong type, "-" for a value
 * the daemon did not give, instead of inventing one ("pid nan", "up 0s",
 * "pools: none") or converting an out-of-range number (undefined). */
Test(tp, kvpoolctl_says_what_is_odd_in_a_status_document, .timeout = 60)
{
        static const struct {
                const char *doc;
                int         status;
                const char *want[3];
                const char *not_want;
        } cases[] = {
                { "[1, 2]", 1, { "the daemon's status is not a JSON object" }, "kvpoold" },
                { "\"x\"", 1, { "the daemon's status is not a JSON object" }, "kvpoold" },
                { "{}", 1, { "kvpoold -, pid -, up -, socket -, events -", "no \"pools\" array",
                             "no \"clients\" array" }, "pools: none" },
                { "{\"pools\": 5, \"clients\": {\"a\": 1}}", 1,
                  { "no \"pools\" array (a number)", "no \"clients\" array (an object)" }, "pools: none" },
                { "{\"pid\": 1e300, \"uptime_s\": 1e300, \"pools\": [], \"clients\": []}", 0,
                  { "up -,", "pools: none", "clients: none" }, NULL },
                /* a pool entry that is no object: a row of "-", not a host pool */
                { "{\"pools\": [1], \"clients\": []}", 0, { "\n-       -     -   -      -" }, "host" },
                { "{\"pid\": 7, \"uptime_s\": -5, \"pools\": [], \"clients\": []}", 0, { "pid 7, up -," }, NULL },
                { "{\"uptime_s\": 90061, \"pools\": [], \"clients\": []}", 0, { "up 1d1h," }, NULL },
        };

        for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
                char *out = NULL;
                int rv = ctl_status_of(cases[k].doc, NULL, &out);

                cr_assert_eq(rv, cases[k].status, "%s: exit %d:\n%s", cases[k].doc, rv, out);
                for (int i = 0; i < 3 && cases[k].want[i]; i++)
                        cr_assert(strstr(out, cases[k].want[i]) != NULL, "%s: no \"%s\" in:\n%s", cases[k].doc,
                                  cases[k].want[i], out);
                cr_assert(!cases[k].not_want || strstr(out, cases[k].not_want) == NULL, "%s: \"%s\" in:\n%s",
                          cases[k].doc, cases[k].not_want, out);
                cr_assert(strstr(out, "nan") == NULL && strstr(out, "runtime error") == NULL, "%s:\n%s",
                          cases[k].doc, out);
                free(out);
        }
}
