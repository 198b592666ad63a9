/* test_e2e.c - kvpoold end to end, spoken to with raw nng REQ sockets and the
 * kv_proto encoders (no libkvclient): the request flow, refusals, hostile
 * peers, sessions released when their connection goes away, pool capacity
 * per dtype, --check-config, and a clean shutdown.  $KVPOOLD names the
 * binary (set by meson). */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cjson/cJSON.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include "kv_proto.h"
#include "kv_layout.h"

struct daemon {
        pid_t pid;
        char  dir[64];
        char  url[160];
        char  path[128];
        char  log[128];
};

/* The daemon of the running test, stopped by the suite's fini even when an
 * assertion ended the test early (the test's stack is gone by then: keep the
 * pid in a global), so that no kvpoold outlives its test. */
static pid_t running_pid;

static void kill_leftover(void)
{
        int st;

        if (running_pid <= 0)
                return;
        kill(running_pid, SIGTERM);
        for (int i = 0; i < 250 && waitpid(running_pid, &st, WNOHANG) == 0; i++)
                usleep(20000);
        kill(running_pid, SIGKILL);
        waitpid(running_pid, &st, 0);
        running_pid = 0;
}

TestSuite(e2e, .fini = kill_leftover);

static const char *kvpoold(void)
{
        const char *p = getenv("KVPOOLD");

        cr_assert(p && access(p, X_OK) == 0, "KVPOOLD must name the kvpoold binary (got %s)", p ? p : "nothing");
        return p;
}

static void sleep_ms(int ms)
{
        struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

        nanosleep(&ts, NULL);
}

static void dump_log(const struct daemon *d)
{
        char  buf[4096];
        FILE *f = fopen(d->log, "r");
        size_t n;

        if (!f)
                return;
        n = fread(buf, 1, sizeof(buf) - 1, f);
        buf[n] = 0;
        fclose(f);
        cr_log_error("kvpoold log:\n%s", buf);
}

/* Starts kvpoold with extra arguments (NULL-terminated) on a private socket
 * and waits until it accepts a connection. */
static void start_daemon(struct daemon *d, const char *const *extra)
{
        char *argv[40];
        int   argc = 0;

        signal(SIGPIPE, SIG_IGN);
        strcpy(d->dir, "/tmp/kvtest-d-XXXXXX");
        cr_assert(mkdtemp(d->dir));
        snprintf(d->path, sizeof(d->path), "%s/kvpool.sock", d->dir);
        snprintf(d->url, sizeof(d->url), "ipc://%s", d->path);
        snprintf(d->log, sizeof(d->log), "%s/log", d->dir);
        argv[argc++] = (char *)kvpoold();
        argv[argc++] = "--socket";
        argv[argc++] = d->url;
        argv[argc++] = "--metrics";
        argv[argc++] = "none";
        for (int i = 0; extra && extra[i] && argc < 38; i++)
                argv[argc++] = (char *)extra[i];
        argv[argc] = NULL;
        d->pid = fork();
        cr_assert(d->pid >= 0);
        running_pid = d->pid;
        if (d->pid == 0) {
                int fd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
                dup2(fd, 1); /* never hold the test runner's output pipes */
                dup2(fd, 2);
                execv(argv[0], argv);
                _exit(127);
        }
        for (int i = 0; i < 500; i++) {
                nng_socket s;
                int        st, ok;

                if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
                        running_pid = 0;
                        dump_log(d);
                        cr_assert_fail("kvpoold exited during startup (status %d)", st);
                }
                cr_assert_eq(nng_req0_open(&s), 0);
                ok = nng_dial(s, d->url, NULL, 0) == 0;
                nng_close(s);
                if (ok)
                        return;
                sleep_ms(20);
        }
        dump_log(d);
        cr_assert_fail("kvpoold did not start listening on %s", d->url);
}

/* SIGTERM; returns the exit code (-1 if it did not exit normally). */
static int stop_daemon(struct daemon *d)
{
        int st = 0;

        cr_assert_eq(kill(d->pid, SIGTERM), 0);
        for (int i = 0; i < 500; i++) {
                if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
                        d->pid = 0;
                        running_pid = 0;
                        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
                }
                sleep_ms(20);
        }
        kill(d->pid, SIGKILL);
        waitpid(d->pid, &st, 0);
        dump_log(d);
        cr_assert_fail("kvpoold did not exit within 10 s of SIGTERM");
        return -1;
}

/* Number of /dev/shm objects of daemon pid. */
static int shm_objects(pid_t pid)
{
        char           prefix[48];
        DIR           *dir = opendir("/dev/shm");
        struct dirent *e;
        int            n = 0;

        snprintf(prefix, sizeof(prefix), "kvpool.%d.", (int)pid);
        cr_assert(dir);
        while ((e = readdir(dir)))
                n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
        closedir(dir);
        return n;
}

/* Stops the daemon and checks that nothing is left behind. */
static void stop_clean(struct daemon *d)
{
        pid_t pid = d->pid;
        int   code = stop_daemon(d);

        if (code != 0)
                dump_log(d);
        cr_assert_eq(code, 0, "kvpoold exit code %d after SIGTERM", code);
        cr_assert_eq(shm_objects(pid), 0, "shared memory left in /dev/shm");
        cr_assert_neq(access(d->path, F_OK), 0, "socket file %s left behind", d->path);
        unlink(d->log);
        rmdir(d->dir);
}

/* ---- raw protocol client ----------------------------------------------------- */

static nng_socket client(const char *url, int timeout_ms)
{
        nng_socket s;

        cr_assert_eq(nng_req0_open(&s), 0);
        /* REQ would resend a request after a minute: never run an alloc twice. */
        nng_socket_set_ms(s, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
        nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, timeout_ms);
        cr_assert_eq(nng_dial(s, url, NULL, 0), 0);
        return s;
}

struct rep {
        uint8_t      *buf;
        size_t        len;
        struct kv_hdr h;
        const uint8_t *body;
};

static void rep_free(struct rep *r)
{
        if (r->buf)
                nng_free(r->buf, r->len);
        r->buf = NULL;
}

static struct rep rpc(nng_socket s, const uint8_t *req, size_t len)
{
        struct rep r = { 0 };
        int        rv;

