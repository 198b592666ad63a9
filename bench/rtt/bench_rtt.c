/* bench_rtt.c - the control path's round trip against its floor.
 *
 * Starts kvpoold (a host pool, on a temporary ipc:// socket) and a plain nng
 * REP echo server (a child process, single-threaded like kvpoold's serving
 * loop, on another ipc:// socket), then for 1, 4 and 16 client processes and
 * for 1, 16 and 256 pages per request measures:
 *   kvpool: alloc(n) then free(n) through libkvclient, each a round trip;
 *   echo:   the same two round trips with the same request and reply sizes
 *           (the echo client asks for a reply as long as kvpool's).
 * It prints p50/p99 per round trip, round trips and pages per second, and the
 * kvpool/echo ratio, then checks the targets: kvpool's p50 within 1.3x of
 * echo's at every client count, and a 256-page alloc under 2x a 1-page one.
 *
 * The last column is kvpoold's own service time per request (mean, from its
 * kvpool_request_duration_seconds histogram, read over METRICS before and
 * after each configuration): the part of the round trip that is kvpool's
 * work rather than nng's transport.
 *
 * A benchmark, not a test: it prints, it never fails on a figure.
 *
 * usage: bench_rtt [--kvpoold PATH] [--clients 1,4,16] [--pages 1,16,256]
 *                  [--pairs N] [--warmup N] [--rounds N] [--echo-timeouts MS]
 * --pairs is per configuration over all clients and rounds; echo and kvpool
 * alternate --rounds times (default 5) so that a busy machine's noise falls
 * on both alike; percentiles pool every round.
 * --echo-timeouts gives the echo sockets receive/send timeouts like kvpoold's
 * (a diagnostic: what the timeouts alone cost; libkvclient times its wait
 * for a reply itself, client/transport.c).
 * kvpoold is found, in order: --kvpoold, $KVPOOLD, beside this binary, or
 * in the build tree (../../daemon/kvpoold from bench/rtt/).
 *
 * The parent never touches nng (nng's threads do not survive fork): every
 * client and the echo server are fresh processes.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>

#include "kv_proto.h"
#include "kvclient.h"

#define MAX_LIST 8

struct opts {
        const char *kvpoold;
        int         clients[MAX_LIST], nclients;
        int         pages[MAX_LIST], npages;
        int         pairs;   /* alloc+free pairs per phase, over all clients */
        int         warmup;  /* pairs per client before the clock starts */
        int         rounds;  /* echo and kvpool alternate this many times per configuration */
        int         echo_tmo;/* ms: give the echo sockets kvpool's receive/send timeouts (0 = none) */
};

/* Per-phase results written by the client processes into shared memory. */
struct shared {
        uint64_t t_start[64], t_end[64]; /* per client, ns */
        int      failed[64];
        char     err[256];
        uint64_t lat[];                  /* [client][pair][2]: alloc, free (ns) */
};

static uint64_t now_ns(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        fprintf(stderr, "bench_rtt: ");
        vfprintf(stderr, fmt, ap);
        fprintf(stderr, "\n");
        va_end(ap);
        exit(1);
}

static int parse_list(const char *s, int *out, int max, const char *what)
{
        int n = 0;
        char *end;

        while (*s) {
                long v = strtol(s, &end, 10);

                if (end == s || v < 1 || v > 65536 || n == max || (*end && *end != ','))
                        die("%s: expected a comma-separated list of positive numbers, got \"%s\"", what, s);
                out[n++] = (int)v;
                s = *end ? end + 1 : end;
        }
        return n;
}

static const char *find_kvpoold(const char *given)
{
        static char path[PATH_MAX + 32];
        static const char *const rel[] = { "kvpoold", "../../daemon/kvpoold", "../sbin/kvpoold" };
        char self[PATH_MAX];
        ssize_t n;

        if (given)
                return given;
        if (getenv("KVPOOLD") && *getenv("KVPOOLD"))
                return getenv("KVPOOLD");
        n = readlink("/proc/self/exe", self, sizeof(self) - 1);
        if (n > 0) {
                self[n] = '\0';
                *strrchr(self, '/') = '\0';
                for (size_t i = 0; i < sizeof(rel) / sizeof(rel[0]); i++) {
                        snprintf(path, sizeof(path), "%s/%s", self, rel[i]);
                        if (access(path, X_OK) == 0)
                                return path;
                }
        }
        die("cannot find kvpoold: pass --kvpoold PATH or set KVPOOLD");
}

