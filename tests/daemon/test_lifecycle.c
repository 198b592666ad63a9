/* test_lifecycle.c - kvpoold's life cycle end to end: capacity per dtype,
 * --check-config, a failed start, pressure crossings, --group modes, and
 * SIGTERM with clients connected or busy, or with a socket close that does
 * not return.  $KVPOOLD names the binary. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cjson/cJSON.h>
#include <nng/nng.h>
#include <nng/protocol/pubsub0/sub.h>
#include <nng/protocol/reqrep0/req.h>
#include "events.h"
#include "kv_proto.h"
#include "kv_layout.h"

#include "e2e_util.h"

TestSuite(lifecycle, .fini = kill_leftover);

Test(lifecycle, capacity_by_dtype)
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

/* Runs kvpoold with args; returns its exit code, output in out.
 * before_exec (if not NULL) runs in the child just before the exec. */
static int run_kvpoold_pre(const char *const *args, char *out, size_t cap, pid_t *ret_pid, void (*before_exec)(void))
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
                if (before_exec)
                        before_exec();
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

static int run_kvpoold(const char *const *args, char *out, size_t cap, pid_t *ret_pid)
{
        return run_kvpoold_pre(args, out, cap, ret_pid, NULL);
}

Test(lifecycle, check_config)
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

Test(lifecycle, failed_start_leaves_nothing)
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

Test(lifecycle, bad_scales_of_a_later_pool_stop_the_start_before_any_pool)
{
        /* pool b's scale file does not exist: the start fails naming it,
         * before pool a is made (it used to be made, then freed) */
        char        out[8192], cfg[64];
        pid_t       pid;
        FILE       *f;
        const char *args[] = { "--metrics", "none", "--socket", "ipc:///tmp/kvtest-bs.sock", "--config", cfg, NULL };

        snprintf(cfg, sizeof(cfg), "/tmp/kvtest-bs-%d.json", (int)getpid());
        cr_assert_not_null(f = fopen(cfg, "w"));
        fprintf(f, "{\"pools\": [{\"name\": \"a\", \"dtype\": \"bf16\", \"layers\": 2, \"kv_heads\": 2, "
                   "\"head_dim\": 64, \"page_size\": 16, \"capacity\": \"8MiB\", \"backend\": \"host\"}, "
                   "{\"name\": \"b\", \"dtype\": \"fp8_e4m3\", \"layers\": 2, \"kv_heads\": 2, \"head_dim\": 64, "
                   "\"page_size\": 16, \"capacity\": \"8MiB\", \"backend\": \"host\", "
                   "\"scales\": {\"source\": \"json\", \"path\": \"/tmp/kvtest-no-such-scales.json\"}}]}\n");
        fclose(f);
        cr_assert_eq(run_kvpoold(args, out, sizeof(out), &pid), 1, "%s", out);
        unlink(cfg);
        cr_assert(strstr(out, "pool b: scales") && strstr(out, "/tmp/kvtest-no-such-scales.json"), "%s", out);
        cr_assert_null(strstr(out, "pool a: "), "pool a was made before the scales were checked:\n%s", out);
        cr_assert_eq(shm_objects(pid), 0, "a failed start left shared memory behind");
}

/* Before the exec, in the child whose pid kvpoold will have: the shm object
 * of pool "a" of an earlier kvpoold with that pid, as a restart in a pid
 * namespace (a container's pid 1) finds it after a crash.  Empty (a daemon
 * that died making it): the start-up sweep of every kvpoold, this one's and
 * those other tests start meanwhile, leaves an empty object alone, so that
 * it is this daemon's pool creation that meets it. */
static void leave_stale_shm(void)
{
        char name[48];
        int  fd;

        snprintf(name, sizeof(name), "/kvpool.%d.a", (int)getpid());
        if ((fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600)) < 0)
                _exit(125);
        close(fd);
}

