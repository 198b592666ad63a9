/* main.c - kvpoold: configuration, startup in a fixed order, signals, and a
 * clean shutdown.
 *
 * Start: parse the configuration -> remove dead kvpoolds' shm objects ->
 * create every pool (any failure: free what was made and exit 1; the daemon
 * never starts half-configured) -> listen -> event stream -> metrics HTTP ->
 * READY=1.  SIGTERM/SIGINT: STOPPING=1 -> close the listener -> shutdown
 * event -> destroy pools (unlink shm) -> remove the socket file -> exit 0.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include "backend.h"
#include "config.h"
#include "log.h"
#include "notify.h"
#include "pool.h"
#include "server.h"
#include "status.h"

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
        (void)sig;
        /* The serving loop wakes at least every 200 ms and sees the flag. */
        stop_requested = 1;
}

static int install_signals(void)
{
        struct sigaction sa;

        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGTERM, &sa, NULL) || sigaction(SIGINT, &sa, NULL))
                return -errno;
        /* A peer vanishing mid-write must not kill the daemon. */
        sa.sa_handler = SIG_IGN;
        return sigaction(SIGPIPE, &sa, NULL) ? -errno : 0;
}

static int check_config(const struct kvd_config *c)
{
        char err[1024];

        kvd_config_print(c, stdout);
        if (kvd_config_load_scales(c, stdout, NULL, err, sizeof(err))) {
                fprintf(stderr, "kvpoold: %s\n", err);
                return 1;
        }
        printf("configuration OK\n");
        return 0;
}

/* The scales kvd_config_load_scales gave, those no pool took (a taken one
 * is empty), and the array. */
static void free_scales(struct kvd_scales *scales, uint32_t n)
{
        for (uint32_t i = 0; i < n; i++)
                kvd_scales_fini(&scales[i]);
        free(scales);
}

static void free_pools(struct kvd_pool **pools, uint32_t n)
{
        for (uint32_t i = 0; i < n; i++)
                kvd_pool_free(pools[i]);
        free(pools);
}

/* Raises the soft limit on open files to the hard one.  Every client is a
 * descriptor, and systemd starts services at a soft 1024 (its hard limit is
 * far higher, and it asks programs that need more to raise it themselves);
 * run out, and nng cannot accept a client, nor the listener guard
 * (listen_guard.c) read /proc/self/fd.  Failing leaves the limit as it was. */
static void raise_nofile(void)
{
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max)
                return;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
                kvd_debug("cannot raise the open-file limit: %s", strerror(errno));
}

int main(int argc, char **argv)
{
        struct kvd_config     c;
        struct kvd_server_cfg scfg;
        struct kvd_server    *srv = NULL;
        struct kvd_pool     **pools;
        struct kvd_scales    *scales = NULL;
        char                  err[1024], line[160];
        uint32_t              made = 0;
        int                   r;

        if ((r = kvd_config_parse(argc, argv, &c, err, sizeof(err)))) {
                kvd_err("configuration: %s", err);
                return 1;
        }
        if (c.help || c.version) {
                if (c.help)
                        fputs(kvd_config_usage(), stdout);
                else
                        printf("kvpoold %s (protocol %u)\n", KVD_VERSION, KV_PROTO_VERSION);
                kvd_config_fini(&c);
                return 0;
        }
        kvd_log_set_level(c.log_level);
        if (c.check_config) {
                r = check_config(&c);
                kvd_config_fini(&c);
                return r;
        }
        if (c.default_pool)
                kvd_info("no pool configured: serving the built-in pool \"default\" (fp8_e4m3, 32 layers x 8 kv_heads "
                         "x 128 head_dim, page_size 16, 256MiB, backend auto)");
        raise_nofile();
        if ((r = install_signals())) {
                kvd_err("cannot install signal handlers: %s", strerror(-r));
                kvd_config_fini(&c);
                return 1;
        }

        /* Every pool's scales load before any pool is made: a bad scale
         * file of the last pool must not cost the first ones' allocation.
         * Each pool takes its own over. */
        if (kvd_config_load_scales(&c, NULL, &scales, err, sizeof(err))) {
                kvd_err("configuration: %s", err);
                kvd_err("not starting");
                kvd_config_fini(&c);
                return 1;
        }
        /* Before any pool is made: the shared memory a dead kvpoold left
         * is then free for our own pools (a /dev/shm it filled would fail
         * their posix_fallocate), and there is no pool of ours to meet.
         * Always, whatever the backends: a daemon that died may have had
         * host pools this configuration has not.  A failed sweep is logged
         * and does not stop the start. */
        (void)kvd_host_sweep(KVD_SHM_DIR);
        if (!(pools = calloc(c.num_pools, sizeof(*pools)))) {
                kvd_err("out of memory");
                free_scales(scales, c.num_pools);
                kvd_config_fini(&c);
                return 1;
        }
        for (made = 0; made < c.num_pools; made++) {
                if ((r = kvd_pool_new(&c.pools[made], made, &scales[made], &pools[made], err, sizeof(err)))) {
                        kvd_err("%s", err);
                        kvd_err("not starting: pool %s could not be created", c.pools[made].name);
                        free_pools(pools, made);
                        free_scales(scales, c.num_pools);
                        kvd_config_fini(&c);
                        return 1;
                }
        }
        free_scales(scales, c.num_pools); /* each pool took its own: only the array is left */

        memset(&scfg, 0, sizeof(scfg));
        scfg.socket_url = c.socket_url;
        scfg.events_url = c.events_url;
        scfg.metrics_addr = c.metrics_addr;
        scfg.socket_mode = c.group ? 0660 : 0600;
        scfg.group = c.gid;
        scfg.has_group = c.group != NULL;
        if ((r = kvd_server_new(&scfg, pools, made, &srv, err, sizeof(err)))) {
                kvd_err("%s", err);
                kvd_err("not starting");
                free_pools(pools, made);
                kvd_config_fini(&c);
                return 1;
        }
        free(pools); /* the server owns the pools now */

        kvd_server_lock(srv);
        kvd_server_status_line(srv, line, sizeof(line));
        kvd_server_unlock(srv);
        kvd_info("kvpoold %s ready: %s", KVD_VERSION, line);
        kvd_notify_ready(line);

        r = kvd_server_run(srv, &stop_requested);

        kvd_info("shutting down%s", r ? " after a socket failure" : "");
        kvd_notify_stopping();
        kvd_server_free(srv);
        kvd_config_fini(&c);
        kvd_info("stopped");
        return r ? 1 : 0;
}