        cr_assert_eq(nng_send(s, (void *)req, len, 0), 0);
        rv = nng_recv(s, &r.buf, &r.len, NNG_FLAG_ALLOC);
        cr_assert_eq(rv, 0, "no reply: %s", nng_strerror(rv));
        cr_assert_eq(kv_hdr_decode(r.buf, r.len, &r.h), 0, "undecodable reply");
        r.body = r.buf + KV_HDR_SIZE;
        return r;
}

/* Expects an ERROR reply with code; returns it for message checks. */
static struct rep rpc_err(nng_socket s, const uint8_t *req, size_t len, uint32_t code, struct kv_error *ret)
{
        struct rep r = rpc(s, req, len);

        cr_assert_eq(r.h.opcode, KV_OP_ERROR, "expected an error %s, got opcode 0x%x", kv_err_name(code), r.h.opcode);
        cr_assert_eq(kv_dec_error(r.body, r.h.body_len, ret), 0);
        cr_assert_eq(ret->code, code, "expected %s, got %s: %.*s", kv_err_name(code), kv_err_name(ret->code),
                     (int)ret->len, ret->msg);
        return r;
}

static uint8_t req[1 << 18];

static struct kv_hello_rep hello(nng_socket s, const char *name, int tenant)
{
        struct kv_hello_req m = { .proto_version = KV_PROTO_VERSION, .pid = (uint32_t)getpid() };
        struct kv_hello_rep h;
        struct rep          r;

        snprintf(m.name, sizeof(m.name), "%s", name);
        if (tenant)
                memset(m.tenant_salt, tenant, sizeof(m.tenant_salt));
        r = rpc(s, req, (size_t)kv_enc_hello_req(req, sizeof(req), 1, &m));
        cr_assert_eq(r.h.opcode, KV_OP_HELLO | KV_OP_REPLY);
        cr_assert_eq(r.h.request_id, 1);
        cr_assert_eq(kv_dec_hello_rep(r.body, r.h.body_len, &h), 0);
        rep_free(&r);
        return h;
}

/* Attaches pool name; *ret_buf keeps the reply alive for the scales. */
static struct kv_attach_rep attach(nng_socket s, const char *name, struct rep *keep)
{
        struct kv_attach_req m = { { 0 } };
        struct kv_attach_rep a;

        snprintf(m.name, sizeof(m.name), "%s", name);
        *keep = rpc(s, req, (size_t)kv_enc_attach_req(req, sizeof(req), 2, &m));
        cr_assert_eq(keep->h.opcode, KV_OP_ATTACH | KV_OP_REPLY, "attach %s failed", name);
        cr_assert_eq(kv_dec_attach_rep(keep->body, keep->h.body_len, &a), 0);
        return a;
}

static uint32_t alloc_pages(nng_socket s, uint32_t pool, uint32_t n, uint32_t *ids)
{
        struct kv_alloc_req m = { pool, n };
        struct kv_pages     pg;
        struct rep          r = rpc(s, req, (size_t)kv_enc_alloc_req(req, sizeof(req), 3, &m));

        cr_assert_eq(r.h.opcode, KV_OP_ALLOC | KV_OP_REPLY, "alloc of %u failed", n);
        cr_assert_eq(kv_dec_pages(r.body, r.h.body_len, KV_OP_ALLOC | KV_OP_REPLY, &pg), 0);
        cr_assert_eq(pg.count, n);
        for (uint32_t i = 0; i < n; i++)
                ids[i] = kv_le32(pg.ids + 4 * i);
        rep_free(&r);
        return n;
}

static size_t enc_free(uint32_t pool, uint32_t n, const uint32_t *ids)
{
        return (size_t)kv_enc_pages(req, sizeof(req), KV_OP_FREE, 4, pool, n, ids);
}

static cJSON *status(nng_socket s)
{
        struct kv_text t;
        struct rep     r = rpc(s, req, (size_t)kv_enc_u32_req(req, sizeof(req), KV_OP_STATUS, 5, 0));
        cJSON         *j;

        cr_assert_eq(r.h.opcode, KV_OP_STATUS | KV_OP_REPLY);
        cr_assert_eq(kv_dec_text(r.body, r.h.body_len, &t), 0);
        j = cJSON_ParseWithLength(t.text, t.len);
        cr_assert(j, "STATUS is not JSON: %.*s", (int)t.len, t.text);
        rep_free(&r);
        return j;
}

static const cJSON *status_pool(const cJSON *st, const char *name)
{
        const cJSON *p;

        cJSON_ArrayForEach(p, cJSON_GetObjectItem(st, "pools"))
                if (strcmp(cJSON_GetObjectItem(p, "name")->valuestring, name) == 0)
                        return p;
        cr_assert_fail("pool %s missing from STATUS", name);
        return NULL;
}

static double num(const cJSON *o, const char *key)
{
        const cJSON *v = cJSON_GetObjectItem(o, key);

        cr_assert(cJSON_IsNumber(v), "STATUS key %s missing or not a number", key);
        return v->valuedouble;
}

/* Polls STATUS until pool's pages_free equals pages_total (or ms pass). */
static int wait_all_free(nng_socket s, const char *pool, int ms)
{
        for (int t = 0; t <= ms; t += 10) {
                cJSON *st = status(s);
                const cJSON *p = status_pool(st, pool);
                int done = num(p, "pages_free") == num(p, "pages_total");

                cJSON_Delete(st);
                if (done)
                        return 1;
                sleep_ms(10);
        }
        return 0;
}

static void check_layout(const struct kv_attach_rep *a)
{
        struct kv_geom   g = { (enum kvc_dtype)a->dtype, a->num_layers, a->kv_heads, a->head_dim, a->page_size };
        struct kv_layout L;

        cr_assert_eq(kv_layout_init(&g, a->num_pages, &L), 0);
        cr_assert_eq(a->pool_bytes, L.alloc_bytes);
        cr_assert_eq(a->layer_stride, L.layer_stride);
        cr_assert_eq(a->k_offset, L.k_offset);
        cr_assert_eq(a->v_offset, L.v_offset);
        cr_assert_eq(a->ks_offset, L.ks_offset);
        cr_assert_eq(a->vs_offset, L.vs_offset);
        cr_assert_eq(a->page_bytes, L.page_bytes);
        cr_assert_eq(a->token_bytes, L.token_bytes);
        cr_assert_eq(a->head_bytes, L.head_bytes);
        cr_assert_eq(a->scale_page_bytes, L.scale_page_bytes);
        cr_assert_eq(a->scale_token_bytes, L.scale_token_bytes);
        cr_assert_eq(a->scale_head_bytes, L.scale_head_bytes);
}

