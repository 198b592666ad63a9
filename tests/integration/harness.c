/* harness.c - start/stop kvpoold for the integration tests (see harness.h). */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

double kvt_now_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void sleep_ms(int ms)
{
        struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
                ;
}

const char *kvt_env_path(const char *name)
{
        const char *p = getenv(name);

        if (p == NULL || *p == '\0' || access(p, X_OK) != 0) {
                fprintf(stderr, "%s is not set to an executable (got '%s'): run through meson test\n",
                        name, p ? p : "");
                return NULL;
        }
        return p;
}

const char *kvt_pool_spec(int slot, const char *name, const char *dtype, const char *capacity)
{
        static char buf[8][256];

        snprintf(buf[slot & 7], sizeof buf[0],
                 "name=%s,dtype=%s,layers=2,kv_heads=2,head_dim=64,page_size=16,capacity=%s,backend=host",
                 name, dtype, capacity);
        return buf[slot & 7];
}

static void print_log(const struct kvt_daemon *d)
{
        char line[512];
        FILE *f = fopen(d->log, "r");

        if (f == NULL)
                return;
        fprintf(stderr, "---- kvpoold log (%s) ----\n", d->log);
        while (fgets(line, sizeof line, f))
                fputs(line, stderr);
        fclose(f);
}

/* Starts kvpoold on d's socket with a --pool per entry of pools and then
 * the raw arguments of extra (either may be NULL), and waits until it
 * answers. */
static int spawn(struct kvt_daemon *d, const char *const *pools, const char *const *extra)
{
        const char *kvpoold = kvt_env_path("KVPOOLD");
        const char *argv[64];
        int n = 0;
        pid_t parent = getpid();

        if (kvpoold == NULL)
                return -ENOENT;
        argv[n++] = kvpoold;
        argv[n++] = "--socket";
        argv[n++] = d->url;
        argv[n++] = "--events";
        argv[n++] = d->events;
        argv[n++] = "--metrics";
        argv[n++] = "none";
        argv[n++] = "--log-level";
        argv[n++] = "info";
        for (int i = 0; pools && pools[i] && n < 60; i++) {
                argv[n++] = "--pool";
                argv[n++] = pools[i];
        }
        for (int i = 0; extra && extra[i] && n < 62; i++)
                argv[n++] = extra[i];
        argv[n] = NULL;
        d->pid = fork();
        if (d->pid < 0)
                return -errno;
        if (d->pid == 0) {
                int fd = open(d->log, O_WRONLY | O_CREAT | O_APPEND, 0600);

                /* A test process that dies (Criterion timeout, crash) takes
                 * its daemon with it. */
                prctl(PR_SET_PDEATHSIG, SIGTERM);
                if (getppid() != parent)
                        _exit(1);
                if (fd >= 0) {
                        dup2(fd, 1);
                        dup2(fd, 2);
                        close(fd);
                }
                execv(kvpoold, (char *const *)argv);
                _exit(127);
        }
        /* Ready when a client gets through hello. */
        for (double t0 = kvt_now_ms(); kvt_now_ms() - t0 < 10000;) {
                kvc_client *c;
                int st;

                if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
                        d->pid = 0;
                        fprintf(stderr, "kvpoold exited during start (status 0x%x)\n", st);
                        print_log(d);
                        return -ECHILD;
                }
                if (kvc_connect(d->url, "harness", NULL, &c) == 0) {
                        kvc_disconnect(c);
                        return 0;
                }
                sleep_ms(20);
        }
        fprintf(stderr, "kvpoold did not answer within 10 s\n");
        print_log(d);
        return -ETIMEDOUT;
}

/* A fresh private directory for d's sockets and log. */
static int daemon_init(struct kvt_daemon *d)
{
        memset(d, 0, sizeof *d);
        snprintf(d->dir, sizeof d->dir, "/tmp/kvtest-%d-XXXXXX", (int)getpid());
        if (mkdtemp(d->dir) == NULL)
                return -errno;
        snprintf(d->url, sizeof d->url, "ipc://%s/kvpool.sock", d->dir);
        snprintf(d->events, sizeof d->events, "ipc://%s/events.sock", d->dir);
        snprintf(d->log, sizeof d->log, "%s/kvpoold.log", d->dir);
        return 0;
}

int kvt_daemon_start(struct kvt_daemon *d, const char *const *pools)
{
        int r = daemon_init(d);

        return r < 0 ? r : spawn(d, pools, NULL);
}

int kvt_daemon_start_args(struct kvt_daemon *d, const char *const *args)
{
        int r = daemon_init(d);

        return r < 0 ? r : spawn(d, NULL, args);
}

int kvt_daemon_restart(struct kvt_daemon *d, const char *const *pools)
{
        return spawn(d, pools, NULL);
}

int kvt_daemon_stop(struct kvt_daemon *d)
{
        int st;

        if (d->pid <= 0)
                return -1;
        kill(d->pid, SIGTERM);
        for (double t0 = kvt_now_ms(); kvt_now_ms() - t0 < 5000; sleep_ms(10)) {
                if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
                        d->pid = 0;
                        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
                }
        }
        kill(d->pid, SIGKILL);
        waitpid(d->pid, &st, 0);
        d->pid = 0;
        print_log(d);
        return -1;
}

void kvt_daemon_cleanup(struct kvt_daemon *d)
{
        char path[256];

        if (d->pid > 0)
                kvt_daemon_stop(d);
        snprintf(path, sizeof path, "%s/kvpool.sock", d->dir);
        unlink(path);
        snprintf(path, sizeof path, "%s/events.sock", d->dir);
        unlink(path);
        unlink(d->log);
        rmdir(d->dir);
}

