/* e2e_util.c - helpers of the kvpoold end-to-end tests (see e2e_util.h). */
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
#include "e2e_util.h"

/* The daemon of the running test, stopped by the suite's fini even when an
 * assertion ended the test early (the test's stack is gone by then: keep the
 * pid in a global), so that no kvpoold outlives its test. */
pid_t running_pid;

void kill_leftover(void)
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


const char *kvpoold(void)
{
        const char *p = getenv("KVPOOLD");

        cr_assert(p && access(p, X_OK) == 0, "KVPOOLD must name the kvpoold binary (got %s)", p ? p : "nothing");
        return p;
}

void sleep_ms(int ms)
{
        struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

        nanosleep(&ts, NULL);
}

void dump_log(const struct daemon *d)
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
void start_daemon(struct daemon *d, const char *const *extra)
{
        start_daemon_pre(d, extra, NULL);
}

void start_daemon_pre(struct daemon *d, const char *const *extra, void (*before_exec)(void))
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
                if (before_exec)
                        before_exec();
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
int stop_daemon(struct daemon *d)
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
int shm_objects(pid_t pid)
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
const char *stop_clean_log(struct daemon *d)
{
        pid_t pid = d->pid;
        int   code = stop_daemon(d);

        if (code != 0)
                dump_log(d);
        cr_assert_eq(code, 0, "kvpoold exit code %d after SIGTERM", code);
        cr_assert_eq(shm_objects(pid), 0, "shared memory left in /dev/shm");
        cr_assert_neq(access(d->path, F_OK), 0, "socket file %s left behind", d->path);
        const char *log = read_log(d);
        unlink(d->log);
        cr_assert_eq(rmdir(d->dir), 0, "%s not empty after the daemon stopped: %s", d->dir, strerror(errno));
        return log;
}

void stop_clean(struct daemon *d)
{
        (void)stop_clean_log(d);
}

/* ---- raw protocol client ----------------------------------------------------- */

nng_socket client(const char *url, int timeout_ms)
{
        nng_socket s;

        cr_assert_eq(nng_req0_open(&s), 0);
        /* REQ would resend a request after a minute: never run an alloc twice. */
        nng_socket_set_ms(s, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
        nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, timeout_ms);
        cr_assert_eq(nng_dial(s, url, NULL, 0), 0);
        return s;
}

void rep_free(struct rep *r)
{
        if (r->buf)
                nng_free(r->buf, r->len);
        r->buf = NULL;
}

struct rep rpc(nng_socket s, const uint8_t *msg, size_t len)
{
        struct rep r = { 0 };
        int        rv;

        cr_assert_eq(nng_send(s, (void *)msg, len, 0), 0);
        rv = nng_recv(s, &r.buf, &r.len, NNG_FLAG_ALLOC);
        cr_assert_eq(rv, 0, "no reply: %s", nng_strerror(rv));
        cr_assert_eq(kv_hdr_decode(r.buf, r.len, &r.h), 0, "undecodable reply");
        r.body = r.buf + KV_HDR_SIZE;
        return r;
}

/* Expects an ERROR reply with code; returns it for message checks. */
struct rep rpc_err(nng_socket s, const uint8_t *msg, size_t len, uint32_t code, struct kv_error *ret)
{
        struct rep r = rpc(s, msg, len);

        cr_assert_eq(r.h.opcode, KV_OP_ERROR, "expected an error %s, got opcode 0x%x", kv_err_name(code), r.h.opcode);
        cr_assert_eq(kv_dec_error(r.body, r.h.body_len, ret), 0);
        cr_assert_eq(ret->code, code, "expected %s, got %s: %.*s", kv_err_name(code), kv_err_name(ret->code),
                     (int)ret->len, ret->msg);
        return r;
}

uint8_t req[1 << 18];

struct kv_hello_rep hello(nng_socket s, const char *name, int tenant)
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
struct kv_attach_rep attach(nng_socket s, const char *name, struct rep *keep)
{
        struct kv_attach_req m = { { 0 } };
        struct kv_attach_rep a;

        snprintf(m.name, sizeof(m.name), "%s", name);
        *keep = rpc(s, req, (size_t)kv_enc_attach_req(req, sizeof(req), 2, &m));
        cr_assert_eq(keep->h.opcode, KV_OP_ATTACH | KV_OP_REPLY, "attach %s failed", name);
        cr_assert_eq(kv_dec_attach_rep(keep->body, keep->h.body_len, &a), 0);
        return a;
}

uint32_t alloc_pages(nng_socket s, uint32_t pool, uint32_t n, uint32_t *ids)
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

size_t enc_free(uint32_t pool, uint32_t n, const uint32_t *ids)
{
        return (size_t)kv_enc_pages(req, sizeof(req), KV_OP_FREE, 4, pool, n, ids);
}

cJSON *status(nng_socket s)
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

const cJSON *status_pool(const cJSON *st, const char *name)
{
        const cJSON *p;

        cJSON_ArrayForEach(p, cJSON_GetObjectItem(st, "pools"))
                if (strcmp(cJSON_GetObjectItem(p, "name")->valuestring, name) == 0)
                        return p;
        cr_assert_fail("pool %s missing from STATUS", name);
        return NULL;
}

double num(const cJSON *o, const char *key)
{
        const cJSON *v = cJSON_GetObjectItem(o, key);

        cr_assert(cJSON_IsNumber(v), "STATUS key %s missing or not a number", key);
        return v->valuedouble;
}

/* Polls STATUS until pool's pages_free equals pages_total (or ms pass). */
int wait_all_free(nng_socket s, const char *pool, int ms)
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

void check_layout(const struct kv_attach_rep *a)
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

/* The log of daemon d so far, NUL-terminated (static buffer). */
const char *read_log(const struct daemon *d)
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
