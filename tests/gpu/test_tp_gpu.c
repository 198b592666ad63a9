/* test_tp_gpu.c - tensor-parallel pools on two GPUs (issue 8; suite 'gpu';
 * exits 77 without CUDA or with fewer than two devices).
 *
 * One kvpoold serves two tp_size 2 specs over devices 0 and 1: "llama"
 * (fp8_e4m3, 8 kv heads, per-rank scaling factors from a JSON file) and
 * "mini" (fp4_e2m1, 4 kv heads).  Then:
 *
 *  1. STATUS: <spec>.tp<r> on device r with kv_heads / 2 heads; with the
 *     workers below holding pages, `kvpoolctl status` lists the pools by
 *     device (rank 0's on device 0, then rank 1's).
 *  2. One worker process per rank, each started with CUDA_VISIBLE_DEVICES
 *     set to its GPU's UUID (as a serving engine starts its TP workers), so
 *     rank 1's pool is device 1 to the daemon and device 0 to its worker:
 *     each attaches its rank's pools through its own IPC handles, checks
 *     the ordinal the client found and its rank's scales, allocates and
 *     writes pages through the kernel, and holds them.
 *  3. A third process, seeing both GPUs, attaches all four pools: a data
 *     call on a pool of the other device is refused (-EINVAL naming both
 *     devices) before anything runs, and so is one on the pool's device
 *     with a stream of the other (-EINVAL, CUDA's invalid resource handle;
 *     it was -ESTALE); after cudaSetDevice every pool's pages
 *     equal the CPU reference, raw bytes and gathered values.
 *  4. Worker 0 is killed with SIGKILL: rank 0's pools get all their pages
 *     back, rank 1's keep exactly their worker's, whose pages are checked
 *     again by a fresh third process; the daemon keeps serving; worker 1
 *     frees and exits; the daemon stops cleanly.
 */
#include <errno.h>
#include <signal.h>
#include <unistd.h>

#include "client_cuda.h"
#include "gpu_common.h"
#include "harness.h"
#include "pool_check.h"

static int failures;

#define NPAGES 5
#define LAYER 1
#define NSPEC 2
static const char *const specs[NSPEC] = { "llama", "mini" };

static char self[512], scales_path[128], cfg_path[128];

/* Rank r's fp8 factor of layer l in the scales file: far apart per rank. */
static double factor(int r, int l)
{
        return (r == 0 ? 0.25 : 0.5) + 0.01 * l;
}

static uint64_t seed_of(int rank, int spec)
{
        return 7000 + 10 * (uint64_t)rank + (uint64_t)spec;
}

/* ---- child: a worker of one rank ------------------------------------------------ */

/* child-rank URL VISIBLE RANK: runs with CUDA_VISIBLE_DEVICES=VISIBLE (set
 * here, before the first CUDA call), attaches <spec>.tp<RANK> of every spec,
 * writes NPAGES pages into each, prints "held SPEC P0 ..." per spec and
 * "ready"; then waits for "free" on stdin, frees, prints "freed". */
