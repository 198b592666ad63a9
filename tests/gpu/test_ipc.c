/* test_ipc.c - a cuda pool shared across processes through kvpoold (suite
 * 'gpu'; exits 77 without a CUDA device).
 *
 *  1. A GPU worker (a separate process) attaches, allocates pages, writes
 *     them through the kernel and is killed with SIGKILL: the daemon frees
 *     its pages and keeps serving.
 *  2. Process 1 (this one) writes pages through kvc_write (the CUDA kernel)
 *     on an fp8 and an fp4 pool; process 2, a fork+exec of this binary (CUDA
 *     does not survive a bare fork), attaches, opens the IPC handle, gathers
 *     the pages and checks them, and the raw pool bytes, against
 *     kv_ref_write + kv_ref_gather of the same inputs on a private host pool.
 *  3. The daemon restarts: the old client gets -ESTALE from control and data
 *     calls (no crash), a new client works, and the old IPC handle, opened
 *     in a fresh process, gives -ESTALE from kvc__cuda_map.
 */
#include <errno.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

#include "gpu_common.h"
#include "harness.h"
#include "pool_check.h"
#include "kv_proto.h"
#include "client_cuda.h"

static int failures;

#define POOL_GEOM "layers=2,kv_heads=4,head_dim=128,page_size=16,capacity=64MiB,backend=cuda,device=0"
static const char *const pools[] = {
        "name=gpu8,dtype=fp8_e4m3," POOL_GEOM,
        "name=gpu4,dtype=fp4_e2m1," POOL_GEOM,
        NULL,
};
#define NPAGES 5
#define LAYER 1

static char self[512];

/* ---- child modes ------------------------------------------------------------ */

/* child-hold URL POOL: allocate, write, say "held N", wait for stdin to close. */
static int child_hold(const char *url, const char *name)
{
        kvc_client *c;
        kvc_pool *p;
        int32_t pages[NPAGES];
        struct pc_input in;
        char buf[16];

        if (kvc_connect(url, "gpu-holder", NULL, &c) || kvc_attach(c, name, &p) || kvc_alloc(p, NPAGES, pages)) {
                printf("error %s\n", kvc_errmsg(c));
                return 1;
        }
        pc_make_write(&in, kvc_pool_get_desc(p), pages, NPAGES, 7);
        if (pc_gpu_write(p, &in, LAYER)) {
                printf("error %s\n", kvc_errmsg(c));
                return 1;
        }
        printf("held %d\n", NPAGES);
        fflush(stdout);
        while (read(0, buf, sizeof buf) > 0)
                ;
        return 0;
}

/* child-gather URL POOL SEED P0 P1 ...: gather and check against the CPU
 * reference of the same inputs; exit 0 when everything is equal. */
static int child_gather(int argc, char **argv)
{
        const char *url = argv[2], *name = argv[3];
        uint64_t seed = strtoull(argv[4], NULL, 0);
        int32_t pages[NPAGES];
        kvc_client *c;
        kvc_pool *p;

        if (argc != 5 + NPAGES)
                return 2;
        for (int i = 0; i < NPAGES; i++)
                pages[i] = atoi(argv[5 + i]);
        if (kvc_connect(url, "gpu-reader", NULL, &c) || kvc_attach(c, name, &p)) {
                printf("child: attach failed: %s\n", kvc_errmsg(c));
                return 1;
        }
        int bad = pc_check_pages(c, p, pages, NPAGES, seed, LAYER, "child");
        printf("child: %s: %d pages gathered in a second process, %s\n", name, NPAGES, bad ? "MISMATCH" : "equal");
        kvc_detach(p);
        kvc_disconnect(c);
        return bad ? 1 : 0;
}

/* child-stale HANDLEHEX UUIDHEX: open an IPC handle whose daemon is gone. */
static int hexbytes(const char *s, uint8_t *out, size_t n)
{
        for (size_t i = 0; i < n; i++)
                if (sscanf(s + 2 * i, "%2hhx", &out[i]) != 1)
                        return -1;
        return 0;
}