/* ---- kvpoold ------------------------------------------------------------- */

/* Starts kvpoold and waits for its READY=1 on a notify socket of ours. */
static pid_t start_kvpoold(const char *exe, const char *url, const char *pool_spec, const char *log)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        char nsock[108], buf[512];
        uint64_t end;
        pid_t pid;
        int fd;

        snprintf(nsock, sizeof(nsock), "/tmp/kvbench-%d-notify.sock", (int)getpid());
        unlink(nsock);
        strcpy(sa.sun_path, nsock);
        fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
                die("notify socket %s: %s", nsock, strerror(errno));
        pid = fork();
        if (pid == 0) {
                int lf = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);

                if (lf >= 0) {
                        dup2(lf, 1);
                        dup2(lf, 2);
                }
                setenv("NOTIFY_SOCKET", nsock, 1);
                execl(exe, "kvpoold", "--socket", url, "--events", "none", "--metrics", "none",
                      "--log-level", "warning", "--pool", pool_spec, (char *)NULL);
                _exit(127);
        }
        end = now_ns() + 20000000000ull;
        for (;;) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                ssize_t n;

                if (now_ns() > end || waitpid(pid, NULL, WNOHANG) == pid)
                        die("kvpoold did not become ready; see %s", log);
                if (poll(&p, 1, 100) <= 0)
                        continue;
                n = recv(fd, buf, sizeof(buf) - 1, 0);
                if (n <= 0)
                        continue;
                buf[n] = '\0';
                if (strstr(buf, "READY=1"))
                        break;
        }
        /* kvpoold keeps sending STATUS= as usage changes; with the socket
         * gone those sends fail at once (kvpoold logs it once) instead of
         * blocking on a queue nobody reads. */
        close(fd);
        unlink(nsock);
        return pid;
}

/* ---- echo server ------------------------------------------------------------ */

/* A REP socket echoing back a reply whose length the request's first four
 * bytes give (so replies match kvpool's sizes).  One thread, like kvpoold. */
static void echo_server(const char *url, int ready_fd, int tmo_ms)
{
        nng_socket s;
        nng_msg *m;
        int rv;

        if ((rv = nng_rep0_open(&s)) || (rv = nng_socket_set_size(s, NNG_OPT_RECVMAXSZ, KV_MAX_FRAME)) ||
            (tmo_ms && (rv = nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, tmo_ms))) ||
            (rv = nng_listen(s, url, NULL, 0))) {
                fprintf(stderr, "bench_rtt: echo server on %s: %s\n", url, nng_strerror(rv));
                _exit(1);
        }
        (void)!write(ready_fd, "r", 1);
        close(ready_fd);
        for (;;) {
                if (nng_recvmsg(s, &m, 0) != 0)
                        continue; /* a timeout (with --echo-timeouts), like kvpoold's loop */
                uint32_t want = nng_msg_len(m) >= 4 ? kv_le32(nng_msg_body(m)) : 0;

                if (want > KV_MAX_FRAME || nng_msg_realloc(m, want) != 0 || nng_sendmsg(s, m, 0) != 0)
                        nng_msg_free(m);
        }
}

/* ---- clients ------------------------------------------------------------------- */

struct phase {
        const char *url;
        int         echo;    /* 0: kvpool, 1: echo */
        int         clients;
        int         pages;
        int         pairs;   /* per client */
        int         warmup;
        int         echo_tmo;
        size_t      alloc_req, alloc_rep, free_req, free_rep; /* message sizes (echo) */
};

