/* backend_host.c - pools in POSIX shared memory (see backend.h).
 *
 * The object is /kvpool.<pid>.<pool>: the pid keeps two daemons (a test and
 * a system service) apart, and O_EXCL refuses to adopt a leftover object.
 * The daemon keeps the object open with an flock(LOCK_EX) on it until the
 * pool is destroyed, so a name that is taken can be told apart: locked, it
 * is a live kvpoold's (one with the same pid in another pid namespace that
 * shares /dev/shm) and is left alone; unlocked, its daemon died (a crash,
 * SIGKILL) and a restart that got the same pid (a container's pid 1 does
 * every time) removes it and makes its own, instead of failing until an
 * operator removes it by hand.  The memory is reserved with
 * posix_fallocate, so that a /dev/shm too small for the pool is an error at
 * start instead of a SIGBUS in a worker later.
 *
 * A dead daemon's objects with other pids (a kvpoold killed with SIGKILL
 * and started again with a new pid) are found by kvd_host_sweep, which the
 * daemon runs once at start: the same test, the lock free, removes them.
 * It never locks an empty object: host_create locks a new object before it
 * gives it its size, so an empty one may be a starting daemon's, whose own
 * flock(LOCK_NB) a sweeper's lock of that instant would fail. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "backend.h"
#include "log.h"

/* The object name exists: removes it when no live kvpoold holds its lock
 * (see the top of this file).  Returns 0 (removed, or gone meanwhile:
 * create again), -EEXIST when a live daemon holds it, or another negative
 * errno; err says which. */
static int remove_if_dead(const char *name, char *err, size_t errlen)
{
        struct stat a, b;
        int         fd, again, rc;

        if ((fd = shm_open(name, O_RDONLY | O_CLOEXEC, 0)) < 0) {
                if (errno == ENOENT)
                        return 0;
                rc = -errno;
                snprintf(err, errlen, "shm_open(%s): it exists (an earlier kvpoold with the same pid?) and cannot "
                         "be opened to see whether its daemon lives: %s; remove /dev/shm%s if no kvpoold uses it",
                         name, strerror(-rc), name);
                return rc;
        }
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
                rc = errno == EWOULDBLOCK ? -EEXIST : -errno;
                if (rc == -EEXIST)
                        snprintf(err, errlen, "shm_open(%s): in use by a live kvpoold with the same pid (in "
                                 "another pid namespace sharing /dev/shm?): rename this daemon's pool", name);
                else
                        snprintf(err, errlen, "shm_open(%s): it exists and cannot be locked: %s", name,
                                 strerror(-rc));
                close(fd);
                return rc;
        }
        /* Only the object we locked: had another daemon removed it and made
         * its own meanwhile, the name would now be that one's. */
        again = shm_open(name, O_RDONLY | O_CLOEXEC, 0);
        if (again >= 0 && fstat(fd, &a) == 0 && fstat(again, &b) == 0 && a.st_dev == b.st_dev &&
            a.st_ino == b.st_ino && shm_unlink(name) == 0)
                kvd_warn("removed %s, the shared memory of a kvpoold with the same pid that is gone "
                         "(%lld bytes; workers that still map it keep it until they unmap it)", name,
                         (long long)a.st_size);
        if (again >= 0)
                close(again);
        close(fd);
        return 0;
}

static int host_create(const char *pool_name, uint64_t bytes, int device, gid_t group, int has_group,
                       struct kvd_region *ret, char *err, size_t errlen)
{
        struct kvd_region r;
        mode_t            mode = has_group ? 0660 : 0600;
        void             *base;
        int               fd, rc;

