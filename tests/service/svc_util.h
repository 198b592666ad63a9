/* svc_util.h - helpers shared by the service tests: a datagram socket that
 * plays systemd's notify socket, starting kvpoold, a tiny HTTP GET, running
 * a command and capturing its output, promtool. */
#ifndef SVC_UTIL_H
#define SVC_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Monotonic time in microseconds. */
uint64_t svc_now_usec(void);

/* A fresh unique path /tmp/kvtest-<pid>-<n>-<tag> (no scheme). */
void svc_tmp_path(char *buf, size_t cap, const char *tag);

/* Binds an AF_UNIX datagram socket at a fresh path and points NOTIFY_SOCKET
 * at it.  Returns the fd; the path is written to path. */
int svc_notify_socket(char *path, size_t cap);

/* Receives one datagram (NUL-terminated) within timeout_ms.  Returns its
 * length, 0 on timeout, -1 on error. */
int svc_recv(int fd, char *buf, size_t cap, int timeout_ms);

/* True when the datagram has a line exactly equal to assignment
 * ("READY=1").  With a trailing '=' (e.g. "STATUS="), a prefix match; the
 * value (up to the newline) is copied to value when non-NULL. */
int svc_has_line(const char *msg, const char *assignment, char *value, size_t vcap);

/* Forks and execs $KVPOOLD with argv (NULL-terminated, argv[0] ignored),
 * stderr and stdout appended to logpath.  Returns the pid or -1. */
pid_t svc_spawn_kvpoold(char *const argv[], const char *logpath);

/* Waits for the daemon's READY=1 on the notify fd (other datagrams are
 * skipped).  Returns 0, or -1 on timeout or when the daemon exited. */
int svc_wait_ready(int fd, pid_t pid, int timeout_ms);

/* Sends SIGTERM and waits up to timeout_ms; SIGKILL after that.  Returns the
 * exit status as waitpid reports it, or -1. */
int svc_stop(pid_t pid, int timeout_ms);

/* A TCP port on 127.0.0.1 that was free a moment ago. */
int svc_free_port(void);

/* GET path from 127.0.0.1:port.  Returns the HTTP status (and a malloc'ed
 * body and the Content-Type header value) or -1 if no connection/response. */
int svc_http_get(int port, const char *path, char **ret_body, char *ctype, size_t ctcap);

/* A blocking TCP connection to 127.0.0.1:port: the fd, or -1. */
int svc_tcp_connect(int port);

/* Sends the reqlen bytes of req (none when 0) on a new connection to
 * 127.0.0.1:port and reads the reply until the server closes (or 10 s
 * pass without a byte).  Returns its HTTP status, or -1 when none came; the
 * whole reply (NUL-terminated) goes to *ret_reply when non-NULL, to free. */
int svc_http_raw(int port, const char *req, size_t reqlen, char **ret_reply);

/* Reads and drops what comes on fd until the peer closes it (end of file or
 * a reset): 1 when that happened within timeout_ms, else 0. */
int svc_wait_closed(int fd, int timeout_ms);

/* 1 when fd's peer has not closed it (nothing to read, no end of file, no
 * error), without waiting. */
int svc_is_open(int fd);

/* How many descriptors process pid has open (from /proc), or -1. */
int svc_count_fds(pid_t pid);

/* Runs a shell command, feeding input (may be NULL) to its stdin and
 * collecting stdout+stderr into a malloc'ed *ret_out.  Returns the exit code
 * (or -1). */
int svc_run(const char *cmd, const char *input, char **ret_out);

/* Runs `promtool check metrics` on text; returns its exit code and fills
 * *ret_out with what it said.  Fails the calling test if promtool is missing. */
int svc_promtool(const char *text, char **ret_out);

/* Reads the sample value of the series whose line starts with
 * `name{labels} ` (labels exactly as rendered, or name alone).  Returns 0 and
 * *ret, or -1 when absent. */
int svc_metric(const char *text, const char *series, double *ret);

/* Tail of a log file, for failure messages (static buffer). */
const char *svc_log_tail(const char *path);

#endif