static int child_rank(const char *url, const char *visible, int rank)
{
        kvc_client *c;
        kvc_pool *p[NSPEC];
        int32_t pages[NSPEC][NPAGES];
        char name[64], line[64];
        int n = -1;

        setenv("CUDA_VISIBLE_DEVICES", visible, 1);
        if (cudaGetDeviceCount(&n) != cudaSuccess || n != 1) {
                printf("error: CUDA_VISIBLE_DEVICES=%s shows %d devices, expected 1\n", visible, n);
                return 1;
        }
        snprintf(name, sizeof name, "tp-worker-%d", rank);
        if (kvc_connect(url, name, NULL, &c)) {
                printf("error: connect: %s\n", kvc_errmsg(c));
                return 1;
        }
        for (int s = 0; s < NSPEC; s++) {
                struct pc_input in;

                snprintf(name, sizeof name, "%s.tp%d", specs[s], rank);
                if (kvc_attach(c, name, &p[s])) {
                        printf("error: attach %s: %s\n", name, kvc_errmsg(c));
                        return 1;
                }
                const struct kvc_pool_desc *d = kvc_pool_get_desc(p[s]);
                if (d->backend != KVC_BACKEND_CUDA || d->device != 0) {
                        printf("error: %s: backend %d device %d in this process, expected cuda on device 0\n", name,
                               (int)d->backend, d->device);
                        return 1;
                }
                for (uint32_t l = 0; s == 0 && l < d->num_layers; l++)
                        if (fabs(d->k_scale[l] - factor(rank, (int)l)) > 1e-6 ||
                            fabs(d->v_scale[l] - factor(rank, (int)l)) > 1e-6) {
                                printf("error: %s layer %u: scales %g/%g, expected rank %d's %g\n", name, l,
                                       d->k_scale[l], d->v_scale[l], rank, factor(rank, (int)l));
                                return 1;
                        }
                if (kvc_alloc(p[s], NPAGES, pages[s])) {
                        printf("error: alloc %s: %s\n", name, kvc_errmsg(c));
                        return 1;
                }
                pc_make_write(&in, d, pages[s], NPAGES, seed_of(rank, s));
                int r = pc_gpu_write(p[s], &in, LAYER);
                pc_free_write(&in);
                if (r) {
                        printf("error: kvc_write %s: %s\n", name, kvc_errmsg(c));
                        return 1;
                }
                printf("held %s", specs[s]);
                for (int i = 0; i < NPAGES; i++)
                        printf(" %d", pages[s][i]);
                printf("\n");
        }
        printf("ready\n");
        fflush(stdout);
        while (fgets(line, sizeof line, stdin) && strncmp(line, "free", 4) != 0)
                ;
        for (int s = 0; s < NSPEC; s++)
                if (kvc_free(p[s], NPAGES, pages[s])) {
                        printf("error: free: %s\n", kvc_errmsg(c));
                        return 1;
                }
        kvc_disconnect(c);
        printf("freed\n");
        return 0;
}

/* ---- child: the process that sees both GPUs ------------------------------------ */

/* A data call on pool p while another device is current: refused before
 * anything runs, with both devices named.  Failures. */
static int wrong_device_refused(kvc_client *c, kvc_pool *p, int other)
{
        const struct kvc_pool_desc *d = kvc_pool_get_desc(p);
        int32_t *dpl;
        void *out;
        char want[64], cur[64];
        int bad = 0;

        CK(cudaSetDevice(other));
        CK(cudaMalloc((void **)&dpl, sizeof(int32_t)));
        CK(cudaMemset(dpl, 0, sizeof(int32_t)));
        CK(cudaMalloc(&out, (size_t)d->page_size * d->kv_heads * d->head_dim * 4));
        struct kvc_gather_args g = { .pages = dpl, .n_pages = 1, .layer = 0, .k_out = out, .v_out = out,
                                     .elem = KVC_ELEM_F32 };
        int r = kvc_gather(p, &g, NULL);
        snprintf(want, sizeof want, "on CUDA device %d", d->device);
        snprintf(cur, sizeof cur, "current device is %d", other);
        if (r != -EINVAL || !strstr(kvc_errmsg(c), want) || !strstr(kvc_errmsg(c), cur)) {
                printf("check: %s: gather with device %d current gave %d (%s), expected -EINVAL naming devices %d "
                       "and %d\n",
                       d->name, other, r, kvc_errmsg(c), d->device, other);
                bad++;
        } else {
                printf("check: %s, device %d current: refused: %s\n", d->name, other, kvc_errmsg(c));
        }
        CK(cudaDeviceSynchronize()); /* the context is still good */

        /* The pool's device current but a stream of the other one: the
         * launch refuses it (CUDA's invalid resource handle), -EINVAL,
         * which used to come back as -ESTALE, the errno that tells a worker
         * the daemon restarted and to reconnect. */
        cudaStream_t st;
        int32_t *dpl2;
        void *out2;
        CK(cudaStreamCreate(&st)); /* on `other`, still current */
        CK(cudaSetDevice(d->device));
        CK(cudaMalloc((void **)&dpl2, sizeof(int32_t)));
        CK(cudaMemset(dpl2, 0, sizeof(int32_t)));
        CK(cudaMalloc(&out2, (size_t)d->page_size * d->kv_heads * d->head_dim * 4));
        struct kvc_gather_args g2 = { .pages = dpl2, .n_pages = 1, .layer = 0, .k_out = out2, .v_out = out2,
                                      .elem = KVC_ELEM_F32 };
        r = kvc_gather(p, &g2, st);
        if (r != -EINVAL || !strstr(kvc_errmsg(c), "invalid resource handle")) {
                printf("check: %s: gather on a stream of device %d gave %d (%s), expected -EINVAL "
                       "(invalid resource handle)\n",
                       d->name, other, r, kvc_errmsg(c));
                bad++;
        } else {
                printf("check: %s, stream of device %d: refused: %s\n", d->name, other, kvc_errmsg(c));
        }
        CK(cudaDeviceSynchronize());
        cudaFree(dpl2);
        cudaFree(out2);
        CK(cudaSetDevice(other));
        CK(cudaStreamDestroy(st));
        cudaFree(dpl);
        cudaFree(out);
        return bad;
}