        memset(&r, 0, sizeof(r));
        r.kind = KV_BACKEND_HOST;
        r.device = -1;
        r.bytes = bytes;
        if (bytes == 0 || bytes > (uint64_t)SIZE_MAX || (uint64_t)(off_t)bytes != bytes) {
                snprintf(err, errlen, "size %llu bytes is not mappable", (unsigned long long)bytes);
                return -EINVAL;
        }
        if (snprintf(r.shm_name, sizeof(r.shm_name), "/kvpool.%d.%s", (int)getpid(), pool_name) >=
            (int)sizeof(r.shm_name)) {
                snprintf(err, errlen, "shared memory name for pool \"%s\" is too long", pool_name);
                return -ENAMETOOLONG;
        }
        fd = shm_open(r.shm_name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, mode);
        if (fd < 0 && errno == EEXIST) {
                /* a kvpoold with our pid made it: never adopt it, remove it
                 * only when that daemon is dead */
                if ((rc = remove_if_dead(r.shm_name, err, errlen)))
                        return rc;
                fd = shm_open(r.shm_name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, mode);
        }
        if (fd < 0) {
                rc = -errno;
                snprintf(err, errlen, "shm_open(%s): %s", r.shm_name, strerror(-rc));
                return rc;
        }
        /* Locked before anything else: from here on the name is a live
         * daemon's (remove_if_dead).  A new object's lock cannot be held
         * by anyone else but a remove_if_dead of the same name that
         * opened it this very instant: another kvpoold with our pid,
         * starting at the same moment in another pid namespace (the sweep
         * of other kvpoolds leaves it alone while it is empty). */
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
                rc = -errno;
                snprintf(err, errlen, "cannot lock %s: %s", r.shm_name, strerror(-rc));
                goto fail;
        }
        /* The umask may have masked bits off: set the mode we mean. */
        if (fchmod(fd, mode) != 0 || (has_group && fchown(fd, (uid_t)-1, group) != 0)) {
                rc = -errno;
                snprintf(err, errlen, "%s: cannot set mode %04o%s: %s", r.shm_name, (unsigned)mode,
                         has_group ? " and group" : "", strerror(-rc));
                goto fail;
        }
        /* posix_fallocate returns the error number instead of setting errno. */
        rc = posix_fallocate(fd, 0, (off_t)bytes);
        if (rc == EOPNOTSUPP || rc == ENOSYS) {
                /* a file system without fallocate: ftruncate still zero-fills */
                rc = ftruncate(fd, (off_t)bytes) ? errno : 0;
        }
        if (rc) {
                snprintf(err, errlen, "cannot reserve %llu bytes for %s in /dev/shm: %s%s",
                         (unsigned long long)bytes, r.shm_name, strerror(rc),
                         rc == ENOSPC ? " (shared memory too small: lower the capacity or enlarge /dev/shm)" : "");
                rc = -rc;
                goto fail;
        }
        base = mmap(NULL, (size_t)bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (base == MAP_FAILED) {
                rc = -errno;
                snprintf(err, errlen, "mmap of %s (%llu bytes): %s", r.shm_name, (unsigned long long)bytes,
                         strerror(errno));
                goto fail;
        }
        /* The fd stays open for its lock (the mapping alone would keep the
         * memory).  The memory is zero: a new shm object reads as zeros, and
         * fallocate has already committed its pages, so there is nothing to
         * memset. */
        r.shm_fd = fd;
        r.base = base;
        kvd_debug("host backend: %s, %llu bytes, mode %04o", r.shm_name, (unsigned long long)bytes, (unsigned)mode);
        *ret = r;
        return 0;
fail:
        close(fd);
        shm_unlink(r.shm_name);
        return rc;
}

static void host_describe(const struct kvd_region *r, struct kv_attach_rep *rep)
{
        rep->backend = KV_BACKEND_HOST;
        rep->pool_bytes = r->bytes;
        memcpy(rep->shm_name, r->shm_name, sizeof(rep->shm_name));
        memset(rep->ipc_handle, 0, sizeof(rep->ipc_handle));
        memset(rep->device_uuid, 0, sizeof(rep->device_uuid));
}

static void host_destroy(struct kvd_region *r)
{
        if (!r)
                return;
        if (r->base)
                munmap(r->base, (size_t)r->bytes);
        /* Unlinking removes the name; workers that still map the pool keep
         * their mapping until they unmap it.  The lock goes after the name,
         * so no other daemon ever finds this name unlocked while it is ours. */
        if (r->shm_name[0] && shm_unlink(r->shm_name) != 0 && errno != ENOENT)
                kvd_warn("shm_unlink(%s): %s", r->shm_name, strerror(errno));
        if (r->shm_name[0])
                close(r->shm_fd);
        memset(r, 0, sizeof(*r));
        r->device = -1;
}

