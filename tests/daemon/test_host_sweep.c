/* test_host_sweep.c - kvd_host_sweep (backend_host.c) on a private folder
 * instead of /dev/shm, where other tests' and other people's daemons keep
 * their objects: what it removes, what it leaves alone, what it logs. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "backend.h"
#include "log.h"

static char dir[64];

static void make_dir(void)
{
        strcpy(dir, "/tmp/kvtest-sweep-XXXXXX");
        cr_assert(mkdtemp(dir));
}

/* Removes the folder and what is left in it (all of it this test's). */
static void remove_dir(void)
{
        char cmd[128];

        if (!dir[0])
                return;
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        if (system(cmd) != 0)
                cr_log_warn("could not remove %s", dir);
        dir[0] = '\0';
}

static const char *at(const char *name)
{
        static char path[2][160];
        static int  i;

        i ^= 1;
        snprintf(path[i], sizeof(path[i]), "%s/%s", dir, name);
        return path[i];
}

/* A file of bytes in the folder, mode mode; returns it open (O_RDWR when it
 * can, else O_RDONLY). */
static int make(const char *name, off_t bytes, mode_t mode)
{
        int fd = open(at(name), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);

        cr_assert(fd >= 0, "%s: %s", at(name), strerror(errno));
        cr_assert_eq(ftruncate(fd, bytes), 0);
        cr_assert_eq(fchmod(fd, mode), 0);
        return fd;
}

static int exists(const char *name)
{
        struct stat sb;

        return lstat(at(name), &sb) == 0;
}

/* Runs kvd_host_sweep(dir) with stderr in a pipe; its log in out, its result
 * returned. */
static int sweep_logged(const char *d, char *out, size_t cap)
{
        int     fds[2], saved, r;
        size_t  n = 0;
        ssize_t k;

        cr_assert_eq(pipe(fds), 0);
        cr_assert((saved = dup(STDERR_FILENO)) >= 0);
        cr_assert_eq(dup2(fds[1], STDERR_FILENO), STDERR_FILENO);
        close(fds[1]);
        kvd_log_probe_stderr();
        r = kvd_host_sweep(d);
        cr_assert_eq(dup2(saved, STDERR_FILENO), STDERR_FILENO);
        close(saved);
        kvd_log_probe_stderr();
        /* the write end is closed now: read to the end (a pipe holds far
         * more than the few lines written) */
        while (n + 1 < cap && (k = read(fds[0], out + n, cap - 1 - n)) > 0)
                n += (size_t)k;
        out[n] = '\0';
        close(fds[0]);
        return r;
}

TestSuite(host_sweep, .init = make_dir, .fini = remove_dir);

Test(host_sweep, removes_unlocked_objects_and_leaves_the_rest)
{
        static const char *const kept[] = {
                "kvpool.7", "kvpool.7.", "kvpool..a", "kvpool.x7.a", "kvpool.7x.a", "kvpool.-7.a", "kvpool-7.a",
                "Kvpool.7.a", "kvpoolx.7.a", " kvpool.7.a", "other",
        };
        char out[8192], want[256];
        int  live, again;

        /* two dead daemons' objects, one with dots in its pool name */
        close(make("kvpool.1.a", 4096, 0600));
        close(make("kvpool.22.b.c", 8192, 0660));
        /* a live daemon's: locked (by another description than the
         * sweep's, as another process's would be) */
        live = make("kvpool.3.live", 4096, 0600);
        cr_assert_eq(flock(live, LOCK_EX | LOCK_NB), 0);
        /* an empty one: maybe a daemon making it */
        close(make("kvpool.4.empty", 0, 0600));
        for (size_t i = 0; i < sizeof(kept) / sizeof(kept[0]); i++)
                close(make(kept[i], 4096, 0600));
        /* the right name on what is not a regular file */
        cr_assert_eq(mkdir(at("kvpool.5.dir"), 0700), 0);
        cr_assert_eq(mkfifo(at("kvpool.5.fifo"), 0600), 0); /* an open would wait for a writer */
        cr_assert_eq(symlink("other", at("kvpool.5.link")), 0);

        cr_assert_eq(sweep_logged(dir, out, sizeof(out)), 2, "%s", out);

        cr_expect_not(exists("kvpool.1.a"), "%s", out);
        cr_expect_not(exists("kvpool.22.b.c"), "%s", out);
        snprintf(want, sizeof(want), "<6>removed %s/kvpool.1.a, left by a kvpoold that is gone (4096 bytes;", dir);
        cr_expect(strstr(out, want), "no \"%s\" in:\n%s", want, out);
        snprintf(want, sizeof(want), "<6>removed %s/kvpool.22.b.c, left by a kvpoold that is gone (8192 bytes;", dir);
        cr_expect(strstr(out, want), "no \"%s\" in:\n%s", want, out);
        cr_expect(exists("kvpool.3.live"), "%s", out);
        cr_expect(exists("kvpool.4.empty"), "%s", out);
        for (size_t i = 0; i < sizeof(kept) / sizeof(kept[0]); i++)
                cr_expect(exists(kept[i]), "\"%s\" removed:\n%s", kept[i], out);
        cr_expect(exists("kvpool.5.dir") && exists("kvpool.5.fifo") && exists("kvpool.5.link"), "%s", out);
        /* two removals, nothing else at info level or above */
        int lines = 0;
        for (const char *p = out; (p = strchr(p, '\n')); p++)
                lines++;
        cr_expect_eq(lines, 2, "%s", out);

        /* the live one's lock is still ours, and the sweep let go of its
         * own: once the owner is gone, the next sweep removes it */
        again = open(at("kvpool.3.live"), O_RDONLY | O_CLOEXEC);
        cr_assert(again >= 0);
        cr_expect_neq(flock(again, LOCK_EX | LOCK_NB), 0, "the live owner lost its lock");
        close(again);
        close(live);
        cr_expect_eq(sweep_logged(dir, out, sizeof(out)), 1, "%s", out);
        cr_expect_not(exists("kvpool.3.live"), "%s", out);
}