static int echo_rt(nng_socket s, uint8_t *buf, size_t req, size_t rep)
{
        nng_msg *m;
        int rv;

        kv_put32(buf, (uint32_t)rep);
        if ((rv = nng_msg_alloc(&m, 0)) || (rv = nng_msg_append(m, buf, req)))
                return rv;
        if ((rv = nng_sendmsg(s, m, 0))) {
                nng_msg_free(m);
                return rv;
        }
        if ((rv = nng_recvmsg(s, &m, 0)))
                return rv;
        rv = nng_msg_len(m) == rep ? 0 : NNG_EPROTO;
        nng_msg_free(m);
        return rv;
}

static void client(const struct phase *ph, int idx, struct shared *sh, int ready_fd, int go_fd)
{
        uint64_t *lat = sh->lat + (size_t)idx * ph->pairs * 2;
        int32_t *ids = malloc(sizeof(int32_t) * (size_t)ph->pages);
        uint8_t *buf = calloc(1, KV_MAX_FRAME);
        kvc_client *c = NULL;
        kvc_pool *p = NULL;
        nng_socket s;
        char name[32], go;
        int r = 0;

        if (!ids || !buf)
                goto fail;
        if (!ph->echo) {
                snprintf(name, sizeof(name), "bench-%d", idx);
                if ((r = kvc_connect(ph->url, name, NULL, &c)) || (r = kvc_attach(c, "bench", &p)))
                        goto fail;
        } else {
                if ((r = nng_req0_open(&s)) || (r = nng_socket_set_ms(s, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE)) ||
                    (ph->echo_tmo && ((r = nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, ph->echo_tmo)) ||
                                      (r = nng_socket_set_ms(s, NNG_OPT_SENDTIMEO, ph->echo_tmo)))) ||
                    (r = nng_dial(s, ph->url, NULL, 0)))
                        goto fail;
        }
        for (int i = -ph->warmup; i < ph->pairs; i++) {
                uint64_t t0, t1, t2;

                if (i == 0) {
                        /* Warm: wait until every client is, then go together. */
                        (void)!write(ready_fd, "r", 1);
                        if (read(go_fd, &go, 1) < 0)
                                goto fail;
                        sh->t_start[idx] = now_ns();
                }
                t0 = now_ns();
                if (!ph->echo)
                        r = kvc_alloc(p, (uint32_t)ph->pages, ids);
                else
                        r = echo_rt(s, buf, ph->alloc_req, ph->alloc_rep);
                if (r)
                        goto fail;
                t1 = now_ns();
                if (!ph->echo)
                        r = kvc_free(p, (uint32_t)ph->pages, ids);
                else
                        r = echo_rt(s, buf, ph->free_req, ph->free_rep);
                if (r)
                        goto fail;
                t2 = now_ns();
                if (i >= 0) {
                        lat[2 * i] = t1 - t0;
                        lat[2 * i + 1] = t2 - t1;
                }
        }
        sh->t_end[idx] = now_ns();
        if (c)
                kvc_disconnect(c);
        _exit(0);
fail:
        sh->failed[idx] = 1;
        snprintf(sh->err, sizeof(sh->err), "%s client %d: %s", ph->echo ? "echo" : "kvpool", idx,
                 ph->echo ? nng_strerror(r) : c ? kvc_errmsg(c) : strerror(-r));
        (void)!write(ready_fd, "f", 1);
        _exit(1);
}

struct result {
        double p50[2], p99[2]; /* us: alloc, free */
        double svc_us[2];      /* kvpoold's own time per alloc/free (its histogram), -1 if unknown */
        double srv_cpu_us;     /* server CPU time (all threads) per round trip */
        double srv_cs;         /* server context switches per round trip */
        double rt_per_s;       /* round trips per second, all clients */
        double pages_per_s;    /* pages allocated per second */
};

/* Latencies of every round of one configuration, pooled. */
struct samples {
        uint64_t *v[2];   /* alloc, free (ns) */
        size_t    n;
        double    wall_s; /* summed over rounds */
        double    pages;  /* pages allocated */
        double    srv_ticks, srv_cs; /* server CPU (clock ticks) and context switches */
};