static int child_stale(const char *hh, const char *uh)
{
        struct kv_attach_rep rep;
        char err[512] = "";
        void *base = NULL;
        int dev = -1, r;

        memset(&rep, 0, sizeof rep);
        rep.backend = KV_BACKEND_CUDA;
        if (hexbytes(hh, rep.ipc_handle, 64) || hexbytes(uh, rep.device_uuid, 16))
                return 2;
        r = kvc__cuda_map(&rep, &base, &dev, err, sizeof err);
        printf("child: kvc__cuda_map of the old handle: %d (%s)\n", r, err);
        if (r == 0)
                kvc__cuda_unmap(base, dev);
        return r == -ESTALE ? 0 : 1;
}

/* ---- raw attach: the handle and UUID as the wire carries them ---------------- */

static int raw_attach(const char *url, const char *pool, struct kv_attach_rep *ret)
{
        nng_socket s;
        uint8_t buf[4096];
        nng_msg *m;
        struct kv_hdr h;
        int r = -1;

        if (nng_req0_open(&s) != 0)
                return -1;
        if (nng_dial(s, url, NULL, 0) != 0)
                goto out;
        struct kv_hello_req hq = { .proto_version = KV_PROTO_VERSION, .pid = (uint32_t)getpid() };
        strcpy(hq.name, "raw");
        struct kv_attach_req aq;
        memset(&aq, 0, sizeof aq);
        snprintf(aq.name, sizeof aq.name, "%s", pool);
        for (int step = 0; step < 2; step++) {
                int n = step == 0 ? kv_enc_hello_req(buf, sizeof buf, 1, &hq) : kv_enc_attach_req(buf, sizeof buf, 2, &aq);
                if (n < 0 || nng_msg_alloc(&m, 0) != 0)
                        goto out;
                nng_msg_append(m, buf, (size_t)n);
                if (nng_sendmsg(s, m, 0) != 0) {
                        nng_msg_free(m);
                        goto out;
                }
                if (nng_recvmsg(s, &m, 0) != 0)
                        goto out;
                size_t len = nng_msg_len(m);
                if (len > sizeof buf)
                        len = sizeof buf;
                memcpy(buf, nng_msg_body(m), len);
                nng_msg_free(m);
                if (kv_hdr_decode(buf, len, &h) != 0 || h.opcode == KV_OP_ERROR)
                        goto out;
                if (step == 1 && kv_dec_attach_rep(buf + KV_HDR_SIZE, h.body_len, ret) == 0)
                        r = 0;
        }
out:
        nng_close(s);
        return r;
}

/* ---- the parent ---------------------------------------------------------------- */

static void sigkill_reclaim(struct kvt_daemon *d)
{
        char *argv[] = { self, "child-hold", d->url, "gpu8", NULL };
        struct kvt_proc pr;
        char line[256] = "";

        EXPECT(kvt_spawn(argv, &pr) == 0, "spawn the holder");
        EXPECT(kvt_proc_line(&pr, line, sizeof line) == 0 && strncmp(line, "held", 4) == 0,
               "holder did not report its pages: '%s'", line);
        double total = kvt_pool_num(d->url, "gpu8", "pages_total");
        double fr = kvt_pool_num(d->url, "gpu8", "pages_free");
        EXPECT(fr == total - NPAGES, "while held: %g free of %g, expected %d held", fr, total, NPAGES);
        kill(pr.pid, SIGKILL);
        int st = kvt_proc_wait(&pr);
        EXPECT(st == 128 + SIGKILL, "holder exit status %d", st);
        EXPECT(kvt_wait_all_free(d->url, "gpu8", 2000), "pages of the SIGKILLed GPU worker not free within 2 s");
        printf("sigkill: GPU worker killed while holding %d written pages; pages reclaimed\n", NPAGES);
}

static void cross_process(struct kvt_daemon *d, kvc_client *c, const char *name, uint64_t seed)
{
        kvc_pool *p;
        int32_t pages[NPAGES];
        struct pc_input in;
        char sp[16], pg[NPAGES][16], *out = NULL;

        EXPECT(kvc_attach(c, name, &p) == 0, "attach %s: %s", name, kvc_errmsg(c));
        const struct kvc_pool_desc *desc = kvc_pool_get_desc(p);
        EXPECT(desc->backend == KVC_BACKEND_CUDA, "%s is not a cuda pool", name);
        EXPECT(kvc_alloc(p, NPAGES, pages) == 0, "alloc: %s", kvc_errmsg(c));
        pc_make_write(&in, desc, pages, NPAGES, seed);
        EXPECT(pc_gpu_write(p, &in, LAYER) == 0, "kvc_write: %s", kvc_errmsg(c));
        pc_free_write(&in);

        snprintf(sp, sizeof sp, "%llu", (unsigned long long)seed);
        char *argv[6 + NPAGES] = { self, "child-gather", d->url, (char *)name, sp };
        for (int i = 0; i < NPAGES; i++) {
                snprintf(pg[i], sizeof pg[i], "%d", pages[i]);
                argv[5 + i] = pg[i];
        }
        argv[5 + NPAGES] = NULL;
        int st = kvt_run(argv, &out);
        printf("%s", out ? out : "");
        EXPECT(st == 0, "%s: the second process's gather/check failed (status %d)", name, st);
        free(out);
        EXPECT(kvc_free(p, NPAGES, pages) == 0, "free: %s", kvc_errmsg(c));
}