cJSON *kvt_status(const char *url)
{
        kvc_client *c;
        char *text = NULL;
        cJSON *doc = NULL;

        if (kvc_connect(url, "status-probe", NULL, &c) != 0) {
                fprintf(stderr, "status: %s\n", kvc_errmsg(NULL));
                return NULL;
        }
        if (kvc_status_json(c, &text) == 0) {
                doc = cJSON_Parse(text);
                if (doc == NULL)
                        fprintf(stderr, "status: not JSON: %s\n", text);
        } else {
                fprintf(stderr, "status: %s\n", kvc_errmsg(c));
        }
        free(text);
        kvc_disconnect(c);
        return doc;
}

double kvt_pool_num(const char *url, const char *pool, const char *key)
{
        cJSON *doc = kvt_status(url), *p;
        double v = NAN;

        if (doc == NULL)
                return NAN;
        cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(doc, "pools")) {
                const cJSON *name = cJSON_GetObjectItemCaseSensitive(p, "name");
                const cJSON *x = cJSON_GetObjectItemCaseSensitive(p, key);

                if (cJSON_IsString(name) && strcmp(name->valuestring, pool) == 0 && cJSON_IsNumber(x))
                        v = x->valuedouble;
        }
        cJSON_Delete(doc);
        return v;
}

int kvt_wait_all_free(const char *url, const char *pool, int ms)
{
        for (double t0 = kvt_now_ms(); kvt_now_ms() - t0 < ms; sleep_ms(10)) {
                double total = kvt_pool_num(url, pool, "pages_total");
                double fr = kvt_pool_num(url, pool, "pages_free");

                if (!isnan(total) && total > 0 && fr == total)
                        return 1;
        }
        return 0;
}

int kvt_spawn(char *const argv[], struct kvt_proc *ret)
{
        int in[2], out[2];
        pid_t pid;

        if (pipe2(in, O_CLOEXEC) != 0)
                return -errno;
        if (pipe2(out, O_CLOEXEC) != 0) {
                close(in[0]);
                close(in[1]);
                return -errno;
        }
        pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                /* dup2 clears O_CLOEXEC on the copies. */
                dup2(in[0], 0);
                dup2(out[1], 1);
                execv(argv[0], argv);
                _exit(127);
        }
        close(in[0]);
        close(out[1]);
        ret->pid = pid;
        ret->in = in[1];
        ret->out = fdopen(out[0], "r");
        return ret->out ? 0 : -ENOMEM;
}

int kvt_proc_line(struct kvt_proc *p, char *buf, size_t len)
{
        if (fgets(buf, (int)len, p->out) == NULL)
                return -1;
        buf[strcspn(buf, "\n")] = '\0';
        return 0;
}

int kvt_proc_say(struct kvt_proc *p, const char *line)
{
        size_t n = strlen(line);

        return write(p->in, line, n) == (ssize_t)n && write(p->in, "\n", 1) == 1 ? 0 : -EIO;
}

int kvt_proc_wait(struct kvt_proc *p)
{
        int st;

        char buf[512];

        if (p->in >= 0)
                close(p->in);
        p->in = -1;
        /* Drain what the child still prints: closing the pipe first would
         * kill it with SIGPIPE on its last words. */
        if (p->out != NULL) {
                while (fgets(buf, sizeof buf, p->out) != NULL)
                        ;
                fclose(p->out);
        }
        p->out = NULL;
        /* pid -1: the caller already reaped the child. */
        if (p->pid <= 0 || waitpid(p->pid, &st, 0) != p->pid)
                return -1;
        if (WIFSIGNALED(st))
                return 128 + WTERMSIG(st);
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int kvt_holder_start(const char *url, const char *pool, uint32_t n, uint32_t w, int32_t *pages,
                     struct kvt_proc *ret)
{
        const char *exe = kvt_env_path("KVT_WORKER");
        char ns[16], ws[16], line[4096], *tok, *save;
        char *argv[] = { (char *)exe, "hold", (char *)url, (char *)pool, ns, ws, NULL };
        uint32_t got = 0;
        int r;

        if (exe == NULL)
                return -ENOENT;
        snprintf(ns, sizeof ns, "%u", n);
        snprintf(ws, sizeof ws, "%u", w);
        if ((r = kvt_spawn(argv, ret)) != 0)
                return r;
        if (kvt_proc_line(ret, line, sizeof line) != 0 || strncmp(line, "PAGES", 5) != 0) {
                fprintf(stderr, "worker %u on %s: no PAGES line\n", w, pool);
                kvt_proc_wait(ret);
                return -EPROTO;
        }
        for (tok = strtok_r(line + 5, " ", &save); tok && got < n; tok = strtok_r(NULL, " ", &save))
                pages[got++] = atoi(tok);
        if (got != n) {
                fprintf(stderr, "worker %u on %s reported %u pages, expected %u\n", w, pool, got, n);
                kvt_proc_wait(ret);
                return -EPROTO;
        }
        return 0;
}

int kvt_holder_release(struct kvt_proc *pr)
{
        char line[64] = "";
        int  st;

        if (kvt_proc_say(pr, "free") != 0 || kvt_proc_line(pr, line, sizeof line) != 0 || strcmp(line, "FREED")) {
                fprintf(stderr, "holder did not free its pages (said \"%s\")\n", line);
                kvt_proc_wait(pr);
                return -1;
        }
        if ((st = kvt_proc_wait(pr)) != 0) {
                fprintf(stderr, "holder exited with status %d\n", st);
                return -1;
        }
        return 0;
}