#define SMALL_POOL "name=a,dtype=bf16,layers=2,kv_heads=2,head_dim=64,page_size=16,capacity=4MiB"

/* ---- tests --------------------------------------------------------------------- */

Test(e2e, request_flow)
{
        const char *const   args[] = { "--pool", SMALL_POOL, NULL };
        struct daemon       d;
        struct kv_error     e;
        struct kv_hello_rep h;
        struct kv_attach_rep a;
        struct rep          r, keep;
        uint32_t            ids[64], bad;
        char                shm[96];
        struct stat         sb;

        start_daemon(&d, args);
        nng_socket s = client(d.url, 5000);

        /* nothing before hello */
        r = rpc_err(s, req, (size_t)kv_enc_u32_req(req, sizeof(req), KV_OP_STATUS, 9, 0), KV_E_NOHELLO, &e);
        cr_assert_eq(r.h.request_id, 9);
        rep_free(&r);
        r = rpc_err(s, req, (size_t)kv_enc_alloc_req(req, sizeof(req), 9, &(struct kv_alloc_req){ 0, 1 }),
                    KV_E_NOHELLO, &e);
        rep_free(&r);

        h = hello(s, "e2e", 0);
        cr_assert_gt(h.session_id, 0);
        cr_assert_eq(h.num_pools, 1);
        cr_assert_eq(h.max_frame, KV_MAX_FRAME);
        {
                struct kv_hello_req m = { .proto_version = KV_PROTO_VERSION, .name = "again" };
                r = rpc_err(s, req, (size_t)kv_enc_hello_req(req, sizeof(req), 1, &m), KV_E_NOHELLO, &e);
                rep_free(&r);
        }

        /* a pool must be attached before use */
        r = rpc_err(s, req, (size_t)kv_enc_alloc_req(req, sizeof(req), 3, &(struct kv_alloc_req){ 0, 1 }),
                    KV_E_NOPOOL, &e);
        rep_free(&r);
        {
                struct kv_attach_req m = { "nope" };
                r = rpc_err(s, req, (size_t)kv_enc_attach_req(req, sizeof(req), 2, &m), KV_E_NOPOOL, &e);
                cr_assert(memmem(e.msg, e.len, "nope", 4));
                rep_free(&r);
        }
        a = attach(s, "a", &keep);
        cr_assert_eq(a.pool_id, 0);
        cr_assert_eq(a.dtype, KVC_DTYPE_BF16);
        cr_assert_eq(a.backend, KV_BACKEND_HOST);
        cr_assert_eq(a.num_layers, 2);
        cr_assert_eq(a.kv_heads, 2);
        cr_assert_eq(a.head_dim, 64);
        cr_assert_eq(a.page_size, 16);
        cr_assert_neq(a.pool_epoch, 0);
        cr_assert_str_eq(a.scale_source, "constant");
        for (uint32_t l = 0; l < a.num_layers; l++) {
                cr_assert_float_eq(kv_attach_k_scale(&a, l), 1.0f, 0);
                cr_assert_float_eq(kv_attach_v_scale(&a, l), 1.0f, 0);
        }
        check_layout(&a);
        cr_assert_leq(a.pool_bytes, 4u << 20);
        snprintf(shm, sizeof(shm), "/dev/shm%s", a.shm_name);
        cr_assert_eq(stat(shm, &sb), 0, "%s missing", shm);
        cr_assert_eq((uint64_t)sb.st_size, a.pool_bytes);
        cr_assert_eq(sb.st_mode & 0777, 0600, "shm mode %o", sb.st_mode & 0777);
        cr_assert_eq(stat(d.path, &sb), 0);
        cr_assert_eq(sb.st_mode & 0777, 0600, "socket mode %o", sb.st_mode & 0777);
        rep_free(&keep);

        /* alloc: distinct pages in range */
        alloc_pages(s, 0, 10, ids);
        for (int i = 0; i < 10; i++) {
                cr_assert_lt(ids[i], a.num_pages);
                for (int j = 0; j < i; j++)
                        cr_assert_neq(ids[i], ids[j]);
        }
        {
                cJSON *st = status(s);
                const cJSON *p = status_pool(st, "a"), *c;
                int found = 0;

                cr_assert_eq(num(p, "pages_total"), a.num_pages);
                cr_assert_eq(num(p, "pages_held"), 10);
                cr_assert_eq(num(p, "pages_free"), a.num_pages - 10);
                cr_assert_eq(num(p, "token_capacity"), (double)a.num_pages * 16);
                cr_assert_eq(num(p, "bytes"), (double)a.pool_bytes);
                cr_assert_eq(num(st, "pid"), d.pid);
                cr_assert_str_eq(cJSON_GetObjectItem(st, "socket")->valuestring, d.url);
                cJSON_ArrayForEach(c, cJSON_GetObjectItem(st, "clients")) {
                        if (strcmp(cJSON_GetObjectItem(c, "name")->valuestring, "e2e"))
                                continue;
                        found = 1;
                        cr_assert_eq(num(c, "pages_held"), 10);
                        cr_assert_eq(num(c, "pid"), getpid());
                        cr_assert_eq(num(c, "uid"), getuid());
                        cr_assert_eq(num(c, "session_id"), h.session_id);
                        cr_assert(cJSON_IsFalse(cJSON_GetObjectItem(c, "tenant")));
                }
                cr_assert(found, "client e2e missing from STATUS");
                cJSON_Delete(st);
        }

        /* free: all or nothing */
        r = rpc(s, req, enc_free(0, 5, ids));
        cr_assert_eq(r.h.opcode, KV_OP_FREE | KV_OP_REPLY);
        rep_free(&r);
        r = rpc_err(s, req, enc_free(0, 2, ids + 4), KV_E_NOTHELD, &e);
        {
                char want[32];
                snprintf(want, sizeof(want), "page %u ", ids[4]);
                cr_assert(memmem(e.msg, e.len, want, strlen(want)), "%.*s", (int)e.len, e.msg);
        }
        rep_free(&r);
        bad = a.num_pages;
        ids[63] = bad;
        r = rpc_err(s, req, enc_free(0, 1, &ids[63]), KV_E_BADPAGE, &e);
        rep_free(&r);
        /* ids[5] must still be held after the refused requests */
        r = rpc(s, req, enc_free(0, 5, ids + 5));
        cr_assert_eq(r.h.opcode, KV_OP_FREE | KV_OP_REPLY);
        rep_free(&r);

        /* no space: the message says how many are free */
        r = rpc_err(s, req, (size_t)kv_enc_alloc_req(req, sizeof(req), 3,
                                                     &(struct kv_alloc_req){ 0, a.num_pages + 1 }), KV_E_NOSPACE, &e);
        {
                char want[128];
                snprintf(want, sizeof(want), "pool a: %u pages requested, %u free (0 cached evictable)",
                         a.num_pages + 1, a.num_pages);
                cr_assert(memmem(e.msg, e.len, want, strlen(want)), "%.*s", (int)e.len, e.msg);
        }
        rep_free(&r);

        r = rpc(s, req, (size_t)kv_enc_empty(req, sizeof(req), KV_OP_BYE, 8));
        cr_assert_eq(r.h.opcode, KV_OP_BYE | KV_OP_REPLY);
        cr_assert_eq(r.h.request_id, 8);
        rep_free(&r);
        nng_close(s);
        stop_clean(&d);
}

