/* prefix_util.c - see prefix_util.h. */
#include "prefix_util.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

static void nap_ms(long ms)
{
        struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
        nanosleep(&ts, NULL);
}

int kvt_daemon_start(struct kvt_daemon *d, const char *exe, const char *const *pools, int npools)
{
        static int seq;
        if (!exe)
                exe = getenv("KVPOOLD");
        if (!exe || access(exe, X_OK) != 0) {
                fprintf(stderr, "kvt: KVPOOLD does not name the kvpoold binary (%s)\n",
                        exe ? exe : "unset");
                return -ENOENT;
        }
        memset(d, 0, sizeof(*d));
        int n = seq++;
        snprintf(d->sock, sizeof(d->sock), "ipc:///tmp/kvtest-%d-%d.sock", (int)getpid(), n);
        snprintf(d->events, sizeof(d->events), "ipc:///tmp/kvtest-%d-%d-ev.sock", (int)getpid(), n);
        const char *argv[64];
        int a = 0;
        argv[a++] = exe;
        argv[a++] = "--socket";
        argv[a++] = d->sock;
        argv[a++] = "--events";
        argv[a++] = d->events;
        argv[a++] = "--metrics";
        argv[a++] = "none";
        argv[a++] = "--log-level";
        argv[a++] = "warning";
        for (int i = 0; i < npools && a < 60; i++) {
                argv[a++] = "--pool";
                argv[a++] = pools[i];
        }
        argv[a] = NULL;
        pid_t pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                /* a test that fails an assertion exits at once: take the
                 * daemon with it (SIGTERM: it removes its shared memory) */
                prctl(PR_SET_PDEATHSIG, SIGTERM);
                execv(exe, (char *const *)argv);
                _exit(127);
        }
        d->pid = pid;
        /* ready when a client gets through */
        for (int i = 0; i < 500; i++) {
                kvc_client *c;
                if (kvc_connect(d->sock, "kvt-probe", NULL, &c) == 0) {
                        kvc_disconnect(c);
                        return 0;
                }
                int st;
                if (waitpid(pid, &st, WNOHANG) == pid) {
                        fprintf(stderr, "kvt: kvpoold exited during startup (status %d)\n", st);
                        d->pid = 0;
                        return -ECHILD;
                }
                nap_ms(20);
        }
        fprintf(stderr, "kvt: kvpoold did not answer on %s within 10 s\n", d->sock);
        kvt_daemon_stop(d);
        return -ETIMEDOUT;
}

int kvt_daemon_stop(struct kvt_daemon *d)
{
        if (d->pid <= 0)
                return -1;
        kill(d->pid, SIGTERM);
        int st = 0;
        for (int i = 0; i < 1000; i++) {
                if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
                        d->pid = 0;
                        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
                }
                nap_ms(10);
        }
        kill(d->pid, SIGKILL);
        waitpid(d->pid, &st, 0);
        d->pid = 0;
        return 128 + SIGKILL;
}

int kvt_connect(const struct kvt_daemon *d, const char *name, const kvc_key *salt, kvc_client **ret)
{
        return kvc_connect(d->sock, name, salt, ret);
}

int kvt_worker_start(struct kvt_worker *w)
{
        const char *exe = getenv("KVT_WORKER");
        if (!exe || access(exe, X_OK) != 0) {
                fprintf(stderr, "kvt: KVT_WORKER does not name the prefix_worker binary (%s)\n",
                        exe ? exe : "unset");
                return -ENOENT;
        }
        /* close-on-exec: a worker spawned later must not inherit this one's
         * stdin, or closing it would never reach this worker as EOF */
        int in[2], out[2];
        if (pipe2(in, O_CLOEXEC) < 0)
                return -errno;
        if (pipe2(out, O_CLOEXEC) < 0) {
                close(in[0]);
                close(in[1]);
                return -errno;
        }
        pid_t pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                dup2(in[0], 0);
                dup2(out[1], 1);
                close(in[0]);
                close(in[1]);
                close(out[0]);
                close(out[1]);
                execl(exe, exe, (char *)NULL);
                _exit(127);
        }
        close(in[0]);
        close(out[1]);
        memset(w, 0, sizeof(*w));
        w->pid = pid;
        w->in = fdopen(in[1], "w");
        w->out = fdopen(out[0], "r");
        setvbuf(w->in, NULL, _IOLBF, 0);
        return 0;
}