/* The server's CPU time in clock ticks, all threads (utime + stime). */
static double proc_ticks(pid_t pid)
{
        char path[64], buf[1024], *p;
        unsigned long ut = 0, st = 0;
        FILE *f;

        snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
        if (!(f = fopen(path, "r")))
                return 0;
        buf[fread(buf, 1, sizeof(buf) - 1, f)] = '\0';
        fclose(f);
        p = strrchr(buf, ')'); /* the command name may hold spaces */
        if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) == 2)
                return (double)(ut + st);
        return 0;
}

/* Context switches (voluntary + involuntary) of all the server's threads. */
static double proc_cs(pid_t pid)
{
        char path[300], line[256];
        double total = 0;
        struct dirent *e;
        DIR *d;

        snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
        if (!(d = opendir(path)))
                return 0;
        while ((e = readdir(d))) {
                unsigned long v;
                FILE *f;

                if (e->d_name[0] == '.')
                        continue;
                snprintf(path, sizeof(path), "/proc/%d/task/%s/status", (int)pid, e->d_name);
                if (!(f = fopen(path, "r")))
                        continue;
                while (fgets(line, sizeof(line), f))
                        if (sscanf(line, "voluntary_ctxt_switches: %lu", &v) == 1 ||
                            sscanf(line, "nonvoluntary_ctxt_switches: %lu", &v) == 1)
                                total += (double)v;
                fclose(f);
        }
        closedir(d);
        return total;
}

static int cmp_u64(const void *a, const void *b)
{
        uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

        return x < y ? -1 : x > y;
}

/* Runs one round of a phase: ph->clients processes, ph->pairs pairs each,
 * started together; appends their latencies to acc. */
static void run_phase(const struct phase *ph, pid_t server, struct samples *acc)
{
        double ticks0, cs0;
        size_t n = (size_t)ph->clients * ph->pairs;
        size_t bytes = sizeof(struct shared) + n * 2 * sizeof(uint64_t);
        struct shared *sh = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        int ready[2], go[2], st, failed = 0;
        pid_t pids[64];
        uint64_t t0 = UINT64_MAX, t1 = 0;
        char ch;

        if (sh == MAP_FAILED || pipe(ready) || pipe(go))
                die("out of memory or pipes");
        for (int i = 0; i < ph->clients; i++) {
                pids[i] = fork();
                if (pids[i] == 0) {
                        close(ready[0]);
                        close(go[1]);
                        client(ph, i, sh, ready[1], go[0]);
                }
        }
        close(ready[1]);
        close(go[0]);
        for (int i = 0; i < ph->clients; i++)
                if (read(ready[0], &ch, 1) != 1 || ch != 'r')
                        failed = 1;
        ticks0 = proc_ticks(server);
        cs0 = proc_cs(server);
        close(go[1]); /* go */
        for (int i = 0; i < ph->clients; i++) {
                waitpid(pids[i], &st, 0);
                if (!WIFEXITED(st) || WEXITSTATUS(st) != 0 || sh->failed[i])
                        failed = 1;
        }
        acc->srv_ticks += proc_ticks(server) - ticks0;
        acc->srv_cs += proc_cs(server) - cs0;
        close(ready[0]);
        if (failed)
                die("a client failed: %s", sh->err[0] ? sh->err : "(crashed)");
        for (int op = 0; op < 2; op++) {
                acc->v[op] = realloc(acc->v[op], (acc->n + n) * sizeof(uint64_t));
                if (!acc->v[op])
                        die("out of memory");
                for (size_t i = 0; i < n; i++)
                        acc->v[op][acc->n + i] = sh->lat[2 * i + op];
        }
        acc->n += n;
        for (int i = 0; i < ph->clients; i++) {
                t0 = sh->t_start[i] < t0 ? sh->t_start[i] : t0;
                t1 = sh->t_end[i] > t1 ? sh->t_end[i] : t1;
        }
        acc->wall_s += (double)(t1 - t0) / 1e9;
        acc->pages += (double)n * ph->pages;
        munmap(sh, bytes);
}

