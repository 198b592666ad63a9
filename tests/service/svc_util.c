/* svc_util.c - helpers shared by the service tests (see svc_util.h). */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "svc_util.h"

uint64_t svc_now_usec(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void svc_tmp_path(char *buf, size_t cap, const char *tag)
{
        static int n;

        snprintf(buf, cap, "/tmp/kvtest-%d-%d-%s", (int)getpid(), n++, tag);
}

int svc_notify_socket(char *path, size_t cap)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

        cr_assert(fd >= 0, "socket: %s", strerror(errno));
        svc_tmp_path(path, cap, "notify.sock");
        unlink(path);
        cr_assert(strlen(path) < sizeof(sa.sun_path));
        strcpy(sa.sun_path, path);
        cr_assert(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "bind %s: %s", path, strerror(errno));
        setenv("NOTIFY_SOCKET", path, 1);
        return fd;
}

int svc_recv(int fd, char *buf, size_t cap, int timeout_ms)
{
        struct pollfd p = { .fd = fd, .events = POLLIN };
        int r = poll(&p, 1, timeout_ms);
        ssize_t n;

        if (r < 0)
                return -1;
        if (r == 0)
                return 0;
        n = recv(fd, buf, cap - 1, 0);
        if (n < 0)
                return -1;
        buf[n] = '\0';
        return (int)n;
}

int svc_has_line(const char *msg, const char *assignment, char *value, size_t vcap)
{
        size_t al = strlen(assignment);
        int prefix = al && assignment[al - 1] == '=';
        const char *p = msg;

        while (*p) {
                const char *nl = strchr(p, '\n');
                size_t ll = nl ? (size_t)(nl - p) : strlen(p);

                if (prefix ? ll >= al && strncmp(p, assignment, al) == 0
                           : ll == al && strncmp(p, assignment, al) == 0) {
                        if (value && vcap) {
                                size_t vl = ll - (prefix ? al : ll);

                                if (vl >= vcap)
                                        vl = vcap - 1;
                                memcpy(value, p + (prefix ? al : ll), vl);
                                value[vl] = '\0';
                        }
                        return 1;
                }
                if (!nl)
                        break;
                p = nl + 1;
        }
        return 0;
}

pid_t svc_spawn_kvpoold(char *const argv[], const char *logpath)
{
        const char *exe = getenv("KVPOOLD");
        pid_t pid;

        cr_assert(exe && *exe, "KVPOOLD is not set (meson passes the built kvpoold)");
        cr_assert(access(exe, X_OK) == 0, "KVPOOLD=%s is not executable", exe);
        pid = fork();
        if (pid == 0) {
                int fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND, 0644);

                if (fd >= 0) {
                        dup2(fd, 1);
                        dup2(fd, 2);
                        close(fd);
                }
                execv(exe, argv);
                _exit(127);
        }
        return pid;
}

int svc_wait_ready(int fd, pid_t pid, int timeout_ms)
{
        uint64_t end = svc_now_usec() + (uint64_t)timeout_ms * 1000u;
        char buf[4096];

        while (svc_now_usec() < end) {
                int left = (int)((end - svc_now_usec()) / 1000u) + 1;
                int n = svc_recv(fd, buf, sizeof(buf), left < 100 ? left : 100);

                if (n > 0 && svc_has_line(buf, "READY=1", NULL, 0))
                        return 0;
                if (n == 0 && waitpid(pid, NULL, WNOHANG) == pid)
                        return -1;
        }
        return -1;
}

int svc_stop(pid_t pid, int timeout_ms)
{
        uint64_t end = svc_now_usec() + (uint64_t)timeout_ms * 1000u;
        int st;

        if (pid <= 0)
                return -1;
        kill(pid, SIGTERM);
        while (svc_now_usec() < end) {
                pid_t r = waitpid(pid, &st, WNOHANG);

                if (r == pid)
                        return st;
                if (r < 0)
                        return -1;
                usleep(10000);
        }
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
        return -1;
}

int svc_free_port(void)
{
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t sl = sizeof(sa);
        int fd = socket(AF_INET, SOCK_STREAM, 0);

        cr_assert(fd >= 0);
        cr_assert(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
        cr_assert(getsockname(fd, (struct sockaddr *)&sa, &sl) == 0);
        close(fd);
        return ntohs(sa.sin_port);
}

int svc_http_get(int port, const char *path, char **ret_body, char *ctype, size_t ctcap)
{
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        struct timeval tv = { .tv_sec = 10 };
        size_t len = 0, cap = 65536;
        char *buf, req[512], *hdr_end, *cl, *ct;
        int fd, status = -1;
        ssize_t n;

        fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0)
                return -1;
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
                close(fd);
                return -1;
        }
        snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n", path, port);
        if (write(fd, req, strlen(req)) != (ssize_t)strlen(req)) {
                close(fd);
                return -1;
        }
        buf = malloc(cap);
        cr_assert(buf);
        for (;;) {
                if (len + 1 == cap) {
                        cap *= 2;
                        buf = realloc(buf, cap);
                        cr_assert(buf);
                }
                n = read(fd, buf + len, cap - 1 - len);
                if (n <= 0)
                        break;
                len += (size_t)n;
                buf[len] = '\0';
                /* Stop once Content-Length bytes of body are in, in case
                 * the server keeps the connection open. */
                hdr_end = strstr(buf, "\r\n\r\n");
                cl = hdr_end ? strcasestr(buf, "\r\nContent-Length:") : NULL;
                if (hdr_end && cl && cl < hdr_end &&
                    len - (size_t)(hdr_end + 4 - buf) >= strtoul(cl + 17, NULL, 10))
                        break;
        }
        close(fd);
        buf[len] = '\0';
        hdr_end = strstr(buf, "\r\n\r\n");
        if (!hdr_end || sscanf(buf, "HTTP/1.%*d %d", &status) != 1) {
                free(buf);
                return -1;
        }
        *hdr_end = '\0';
        if (ctype && ctcap) {
                ctype[0] = '\0';
                ct = strcasestr(buf, "\r\nContent-Type:");
                if (ct) {
                        ct += 15;
                        while (*ct == ' ')
                                ct++;
                        snprintf(ctype, ctcap, "%.*s", (int)strcspn(ct, "\r\n"), ct);
                }
        }
        if (ret_body)
                *ret_body = strdup(hdr_end + 4);
        free(buf);
        return status;
}