Test(lifecycle, restart_with_the_same_pid_removes_the_dead_daemons_shm)
{
        /* it used to refuse to start (EEXIST) until someone removed the
         * object by hand: a crash loop in a container */
        const char *const args[] = { "--pool", SMALL_POOL ",backend=host", NULL };
        struct daemon     d;
        struct rep        keep;

        start_daemon_pre(&d, args, leave_stale_shm);
        nng_socket s = client(d.url, 5000);
        hello(s, "same-pid", 0);
        struct kv_attach_rep a = attach(s, "a", &keep);
        char path[96];
        struct stat sb;
        snprintf(path, sizeof(path), "/dev/shm%s", a.shm_name);
        cr_assert_eq(stat(path, &sb), 0);
        cr_assert_eq((uint64_t)sb.st_size, a.pool_bytes, "the pool is not the new object");
        rep_free(&keep);
        nng_close(s);
        const char *log = stop_clean_log(&d);
        /* its own line: the start-up sweep may log other dead kvpoolds'
         * objects as "removed /dev/shm/kvpool..." */
        char want[160];
        snprintf(want, sizeof(want), "removed %s, the shared memory of a kvpoold with the same pid", a.shm_name);
        cr_assert(strstr(log, want), "no \"%s\" in:\n%s", want, log);
}

/* As leave_stale_shm, but the object's owner is alive: the locked
 * description stays open across the exec (a live kvpoold with the same pid
 * in another pid namespace holds such a lock).  Empty too: once kvpoold has
 * exited, nothing holds the lock, and a kvpoold another test starts before
 * this one looks at the object would sweep it were it not empty. */
static void leave_locked_shm(void)
{
        char name[48];
        int  fd;

        snprintf(name, sizeof(name), "/kvpool.%d.a", (int)getpid());
        if ((fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600)) < 0 || fcntl(fd, F_SETFD, 0) != 0 ||
            flock(fd, LOCK_EX) != 0)
                _exit(125);
}

Test(lifecycle, a_live_daemons_shm_with_the_same_name_is_left_alone)
{
        char        out[8192], path[64];
        pid_t       pid;
        struct stat sb;
        const char *args[] = { "--metrics", "none", "--socket", "ipc:///tmp/kvtest-ls.sock",
                               "--pool", SMALL_POOL ",backend=host", NULL };

        cr_assert_eq(run_kvpoold_pre(args, out, sizeof(out), &pid, leave_locked_shm), 1, "%s", out);
        snprintf(path, sizeof(path), "/dev/shm/kvpool.%d.a", (int)pid);
        cr_assert(strstr(out, path + 8), "%s", out);
        cr_assert_eq(stat(path, &sb), 0, "the live owner's object was removed:\n%s", out);
        cr_assert_eq(sb.st_size, 0, "the live owner's object was replaced:\n%s", out);
        unlink(path);
}

/* Makes /dev/shm/name a regular file of 4096 bytes; returns it open
 * (close-on-exec), its inode in *ret_ino. */