static void summarize(struct samples *acc, struct result *res)
{
        for (int op = 0; op < 2; op++) {
                qsort(acc->v[op], acc->n, sizeof(uint64_t), cmp_u64);
                res->p50[op] = (double)acc->v[op][acc->n / 2] / 1e3;
                res->p99[op] = (double)acc->v[op][(acc->n * 99) / 100] / 1e3;
                free(acc->v[op]);
                acc->v[op] = NULL;
        }
        res->rt_per_s = 2.0 * (double)acc->n / acc->wall_s;
        res->pages_per_s = acc->pages / acc->wall_s;
        res->srv_cpu_us = acc->srv_ticks * 1e6 / (double)sysconf(_SC_CLK_TCK) / (2.0 * (double)acc->n);
        res->srv_cs = acc->srv_cs / (2.0 * (double)acc->n);
        acc->srv_ticks = acc->srv_cs = 0;
        acc->n = 0;
        acc->wall_s = acc->pages = 0;
}

/* kvpoold's own request histogram: the sum and count of
 * kvpool_request_duration_seconds for alloc and free, read with a METRICS
 * request from a child (the parent stays clear of nng).  The difference of
 * two readings is the daemon's service time of the requests in between:
 * what kvpool adds to the transport, measured from inside. */
struct svc_times {
        double sum[2], cnt[2];
        int    ok;
};

static double metric_value(const char *text, const char *series)
{
        const char *p = strstr(text, series);

        return p ? strtod(p + strlen(series), NULL) : -1;
}

static void read_service_times(const char *url, struct svc_times *ret)
{
        struct svc_times *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        pid_t pid;

        memset(ret, 0, sizeof(*ret));
        if (sh == MAP_FAILED)
                return;
        memset(sh, 0, sizeof(*sh));
        pid = fork();
        if (pid == 0) {
                static const char *const ops[2] = { "alloc", "free" };
                kvc_client *c = NULL;
                char *text = NULL, series[128];

                if (kvc_connect(url, "bench-metrics", NULL, &c) == 0 && kvc_metrics_text(c, &text) == 0) {
                        sh->ok = 1;
                        for (int op = 0; op < 2; op++) {
                                snprintf(series, sizeof(series), "kvpool_request_duration_seconds_sum{op=\"%s\"} ", ops[op]);
                                sh->sum[op] = metric_value(text, series);
                                snprintf(series, sizeof(series), "kvpool_request_duration_seconds_count{op=\"%s\"} ", ops[op]);
                                sh->cnt[op] = metric_value(text, series);
                                if (sh->sum[op] < 0 || sh->cnt[op] < 0)
                                        sh->ok = 0;
                        }
                }
                free(text);
                kvc_disconnect(c);
                _exit(0);
        }
        waitpid(pid, NULL, 0);
        *ret = *sh;
        munmap(sh, sizeof(*sh));
}

