/* test_e2e.c - kvpoold end to end, spoken to with raw nng REQ sockets and the
 * kv_proto encoders (no libkvclient): the request flow, refusals, hostile
 * and mutated requests, sessions released when their connection goes away,
 * the prefix-cache requests.  $KVPOOLD names the binary (set by meson). */
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

TestSuite(e2e, .fini = kill_leftover);


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

/* A re-executed client's session: dial url, HELLO as name, ATTACH pool
 * "a", then send an ALLOC of n pages and, if wait, read its reply.  0 or -1
 * (plain nng, no Criterion: it runs before Criterion's main). */
static int child_session(const char *url, const char *name, uint32_t n, int wait)
{
        struct kv_hello_req  hm = { .proto_version = KV_PROTO_VERSION };
        struct kv_attach_req am = { "a" };
        struct kv_alloc_req  al = { 0, n };
        static uint8_t       m[4096];
        nng_socket           s;
        int                  len;

        snprintf(hm.name, sizeof(hm.name), "%s", name);
        if (nng_req0_open(&s) || nng_dial(s, url, NULL, 0) ||
            doomed_rpc(s, m, kv_enc_hello_req(m, sizeof(m), 1, &hm), KV_OP_HELLO | KV_OP_REPLY) ||
            doomed_rpc(s, m, kv_enc_attach_req(m, sizeof(m), 2, &am), KV_OP_ATTACH | KV_OP_REPLY))
                return -1;
        len = kv_enc_alloc_req(m, sizeof(m), 3, &al);
        if (wait)
                return doomed_rpc(s, m, len, KV_OP_ALLOC | KV_OP_REPLY);
        return len < 0 || nng_send(s, m, (size_t)len, 0) ? -1 : 0;
}

/* The impatient client of alloc_then_gone_before_the_reply: this binary
 * re-run with KVTEST_IMPATIENT_URL set sends HELLO, ATTACH and then an ALLOC
 * of 8 pages, and exits without reading the ALLOC reply. */
__attribute__((constructor)) static void impatient_client(void)
{
        const char *url = getenv("KVTEST_IMPATIENT_URL");

        if (url)
                _exit(child_session(url, "impatient", 8, 0) ? 1 : 0);
}

__attribute__((constructor)) static void doomed_client(void)
{
        const char *url = getenv("KVTEST_DOOMED_URL"), *fd = getenv("KVTEST_DOOMED_FD");

        if (!url || !fd)
                return;
        if (child_session(url, "doomed", 30, 1))
                _exit(1);
        if (write(atoi(fd), "k", 1) != 1)
                _exit(1);
        for (;;)
                pause();
}

/* A client that sends ALLOC and is gone before the reply, 200 times over:
 * every page comes back (the session ends with the connection, whether the
 * reply went out or not). */
Test(e2e, alloc_then_gone_before_the_reply)
{
        const char *const args[] = { "--pool", SMALL_POOL, NULL };
        struct daemon     d;

        start_daemon(&d, args);
        nng_socket watcher = client(d.url, 5000);
        hello(watcher, "watcher", 0);
        for (int i = 0; i < 200; i++) {
                pid_t child = fork();
                int   st;

                cr_assert(child >= 0);
                if (child == 0) {
                        char *argv[] = { "test_daemon_e2e", NULL };

                        setenv("KVTEST_IMPATIENT_URL", d.url, 1);
                        execv("/proc/self/exe", argv);
                        _exit(127);
                }
                cr_assert_eq(waitpid(child, &st, 0), child);
                cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "client %d failed (status 0x%x)", i, st);
        }
        cr_assert(wait_all_free(watcher, "a", 2000), "pages of clients gone before their ALLOC reply not released");
        nng_close(watcher);
        stop_clean(&d);
}

/* A client that connects, attaches pool a, allocates n pages and closes its
 * socket without BYE: watcher must see all of pool a free again within ms. */
static void leave_holding(const struct daemon *d, nng_socket watcher, const char *name, uint32_t n, int ms)
{
        static uint32_t ids[256];
        struct rep      keep;
        nng_socket      c = client(d->url, 5000);

        hello(c, name, 0);
        attach(c, "a", &keep);
        rep_free(&keep);
        alloc_pages(c, 0, n, ids);
        nng_close(c);
        cr_assert(wait_all_free(watcher, "a", ms), "the pages of %s, which left holding %u, not released within %d ms",
                  name, n, ms);
}

Test(e2e, lost_connections_release_pages)
{
        const char *const args[] = { "--pool", SMALL_POOL, NULL };
        struct daemon     d;
        int               from_child[2];
        pid_t             child;
        char              c, fdstr[16];

        start_daemon(&d, args);
        nng_socket watcher = client(d.url, 5000);
        hello(watcher, "watcher", 0);

        /* a client that closes without BYE */
        leave_holding(&d, watcher, "A", 20, 1000);

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

/* A client name goes into logs and the STATUS JSON as printable ASCII: the
 * daemon shows other bytes as '?'. */
Test(e2e, client_names_are_printable)
{
        const char *const args[] = { "--pool", SMALL_POOL, NULL };
        struct daemon     d;
        int               seen = 0;

        start_daemon(&d, args);
        nng_socket s = client(d.url, 5000);
        hello(s, "a\nb\x1b[1mc\xff\x7f", 0);
        cJSON *st = status(s);
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItem(st, "clients")) {
                const cJSON *n = cJSON_GetObjectItem(c, "name");
                if (cJSON_IsString(n) && !strcmp(n->valuestring, "a?b?[1mc??"))
                        seen = 1;
        }
        cr_assert(seen, "no client named \"a?b?[1mc??\" in %s", cJSON_PrintUnformatted(st));
        cr_assert_null(strstr(read_log(&d), "\x1b"), "an escape byte reached the log");
        cJSON_Delete(st);
        nng_close(s);
        stop_clean(&d);
}