/* kvpool.<digits>.<pool>: the name of a host pool's object in /dev/shm
 * (host_create's, without the leading slash). */
static int is_pool_object(const char *name)
{
        const char *p = name + 7;

        if (strncmp(name, "kvpool.", 7) != 0 || *p < '0' || *p > '9')
                return 0;
        while (*p >= '0' && *p <= '9')
                p++;
        return p[0] == '.' && p[1] != '\0';
}

/* One entry of kvd_host_sweep: returns 1 when it removed it, else 0 (left
 * alone; logged when something failed). */
static int sweep_one(int dfd, const char *dir, const char *name)
{
        struct stat a, b;
        int         fd, removed = 0;

        /* Not opened unless a regular file: opening a FIFO would wait for a
         * writer, a symbolic link could point anywhere. */
        if (fstatat(dfd, name, &a, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(a.st_mode))
                return 0;
        /* O_NOFOLLOW | O_NONBLOCK: it may have become one since. */
        fd = openat(dfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
        if (fd < 0) {
                if (errno != ENOENT && errno != ELOOP)
                        kvd_warn("cannot open %s/%s to see whether its kvpoold lives: %s; left alone", dir, name,
                                 strerror(errno));
                return 0;
        }
        if (fstat(fd, &a) != 0 || !S_ISREG(a.st_mode))
                goto out;
        /* Empty: a kvpoold may be making it this instant (top of this
         * file); an empty object holds no memory anyway. */
        if (a.st_size == 0) {
                kvd_debug("%s/%s: empty, left alone", dir, name);
                goto out;
        }
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
                if (errno == EWOULDBLOCK)
                        kvd_debug("%s/%s: locked by a live kvpoold, left alone", dir, name);
                else
                        kvd_warn("cannot lock %s/%s to see whether its kvpoold lives: %s; left alone", dir, name,
                                 strerror(errno));
                goto out;
        }
        /* Only the object we locked: had its name been removed and made
         * again meanwhile, it would now be another daemon's.  From here on
         * no kvpoold removes the name (that takes the lock we hold), so
         * what we checked is what we unlink. */
        if (fstatat(dfd, name, &b, AT_SYMLINK_NOFOLLOW) != 0 || a.st_dev != b.st_dev || a.st_ino != b.st_ino)
                goto out;
        if (unlinkat(dfd, name, 0) != 0) {
                if (errno != ENOENT)
                        kvd_warn("cannot remove %s/%s, left by a kvpoold that is gone (%lld bytes): %s", dir, name,
                                 (long long)a.st_size, strerror(errno));
                goto out;
        }
        kvd_info("removed %s/%s, left by a kvpoold that is gone (%lld bytes; workers that still map it keep it "
                 "until they unmap it)", dir, name, (long long)a.st_size);
        removed = 1;
out:
        close(fd);
        return removed;
}

int kvd_host_sweep(const char *dir)
{
        struct dirent *e;
        DIR           *d;
        int            n = 0, rc = 0;

        if (!(d = opendir(dir))) {
                rc = -errno;
                return kvd_log_ret(KVD_LOG_WARNING, rc, "cannot read %s to remove the pools of dead kvpoolds: %s",
                                   dir, strerror(-rc));
        }
        for (;;) {
                errno = 0;
                if (!(e = readdir(d))) {
                        rc = -errno;
                        break;
                }
                if (is_pool_object(e->d_name))
                        n += sweep_one(dirfd(d), dir, e->d_name);
        }
        closedir(d);
        if (rc)
                return kvd_log_ret(KVD_LOG_WARNING, rc, "reading %s for the pools of dead kvpoolds: %s", dir,
                                   strerror(-rc));
        kvd_debug("%s: %d pools of dead kvpoolds removed", dir, n);
        return n;
}

const struct kvd_backend_ops kvd_backend_host = {
        .name = "host",
        .create = host_create,
        .describe = host_describe,
        .destroy = host_destroy,
};
