/* e2e_util.h - helpers of the kvpoold end-to-end tests: start and stop a
 * daemon on a private socket, and a raw nng REQ client speaking kv_proto. */
#ifndef KVT_E2E_UTIL_H
#define KVT_E2E_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <cjson/cJSON.h>
#include <nng/nng.h>
#include "kv_proto.h"

struct daemon {
        pid_t pid;
        char  dir[64];
        char  url[160];
        char  path[96];
        char  log[128];
};

struct rep {
        uint8_t      *buf;
        size_t        len;
        struct kv_hdr h;
        const uint8_t *body;
};

#define SMALL_POOL "name=a,dtype=bf16,layers=2,kv_heads=2,head_dim=64,page_size=16,capacity=4MiB"

/* The daemon of the running test (0 = none); kill_leftover stops it. */
extern pid_t running_pid;
/* Request scratch buffer. */
extern uint8_t req[1 << 18];

/* Suite fini: stops the daemon of a test that ended early. */
void kill_leftover(void);
/* $KVPOOLD, asserted to be an executable. */
const char *kvpoold(void);
void sleep_ms(int ms);
/* Prints the daemon's log through cr_log_error. */
void dump_log(const struct daemon *d);
/* Starts kvpoold on a private socket with extra arguments (NULL-ended),
 * metrics off, and waits until it accepts a connection. */
void start_daemon(struct daemon *d, const char *const *extra);
/* start_daemon, calling before_exec (if not NULL) in the child just before
 * it execs kvpoold: the daemon will have the child's pid. */
void start_daemon_pre(struct daemon *d, const char *const *extra, void (*before_exec)(void));
/* SIGTERM; the exit code, or -1 when it did not exit normally. */
int stop_daemon(struct daemon *d);
/* Number of /dev/shm/kvpool.<pid>.* objects. */
int shm_objects(pid_t pid);
/* Stops the daemon, asserts exit 0, no shm object and no socket left. */
void stop_clean(struct daemon *d);
/* stop_clean, returning the daemon's whole log (read_log's buffer). */
const char *stop_clean_log(struct daemon *d);
/* A raw REQ socket dialed to url (no resend, receive timeout). */
nng_socket client(const char *url, int timeout_ms);
void rep_free(struct rep *r);
/* One round trip; asserts a decodable reply.  rep_free() it. */
struct rep rpc(nng_socket s, const uint8_t *msg, size_t len);
/* One round trip that must fail with code; the error in *ret. */
struct rep rpc_err(nng_socket s, const uint8_t *msg, size_t len, uint32_t code, struct kv_error *ret);
/* HELLO (tenant != 0: a salt of that byte), ATTACH, ALLOC n pages, a FREE
 * request in req, STATUS as parsed JSON; each asserts success. */
struct kv_hello_rep hello(nng_socket s, const char *name, int tenant);
struct kv_attach_rep attach(nng_socket s, const char *name, struct rep *keep);
uint32_t alloc_pages(nng_socket s, uint32_t pool, uint32_t n, uint32_t *ids);
size_t enc_free(uint32_t pool, uint32_t n, const uint32_t *ids);
cJSON *status(nng_socket s);
/* Pool name in a STATUS document (asserted present), a numeric key. */
const cJSON *status_pool(const cJSON *st, const char *name);
double num(const cJSON *o, const char *key);
/* Polls STATUS until pool has no page in use; 1 if within ms. */
int wait_all_free(nng_socket s, const char *pool, int ms);
/* Asserts an attach reply's offsets equal kv_layout_init's. */
void check_layout(const struct kv_attach_rep *a);
/* The daemon's log so far, NUL-terminated (a static buffer). */
const char *read_log(const struct daemon *d);

#endif