/* child-check URL N (POOL DEVICE SEED P0 .. P4) x N: attach every pool, check
 * the device ordinal the client found (this process sees the daemon's
 * devices), that a call from the other device is refused, and the pages. */
static int child_check(int argc, char **argv)
{
        kvc_client *c;
        int n = atoi(argv[3]), bad = 0;

        if (n < 1 || argc != 4 + n * (3 + NPAGES))
                return 2;
        if (kvc_connect(argv[2], "tp-checker", NULL, &c)) {
                printf("check: connect: %s\n", kvc_errmsg(c));
                return 1;
        }
        for (int k = 0; k < n; k++) {
                char **a = argv + 4 + k * (3 + NPAGES);
                int32_t pages[NPAGES];
                kvc_pool *p;

                for (int i = 0; i < NPAGES; i++)
                        pages[i] = atoi(a[3 + i]);
                if (kvc_attach(c, a[0], &p)) {
                        printf("check: attach %s: %s\n", a[0], kvc_errmsg(c));
                        return 1;
                }
                int dev = kvc_pool_get_desc(p)->device;
                if (dev != atoi(a[1])) {
                        printf("check: %s is device %d here, expected %s\n", a[0], dev, a[1]);
                        bad++;
                }
                bad += wrong_device_refused(c, p, dev == 0 ? 1 : 0);
                int m = pc_check_pages(c, p, pages, NPAGES, strtoull(a[2], NULL, 0), LAYER, "check");
                printf("check: %s on device %d: %d pages %s\n", a[0], dev, NPAGES,
                       m == 0 ? "equal to the CPU reference" : "MISMATCH");
                bad += m != 0;
        }
        kvc_disconnect(c);
        return bad ? 1 : 0;
}

/* ---- the parent ---------------------------------------------------------------- */

struct worker {
        struct kvt_proc pr;
        int32_t pages[NSPEC][NPAGES];
};

/* The UUID of device d in the form CUDA_VISIBLE_DEVICES accepts. */
static void uuid_of(int d, char out[48])
{
        struct cudaDeviceProp prop;

        CK(cudaGetDeviceProperties(&prop, d));
        kvc__uuid_str((const uint8_t *)prop.uuid.bytes, out);
}

static int start_worker(struct kvt_daemon *d, int rank, struct worker *w)
{
        char vis[48], rs[8], line[256] = "";
        char *argv[] = { self, "child-rank", d->url, vis, rs, NULL };

        uuid_of(rank, vis);
        snprintf(rs, sizeof rs, "%d", rank);
        w->pr.pid = -1;
        if (kvt_spawn(argv, &w->pr) != 0) {
                w->pr.pid = -1;
                return -1;
        }
        for (int s = 0; s < NSPEC; s++) {
                char want[32];
                int off = 0, k = 0;

                if (kvt_proc_line(&w->pr, line, sizeof line) != 0)
                        line[0] = 0;
                snprintf(want, sizeof want, "held %s ", specs[s]);
                if (strncmp(line, want, strlen(want)) != 0) {
                        printf("worker %d: '%s', expected '%s...'\n", rank, line, want);
                        goto fail;
                }
                char *q = line + strlen(want);
                while (k < NPAGES && sscanf(q, "%d%n", &w->pages[s][k], &off) == 1) {
                        q += off;
                        k++;
                }
                if (k != NPAGES)
                        goto fail;
        }
        if (kvt_proc_line(&w->pr, line, sizeof line) != 0 || strncmp(line, "ready", 5) != 0)
                goto fail;
        printf("worker %d (CUDA_VISIBLE_DEVICES=%s): wrote and holds %d pages in each of its pools\n", rank, vis,
               NPAGES);
        return 0;
fail:
        /* reaped here: the caller only cleans up workers that started */
        kill(w->pr.pid, SIGKILL);
        kvt_proc_wait(&w->pr);
        w->pr.pid = -1;
        return -1;
}