Test(e2e, cannot_free_another_clients_page)
{
        const char *const args[] = { "--pool", SMALL_POOL, NULL };
        struct daemon     d;
        struct kv_error   e;
        struct rep        r, keep;
        uint32_t          id;

        start_daemon(&d, args);
        nng_socket A = client(d.url, 5000), B = client(d.url, 5000);
        hello(A, "A", 0);
        hello(B, "B", 0);
        attach(A, "a", &keep);
        rep_free(&keep);
        attach(B, "a", &keep);
        rep_free(&keep);
        alloc_pages(A, 0, 1, &id);
        r = rpc_err(B, req, enc_free(0, 1, &id), KV_E_NOTHELD, &e);
        rep_free(&r);
        {
                cJSON *st = status(B);
                cr_assert_eq(num(status_pool(st, "a"), "pages_held"), 1);
                cJSON_Delete(st);
        }
        r = rpc(A, req, enc_free(0, 1, &id));
        cr_assert_eq(r.h.opcode, KV_OP_FREE | KV_OP_REPLY);
        rep_free(&r);
        nng_close(A);
        nng_close(B);
        stop_clean(&d);
}

/* Sends raw bytes on a fresh unix socket connection to the daemon. */
static void raw_unix(const char *path, const void *bytes, size_t n, int read_back)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        char               junk[64];
        int                fd = socket(AF_UNIX, SOCK_STREAM, 0);

        cr_assert(fd >= 0);
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
        cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        if (write(fd, bytes, n) < 0)
                cr_log_info("write: %s", strerror(errno));
        if (read_back) {
                struct timeval tv = { 2, 0 };
                setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
                while (read(fd, junk, sizeof(junk)) > 0)
                        ; /* until the daemon hangs up (or 2 s) */
        }
        close(fd);
}

Test(e2e, hostile_peers_do_not_hurt_others)
{
        const char *const args[] = { "--pool", SMALL_POOL, NULL };
        struct daemon     d;
        struct kv_error   e;
        struct rep        r, keep;
        uint32_t          ids[4];
        uint8_t           junk[64];

        start_daemon(&d, args);
        nng_socket good = client(d.url, 5000);
        hello(good, "good", 0);
        attach(good, "a", &keep);
        rep_free(&keep);
        alloc_pages(good, 0, 2, ids);

        nng_socket bad = client(d.url, 5000);
        /* garbage shorter than a header, then a header-sized one */
        r = rpc_err(bad, (const uint8_t *)"garbage!!", 9, KV_E_PROTO, &e);
        rep_free(&r);
        memset(junk, 0xAB, sizeof(junk));
        r = rpc_err(bad, junk, sizeof(junk), KV_E_MAGIC, &e);
        rep_free(&r);
        /* a truncated hello */
        {
                struct kv_hello_req m = { .proto_version = KV_PROTO_VERSION, .name = "trunc" };
                int n = kv_enc_hello_req(req, sizeof(req), 1, &m);
                r = rpc_err(bad, req, (size_t)n - 5, KV_E_PROTO, &e);
                rep_free(&r);
                /* header says more than is there */
                r = rpc_err(bad, req, KV_HDR_SIZE + 3, KV_E_PROTO, &e);
                rep_free(&r);
                /* wrong version */
                n = kv_enc_hello_req(req, sizeof(req), 1, &m);
                req[4] = 9;
                r = rpc_err(bad, req, (size_t)n, KV_E_VERSION, &e);
                rep_free(&r);
        }
        /* unknown opcode, and a reply opcode sent as a request */
        kv_enc_empty(req, sizeof(req), KV_OP_BYE, 1);
        req[6] = 0x42;
        r = rpc_err(bad, req, KV_HDR_SIZE, KV_E_OPCODE, &e);
        rep_free(&r);
        kv_enc_empty(req, sizeof(req), KV_OP_BYE, 1);
        req[7] = 0x80;
        r = rpc_err(bad, req, KV_HDR_SIZE, KV_E_OPCODE, &e);
        rep_free(&r);
        /* after hello: bad counts and names */
        hello(bad, "bad", 0);
        attach(bad, "a", &keep);
        rep_free(&keep);
        {
                uint8_t *p = req;
                int n = kv_enc_alloc_req(req, sizeof(req), 3, &(struct kv_alloc_req){ 0, 1 });
                kv_put32(p + KV_HDR_SIZE + 4, 0);
                r = rpc_err(bad, req, (size_t)n, KV_E_INVAL, &e);
                rep_free(&r);
                kv_put32(p + KV_HDR_SIZE + 4, KV_MAX_PAGES_REQ + 1);
                r = rpc_err(bad, req, (size_t)n, KV_E_TOOBIG, &e);
                rep_free(&r);
                n = kv_enc_pages(req, sizeof(req), KV_OP_FREE, 4, 0, 1, ids);
                kv_put32(p + KV_HDR_SIZE + 4, 1000); /* count disagrees with the body */
                r = rpc_err(bad, req, (size_t)n, KV_E_PROTO, &e);
                rep_free(&r);
                r = rpc_err(bad, req, (size_t)kv_enc_alloc_req(req, sizeof(req), 3, &(struct kv_alloc_req){ 7, 1 }),
                            KV_E_NOPOOL, &e);
                rep_free(&r);
        }
        nng_close(bad);

        /* an oversized frame: nng refuses it and drops that connection */
        {
                nng_socket big = client(d.url, 1000);
                size_t     n = (2u << 20);
                uint8_t   *b = calloc(1, n);
                uint8_t   *rb;
                size_t     rl;

                kv_hdr_encode(b, n, KV_OP_STATUS, 1, (uint32_t)(n - KV_HDR_SIZE));
                cr_assert_eq(nng_send(big, b, n, 0), 0);
                cr_assert_neq(nng_recv(big, &rb, &rl, NNG_FLAG_ALLOC), 0, "a 2 MiB frame got a reply");
                free(b);
                nng_close(big);
        }
        /* raw bytes that are not even the SP handshake */
        raw_unix(d.path, "GET / HTTP/1.0\r\n\r\n", 18, 1);
        /* a valid REQ handshake, then a frame announcing 1 GiB */
        {
                uint8_t m[8 + 9 + 4] = { 0x00, 'S', 'P', 0x00, 0x00, 0x30, 0x00, 0x00, 0x01 };
                uint64_t len = 1ull << 30;
                for (int i = 0; i < 8; i++)
                        m[9 + i] = (uint8_t)(len >> (56 - 8 * i));
                raw_unix(d.path, m, sizeof(m), 1);
        }

        /* the daemon is alive and the good client is still served */
        cr_assert_eq(kill(d.pid, 0), 0);
        alloc_pages(good, 0, 2, ids + 2);
        {
                cJSON *st = status(good);
                cr_assert_eq(num(status_pool(st, "a"), "pages_held"), 4);
                cJSON_Delete(st);
        }
        r = rpc(good, req, enc_free(0, 4, ids));
        cr_assert_eq(r.h.opcode, KV_OP_FREE | KV_OP_REPLY);
        rep_free(&r);
        nng_close(good);
        stop_clean(&d);
}