int svc_run(const char *cmd, const char *input, char **ret_out)
{
        char inpath[256], full[4096];
        size_t len = 0, cap = 65536;
        char *out = malloc(cap);
        FILE *f;
        int st;
        size_t n;

        cr_assert(out);
        inpath[0] = '\0';
        if (input) {
                svc_tmp_path(inpath, sizeof(inpath), "stdin");
                f = fopen(inpath, "w");
                cr_assert(f);
                fputs(input, f);
                fclose(f);
                snprintf(full, sizeof(full), "%s < %s 2>&1", cmd, inpath);
        } else {
                snprintf(full, sizeof(full), "%s < /dev/null 2>&1", cmd);
        }
        f = popen(full, "r");
        cr_assert(f, "popen %s", cmd);
        while ((n = fread(out + len, 1, cap - 1 - len, f)) > 0) {
                len += n;
                if (len + 1 == cap) {
                        cap *= 2;
                        out = realloc(out, cap);
                        cr_assert(out);
                }
        }
        out[len] = '\0';
        st = pclose(f);
        if (inpath[0])
                unlink(inpath);
        *ret_out = out;
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int svc_promtool(const char *text, char **ret_out)
{
        char *out = NULL;

        cr_assert(svc_run("command -v promtool", NULL, &out) == 0,
                  "promtool is missing: install Debian's prometheus package");
        free(out);
        return svc_run("promtool check metrics", text, ret_out);
}

int svc_metric(const char *text, const char *series, double *ret)
{
        size_t sl = strlen(series);
        const char *p = text;

        while (p && *p) {
                if (strncmp(p, series, sl) == 0 && p[sl] == ' ') {
                        *ret = strtod(p + sl + 1, NULL);
                        return 0;
                }
                p = strchr(p, '\n');
                if (p)
                        p++;
        }
        return -1;
}

const char *svc_log_tail(const char *path)
{
        static char buf[4096];
        FILE *f = fopen(path, "r");
        long sz;
        size_t n;

        buf[0] = '\0';
        if (!f)
                return "(no log)";
        fseek(f, 0, SEEK_END);
        sz = ftell(f);
        fseek(f, sz > (long)sizeof(buf) - 1 ? sz - (long)sizeof(buf) + 1 : 0, SEEK_SET);
        n = fread(buf, 1, sizeof(buf) - 1, f);
        buf[n] = '\0';
        fclose(f);
        return buf;
}

int svc_tcp_connect(int port)
{
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        if (fd < 0)
                return -1;
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
                close(fd);
                return -1;
        }
        return fd;
}

int svc_http_raw(int port, const char *req, size_t reqlen, char **ret_reply)
{
        size_t len = 0, cap = 65536;
        char *buf;
        int fd = svc_tcp_connect(port), status = -1;

        if (fd < 0)
                return -1;
        if (reqlen && write(fd, req, reqlen) != (ssize_t)reqlen) {
                close(fd);
                return -1;
        }
        buf = malloc(cap);
        cr_assert(buf);
        for (;;) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                ssize_t n;

                if (len + 1 == cap) {
                        cap *= 2;
                        buf = realloc(buf, cap);
                        cr_assert(buf);
                }
                if (poll(&p, 1, 10000) != 1)
                        break;
                n = read(fd, buf + len, cap - 1 - len);
                if (n <= 0)
                        break;
                len += (size_t)n;
        }
        close(fd);
        buf[len] = '\0';
        if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1)
                status = -1;
        if (ret_reply)
                *ret_reply = buf;
        else
                free(buf);
        return status;
}

int svc_wait_closed(int fd, int timeout_ms)
{
        uint64_t end = svc_now_usec() + (uint64_t)timeout_ms * 1000u;
        char junk[4096];

        for (;;) {
                uint64_t now = svc_now_usec();
                struct pollfd p = { .fd = fd, .events = POLLIN };
                ssize_t n;

                if (now >= end || poll(&p, 1, (int)((end - now) / 1000u) + 1) == 0)
                        return 0;
                n = recv(fd, junk, sizeof(junk), MSG_DONTWAIT);
                if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
                        return 1;
        }
}

int svc_is_open(int fd)
{
        char c;
        ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT | MSG_PEEK);

        return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

int svc_count_fds(pid_t pid)
{
        char path[64];
        struct dirent *e;
        DIR *d;
        int n = 0;

        snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
        if (!(d = opendir(path)))
                return -1;
        while ((e = readdir(d)))
                n += e->d_name[0] != '.';
        closedir(d);
        return n;
}