char *kvt_cmd(struct kvt_worker *w, const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        vfprintf(w->in, fmt, ap);
        va_end(ap);
        fputc('\n', w->in);
        fflush(w->in);
        ssize_t n = getline(&w->line, &w->cap, w->out);
        if (n <= 0)
                return NULL;
        w->line[strcspn(w->line, "\n")] = '\0';
        return w->line;
}

int kvt_worker_stop(struct kvt_worker *w)
{
        if (w->pid <= 0)
                return -1;
        fclose(w->in);
        int st = 0;
        waitpid(w->pid, &st, 0);
        fclose(w->out);
        free(w->line);
        w->pid = 0;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

void kvt_worker_kill(struct kvt_worker *w)
{
        if (w->pid <= 0)
                return;
        kill(w->pid, SIGKILL);
        waitpid(w->pid, NULL, 0);
        fclose(w->in);
        fclose(w->out);
        free(w->line);
        w->pid = 0;
}

static cJSON *status_doc(kvc_client *c)
{
        char *text = NULL;
        if (kvc_status_json(c, &text) < 0)
                return NULL;
        cJSON *doc = cJSON_Parse(text);
        free(text);
        return doc;
}

static int64_t num(const cJSON *o, const char *k)
{
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
        return cJSON_IsNumber(v) ? (int64_t)v->valuedouble : -1;
}

int kvt_pool_stats(kvc_client *c, const char *name, struct kvt_pool_stats *ret)
{
        cJSON *doc = status_doc(c);
        if (!doc)
                return -EPROTO;
        int rc = -ENOENT;
        const cJSON *p;
        cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(doc, "pools")) {
                const cJSON *nm = cJSON_GetObjectItemCaseSensitive(p, "name");
                if (!cJSON_IsString(nm) || strcmp(nm->valuestring, name))
                        continue;
                ret->total = num(p, "pages_total");
                ret->free = num(p, "pages_free");
                ret->held = num(p, "pages_held");
                ret->cached = num(p, "pages_cached");
                ret->cached_idle = num(p, "cached_idle");
                ret->lookups = num(p, "lookups");
                ret->hits = num(p, "hits");
                ret->evictions = num(p, "evictions");
                rc = 0;
        }
        cJSON_Delete(doc);
        return rc;
}

int64_t kvt_client_held(kvc_client *c, pid_t pid)
{
        cJSON *doc = status_doc(c);
        if (!doc)
                return -2;
        int64_t held = -1;
        const cJSON *cl;
        cJSON_ArrayForEach(cl, cJSON_GetObjectItemCaseSensitive(doc, "clients")) {
                if (num(cl, "pid") == (int64_t)pid)
                        held = (held < 0 ? 0 : held) + num(cl, "pages_held");
        }
        cJSON_Delete(doc);
        return held;
}

int kvt_wait_gone(kvc_client *c, pid_t pid)
{
        for (int i = 0; i < 1000; i++) {
                if (kvt_client_held(c, pid) == -1)
                        return 0;
                nap_ms(10);
        }
        return -ETIMEDOUT;
}

void kvt_hex(const kvc_key *k, char *buf)
{
        static const char digits[] = "0123456789abcdef";
        for (int i = 0; i < 16; i++) {
                buf[2 * i] = digits[k->b[i] >> 4];
                buf[2 * i + 1] = digits[k->b[i] & 15];
        }
        buf[32] = '\0';
}

int kvt_parse_ok(const char *line, int64_t *out, int max)
{
        if (!line || strncmp(line, "ok", 2) != 0)
                return -1;
        const char *p = line + 2;
        int n = 0;
        while (n < max) {
                char *end;
                long long v = strtoll(p, &end, 10);
                if (end == p)
                        break;
                out[n++] = v;
                p = end;
        }
        return n;
}