/* The doomed client of lost_connections_release_pages: this binary re-run
 * with KVTEST_DOOMED_URL set.  It runs before Criterion's main (a forked
 * child of a process that used nng may not use nng: it must exec), holds
 * 30 pages, says so on fd KVTEST_DOOMED_FD, and waits to be killed. */
static int doomed_rpc(nng_socket s, uint8_t *m, int n, uint16_t want)
{
        uint8_t      *b;
        size_t        l;
        struct kv_hdr h;
        int           ok;

        if (n < 0 || nng_send(s, m, (size_t)n, 0) || nng_recv(s, &b, &l, NNG_FLAG_ALLOC))
                return -1;
        ok = kv_hdr_decode(b, l, &h) == 0 && h.opcode == want;
        nng_free(b, l);
        return ok ? 0 : -1;
}

__attribute__((constructor)) static void doomed_client(void)
{
        const char          *url = getenv("KVTEST_DOOMED_URL"), *fd = getenv("KVTEST_DOOMED_FD");
        struct kv_hello_req  hm = { .proto_version = KV_PROTO_VERSION, .name = "doomed" };
        struct kv_attach_req am = { "a" };
        struct kv_alloc_req  al = { 0, 30 };
        static uint8_t       m[4096];
        nng_socket           s;

        if (!url || !fd)
                return;
        if (nng_req0_open(&s) || nng_dial(s, url, NULL, 0) ||
            doomed_rpc(s, m, kv_enc_hello_req(m, sizeof(m), 1, &hm), KV_OP_HELLO | KV_OP_REPLY) ||
            doomed_rpc(s, m, kv_enc_attach_req(m, sizeof(m), 2, &am), KV_OP_ATTACH | KV_OP_REPLY) ||
            doomed_rpc(s, m, kv_enc_alloc_req(m, sizeof(m), 3, &al), KV_OP_ALLOC | KV_OP_REPLY))
                _exit(1);
        if (write(atoi(fd), "k", 1) != 1)
                _exit(1);
        for (;;)
                pause();
}

Test(e2e, lost_connections_release_pages)
{
        const char *const args[] = { "--pool", SMALL_POOL, NULL };
        struct daemon     d;
        struct rep        keep;
        uint32_t          ids[64];
        int               from_child[2];
        pid_t             child;
        char              c, fdstr[16];

        start_daemon(&d, args);
        nng_socket watcher = client(d.url, 5000);
        hello(watcher, "watcher", 0);

        /* a client that closes without BYE */
        nng_socket A = client(d.url, 5000);
        hello(A, "A", 0);
        attach(A, "a", &keep);
        rep_free(&keep);
        alloc_pages(A, 0, 20, ids);
        nng_close(A);
        cr_assert(wait_all_free(watcher, "a", 1000), "pages of a closed connection not released within 1 s");

        /* a client killed with SIGKILL while holding pages */
        cr_assert_eq(pipe(from_child), 0);
        snprintf(fdstr, sizeof(fdstr), "%d", from_child[1]);
        child = fork();
        cr_assert(child >= 0);
        if (child == 0) {
                char *argv[] = { "test_daemon_e2e", NULL };

                setenv("KVTEST_DOOMED_URL", d.url, 1);
                setenv("KVTEST_DOOMED_FD", fdstr, 1);
                execv("/proc/self/exe", argv);
                _exit(127);
        }
        close(from_child[1]);
        cr_assert_eq(read(from_child[0], &c, 1), 1, "the doomed client failed");
        {
                cJSON *st = status(watcher);
                cr_assert_eq(num(status_pool(st, "a"), "pages_held"), 30);
                cJSON_Delete(st);
        }
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
        cr_assert(wait_all_free(watcher, "a", 1000), "pages of a killed client not released within 1 s");
        nng_close(watcher);
        stop_clean(&d);
}