static int make_shm_file(const char *name, ino_t *ret_ino)
{
        char        path[160];
        struct stat sb;
        int         fd;

        snprintf(path, sizeof(path), "/dev/shm/%.96s", name);
        fd = open(path, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
        cr_assert(fd >= 0, "%s: %s", path, strerror(errno));
        cr_assert_eq(ftruncate(fd, 4096), 0);
        cr_assert_eq(fstat(fd, &sb), 0);
        *ret_ino = sb.st_ino;
        return fd;
}

/* The inode at /dev/shm/name, not followed; 0 when there is nothing. */
static ino_t shm_ino(const char *name)
{
        char        path[160];
        struct stat sb;

        snprintf(path, sizeof(path), "/dev/shm/%.96s", name);
        return lstat(path, &sb) == 0 ? sb.st_ino : 0;
}

Test(lifecycle, start_removes_the_shm_of_dead_daemons_with_other_pids)
{
        /* A kvpoold killed with SIGKILL and started again with another pid
         * used to leave its pools in /dev/shm for good.  Every name carries
         * this test's pid: other tests' kvpoolds sweep /dev/shm at the same
         * time (they may remove the dead one first: the assertions hold all
         * the same), and only what this test made is removed at the end. */
        const char *const args[] = { "--pool", SMALL_POOL ",backend=host", NULL };
        enum { STALE, LIVE, TARGET, N_FILES };
        static const char *const near_miss[] = { "kvpool.%d", "kvpool.%d.", "kvpool..sweep-%d", "kvpool.x%d.sweep",
                                                  "kvpool.%dx.sweep", "kvpool-%d.sweep", "Kvpool.%d.sweep",
                                                  "kvpoolx.%d.sweep", " kvpool.%d.sweep" };
        enum { N_MISS = sizeof(near_miss) / sizeof(near_miss[0]) };
        char          files[N_FILES][96], miss[N_MISS][96], dir[96], fifo[96], link[96], path[160];
        ino_t         ino[N_FILES], miss_ino[N_MISS];
        int           fd[N_FILES], me = (int)getpid(), st;
        struct daemon d;
        pid_t         dead;

        /* a pid whose process is gone, as a daemon killed long ago */
        cr_assert((dead = fork()) >= 0);
        if (dead == 0)
                _exit(0);
        cr_assert_eq(waitpid(dead, &st, 0), dead);
        snprintf(files[STALE], sizeof(files[0]), "kvpool.%d.sweep-%d", (int)dead, me);
        snprintf(files[LIVE], sizeof(files[0]), "kvpool.%d.sweep-%d-live", (int)dead, me);
        snprintf(files[TARGET], sizeof(files[0]), "kvtest-sweep-%d-target", me);
        for (int i = 0; i < N_FILES; i++)
                fd[i] = make_shm_file(files[i], &ino[i]);
        close(fd[STALE]);
        close(fd[TARGET]);
        /* the live one: this process is its daemon and holds its lock */
        cr_assert_eq(flock(fd[LIVE], LOCK_EX | LOCK_NB), 0);
        for (int i = 0; i < N_MISS; i++) {
                snprintf(miss[i], sizeof(miss[0]), near_miss[i], me);
                close(make_shm_file(miss[i], &miss_ino[i]));
        }
        /* matching names that are not regular files */
        snprintf(dir, sizeof(dir), "kvpool.%d.sweep-%d-dir", (int)dead, me);
        snprintf(fifo, sizeof(fifo), "kvpool.%d.sweep-%d-fifo", (int)dead, me);
        snprintf(link, sizeof(link), "kvpool.%d.sweep-%d-link", (int)dead, me);
        snprintf(path, sizeof(path), "/dev/shm/%s", dir);
        cr_assert_eq(mkdir(path, 0700), 0);
        snprintf(path, sizeof(path), "/dev/shm/%s", fifo);
        cr_assert_eq(mkfifo(path, 0600), 0);
        snprintf(path, sizeof(path), "/dev/shm/%s", link);
        cr_assert_eq(symlink(files[TARGET], path), 0);

        start_daemon(&d, args);
        nng_socket s = client(d.url, 5000);
        hello(s, "sweep", 0);
        nng_close(s);
        const char *log = stop_clean_log(&d);

        cr_expect_eq(shm_ino(files[STALE]), 0, "the dead daemon's object is still there:\n%s", log);
        cr_expect_eq(shm_ino(files[LIVE]), ino[LIVE], "the live daemon's object is gone:\n%s", log);
        cr_expect_eq(shm_ino(files[TARGET]), ino[TARGET], "the link's target is gone:\n%s", log);
        for (int i = 0; i < N_MISS; i++)
                cr_expect_eq(shm_ino(miss[i]), miss_ino[i], "\"%s\" is gone:\n%s", miss[i], log);
        cr_expect_neq(shm_ino(dir), 0, "the directory is gone:\n%s", log);
        cr_expect_neq(shm_ino(fifo), 0, "the FIFO is gone:\n%s", log);
        cr_expect_neq(shm_ino(link), 0, "the link is gone:\n%s", log);
        /* of what this test made, only the dead one's removal may be
         * logged; the daemon may log others' too (any dead kvpoold's
         * objects in /dev/shm: an earlier crashed run's, a test's daemon
         * killed after a timeout), and the name ends at the comma (the
         * live one's name starts with the dead one's) */
        for (int i = 0; i < N_FILES + N_MISS + 3; i++) {
                const char *ours = i < N_FILES ? files[i] : i < N_FILES + N_MISS ? miss[i - N_FILES]
                                 : i == N_FILES + N_MISS ? dir : i == N_FILES + N_MISS + 1 ? fifo : link;
                char        line[160];

                if (ours == files[STALE])
                        continue;
                snprintf(line, sizeof(line), "removed /dev/shm/%.96s,", ours);
                cr_expect_null(strstr(log, line), "\"%s\" logged:\n%s", line, log);
        }

        /* only what this test made */
        close(fd[LIVE]);
        for (int i = 0; i < N_FILES; i++) {
                snprintf(path, sizeof(path), "/dev/shm/%.96s", files[i]);
                unlink(path);
        }
        for (int i = 0; i < N_MISS; i++) {
                snprintf(path, sizeof(path), "/dev/shm/%.96s", miss[i]);
                unlink(path);
        }
        snprintf(path, sizeof(path), "/dev/shm/%.96s", dir);
        rmdir(path);
        snprintf(path, sizeof(path), "/dev/shm/%.96s", fifo);
        unlink(path);
        snprintf(path, sizeof(path), "/dev/shm/%.96s", link);
        unlink(path);
}

Test(lifecycle, pressure_crossings_are_announced_once)
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

/* A group the daemon can give its files to but that they would not have
 * anyway: not our effective group.  Root may pick any (gid 1, "daemon" on
 * Debian); others only one of their supplementary groups.  Returns 0 and
 * the group, or -1 if there is none. */
static int other_group(char *name, size_t len, gid_t *ret)
{
        gid_t gs[64];
        int   n = geteuid() == 0 ? 0 : getgroups(64, gs);
        struct group *gr = NULL;

        if (geteuid() == 0)
                gr = getgrgid(1) ? getgrgid(1) : getgrgid(2);
        for (int i = 0; !gr && i < n; i++)
                if (gs[i] != getegid())
                        gr = getgrgid(gs[i]);
        if (!gr || gr->gr_gid == getegid())
                return -1;
        snprintf(name, len, "%s", gr->gr_name);
        *ret = gr->gr_gid;
        return 0;
}

Test(lifecycle, group_gives_mode_0660)
{
        char              grp[64];
        gid_t             gid;
        if (other_group(grp, sizeof(grp), &gid) < 0)
                cr_skip_test("no group other than our own to give the files to");
        const char *const args[] = { "--group", grp, "--pool", SMALL_POOL, NULL };
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
        cr_assert_eq(sb.st_gid, gid, "shm group %u, want %u (%s)", (unsigned)sb.st_gid, (unsigned)gid, grp);
        cr_assert_eq(stat(d.path, &sb), 0);
        cr_assert_eq(sb.st_mode & 0777, 0660, "socket mode %o", sb.st_mode & 0777);
        cr_assert_eq(sb.st_gid, gid, "socket group %u, want %u (%s)", (unsigned)sb.st_gid, (unsigned)gid, grp);
        /* the event socket sits beside the request socket, same mode and group */
        snprintf(ev, sizeof(ev), "%s/events.sock", d.dir);
        cr_assert_eq(stat(ev, &sb), 0, "%s missing", ev);
        cr_assert_eq(sb.st_mode & 0777, 0660, "event socket mode %o", sb.st_mode & 0777);
        cr_assert_eq(sb.st_gid, gid, "event socket group %u, want %u (%s)", (unsigned)sb.st_gid, (unsigned)gid, grp);
        nng_close(s);
        stop_clean(&d);
        cr_assert_neq(access(ev, F_OK), 0, "event socket left behind");
}

Test(lifecycle, sigterm_with_clients_connected)
{
        /* clients still connected and holding pages: the daemon still exits
         * 0 and leaves nothing behind (stop_clean checks both) */
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
        for (int i = 0; i < 3; i++)
                nng_close(c[i]);
}

/* ---- SIGTERM under client traffic -------------------------------------------- */

struct traffic {
        nng_socket   s;
        volatile int stop;
        unsigned     replies;
};

/* STATUS round trips as fast as the daemon answers, errors ignored (the
 * daemon goes away under it). */
static void *traffic_loop(void *arg)
{
        struct traffic *t = arg;
        uint8_t         msg[64];
        int             n = kv_enc_u32_req(msg, sizeof(msg), KV_OP_STATUS, 9, 0);

        while (!t->stop) {
                void  *buf;
                size_t len;
                if (nng_send(t->s, msg, (size_t)n, 0) != 0) {
                        sleep_ms(1);
                        continue;
                }
                if (nng_recv(t->s, &buf, &len, NNG_FLAG_ALLOC) == 0) {
                        nng_free(buf, len);
                        __atomic_add_fetch(&t->replies, 1, __ATOMIC_RELAXED);
                }
        }
        return NULL;
}

Test(lifecycle, sigterm_under_client_traffic, .timeout = 150)
{
        /* Requests arriving while the daemon closes its socket: nng 1.5.2
         * can block in that close for good (before kvd_server_free bounded
         * it, this test failed one run in three with 12 rounds).  Every stop
         * must still exit 0 within stop_daemon's 10 s and leave nothing
         * behind; the log line counts the stops that took the bound. */
        const char *const args[] = { "--pool", SMALL_POOL, NULL };
        enum { ROUNDS = 24, CLIENTS = 3 };
        int bounded = 0;

        for (int r = 0; r < ROUNDS; r++) {
                struct daemon  d;
                struct traffic t[CLIENTS];
                pthread_t      th[CLIENTS];

                start_daemon(&d, args);
                for (int i = 0; i < CLIENTS; i++) {
                        t[i] = (struct traffic){ .s = client(d.url, 5000) };
                        hello(t[i].s, "busy", 0);
                        /* short timeouts from here: the daemon goes away under
                         * the traffic, and REQ's send waits for a peer */
                        cr_assert_eq(nng_socket_set_ms(t[i].s, NNG_OPT_RECVTIMEO, 100), 0);
                        cr_assert_eq(nng_socket_set_ms(t[i].s, NNG_OPT_SENDTIMEO, 100), 0);
                        cr_assert_eq(pthread_create(&th[i], NULL, traffic_loop, &t[i]), 0);
                }
                /* stop while every client is in the middle of its traffic */
                for (int w = 0; w < 500; w++) {
                        int all = 1;
                        for (int i = 0; i < CLIENTS; i++)
                                all &= __atomic_load_n(&t[i].replies, __ATOMIC_RELAXED) > 0;
                        if (all)
                                break;
                        sleep_ms(10);
                }
                sleep_ms(20);
                const char *log = stop_clean_log(&d);
                if (strstr(log, "did not finish within"))
                        bounded++;
                for (int i = 0; i < CLIENTS; i++) {
                        t[i].stop = 1;
                        pthread_join(th[i], NULL);
                        cr_assert_gt(t[i].replies, 0, "round %d: client %d got no STATUS answered", r, i);
                        /* the daemon is gone: nothing can arrive any more */
                        nng_close(t[i].s);
                }
        }
        cr_log_info("%d of %d stops under traffic needed the bounded close", bounded, ROUNDS);
}

Test(lifecycle, sigterm_with_a_stuck_close_still_cleans_up)
{
        /* KVPOOLD_CLOSE_WAIT_MS=0 takes, on every stop, the path of a socket
         * close that never returns (kvd_server_free): the shutdown event still
         * goes out, and the daemon still exits 0 with its shared memory and
         * both socket files removed (stop_clean) while a client holds pages */
        const char *const args[] = { "--pool", SMALL_POOL, NULL };
        struct daemon     d;
        struct rep        r, keep;
        static uint32_t   ids[256];
        char              ev_url[200];
        nng_socket        sub;
        struct kvd_event  ev;
        int               got = 0;

        cr_assert_eq(setenv("KVPOOLD_CLOSE_WAIT_MS", "0", 1), 0);
        start_daemon(&d, args);
        unsetenv("KVPOOLD_CLOSE_WAIT_MS");
        nng_socket s = client(d.url, 5000);
        hello(s, "held", 0);
        struct kv_attach_rep a = attach(s, "a", &keep);
        rep_free(&keep);
        cr_assert_eq(a.num_pages, 256);

        snprintf(ev_url, sizeof(ev_url), "ipc://%s/events.sock", d.dir);
        cr_assert_eq(nng_sub0_open(&sub), 0);
        cr_assert_eq(nng_socket_set(sub, NNG_OPT_SUB_SUBSCRIBE, "", 0), 0);
        cr_assert_eq(nng_socket_set_ms(sub, NNG_OPT_RECVTIMEO, 100), 0);
        cr_assert_eq(nng_dial(sub, ev_url, NULL, 0), 0);
        /* PUB drops what it sends before the daemon has our pipe: cross the
         * pressure thresholds (below 10% free, back above 20%) until a
         * PRESSURE event gets through */
        alloc_pages(s, 0, 200, ids);
        for (int i = 0; i < 50 && !got; i++) {
                void  *buf;
                size_t len;
                alloc_pages(s, 0, 35, ids + 200);
                r = rpc(s, req, enc_free(0, 35, ids + 200));
                rep_free(&r);
                while (nng_recv(sub, &buf, &len, NNG_FLAG_ALLOC) == 0) {
                        nng_free(buf, len);
                        got = 1;
                }
        }
        cr_assert(got, "no event reached the subscriber");

        const char *log = stop_clean_log(&d);
        cr_assert(strstr(log, "not waiting for the client socket to close"), "%s", log);
        /* everything up to SHUTDOWN arrived before the daemon went */
        cr_assert_eq(nng_socket_set_ms(sub, NNG_OPT_RECVTIMEO, 5000), 0);
        do {
                void  *buf;
                size_t len;
                cr_assert_eq(nng_recv(sub, &buf, &len, NNG_FLAG_ALLOC), 0, "no SHUTDOWN event");
                cr_assert_eq(kvd_event_decode(buf, len, &ev), 0);
                nng_free(buf, len);
        } while (ev.type != KVD_EV_SHUTDOWN);
        /* the daemon is gone: nothing can arrive on either socket */
        nng_close(sub);
        nng_close(s);
}

Test(lifecycle, a_bad_close_wait_setting_is_named)
{
        const char *const args[] = { "--pool", SMALL_POOL, NULL };
        const char *const bad[] = { "abc", "-1", "60001", "5ms", "", " 5", "+5" };
        struct daemon     d;

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                char want[96];
                cr_assert_eq(setenv("KVPOOLD_CLOSE_WAIT_MS", bad[i], 1), 0);
                start_daemon(&d, args);
                unsetenv("KVPOOLD_CLOSE_WAIT_MS");
                const char *log = stop_clean_log(&d);
                snprintf(want, sizeof(want), "KVPOOLD_CLOSE_WAIT_MS='%s' is not a number of milliseconds", bad[i]);
                cr_assert(strstr(log, want), "'%s': %s", bad[i], log);
                cr_assert_null(strstr(log, "did not finish within"), "'%s': %s", bad[i], log);
        }
}