/* ---- main ------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
        struct opts o = { .clients = { 1, 4, 16 }, .nclients = 3, .pages = { 1, 16, 256 }, .npages = 3,
                          .pairs = 6000, .warmup = 200, .rounds = 5 };
        char url[160], echo_url[160], log[128], pool[256], sock[128], esock[128];
        struct result kv[MAX_LIST][MAX_LIST], ec[MAX_LIST][MAX_LIST];
        int maxc = 0, maxp = 0, efd[2];
        pid_t kvpid, echopid;
        uint8_t tmp[KV_MAX_FRAME / 64];
        char ch;

        for (int i = 1; i < argc; i++) {
                const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

                if (!strcmp(a, "--kvpoold") && v) o.kvpoold = v;
                else if (!strcmp(a, "--clients") && v) o.nclients = parse_list(v, o.clients, MAX_LIST, "--clients");
                else if (!strcmp(a, "--pages") && v) o.npages = parse_list(v, o.pages, MAX_LIST, "--pages");
                else if (!strcmp(a, "--pairs") && v) o.pairs = atoi(v);
                else if (!strcmp(a, "--warmup") && v) o.warmup = atoi(v);
                else if (!strcmp(a, "--echo-timeouts") && v) o.echo_tmo = atoi(v);
                else if (!strcmp(a, "--rounds") && v) o.rounds = atoi(v);
                else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
                        printf("usage: %s [--kvpoold PATH] [--clients 1,4,16] [--pages 1,16,256] "
                               "[--pairs N] [--warmup N] [--rounds N] [--echo-timeouts MS]\n", argv[0]);
                        return 0;
                } else
                        die("unknown or incomplete option \"%s\" (see --help)", a);
                i++;
        }
        for (int i = 0; i < o.nclients; i++) {
                if (o.clients[i] > 64)
                        die("--clients: at most 64 clients, got %d", o.clients[i]);
                maxc = o.clients[i] > maxc ? o.clients[i] : maxc;
        }
        for (int i = 0; i < o.npages; i++)
                maxp = o.pages[i] > maxp ? o.pages[i] : maxp;
        if (o.pairs < 100 || o.warmup < 0 || o.rounds < 1 || o.rounds > o.pairs / 16)
                die("--pairs must be at least 100, --warmup at least 0, --rounds 1..pairs/16");
        o.kvpoold = find_kvpoold(o.kvpoold);

        snprintf(sock, sizeof(sock), "/tmp/kvbench-%d.sock", (int)getpid());
        snprintf(esock, sizeof(esock), "/tmp/kvbench-%d-echo.sock", (int)getpid());
        snprintf(url, sizeof(url), "ipc://%s", sock);
        snprintf(echo_url, sizeof(echo_url), "ipc://%s", esock);
        snprintf(log, sizeof(log), "/tmp/kvbench-%d-kvpoold.log", (int)getpid());
        /* Every client can hold its largest request at once: a small fp8
         * geometry (2 KiB per page) with twice the pages needed. */
        snprintf(pool, sizeof(pool),
                 "name=bench,dtype=fp8_e4m3,layers=1,kv_heads=1,head_dim=64,page_size=16,capacity=%lluKiB,backend=host",
                 (unsigned long long)maxc * maxp * 2 * 2 + 4096);

        if (pipe(efd))
                die("pipe: %s", strerror(errno));
        echopid = fork();
        if (echopid == 0) {
                close(efd[0]);
                echo_server(echo_url, efd[1], o.echo_tmo);
        }
        close(efd[1]);
        if (read(efd[0], &ch, 1) != 1)
                die("the echo server did not start");
        close(efd[0]);
        kvpid = start_kvpoold(o.kvpoold, url, pool, log);

        printf("# bench_rtt: %d pairs (alloc+free) per configuration over all clients, in %d alternating rounds;"
               " %d warm-up pairs per client and round%s\n",
               o.pairs, o.rounds, o.warmup, o.echo_tmo ? "; echo with timeouts" : "");
        printf("# kvpoold %s, %ld CPUs online\n\n", o.kvpoold, sysconf(_SC_NPROCESSORS_ONLN));
        printf("| clients | pages | op | kvpool p50 µs | kvpool p99 µs | echo p50 µs | echo p99 µs | p50 ratio "
               "| kvpoold service µs |\n");
        printf("|---:|---:|---|---:|---:|---:|---:|---:|---:|\n");
        for (int ci = 0; ci < o.nclients; ci++) {
                for (int pi = 0; pi < o.npages; pi++) {
                        struct phase ph = {
                                .clients = o.clients[ci], .pages = o.pages[pi],
                                .pairs = (o.pairs + o.clients[ci] - 1) / o.clients[ci], .warmup = o.warmup,
                                .echo_tmo = o.echo_tmo,
                        };
                        uint32_t np = (uint32_t)o.pages[pi];
                        struct kv_alloc_req ar = { 0, np };

                        /* The exact sizes kvpool sends and receives. */
                        memset(tmp, 0, sizeof(tmp));
                        ph.alloc_req = (size_t)kv_enc_alloc_req(tmp, sizeof(tmp), 0, &ar);
                        ph.alloc_rep = kv_size_pages(np) - 4; /* replies carry no pool_id */
                        ph.free_req = kv_size_pages(np);
                        ph.free_rep = kv_size_pages(np) - 4;

                        /* Echo and kvpool alternate in rounds, so that the
                         * load of a shared machine falls on both alike. */
                        struct samples se = { 0 }, sk = { 0 };
                        struct svc_times before, after;

                        ph.pairs = (ph.pairs + o.rounds - 1) / o.rounds;
                        read_service_times(url, &before);
                        for (int r = 0; r < o.rounds; r++) {
                                ph.url = echo_url;
                                ph.echo = 1;
                                run_phase(&ph, echopid, &se);
                                ph.url = url;
                                ph.echo = 0;
                                run_phase(&ph, kvpid, &sk);
                        }
                        read_service_times(url, &after);
                        summarize(&se, &ec[ci][pi]);
                        summarize(&sk, &kv[ci][pi]);
                        for (int op = 0; op < 2; op++) {
                                double n = after.cnt[op] - before.cnt[op];

                                kv[ci][pi].svc_us[op] = before.ok && after.ok && n > 0
                                        ? (after.sum[op] - before.sum[op]) / n * 1e6 : -1;
                        }
                        for (int op = 0; op < 2; op++)
                                printf("| %d | %d | %s | %.1f | %.1f | %.1f | %.1f | %.2f | %.1f |\n", o.clients[ci],
                                       o.pages[pi], op ? "free" : "alloc", kv[ci][pi].p50[op], kv[ci][pi].p99[op],
                                       ec[ci][pi].p50[op], ec[ci][pi].p99[op], kv[ci][pi].p50[op] / ec[ci][pi].p50[op],
                                       kv[ci][pi].svc_us[op]);
                        fflush(stdout);
                }
        }

        printf("\n| clients | pages | kvpool round trips/s | echo round trips/s | ratio | kvpool pages/s "
               "| kvpoold CPU µs/rt | echo CPU µs/rt | kvpoold cs/rt | echo cs/rt |\n");
        printf("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for (int ci = 0; ci < o.nclients; ci++)
                for (int pi = 0; pi < o.npages; pi++)
                        printf("| %d | %d | %.0f | %.0f | %.2f | %.0f | %.1f | %.1f | %.2f | %.2f |\n", o.clients[ci],
                               o.pages[pi], kv[ci][pi].rt_per_s, ec[ci][pi].rt_per_s,
                               kv[ci][pi].rt_per_s / ec[ci][pi].rt_per_s, kv[ci][pi].pages_per_s,
                               kv[ci][pi].srv_cpu_us, ec[ci][pi].srv_cpu_us, kv[ci][pi].srv_cs, ec[ci][pi].srv_cs);

        /* Targets. */
        printf("\n");
        for (int ci = 0; ci < o.nclients; ci++) {
                double worst = 0;
                int wp = 0, wo = 0;

                for (int pi = 0; pi < o.npages; pi++)
                        for (int op = 0; op < 2; op++) {
                                double r = kv[ci][pi].p50[op] / ec[ci][pi].p50[op];

                                if (r > worst) {
                                        worst = r;
                                        wp = pi;
                                        wo = op;
                                }
                        }
                printf("target p50 <= 1.3x echo, %2d clients: %s (worst %.2fx: %s of %d pages)\n", o.clients[ci],
                       worst <= 1.3 ? "met" : "MISSED", worst, wo ? "free" : "alloc", o.pages[wp]);
        }
        int p1 = -1, p256 = -1;
        for (int pi = 0; pi < o.npages; pi++) {
                if (o.pages[pi] == 1)
                        p1 = pi;
                if (o.pages[pi] == 256)
                        p256 = pi;
        }
        if (p1 >= 0 && p256 >= 0)
                for (int ci = 0; ci < o.nclients; ci++) {
                        double r = kv[ci][p256].p50[0] / kv[ci][p1].p50[0];

                        printf("target alloc(256) < 2x alloc(1), %2d clients: %s (%.2fx: %.1f vs %.1f µs)\n",
                               o.clients[ci], r < 2.0 ? "met" : "MISSED", r, kv[ci][p256].p50[0], kv[ci][p1].p50[0]);
                }

        kill(kvpid, SIGTERM);
        waitpid(kvpid, NULL, 0);
        kill(echopid, SIGTERM);
        waitpid(echopid, NULL, 0);
        unlink(esock);
        unlink(log);
        return 0;
}