/* Runs child-check over the pools of the given ranks; its exit status. */
static int run_check(struct kvt_daemon *d, struct worker *w, int r0, int r1)
{
        char *argv[4 + 4 * (3 + NPAGES) + 1], num[8], strs[4][3 + NPAGES][32], *out = NULL;
        int k = 0, n = 0;

        argv[k++] = self;
        argv[k++] = "child-check";
        argv[k++] = d->url;
        argv[k++] = num;
        for (int r = r0; r <= r1; r++)
                for (int s = 0; s < NSPEC; s++, n++) {
                        snprintf(strs[n][0], 32, "%s.tp%d", specs[s], r);
                        snprintf(strs[n][1], 32, "%d", r);
                        snprintf(strs[n][2], 32, "%llu", (unsigned long long)seed_of(r, s));
                        for (int i = 0; i < NPAGES; i++)
                                snprintf(strs[n][3 + i], 32, "%d", w[r].pages[s][i]);
                        for (int i = 0; i < 3 + NPAGES; i++)
                                argv[k++] = strs[n][i];
                }
        argv[k] = NULL;
        snprintf(num, sizeof num, "%d", n);
        int st = kvt_run(argv, &out);
        printf("%s", out ? out : "");
        free(out);
        return st;
}

static double held(struct kvt_daemon *d, int s, int r)
{
        char name[64];

        snprintf(name, sizeof name, "%s.tp%d", specs[s], r);
        return kvt_pool_num(d->url, name, "pages_held");
}

static int write_files(void)
{
        FILE *f;

        snprintf(scales_path, sizeof scales_path, "/tmp/kvtest-tpgpu-%d-scales.json", (int)getpid());
        snprintf(cfg_path, sizeof cfg_path, "/tmp/kvtest-tpgpu-%d-config.json", (int)getpid());
        if (!(f = fopen(scales_path, "w")))
                return -1;
        fprintf(f, "{\"model_type\": \"llama\", \"kv_cache\": {\"dtype\": \"float8_e4m3fn\", \"scaling_factor\": {"
                   "\"0\": {\"0\": %g, \"1\": %g}, \"1\": {\"0\": %g, \"1\": %g}}}}\n",
                factor(0, 0), factor(0, 1), factor(1, 0), factor(1, 1));
        fclose(f);
        if (!(f = fopen(cfg_path, "w")))
                return -1;
        fprintf(f, "{\"pools\": [\n"
                   " {\"name\": \"llama\", \"dtype\": \"fp8_e4m3\", \"layers\": 2, \"kv_heads\": 8, \"head_dim\": 128,\n"
                   "  \"page_size\": 16, \"capacity\": \"64MiB\", \"backend\": \"cuda\", \"tp_size\": 2,\n"
                   "  \"scales\": {\"source\": \"json\", \"path\": \"%s\"}},\n"
                   " {\"name\": \"mini\", \"dtype\": \"fp4_e2m1\", \"layers\": 2, \"kv_heads\": 4, \"head_dim\": 64,\n"
                   "  \"page_size\": 16, \"capacity\": \"32MiB\", \"backend\": \"cuda\", \"tp_size\": 2}]}\n",
                scales_path);
        fclose(f);
        return 0;
}