/* STATUS lists at most $KVPOOLD_STATUS_CLIENTS clients, the oldest
 * sessions first, and counts them all in clients_total: thousands of idle
 * connections cannot push the reply past the frame limit. */
Test(e2e, status_lists_at_most_its_limit)
{
        const char *const args[] = { "--pool", SMALL_POOL, NULL };
        static const char *const names[] = { "first", "second", "third" };
        struct daemon     d;
        nng_socket        s[3];

        cr_assert_eq(setenv("KVPOOLD_STATUS_CLIENTS", "2", 1), 0);
        start_daemon(&d, args);
        unsetenv("KVPOOLD_STATUS_CLIENTS");
        for (int i = 0; i < 3; i++) {
                s[i] = client(d.url, 5000);
                hello(s[i], names[i], 0);
        }
        cJSON *st = status(s[2]);
        const cJSON *cl = cJSON_GetObjectItem(st, "clients"), *tot = cJSON_GetObjectItem(st, "clients_total");
        cr_assert_eq(cJSON_GetArraySize(cl), 2, "listed %d clients: %s", cJSON_GetArraySize(cl),
                     cJSON_PrintUnformatted(st));
        cr_assert(cJSON_IsNumber(tot) && tot->valuedouble == 3.0, "clients_total: %s", cJSON_PrintUnformatted(st));
        for (int i = 0; i < 2; i++) {
                const cJSON *n = cJSON_GetObjectItem(cJSON_GetArrayItem(cl, i), "name");
                cr_assert(cJSON_IsString(n) && !strcmp(n->valuestring, names[i]), "client %d: %s", i,
                          cJSON_PrintUnformatted(st));
        }
        cJSON_Delete(st);
        for (int i = 0; i < 3; i++)
                nng_close(s[i]);
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

/* One nng IPC frame carrying a REQ message: type 1, 64-bit big-endian
 * length, the request id (big-endian, high bit set), then the body. */
static size_t ipc_frame(uint8_t *out, uint32_t rid, const uint8_t *body, size_t n)
{
        uint64_t len = n + 4;

        out[0] = 1;
        for (int i = 0; i < 8; i++)
                out[1 + i] = (uint8_t)(len >> (56 - 8 * i));
        rid |= 0x80000000u;
        for (int i = 0; i < 4; i++)
                out[9 + i] = (uint8_t)(rid >> (24 - 8 * i));
        memcpy(out + 13, body, n);
        return 13 + n;
}

Test(e2e, peer_that_never_reads_is_dropped)
{
        /* a raw peer pipelines requests and never reads a reply: the daemon
         * must not stall on it, and keeps serving the others */
        const char *const  args[] = { "--pool", SMALL_POOL, NULL };
        struct daemon      d;
        struct rep         keep;
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        struct timeval     tv = { 2, 0 };
        uint8_t            hs[8] = { 0x00, 'S', 'P', 0x00, 0x00, 0x30, 0x00, 0x00 }, peer[8], msg[256], frame[300];
        uint32_t           ids[2];
        int                fd, n, sent = 0;

        start_daemon(&d, args);
        nng_socket good = client(d.url, 5000);
        hello(good, "good", 0);
        attach(good, "a", &keep);
        rep_free(&keep);

        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", d.path);
        cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        cr_assert_eq(write(fd, hs, 8), 8);
        cr_assert_eq(read(fd, peer, 8), 8, "no SP handshake from the daemon");
        {
                struct kv_hello_req h = { .proto_version = KV_PROTO_VERSION, .name = "mute" };
                n = kv_enc_hello_req(msg, sizeof(msg), 1, &h);
                cr_assert_eq(write(fd, frame, ipc_frame(frame, 1, msg, (size_t)n)), (ssize_t)(13 + n));
        }
        n = kv_enc_u32_req(msg, sizeof(msg), KV_OP_STATUS, 2, 0);
        for (int i = 0; i < 50000; i++) {
                size_t l = ipc_frame(frame, 2 + (uint32_t)i, msg, (size_t)n);
                if (write(fd, frame, l) != (ssize_t)l)
                        break; /* the daemon stopped reading us, or dropped us */
                sent++;
        }
        cr_log_info("the mute peer got %d requests in", sent);
        /* the others are served meanwhile and after */
        for (int i = 0; i < 20; i++) {
                alloc_pages(good, 0, 2, ids);
                struct rep r = rpc(good, req, enc_free(0, 2, ids));
                cr_assert_eq(r.h.opcode, KV_OP_FREE | KV_OP_REPLY);
                rep_free(&r);
        }
        cr_assert(strstr(read_log(&d), "does not read its replies: closing it"), "%s", read_log(&d));
        close(fd);
        cr_assert_eq(kill(d.pid, 0), 0);
        /* a client that leaves after that still has its pages released (a
         * pipe reaper stuck on the drop would keep them held) */
        leave_holding(&d, good, "probe", 2, 3000);
        nng_close(good);
        stop_clean(&d);
}