static void restart_stale(struct kvt_daemon *d)
{
        kvc_client *c, *c2;
        kvc_pool *p;
        int32_t pages[NPAGES];
        struct kv_attach_rep old;
        struct pc_input in;
        char hh[129], uh[33], *out = NULL;

        EXPECT(kvc_connect(d->url, "gpu-stale", NULL, &c) == 0, "connect");
        EXPECT(kvc_attach(c, "gpu8", &p) == 0, "attach: %s", kvc_errmsg(c));
        EXPECT(raw_attach(d->url, "gpu8", &old) == 0, "raw attach for the handle");
        for (int i = 0; i < 64; i++)
                sprintf(hh + 2 * i, "%02x", old.ipc_handle[i]);
        for (int i = 0; i < 16; i++)
                sprintf(uh + 2 * i, "%02x", old.device_uuid[i]);

        EXPECT(kvt_daemon_stop(d) == 0, "daemon stop");
        EXPECT(kvt_daemon_restart(d, pools) == 0, "daemon restart");

        int32_t one[1] = { 0 };
        int r = kvc_alloc(p, 1, one);
        EXPECT(r == -ESTALE, "alloc after restart: %d (%s), expected -ESTALE", r, kvc_errmsg(c));
        for (int i = 0; i < NPAGES; i++)
                pages[i] = i;
        pc_make_write(&in, kvc_pool_get_desc(p), pages, NPAGES, 3);
        r = pc_gpu_write(p, &in, LAYER);
        EXPECT(r == -ESTALE, "kvc_write after restart: %d (%s), expected -ESTALE", r, kvc_errmsg(c));
        pc_free_write(&in);
        kvc_disconnect(c); /* closes the old mapping */

        /* a new client works against the new daemon */
        EXPECT(kvc_connect(d->url, "gpu-new", NULL, &c2) == 0, "reconnect");
        cross_process(d, c2, "gpu8", 4242);
        kvc_disconnect(c2);

        /* the old handle in a fresh process: -ESTALE, not a crash or a mapping */
        char *argv[] = { self, "child-stale", hh, uh, NULL };
        int st = kvt_run(argv, &out);
        printf("%s", out ? out : "");
        EXPECT(st == 0, "the old IPC handle did not give -ESTALE in a fresh process (status %d)", st);
        free(out);
        printf("restart: old client got -ESTALE, new client works\n");
}

int main(int argc, char **argv)
{
        struct kvt_daemon d;
        kvc_client *c;

        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n <= 0)
                return 2;
        self[n] = 0;
        if (argc >= 4 && !strcmp(argv[1], "child-hold"))
                return child_hold(argv[2], argv[3]);
        if (argc >= 5 && !strcmp(argv[1], "child-gather"))
                return child_gather(argc, argv);
        if (argc >= 4 && !strcmp(argv[1], "child-stale"))
                return child_stale(argv[2], argv[3]);

        gpu_require_device("test_ipc");
        if (kvt_env_path("KVPOOLD") == NULL)
                return 1;
        if (kvt_daemon_start(&d, pools) != 0) {
                printf("FAIL: kvpoold with cuda pools did not start\n");
                return 1;
        }
        sigkill_reclaim(&d);
        EXPECT(kvc_connect(d.url, "gpu-writer", NULL, &c) == 0, "connect");
        cross_process(&d, c, "gpu8", 1001);
        cross_process(&d, c, "gpu4", 1002);
        kvc_disconnect(c);
        restart_stale(&d);
        kvt_daemon_cleanup(&d);
        printf("test_ipc: %d failures\n", failures);
        return failures ? 1 : 0;
}