Test(host_sweep, a_folder_it_cannot_read_is_a_logged_error)
{
        char out[4096], missing[96];

        snprintf(missing, sizeof(missing), "%s/no-such-folder", dir);
        cr_assert_eq(sweep_logged(missing, out, sizeof(out)), -ENOENT, "%s", out);
        cr_expect(strstr(out, "<4>cannot read ") && strstr(out, missing), "%s", out);
}

/* In a child that is not root (a daemon of another account, which a sticky
 * /dev/shm does not let remove what is not its own): the sweep's result as
 * the exit status, its log in the pipe. */
static int sweep_as_nobody(char *out, size_t cap)
{
        int     fds[2], st;
        size_t  n = 0;
        ssize_t k;
        pid_t   pid;

        cr_assert_eq(pipe(fds), 0);
        cr_assert((pid = fork()) >= 0);
        if (pid == 0) {
                close(fds[0]);
                if (geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0))
                        _exit(120);
                dup2(fds[1], STDERR_FILENO);
                kvd_log_probe_stderr();
                _exit(kvd_host_sweep(dir) & 0x7f);
        }
        close(fds[1]);
        while (n + 1 < cap && (k = read(fds[0], out + n, cap - 1 - n)) > 0)
                n += (size_t)k;
        out[n] = '\0';
        close(fds[0]);
        cr_assert_eq(waitpid(pid, &st, 0), pid);
        cr_assert(WIFEXITED(st), "%s", out);
        return WEXITSTATUS(st);
}

Test(host_sweep, what_it_cannot_open_or_remove_is_named_and_left_alone)
{
        char out[4096], want[256];
        int  root = geteuid() == 0;

        /* like /dev/shm: anyone may make files, only their owner remove them */
        cr_assert_eq(chmod(dir, 01777), 0);
        close(make("kvpool.1.unreadable", 4096, 0000));
        if (root)
                close(make("kvpool.2.others", 4096, 0644));

        cr_assert_eq(sweep_as_nobody(out, sizeof(out)), 0, "%s", out);

        cr_expect(exists("kvpool.1.unreadable"), "%s", out);
        snprintf(want, sizeof(want), "<4>cannot open %s/kvpool.1.unreadable to see whether its kvpoold lives: %s;",
                 dir, strerror(EACCES));
        cr_expect(strstr(out, want), "no \"%s\" in:\n%s", want, out);
        if (!root)
                return;
        /* readable and unlocked, but another account's */
        cr_expect(exists("kvpool.2.others"), "%s", out);
        snprintf(want, sizeof(want), "<4>cannot remove %s/kvpool.2.others, left by a kvpoold that is gone (4096 bytes): %s",
                 dir, strerror(EPERM));
        cr_expect(strstr(out, want), "no \"%s\" in:\n%s", want, out);
}