static void run(struct kvt_daemon *d)
{
        struct worker w[2];
        int s, r;

        /* 1. the pools */
        for (s = 0; s < NSPEC; s++)
                for (r = 0; r < 2; r++) {
                        char name[64];

                        snprintf(name, sizeof name, "%s.tp%d", specs[s], r);
                        double dev = kvt_pool_num(d->url, name, "device");
                        double kh = kvt_pool_num(d->url, name, "kv_heads");
                        EXPECT(dev == r, "%s: STATUS device %g, expected %d", name, dev, r);
                        EXPECT(kh == (s == 0 ? 4 : 2), "%s: kv_heads %g, expected half the spec's", name, kh);
                }

        /* 2. a worker per rank */
        for (r = 0; r < 2; r++)
                if (start_worker(d, r, &w[r]) != 0) {
                        EXPECT(0, "worker %d did not start, write and hold its pages", r);
                        for (int k = 0; k < r; k++) {
                                kill(w[k].pr.pid, SIGKILL);
                                kvt_proc_wait(&w[k].pr);
                        }
                        return;
                }
        for (s = 0; s < NSPEC; s++)
                for (r = 0; r < 2; r++)
                        EXPECT(held(d, s, r) == NPAGES, "%s.tp%d: %g pages held, expected %d", specs[s], r,
                               held(d, s, r), NPAGES);

        /* kvpoolctl status against the real daemon: rank 0's pools on
         * device 0 first, then rank 1's, each holding its worker's pages */
        const char *ctl = kvt_env_path("KVPOOLCTL");
        if (ctl) {
                static const char *const rows[] = { "\n0       llama.tp0  0/2  fp8_e4m3  cuda ",
                                                    "\n0       mini.tp0   0/2  fp4_e2m1  cuda ",
                                                    "\n1       llama.tp1  1/2  fp8_e4m3  cuda ",
                                                    "\n1       mini.tp1   1/2  fp4_e2m1  cuda " };
                char *argv[] = { (char *)ctl, "--socket", d->url, "status", NULL };
                char *out = NULL, *at;

                EXPECT(kvt_run(argv, &out) == 0, "kvpoolctl status failed");
                printf("%s", out ? out : "");
                at = out ? out : "";
                for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
                        char *q = strstr(at, rows[i]);

                        EXPECT(q != NULL, "kvpoolctl status: row \"%s\" missing or out of order", rows[i] + 1);
                        if (q)
                                at = q + 1;
                }
                free(out);
        } else {
                EXPECT(0, "KVPOOLCTL is not set");
        }

        /* 3. the process that sees both */
        EXPECT(run_check(d, w, 0, 1) == 0, "the third process's checks failed");

        /* 4. kill rank 0's worker */
        kill(w[0].pr.pid, SIGKILL);
        EXPECT(kvt_proc_wait(&w[0].pr) == 128 + SIGKILL, "worker 0 was not killed");
        for (s = 0; s < NSPEC; s++) {
                char name[64];

                snprintf(name, sizeof name, "%s.tp0", specs[s]);
                EXPECT(kvt_wait_all_free(d->url, name, 2000), "%s: the killed worker's pages are not back", name);
                EXPECT(held(d, s, 1) == NPAGES, "%s.tp1: %g pages held after rank 0's worker died, expected %d",
                       specs[s], held(d, s, 1), NPAGES);
        }
        printf("worker 0 killed: rank 0's pools all free, rank 1's still hold %d pages each\n", NPAGES);
        EXPECT(run_check(d, w, 1, 1) == 0, "rank 1's pages after the kill");
        char line[64] = "";
        EXPECT(kvt_proc_say(&w[1].pr, "free") == 0 && kvt_proc_line(&w[1].pr, line, sizeof line) == 0 &&
                       strncmp(line, "freed", 5) == 0,
               "worker 1 did not free: '%s'", line);
        EXPECT(kvt_proc_wait(&w[1].pr) == 0, "worker 1 exit status");
        for (s = 0; s < NSPEC; s++) {
                char name[64];

                snprintf(name, sizeof name, "%s.tp1", specs[s]);
                EXPECT(kvt_wait_all_free(d->url, name, 2000), "%s: worker 1's pages are not free", name);
        }
}

int main(int argc, char **argv)
{
        struct kvt_daemon d;
        int n = 0;

        ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
        if (len <= 0)
                return 2;
        self[len] = 0;
        if (argc >= 5 && !strcmp(argv[1], "child-rank"))
                return child_rank(argv[2], argv[3], atoi(argv[4]));
        if (argc >= 4 && !strcmp(argv[1], "child-check"))
                return child_check(argc, argv);

        gpu_require_device("test_tp_gpu");
        CK(cudaGetDeviceCount(&n));
        if (n < 2) {
                printf("test_tp_gpu: needs 2 CUDA devices, this machine has %d: skipped\n", n);
                return GPU_SKIP;
        }
        if (kvt_env_path("KVPOOLD") == NULL || write_files() != 0)
                return 1;
        const char *const args[] = { "--config", cfg_path, NULL };
        if (kvt_daemon_start_args(&d, args) != 0) {
                printf("FAIL: kvpoold with tp_size 2 cuda pools did not start\n");
                unlink(scales_path);
                unlink(cfg_path);
                return 1;
        }
        run(&d);
        EXPECT(kvt_daemon_stop(&d) == 0, "kvpoold did not stop cleanly");
        kvt_daemon_cleanup(&d);
        unlink(scales_path);
        unlink(cfg_path);
        printf("test_tp_gpu: %d failures\n", failures);
        return failures ? 1 : 0;
}