Test(e2e, prefix_cache_requests)
{
        const char *const args[] = { "--pool", SMALL_POOL, NULL };
        struct daemon     d;
        struct rep        r, keep;
        struct kv_pages   pg;
        uint32_t          ids[2];
        uint8_t           keys[3][KV_KEY_LEN];

        memset(keys, 0, sizeof(keys));
        keys[0][0] = 1;
        keys[1][0] = 2;
        keys[2][0] = 3;
        start_daemon(&d, args);
        nng_socket A = client(d.url, 5000), T = client(d.url, 5000);
        hello(A, "A", 0);
        hello(T, "tenant", 7);
        attach(A, "a", &keep);
        rep_free(&keep);
        attach(T, "a", &keep);
        rep_free(&keep);
        alloc_pages(A, 0, 2, ids);
        r = rpc(A, req, (size_t)kv_enc_publish_req(req, sizeof(req), 6, 0, 2, ids, (const uint8_t (*)[16])keys));
        cr_assert_eq(r.h.opcode, KV_OP_PUBLISH | KV_OP_REPLY);
        rep_free(&r);
        r = rpc(A, req, enc_free(0, 2, ids));
        rep_free(&r);
        /* the whole run of 2 hits (the third key is unknown), same pages */
        r = rpc(A, req, (size_t)kv_enc_lookup_req(req, sizeof(req), 7, 0, 3, (const uint8_t (*)[16])keys));
        cr_assert_eq(r.h.opcode, KV_OP_LOOKUP | KV_OP_REPLY);
        cr_assert_eq(kv_dec_pages(r.body, r.h.body_len, KV_OP_LOOKUP | KV_OP_REPLY, &pg), 0);
        cr_assert_eq(pg.count, 2);
        cr_assert_eq(kv_le32(pg.ids), ids[0]);
        cr_assert_eq(kv_le32(pg.ids + 4), ids[1]);
        rep_free(&r);
        /* another tenant finds nothing */
        r = rpc(T, req, (size_t)kv_enc_lookup_req(req, sizeof(req), 7, 0, 3, (const uint8_t (*)[16])keys));
        cr_assert_eq(kv_dec_pages(r.body, r.h.body_len, KV_OP_LOOKUP | KV_OP_REPLY, &pg), 0);
        cr_assert_eq(pg.count, 0);
        rep_free(&r);
        {
                cJSON *st = status(A);
                const cJSON *p = status_pool(st, "a");
                cr_assert_eq(num(p, "pages_cached"), 2);
                cr_assert_eq(num(p, "pages_held"), 2);
                cr_assert_eq(num(p, "hits"), 2);
                cr_assert_gt(num(p, "lookups"), 2);
                cJSON_Delete(st);
        }
        /* publishing a page one does not hold is refused */
        {
                struct kv_error e;
                r = rpc_err(T, req, (size_t)kv_enc_publish_req(req, sizeof(req), 6, 0, 1, ids,
                                                               (const uint8_t (*)[16])keys), KV_E_NOTHELD, &e);
                rep_free(&r);
        }
        nng_close(A);
        nng_close(T);
        stop_clean(&d);
}

Test(e2e, capacity_by_dtype)
{
        /* same byte budget, three dtypes: bf16 = 2 bytes, fp8 = 1, fp4 =
         * 0.5 + 1/16 per element, so tokens stand 1 : 2 : 3.56 */
        const char *const args[] = {
                "--pool", "name=b16,dtype=bf16,layers=2,kv_heads=2,head_dim=64,page_size=16,capacity=64MiB",
                "--pool", "name=f8,dtype=fp8_e4m3,layers=2,kv_heads=2,head_dim=64,page_size=16,capacity=64MiB",
                "--pool", "name=f4,dtype=fp4_e2m1,layers=2,kv_heads=2,head_dim=64,page_size=16,capacity=64MiB",
                NULL };
        const char *names[3] = { "b16", "f8", "f4" };
        const double bpe[3] = { 2.0, 1.0, 0.5 + 1.0 / 16.0 };
        double       tokens[3];
        struct daemon d;

        start_daemon(&d, args);
        nng_socket s = client(d.url, 5000);
        hello(s, "cap", 0);
        cJSON *st = status(s);
        for (int i = 0; i < 3; i++) {
                const cJSON         *p = status_pool(st, names[i]);
                struct rep           keep;
                struct kv_attach_rep a = attach(s, names[i], &keep);
                double ideal = (double)(64u << 20) / (2.0 * 2 * 2 * 64 * bpe[i]);

                tokens[i] = num(p, "token_capacity");
                cr_assert_eq(tokens[i], (double)a.num_pages * 16);
                cr_assert_leq(num(p, "bytes"), 64u << 20);
                cr_assert_eq(num(p, "bytes"), (double)a.pool_bytes);
                cr_assert(fabs(tokens[i] - ideal) <= 16.0, "%s: %g tokens, ideal %g: more than a page apart",
                          names[i], tokens[i], ideal);
                check_layout(&a);
                rep_free(&keep);
        }
        cJSON_Delete(st);
        cr_log_info("token capacity bf16 %g fp8 %g fp4 %g: ratios %.4f %.4f", tokens[0], tokens[1], tokens[2],
                    tokens[1] / tokens[0], tokens[2] / tokens[0]);
        cr_assert(fabs(tokens[1] / tokens[0] - 2.0) <= 2.0 * 16 / tokens[0], "fp8/bf16 = %g", tokens[1] / tokens[0]);
        cr_assert(fabs(tokens[2] / tokens[0] - 32.0 / 9.0) <= 4.0 * 16 / tokens[0], "fp4/bf16 = %g",
                  tokens[2] / tokens[0]);
        cr_assert_eq(round(tokens[1] / tokens[0] * 100), 200);
        cr_assert_eq(round(tokens[2] / tokens[0] * 100), 356);
        nng_close(s);
        stop_clean(&d);
}

/* Runs kvpoold with args; returns its exit code, output in out. */
static int run_kvpoold(const char *const *args, char *out, size_t cap, pid_t *ret_pid)
{
        char *argv[16];
        int   argc = 0, fds[2], st;
        size_t n = 0;
        ssize_t k;
        pid_t pid;

        argv[argc++] = (char *)kvpoold();
        for (int i = 0; args[i]; i++)
                argv[argc++] = (char *)args[i];
        argv[argc] = NULL;
        cr_assert_eq(pipe(fds), 0);
        pid = fork();
        if (pid == 0) {
                dup2(fds[1], 1);
                dup2(fds[1], 2);
                close(fds[0]);
                execv(argv[0], argv);
                _exit(127);
        }
        close(fds[1]);
        while (n + 1 < cap && (k = read(fds[0], out + n, cap - 1 - n)) > 0)
                n += (size_t)k;
        out[n] = 0;
        close(fds[0]);
        waitpid(pid, &st, 0);
        if (ret_pid)
                *ret_pid = pid;
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(e2e, check_config)
{
        char        out[8192], cfg[64];
        pid_t       pid;
        FILE       *f;
        const char *good[] = { "--check-config", "--metrics", "none", "--socket", "ipc:///tmp/kvtest-cc.sock",
                               "--pool", SMALL_POOL, NULL };

        cr_assert_eq(run_kvpoold(good, out, sizeof(out), &pid), 0, "%s", out);
        cr_assert(strstr(out, "pool a"), "%s", out);
        cr_assert(strstr(out, "configuration OK"), "%s", out);
        cr_assert_eq(shm_objects(pid), 0, "--check-config allocated shared memory");

        snprintf(cfg, sizeof(cfg), "/tmp/kvtest-cc-%d.json", (int)getpid());
        f = fopen(cfg, "w");
        fputs("{\"pools\": [{\"name\": \"x\", \"dtype\": \"fp8_e4m3\", \"layers\": 2, \"kv_heads\": 2,\n"
              " \"head_dim\": 64, \"page_size\": 16, \"capacity\": \"8MiB\",\n"
              " \"scales\": {\"source\": \"json\", \"path\": \"/nonexistent/kvtest-scales.json\"}}]}\n", f);
        fclose(f);
        {
                const char *bad[] = { "--check-config", "--config", cfg, NULL };
                cr_assert_eq(run_kvpoold(bad, out, sizeof(out), NULL), 1, "%s", out);
                cr_assert(strstr(out, "kvtest-scales.json"), "scale error does not name the file: %s", out);
        }
        f = fopen(cfg, "w");
        fputs("{\"pools\": [{\"name\": \"x\", \"dtype\": \"bf16\", \"layers\": 2, \"kv_heads\": 2,\n"
              " \"head_dim\": 64, \"page_sise\": 16, \"capacity\": \"8MiB\"}]}\n", f);
        fclose(f);
        {
                const char *bad[] = { "--check-config", "--config", cfg, NULL };
                cr_assert_eq(run_kvpoold(bad, out, sizeof(out), NULL), 1, "%s", out);
                cr_assert(strstr(out, "pools[0].page_sise"), "%s", out);
        }
        unlink(cfg);
        {
                const char *help[] = { "--help", NULL };
                cr_assert_eq(run_kvpoold(help, out, sizeof(out), NULL), 0);
                cr_assert(strstr(out, "--pool"), "%s", out);
        }
}

Test(e2e, failed_start_leaves_nothing)
{
        /* the pools are made, then listening fails: exit 1, no shm left */
        char        out[8192];
        pid_t       pid;
        const char *args[] = { "--metrics", "none", "--socket", "ipc:///proc/kvtest-no/kvpool.sock",
                               "--pool", SMALL_POOL, NULL };

        cr_assert_eq(run_kvpoold(args, out, sizeof(out), &pid), 1, "%s", out);
        cr_assert(strstr(out, "/proc/kvtest-no"), "%s", out);
        cr_assert_eq(shm_objects(pid), 0, "a failed start left shared memory behind");
}

/* The log of daemon d so far, NUL-terminated (static buffer). */
static const char *read_log(const struct daemon *d)
{
        static char buf[16384];
        FILE       *f = fopen(d->log, "r");
        size_t      n = 0;

        if (f) {
                n = fread(buf, 1, sizeof(buf) - 1, f);
                fclose(f);
        }
        buf[n] = 0;
        return buf;
}

Test(e2e, pressure_crossings_are_announced_once)
{
        /* 256 pages; pressure below 10% free, relieved above 20% */
        const char *const args[] = { "--pool", "name=a,dtype=bf16,layers=2,kv_heads=2,head_dim=64,page_size=16,capacity=4MiB",
                                     NULL };
        struct daemon     d;
        struct rep        r, keep;
        static uint32_t   ids[256];
        const char       *log, *at;

        start_daemon(&d, args);
        nng_socket s = client(d.url, 5000);
        hello(s, "p", 0);
        struct kv_attach_rep a = attach(s, "a", &keep);
        rep_free(&keep);
        cr_assert_eq(a.num_pages, 256);
        alloc_pages(s, 0, 200, ids);            /* 21.9% free: nothing */
        alloc_pages(s, 0, 35, ids + 200);       /* 8.2% free: pressure */
        alloc_pages(s, 0, 5, ids + 235);        /* 6.25%: still, no repeat */
        r = rpc(s, req, enc_free(0, 20, ids));  /* 14.1%: between, no change */
        rep_free(&r);
        log = read_log(&d);
        cr_assert(strstr(log, "pool a: under pressure, 8.2% free (below 10.0%)"), "%s", log);
        cr_assert_null(strstr(strstr(log, "under pressure") + 1, "under pressure"), "announced twice: %s", log);
        cr_assert_null(strstr(log, "relieved"), "%s", log);
        r = rpc(s, req, enc_free(0, 20, ids + 20)); /* 21.9%: relieved */
        rep_free(&r);
        log = read_log(&d);
        at = strstr(log, "pool a: pressure relieved, 21.9% free (above 20.0%)");
        cr_assert(at, "%s", log);
        nng_close(s);
        stop_clean(&d);
}

Test(e2e, group_gives_mode_0660)
{
        const char *const args[] = { "--group", "root", "--pool", SMALL_POOL, NULL };
        struct daemon     d;
        struct rep        keep;
        struct stat       sb;
        char              shm[96], ev[160];

        start_daemon(&d, args);
        nng_socket s = client(d.url, 5000);
        hello(s, "g", 0);
        struct kv_attach_rep a = attach(s, "a", &keep);
        rep_free(&keep);
        snprintf(shm, sizeof(shm), "/dev/shm%s", a.shm_name);
        cr_assert_eq(stat(shm, &sb), 0);
        cr_assert_eq(sb.st_mode & 0777, 0660, "shm mode %o", sb.st_mode & 0777);
        cr_assert_eq(sb.st_gid, 0);
        cr_assert_eq(stat(d.path, &sb), 0);
        cr_assert_eq(sb.st_mode & 0777, 0660, "socket mode %o", sb.st_mode & 0777);
        cr_assert_eq(sb.st_gid, 0);
        /* the event socket sits beside the request socket, same mode */
        snprintf(ev, sizeof(ev), "%s/events.sock", d.dir);
        cr_assert_eq(stat(ev, &sb), 0, "%s missing", ev);
        cr_assert_eq(sb.st_mode & 0777, 0660, "event socket mode %o", sb.st_mode & 0777);
        nng_close(s);
        stop_clean(&d);
        cr_assert_neq(access(ev, F_OK), 0, "event socket left behind");
}

Test(e2e, sigterm_with_clients_connected)
{
        /* clients still connected and holding pages: the daemon still exits
         * 0 and leaves nothing behind; the clients then get no reply */
        const char *const args[] = { "--pool", SMALL_POOL, NULL };
        struct daemon     d;
        struct rep        keep;
        uint32_t          ids[8];
        nng_socket        c[3];

        start_daemon(&d, args);
        for (int i = 0; i < 3; i++) {
                c[i] = client(d.url, 500);
                hello(c[i], "held", 0);
                attach(c[i], "a", &keep);
                rep_free(&keep);
                alloc_pages(c[i], 0, 8, ids);
        }
        stop_clean(&d);
        {
                uint8_t *b;
                size_t   l;
                /* REQ waits for a connection to send on: bound the wait */
                nng_socket_set_ms(c[0], NNG_OPT_SENDTIMEO, 500);
                nng_send(c[0], req, (size_t)kv_enc_u32_req(req, sizeof(req), KV_OP_STATUS, 5, 0), 0);
                cr_assert_neq(nng_recv(c[0], &b, &l, NNG_FLAG_ALLOC), 0, "a stopped daemon answered");
        }
        for (int i = 0; i < 3; i++)
                nng_close(c[i]);
}

Test(e2e, mutated_requests_always_get_an_answer)
{
        /* valid requests with random bytes flipped, cut or extended: every
         * one gets a reply (an error or a success), the daemon lives, and
         * when the fuzzing client goes, every page it got is free again */
        const char *const args[] = { "--pool", SMALL_POOL, NULL };
        struct daemon     d;
        struct rep        keep;
        static uint8_t    base[8][512];
        int               blen[8], nb = 0;
        uint32_t          ids[4] = { 0, 1, 2, 3 };
        uint8_t           keys[2][KV_KEY_LEN] = { { 1 }, { 2 } };
        unsigned          seed = 20261129;

        {
                struct kv_hello_req h = { .proto_version = KV_PROTO_VERSION, .name = "fuzz" };
                struct kv_attach_req at = { "a" };
                struct kv_alloc_req al = { 0, 3 };

                blen[nb++] = kv_enc_hello_req(base[0], 512, 1, &h);
                blen[nb++] = kv_enc_attach_req(base[1], 512, 2, &at);
                blen[nb++] = kv_enc_alloc_req(base[2], 512, 3, &al);
                blen[nb++] = kv_enc_pages(base[3], 512, KV_OP_FREE, 4, 0, 4, ids);
                blen[nb++] = kv_enc_publish_req(base[4], 512, 5, 0, 2, ids, (const uint8_t (*)[16])keys);
                blen[nb++] = kv_enc_lookup_req(base[5], 512, 6, 0, 2, (const uint8_t (*)[16])keys);
                blen[nb++] = kv_enc_u32_req(base[6], 512, KV_OP_STATUS, 7, 0);
                blen[nb++] = kv_enc_empty(base[7], 512, KV_OP_BYE, 8);
        }
        start_daemon(&d, args);
        nng_socket watcher = client(d.url, 5000);
        hello(watcher, "watcher", 0);
        nng_socket f = client(d.url, 5000);
        /* a valid session first, so that mutations reach the handlers */
        hello(f, "fuzz", 0);
        attach(f, "a", &keep);
        rep_free(&keep);
        for (int i = 0; i < 3000; i++) {
                int     k = rand_r(&seed) % nb, len = blen[k];
                uint8_t m[600];

                memcpy(m, base[k], (size_t)len);
                switch (rand_r(&seed) % 4) {
                case 0: /* flip a few bytes anywhere */
                        for (int j = rand_r(&seed) % 4 + 1; j > 0; j--)
                                m[rand_r(&seed) % len] ^= (uint8_t)(1u << (rand_r(&seed) % 8));
                        break;
                case 1: /* cut */
                        len = rand_r(&seed) % len;
                        break;
                case 2: /* extend with junk */
                        for (int j = rand_r(&seed) % 64; j > 0 && len < (int)sizeof(m); j--)
                                m[len++] = (uint8_t)rand_r(&seed);
                        break;
                default: /* flip a body byte only, keeping the header valid */
                        if (len > (int)KV_HDR_SIZE)
                                m[KV_HDR_SIZE + rand_r(&seed) % (len - KV_HDR_SIZE)] ^= 0xFF;
                        break;
                }
                struct rep r = rpc(f, m, (size_t)len);
                rep_free(&r);
        }
        cr_assert_eq(kill(d.pid, 0), 0);
        {
                cJSON *st = status(watcher);
                const cJSON *p = status_pool(st, "a");
                cr_assert_eq(num(p, "pages_total"), num(p, "pages_free") + num(p, "pages_held") + num(p, "cached_idle"),
                             "page counts do not add up");
                cJSON_Delete(st);
        }
        nng_close(f);
        /* published pages stay cached (idle) after their holder went */
        for (int t = 0; t < 100; t++) {
                cJSON *st = status(watcher);
                const cJSON *p = status_pool(st, "a");
                int done = num(p, "pages_held") == 0;
                cJSON_Delete(st);
                if (done)
                        break;
                sleep_ms(10);
        }
        {
                cJSON *st = status(watcher);
                cr_assert_eq(num(status_pool(st, "a"), "pages_held"), 0, "pages of the fuzzing client still held");
                cJSON_Delete(st);
        }
        nng_close(watcher);
        stop_clean(&d);
}
